"""Every chapter executes top to bottom in the `ci` profile (jupytext + nbclient) — as the
instructor handout, so every instructor notebook is tested too — and the whole book builds with
warnings as errors, once as the instructor edition and once as the student edition (no solutions).
Execution times are recorded in test-artifacts/."""

from __future__ import annotations

import json
import re
import time
from pathlib import Path

import pytest
from solutions import MIN_RUN, handouts, html_text, prose_runs, read

from conftest import ARTIFACTS, ROOT

CHAPTERS = sorted((ROOT / "book").glob("*.md"))


@pytest.mark.chapters
@pytest.mark.parametrize("chapter", CHAPTERS, ids=lambda p: p.stem)
def test_chapter_executes(chapter: Path, tmp_path):
    from nbclient import NotebookClient

    notebook = handouts().instructor_notebook(chapter)  # the chapter's code cells, solutions included
    assert notebook.metadata.get("kernelspec", {}).get("name") == "python3", "chapter header needs a kernelspec"
    client = NotebookClient(
        notebook, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}
    )
    start = time.perf_counter()
    client.execute()  # raises CellExecutionError, with the cell and traceback, on any failing cell
    elapsed = time.perf_counter() - start
    ARTIFACTS.mkdir(exist_ok=True)
    times_file = ARTIFACTS / "chapter-times.json"
    times = json.loads(times_file.read_text()) if times_file.exists() else {}
    times[chapter.stem] = round(elapsed, 1)
    times_file.write_text(json.dumps(times, indent=2, sort_keys=True))
    print(f"{chapter.stem}: {elapsed:.1f} s")


@pytest.mark.chapters
def test_book_builds_with_warnings_as_errors(built_book):
    for chapter in CHAPTERS:
        page = built_book / chapter.relative_to(ROOT).with_suffix(".html")
        assert page.exists(), f"missing page {page}"
    assert (built_book / "index.html").exists()
    assert (built_book / "_static" / "mathjax" / "tex-chtml.js").exists()  # math renders offline
    for chapter in CHAPTERS:
        html = (built_book / chapter.relative_to(ROOT).with_suffix(".html")).read_text()
        remote = re.findall(r'<(?:script|link|img)[^>]+(?:src|href)="(https?://[^"]+)"', html)
        assert not remote, f"{chapter.stem} loads from the network: {remote}"
        assert "Traceback" not in html, f"{chapter.stem} shows a traceback"


def solution_parts() -> dict:
    """Per chapter with solutions: the distinctive solution code lines and prose runs (those found
    nowhere outside a solution in any chapter)."""
    chapters = {chapter: read(chapter) for chapter in CHAPTERS}
    outside = set().union(*(s.outside for s in chapters.values()))
    outside_text = " ".join(s.outside_text for s in chapters.values())
    parts = {}
    for chapter, s in chapters.items():
        if s.count:
            code = s.distinctive(s.code, outside)
            runs = sorted({run for line in s.text for run in prose_runs(line) if run not in outside_text})
            parts[chapter] = (code, runs)
    return parts


@pytest.mark.chapters
def test_instructor_book_shows_solutions_in_collapsed_dropdowns(built_book):
    from bs4 import BeautifulSoup

    for chapter, (code, runs) in solution_parts().items():
        page = BeautifulSoup((built_book / chapter.relative_to(ROOT).with_suffix(".html")).read_text(), "html.parser")
        boxes = page.select("div.solution")
        assert len(boxes) == read(chapter).count, f"{chapter.stem}: {len(boxes)} solution boxes"
        for box in boxes:
            classes = set(box.get("class", []))
            assert classes & {"dropdown", "toggle"}, f"{chapter.stem}: a solution is not collapsed: {sorted(classes)}"
        text = "\n".join(box.get_text() for box in boxes)
        lines = {line.strip() for line in text.split("\n")}
        flat = " ".join(text.split())
        missing = [line for line in code if line not in lines] + [run for run in runs if run not in flat]
        assert not missing, f"{chapter.stem}: not inside a collapsed solution in the instructor book: {missing[:5]}"
        assert len(code) + len(runs) >= 3, f"{chapter.stem}: too little to check"


@pytest.mark.chapters
def test_book_numbers_exercises_as_the_handouts_name_them(built_book):
    """Chapter N's exercises read "Exercise N.k" on the page, the names the handouts and the teaching
    page use, in the chapter's order."""
    from bs4 import BeautifulSoup

    numbers = handouts().chapter_numbers(ROOT)
    checked = 0
    for chapter in CHAPTERS:
        parsed = handouts().parse(chapter, numbers[chapter])
        if not parsed.exercises:
            continue
        page = BeautifulSoup((built_book / chapter.relative_to(ROOT).with_suffix(".html")).read_text(), "html.parser")
        shown = [
            (box.get("id"), " ".join(box.select_one(".admonition-title").get_text().split()))
            for box in page.select("div.exercise")
        ]
        named = [(e.label, f"Exercise {e.name}") for e in parsed.exercises]
        assert [(label, title.split(" (")[0]) for label, title in shown] == named, chapter.stem
        checked += len(named)
    assert checked >= 40


@pytest.mark.chapters
def test_student_book_has_no_solutions(built_student_book):
    parts = solution_parts()
    code = sorted({line for c, _ in parts.values() for line in c})
    runs = sorted({run for _, r in parts.values() for run in r})
    assert code and runs and all(len(run) >= MIN_RUN for run in runs)
    files = [path for path in built_student_book.rglob("*") if path.is_file()]
    assert any(path.name == "searchindex.js" for path in files)
    leaks = []
    for path in files:
        raw = path.read_bytes().decode("utf-8", errors="ignore")
        texts = [raw, html_text(raw)] if path.suffix == ".html" else [raw]
        for text in texts:
            lines = {line.strip() for line in text.split("\n")}
            flat = " ".join(text.split())
            leaks += [(path.relative_to(built_student_book), line) for line in code if line in lines or line in text]
            leaks += [(path.relative_to(built_student_book), run) for run in runs if run in flat]
    assert not leaks, f"solutions in the student book: {sorted(set(leaks))[:8]}"
    for chapter in parts:  # the exercises themselves are there
        page = (built_student_book / chapter.relative_to(ROOT).with_suffix(".html")).read_text()
        assert 'class="exercise' in page and 'class="solution' not in page, chapter.stem
