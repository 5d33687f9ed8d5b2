"""The initialization chapter's claims (book/init.md), checked in direction with margins.

* PiSSA (Meng et al. 2024, arXiv:2404.02948): starting the adapter on the top-r singular triplets
  of W converges faster than LoRA's zero start at equal rank — here: the digits MLP pretrained on
  upright digits, adapted to digits turned by 90°, at rank 8 and one learning rate.
* A broken PiSSA that takes the *bottom* r directions (that is MiLoRA, Wang et al. 2025) must not
  pass the same margin: the speed-up comes from the principal directions.
* The init itself: PiSSA's ``s·B₀A₀`` holds exactly the top-r energy of W, LoRA's is 0, MiLoRA's
  the bottom; the 2r export reproduces a trained PiSSA layer on the original W.

Sizes are pinned (width 128, 400 pretraining steps, lr 1e-2), so the numbers do not depend on the
profile. Measured on the reference machine: validation loss after 30 steps LoRA 1.79, PiSSA 0.77,
MiLoRA 1.29 (rank 8).
"""

from __future__ import annotations

import copy

import pytest
import torch

import spectrallab as sl
from conftest import PRETRAIN_STEPS
from spectrallab.methods.lora import export_lora

STEPS, LR, RANK = 30, 1e-2, 8
TARGETS = ["fc1", "fc2", "fc3"]


@pytest.fixture(scope="module")
def setting(rotated_digits):
    task, rotated = rotated_digits
    return task, rotated, sl.pretrained(task, steps=PRETRAIN_STEPS)


def finetune(setting, method):
    task, rotated, _ = setting
    model = sl.pretrained(task, steps=PRETRAIN_STEPS)
    torch.manual_seed(0)
    sl.apply(model, method, rank=RANK, targets=TARGETS)
    run = sl.fit(model, rotated, STEPS, lr=LR, record=False)
    return model, run


def test_init_energy_split(setting):
    """PiSSA starts with the top-r energy of W, LoRA with nothing, MiLoRA with the bottom r."""
    _, _, base = setting
    for name in ("fc1", "fc2"):
        lin = base.get_submodule(name)
        W = lin.weight.detach()
        S = torch.linalg.svdvals(W)
        total = (S**2).sum()
        shares = {}
        for method in ("lora", "pissa", "milora", "olora"):
            torch.manual_seed(0)
            layer = sl.apply(copy.deepcopy(lin), method, rank=RANK)
            torch.testing.assert_close(layer.effective_weight(), W, rtol=1e-4, atol=1e-4)
            shares[method] = float(layer.delta_weight().detach().norm() ** 2 / total)
        assert shares["lora"] == 0
        assert shares["pissa"] == pytest.approx(float((S[:RANK] ** 2).sum() / total), abs=1e-4)
        assert shares["milora"] == pytest.approx(float((S[-RANK:] ** 2).sum() / total), abs=1e-4)
        assert shares["pissa"] > 0.5 > shares["olora"] > shares["milora"]


def test_pissa_converges_faster_than_lora(setting):
    """After 30 steps PiSSA's validation loss is well below LoRA's (< 0.6×); MiLoRA's is not."""
    losses = {m: finetune(setting, m)[1].final("val_loss") for m in ("lora", "pissa", "milora")}
    assert losses["pissa"] < 0.6 * losses["lora"], losses
    assert not losses["milora"] < 0.6 * losses["lora"], losses  # bottom-r ("broken PiSSA") lacks the speed-up
    assert losses["pissa"] < 0.8 * losses["milora"], losses


def test_pissa_early_gradient_is_large(setting):
    """PiSSA's first gradient norm is several times LoRA's (its factors start at √σ, not at 0)."""
    g = {m: finetune(setting, m)[1].grad_norm[0] for m in ("lora", "pissa")}
    assert g["pissa"] > 4 * g["lora"], g


def test_2r_export_reproduces_trained_pissa(setting):
    task, rotated, base = setting
    model, _ = finetune(setting, "pissa")
    for name in TARGETS:
        trained = model.get_submodule(name)
        exported = export_lora(trained)
        assert exported.A.shape[0] == exported.B.shape[1] == 2 * RANK
        torch.testing.assert_close(exported.weight, base.get_submodule(name).weight, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(
            exported.weight + exported.scale * exported.B @ exported.A, trained.effective_weight(), rtol=1e-4, atol=1e-4
        )
        assert not torch.allclose(trained.weight, exported.weight, atol=1e-2)  # PiSSA's base is W_res, not W
