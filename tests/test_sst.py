"""Sparse Spectral Training, checked against its definition (Zhao et al. 2025, arXiv:2405.15481).

The parametrization is W's own SVD (unchanged function at apply); one step moves only the active
singular vectors and every singular value; the enhanced gradient is the paper's ∂L/∂W·V_{·i}
(computed here independently from a dense reference) = the default gradient / Σ_i; Σ ≥ 0 and unit
vectors after every step; resampling exactly every T3 steps with the swapped-in slots' optimizer
state reset; the warm-up multipliers; the four sampling modes; re-SVD; determinism; counts; merge;
bad input.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import spectrallab as sl
from spectrallab.linalg import orthogonality_error
from spectrallab.methods.sst import SSTLayer, draw_indices, sampling_probabilities, warmup_multiplier
from spectrallab.optim import lr_multiplier

from conftest import SmallMLP, fingerprint, same_fingerprint, assert_rejected_and_unchanged


def sst_mlp(init_seed: int = 0, **options) -> SmallMLP:
    torch.manual_seed(init_seed)
    return sl.apply(SmallMLP(), "sst", **{"rank": 4, **options})


def regression_batches(n: int, seed: int = 7):
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(32, 20, generator=g), torch.randn(32, 12, generator=g)) for _ in range(n)]


def train(model, opt, batches, on_step=None):
    for i, (x, y) in enumerate(batches):
        loss = F.mse_loss(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        if on_step is not None:
            on_step(i + 1)


def test_apply_is_the_exact_svd_of_w():
    torch.manual_seed(0)
    base = SmallMLP()
    x = torch.randn(8, 20)
    reference = base(x).detach()
    weights = {n: getattr(base, n).weight.detach().clone() for n in ("fc1", "fc2")}
    model = sl.apply(base, "sst", rank=4)
    torch.testing.assert_close(model(x), reference, rtol=1e-5, atol=1e-6)
    for name, W in weights.items():
        layer = getattr(model, name)
        assert isinstance(layer, SSTLayer) and layer.k == min(W.shape)
        U, S, Vh = layer.factors()
        torch.testing.assert_close(U @ torch.diag(S) @ Vh, W, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(layer.effective_weight(), W, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(S, torch.linalg.svdvals(W))
        assert orthogonality_error(U) < 1e-5 and orthogonality_error(Vh.T) < 1e-5
        # the memory-efficient layout: r active vectors trainable, k − r frozen, all of Σ trainable
        m, n, k, r = W.shape[0], W.shape[1], layer.k, 4
        assert layer.U_active.shape == (m, r) and layer.Vh_active.shape == (r, n)
        assert layer.U_frozen.shape == (m, k - r) and layer.Vh_frozen.shape == (k - r, n)
        assert layer.U_active.requires_grad and layer.Vh_active.requires_grad and layer.S.requires_grad
        assert not layer.U_frozen.requires_grad and not layer.Vh_frozen.requires_grad
        assert sorted(layer.active_index.tolist() + layer.frozen_index.tolist()) == list(range(k))


def test_trainable_and_optimizer_state_counts_follow_the_formula():
    model = sst_mlp(rank=4)
    # fc1: 32×20 (k=20), fc2: 12×32 (k=12): r(m + n) + k + bias per layer
    expected = (4 * (32 + 20) + 20 + 32) + (4 * (12 + 32) + 12 + 12)
    assert sl.trainable_parameters(model) == expected
    opt = sl.optimizer(model, lr=1e-3)
    assert sum(p.numel() for g in opt.param_groups for p in g["params"]) == expected
    train(model, opt, regression_batches(2))
    moments = sum(v.numel() for s in opt.state.values() for k, v in s.items() if k != "step")
    assert moments == 2 * expected  # Adam's two moments, only for the active block, Σ and biases
    full = sum(p.numel() for p in SmallMLP().parameters())
    assert expected < full


def test_one_step_moves_only_the_active_vectors_and_every_singular_value():
    model = sst_mlp(rank=4, resample_every=100, warmup=0)
    before = {n: getattr(model, n).factors() for n in ("fc1", "fc2")}
    active = {n: getattr(model, n).active_index.clone() for n in ("fc1", "fc2")}
    opt = sl.optimizer(model, lr=1e-2, optimizer="sgd")
    train(model, opt, regression_batches(1))
    for name in ("fc1", "fc2"):
        layer = getattr(model, name)
        (U0, S0, Vh0), (U1, S1, Vh1) = before[name], layer.factors()
        assert torch.equal(layer.active_index, active[name])  # no resampling within the period
        moved_u = (U1 - U0).abs().amax(dim=0) > 0
        moved_vh = (Vh1 - Vh0).abs().amax(dim=1) > 0
        is_active = torch.zeros(layer.k, dtype=torch.bool)
        is_active[active[name]] = True
        assert torch.equal(moved_u, is_active) and torch.equal(moved_vh, is_active)
        assert bool(((S1 - S0).abs() > 0).all())  # every singular value trains every step


def dense_gradient(layer: SSTLayer, x: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """∂L/∂W from a plain dense layer with the same weight: the reference the paper's formulas use."""
    W = layer.effective_weight().detach().requires_grad_(True)
    F.mse_loss(F.linear(x, W, layer.bias.detach()), target).backward()
    return W.grad


@pytest.mark.parametrize("gradient", ["enhanced", "default"])
def test_enhanced_gradient_is_the_papers_formula_and_default_is_sigma_times_it(gradient):
    torch.manual_seed(0)
    layer = sl.apply(nn.Linear(20, 12), "sst", rank=5, gradient=gradient)
    x, target = torch.randn(16, 20), torch.randn(16, 12)
    G = dense_gradient(layer, x, target)
    sigma = layer.S.detach()[layer.active_index]
    enhanced_u, enhanced_vh = G @ layer.Vh_active.detach().T, layer.U_active.detach().T @ G   # ∂L/∂W V_i, ∂L/∂Wᵀ U_i
    seen = {}
    opt = sl.optimizer(layer, lr=1e-3, optimizer="sgd")
    opt.register_step_pre_hook(lambda o, a, k: seen.update(u=layer.U_active.grad.clone(),
                                                           vh=layer.Vh_active.grad.clone()))
    F.mse_loss(layer(x), target).backward()
    # what autograd leaves in .grad is always the true (default) gradient: Σ_i times the enhanced one
    torch.testing.assert_close(layer.U_active.grad, enhanced_u * sigma, rtol=1e-4, atol=1e-7)
    torch.testing.assert_close(layer.Vh_active.grad, enhanced_vh * sigma[:, None], rtol=1e-4, atol=1e-7)
    opt.step()  # the method's pre-step hook runs before the one registered above
    scale = 1.0 if gradient == "enhanced" else sigma
    torch.testing.assert_close(seen["u"], enhanced_u * scale, rtol=1e-4, atol=1e-7)
    torch.testing.assert_close(seen["vh"], enhanced_vh * (scale if gradient == "enhanced" else sigma[:, None]),
                               rtol=1e-4, atol=1e-7)
    assert sigma.max() / sigma.min() > 2  # the two modes differ measurably on this spectrum


def test_after_a_step_vectors_are_unit_and_sigma_is_clamped_at_zero():
    torch.manual_seed(0)
    layer = sl.apply(nn.Linear(16, 16, bias=False), "sst", rank=4, resample_every=100, warmup=0)
    opt = sl.optimizer(layer, lr=10.0, optimizer="sgd")
    x = torch.randn(64, 16)
    layer(x).square().mean().backward()  # shrinking the output pulls every Σ_i down
    unclamped = layer.S.detach() - 10.0 * layer.S.grad
    assert unclamped.min() < -1e-3  # a plain SGD step would make singular values negative
    opt.step()
    assert layer.S.min() == 0 and int((layer.S == 0).sum()) == int((unclamped < 0).sum())
    torch.testing.assert_close(layer.U_active.norm(dim=0), torch.ones(4))
    torch.testing.assert_close(layer.Vh_active.norm(dim=1), torch.ones(4))


def test_resampling_happens_exactly_every_t3_steps_and_resets_the_swapped_slots_state():
    model = sst_mlp(rank=4, resample_every=5, warmup=0, periods_per_round=1000, seed=3)
    layer = model.fc1
    opt = sl.optimizer(model, lr=1e-2)
    changes, snapshots = [], {}

    def on_step(step):
        snapshots[step] = (layer.active_index.clone(), opt.state[layer.U_active]["exp_avg"].clone(),
                           opt.state[layer.Vh_active]["exp_avg"].clone())

    previous = layer.active_index.clone()
    for step, batch in enumerate(regression_batches(20), start=1):
        W_before = layer.effective_weight().detach().clone()
        train(model, opt, [batch], on_step=lambda _: on_step(step))
        if not torch.equal(layer.active_index, previous):
            changes.append(step)
        previous = layer.active_index.clone()
    assert changes == [5, 10, 15, 20]  # (a multinomial draw can repeat a set; seed 3 does not here)
    assert layer.period == 4 and len(layer.history) == 5 and layer.resvds == 0
    assert [h["step"] for h in layer.history] == [0, 5, 10, 15, 20]
    # at a boundary: slots that received a new vector have zero moments, the others keep theirs
    index_before, index_after = snapshots[9][0], snapshots[10][0]
    swapped = index_after != index_before
    assert swapped.any() and (~swapped).any()
    _, exp_avg_u, exp_avg_vh = snapshots[10]
    assert torch.all(exp_avg_u[:, swapped] == 0) and torch.all(exp_avg_vh[swapped] == 0)
    assert torch.all(exp_avg_u[:, ~swapped].abs().sum(0) > 0) and torch.all(exp_avg_vh[~swapped].abs().sum(1) > 0)
    # swapping never changes the function: a swap is a relabelling of which vectors train
    assert set(layer.history[-1]["active"]) == set(layer.active_index.tolist())


def test_a_swap_keeps_the_function_and_the_vectors():
    torch.manual_seed(0)
    layer = sl.apply(nn.Linear(24, 10), "sst", rank=3)
    U, S, Vh = layer.factors()
    W = layer.effective_weight().detach().clone()
    slots = layer.swap_in(torch.tensor([0, 5, 9]))
    assert sorted(layer.active_index.tolist()) == [0, 5, 9]
    torch.testing.assert_close(layer.effective_weight(), W)
    U2, S2, Vh2 = layer.factors()
    assert torch.equal(U, U2) and torch.equal(Vh, Vh2) and torch.equal(S, S2)
    assert slots.numel() == 3 - len({0, 5, 9} & set(layer.history[0]["active"]))


def test_lr_warmup_restarts_at_every_period():
    model = sst_mlp(rank=4, resample_every=5, warmup=3)
    opt = sl.optimizer(model, lr=0.1, optimizer="sgd")
    planned, used = [], []
    opt.register_step_pre_hook(lambda o, a, k: used.append(o.param_groups[0]["lr"]))  # after the scaling hook
    for x, y in regression_batches(12):
        planned.append(lr_multiplier(opt))
        F.mse_loss(model(x), y).backward()
        opt.step()
        opt.zero_grad()
    expected = [1 / 3, 2 / 3, 1, 1, 1] * 2 + [1 / 3, 2 / 3]
    assert planned == pytest.approx(expected)
    assert used == pytest.approx([0.1 * m for m in expected])
    assert opt.param_groups[0]["lr"] == 0.1  # restored after every step
    assert [warmup_multiplier(s, 0) for s in range(3)] == [1, 1, 1]


def test_top_sampling_picks_the_largest_singular_values():
    S = torch.tensor([0.3, 2.0, 0.1, 5.0, 1.0, 0.7])
    assert draw_indices(S, 2, "top").tolist() == [1, 3]
    layer = sl.apply(nn.Linear(20, 12), "sst", rank=4, sampling="top")
    assert layer.active_index.tolist() == [0, 1, 2, 3]  # Σ is sorted after an SVD


def test_sequential_sampling_visits_every_index_within_ceil_k_over_r_periods():
    k, r = 10, 4
    S = torch.rand(k)
    visited = set()
    for draw in range(math.ceil(k / r)):
        chosen = draw_indices(S, r, "sequential", draw=draw)
        assert chosen.numel() == r == len(set(chosen.tolist()))
        visited |= set(chosen.tolist())
    assert visited == set(range(k))
    assert set(draw_indices(S, r, "sequential", draw=0).tolist()) == {0, 1, 2, 3}


def test_multinomial_frequencies_follow_sigma_and_uniform_is_flat():
    S = torch.tensor([8.0, 4.0, 2.0, 1.0, 1.0, 0.5, 0.5, 0.0])
    g = torch.Generator().manual_seed(0)
    draws = 20_000
    for mix in (0.5, 0.0):
        # r = 1: each draw's inclusion frequency is exactly p_i = (1 − μ) Σ_i/ΣΣ + μ/k
        counts = torch.zeros(8)
        for _ in range(draws):
            counts[draw_indices(S, 1, "multinomial", uniform_mix=mix, generator=g)] += 1
        p = sampling_probabilities(S, mix).float()
        assert (counts / draws - p).abs().max() < 0.015  # ~4.5 standard errors at p ≈ 0.5
    assert sampling_probabilities(S, 0.5)[-1] == pytest.approx(0.5 / 8)  # exploration: Σ = 0 still drawn
    assert sampling_probabilities(S, 0.0)[0] == pytest.approx(8 / 17)
    # without replacement, r = 3: larger Σ ⇒ included more often; uniform ⇒ all ≈ r/k
    multi, flat = torch.zeros(8), torch.zeros(8)
    for _ in range(5_000):
        multi[draw_indices(S, 3, "multinomial", generator=g)] += 1
        chosen = draw_indices(S, 3, "uniform", generator=g)
        assert len(set(chosen.tolist())) == 3
        flat[chosen] += 1
    multi, flat = multi / 5_000, flat / 5_000
    assert multi[0] > multi[2] + 0.1 > multi[5] + 0.2 and multi[7] > 0.05
    assert (flat - 3 / 8).abs().max() < 0.03


def test_resvd_restores_orthogonality_without_changing_the_weight():
    model = sst_mlp(rank=4, resample_every=3, warmup=0, periods_per_round=1000)
    layer = model.fc1
    opt = sl.optimizer(model, lr=0.05)
    train(model, opt, regression_batches(30))
    U, _, Vh = layer.factors()
    drift = orthogonality_error(U)
    assert drift > 1e-3  # renormalized vectors are unit but no longer orthogonal
    W = layer.effective_weight().detach().clone()
    layer.resvd(step=30)
    U, S, Vh = layer.factors()
    assert orthogonality_error(U) < 1e-5 and orthogonality_error(Vh.T) < 1e-5 < drift
    torch.testing.assert_close(layer.effective_weight(), W, rtol=1e-5, atol=1e-6)
    assert bool((S[:-1] >= S[1:]).all())  # sorted again
    assert layer.history[-1]["resvd"] and layer.history[-1]["step"] == 30


def test_resvd_runs_after_each_round_through_the_optimizer():
    model = sst_mlp(rank=4, resample_every=2, warmup=0, periods_per_round=3)
    opt = sl.optimizer(model, lr=0.05)
    batches = regression_batches(13)
    train(model, opt, batches[:12])  # 6 periods completed: re-SVD after periods 3 and 6
    layer = model.fc1
    assert layer.period == 6 and layer.resvds == 2
    assert [h["resvd"] for h in layer.history] == [False, False, False, True, False, False, True]
    assert orthogonality_error(layer.factors()[0]) < 1e-5  # the re-SVD just ran
    assert all(float(v.abs().max()) == 0 for k, v in opt.state[layer.S].items() if k != "step")
    train(model, opt, batches[12:])
    assert layer.period == 6 and orthogonality_error(layer.factors()[0]) > 1e-4
    # default rounds: ⌈k/r⌉ periods
    assert sst_mlp(rank=3).fc1.periods_per_round == math.ceil(20 / 3)


def test_the_same_seed_gives_the_same_run_and_another_seed_another_sample():
    def run(seed):
        model = sst_mlp(rank=4, resample_every=4, warmup=1, seed=seed)
        train(model, sl.optimizer(model, lr=1e-2), regression_batches(12))
        return model

    a, b, c = run(0), run(0), run(1)
    assert [h["active"] for h in a.fc1.history] == [h["active"] for h in b.fc1.history]
    for pa, pb in zip(a.parameters(), b.parameters()):
        assert torch.equal(pa, pb)
    assert [h["active"] for h in a.fc1.history] != [h["active"] for h in c.fc1.history]
    assert a.fc1.history[0]["active"] != a.fc2.history[0]["active"] or a.fc1.k != a.fc2.k


def test_merge_is_exact_after_training():
    model = sst_mlp(rank=4, resample_every=3, warmup=1, periods_per_round=2)
    train(model, sl.optimizer(model, lr=1e-2), regression_batches(8))
    x = torch.randn(10, 20)
    adapted = model(x).detach()
    sl.merge(model)
    assert type(model.fc1) is nn.Linear and type(model.fc2) is nn.Linear
    torch.testing.assert_close(model(x), adapted, rtol=1e-5, atol=1e-6)


def test_training_lowers_the_loss_with_every_sampling_mode():
    batches = regression_batches(1) * 60  # one batch, fit it
    for sampling in ("multinomial", "uniform", "sequential", "top"):
        model = sst_mlp(rank=4, resample_every=10, warmup=2, sampling=sampling)
        x, y = batches[0]
        start = float(F.mse_loss(model(x), y).detach())
        train(model, sl.optimizer(model, lr=1e-2), batches)
        assert float(F.mse_loss(model(x), y).detach()) < 0.8 * start, sampling


def test_full_rank_zero_singular_values_and_low_precision_work():
    torch.manual_seed(0)
    full = sl.apply(nn.Linear(12, 6), "sst", rank=6, resample_every=2, warmup=0)
    assert full.U_frozen.shape == (6, 0) and full.Vh_frozen.shape == (0, 12)
    opt = sl.optimizer(full, lr=1e-2)
    for _ in range(4):
        full(torch.randn(8, 12)).square().mean().backward()
        opt.step()
        opt.zero_grad()
    assert full.period == 2 and sorted(full.active_index.tolist()) == list(range(6))
    # μ = 0 with fewer nonzero Σ than r: the zero ones fill the remaining slots
    S = torch.tensor([3.0, 1.0, 0.0, 0.0, 0.0])
    assert sorted(draw_indices(S, 3, "multinomial", uniform_mix=0.0,
                               generator=torch.Generator().manual_seed(0)).tolist())[:2] == [0, 1]
    half = sl.apply(nn.Linear(16, 8).to(torch.bfloat16), "sst", rank=2)
    assert half.U_active.dtype == half.S.dtype == half.U_frozen.dtype == torch.bfloat16
    opt = sl.optimizer(half, lr=1e-2)
    half(torch.randn(4, 16, dtype=torch.bfloat16)).float().square().mean().backward()
    opt.step()
    assert torch.isfinite(half.effective_weight().float()).all()


BAD = [
    (dict(rank=21), ValueError, r"layer 'fc1' \(32×20\): rank=21 is outside the allowed range \[1, 20\]"),
    (dict(rank=4, sampling="random"), ValueError,
     r"sampling='random' is not one of 'multinomial', 'uniform', 'sequential', 'top'"),
    (dict(rank=4, gradient="natural"), ValueError, r"gradient='natural' is not one of 'enhanced', 'default'"),
    (dict(rank=4, resample_every=0), ValueError, r"resample_every=0 is outside the allowed range \[1, inf\]"),
    (dict(rank=4, resample_every=10, warmup=11), ValueError, r"warmup=11 is outside the allowed range \[0, 10\]"),
    (dict(rank=4, uniform_mix=1.5), ValueError, r"uniform_mix=1.5 is outside the allowed range \[0, 1\]"),
    (dict(rank=4, periods_per_round=0), ValueError, r"periods_per_round=0 is outside"),
    (dict(rank=4, resample_every=2.5), TypeError, r"resample_every must be an int"),
    (dict(rank=4, seed="a"), TypeError, r"seed must be an int"),
    (dict(rank=4, alpha=2), TypeError, r"unknown option\(s\) alpha"),
]


@pytest.mark.parametrize("options, error, message", BAD)
def test_bad_input_names_layer_value_and_range_and_changes_nothing(options, error, message):
    assert_rejected_and_unchanged("sst", options, error, message)


def test_a_later_layer_failing_leaves_the_first_untouched():
    torch.manual_seed(0)
    model = SmallMLP()
    before = fingerprint(model)
    with pytest.raises(ValueError, match=r"layer 'fc2' \(12×32\): rank=13"):
        sl.apply(model, "sst", rank=13)  # fc1 (k = 20) accepts 13, fc2 (k = 12) does not
    assert same_fingerprint(before, fingerprint(model))


def test_sst_is_a_pre_training_method_everything_else_stays_trainable():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Embedding(10, 16), nn.Linear(16, 8))
    sl.apply(model, "sst", rank=2, targets=["1"])
    assert model[0].weight.requires_grad
    assert sl.method_class("sst").option_choices("sampling") == ["multinomial", "uniform", "sequential", "top"]
