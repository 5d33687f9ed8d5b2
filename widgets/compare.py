"""Compare: overlay recorded runs — metric curves and final spectra — to line methods up fairly.

Every training run that :func:`spectrallab.fit` records lands as a JSON :class:`~spectrallab.Run` in
``$SPECTRALLAB_HOME/runs``. This widget reads them back and overlays the chosen ones:

* **left**, a metric (validation loss, accuracy, perplexity, … whatever the runs evaluated, or the
  per-step training loss) against the **step** — or each run's *final* value against its
  **trainable parameters** or its **rank**, one line per method, so methods can be compared at
  equal rank or at equal parameter budget (the comparison the LoRA literature argues about);
* **right**, the last recorded singular spectrum of one layer for each run.

Filter by rank, colour by method, rank or run; the figure keeps its traces and only their data
change (``fig.batch_update()``), so it updates in place in a notebook. New runs appear with
**reload** (or :meth:`Compare.reload`), selected automatically.

A run's *method* is its config's ``method`` (what ``fit(..., config={"method": ...})`` records),
else the adapted layers' methods; its *rank* is the config's ``rank`` — record it with
``config={"method": "lora", "rank": 8}`` so runs line up by rank (full-rank runs have none).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import ipywidgets as W
import numpy as np
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from spectrallab.runs import Run, load_runs, runs_dir

from . import static
from .base import Widget, _escape
from .plots import palette, readable_log_axis, style

TRAIN_LOSS = "train_loss"  # the metric key for the per-step training loss (Run.loss), not an eval metric
FINAL_TRAIN_LOSS_STEPS = 10  # a run's "final" training loss: the mean of its last this-many steps
DEFAULT_SELECTED = 12  # with no selection given, the most recent this-many runs are shown
X_AXES = {
    "step": "step",
    "trainable_parameters": "trainable parameters (final value per run)",
    "rank": "rank (final value per run)",
}
GROUPINGS = {"method": "colour by method", "rank": "colour by rank", "run": "colour by run"}
FULL_RANK_METHODS = {"full", "none"}  # methods that have no rank (every weight trains, or nothing is adapted)
LOG_TICK_KEYS = ("tickmode", "tick0", "dtick", "tickvals", "ticktext")  # what readable_log_axis sets on the x axis
# Static page: a band above the panels for the x-axis menu and the run buttons, below the title.
MENU_BAND = 32
MENU_Y = 1.11  # paper units: ~30 px above a ~280 px tall plot area
DASHES = ("solid", "dash", "dot", "dashdot", "longdash", "longdashdot")


def run_method(run: Run) -> str:
    """The method a run trained with: ``config["method"]``, else its adapted layers' methods."""
    method = run.config.get("method")
    if method:
        return str(method)
    methods = [m for m in run.config.get("methods", []) if m != "none"]
    return "+".join(methods) if methods else "none"


def run_rank(run: Run) -> int | None:
    """The method's rank recorded in a run's config; None when it has none (and for "full"/"none")."""
    if run_method(run) in FULL_RANK_METHODS:
        return None
    rank = run.config.get("rank")
    return int(rank) if isinstance(rank, (int, float)) and not isinstance(rank, bool) else None


# Config keys that tell apart runs of one name, method and rank, in the order a reader cares about,
# with how each is written in a label.
DISTINGUISHING = (
    ("task", "{}"),
    ("scenario", "{}"),
    ("init", "init {}"),
    ("sparsity", "sparsity {:g}"),
    ("alpha", "α {:g}"),
    ("lr", "lr {:g}"),
    ("steps", "{} steps"),
    ("batch_size", "batch {}"),
    ("seed", "seed {}"),
    ("profile", "profile {}"),
)
UNNAMED = {"", "run"}  # sl.fit's default name says nothing a label needs


def run_labels(runs: Sequence[Run]) -> dict[str, str]:
    """A readable, unique label per run id: ``"name · method r=8"`` (without the name when it is
    sl.fit's default or repeats the method). Runs whose labels collide get the settings that tell
    them apart (``lr 0.01``, ``600 steps``, ``seed 1`` …); only runs identical in all of those get
    their id's tail."""
    base = {}
    for run in runs:
        rank = run_rank(run)
        head = run_method(run) + (f" r={rank}" if rank is not None else "")
        name = str(run.name or "")
        if name in UNNAMED or name in (head, run_method(run)):
            base[run.id] = head
        elif run_method(run) in name.split():  # "playground digits lora": add the rank, not the method again
            base[run.id] = name + (f" r={rank}" if rank is not None and f"r={rank}" not in name else "")
        else:
            base[run.id] = f"{name} · {head}"
    by_label: dict[str, list[Run]] = {}
    for run in runs:
        by_label.setdefault(base[run.id], []).append(run)
    labels = dict(base)
    for label, group in by_label.items():
        if len(group) == 1:
            continue
        parts: dict[str, list[str]] = {run.id: [] for run in group}
        for key, form in DISTINGUISHING:
            written = {run.id: _written(run.config.get(key), form) for run in group}
            if len(set(written.values())) > 1:
                for run in group:
                    parts[run.id].append(written[run.id] or f"no {key}")
        for run in group:
            labels[run.id] = f"{label} · {', '.join(parts[run.id])}" if parts[run.id] else label
    counts: dict[str, int] = {}
    for label in labels.values():
        counts[label] = counts.get(label, 0) + 1
    return {rid: label if counts[label] == 1 else f"{label} #{rid[-6:]}" for rid, label in labels.items()}


def _written(value: Any, form: str) -> str:
    if value is None:
        return ""
    try:
        return form.format(value)
    except (TypeError, ValueError):
        return f"{form.split('{')[0]}{value}"


def metric_series(run: Run, metric: str) -> tuple[list[int], list[float]]:
    """Steps and values of an eval metric, or of the per-step training loss for ``TRAIN_LOSS``."""
    if metric == TRAIN_LOSS:
        return list(run.steps), list(run.loss)
    return run.eval_series(metric)


def final_value(run: Run, metric: str) -> float:
    """The run's last evaluated value (for the training loss: the mean of its last few steps); NaN if none."""
    if metric == TRAIN_LOSS:
        tail = run.loss[-FINAL_TRAIN_LOSS_STEPS:]
        return float(np.mean(tail)) if tail else math.nan
    return float(run.final(metric))


def _arrays(trace: dict) -> dict:
    """A trace dict with its numeric x/y as numpy arrays, so :func:`static.encode` sends them compactly."""
    out = dict(trace)
    for key in ("x", "y"):
        values = out.get(key)
        if values is not None and len(values) and all(isinstance(v, (int, float)) for v in values):
            out[key] = np.asarray(values, dtype=float)
    return out


def metric_label(metric: str) -> str:
    return "train loss (per step)" if metric == TRAIN_LOSS else metric.replace("_", " ")


class Compare(Widget):
    """Overlay recorded runs: a metric against step / trainable parameters / rank, and final spectra.

    ``Compare()`` reads every run under ``$SPECTRALLAB_HOME/runs`` (or ``directory``) and shows the
    most recent twelve; ``Compare(runs)`` shows given :class:`~spectrallab.Run` records.

    Controls: ``selected`` (run ids), ``metric``, ``x_axis`` ("step", "trainable_parameters",
    "rank"), ``rank`` (a rank filter, "all" for none), ``group_by`` ("method", "rank", "run": what
    shares a colour and, off the step axis, a line), ``layer`` (whose final spectrum is drawn),
    ``log_y``; and a **reload** button.
    """

    def __init__(
        self,
        records: Sequence[Run] | None = None,
        *,
        directory: str | Path | None = None,
        selected: Iterable[str] | None = None,
        metric: str = "val_loss",
        x_axis: str = "step",
        rank: int | str = "all",
        group_by: str = "method",
        layer: str | None = None,
        log_y: bool = False,
        live: bool | None = None,
        hide: Iterable[str] = (),
    ):
        super().__init__(live=live, hide=hide)
        if x_axis not in X_AXES:
            raise ValueError(f"x_axis={x_axis!r} is not one of {', '.join(map(repr, X_AXES))}")
        if group_by not in GROUPINGS:
            raise ValueError(f"group_by={group_by!r} is not one of {', '.join(map(repr, GROUPINGS))}")
        # Records passed in are fixed; otherwise the widget reads (and re-reads) a runs directory.
        self.directory = None if records is not None else Path(directory) if directory is not None else runs_dir()
        self.records: list[Run] = list(records) if records is not None else load_runs(self.directory)
        self._syncing = False
        self._left: list[int] = []  # indices into figure.data of the metric panel's traces
        self._right: list[int] = []  # ... and of the spectrum panel's traces

        ids = [run.id for run in self.records]
        if selected is None:
            selected = ids[-DEFAULT_SELECTED:]
        selected = list(selected)
        self._missing_pinned = [rid for rid in selected if rid not in ids]  # pinned in a state, not on disk
        self.controls = {
            "selected": W.SelectMultiple(description="runs", layout=W.Layout(width="460px")),
            "metric": W.Dropdown(description="metric", layout=W.Layout(width="260px")),
            "x_axis": W.Dropdown(
                options=[(label, key) for key, label in X_AXES.items()],
                value=x_axis,
                description="x-axis",
                layout=W.Layout(width="360px"),
            ),
            "rank": W.Dropdown(description="rank", layout=W.Layout(width="180px")),
            "group_by": W.Dropdown(
                options=[(label, key) for key, label in GROUPINGS.items()],
                value=group_by,
                description="group",
                layout=W.Layout(width="220px"),
            ),
            "layer": W.Dropdown(description="spectrum of", layout=W.Layout(width="260px")),
            "log_y": W.Checkbox(value=bool(log_y), description="log y", indent=False, layout=W.Layout(width="80px")),
            "reload": W.Button(
                description="reload runs",
                icon="refresh",
                disabled=self.directory is None,
                tooltip="read the runs directory again (new runs are selected)",
            ),
        }
        self._set_options(selected=[rid for rid in selected if rid in ids], metric=metric, rank=rank, layer=layer)
        self.figure = self.make_figure(self._empty_figure())
        self.redraw()
        for name in ("selected", "metric", "x_axis", "rank", "group_by", "layer", "log_y"):
            self._observe(name)
        self.controls["reload"].on_click(self._on_reload)
        self._finish_controls()

    # -- runs ------------------------------------------------------------------------------------
    @property
    def shown(self) -> list[Run]:
        """The selected runs that pass the rank filter, in record order (oldest first)."""
        chosen = set(self.controls["selected"].value)
        rank = self.controls["rank"].value
        return [run for run in self.records if run.id in chosen and (rank == "all" or run_rank(run) == rank)]

    def reload(self) -> None:
        """Read the runs directory again; runs that were not there before are added to the selection."""
        if self.directory is None:
            self.status.value = "These runs were passed in, not read from a directory: nothing to reload."
            return
        before = {run.id for run in self.records}
        self.records = load_runs(self.directory)
        ids = {run.id for run in self.records}
        kept = [rid for rid in self.controls["selected"].value if rid in ids]
        new = [run.id for run in self.records if run.id not in before]  # (pinned runs that arrived among them)
        self._missing_pinned = [rid for rid in self._missing_pinned if rid not in ids]
        c = self.controls
        self._set_options(selected=kept + new, metric=c["metric"].value, rank=c["rank"].value, layer=c["layer"].value)
        self.redraw()

    def _set_options(self, *, selected: list[str], metric: str, rank: Any, layer: str | None) -> None:
        """Fill the run-dependent dropdowns from the records, keeping the requested values (even one no
        run has yet, so a pinned configuration survives an empty runs directory)."""
        labels = run_labels(self.records)
        metrics = ["val_loss"]
        for run in self.records:
            for evaluation in run.evals:
                metrics += [key for key in evaluation if key != "step" and key not in metrics]
        metrics.append(TRAIN_LOSS)
        if metric not in metrics:
            metrics.append(metric)
        ranks = sorted({r for r in map(run_rank, self.records) if r is not None})
        if rank != "all" and rank not in ranks:
            ranks = sorted(ranks + [rank])
        layers = list(dict.fromkeys(name for run in self.records for name in run.spectra))
        if layer is None and layers:
            chosen = set(selected)
            layer = next((name for run in self.records if run.id in chosen for name in run.spectra), layers[0])
        if layer is not None and layer not in layers:
            layers.append(layer)
        c = self.controls
        self._syncing = True
        try:
            c["selected"].options = [(labels[run.id], run.id) for run in self.records]
            c["selected"].value = tuple(selected)
            c["selected"].rows = max(2, min(8, len(self.records)))
            c["metric"].options = [(metric_label(m), m) for m in metrics]
            c["metric"].value = metric
            c["rank"].options = [("all ranks", "all")] + [(f"r = {r}", r) for r in ranks]
            c["rank"].value = rank
            c["layer"].options = layers
            c["layer"].value = layer
        finally:
            self._syncing = False

    # -- figure ----------------------------------------------------------------------------------
    def _empty_figure(self) -> go.Figure:
        """The skeleton: two panels, one trace slot per run in each (more are added if runs arrive)."""
        fig = make_subplots(
            rows=1,
            cols=2,
            column_widths=[0.58, 0.42],
            horizontal_spacing=0.1,
            subplot_titles=["metric", "final spectrum"],
        )
        fig.add_annotation(
            text="",
            x=0.5,
            y=0.5,
            xref="paper",
            yref="paper",
            showarrow=False,
            font=dict(size=15, color="#555"),
            visible=False,
        )
        fig.update_xaxes(title_text="index i", row=1, col=2)
        fig.update_yaxes(title_text="singular value σ<sub>i</sub>", type="log", row=1, col=2)
        # The book's figure style: the legend sits below the panels, in a margin of its own that grows
        # with the number of runs instead of running into the titles.
        style(fig, height=480)
        self._add_slots(fig, len(self.records))
        return fig

    def _add_slots(self, fig: go.Figure, count: int) -> None:
        """Make sure each panel has at least ``count`` trace slots (added outside any batch update)."""
        while len(self._left) < count:
            self._left.append(len(fig.data))
            fig.add_trace(go.Scatter(x=[], y=[], visible=False), row=1, col=1)
            self._right.append(len(fig.data))
            fig.add_trace(go.Scatter(x=[], y=[], visible=False, showlegend=False), row=1, col=2)

    @property
    def message(self) -> str:
        """The note drawn across the figure when it has nothing to show ('' otherwise)."""
        return self.figure.layout.annotations[2].text if self.figure.layout.annotations[2].visible else ""

    def redraw(self) -> None:
        """Draw the current selection: build every trace's data, then write it into the slots in one batch."""
        c = self.controls
        metric, x_axis, group_by, layer = c["metric"].value, c["x_axis"].value, c["group_by"].value, c["layer"].value
        shown = self.shown
        labels = run_labels(self.records)
        group_of = {run.id: self._group(run, group_by, labels) for run in shown}
        groups = list(dict.fromkeys(group_of.values()))
        if group_by == "rank":  # ranks in numeric order, runs without one last
            rank_of = {self._group(run, group_by, labels): run_rank(run) for run in shown}
            groups.sort(key=lambda g: (rank_of[g] is None, rank_of[g] or 0))
        colors = dict(zip(groups, palette(len(groups))))
        notes: list[str] = []

        if x_axis == "step":
            left = self._curves(shown, metric, group_of, colors, labels, notes)
        else:
            left = self._finals(shown, metric, x_axis, group_by, group_of, groups, colors, labels, notes)
        right = self._spectra(shown, layer, x_axis, group_of, colors, labels, notes)
        self._add_slots(self.figure, max(len(left), len(right)))

        x_title = "step" if x_axis == "step" else X_AXES[x_axis].split(" (")[0]
        y_title = metric_label(metric) if x_axis == "step" else f"final {metric_label(metric).split(' (')[0]}"
        fig = self.figure
        with fig.batch_update():  # (reads inside a batch see the old values: everything is computed before it)
            for slots, traces in ((self._left, left), (self._right, right)):
                for position, index in enumerate(slots):
                    trace = fig.data[index]
                    if position < len(traces):
                        trace.update(visible=True, **traces[position])
                    else:
                        trace.update(visible=False, x=[], y=[], name=None, text=None, hovertext=None)
            fig.layout.xaxis.title.text = x_title
            fig.layout.xaxis.type = "log" if x_axis == "trainable_parameters" else "linear"
            if x_axis == "trainable_parameters":  # decades as powers of ten, no mantissas (the book's style)
                readable_log_axis(fig.layout.xaxis, np.array([x for t in left for x in t["x"]], dtype=float))
            else:
                fig.layout.xaxis.update(tickmode=None, tick0=None, dtick=None, tickvals=None, ticktext=None)
                fig.layout.xaxis.minor = None
            fig.layout.yaxis.title.text = y_title
            fig.layout.yaxis.type = "log" if c["log_y"].value else "linear"
            fig.layout.annotations[0].text = f"{y_title} against {x_title}"
            fig.layout.annotations[1].text = f"final spectrum of {layer}" if layer else "final spectrum (none recorded)"
            note = self._empty_message(shown)
            fig.layout.annotations[2].update(text=note, visible=bool(note))
            fig.layout.title.text = f"{len(shown)} of {len(self.records)} recorded runs" + (
                f" · r = {c['rank'].value}" if c["rank"].value != "all" else ""
            )
        self.status.value = self._status_html(shown, notes)
        self.error = None

    def _group(self, run: Run, group_by: str, labels: dict[str, str]) -> str:
        if group_by == "method":
            return run_method(run)
        if group_by == "rank":
            rank = run_rank(run)
            return f"r = {rank}" if rank is not None else "no rank"
        return labels[run.id]

    def _curves(self, shown, metric, group_of, colors, labels, notes) -> list[dict]:
        """One line per run: the metric against the step, runs of one group in one colour, told apart by dash."""
        traces, dash_count = [], {}
        for run in shown:
            steps, values = metric_series(run, metric)
            if not values:
                notes.append(f"{labels[run.id]}: no {metric_label(metric)}")
                continue
            group = group_of[run.id]
            dash = DASHES[dash_count.get(group, 0) % len(DASHES)]
            dash_count[group] = dash_count.get(group, 0) + 1
            traces.append(
                dict(
                    x=steps,
                    y=values,
                    name=labels[run.id],
                    legendgroup=run.id,
                    showlegend=True,
                    mode="lines" if metric == TRAIN_LOSS else "lines+markers",
                    line=dict(color=colors[group], dash=dash, width=1.5 if metric == TRAIN_LOSS else 2),
                    marker=dict(size=5, color=colors[group]),
                    text=None,
                    textposition=None,
                    hovertext=None,
                    hovertemplate=None,
                )
            )
        return traces

    def _finals(self, shown, metric, x_axis, group_by, group_of, groups, colors, labels, notes) -> list[dict]:
        """One line per group: each run's final metric at its trainable parameters (or rank), sorted by x."""
        points: dict[str, list[tuple[float, float, str, str]]] = {}
        for run in shown:
            x = run.config.get("trainable_parameters") if x_axis == "trainable_parameters" else run_rank(run)
            y = final_value(run, metric)
            if x is None:
                notes.append(f"{labels[run.id]}: no {X_AXES[x_axis].split(' (')[0]} recorded")
                continue
            if not math.isfinite(y):
                notes.append(f"{labels[run.id]}: no {metric_label(metric)}")
                continue
            tag = (
                run_method(run)
                if group_by == "rank"
                else ""
                if group_by == "run"
                else (f"r={run_rank(run)}" if run_rank(run) is not None else "")
            )
            points.setdefault(group_of[run.id], []).append((float(x), y, tag, labels[run.id]))
        traces = []
        for group in (g for g in groups if g in points):
            rows = sorted(points[group], key=lambda row: row[0])
            traces.append(
                dict(
                    x=[row[0] for row in rows],
                    y=[row[1] for row in rows],
                    name=group,
                    legendgroup=group,
                    showlegend=True,
                    mode="lines+markers+text" if any(row[2] for row in rows) else "lines+markers",
                    line=dict(color=colors[group], dash="solid", width=2),
                    marker=dict(size=9, color=colors[group]),
                    text=[row[2] for row in rows],
                    textposition="top center",
                    hovertext=[row[3] for row in rows],
                    hovertemplate="%{hovertext}<br>x = %{x:,}<br>y = %{y:.4g}<extra></extra>",
                )
            )
        return traces

    def _spectra(self, shown, layer, x_axis, group_of, colors, labels, notes) -> list[dict]:
        """Each shown run's last recorded spectrum of ``layer``, in its group's colour."""
        traces = []
        if layer is None:
            return traces
        for run in shown:
            history = run.spectra.get(layer)
            if not history:
                notes.append(f"{labels[run.id]}: no spectra of {layer}")
                continue
            step, values = history[-1]
            group = group_of[run.id]
            traces.append(
                dict(
                    x=list(range(1, len(values) + 1)),
                    y=list(values),
                    name=f"{labels[run.id]} (step {step})",
                    legendgroup=run.id if x_axis == "step" else group,
                    showlegend=False,
                    mode="lines",
                    line=dict(color=colors[group], width=1.5),
                    hovertemplate=None,
                )
            )
        return traces

    # -- words -----------------------------------------------------------------------------------
    def _empty_message(self, shown: list[Run]) -> str:
        if not self.records:
            return "No recorded runs yet: train with sl.fit(...) and press “reload runs”."
        if not self.controls["selected"].value:
            return "No run selected: pick some in the runs list."
        if not shown:
            return f"No selected run has rank {self.controls['rank'].value}."
        return ""

    def _status_html(self, shown: list[Run], notes: list[str]) -> str:
        if not self.records:
            where = f" in <code>{_escape(str(self.directory))}</code>" if self.directory is not None else ""
            return (
                f"No recorded runs{where} yet. Train one with <code>sl.fit(model, task, steps)</code> "
                "(runs are recorded by default), then press <b>reload runs</b>."
            )
        parts = [f"{len(shown)} of {len(self.records)} runs shown"]
        if self._missing_pinned:
            parts.append(
                f"{len(self._missing_pinned)} pinned run(s) not found: "
                + ", ".join(_escape(rid) for rid in self._missing_pinned)
            )
        if notes:
            parts.append("left out: " + "; ".join(_escape(note) for note in notes))
        return " · ".join(parts)

    # -- the static page -------------------------------------------------------------------------
    def static_groups(self) -> dict[str, list[str]]:
        """``{group: [run ids]}`` of the shown runs, grouped as the figure colours them (``group_by``)."""
        labels = run_labels(self.records)
        groups: dict[str, list[str]] = {}
        for run in self.shown:
            groups.setdefault(self._group(run, self.controls["group_by"].value, labels), []).append(run.id)
        return groups

    # The trace attributes an x-axis state writes into each slot of the static figure (everything
    # redraw() sets, plus the panel the trace sits in: a slot may hold a curve in one state and a
    # spectrum in another).
    STATIC_KEYS = (
        "x",
        "y",
        "name",
        "legendgroup",
        "showlegend",
        "mode",
        "line",
        "marker",
        "text",
        "textposition",
        "hovertext",
        "hovertemplate",
        "xaxis",
        "yaxis",
        "visible",
    )

    def static_x_axes(self) -> list[str]:
        """The x-axes the static page offers: every one the live widget has, unless the instructor
        hid the control (``hide=["x_axis"]``), then only the current one."""
        return [self.controls["x_axis"].value] if "x_axis" in self.hidden else list(X_AXES)

    def static_states(self) -> dict[str, dict]:
        """For each x-axis of :meth:`static_x_axes`, what the live widget draws with it: its drawn
        traces (as plotly dicts, in figure order), the layout redraw() sets, and the groups of the
        runs shown. Each is drawn by the widget itself (set the control, :meth:`redraw`), and the
        control is put back afterwards."""
        control = self.controls["x_axis"]
        current = control.value
        states = {}
        try:
            for key in self.static_x_axes():
                self._syncing = True
                control.value = key
                self._syncing = False
                self.redraw()
                fig = self.figure
                states[key] = dict(
                    traces=[trace.to_plotly_json() for trace in fig.data if trace.visible is not False],
                    layout={
                        "title.text": fig.layout.title.text,
                        "xaxis.title.text": fig.layout.xaxis.title.text,
                        "xaxis.type": fig.layout.xaxis.type,
                        **{f"xaxis.{key}": fig.layout.xaxis[key] for key in LOG_TICK_KEYS},
                        "xaxis.minor": fig.layout.xaxis.minor.to_plotly_json() or None,
                        "yaxis.title.text": fig.layout.yaxis.title.text,
                        "yaxis.type": fig.layout.yaxis.type,
                        "annotations[0].text": fig.layout.annotations[0].text,
                    },
                )
        finally:
            self._syncing = True
            control.value = current
            self._syncing = False
            self.redraw()
        return states

    def _run_buttons(self, traces: list[dict], slots: int, groups: dict[str, list[str]]) -> list[dict]:
        """The "all runs" / "only <group>" buttons for one x-axis state: ``restyle`` of ``visible``
        over the ``slots`` traces of the static figure (a slot the state leaves empty stays hidden)."""
        group_of = {rid: group for group, ids in groups.items() for rid in ids}
        group_of.update({group: group for group in groups})  # off the step axis a trace's legendgroup is its group
        trace_groups = [group_of.get(trace.get("legendgroup")) for trace in traces]
        trace_groups += [None] * (slots - len(traces))
        entries = [
            dict(
                method="restyle",
                label="all runs",
                args=[{"visible": [i < len(traces) for i in range(slots)]}],
            )
        ]
        for group in groups:
            entries.append(
                dict(method="restyle", label=f"only {group}", args=[{"visible": [g == group for g in trace_groups]}])
            )
        return entries

    def static_figure(self) -> go.Figure:
        """The figure as drawn, without its empty slots, plus plotly buttons that work with no kernel:

        * **x-axis** (a dropdown): step, trainable parameters or rank — each entry writes the traces
          and axis titles the live widget draws with that x-axis (:meth:`static_states`) into the
          figure's slots (``Plotly.update``), and the run buttons that fit them;
        * **runs**: show every run or one group's (a method's, by default), ``restyle`` of
          ``visible``; the legend toggles single runs (click an entry)."""
        current = self.controls["x_axis"].value
        states = self.static_states()
        groups = self.static_groups()
        slots = max(len(state["traces"]) for state in states.values())
        fig = go.Figure(self.figure)
        fig.data = [trace for trace in fig.data if trace.visible is not False]
        # Slots the current state does not fill (another x-axis draws more traces): hidden, empty.
        for _ in range(slots - len(fig.data)):
            fig.add_trace(go.Scatter(x=[], y=[], visible=False, showlegend=False))

        menus = []
        runs_menu = None
        if len(groups) > 1:
            entries = self._run_buttons(states[current]["traces"], slots, groups)
            kind = "buttons" if len(entries) <= 6 else "dropdown"
            # Above the panels, between the title (left) and plotly's toolbar (right), which it would hide.
            runs_menu = static.buttons(entries, 0, x=0.3, y=MENU_Y, kind=kind, name="runs")
            runs_menu.update(yanchor="bottom")
            menus.append(runs_menu)
        if len(states) > 1:
            entries = []
            for key, state in states.items():
                traces = state["traces"] + [dict(x=[], y=[], visible=False, showlegend=False)] * (
                    slots - len(state["traces"])
                )
                data = static.trace_changes([_arrays(t) for t in traces], self.STATIC_KEYS)
                layout = dict(state["layout"])
                if runs_menu is not None:  # the run buttons of this state (its traces are others), all shown
                    layout["updatemenus[0].buttons"] = self._run_buttons(state["traces"], slots, groups)
                    layout["updatemenus[0].active"] = 0
                entries.append(dict(method="update", label=X_AXES[key].split(" (")[0], args=[data, layout]))
            x_menu = static.buttons(
                entries, list(states).index(current), x=0.0, y=MENU_Y, kind="dropdown", name="x-axis"
            )
            x_menu.update(yanchor="bottom", xanchor="left")
            menus.append(x_menu)
            # the runs buttons move right of the x-axis dropdown (about 190 px wide)
            if runs_menu is not None:
                runs_menu.update(x=0.36)
        if menus:
            # The menus get a row of their own between the title and the subplot titles (the figure's
            # top margin grows by it); MENU_Y puts their bottom edge just above the subplot titles.
            fig.update_layout(updatemenus=menus, margin_t=fig.layout.margin.t + MENU_BAND)
        fig.layout.meta = {
            "spectrallab": {
                "widget": "Compare",
                "groups": {g: len(ids) for g, ids in groups.items()},
                "x_axes": list(states),
            }
        }
        return fig

    def static_note(self) -> str:
        return static.note(
            "In this figure, choose the x-axis (step, trainable parameters, rank) in the menu above it, "
            "click a legend entry to hide or show a run, or use the buttons to show one group; "
            "choosing other runs or metrics needs the live widget."
        )

    # -- plumbing --------------------------------------------------------------------------------
    def _observe(self, name: str) -> None:
        """Redraw when a control changes; an exception is shown in the widget, never lost."""

        def handler(change: dict) -> None:
            if self._syncing:
                return
            try:
                self.redraw()
            except Exception as error:  # noqa: BLE001 — the reader must see it, whatever it is
                self.show_error(f"changing {name} to {change.get('new')!r}", error)

        self.controls[name].observe(handler, names="value")

    def _on_reload(self, _button: W.Button) -> None:
        try:
            self.reload()
        except Exception as error:  # noqa: BLE001
            self.show_error("reloading runs", error)
