"""SSTView: the heatmap is the layer's recorded history (Σ per period, crosses on the active indices,
rings on re-SVD periods); the period slider redraws the right panel from that record; state, hiding,
live and static modes, bad input."""

from __future__ import annotations

import numpy as np
import plotly.graph_objects as go
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import spectrallab as sl
from spectrallab.widgets.sst_view import (
    ACTIVE,
    HEATMAP,
    HIGHLIGHT,
    RESVD,
    SIGMA,
    SIGMA_ACTIVE,
    SIGMA_FIRST,
    SSTView,
    demo_layer,
)


@pytest.fixture(scope="module")
def layer():
    """20×12 SST layer, rank 3, a new sample every 2 steps, re-SVD every 3 periods: 7 recorded periods."""
    torch.manual_seed(0)
    layer = sl.apply(nn.Linear(12, 20), "sst", rank=3, resample_every=2, warmup=0, periods_per_round=3)
    opt = sl.optimizer(layer, lr=0.05)
    g = torch.Generator().manual_seed(0)
    for _ in range(12):
        x = torch.randn(16, 12, generator=g)
        F.mse_loss(layer(x), torch.randn(16, 20, generator=g)).backward()
        opt.step()
        opt.zero_grad()
    return layer


def test_builds_with_defaults_on_a_demo_layer():
    w = SSTView(live=False)
    assert isinstance(w.figure, go.Figure) and not isinstance(w.figure, go.FigureWidget)
    assert w.state == {"period": 0, "log_color": True}
    periods, k = w.sigma.shape
    assert periods == len(w.layer.history) > 5 and k == w.layer.k
    assert len(w.figure.data[ACTIVE].x) == periods * w.layer.rank and w.error is None


def test_heatmap_and_markers_are_the_layers_history(layer):
    w = SSTView(layer, live=False)
    history = layer.history
    assert len(history) == 7
    sigma = np.array([h["sigma"] for h in history])
    np.testing.assert_allclose(w.figure.data[HEATMAP].z, np.log10(np.maximum(sigma, 1e-6)))
    pairs = sorted(zip(w.figure.data[ACTIVE].y, w.figure.data[ACTIVE].x))
    assert pairs == sorted((p, i) for p, h in enumerate(history) for i in h["active"])
    assert list(w.figure.data[RESVD].y) == [3, 6]  # re-SVD after every 3 periods
    np.testing.assert_allclose(w.figure.data[SIGMA_FIRST].y, sigma[0])
    w.controls["log_color"].value = False
    np.testing.assert_allclose(w.figure.data[HEATMAP].z, sigma)


def test_period_slider_redraws_the_spectrum_panel(layer):
    w = SSTView(layer, live=False)
    for p in (2, 5):
        w.controls["period"].value = p
        entry = layer.history[p]
        np.testing.assert_allclose(w.figure.data[SIGMA].y, entry["sigma"])
        assert list(w.figure.data[SIGMA_ACTIVE].x) == entry["active"]
        np.testing.assert_allclose(w.figure.data[SIGMA_ACTIVE].y, np.array(entry["sigma"])[entry["active"]])
        assert list(w.figure.data[HIGHLIGHT].y) == [p, p]
        assert f"period {p}, step {entry['step']}" in w.figure.layout.title.text
    assert w.state["period"] == 5


def test_state_round_trip_hide_and_live_mode(layer):
    w = SSTView(layer, period=4, log_color=False, live=False)
    pinned = SSTView.from_state(w.state, layer=layer, hide=["log_color"], live=False)
    assert pinned.state == w.state and pinned.controls["log_color"].layout.display == "none"
    live = SSTView(layer, live=True)
    assert isinstance(live.figure, go.FigureWidget)
    live.controls["period"].value = 6
    np.testing.assert_allclose(live.figure.data[SIGMA].y, layer.history[6]["sigma"])
    assert "(re-SVD)" in live.figure.layout.title.text


def test_bad_input(layer):
    with pytest.raises(TypeError, match="needs a layer made by sl.apply"):
        SSTView(nn.Linear(4, 4), live=False)
    with pytest.raises(ValueError, match=r"period=9 is outside the allowed range \[0, 6\]"):
        SSTView(layer, period=9, live=False)
    assert demo_layer(steps=10).period == 2


def test_an_sst_adapted_hybonet_layer_is_shown_through_its_lorentz_layer():
    """HyboNet's Lorentz layer keeps its weight as the child ``.linear``: SSTView takes the Lorentz
    layer (and shows that SST layer), and a model with several SST layers is told to pick one."""
    from spectrallab.widgets import SCENARIOS

    task = SCENARIOS["hyperbolic links (Disease, HyboNet)"].make_task()
    model = task.make_model(seed=0)
    sl.apply(model, "sst", rank=2, resample_every=2, warmup=0, targets=["transform.linear"])
    opt = sl.optimizer(model, lr=1e-2)
    g = torch.Generator().manual_seed(0)
    for _ in range(6):
        task.loss(model, task.batch("train", task.batch_size, g)).backward()
        opt.step()
        opt.zero_grad()
    lorentz = model.encoder.layers[0].transform
    w = SSTView(lorentz, live=False)
    assert w.layer is lorentz.linear and len(w.history) == len(lorentz.linear.history) >= 3
    assert w.sigma.shape[1] == lorentz.linear.k == min(lorentz.linear.out_features, lorentz.linear.in_features)
    assert len(w.figure.data[ACTIVE].x) == len(w.history) * 2 and w.error is None
    with pytest.raises(TypeError, match=r"holds 2 \(encoder.layers.0.transform.linear, encoder.layers.1"):
        SSTView(model, live=False)


def test_static_period_slider_step_k_is_the_live_figure_at_that_period(layer):
    from spectrallab.widgets.sst_view import HIGHLIGHT, SIGMA, SIGMA_ACTIVE
    from spectrallab.widgets.static import decode

    w = SSTView(layer, period=1, live=False)
    fig = w.static_figure()
    periods = fig.layout.meta["spectrallab"]["periods"]
    assert periods == list(range(len(w.history))) and fig.layout.sliders[0].active == 1
    assert w.state["period"] == 1
    for position, p in enumerate(periods):
        changes, layout, indices = fig.layout.sliders[0].steps[position].args
        live = SSTView(layer, period=p, live=False).figure
        assert layout["title.text"] == live.layout.title.text
        for n, index in enumerate(indices):
            assert index in (HIGHLIGHT, SIGMA, SIGMA_ACTIVE)
            for key in ("x", "y"):
                np.testing.assert_array_equal(np.asarray(decode(changes[key][n])), np.asarray(live.data[index][key]))
    linear = fig.layout.updatemenus[0].buttons[1].args[0]
    np.testing.assert_array_equal(decode(linear["z"][0]), SSTView(layer, log_color=False, live=False).figure.data[0].z)
