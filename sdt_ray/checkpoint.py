"""A trained model on disk: `config.json` (the ModelConfig, label names and, once fitted, the
calibration) and `model.safetensors`. `load_checkpoint` rebuilds the model from config.json alone."""

from __future__ import annotations

import hashlib
import json
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow.fs as pafs
import torch
from safetensors.torch import load_file, save_file

from .config import ModelConfig
from .errors import ConfigError
from .model import SDT
from .storage import is_remote, resolve

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
FORMAT_VERSION = 1


@dataclass
class LoadedModel:
    model: SDT
    config: ModelConfig
    labels: list[str]
    meta: dict[str, Any]  # training provenance: recipe, data, metrics
    model_id: str  # sha256 of the weights file (and of the temperature, once calibrated), first 16 hex digits
    calibration: dict[str, Any] | None = None  # calibration.Calibration as a dict; None: never fitted

    @property
    def temperature(self) -> float:
        """What the fused logits are divided by before softmax (1.0 for an uncalibrated checkpoint)."""
        return float(self.calibration["temperature"]) if self.calibration else 1.0


def state_dict_for_saving(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """A snapshot: copies, never views, so later training steps cannot change it
    (on CPU, .cpu() and .contiguous() return the very same tensor)."""
    return {k: v.detach().to("cpu", copy=True).contiguous() for k, v in model.state_dict().items()}


def save_checkpoint(
    directory: str | Path, state: dict[str, torch.Tensor], config: ModelConfig, meta: dict[str, Any] | None = None
) -> None:
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    save_file(state, str(directory / WEIGHTS_FILE))
    document = {
        "format_version": FORMAT_VERSION,
        "model": config.to_dict(),
        "labels": list(config.class_names),
        "meta": meta or {},
    }
    (directory / CONFIG_FILE).write_text(json.dumps(document, indent=2, sort_keys=True))


def write_calibration(directory: str | Path, calibration: dict[str, Any]) -> None:
    """Record a fitted temperature in a local checkpoint's config.json (replacing any earlier one)."""
    path = Path(directory) / CONFIG_FILE
    document = json.loads(path.read_text())
    document["calibration"] = calibration
    path.write_text(json.dumps(document, indent=2, sort_keys=True))


def read_config(directory: str | Path) -> tuple[ModelConfig, dict[str, Any]]:
    path = Path(directory) / CONFIG_FILE
    if not path.exists():
        raise ConfigError(f"{directory}: not a checkpoint (no {CONFIG_FILE})")
    document = json.loads(path.read_text())
    return ModelConfig.from_dict(document["model"]), document


def load_checkpoint(uri: str | Path, device: str = "cpu") -> LoadedModel:
    """Load from a local folder or an s3:// prefix (copied to a temp folder first)."""
    uri = str(uri)
    if is_remote(uri):
        with tempfile.TemporaryDirectory() as tmp:
            fs, path = resolve(uri)
            pafs.copy_files(path, tmp, source_filesystem=fs)
            return load_checkpoint(tmp, device)
    config, document = read_config(uri)
    weights = Path(uri) / WEIGHTS_FILE
    model = SDT(config)
    try:
        model.load_state_dict(load_file(str(weights), device=device))
    except (RuntimeError, FileNotFoundError) as exc:
        raise ConfigError(f"{uri}: weights do not fit config.json ({exc})") from None
    model.to(device).eval()
    calibration = document.get("calibration")
    digest = hashlib.sha256(weights.read_bytes())
    if calibration:  # the same weights under another temperature give other probabilities: another id
        digest.update(f"temperature={float(calibration['temperature']):.6g}".encode())
    return LoadedModel(model, config, list(document.get("labels") or config.class_names), document.get("meta", {}),
                       digest.hexdigest()[:16], calibration)
