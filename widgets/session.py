"""One training run that a widget can step, play in the background, pause and throw away.

The loop itself is :func:`spectrallab.train` (a generator): a session pulls one event at a time
from it, either on demand (:meth:`TrainingSession.step`) or from a background thread
(:meth:`TrainingSession.play`) so the notebook stays responsive. Pausing sets a flag the thread
checks between steps, so it takes effect within one step; :meth:`close` always joins the thread.

Scenarios are the experiments a widget offers — a task, whether it starts from a pretrained base
(fine-tuning) or from scratch, which layers to adapt and which to watch, and optionally the
validation metric that is the task's headline (a graph task's ROC AUC or F1), drawn next to the loss.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

import spectrallab as sl
from spectrallab.runs import Run, load_runs
from spectrallab.tasks import Task


@dataclass(frozen=True)
class Metric:
    """A task's headline validation metric: the key in ``task.evaluate(model)``, how to call it, which
    way is better, and its range when it has a fixed one (so its axis does not jump while training)."""

    key: str  # e.g. "val_roc_auc"
    label: str  # e.g. "validation ROC AUC"
    higher_is_better: bool = True
    range: tuple[float, float] | None = None  # e.g. (0, 1) for AUC, F1, accuracy


@dataclass(frozen=True)
class Scenario:
    """An experiment: a task, a starting model, the layers a method adapts and the ones we watch."""

    name: str
    make_task: Callable[[], Task]
    layers: tuple[str, ...]  # layers whose spectra are shown
    targets: tuple[str, ...] | None = None  # layers a method adapts (None: every Linear)
    pretrained_on: Callable[[], Task] | None = None  # fine-tuning: the base is trained on this first
    pretrain_steps: int = 0
    lr: dict[str, float] = field(default_factory=dict)  # suggested lr per method; "*" for the rest
    metric: Metric | None = None  # headline metric besides the loss (None: loss only)

    @property
    def fine_tuning(self) -> bool:
        return self.pretrained_on is not None

    def suggested_lr(self, method: str) -> float:
        return self.lr.get(method, self.lr.get("*", 1e-2))

    def initial_model(self, task: Task, seed: int) -> nn.Module:
        if self.pretrained_on is None:
            return task.make_model(seed=seed)
        return sl.pretrained(self.pretrained_on(), steps=self.pretrain_steps, seed=seed)


def _digits() -> Task:
    return sl.task("digits")


# HyboNet's weights are the inner ``nn.Linear`` of each Lorentz layer (``LorentzLinear.linear``, the
# matrix M = [vᵀ; W] of the paper); the methods adapt those, and those are the spectra to watch.
_LORENTZ_LINEARS = ("encoder.layers.0.transform.linear", "encoder.layers.1.transform.linear")
# Full training of every weight overfits the small graph fast at a larger step size (validation loss
# climbs from the first evaluations); 1e-3 keeps its AUC curve readable. Measured on the ci graph
# (400 nodes, 150 steps): full 1e-3 → val AUC ≈ 0.65, SST/LoRA rank 4 at 1e-2 → 0.6–0.67.
_HYPERBOLIC_LR = {"full": 1e-3, "*": 1e-2}


SCENARIOS: dict[str, Scenario] = {
    s.name: s
    for s in [
        Scenario("digits", _digits, layers=("fc1", "fc2", "fc3"), lr={"full": 2e-3, "*": 1e-2}),
        Scenario(
            "rotated digits (fine-tune)",
            lambda: _digits().shifted("rot90"),
            layers=("fc1", "fc2", "fc3"),
            pretrained_on=_digits,
            pretrain_steps=sl.pick(ci=300, cpu=800, gpu=1500),
            lr={"*": 1e-2},
        ),
        Scenario("low-rank teacher", lambda: sl.task("teacher"), layers=("fc1", "fc2"), lr={"full": 3e-3, "*": 1e-2}),
        Scenario(
            "shifted teacher (fine-tune)",
            lambda: sl.task("teacher").shifted(shift_rank=2),
            layers=("fc1", "fc2"),
            pretrained_on=lambda: sl.task("teacher"),
            pretrain_steps=sl.pick(ci=300, cpu=600, gpu=1000),
            lr={"*": 1e-2},
        ),
        Scenario(
            "tiny GPT",
            lambda: sl.task("chargpt"),
            layers=("blocks.0.mlp.fc1", "blocks.0.attn.qkv", "head"),
            targets=("qkv", "proj", "fc1", "fc2"),
            lr={"full": 3e-3, "*": 1e-2},
        ),
        Scenario(
            "hyperbolic links (Disease, HyboNet)",
            lambda: sl.task("disease_lp"),
            layers=_LORENTZ_LINEARS,
            targets=("transform.linear",),
            lr=_HYPERBOLIC_LR,
            metric=Metric("val_roc_auc", "validation ROC AUC", higher_is_better=True, range=(0.0, 1.0)),
        ),
        Scenario(
            "hyperbolic nodes (Disease, HyboNet)",
            lambda: sl.task("disease_nc"),
            layers=_LORENTZ_LINEARS,
            targets=("transform.linear",),
            lr=_HYPERBOLIC_LR,
            metric=Metric("val_f1", "validation F1", higher_is_better=True, range=(0.0, 1.0)),
        ),
    ]
}


class TrainingSession:
    """A model with a method applied, its optimizer, and the training generator — stepped on demand.

    ``listener(event)`` is called after every step from whichever thread took the step.
    """

    def __init__(
        self,
        scenario: Scenario,
        method: str,
        options: dict[str, Any],
        lr: float,
        steps: int,
        seed: int = 0,
        name: str | None = None,
    ):
        self.scenario, self.method, self.options, self.steps, self.seed = scenario, method, dict(options), steps, seed
        self.task = scenario.make_task()
        self.model = scenario.initial_model(self.task, seed).to(self.task.device)
        modules = dict(self.model.named_modules())
        # The weights the run starts from: ΔW is measured against these.
        self.start_weights = {n: _dense_weight(modules[n]).detach().clone() for n in scenario.layers}
        self.start_spectra = {n: torch.linalg.svdvals(w.float()).cpu() for n, w in self.start_weights.items()}
        torch.manual_seed(seed)
        sl.apply(self.model, method, targets=list(scenario.targets) if scenario.targets else None, **options)
        self.optimizer = sl.optimizer(self.model, lr=lr)
        self.run = Run(name or f"playground {scenario.name} {method}")
        self._events = sl.train(
            self.model,
            self.task,
            steps,
            optimizer=self.optimizer,
            seed=seed,
            run=self.run,
            eval_every=max(1, min(steps // 30, 50)),  # a live run may have a huge budget
            config={"method": method, **options, "scenario": scenario.name, "widget": "Playground"},
        )
        self._lock = threading.Lock()  # one step at a time, whoever asks
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.step_count = 0
        self.done = False
        self.error: BaseException | None = None

    # -- stepping --------------------------------------------------------------------------------
    def step(self) -> sl.Event | None:
        """Take one optimizer step (the first call evaluates the starting point: step 0)."""
        with self._lock:
            if self.done:
                return None
            try:
                event = next(self._events)
            except StopIteration:
                self.done = True
                return None
            self.step_count = event.step
            if event.step >= self.steps:
                self.done = True
            return event

    @property
    def playing(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def play(
        self,
        listener: Callable[[sl.Event], None],
        on_stop: Callable[[], None] | None = None,
        before: Callable[[], None] | None = None,
    ) -> None:
        """Step in a background thread until paused, finished or failed; ``before`` runs first, in the thread."""
        if self.playing or self.done:
            return
        self._stop.clear()

        def loop() -> None:
            # On the CPU, torch's OpenMP pool driven from a second thread competes with the idle
            # pool of the main thread: measured 3× slower with 2 threads than with 1 on 2 cores
            # (benchmarks/widget_throughput.py). One intra-op thread while playing; restored after.
            threads = torch.get_num_threads()
            on_cpu = self.task.device.type == "cpu"
            if on_cpu:
                torch.set_num_threads(1)
            try:
                if before is not None:
                    before()
                while not self._stop.is_set():
                    event = self.step()
                    if event is None:
                        break
                    listener(event)
            except BaseException as error:  # shown by the widget; never lost in the thread
                self.error = error
            finally:
                if on_cpu:
                    torch.set_num_threads(threads)
                if on_stop is not None:
                    on_stop()

        self._thread = threading.Thread(target=loop, name="spectrallab-training", daemon=True)
        self._thread.start()

    def pause(self, timeout: float | None = 30.0) -> None:
        """Stop the background loop after the step in progress, and wait for it."""
        self._stop.set()
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout)
        self._thread = None

    def close(self) -> None:
        """Pause, end the run (its record is saved) and release the generator."""
        self.pause()
        with self._lock:
            self._events.close()
            self.done = True

    def set_lr(self, lr: float) -> None:
        for group in self.optimizer.param_groups:
            group["lr"] = lr

    # -- what the widget shows -------------------------------------------------------------------
    def spectra(self, layer: str) -> tuple[torch.Tensor, torch.Tensor]:
        """(singular values of W now, singular values of ΔW = W − W_start) for one watched layer.

        Computed where the model lives (the GPU when there is one); only the two small vectors
        travel to the CPU for drawing.
        """
        with torch.no_grad():
            W = _dense_weight(self.model.get_submodule(layer)).detach().float()
            S = torch.linalg.svdvals(W)
            dS = torch.linalg.svdvals(W - self.start_weights[layer].float())
        return S.cpu(), dS.cpu()

    def optimizer_state_numel(self) -> int | None:
        """Scalars held in optimizer state (None before the first step creates it)."""
        tensors = [
            v for state in self.optimizer.state.values() for v in state.values() if torch.is_tensor(v) and v.dim() > 0
        ]
        return sum(t.numel() for t in tensors) if tensors else None


def reference_run(scenario: Scenario, steps: int, seed: int = 0) -> Run:
    """Full-rank training on the scenario — the ghost trace — recorded once and reused from disk."""
    name = f"reference {scenario.name}"
    for run in reversed(load_runs(name=name)):
        if (
            run.config.get("steps") == steps
            and run.config.get("seed") == seed
            and run.config.get("profile") == sl.profile()
        ):
            return run
    session = TrainingSession(scenario, "full", {}, scenario.suggested_lr("full"), steps, seed=seed, name=name)
    while session.step() is not None:
        pass
    session.close()
    return session.run


def _dense_weight(module: nn.Module) -> torch.Tensor:
    if isinstance(module, sl.methods.AdaptedLinear):
        return module.effective_weight()
    return module.weight
