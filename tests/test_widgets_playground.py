"""Playground: controls change the figure; Play/Pause/Step/Reset work through the public methods;
training runs off the calling thread, stops within a step, never leaks a thread, and shows errors."""

from __future__ import annotations

import math
import threading
import time

import numpy as np
import plotly.graph_objects as go
import pytest

import spectrallab as sl
from spectrallab.widgets import Playground
from spectrallab.widgets import SCENARIOS
from spectrallab.widgets.playground import DELTA, GHOST, GHOST_METRIC, METRIC, SPEC_NOW, TRAIN, VAL

HYPERBOLIC_LINKS = "hyperbolic links (Disease, HyboNet)"
HYPERBOLIC_NODES = "hyperbolic nodes (Disease, HyboNet)"


@pytest.fixture(autouse=True)
def private_home(home):
    return home


def training_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "spectrallab-training"]


def wait_until(condition, timeout=30.0):
    end = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > end:
            return False
        time.sleep(0.02)
    return True


def test_builds_with_defaults_and_draws_the_starting_point():
    w = Playground(live=False, ghost=False)
    assert isinstance(w.figure, go.Figure) and not isinstance(w.figure, go.FigureWidget)
    assert len(w.figure.data) == 8
    # a scenario without a headline metric: its traces and their axis stay hidden
    assert not w.figure.data[METRIC].visible and not w.figure.layout.yaxis4.visible
    assert list(w.figure.data[VAL].x) == [0]          # step 0: the starting point was evaluated
    assert len(w.figure.data[SPEC_NOW].y) > 0
    assert max(w.figure.data[DELTA].y) == pytest.approx(0, abs=1e-6)  # nothing has moved yet
    assert "trainable" in w.counts.value


def test_step_moves_loss_and_spectrum():
    w = Playground(scenario="digits", method="full", lr=0.01, live=False, ghost=False)
    before = list(w.figure.data[SPEC_NOW].y)
    for _ in range(5):
        w.step()
    assert list(w.figure.data[TRAIN].x) == [1, 2, 3, 4, 5]
    assert list(w.figure.data[SPEC_NOW].y) != before
    assert max(w.figure.data[DELTA].y) > 0
    assert w.session.optimizer_state_numel() == 2 * sl.trainable_parameters(w.session.model)  # Adam: m and v


def test_static_play_trains_to_the_end_with_a_ghost_reference():
    w = Playground(scenario="low-rank teacher", method="lora", rank=2, steps=40, live=False)
    w.play()
    assert w.session.done and w.session.step_count == 40
    assert len(w.figure.data[TRAIN].x) == 40
    assert len(w.figure.data[GHOST].x) > 1            # full-rank reference, same task and steps
    again = Playground(scenario="low-rank teacher", method="lora", rank=4, steps=40, live=False)
    again.play()                                       # the reference is reused from disk
    assert sum(r.name.startswith("reference") for r in sl.load_runs()) == 1


def test_live_play_runs_in_a_background_thread_and_pause_stops_within_a_step():
    w = Playground(scenario="digits", method="lora", rank=4, steps=100_000, live=True, ghost=False)
    assert isinstance(w.figure, go.FigureWidget)
    w.play()
    assert wait_until(lambda: w.session.step_count >= 20)
    assert len(training_threads()) == 1
    w.pause()
    stopped_at = w.session.step_count
    assert not training_threads()
    time.sleep(0.3)
    assert w.session.step_count == stopped_at          # nothing trains after pause returns
    assert len(w.figure.data[TRAIN].x) == stopped_at   # the last state is drawn
    w.step()
    assert w.session.step_count == stopped_at + 1


def test_reset_and_structural_changes_join_the_thread_and_rebuild():
    w = Playground(scenario="digits", method="lora", steps=100_000, live=True, ghost=False)
    w.play()
    assert wait_until(lambda: w.session.step_count >= 5)
    w.controls["method"].value = "full"               # structural: rebuilds
    assert not training_threads()
    assert w.session.method == "full" and w.session.step_count == 0
    assert w.controls["rank"].layout.display == "none"  # full has no rank
    assert list(w.figure.data[TRAIN].x) == []
    w.controls["method"].value = "ffa_lora"
    assert w.controls["rank"].layout.display is None
    w.controls["rank"].value = 2
    assert w.session.options == {"rank": 2, "init": "default"}


def test_learning_rate_applies_live_without_a_reset():
    w = Playground(scenario="digits", method="lora", live=False, ghost=False)
    w.step()
    session = w.session
    w.controls["lr"].value = 0.001
    assert w.session is session and session.optimizer.param_groups[0]["lr"] == pytest.approx(0.001)


def test_rank_is_bounded_by_the_smallest_targeted_layer():
    w = Playground(scenario="rotated digits (fine-tune)", rank=64, live=False, ghost=False)
    assert w.controls["rank"].max == 10 and w.controls["rank"].value == 10  # fc3 is 10 × width


def test_a_failing_training_step_is_shown_in_the_widget(monkeypatch):
    w = Playground(scenario="digits", method="lora", steps=1000, live=True, ghost=False)

    def broken_loss(model, batch):
        raise RuntimeError("the data loader fell over")

    monkeypatch.setattr(w.session.task, "loss", broken_loss)
    w.play()
    assert wait_until(lambda: w.error is not None)
    assert wait_until(lambda: not training_threads())
    assert "RuntimeError: the data loader fell over" in w.status.value


def test_a_new_playground_pauses_the_running_one():
    first = Playground(scenario="digits", steps=100_000, live=True, ghost=False)
    first.play()
    assert wait_until(lambda: first.session.step_count >= 3)
    second = Playground(scenario="low-rank teacher", live=True, ghost=False)
    assert not first.session.playing and len(training_threads()) == 0
    second.session.close()


def test_state_round_trip_and_hidden_controls():
    w = Playground(scenario="low-rank teacher", method="lora", rank=3, lr=0.005, live=False, ghost=False)
    pinned = Playground.from_state(w.state, hide=["method", "scenario"], live=False, ghost=False)
    assert pinned.state == w.state
    assert pinned.controls["method"].layout.display == "none"
    with pytest.raises(ValueError, match="no control"):
        pinned.hide("colour")
    with pytest.raises(ValueError, match="scenario='mnist' is not one of"):
        Playground(scenario="mnist", live=False)


@pytest.mark.parametrize("method", sl.methods())
def test_every_registered_method_trains_in_the_playground(method):
    """A new method is one file: apply, optimizer, training and the widget need nothing else."""
    w = Playground(scenario="rotated digits (fine-tune)", method=method, rank=4, live=False, ghost=False)
    for _ in range(3):
        w.step()
    assert w.error is None and w.session.step_count == 3
    assert len(w.figure.data[TRAIN].x) == 3 and all(map(math.isfinite, w.figure.data[TRAIN].y))
    assert sl.trainable_parameters(w.session.model) > 0


@pytest.mark.parametrize("method, count_periods", [
    ("sst", lambda layer: len(layer.history)),
    ("relora", None),
    ("galore", None),
])
def test_the_period_knob_reaches_methods_with_periodic_work(method, count_periods):
    """ReLoRA's restarts, GaLore's projection updates and SST's resampling happen every `period` steps."""
    w = Playground(scenario="digits", method=method, rank=2, period=4, live=False, ghost=False)
    assert w.controls["period"].layout.display is None
    spec = next(iter(sl.adapted_layers(w.session.model).values())).spec
    expected = type(spec).period_options(4)
    assert {k: spec.config[k] for k in expected} == expected
    for _ in range(9):
        w.step()
    assert w.error is None
    if count_periods is not None:
        layer = next(iter(sl.adapted_layers(w.session.model).values()))
        assert count_periods(layer) >= 3  # periods starting at steps 0, 4, 8
    lora = Playground(scenario="digits", method="lora", live=False, ghost=False)
    assert lora.controls["period"].layout.display == "none"


# -- the hyperbolic scenarios (HyboNet on the Disease tree): a headline metric next to the loss ----------

@pytest.mark.parametrize("scenario, key", [(HYPERBOLIC_LINKS, "val_roc_auc"), (HYPERBOLIC_NODES, "val_f1")])
def test_hyperbolic_scenarios_adapt_the_lorentz_layers_and_draw_their_metric(scenario, key):
    w = Playground(scenario=scenario, method="lora", rank=2, live=False, ghost=False)
    assert SCENARIOS[scenario].metric.key == key
    # the methods adapt the inner nn.Linear of each Lorentz layer, and those are the layers shown
    adapted = sorted(sl.adapted_layers(w.session.model))
    assert adapted == ["encoder.layers.0.transform.linear", "encoder.layers.1.transform.linear"]
    assert list(w.controls["layer"].options) == adapted and w.state["layer"] == adapted[0]
    assert w.state["lr"] == pytest.approx(SCENARIOS[scenario].suggested_lr("lora"))
    metric = w.figure.data[METRIC]
    assert metric.visible and w.figure.layout.yaxis4.visible and tuple(w.figure.layout.yaxis4.range) == (0, 1)
    assert list(metric.x) == [0] and 0.0 <= metric.y[0] <= 1.0   # the starting point's metric
    assert "higher is better" in w.figure.layout.annotations[0].text
    before = list(w.figure.data[SPEC_NOW].y)
    for _ in range(3):
        w.step()
    assert w.error is None and list(w.figure.data[TRAIN].x) == [1, 2, 3]
    assert list(w.figure.data[SPEC_NOW].y) != before and max(w.figure.data[DELTA].y) > 0


def test_hyperbolic_links_static_play_ends_with_auc_values_and_a_ghost():
    w = Playground(scenario=HYPERBOLIC_LINKS, method="sst", rank=4, live=False)
    w.play()
    steps = w.state["steps"]
    assert w.session.done and w.session.step_count == steps and w.error is None
    x, auc = list(w.figure.data[METRIC].x), np.asarray(w.figure.data[METRIC].y)
    assert x == list(w.figure.data[VAL].x) and x[0] == 0 and x[-1] == steps
    assert np.all((auc >= 0) & (auc <= 1))
    # it learns: chance-level (≈ 0.42 on this split) at the start; measured ≈ 0.65 at the end (ci)
    assert auc.max() > auc[0] + 0.1 and auc[-1] > 0.5, auc
    ghost = np.asarray(w.figure.data[GHOST_METRIC].y)    # full-rank training's AUC, from the cached run
    assert len(ghost) == len(w.reference.evals) > 2 and np.all((ghost >= 0) & (ghost <= 1))
    assert list(w.figure.data[GHOST].y) == w.reference.eval_series("val_loss")[1]

    pinned = Playground.from_state(w.state, live=False, ghost=False)
    assert pinned.state == w.state and pinned.figure.data[METRIC].visible


def test_switching_to_and_from_the_hyperbolic_scenario_rebuilds_layers_and_metric():
    w = Playground(scenario="digits", live=False, ghost=False)
    w.controls["scenario"].value = HYPERBOLIC_LINKS       # other layer names than digits' fc1, fc2, fc3
    assert w.error is None, w.status.value
    assert w.controls["layer"].value == "encoder.layers.0.transform.linear"
    assert w.figure.data[METRIC].visible and list(w.figure.data[METRIC].x) == [0]
    w.controls["scenario"].value = "digits"
    assert w.error is None and w.controls["layer"].value == "fc1"
    assert not w.figure.data[METRIC].visible and len(w.figure.data[METRIC].x) == 0
    assert w.figure.layout.annotations[0].text == "loss"
