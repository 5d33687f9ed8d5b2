"""SpectrumExplorer: the rank slider moves the cut, the kept spectrum and the reported numbers; the
measured error equals the Eckart–Young bound; an init's spectrum part is highlighted from the
library's table; layers, state, hiding, live and static modes, and errors shown in the widget."""

from __future__ import annotations

import numpy as np
import plotly.graph_objects as go
import pytest
import torch

import spectrallab as sl
from spectrallab.linalg import eckart_young_error, energy, truncate
from spectrallab.methods.lora import INIT_SPECTRUM_PART, LORA_INITS, register_init
from spectrallab.widgets import SpectrumExplorer
from spectrallab.widgets.explorer import (
    DEMO_LAYER,
    DROPPED,
    ENERGY_AT_R,
    KEPT,
    MEASURED,
    RESIDUAL_MAP,
    TAKEN,
    W_R_MAP,
    demo_matrix,
)


@pytest.fixture
def matrix() -> torch.Tensor:
    """A 48×40 matrix with a clearly decaying spectrum (small, so each test builds in milliseconds)."""
    g = torch.Generator().manual_seed(0)
    U, _ = torch.linalg.qr(torch.randn(48, 40, generator=g))
    V, _ = torch.linalg.qr(torch.randn(40, 40, generator=g))
    return (U * 0.8 ** torch.arange(40.0)) @ V.T


@pytest.fixture
def spectral_inits():
    """Fake inits that take the top / bottom singular directions, registered for one test and removed after."""
    names = {"test_top": "top", "test_bottom": "bottom"}
    for name, part in names.items():
        register_init(name, spectrum_part=part)(lambda weight, rank, scale: (None, None, weight))
    yield names
    for name in names:
        LORA_INITS.pop(name, None)
        INIT_SPECTRUM_PART.pop(name, None)


def test_builds_with_defaults_on_the_512_demo_matrix():
    w = SpectrumExplorer(live=False)
    assert isinstance(w.figure, go.Figure) and not isinstance(w.figure, go.FigureWidget)
    assert w.controls["layer"].value == DEMO_LAYER
    assert w.controls["rank"].max == 512
    S = torch.linalg.svdvals(demo_matrix())
    r = w.controls["rank"].value
    assert float(energy(S, r)) >= 0.9 > float(energy(S, r - 1))  # default rank: 90 % of the energy
    assert len(w.figure.data[KEPT].x) == r and len(w.figure.data[DROPPED].x) == 512 - r
    assert w.figure.data[W_R_MAP].z.shape == (64, 64)  # heatmaps show a strided sample
    assert "energy captured" in w.figure.layout.title.text and w.error is None


def test_rank_slider_moves_cut_spectrum_and_reported_numbers(matrix):
    w = SpectrumExplorer(matrix, rank=3, live=False)
    w.controls["rank"].value = 7
    S = torch.linalg.svdvals(matrix)
    spectrum_cut, error_cut = w.cut_shapes
    assert spectrum_cut.x0 == spectrum_cut.x1 == 7.5  # between σ_7 and σ_8
    assert error_cut.x0 == 7
    assert list(w.figure.data[KEPT].x) == list(range(1, 8))
    np.testing.assert_allclose(w.figure.data[KEPT].y, S[:7].numpy(), rtol=1e-5)
    assert list(w.figure.data[DROPPED].x) == list(range(8, 41))

    readout = w.readout
    assert readout.rank == 7 and readout.k == 40
    assert readout.energy == pytest.approx(float(energy(S, 7)), rel=1e-5)
    assert readout.bound == pytest.approx(float(eckart_young_error(S, 7)), rel=1e-5)
    for text in (w.figure.layout.title.text, w.status.value):
        assert f"{readout.energy:.1%}" in text and f"{readout.bound:.4g}" in text
    assert list(w.figure.data[ENERGY_AT_R].y) == pytest.approx([readout.energy])
    assert "rank-7" in w.figure.layout.annotations[3].text


@pytest.mark.parametrize("rank", [1, 5, 20, 40])
def test_reconstruction_error_equals_the_eckart_young_bound(matrix, rank):
    w = SpectrumExplorer(matrix, rank=1, live=False)
    w.controls["rank"].value = rank
    S = torch.linalg.svdvals(matrix)
    bound = float(eckart_young_error(S, rank))
    direct = float(torch.linalg.matrix_norm(matrix - truncate(matrix, rank)))
    assert w.readout.error == pytest.approx(bound, rel=1e-3, abs=1e-5)
    assert w.readout.error == pytest.approx(direct, rel=1e-3, abs=1e-5)
    norm = float(torch.linalg.matrix_norm(matrix))
    assert w.figure.data[MEASURED].x == (rank,)
    assert w.figure.data[MEASURED].y[0] == pytest.approx(bound / norm, rel=1e-3, abs=1e-5)
    # the residual heatmap is W − W_r (the matrix is small enough to be shown whole)
    np.testing.assert_allclose(w.figure.data[RESIDUAL_MAP].z, (matrix - truncate(matrix, rank)).numpy(), atol=1e-5)


def test_init_selector_highlights_what_a_spectral_init_takes(matrix, spectral_inits):
    w = SpectrumExplorer(matrix, rank=4, live=False)
    assert w.controls["init"].value == "default"
    taken = w.figure.data[TAKEN]
    assert taken.visible is False and len(taken.x) == 0  # LoRA's own init takes nothing
    assert "copies no singular directions" in w.status.value

    w.controls["init"].value = "test_top"
    S = torch.linalg.svdvals(matrix).numpy()
    assert list(w.figure.data[TAKEN].x) == [1, 2, 3, 4] and w.figure.data[TAKEN].visible
    np.testing.assert_allclose(w.figure.data[TAKEN].y, S[:4], rtol=1e-5)
    assert w.readout.init_energy == pytest.approx(w.readout.energy, rel=1e-5)  # the top r carry the kept energy
    assert "test_top" in w.figure.data[TAKEN].name and "σ<sub>1</sub> … σ<sub>4</sub>" in w.status.value

    w.controls["rank"].value = 6  # the highlight follows the rank
    assert list(w.figure.data[TAKEN].x) == [1, 2, 3, 4, 5, 6]
    w.controls["init"].value = "test_bottom"
    assert list(w.figure.data[TAKEN].x) == list(range(35, 41))
    assert w.error is None


def test_model_source_lists_linear_and_adapted_layers(model):
    sl.apply(model, "lora", rank=2, targets=["fc1"])
    with torch.no_grad():
        model.encoder["fc1"].lora_B.normal_()  # a non-zero update, so the effective weight differs from W
    w = SpectrumExplorer(model, live=False)
    names = [value for _, value in w.controls["layer"].options]
    assert names == ["encoder.fc1", "encoder.fc2", "head"]
    assert w.controls["layer"].options[0][0] == "encoder.fc1 (32×16)"
    S_fc1 = torch.linalg.svdvals(model.encoder["fc1"].effective_weight().detach())
    shown = np.concatenate([w.figure.data[KEPT].y, w.figure.data[DROPPED].y])
    np.testing.assert_allclose(shown, S_fc1.numpy(), rtol=1e-5)

    w.controls["rank"].value = 16
    w.controls["layer"].value = "head"  # 8×16: k = 8, the rank is clamped to it
    assert w.controls["rank"].max == 8 and w.controls["rank"].value == 8
    assert w.readout.layer == "head" and w.readout.k == 8 and len(w.figure.data[DROPPED].x) == 0
    w.controls["layer"].value = "encoder.fc2"
    assert w.controls["rank"].max == 16 and w.readout.rank == 8
    assert w.error is None


def test_from_state_round_trip_and_hide(matrix):
    w = SpectrumExplorer(matrix, rank=5, log_y=False, live=False)
    w.controls["rank"].value = 9
    state = w.state
    assert state == {"layer": "matrix", "rank": 9, "init": "default", "log_y": False}
    pinned = SpectrumExplorer.from_state(state, source=matrix, hide=["rank", "init"], live=False)
    assert pinned.state == state
    assert pinned.controls["rank"].layout.display == "none" and pinned.controls["init"].layout.display == "none"
    assert pinned.controls["layer"].layout.display != "none"
    assert pinned.figure.layout.yaxis.type == "linear"
    np.testing.assert_array_equal(pinned.figure.data[KEPT].y, w.figure.data[KEPT].y)
    assert pinned.cut_shapes[0].x0 == 9.5
    with pytest.raises(ValueError, match="no control"):
        pinned.hide("sparsity")


def test_log_scale_toggle(matrix):
    w = SpectrumExplorer(matrix, live=False)
    assert w.figure.layout.yaxis.type == "log"
    w.controls["log_y"].value = False
    assert w.figure.layout.yaxis.type == "linear"


def test_live_mode_updates_the_same_figure_widget_in_place(matrix):
    w = SpectrumExplorer(matrix, rank=2, live=True)
    assert isinstance(w.figure, go.FigureWidget)
    figure, kept = w.figure, w.figure.data[KEPT]
    w.controls["rank"].value = 12
    assert w.figure is figure and w.figure.data[KEPT] is kept  # updated, not rebuilt
    assert len(kept.x) == 12 and w.cut_shapes[0].x0 == 12.5
    assert w.readout.error == pytest.approx(float(eckart_young_error(torch.linalg.svdvals(matrix), 12)), rel=1e-3)


def test_an_exception_in_a_handler_is_shown_in_the_widget(matrix, monkeypatch):
    w = SpectrumExplorer(matrix, live=False)

    def broken(rank):
        raise RuntimeError("reconstruction failed")

    monkeypatch.setattr(w.current, "reconstruction", broken)
    w.controls["rank"].value = 3
    assert isinstance(w.error, RuntimeError)
    assert "RuntimeError: reconstruction failed" in w.status.value and "changing rank" in w.status.value


def test_bad_arguments_name_the_allowed_values(matrix):
    with pytest.raises(ValueError, match=r"rank=41 is outside the allowed range \[1, 40\]"):
        SpectrumExplorer(matrix, rank=41, live=False)
    with pytest.raises(ValueError, match="not a registered LoRA init"):
        SpectrumExplorer(matrix, init="nope", live=False)
    with pytest.raises(ValueError, match="layer='fc9' is not one of"):
        SpectrumExplorer(matrix, layer="fc9", live=False)
    with pytest.raises(TypeError, match="source must be"):
        SpectrumExplorer("a string", live=False)


def test_a_hybonet_model_lists_the_lorentz_layers_inner_linears():
    """HyboNet's weights are the ``.linear`` children of its Lorentz layers; adapted, they show W + ΔW."""
    from spectrallab.widgets import SCENARIOS

    model = SCENARIOS["hyperbolic links (Disease, HyboNet)"].make_task().make_model(seed=0)
    sl.apply(model, "lora", rank=2, targets=["transform.linear"])
    inner = model.encoder.layers[1].transform.linear
    with torch.no_grad():
        inner.lora_B.normal_()
    w = SpectrumExplorer(model, layer="encoder.layers.1.transform.linear", live=False)
    names = [value for _, value in w.controls["layer"].options]
    assert names == ["encoder.layers.0.transform.linear", "encoder.layers.1.transform.linear"]
    shown = np.concatenate([w.figure.data[KEPT].y, w.figure.data[DROPPED].y])
    np.testing.assert_allclose(shown, torch.linalg.svdvals(inner.effective_weight().detach()).numpy(), rtol=1e-5)
    assert w.readout.k == min(inner.out_features, inner.in_features) and w.error is None


def _step_data(fig, position: int) -> dict[int, dict]:
    """The data a static slider step writes, by trace index (typed arrays decoded)."""
    from spectrallab.widgets.static import decode

    changes, _layout, indices = fig.layout.sliders[0].steps[position].args
    return {index: {key: decode(values[n]) for key, values in changes.items()} for n, index in enumerate(indices)}


def test_static_rank_slider_step_k_is_the_live_figure_at_that_rank(matrix):
    w = SpectrumExplorer(matrix, rank=5, init="pissa", live=False)
    fig = w.static_figure()
    ranks = fig.layout.meta["spectrallab"]["ranks"]
    assert ranks == w.static_ranks() and 5 in ranks and ranks[0] == 1 and ranks[-1] == 40
    assert fig.layout.sliders[0].active == ranks.index(5)
    assert w.state["rank"] == 5 and w.state["init"] == "pissa"  # the controls were restored
    for position, r in enumerate(ranks):
        written = _step_data(fig, position)
        live = SpectrumExplorer(matrix, rank=r, init="pissa", live=False).figure  # the live widget at that value
        for index in (KEPT, DROPPED, TAKEN, MEASURED, ENERGY_AT_R, W_R_MAP, RESIDUAL_MAP):
            for key in ("x", "y", "z"):
                expected = live.data[index][key] if key in live.data[index] else None
                if expected is None:
                    assert written[index][key] is None
                else:
                    np.testing.assert_array_equal(np.asarray(written[index][key]), np.asarray(expected))
        layout = fig.layout.sliders[0].steps[position].args[1]
        assert layout["shapes[0].x0"] == live.layout.shapes[0].x0 == r + 0.5
        assert layout["title.text"].split("<br>")[0] == live.layout.title.text.split("<br>")[0]


def test_static_init_menu_shows_each_inits_circles(matrix):
    w = SpectrumExplorer(matrix, rank=3, init="default", live=False)
    fig = w.static_figure()
    menu = fig.layout.updatemenus[0]
    labels = [b.label for b in menu.buttons]
    assert labels == [f"init: {i}" for i in LORA_INITS]
    pissa = menu.buttons[labels.index("init: pissa")]
    visible, indices = pissa.args
    shown = [i for i, v in zip(indices, visible["visible"]) if v]
    assert len(shown) == 1 and shown[0] >= 10  # an extra trace after the live figure's ten
    live = SpectrumExplorer(matrix, rank=3, init="pissa", live=False).figure
    assert list(fig.data[shown[0]].x) == list(live.data[TAKEN].x) == [1, 2, 3]  # PiSSA's top r
    assert not any(menu.buttons[labels.index("init: default")].args[0]["visible"])  # LoRA's own: none
    position = fig.layout.meta["spectrallab"]["ranks"].index(8)
    live8 = SpectrumExplorer(matrix, rank=8, init="pissa", live=False).figure
    assert list(_step_data(fig, position)[shown[0]]["x"]) == list(live8.data[TAKEN].x)  # the slider moves it too


def test_static_figure_is_what_the_book_displays_and_stays_modest():
    import plotly.io as pio

    w = SpectrumExplorer(live=False)  # the 512×512 demo
    fig = w.static_figure()
    added = len(pio.to_json(fig)) - len(pio.to_json(w.figure))
    assert 0 < added < 900_000, f"the static states add {added} bytes"
    assert "rank slider" in w.static_note() and "make lab" in w.static_note()


def test_static_figure_offers_no_control_the_instructor_hid(matrix):
    fig = SpectrumExplorer(matrix, rank=4, hide=["init", "rank"], live=False).static_figure()
    assert not fig.layout.sliders and [m.name for m in fig.layout.updatemenus] == ["scale"]
