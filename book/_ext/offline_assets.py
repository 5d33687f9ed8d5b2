"""Make the built book work offline: MathJax and plotly.js served from the book itself, once.

Sphinx loads MathJax from a CDN by default. The ``sphinx-mathjax-offline`` distribution on PyPI
carries a MathJax 3 build but installs it under a directory name Python cannot import, so this
extension finds those files through the distribution's metadata and copies them into ``_static``.

plotly.js (4.8 MB) is copied from the installed ``plotly`` package into ``_static`` and loaded, in
the page's head, by every page that shows a figure — so a reader's browser fetches it once for the
whole book. The chapters' figures must then not carry their own copy: this extension sets
``SPECTRALLAB_PLOTLYJS=page`` for the kernels the build starts (widgets/display.py reads it), and
a page that still inlines plotly.js (an output executed without it) is a build warning, so an
error under ``-W``.
"""

from __future__ import annotations

import os
from importlib.metadata import PackageNotFoundError, distribution
from importlib.resources import files
from pathlib import Path

from sphinx.util import logging
from sphinx.util.fileutil import copy_asset

DISTRIBUTION = "sphinx-mathjax-offline"
PLOTLYJS = "plotly.min.js"
# What plotly.js' bundle starts with; a figure's own HTML never contains it.
PLOTLYJS_BANNER = "* plotly.js v"
# Set before plotly.js loads, as plotly's notebook renderer does: plotly must leave the page's
# MathJax configuration alone.
PLOTLY_CONFIG = "window.PlotlyConfig = {MathJaxConfig: 'local'};"

logger = logging.getLogger(__name__)


def mathjax_directory() -> Path:
    try:
        dist = distribution(DISTRIBUTION)
    except PackageNotFoundError as err:
        raise RuntimeError(f"{DISTRIBUTION} is not installed; run `make setup`") from err
    entry = next(f for f in dist.files if str(f).endswith("static/mathjax/tex-chtml.js"))
    return Path(dist.locate_file(entry)).parent


def plotlyjs_file() -> Path:
    path = Path(str(files("plotly") / "package_data" / PLOTLYJS))
    if not path.is_file():
        raise RuntimeError(f"{path} is missing: the installed plotly carries no plotly.js; run `make setup`")
    return path


def unused_mathjax(relative: str) -> bool:
    """MathJax's other combined components (tex-svg.js, tex-chtml-full-speech.js, mml-chtml.js, ...:
    14 MB): the book loads tex-chtml.js, which pulls what else it needs (TeX extensions, fonts, the
    menu, the accessibility explorer, the SVG output if a reader picks it) from the folders kept."""
    name = relative.replace("\\", "/").removeprefix("./")
    if "/" in name:
        return False
    return name == "node-main.js" or (name.startswith(("tex-", "mml-")) and name != "tex-chtml.js")


def copy_assets(app, exception) -> None:
    if exception is None and app.builder.format == "html":
        static = Path(app.outdir) / "_static"
        copy_asset(str(mathjax_directory()), str(static / "mathjax"), excluded=unused_mathjax)
        copy_asset(str(plotlyjs_file()), str(static))


def load_plotlyjs(app, pagename, templatename, context, doctree) -> None:
    """Pages with figures load _static/plotly.min.js in their head, before the figures' inline
    scripts run; a page whose body inlines plotly.js is reported."""
    body = context.get("body", "")
    if PLOTLYJS_BANNER in body:
        logger.warning(
            f"{pagename}: the page inlines plotly.js (4.8 MB); its figures should use the book's "
            f"_static/{PLOTLYJS} (was the chapter executed without SPECTRALLAB_PLOTLYJS=page?)",
            location=pagename,
        )
    if "plotly-graph-div" in body:
        # Called during html-page-context, add_js_file adds the script to this page only.
        app.add_js_file(None, body=PLOTLY_CONFIG, priority=200)
        app.add_js_file(PLOTLYJS, priority=201)


def drop_duplicate_scripts(app, pagename, templatename, context, doctree) -> None:
    """sphinx-thebe registers its inline config twice under Jupyter Book 1, and a second
    ``const THEBE_JS_URL`` is a JavaScript error on every page; keep the first of each script."""
    seen, unique = set(), []
    for script in context.get("script_files", []):
        body = getattr(script, "attributes", {}).get("body")
        key = ("body", body) if body else ("file", str(getattr(script, "filename", script)))
        if key not in seen:
            seen.add(key)
            unique.append(script)
    context["script_files"] = unique


def setup(app):
    mathjax_directory()  # fail early, with a clear message, when the files are missing
    plotlyjs_file()
    app.config.mathjax_path = "mathjax/tex-chtml.js"
    # Kernels started by the build inherit this: their figures leave plotly.js to the page.
    os.environ["SPECTRALLAB_PLOTLYJS"] = "page"
    app.connect("build-finished", copy_assets)
    app.connect("html-page-context", load_plotlyjs)
    app.connect("html-page-context", drop_duplicate_scripts, priority=1000)  # after others add theirs
    return {"parallel_read_safe": True, "parallel_write_safe": True}
