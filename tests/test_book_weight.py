"""The built book's weight: plotly.js served once from _static, not inlined into every chapter page;
a small search index without math; the whole instructor edition under 40 MB.

Measured before this check existed (ci profile): 119 MB, of which 82 MB were seventeen inlined
copies of plotly.js and 14 MB MathJax components the book never loads; a search fetched each
result's 5 MB page for its snippet. searchindex.js is about 0.1 MB; the bound leaves room for the
pages still to come (an API reference, a glossary).
"""

from __future__ import annotations

import pytest

import spectrallab.widgets.display as display

MAX_BOOK_BYTES = 40 * 2**20
MAX_SEARCHINDEX_BYTES = 1 * 2**20
PLOTLYJS_BANNER = "* plotly.js v"  # the first lines of plotly.min.js (book/_ext/offline_assets.py)


def book_bytes(html) -> int:
    return sum(path.stat().st_size for path in html.rglob("*") if path.is_file())


def pages_inlining_plotlyjs(html) -> list[str]:
    return [str(page.relative_to(html)) for page in html.rglob("*.html") if PLOTLYJS_BANNER in page.read_text()]


@pytest.mark.chapters
def test_the_built_book_is_under_40_mb(built_book):
    total = book_bytes(built_book)
    biggest = sorted(built_book.rglob("*.html"), key=lambda p: p.stat().st_size)[-3:]
    assert total < MAX_BOOK_BYTES, (
        f"the built book is {total / 2**20:.1f} MB (limit {MAX_BOOK_BYTES / 2**20:.0f} MB); largest pages: "
        + ", ".join(f"{p.name} {p.stat().st_size / 2**20:.1f} MB" for p in biggest)
    )


@pytest.mark.chapters
def test_no_page_inlines_plotlyjs_and_figure_pages_load_it_once_from_static(built_book):
    assert not pages_inlining_plotlyjs(built_book), pages_inlining_plotlyjs(built_book)
    bundle = built_book / "_static" / "plotly.min.js"
    assert bundle.is_file() and PLOTLYJS_BANNER in bundle.read_text()[:200]
    figure_pages = [p for p in built_book.rglob("*.html") if 'class="plotly-graph-div"' in p.read_text()]
    assert figure_pages, "no page has a figure: the check would prove nothing"
    for page in figure_pages:
        html = page.read_text()
        head = html[: html.index("</head>")]
        assert head.count("_static/plotly.min.js") == 1, f"{page.name}: plotly.js is not loaded once in the head"


@pytest.mark.chapters
def test_search_index_is_small_and_holds_no_latex(built_book):
    index = built_book / "searchindex.js"
    size = index.stat().st_size
    assert size < MAX_SEARCHINDEX_BYTES, f"searchindex.js is {size / 2**20:.2f} MB"
    text = index.read_text()
    # TeX control words that only an equation's source contains (book/_ext/reading.py drops math).
    for word in ("mathrm", "frac", "operatorname", "mathbf"):
        assert f'"{word}"' not in text, f"searchindex.js indexes the TeX word {word!r}"
    assert '"lora"' in text, "the index lost the prose (no entry for 'lora')"


def test_the_renderer_embeds_plotlyjs_in_a_notebook_and_leaves_it_to_the_book(monkeypatch):
    """A notebook (nbconvert, nbviewer) needs plotly.js in its own outputs; the book's pages load it."""
    import plotly.io._base_renderers as base

    published = []
    monkeypatch.setattr(base.ipython_display, "display_html", lambda html, raw: published.append(html))
    renderer = display.OfflineNotebookRenderer()

    monkeypatch.delenv(display.PLOTLYJS, raising=False)
    renderer.activate()
    assert len(published) == 1 and PLOTLYJS_BANNER in published[0]

    published.clear()
    monkeypatch.setenv(display.PLOTLYJS, "page")
    renderer.activate()
    assert published == []

    monkeypatch.setenv(display.PLOTLYJS, "cdn")
    with pytest.raises(ValueError, match="SPECTRALLAB_PLOTLYJS='cdn'"):
        renderer.activate()


def test_the_book_build_tells_its_kernels_to_leave_plotlyjs_to_the_page(monkeypatch):
    import importlib
    import sys

    from conftest import ROOT

    monkeypatch.syspath_prepend(str(ROOT / "book" / "_ext"))
    monkeypatch.setenv(display.PLOTLYJS, "embed")  # recorded, so the setup's change is undone after the test
    offline_assets = importlib.import_module("offline_assets")

    class App:
        config = type("Config", (), {})()

        def connect(self, *args, **kwargs):
            pass

    offline_assets.setup(App())
    assert display.plotlyjs_from_page()
    sys.modules.pop("offline_assets", None)
