"""Every "§N" or "§N.M" cited in the code, the recipes, the tests, the docs and `--help`
names a heading of docs/sdt_spec.md, and no text cites a spec file the repository lacks."""

import re
from pathlib import Path

import click
import typer.main
from typer.testing import CliRunner

from sdt_ray.cli import app

ROOT = Path(__file__).resolve().parents[2]
SPEC = ROOT / "docs" / "sdt_spec.md"
CITED_IN = ["sdt_ray", "jobs", "tests", "docs", "benchmarks", "scripts", "cluster"]
SUFFIXES = {".py", ".yaml", ".yml", ".md", ".sh", ".txt"}
CITATION = re.compile(r"§\s*(\d+(?:\.\d+)?)")
HEADING = re.compile(r"^#{2,3} (\d+(?:\.\d+)?)\.? ", re.M)  # "## 4. Fusion", "### 2.3 Position"


def spec_sections(text: str) -> set[str]:
    return set(HEADING.findall(text))


def citations(text: str) -> set[str]:
    return set(CITATION.findall(text))


def repository_texts() -> dict[str, str]:
    paths = [ROOT / "README.md", ROOT / "Makefile"]
    for top in CITED_IN:
        paths += [p for p in (ROOT / top).rglob("*") if p.suffix in SUFFIXES and p.is_file()]
    return {str(p.relative_to(ROOT)): p.read_text(encoding="utf-8") for p in paths}


def help_texts() -> dict[str, str]:
    """`--help` of every command and sub-command, as a user sees it (a wide terminal, so
    that no citation is wrapped)."""
    runner, texts = CliRunner(), {}

    def walk(command: click.Command, path: list[str]) -> None:
        result = runner.invoke(app, path + ["--help"], env={"COLUMNS": "400"})
        assert result.exit_code == 0, result.output
        texts[" ".join(["sdt-ray"] + path)] = result.output
        for name, sub in getattr(command, "commands", {}).items():
            walk(sub, path + [name])

    walk(typer.main.get_command(app), [])
    return texts


def test_the_patterns_on_hand_written_lines():
    assert citations("the gate (§4), heads (sdt_spec §5), §1-§8 and §2.3") == {"4", "5", "1", "8", "2.3"}
    assert spec_sections("## 1. Inputs\n### 2.3 Position\n## Notes\n#### 9.9 too deep\n") == {"1", "2.3"}


def test_the_spec_has_its_ten_sections():
    sections = spec_sections(SPEC.read_text(encoding="utf-8"))
    assert {str(n) for n in range(1, 11)} <= sections
    assert {"2.1", "2.2", "2.3"} <= sections


def test_every_cited_section_resolves():
    sections = spec_sections(SPEC.read_text(encoding="utf-8"))
    texts = repository_texts() | {f"`{cmd} --help`": text for cmd, text in help_texts().items()}
    cited = {where: citations(text) for where, text in texts.items()}
    assert sum(map(len, cited.values())) > 20  # the scan reads the files that cite the spec
    unresolved = {where: sorted(refs - sections) for where, refs in cited.items() if refs - sections}
    assert not unresolved, f"sections cited but missing from docs/sdt_spec.md: {unresolved}"


def test_help_cites_the_spec_by_its_path():
    helps = help_texts()
    assert "docs/sdt_spec.md §9" in " ".join(helps["sdt-ray import sdt-pickle"].split())


def test_no_text_names_a_spec_file_outside_the_repository():
    stale = [where for where, text in repository_texts().items()
             if "SDT_SPEC" in text and where != "tests/unit/test_spec_sections.py"]
    assert not stale, f"cite docs/sdt_spec.md instead: {stale}"
