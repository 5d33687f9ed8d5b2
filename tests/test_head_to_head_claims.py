"""The head-to-head chapter's claims (book/head_to_head.md), checked in direction with margins.

Pre-training the tiny character-level GPT from scratch at equal rank (Zhao et al., "Sparse Spectral
Training and Inference on Euclidean and Hyperbolic Neural Networks", arXiv:2405.15481, ICML 2025):

* SST ends clearly below LoRA (validation loss), and closes at least a quarter of the LoRA → full
  gap on validation perplexity, the paper's score ``(ppl_other − ppl_SST)/(ppl_other − ppl_full)``
  (67.6 % on OPT-125M); full-rank training stays ahead of SST.
* SST explores: over the run each adapted matrix trains many of its singular directions, not the
  ``r`` it started with — the mechanism the paper credits for beating LoRA.
* Memory (``sl.memory_report``): SST's optimizer state is a fraction of full training's and equals
  its formula ``2(r(m+n) + k)`` per matrix; GaLore's optimizer state is smaller than full's while its
  gradients are exactly full training's.

Sizes are pinned to the chapter's ``ci`` settings (d_model 32, 2 layers, context 32, batch 16, rank 1,
600 steps, the per-method learning rates that ``benchmarks/head_to_head_lr.py ci`` tuned, checked
below against its file), so the numbers do not depend on the profile. Measured on the reference
machine (val loss, nats), with SST's own backward and its warm-up from the second period on: full
1.816, LoRA 2.072, SST 1.964 — SST − LoRA = −0.11 and 45 % of the LoRA → full perplexity gap closed
(at SST's tied rate 8e-2: −0.06 and 26 %; ``benchmarks/results/head_to_head_lr_ci.json`` has the
sweep's seeds 100 and 101).

What a broken SST does here (tried by hand, recorded for whoever edits these margins):
``sampling="top"`` (no exploration: always the largest current Σ) gives SST − LoRA = −0.04 nats and
18 % of the gap and visits only 6–14 directions per matrix — it fails both the quality and the
exploration assertions; ``sampling="top"`` with ``gradient="default"`` (−0.06, 27 %) and a no-op
resampling (``next_period`` patched to keep the first sample; −0.13, 53 %) fail the exploration
assertion only; ``gradient="default"`` alone passes everything (−0.12, 50 %). At this size the
ingredients of the paper's ablations (multinomial sampling, enhanced gradient) do not show in the
loss: the quality margins test that SST trains its whole spectrum and beats LoRA, the exploration
assertion that the sampling machinery runs; ranking the ingredients needs the longer runs of the
``cpu``/``gpu`` profiles.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

import spectrallab as sl
from spectrallab.experiments import head_to_head

ROOT = Path(__file__).resolve().parents[1]

SIZE = dict(n_chars=200_000, d_model=32, n_layer=2, n_head=4, context=32, eval_batches=8)
BATCH, STEPS, RANK = 16, 600, 1
TARGETS = ["qkv", "proj", "fc1", "fc2"]
# The sweep's best rates, except SST's: its sweep found 4e-2 and 8e-2 tied (mean val loss 1.9455 vs
# 1.9452 over seeds 100, 101), and at 8e-2 seed 0 swings far more (−0.06 nats, 26 %); the lower of the
# tied rates is pinned so the margins below measure SST, not the noise of an edge rate. Checked below.
LR = {"full": 5e-3, "lora": 1e-2, "sst": 4e-2}
TIED = 0.005  # nats: a pinned rate's mean sweep loss may exceed the best by this much
OPTIONS = {"full": {}, "lora": dict(rank=RANK), "sst": dict(rank=RANK, resample_every=20, warmup=4)}


@pytest.fixture(scope="module")
def task():
    task = sl.task("chargpt", **SIZE)  # every size given: the profile does not matter
    task.batch_size = BATCH
    return task


def pretrain(task, method):
    model = task.make_model(seed=0)
    sl.apply(model, method, targets=TARGETS, freeze_others=False, **OPTIONS[method])
    opt = sl.optimizer(model, lr=LR[method])
    run = sl.fit(
        model,
        task,
        STEPS,
        optimizer=opt,
        lr=LR[method],
        schedule=sl.warmup_cosine(STEPS, warmup=STEPS // 20),
        eval_every=STEPS,
        record=False,
    )
    return model, run, sl.memory_report(model, opt)  # after the last step: gradients and moments present


@pytest.fixture(scope="module")
def trained(task):
    return {method: pretrain(task, method) for method in ("full", "lora", "sst")}


def gap_closed(ppl_full, ppl_other, ppl_sst):
    return (ppl_other - ppl_sst) / (ppl_other - ppl_full)


def test_gap_closed_reproduces_the_papers_numbers():
    """The score as the paper computes it, on its own table (OPT-125M, LLaMA-1.3B vs LoRA)."""
    assert gap_closed(23.50, 34.23, 26.98) == pytest.approx(0.676, abs=5e-4)
    assert gap_closed(14.54, 16.50, 14.59) == pytest.approx(0.974, abs=5e-4)


def test_sst_beats_lora_and_closes_a_quarter_of_the_gap(trained):
    loss = {m: run.final("val_loss") for m, (_, run, _) in trained.items()}
    ppl = {m: run.final("perplexity") for m, (_, run, _) in trained.items()}
    assert loss["sst"] <= loss["lora"] - 0.05, loss  # measured: −0.10 nats
    assert loss["full"] <= loss["sst"] - 0.05, loss  # full rank stays ahead: −0.15
    assert ppl["lora"] - ppl["full"] > 0.5, ppl  # a gap worth a ratio (1.8 measured)
    assert gap_closed(ppl["full"], ppl["lora"], ppl["sst"]) >= 0.25, ppl  # measured: 0.43


def test_sst_explores_many_directions(trained):
    """Each SST matrix has trained far more than its r starting directions over the 30 periods."""
    model = trained["sst"][0]
    for name, layer in sl.adapted_layers(model).items():
        periods = [p for p in layer.history if p["step"] < STEPS]  # the draw at the last step never trains
        visited = {i for p in periods for i in p["active"]}
        assert len(periods) >= STEPS // 20, (name, len(periods))  # a new sample every period
        # of k = 32: about 17–23 per matrix over three seeds; "top" sampling visits 6–14
        assert len(visited) >= 12 * RANK, (name, sorted(visited))


def test_memory_sst_and_galore(task, trained):
    state = {m: report.optimizer_state - report.optimizer_step_counters for m, (_, _, report) in trained.items()}
    assert state["sst"] <= 0.4 * state["full"], state  # measured: 0.29
    sst_part = trained["sst"][2].methods["sst"]
    shapes = [(layer.out_features, layer.in_features) for layer in sl.adapted_layers(trained["sst"][0]).values()]
    assert sst_part.measured.optimizer_state == 4 * sum(2 * (RANK * (m + n) + min(m, n)) for m, n in shapes)
    assert sst_part.measured.optimizer_state <= 0.1 * trained["full"][2].methods["full"].measured.optimizer_state

    # GaLore: one training step is enough to see where its memory goes.
    model = task.make_model(seed=0)
    sl.apply(model, "galore", targets=TARGETS, rank=RANK, update_proj_gap=50)
    opt = sl.optimizer(model, lr=8e-2)
    task.loss(model, task.batch("train", BATCH, torch.Generator().manual_seed(0))).backward()
    opt.step()
    report = sl.memory_report(model, opt)
    full = trained["full"][2]
    assert report.gradients == full.gradients > 0  # gradients stay full size
    assert report.methods["galore"].measured.gradients == full.methods["full"].measured.gradients
    galore_state = report.optimizer_state - report.optimizer_step_counters
    assert galore_state <= 0.4 * state["full"], (galore_state, state["full"])


def test_pins_are_the_chapters_ci_settings():
    """The sizes above are the chapter's ci settings (spectrallab.experiments.head_to_head)."""
    ci = head_to_head("ci")
    assert {**ci.task_size, "eval_batches": 8} == SIZE
    assert (ci.batch_size, ci.steps, ci.rank, list(ci.targets)) == (BATCH, STEPS, RANK, TARGETS)
    assert all(ci.options(m) == OPTIONS[m] for m in OPTIONS)


@pytest.mark.parametrize("profile", ["ci", "cpu"])
def test_the_chapters_rates_are_the_sweeps_best(profile):
    """One source of truth: the race's tuned rates (``HeadToHead.lr``, which the chapter and
    ``python -m spectrallab.pretrain`` read) are benchmarks/head_to_head_lr.py's best for the profile,
    measured at exactly the chapter's settings (a changed setting makes the sweep stale)."""
    sweep = json.loads((ROOT / "benchmarks" / "results" / f"head_to_head_lr_{profile}.json").read_text())
    assert sweep["complete"], "the sweep did not finish: rerun benchmarks/head_to_head_lr.py --resume"
    assert sweep["settings"] == head_to_head(profile).as_dict(), "settings changed since the sweep: rerun it"
    race = head_to_head(profile)
    assert {m: race.lr(m) for m in race.methods} == {m: float(lr) for m, lr in sweep["best"].items()}
    if profile == "ci":  # this file's pins: the sweep's best, or tied with it within TIED nats
        for method, lr in LR.items():
            table = sweep["table"][method]
            best = table[str(sweep["best"][method])]["mean_val_loss"]
            assert table[str(lr)]["mean_val_loss"] <= best + TIED, (method, lr, sweep["best"][method])
