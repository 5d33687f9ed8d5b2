"""The public API: apply / merge / targets / counts / optimizer, and every bad-input case."""

from __future__ import annotations

import math
from collections import OrderedDict

import pytest
import torch
from torch import nn

import spectrallab as sl
from conftest import ThreeLayers, fingerprint, same_fingerprint
from spectrallab.methods.base import AdaptedLinear
from spectrallab.methods.lora import LoRALinear

LINEARS = ["encoder.fc1", "encoder.fc2", "head"]


def test_methods_lists_the_registered_names():
    names = sl.methods()
    assert {"full", "lora", "ffa_lora"} <= set(names)
    assert names == sorted(names)


def test_the_methods_package_stays_importable_next_to_the_function():
    import spectrallab.methods.lora as lora_module

    assert lora_module.LoRALinear is LoRALinear
    import spectrallab.methods as package

    assert sl.methods is package and package() == sorted(package.registered())


def test_apply_lora_to_every_linear_by_default(model, ids):
    before = model(ids)
    out = sl.apply(model, "lora", rank=4)
    assert out is model
    assert sorted(sl.adapted_layers(model)) == LINEARS
    assert all(isinstance(m, LoRALinear) for m in sl.adapted_layers(model).values())
    assert not any(isinstance(m, nn.Linear) for m in model.modules())
    torch.testing.assert_close(model(ids), before)  # B = 0: the function is unchanged at init


def test_lora_trainable_count_is_r_times_m_plus_n(model):
    sl.apply(model, "lora", rank=4)
    # fc1: 16→32, fc2: 32→16, head: 16→8 ; LoRA trains r(m + n) per layer, everything else frozen
    expected = 4 * (32 + 16) + 4 * (16 + 32) + 4 * (8 + 16)
    assert sl.trainable_parameters(model) == expected


def test_ffa_lora_trains_only_b(model):
    sl.apply(model, "ffa_lora", rank=4)
    assert sl.trainable_parameters(model) == 4 * 32 + 4 * 16 + 4 * 8
    for layer in sl.adapted_layers(model).values():
        assert not layer.lora_A.requires_grad and layer.lora_B.requires_grad


def test_full_keeps_everything_trainable(model):
    total = sum(p.numel() for p in model.parameters())
    sl.apply(model, "full")
    assert sl.trainable_parameters(model) == total


def test_freeze_others_override(model):
    sl.apply(model, "lora", rank=2, targets=["fc1"], freeze_others=False)
    assert model.embed.weight.requires_grad and model.head.weight.requires_grad
    assert not model.encoder["fc1"].weight.requires_grad  # the base weight under LoRA is frozen


@pytest.mark.parametrize(
    "targets, expected",
    [
        (["fc1"], ["encoder.fc1"]),
        (["encoder.fc2", "head"], ["encoder.fc2", "head"]),
        (r"encoder\.fc\d", ["encoder.fc1", "encoder.fc2"]),
        (r"head", ["head"]),
    ],
)
def test_targets_by_suffix_list_or_full_regex(model, targets, expected):
    sl.apply(model, "lora", rank=2, targets=targets)
    assert sorted(sl.adapted_layers(model)) == expected


def test_regex_must_match_the_full_name(model):
    with pytest.raises(ValueError, match="match no layer"):
        sl.apply(model, "lora", rank=2, targets="fc1")  # 'encoder.fc1' is the full name


def test_scale_alpha_over_rank_and_rslora(model):
    sl.apply(model, "lora", rank=4, alpha=16, targets=["fc1"])
    assert model.encoder["fc1"].scale == 4.0
    m2 = ThreeLayers()
    sl.apply(m2, "lora", rank=4, alpha=16, rslora=True, targets=["fc1"])
    assert m2.encoder["fc1"].scale == 8.0
    m3 = ThreeLayers()
    sl.apply(m3, "lora", rank=4, targets=["fc1"])
    assert m3.encoder["fc1"].scale == 1.0  # alpha defaults to rank


def test_lora_forward_is_base_plus_scaled_low_rank(model, ids):
    sl.apply(model, "lora", rank=3, alpha=6, targets=["head"])
    layer = model.head
    with torch.no_grad():
        layer.lora_B.normal_()
    x = torch.randn(5, 16)
    expected = x @ (layer.weight + 2.0 * layer.lora_B @ layer.lora_A).T
    torch.testing.assert_close(layer(x), expected)
    torch.testing.assert_close(layer.effective_weight(), layer.weight + 2.0 * layer.lora_B @ layer.lora_A)


def test_gaussian_init_has_std_one_over_rank():
    torch.manual_seed(0)
    layer = sl.apply(nn.Linear(2048, 64), "lora", rank=4, init="gaussian")
    assert abs(layer.lora_A.std().item() - 0.25) < 0.01
    assert torch.count_nonzero(layer.lora_B) == 0


def test_default_init_is_kaiming_uniform_like_nn_linear():
    torch.manual_seed(0)
    layer = sl.apply(nn.Linear(1024, 64), "lora", rank=8)
    bound = 1 / math.sqrt(1024)  # kaiming_uniform(a=√5) on fan_in=1024
    assert layer.lora_A.abs().max() <= bound and layer.lora_A.abs().max() > 0.95 * bound


def test_only_b_gets_gradient_on_the_first_step(model, ids):
    sl.apply(model, "lora", rank=4)
    model(ids).square().sum().backward()
    for layer in sl.adapted_layers(model).values():
        assert torch.count_nonzero(layer.lora_A.grad) == 0
        assert torch.count_nonzero(layer.lora_B.grad) > 0


def test_merge_gives_plain_linears_with_identical_outputs(model, ids):
    sl.apply(model, "lora", rank=4)
    opt = sl.optimizer(model, lr=1e-2)
    for _ in range(3):
        model(ids).square().mean().backward()
        opt.step()
        opt.zero_grad()
    adapted = model(ids).detach()
    merged = sl.merge(model)
    assert merged is model
    assert not any(isinstance(m, AdaptedLinear) for m in model.modules())
    assert sum(isinstance(m, nn.Linear) for m in model.modules()) == 3
    torch.testing.assert_close(model(ids), adapted, rtol=1e-5, atol=1e-6)
    assert all(p.requires_grad for p in model.parameters())  # merge unfreezes what apply froze


def test_merge_then_apply_again_works(model):
    sl.apply(model, "lora", rank=2)
    sl.merge(model)
    sl.apply(model, "lora", rank=2)
    assert len(sl.adapted_layers(model)) == 3


def test_apply_to_a_bare_linear_returns_the_adapted_layer():
    layer = sl.apply(nn.Linear(8, 4), "lora", rank=2)
    assert isinstance(layer, LoRALinear)
    assert isinstance(sl.merge(layer), nn.Linear)


def test_apply_is_deterministic_under_a_seed():
    def build():
        torch.manual_seed(123)
        m = ThreeLayers()
        return sl.apply(m, "lora", rank=4)

    a, b = build(), build()
    for (na, pa), (nb, pb) in zip(a.named_parameters(), b.named_parameters()):
        assert na == nb and torch.equal(pa, pb)


def test_low_precision_weights_keep_their_dtype(ids):
    torch.manual_seed(0)
    m = ThreeLayers().to(torch.bfloat16)
    sl.apply(m, "lora", rank=4)
    layer = m.encoder["fc1"]
    assert layer.lora_A.dtype == layer.lora_B.dtype == layer.weight.dtype == torch.bfloat16
    s = sl.spectrum(layer)  # SVD runs in float32 on an upcast copy
    assert s.dtype == torch.float32 and s.shape == (16,)


def test_optimizer_is_a_real_adamw_over_trainable_parameters(model, ids):
    sl.apply(model, "lora", rank=2)
    opt = sl.optimizer(model, lr=3e-3, weight_decay=0.0)
    assert isinstance(opt, torch.optim.AdamW)
    n_opt = sum(p.numel() for g in opt.param_groups for p in g["params"])
    assert n_opt == sl.trainable_parameters(model)
    sched = torch.optim.lr_scheduler.StepLR(opt, 1)  # schedulers accept it
    before = model.head.effective_weight().detach().clone()
    model(ids).square().mean().backward()
    opt.step()
    sched.step()
    assert not torch.equal(model.head.effective_weight(), before)
    assert isinstance(sl.optimizer(model, optimizer="sgd", lr=0.1, momentum=0.9), torch.optim.SGD)


def test_spectrum_of_adapted_layer_is_of_the_effective_weight(model):
    sl.apply(model, "lora", rank=2, targets=["head"])
    with torch.no_grad():
        model.head.lora_B.fill_(0.3)
    torch.testing.assert_close(sl.spectrum(model.head), torch.linalg.svdvals(model.head.effective_weight().detach()))


# -- bad input: a clear error naming layer, value and range; the model is left as it was ---------

BAD_INPUTS = [
    (dict(method="lora", rank=0), ValueError, r"layer 'encoder.fc1'.*rank=0.*\[1, 16\]"),
    (dict(method="lora", rank=17, targets=["fc1"]), ValueError, r"'encoder.fc1' \(32×16\): rank=17.*\[1, 16\]"),
    (dict(method="lora", rank=9, targets=["fc1", "head"]), ValueError, r"'head' \(8×16\): rank=9.*\[1, 8\]"),
    (
        dict(method="lora", rank=2.5),
        TypeError,
        r"layers .encoder.fc1.*: rank must be an int in \[1, min\(out, in\)\], got 2.5",
    ),
    (dict(method="lora", rank=4, alpha=-1.0), ValueError, r"alpha=-1.0 is outside the allowed range \(0, inf\)"),
    (dict(method="lora", rank=4, init="pisa"), ValueError, r"init='pisa' is not one of"),
    (dict(method="lora", rank=4, dropout=1.5), ValueError, r"dropout=1.5 is outside the allowed range \[0, 1\)"),
    (dict(method="lorra", rank=4), ValueError, r"unknown method 'lorra'. Did you mean 'lora'\?"),
    (dict(method="lora", rank=4, sparsity=0.1), TypeError, r"unknown option\(s\) sparsity; its options are"),
    (dict(method="lora", rank=4, targets=["fc9"]), ValueError, r"targets entry 'fc9' matches no module.*encoder.fc1"),
    (dict(method="lora", rank=4, targets=r"decoder\..*"), ValueError, r"match no layer"),
    (dict(method="lora", rank=4, targets=["norm"]), TypeError, r"layer 'encoder.norm' is a LayerNorm"),
    (dict(method="lora", rank=4, targets="(("), ValueError, r"not a valid regular expression"),
    (dict(method="lora", rank=4, targets=42), TypeError, r"targets must be None"),
]


@pytest.mark.parametrize("kwargs, error, message", BAD_INPUTS)
def test_bad_input_fails_fast_and_changes_nothing(model, kwargs, error, message):
    before = fingerprint(model)
    with pytest.raises(error, match=message):
        sl.apply(model, **kwargs)
    assert same_fingerprint(before, fingerprint(model))


def test_applying_twice_to_the_same_layer_is_refused(model):
    sl.apply(model, "lora", rank=2, targets=["fc1"])
    before = fingerprint(model)
    with pytest.raises(ValueError, match=r"layer 'encoder.fc1' already has method 'lora' applied"):
        sl.apply(model, "lora", rank=2)  # None = every linear, including the adapted one
    with pytest.raises(ValueError, match="already has method"):
        sl.apply(model, "full", targets=["fc1"])
    assert same_fingerprint(before, fingerprint(model))


def test_a_failure_on_a_later_layer_leaves_earlier_layers_untouched(model):
    # fc1 and fc2 accept rank 9; head (8×16) does not — nothing may be half-applied.
    before = fingerprint(model)
    with pytest.raises(ValueError, match="'head'"):
        sl.apply(model, "lora", rank=9)
    assert same_fingerprint(before, fingerprint(model))


def test_non_finite_weights_are_refused_before_an_svd(model):
    with torch.no_grad():
        model.encoder["fc1"].weight[0, 0] = float("nan")
    with pytest.raises(ValueError, match=r"1 non-finite value"):
        sl.spectrum(model.encoder["fc1"])
    with pytest.raises(ValueError, match="non-finite"):
        sl.linalg.svd(model.encoder["fc1"].weight, 2, name="encoder.fc1")


def test_optimizer_bad_input(model):
    with pytest.raises(ValueError, match=r"lr=0 is outside"):
        sl.optimizer(model, lr=0)
    with pytest.raises(ValueError, match="optimizer='adagrad' is not one of"):
        sl.optimizer(model, optimizer="adagrad")
    for p in model.parameters():
        p.requires_grad_(False)
    with pytest.raises(ValueError, match="no trainable parameters"):
        sl.optimizer(model)


def test_declared_validation_names_layer_value_and_range():
    for bad in (0, -0.1, 1.5):
        with pytest.raises(ValueError, match=rf"layer 'fc': sparsity={bad} is outside the allowed range \(0, 1\]"):
            sl.apply(nn.Sequential(OrderedDict(fc=nn.Linear(8, 8))), "sltrain", rank=2, sparsity=bad)
    with pytest.raises(TypeError, match="sparsity must be a finite number in"):
        sl.apply(nn.Sequential(OrderedDict(fc=nn.Linear(8, 8))), "sltrain", rank=2, sparsity="dense")
