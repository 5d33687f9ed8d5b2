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
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    yield driver
    driver.quit()


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
