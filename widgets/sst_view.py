"""SSTView: which singular vectors Sparse Spectral Training trained in each period, and the spectrum then.

Every SST layer records its periods in ``layer.history`` (the first step, the active indices, Σ at
that moment, and whether the period began with a re-SVD). This widget draws that record:

* **left**, a heatmap *period × singular index*: the colour is Σ_i (log₁₀ by default) at the start of
  the period, a white cross marks each of the r active indices, a red ring on the left edge marks a
  period that began with a re-SVD (after which the indices are again sorted by size);
* **right**, Σ at the chosen period (grey), its active indices highlighted (crosses), and Σ of the
  first period as a dotted reference, so the spectrum's drift is visible.

The ``period`` slider only moves the highlight and redraws the right panel from the stored history
(no training, no decomposition), so it responds at once. ``SSTView()`` with no layer trains a small
demo layer first (a fraction of a second) so the widget always builds.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import ipywidgets as W
import numpy as np
import plotly.graph_objects as go
import torch
import torch.nn.functional as F
from plotly.subplots import make_subplots
from torch import nn

import spectrallab as sl
from spectrallab.methods.sst import SSTLayer

from . import static
from .base import Widget
from .plots import style

# Positions of the traces in ``SSTView.figure.data`` (fixed: traces are updated, never replaced).
HEATMAP, ACTIVE, RESVD, HIGHLIGHT, SIGMA, SIGMA_ACTIVE, SIGMA_FIRST = range(7)
FLOOR = 1e-6  # log colour scale: a clamped Σ_i = 0 is drawn at this value


def demo_layer(steps: int = 60, seed: int = 0) -> SSTLayer:
    """A 32×24 SST layer (rank 4, a new sample every 5 steps) trained on a random regression problem."""
    torch.manual_seed(seed)
    layer = sl.apply(nn.Linear(24, 32), "sst", rank=4, resample_every=5, warmup=1, seed=seed)
    generator = torch.Generator().manual_seed(seed)
    teacher = torch.randn(32, 24, generator=generator) / 24**0.5
    opt = sl.optimizer(layer, lr=0.02)
    for _ in range(steps):
        x = torch.randn(64, 24, generator=generator)
        F.mse_loss(layer(x), x @ teacher.T).backward()
        opt.step()
        opt.zero_grad()
    return layer


def _sst_layer(layer: nn.Module) -> SSTLayer:
    """The SST layer to show: ``layer`` itself, or the one SST layer inside it — a Lorentz layer of
    HyboNet (:class:`~spectrallab.hyperbolic.LorentzLinear`) holds its weight as the child ``.linear``,
    which is what ``sl.apply`` adapts, so ``SSTView(model.encoder.layers[0].transform)`` shows that."""
    if isinstance(layer, SSTLayer):
        return layer
    inside = (
        {name: m for name, m in layer.named_modules() if isinstance(m, SSTLayer)}
        if isinstance(layer, nn.Module)
        else {}
    )
    if len(inside) == 1:
        return next(iter(inside.values()))
    if len(inside) > 1:
        raise TypeError(
            f"SSTView needs one SST layer; this {type(layer).__name__} holds {len(inside)} "
            f"({', '.join(inside)}): pass one of them"
        )
    raise TypeError(f"SSTView needs a layer made by sl.apply(..., 'sst'), got {type(layer).__name__}")


class SSTView(Widget):
    """Active singular vectors per period (heatmap) and the spectrum at a chosen period.

    ``layer``: an :class:`~spectrallab.methods.sst.SSTLayer`, or a module holding exactly one (a
    HyboNet Lorentz layer adapted with SST) (default: :func:`demo_layer`). Controls:
    ``period`` (which period the right panel shows) and ``log_color`` (log₁₀ Σ in the heatmap).
    """

    def __init__(
        self,
        layer: SSTLayer | None = None,
        *,
        period: int = 0,
        log_color: bool = True,
        title: str | None = None,
        live: bool | None = None,
        hide: Iterable[str] = (),
    ):
        super().__init__(live=live, hide=hide)
        if layer is None:
            layer = demo_layer()
        layer = _sst_layer(layer)
        self.layer = layer
        self.history = list(layer.history)
        self.sigma = np.array([h["sigma"] for h in self.history], dtype=float)  # periods × k
        last = len(self.history) - 1
        if isinstance(period, bool) or not isinstance(period, int) or not 0 <= period <= last:
            raise ValueError(
                f"period={period!r} is outside the allowed range [0, {last}] "
                f"(this layer has {len(self.history)} recorded periods)"
            )
        self.title = title or f"SST: active singular vectors per period (rank {layer.rank} of k = {layer.k})"
        self.controls["period"] = W.IntSlider(value=period, min=0, max=last, description="period")
        self.controls["log_color"] = W.Checkbox(value=log_color, description="log₁₀ Σ colour")
        self.figure = self.make_figure(self._build())
        for name in ("period", "log_color"):
            self.controls[name].observe(self._on_change, names="value")
        self._finish_controls()

    @property
    def state(self) -> dict[str, Any]:
        return {"period": self.controls["period"].value, "log_color": self.controls["log_color"].value}

    # -- drawing -------------------------------------------------------------------------------------
    def _colour_values(self) -> np.ndarray:
        return np.log10(np.maximum(self.sigma, FLOOR)) if self.controls["log_color"].value else self.sigma

    def _build(self) -> go.Figure:
        fig = make_subplots(
            rows=1,
            cols=2,
            column_widths=[0.6, 0.4],
            horizontal_spacing=0.12,
            subplot_titles=("active indices per period", "Σ at the chosen period"),
        )
        periods = np.arange(len(self.history))
        k = self.sigma.shape[1]
        fig.add_trace(
            go.Heatmap(
                z=self._colour_values(),
                x=np.arange(k),
                y=periods,
                colorscale="Viridis",
                colorbar=dict(x=0.53, len=0.9),
                name="Σ",
            ),
            row=1,
            col=1,
        )
        xs = [i for h in self.history for i in h["active"]]
        ys = [p for p, h in zip(periods, self.history) for _ in h["active"]]
        fig.add_trace(
            go.Scatter(
                x=xs,
                y=ys,
                mode="markers",
                name="active",
                marker=dict(symbol="x", color="white", size=6, line=dict(width=1)),
            ),
            row=1,
            col=1,
        )
        resvd = [p for p, h in zip(periods, self.history) if h["resvd"]]
        fig.add_trace(
            go.Scatter(
                x=[-1.5] * len(resvd),
                y=resvd,
                mode="markers",
                name="re-SVD",
                marker=dict(symbol="circle-open", color="red", size=9),
            ),
            row=1,
            col=1,
        )
        fig.add_trace(
            go.Scatter(mode="lines", line=dict(color="red", width=1), name="chosen period", showlegend=False),
            row=1,
            col=1,
        )
        fig.add_trace(go.Bar(marker_color="#b0b0b0", name="Σ_i"), row=1, col=2)
        fig.add_trace(
            go.Scatter(mode="markers", marker=dict(symbol="x", color="#d62728", size=8), name="active Σ_i"),
            row=1,
            col=2,
        )
        fig.add_trace(
            go.Scatter(
                x=np.arange(k),
                y=self.sigma[0],
                mode="lines",
                name="Σ at period 0",
                line=dict(color="black", dash="dot"),
            ),
            row=1,
            col=2,
        )
        fig.update_xaxes(title_text="singular index i", row=1, col=1)
        fig.update_yaxes(title_text="period", row=1, col=1)
        fig.update_xaxes(title_text="singular index i", row=1, col=2)
        fig.update_yaxes(title_text="Σ<sub>i</sub>", row=1, col=2)
        style(fig, height=450, names=True)
        self._draw(fig)
        return fig

    def _draw(self, fig: go.Figure) -> None:
        """Everything that depends on the controls (the figure's traces, updated in place)."""
        p = self.controls["period"].value
        entry, k = self.history[p], self.sigma.shape[1]
        fig.data[HEATMAP].z = self._colour_values()
        fig.data[HEATMAP].colorbar.title = (
            "log₁₀ Σ<sub>i</sub>" if self.controls["log_color"].value else "Σ<sub>i</sub>"
        )
        fig.data[HIGHLIGHT].x, fig.data[HIGHLIGHT].y = [-0.5, k - 0.5], [p, p]
        fig.data[SIGMA].x, fig.data[SIGMA].y = np.arange(k), self.sigma[p]
        fig.data[SIGMA_ACTIVE].x = entry["active"]
        fig.data[SIGMA_ACTIVE].y = self.sigma[p][entry["active"]]
        step = "" if entry["step"] is None else f", step {entry['step']}"
        # only the text: the title's place is the figure style's (plots.style)
        fig.layout.title.text = f"{self.title} — period {p}{step}{' (re-SVD)' if entry['resvd'] else ''}"

    def _on_change(self, change) -> None:
        try:
            if isinstance(self.figure, go.FigureWidget):
                with self.figure.batch_update():
                    self._draw(self.figure)
            else:
                self._draw(self.figure)
        except Exception as error:  # shown in the widget, never lost in a callback
            self.show_error("redraw", error)

    # -- the static page -----------------------------------------------------------------------------
    PERIOD_TRACES = (HIGHLIGHT, SIGMA, SIGMA_ACTIVE)

    def static_periods(self) -> list[int]:
        """The periods the static slider offers: all of them, or at most ``static.MAX_STEPS`` evenly spaced."""
        periods = range(len(self.history))
        return static.spaced(periods, static.MAX_STEPS, keep=[self.controls["period"].value])

    def static_states(self, periods: Iterable[int] | None = None) -> dict[int, dict[str, Any]]:
        """``{period: {"traces": {index: trace dict}, "title": str}}``, each drawn by the live code."""
        periods = self.static_periods() if periods is None else list(periods)
        control = self.controls["period"]
        start = control.value
        states = {}
        try:
            for p in periods:
                control.value = int(p)
                if self.error is not None:
                    raise self.error
                states[int(p)] = {
                    "traces": {i: self.figure.data[i].to_plotly_json() for i in self.PERIOD_TRACES},
                    "title": self.figure.layout.title.text,
                }
        finally:
            control.value = start
        return states

    def static_figure(self) -> go.Figure:
        """The figure with a plotly period slider and a log/linear colour switch that need no kernel;
        each slider step's data is what the live widget draws for that period."""
        current = self.controls["period"].value
        states = self.static_states([current] if "period" in self.hidden else None)
        steps = [
            dict(
                method="update",
                label=str(p),
                args=[
                    static.trace_changes([state["traces"][i] for i in self.PERIOD_TRACES], ("x", "y")),
                    {"title.text": state["title"]},
                    list(self.PERIOD_TRACES),
                ],
            )
            for p, state in states.items()
        ]
        log = self.controls["log_color"]
        start = log.value
        colours = []
        for value in (True, False):  # the heatmap's colours both ways, drawn by the live code too
            log.value = value
            heatmap = self.figure.data[HEATMAP]
            colours.append(
                {"z": [static.encode(np.asarray(heatmap.z))], "colorbar.title.text": [heatmap.colorbar.title.text]}
            )
        log.value = start  # the figure was last drawn with False: back to where it was
        fig = go.Figure(self.figure)
        extra_height = 90
        fig.update_layout(
            height=(fig.layout.height or 450) + extra_height,
            margin_b=(fig.layout.margin.b or 40) + extra_height,
            sliders=[]
            if "period" in self.hidden
            else [static.slider(steps, list(states).index(current), "period ", length=0.7)],
            updatemenus=[]
            if "log_color" in self.hidden
            else [
                static.buttons(
                    [
                        dict(method="restyle", label="log₁₀ Σ colour", args=[colours[0], [HEATMAP]]),
                        dict(method="restyle", label="linear Σ colour", args=[colours[1], [HEATMAP]]),
                    ],
                    0 if start else 1,
                    x=0.74,
                    y=-0.24,
                    name="colour",
                )
            ],
        )
        fig.layout.meta = {"spectrallab": {"widget": "SSTView", "periods": list(states)}}
        return fig

    def static_note(self) -> str:
        shown = self.static_periods()
        which = (
            "every period" if len(shown) == len(self.history) else f"{len(shown)} of the {len(self.history)} periods"
        )
        return static.note(
            f"This figure works without a kernel: drag the period slider ({which}, drawn when the book was "
            "built) and switch the colour scale."
        )
