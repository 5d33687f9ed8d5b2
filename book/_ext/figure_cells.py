"""One numbered figure per figure cell, even when the cell displays more than one output.

A chapter numbers a figure through its code cell's metadata (``mystnb: figure: {name, caption}``).
myst-nb wraps *every* display output of that cell in its own figure node with that name. A widget
cell displays two outputs in the built book (``spectrallab.widgets`` shows the static figure, then
an HTML note with a still of the live widget), so the name would be declared twice — a "duplicate
explicit target name" warning, which fails the ``-W`` build — and the caption printed twice.

This extension makes the figure options apply to the first display output of a cell only; the
cell's later outputs (the note) follow the figure, under its caption. Two *different* cells that
use the same name still get two figures, and so still the duplicate-name warning they deserve.
"""

from __future__ import annotations

from contextlib import contextmanager

import myst_nb.sphinx_ as mystnb_sphinx

_create_figure_context = mystnb_sphinx.create_figure_context


@contextmanager
def first_output_figure(renderer, figure_options, line):
    """myst-nb's figure context for the first display output of a cell; no figure for the rest."""
    if not isinstance(figure_options, dict) or not figure_options.get("name"):
        with _create_figure_context(renderer, figure_options, line):
            yield
        return
    document = renderer.document
    # The cell is known by its line in the source; a document keeps the cells it has wrapped.
    seen = document.__dict__.setdefault("_spectrallab_figure_cells", set())
    key = (line, str(figure_options["name"]))
    if key in seen:
        yield
        return
    seen.add(key)
    with _create_figure_context(renderer, figure_options, line):
        yield


def setup(app):
    mystnb_sphinx.create_figure_context = first_output_figure
    return {"parallel_read_safe": True, "parallel_write_safe": True}
