"""The figure style of spectrallab.widgets.plots: every builder's figure reads the same way.

Axis titles, titles and subplot titles carry no raw names (``σ_i``, ``val_loss``: plotly would print
the underscore); log axes write powers of ten (never SI prefixes, which read as units on singular
values) and label decades only, or plain round numbers when the data spans less than two decades;
legends sit in a margin of their own, below or right of the plot, and titles below the modebar band.
The browser checks of the same things on the built book are in test_figure_style.py.
"""

from __future__ import annotations

import math
import re

import numpy as np
import plotly.graph_objects as go
import pytest
from plotly.subplots import make_subplots

from spectrallab.runs import Run
from spectrallab.widgets import plots

RAW = re.compile(r"(^|[^A-Za-z0-9])[A-Za-zα-ωΑ-Ω‖)′]_|\b[a-z]+_[a-z]+\b")


def run(name: str, scale: float) -> Run:
    r = Run(name=name, config={"method": name})
    for step in range(1, 6):
        r.steps.append(step)
        r.loss.append(scale / step)
        r.evals.append({"step": step, "val_loss": scale / step, "accuracy": 1 - 1 / (step + 1)})
    r.spectra["fc1"] = [[step, list(np.geomspace(10, 1e-9, 12) / (step + 1))] for step in (0, 5)]
    return r


SPECTRUM = np.geomspace(3.0, 1e-12, 40)


def builders() -> dict[str, go.Figure]:
    runs = [run("lora", 3.0), run("full", 2.0)]
    return {
        "spectrum": plots.spectrum_figure({"W": SPECTRUM, "ΔW": SPECTRUM * 1e-3}, cut=8),
        "spectrum_normalized": plots.spectrum_figure({"W": SPECTRUM}, normalize=True),
        "curves": plots.curves_figure(runs, "val_loss", log_y=True, train_loss=True),
        "curves_accuracy": plots.curves_figure(runs, "accuracy"),
        "evolution": plots.spectrum_evolution_figure(runs[0], "fc1"),
        "bar": plots.bar_figure(["a", "b"], [1e-9, 1e-3], title="σ_max of ‖W‖_F", yaxis_title="σ_1", log_y=True),
        "lines": plots.lines_figure(
            [1, 10, 100], {"n_iter = 0": [1e-6, 1e-3, 1.0]}, title="t", xaxis_title="σ_r+1 / σ_r", yaxis_title="E_{8}"
        ),
        "density": plots.density_figure({"fc2": SPECTRUM}),
        "tradeoff": plots.tradeoff_figure(
            {"LoRA": ([1e3, 1e4], [0.8, 0.9]), "PiSSA": ([1e3, 1e4], [0.81, 0.9])},
            text={"LoRA": ["r=1", "r=8"], "PiSSA": ["r=1", "r=8"]},
            title="accuracy against parameters",
            yaxis_title="validation accuracy",
            log_y=True,
        ),
        "trajectories": plots.trajectories_figure([(s, SPECTRUM[:8] / (s + 1)) for s in range(5)], log_y=True),
        "grouped_bar": plots.grouped_bar_figure(["fc1"], {"ΔW": [0.5], "W": [0.2]}, title="t", yaxis_title="E_8"),
    }


def texts(fig: go.Figure) -> list[str]:
    found = [fig.layout.title.text or ""]
    found += [fig.layout[n].title.text or "" for n in fig.layout if re.fullmatch(r"[xy]axis\d*", n)]
    found += [a.text or "" for a in fig.layout.annotations]
    return [re.sub(r"<[^>]+>", " ", t) for t in found]


def log_axes(fig: go.Figure):
    return [fig.layout[n] for n in fig.layout if re.fullmatch(r"[xy]axis\d*", n) and fig.layout[n].type == "log"]


@pytest.mark.parametrize("name", list(builders()))
def test_builder_titles_are_words_or_rendered_symbols(name):
    fig = builders()[name]
    raw = [t for t in texts(fig) if RAW.search(t)]
    assert not raw, f"{name}: raw names in {raw}"
    assert all(
        fig.layout[n].title.text for n in ("xaxis", "yaxis") if n != "xaxis" or name not in ("bar", "grouped_bar")
    )


@pytest.mark.parametrize("name", list(builders()))
def test_builder_log_axes_write_powers_of_ten_and_label_decades_only(name):
    fig = builders()[name]
    for axis in log_axes(fig):
        assert axis.exponentformat not in (None, "SI", "B") and axis.exponentformat == "power"
        if axis.tickmode == "array":  # a short span: plain numbers, each the value at its tick
            assert [float(t) for t in axis.ticktext] == pytest.approx(list(axis.tickvals), rel=1e-2)
        else:
            assert axis.dtick >= 1 and float(axis.dtick).is_integer() and axis.tick0 == 0, name


@pytest.mark.parametrize("name", list(builders()))
def test_builder_legend_and_title_have_bands_of_their_own(name):
    fig = builders()[name]
    legend, title = fig.layout.legend, fig.layout.title
    below = legend.yref == "container" and legend.y == 0 and legend.yanchor == "bottom"
    right = legend.xref == "paper" and legend.x > 1 and legend.xanchor == "left"
    assert below or right, f"{name}: legend at {legend}"
    assert title.yref == "container" and title.yanchor == "top" and title.pad.t >= plots.MODEBAR_BAND
    assert fig.layout.margin.t >= plots.MODEBAR_BAND + plots.TITLE_LINE


def test_no_figure_uses_si_exponents_anywhere():
    """The template itself writes powers of ten, so axes a chapter adds get them too."""
    fig = go.Figure(go.Scatter(x=[1, 2], y=[1e-9, 1e-6]))
    assert fig.layout.template.layout.yaxis.exponentformat == "power"
    assert plots.pio.templates.default == "spectrallab"


def test_log_axis_with_a_short_span_gets_plain_values():
    fig = plots.curves_figure([run("a", 3.0)], "val_loss", log_y=True)  # 0.6 .. 3: under one decade
    axis = fig.layout.yaxis
    assert axis.tickmode == "array" and 3 <= len(axis.tickvals) <= 8
    assert all(0.5 <= v <= 3.5 for v in axis.tickvals)


def test_log_axis_spanning_many_decades_labels_every_few_decades():
    fig = plots.spectrum_figure({"W": SPECTRUM})  # 3 .. 1e-12: twelve decades
    axis = fig.layout.yaxis
    assert axis.dtick == math.ceil((math.log10(3.0) + 12) / 6) and axis.minor.ticks == ""


def test_rich_renders_plain_subscripts_and_leaves_names_alone():
    assert plots.rich("σ_i / σ_1") == "σ<sub>i</sub> / σ<sub>1</sub>"
    assert plots.rich("‖W − B‖_F") == "‖W − B‖<sub>F</sub>"
    assert plots.rich("E_{8}(ΔW_t)") == "E<sub>8</sub>(ΔW<sub>t</sub>)"
    assert plots.rich("σ_r+1 / σ_r") == "σ<sub>r+1</sub> / σ<sub>r</sub>"
    assert plots.rich("ffa_lora and val_loss") == "ffa_lora and val_loss"
    assert plots.rich(None) is None
    assert plots.metric_name("val_loss") == "validation loss" and plots.metric_name("my_metric") == "my metric"


def test_style_makes_room_for_subplot_titles_and_is_idempotent():
    fig = make_subplots(rows=1, cols=2, subplot_titles=("σ_i of W", "loss"))
    fig.add_trace(go.Scatter(x=[1, 2], y=[1, 2]), row=1, col=1)
    fig.update_layout(title="two panels")
    plots.style(fig)
    top = fig.layout.margin.t
    assert top == plots.MODEBAR_BAND + plots.TITLE_LINE + plots.SUBPLOT_TITLE_BAND
    assert fig.layout.annotations[0].text == "σ<sub>i</sub> of W"
    plots.style(fig)
    assert fig.layout.margin.t == top and fig.layout.annotations[0].text == "σ<sub>i</sub> of W"


def test_widgets_share_the_style():
    from spectrallab.widgets import SpectrumExplorer, SSTView

    for widget in (SpectrumExplorer(live=False), SSTView(live=False)):
        fig = widget.figure
        assert fig.layout.template.layout.font.family == plots.FONT
        assert fig.layout.legend.yref == "container" and fig.layout.title.pad.t >= plots.MODEBAR_BAND
        raw = [t for t in texts(fig) if RAW.search(t)]
        assert not raw, f"{type(widget).__name__}: raw names in {raw}"
