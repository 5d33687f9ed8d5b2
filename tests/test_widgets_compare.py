"""Compare: reads run records from disk, overlays the selected runs' metric curves and final spectra,
lines runs up by trainable parameters or rank, filters by rank, reloads, keeps state, hides controls,
works live and static, and shows an empty directory or a failing handler in the widget."""

from __future__ import annotations

import itertools
import math

import plotly.graph_objects as go
import pytest

import spectrallab as sl
from spectrallab.runs import Run, runs_dir
from spectrallab.widgets import Compare


@pytest.fixture(autouse=True)
def private_home(home):
    """Every test reads (and writes) runs in its own empty SPECTRALLAB_HOME."""
    return home


_ORDER = itertools.count()


def recorded(
    name: str,
    method: str,
    rank: int | None,
    params: int,
    val_loss: list[float],
    accuracy: list[float] | None = None,
    spectrum: list[float] | None = None,
) -> Run:
    """A saved run record with evaluations at steps 0, 10, 20, ... and a final spectrum of ``fc1``.

    Its id orders it after every run recorded before it (``load_runs`` lists runs by id, and real
    ids made within one second do not keep their order)."""
    config = {"method": method, "trainable_parameters": params, "methods": [method]}
    if rank is not None:
        config["rank"] = rank
    evals = [
        {"step": 10 * i, "val_loss": v, **({"accuracy": accuracy[i]} if accuracy else {})}
        for i, v in enumerate(val_loss)
    ]
    steps = list(range(1, 10 * (len(val_loss) - 1) + 1))
    run = Run(
        name,
        id=f"20260101-{next(_ORDER):06d}-test00",
        config=config,
        steps=steps,
        loss=[val_loss[0] - 0.01 * s for s in steps],
        evals=evals,
        spectra={"fc1": [[0, [1.0, 0.5, 0.25]], [steps[-1], spectrum or [2.0, 1.0, 0.5]]]},
    )
    run.save()
    return run


@pytest.fixture
def runs() -> dict[str, Run]:
    """Four runs: LoRA at ranks 2, 4 and 8, and full fine-tuning (no rank)."""
    return {
        "lora2": recorded("a", "lora", 2, 200, [2.0, 1.5, 1.2], [0.1, 0.5, 0.7], [3.0, 1.0, 0.1]),
        "lora8": recorded("b", "lora", 8, 800, [2.0, 1.2, 0.9], [0.1, 0.6, 0.8], [3.0, 2.0, 1.0]),
        "lora4": recorded("c", "lora", 4, 400, [2.0, 1.3, 1.0], [0.1, 0.55, 0.75]),
        "full": recorded("d", "full", None, 5000, [2.0, 1.0, 0.6], [0.1, 0.7, 0.9]),
    }


def visible(traces) -> list:
    return [t for t in traces if t.visible]


def left(w: Compare) -> list:
    return visible(w.figure.data[i] for i in w._left)


def right(w: Compare) -> list:
    return visible(w.figure.data[i] for i in w._right)


def test_empty_runs_directory_shows_a_friendly_message():
    w = Compare(live=False)
    assert isinstance(w.figure, go.Figure) and not isinstance(w.figure, go.FigureWidget)
    assert left(w) == [] and right(w) == []
    assert "No recorded runs" in w.message
    assert "No recorded runs" in w.status.value and str(runs_dir()) in w.status.value
    assert w.state["selected"] == () and w.error is None


def test_overlays_runs_recorded_by_fit():
    task = sl.task("teacher", n_in=16, n_out=16, width=16, rank=4, n_val=256)
    for method, rank in [("lora", 2), ("full", None)]:
        model = task.make_model(seed=0)
        if method == "lora":
            sl.apply(model, "lora", rank=rank)
        sl.fit(
            model,
            task,
            6,
            eval_every=3,
            spectra_of=["fc1"],
            spectra_every=3,
            name=f"teacher-{method}",
            config={"method": method, "rank": rank} if rank else {"method": method},
        )
    w = Compare(live=False)
    records = sl.load_runs()
    assert len(records) == 2 and w.controls["selected"].value == tuple(r.id for r in records)
    curves = left(w)
    expected = {"teacher-lora": "teacher-lora · lora r=2", "teacher-full": "teacher-full · full"}
    assert [t.name for t in curves] == [expected[r.name] for r in records]
    for trace, run in zip(curves, records):
        assert list(trace.x) == [0, 3, 6] and list(trace.y) == run.eval_series("val_loss")[1]
    spectra = right(w)
    assert [list(t.y) for t in spectra] == [r.spectra["fc1"][-1][1] for r in records]
    assert w.controls["layer"].value == "fc1" and "fc1" in w.figure.layout.annotations[1].text


def test_metric_switch_and_training_loss(runs):
    w = Compare(live=False)
    assert [list(t.y) for t in left(w)] == [[2.0, 1.5, 1.2], [2.0, 1.2, 0.9], [2.0, 1.3, 1.0], [2.0, 1.0, 0.6]]
    w.controls["metric"].value = "accuracy"
    assert [list(t.y) for t in left(w)][0] == [0.1, 0.5, 0.7]
    assert w.figure.layout.yaxis.title.text == "accuracy"
    w.controls["metric"].value = "train_loss"
    first = left(w)[0]
    assert list(first.x) == runs["lora2"].steps and list(first.y) == runs["lora2"].loss
    assert [label for label, _ in w.controls["metric"].options] == ["val loss", "accuracy", "train loss (per step)"]


def test_x_axis_trainable_parameters_lines_up_final_values_per_method(runs):
    w = Compare(live=False)
    w.controls["x_axis"].value = "trainable_parameters"
    lines = {t.name: t for t in left(w)}
    assert set(lines) == {"lora", "full"}
    assert list(lines["lora"].x) == [200, 400, 800]  # sorted by parameter count
    assert list(lines["lora"].y) == [1.2, 1.0, 0.9]  # each run's final val loss
    assert list(lines["lora"].text) == ["r=2", "r=4", "r=8"]
    assert list(lines["full"].x) == [5000] and list(lines["full"].y) == [0.6]
    assert w.figure.layout.xaxis.type == "log" and w.figure.layout.xaxis.title.text == "trainable parameters"
    assert w.figure.layout.yaxis.title.text == "final val loss"
    w.controls["metric"].value = "train_loss"  # final training loss: mean of the last 10 steps
    lora2 = runs["lora2"]
    assert left(w)[0].y[0] == pytest.approx(sum(lora2.loss[-10:]) / 10)


def test_x_axis_rank_and_grouping_by_rank(runs):
    w = Compare(live=False)
    w.controls["x_axis"].value = "rank"
    lines = {t.name: t for t in left(w)}
    assert list(lines) == ["lora"] and list(lines["lora"].x) == [2, 4, 8]
    assert "d · full: no rank recorded" in w.status.value  # full fine-tuning has no rank: said, not hidden
    assert w.figure.layout.xaxis.type == "linear"
    w.controls["group_by"].value = "rank"
    names = [t.name for t in left(w)]
    assert names == ["r = 2", "r = 4", "r = 8"]  # in rank order
    assert len({t.line.color for t in left(w)}) == 3
    assert [t.text for t in left(w)] == [("lora",), ("lora",), ("lora",)]


def test_rank_filter_and_selection(runs):
    w = Compare(live=False)
    assert [label for label, _ in w.controls["rank"].options] == ["all ranks", "r = 2", "r = 4", "r = 8"]
    w.controls["rank"].value = 8
    assert [t.name for t in left(w)] == ["b · lora r=8"]
    assert [list(t.y) for t in right(w)] == [[3.0, 2.0, 1.0]]
    assert "1 of 4 runs shown" in w.status.value

    w.controls["rank"].value = "all"
    w.controls["selected"].value = (runs["lora2"].id, runs["full"].id)
    assert [t.name for t in left(w)] == ["a · lora r=2", "d · full"]
    assert len(right(w)) == 2
    w.controls["rank"].value = 4
    assert left(w) == [] and "No selected run has rank 4" in w.message
    w.controls["selected"].value = ()
    assert "No run selected" in w.message


def test_from_state_round_trip_and_hide(runs):
    w = Compare(live=False)
    w.controls["selected"].value = (runs["lora8"].id, runs["lora4"].id)
    w.controls["metric"].value = "accuracy"
    w.controls["x_axis"].value = "trainable_parameters"
    w.controls["log_y"].value = True
    state = w.state
    assert set(state) == {"selected", "metric", "x_axis", "rank", "group_by", "layer", "log_y"}
    pinned = Compare.from_state(state, hide=["selected", "reload"], live=False)
    assert pinned.state == state
    assert pinned.controls["selected"].layout.display == "none" and pinned.controls["reload"].layout.display == "none"
    assert [(list(t.x), list(t.y)) for t in left(pinned)] == [([400, 800], [0.75, 0.8])]
    assert pinned.figure.layout.yaxis.type == "log"


def test_pinned_runs_that_are_gone_are_reported_not_fatal(runs):
    w = Compare(selected=[runs["lora2"].id, "19990101-000000-gone00"], live=False)
    assert w.controls["selected"].value == (runs["lora2"].id,)
    assert "1 pinned run(s) not found: 19990101-000000-gone00" in w.status.value


def test_live_mode_updates_the_same_figure_widget_in_place(runs):
    w = Compare(live=True)
    assert isinstance(w.figure, go.FigureWidget)
    figure, first = w.figure, w.figure.data[w._left[0]]
    w.controls["x_axis"].value = "trainable_parameters"
    assert w.figure is figure and w.figure.data[w._left[0]] is first  # updated, not rebuilt
    assert first.name == "lora" and list(first.x) == [200, 400, 800]
    assert len(left(w)) == 2 and len(w.figure.data) == 2 * len(runs)


def test_reload_adds_and_selects_new_runs(runs):
    w = Compare(live=False)
    late = recorded("e", "lora", 16, 1600, [2.0, 0.8, 0.5])
    assert len(left(w)) == 4
    w.controls["reload"].click()
    assert late.id in w.controls["selected"].value and len(left(w)) == 5
    assert "r = 16" in [label for label, _ in w.controls["rank"].options]

    given = Compare([runs["lora2"]], live=False)  # runs passed in: nothing to reload
    assert given.controls["reload"].disabled and given.directory is None
    assert [t.name for t in left(given)] == ["a · lora r=2"]


def test_an_exception_in_a_handler_is_shown_in_the_widget(runs, monkeypatch):
    w = Compare(live=False)
    monkeypatch.setattr(Run, "final", lambda self, metric="val_loss": math.nan + 1 / 0)
    w.controls["x_axis"].value = "trainable_parameters"
    assert isinstance(w.error, ZeroDivisionError)
    assert "changing x_axis to 'trainable_parameters'" in w.status.value and "ZeroDivisionError" in w.status.value


def test_bad_arguments_name_the_allowed_values():
    with pytest.raises(ValueError, match="x_axis='params' is not one of 'step', 'trainable_parameters', 'rank'"):
        Compare(x_axis="params", live=False)
    with pytest.raises(ValueError, match="group_by='colour' is not one of"):
        Compare(group_by="colour", live=False)


def test_runs_on_the_hyperbolic_scenario_compare_by_roc_auc():
    """Methods trained on HyboNet link prediction line up by their validation ROC AUC and spectra."""
    from spectrallab.widgets import SCENARIOS

    scenario = SCENARIOS["hyperbolic links (Disease, HyboNet)"]
    task, layer = scenario.make_task(), scenario.layers[0]
    for method, rank in [("full", None), ("sst", 2), ("lora", 2)]:
        model = task.make_model(seed=0)
        options = {"rank": rank} if rank else {}
        sl.apply(model, method, targets=list(scenario.targets), **options)
        sl.fit(
            model,
            task,
            6,
            lr=scenario.suggested_lr(method),
            eval_every=3,
            spectra_of=[layer],
            spectra_every=3,
            name=f"disease-{method}",
            progress="off",
            config={"method": method, **options},
        )
    w = Compare(live=False, metric="val_roc_auc", layer=layer)
    assert "val_roc_auc" in [value for _, value in w.controls["metric"].options]
    curves = left(w)
    assert len(curves) == 3 and all(list(t.x) == [0, 3, 6] for t in curves)
    assert all(0.0 <= y <= 1.0 for t in curves for y in t.y)
    assert len(right(w)) == 3 and w.error is None
    w.controls["x_axis"].value = "trainable_parameters"  # full, sst and lora: one point each, by parameters
    finals = left(w)
    assert sorted(t.name for t in finals) == ["full", "lora", "sst"] and w.error is None
    assert all(0.0 <= t.y[0] <= 1.0 for t in finals)


def test_colliding_labels_name_the_setting_that_differs_not_the_run_id():
    from spectrallab.widgets.compare import run_labels

    def run(lr, steps, seed=0, name="run"):
        return Run(name, config={"method": "lora", "rank": 4, "lr": lr, "steps": steps, "seed": seed})

    a, b, c = run(0.01, 100), run(0.003, 100), run(0.01, 400)
    same = [run(0.01, 100, seed=1, name="full"), run(0.01, 100, seed=1, name="full")]
    labels = run_labels([a, b, c, *same])
    assert labels[a.id] == "lora r=4 · lr 0.01, 100 steps"  # sl.fit's default name "run" is dropped
    assert labels[b.id] == "lora r=4 · lr 0.003, 100 steps"
    assert labels[c.id] == "lora r=4 · lr 0.01, 400 steps"
    assert labels[same[0].id].startswith("full · lora r=4 #") and labels[same[0].id] != labels[same[1].id]
    assert len(set(labels.values())) == 5


def test_static_figure_drops_empty_slots_and_its_buttons_show_one_method(runs):
    w = Compare(live=False)
    fig = w.static_figure()
    assert len(w.figure.data) == 8 and len(fig.data) == 8  # four runs: a curve and a spectrum each
    w_many = Compare(selected=[runs["lora2"].id, runs["full"].id], live=False)
    static = w_many.static_figure()
    assert len(static.data) == 4 and all(t.visible is not False for t in static.data)  # no hidden slots
    buttons = fig.layout.updatemenus[0].buttons
    assert [b.label for b in buttons] == ["all runs", "only lora", "only full"]
    only_lora = buttons[1].args[0]["visible"]
    shown = [(t.name, list(t.x), list(t.y)) for t, v in zip(fig.data, only_lora) if v]
    live = Compare(selected=[r.id for k, r in runs.items() if k != "full"], live=False)  # the live widget, lora only
    expected = [(t.name, list(t.x), list(t.y)) for t in live.figure.data if t.visible is not False]
    assert shown == expected
    assert "legend" in w.static_note() and "make lab" in w.static_note()


def _slots_after(button) -> list[tuple]:
    """The traces a static x-axis entry draws: (name, panel, x, y) of each slot it makes visible."""
    from spectrallab.widgets.static import decode

    data = button.args[0]
    shown = []
    for i, visible in enumerate(data["visible"]):
        if visible is False:
            continue
        values = [list(decode(data[key][i])) for key in ("x", "y")]
        shown.append((data["name"][i], data["xaxis"][i] or "x", *values))
    return shown


def test_static_x_axis_menu_entry_k_is_the_live_widget_with_that_x_axis(runs):
    from spectrallab.widgets.compare import X_AXES

    static = Compare(live=False).static_figure()
    menus = {menu.name: menu for menu in static.layout.updatemenus}
    entries = menus["x-axis"].buttons
    assert [b.label for b in entries] == [X_AXES[k].split(" (")[0] for k in X_AXES]
    assert menus["x-axis"].active == 0  # the widget's own x-axis, step
    for key, entry in zip(X_AXES, entries):
        live = Compare(x_axis=key, live=False)
        expected = [
            (t.name, t.xaxis or "x", [float(v) for v in t.x], [float(v) for v in t.y])
            for t in live.figure.data
            if t.visible is not False
        ]
        assert _slots_after(entry) == expected, key
        layout = entry.args[1]
        assert layout["xaxis.title.text"] == live.figure.layout.xaxis.title.text
        assert layout["xaxis.type"] == live.figure.layout.xaxis.type
        assert layout["annotations[0].text"] == live.figure.layout.annotations[0].text
        # the run buttons that come with the entry show exactly the live widget's runs of a group
        only_lora = layout["updatemenus[0].buttons"][1]
        assert only_lora["label"] == "only lora"
        visible = only_lora["args"][0]["visible"]
        lora_live = Compare(selected=[r.id for k, r in runs.items() if k != "full"], x_axis=key, live=False)
        shown = [s for s, v in zip(_slots_after(entry), visible) if v]
        assert shown == [
            (t.name, t.xaxis or "x", [float(v) for v in t.x], [float(v) for v in t.y])
            for t in lora_live.figure.data
            if t.visible is not False
        ], key
    # a differing state really differs (the menu is not three copies of one figure)
    assert _slots_after(entries[0]) != _slots_after(entries[1])
    assert "x-axis" in Compare(live=False).static_note()


def test_static_x_axis_menu_is_not_offered_when_the_control_is_hidden(runs):
    static = Compare(live=False, hide=["x_axis"]).static_figure()
    assert "x-axis" not in {menu.name for menu in static.layout.updatemenus}
