"""Experiment setups that a chapter and a benchmark share, so that both run exactly the same thing.

A chapter's claim check rests on settings — sizes, steps, periods, schedule — and on learning rates
that a sweep tuned *at those settings*. When the sweep lives in ``benchmarks/`` (it takes far longer
than a chapter's budget) and the experiment in the chapter, the two drift apart unless they read
one definition. That definition lives here, in the library, since chapters import the library and
nothing imports a chapter.

* :func:`head_to_head` — the pre-training race of ``book/head_to_head.md``: the tiny character GPT
  from scratch, the six pre-training methods at the same rank, their periods scaled to the run.
  ``benchmarks/head_to_head_lr.py`` tunes each method's learning rate on it.
* :func:`window_losses` and :func:`paired_difference` — the paired measurement several chapters'
  claim checks rest on (``head_to_head.md``, ``sst.md``, ``sst_inference.md``): every model scored on
  the same fixed validation windows, and the window-by-window difference of two models with its
  standard error, so that a verdict separates a real difference from the noise of measuring it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from .apply import apply
from .memory import MemoryReport, memory_report
from .optim import optimizer
from .profiles import PROFILES
from .profiles import profile as active_profile
from .runs import Run
from .tasks import CharGPT, task
from .tasks.base import Task
from .train import fit, warmup_cosine

METHODS = ("full", "lora", "relora", "galore", "sltrain", "sst")
LABELS = {"full": "full", "lora": "LoRA", "relora": "ReLoRA*", "galore": "GaLore", "sltrain": "SLTrain", "sst": "SST"}


@dataclass(frozen=True)
class HeadToHead:
    """One profile's settings of the head-to-head race; :meth:`pretrain` runs one contender.

    A *seed* fixes everything random in a run: the model's initialization (``make_model(seed)``,
    which also seeds torch's global generator, from which LoRA's, ReLoRA*'s and SLTrain's factors and
    SLTrain's support are drawn at ``apply``), SST's sampling (its ``seed`` option) and the order of
    the training batches (``fit``'s ``seed``).
    """

    profile: str
    task_size: dict[str, Any]  # CharGPT's sizes, all given: the active profile does not change them
    batch_size: int  # training and evaluation batch
    rank: int
    steps: int
    sst_period: int  # SST: resample every T3 steps ...
    sst_warmup: int  # ... with this LR warm-up after each resampling
    relora_period: int  # ReLoRA*: merge and restart every T steps
    galore_gap: int  # GaLore: refresh the projection every T steps
    seeds: tuple[int, ...]  # the seeds the chapter runs (the sweep uses others)
    delta: float = 0.03  # SLTrain's density of S (its default, the paper's value)
    targets: tuple[str, ...] = ("qkv", "proj", "fc1", "fc2")
    methods: tuple[str, ...] = field(default=METHODS)

    @property
    def eval_every(self) -> int:
        return self.steps // 10

    @property
    def warmup(self) -> int:
        """Steps of the run's linear LR warm-up (then cosine decay to 10 %)."""
        return self.steps // 20

    def as_dict(self) -> dict[str, Any]:
        """Every setting as plain JSON types (lists for tuples), the per-method options included: what
        a sweep records beside its results, so a changed setting shows as a stale sweep."""
        fields = {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}
        return {
            **fields,
            "eval_every": self.eval_every,
            "warmup": self.warmup,
            "options": {m: self.options(m) for m in self.methods},
        }

    def make_task(self) -> CharGPT:
        made = task("chargpt", **self.task_size, eval_batches=8)
        made.batch_size = self.batch_size
        return made

    def options(self, method: str) -> dict[str, Any]:
        """The keyword options of ``sl.apply`` for ``method`` (besides ``targets``, ``freeze_others``)."""
        if method not in self.methods:
            raise ValueError(
                f"head_to_head: method {method!r} is not a contender; contenders: {', '.join(self.methods)}"
            )
        r = self.rank
        return {
            "full": {},
            "lora": dict(rank=r),
            "relora": dict(
                rank=r, reset_every=self.relora_period, restart_warmup=self.relora_period // 10, prune_ratio=0.99
            ),
            "galore": dict(rank=r, update_proj_gap=self.galore_gap, scale=0.25),
            "sltrain": dict(rank=r, sparsity=self.delta),
            "sst": dict(rank=r, resample_every=self.sst_period, warmup=self.sst_warmup),
        }[method]

    def schedule(self):
        return warmup_cosine(self.steps, warmup=self.warmup)

    def lr(self, method: str) -> float:
        """``method``'s learning rate in this race: ``benchmarks/head_to_head_lr.py``'s best at exactly
        these settings (``tests/test_head_to_head_claims.py`` checks it against the sweep's file). No
        GPU sweep has been recorded: the ``gpu`` profile takes the ``cpu`` rate divided by four (its
        model is six times wider and its runs twenty times longer) — a guess, not a tuned rate."""
        self.options(method)  # a clear error for a method that is not a contender
        if self.profile == "gpu":
            return TUNED_LR["cpu"][method] / 4
        return TUNED_LR[self.profile][method]

    def pretrain(
        self, task: CharGPT, method: str, lr: float, seed: int = 0, *, options: dict[str, Any] | None = None
    ) -> tuple[Run, MemoryReport, nn.Module]:
        """Train one contender from scratch; return its run, the memory report taken right after the
        last step (``fit`` zeroes gradients at the *start* of a step, so the last step's gradients and
        Adam's moments are still there) and the model. ``options`` replaces :meth:`options`."""
        if not (isinstance(lr, (int, float)) and lr > 0):
            raise ValueError(f"head_to_head: lr={lr!r} is outside the allowed range (0, inf)")
        opts = dict(self.options(method) if options is None else options)
        if method == "sst":
            opts.setdefault("seed", seed)
        model = task.make_model(seed=seed)  # also seeds the global generator the factors come from
        apply(model, method, targets=list(self.targets), freeze_others=False, **opts)
        opt = optimizer(model, lr=lr)
        if torch.cuda.is_available():
            torch.cuda.reset_peak_memory_stats()  # so that the report's CUDA peak is this run's
        run = fit(
            model,
            task,
            self.steps,
            optimizer=opt,
            lr=lr,
            schedule=self.schedule(),
            eval_every=self.eval_every,
            seed=seed,
            name=f"{LABELS[method]} lr={lr:g} seed={seed}",
            record=False,
            progress="off",
        )
        return run, memory_report(model, opt), model


# Tuned by benchmarks/head_to_head_lr.py PROFILE at exactly the settings below: each file's "best".
TUNED_LR = {
    "ci": {"full": 5e-3, "lora": 1e-2, "relora": 4e-2, "galore": 1.6e-1, "sltrain": 4e-2, "sst": 8e-2},
    "cpu": {"full": 2.5e-3, "lora": 2e-2, "relora": 2e-2, "galore": 8e-2, "sltrain": 2e-2, "sst": 4e-2},
}

_HEAD_TO_HEAD = {
    # ci: seconds per run, so the chapter fits the tests' 45 s; d 32, r 1 (3 % of d)
    "ci": dict(
        task_size=dict(n_chars=200_000, d_model=32, n_layer=2, n_head=4, context=32),
        batch_size=16,
        rank=1,
        steps=600,
        sst_period=20,
        sst_warmup=4,
        relora_period=100,
        galore_gap=50,
        seeds=(0,),
    ),
    # cpu: the cpu profile's model (d 64, r 2) within a reader's 3 minutes on 2 cores
    "cpu": dict(
        task_size=dict(n_chars=1_000_000, d_model=64, n_layer=2, n_head=4, context=64),
        batch_size=32,
        rank=2,
        steps=400,
        sst_period=40,
        sst_warmup=4,
        relora_period=100,
        galore_gap=50,
        seeds=(0, 1),
    ),
    # gpu: the gpu profile's model, r/d = 32/384 ≈ 8.3 % (the paper's 64/768 on OPT-125M), SST's and
    # GaLore's periods from their papers
    "gpu": dict(
        task_size=dict(n_chars=3_500_000, d_model=384, n_layer=6, n_head=6, context=256),
        batch_size=64,
        rank=32,
        steps=8000,
        sst_period=200,
        sst_warmup=20,
        relora_period=1000,
        galore_gap=200,
        seeds=(0, 1, 2),
    ),
}


def head_to_head(profile: str | None = None) -> HeadToHead:
    """The head-to-head race's settings for ``profile`` (default: the active one)."""
    chosen = active_profile() if profile is None else profile
    if chosen not in PROFILES:
        raise ValueError(f"head_to_head: profile {chosen!r} is not one of {', '.join(PROFILES)}")
    return HeadToHead(profile=chosen, **_HEAD_TO_HEAD[chosen])


VALIDATION_SEED = 4321  # the fixed windows' seed: any fixed value; this one is what the chapters have always used


@torch.no_grad()
def window_losses(
    model: nn.Module, task: Task, windows: int, *, batch_size: int | None = None, seed: int = VALIDATION_SEED
) -> np.ndarray:
    """The loss of ``model`` on each of ``windows`` fixed validation batches ("windows") of ``task``.

    Entry ``i`` of the returned array (shape ``(windows,)``, float64) is ``float(task.loss(model, b_i))``,
    where ``b_0, b_1, …, b_{windows-1}`` are drawn one after another by ``task.batch("val", batch_size,
    g)`` from a single ``torch.Generator`` ``g`` seeded with ``seed`` afresh on every call. So every
    model — and every call — is scored on the very same windows, and two models' arrays can be
    subtracted window by window (:func:`paired_difference`): the windows' own difficulty cancels,
    which a difference of two separately drawn validation losses would leave in as noise.

    ``batch_size`` defaults to the task's. The model is evaluated in eval mode without gradients, and
    its train/eval mode is put back afterwards.
    """
    if isinstance(windows, bool) or not isinstance(windows, int) or windows < 1:
        raise ValueError(f"window_losses: windows={windows!r} is outside the allowed range [1, inf) (an int)")
    batch_size = task.batch_size if batch_size is None else batch_size
    was_training = model.training
    model.eval()
    try:
        g = torch.Generator().manual_seed(seed)
        return np.array([float(task.loss(model, task.batch("val", batch_size, g))) for _ in range(windows)])
    finally:
        model.train(was_training)


@dataclass(frozen=True)
class PairedDifference:
    """``a − b`` measured on shared windows (:func:`paired_difference`).

    * ``mean``: the mean over the windows of ``d``, where ``d[i]`` is the difference on window ``i``
      averaged over the seeds;
    * ``two_se``: two standard errors of that mean, ``2 · std(d, ddof=1) / √windows`` — the noise of
      *measuring* on this many windows (another seed's training noise is only in ``per_seed``);
    * ``per_seed``: for each seed, the mean over the windows of its own difference;
    * ``windows``: how many windows.
    """

    mean: float
    two_se: float
    per_seed: tuple[float, ...]
    windows: int

    def verdict(self, above: str, below: str, *, unanimous: bool = False, otherwise: str = "indistinguishable") -> str:
        """``above`` if ``mean > two_se``, ``below`` if ``mean < −two_se``, else ``otherwise``. With
        ``unanimous``, a side also needs every seed's own difference to have its sign."""
        if self.mean > self.two_se and (not unanimous or all(d > 0 for d in self.per_seed)):
            return above
        if self.mean < -self.two_se and (not unanimous or all(d < 0 for d in self.per_seed)):
            return below
        return otherwise


def paired_difference(a: Sequence[np.ndarray] | np.ndarray, b: Sequence[np.ndarray] | np.ndarray) -> PairedDifference:
    """``a − b`` window by window, paired by seed: ``a[s]`` and ``b[s]`` are two models' :func:`window_losses`
    for seed ``s`` (one array each, or a list of them over the seeds). The per-window differences are
    averaged over the seeds first; the mean and standard error are then taken over the windows (see
    :class:`PairedDifference`). Positive: ``a`` has the higher loss, so ``b`` is better."""
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if a.ndim == 1:
        a = a[None]
    if b.ndim == 1:
        b = b[None]
    if a.shape != b.shape or a.ndim != 2:
        raise ValueError(
            f"paired_difference: a and b must be the same seeds' window losses, got shapes {a.shape} and {b.shape}"
        )
    if a.shape[1] < 2:
        raise ValueError(
            f"paired_difference: {a.shape[1]} window(s) is outside the allowed range [2, inf) "
            "(a standard error needs two)"
        )
    diff = np.mean([x - y for x, y in zip(a, b)], axis=0)
    return PairedDifference(
        mean=float(diff.mean()),
        two_se=float(2 * diff.std(ddof=1) / math.sqrt(len(diff))),
        per_seed=tuple(float((x - y).mean()) for x, y in zip(a, b)),
        windows=len(diff),
    )


__all__ = [
    "HeadToHead",
    "head_to_head",
    "METHODS",
    "LABELS",
    "window_losses",
    "paired_difference",
    "PairedDifference",
    "VALIDATION_SEED",
]
