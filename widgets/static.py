"""Widgets without a kernel: plotly's own sliders and buttons over states computed when the book was built.

A built page has no Python behind it, but plotly.js can still switch between states it was given:
a ``layout.sliders`` step or an ``updatemenus`` button with ``method: "update"`` calls
``Plotly.update(div, trace_changes, layout_changes, trace_indices)`` in the browser. The cheap
widgets (:class:`.SpectrumExplorer`, :class:`.SSTView`, :class:`.Compare`) use this for their static
figure (``Widget.static_figure()``): each state is drawn by the live widget's own code (set the
control, let the widget redraw, read its figure), so the page shows at slider position k exactly the
data the live widget shows for that control value — one source of truth, checked by the widget tests.

**Weight.** A state is sent as plotly's typed-array specs (``{"dtype": "f4", "bdata": <base64>}``,
which plotly.js decodes in ``Plotly.update`` as in ``newPlot``): 4 or 8 bytes a number plus a third
for base64, instead of ~20 characters of JSON text. plotly.py converts numpy arrays to such specs
only in ``data``, not inside slider ``args``, so :func:`encode` does it here. The widgets keep the
number of states modest (a grid of ranks, at most :data:`MAX_STEPS` periods).

**The way to the live widget.** :func:`live_howto` is the one line every static widget shows: where
the repository comes from, ``make lab``, and how long setup takes (measured: ``make setup`` takes
about 70 s on 2 cores when the wheels are cached; a first setup downloads PyTorch and friends, a
few minutes). It names the project's URL when the package metadata carries one
(``[project.urls]`` in pyproject.toml); today it has none, so it names the repository the book was
built from.
"""

from __future__ import annotations

import base64
from collections.abc import Iterable, Sequence
from importlib import metadata
from typing import Any

import numpy as np

MAX_STEPS = 40  # at most this many precomputed states behind one slider

# plotly.js typed-array dtypes (no 64-bit integers: those are sent as int32 when they fit).
_DTYPES = {"float64": "f8", "float32": "f4", "int32": "i4", "int16": "i2", "int8": "i1", "uint8": "u1"}


def encode(value: Any) -> Any:
    """A numpy array as a plotly.js typed-array spec (compact base64); anything else unchanged.

    Integer arrays are sent as int32 (plotly.js has no int64); booleans and objects as lists.
    """
    if not isinstance(value, np.ndarray):
        return value
    array = np.ascontiguousarray(value)
    if array.dtype.kind in "iu" and array.dtype.name not in _DTYPES:
        if array.size and (array.min() < np.iinfo(np.int32).min or array.max() > np.iinfo(np.int32).max):
            return array.tolist()
        array = array.astype(np.int32)
    if array.dtype.name not in _DTYPES:
        return array.tolist()
    spec = {"dtype": _DTYPES[array.dtype.name], "bdata": base64.b64encode(array.tobytes()).decode("ascii")}
    if array.ndim > 1:
        spec["shape"] = ", ".join(map(str, array.shape))
    return spec


def decode(value: Any) -> Any:
    """The inverse of :func:`encode` (tests compare a slider step's data with the live figure's)."""
    if isinstance(value, dict) and "bdata" in value:
        dtype = {v: k for k, v in _DTYPES.items()}[value["dtype"]]
        array = np.frombuffer(base64.b64decode(value["bdata"]), dtype=dtype)
        if "shape" in value:
            array = array.reshape([int(n) for n in value["shape"].split(",")])
        return array
    return value


def trace_changes(traces: Sequence[Any], keys: Iterable[str]) -> dict[str, list]:
    """``Plotly.update``'s first argument: for each key, the value of every trace (in order), encoded.

    A key a trace does not have (``z`` of a scatter) is sent as null, which plotly.js reads as "its
    default" — harmless for an attribute the trace type does not use.
    """
    changes: dict[str, list] = {}
    for key in keys:
        values = []
        for trace in traces:
            value = trace[key] if key in trace else None
            if isinstance(value, tuple):  # plotly.py stores arrays it was given as lists as tuples
                value = list(value)
            values.append(encode(value))
        changes[key] = values
    return changes


def spaced(values: Sequence[int], count: int, keep: Iterable[int] = ()) -> list[int]:
    """At most about ``count`` of ``values``, evenly spaced, always with the first, the last and ``keep``."""
    values = list(values)
    if len(values) <= count:
        chosen = set(values)
    else:
        chosen = {values[round(i)] for i in np.linspace(0, len(values) - 1, count)}
    return sorted(chosen | set(keep))


def rank_grid(k: int, count: int = 10, keep: Iterable[int] = ()) -> list[int]:
    """Ranks 1 … k on a geometric grid (dense at small ranks, where truncation changes most), plus ``keep``."""
    grid = {int(round(r)) for r in np.geomspace(1, k, count)} if k > 1 else {1}
    return sorted(r for r in grid | set(keep) if 1 <= r <= k)


def slider(steps: list[dict], active: int, prefix: str, *, x: float = 0.0, length: float = 1.0) -> dict:
    """A plotly slider below the plot area (``y`` under the x axes, in the bottom margin)."""
    return dict(
        active=active,
        steps=steps,
        currentvalue=dict(prefix=prefix, visible=True, xanchor="left", font=dict(size=13)),
        x=x,
        len=length,
        xanchor="left",
        y=0,
        yanchor="top",
        pad=dict(t=45, b=0),
        transition=dict(duration=0),
    )


def buttons(entries: list[dict], active: int, *, x: float, y: float, kind: str = "buttons", name: str = "") -> dict:
    """A row of plotly buttons (or a dropdown, ``kind="dropdown"``) at paper position (x, y)."""
    return dict(
        type=kind,
        direction="right" if kind == "buttons" else "down",
        active=active,
        buttons=entries,
        x=x,
        y=y,
        xanchor="left",
        yanchor="top",
        showactive=True,
        pad=dict(t=0, r=4),
        name=name,
    )


def repository_url() -> str | None:
    """The project's repository URL from the installed package's metadata, if it declares one."""
    try:
        urls = metadata.metadata("spectrallab").get_all("Project-URL") or []
    except metadata.PackageNotFoundError:
        return None
    by_label = {}
    for entry in urls:
        label, _, url = entry.partition(",")
        by_label[label.strip().lower()] = url.strip()
    for label in ("repository", "source", "source code", "homepage"):
        if by_label.get(label):
            return by_label[label]
    return None


def live_howto() -> str:
    """One line (HTML) on getting the live widget: the repository, ``make lab``, and the setup time."""
    url = repository_url()
    clone = (
        f"<code>git clone {url}</code>"
        if url
        else "clone the repository this book was built from (<code>git clone &lt;its URL&gt;</code>)"
    )
    return (
        f"To use it live, {clone}, then run <code>make lab</code> there: it sets up <code>.venv</code> "
        "(about a minute with cached wheels, a few minutes when it downloads PyTorch) and opens "
        "JupyterLab, where this page opens as a notebook."
    )


def note(text: str) -> str:
    """The static note under a widget's figure: what works on this page, then :func:`live_howto`."""
    return (
        "<p class='spectrallab-static-note' style='color:#555;font-size:0.9em;margin:0.3em 0 1em 0'>"
        f"{text} {live_howto()}</p>"
    )
