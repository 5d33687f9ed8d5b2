"""The course-text apparatus of every chapter: learning objectives and prerequisites near the top, a
summary before the exercises, and links to the chapters it builds on (checked on the sources)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
# Guides, not chapters: how to use the widgets, the notation, and the instructors' page.
GUIDES = {"widgets", "notation", "teaching"}


def toc_entries(caption: str | None = None) -> list[dict]:
    """The table of contents' entries, of every part or of the part with ``caption``."""
    toc = yaml.safe_load((ROOT / "_toc.yml").read_text())
    return [entry for part in toc["parts"] if caption in (None, part["caption"]) for entry in part["chapters"]]


def chapters() -> list[Path]:
    files = [ROOT / f"{entry['file']}.md" for entry in toc_entries("Chapters")]
    return [path for path in files if path.stem not in GUIDES]


def admonition(text: str, title: str) -> str | None:
    match = re.search(r"^```\{admonition\} " + re.escape(title) + r"\n(.*?)^```$", text, re.M | re.S)
    return match[1] if match else None


@pytest.mark.parametrize("chapter", chapters(), ids=lambda path: path.stem)
def test_chapter_has_objectives_prerequisites_and_a_summary(chapter):
    text = chapter.read_text()
    objectives, prerequisites = admonition(text, "Learning objectives"), admonition(text, "Prerequisites")
    assert objectives and len(re.findall(r"^- ", objectives, re.M)) >= 3, f"{chapter.name}: learning objectives"
    assert prerequisites and re.search(r"^- ", prerequisites, re.M), f"{chapter.name}: prerequisites"
    first_section = text.index("\n## ")
    assert text.index("Learning objectives") < first_section, f"{chapter.name}: objectives belong near the top"
    assert "\n## Summary\n" in text, f"{chapter.name}: no Summary section"
    assert text.index("\n## Summary\n") < text.index("\n## Exercises\n"), f"{chapter.name}: summary after exercises"
    summary = text.split("\n## Summary\n", 1)[1].split("\n## ", 1)[0]
    assert len(re.findall(r"^- ", summary, re.M)) >= 3, f"{chapter.name}: a summary of fewer than 3 points"


def test_prerequisites_link_to_earlier_pages_of_the_book():
    order = [path.stem for path in chapters()]
    toc_stems = {Path(e["file"]).stem for e in toc_entries()}
    for position, chapter in enumerate(chapters()):
        prerequisites = admonition(chapter.read_text(), "Prerequisites")
        for target in re.findall(r"\{doc\}`([^`]+)`", prerequisites):
            assert target in toc_stems, f"{chapter.name}: {target} is not a page of the book"
            if target in order:
                assert order.index(target) < position, f"{chapter.name}: prerequisite {target} comes later"


def test_every_chapter_links_to_another_chapter():
    for chapter in chapters():
        links = set(re.findall(r"\{doc\}`([^`<]+)`", chapter.read_text())) | set(
            re.findall(r"\]\(([\w_]+)\.md\)", chapter.read_text())
        )
        assert links - {chapter.stem}, f"{chapter.name} links to no other page"
