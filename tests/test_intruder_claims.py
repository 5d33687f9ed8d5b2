"""The intruder chapter's claims (book/intruder.md), checked in direction with margins.

Shuttleworth, Andreas, Torralba & Sharma 2024 (arXiv:2410.21228): LoRA fine-tuning produces *intruder
dimensions* — new, high-ranking singular vectors of the fine-tuned weight with no close pretrained
match (max |cos| < ε) — and full fine-tuning does not. Here: the digits MLP pretrained on upright
digits, fine-tuned on digits turned by 90°, fully (lr 1e-3) or with LoRA at ranks 1, 2, 4 (lr 1e-2,
α = r), which reach comparable accuracy; measured on fc1 and fc2 with left singular vectors, ε = 0.5.

What holds at this scale, and is asserted:

* LoRA's *largest* fine-tuned direction is an intruder (best pretrained match < ε in fc1 or fc2;
  required for all but one rank, since r=2 sits at 0.49, and < 0.6 for every rank), full
  fine-tuning's is not (best match > 0.7 in both layers);
* LoRA's top singular value is a spike, > 2× the pretrained σ₁; full fine-tuning's stays < 1.3×;
* intruders among the top 5 singular vectors: at least one in all but one LoRA run, none for full
  fine-tuning;
* scaling LoRA's intruders down (the paper's intervention) reduces forgetting of the upright digits.

What does not hold here and is *not* asserted: the paper's count at k = 10 separating the methods.
On these 128-wide layers the top 10 reach a nearly-degenerate part of the pretrained spectrum that
full fine-tuning mixes, so its k = 10 count is as large as LoRA's (chapter, "Intruders against
the threshold ε and the depth k").

Measured on the reference machine (seed 0): best match of u′₁ — LoRA r=1, 2, 4: 0.41, 0.49, 0.45
(fc2), full: 0.76 (fc1) / 0.95 (fc2); σ′₁/σ₁ — LoRA 2.85, 3.26, 3.22, full 1.06; top-5 intruders —
LoRA 1, 1, 1, full 0; at k = 10 — LoRA 1, 1, 2, full 2. Scaling LoRA r=4's intruders by 0.5: upright
validation loss 23.1 → 9.7.
"""

from __future__ import annotations

import copy

import pytest
import torch

import spectrallab as sl
from conftest import PRETRAIN_STEPS
from spectrallab.linalg import intruder_dimensions

STEPS, K, EPSILON = 300, 10, 0.5
LR = {"full": 1e-3, "lora": 1e-2}
RANKS = (1, 2, 4)
TARGETS = ["fc1", "fc2", "fc3"]
MEASURED = ["fc1", "fc2"]  # fc3 has 10 outputs: its left singular vectors span the whole output space


@pytest.fixture(scope="module")
def finetuned(rotated_digits):
    """{"full" | rank: (model, intruders per measured layer)} and the pretrained base."""
    task, rotated = rotated_digits
    base = sl.pretrained(task, steps=PRETRAIN_STEPS)
    results = {}
    for key in ("full", *RANKS):
        model = sl.pretrained(task, steps=PRETRAIN_STEPS)
        torch.manual_seed(0)
        if key != "full":
            sl.apply(model, "lora", rank=key, targets=TARGETS)
        sl.fit(model, rotated, STEPS, lr=LR["full" if key == "full" else "lora"], record=False)
        found = {
            n: intruder_dimensions(base.get_submodule(n), model.get_submodule(n), k=K, epsilon=EPSILON)
            for n in MEASURED
        }
        results[key] = (model, found)
    return base, results


def top_match(found) -> float:
    """The best pretrained match of the largest fine-tuned direction, the lower over the layers."""
    return min(f.max_similarity[0].item() for f in found.values())


def spike(base, found) -> float:
    """σ′₁ / σ₁(pretrained), the larger over the layers."""
    return max(f.singular_values[0].item() / sl.spectrum(base.get_submodule(n))[0].item() for n, f in found.items())


def top5(found) -> int:
    return sum(int((f.max_similarity[:5] < EPSILON).sum()) for f in found.values())


def test_lora_top_direction_is_an_intruder_and_full_finetunings_is_not(finetuned):
    base, results = finetuned
    matches = {key: top_match(found) for key, (_, found) in results.items()}
    # r=2 sits at 0.49, close to ε: require ε for most ranks and a clear gap for every rank
    assert sum(matches[r] < EPSILON for r in RANKS) >= len(RANKS) - 1, matches
    assert all(matches[r] < 0.6 for r in RANKS), matches
    assert matches["full"] > 0.7, matches
    # the gap between the two is wide, not a threshold accident
    assert matches["full"] - max(matches[r] for r in RANKS) > 0.2, matches


def test_lora_intruder_is_a_spike_above_the_pretrained_spectrum(finetuned):
    base, results = finetuned
    spikes = {key: spike(base, found) for key, (_, found) in results.items()}
    for r in RANKS:
        assert spikes[r] > 2.0, spikes
    assert spikes["full"] < 1.3, spikes
    # and the spike *is* the intruder: position 0 of the fine-tuned spectrum, in some measured layer
    for r in RANKS:
        assert any(f.indices[:1].tolist() == [0] for f in results[r][1].values()), r


def test_intruders_in_the_top_five(finetuned):
    _, results = finetuned
    counts = {key: top5(found) for key, (_, found) in results.items()}
    assert counts["full"] == 0, counts
    assert sum(counts[r] >= 1 for r in RANKS) >= len(RANKS) - 1, counts  # r=2's top match is 0.49
    assert sum(counts[r] for r in RANKS) - len(RANKS) * counts["full"] >= len(RANKS) - 1, counts


def test_scaling_the_intruders_down_reduces_forgetting(finetuned, rotated_digits):
    """The paper's intervention on LoRA r=4: σ of the intruders × 0.5 at least halves the upright-digit
    validation loss (forgetting), and costs the rotated task less than removing the update would."""
    task, rotated = rotated_digits
    base, results = finetuned
    model, found = results[4]
    merged = sl.merge(copy.deepcopy(model))
    before = task.evaluate(merged)["val_loss"]
    for name, f in found.items():
        layer = merged.get_submodule(name)
        U, S, Vh = torch.linalg.svd(layer.weight.detach(), full_matrices=False)
        S = S.clone()
        S[f.indices] *= 0.5
        with torch.no_grad():
            layer.weight.copy_((U * S) @ Vh)
    after = task.evaluate(merged)["val_loss"]
    assert after < 0.5 * before, (before, after)
    assert rotated.evaluate(merged)["accuracy"] > rotated.evaluate(base)["accuracy"] + 0.3
