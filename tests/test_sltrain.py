"""SLTrain: W = s·BA + S with S on a fixed random support. The support never moves and only its
values train; nnz = ⌊δ·m·n + ½⌋; the init (A Kaiming, B = 0, values U(±1/√n)); gradients of the
values are the dense gradient read on the support; trainable counts; merge; determinism; bad input."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from torch import nn

import spectrallab as sl
from conftest import SmallMLP, assert_rejected_and_unchanged, fingerprint, same_fingerprint, sgd_steps
from spectrallab.methods.sltrain import SLTrainLinear, support_size


def make(seed: int = 0, bias: bool = True, **options) -> SmallMLP:
    torch.manual_seed(seed)
    model = SmallMLP(bias)
    return sl.apply(model, "sltrain", **{"rank": 4, "alpha": 8, "sparsity": 0.1, **options})


def adam_steps(model, steps: int = 5) -> None:
    opt = sl.optimizer(model, lr=1e-2)
    g = torch.Generator().manual_seed(3)
    for _ in range(steps):
        x, y = torch.randn(16, 20, generator=g), torch.randn(16, 12, generator=g)
        loss = nn.functional.mse_loss(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()


def test_effective_weight_is_scaled_low_rank_plus_sparse():
    model = make()
    layer = model.fc1
    assert isinstance(layer, SLTrainLinear) and layer.scale == 2.0
    with torch.no_grad():
        layer.lora_B.normal_()
    rows, cols = layer.rows_cols()
    S = torch.zeros(32, 20)
    S[rows, cols] = layer.sparse_values.detach()
    W = 2.0 * layer.lora_B @ layer.lora_A + S
    torch.testing.assert_close(layer.effective_weight(), W)
    x = torch.randn(5, 20)
    torch.testing.assert_close(layer(x), x @ W.T + layer.bias)


def test_init_a_kaiming_b_zero_values_uniform_and_the_function_is_replaced():
    torch.manual_seed(0)
    base = nn.Linear(256, 128)
    layer = sl.apply(copy.deepcopy(base), "sltrain", rank=8, sparsity=0.25)
    bound = 1 / math.sqrt(256)
    assert torch.count_nonzero(layer.lora_B) == 0
    assert 0.95 * bound < layer.lora_A.abs().max() <= bound
    v = layer.sparse_values.detach()
    assert 0.99 * bound < v.abs().max() <= bound
    assert abs(v.std().item() - bound / math.sqrt(3)) < 0.05 * bound  # U(−b, b) has sd b/√3
    torch.testing.assert_close(layer.effective_weight(), layer.sparse_weight())  # BA = 0: W = S at step 0
    assert not torch.allclose(layer.effective_weight(), base.weight)  # the trained weight is gone
    torch.testing.assert_close(layer.bias, base.bias)  # the bias is kept (and trains)
    assert layer.bias.requires_grad and layer.bias.data_ptr() != base.bias.data_ptr()


def test_support_is_fixed_and_only_its_values_change():
    model = make()
    before = {
        n: (layer.sparse_index.clone(), layer.sparse_values.detach().clone())
        for n, layer in sl.adapted_layers(model).items()
    }
    adam_steps(model, 5)
    for name, layer in sl.adapted_layers(model).items():
        index, values = before[name]
        assert torch.equal(layer.sparse_index, index)
        assert not layer.sparse_index.requires_grad and "sparse_index" in dict(layer.named_buffers())
        assert (layer.sparse_values.detach() - values).abs().min() > 0  # every value on the support moved
        S = layer.sparse_weight().detach().flatten()
        off = torch.ones_like(S, dtype=torch.bool)
        off[index] = False
        assert torch.count_nonzero(S[off]) == 0  # nothing ever appears off the support
        assert torch.count_nonzero(layer.lora_B) > 0


def test_gradient_of_the_values_is_the_dense_gradient_on_the_support():
    model = make()
    adam_steps(model, 2)
    model.zero_grad(set_to_none=True)
    layer = model.fc1
    W = layer.effective_weight().detach().requires_grad_(True)
    x = torch.randn(9, 20)
    (torch.tanh(x @ W.T + layer.bias.detach()) ** 2).sum().backward()
    (torch.tanh(layer(x)) ** 2).sum().backward()
    rows, cols = layer.rows_cols()
    torch.testing.assert_close(layer.sparse_values.grad, W.grad[rows, cols])
    torch.testing.assert_close(layer.lora_B.grad, layer.scale * W.grad @ layer.lora_A.detach().T)


@pytest.mark.parametrize(
    "m, n, sparsity, nnz",
    [
        (32, 20, 0.03, 19),  # 19.2 → 19
        (32, 20, 0.1, 64),  # exact
        (10, 10, 0.125, 13),  # 12.5 → 13: half rounds up
        (12, 32, 0.0506, 19),  # 19.43 → 19
        (4, 4, 0.01, 1),  # 0.16 → at least one
        (8, 6, 1.0, 48),  # dense
    ],
)
def test_nnz_is_delta_m_n_rounded_half_up(m, n, sparsity, nnz):
    assert support_size(m, n, sparsity) == nnz
    layer = sl.apply(nn.Linear(n, m), "sltrain", rank=2, sparsity=sparsity)
    assert layer.nnz == nnz == layer.sparse_values.numel() == layer.sparse_index.numel()
    assert layer.sparse_index.unique().numel() == nnz  # distinct positions
    assert 0 <= int(layer.sparse_index.min()) and int(layer.sparse_index.max()) < m * n


def test_support_is_spread_over_the_whole_matrix():
    layer = sl.apply(nn.Linear(200, 100), "sltrain", rank=2, sparsity=0.05, seed=1)
    rows, cols = layer.rows_cols()
    per_row = torch.bincount(rows, minlength=100).float()
    per_col = torch.bincount(cols, minlength=200).float()
    # 1000 positions: ~10 per row, ~5 per column; a pattern stuck in a corner fails both
    assert per_row.min() >= 1 and per_row.max() <= 25 and per_col.max() <= 16
    assert abs(rows.float().mean().item() - 49.5) < 4 and abs(cols.float().mean().item() - 99.5) < 8


@pytest.mark.parametrize("bias", [True, False])
def test_trainable_count_is_r_m_plus_n_plus_nnz_plus_bias(bias):
    r, sparsity = 4, 0.1
    model = make(bias=bias, rank=r, sparsity=sparsity)
    expected = sum(r * (m + n) + support_size(m, n, sparsity) + (m if bias else 0) for m, n in ((32, 20), (12, 32)))
    assert sl.trainable_parameters(model) == expected == r * 52 + 64 + r * 44 + 38 + (44 if bias else 0)


def test_pretraining_method_leaves_the_rest_trainable(model):
    sl.apply(model, "sltrain", rank=2, targets=["fc1"])
    assert model.embed.weight.requires_grad and model.head.weight.requires_grad


def test_merge_is_exact_after_training():
    model = make()
    sgd_steps(model, 5)
    x = torch.randn(6, 20)
    adapted = model(x).detach()
    effective = model.fc2.effective_weight().detach()
    sl.merge(model)
    assert type(model.fc1) is nn.Linear and type(model.fc2) is nn.Linear
    torch.testing.assert_close(model.fc2.weight, effective)
    torch.testing.assert_close(model(x), adapted)


def test_deterministic_under_a_seed():
    def build(global_seed, seed):
        torch.manual_seed(0)
        model = SmallMLP()
        torch.manual_seed(global_seed)
        return sl.apply(model, "sltrain", rank=4, sparsity=0.1, seed=seed)

    a, b, c = build(1, 5), build(2, 5), build(1, 6)
    for name in ("fc1", "fc2"):
        la, lb, lc = getattr(a, name), getattr(b, name), getattr(c, name)
        assert torch.equal(la.sparse_index, lb.sparse_index) and torch.equal(la.sparse_values, lb.sparse_values)
        assert torch.equal(la.lora_A, lb.lora_A)
        assert not torch.equal(la.sparse_index, lc.sparse_index)
    assert not torch.equal(a.fc1.sparse_index, a.fc2.sparse_index[: a.fc1.nnz])  # layers differ
    d, e = build(3, None), build(3, None)  # seed=None: torch.manual_seed before apply decides
    assert torch.equal(d.fc1.sparse_index, e.fc1.sparse_index) and torch.equal(d.fc1.lora_A, e.fc1.lora_A)


@pytest.mark.parametrize(
    "sparsity, error, message",
    [
        (0, ValueError, r"layers 'fc1', 'fc2': sparsity=0 is outside the allowed range \(0, 1\]"),
        (1.5, ValueError, r"layers 'fc1', 'fc2': sparsity=1.5 is outside the allowed range \(0, 1\]"),
        (-0.03, ValueError, r"layers 'fc1', 'fc2': sparsity=-0.03 is outside the allowed range \(0, 1\]"),
        ("dense", TypeError, r"layers 'fc1', 'fc2': sparsity must be a finite number in \(0, 1\]"),
    ],
)
def test_bad_sparsity_names_the_layer_and_the_range(sparsity, error, message):
    torch.manual_seed(0)
    model = SmallMLP()
    before = fingerprint(model)
    with pytest.raises(error, match=message):
        sl.apply(model, "sltrain", rank=4, sparsity=sparsity)
    assert same_fingerprint(before, fingerprint(model))


@pytest.mark.parametrize(
    "options, error, message",
    [
        (
            dict(rank=13, targets=["fc2"]),
            ValueError,
            r"layer 'fc2' \(12×32\): rank=13 is outside the allowed range \[1, 12\]",
        ),
        (dict(rank=4, alpha=-2), ValueError, r"layers 'fc1', 'fc2': alpha=-2 is outside the allowed range \(0, inf\)"),
        (dict(rank=4, seed=1.5), TypeError, r"seed must be an int or None"),
        (dict(rank=4, init="pissa"), TypeError, r"unknown option\(s\) init"),
    ],
)
def test_other_bad_input(options, error, message):
    assert_rejected_and_unchanged("sltrain", options, error, message)


@pytest.mark.parametrize("sparsity", [1e-4, 0.1, 1.0])
def test_paper_counts_use_the_layers_own_support_size(sparsity):
    """``r(m+n) + nnz`` with the layer's nnz: at δ = 1e-4, ⌊δmn + ½⌋ = 0 and the layer keeps 1 value."""
    model = make(sparsity=sparsity)
    opt = sl.optimizer(model, lr=1e-3)
    for layer in (model.fc1, model.fc2):
        m, n, r = layer.out_features, layer.in_features, layer.rank
        nnz = layer.sparse_values.numel()
        assert nnz == layer.sparse_index.numel() == layer.nnz >= 1
        counts = layer.paper_counts()
        assert (counts.weights, counts.trainable, counts.extra) == (r * (m + n) + nnz, r * (m + n) + nnz, nnz)
    if sparsity == 1e-4:
        assert model.fc1.nnz == 1
    nn.functional.mse_loss(model(torch.randn(4, 20)), torch.randn(4, 12)).backward()
    opt.step()
    assert all(v in (True, None) for v in sl.memory_report(model, opt).methods["sltrain"].matches().values())
