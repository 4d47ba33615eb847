"""Models shipped in pieces: joined once into the cache, checked, never left half-made."""

import hashlib
import io
import zipfile

import pytest

from sdt_ray.errors import ConfigError
from sdt_ray.pieces import PiecedModel, model_folder

PART1, PART2 = b"first piece " * 1000, b"and the second" * 700


def install(site, distribution, files):
    """A distribution as pip leaves it: its files under site/, and a dist-info naming it."""
    for path, content in files.items():
        (site / path).parent.mkdir(parents=True, exist_ok=True)
        (site / path).write_bytes(content)
    info = site / f"{distribution.replace('-', '_')}-1.0.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {distribution}\nVersion: 1.0\n")


@pytest.fixture
def pieced(tmp_path, monkeypatch):
    """Two distributions laid out as the Whisper ones are: data/ with the pieces."""
    site = tmp_path / "site"
    install(site, "fakemodel-part1", {"fakemodel_part1/data/config.json": b"{}", "fakemodel_part1/data/model.bin.part1": PART1})
    install(site, "fakemodel-part2", {"fakemodel_part2/data/model.bin.part2": PART2})
    monkeypatch.syspath_prepend(str(site))
    joined = PART1 + PART2
    return PiecedModel("fake", (("fakemodel-part1", "fakemodel_part1/data/model.bin.part1"),
                                ("fakemodel-part2", "fakemodel_part2/data/model.bin.part2")),
                       "model.bin", hashlib.sha256(joined).hexdigest(), files=("fakemodel-part1", "fakemodel_part1/data"))


def test_the_pieces_are_joined_once_into_the_cache(pieced, tmp_path):
    folder = model_folder(pieced, tmp_path / "cache")
    assert folder == tmp_path / "cache" / "models" / f"fake-{pieced.sha256[:12]}"
    assert (folder / "model.bin").read_bytes() == PART1 + PART2
    assert sorted(p.name for p in folder.iterdir()) == ["config.json", "model.bin"]  # no pieces, no staging files
    stamp = (folder / "model.bin").stat().st_mtime_ns
    assert model_folder(pieced, tmp_path / "cache") == folder
    assert (folder / "model.bin").stat().st_mtime_ns == stamp  # not joined again


def test_a_corrupted_piece_is_an_error_naming_both_hashes(pieced, tmp_path):
    piece = tmp_path / "site" / "fakemodel_part2" / "data" / "model.bin.part2"
    piece.write_bytes(PART2[:-1] + b"X")
    wrong = hashlib.sha256(PART1 + PART2[:-1] + b"X").hexdigest()
    with pytest.raises(ConfigError, match=f"SHA-256 {wrong}, expected {pieced.sha256}; reinstall fakemodel-part1 fakemodel-part2"):
        model_folder(pieced, tmp_path / "cache")
    assert list((tmp_path / "cache" / "models").iterdir()) == []  # nothing that looks like a model, no staging left


def test_a_missing_package_names_what_to_install(pieced, tmp_path):
    missing = PiecedModel("fake", (("fakemodel-part1", "fakemodel_part1/data/model.bin.part1"), ("no-such-part2", "x")),
                          "model.bin", "0" * 64)
    with pytest.raises(ConfigError, match="fake needs the packages fakemodel-part1 no-such-part2: pip install no-such-part2"):
        model_folder(missing, tmp_path / "cache")


def zipped_model() -> bytes:
    """A model folder zipped as the MPNet pieces hold it: one top folder, Windows desktop.ini files."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("all-mpnet-base-v2/config.json", "{}")
        archive.writestr("all-mpnet-base-v2/model.safetensors", PART1)
        archive.writestr("all-mpnet-base-v2/1_Pooling/config.json", '{"pooling_mode_mean_tokens": true}')
        archive.writestr("all-mpnet-base-v2/desktop.ini", "[.ShellClassInfo]")
    return buffer.getvalue()


@pytest.fixture
def zipped(tmp_path, monkeypatch):
    data = zipped_model()
    cut = [data[: len(data) // 3], data[len(data) // 3 : 2 * len(data) // 3], data[2 * len(data) // 3 :]]
    site = tmp_path / "site"
    for k, piece in enumerate(cut, 1):
        install(site, f"zipmodel-part-{k:03d}", {f"zipmodel-part_{k:03d}/input/model.zip.{k:03d}": piece})
    monkeypatch.syspath_prepend(str(site))
    pieces = tuple((f"zipmodel-part-{k:03d}", f"zipmodel-part_{k:03d}/input/model.zip.{k:03d}") for k in range(1, 4))
    return PiecedModel("zipped", pieces, "model.safetensors", hashlib.sha256(PART1).hexdigest(), unzip=True)


def test_a_split_zip_is_joined_unzipped_and_checked(zipped, tmp_path):
    folder = model_folder(zipped, tmp_path / "cache")
    files = sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file())
    assert files == ["1_Pooling/config.json", "config.json", "model.safetensors"]  # top folder stripped, desktop.ini skipped
    assert (folder / "model.safetensors").read_bytes() == PART1
    assert sorted(p.name for p in (tmp_path / "cache" / "models").iterdir()) == [folder.name]  # no zip or staging left


def test_a_missing_zip_piece_is_a_clear_error(zipped, tmp_path):
    (tmp_path / "site" / "zipmodel-part_002" / "input" / "model.zip.002").unlink()
    with pytest.raises(ConfigError, match="zipped: piece .*model.zip.002 is missing; reinstall zipmodel-part-001"):
        model_folder(zipped, tmp_path / "cache")


def test_a_corrupted_zip_piece_is_a_clear_error(zipped, tmp_path):
    piece = tmp_path / "site" / "zipmodel-part_003" / "input" / "model.zip.003"
    piece.write_bytes(piece.read_bytes()[:-30])  # cut short: the zip's directory is gone
    with pytest.raises(ConfigError, match="zipped: the pieces .* do not join to a zip; reinstall"):
        model_folder(zipped, tmp_path / "cache")
    assert list((tmp_path / "cache" / "models").iterdir()) == []
