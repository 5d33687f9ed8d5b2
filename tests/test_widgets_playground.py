"""Playground: controls change the figure; Play/Pause/Step/Reset work through the public methods;
training runs off the calling thread, stops within a step, never leaks a thread, and shows errors."""

from __future__ import annotations

import math
import threading
import time

import ipywidgets as W
import numpy as np
import plotly.graph_objects as go
import pytest

import spectrallab as sl
from spectrallab.methods import base as methods_base
from spectrallab.methods.lora import LoRA
from spectrallab.methods.options import Option
from spectrallab.widgets import SCENARIOS, Playground
from spectrallab.widgets.playground import (
    DELTA,
    GHOST,
    GHOST_METRIC,
    METRIC,
    SHARED_OPTIONS,
    SPEC_NOW,
    TRAIN,
    VAL,
    option_key,
    period_driven,
)

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
    assert list(w.figure.data[VAL].x) == [0]  # step 0: the starting point was evaluated
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
    assert len(w.figure.data[GHOST].x) > 1  # full-rank reference, same task and steps
    again = Playground(scenario="low-rank teacher", method="lora", rank=4, steps=40, live=False)
    again.play()  # the reference is reused from disk
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
    assert w.session.step_count == stopped_at  # nothing trains after pause returns
    assert len(w.figure.data[TRAIN].x) == stopped_at  # the last state is drawn
    w.step()
    assert w.session.step_count == stopped_at + 1


def test_reset_and_structural_changes_join_the_thread_and_rebuild():
    w = Playground(scenario="digits", method="lora", steps=100_000, live=True, ghost=False)
    w.play()
    assert wait_until(lambda: w.session.step_count >= 5)
    w.controls["method"].value = "full"  # structural: rebuilds
    assert not training_threads()
    assert w.session.method == "full" and w.session.step_count == 0
    assert w.controls["rank"].layout.display == "none"  # full has no rank
    assert list(w.figure.data[TRAIN].x) == []
    w.controls["method"].value = "ffa_lora"
    assert w.controls["rank"].layout.display is None
    w.controls["rank"].value = 2
    assert w.session.options == {"rank": 2, "init": "default", "alpha": None, "rslora": False, "dropout": 0.0}


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


@pytest.mark.parametrize(
    "method, count_periods",
    [
        ("sst", lambda layer: len(layer.history)),
        ("relora", None),
        ("galore", None),
    ],
)
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
    assert list(metric.x) == [0] and 0.0 <= metric.y[0] <= 1.0  # the starting point's metric
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
    ghost = np.asarray(w.figure.data[GHOST_METRIC].y)  # full-rank training's AUC, from the cached run
    assert len(ghost) == len(w.reference.evals) > 2 and np.all((ghost >= 0) & (ghost <= 1))
    assert list(w.figure.data[GHOST].y) == w.reference.eval_series("val_loss")[1]

    pinned = Playground.from_state(w.state, live=False, ghost=False)
    assert pinned.state == w.state and pinned.figure.data[METRIC].visible


def test_switching_to_and_from_the_hyperbolic_scenario_rebuilds_layers_and_metric():
    w = Playground(scenario="digits", live=False, ghost=False)
    w.controls["scenario"].value = HYPERBOLIC_LINKS  # other layer names than digits' fc1, fc2, fc3
    assert w.error is None, w.status.value
    assert w.controls["layer"].value == "encoder.layers.0.transform.linear"
    assert w.figure.data[METRIC].visible and list(w.figure.data[METRIC].x) == [0]
    w.controls["scenario"].value = "digits"
    assert w.error is None and w.controls["layer"].value == "fc1"
    assert not w.figure.data[METRIC].visible and len(w.figure.data[METRIC].x) == 0
    assert w.figure.layout.annotations[0].text == "loss"


# -- every declared option has a control ------------------------------------------------------------


@pytest.fixture
def zoo():
    """A method declaring one option of every kind, registered for one test (LoRA's layers; the extra
    options only reach the method's config, which is where the test reads them)."""
    before = dict(methods_base._REGISTRY)

    @sl.register("option_zoo")
    class OptionZoo(LoRA):
        options = {
            **LoRA.options,
            "bumps": Option(2, "an int in [0, 5]", kind="int", low=0, high=5),
            "temperature": Option(1.0, "a float above 0 (open bound)", kind="float", low=0, low_open=True),
            "flavour": Option("plain", "a choice", kind="choice", choices=("plain", "spicy", "sour")),
            "flip": Option(False, "a bool", kind="bool"),
            "seed": Option(
                None,
                "a seed (named like the Playground's own keyword)",
                kind="seed",
                none="drawn from torch's generator",
            ),
            "clip": Option(None, "a None-able float in [0, 1]", kind="float", low=0, high=1, none="no clipping"),
            "every": Option(10, "the period", kind="int", low=1),
            "calm": Option(1, "a warm-up shorter than the period", kind="int", low=0),
        }

        @classmethod
        def period_options(cls, period):
            return {"every": period, "calm": max(0, period // 10)}

    @sl.register("auto_rank")
    class AutoRank(LoRA):
        """A shared knob that may be None: rank None means "2"."""

        options = {"rank": Option(None, "r, or None", kind="int", low=1, high="min(out, in)", none="r = 2")}

        def needs_weight_values(self):
            return None

        def check(self, layer_name, linear):
            pass

        def adapt(self, layer_name, linear):
            rank = 2 if self.config["rank"] is None else self.config["rank"]
            return self.layer_class(linear, rank, float(rank), False, "default", 0.0)

    yield "option_zoo"
    methods_base._REGISTRY.clear()
    methods_base._REGISTRY.update(before)


def applied_config(w: Playground) -> dict:
    """The options the session's layers were built with (every layer of one apply shares its Method)."""
    specs = {id(layer.spec): layer.spec for layer in sl.adapted_layers(w.session.model).values()}
    assert len(specs) == 1
    return next(iter(specs.values())).config


@pytest.mark.parametrize("method", ["lora", "option_zoo"])
def test_every_declared_option_has_a_visible_control(method, zoo):
    w = Playground(scenario="digits", method=method, rank=2, live=False, ghost=False)
    cls = sl.method_class(method)
    primary, companions = period_driven(cls)
    for name, option in cls.options.items():
        if name in primary:  # set by the period knob
            assert w.controls["period"].layout.display is None and name in w.controls["period"].tooltip
            continue
        key = option_key(name)
        assert key in w.controls and w.controls[key].layout.display is None, name
        assert option.help in w.controls[key].tooltip
        assert (key in w.auto and w.auto[key].layout.display != "none") == (option.none is not None), name
        if name not in SHARED_OPTIONS:  # (the shared knobs start at the Playground's own defaults: rank 4)
            expected = cls.period_options(w.state["period"])[name] if name in companions else option.default
            assert w.state[key] == expected, name
    assert set(applied_config(w)) == set(cls.options)
    if method == "option_zoo":
        c = w.controls
        assert "seed" not in c and isinstance(c["method_seed"], W.IntText)  # not the Playground's own seed
        assert isinstance(c["flip"], W.Checkbox) and isinstance(c["flavour"], W.Dropdown)
        assert list(c["flavour"].options) == ["plain", "spicy", "sour"]
        assert isinstance(c["bumps"], W.BoundedIntText) and (c["bumps"].min, c["bumps"].max) == (0, 5)
        assert isinstance(c["temperature"], W.BoundedFloatText) and c["temperature"].min == 0
        assert "every" not in c and "auto: no clipping" == w.auto["clip"].description
        panel = w.control_panel()  # the option row sits in the live layout
        assert c["flip"] in panel.children[1].children and w.auto["clip"] in panel.children[1].children


def test_bool_choice_float_and_int_controls_reach_the_applied_layers(zoo):
    w = Playground(scenario="digits", method="lora", rank=4, live=False, ghost=False)
    w.controls["rslora"].value = True
    w.controls["dropout"].value = 0.25
    w.controls["init"].value = "gaussian"
    layer = next(iter(sl.adapted_layers(w.session.model).values()))
    assert w.error is None and layer.rslora and layer.scale == pytest.approx(4 / math.sqrt(4))
    assert layer.dropout.p == 0.25 and layer.init == "gaussian"
    assert {k: applied_config(w)[k] for k in ("rslora", "dropout", "init")} == {
        "rslora": True,
        "dropout": 0.25,
        "init": "gaussian",
    }

    w.controls["method"].value = "option_zoo"
    for key, value in (("flip", True), ("flavour", "sour"), ("temperature", 0.5), ("bumps", 4)):
        w.controls[key].value = value
    assert w.error is None
    assert {k: applied_config(w)[k] for k in ("flip", "flavour", "temperature", "bumps", "rslora")} == {
        "flip": True,
        "flavour": "sour",
        "temperature": 0.5,
        "bumps": 4,
        "rslora": True,
    }  # rslora kept from lora


def test_a_value_the_declaration_refuses_is_shown_not_applied():
    w = Playground(scenario="digits", method="lora", live=False, ghost=False)
    w.controls["dropout"].value = 1.0  # the box allows its bound; the declaration says [0, 1)
    assert isinstance(w.error, ValueError) and w.session is None  # nothing half-built is kept
    assert "layers 'fc1', 'fc2', 'fc3': dropout=1.0 is outside the allowed range [0, 1)" in w.status.value
    w.controls["dropout"].value = 0.5
    assert w.error is None and applied_config(w)["dropout"] == 0.5


def test_none_able_options_can_be_set_to_none_and_back(zoo):
    w = Playground(scenario="digits", method="lora", rank=2, live=False, ghost=False)
    assert w.state["alpha"] is None and w.auto["alpha"].value and w.controls["alpha"].disabled
    w.auto["alpha"].value = False
    w.controls["alpha"].value = 8.0
    layer = next(iter(sl.adapted_layers(w.session.model).values()))
    assert w.state["alpha"] == 8.0 and layer.alpha == 8.0 and layer.scale == pytest.approx(4.0)
    w.auto["alpha"].value = True
    layer = next(iter(sl.adapted_layers(w.session.model).values()))
    assert w.state["alpha"] is None and applied_config(w)["alpha"] is None and layer.alpha == 2  # α = r

    w = Playground(scenario="digits", method="option_zoo", method_seed=3, clip=None, live=False, ghost=False)
    assert applied_config(w)["seed"] == 3 and not w.auto["method_seed"].value
    w.auto["method_seed"].value = True
    w.auto["clip"].value = False
    w.controls["clip"].value = 0.5
    assert applied_config(w)["seed"] is None and applied_config(w)["clip"] == 0.5
    assert Playground.from_state(w.state, live=False, ghost=False).state == w.state


def test_from_state_round_trips_every_key_and_hides_option_controls(zoo):
    w = Playground(
        scenario="low-rank teacher",
        method="option_zoo",
        rank=3,
        period=40,
        alpha=6.0,
        rslora=True,
        dropout=0.1,
        init="gaussian",
        bumps=5,
        temperature=0.25,
        flavour="spicy",
        flip=True,
        method_seed=7,
        clip=0.75,
        calm=3,
        lr=0.005,
        log_y=False,
        live=False,
        ghost=False,
    )
    state = w.state
    defaults = Playground(scenario="digits", method="option_zoo", live=False, ghost=False).state
    changed = {k for k in state if state[k] != defaults[k]}
    # every option of the method is set away from its default (the round trip is not of defaults)
    assert set(state) == set(defaults) and set(state) - changed == {"method", "sparsity", "steps", "layer"}
    pinned = Playground.from_state(state, hide=["alpha", "flip"], live=False, ghost=False)
    assert pinned.state == state and pinned.session.options == w.session.options
    assert applied_config(pinned) == applied_config(w)
    assert applied_config(w)["calm"] == 3 and applied_config(w)["every"] == 40
    for name in ("alpha", "flip"):
        assert pinned.controls[name].layout.display == "none"
    assert pinned.auto["alpha"].layout.display == "none"
    pinned.controls["method"].value = "full"  # the hidden options go with their method ...
    assert "alpha" not in pinned.controls and pinned.error is None
    pinned.controls["method"].value = "option_zoo"  # ... and come back hidden, with their values
    assert pinned.controls["alpha"].layout.display == "none" and pinned.state == state


def test_switching_method_rebuilds_the_option_row_and_period_companions_follow(zoo):
    w = Playground(scenario="digits", method="lora", live=False, ghost=False)
    alpha = w.controls["alpha"]
    for _ in range(3):
        w.step()
    w.controls["scenario"].value = "low-rank teacher"
    assert w.controls["alpha"] is alpha  # neither training nor a new task rebuilds the controls
    w.controls["method"].value = "option_zoo"
    assert "flip" in w.controls and w.controls["alpha"] is not alpha
    assert w.state["calm"] == w.state["period"] // 10
    w.controls["period"].value = 60
    assert w.state["calm"] == 6 and applied_config(w)["every"] == 60 and applied_config(w)["calm"] == 6
    w.controls["calm"].value = 3  # the companion can be changed after the period set it
    w.controls["scenario"].value = "digits"
    assert applied_config(w)["calm"] == 3
    w.controls["method"].value = "full"
    assert not ({"alpha", "flip", "calm"} & set(w.controls)) and w.session.options == {}
    assert list(w.control_panel().children[1].children) == []


def test_unknown_or_refused_option_keywords_fail_at_construction(zoo):
    with pytest.raises(TypeError, match=r"unknown keyword\(s\) bumps.*alpha, rslora, dropout"):
        Playground(method="lora", bumps=3, live=False)
    with pytest.raises(TypeError, match="the period knob sets every"):
        Playground(method="option_zoo", every=3, live=False)
    with pytest.raises(ValueError, match=r"option_zoo'\): bumps=9 is outside the allowed range \[0, 5\]"):
        Playground(method="option_zoo", bumps=9, live=False)


def test_a_shared_knob_that_may_be_none_gets_its_auto_box(zoo):
    w = Playground(scenario="digits", method="lora", rank=3, live=False, ghost=False)
    assert w.auto["rank"].layout.display == "none"  # LoRA's rank is never None
    w.controls["method"].value = "auto_rank"
    assert w.auto["rank"].layout.display is None and w.auto["rank"].description == "auto: r = 2"
    layer = next(iter(sl.adapted_layers(w.session.model).values()))
    assert w.state["rank"] == 3 and layer.rank == 3
    w.auto["rank"].value = True
    layer = next(iter(sl.adapted_layers(w.session.model).values()))
    assert w.state["rank"] is None and w.session.options == {"rank": None} and layer.rank == 2
    assert w.controls["rank"].disabled
    pinned = Playground.from_state(w.state, live=False, ghost=False)
    assert pinned.state == w.state and pinned.auto["rank"].value
    w.auto["rank"].value = False
    assert w.state["rank"] == 3 and not w.controls["rank"].disabled
    w.auto["rank"].value = True
    w.controls["method"].value = "lora"  # None is not LoRA's: the box is cleared
    assert w.state["rank"] == 3 and not w.auto["rank"].value and w.error is None


def test_static_note_shows_the_still_of_the_live_widget_and_how_to_get_it():
    from spectrallab.widgets.playground import STILL

    w = Playground(scenario="low-rank teacher", method="lora", rank=2, steps=2, ghost=False, live=False)
    note = w.static_note()
    assert "make lab" in note and "git clone" in note and "minute" in note
    assert STILL.is_file() and STILL.stat().st_size < 200_000  # made by tests/test_widgets_browser.py
    assert "data:image/png;base64," in note and "<figure" in note
