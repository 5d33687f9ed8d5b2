"""Every method on a meta-device model (shapes, no values): a clear refusal from ``apply`` that changes
nothing, or apply → ``to_empty`` → ``reset_parameters()`` gives finite tensors, valid indices and a
model that runs and trains."""

from __future__ import annotations

import warnings

import pytest
import torch
from hf_models import batch, small_options, tiny_gpt2

import spectrallab as sl
from spectrallab.methods.base import registered

# Methods whose initialization reads the weight's values (an SVD or QR of W, DoRA's row norms).
NEEDS_VALUES = {"dora", "loraxs", "milora", "olora", "pissa", "sorsa", "sst", "svfit", "svft"}
FIRST_LAYER = "transformer.h.0.attn.c_attn"


def meta_gpt2():
    with torch.device("meta"):
        return tiny_gpt2()


def apply_quietly(model, method, **options):
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".* is tied to .*")
        return sl.apply(model, method, **options)


@pytest.mark.parametrize("method", sorted(registered()))
def test_every_method_on_a_meta_model_refuses_clearly_or_initializes_validly(method):
    model = meta_gpt2()
    modules = dict(model.named_modules())
    if method in NEEDS_VALUES:
        with pytest.raises(
            ValueError,
            match=rf"layer '{FIRST_LAYER}' is on the meta device .* method "
            rf"'{method}' cannot be initialized there: .*Load the weights first",
        ):
            apply_quietly(model, method, **small_options(method))
        assert dict(model.named_modules()) == modules  # nothing changed
        return

    apply_quietly(model, method, **small_options(method))
    layers = sl.adapted_layers(model)
    assert len(layers) == 8
    model.to_empty(device="cpu")
    model.tie_weights()  # to_empty gives the two tied places two tensors
    for layer in layers.values():  # to_empty replaced the tensors, not the modules
        layer.reset_parameters()
    for name, layer in layers.items():
        for tname, t in list(layer.named_parameters()) + list(layer.named_buffers()):
            if t.is_floating_point():
                assert torch.isfinite(t).all(), f"{name}.{tname}"
        if method == "sltrain":
            index = layer.sparse_index
            assert index.min() >= 0 and index.max() < layer.out_features * layer.in_features
            assert index.unique().numel() == index.numel() == layer.nnz

    # The rest of the model from a real twin (what loading pretrained weights would do).
    twin = tiny_gpt2()
    rest = {k: v for k, v in twin.state_dict().items() if not any(k.startswith(n + ".") for n in layers)}
    missing, unexpected = model.load_state_dict(rest, strict=False)
    assert not unexpected and all(any(k.startswith(n + ".") for n in layers) for k in missing)
    opt = sl.optimizer(model, lr=1e-2)
    for step in range(2):
        loss = model(**batch(step)).loss
        assert torch.isfinite(loss)
        loss.backward()
        opt.step()
        opt.zero_grad()


def test_sltrain_reset_on_meta_gives_the_layer_a_real_device_gives():
    real = tiny_gpt2()
    apply_quietly(real, "sltrain", rank=4, seed=3)
    model = meta_gpt2()
    apply_quietly(model, "sltrain", rank=4, seed=3)
    model.to_empty(device="cpu")
    for name, layer in sl.adapted_layers(model).items():
        layer.reset_parameters()
        twin = real.get_submodule(name)
        for key in ("lora_A", "lora_B", "sparse_index", "sparse_values"):
            torch.testing.assert_close(getattr(layer, key), getattr(twin, key), rtol=0, atol=0)


def test_vera_reset_draws_the_shared_pair_of_apply_again():
    real = tiny_gpt2()
    apply_quietly(real, "vera", rank=4)
    model = meta_gpt2()
    apply_quietly(model, "vera", rank=4)
    model.to_empty(device="cpu")
    layers = sl.adapted_layers(model)
    for layer in layers.values():
        layer.reset_parameters()
    first = layers[FIRST_LAYER]
    assert all(layer.projections is first.projections for layer in layers.values())  # still shared
    twin = real.get_submodule(FIRST_LAYER)
    torch.testing.assert_close(first.projections.A, twin.projections.A, rtol=0, atol=0)
    torch.testing.assert_close(first.projections.B, twin.projections.B, rtol=0, atol=0)


def test_lora_with_an_svd_init_is_refused_on_meta_and_the_default_init_is_not():
    with pytest.raises(ValueError, match=r"init='pissa' factorizes the pretrained weight"):
        apply_quietly(meta_gpt2(), "lora", rank=4, init="pissa")
    model = apply_quietly(meta_gpt2(), "lora", rank=4, init="gaussian")
    assert len(sl.adapted_layers(model)) == 8
