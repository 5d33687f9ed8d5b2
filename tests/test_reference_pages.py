"""The reference pages of the book: glossary, methods table, "which method" guide, API reference.

The page checks are plain functions of the built HTML directory, so they can also be run on a book
built by hand (``check_all(Path("/tmp/book/_build/html"))``); the tests call them on the `built_book`.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml
from solutions import handouts

import spectrallab as sl
import spectrallab.widgets as slw
from conftest import ROOT
from spectrallab.methods.base import registered

REFERENCE = ["notation", "glossary", "methods_table", "which_method", "api"]


def soup(html_dir: Path, stem: str):
    from bs4 import BeautifulSoup

    page = html_dir / "book" / f"{stem}.html"
    assert page.exists(), f"missing page {page}"
    return BeautifulSoup(page.read_text(), "html.parser")


def chapter_stems() -> list[str]:
    """The numbered chapters of the toc (not the preface, not the reference part)."""
    numbers = handouts().chapter_numbers(ROOT)
    return [path.stem for path, number in numbers.items() if number is not None]


def check_in_toc(html_dir: Path) -> None:
    nav = soup(html_dir, "lora").select_one("nav.bd-docs-nav")
    linked = {Path(a["href"].split("#")[0]).stem for a in nav.select("a[href]")}
    missing = [stem for stem in REFERENCE if stem not in linked]
    assert not missing, f"reference pages not in the table of contents: {missing}"
    captions = [c.get_text(strip=True) for c in nav.select("p.caption")]
    assert "Reference" in captions, captions


def check_api(html_dir: Path) -> None:
    page = soup(html_dir, "api")
    ids = {node["id"] for node in page.select("[id]")}
    modules = {"linalg": "module-spectrallab.linalg", "tasks": "module-spectrallab.tasks"}
    expected = {name: modules.get(name, f"spectrallab.{name}") for name in sl.__all__}
    missing = sorted(name for name, anchor in expected.items() if anchor not in ids)
    assert not missing, f"the API page does not document spectrallab.{missing}"
    widgets = [n for n in slw.__all__ if not isinstance(getattr(slw, n), type(sl))]  # modules aside
    missing = [name for name in widgets if f"spectrallab.widgets.{name}" not in ids]
    assert not missing, f"the API page does not document spectrallab.widgets.{missing}"
    classes = [f"{cls.__module__}.{cls.__qualname__}" for cls in registered().values()]
    missing = [name for name in classes if name not in ids]
    assert not missing, f"the API page does not document the method classes {missing}"
    # Generated from docstrings, not stubs: apply's entry carries its docstring's text.
    entry = page.find(id="spectrallab.apply").find_parent("dl")
    assert len(entry.select_one("dd").get_text()) > 200


def check_methods_table(html_dir: Path) -> None:
    page = soup(html_dir, "methods_table")
    tables = page.select("table.methods-table")
    assert len(tables) == 2, f"{len(tables)} methods tables"
    for table in tables:
        rows = [tr.select("td") for tr in table.select("tbody tr")]
        names = [cells[0].get_text(strip=True) for cells in rows]
        assert names == sl.methods(), names
        assert all(cell.get_text(strip=True) for cells in rows for cell in cells), "an empty cell"
    counts = {
        cells[0].get_text(strip=True): cells for cells in (tr.select("td") for tr in tables[0].select("tbody tr"))
    }
    assert counts["lora"][1].get_text() == "2dr" and counts["full"][1].get_text() == "d²"  # fitted, not typed
    sources = {
        cells[0].get_text(strip=True): cells for cells in (tr.select("td") for tr in tables[1].select("tbody tr"))
    }
    assert "HF PEFT: same outputs" in sources["lora"][-1].get_text()
    assert "galore-torch: same weights" in sources["galore"][-1].get_text()
    assert "SVD of W" in sources["pissa"][2].get_text() and sources["lora"][2].get_text() == "—"


def check_which_method(html_dir: Path) -> None:
    page = soup(html_dir, "which_method")
    chapters = set(chapter_stems())
    items = [li for block in page.select("div.recommendations") for li in block.find_all("li", recursive=True)]
    assert len(items) >= 12, f"{len(items)} recommendations"
    for li in items:
        text = " ".join(li.get_text().split())
        targets = [Path(a["href"].split("#")[0]).stem for a in li.select("a[href]")]
        assert chapters & set(targets), f"a recommendation links to no chapter: {text[:120]}"
        quotes = li.select("a.measured")
        assert quotes, f"a recommendation quotes no measurement: {text[:120]}"
        assert any(re.search(r"\d", q.get_text()) for q in quotes), f"no measured number quoted: {text[:120]}"
        for quote in quotes:
            stem, anchor = quote["href"].split("#")
            target = soup(html_dir, Path(stem).stem)
            assert Path(stem).stem in chapters and target.find(id=anchor) is not None, quote["href"]
            # The quote is what the chapter printed, verbatim (whitespace aside).
            marked = target.find(id=anchor)  # the section (or a span at its top, then its section) or the cell
            scope = marked if marked.select("pre") else marked.find_parent("section")
            printed = " ".join(" ".join(o.get_text().split()) for o in scope.select("pre"))
            assert " ".join(quote.get_text().split()) in printed, quote.get_text()


def check_glossary(html_dir: Path) -> None:
    page = soup(html_dir, "glossary")
    terms = [dt.get_text(strip=True).rstrip("¶#") for dt in page.select("dl.glossary dt")]
    for needed in [
        "rank",
        "singular value",
        "SVD",
        "truncation",
        "Eckart–Young",
        "LoRA",
        "adapter",
        "intruder dimension",
        "effective rank",
        "spectral energy",
        "SST",
        "ReLoRA restart",
        "GaLore projection",
        "sparse support",
        "hyperbolic",
        "profile",
        "claim check",
        "merge",
    ]:
        assert needed in terms, f"glossary lacks {needed!r}: {terms}"
    chapters = set(chapter_stems()) | {"preface", "methods_table"}
    for dd in page.select("dl.glossary dd"):
        linked = {Path(a["href"].split("#")[0]).stem for a in dd.select("a[href]")}
        assert linked & chapters, f"a glossary entry links to no chapter: {dd.get_text()[:80]}"


def check_all(html_dir: Path) -> None:
    for check in (check_in_toc, check_api, check_methods_table, check_which_method, check_glossary):
        check(html_dir)


def test_reference_pages_are_an_unnumbered_last_part_and_chapters_keep_their_numbers():
    toc = yaml.safe_load((ROOT / "_toc.yml").read_text())
    assert toc["parts"][-1]["caption"] == "Reference" and toc["parts"][-1]["numbered"] is False
    assert [Path(e["file"]).name for e in toc["parts"][-1]["chapters"]] == REFERENCE
    numbers = {path.stem: number for path, number in handouts().chapter_numbers(ROOT).items()}
    assert all(numbers[stem] is None for stem in REFERENCE + ["preface"])
    numbered = [stem for stem, number in numbers.items() if number is not None]
    assert [numbers[stem] for stem in numbered] == list(range(1, len(numbered) + 1))
    assert numbered[0] == "widgets" and numbered[-1] == "teaching"


@pytest.mark.chapters
@pytest.mark.parametrize(
    "check",
    [check_in_toc, check_api, check_methods_table, check_which_method, check_glossary],
    ids=lambda f: f.__name__,
)
def test_reference_page(built_book, check):
    check(built_book)
