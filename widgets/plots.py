"""Plotly figures of spectra and training curves, shared by chapters and (later) live widgets.

Each function takes plain data — arrays, :class:`spectrallab.Run` records — and returns a
``plotly.graph_objects.Figure``. Nothing here trains or decomposes anything: the numbers come from
the library, so a figure never disagrees with the text next to it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import plotly.graph_objects as go
from plotly.colors import sample_colorscale

from spectrallab.runs import Run

LAYOUT = dict(
    template="plotly_white",
    height=400,
    margin=dict(l=60, r=20, t=80, b=50),
    legend=dict(orientation="h", yanchor="bottom", y=1.02, xanchor="left", x=0),
)


def palette(n: int, scale: str = "Turbo") -> list[str]:
    """``n`` distinguishable colours spread over a plotly colour scale (its dark ends avoided)."""
    return sample_colorscale(scale, [0.1 + 0.8 * i / max(1, n - 1) for i in range(n)])


def _values(s) -> np.ndarray:
    return s.detach().cpu().numpy() if hasattr(s, "detach") else np.asarray(s)


def spectrum_figure(
    spectra: Mapping[str, Sequence[float]],
    *,
    log_y: bool = True,
    cut: int | None = None,
    title: str = "Singular values",
    normalize: bool = False,
) -> go.Figure:
    """σ_i against i for each labelled spectrum; ``cut`` marks a rank r with a dashed line."""
    fig = go.Figure()
    for label, s in spectra.items():
        s = _values(s)
        if normalize and s.size and s[0] > 0:
            s = s / s[0]
        fig.add_trace(
            go.Scatter(x=np.arange(1, len(s) + 1), y=s, mode="lines+markers", marker=dict(size=4), name=label)
        )
    if cut is not None:
        fig.add_vline(
            x=cut + 0.5,
            line_dash="dash",
            line_color="gray",
            annotation_text=f"r = {cut}",
            annotation_position="top right",
        )
    fig.update_layout(title=title, xaxis_title="index i", yaxis_title="σ_i / σ_1" if normalize else "σ_i", **LAYOUT)
    if log_y:
        fig.update_yaxes(type="log")
    return fig


def curves_figure(
    runs: Sequence[Run],
    metric: str = "val_loss",
    *,
    labels: Sequence[str] | None = None,
    title: str | None = None,
    log_y: bool = False,
    train_loss: bool = False,
) -> go.Figure:
    """An evaluation metric against the step for each run (optionally the per-step training loss, faint)."""
    fig = go.Figure()
    labels = labels or [r.name for r in runs]
    colors = palette(len(runs))
    for run, label, color in zip(runs, labels, colors):
        if train_loss and run.loss:
            fig.add_trace(
                go.Scatter(
                    x=run.steps,
                    y=run.loss,
                    mode="lines",
                    line=dict(color=color, width=1),
                    opacity=0.3,
                    name=f"{label} (train)",
                    showlegend=False,
                )
            )
        steps, values = run.eval_series(metric)
        fig.add_trace(go.Scatter(x=steps, y=values, mode="lines+markers", line=dict(color=color), name=label))
    fig.update_layout(title=title or metric.replace("_", " "), xaxis_title="step", yaxis_title=metric, **LAYOUT)
    if log_y:
        fig.update_yaxes(type="log")
    return fig


def spectrum_evolution_figure(
    run: Run, layer: str, *, log_y: bool = True, top: int | None = None, title: str | None = None
) -> go.Figure:
    """The recorded spectra of ``layer`` at every measured step, coloured from early (dark) to late (bright)."""
    if layer not in run.spectra:
        raise ValueError(
            f"run {run.name!r} recorded no spectra for layer {layer!r}; recorded: {', '.join(run.spectra) or 'none'}"
        )
    history = run.spectra[layer]
    colors = sample_colorscale("Viridis", [i / max(1, len(history) - 1) for i in range(len(history))])
    fig = go.Figure()
    for (step, values), color in zip(history, colors):
        s = np.asarray(values)[:top]
        fig.add_trace(
            go.Scatter(x=np.arange(1, len(s) + 1), y=s, mode="lines", line=dict(color=color), name=f"step {step}")
        )
    fig.update_layout(
        title=title or f"Spectrum of {layer} during training", xaxis_title="index i", yaxis_title="σ_i", **LAYOUT
    )
    if log_y:
        fig.update_yaxes(type="log")
    return fig


def bar_figure(
    labels: Sequence[str],
    values: Sequence[float],
    *,
    title: str,
    yaxis_title: str,
    log_y: bool = False,
    text_format: str = "{:.3g}",
) -> go.Figure:
    fig = go.Figure(
        go.Bar(x=list(labels), y=list(values), text=[text_format.format(v) for v in values], textposition="outside")
    )
    fig.update_layout(title=title, yaxis_title=yaxis_title, **LAYOUT)
    if log_y:
        fig.update_yaxes(type="log")
    return fig


def lines_figure(
    x: Sequence[float],
    series: Mapping[str, Sequence[float]],
    *,
    title: str,
    xaxis_title: str,
    yaxis_title: str,
    log_x: bool = False,
    log_y: bool = False,
) -> go.Figure:
    """One line per labelled series against a shared x (e.g. an error against the spectral gap per setting)."""
    fig = go.Figure()
    colors = sample_colorscale("Viridis", [0.85 * i / max(1, len(series) - 1) for i in range(len(series))])
    for (label, y), color in zip(series.items(), colors):
        fig.add_trace(
            go.Scatter(x=list(x), y=list(_values(y)), mode="lines+markers", line=dict(color=color), name=label)
        )
    fig.update_layout(title=title, xaxis_title=xaxis_title, yaxis_title=yaxis_title, **LAYOUT)
    if log_x:
        fig.update_xaxes(type="log")
    if log_y:
        fig.update_yaxes(type="log")
    return fig


def density_figure(
    samples: Mapping[str, Sequence[float]],
    curves: Mapping[str, tuple] | None = None,
    *,
    title: str = "Distribution of singular values",
    xaxis_title: str = "σ",
    bins: int = 60,
) -> go.Figure:
    """Histograms (normalized to densities, sharing ``bins`` equal bins) of labelled samples, with optional
    theoretical curves ``{label: (x, density)}`` on top — e.g. singular values against the Marchenko–Pastur law."""
    fig = go.Figure()
    values = {label: np.asarray(_values(s), dtype=float).ravel() for label, s in samples.items()}
    lo = min((v.min() for v in values.values() if v.size), default=0.0)
    hi = max((v.max() for v in values.values() if v.size), default=1.0)
    size = (hi - lo) / bins if hi > lo else 1.0
    for label, v in values.items():
        fig.add_trace(
            go.Histogram(
                x=v,
                histnorm="probability density",
                opacity=0.6,
                name=label,
                xbins=dict(start=lo, end=hi + size, size=size),
            )
        )
    for label, (x, y) in (curves or {}).items():
        fig.add_trace(go.Scatter(x=_values(x), y=_values(y), mode="lines", line=dict(width=2.5), name=label))
    fig.update_layout(title=title, xaxis_title=xaxis_title, yaxis_title="density", barmode="overlay", **LAYOUT)
    return fig


def tradeoff_figure(
    points: Mapping[str, tuple[Sequence[float], Sequence[float]]],
    *,
    title: str,
    yaxis_title: str,
    xaxis_title: str = "trainable parameters",
    text: Mapping[str, Sequence[str]] | None = None,
    references: Mapping[str, float] | None = None,
    log_x: bool = True,
) -> go.Figure:
    """A quality metric against a cost, one labelled series of ``(x, y)`` points per method (each with
    its own x values, e.g. LoRA at several ranks and full fine-tuning as a single point), optional point
    labels ``text`` (``"r=8"``) and dashed horizontal ``references`` (e.g. the frozen base)."""
    fig = go.Figure()
    colors = palette(len(points))
    for (label, (x, y)), color in zip(points.items(), colors):
        labels = list((text or {}).get(label, []))
        fig.add_trace(
            go.Scatter(
                x=list(_values(x)),
                y=list(_values(y)),
                name=label,
                mode="lines+markers+text" if labels else "lines+markers",
                text=labels or None,
                textposition="top center",
                marker=dict(size=9),
                line=dict(color=color),
            )
        )
    for label, value in (references or {}).items():
        fig.add_hline(
            y=float(value),
            line_dash="dash",
            line_color="gray",
            annotation_text=label,
            annotation_position="bottom right",
        )
    fig.update_layout(title=title, xaxis_title=xaxis_title, yaxis_title=yaxis_title, **LAYOUT)
    if log_x:
        fig.update_xaxes(type="log")
    return fig


def trajectories_figure(
    history: Sequence[tuple[int, Sequence[float]]],
    *,
    targets: Sequence[float] | None = None,
    top: int | None = None,
    title: str = "Singular values during training",
    yaxis_title: str = "σ_i",
    log_y: bool = False,
) -> go.Figure:
    """Each σ_i against the step, from a history in the format of ``Run.spectra[layer]``
    (``[[step, [σ_1, σ_2, ...]], ...]``); optional ``targets`` (e.g. a teacher's σ_i) as dashed lines
    in the matching colour."""
    steps = [int(step) for step, _ in history]
    values = np.array([np.asarray(_values(s), dtype=float)[:top] for _, s in history])
    k = values.shape[1] if values.ndim == 2 else 0
    colors = palette(k)
    fig = go.Figure()
    for i, color in zip(range(k), colors):
        fig.add_trace(go.Scatter(x=steps, y=values[:, i], mode="lines", line=dict(color=color), name=f"σ_{i + 1}"))
        if targets is not None and i < len(targets):
            fig.add_hline(y=float(targets[i]), line_dash="dot", line_color=color, opacity=0.7)
    fig.update_layout(title=title, xaxis_title="step", yaxis_title=yaxis_title, **LAYOUT)
    if log_y:
        fig.update_yaxes(type="log")
    return fig


def grouped_bar_figure(
    labels: Sequence[str],
    series: Mapping[str, Sequence[float]],
    *,
    title: str,
    yaxis_title: str,
    text_format: str = "{:.2f}",
    log_y: bool = False,
) -> go.Figure:
    """Side-by-side bars: one group per label (e.g. a layer), one bar per series (e.g. ΔW, W, random)."""
    fig = go.Figure()
    for name, values in series.items():
        values = [float(v) for v in _values(values)]
        fig.add_trace(
            go.Bar(
                x=list(labels),
                y=values,
                name=name,
                text=[text_format.format(v) for v in values],
                textposition="outside",
            )
        )
    fig.update_layout(title=title, yaxis_title=yaxis_title, barmode="group", **LAYOUT)
    if log_y:
        fig.update_yaxes(type="log")
    return fig
