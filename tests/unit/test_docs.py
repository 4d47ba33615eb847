"""The README is a front page (at most 10 kB, what sdt-ray is first), and every relative link in
the README and docs/ reaches a file, and a heading where it names one."""

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md")), ROOT / "cluster" / "README.md"]
LINK = re.compile(r"\]\(([^)\s]+)\)")
HEADING = re.compile(r"^#{1,6} (.+)$", re.M)
FENCE = re.compile(r"^```.*?^```", re.M | re.S)


def anchor(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


def anchors(page: Path) -> set[str]:
    return {anchor(h) for h in HEADING.findall(FENCE.sub("", page.read_text(encoding="utf-8")))}


def broken_links(page: Path) -> list[str]:
    broken = []
    for target in LINK.findall(FENCE.sub("", page.read_text(encoding="utf-8"))):
        if re.match(r"[a-z]+://", target):
            continue
        path, _, fragment = target.partition("#")
        linked = (page.parent / path).resolve() if path else page
        if not linked.exists():
            broken.append(target)
        elif fragment and linked.suffix == ".md" and fragment not in anchors(linked):
            broken.append(target)
    return broken


def test_anchor_on_hand_written_headings():
    assert anchor("8. Parameter counts") == "8-parameter-counts"
    assert anchor("Outputs: resumable, and safe by construction") == "outputs-resumable-and-safe-by-construction"
    assert anchor("`train`: SDT on a features table") == "train-sdt-on-a-features-table"


def test_readme_is_a_front_page():
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert len(readme.encode("utf-8")) <= 10 * 1024
    first_paragraph = readme.split("\n\n")[1]
    assert first_paragraph.startswith("sdt-ray finds the emotion in every utterance")
    for command in ("make demo", "make test"):
        assert command in readme


def test_every_page_the_issue_names_exists():
    names = {p.name for p in (ROOT / "docs").glob("*.md")}
    assert {"architecture.md", "sdt_spec.md", "pipeline.md", "calls.md", "training.md", "clusters.md",
            "parity.md", "results.md", "benchmarks.md"} <= names


def test_relative_links_resolve(tmp_path):
    page = tmp_path / "page.md"
    page.write_text("# Top\n[ok](#top) [missing](other.md) [bad anchor](#nowhere) [web](https://x.org)\n")
    assert broken_links(page) == ["other.md", "#nowhere"]
    broken = {str(p.relative_to(ROOT)): broken_links(p) for p in PAGES}
    assert not {k: v for k, v in broken.items() if v}
