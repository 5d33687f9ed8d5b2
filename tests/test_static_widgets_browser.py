"""The static book's widgets respond with no kernel: on the built widgets page, a click on a plotly
slider's rail moves SpectrumExplorer to another precomputed rank and the figure redraws, SSTView's
period slider does the same, Compare's buttons hide runs and its x-axis menu switches the left panel
to final values against trainable parameters — plotly.js alone, no Python.

The page checks are functions of a driver and an HTML directory (:func:`check_static_widgets`), so they
can also be run on a book built by hand (``python tests/test_static_widgets_browser.py DIR``).
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import pytest
from test_browser import browser, wait_for  # noqa: F401  (browser: the fixture)

# The figures the page draws, by the widget named in their layout.meta (widgets/static.py).
FIGURES_JS = """
return [...document.querySelectorAll('.js-plotly-plot')].map((g, i) => ({
    index: i,
    widget: g.layout && g.layout.meta && g.layout.meta.spectrallab ? g.layout.meta.spectrallab.widget : null,
    sliders: g.layout && g.layout.sliders ? g.layout.sliders.length : 0,
    menus: g.layout && g.layout.updatemenus ? g.layout.updatemenus.length : 0,
}));"""

# What a figure shows now: its title, the slider's active step, the first drawn line's path, and a
# fingerprint of every trace's full (decoded) x/y/z, and which traces are visible.
STATE_JS = """
const g = document.querySelectorAll('.js-plotly-plot')[arguments[0]];
const flat = a => a === undefined || a === null ? []
    : Array.from(a, v => (v && v.length !== undefined) ? Array.from(v) : v);
const line = g.querySelector('.scatterlayer .trace path.js-line');
return {
    title: g._fullLayout.title.text,
    active: g._fullLayout.sliders && g._fullLayout.sliders.length ? g._fullLayout.sliders[0].active : null,
    path: line ? line.getAttribute('d') : null,
    data: JSON.stringify(g._fullData.map(t =>
        [flat(t.x).length, flat(t.y).slice(0, 50), flat(t.z).length ? flat(t.z)[0] : null])),
    visible: g._fullData.map(t => t.visible),
    drawn: g.querySelectorAll('.scatterlayer .trace').length,
};"""


def state(driver, index: int) -> dict:
    return driver.execute_script(STATE_JS, index)


def click_rail(driver, index: int, fraction: float) -> None:
    """Click the figure's slider rail at ``fraction`` of its width (what a reader's click or drag does)."""
    from selenium.webdriver.common.action_chains import ActionChains

    plot = driver.find_elements("css selector", ".js-plotly-plot")[index]
    rail = plot.find_element("css selector", ".slider-group .slider-rail-touch-rect")
    driver.execute_script("arguments[0].scrollIntoView({block: 'center'})", plot)
    width = rail.size["width"]
    ActionChains(driver).move_to_element_with_offset(rail, int((fraction - 0.5) * width), 0).click().perform()


def changes(driver, index: int, before: dict, timeout: float = 10.0) -> dict:
    end = time.monotonic() + timeout
    while True:
        now = state(driver, index)
        if now != before or time.monotonic() > end:
            return now
        time.sleep(0.1)


def check_static_widgets(driver, html: Path) -> None:
    page = html / "book" / "widgets.html"
    driver.get(page.as_uri())
    assert wait_for(driver, "return document.querySelectorAll('.js-plotly-plot .main-svg').length > 0"), page
    time.sleep(1.0)
    figures = {f["widget"]: f for f in driver.execute_script(FIGURES_JS) if f["widget"]}
    assert {"SpectrumExplorer", "SSTView", "Compare"} <= set(figures), f"static widgets found: {sorted(figures)}"

    for widget, fraction in (("SpectrumExplorer", 0.95), ("SSTView", 0.5)):
        index = figures[widget]["index"]
        assert figures[widget]["sliders"] == 1, f"{widget} has no plotly slider"
        before = state(driver, index)
        click_rail(driver, index, fraction)
        after = changes(driver, index, before)
        assert after["active"] != before["active"], f"{widget}: the slider did not move ({before['active']})"
        assert after["data"] != before["data"], f"{widget}: the slider moved but the figure's data did not change"
        assert after["path"] != before["path"], f"{widget}: the drawn line did not change"
        assert after["title"] != before["title"], f"{widget}: the title did not follow the slider"

    index = figures["Compare"]["index"]
    before = state(driver, index)
    plot = driver.find_elements("css selector", ".js-plotly-plot")[index]
    buttons = plot.find_elements("css selector", ".updatemenu-button")
    assert len(buttons) >= 2, "Compare has no run buttons"
    driver.execute_script("arguments[0].scrollIntoView({block: 'center'})", plot)
    buttons[1].click()  # "only <first method>"
    after = changes(driver, index, before)
    assert sum(v is True for v in after["visible"]) < sum(v is True for v in before["visible"]), (
        f"Compare: 'only …' hid no run ({before['visible']} -> {after['visible']})"
    )
    assert after["drawn"] < before["drawn"], "Compare: the hidden runs are still drawn"

    # The x-axis dropdown: "trainable parameters" redraws the left panel as final values per method.
    x_title = "return document.querySelectorAll('.js-plotly-plot')[arguments[0]]._fullLayout.xaxis.title.text"
    before, title_before = state(driver, index), driver.execute_script(x_title, index)
    header = plot.find_elements("css selector", ".updatemenu-header")
    assert header, "Compare has no x-axis menu"
    header[-1].click()
    options = [o for o in plot.find_elements("css selector", ".updatemenu-dropdown-button") if o.text]
    assert [o.text for o in options] == ["step", "trainable parameters", "rank"], [o.text for o in options]
    options[1].click()
    after = changes(driver, index, before)
    assert after["data"] != before["data"], "Compare: the x-axis menu changed no data"
    assert driver.execute_script(x_title, index) == "trainable parameters" != title_before


@pytest.mark.browser
def test_static_sliders_and_buttons_change_the_figure_without_a_kernel(browser, built_book):  # noqa: F811
    check_static_widgets(browser, built_book)


if __name__ == "__main__":  # check a book built by hand: python tests/test_static_widgets_browser.py DIR
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = "/usr/bin/chromium"
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--window-size=1280,1000"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service("/usr/bin/chromedriver"), options=options)
    try:
        check_static_widgets(driver, Path(sys.argv[1]))
        print("static widgets respond")
    finally:
        driver.quit()
