"""Sparse Spectral Training, checked against its definition (Zhao et al. 2025, arXiv:2405.15481).

The parametrization is W's own SVD (unchanged function at apply); one step moves only the active
singular vectors and every singular value; the enhanced gradient is the paper's ∂L/∂W·V_{·i}
(computed here independently from a dense reference), formed directly by the layer's backward (so
it is what .grad holds, what clipping bounds, and continuous at Σ_i = 0); that backward passes
gradcheck and saves no dense weight; Σ ≥ 0 and unit vectors after every step; resampling exactly
every T3 steps with the swapped-in slots' optimizer state reset; the warm-up multipliers (none in
the first period); Σ in float32 under bf16 weights; the four sampling modes; re-SVD; determinism;
counts; merge; bad input.
"""

from __future__ import annotations

import copy
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import spectrallab as sl
from conftest import SmallMLP, assert_rejected_and_unchanged, fingerprint, same_fingerprint
from spectrallab.linalg import orthogonality_error
from spectrallab.methods.sst import (
    GRADIENTS,
    SpectralLinear,
    SSTLayer,
    backward_macs,
    cheaper,
    draw_indices,
    forward_macs,
    period_warmup,
    sampling_probabilities,
    warmup_multiplier,
)
from spectrallab.optim import lr_multiplier


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
    with torch.no_grad():
        layer.S[layer.active_index[0]] = 0.0  # a clamped singular value: its direction still learns
    x, target = torch.randn(16, 20), torch.randn(16, 12)
    G = dense_gradient(layer, x, target)
    sigma = layer.S.detach()[layer.active_index]
    enhanced_u, enhanced_vh = G @ layer.Vh_active.detach().T, layer.U_active.detach().T @ G  # ∂L/∂W V_i, ∂L/∂Wᵀ U_i
    seen = {}
    opt = sl.optimizer(layer, lr=1e-3, optimizer="sgd")
    opt.register_step_pre_hook(
        lambda o, a, k: seen.update(u=layer.U_active.grad.clone(), vh=layer.Vh_active.grad.clone())
    )
    F.mse_loss(layer(x), target).backward()
    scale_u, scale_vh = (1.0, 1.0) if gradient == "enhanced" else (sigma, sigma[:, None])
    # .grad already holds the method's gradient (what clipping and any gradient tool see) ...
    torch.testing.assert_close(layer.U_active.grad, enhanced_u * scale_u, rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(layer.Vh_active.grad, enhanced_vh * scale_vh, rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(
        layer.S.grad, ((layer.factors()[0].T @ G) * layer.factors()[2]).sum(1), rtol=1e-5, atol=1e-7
    )  # ∂L/∂Σ_i = u_iᵀ G v_i, all k
    opt.step()  # ... and it is what the optimizer uses: no hook rescales it
    torch.testing.assert_close(seen["u"], enhanced_u * scale_u, rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(seen["vh"], enhanced_vh * scale_vh, rtol=1e-5, atol=1e-7)
    zero_slot_norm = float(seen["u"][:, 0].norm())
    # enhanced: the Σ_i = 0 vector gets G v_i (dividing a Σ-scaled gradient by Σ_i could only give 0)
    assert (zero_slot_norm > 1e-3) if gradient == "enhanced" else (zero_slot_norm == 0)
    assert sigma[1:].max() / sigma[1:].min() > 2  # the two modes differ measurably on this spectrum


def test_enhanced_gradient_is_continuous_at_sigma_zero():
    """The enhanced gradient G v_i does not depend on Σ_i: Σ_i = 0 and Σ_i = 1e-30 give the same
    update (a Σ-scaled gradient divided by Σ_i jumps from G v_i to 0 there, so two runs that round
    a clamped Σ_i differently would move that direction differently)."""
    grads = []
    for tiny in (0.0, 1e-30):
        torch.manual_seed(0)
        layer = sl.apply(nn.Linear(20, 12), "sst", rank=5)
        with torch.no_grad():
            layer.S[layer.active_index[0]] = tiny
        F.mse_loss(layer(torch.randn(16, 20)), torch.randn(16, 12)).backward()
        grads.append(layer.U_active.grad[:, 0].clone())
    torch.testing.assert_close(grads[0], grads[1], rtol=0, atol=0)
    assert grads[0].norm() > 1e-3


def _through_the_function_and_plain_autograd(x, layer, enhanced, keep_weight="auto"):
    """(our backward's gradients, plain autograd's gradients) of one fixed random loss, for every input."""
    params = [layer.U_active, layer.Vh_active, layer.S] + ([layer.bias] if layer.bias is not None else [])
    weights = torch.randn(*x.shape[:-1], layer.out_features, dtype=x.dtype, generator=torch.Generator().manual_seed(5))
    ours = torch.autograd.grad(
        (
            SpectralLinear.apply(
                x,
                layer.U_active,
                layer.Vh_active,
                layer.S,
                layer.U_frozen,
                layer.Vh_frozen,
                layer.bias,
                layer.active_index,
                layer.frozen_index,
                enhanced,
                keep_weight,
            )
            * weights
        ).sum(),
        [x] + params,
    )
    plain = torch.autograd.grad((F.linear(x, layer.effective_weight(), layer.bias) * weights).sum(), [x] + params)
    return ours, plain


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("batch", [(1, 2), (3, 4)], ids=["factored", "rebuild"])
def test_spectral_linear_backward_passes_gradcheck_and_equals_plain_autograd(bias, batch):
    torch.manual_seed(0)
    layer = sl.apply(nn.Linear(7, 5, bias=bias).double(), "sst", rank=2)
    assert layer.S.dtype == torch.float64  # Σ is at least float32: float64 stays float64
    x = torch.randn(*batch, 7, dtype=torch.float64, requires_grad=True)  # leading batch dims
    path = "factored" if batch == (1, 2) else "rebuild"  # 2 tokens or 12 through a 5 × 7 layer
    assert cheaper(forward_macs(x[..., 0].numel(), 5, 7, 5)) == path
    assert cheaper(backward_macs(x[..., 0].numel(), 5, 7, 5, 2, True, True, True, True)) == path
    inputs = (
        x,
        layer.U_active,
        layer.Vh_active,
        layer.S,
        layer.U_frozen,
        layer.Vh_frozen,
        layer.bias,
        layer.active_index,
        layer.frozen_index,
        False,
        "always",
    )  # default: the true gradient; the rebuild path's W kept for backward
    assert torch.autograd.gradcheck(SpectralLinear.apply, inputs)
    ours, plain = _through_the_function_and_plain_autograd(x, layer, enhanced=False)
    for a, b in zip(ours, plain):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)
    # enhanced: the vector gradients are the plain ones without the factor Σ_i, the rest identical
    enhanced, _ = _through_the_function_and_plain_autograd(x, layer, enhanced=True)
    sigma = layer.S.detach()[layer.active_index]
    torch.testing.assert_close(enhanced[1] * sigma, plain[1], rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(enhanced[2] * sigma[:, None], plain[2], rtol=1e-12, atol=1e-12)
    for a, b in zip(enhanced[:1] + enhanced[3:], plain[:1] + plain[3:]):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


# A 16 × 16 layer at r = 4 (k = 16): the forward's counts cross at T = 16 tokens, the backward's at
# T = 24, so 8 tokens take the factored path both ways, 20 rebuild forward and factor backward, 64
# rebuild both ways. (Asserted below from the counts, so a change of the model moves these cases.)
PATHS = [(8, "factored", "factored"), (20, "rebuild", "factored"), (64, "rebuild", "rebuild")]
# which gradients are asked for: all; a first layer's (no ∂x); Σ alone; the vectors alone; U alone; Vh alone
NEEDS = [
    ("x", "U_active", "Vh_active", "S", "bias"),
    ("U_active", "Vh_active", "S", "bias"),
    ("x", "S"),
    ("x", "U_active", "Vh_active"),
    ("U_active",),
    ("Vh_active",),
]


@pytest.mark.parametrize("keep_weight", ["never", "always"])
@pytest.mark.parametrize("gradient", GRADIENTS)
@pytest.mark.parametrize("tokens, forward_path, backward_path", PATHS)
@pytest.mark.parametrize("needs", NEEDS, ids=lambda needs: "+".join(needs))
def test_both_paths_give_autograds_gradients_through_the_effective_weight(
    tokens, forward_path, backward_path, gradient, needs, keep_weight
):
    """Each path (factored, rebuild) of the forward and of the backward, for each gradient mode and
    each subset of gradients asked for (they change the counts, hence the path, and which products
    run), equals plain autograd through ``F.linear(x, effective_weight())`` in float64 — the vector
    gradients divided by Σ_i for the enhanced gradient — and so does the output. After a few steps,
    so that U and Vh are no longer orthonormal (a path relying on UᵀU = I would fail)."""
    torch.manual_seed(0)
    layer = sl.apply(nn.Linear(16, 16).double(), "sst", rank=4, gradient=gradient, keep_weight=keep_weight)
    opt = sl.optimizer(layer, lr=0.05)
    for _ in range(3):
        layer(torch.randn(8, 16, dtype=torch.float64)).sin().sum().backward()
        opt.step()
        opt.zero_grad()
    assert orthogonality_error(layer.factors()[0]) > 1e-4  # the trained vectors drifted
    m, n, k, r = 16, 16, 16, 4
    backward_needs = [name in needs for name in ("x", "U_active", "Vh_active", "S")]
    assert cheaper(forward_macs(tokens, m, n, k)) == forward_path
    if needs == NEEDS[0]:
        assert cheaper(backward_macs(tokens, m, n, k, r, *backward_needs)) == backward_path
    x = torch.randn(tokens // 4, 4, n, dtype=torch.float64, requires_grad="x" in needs)
    weights = torch.randn(tokens // 4, 4, m, dtype=torch.float64)
    names = ["U_active", "Vh_active", "S", "bias"]
    for name in names:
        getattr(layer, name).requires_grad_(name in needs)
    inputs = ([x] if "x" in needs else []) + [getattr(layer, name) for name in names if name in needs]
    y, y_plain = layer(x), F.linear(x, layer.effective_weight(), layer.bias)
    torch.testing.assert_close(y, y_plain, rtol=1e-12, atol=1e-12)  # the forward's path too
    ours = torch.autograd.grad((y * weights).sum(), inputs)
    plain = torch.autograd.grad((y_plain * weights).sum(), inputs)
    sigma = layer.S.detach()[layer.active_index]
    scale = {"U_active": sigma, "Vh_active": sigma[:, None]} if gradient == "enhanced" else {}
    for name, a, b in zip([name for name in ["x", *names] if name in needs], ours, plain):
        torch.testing.assert_close(a * scale.get(name, 1), b, rtol=1e-10, atol=1e-12, msg=name)


def test_frozen_factors_get_no_gradient_and_double_backward_is_refused():
    torch.manual_seed(0)
    layer = sl.apply(nn.Linear(12, 8), "sst", rank=3)
    layer.U_active.requires_grad_(False)
    layer.S.requires_grad_(False)
    x = torch.randn(5, 12, requires_grad=True)
    layer(x).square().sum().backward()
    assert layer.U_active.grad is None and layer.S.grad is None
    assert layer.Vh_active.grad is not None and layer.bias.grad is not None and x.grad is not None
    y = layer(x).square().sum()
    (gx,) = torch.autograd.grad(y, x, create_graph=True)
    with pytest.raises(RuntimeError, match="once_differentiable|twice"):
        gx.sum().backward()


def test_the_graph_saves_no_dense_weight():
    """Between forward and backward only the input and the factors are kept: no out × in tensor
    (the dense W is rebuilt in backward), and none anywhere in a two-layer model."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(40, 24), nn.Tanh(), nn.Linear(24, 40))
    sl.apply(model, "sst", rank=3, targets=["0", "2"])
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(tuple(t.shape)) or t, lambda t: t):
        loss = model(torch.randn(6, 40)).square().mean()
    assert saved and (24, 40) not in saved and (40, 24) not in saved, saved
    loss.backward()
    # the old formulation (F.linear on effective_weight()) does save it: the check can fail
    saved.clear()
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(tuple(t.shape)) or t, lambda t: t):
        F.linear(torch.randn(6, 40, requires_grad=True), model[0].effective_weight()).sum()
    assert (24, 40) in saved or (40, 24) in saved


def _saved_shapes_and_gradients(keep_weight: str, tokens: int):
    """What a 24 × 40 SST layer's graph saves for ``tokens`` tokens, and the gradients it returns."""
    torch.manual_seed(0)
    layer = sl.apply(nn.Linear(40, 24), "sst", rank=3, keep_weight=keep_weight)
    x = torch.randn(tokens, 40, requires_grad=True, generator=torch.Generator().manual_seed(1))
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(tuple(t.shape)) or t, lambda t: t):
        loss = layer(x).sin().sum()
    loss.backward()
    grads = [x.grad] + [p.grad for p in (layer.U_active, layer.Vh_active, layer.S, layer.bias)]
    return saved, grads


@pytest.mark.parametrize("tokens", [100, 191, 192, 400])
def test_auto_keeps_the_dense_weight_from_eight_rows_per_output_and_the_gradients_do_not_change(tokens):
    """keep_weight="auto" keeps the forward's W for backward from T ≥ 8·out_features tokens (24 × 8 =
    192; below, the graph saves no 24 × 40 tensor), "never" never does, and the gradients are
    bit-identical whatever is kept (the kept W is the one backward would rebuild)."""
    from spectrallab.methods.sst import keeps_weight

    assert keeps_weight("auto", tokens, 24) == (tokens >= 192)
    saved_auto, grads_auto = _saved_shapes_and_gradients("auto", tokens)
    saved_never, grads_never = _saved_shapes_and_gradients("never", tokens)
    assert ((24, 40) in saved_auto) == (tokens >= 192), saved_auto
    assert (24, 40) not in saved_never
    for a, b in zip(grads_auto, grads_never):
        assert torch.equal(a, b)
    if tokens >= 192:  # the backward's count drops by one dense product, m·k·n
        kept = backward_macs(tokens, 24, 40, 24, 3, True, True, True, True, weight_kept=True)["rebuild"]
        assert backward_macs(tokens, 24, 40, 24, 3, True, True, True, True)["rebuild"] - kept == 24 * 24 * 40


def test_keep_weight_refuses_an_unknown_policy():
    with pytest.raises(ValueError, match="keep_weight"):
        sl.apply(nn.Linear(8, 8), "sst", rank=2, keep_weight="sometimes")


def _accumulation_vs_one_batch(gradient: str, steps: int = 20) -> float:
    """Two runs that differ only in summation order (4 accumulated quarters vs one batch), through two
    re-SVDs: the largest difference of the final weights."""
    weights = []
    for accumulate in (False, True):
        torch.manual_seed(0)
        U, _ = torch.linalg.qr(torch.randn(16, 16))
        V, _ = torch.linalg.qr(torch.randn(24, 16))
        base = nn.Linear(24, 16, bias=False)
        with torch.no_grad():
            base.weight.copy_(U * torch.logspace(0, -2, 16) @ V.T)  # Σ from 1 down to 0.01
        teacher = base.weight.detach() + torch.randn(16, 24) / 50
        layer = sl.apply(base, "sst", rank=8, resample_every=5, warmup=0, periods_per_round=2, gradient=gradient)
        opt = sl.optimizer(layer, lr=0.05, optimizer="sgd")
        g = torch.Generator().manual_seed(1)
        for _ in range(steps):
            x = torch.randn(64, 24, generator=g)
            opt.zero_grad()
            for part in x.split(16) if accumulate else [x]:
                F.mse_loss(layer(part), part @ teacher.T, reduction="sum").div(64 * 16).backward()
            opt.step()
        assert layer.resvds == 2
        weights.append(layer.effective_weight().detach())
    return float((weights[0] - weights[1]).abs().max())


def test_gradient_accumulation_matches_one_batch_through_resvds():
    for gradient in ("enhanced", "default"):
        assert _accumulation_vs_one_batch(gradient) < 1e-5, gradient  # measured: ~2e-7 for both


def test_clipping_bounds_the_gradient_the_optimizer_uses():
    """The loop clips .grad before opt.step(); .grad is the enhanced gradient, so the clip norm bounds
    the update direction itself (a Σ-scaled .grad enhanced after clipping exceeds it by up to 1/Σ_i)."""
    torch.manual_seed(0)
    U, _ = torch.linalg.qr(torch.randn(16, 16))
    V, _ = torch.linalg.qr(torch.randn(24, 16))
    base = nn.Linear(24, 16, bias=False)
    with torch.no_grad():
        base.weight.copy_(U * torch.logspace(0, -2, 16) @ V.T)
    layer = sl.apply(base, "sst", rank=16, warmup=0)  # every vector active, Σ down to 0.01
    opt = sl.optimizer(layer, lr=1e-3, optimizer="sgd")
    used = []
    opt.register_step_pre_hook(
        lambda o, a, k: used.append(
            torch.linalg.vector_norm(torch.stack([p.grad.norm() for g in o.param_groups for p in g["params"]]))
        )
    )
    F.mse_loss(layer(torch.randn(32, 24)), torch.randn(32, 16)).backward()
    unclipped = float(torch.nn.utils.clip_grad_norm_(layer.parameters(), 1e-3))
    assert unclipped > 10 * 1e-3  # the clip is active
    opt.step()
    assert float(used[0]) <= 1e-3 * (1 + 1e-5)


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
        snapshots[step] = (
            layer.active_index.clone(),
            opt.state[layer.U_active]["exp_avg"].clone(),
            opt.state[layer.Vh_active]["exp_avg"].clone(),
        )

    previous = layer.active_index.clone()
    for step, batch in enumerate(regression_batches(20), start=1):
        train(model, opt, [batch], on_step=lambda _, step=step: on_step(step))
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


def test_lr_warmup_restarts_at_every_period_after_the_first():
    """The first period is the training loop's to warm up (SST adds nothing there: no double ramp);
    every later period starts with swapped-in vectors and reset moments, and SST warms it up."""
    model = sst_mlp(rank=4, resample_every=5, warmup=3)
    opt = sl.optimizer(model, lr=0.1, optimizer="sgd")
    planned, used = [], []
    opt.register_step_pre_hook(lambda o, a, k: used.append(o.param_groups[0]["lr"]))  # after the scaling hook
    for x, y in regression_batches(12):
        planned.append(lr_multiplier(opt))
        F.mse_loss(model(x), y).backward()
        opt.step()
        opt.zero_grad()
    expected = [1, 1, 1, 1, 1] + [1 / 3, 2 / 3, 1, 1, 1] + [1 / 3, 2 / 3]
    assert planned == pytest.approx(expected)
    assert used == pytest.approx([0.1 * m for m in expected])
    assert opt.param_groups[0]["lr"] == 0.1  # restored after every step
    assert [warmup_multiplier(s, 0) for s in range(3)] == [1, 1, 1]
    assert [period_warmup(t, 5, 3) for t in (0, 4, 5, 6, 7, 10)] == pytest.approx([1, 1, 1 / 3, 2 / 3, 1, 1 / 3])
    # with the loop's own warm-up (sl.fit's schedule), step 0 gets the loop's ramp alone
    model = sst_mlp(rank=4, resample_every=5, warmup=3)
    opt = sl.optimizer(model, lr=0.1)
    assert lr_multiplier(opt) == 1.0


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
    assert sorted(
        draw_indices(S, 3, "multinomial", uniform_mix=0.0, generator=torch.Generator().manual_seed(0)).tolist()
    )[:2] == [0, 1]
    half = sl.apply(nn.Linear(16, 8).to(torch.bfloat16), "sst", rank=2)
    assert half.U_active.dtype == half.U_frozen.dtype == half.effective_weight().dtype == torch.bfloat16
    opt = sl.optimizer(half, lr=1e-2)
    half(torch.randn(4, 16, dtype=torch.bfloat16)).float().square().mean().backward()
    opt.step()
    assert torch.isfinite(half.effective_weight().float()).all()


def test_bf16_weights_keep_sigma_in_float32_and_small_updates_are_not_lost():
    torch.manual_seed(0)
    base = nn.Linear(16, 8).to(torch.bfloat16)
    layer = sl.apply(copy.deepcopy(base), "sst", rank=2, warmup=0)
    assert layer.S.dtype == torch.float32 and layer.U_active.dtype == torch.bfloat16
    x = torch.randn(4, 16, dtype=torch.bfloat16)
    assert layer(x).dtype == torch.bfloat16  # the forward computes in the input's dtype
    assert layer.S.grad is None
    before = layer.S.detach().clone()
    opt = sl.optimizer(layer, lr=1e-5, optimizer="sgd")  # a step far below bf16's resolution of Σ ≈ 1
    for _ in range(3):
        layer(x).float().square().mean().backward()
        opt.step()
        opt.zero_grad()
    assert layer.S.grad is None or layer.S.grad.dtype == torch.float32
    moved = (layer.S.detach() - before).abs()
    assert bool((moved > 0).all())  # every Σ_i moved ...
    assert float(moved.max()) < float(before.max()) * 2**-9  # ... by less than one bf16 ulp of Σ_max
    # a checkpoint written when Σ was stored in bf16 still loads: load_state_dict copies into the param
    state = layer.state_dict()
    state["S"] = state["S"].to(torch.bfloat16)
    fresh = sl.apply(copy.deepcopy(base), "sst", rank=2, warmup=0)
    fresh.load_state_dict(state)
    assert fresh.S.dtype == torch.float32 and torch.equal(fresh.S, state["S"].float())


BAD = [
    (dict(rank=21), ValueError, r"layer 'fc1' \(32×20\): rank=21 is outside the allowed range \[1, 20\]"),
    (
        dict(rank=4, sampling="random"),
        ValueError,
        r"sampling='random' is not one of 'multinomial', 'uniform', 'sequential', 'top'",
    ),
    (dict(rank=4, gradient="natural"), ValueError, r"gradient='natural' is not one of 'enhanced', 'default'"),
    (dict(rank=4, resample_every=0), ValueError, r"resample_every=0 is outside the allowed range \[1, inf\)"),
    (dict(rank=4, resample_every=10, warmup=11), ValueError, r"warmup=11 is outside the allowed range \[0, 10\]"),
    # warmup's upper bound is another option's, so check_options states its whole range (the lower end too)
    (
        dict(rank=4, warmup=-1),
        ValueError,
        r"layers 'fc1', 'fc2': warmup=-1 is outside the allowed range \[0, 200\] .*resample_every=200",
    ),
    (dict(rank=4, warmup=2.0), TypeError, r"warmup must be an int"),
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
