"""Plotly figures of spectra and training curves, shared by chapters and live widgets, in one style.

Each function takes plain data — arrays, :class:`spectrallab.Run` records — and returns a
``plotly.graph_objects.Figure``. Nothing here trains or decomposes anything: the numbers come from
the library, so a figure never disagrees with the text next to it.

**One style.** Every figure of the book — these builders, the widgets, and the few figures a chapter
assembles itself — ends in :func:`style`, which gives it the ``spectrallab`` template and a layout in
which nothing collides:

* the title sits left-aligned below a band kept free for plotly's toolbar (the modebar appears at
  the top right on hover), and subplot titles get room of their own below it;
* the legend sits under the plot (or at the right, for long lists), in margins reserved for it, so it
  never covers a title or the data;
* log axes label decades only, as powers of ten (never SI prefixes: ``10n``, ``1p`` read as units),
  with unlabelled minor ticks; an axis spanning less than a decade gets a few plain values instead;
* axis titles, titles and subplot titles render ``σ_i``-style subscripts (``σ<sub>i</sub>``), and
  metric names read as words (``val_loss`` → "validation loss").

The page does the rest: ``book/_static/figures.js`` repaints every figure for the book's dark theme and
reflows legends and multi-panel figures at phone width.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence

import numpy as np
import plotly.graph_objects as go
import plotly.io as pio
from plotly.colors import sample_colorscale

from spectrallab.runs import Run

# -- colours a reader can read ----------------------------------------------------------------------
# Every colour that names a series (a line, its markers, its point labels, a coloured annotation)
# keeps a WCAG contrast of at least MIN_CONTRAST against the figure's background, in both of the
# book's themes. Figures are drawn light here (on LIGHT_BACKGROUND): :func:`readable` darkens a
# colour that is too pale (Turbo's yellows and greens are ~1.3:1 on white). For the dark theme
# ``book/_static/figures.js`` maps each colour to a lighter one of the same hue (its ``darkVariant``),
# against DARK_BACKGROUND, the theme's ``--pst-color-background``; tests/test_plots.py checks both.
MIN_CONTRAST = 3.0
LIGHT_BACKGROUND = "#ffffff"
DARK_BACKGROUND = "#14181e"


def rgb(colour: str) -> tuple[int, int, int] | None:
    """``#rgb``, ``#rrggbb``, ``rgb(r, g, b)`` or ``rgba(...)`` as (r, g, b) in 0-255; None otherwise."""
    text = str(colour).strip().lower()
    if text.startswith("#") and len(text) in (4, 7):
        digits = text[1:] if len(text) == 7 else "".join(ch * 2 for ch in text[1:])
        try:
            return tuple(int(digits[i : i + 2], 16) for i in (0, 2, 4))
        except ValueError:
            return None
    match = re.fullmatch(r"rgba?\(\s*([\d.]+)\s*,\s*([\d.]+)\s*,\s*([\d.]+)\s*(,\s*[\d.]+\s*)?\)", text)
    return tuple(round(float(match.group(i))) for i in (1, 2, 3)) if match else None


def luminance(colour: str) -> float:
    """WCAG relative luminance of a colour (0 black … 1 white)."""
    channels = [v / 255 for v in rgb(colour)]
    linear = [v / 12.92 if v <= 0.03928 else ((v + 0.055) / 1.055) ** 2.4 for v in channels]
    return 0.2126 * linear[0] + 0.7152 * linear[1] + 0.0722 * linear[2]


def contrast(a: str, b: str) -> float:
    """WCAG contrast ratio of two colours, 1 (same) … 21 (black on white)."""
    hi, lo = sorted((luminance(a), luminance(b)), reverse=True)
    return (hi + 0.05) / (lo + 0.05)


def readable(colour: str, background: str = LIGHT_BACKGROUND, ratio: float = MIN_CONTRAST) -> str:
    """``colour`` if it reads against ``background`` at ``ratio`` or more, else the same hue and
    saturation made darker (on a light background) just enough; colours it cannot parse (names)
    come back unchanged."""
    import colorsys

    channels = rgb(colour)
    if channels is None or contrast(colour, background) >= ratio:
        return colour
    h, lightness, sat = colorsys.rgb_to_hls(*(v / 255 for v in channels))
    darker = luminance(background) > 0.5
    while 0 < lightness < 1:
        lightness = max(0.0, lightness - 0.01) if darker else min(1.0, lightness + 0.01)
        r, g, b = (round(255 * v) for v in colorsys.hls_to_rgb(h, lightness, sat))
        candidate = f"rgb({r}, {g}, {b})"
        if contrast(candidate, background) >= ratio:
            return candidate
    return candidate


FONT = "system-ui, -apple-system, 'Segoe UI', Roboto, 'Helvetica Neue', Arial, sans-serif"

# The template: plotly_white with the book's font, axes that make room for their own labels
# (automargin) and exponents written as powers of ten on every axis.
_axis = dict(automargin=True, exponentformat="power", showexponent="all", title=dict(standoff=8))
TEMPLATE = go.layout.Template(pio.templates["plotly_white"])
TEMPLATE.layout.update(
    font=dict(family=FONT, size=13),
    title=dict(font=dict(size=16)),
    xaxis=_axis,
    yaxis=_axis,
    hoverlabel=dict(font=dict(family=FONT)),
    coloraxis=dict(colorbar=dict(exponentformat="power")),
    # plotly's own cycle for traces given no colour, each darkened to read on white (#00cc96 is 2.1:1)
    colorway=[readable(c) for c in pio.templates["plotly_white"].layout.colorway],
)
for heatmap in TEMPLATE.data.heatmap:  # colour bars of heatmaps: powers of ten too
    heatmap.update(colorbar=dict(exponentformat="power"))
pio.templates["spectrallab"] = TEMPLATE
# Figures a chapter builds itself (a go.Table, a quick go.Figure) look like the rest of the book.
pio.templates.default = "spectrallab"

# Pixels kept free above the title for the modebar (about 30 px tall at the top right).
MODEBAR_BAND = 34
TITLE_LINE = 22  # one line of a 16 px title
SUBPLOT_TITLE_BAND = 28  # subplot titles sit just above their panels

# Below the plot, in the container's bottom margin (plotly reserves the legend's height there), so
# the x axis title, the tick labels and the legend each keep their own band.
LEGEND_BELOW = dict(
    orientation="h", x=0, xanchor="left", xref="paper", y=0, yanchor="bottom", yref="container", title_text=""
)
# At the right of the plot, for long lists (one entry per layer); plotly widens the right margin.
LEGEND_RIGHT = dict(orientation="v", x=1.02, xanchor="left", xref="paper", y=1, yanchor="top", yref="paper")

LAYOUT = dict(
    template="spectrallab",
    height=400,
    margin=dict(l=60, r=20, t=MODEBAR_BAND + TITLE_LINE + 12, b=10),
    legend=LEGEND_BELOW,
)

# Metric keys of Run records, as a reader names them.
METRIC_NAMES = {
    "val_loss": "validation loss",
    "loss": "training loss",
    "train_loss": "training loss",
    "accuracy": "validation accuracy",
    "val_accuracy": "validation accuracy",
    "perplexity": "validation perplexity",
    "val_perplexity": "validation perplexity",
    "bits_per_char": "bits per character",
    "val_auc": "validation ROC AUC",
    "val_roc_auc": "validation ROC AUC",
    "val_f1": "validation F1",
    "f1": "F1",
    "grad_norm": "gradient norm",
    "lr": "learning rate",
}


def metric_name(key: str) -> str:
    """A Run metric key in words (``val_loss`` → "validation loss"); unknown keys lose their underscores."""
    return METRIC_NAMES.get(key, key.replace("_", " "))


# A subscript written the plain-text way: one symbol (a single letter or Greek letter, a closing ‖ or
# parenthesis, a prime) then ``_`` then a short index (``i``, ``F``, ``r+1``, ``{r}``). A longer word
# before the underscore (``val_loss``, ``ffa_lora``) is a name, not a symbol, and is left alone.
_SUBSCRIPT = re.compile(r"((?<![A-Za-z0-9_])[A-Za-zα-ωΑ-ΩŴŵ]′?|[‖)])_(\{([^{}]*)\}|[A-Za-z0-9+\-]+)")


def rich(text):
    """``σ_i`` → ``σ<sub>i</sub>``, ``‖W‖_F²`` → ``‖W‖<sub>F</sub>²``, ``E_{r}`` → ``E<sub>r</sub>``
    (plotly renders the HTML); ``None`` and text without a plain subscript come back unchanged."""
    if not isinstance(text, str) or "_" not in text:
        return text

    def sub(match: re.Match) -> str:
        index = match.group(3) if match.group(3) is not None else match.group(2)
        return f"{match.group(1)}<sub>{index}</sub>"

    return _SUBSCRIPT.sub(sub, text)


def _axes(fig: go.Figure) -> list[tuple[str, object]]:
    """``(name, axis)`` for every cartesian axis of the layout (``xaxis``, ``xaxis2``, ..., ``yaxis4``)."""
    return [(name, fig.layout[name]) for name in fig.layout if re.fullmatch(r"[xy]axis\d*", name)]


def _trace_axis(trace, letter: str) -> str:
    ref = getattr(trace, f"{letter}axis", None) or letter
    return f"{letter}axis{ref[1:]}"


def _log_values(fig: go.Figure, axis_name: str) -> np.ndarray:
    letter = axis_name[0]
    chunks = []
    for trace in fig.data:
        if _trace_axis(trace, letter) != axis_name or not hasattr(trace, letter):
            continue
        values = getattr(trace, letter)
        if values is None:
            continue
        try:
            v = np.asarray(values, dtype=float).ravel()
        except (TypeError, ValueError):
            continue
        chunks.append(v[np.isfinite(v) & (v > 0)])
    return np.concatenate(chunks) if chunks else np.array([])


def _nice_steps(lo: float, hi: float, count: int = 5) -> list[float]:
    """About ``count`` round values (1, 2, 2.5 or 5 × 10^k apart) covering [lo, hi]."""
    raw = (hi - lo) / max(1, count - 1)
    power = 10 ** math.floor(math.log10(raw))
    step = next(m * power for m in (1, 2, 2.5, 5, 10) if m * power >= raw)
    start = math.floor(lo / step) * step
    values = [start + i * step for i in range(int(math.ceil((hi - start) / step)) + 1)]
    return [v for v in values if v > 0]


def _plain(value: float) -> str:
    """A tick value written plainly: three significant digits, never an exponent (2000, not 2e+03)."""
    text = f"{value:.3g}"
    if "e" not in text:
        return text
    return f"{float(text):.0f}" if abs(value) >= 1 else f"{float(text):.12f}".rstrip("0")


def readable_log_axis(axis, values: np.ndarray | None = None) -> None:
    """Ticks a reader can read on a log axis: every decade (or every 2nd, 3rd, ... when there are
    many) as a power of ten, minor ticks unlabelled; less than two decades in ``values`` gets plain
    round numbers instead (plotly would write mantissas "2 3 4 5" between the decades)."""
    axis.update(exponentformat="power", showexponent="all")
    if values is not None and values.size:
        lo, hi = math.log10(values.min()), math.log10(values.max())
        if math.floor(hi) - math.ceil(lo) + 1 < 2:  # fewer than two decade ticks would show
            pad = 0.04 * max(hi - lo, 0.05)
            vmin, vmax = 10 ** (lo - pad), 10 ** (hi + pad)
            if hi - lo > 1:  # more than a decade (200 … 5000): 1, 2, 5 × 10^k, evenly spread on a log axis
                steps = [m * 10.0**k for k in range(math.floor(lo), math.ceil(hi) + 1) for m in (1, 2, 5)]
            else:  # within a decade: round values a fixed step apart
                steps = _nice_steps(vmin, vmax)
            ticks = [v for v in steps if vmin <= v <= vmax] or [float(values.min())]
            axis.update(tickmode="array", tickvals=ticks, ticktext=[_plain(v) for v in ticks], minor=dict(ticks=""))
            return
        span = hi - lo
        axis.update(tickmode="linear", tick0=0, dtick=max(1, math.ceil(span / 6)))
        axis.update(minor=dict(ticks="outside", ticklen=3, dtick="D1", showgrid=False) if span <= 6 else dict(ticks=""))
    else:  # no data yet (a widget's skeleton): decades only; figures.js refines once the data is drawn
        axis.update(dtick=1, tick0=0, minor=dict(ticks="outside", ticklen=3, dtick="D1", showgrid=False))


def _title_lines(fig: go.Figure) -> int:
    text = fig.layout.title.text
    return 1 + text.count("<br>") if text else 0


def _subplot_titles(fig: go.Figure) -> bool:
    """True when annotations sit above the top of the plot area (make_subplots' titles of the top row)."""
    top = max((max(axis.domain or (0, 1)) for name, axis in _axes(fig) if name.startswith("y")), default=1)
    return any(
        (a.yref in (None, "paper")) and a.y is not None and a.y >= top - 1e-6 and a.yanchor == "bottom"
        for a in fig.layout.annotations
    )


def style(
    fig: go.Figure,
    *,
    height: int | None = None,
    legend: str = "below",
    title_lines: int | None = None,
    names: bool = False,
) -> go.Figure:
    """Give ``fig`` the book's figure style (see the module docstring) and return it.

    ``legend`` is ``"below"`` (default) or ``"right"`` (long lists); ``title_lines`` reserves room for a
    title set later (a widget titles its figure when it draws); ``names=True`` also renders plain
    subscripts in trace names (legend entries). Safe to call again after changing the figure."""
    fig.update_layout(template="spectrallab", legend=LEGEND_RIGHT if legend == "right" else LEGEND_BELOW)
    if height is not None:
        fig.update_layout(height=height)
    elif fig.layout.height is None:
        fig.update_layout(height=LAYOUT["height"])
    if fig.layout.title.text:
        fig.layout.title.text = rich(fig.layout.title.text)
    lines = max(_title_lines(fig), title_lines if title_lines is not None else 1)
    top = MODEBAR_BAND + TITLE_LINE * lines + (SUBPLOT_TITLE_BAND if _subplot_titles(fig) else 12)
    # The title in the container's coordinates: its top edge a fixed distance below the modebar band
    # whatever the figure's height, left-aligned with the plot so it runs away from the modebar.
    fig.update_layout(
        # (plotly anchors a title of several lines by its first line's baseline: move it down by the rest)
        title=dict(
            x=0,
            xref="paper",
            xanchor="left",
            y=1,
            yref="container",
            yanchor="top",
            pad=dict(t=MODEBAR_BAND + int(0.8 * TITLE_LINE) * (lines - 1)),
        ),
        margin=dict(t=top, l=fig.layout.margin.l if fig.layout.margin.l is not None else 60),
    )
    for name, axis in _axes(fig):
        if axis.title.text:
            axis.title.text = rich(axis.title.text)
        if axis.type == "log":
            readable_log_axis(axis, _log_values(fig, name))
    for annotation in fig.layout.annotations:
        annotation.text = rich(annotation.text)
        if annotation.font.color is not None:
            annotation.font.color = readable(annotation.font.color)
    _readable_traces(fig)
    if names:
        for trace in fig.data:
            trace.name = rich(trace.name)
    return fig


def _readable_traces(fig: go.Figure) -> None:
    """Darken the series colours a figure was given (a chapter's own choice included) that would not
    read on white: line, marker and point-label colours of scatter traces. White markers (a cross
    drawn on a coloured cell) are fills, not series colours, and stay."""
    for trace in fig.data:
        if trace.type != "scatter":
            continue
        for part, key in ((trace.line, "color"), (trace.marker, "color"), (trace.textfont, "color")):
            value = part[key]
            if isinstance(value, str) and luminance_or_none(value) not in (None, 1.0):
                part[key] = readable(value)


def luminance_or_none(colour: str) -> float | None:
    return luminance(colour) if rgb(colour) is not None else None


def palette(n: int, scale: str = "Turbo") -> list[str]:
    """``n`` distinguishable colours spread over a plotly colour scale (its dark ends avoided), each
    darkened where needed to read on white (``plots.readable``)."""
    return [readable(c) for c in sample_colorscale(scale, [0.1 + 0.8 * i / max(1, n - 1) for i in range(n)])]


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
    fig.update_layout(
        title=title,
        xaxis_title="index i (largest first)",
        yaxis_title="σ_i / σ_1 (relative singular value)" if normalize else "singular value σ_i",
    )
    if log_y:
        fig.update_yaxes(type="log")
    return style(fig)


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
    fig.update_layout(title=title or metric_name(metric), xaxis_title="step", yaxis_title=metric_name(metric))
    if log_y:
        fig.update_yaxes(type="log")
    return style(fig)


def spectrum_evolution_figure(
    run: Run, layer: str, *, log_y: bool = True, top: int | None = None, title: str | None = None
) -> go.Figure:
    """The recorded spectra of ``layer`` at every measured step, coloured from early (dark) to late (bright)."""
    if layer not in run.spectra:
        raise ValueError(
            f"run {run.name!r} recorded no spectra for layer {layer!r}; recorded: {', '.join(run.spectra) or 'none'}"
        )
    history = run.spectra[layer]
    colors = [
        readable(c) for c in sample_colorscale("Viridis", [i / max(1, len(history) - 1) for i in range(len(history))])
    ]
    fig = go.Figure()
    for (step, values), color in zip(history, colors):
        s = np.asarray(values)[:top]
        fig.add_trace(
            go.Scatter(x=np.arange(1, len(s) + 1), y=s, mode="lines", line=dict(color=color), name=f"step {step}")
        )
    fig.update_layout(
        title=title or f"Spectrum of {layer} during training",
        xaxis_title="index i (largest first)",
        yaxis_title="singular value σ_i",
    )
    if log_y:
        fig.update_yaxes(type="log")
    # One entry per measured step: a long list, so at the right of the plot.
    return style(fig, legend="right" if len(history) > 6 else "below")


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
        go.Bar(
            x=list(labels),
            y=list(values),
            text=[text_format.format(v) for v in values],
            textposition="outside",
            textfont_size=11,
            cliponaxis=False,
        )
    )
    fig.update_layout(title=title, yaxis_title=yaxis_title, showlegend=False)
    if log_y:
        fig.update_yaxes(type="log")
    return style(fig)


def lines_figure(
    x: Sequence[float],
    series: Mapping[str, Sequence[float]],
    *,
    title: str,
    xaxis_title: str,
    yaxis_title: str,
    log_x: bool = False,
    log_y: bool = False,
    legend: str = "below",
) -> go.Figure:
    """One line per labelled series against a shared x (e.g. an error against the spectral gap per setting);
    ``legend="right"`` for many series (one per layer)."""
    fig = go.Figure()
    colors = [
        readable(c)
        for c in sample_colorscale("Viridis", [0.85 * i / max(1, len(series) - 1) for i in range(len(series))])
    ]
    for (label, y), color in zip(series.items(), colors):
        fig.add_trace(
            go.Scatter(x=list(x), y=list(_values(y)), mode="lines+markers", line=dict(color=color), name=label)
        )
    fig.update_layout(title=title, xaxis_title=xaxis_title, yaxis_title=yaxis_title)
    if log_x:
        fig.update_xaxes(type="log")
    if log_y:
        fig.update_yaxes(type="log")
    return style(fig, legend=legend)


def density_figure(
    samples: Mapping[str, Sequence[float]],
    curves: Mapping[str, tuple] | None = None,
    *,
    title: str = "Distribution of singular values",
    xaxis_title: str = "singular value σ",
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
    fig.update_layout(title=title, xaxis_title=xaxis_title, yaxis_title="density", barmode="overlay")
    return style(fig)


def tradeoff_figure(
    points: Mapping[str, tuple[Sequence[float], Sequence[float]]],
    *,
    title: str,
    yaxis_title: str,
    xaxis_title: str = "trainable parameters",
    text: Mapping[str, Sequence[str]] | None = None,
    references: Mapping[str, float] | None = None,
    log_x: bool = True,
    log_y: bool = False,
) -> go.Figure:
    """A quality metric against a cost, one labelled series of ``(x, y)`` points per method (each with
    its own x values, e.g. LoRA at several ranks and full fine-tuning as a single point), optional point
    labels ``text`` (``"r=8"``) and dashed horizontal ``references`` (e.g. the frozen base).

    Point labels are placed point by point (``plots.label_sides``) on the side of their point where
    they meet no label placed before them and no other point — two series that share a point (LoRA
    and SORSA at one budget) print their labels above and below it, not on top of each other; every
    label is also in the hover text."""
    fig = go.Figure()
    colors = palette(len(points))
    series = {label: (list(_values(x)), list(_values(y))) for label, (x, y) in points.items()}
    # the dashed references widen the drawn y range too: the estimate must know it
    sides = label_sides(
        series, text or {}, log_x=log_x, log_y=log_y, extra_y=[float(v) for v in (references or {}).values()]
    )
    for (label, (x, y)), color in zip(series.items(), colors):
        labels = list((text or {}).get(label, []))
        fig.add_trace(
            go.Scatter(
                x=x,
                y=y,
                name=label,
                mode="lines+markers+text" if labels else "lines+markers",
                text=labels or None,
                textposition=sides[label] if labels else None,
                textfont=dict(size=10, color=color),
                cliponaxis=False,
                hovertemplate=("%{text}: " if labels else "") + "x = %{x:.4g}, y = %{y:.4g}",
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
    fig.update_layout(title=title, xaxis_title=xaxis_title, yaxis_title=yaxis_title)
    if log_x:
        fig.update_xaxes(type="log")
    if log_y:
        fig.update_yaxes(type="log")
    return style(fig)


# What label_sides assumes of the drawn plot (a figure in the book's 772 px text column: its plot
# area measured 616 × 250 px in Chromium at a 1400 px window) and of a 10 px label: its width per
# character and its height, and the marker's radius, in pixels.
PLOT_PX = (616, 250)
LABEL_CHAR_PX, LABEL_PX, MARKER_PX = 6.5, 14.0, 6.0
SIDES = ("top center", "bottom center", "middle right", "middle left")


def label_sides(
    series: Mapping[str, tuple[Sequence[float], Sequence[float]]],
    text: Mapping[str, Sequence[str]],
    *,
    log_x: bool = False,
    log_y: bool = False,
    extra_y: Sequence[float] = (),
) -> dict[str, list[str]]:
    """A ``textposition`` per labelled point: greedily, series by series, the first of above, below,
    right, left (starting from a side that alternates between series) whose label box, estimated in
    pixels of a :data:`PLOT_PX` plot, meets neither a label placed before it nor another point; if
    every side meets something, the side that overlaps least. ``extra_y``: values the plot's y range
    also covers (a reference line), which compress the drawn distances between points."""

    def scaled(values, log):
        v = np.asarray(values, dtype=float)
        return np.log10(np.where(v > 0, v, np.nan)) if log else v

    xs = {k: scaled(x, log_x) for k, (x, _) in series.items()}
    ys = {k: scaled(y, log_y) for k, (_, y) in series.items()}
    every_x = np.concatenate([v for v in xs.values() if v.size] or [np.zeros(1)])
    every_y = np.concatenate([v for v in ys.values() if v.size] + [scaled(list(extra_y), log_y)] or [np.zeros(1)])

    def span(v):
        v = v[np.isfinite(v)]
        lo, hi = (float(v.min()), float(v.max())) if v.size else (0.0, 1.0)
        return lo, (hi - lo) or 1.0

    (x0, dx), (y0, dy) = span(every_x), span(every_y)
    pixel = {}  # (series, i) -> the point in pixels (y up), plotly pads the range by ~5 % each side
    for k in series:
        for i, (px, py) in enumerate(zip(xs[k], ys[k])):
            if np.isfinite(px) and np.isfinite(py):
                pixel[k, i] = ((px - x0) / dx * 0.9 + 0.05) * PLOT_PX[0], ((py - y0) / dy * 0.9 + 0.05) * PLOT_PX[1]

    def box(point, label, side):
        (px, py), w, h = point, LABEL_CHAR_PX * len(label), LABEL_PX
        if side == "top center":
            return px - w / 2, py + MARKER_PX, px + w / 2, py + MARKER_PX + h
        if side == "bottom center":
            return px - w / 2, py - MARKER_PX - h, px + w / 2, py - MARKER_PX
        if side == "middle right":
            return px + MARKER_PX, py - h / 2, px + MARKER_PX + w, py + h / 2
        return px - MARKER_PX - w, py - h / 2, px - MARKER_PX, py + h / 2

    def overlap(a, b, pad=2.0):
        w = min(a[2], b[2]) + pad - max(a[0], b[0])
        h = min(a[3], b[3]) + pad - max(a[1], b[1])
        return w * h if w > 0 and h > 0 else 0.0

    markers = {
        key: (p[0] - MARKER_PX, p[1] - MARKER_PX, p[0] + MARKER_PX, p[1] + MARKER_PX) for key, p in pixel.items()
    }
    placed: list[tuple[float, float, float, float]] = []
    out: dict[str, list[str]] = {}
    for n, k in enumerate(series):
        labels = list(text.get(k, []))
        order = SIDES[n % 2 :] + SIDES[: n % 2]  # series alternate between starting above and below
        out[k] = []
        for i, label in enumerate(labels):
            if (k, i) not in pixel:
                out[k].append(order[0])
                continue
            cost = {}
            for side in order:
                b = box(pixel[k, i], str(label), side)
                cost[side] = sum(overlap(b, p) for p in placed) + sum(
                    overlap(b, m, pad=0.0) for key, m in markers.items() if key != (k, i)
                )
                if cost[side] == 0:
                    break
            side = min(cost, key=lambda s: (cost[s], order.index(s)))
            placed.append(box(pixel[k, i], str(label), side))
            out[k].append(side)
    return out


def trajectories_figure(
    history: Sequence[tuple[int, Sequence[float]]],
    *,
    targets: Sequence[float] | None = None,
    top: int | None = None,
    title: str = "Singular values during training",
    yaxis_title: str = "singular value σ_i",
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
        fig.add_trace(
            go.Scatter(x=steps, y=values[:, i], mode="lines", line=dict(color=color), name=f"σ<sub>{i + 1}</sub>")
        )
        if targets is not None and i < len(targets):
            fig.add_hline(y=float(targets[i]), line_dash="dot", line_color=color, opacity=0.7)
    fig.update_layout(title=title, xaxis_title="step", yaxis_title=yaxis_title)
    if log_y:
        fig.update_yaxes(type="log")
    return style(fig, legend="right" if k > 6 else "below")


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
                textfont_size=10,
                cliponaxis=False,
            )
        )
    fig.update_layout(title=title, yaxis_title=yaxis_title, barmode="group")
    if log_y:
        fig.update_yaxes(type="log")
    return style(fig)
