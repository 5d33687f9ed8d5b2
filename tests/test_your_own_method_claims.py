"""The claims of book/your_own_method.md (a method of your own: gated LoRA), checked with margins.

The method under test is the chapter's own cell — found in the chapter source by its class line and
executed here — so what is checked is what a reader runs; the registry is restored afterwards.

* The cell that defines the method stays at most 35 lines (the chapter promises it).
* The layer computes ``x Wᵀ + b + g·s·(x Aᵀ) Bᵀ`` (outputs and gradients); at step 0 it is the base
  layer and only ``B`` has a gradient; with the gate closed (g = 0) as well as B = 0 no factor ever
  gets one (the zero-zero trap the chapter walks into).
* ``sl.save_peft`` then ``PeftModel.from_pretrained`` on the original model gives the same outputs
  (≤ 1e-5) after training has moved the gate — also with ``init="pissa"``, whose export is rank 2r and
  where the gate must scale only the trained half of ``B``.
* ``sl.memory_report``: one trained scalar (and two Adam moments) per layer more than LoRA.
* The claim: at a good learning rate (1e-2) the gate changes nothing (mean accuracy within 3 points of
  LoRA's over three seeds); at ten times that rate LoRA collapses while gated LoRA, its gates shrunk
  well below 1, still adapts.

Sizes are pinned (the digits MLP of width 128 pretrained 400 steps, rank 4, 300 steps, seeds 0–2), so
the numbers do not depend on the profile. Measured on the reference machine: at lr 1e-2 LoRA 91.2 %,
gated 91.1 %; at lr 1e-1 LoRA 10.0 % (each seed at chance), gated 83.7 % (76–91 %), gates
fc1 0.39, fc2 0.24, fc3 0.27 (means over seeds); at lr 1e-2 fc1's gate ends at 1.25–1.49. PEFT:
max |logit difference| 3.8e-6 (default init), 1.5e-5 with PiSSA (logits up to 31).

What a broken gate does here (tried by hand): a gate left out of ``forward`` (only in
``delta_weight``) never gets a gradient, stays at 1, and gated LoRA collapses with LoRA at lr 1e-1;
``gate_init = 0`` is the zero-zero trap (10 % everywhere); an ``as_lora`` that does not fold the gate
exports the ungated update (PEFT differs by 10 in the logits); folding it into every column of ``B``
passes with the default init and breaks the PiSSA export (3.2).
"""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import spectrallab as sl
from conftest import PRETRAIN_STEPS, ROOT
from spectrallab.methods.base import _REGISTRY, LayerCounts, registered
from spectrallab.methods.lora import LoRA, LoRALinear

CHAPTER = ROOT / "book" / "your_own_method.md"
MARKER = "class GatedLoRALinear(LoRALinear):"
RANK, STEPS, SEEDS = 4, 300, (0, 1, 2)
LR_GOOD, LR_HIGH = 1e-2, 1e-1
LAYERS = ("fc1", "fc2", "fc3")


def method_cell() -> str:
    """The source of the chapter's code cell that defines the method."""
    import jupytext

    cells = [c.source for c in jupytext.read(CHAPTER).cells if c.cell_type == "code" and MARKER in c.source]
    assert len(cells) == 1, f"expected one code cell containing {MARKER!r}, found {len(cells)}"
    return cells[0]


def chapter_namespace() -> dict:
    """What the chapter's method cell needs from the chapter's imports."""
    return {
        "torch": torch,
        "nn": nn,
        "F": F,
        "sl": sl,
        "LoRA": LoRA,
        "LoRALinear": LoRALinear,
        "LayerCounts": LayerCounts,
    }


@pytest.fixture(scope="module")
def chapter():
    """The chapter's method cell executed (it registers "gated_lora"); the registry restored afterwards."""
    before = registered()
    namespace = chapter_namespace()
    exec(compile(method_cell(), str(CHAPTER), "exec"), namespace)
    assert sl.method_class("gated_lora") is namespace["GatedLoRA"]
    yield namespace
    _REGISTRY.clear()
    _REGISTRY.update(before)


def test_the_method_cell_is_at_most_35_lines():
    source = method_cell()
    lines = source.split("\n")
    assert len(lines) <= 35, f"the method cell has {len(lines)} lines; the chapter promises at most 35"
    assert '@sl.register("gated_lora")' in source and "def as_lora" in source
    assert len(lines) >= 10, "the marker found the wrong cell"


def test_layer_is_the_formula_and_starts_as_the_base(chapter):
    torch.manual_seed(0)
    linear = nn.Linear(24, 16)
    layer = sl.apply(copy.deepcopy(linear), "gated_lora", rank=4, alpha=8)
    x, target = torch.randn(8, 24), torch.randn(8, 16)
    assert torch.equal(layer(x), linear(x)), "B = 0: the pretrained function at step 0"
    assert sl.trainable_parameters(layer) == 4 * (24 + 16) + 1
    assert layer.gate.requires_grad and layer.gate.item() == 1.0

    F.mse_loss(layer(x), target).backward()
    assert float(layer.lora_A.grad.abs().max()) == 0 == layer.gate.grad.abs().item()
    assert float(layer.lora_B.grad.abs().max()) > 0

    with torch.no_grad():
        layer.lora_B.normal_()
        layer.gate.fill_(-0.6)
    layer.zero_grad()
    A, B, g = (t.detach().clone().requires_grad_(True) for t in (layer.lora_A, layer.lora_B, layer.gate))
    by_hand = x @ linear.weight.detach().T + linear.bias.detach() + g * 2.0 * (x @ A.T) @ B.T
    torch.testing.assert_close(layer(x), by_hand)
    F.mse_loss(layer(x), target).backward()
    F.mse_loss(by_hand, target).backward()
    for ours, theirs in ((layer.lora_A, A), (layer.lora_B, B), (layer.gate, g)):
        torch.testing.assert_close(ours.grad, theirs.grad)
        assert float(theirs.grad.abs().max()) > 0
    torch.testing.assert_close(layer.effective_weight(), linear.weight + (-0.6) * 2.0 * B @ A)
    torch.testing.assert_close(sl.merge(copy.deepcopy(layer))(x), layer(x), rtol=1e-5, atol=1e-5)
    # the gate is saved the torch way
    assert "gate" in layer.state_dict()


def test_a_closed_gate_on_a_zero_b_never_trains(chapter):
    closed = type("Closed", (chapter["GatedLoRALinear"],), {"gate_init": 0.0})
    torch.manual_seed(0)
    layer = closed(nn.Linear(24, 16), 4, 4.0, False, "default", 0.0)
    x, target = torch.randn(8, 24), torch.randn(8, 16)
    opt = sl.optimizer(layer, lr=1e-2)
    for _ in range(5):
        opt.zero_grad()
        F.mse_loss(layer(x), target).backward()
        assert all(float(p.grad.abs().max()) == 0 for p in (layer.lora_A, layer.lora_B, layer.gate))
        opt.step()


@pytest.fixture(scope="module")
def runs(chapter, rotated_digits):
    """(method, lr, seed) -> (model, run), each the base fine-tuned on rotated digits; memoized."""
    task, rotated = rotated_digits
    cache = {}

    def finetune(method, lr, seed=0, **options):
        key = (method, lr, seed, repr(sorted(options.items())))
        if key not in cache:
            model = sl.pretrained(task, steps=PRETRAIN_STEPS)
            torch.manual_seed(seed)
            sl.apply(model, method, **{"rank": RANK, **options})
            opt = sl.optimizer(model, lr=lr)
            run = sl.fit(model, rotated, STEPS, optimizer=opt, lr=lr, seed=seed, record=False, progress="off")
            cache[key] = (model, run, opt)
        return cache[key]

    return finetune


def test_peft_export_is_exact_after_the_gate_moved(runs, rotated_digits, tmp_path):
    peft = pytest.importorskip("peft")
    pytest.importorskip("safetensors")
    task, rotated = rotated_digits
    x_val, _ = rotated.batch("val", 0, None)
    for init in ("default", "pissa"):
        model, _, _ = runs("gated_lora", LR_GOOD, init=init)
        gates = [model.get_submodule(n).gate.item() for n in LAYERS]
        assert max(abs(g - 1) for g in gates) > 0.05, f"the gate barely moved ({gates}): the check would be vacuous"
        export = sl.save_peft(model, tmp_path / init)
        assert set(export.ranks.values()) == {RANK if init == "default" else 2 * RANK}
        original = sl.pretrained(task, steps=PRETRAIN_STEPS).cpu()
        theirs = peft.PeftModel.from_pretrained(original, tmp_path / init).eval()
        with torch.no_grad():
            ours = copy.deepcopy(model).cpu().eval()(x_val.cpu())
            diff = float((theirs(x_val.cpu()) - ours).abs().max())
        # PiSSA's rank-2r export recomposes W = W_res + s·B₀A₀ in float32: a few ulps of the logits
        tol = 1e-5 if init == "default" else 1e-6 * float(ours.abs().max())
        assert diff <= tol, f"init={init}: PEFT differs by {diff:.3g} (tolerance {tol:.3g})"
        base = sl.pretrained(task, steps=PRETRAIN_STEPS).cpu().eval()
        with torch.no_grad():
            assert float((base(x_val.cpu()) - ours).abs().max()) > 1.0, "fine-tuning changed nothing"


def test_memory_report_counts_one_scalar_per_gate(runs):
    reports = {}
    for method in ("lora", "gated_lora"):
        model, _, opt = runs(method, LR_GOOD)
        reports[method] = sl.memory_report(model, opt).methods[method].measured
    lora, gated = reports["lora"], reports["gated_lora"]
    assert gated.trainable - lora.trainable == 4 * len(LAYERS)  # one float32 gate per layer
    assert gated.gradients - lora.gradients == 4 * len(LAYERS)
    assert gated.optimizer_state - lora.optimizer_state == 2 * 4 * len(LAYERS)  # Adam's two moments
    assert gated.parameters - lora.parameters == 4 * len(LAYERS)


def accuracies(runs, method, lr):
    return np.array([runs(method, lr, seed)[1].final("accuracy") for seed in SEEDS])


def test_the_gate_changes_nothing_at_a_good_learning_rate(runs):
    lora, gated = accuracies(runs, "lora", LR_GOOD), accuracies(runs, "gated_lora", LR_GOOD)
    assert lora.mean() >= 0.85 and gated.mean() >= 0.85, (lora, gated)
    assert abs(gated.mean() - lora.mean()) <= 0.03, (lora, gated)
    # ... and yet the gates moved (a gate that is not trained would also "change nothing")
    fc1_gates = [runs("gated_lora", LR_GOOD, seed)[0].fc1.gate.item() for seed in SEEDS]
    assert min(fc1_gates) >= 1.1, fc1_gates


def test_the_gate_rescues_lora_at_ten_times_the_learning_rate(runs):
    lora, gated = accuracies(runs, "lora", LR_HIGH), accuracies(runs, "gated_lora", LR_HIGH)
    assert lora.max() <= 0.4, f"LoRA should break down at lr {LR_HIGH}: {lora}"
    assert gated.mean() >= 0.7 and gated.min() >= 0.55, f"gated LoRA should still adapt: {gated}"
    assert gated.mean() - lora.mean() >= 0.4
    gates = np.array(
        [[runs("gated_lora", LR_HIGH, seed)[0].get_submodule(n).gate.item() for n in LAYERS] for seed in SEEDS]
    )
    assert (gates.mean(axis=0) <= 0.7).all(), f"the gates should have shrunk: {gates}"
