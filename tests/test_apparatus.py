"""The course-text apparatus of every chapter: learning objectives and prerequisites near the top, a
summary before the exercises, and links to the chapters it builds on (checked on the sources)."""

from __future__ import annotations

import re
import sys
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


# -- numbered figures -------------------------------------------------------------------------------
# A chapter numbers a figure through its cell's metadata (``mystnb: figure: {name, caption}``); the
# prose cites it as {numref}`name`. The page checks are functions of the HTML directory, so they can
# also be run by hand on a build (``figure_problems(Path("/tmp/book/_build/html"))``).
FIGURE_NAME = re.compile(r"fig-[a-z0-9]+(?:-[a-z0-9]+)*")
NUMREF = re.compile(r"\{numref\}`(?:[^`<]*<)?(fig-[\w-]+)>?`")


def figure_cells() -> dict[str, tuple[Path, str]]:
    """Every numbered figure of the book: its name -> (chapter, caption), read from the sources."""
    import jupytext

    figures: dict[str, tuple[Path, str]] = {}
    for entry in toc_entries():
        path = ROOT / f"{entry['file']}.md"
        for cell in jupytext.read(path).cells:
            figure = cell.metadata.get("mystnb", {}).get("figure")
            if figure:
                name = figure.get("name", "")
                assert name not in figures, f"{path.name}: figure {name!r} is also in {figures[name][0].name}"
                figures[name] = (path, str(figure.get("caption", "")))
    return figures


def prose_references() -> set[str]:
    """The figure names the book's prose (markdown cells, not captions) cites with {numref}."""
    import jupytext

    cited: set[str] = set()
    for entry in toc_entries():
        for cell in jupytext.read(ROOT / f"{entry['file']}.md").cells:
            if cell.cell_type == "markdown":
                cited |= set(NUMREF.findall(cell.source))
    return cited


def test_every_figure_has_a_name_a_caption_and_a_reference_in_the_prose():
    figures = figure_cells()
    assert len(figures) >= 80, f"only {len(figures)} numbered figures"
    cited = prose_references()
    for name, (path, caption) in figures.items():
        assert FIGURE_NAME.fullmatch(name), f"{path.name}: figure name {name!r} is not fig-<chapter>-<what>"
        assert len(caption.split()) >= 8, f"{path.name}: {name} has no caption that says what is plotted"
        assert name in cited, f"{path.name}: no {{numref}}`{name}` in the book's prose"
    unknown = cited - set(figures)
    assert not unknown, f"{{numref}} to figures that do not exist: {sorted(unknown)}"


def figure_problems(html: Path) -> list[str]:
    """What is wrong with the figures of the built chapters: a plotly figure outside a numbered,
    captioned figure; numbers that are not "Fig. N.k", N the chapter's number, k = 1, 2, ... in page
    order; a figure no link of the book points to."""
    from bs4 import BeautifulSoup

    sys_path = str(ROOT / "book" / "_ext")
    if sys_path not in sys.path:
        sys.path.insert(0, sys_path)
    import handouts

    numbers = handouts.chapter_numbers(ROOT)
    problems, targets, links = [], {}, set()
    for path, number in numbers.items():
        page_path = html / path.relative_to(ROOT).with_suffix(".html")
        page = BeautifulSoup(page_path.read_text(), "html.parser")
        for link in page.select("a.reference.internal[href]"):
            href = link["href"]
            page_of = href.split("#")[0] or page_path.name
            links.add((Path(page_of).name, href.split("#", 1)[1] if "#" in href else ""))
        shown = []
        for plot in page.select("div.plotly-graph-div"):
            figure = plot.find_parent("figure")
            label = figure.select_one("figcaption .caption-number") if figure else None
            if label is None:
                problems.append(f"{path.stem}: a plotly figure without a numbered caption")
                continue
            caption = figure.select_one("figcaption .caption-text")
            if caption is None or len(caption.get_text().split()) < 8:
                problems.append(f"{path.stem}: {label.get_text().strip()} has no caption that says what is plotted")
            if figure not in [f for f, _ in shown]:
                shown.append((figure, " ".join(label.get_text().split())))
        expected = [f"Fig. {number}.{k}" for k in range(1, len(shown) + 1)]
        if [text for _, text in shown] != expected:
            problems.append(f"{path.stem}: figures numbered {[text for _, text in shown]}, not {expected}")
        for figure, text in shown:
            targets[(page_path.name, figure.get("id", ""))] = f"{path.stem}: {text}"
    problems += [
        f"{where} is referenced nowhere in the book" for target, where in targets.items() if target not in links
    ]
    return problems


@pytest.mark.chapters
def test_every_figure_of_the_built_book_is_numbered_captioned_and_referenced(built_book):
    assert figure_problems(built_book) == []
