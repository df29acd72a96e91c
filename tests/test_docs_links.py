"""Every relative link in the README and docs/ leads somewhere: the file exists and, for a link to a
markdown heading, the heading does (GitHub's anchor rules). A renamed section or a report figure that
is no longer written breaks a link silently otherwise."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
LINK = re.compile(r"\]\(([^)\s]*)\)")
HEADING = re.compile(r"^#{1,6}\s+(.*?)\s*#*$", re.MULTILINE)
FENCE = re.compile(r"^```.*?^```", re.MULTILINE | re.DOTALL)


def anchor(heading: str) -> str:
    """GitHub's anchor of a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"`|\*\*|\[([^\]]*)\]\([^)]*\)", r"\1", heading).lower()
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def anchors(page: Path) -> set[str]:
    return {anchor(h) for h in HEADING.findall(FENCE.sub("", page.read_text()))}


def links(page: Path) -> list[str]:
    return [t for t in LINK.findall(FENCE.sub("", page.read_text())) if t and not re.match(r"\w+:", t)]


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_every_relative_link_leads_somewhere(page: Path) -> None:
    broken = []
    for target in links(page):
        path, _, fragment = target.partition("#")
        file = (page.parent / path).resolve() if path else page
        missing_heading = (
            file.exists() and fragment and file.suffix == ".md" and fragment not in anchors(file)
        )
        if not file.exists() or missing_heading:
            broken.append(target)
    assert not broken, f"{page.relative_to(ROOT)}: broken links {broken}"


def test_anchor_follows_github() -> None:
    assert anchor("Against the reference (Synaptic-Flow)") == "against-the-reference-synaptic-flow"
    assert anchor("BatchNorm while scoring: what the mode does to GraSP") == (
        "batchnorm-while-scoring-what-the-mode-does-to-grasp"
    )
    assert anchor("`kd` and `fold`") == "kd-and-fold"
