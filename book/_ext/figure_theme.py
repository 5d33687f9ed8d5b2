"""The book's figures follow its theme and its width: ``book/_static/figures.js`` on every page.

Figures come out of the chapters in the light style of ``spectrallab.widgets.plots``. The script
repaints every plotly figure when the reader switches the theme to dark (and back), keeps log axes
labelled by decades, and reflows legends and multi-panel figures at phone width. It is a static
file of the book, so it works offline; it uses the ``Plotly`` global the pages already carry.
"""

from __future__ import annotations

from pathlib import Path

STATIC = Path(__file__).resolve().parent.parent / "_static"
SCRIPT = "figures.js"


def add_static_path(app, config) -> None:
    if str(STATIC) not in map(str, config.html_static_path):
        config.html_static_path.append(str(STATIC))


def setup(app):
    app.connect("config-inited", add_static_path)
    # deferred: it runs after the page is parsed and picks figures up as plotly draws them
    app.add_js_file(SCRIPT, loading_method="defer")
    return {"parallel_read_safe": True, "parallel_write_safe": True}
