"""Every figure of the built book, read in Chromium: nothing collides, log axes read, dark mode follows.

At a 1400 px window, in each figure of each chapter page, the legend's box must not meet the title's
or any annotation's (subplot titles, a line's label) nor the plot area (the data), the modebar must
not cover the title, and every tick label of a log axis must be the number at its tick written
plainly or as a power of ten (no SI prefixes such as 10n or 1p, no bare mantissas "2 3 4 5"). With
``data-theme="dark"`` on <html> (what the theme's button sets) every figure's background is dark,
and with it light again, white; in both themes every series colour (lines, markers and point labels
of traces with a legend entry or labels, coloured annotations) keeps a WCAG contrast of 3:1 against
the figure's background (greys on white excepted), and no two point labels meet. At 390 px the
panels of a figure do not overlap each other.

The page checks are plain functions of a selenium driver (:func:`figure_problems`,
:func:`dark_backgrounds`, :func:`narrow_overlaps`), so they can be run on any built book's pages
without the ``built_book`` fixture (see ``measure`` at the bottom).
"""

from __future__ import annotations

import time

import pytest
import test_browser
from test_browser import ARTIFACTS, DRAWN_TRACE, wait_for
from test_chapters import CHAPTERS

from conftest import ROOT

browser = test_browser.browser  # the same Chromium fixture (Debian's, headless)

MIN_CONTRAST = 3.0  # WCAG contrast of a series colour against the figure's background (plots.MIN_CONTRAST)

# What the page's figures.js reports once it has styled a figure (see book/_static/figures.js).
STYLED = "d => d.dataset.slTheme === '{theme}' && d.dataset.slNarrow !== undefined"

# One function in the page: every figure's problems, as short strings naming the figure.
PROBLEMS_JS = r"""
const box = e => { const r = e.getBoundingClientRect(); return (r.width > 0 && r.height > 0) ? r : null; };
const meet = (a, b, pad = 0) => a && b && a.left < b.right - pad && b.left < a.right - pad &&
                                 a.top < b.bottom - pad && b.top < a.bottom - pad;
const plain = t => String(t).replace(/<[^>]+>/g, ' ').replace(/\u2212/g, '-').replace(/\s+/g, ' ').trim();
function value(text) {               // the number a log-axis tick label writes, or NaN
  const raw = String(text).replace(/\u2212/g, '-').trim();
  const power = raw.match(/^(?:([\d.]+)\s*×\s*)?10<sup>(-?\d+)<\/sup>$/);   // 10⁻⁵, 2×10³
  if (power) return (power[1] ? parseFloat(power[1]) : 1) * Math.pow(10, parseInt(power[2]));
  const t = plain(text);
  return /^-?[\d.]+(e-?\d+)?$/.test(t) ? parseFloat(t) : NaN;     // 0.01, 250; not 10n, 1p, 5µ
}
const out = {legend_title: [], legend_data: [], modebar_title: [], log_ticks: [], raw_names: [], labels: [],
             figures: 0};
document.querySelectorAll('.js-plotly-plot').forEach((gd, n) => {
  if (!gd._fullLayout) return;
  out.figures++;
  const fl = gd._fullLayout;
  const name = `figure ${n + 1} "${plain((fl.title && fl.title.text) || '').slice(0, 50)}"`;
  const legend = gd.querySelector('.legend') && box(gd.querySelector('.legend .bg') || gd.querySelector('.legend'));
  const heads = [...gd.querySelectorAll('.gtitle, .annotation-text-g')].map(box).filter(Boolean);
  if (legend) {
    heads.forEach(h => { if (meet(legend, h)) out.legend_title.push(name); });
    gd.querySelectorAll('.nsewdrag').forEach(p => { if (meet(legend, box(p), 2)) out.legend_data.push(name); });
  }
  const title = gd.querySelector('.gtitle') && box(gd.querySelector('.gtitle'));
  const modebar = gd.querySelector('.modebar') && box(gd.querySelector('.modebar'));
  if (meet(title, modebar)) out.modebar_title.push(name);
  // Axis and subplot titles must be words or rendered symbols; a figure title may name a code
  // parameter (restart_warmup) or method (gated_lora), but not write a symbol's subscript plainly.
  const title_words = plain((fl.title && fl.title.text) || '');
  if (/(^|[^A-Za-z0-9])[A-Za-zα-ωΑ-Ω‖)′]_/.test(title_words)) out.raw_names.push(`${name}: "${title_words}"`);
  const words = [];
  Object.keys(fl).filter(k => /^[xy]axis\d*$/.test(k)).forEach(k => {
    const ax = fl[k];
    if (ax.visible !== false && ax.title && ax.title.text) words.push(plain(ax.title.text));
    if (ax.type !== 'log' || ax.visible === false) return;
    (ax._vals || []).forEach(v => {
      if (!v.text || v.minor) return;
      const shown = value(v.text), exact = Math.pow(10, v.x);
      if (!(Math.abs(shown - exact) <= 0.02 * exact)) out.log_ticks.push(`${name} ${k}: "${plain(v.text)}"`);
    });
  });
  // Point labels (a scatter trace's text): no two boxes may meet or touch (1 px of air at least),
  // within one trace or across traces.
  const labels = [...gd.querySelectorAll('.scatterlayer .trace')].filter(t => t.style.opacity !== '0')
      .flatMap(t => [...t.querySelectorAll('.textpoint text')])
      .map(e => [plain(e.textContent), box(e)]).filter(l => l[1] && l[0]);
  labels.forEach(([a, ra], i) => labels.slice(i + 1).forEach(([b, rb]) => {
    if (meet(ra, rb, -1)) out.labels.push(`${name}: "${a}" and "${b}"`);
  }));
  (fl.annotations || []).forEach(a => words.push(plain(a.text || '')));
  words.forEach(w => { if (/(^|[^A-Za-z0-9])[A-Za-zα-ωΑ-Ω‖)′]_/.test(w) || /\b\w+_\w+\b/.test(w))
                         out.raw_names.push(`${name}: "${w}"`); });
});
return out;
"""

# The paper colour plotly drew and the computed fill of the plot area's background rectangle.
DARK_JS = r"""
function lum(c) {               // relative brightness in [0, 1] of a CSS colour (#rgb, #rrggbb, rgb(), a name)
  const probe = document.createElement('canvas').getContext('2d');
  probe.fillStyle = '#000'; probe.fillStyle = String(c);   // the canvas normalizes it to #rrggbb or rgba()
  const s = probe.fillStyle;
  const [r, g, b] = s[0] === '#' ? [1, 3, 5].map(i => parseInt(s.slice(i, i + 2), 16)) : s.match(/[\d.]+/g).map(Number);
  return (0.2126 * r + 0.7152 * g + 0.0722 * b) / 255;
}
return [...document.querySelectorAll('.js-plotly-plot')].filter(gd => gd._fullLayout).map(gd => {
  const bg = gd.querySelector('.main-svg .bg');
  return {paper: lum(gd._fullLayout.paper_bgcolor), plot: bg ? lum(getComputedStyle(bg).fill) : null};
});
"""

# WCAG contrast against the figure's background of every colour that names a series or prints
# text in its colour: the line, marker and point-label colours of each trace with a legend entry or
# labels, and coloured annotations (a line's label). (Faint context — a trace without a legend entry
# and without labels, drawn translucent on purpose — is not a series colour.)
COLOUR_JS = r"""
const probe = document.createElement('canvas').getContext('2d');
function rgb(c) {               // a CSS colour as [r, g, b] in 0-255 (through the canvas's normalization)
  probe.fillStyle = '#000'; probe.fillStyle = String(c);
  const s = probe.fillStyle;
  return s[0] === '#' ? [1, 3, 5].map(i => parseInt(s.slice(i, i + 2), 16))
                      : s.match(/[\d.]+/g).slice(0, 3).map(Number);
}
function luminance(c) {
  const [r, g, b] = rgb(c).map(v => (v /= 255) <= 0.03928 ? v / 12.92 : Math.pow((v + 0.055) / 1.055, 2.4));
  return 0.2126 * r + 0.7152 * g + 0.0722 * b;
}
const ratio = (a, b) => {
  const [x, y] = [luminance(a), luminance(b)].sort((p, q) => q - p);
  return (x + 0.05) / (y + 0.05);
};
const plain = t => String(t || '').replace(/<[^>]+>/g, ' ').replace(/\s+/g, ' ').trim();
const out = [];
document.querySelectorAll('.js-plotly-plot').forEach((gd, n) => {
  const fl = gd._fullLayout;
  if (!fl) return;
  const bg = fl.paper_bgcolor;
  const figure = `figure ${n + 1} "${plain(fl.title && fl.title.text).slice(0, 40)}"`;
  const add = (what, colour) => {
    if (typeof colour === 'string' && !/^rgba\(.*,\s*0(\.0+)?\)$/.test(colour))
      out.push({figure, what, colour, ratio: ratio(colour, bg),
                chroma: (Math.max(...rgb(colour)) - Math.min(...rgb(colour))) / 255});
  };
  gd._fullData.forEach(t => {
    if (t.visible !== true || t.type !== 'scatter') return;
    const mode = t.mode || '';
    const labelled = mode.includes('text') && t.text;
    if (!(t.showlegend || labelled)) return;
    const who = `trace "${plain(t.name)}"`;
    if (mode.includes('lines') && t.line) add(`${who} line`, t.line.color);
    if (mode.includes('markers') && t.marker) add(`${who} marker`, t.marker.color);
    if (labelled && t.textfont) add(`${who} labels`, t.textfont.color);
  });
  (fl.annotations || []).forEach(a => {
    if (a.visible !== false && plain(a.text)) add(`annotation "${plain(a.text).slice(0, 30)}"`, a.font.color);
  });
});
return out;
"""

NARROW_JS = r"""
const box = e => { const r = e.getBoundingClientRect(); return (r.width > 0 && r.height > 0) ? r : null; };
const meet = (a, b) => a && b && a.left < b.right - 1 && b.left < a.right - 1 &&
                       a.top < b.bottom - 1 && b.top < a.bottom - 1;
const out = [];
document.querySelectorAll('.js-plotly-plot').forEach((gd, n) => {
  if (!gd._fullLayout) return;
  const panels = [...gd.querySelectorAll('.nsewdrag')].map(box).filter(Boolean);
  // overlaid axes share one plot area: only distinct boxes count
  const distinct = panels.filter((p, i) => !panels.slice(0, i).some(q =>
      Math.abs(q.left - p.left) < 1 && Math.abs(q.top - p.top) < 1 && Math.abs(q.width - p.width) < 1));
  distinct.forEach((p, i) => distinct.slice(i + 1).forEach(q => { if (meet(p, q)) out.push(`figure ${n + 1}`); }));
  const legend = gd.querySelector('.legend .bg') && box(gd.querySelector('.legend .bg'));
  if (legend) distinct.forEach(p => { if (meet(legend, p)) out.push(`figure ${n + 1}: legend on a panel`); });
  const title = gd.querySelector('.gtitle') && box(gd.querySelector('.gtitle'));
  const frame = box(gd);
  if (title && frame && title.right > frame.right + 2) out.push(`figure ${n + 1}: title wider than the figure`);
});
return out;
"""


def open_page(driver, page, width: int, theme: str = "light", timeout: float = 30.0) -> int:
    """Load ``page`` at ``width`` px in ``theme``; wait until every figure is drawn and styled."""
    driver.set_window_size(width, 1000)
    driver.get(page.as_uri())
    figures = page.read_text().count('class="plotly-graph-div"')
    if not figures:
        return 0
    wait_for(
        driver,
        f"const divs = document.querySelectorAll('.js-plotly-plot');"
        f"return divs.length >= {figures} && [...divs].every(d => d._fullLayout && d.querySelector({DRAWN_TRACE!r}));",
        timeout,
    )
    set_theme(driver, theme, timeout)
    return figures


def set_theme(driver, theme: str, timeout: float = 30.0) -> bool:
    driver.execute_script(f"document.documentElement.dataset.theme = {theme!r};")
    check = STYLED.format(theme=theme)
    # (a book built without figures.js — measured for comparison — has nothing to wait for)
    done = wait_for(
        driver,
        "return !document.querySelector('script[src*=\"figures.js\"]') || "
        f"[...document.querySelectorAll('.js-plotly-plot')].every({check});",
        timeout,
    )
    time.sleep(0.3)  # the last relayout's redraw
    return bool(done)


def figure_problems(driver) -> dict:
    return driver.execute_script(PROBLEMS_JS)


def dark_backgrounds(driver) -> list[dict]:
    return driver.execute_script(DARK_JS)


def colour_contrasts(driver) -> list[dict]:
    """``{figure, what, colour, ratio}`` for every series and label colour of the page's figures."""
    return driver.execute_script(COLOUR_JS)


def narrow_overlaps(driver) -> list[str]:
    return driver.execute_script(NARROW_JS)


FIGURE_CHAPTERS = [c for c in CHAPTERS if c.stem not in ("preface",)]


def page_of(built_book, chapter):
    return built_book / chapter.relative_to(ROOT).with_suffix(".html")


@pytest.mark.browser
@pytest.mark.chapters
@pytest.mark.parametrize("chapter", FIGURE_CHAPTERS, ids=lambda p: p.stem)
def test_figures_do_not_collide_and_log_axes_read(browser, built_book, chapter):
    page = page_of(built_book, chapter)
    if not open_page(browser, page, 1400):
        pytest.skip(f"{chapter.stem} has no figures")
    found = figure_problems(browser)
    assert found["figures"] > 0
    for kind in ("legend_title", "legend_data", "modebar_title", "log_ticks", "raw_names", "labels"):
        assert not found[kind], f"{chapter.stem}: {kind}: {found[kind]}"


@pytest.mark.browser
@pytest.mark.chapters
@pytest.mark.parametrize("chapter", FIGURE_CHAPTERS, ids=lambda p: p.stem)
def test_figures_follow_the_dark_theme_and_back(browser, built_book, chapter):
    page = page_of(built_book, chapter)
    if not open_page(browser, page, 1400, theme="dark"):
        pytest.skip(f"{chapter.stem} has no figures")
    dark = dark_backgrounds(browser)
    assert dark and all(f["paper"] < 0.25 and (f["plot"] is None or f["plot"] < 0.25) for f in dark), (
        f"{chapter.stem}: figures not dark in dark mode: {dark}"
    )
    low = [c for c in colour_contrasts(browser) if c["ratio"] < MIN_CONTRAST]
    assert not low, f"{chapter.stem}: series colours below {MIN_CONTRAST}:1 in dark mode: {low[:6]}"
    ARTIFACTS.mkdir(exist_ok=True)
    browser.save_screenshot(str(ARTIFACTS / f"dark-{chapter.stem}.png"))
    assert set_theme(browser, "light")
    light = dark_backgrounds(browser)
    assert all(f["paper"] > 0.9 for f in light), f"{chapter.stem}: figures stayed dark in light mode: {light}"
    # (on white, greys — context such as the dropped part of a spectrum — may stay pale)
    low = [c for c in colour_contrasts(browser) if c["ratio"] < MIN_CONTRAST and c["chroma"] > 0.15]
    assert not low, f"{chapter.stem}: series colours below {MIN_CONTRAST}:1 in light mode: {low[:6]}"


@pytest.mark.browser
@pytest.mark.chapters
@pytest.mark.parametrize("chapter", FIGURE_CHAPTERS, ids=lambda p: p.stem)
def test_figures_reflow_at_phone_width(browser, built_book, chapter):
    page = page_of(built_book, chapter)
    try:
        if not open_page(browser, page, 390):
            pytest.skip(f"{chapter.stem} has no figures")
        overlaps = narrow_overlaps(browser)
        log_ticks = figure_problems(browser)["log_ticks"]  # taller stacked panels: no mantissas either
        ARTIFACTS.mkdir(exist_ok=True)
        browser.save_screenshot(str(ARTIFACTS / f"phone-{chapter.stem}.png"))
    finally:
        browser.set_window_size(1280, 1000)
    assert not overlaps, f"{chapter.stem} at 390 px: {overlaps}"
    assert not log_ticks, f"{chapter.stem} at 390 px: log tick labels: {log_ticks}"
