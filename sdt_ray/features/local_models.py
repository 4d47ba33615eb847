"""Loading transformers models without a network: the one path the text, speech and image
encoders share. A model is a local folder or an id that the user's own Hugging Face cache
resolves; every `from_pretrained` runs with local_files_only, so nothing is downloaded."""

from __future__ import annotations

import os
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

from ..errors import ConfigError


def resolve_local(name_or_path: str) -> str:
    """An existing folder (with ~ expanded) as a path; anything else is left as a cache id."""
    expanded = os.path.expanduser(name_or_path)
    return str(Path(expanded)) if os.path.isdir(expanded) else name_or_path


@contextmanager
def _local_only(kind: str, name: str | None) -> Iterator[None]:
    """transformers raises OSError for an id it cannot find offline; say what to pass instead."""
    try:
        yield
    except OSError as exc:
        raise ConfigError(
            f"{kind} '{name}' is neither a local folder nor in the local Hugging Face cache "
            f"(sdt-ray never downloads at run time): {exc}"
        ) from None


def load_pretrained(kind: str, name: str | None, path: str, loader: Any, **options: Any) -> Any:
    """`loader.from_pretrained(path)` (AutoModel, AutoTokenizer, ...) from local files only."""
    with _local_only(kind, name):
        return loader.from_pretrained(path, local_files_only=True, **options)


def hidden_size(kind: str, name: str | None, path: str) -> int:
    """The encoder's vector size from its config alone (no weights loaded)."""
    from transformers import AutoConfig

    return int(load_pretrained(kind, name, path, AutoConfig).hidden_size)


PRECISIONS = ("fp32", "bf16")  # what a text encoder computes in: all fp32, or its matrix products in bfloat16


def check_precision(precision: str, flag: str = "--precision") -> str:
    from ..errors import ConfigError

    if precision not in PRECISIONS:
        raise ConfigError(f"{flag} {precision!r}: choose one of {', '.join(PRECISIONS)}")
    return precision


def autocast(device: Any, precision: str):
    """The context a model runs in at `precision`. bf16 is torch's autocast: matrix products in
    bfloat16 with fp32 accumulation, weights and everything else in fp32. MPNet on 2 cores with
    avx512_bf16 trains a step 1.96x and encodes 1.78x faster than in fp32 (32 inputs of 80 tokens,
    /tmp probe, 2026-12-06); on a CPU without bf16 instructions it is emulated, and slower."""
    import torch

    device_type = torch.device(device).type
    return torch.autocast(device_type, dtype=torch.bfloat16, enabled=check_precision(precision) == "bf16")


def on_device(model: Any, device: str | None) -> tuple[Any, str]:
    """The model in eval mode on `device`: by default the GPU when there is one."""
    import torch

    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    return model.to(device).eval(), device
