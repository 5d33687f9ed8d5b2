"""The built book in a real browser: Debian's headless Chromium (never a downloaded browser).

Each chapter page must show its plotly figures (rendered SVG, not just a placeholder div), its
math typeset by the bundled MathJax, and log no errors to the console. Screenshots are saved to
test-artifacts/ for a person to look at.
"""

from __future__ import annotations

import os
import shutil
import time

import pytest
from test_chapters import CHAPTERS

from conftest import ROOT

ARTIFACTS = ROOT / "test-artifacts"
CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"


def chromium_missing() -> str | None:
    for path in (CHROMIUM, CHROMEDRIVER):
        if not shutil.which(path):
            return f"{path} is not installed (Debian packages chromium, chromium-driver)"
    return None


@pytest.fixture(scope="module")
def browser():
    missing = chromium_missing()
    if missing:
        if os.environ.get("SPECTRALLAB_REQUIRE_BROWSER"):
            pytest.fail(missing)
        pytest.skip(missing)
    driver = chromium()
    yield driver
    driver.quit()


def chromium():
    """A selenium driver of Debian's headless Chromium (also for scripts that check a built book)."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--no-first-run",
        "--disable-quic",
        "--window-size=1280,1000",
    ):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    return webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)


def wait_for(driver, script: str, timeout: float = 20.0):
    end = time.monotonic() + timeout
    while True:
        value = driver.execute_script(script)
        if value or time.monotonic() > end:
            return value
        time.sleep(0.2)


# What plotly.js draws for a trace: lines and markers are `.trace` groups; a heatmap is an image in
# an `.hm` group; a table lives in `.table` groups.
DRAWN_TRACE = ".main-svg .trace, .main-svg .hm, .main-svg .table"


@pytest.mark.browser
@pytest.mark.chapters
@pytest.mark.parametrize("chapter", CHAPTERS, ids=lambda p: p.stem)
def test_chapter_page_renders_figures_and_math_without_console_errors(browser, built_book, chapter):
    page = built_book / chapter.relative_to(ROOT).with_suffix(".html")
    html = page.read_text()
    expected_figures = html.count('class="plotly-graph-div"')
    has_math = 'class="math' in html
    browser.get_log("browser")  # drop what earlier pages logged
    browser.get(page.as_uri())

    if expected_figures:
        drawn = wait_for(
            browser,
            f"""
            const DRAWN = {DRAWN_TRACE!r};
            const divs = document.querySelectorAll('.js-plotly-plot');
            return divs.length >= {expected_figures} &&
                   [...divs].every(d => d._fullLayout && d.querySelector(DRAWN) !== null)
                   ? divs.length : 0;""",
        )
        assert drawn >= expected_figures, f"{chapter.stem}: {expected_figures} plotly figures expected, drawn: {drawn}"
        traces = browser.execute_script(
            "return [...document.querySelectorAll('.js-plotly-plot')].map(d => d.data.length);"
        )
        assert all(n > 0 for n in traces), f"{chapter.stem}: a figure has no data traces"
    if has_math:
        assert wait_for(browser, "return document.querySelectorAll('mjx-container').length"), (
            f"{chapter.stem}: math was not typeset"
        )
    ARTIFACTS.mkdir(exist_ok=True)
    browser.save_screenshot(str(ARTIFACTS / f"page-{chapter.stem}.png"))
    errors = [e["message"] for e in browser.get_log("browser") if e["level"] == "SEVERE"]
    assert not errors, f"{chapter.stem}: console errors: {errors}"


# -- nothing clipped: every output and code block fits the text column ------------------------------

# The blocks a reader must see in full: code (cells and literal blocks), every output a cell prints
# (text, HTML tables, rich outputs) and every table. Plotly figures size themselves (widgets/plots.py),
# so an output that holds one is left to the figure tests.
BLOCKS = "article.bd-article pre, article.bd-article div.output, article.bd-article table"

OVERWIDE_BLOCKS = """
const column = document.querySelector('article.bd-article');
// Collapsed solutions and hidden inputs must fit too, once a reader opens them.
document.querySelectorAll('article.bd-article details').forEach(d => { d.open = true; });
const style = getComputedStyle(column);
const width = column.clientWidth - parseFloat(style.paddingLeft) - parseFloat(style.paddingRight);
const wide = [];
for (const el of column.querySelectorAll(arguments[0])) {
  if (el.closest('.js-plotly-plot') || el.querySelector('.js-plotly-plot')) continue;
  if (!el.getClientRects().length) continue;  // not displayed
  // Wider than its own box (scrolls or spills out) or than the column it sits in.
  const over = Math.max(el.scrollWidth - el.clientWidth, el.scrollWidth - width);
  if (over > 1) {
    const cell = el.closest('.cell');
    const where = cell && cell.id ? '#' + cell.id : (el.closest('section[id]') || {}).id || '';
    wide.push({block: el.tagName.toLowerCase() + '.' + [...el.classList].join('.'), where: where,
               scroll_width: el.scrollWidth, box_width: el.clientWidth, column_width: Math.round(width),
               text: (el.innerText || '').trim().split('\\n')[0].slice(0, 80)});
  }
}
// Text outputs wrap (book/_static/spectrallab.css), which keeps prose readable but breaks a
// table: a row of aligned columns (two or more runs of 2+ spaces) must fit on one line of its box.
const TABLE_ROW = /\\S {2,}\\S.*\\S {2,}\\S/;
const ruler = document.createElement('canvas').getContext('2d');
for (const pre of column.querySelectorAll('.cell_output pre')) {
  if (!pre.getClientRects().length) continue;
  const cs = getComputedStyle(pre);
  ruler.font = `${cs.fontStyle} ${cs.fontWeight} ${cs.fontSize} ${cs.fontFamily}`;
  const room = pre.clientWidth - parseFloat(cs.paddingLeft) - parseFloat(cs.paddingRight);
  for (const line of pre.textContent.split('\\n')) {
    const needed = TABLE_ROW.test(line) ? ruler.measureText(line).width : 0;
    if (needed > room + 1) {
      const cell = pre.closest('.cell');
      wide.push({block: 'table row in pre', where: cell && cell.id ? '#' + cell.id : '',
                 scroll_width: Math.ceil(needed), box_width: Math.floor(room), column_width: Math.round(width),
                 text: line.slice(0, 80)});
    }
  }
}
return wide;
"""


def overwide_blocks(driver, page, width: int = 1400) -> list[dict]:
    """The output and code blocks of ``page`` (a built HTML file) wider than the text column in a
    ``width``-pixel window, each as {block, where, scroll_width, box_width, column_width, text}."""
    driver.set_window_size(width, 1000)
    driver.get(page.as_uri())
    wait_for(driver, "return document.readyState === 'complete'")
    # Widths are final once MathJax has typeset (it changes line heights, not widths, but may wrap).
    wait_for(driver, "return !window.MathJax || !MathJax.startup || MathJax.startup.promise ? 1 : 0")
    if driver.execute_script("return !!(window.MathJax && MathJax.startup && MathJax.startup.promise)"):
        driver.execute_async_script("MathJax.startup.promise.then(arguments[arguments.length - 1]);")
    return driver.execute_script(OVERWIDE_BLOCKS, BLOCKS)


def page_overflow(driver) -> int:
    """How far the page itself scrolls sideways (px): 0 when everything wide scrolls in its own box."""
    return driver.execute_script("return document.documentElement.scrollWidth - document.documentElement.clientWidth")


@pytest.mark.browser
@pytest.mark.chapters
@pytest.mark.parametrize("chapter", CHAPTERS, ids=lambda p: p.stem)
def test_no_output_or_code_block_is_wider_than_the_column(browser, built_book, chapter):
    page = built_book / chapter.relative_to(ROOT).with_suffix(".html")
    wide = overwide_blocks(browser, page, 1400)
    lines = [
        f"{b['block']} in {b['where'] or 'the page'}: {b['scroll_width']} px wide in a {b['box_width']} px box, "
        f"column {b['column_width']} px ({b['text']!r})"
        for b in wide
    ]
    assert not wide, f"{chapter.stem} at 1400 px: {len(wide)} blocks wider than the column:\n" + "\n".join(lines)


@pytest.mark.browser
@pytest.mark.chapters
def test_search_snippets_show_math_as_symbols_not_latex(browser, built_book):
    """Sphinx makes a result's snippet from the page's text, where math is TeX source; the book's
    search page turns it into symbols first (book/_static/search_snippets.js)."""
    browser.get((built_book / "search.html").as_uri())
    assert wait_for(browser, "return typeof Search !== 'undefined' && Search._withoutTex === true"), (
        "search.html did not install the snippet filter"
    )
    page = (
        '<html><body><div role="main"><p>the rank <span class="math notranslate nohighlight">\\(r\\)</span> '
        'update <span class="math notranslate nohighlight">\\(\\Delta W = \\mathrm{B}A^\\top\\)</span> with '
        '<span class="math notranslate nohighlight">\\(\\sigma_i \\le \\alpha/r\\)</span></p>'
        '<div class="math notranslate nohighlight">\\[\\begin{aligned} x \\end{aligned}\\]</div></div></body></html>'
    )
    text = browser.execute_script("return Search.htmlToText(arguments[0]);", page)
    assert "\\" not in text and "aligned" not in text, text
    assert "the rank r update ΔW = BAᵀ with σ_i ≤ α/r" in " ".join(text.split()), text


# -- phone width: no sideways page scroll, tables keep their columns --------------------------------

PHONE = 390  # px: the window of a phone held upright

# What makes a page wider than a phone's screen, and which rows of a printed table break.
#
# * The page must not scroll sideways: <html> is no wider than the window. Whatever reaches past the
#   right edge of the window without a box around it that scrolls (a table, display math) is named,
#   outermost first, so a failure says what to fix.
# * A printed table (the text output of a cell, see book/_ext/reading.py) must keep its columns: each
#   row that aligns columns (two or more runs of 2+ spaces, as the 1400 px check) renders as one line
#   of its box, which scrolls sideways instead of wrapping. The browser says how many lines a row
#   takes: the line boxes of a Range over the row's characters.
PHONE_JS = r"""
document.querySelectorAll('article.bd-article details').forEach(d => { d.open = true; });
const doc = document.documentElement;
const view = doc.clientWidth;
const out = {overflow: Math.max(doc.scrollWidth, document.body.scrollWidth) - view,
             past_edge: [], clipped: [], wrapped_rows: []};
const describe = el => el.tagName.toLowerCase() + [...el.classList].map(c => '.' + c).join('');
const where = el => { const cell = el.closest('.cell'); return cell && cell.id ? '#' + cell.id
                      : (el.closest('section[id]') || {}).id || ''; };
const scrolls = el => /auto|scroll/.test(getComputedStyle(el).overflowX);
const past = new Set(), fixed = new Set();
for (const el of document.body.querySelectorAll('*')) {
  const r = el.getBoundingClientRect();
  // A drawer (the theme's sidebars at phone width) is fixed to the window, off screen until opened: it
  // does not widen the page. An invisible element (a heading's # link) does, and counts.
  if (fixed.has(el.parentElement) || getComputedStyle(el).position === 'fixed') { fixed.add(el); continue; }
  if (!r.width || !r.height) continue;
  if (el.closest('mjx-assistive-mml')) continue;  // MathJax's copy for screen readers, never shown
  // the nearest box around it that does not let it spill: one that scrolls, or one that clips
  let box = el.parentElement;
  while (box && box !== document.body && getComputedStyle(box).overflowX === 'visible') box = box.parentElement;
  const edge = box && box !== document.body ? box.getBoundingClientRect().right : view;
  if (box && box !== document.body && !scrolls(box) && r.right > edge + 1 &&
      getComputedStyle(el).visibility !== 'hidden' &&
      el.closest('article.bd-article') && !el.closest('.js-plotly-plot')) {
    // cut off by a box that hides what does not fit (the theme's inline math boxes do)
    past.add(el);
    if (past.has(el.parentElement)) continue;
    out.clipped.push({element: describe(el), where: where(el), right: Math.round(r.right), edge: Math.round(edge),
                      text: (el.textContent || '').trim().slice(0, 80)});
    continue;
  }
  if (r.right <= Math.min(edge, view) + 1 || (box && box !== document.body)) continue;
  past.add(el);
  if (past.has(el.parentElement)) continue;  // its container already reaches past the edge
  out.past_edge.push({element: describe(el), where: where(el), right: Math.round(r.right), view: view,
                      text: (el.innerText || el.textContent || '').trim().split('\n')[0].slice(0, 80)});
}
const TABLE_ROW = /\S {2,}\S.*\S {2,}\S/;
for (const pre of document.querySelectorAll('article.bd-article .cell_output pre')) {
  if (!pre.getClientRects().length) continue;
  // the characters of the pre, as (text node, offset) pairs, to put a Range round each row
  const nodes = [];
  const walk = document.createTreeWalker(pre, NodeFilter.SHOW_TEXT);
  let text = '';
  for (let n = walk.nextNode(); n; n = walk.nextNode()) { nodes.push([n, text.length]); text += n.data; }
  const at = i => {
    let k = nodes.length - 1;
    while (k > 0 && nodes[k][1] > i) k--;
    return [nodes[k][0], i - nodes[k][1]];
  };
  let start = 0;
  for (const line of text.split('\n')) {
    const end = start + line.length;
    if (TABLE_ROW.test(line)) {
      const range = document.createRange();
      range.setStart(...at(start));
      range.setEnd(...at(end));
      const tops = [];
      for (const rect of range.getClientRects()) {
        if (rect.width > 0 && !tops.some(t => Math.abs(t - rect.top) < 3)) tops.push(rect.top);
      }
      if (tops.length > 1) out.wrapped_rows.push({where: where(pre), lines: tops.length, text: line.slice(0, 80)});
    }
    start = end + 1;
  }
}
return out;
"""


def phone_problems(driver, page, width: int = PHONE, theme: str = "light", timeout: float = 30.0) -> dict:
    """``page`` (a built HTML file) in a ``width``-px window in ``theme``, once its math is typeset and
    its figures drawn and reflowed (book/_static/figures.js): {overflow: px the page scrolls sideways,
    past_edge: [what reaches past the window's edge], clipped: [what a box of the
    text column cuts off], wrapped_rows: [table rows shown on several lines]}."""
    driver.set_window_size(width, 1000)
    driver.get(page.as_uri())
    wait_for(driver, "return document.readyState === 'complete'")
    if driver.execute_script("return !!(window.MathJax && MathJax.startup && MathJax.startup.promise)"):
        driver.execute_async_script("MathJax.startup.promise.then(arguments[arguments.length - 1]);")
    driver.execute_script(f"document.documentElement.dataset.theme = {theme!r};")
    figures = page.read_text().count('class="plotly-graph-div"')
    if figures:
        # drawn, and restyled for the theme and the width (figures.js marks each figure when done)
        wait_for(
            driver,
            f"const divs = document.querySelectorAll('.js-plotly-plot');"
            f"return divs.length >= {figures} && [...divs].every(d => d._fullLayout && d.querySelector({DRAWN_TRACE!r})"
            f" && (!document.querySelector('script[src*=\"figures.js\"]') ||"
            f"     (d.dataset.slTheme === {theme!r} && d.dataset.slNarrow !== undefined)));",
            timeout,
        )
        time.sleep(0.3)  # the last relayout's redraw
    return driver.execute_script(PHONE_JS)


def phone_report(name: str, found: dict, width: int = PHONE, theme: str = "light") -> str:
    lines = [f"{name} at {width} px ({theme}): the page scrolls {found['overflow']} px sideways"]
    lines += [
        f"  past the edge: {p['element']} in {p['where'] or 'the page'} reaches {p['right']} px ({p['text']!r})"
        for p in found["past_edge"]
    ]
    lines += [
        f"  clipped: {c['element']} in {c['where'] or 'the page'} reaches {c['right']} px in a box ending at "
        f"{c['edge']} px ({c['text']!r})"
        for c in found["clipped"]
    ]
    lines += [
        f"  table row on {r['lines']} lines in {r['where'] or 'the page'}: {r['text']!r}" for r in found["wrapped_rows"]
    ]
    return "\n".join(lines)


@pytest.mark.browser
@pytest.mark.chapters
@pytest.mark.parametrize("theme", ["light", "dark"])
@pytest.mark.parametrize("chapter", CHAPTERS, ids=lambda p: p.stem)
def test_page_reads_at_phone_width(browser, built_book, chapter, theme):
    page = built_book / chapter.relative_to(ROOT).with_suffix(".html")
    found = phone_problems(browser, page, PHONE, theme)
    assert found["overflow"] <= 1 and not (found["past_edge"] or found["clipped"] or found["wrapped_rows"]), (
        phone_report(chapter.stem, found, PHONE, theme)
    )


def measure(html: str, width: int = PHONE, themes: tuple[str, ...] = ("light",)) -> int:
    """Run the phone-width check on every page of the built book in ``html`` and print what it finds;
    returns the number of problems (``python tests/test_browser.py /tmp/book/_build/html``)."""
    from pathlib import Path

    driver = chromium()
    total = 0
    try:
        for page in sorted(Path(html).rglob("*.html")):
            if page.name in ("genindex.html", "search.html", "py-modindex.html") or "_static" in page.parts:
                continue
            for theme in themes:
                found = phone_problems(driver, page, width, theme)
                problems = (found["overflow"] > 1) + sum(
                    len(found[k]) for k in ("past_edge", "clipped", "wrapped_rows")
                )
                total += problems
                if problems:
                    print(phone_report(page.stem, found, width, theme))
    finally:
        driver.quit()
    print(f"{total} problems")
    return total


if __name__ == "__main__":
    import sys

    sys.exit(1 if measure(sys.argv[1], *(int(a) for a in sys.argv[2:3])) else 0)
