"""Plotly figures of spectra and training curves, shared by chapters and (later) live widgets.

Each function takes plain data — arrays, :class:`spectrallab.Run` records — and returns a
``plotly.graph_objects.Figure``. Nothing here trains or decomposes anything: the numbers come from
the library, so a figure never disagrees with the text next to it.
"""

from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np
import plotly.graph_objects as go
from plotly.colors import sample_colorscale

from spectrallab.runs import Run

LAYOUT = dict(template="plotly_white", height=380, margin=dict(l=60, r=20, t=50, b=50),
              legend=dict(orientation="h", yanchor="bottom", y=1.0, xanchor="left", x=0))


def _values(s) -> np.ndarray:
    return s.detach().cpu().numpy() if hasattr(s, "detach") else np.asarray(s)


def spectrum_figure(spectra: Mapping[str, Sequence[float]], *, log_y: bool = True, cut: int | None = None,
                    title: str = "Singular values", normalize: bool = False) -> go.Figure:
    """σ_i against i for each labelled spectrum; ``cut`` marks a rank r with a dashed line."""
    fig = go.Figure()
    for label, s in spectra.items():
        s = _values(s)
        if normalize and s.size and s[0] > 0:
            s = s / s[0]
        fig.add_trace(go.Scatter(x=np.arange(1, len(s) + 1), y=s, mode="lines+markers", marker=dict(size=4),
                                 name=label))
    if cut is not None:
        fig.add_vline(x=cut + 0.5, line_dash="dash", line_color="gray",
                      annotation_text=f"r = {cut}", annotation_position="top right")
    fig.update_layout(title=title, xaxis_title="index i", yaxis_title="σ_i / σ_1" if normalize else "σ_i", **LAYOUT)
    if log_y:
        fig.update_yaxes(type="log")
    return fig


def curves_figure(runs: Sequence[Run], metric: str = "val_loss", *, labels: Sequence[str] | None = None,
                  title: str | None = None, log_y: bool = False, train_loss: bool = False) -> go.Figure:
    """An evaluation metric against the step for each run (optionally the per-step training loss, faint)."""
    fig = go.Figure()
    labels = labels or [r.name for r in runs]
    colors = sample_colorscale("Turbo", [0.1 + 0.8 * i / max(1, len(runs) - 1) for i in range(len(runs))])
    for run, label, color in zip(runs, labels, colors):
        if train_loss and run.loss:
            fig.add_trace(go.Scatter(x=run.steps, y=run.loss, mode="lines", line=dict(color=color, width=1),
                                     opacity=0.3, name=f"{label} (train)", showlegend=False))
        steps, values = run.eval_series(metric)
        fig.add_trace(go.Scatter(x=steps, y=values, mode="lines+markers", line=dict(color=color), name=label))
    fig.update_layout(title=title or metric.replace("_", " "), xaxis_title="step", yaxis_title=metric, **LAYOUT)
    if log_y:
        fig.update_yaxes(type="log")
    return fig


def spectrum_evolution_figure(run: Run, layer: str, *, log_y: bool = True, top: int | None = None,
                              title: str | None = None) -> go.Figure:
    """The recorded spectra of ``layer`` at every measured step, coloured from early (dark) to late (bright)."""
    if layer not in run.spectra:
        raise ValueError(f"run {run.name!r} recorded no spectra for layer {layer!r}; "
                         f"recorded: {', '.join(run.spectra) or 'none'}")
    history = run.spectra[layer]
    colors = sample_colorscale("Viridis", [i / max(1, len(history) - 1) for i in range(len(history))])
    fig = go.Figure()
    for (step, values), color in zip(history, colors):
        s = np.asarray(values)[:top]
        fig.add_trace(go.Scatter(x=np.arange(1, len(s) + 1), y=s, mode="lines", line=dict(color=color),
                                 name=f"step {step}"))
    fig.update_layout(title=title or f"Spectrum of {layer} during training", xaxis_title="index i",
                      yaxis_title="σ_i", **LAYOUT)
    if log_y:
        fig.update_yaxes(type="log")
    return fig


def bar_figure(labels: Sequence[str], values: Sequence[float], *, title: str, yaxis_title: str,
               log_y: bool = False, text_format: str = "{:.3g}") -> go.Figure:
    fig = go.Figure(go.Bar(x=list(labels), y=list(values), text=[text_format.format(v) for v in values],
                           textposition="outside"))
    fig.update_layout(title=title, yaxis_title=yaxis_title, **LAYOUT)
    if log_y:
        fig.update_yaxes(type="log")
    return fig
