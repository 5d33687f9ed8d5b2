"""LoRA's two exact paths: the factored product and the merged weight (spectrallab.methods.lora).

A long batch goes through ``W₀ + s·BA`` with LoRA's gradients written out (``MergedLoRA``), a short
one through the two skinny products; both must be the same layer to rounding, in float64, for
every gradient, in training and inference, under autocast, and the choice must follow the count.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import spectrallab as sl
from spectrallab.methods.lora import MergedLoRA, lora_macs, merged_is_cheaper


def lora_layer(m: int = 24, n: int = 20, rank: int = 4, dropout: float = 0.0) -> nn.Module:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(n, m)).double()
    sl.apply(model, "lora", rank=rank, dropout=dropout)
    layer = model[0]
    with torch.no_grad():
        layer.lora_B.normal_()  # B = 0 at init would make ∂A vanish and hide a wrong ∂A
    return layer


def factored(layer, x):
    return F.linear(x, layer.weight, layer.bias) + layer.scale * F.linear(F.linear(x, layer.lora_A), layer.lora_B)


@pytest.mark.parametrize("shape", [(7, 20), (3, 5, 20)])
def test_merged_equals_factored_with_every_gradient_in_float64(shape):
    layer = lora_layer()
    x = torch.randn(*shape, dtype=torch.float64, requires_grad=True)
    params = (x, layer.lora_A, layer.lora_B)
    merged = MergedLoRA.apply(x, layer.weight, layer.bias, layer.lora_A, layer.lora_B, layer.scale)
    reference = factored(layer, x)
    torch.testing.assert_close(merged, reference, rtol=1e-12, atol=1e-12)
    grad = torch.randn_like(merged)
    for ours, theirs in zip(torch.autograd.grad(merged, params, grad), torch.autograd.grad(reference, params, grad)):
        torch.testing.assert_close(ours, theirs, rtol=1e-12, atol=1e-12)
    x_small = x.detach()[..., :1, :].clone().requires_grad_()
    assert torch.autograd.gradcheck(
        lambda x, A, B: MergedLoRA.apply(x, layer.weight, layer.bias, A, B, layer.scale),
        (x_small, layer.lora_A, layer.lora_B),
    )


def test_the_layer_takes_the_merged_path_past_its_count_and_stays_exact():
    layer = lora_layer(m=24, n=20, rank=4)
    short, long = torch.randn(4, 20, dtype=torch.float64), torch.randn(200, 20, dtype=torch.float64)
    assert not merged_is_cheaper(layer, short) and merged_is_cheaper(layer, long)
    macs = lora_macs(200, 24, 20, 4, backward=True)
    assert macs["merged"] < macs["factored"]
    # the square layer's thresholds in the docstring: d/2 tokens in inference, d in training
    d, r = 64, 8
    assert lora_macs(d // 2 + 1, d, d, r, False)["merged"] < lora_macs(d // 2 + 1, d, d, r, False)["factored"]
    assert lora_macs(d // 2, d, d, r, False)["merged"] >= lora_macs(d // 2, d, d, r, False)["factored"]
    assert lora_macs(d + 1, d, d, r, True)["merged"] < lora_macs(d + 1, d, d, r, True)["factored"]
    assert lora_macs(d, d, d, r, True)["merged"] >= lora_macs(d, d, d, r, True)["factored"]
    out = layer(long)
    assert out.grad_fn.name().endswith("MergedLoRABackward")
    torch.testing.assert_close(out, factored(layer, long), rtol=1e-12, atol=1e-12)
    out.square().sum().backward()
    grads = (layer.lora_A.grad.clone(), layer.lora_B.grad.clone())
    layer.zero_grad()
    factored(layer, long).square().sum().backward()
    torch.testing.assert_close(grads, (layer.lora_A.grad, layer.lora_B.grad), rtol=1e-10, atol=1e-10)


def test_dropout_in_training_or_an_unfrozen_weight_keeps_the_factored_path():
    layer = lora_layer(dropout=0.1)
    long = torch.randn(200, 20, dtype=torch.float64)
    assert not merged_is_cheaper(layer.train(), long)
    assert merged_is_cheaper(layer.eval(), long)  # dropout is the identity in eval mode
    plain = lora_layer()
    plain.weight.requires_grad_(True)  # MergedLoRA gives W₀ no gradient: never silently drop one
    assert not merged_is_cheaper(plain, long)


def test_merged_path_under_cpu_autocast_returns_gradients_in_each_parameters_dtype():
    layer = lora_layer().float()
    x = torch.randn(200, 20)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = layer(x)
        reference = factored(layer, x)
    assert out.dtype == reference.dtype == torch.bfloat16
    assert out.grad_fn.name().endswith("MergedLoRABackward")
    torch.testing.assert_close(out.float(), reference.float(), rtol=3e-2, atol=3e-2)
    out.float().sum().backward()
    assert layer.lora_A.grad.dtype == layer.lora_B.grad.dtype == torch.float32


def test_torch_compile_traces_the_merged_path_and_changes_nothing():
    """``torch.compile`` (graph capture through dynamo and AOTAutograd: the ``aot_eager`` backend, no
    C++ toolchain needed) of a layer on a long batch, which takes the merged path: the same output
    and gradients as eager, in float32, in one graph that calls the Function's own backward."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(32, 48)).float()
    sl.apply(model, "lora", rank=4)
    layer = model[0]
    with torch.no_grad():
        layer.lora_B.normal_()
    x = torch.randn(4, 40, 32, requires_grad=True)  # 160 tokens > d: merged
    assert merged_is_cheaper(layer, x)

    def run(module):
        for p in (x, layer.lora_A, layer.lora_B):
            p.grad = None
        out = module(x)
        out.square().mean().backward()
        return out.detach(), x.grad.clone(), layer.lora_A.grad.clone(), layer.lora_B.grad.clone()

    eager = run(model)
    torch._dynamo.reset()
    compiled = run(torch.compile(model, backend="aot_eager", fullgraph=True))
    for a, b in zip(compiled, eager):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
