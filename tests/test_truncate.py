"""sl.truncate: every targeted weight replaced by its best rank-r factors (the SST paper's pruning)."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

import spectrallab as sl
from conftest import SmallMLP, fingerprint, same_fingerprint


def best_rank_r(W: torch.Tensor, r: int) -> torch.Tensor:
    U, S, Vh = torch.linalg.svd(W.double(), full_matrices=False)
    return (U[:, :r] * S[:r]) @ Vh[:r]


def test_dense_layers_get_the_eckart_young_factors_and_save_memory():
    torch.manual_seed(0)
    model = SmallMLP()
    dense = {n: m.weight.detach().clone() for n, m in model.named_children()}
    x = torch.randn(5, 20)
    sl.truncate(model, rank=3)
    for name, W in dense.items():
        layer = getattr(model, name)
        assert isinstance(layer, sl.TruncatedLinear) and layer.rank == 3
        assert layer.A.shape == (3, layer.in_features) and layer.B.shape == (layer.out_features, 3)
        assert torch.allclose(layer.effective_weight().double(), best_rank_r(W, 3), atol=1e-5)
        # stored numbers r(m + n) instead of mn
        assert layer.A.numel() + layer.B.numel() == 3 * (layer.in_features + layer.out_features) < W.numel()
    expected = (
        torch.tanh(x @ best_rank_r(dense["fc1"], 3).float().T + model.fc1.bias) @ best_rank_r(dense["fc2"], 3).float().T
        + model.fc2.bias
    )
    assert torch.allclose(model(x), expected, atol=1e-5)
    merged = sl.merge(model)
    assert type(merged.fc1) is nn.Linear and torch.allclose(merged(x), expected, atol=1e-5)


def test_full_rank_truncation_is_the_same_function():
    torch.manual_seed(1)
    model = SmallMLP()
    x = torch.randn(4, 20)
    before = model(x)
    sl.truncate(model, rank=12, targets=["fc2"])
    sl.truncate(model, energy=1.0, targets=["fc1"])
    assert model.fc1.rank == 20 and model.fc2.rank == 12
    assert torch.allclose(model(x), before, atol=1e-5)


def test_energy_keeps_the_fewest_singular_values_holding_that_share():
    torch.manual_seed(2)
    U, _ = torch.linalg.qr(torch.randn(16, 16))
    V, _ = torch.linalg.qr(torch.randn(16, 16))
    S = torch.tensor([10.0, 5.0, 3.0, 1.0] + [0.1] * 12)
    layer = nn.Linear(16, 16)
    with torch.no_grad():
        layer.weight.copy_(U @ torch.diag(S) @ V.T)
    share = torch.cumsum(S**2, 0) / (S**2).sum()  # 0.74, 0.93, 0.99, ...
    for energy, expected in [(0.5, 1), (float(share[1]) - 1e-4, 2), (0.95, 3), (1.0, 16)]:
        assert sl.truncate(copy.deepcopy(layer), energy=energy).rank == expected, energy


def test_sst_layers_can_be_truncated_in_their_own_spectral_form():
    torch.manual_seed(3)
    model = SmallMLP()
    sl.apply(model, "sst", rank=4, resample_every=3, warmup=1)
    opt = sl.optimizer(model, lr=1e-2)
    for _ in range(7):  # past a resampling: active and frozen blocks are mixed
        x = torch.randn(8, 20)
        model(x).pow(2).mean().backward()
        opt.step()
        opt.zero_grad()
    layer = model.fc1
    S = layer.S.detach()
    keep = torch.argsort(S.abs(), descending=True)[:5]
    U = torch.empty(layer.out_features, layer.k)
    Vh = torch.empty(layer.k, layer.in_features)
    U[:, layer.active_index], U[:, layer.frozen_index] = layer.U_active.detach(), layer.U_frozen
    Vh[layer.active_index], Vh[layer.frozen_index] = layer.Vh_active.detach(), layer.Vh_frozen
    expected = (U[:, keep] * S[keep]) @ Vh[keep]
    x = torch.randn(3, 20)
    sl.truncate(model, rank=5, method="spectral")
    assert torch.allclose(model.fc1.effective_weight(), expected, atol=1e-5)
    assert model.fc2.rank == 5
    truncated = model(x)
    assert torch.allclose(sl.merge(model)(x), truncated, atol=1e-5)


def test_auto_gives_drifted_sst_layers_the_eckart_young_cut():
    """Trained SST vectors drift from orthonormal between re-SVDs: Σ is then not the spectrum, and
    "auto" cuts through an SVD; right after a re-SVD the spectral form is the same cut, without one."""
    torch.manual_seed(5)
    model = SmallMLP()
    sl.apply(model, "sst", rank=4, resample_every=3, warmup=1)
    opt = sl.optimizer(model, lr=5e-2)
    for _ in range(12):
        model(torch.randn(8, 20)).pow(2).mean().backward()
        opt.step()
        opt.zero_grad()
    layer = model.fc1
    W = layer.effective_weight().detach()
    U, _, _ = layer.factors()
    gram = U.T.double() @ U.double()
    assert (gram - torch.eye(layer.k, dtype=gram.dtype)).abs().max() > 1e-3  # drifted
    auto = sl.truncate(copy.deepcopy(layer), rank=5).effective_weight().double()
    spectral = sl.truncate(copy.deepcopy(layer), rank=5, method="spectral").effective_weight().double()
    best = best_rank_r(W, 5)
    assert torch.allclose(auto, best, atol=1e-5)
    assert (spectral - W.double()).norm() > (best - W.double()).norm() * 1.001  # a worse cut
    layer.resvd()  # orthonormal again
    again = sl.truncate(copy.deepcopy(layer), rank=5).effective_weight().double()
    torch.testing.assert_close(again, best_rank_r(layer.effective_weight().detach(), 5), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(
        again,
        sl.truncate(copy.deepcopy(layer), rank=5, method="spectral").effective_weight().double(),
        atol=1e-6,
        rtol=1e-6,
    )
    for method in ("auto", "spectral", "svd"):  # full k: exact either way
        x = torch.randn(3, 20)
        full = sl.truncate(copy.deepcopy(layer), rank=layer.k, method=method)
        assert torch.allclose(full(x), layer(x), atol=1e-5), method


def test_gpt2_conv1d_truncates_and_merges_back_to_conv1d():
    pytest.importorskip("transformers")
    from hf_models import tiny_gpt2

    model = tiny_gpt2().eval()
    ids = torch.randint(0, 100, (2, 6))
    with torch.no_grad():
        before = model(ids).logits
    with pytest.warns(UserWarning, match="tied"):
        sl.truncate(model, rank=32)  # hidden 32: full rank for every block layer, the same function
    assert type(model.transformer.h[0].attn.c_attn).__name__ == "TruncatedLinear"
    assert type(model.lm_head) is nn.Linear  # tied to the embedding: left out
    with torch.no_grad():
        assert torch.allclose(model(ids).logits, before, atol=1e-4)
    sl.merge(model)
    assert type(model.transformer.h[0].attn.c_attn).__name__ == "Conv1D"
    with torch.no_grad():
        assert torch.allclose(model(ids).logits, before, atol=1e-4)


@pytest.mark.parametrize(
    "kwargs, error, message",
    [
        (dict(), TypeError, "exactly one of rank= .* or energy="),
        (dict(rank=2, energy=0.9), TypeError, "exactly one of"),
        (dict(rank=0), ValueError, r"layer 'fc1'.*rank=0 is outside the allowed range \[1, 20\]"),
        (dict(rank=13), ValueError, r"layer 'fc2'.*rank=13 is outside the allowed range \[1, 12\]"),
        (dict(rank=2.5), TypeError, "rank must be an int"),
        (dict(energy=0), ValueError, r"energy=0 is outside the allowed range \(0, 1\]"),
        (dict(energy=1.5), ValueError, "energy=1.5"),
        (dict(rank=2, method="qr"), ValueError, "method='qr'"),
        (dict(rank=2, targets=["nope"]), ValueError, "matches no module"),
    ],
)
def test_bad_input_is_named_and_nothing_changes(kwargs, error, message):
    model = SmallMLP()
    before = fingerprint(model)
    with pytest.raises(error, match=message):
        sl.truncate(model, **kwargs)
    assert same_fingerprint(before, fingerprint(model))
    assert type(model.fc1) is nn.Linear and type(model.fc2) is nn.Linear


def test_truncating_twice_is_refused():
    model = sl.truncate(SmallMLP(), rank=2)
    with pytest.raises(ValueError, match="'fc1' is already truncated"):
        sl.truncate(model, rank=1)


def test_memory_report_counts_r_times_m_plus_n_stored_and_nothing_trained():
    model = sl.truncate(SmallMLP(), rank=2, targets=["fc1"])
    opt = sl.optimizer(model, lr=1e-3)  # what still trains: fc2
    model(torch.randn(3, 20)).sum().backward()
    opt.step()
    report = sl.memory_report(model, opt)
    assert all(report.methods["truncated"].matches().values())
    assert sl.trainable_parameters(model) == sum(p.numel() for p in model.fc2.parameters())


@pytest.mark.parametrize("method", ["full", "sst"])
def test_low_precision_layers_keep_their_dtype(method):
    """The SVD runs in float32 (bf16 has none); the factors are cast back, so the model still runs."""
    torch.manual_seed(4)
    model = SmallMLP().to(torch.bfloat16)
    if method == "sst":
        sl.apply(model, "sst", rank=2)
    x = torch.randn(6, 20, dtype=torch.bfloat16)
    before = model(x)
    sl.truncate(model, rank=12)  # fc2 at full rank, fc1 at 12 of 20
    for layer in (model.fc1, model.fc2):
        assert layer.A.dtype == layer.B.dtype == torch.bfloat16, (layer.A.dtype, layer.B.dtype)
    after = model(x)
    assert after.dtype == torch.bfloat16 and torch.isfinite(after).all()
    assert (after.float() - before.float()).abs().max() < 0.5 * before.float().abs().max()
