"""The README's links point inside the repository, and its copies of the shared contract and seed
design are the current ones."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SHARED = ROOT.parent / "shared"


def test_readme_links_resolve_inside_the_repository() -> None:
    readme = (ROOT / "README.md").read_text()
    assert "../shared" not in readme
    for target in re.findall(r"\]\(([^)#:]+)\)", readme):
        path = (ROOT / target).resolve()
        assert ROOT in path.parents or path == ROOT, target
        assert path.exists(), f"README links to {target}, which does not exist"


@pytest.mark.parametrize("copy,original", [("docs/CONTRACT.md", "CONTRACT.md"),
                                           ("docs/seed/chancepay-mvp.md", "seed/chancepay-mvp.md")])
def test_docs_copies_match_the_shared_originals(copy: str, original: str) -> None:
    if not (SHARED / original).exists():
        pytest.skip(f"no shared folder next to this clone ({SHARED}): nothing to compare with")
    assert (ROOT / copy).read_text() == (SHARED / original).read_text(), f"{copy} is stale: copy {original} again"
