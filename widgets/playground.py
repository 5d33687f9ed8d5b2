"""Playground: pick a task, a method and its options, press Play, and watch the model train.

Three panels side by side, each next to the knob that moves it: the loss (training loss, validation
loss, and a dashed *ghost* — full-rank training on the same task — for reference; for a scenario
with a headline metric, such as link prediction's ROC AUC, that metric and its ghost too, on a
right-hand axis of the same panel), the singular
spectrum of a chosen layer's effective weight (now vs. at the start), and the spectrum of the update
ΔW = W − W_start, which is where low-rank methods differ from full training.

Structural controls (task, method, rank, sparsity, init, period, steps, and every other option the
method declares) rebuild the run; the learning rate applies to the running optimizer at once. The
method's own options get controls built from its declarations (:mod:`.option_controls`); switching
the method rebuilds that row, and nothing else is rebuilt while training. Training runs in a
background thread (Pause takes effect within one step; Reset joins the thread before building
anew); the figure is redrawn at most ten times a second. In static mode (a book build) ``play()``
trains to the end before returning, so the saved figure shows the finished run.
"""

from __future__ import annotations

import base64
import math
import threading
import time
import weakref
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import ipywidgets as W
import numpy as np
import plotly.graph_objects as go
from plotly.subplots import make_subplots

import spectrallab as sl
from spectrallab.methods.lora import LORA_INITS
from spectrallab.methods.options import Option

from . import static
from .base import Widget, _escape
from .option_controls import auto_checkbox, declared, dropdown_options, fits, needs_auto, tooltip, value_control
from .plots import palette, style
from .session import SCENARIOS, TrainingSession, reference_run

REFRESH_SECONDS = 0.1  # redraw at most ~10 times a second while training
STRUCTURAL = ("scenario", "method", "rank", "sparsity", "init", "period", "steps")
# Options many methods share: permanent controls (their state keys never change), hidden for a method
# that lacks them. Every other declared option gets a control of its own when its method is chosen.
SHARED_OPTIONS = ("rank", "sparsity", "init")
# The Playground's own keywords: a method option of the same name (SST's layer `seed`) gets the key
# "method_<name>", so that Playground(**state) cannot confuse the two.
OWN_KEYWORDS = ("scenario", "method", "period", "lr", "steps", "layer", "log_y", "seed", "ghost", "live", "hide")
_PLAYGROUNDS: weakref.WeakSet[Playground] = weakref.WeakSet()

# Trace order in the figure. The last two (the scenario's headline metric and its ghost) are hidden,
# with their axis, for a scenario that has none; they come last so the first six keep their places.
# The still of the live widget that static pages show (see Playground.static_note); in a checkout.
STILL = Path(__file__).resolve().parent.parent / "book" / "images" / "playground-live.png"

TRAIN, VAL, GHOST, SPEC_START, SPEC_NOW, DELTA, METRIC, GHOST_METRIC = range(8)
METRIC_COLOR = "#d62728"


def option_key(name: str) -> str:
    """The control (and ``.state``) key of a method option: its name, unless the Playground has a keyword of it."""
    return f"method_{name}" if name in OWN_KEYWORDS else name


def period_driven(method_class: type) -> tuple[set[str], set[str]]:
    """(options the "period" knob sets to the period itself, companions it derives from the period).

    Read from ``period_options`` with two probes, so a companion that equals one period (a warm-up of
    ``min(period, …)``) is not mistaken for the period itself.
    """
    a, b = method_class.period_options(1000), method_class.period_options(1001)
    if a is None:
        return set(), set()
    primary = {name for name, value in a.items() if value == 1000 and b.get(name) == 1001}
    return primary, set(a) - primary


def _shared_choices(method_class: type, name: str) -> list[Any]:
    """The dropdown options of a shared choice option (``init``), from the declaration."""
    option = method_class.options.get(name)
    if option is None:
        return []
    return dropdown_options(option) if option.kind == "choice" else [option.default]


class Playground(Widget):
    """Train a model with any registered method and watch loss and spectra move.

    Every keyword is also a control (and a key of ``.state``), and so is every option the method
    declares: ``Playground(method="lora", alpha=16, rslora=True)``; ``None`` for an option that
    allows it (its "auto" box). A method option named like a keyword of the Playground is
    ``method_<name>`` (``method_seed``); options the period knob sets have no control of their own.
    ``ghost=False`` skips the full-rank reference run. The buttons are methods too: :meth:`play`,
    :meth:`pause`, :meth:`step`, :meth:`reset`. Only one Playground trains at a time: creating or
    playing one pauses the others (two training threads would only halve each other's speed on a
    laptop CPU).
    """

    def __init__(
        self,
        scenario: str = "rotated digits (fine-tune)",
        method: str = "lora",
        rank: int | None = 4,
        sparsity: float | None = 0.05,
        init: Any = "default",
        period: int | None = None,
        lr: float | None = None,
        steps: int | None = None,
        layer: str | None = None,
        log_y: bool = True,
        seed: int = 0,
        ghost: bool = True,
        live: bool | None = None,
        hide: Iterable[str] = (),
        **options: Any,
    ):
        super().__init__(live=live, hide=hide)
        if scenario not in SCENARIOS:
            raise ValueError(f"scenario={scenario!r} is not one of {', '.join(SCENARIOS)}")
        method_class = sl.method_class(method)  # unknown method: a clear error now, not in a callback
        self._check_option_keywords(method_class, options)
        spec = SCENARIOS[scenario]
        self.seed, self.ghost = seed, ghost
        self._data_lock = threading.Lock()
        self._last_draw = 0.0
        self.session: TrainingSession | None = None
        self.reference: sl.Run | None = None
        self._rank_bounds: dict[str, int] = {}

        c = self.controls
        c["scenario"] = W.Dropdown(options=list(SCENARIOS), value=scenario, description="task")
        c["method"] = W.Dropdown(options=sl.methods(), value=method, description="method")
        rank_shown = 4 if rank is None else rank
        c["rank"] = W.IntSlider(
            value=rank_shown, min=1, max=max(rank_shown, 64), description="rank", continuous_update=False
        )
        c["sparsity"] = W.FloatSlider(
            value=0.05 if sparsity is None else sparsity,
            min=0.01,
            max=1.0,
            step=0.01,
            description="sparsity",
            continuous_update=False,
        )
        init_choices = _shared_choices(method_class, "init") or sorted(LORA_INITS)
        init_values = [choice[1] if isinstance(choice, tuple) else choice for choice in init_choices]
        shown = init
        if shown not in init_values:  # LoRA's "default" for a method with other inits (SVFT's): its own default
            shown = method_class.defaults().get("init")
            shown = shown if shown in init_values else init_values[0]
        c["init"] = W.Dropdown(options=init_choices, value=shown, description="init")
        # "auto" (None) for a shared option, shown only for a method whose declaration allows None.
        self.auto: dict[str, W.Checkbox] = {
            name: W.Checkbox(
                value=value is None, description="auto", indent=False, layout=W.Layout(width="auto", display="none")
            )
            for name, value in (("rank", rank), ("sparsity", sparsity), ("init", init))
        }
        # One knob for every method with periodic work (ReLoRA's restarts, GaLore's projection
        # updates, SST's resampling): short enough by default that a run shows several periods.
        c["period"] = W.BoundedIntText(
            value=period or sl.pick(ci=25, cpu=50, gpu=200), min=1, max=10**6, description="period"
        )
        c["lr"] = W.FloatLogSlider(
            value=lr or spec.suggested_lr(method),
            base=10,
            min=-4,
            max=-0.5,
            step=0.1,
            description="lr",
            readout_format=".1e",
            continuous_update=False,
        )
        c["steps"] = W.BoundedIntText(
            value=steps or sl.pick(ci=150, cpu=600, gpu=3000), min=1, max=10**7, description="steps"
        )
        c["layer"] = W.Dropdown(options=list(spec.layers), value=layer or spec.layers[0], description="layer")
        c["log_y"] = W.Checkbox(value=log_y, description="log scale")
        self.buttons = {
            name: W.Button(description=name.capitalize(), icon=icon, layout=W.Layout(width="90px"))
            for name, icon in (("play", "play"), ("pause", "pause"), ("step", "step-forward"), ("reset", "refresh"))
        }
        self.buttons["play"].on_click(lambda _: self._guard("Play", self.play))
        self.buttons["pause"].on_click(lambda _: self._guard("Pause", self.pause))
        self.buttons["step"].on_click(lambda _: self._guard("Step", self.step))
        self.buttons["reset"].on_click(lambda _: self._guard("Reset", self.reset))
        self.counts = W.HTML()

        self.figure = self.make_figure(self._empty_figure())
        for name in STRUCTURAL:
            c[name].observe(lambda change, n=name: self._rebuild_on_change(n), names="value")
        for name, box in self.auto.items():
            box.observe(lambda change, n=name: self._on_auto(n), names="value")
        # The method's other options: key -> (option name, declaration), their controls, and the last
        # value each key held (with the period then), so that a switch to another method and back keeps
        # what was set.
        self._option_specs: dict[str, tuple[str, Option]] = {}
        self._values: dict[str, Any] = dict(options)
        self._value_period: dict[str, int] = dict.fromkeys(options, c["period"].value)
        self._options_row = W.HBox(layout=W.Layout(flex_flow="row wrap"))
        self._built: tuple[type, int] | None = None
        self._build_option_controls(method_class, c["period"].value)
        c["lr"].observe(lambda change: self._guard("changing lr", self._apply_lr), names="value")
        for name in ("layer", "log_y"):  # (not while reset() refills them: it draws once at its end)
            c[name].observe(
                lambda change: None if self._building else self._guard("redrawing", self.draw), names="value"
            )
        self._finish_controls()
        for other in list(_PLAYGROUNDS):
            other.pause()
        _PLAYGROUNDS.add(self)
        self.reset()

    # -- state -----------------------------------------------------------------------------------
    @property
    def state(self) -> dict[str, Any]:
        """The controls' values, None where an option's "auto" box is ticked."""
        state = super().state
        for key, box in self.auto.items():
            if key in state and box.value:
                state[key] = None
        return state

    def hide(self, *names: str) -> Playground:
        super().hide(*names)
        for name in names:
            if name in self.auto:
                self.auto[name].layout.display = "none"
        return self

    # -- the method's options ----------------------------------------------------------------------
    @staticmethod
    def _own_options(method_class: type) -> dict[str, tuple[str, Option]]:
        """key -> (name, declaration) of the options that get a control of their own: all the declared
        ones but the shared knobs and what the period knob sets."""
        primary, _ = period_driven(method_class)
        return {
            option_key(name): (name, option)
            for name, option in declared(method_class).items()
            if name not in SHARED_OPTIONS and name not in primary
        }

    def _check_option_keywords(self, method_class: type, options: dict[str, Any]) -> None:
        own = self._own_options(method_class)
        unknown = sorted(set(options) - set(own))
        if unknown:
            primary, _ = period_driven(method_class)
            by_period = f"; the period knob sets {', '.join(sorted(primary))}" if primary else ""
            raise TypeError(
                f"Playground(method={method_class.name!r}) got unknown keyword(s) {', '.join(unknown)}; "
                f"the method's other options are: {', '.join(own) or 'none'} (rank, sparsity "
                f"and init are keywords of their own{by_period})"
            )
        for key, value in options.items():
            name, option = own[key]
            option.validate(f"Playground(method={method_class.name!r})", name, value)

    def _build_option_controls(self, method_class: type, period: int) -> None:
        """Replace the option row with the controls of ``method_class``'s options (on a method switch only)."""
        held = {key: value for key, value in self.state.items() if key in self._option_specs}
        self._values.update(held)
        self._value_period.update(dict.fromkeys(held, self._built[1] if self._built else period))
        for key in self._option_specs:
            self.controls.pop(key).close()
            box = self.auto.pop(key, None)
            if box is not None:
                box.close()
        own = self._own_options(method_class)
        clash = sorted(set(own) & set(self.controls))
        if clash:
            raise ValueError(
                f"method {method_class.name!r}: option(s) {', '.join(clash)} would take the "
                f"Playground's control(s) of that name"
            )
        _, companions = period_driven(method_class)
        derived = method_class.period_options(period) or {}
        row = []
        for key, (name, option) in own.items():
            value = self._values.get(key, option.default)
            if name in companions and self._value_period.get(key) != period:
                value = derived[name]  # set for another period: follow this one (a warm-up shorter than it)
            if not fits(option, value):  # what another method's option of that name held
                value = option.default
            control = value_control(name, option, value)
            control.observe(lambda change, k=key: self._rebuild_on_change(k), names="value")
            self.controls[key] = control
            row.append(control)
            if needs_auto(option):
                box = self.auto[key] = auto_checkbox(option, value)
                control.disabled = box.value
                box.observe(lambda change, k=key: self._on_auto(k), names="value")
                row.append(box)
            if key in self._hidden:
                for widget in (control, self.auto.get(key)):
                    if widget is not None:
                        widget.layout.display = "none"
        self._option_specs = own
        self._options_row.children = row
        self._built = (method_class, period)

    def _sync_companions(self, method_class: type, period: int) -> None:
        """A new period: options derived from it (a warm-up) follow; the user may change them after."""
        derived = method_class.period_options(period) or {}
        for key, (name, option) in self._option_specs.items():
            if name in derived and fits(option, derived[name]):
                self.controls[key].value = derived[name]
                if key in self.auto:
                    self.auto[key].value = False
        self._built = (method_class, period)

    def _on_auto(self, key: str) -> None:
        """An "auto" box: the option is None while ticked (its number box greyed out)."""
        self.controls[key].disabled = self.auto[key].value
        self._rebuild_on_change(key)

    def session_options(self) -> dict[str, Any]:
        """The keywords the next run passes to ``apply``: the shared knobs the method has, what the
        period knob sets, and the method's other options."""
        state = self.state
        method_class = sl.method_class(state["method"])
        options = {k: state[k] for k in SHARED_OPTIONS if k in method_class.options}
        options.update(method_class.period_options(state["period"]) or {})
        options.update({name: state[key] for key, (name, _) in self._option_specs.items()})
        return options

    # -- the four buttons ------------------------------------------------------------------------
    def play(self) -> None:
        """Train until the step budget is used or Pause is pressed (static mode: to the end, now)."""
        if self.session is None or self.session.done:
            return
        for other in list(_PLAYGROUNDS):
            if other is not self:
                other.pause()
        if not self.live:
            self._ensure_reference()
            while (event := self.session.step()) is not None:
                self._record(event)
            self.draw()
            return
        self._set_status("training…")
        self.session.play(self._on_event, on_stop=self._on_stop, before=self._ensure_reference)

    def pause(self) -> None:
        if self.session is not None and self.session.playing:
            self.session.pause()
            self.draw()

    def step(self) -> None:
        """One optimizer step (ignored while playing)."""
        if self.session is None or self.session.playing:
            return
        event = self.session.step()
        if event is not None:
            self._record(event)
        self.draw()

    def reset(self) -> None:
        """Throw the run away (joining its thread) and build a new one from the controls."""
        self._building = True
        try:
            self._reset()
        finally:
            self._building = False

    def _rebuild_on_change(self, control: str) -> None:
        if not self._building:  # reset() itself adjusts controls (e.g. clamps the rank): no recursion
            self._guard(f"changing {control}", self.reset)

    _building = False

    def _reset(self) -> None:
        if self.session is not None:
            self.session.close()
        self.error = None
        self.status.value = ""
        state = self.state
        spec = SCENARIOS[state["scenario"]]
        self._sync_controls(spec, state["method"], state["period"])
        state = self.state
        options = self.session_options()
        with self._data_lock:
            self.history = {"step": [], "loss": [], "val_step": [], "val_loss": [], "metric": []}
        self.session = None
        self.session = TrainingSession(spec, state["method"], options, state["lr"], state["steps"], seed=self.seed)
        self.reference = None
        self._record(self.session.step())  # step 0: the starting point's validation loss
        self.draw()

    # -- drawing ---------------------------------------------------------------------------------
    def draw(self) -> None:
        """Put the current history and spectra into the figure (in place, one batch)."""
        if self.session is None:
            return
        # numpy arrays, not lists: plotly validates a list element by element on every frame
        with self._data_lock:
            h = {k: np.asarray(v) for k, v in self.history.items()}
        layer = self.controls["layer"].value
        S, dS = (s.numpy() for s in self.session.spectra(layer))
        S0 = self.session.start_spectra[layer].numpy()
        ghost = self.reference.eval_series("val_loss") if self.reference is not None else ([], [])
        metric = self.session.scenario.metric
        ghost_metric = (
            self.reference.eval_series(metric.key) if self.reference is not None and metric is not None else ([], [])
        )
        idx = np.arange(1, len(S) + 1)
        fig = self.figure
        with fig.batch_update():
            fig.data[TRAIN].update(x=h["step"], y=h["loss"])
            fig.data[VAL].update(x=h["val_step"], y=h["val_loss"])
            fig.data[GHOST].update(x=np.asarray(ghost[0]), y=np.asarray(ghost[1]))
            fig.data[SPEC_START].update(x=idx, y=S0)
            fig.data[SPEC_NOW].update(x=idx, y=S)
            fig.data[DELTA].update(x=idx, y=dS)
            self._draw_metric(fig, metric, h, ghost_metric)
            scale = "log" if self.controls["log_y"].value else "linear"
            fig.layout.yaxis2.type = scale
            fig.layout.yaxis3.type = scale
            fig.layout.title.text = (
                f"{self.session.method} on {self.session.scenario.name} — step "
                f"{self.session.step_count}/{self.session.steps}"
            )
            fig.layout.annotations[1].text = f"σ of {layer}"
            fig.layout.annotations[2].text = "σ of ΔW = W − W<sub>start</sub>"
        self._update_counts()
        self._last_draw = time.monotonic()

    def _draw_metric(self, fig: go.Figure, metric, h: dict, ghost: tuple) -> None:
        """The headline metric on the loss panel's right-hand axis (hidden for a scenario without one)."""
        shown = metric is not None
        fig.data[METRIC].visible = fig.data[GHOST_METRIC].visible = shown
        fig.layout.yaxis4.visible = shown
        if not shown:
            fig.data[METRIC].update(x=[], y=[])
            fig.data[GHOST_METRIC].update(x=[], y=[])
            fig.layout.annotations[0].text = "loss"
            return
        better = "higher" if metric.higher_is_better else "lower"
        fig.data[METRIC].update(x=h["val_step"], y=h["metric"], name=f"{metric.label} (right axis)")
        fig.data[GHOST_METRIC].update(
            x=np.asarray(ghost[0]), y=np.asarray(ghost[1]), name=f"full-rank reference, {metric.label}"
        )
        fig.layout.yaxis4.range = list(metric.range) if metric.range is not None else None
        fig.layout.yaxis4.autorange = metric.range is None
        fig.layout.annotations[0].text = f"loss (left) · {metric.label} (right, {better} is better)"

    def _empty_figure(self) -> go.Figure:
        # A little wider apart than the spectra need: the loss panel may carry a right-hand axis.
        fig = make_subplots(
            rows=1, cols=3, horizontal_spacing=0.085, subplot_titles=("loss", "spectrum", "spectrum of ΔW")
        )
        colors = palette(3)
        fig.add_trace(
            go.Scatter(name="train loss", mode="lines", line=dict(color=colors[0], width=1), opacity=0.35), 1, 1
        )
        fig.add_trace(
            go.Scatter(name="validation loss", mode="lines+markers", line=dict(color=colors[0]), marker=dict(size=4)),
            1,
            1,
        )
        fig.add_trace(go.Scatter(name="full-rank reference", mode="lines", line=dict(color="gray", dash="dash")), 1, 1)
        fig.add_trace(go.Scatter(name="σ at start", mode="lines", line=dict(color="gray", dash="dot")), 1, 2)
        fig.add_trace(
            go.Scatter(name="σ now", mode="lines+markers", marker=dict(size=3), line=dict(color=colors[2])), 1, 2
        )
        fig.add_trace(
            go.Scatter(name="σ(ΔW) now", mode="lines+markers", marker=dict(size=3), line=dict(color=colors[1])), 1, 3
        )
        # The headline metric: its own axis (yaxis4) over the loss panel, on the right, so a loss on a
        # log scale and an AUC in [0, 1] both stay readable; added as a plain layout axis so the
        # spectra keep theirs (yaxis2, yaxis3).
        fig.add_trace(
            go.Scatter(
                name="metric",
                mode="lines+markers",
                line=dict(color=METRIC_COLOR),
                marker=dict(size=4, symbol="diamond"),
                xaxis="x",
                yaxis="y4",
                visible=False,
            )
        )
        fig.add_trace(
            go.Scatter(
                name="full-rank reference, metric",
                mode="lines",
                xaxis="x",
                yaxis="y4",
                line=dict(color=METRIC_COLOR, dash="dash", width=1),
                opacity=0.6,
                visible=False,
            )
        )
        fig.update_xaxes(title_text="step", row=1, col=1)
        fig.update_xaxes(title_text="index i", row=1, col=2)
        fig.update_xaxes(title_text="index i", row=1, col=3)
        fig.update_yaxes(type="log", row=1, col=1)
        fig.update_layout(
            yaxis4=dict(
                overlaying="y",
                anchor="x",
                side="right",
                showgrid=False,
                visible=False,
                tickfont=dict(color=METRIC_COLOR),
            )
        )
        # the book's figure style: legend under the panels, where it meets no subplot title
        return style(fig, height=440)

    # -- internals -------------------------------------------------------------------------------
    def _record(self, event: sl.Event | None) -> None:
        if event is None:
            return
        with self._data_lock:
            if event.loss is not None:
                self.history["step"].append(event.step)
                self.history["loss"].append(event.loss)
            if event.metrics is not None:
                key = self.session.scenario.metric.key if self.session.scenario.metric is not None else None
                self.history["val_step"].append(event.step)
                self.history["val_loss"].append(event.metrics.get("val_loss", math.nan))
                self.history["metric"].append(event.metrics.get(key, math.nan) if key is not None else math.nan)

    def _on_event(self, event: sl.Event) -> None:
        """Called from the training thread after every step; redraws at most every REFRESH_SECONDS."""
        self._record(event)
        if time.monotonic() - self._last_draw >= REFRESH_SECONDS:
            self.draw()

    def _on_stop(self) -> None:
        session = self.session
        try:
            self.draw()
        finally:
            if session is not None and session.error is not None:
                self.show_error(f"training step {session.step_count + 1}", session.error)
            elif session is not None and session.done:
                self._set_status(f"done: {session.step_count} steps")
            else:
                self._set_status("paused")

    def _ensure_reference(self) -> None:
        if self.ghost and self.reference is None and self.session is not None:
            self._set_status("training the full-rank reference once (it is cached on disk)…")
            self.reference = reference_run(self.session.scenario, self.session.steps, seed=self.seed)

    def _apply_lr(self) -> None:
        if self.session is not None:
            self.session.set_lr(self.controls["lr"].value)

    def _sync_controls(self, spec, method: str, period: int) -> None:
        """Show only the knobs the method has; bound the rank by the smallest targeted layer; rebuild
        the method's option row when the method changed, and its period-derived options when the period did."""
        method_class = sl.method_class(method)
        options = method_class.options
        if self._built is None or self._built[0] is not method_class:
            self._build_option_controls(method_class, period)
        elif self._built[1] != period:
            self._sync_companions(method_class, period)
        max_rank = self._rank_bound(spec)
        declared_rank = options.get("rank")
        if declared_rank is not None and isinstance(declared_rank.high, (int, float)):
            max_rank = min(max_rank, int(declared_rank.high))
        rank = self.controls["rank"]
        with rank.hold_trait_notifications():
            rank.max = max_rank
            rank.value = min(rank.value, max_rank)
        for name in SHARED_OPTIONS:
            option = options.get(name)
            self.controls[name].tooltip = tooltip(option) if option is not None else None
            if name not in self._hidden:
                self.controls[name].layout.display = None if name in options else "none"
            box = self.auto.get(name)
            if box is not None:  # "auto" only where this method's declaration allows None
                noneable = option is not None and needs_auto(option)
                if not noneable:
                    box.value = False
                box.description = f"auto: {option.none}" if noneable else "auto"
                box.layout.display = None if noneable and name not in self._hidden else "none"
                self.controls[name].disabled = box.value
        primary, companions = period_driven(method_class)
        if "period" not in self._hidden:
            self.controls["period"].layout.display = None if primary or companions else "none"
        self.controls["period"].tooltip = f"sets {', '.join(sorted(primary | companions))}" if primary else None
        if "init" in options:  # each method has its own initializations (LoRA's table, SVFT's ...)
            init = self.controls["init"]
            choices = _shared_choices(method_class, "init")
            if list(init.options) != choices:  # inside reset(): the observers do not re-enter
                current = init.value
                values = [c[1] if isinstance(c, tuple) else c for c in choices]
                init.options = choices
                init.value = current if current in values else method_class.defaults()["init"]
        layer = self.controls["layer"]
        if list(layer.options) != list(spec.layers):
            # Not inside hold_trait_notifications: there the old value is validated against the new
            # options, and a scenario whose layers have other names (digits → tiny GPT) failed.
            layer.options = list(spec.layers)
            layer.value = spec.layers[0]

    def _rank_bound(self, spec) -> int:
        """min(out, in) over the layers the scenario adapts (built once per scenario: not on every reset)."""
        if spec.name not in self._rank_bounds:
            layers = sl.resolve_targets(spec.make_task().make_model(), list(spec.targets) if spec.targets else None)
            self._rank_bounds[spec.name] = min(min(m.out_features, m.in_features) for m in layers.values())
        return self._rank_bounds[spec.name]

    def _update_counts(self) -> None:
        s = self.session
        trainable = sl.trainable_parameters(s.model)
        total = sum(p.numel() for p in s.model.parameters())
        state = s.optimizer_state_numel()
        self.counts.value = (
            f"<span style='font-family:monospace'>trainable {trainable:,} of {total:,} "
            f"({trainable / total:.1%}) · optimizer state "
            f"{'—' if state is None else f'{state:,}'} scalars</span>"
        )

    def _set_status(self, text: str) -> None:
        if self.error is None:
            self.status.value = f"<span style='color:#555'>{_escape(text)}</span>"

    def _guard(self, where: str, action) -> None:
        try:
            action()
        except Exception as error:  # a callback's exception would otherwise vanish into the log
            self.show_error(where, error)

    def control_panel(self) -> W.Widget:
        buttons = W.HBox(list(self.buttons.values()))
        fixed = []
        for name, control in self.controls.items():
            if name not in self._option_specs:  # those live in the option row, rebuilt on a method switch
                fixed.append(control)
                if name in self.auto:
                    fixed.append(self.auto[name])
        return W.VBox(
            [W.HBox(fixed, layout=W.Layout(flex_flow="row wrap")), self._options_row, W.HBox([buttons, self.counts])]
        )

    # -- the static page -------------------------------------------------------------------------
    def static_note(self) -> str:
        """Under the finished run's figure: a still of the live Playground (its controls and figure, a
        screenshot taken in Voilà by ``tests/test_widgets_browser.py``), then how to get it live.

        **Why a committed image.** The book build has no browser, and a page without a kernel cannot
        train; so the still is made where a browser drives the live widget — the browser test — and
        kept small in the repository (``book/images/playground-live.png``, well under 200 KB; the test
        refreshes it with ``SPECTRALLAB_REFRESH_STILLS=1`` and checks it exists and stays small). It is
        embedded in the page (a data URI), so a page works on its own, offline, from any folder. A
        checkout without the image (an installed wheel) shows the line without the picture."""
        text = "A static snapshot of one finished run: training needs a kernel."
        if not STILL.is_file():
            return static.note(text)
        data = base64.b64encode(STILL.read_bytes()).decode("ascii")
        picture = (
            "<figure class='spectrallab-still' style='margin:0.5em 0'>"
            f"<img src='data:image/png;base64,{data}' alt='The live Playground: its task, method, rank, "
            "learning-rate and step controls, the Play, Pause, Step and Reset buttons, and the loss and "
            "spectra panels while it trains' style='max-width:100%;height:auto;border:1px solid #ccc'>"
            "<figcaption style='color:#555;font-size:0.85em'>The live Playground (here in Voilà, training "
            "digits with LoRA): the controls above the same three panels.</figcaption></figure>"
        )
        return picture + static.note(text)
