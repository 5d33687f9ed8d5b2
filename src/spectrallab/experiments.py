"""Experiment setups that a chapter and a benchmark share, so that both run exactly the same thing.

A chapter's claim check rests on settings — sizes, steps, periods, schedule — and on learning rates
that a sweep tuned *at those settings*. When the sweep lives in ``benchmarks/`` (it takes far longer
than a chapter's budget) and the experiment in the chapter, the two drift apart unless they read
one definition. That definition lives here, in the library, since chapters import the library and
nothing imports a chapter.

* :func:`head_to_head` — the pre-training race of ``book/head_to_head.md``: the tiny character GPT
  from scratch, the six pre-training methods at the same rank, their periods scaled to the run.
  ``benchmarks/head_to_head_lr.py`` tunes each method's learning rate on it.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import nn

from .apply import apply
from .memory import MemoryReport, memory_report
from .optim import optimizer
from .profiles import PROFILES, profile as active_profile
from .runs import Run
from .tasks import CharGPT, task
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
    task_size: dict[str, Any]       # CharGPT's sizes, all given: the active profile does not change them
    batch_size: int                 # training and evaluation batch
    rank: int
    steps: int
    sst_period: int                 # SST: resample every T3 steps ...
    sst_warmup: int                 # ... with this LR warm-up after each resampling
    relora_period: int              # ReLoRA*: merge and restart every T steps
    galore_gap: int                 # GaLore: refresh the projection every T steps
    seeds: tuple[int, ...]          # the seeds the chapter runs (the sweep uses others)
    delta: float = 0.03             # SLTrain's density of S (its default, the paper's value)
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
        return {**fields, "eval_every": self.eval_every, "warmup": self.warmup,
                "options": {m: self.options(m) for m in self.methods}}

    def make_task(self) -> CharGPT:
        made = task("chargpt", **self.task_size, eval_batches=8)
        made.batch_size = self.batch_size
        return made

    def options(self, method: str) -> dict[str, Any]:
        """The keyword options of ``sl.apply`` for ``method`` (besides ``targets``, ``freeze_others``)."""
        if method not in self.methods:
            raise ValueError(f"head_to_head: method {method!r} is not a contender; contenders: {', '.join(self.methods)}")
        r = self.rank
        return {"full": {},
                "lora": dict(rank=r),
                "relora": dict(rank=r, reset_every=self.relora_period, restart_warmup=self.relora_period // 10,
                               prune_ratio=0.99),
                "galore": dict(rank=r, update_proj_gap=self.galore_gap, scale=0.25),
                "sltrain": dict(rank=r, sparsity=self.delta),
                "sst": dict(rank=r, resample_every=self.sst_period, warmup=self.sst_warmup)}[method]

    def schedule(self):
        return warmup_cosine(self.steps, warmup=self.warmup)

    def pretrain(self, task: CharGPT, method: str, lr: float, seed: int = 0, *,
                 options: dict[str, Any] | None = None) -> tuple[Run, MemoryReport, nn.Module]:
        """Train one contender from scratch; return its run, the memory report taken right after the
        last step (``fit`` zeroes gradients at the *start* of a step, so the last step's gradients and
        Adam's moments are still there) and the model. ``options`` replaces :meth:`options`."""
        if not (isinstance(lr, (int, float)) and lr > 0):
            raise ValueError(f"head_to_head: lr={lr!r} is outside the allowed range (0, inf)")
        opts = dict(self.options(method) if options is None else options)
        if method == "sst":
            opts.setdefault("seed", seed)
        model = task.make_model(seed=seed)          # also seeds the global generator the factors come from
        apply(model, method, targets=list(self.targets), freeze_others=False, **opts)
        opt = optimizer(model, lr=lr)
        if torch.cuda.is_available():
            torch.cuda.reset_peak_memory_stats()    # so that the report's CUDA peak is this run's
        run = fit(model, task, self.steps, optimizer=opt, lr=lr, schedule=self.schedule(), eval_every=self.eval_every,
                  seed=seed, name=f"{LABELS[method]} lr={lr:g} seed={seed}", record=False, progress="off")
        return run, memory_report(model, opt), model


_HEAD_TO_HEAD = {
    # ci: seconds per run, so the chapter fits the tests' 45 s; d 32, r 1 (3 % of d)
    "ci": dict(task_size=dict(n_chars=200_000, d_model=32, n_layer=2, n_head=4, context=32), batch_size=16,
               rank=1, steps=600, sst_period=20, sst_warmup=4, relora_period=100, galore_gap=50, seeds=(0,)),
    # cpu: the cpu profile's model (d 64, r 2) within a reader's 3 minutes on 2 cores
    "cpu": dict(task_size=dict(n_chars=1_000_000, d_model=64, n_layer=2, n_head=4, context=64), batch_size=32,
                rank=2, steps=400, sst_period=40, sst_warmup=4, relora_period=100, galore_gap=50, seeds=(0, 1)),
    # gpu: the gpu profile's model, r/d = 32/384 ≈ 8.3 % (the paper's 64/768 on OPT-125M), SST's and
    # GaLore's periods from their papers
    "gpu": dict(task_size=dict(n_chars=3_500_000, d_model=384, n_layer=6, n_head=6, context=256), batch_size=64,
                rank=32, steps=8000, sst_period=200, sst_warmup=20, relora_period=1000, galore_gap=200,
                seeds=(0, 1, 2)),
}


def head_to_head(profile: str | None = None) -> HeadToHead:
    """The head-to-head race's settings for ``profile`` (default: the active one)."""
    chosen = active_profile() if profile is None else profile
    if chosen not in PROFILES:
        raise ValueError(f"head_to_head: profile {chosen!r} is not one of {', '.join(PROFILES)}")
    return HeadToHead(profile=chosen, **_HEAD_TO_HEAD[chosen])


__all__ = ["HeadToHead", "head_to_head", "METHODS", "LABELS"]
