"""The claims of book/sst_inference.md (pruning the spectrum of a trained tiny GPT), checked with margins.

The SST paper (Zhao et al., "Sparse Spectral Training and Inference on Euclidean and Hyperbolic Neural
Networks", ICML 2025, Appendix G "Singular Value Pruning"; as summaries report it: SST-trained models
retain lower perplexity at high pruning ratios, their information concentrated in fewer singular values).
Here, the tiny character-level GPT is pre-trained at full rank and with SST, then every block matrix
(qkv, proj, fc1, fc2) keeps the top fraction of its singular values (``sl.truncate(rank=...)``):

* the chapter's from-scratch cut (its cell defining ``best_rank_r`` and ``prune_spectrum``, executed
  here) equals ``sl.truncate`` on trained layers: ``best_rank_r`` the default cut (dense and SST),
  ``prune_spectrum`` SST's ``method="spectral"``;
* keeping all ``k`` singular values changes nothing (logits, perplexity), for SST and dense models;
* pruning hurts: at 12.5 % kept the perplexity is clearly above the unpruned one, for both;
* the curves cross, in both seeds: full rank is ahead unpruned, SST far ahead at 12.5 % and 6.25 % kept,
  and relative to its own unpruned perplexity SST loses much less at 25 % and 12.5 % kept;
* SST's matrices hold more of ``‖W‖_F²`` in the top quarter of their spectrum;
* the factors store ``r(m + n)`` numbers a matrix (``sl.memory_report``), fewer than dense below ¾ kept.

Sizes are pinned to the chapter's ``ci`` settings (d_model 32, 2 layers, context 32, batch 16, SST rank 1,
period 20 with warm-up 4, 600 steps, lr 1e-2 full / 4e-2 SST, the head-to-head chapter's rates), seeds 0
and 1, so the numbers do not depend on the profile. Measured on the reference machine (perplexity on 32
fixed windows; seed 0 / seed 1):

    kept      full rank       SST (default cut)   SST cut by its own Σ
    100 %     6.33 / 6.14     7.43 / 7.22
    25 %     12.2 / 10.5      8.17 / 8.05         16.4 / 8.96
    12.5 %   46.4 / 19.8     12.2 / 9.04          16.9 / 9.82
    6.25 %   54.1 / 35.4     13.5 / 9.41          15.9 / 13.4

top-quarter energy share (mean of the 8 matrices): full 81.1 % / 80.9 %, SST 89.2 % / 89.2 % (init 49 %).
The default cut of a trained SST layer is an SVD of its weight: after 600 steps there has been no re-SVD
(a round is ⌈32/1⌉ = 32 periods of 20 steps), ``max |UᵀU − I|`` is 0.3–0.75, and cutting by SST's own Σ
(``method="spectral"``, the last column) is worse.

What is *not* asserted, and why. At 25 % kept SST is lower in both seeds, but by 0.67× and 0.77× only.
The chapter's 10 % criterion ("stays within 10 % of its unpruned perplexity down to f kept") gives
37.5 % for SST against 50 % for full rank in seed 0: one step of the grid, too coarse to assert. The
cut by SST's own Σ is not asserted against full rank: it depends on how far the factors drifted, which
the run's schedule sets. In the ``cpu`` profile (d_model 64, rank 2, 400 steps, swept rates; measured
once with the chapter) SST was again lower at 12.5 % and 6.25 % kept in both seeds (11.1 / 10.6 against
12.8 / 17.7, and 13.7 / 11.5 against 60.2 / 37.5) while full rank was lower at 25 % and above, but the
full-rank model had the *higher* top-quarter shares (85–86 % against 79–81 %): "SST's spectra are more
concentrated" is a claim about the pinned size only. The assertions below are about the pinned size,
where they hold with margins in both seeds.

What a broken truncation does here (tried by patching ``sl.truncate``): keeping the *smallest* singular
values instead of the largest fails the snippet, the crossing and the relative-loss checks (both models
end near perplexity 15 at 12.5 % kept); factors without Σ (``B = U_r``) fail the snippet, the full-rank
exactness, the pruning and the crossing checks; the old default (drifted SST layers cut by their own Σ)
fails the snippet and the relative-loss checks.
"""

from __future__ import annotations

import copy
import math

import jupytext
import numpy as np
import pytest
import torch

import spectrallab as sl
from conftest import ROOT
from spectrallab.linalg import energy

CHAPTER = ROOT / "book" / "sst_inference.md"
MARKER = "def best_rank_r("
SIZE = dict(n_chars=200_000, d_model=32, n_layer=2, n_head=4, context=32, eval_batches=8)
D, BATCH, STEPS, RANK = 32, 16, 600, 1
TARGETS = ["qkv", "proj", "fc1", "fc2"]
LR = {"full": 1e-2, "sst": 4e-2}
SEEDS = (0, 1)
VAL_BATCHES = 32


@pytest.fixture(scope="module")
def task():
    task = sl.task("chargpt", **SIZE)  # every size given: the profile does not matter
    task.batch_size = BATCH
    return task


@pytest.fixture(scope="module")
def trained(task):
    models = {}
    for method in ("full", "sst"):
        for seed in SEEDS:
            model = task.make_model(seed=seed)
            options = {} if method == "full" else dict(rank=RANK, resample_every=20, warmup=4, seed=seed)
            sl.apply(model, method, targets=TARGETS, freeze_others=False, **options)
            sl.fit(
                model,
                task,
                STEPS,
                lr=LR[method],
                schedule=sl.warmup_cosine(STEPS, warmup=STEPS // 20),
                seed=seed,
                eval_every=STEPS,
                record=False,
                progress="off",
            )
            models[method, seed] = model.eval()
    return models


def perplexity(task, model) -> float:
    return math.exp(sl.window_losses(model, task, VAL_BATCHES).mean())  # the chapter's fixed windows


def pruned(model, r):
    return sl.truncate(copy.deepcopy(model), rank=r, targets=TARGETS).eval()


@pytest.fixture(scope="module")
def table(task, trained):
    return {
        (m, s, r): perplexity(task, model if r == "none" else pruned(model, r))
        for (m, s), model in trained.items()
        for r in ("none", D, D // 4, D // 8, D // 16)
    }


def snippet() -> dict:
    """The chapter's from-scratch cell, executed (it needs torch only)."""
    cells = [c.source for c in jupytext.read(CHAPTER).cells if c.cell_type == "code" and MARKER in c.source]
    assert len(cells) == 1, f"expected one code cell containing {MARKER!r}, found {len(cells)}"
    namespace = {"torch": torch}
    exec(compile(cells[0], str(CHAPTER), "exec"), namespace)
    return namespace


def test_the_from_scratch_cut_equals_the_library(trained):
    ns = snippet()
    for method in ("full", "sst"):
        model = trained[method, 0]
        for name in ("blocks.0.attn.qkv", "blocks.1.mlp.fc2"):
            layer = model.get_submodule(name)
            for r in (1, 5, D // 2):
                # the default cut: Eckart–Young on the (effective) weight, SST's drifted factors included
                by_hand = ns["best_rank_r"](layer.effective_weight().detach(), r)
                ours = sl.truncate(copy.deepcopy(layer), rank=r).effective_weight()
                torch.testing.assert_close(ours, by_hand, rtol=1e-4, atol=1e-5)
                assert float((by_hand - layer.effective_weight().detach()).norm()) > 0  # a real cut, not the weight
                if method == "sst":  # the paper's cut by SST's own Σ
                    own = sl.truncate(copy.deepcopy(layer), rank=r, method="spectral").effective_weight()
                    torch.testing.assert_close(own, ns["prune_spectrum"](*layer.factors(), r), rtol=1e-4, atol=1e-5)


def test_keeping_every_singular_value_is_exact(task, trained, table):
    x = task.batch("val", 4, torch.Generator().manual_seed(0))[0]
    for (method, seed), model in trained.items():
        with torch.no_grad():
            before, after = model(x), pruned(model, D)(x)
        assert float((after - before).abs().max() / before.abs().max()) < 1e-4, (method, seed)
        assert table[method, seed, D] == pytest.approx(table[method, seed, "none"], rel=1e-4)


def test_pruning_to_an_eighth_clearly_hurts(table):
    for method in ("full", "sst"):
        for seed in SEEDS:
            # measured: full 7.3× and 3.2×, SST 1.64× and 1.25×
            assert table[method, seed, D // 8] > 1.1 * table[method, seed, D], (method, seed)


def test_the_curves_cross_full_ahead_unpruned_sst_ahead_when_heavily_pruned(table):
    for seed in SEEDS:
        assert table["full", seed, D] < 0.95 * table["sst", seed, D], seed  # measured 0.85
        for r in (D // 8, D // 16):  # 12.5 % and 6.25 % kept
            assert table["sst", seed, r] < 0.75 * table["full", seed, r], (seed, r)  # measured 0.25–0.46


def test_sst_loses_less_of_its_own_perplexity(table):
    """Relative to each model's unpruned perplexity: SST's factor at 25 % and 12.5 % kept is well below full's."""
    for seed in SEEDS:
        for r in (D // 4, D // 8):
            loss = {m: table[m, seed, r] / table[m, seed, D] for m in ("full", "sst")}
            assert loss["sst"] < 0.75 * loss["full"], (seed, r, loss)  # measured 0.22–0.66


def test_sst_spectra_hold_more_energy_in_their_top_quarter(trained):
    for seed in SEEDS:
        share = {
            m: np.mean(
                [float(energy(sl.spectrum(layer), D // 4)) for layer in sl.adapted_layers(trained[m, seed]).values()]
            )
            for m in ("full", "sst")
        }
        assert share["sst"] >= share["full"] + 0.04, (seed, share)  # measured +0.08 in both seeds


def test_the_factors_store_r_times_m_plus_n(trained):
    model = trained["sst", 0]
    shapes = [(layer.out_features, layer.in_features) for layer in sl.adapted_layers(model).values()]
    for r, smaller in ((D, False), (3 * D // 4, False), (D // 2, True), (D // 8, True)):
        part = sl.memory_report(pruned(model, r)).methods["truncated"]
        stored = part.measured.parameters // part.bytes_per_scalar
        assert stored == sum(r * (m + n) for m, n in shapes) and part.matches()["parameters"]
        assert (stored < sum(m * n for m, n in shapes)) is smaller, (r, stored)
