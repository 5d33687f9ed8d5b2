"""Playground: controls change the figure; Play/Pause/Step/Reset work through the public methods;
training runs off the calling thread, stops within a step, never leaks a thread, and shows errors."""

from __future__ import annotations

import math
import threading
import time

import plotly.graph_objects as go
import pytest

import spectrallab as sl
from spectrallab.widgets import Playground
from spectrallab.widgets.playground import DELTA, GHOST, SPEC_NOW, TRAIN, VAL


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
    assert len(w.figure.data) == 6
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
