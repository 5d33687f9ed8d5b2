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
from pathlib import Path

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


# -- colours that read in both themes --------------------------------------------------------------
FIGURES_JS = Path(__file__).resolve().parent.parent / "book" / "_static" / "figures.js"


def series_colours() -> list[str]:
    """Every colour the book draws series in: the method palette at every size a figure uses, the
    template's colour cycle (traces given no colour), the viridis-based builders', and the widgets' own."""
    from spectrallab.widgets import explorer, playground

    colours = [c for n in range(1, 17) for c in plots.palette(n)]
    colours += list(plots.TEMPLATE.layout.colorway)
    history = [[step, [1.0, 0.5]] for step in range(12)]
    evolution = plots.spectrum_evolution_figure(Run("r", spectra={"fc1": history}), "fc1")
    lines = plots.lines_figure([1, 2], {f"s{i}": [1, 2] for i in range(8)}, title="t", xaxis_title="x", yaxis_title="y")
    colours += [t.line.color for t in (*evolution.data, *lines.data)]
    colours += [explorer.KEPT_COLOR, explorer.DROPPED_COLOR, explorer.INIT_COLOR, explorer.ENERGY_COLOR]
    colours += [playground.METRIC_COLOR]
    return list(dict.fromkeys(colours))


def dark_variants(colours: list[str]) -> list[str]:
    """What book/_static/figures.js draws each colour as in the dark theme (its darkVariant, run in node)."""
    import json
    import shutil
    import subprocess

    node = shutil.which("node") or shutil.which("nodejs")
    if node is None:
        pytest.skip("node is not installed: figures.js's dark palette cannot be run here")
    script = (
        f"const c = require({json.dumps(str(FIGURES_JS))});"
        f"const bg = {json.dumps(plots.DARK_BACKGROUND)};"
        f"console.log(JSON.stringify({json.dumps(colours)}.map(x => c.darkVariant(x, bg))));"
    )
    return json.loads(subprocess.run([node, "-e", script], capture_output=True, text=True, check=True).stdout)


def test_wcag_contrast_matches_the_definition():
    assert plots.contrast("#000000", "#ffffff") == pytest.approx(21.0)
    assert plots.contrast("#777777", "#ffffff") == pytest.approx(4.48, abs=0.01)  # WCAG's own example
    assert plots.contrast("rgb(255, 255, 255)", "#fff") == pytest.approx(1.0)


def test_every_series_colour_reads_on_both_backgrounds():
    colours = series_colours()
    assert len(colours) > 40
    light = {c: plots.contrast(c, plots.LIGHT_BACKGROUND) for c in colours}
    dark = dict(zip(colours, dark_variants(colours)))
    on_dark = {c: plots.contrast(d, plots.DARK_BACKGROUND) for c, d in dark.items()}
    low_light = {c: round(r, 2) for c, r in light.items() if r < plots.MIN_CONTRAST}
    low_dark = {f"{c} -> {dark[c]}": round(r, 2) for c, r in on_dark.items() if r < plots.MIN_CONTRAST}
    assert not low_light, f"below {plots.MIN_CONTRAST}:1 on white: {low_light}"
    assert not low_dark, f"below {plots.MIN_CONTRAST}:1 on the dark background: {low_dark}"
    # the dark theme lightens only what needs it, and keeps the hue (the palette's first, LoRA's, blue)
    first = plots.palette(6)[0]
    assert plots.contrast(first, plots.DARK_BACKGROUND) < 3 and dark[first] != first
    r, g, b = plots.rgb(dark[first])
    assert b > r and b > g
    bright = plots.palette(8)[1]  # already 5.8:1 on the dark background: drawn as it is
    assert plots.contrast(bright, plots.DARK_BACKGROUND) >= 4.5 and dark[bright] == bright


def test_dark_variant_rejects_a_dark_colour_that_a_future_palette_might_add():
    """The check above is not vacuous: a dark navy fails on the dark background until figures.js
    lightens it, and a pale yellow fails on white until plots.readable darkens it."""
    assert plots.contrast("#1b1f6b", plots.DARK_BACKGROUND) < plots.MIN_CONTRAST
    assert plots.contrast(dark_variants(["#1b1f6b"])[0], plots.DARK_BACKGROUND) >= plots.MIN_CONTRAST
    assert plots.contrast("#f0e442", plots.LIGHT_BACKGROUND) < plots.MIN_CONTRAST
    assert plots.contrast(plots.readable("#f0e442"), plots.LIGHT_BACKGROUND) >= plots.MIN_CONTRAST


def test_style_darkens_a_chapters_pale_series_colour():
    fig = go.Figure(
        go.Scatter(x=[1, 2], y=[1, 2], line=dict(color="#f0e442"), mode="lines+markers+text", text=["a", "b"])
    )
    plots.style(fig)
    assert plots.contrast(fig.data[0].line.color, "#ffffff") >= plots.MIN_CONTRAST


# -- point labels ----------------------------------------------------------------------------------
def test_labels_of_two_series_sharing_a_point_go_to_different_sides():
    series = {"LoRA": ([600, 2400, 4800], [0.80, 0.91, 0.93]), "SORSA": ([602, 2402], [0.77, 0.95])}
    text = {"LoRA": ["r=1", "r=4", "r=8"], "SORSA": ["r=1", "r=4"]}
    sides = plots.label_sides(series, text, log_x=True)
    assert sides["LoRA"][0] != sides["SORSA"][0] and sides["LoRA"][1] != sides["SORSA"][1]
    fig = plots.tradeoff_figure(series, text=text, title="t", yaxis_title="accuracy")
    assert list(fig.data[0].textposition) == sides["LoRA"] and list(fig.data[1].textposition) == sides["SORSA"]


def test_short_log_axis_over_a_decade_writes_one_two_five_plainly():
    fig = go.Figure(go.Scatter(x=[200, 800, 5000], y=[1, 2, 3]))
    fig.update_xaxes(type="log")
    plots.style(fig)
    assert list(fig.layout.xaxis.tickvals) == [200, 500, 1000, 2000, 5000]
    assert list(fig.layout.xaxis.ticktext) == ["200", "500", "1000", "2000", "5000"]
