"""Tests reach their helpers as the importable package tests.helpers: no path edits, no imports
from a conftest (pytest's own module, which a second conftest would shadow)."""

from pathlib import Path

TESTS = Path(__file__).resolve().parents[1]


def test_no_test_edits_the_import_path_or_imports_a_conftest():
    edits_path, from_conftest = "sys" + ".path", "from " + "conftest"
    offenders = [
        str(f.relative_to(TESTS)) for f in sorted(TESTS.rglob("*.py"))
        if edits_path in f.read_text() or from_conftest in f.read_text()
    ]
    assert offenders == []
