"""LoRA cross-checked against Hugging Face PEFT (pinned in pyproject.toml).

Same initial weights in, the same SGD steps on the same data, the same merged weights out —
for alpha/r scaling, rsLoRA's alpha/√r, and both of PEFT's LoRA initializations. Products and
merged weights are compared, never factors alone.
"""

from __future__ import annotations

import copy
import math

import pytest
import torch
from torch import nn

import spectrallab as sl
from conftest import SmallMLP, sgd_steps

peft = pytest.importorskip("peft")
from peft import LoraConfig, get_peft_model  # noqa: E402


def test_peft_is_the_pinned_version():
    assert peft.__version__ == "0.21.2"


def peft_lora_modules(peft_model) -> dict[str, nn.Module]:
    return {
        name.split(".")[-1]: m
        for name, m in peft_model.named_modules()
        if hasattr(m, "lora_A") and "default" in getattr(m, "lora_A", {})
    }


@pytest.mark.parametrize(
    "rank, alpha, rslora, init",
    [
        (4, 8, False, "default"),
        (4, 8, True, "default"),
        (8, 16, False, "gaussian"),
        (2, 6, True, "gaussian"),
    ],
)
def test_same_init_same_steps_same_merged_weights(rank, alpha, rslora, init):
    torch.manual_seed(0)
    base = SmallMLP()
    ours = sl.apply(copy.deepcopy(base), "lora", rank=rank, alpha=alpha, rslora=rslora, init=init)
    config = LoraConfig(
        r=rank,
        lora_alpha=alpha,
        use_rslora=rslora,
        target_modules=["fc1", "fc2"],
        init_lora_weights=True if init == "default" else "gaussian",
        lora_dropout=0.0,
    )
    reference = get_peft_model(copy.deepcopy(base), config)

    peft_layers = peft_lora_modules(reference)
    assert sorted(peft_layers) == ["fc1", "fc2"]
    for name, ref in peft_layers.items():
        mine = getattr(ours, name)
        assert ref.scaling["default"] == pytest.approx(mine.scale)
        assert mine.scale == pytest.approx(alpha / (math.sqrt(rank) if rslora else rank))
        # both start with B = 0; give ours PEFT's random A so the runs start identically
        assert torch.count_nonzero(ref.lora_B["default"].weight) == 0 and torch.count_nonzero(mine.lora_B) == 0
        with torch.no_grad():
            mine.lora_A.copy_(ref.lora_A["default"].weight)

    assert sl.trainable_parameters(ours) == sum(p.numel() for p in reference.parameters() if p.requires_grad)
    x = torch.randn(5, 20)
    torch.testing.assert_close(ours(x), reference(x))

    sgd_steps(ours, 5)
    sgd_steps(reference, 5)
    torch.testing.assert_close(ours(x), reference(x), rtol=1e-5, atol=1e-6)

    merged_ref = reference.merge_and_unload()
    merged_ours = sl.merge(ours)
    for name in ("fc1", "fc2"):
        torch.testing.assert_close(
            getattr(merged_ours, name).weight, getattr(merged_ref, name).weight, rtol=1e-5, atol=1e-6
        )
        torch.testing.assert_close(getattr(merged_ours, name).bias, getattr(merged_ref, name).bias)
        # the training really moved the weights, and stayed well-conditioned (no blow-up to hide in)
        moved = (getattr(merged_ours, name).weight - getattr(base, name).weight).abs().max()
        assert 1e-3 < moved < 10


@pytest.mark.parametrize("init, peft_init", [("default", True), ("gaussian", "gaussian")])
def test_initial_a_has_the_same_distribution_as_peft(init, peft_init):
    torch.manual_seed(0)
    big = nn.Sequential(nn.Linear(512, 256))
    ours = sl.apply(copy.deepcopy(big), "lora", rank=16, init=init)[0].lora_A.detach()
    ref = get_peft_model(copy.deepcopy(big), LoraConfig(r=16, target_modules=["0"], init_lora_weights=peft_init))
    theirs = peft_lora_modules(ref)["0"].lora_A["default"].weight.detach()
    assert ours.shape == theirs.shape
    assert ours.std().item() == pytest.approx(theirs.std().item(), rel=0.05)
    assert ours.abs().max().item() == pytest.approx(theirs.abs().max().item(), rel=0.05 if init == "default" else 0.3)
