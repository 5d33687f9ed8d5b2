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
``spectrallab`` renderer embeds plotly.js once per notebook (no CDN) and each figure as plain HTML;
combined with the ``plotly_mimetype`` output it also renders natively in JupyterLab.
"""

from __future__ import annotations

import os

import plotly.io as pio
from plotly.io._base_renderers import NotebookRenderer

RENDERER = "plotly_mimetype+spectrallab"


def live_mode() -> bool:
    """True when widgets should be live (a Jupyter frontend is attached), False for static output."""
    forced = os.environ.get("SPECTRALLAB_WIDGETS", "").strip().lower()
    if forced in ("live", "static"):
        return forced == "live"
    if forced:
        raise ValueError(f"SPECTRALLAB_WIDGETS={forced!r} is not one of 'live', 'static'")
    return "JPY_SESSION_NAME" in os.environ


class OfflineNotebookRenderer(NotebookRenderer):
    """The notebook renderer with plotly.js embedded (``connected=False``) and no MathJax CDN script."""

    def __init__(self, height: int = 420):
        super().__init__(connected=False)
        self.height = height

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
