"""A live widget in a real page: a Voilà server on 127.0.0.1 runs a notebook, Debian's headless
Chromium shows it, the test presses Play and Pause and watches the plotly figures.

What is checked, through the page only (the test never talks to the kernel):

* the notebook executes and draws its ipywidgets buttons and plotly ``FigureWidget`` plots, the
  spectrum already drawn before Play;
* after **Play** the loss trace grows, in several separate redraws (it is live, not redrawn once);
* after Play the spectrum trace changes;
* after **Pause** the figures settle and then stay unchanged for ``HOLD_SECONDS``;
* the browser console has no errors from our page (a few known, harmless ones are listed below).

The screenshot goes to test-artifacts/widget-live.png and the server's log to
test-artifacts/widget-live-server.log.

**The still the static book shows.** A training widget cannot run in a page without a kernel, so the
built book shows, under its finished figure, a still of the live widget (``Playground.static_note``).
This test is where a browser drives the live widget, so it makes that still: after Pause it crops the
page to the widget (controls + figure), scaled to :data:`STILL_SCALE`, into
test-artifacts/<still>; with ``SPECTRALLAB_REFRESH_STILLS=1`` (or when the committed one is missing)
it also writes book/images/<still>. It then checks the committed still: a PNG under
:data:`STILL_MAX_BYTES`, of about the fresh one's shape (a changed layout asks for a refresh).

Which notebook runs is data: :data:`LIVE_WIDGETS` lists :class:`LiveWidget` specs (the notebook's
code cells + where the loss and the spectrum are drawn). :data:`PLAYGROUND` is the
Playground as a reader would build it.

Why Voilà rather than JupyterLab: it executes the notebook itself when the page is requested, shows
only the outputs, and needs no clicking through menus; anywidget-based ``FigureWidget`` s (plotly 7)
and ipywidgets render in it as they do in Lab (Voilà loads the same federated lab extensions).
"""

from __future__ import annotations

import os
import re
import secrets
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

# The `browser` fixture skips without Chromium, and fails when SPECTRALLAB_REQUIRE_BROWSER is set.
from test_browser import ARTIFACTS, browser  # noqa: F401  (browser: the fixture)

# ------------------------------------------------------------------------------------------------
# The notebooks under test
# ------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class LiveWidget:
    """A notebook with a live widget, and where on the page its figures are.

    Plots are the page's ``.js-plotly-plot`` divs in document order; a trace is an index into that
    div's ``data`` (the same order as ``FigureWidget.data`` in Python). One figure with subplots
    means the same plot index with different trace indices.
    """

    name: str  # notebook file stem and test id
    cells: tuple[str, ...]  # the notebook's code cells, run in order by Voilà
    loss: tuple[int, int] = (0, 0)  # (plot, trace) whose number of points grows while playing
    spectrum: tuple[int, int] = (1, 0)  # (plot, trace) whose values change while playing
    plots: int = 2  # plotly divs the page must draw before the test starts
    play: str = "Play"  # button descriptions
    pause: str = "Pause"
    screenshot: str = "widget-live.png"  # file name in test-artifacts/
    min_redraws: int = 3  # distinct growing lengths the loss trace must show
    still: str | None = None  # the still of this widget the static book shows, in book/images/


# The Playground: one FigureWidget with subplots; trace 0 is the training loss (TRAIN), trace 4
# the layer's spectrum now (SPEC_NOW) — see widgets/playground.py. No ghost (the
# full-rank reference would train first), and a step budget it cannot finish during the test.
PLAYGROUND = LiveWidget(
    name="playground",
    loss=(0, 0),
    spectrum=(0, 4),
    plots=1,
    still="playground-live.png",
    cells=(
        """\
import os

import spectrallab.widgets as slw

# The server's environment reaches the kernel: live widgets, the ci profile.
assert os.environ["SPECTRALLAB_WIDGETS"] == "live" and os.environ["SPECTRALLAB_PROFILE"] == "ci"
w = slw.Playground.from_state({"scenario": "digits", "method": "lora", "rank": 4, "steps": 100_000,
                               "ghost": False})
w
""",
    ),
)

# Widgets driven in a real browser (give each its own `screenshot` name).
LIVE_WIDGETS = [PLAYGROUND]

# ------------------------------------------------------------------------------------------------
# Timeouts (upper bounds only: every wait returns as soon as its condition holds)
# ------------------------------------------------------------------------------------------------

SERVER_START_TIMEOUT = 60.0  # the server accepts connections
PAGE_TIMEOUT = 120.0  # kernel start + running every cell + drawing (torch import on 2 cores)
LIVE_TIMEOUT = 30.0  # Play -> the loss grows and the spectrum changes
SETTLE_TIMEOUT = 10.0  # Pause -> the figure stops changing (a step in flight may still land)
HOLD_SECONDS = 1.5  # ... and then stays unchanged this long
POLL = 0.1

STILL_SCALE = 0.7  # the still's pixels per CSS pixel: legible controls, a small file
STILL_MAX_BYTES = 200_000
STILLS = Path(__file__).resolve().parent.parent / "book" / "images"

# Browser console errors that are not ours (each checked against the message text):
KNOWN_CONSOLE_ERRORS = (
    # Voilà's "lab" template links Font Awesome CSS from cdn.jsdelivr.net; the test machine has no
    # network. It only styles icons; the page works without it.
    re.compile(r"^https://cdn\.jsdelivr\.net/npm/@fortawesome/\S+ - Failed to load resource"),
    # Leaving a page, Voilà asks the server to shut its kernel down with a beacon that carries no
    # XSRF token, which token auth answers with 403; the kernel is stopped with the server instead.
    re.compile(r"/voila/api/shutdown/\S+ - Failed to load resource: the server responded with a status of 403"),
    # No favicon request has failed with Voilà 0.5.13, but a 404 for one would be harmless.
    re.compile(r"/favicon\.ico - Failed to load resource"),
)

# Lab extensions Voilà must not load: jupytext's needs @jupyterlab/docmanager, which a Voilà page
# does not provide ("The getter for the shared module is not a function ... RUNTIME-012").
DENIED_LAB_EXTENSIONS = ("jupyterlab-jupytext",)

# ------------------------------------------------------------------------------------------------
# The server
# ------------------------------------------------------------------------------------------------


@dataclass
class Server:
    url: str  # http://127.0.0.1:PORT
    token: str
    root: Path  # the directory it serves notebooks from
    log: Path

    def page(self, notebook: str) -> str:
        return f"{self.url}/voila/render/{notebook}?token={self.token}"

    def log_tail(self, chars: int = 4000) -> str:
        return self.log.read_text(errors="replace")[-chars:] if self.log.exists() else "(no log)"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def isolated_environment(base: Path) -> dict[str, str]:
    """The server's (and so every kernel's) environment: no user or system Jupyter configuration,
    private data/runtime/IPython dirs, and Spectral Lab's test settings."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("JUPYTER_", "JPY_"))}
    dirs = {name: base / name for name in ("data", "runtime", "ipython", "home", "tmp")}
    for d in dirs.values():
        d.mkdir(parents=True, exist_ok=True)
    env.update(
        JUPYTER_NO_CONFIG="1",  # read no config files at all (user, env or system)
        JUPYTER_DATA_DIR=str(dirs["data"]),  # no user kernelspecs or lab extensions
        JUPYTER_RUNTIME_DIR=str(dirs["runtime"]),
        JUPYTER_PLATFORM_DIRS="0",
        IPYTHONDIR=str(dirs["ipython"]),  # no user profile or startup files in the kernel
        TMPDIR=str(dirs["tmp"]),  # JUPYTER_NO_CONFIG makes a temporary config dir here
        SPECTRALLAB_PROFILE="ci",
        SPECTRALLAB_WIDGETS="live",  # the widgets draw FigureWidgets, whatever they detect
        SPECTRALLAB_HOME=str(dirs["home"]),
        OMP_NUM_THREADS="1",
        PYTHONUNBUFFERED="1",
    )
    return env


def descendants(pid: int) -> list[int]:
    """Process ids below ``pid`` (Linux /proc; elsewhere none). Kernels run in sessions of their own
    (jupyter_client starts them so), so killing the server's process group does not reach them."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            ppid = int(stat.read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        children.setdefault(ppid, []).append(int(stat.parent.name))
    found, todo = [], [pid]
    while todo:
        kids = children.get(todo.pop(), [])
        found += kids
        todo += kids
    return found


def stop_server(proc: subprocess.Popen) -> None:
    """SIGTERM to the server's process group (Voilà then shuts its kernels down), SIGKILL after 15 s,
    then SIGKILL to any of its kernels still alive."""
    kernels = descendants(proc.pid)
    for sig, wait in ((signal.SIGTERM, 15), (signal.SIGKILL, 5)):
        if proc.poll() is not None:
            break
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            break
        try:
            proc.wait(wait)
        except subprocess.TimeoutExpired:
            continue
    deadline = time.monotonic() + 5
    for pid in kernels:
        while Path(f"/proc/{pid}").exists() and time.monotonic() < deadline:
            time.sleep(0.1)
        try:
            os.kill(pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass


@pytest.fixture(scope="module")
def voila_server(browser, tmp_path_factory, request) -> Server:  # noqa: F811 (the imported fixture)
    """A Voilà server on 127.0.0.1 (free port, token auth) serving a temporary directory.

    Asks for ``browser`` first, so that without Chromium the test skips (or fails when
    SPECTRALLAB_REQUIRE_BROWSER is set) before any server starts.
    """
    base = tmp_path_factory.mktemp("voila")
    root = base / "notebooks"
    root.mkdir()
    server = Server(url="", token=secrets.token_hex(16), root=root, log=base / "server.log")
    port = free_port()
    server.url = f"http://127.0.0.1:{port}"
    command = [
        str(Path(sys.executable).parent / "voila"),
        str(root),
        "--no-browser",
        "--Voila.ip=127.0.0.1",
        f"--port={port}",
        "--Voila.port_retries=0",
        f"--token={server.token}",
        "--show_tracebacks=True",
        f"--Voila.connection_dir_root={base / 'runtime'}",
        *[f"--VoilaConfiguration.extension_denylist={name}" for name in DENIED_LAB_EXTENSIONS],
    ]
    log = server.log.open("wb")
    proc = subprocess.Popen(
        command,
        cwd=root,
        env=isolated_environment(base),
        stdin=subprocess.DEVNULL,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )

    def finish():
        try:
            stop_server(proc)
        finally:
            log.close()
            ARTIFACTS.mkdir(exist_ok=True)
            (ARTIFACTS / "widget-live-server.log").write_text(server.log.read_text(errors="replace"))

    request.addfinalizer(finish)

    deadline = time.monotonic() + SERVER_START_TIMEOUT
    while True:
        if proc.poll() is not None:
            pytest.fail(f"the Voilà server exited with {proc.returncode}:\n{server.log_tail()}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            break
        except OSError:
            if time.monotonic() > deadline:
                pytest.fail(f"the Voilà server did not listen within {SERVER_START_TIMEOUT} s:\n{server.log_tail()}")
            time.sleep(POLL)
    return server


def write_notebook(path: Path, cells: tuple[str, ...]) -> None:
    import nbformat

    notebook = nbformat.v4.new_notebook(
        cells=[nbformat.v4.new_code_cell(source) for source in cells],
        metadata={"kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"}},
    )
    nbformat.write(notebook, path)


# ------------------------------------------------------------------------------------------------
# Reading the page
# ------------------------------------------------------------------------------------------------

PAGE_STATE_JS = """
const plots = [...document.querySelectorAll('.js-plotly-plot')];
return {
    plots: plots.filter(d => d._fullLayout && Array.isArray(d.data)).length,
    buttons: [...document.querySelectorAll('button.jupyter-button')].map(b => b.textContent.trim()),
    error: document.body.innerText.includes('Traceback (most recent call last)'),
};"""

# The number of points of one trace, and a fingerprint of all its data (x, y, z; typed arrays too).
TRACE_JS = """
const [plot, trace] = arguments;
const el = document.querySelectorAll('.js-plotly-plot')[plot];
const t = el && Array.isArray(el.data) ? el.data[trace] : undefined;
if (!t) return null;
const arr = a => (a === undefined || a === null) ? [] : Array.from(a, v => ArrayBuffer.isView(v) ? Array.from(v) : v);
const x = arr(t.x), y = arr(t.y), z = arr(t.z);
return {points: Math.max(x.length, y.length), fingerprint: JSON.stringify([x, y, z])};"""


def page_text(driver) -> str:
    return driver.execute_script("return document.body ? document.body.innerText : ''")[-4000:]


def read_trace(driver, where: tuple[int, int]) -> dict:
    value = driver.execute_script(TRACE_JS, *where)
    assert value is not None, f"no trace {where[1]} in plotly plot {where[0]} on the page"
    return value


def button(driver, description: str):
    """The ipywidgets button whose text (its description; an icon adds no text) is ``description``."""
    from selenium.webdriver.common.by import By

    xpath = (
        f"//button[contains(concat(' ', normalize-space(@class), ' '), ' jupyter-button ')]"
        f"[normalize-space(.)='{description}']"
    )
    found = [b for b in driver.find_elements(By.XPATH, xpath) if b.is_displayed()]
    assert found, f"no visible button {description!r} on the page"
    return found[0]


def open_live_widget(driver, server: Server, widget: LiveWidget) -> None:
    """Load the notebook's Voilà page and wait until its plots and buttons are drawn."""
    write_notebook(server.root / f"{widget.name}.ipynb", widget.cells)
    driver.set_page_load_timeout(PAGE_TIMEOUT)
    driver.get_log("browser")  # drop what earlier pages logged
    driver.get(server.page(f"{widget.name}.ipynb"))  # returns once Voilà has run every cell
    deadline = time.monotonic() + PAGE_TIMEOUT
    while True:
        state = driver.execute_script(PAGE_STATE_JS)
        if state["error"]:
            pytest.fail(f"{widget.name}: a cell raised:\n{page_text(driver)}")
        if state["plots"] >= widget.plots and {widget.play, widget.pause} <= set(state["buttons"]):
            return
        if time.monotonic() > deadline:
            pytest.fail(
                f"{widget.name}: after {PAGE_TIMEOUT} s the page shows {state['plots']} of "
                f"{widget.plots} plots and buttons {state['buttons']}.\nPage text:\n{page_text(driver)}"
                f"\nServer log:\n{server.log_tail()}"
            )
        time.sleep(POLL)


# The widget's box on the page: the outermost ipywidgets box holding the first plotly figure.
WIDGET_BOX_JS = """
const plot = document.querySelector('.js-plotly-plot');
let box = plot, node = plot;
while (node && node !== document.body) {
    if (node.classList && node.classList.contains('widget-box')) box = node;
    node = node.parentElement;
}
const r = box.getBoundingClientRect();
return {x: r.left + window.scrollX, y: r.top + window.scrollY, width: r.width, height: r.height};"""


def png_size(data: bytes) -> tuple[int, int]:
    """(width, height) from a PNG's IHDR chunk."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG file"
    return int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")


def make_still(driver, widget: LiveWidget) -> None:
    """Crop the page to the widget, write the still, refresh the committed one if asked, and check it."""
    import base64

    box = driver.execute_script(WIDGET_BOX_JS)
    shot = driver.execute_cdp_cmd(
        "Page.captureScreenshot",
        {"format": "png", "captureBeyondViewport": True, "clip": {**box, "scale": STILL_SCALE}},
    )
    fresh = base64.b64decode(shot["data"])
    ARTIFACTS.mkdir(exist_ok=True)
    (ARTIFACTS / widget.still).write_bytes(fresh)
    committed = STILLS / widget.still
    if os.environ.get("SPECTRALLAB_REFRESH_STILLS") or not committed.exists():
        STILLS.mkdir(parents=True, exist_ok=True)
        committed.write_bytes(fresh)
    data = committed.read_bytes()
    assert len(data) < STILL_MAX_BYTES, (
        f"{committed} is {len(data)} bytes (limit {STILL_MAX_BYTES}): every page with a {widget.name} embeds it"
    )
    (w0, h0), (w1, h1) = png_size(data), png_size(fresh)
    assert abs((w0 / h0) / (w1 / h1) - 1) < 0.25, (
        f"the committed still {committed} ({w0}×{h0}) no longer has the live widget's shape ({w1}×{h1}, "
        f"test-artifacts/{widget.still}): refresh it with SPECTRALLAB_REFRESH_STILLS=1"
    )


def console_errors(driver) -> list[str]:
    return [
        e["message"]
        for e in driver.get_log("browser")
        if e["level"] == "SEVERE" and not any(p.search(e["message"]) for p in KNOWN_CONSOLE_ERRORS)
    ]


# ------------------------------------------------------------------------------------------------
# The test
# ------------------------------------------------------------------------------------------------


@pytest.mark.browser
@pytest.mark.parametrize("widget", LIVE_WIDGETS, ids=lambda w: w.name)
def test_play_makes_the_figures_live_and_pause_freezes_them(browser, voila_server, widget):  # noqa: F811
    try:
        open_live_widget(browser, voila_server, widget)
        loss0, spectrum0 = read_trace(browser, widget.loss), read_trace(browser, widget.spectrum)
        assert spectrum0["points"] > 0, (
            f"{widget.name}: the spectrum trace {widget.spectrum} is empty before Play. If Python drew it, its "
            "FigureWidget was filled before display but shown inside an ipywidgets container, whose page "
            "never receives that state (plotly >= 6; sync with fig._repr_mimebundle_() before display)"
        )

        button(browser, widget.play).click()
        lengths: set[int] = set()
        spectrum_changed = False
        deadline = time.monotonic() + LIVE_TIMEOUT
        while len(lengths) < widget.min_redraws or not spectrum_changed:
            if time.monotonic() > deadline:
                grew = f"{len(lengths)} larger lengths, up to {max(lengths)}" if lengths else "no growth"
                pytest.fail(
                    f"{widget.name}: {LIVE_TIMEOUT} s after Play the loss trace had {loss0['points']} "
                    f"points, then {grew} (want {widget.min_redraws}); the spectrum changed: "
                    f"{spectrum_changed}.\nPage text:\n{page_text(browser)}"
                )
            points = read_trace(browser, widget.loss)["points"]
            if points > loss0["points"]:
                lengths.add(points)
            spectrum_changed = (
                spectrum_changed or read_trace(browser, widget.spectrum)["fingerprint"] != spectrum0["fingerprint"]
            )
            time.sleep(POLL)

        button(browser, widget.pause).click()
        # A step in flight may still be drawn: wait until two reads half a second apart agree.
        deadline = time.monotonic() + SETTLE_TIMEOUT
        settled = (read_trace(browser, widget.loss), read_trace(browser, widget.spectrum))
        while True:
            time.sleep(0.5)
            now = (read_trace(browser, widget.loss), read_trace(browser, widget.spectrum))
            if now == settled:
                break
            if time.monotonic() > deadline:
                pytest.fail(
                    f"{widget.name}: the figure still changes {SETTLE_TIMEOUT} s after Pause "
                    f"(loss trace: {now[0]['points']} points)"
                )
            settled = now
        end = time.monotonic() + HOLD_SECONDS
        while time.monotonic() < end:
            time.sleep(0.25)
            now = (read_trace(browser, widget.loss), read_trace(browser, widget.spectrum))
            assert now[0]["points"] == settled[0]["points"], (
                f"{widget.name}: the loss trace grew after Pause ({settled[0]['points']} -> {now[0]['points']})"
            )
            assert now[1]["fingerprint"] == settled[1]["fingerprint"], (
                f"{widget.name}: the spectrum changed after Pause"
            )
        assert settled[0]["points"] > loss0["points"]
        if widget.still:
            make_still(browser, widget)
    finally:
        ARTIFACTS.mkdir(exist_ok=True)
        browser.save_screenshot(str(ARTIFACTS / widget.screenshot))

    errors = console_errors(browser)
    assert not errors, f"{widget.name}: console errors: {errors}"
