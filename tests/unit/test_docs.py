"""The README's links point inside the repository, and its copies of the shared contract and seed
design are the current ones."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SHARED = ROOT.parent / "shared"


DOC_PAGES = [
    "README.md",
    "docs/operations.md",
    "docs/kubernetes.md",
    "docs/performance.md",
    "docs/design.md",
    "docs/contributing.md",
    "charts/chancepay/CHANGELOG.md",
]


@pytest.mark.parametrize("page", DOC_PAGES)
def test_doc_links_resolve_inside_the_repository(page: str) -> None:
    text = (ROOT / page).read_text()
    assert "../shared" not in text
    for target in re.findall(r"\]\(([^)#:]+)(?:#[^)]*)?\)", text):
        path = ((ROOT / page).parent / target).resolve()
        assert ROOT in path.parents or path == ROOT, target
        assert path.exists(), f"{page} links to {target}, which does not exist"


def _anchor(heading: str) -> str:
    """GitHub's anchor of a heading: lower case, punctuation dropped, spaces to hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


@pytest.mark.parametrize("page", DOC_PAGES)
def test_doc_anchors_name_real_headings(page: str) -> None:
    text = (ROOT / page).read_text()
    for target, anchor in re.findall(r"\]\(([^)#:]*)#([^)]+)\)", text):
        doc = ((ROOT / page).parent / target).resolve() if target else ROOT / page
        headings = {_anchor(h) for h in re.findall(r"^#+ (.+)$", doc.read_text(), flags=re.M)}
        assert anchor in headings, f"{page} links to {target}#{anchor}, which is no heading there"


def test_the_readme_is_a_door() -> None:
    """Short, with a table of contents, the two commands first, every doc page linked."""
    text = (ROOT / "README.md").read_text()
    assert len(text.splitlines()) <= 300
    assert "## Contents" in text
    for heading in ("## Requirements", "## The two commands", "## In a second terminal", "## Stop and reset"):
        assert heading in text, heading
    for page in DOC_PAGES[1:]:
        assert f"]({page})" in text, f"README does not link {page}"


@pytest.mark.parametrize(
    "copy,original", [("docs/CONTRACT.md", "CONTRACT.md"), ("docs/seed/chancepay-mvp.md", "seed/chancepay-mvp.md")]
)
def test_docs_copies_match_the_shared_originals(copy: str, original: str) -> None:
    if not (SHARED / original).exists():
        pytest.skip(f"no shared folder next to this clone ({SHARED}): nothing to compare with")
    assert (ROOT / copy).read_text() == (SHARED / original).read_text(), f"{copy} is stale: copy {original} again"


SOURCES = sorted((ROOT / "services" / "chancepay").rglob("*.py"))


def _docs() -> str:
    return "".join((ROOT / page).read_text() for page in DOC_PAGES)


def test_every_log_tag_the_code_emits_is_documented() -> None:
    tags = {
        tag for src in SOURCES for tag in re.findall(r'"(\[(?:FAILED TO [A-Z :]+|[A-Z_]+_ALERT)\])"', src.read_text())
    }
    assert len(tags) >= 10, tags
    missing = sorted(t for t in tags if f"`{t}`" not in _docs())
    assert not missing, f"log tags the code emits but no doc page explains (docs/operations.md): {missing}"


def test_every_metric_the_code_registers_is_documented() -> None:
    built = r'(?:Counter|Gauge|Histogram|Summary|counter|gauge|histogram)\(\s*"(chancepay_[a-z0-9_]+)"'
    names = {name for src in SOURCES for name in re.findall(built, src.read_text())}
    assert len(names) >= 15, names
    docs = _docs()
    missing = sorted(
        n
        for n in names
        if f"`{n}" not in docs
        and f"`{n}_total" not in docs
        and not any(f"`{n}" in part for part in re.findall(r"`chancepay_[^`]*`", docs))
    )
    assert not missing, f"metrics the code registers but no doc page lists (docs/operations.md): {missing}"
