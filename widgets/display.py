"""How figures reach the reader: one place decides, for notebooks and for the built book.

**Live or static.** :func:`live_mode` is the one decision: live widgets (a plotly ``FigureWidget``
updated in place, ipywidgets controls) need a frontend that runs widget JavaScript — JupyterLab,
Notebook, Voilà. A book build executes chapters headless and saves their outputs as static HTML,
where a ``FigureWidget`` would render as nothing and break other widgets on the page, so there every
widget shows a plain ``go.Figure`` of the same state. A kernel started by a Jupyter server carries
``JPY_SESSION_NAME`` in its environment (set by jupyter_server for every notebook session); a
book build's or a test's kernel does not. ``SPECTRALLAB_WIDGETS=live|static`` overrides.

Plotly's stock ``notebook`` renderer writes a ``<script src=...>`` for MathJax from a CDN into every
figure; offline (and in the book's browser tests) that is a failed request and a console error. The
``spectrallab`` renderer writes each figure as plain HTML; combined with the ``plotly_mimetype``
output it also renders natively in JupyterLab.

**Where plotly.js comes from.** A figure's HTML calls ``Plotly.newPlot`` and needs plotly.js (4.8 MB)
already on the page. A notebook has nothing else to load it from offline — a notebook exported by
nbconvert or shown by nbviewer uses the ``text/html`` outputs — so by default the renderer publishes
plotly.js once, into the output of the first figure of the notebook (plotly's ``NotebookRenderer``
does this in ``activate``). The built book loads plotly.js once, from its own ``_static``, on every
page (book/_ext/offline_assets.py); embedding it as well would put 4.8 MB into every chapter page.
So the book build sets ``SPECTRALLAB_PLOTLYJS=page`` for the kernels it starts, and then the
renderer publishes no plotly.js at all (:func:`plotlyjs_from_page`).
"""

from __future__ import annotations

import os

import plotly.io as pio
from plotly.io._base_renderers import NotebookRenderer

RENDERER = "plotly_mimetype+spectrallab"
PLOTLYJS = "SPECTRALLAB_PLOTLYJS"  # "embed" (default): the notebook carries plotly.js; "page": the page loads it


def live_mode() -> bool:
    """True when widgets should be live (a Jupyter frontend is attached), False for static output."""
    forced = os.environ.get("SPECTRALLAB_WIDGETS", "").strip().lower()
    if forced in ("live", "static"):
        return forced == "live"
    if forced:
        raise ValueError(f"SPECTRALLAB_WIDGETS={forced!r} is not one of 'live', 'static'")
    return "JPY_SESSION_NAME" in os.environ


def plotlyjs_from_page() -> bool:
    """True when the page that shows the outputs loads plotly.js itself (the built book), so figures
    must not embed it; False (the default) when the notebook has to carry it."""
    chosen = os.environ.get(PLOTLYJS, "").strip().lower() or "embed"
    if chosen not in ("embed", "page"):
        raise ValueError(f"{PLOTLYJS}={chosen!r} is not one of 'embed', 'page'")
    return chosen == "page"


class OfflineNotebookRenderer(NotebookRenderer):
    """The notebook renderer with plotly.js embedded once (``connected=False``), or not at all where the
    page provides it (:func:`plotlyjs_from_page`), and no MathJax CDN script."""

    def __init__(self, height: int = 420):
        super().__init__(connected=False)
        self.height = height

    def activate(self):
        # Called once, before the notebook's first figure: NotebookRenderer.activate() displays
        # plotly.js (and window.PlotlyConfig) as an output of its own.
        if not plotlyjs_from_page():
            super().activate()

    def to_mimebundle(self, fig_dict):
        html = pio.to_html(
            fig_dict,
            config=self.config,
            include_plotlyjs=False,
            include_mathjax=False,
            full_html=False,
            default_width="100%",
            default_height=self.height,
        )
        return {"text/html": html}


def use_offline_renderer() -> None:
    """Make the offline renderer plotly's default, unless the user chose one (``PLOTLY_RENDERER``)."""
    pio.renderers["spectrallab"] = OfflineNotebookRenderer()
    if not os.environ.get("PLOTLY_RENDERER"):
        pio.renderers.default = RENDERER
