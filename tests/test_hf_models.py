"""Every registered method on tiny random-init GPT-2, LLaMA and BERT: apply (default targets) → a few
steps with ``sl.optimizer`` → merge gives a plain model (``nn.Linear`` / ``Conv1D`` again) with the
adapted model's outputs."""

from __future__ import annotations

import warnings

import pytest
import torch
from hf_models import MODELS, Conv1D, batch, small_options, tiny_gpt2
from torch import nn

import spectrallab as sl
from spectrallab.methods.base import AdaptedLinear, registered

METHODS = sorted(registered())


def logits(model, inputs):
    model.eval()
    with torch.no_grad():
        return model(input_ids=inputs["input_ids"]).logits


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("arch", sorted(MODELS))
def test_apply_train_merge_on_a_tiny_hf_model(arch, method):
    torch.manual_seed(0)
    model = MODELS[arch]()
    kinds = {n: type(m) for n, m in model.named_modules() if isinstance(m, (nn.Linear, Conv1D))}
    probe = batch(99)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".* is tied to .*")  # GPT-2's and BERT's tied heads
        sl.apply(model, method, **small_options(method))
    adapted = sl.adapted_layers(model)
    tied = {"gpt2": {"lm_head"}, "bert": {"cls.predictions.decoder"}}.get(arch, set())
    assert set(adapted) == set(kinds) - tied  # every Linear and Conv1D, the tied heads left out
    before = logits(model, probe)

    model.train()
    opt = sl.optimizer(model, lr=1e-2)
    for step in range(4):
        loss = model(**batch(step)).loss
        assert torch.isfinite(loss)
        loss.backward()
        opt.step()
        opt.zero_grad()

    trained = logits(model, probe)
    assert (trained - before).abs().max() > 1e-4  # the steps reached the adapted layers
    sl.merge(model)
    assert not any(isinstance(m, AdaptedLinear) for m in model.modules())
    for name in adapted:
        assert type(model.get_submodule(name)) is kinds[name], name
    merged = logits(model, probe)
    scale = trained.abs().max()
    torch.testing.assert_close(merged, trained, atol=1e-5 * float(scale), rtol=0)


def test_conv1d_layers_are_seen_as_their_transposed_linear():
    model = tiny_gpt2()
    conv = model.transformer.h[0].attn.c_attn  # Conv1D(nf=96, nx=32): weight 32 × 96
    x = torch.randn(3, 32)
    with pytest.warns(UserWarning, match="tied"):
        sl.apply(model, "full")
    layer = model.transformer.h[0].attn.c_attn
    assert (layer.in_features, layer.out_features) == (32, 96) and layer.weight.shape == (96, 32)
    assert layer.weight.is_contiguous()
    torch.testing.assert_close(layer(x), conv(x))
    torch.testing.assert_close(sl.spectrum(layer), sl.spectrum(conv))
    assert sl.trainable_parameters(model) == sum(p.numel() for p in tiny_gpt2().parameters())
    plain = layer.to_plain()
    assert type(plain) is Conv1D and plain.weight.shape == (32, 96)
    torch.testing.assert_close(plain(x), conv(x))
    assert type(layer.to_linear()) is nn.Linear


def test_naming_a_conv1d_layer_adapts_it():
    model = tiny_gpt2()
    sl.apply(model, "lora", rank=4, targets=["c_fc"])
    assert sorted(sl.adapted_layers(model)) == ["transformer.h.0.mlp.c_fc", "transformer.h.1.mlp.c_fc"]


def test_a_conv1d_layer_alone_is_adapted_and_merged_back():
    conv = Conv1D(6, 4)
    x = torch.randn(2, 4)
    layer = sl.apply(conv, "pissa", rank=2)
    torch.testing.assert_close(layer(x), conv(x), atol=1e-6, rtol=1e-5)
    back = sl.merge(layer)
    assert type(back) is Conv1D
    torch.testing.assert_close(back(x), conv(x), atol=1e-6, rtol=1e-5)


def test_spectrallab_does_not_import_transformers():
    import subprocess
    import sys

    code = (
        "import sys, spectrallab as sl, torch; sl.apply(torch.nn.Linear(4, 4), 'lora', rank=2); "
        "print('transformers' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
