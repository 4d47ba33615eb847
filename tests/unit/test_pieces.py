"""Models shipped in pieces: joined once into the cache, checked, never left half-made."""

import hashlib
import sys

import pytest

from sdt_ray.errors import ConfigError
from sdt_ray.pieces import PiecedModel, model_folder

PART1, PART2 = b"first piece " * 1000, b"and the second" * 700


@pytest.fixture
def pieced(tmp_path, monkeypatch):
    """Two importable packages as the PyPI ones are laid out: data/ with the pieces."""
    for name, files in {"fakemodel_part1": {"config.json": b"{}", "model.bin.part1": PART1},
                        "fakemodel_part2": {"model.bin.part2": PART2}}.items():
        data = tmp_path / "site" / name / "data"
        data.mkdir(parents=True)
        (data.parent / "__init__.py").write_text("")
        for file, content in files.items():
            (data / file).write_bytes(content)
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    for name in ("fakemodel_part1", "fakemodel_part2"):  # an earlier test imported them from its own folder
        monkeypatch.delitem(sys.modules, name, raising=False)
    joined = PART1 + PART2
    return PiecedModel("fake", ("fakemodel_part1", "fakemodel_part2"), "model.bin", len(joined), hashlib.sha256(joined).hexdigest())


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
    folder = tmp_path / "cache" / "models" / f"fake-{pieced.sha256[:12]}"
    assert sorted(p.name for p in folder.iterdir()) == ["config.json"]  # nothing that looks like a model


def test_a_missing_package_names_what_to_install(pieced, tmp_path):
    missing = PiecedModel("fake", ("fakemodel_part1", "no_such_part2"), "model.bin", 1, "0" * 64)
    with pytest.raises(ConfigError, match="fake needs the packages fakemodel-part1 no-such-part2: pip install no-such-part2"):
        model_folder(missing, tmp_path / "cache")
