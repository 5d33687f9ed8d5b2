"""LoRA-XS, SVFit, SVFT and SORSA: SVD-based fine-tuning methods.

For each: the function at step 0 (unchanged where the method says so), which parameters train and
how many (by formula), merge == adapted after training, bad input, bf16 weights. SORSA's
regularizer: the gradient the optimizer hook adds equals autograd's, scales with γ/η (η the peak
learning rate, not the scheduled one), and keeps the singular vectors orthonormal under a large
learning rate where training without it drifts far away.
"""

from __future__ import annotations

import copy
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import spectrallab as sl
from conftest import fingerprint, same_fingerprint
from spectrallab import linalg
from spectrallab.methods.svft import banded_nnz

LINEARS = ["encoder.fc1", "encoder.fc2", "head"]  # (out, in) = (32, 16), (16, 32), (8, 16)
SHAPES = {"encoder.fc1": (32, 16), "encoder.fc2": (16, 32), "head": (8, 16)}

# (method, options, trainable parameter names inside an adapted layer)
CASES = {
    "loraxs": ({"rank": 4}, {"xs_R"}),
    "svfit": ({"rank": 3}, {"sigma"}),
    "svft": ({"off_diag": 1}, {"svft_M", "svft_gate"}),
    "svft_random": ({"pattern": "random", "off_diag": 2}, {"svft_M", "svft_gate"}),
    "sorsa": ({"rank": 4}, {"sorsa_A", "sorsa_S", "sorsa_B"}),
}


def method_of(case: str) -> str:
    return case.split("_")[0]


def expected_count(case: str) -> int:
    options, _ = CASES[case]
    total = 0
    for m, n in SHAPES.values():
        k = min(m, n)
        if case == "loraxs":
            total += options["rank"] ** 2
        elif case == "svfit":
            total += options["rank"]
        elif case.startswith("svft"):
            total += banded_nnz(k, options["off_diag"]) + 1
        elif case == "sorsa":
            r = options["rank"]
            total += r * (m + n) + r
    return total


def train_steps(model, ids, steps=5, lr=0.05, **opt_kwargs):
    opt = sl.optimizer(model, lr=lr, optimizer="sgd", **opt_kwargs)
    target = torch.arange(ids.shape[0]) % 8
    for _ in range(steps):
        loss = F.cross_entropy(model(ids), target)
        loss.backward()
        opt.step()
        opt.zero_grad()
    return opt


# -- step 0 --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "method, options, atol",
    [
        ("svfit", {"rank": 3}, 0.0),  # W' = W bit for bit (σ − σ_r = 0)
        ("svfit", {}, 0.0),  # energy=0.99 by default
        ("sorsa", {"rank": 4}, 1e-5),  # W_res + B diag(S) A = W up to rounding
        ("loraxs", {"rank": 4, "init_std": 0.0}, 0.0),
        ("loraxs", {"rank": 4}, 1e-3),  # R ~ N(0, 1e-5²): tiny but not zero
        ("svft", {"init": "zeros"}, 1e-5),  # M = 0: U diag(S) Vh = W up to rounding
    ],
)
def test_function_unchanged_at_init(model, ids, method, options, atol):
    before = model(ids).detach()
    sl.apply(model, method, **options)
    after = model(ids).detach()
    if atol == 0:
        assert torch.equal(before, after)
    else:
        assert torch.allclose(before, after, atol=atol, rtol=0)


def test_loraxs_init_is_a_tiny_gaussian_and_the_update_lives_in_the_top_subspace():
    torch.manual_seed(0)
    lin = nn.Linear(40, 30)
    layer = sl.apply(copy.deepcopy(lin), "loraxs", rank=8, alpha=4.0)
    R = layer.xs_R.detach()
    assert R.shape == (8, 8) and 0.5e-5 < float(R.std()) < 2e-5
    U, S, Vh = linalg.svd(lin.weight, 8)
    assert torch.allclose(layer.xs_B.abs(), U.abs(), atol=1e-5)  # B = U_r (up to signs)
    assert torch.allclose(layer.xs_A, S[:, None] * Vh * (layer.xs_B * U).sum(0)[:, None], atol=1e-5)
    with torch.no_grad():
        layer.xs_R.normal_()
    delta = layer.effective_weight() - lin.weight
    assert torch.allclose(delta, 0.5 * layer.xs_B @ layer.xs_R @ layer.xs_A, atol=1e-5)  # s = alpha/r
    Uf, _, Vhf = torch.linalg.svd(lin.weight.detach())
    assert (Uf[:, 8:].T @ delta).abs().max() < 1e-4  # column space ⊆ span U_r
    assert (delta @ Vhf[8:].T).abs().max() < 1e-4  # row space ⊆ span Vh_r


def test_svft_default_starts_off_w_by_half_the_gated_sparse_matrix():
    """The authors' init: M kaiming-normal over its nonzeros, gate σ(0) = ½ — so W' ≠ W at step 0."""
    torch.manual_seed(0)
    lin = nn.Linear(20, 12)
    layer = sl.apply(copy.deepcopy(lin), "svft", off_diag=1)
    U, S, Vh = layer.svft_U, layer.svft_S, layer.svft_Vh
    assert torch.allclose((U * S) @ Vh, lin.weight, atol=1e-5)
    M = torch.zeros(12, 12).index_put((layer.svft_rows, layer.svft_cols), layer.svft_M.detach())
    delta = (layer.effective_weight() - lin.weight).detach()
    assert torch.allclose(delta, 0.5 * U @ M @ Vh, atol=1e-5)
    assert delta.abs().max() > 1e-2
    nnz = banded_nnz(12, 1)
    assert 0.5 * math.sqrt(2 / nnz) < float(layer.svft_M.detach().std()) < 1.5 * math.sqrt(2 / nnz)


def test_svft_patterns():
    torch.manual_seed(0)
    lin = nn.Linear(16, 10)
    for d in (0, 1, 3, 9):
        layer = sl.apply(copy.deepcopy(lin), "svft", off_diag=d)
        rows, cols = layer.svft_rows, layer.svft_cols
        assert layer.nnz == banded_nnz(10, d) == rows.numel()
        assert (rows - cols).abs().max() <= d
        assert len(set(zip(rows.tolist(), cols.tolist()))) == layer.nnz  # distinct
    assert banded_nnz(10, 9) == 100  # full band = k²
    plain = sl.apply(copy.deepcopy(lin), "svft")
    assert torch.equal(plain.svft_rows, plain.svft_cols)  # d = 0: diagonal
    a = sl.apply(copy.deepcopy(lin), "svft", pattern="random", off_diag=2, seed=3)
    b = sl.apply(copy.deepcopy(lin), "svft", pattern="random", off_diag=2, seed=3)
    c = sl.apply(copy.deepcopy(lin), "svft", pattern="random", off_diag=2, seed=4)
    assert a.nnz == banded_nnz(10, 2)
    assert len(set(zip(a.svft_rows.tolist(), a.svft_cols.tolist()))) == a.nnz
    assert torch.equal(a.svft_rows, b.svft_rows) and torch.equal(a.svft_cols, b.svft_cols)
    assert not (torch.equal(a.svft_rows, c.svft_rows) and torch.equal(a.svft_cols, c.svft_cols))


def test_svfit_rank_by_energy():
    torch.manual_seed(0)
    lin = nn.Linear(24, 20)
    S = torch.linalg.svdvals(lin.weight.detach())
    cumulative = (S.double() ** 2).cumsum(0) / (S.double() ** 2).sum()
    for f in (0.5, 0.9, 0.99, 1.0):
        layer = sl.apply(copy.deepcopy(lin), "svfit", energy=f)
        r = layer.rank
        assert cumulative[r - 1] >= f - 1e-9 and (r == 1 or cumulative[r - 2] < f)
        assert sl.trainable_parameters(layer) == r
    assert sl.apply(copy.deepcopy(lin), "svfit").rank == sl.apply(copy.deepcopy(lin), "svfit", energy=0.99).rank


# -- what trains ---------------------------------------------------------------------------------


@pytest.mark.parametrize("case", list(CASES))
def test_trainable_parameters_and_counts(model, case):
    options, names = CASES[case]
    sl.apply(model, method_of(case), targets=LINEARS, **options)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == {f"{layer}.{name}" for layer in LINEARS for name in names}
    assert sl.trainable_parameters(model) == expected_count(case)


def test_counts_without_gate_and_sorsa_formula():
    torch.manual_seed(0)
    lin = nn.Linear(32, 16)  # m = 16, n = 32
    assert sl.trainable_parameters(sl.apply(copy.deepcopy(lin), "svft", off_diag=2, gate=False)) == banded_nnz(16, 2)
    assert sl.trainable_parameters(sl.apply(copy.deepcopy(lin), "sorsa", rank=5)) == 5 * (16 + 32) + 5
    assert sl.trainable_parameters(sl.apply(copy.deepcopy(lin), "loraxs", rank=7)) == 49


# -- merge == adapted after training; the original layer untouched ------------------------------

EXTRA_CASES = {"svfit_energy": {"energy": 0.9}, "svft_zeros": {"init": "zeros"}}


@pytest.mark.parametrize("case", list(CASES) + list(EXTRA_CASES))
def test_merge_matches_adapted_after_training(model, ids, case):
    options = EXTRA_CASES[case] if case in EXTRA_CASES else CASES[case][0]
    originals = {name: model.get_submodule(name) for name in LINEARS}
    original_weights = {name: m.weight.detach().clone() for name, m in originals.items()}
    sl.apply(model, method_of(case), targets=LINEARS, **options)
    start = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    train_steps(model, ids)
    moved = [n for n, p in model.named_parameters() if p.requires_grad and not torch.equal(p, start[n])]
    assert moved, "training changed nothing"
    adapted = model(ids).detach()
    merged = sl.merge(copy.deepcopy(model))
    assert all(type(merged.get_submodule(n)) is nn.Linear for n in LINEARS)
    assert torch.allclose(merged(ids), adapted, atol=1e-5, rtol=1e-5)
    for name, m in originals.items():
        assert torch.equal(m.weight, original_weights[name])


# -- bad input -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "method, options, message",
    [
        ("loraxs", {"rank": 0}, "rank=0"),
        ("loraxs", {"rank": 17}, "rank=17"),
        ("loraxs", {"rank": 2.5}, "rank must be an int"),
        ("loraxs", {"init_std": -1.0}, "init_std"),
        ("svfit", {"rank": 99}, "rank=99"),
        ("svfit", {"energy": 0}, "energy=0"),
        ("svfit", {"energy": 1.5}, "energy=1.5"),
        ("svfit", {"energy": -0.2}, "energy=-0.2"),
        ("svfit", {"energy": float("nan")}, "energy"),
        ("svfit", {"energy": 0.9, "rank": 2}, "not both"),
        ("svft", {"off_diag": -1}, "off_diag=-1"),
        ("svft", {"off_diag": 8}, "off_diag=8"),  # head is 8 × 16: k = 8, d ≤ 7
        ("svft", {"off_diag": 1.0}, "off_diag must be an int"),
        ("svft", {"pattern": "top_k"}, "pattern='top_k'"),
        ("svft", {"init": "orthogonal"}, "init='orthogonal'"),
        ("sorsa", {"rank": 9}, "rank=9"),  # head: min(8, 16) = 8
        ("sorsa", {"gamma": -1e-4}, "gamma"),
        ("sorsa", {"reduction": "max"}, "reduction"),
    ],
)
def test_bad_input_fails_fast_and_leaves_the_model_alone(model, method, options, message):
    before = fingerprint(model)
    with pytest.raises((ValueError, TypeError), match=message.replace("(", r"\(").replace(".", r"\.")):
        sl.apply(model, method, **options)
    assert same_fingerprint(before, fingerprint(model))


@pytest.mark.parametrize("method", ["loraxs", "svfit", "svft", "sorsa"])
def test_non_finite_weight_names_the_layer(model, method):
    with torch.no_grad():
        model.encoder["fc2"].weight[0, 0] = float("nan")
    options = {} if method == "svft" else {"rank": 2}
    with pytest.raises(ValueError, match="layer 'encoder.fc2'.*non-finite"):
        sl.apply(model, method, **options)
    assert sl.adapted_layers(model) == {}  # (NaN ≠ NaN: no fingerprint comparison)
    assert all(p.requires_grad for p in model.parameters())


# -- low precision -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "method, options",
    [
        ("loraxs", {"rank": 4}),
        ("svfit", {"rank": 4}),
        ("svft", {"off_diag": 1, "init": "zeros"}),
        ("sorsa", {"rank": 4}),
    ],
)
def test_bf16_weights(method, options):
    torch.manual_seed(0)
    lin = nn.Linear(24, 16).to(torch.bfloat16)
    x = torch.randn(6, 24, dtype=torch.bfloat16)
    reference = lin(x).float()
    layer = sl.apply(copy.deepcopy(lin), method, **options)
    assert layer.effective_weight().dtype == torch.bfloat16
    for name, p in layer.named_parameters():
        if not p.requires_grad and p.ndim == 2:
            assert p.dtype == torch.bfloat16, name  # frozen factors cast back to the weight's dtype
    y = layer(x)
    assert y.dtype == torch.bfloat16
    scale = reference.abs().max()
    assert (y.float() - reference).abs().max() < 0.03 * scale
    opt = sl.optimizer(layer, lr=1e-2)
    layer(x).float().square().mean().backward()
    opt.step()
    merged = sl.merge(layer)
    assert merged.weight.dtype == torch.bfloat16
    assert (merged(x).float() - layer(x).float()).abs().max() < 0.03 * scale


# -- SORSA's regularizer -------------------------------------------------------------------------


def sorsa_layer(gamma=4e-4, rank=5, seed=0, reduction="sum", **options):
    """One SORSA layer; reduction="sum" so the regularizer is exactly the per-layer formula."""
    torch.manual_seed(seed)
    layer = sl.apply(nn.Linear(20, 14), "sorsa", rank=rank, gamma=gamma, reduction=reduction, **options)
    with torch.no_grad():  # move off the orthonormal manifold so the regularizer has a gradient
        layer.sorsa_A.add_(0.1 * torch.randn_like(layer.sorsa_A))
        layer.sorsa_B.add_(0.1 * torch.randn_like(layer.sorsa_B))
    return layer


def regularizer_autograd(layer):
    A = layer.sorsa_A.detach().double().requires_grad_()
    B = layer.sorsa_B.detach().double().requires_grad_()
    eye = torch.eye(A.shape[0], dtype=torch.float64)
    reg = torch.linalg.matrix_norm(A @ A.T - eye) + torch.linalg.matrix_norm(B.T @ B - eye)
    return torch.autograd.grad(reg, (A, B))


def added_by_hook(layer, lr, schedule=None, model=None):
    """The gradients on ``layer``'s A and B as the optimizer step sees them, from zero gradients."""
    model = layer if model is None else model
    opt = sl.optimizer(model, lr=lr, optimizer="sgd")
    if schedule is not None:
        torch.optim.lr_scheduler.LambdaLR(opt, schedule)  # sets the current lr to lr·schedule(0)
    seen = {}
    opt.register_step_pre_hook(lambda o, a, k: seen.update(A=layer.sorsa_A.grad.clone(), B=layer.sorsa_B.grad.clone()))
    for p in model.parameters():
        if p.requires_grad:
            p.grad = torch.zeros_like(p)
    opt.step()
    return seen["A"].double(), seen["B"].double()


def test_sorsa_regularizer_gradient_equals_autograd():
    layer = sorsa_layer(gamma=4e-4)
    gA, gB = regularizer_autograd(layer)
    # The layer's analytic gradient and its value agree with autograd...
    mA, mB = layer.regularizer_grads()
    assert torch.allclose(mA.double(), gA, rtol=1e-4, atol=1e-6)
    assert torch.allclose(mB.double(), gB, rtol=1e-4, atol=1e-6)
    # ...and the optimizer hook adds exactly (γ/η) times it.
    lr = 1e-2
    hA, hB = added_by_hook(layer, lr)
    assert torch.allclose(hA, 4e-4 / lr * gA, rtol=1e-4, atol=1e-8)
    assert torch.allclose(hB, 4e-4 / lr * gB, rtol=1e-4, atol=1e-8)
    assert hA.abs().max() > 1e-3


def test_sorsa_hook_scales_with_gamma_over_peak_lr():
    base_A, base_B = added_by_hook(sorsa_layer(gamma=1e-3), lr=1e-2)
    double_gamma, _ = added_by_hook(sorsa_layer(gamma=2e-3), lr=1e-2)
    half_lr, _ = added_by_hook(sorsa_layer(gamma=1e-3), lr=5e-3)
    assert torch.allclose(double_gamma, 2 * base_A, rtol=1e-5)
    assert torch.allclose(half_lr, 2 * base_A, rtol=1e-5)
    # η is the peak lr: a scheduler that lowers the current lr does not change the weight...
    scheduled, _ = added_by_hook(sorsa_layer(gamma=1e-3), lr=1e-2, schedule=lambda step: 0.1)
    assert torch.allclose(scheduled, base_A, rtol=1e-5)
    # ...peak_lr= overrides it, and gamma=0 adds nothing.
    override, _ = added_by_hook(sorsa_layer(gamma=1e-3, peak_lr=2e-2), lr=1e-2)
    assert torch.allclose(override, 0.5 * base_A, rtol=1e-5)
    none_A, none_B = added_by_hook(sorsa_layer(gamma=0.0), lr=1e-2)
    assert none_A.abs().max() == 0 and none_B.abs().max() == 0


def test_sorsa_sgd_step_of_the_regularizer_is_gamma_times_its_gradient():
    """With SGD at the peak lr the regularizer moves A by exactly γ·∇L_reg, whatever η is."""
    for lr in (1e-3, 1e-1):
        layer = sorsa_layer(gamma=1e-3)
        gA, _ = regularizer_autograd(layer)
        A0 = layer.sorsa_A.detach().double().clone()
        added_by_hook(layer, lr)
        assert torch.allclose(A0 - layer.sorsa_A.detach().double(), 1e-3 * gA, rtol=1e-3, atol=1e-7)


def test_sorsa_mean_reduction_divides_by_the_number_of_matrices(model):
    sl.apply(model, "sorsa", targets=LINEARS, rank=3, gamma=1e-3, reduction="mean")
    layer = model.encoder["fc1"]
    with torch.no_grad():
        layer.sorsa_A.add_(0.1 * torch.randn_like(layer.sorsa_A))
    gA, _ = regularizer_autograd(layer)
    hA, _ = added_by_hook(layer, lr=1e-2, model=model)
    assert torch.allclose(hA, 1e-3 / 1e-2 / (2 * len(LINEARS)) * gA, rtol=1e-4, atol=1e-9)


def test_sorsa_regularizer_keeps_singular_vectors_orthonormal_under_a_large_lr():
    """AdamW at lr 0.05 on a regression the top-r triplets cannot fit: without the regularizer A
    and B drift far from orthonormal (measured ≈ 31), with γ = 1e-2 they stay close (≈ 0.1)."""

    def drift(gamma):
        torch.manual_seed(0)
        layer = sl.apply(nn.Linear(24, 16), "sorsa", rank=6, gamma=gamma)
        g = torch.Generator().manual_seed(1)
        X, T = torch.randn(64, 24, generator=g), 3 * torch.randn(64, 16, generator=g)
        opt = sl.optimizer(layer, lr=0.05, weight_decay=0.0)
        for _ in range(60):
            (layer(X) - T).square().mean().backward()
            opt.step()
            opt.zero_grad()
        return linalg.orthogonality_error(layer.sorsa_B) + linalg.orthogonality_error(layer.sorsa_A.T)

    free, regularized = drift(0.0), drift(1e-2)
    assert free > 5.0
    assert regularized < 0.05 * free


def test_sorsa_defaults_to_the_authors_mean_reduction():
    assert sl.method_class("sorsa").options["reduction"].default == "mean"


# -- SVFT's Top-k pattern (Lingam et al. 2024, §3.1): the positions of largest |u_iᵀ v_j| ------------


def square_layer(n: int = 12, seed: int = 0) -> nn.Linear:
    torch.manual_seed(seed)
    return nn.Linear(n, n)


@pytest.mark.parametrize("off_diag", [0, 1, 3])
def test_svft_topk_positions_are_the_largest_alignments(off_diag):
    """Ω holds exactly the nnz entries of |UᵀV| that are largest, computed here from an independent SVD."""
    lin = square_layer()
    layer = sl.apply(copy.deepcopy(lin), "svft", pattern="topk", off_diag=off_diag)
    k, nnz = 12, banded_nnz(12, off_diag)
    assert layer.nnz == nnz == layer.svft_rows.numel() == layer.svft_M.numel()
    chosen = set(zip(layer.svft_rows.tolist(), layer.svft_cols.tolist()))
    assert len(chosen) == nnz  # distinct positions

    U, _, Vh = torch.linalg.svd(lin.weight.detach().double())
    alignment = (U.T @ Vh.T).abs()  # |u_iᵀ v_j|, sign-free
    mask = torch.zeros(k, k, dtype=torch.bool)
    mask[layer.svft_rows, layer.svft_cols] = True
    assert alignment[mask].min() >= alignment[~mask].max() - 1e-6  # top by the criterion
    if off_diag > 0:  # not merely the band: Top-k picks positions a banded pattern would not
        assert (layer.svft_rows - layer.svft_cols).abs().max() > off_diag


def test_svft_topk_is_not_the_signed_or_untransposed_ranking():
    """The ranking is of |u_iᵀ v_j|: flipping a singular pair's sign must not change Ω, and the
    pattern differs from ranking signed values or the entries of U·V (the authors' code)."""
    lin = square_layer(16, seed=2)
    layer = sl.apply(copy.deepcopy(lin), "svft", pattern="topk", off_diag=2)
    ours = set(zip(layer.svft_rows.tolist(), layer.svft_cols.tolist()))
    U, _, Vh = (t.double() for t in torch.linalg.svd(lin.weight.detach()))
    flip = torch.ones(16, dtype=torch.float64)
    flip[::3] = -1  # another valid SVD
    from spectrallab.methods.svft import singular_vector_alignment, topk_indices

    rows, cols = topk_indices(singular_vector_alignment(U * flip, flip.unsqueeze(1) * Vh), layer.nnz)
    assert set(zip(rows.tolist(), cols.tolist())) == ours

    def top_positions(scores):
        flat = torch.topk(scores.flatten(), layer.nnz).indices
        return set(zip((flat // 16).tolist(), (flat % 16).tolist()))

    assert top_positions(U.T @ Vh.T) != ours  # signed: not ours
    assert top_positions((U @ Vh.T).abs()) != ours  # U·V: not ours


def test_svft_topk_counts_init_and_merge():
    """nnz = the banded count (+1 gate); init="zeros" gives W' = W; training then merging is exact."""
    lin = square_layer(20, seed=1)
    for d in (0, 2):
        layer = sl.apply(copy.deepcopy(lin), "svft", pattern="topk", off_diag=d)
        assert sl.trainable_parameters(layer) == banded_nnz(20, d) + 1
        no_gate = sl.apply(copy.deepcopy(lin), "svft", pattern="topk", off_diag=d, gate=False)
        assert sl.trainable_parameters(no_gate) == banded_nnz(20, d)
    layer = sl.apply(copy.deepcopy(lin), "svft", pattern="topk", off_diag=2, init="zeros")
    torch.testing.assert_close(layer.effective_weight(), lin.weight, rtol=0, atol=1e-5)
    x = torch.randn(5, 20)
    torch.testing.assert_close(layer(x), lin(x), rtol=0, atol=1e-5)

    opt = sl.optimizer(layer, lr=0.05, optimizer="sgd")
    for _ in range(3):
        layer(x).square().sum().backward()
        opt.step()
        opt.zero_grad()
    moved = (layer.effective_weight() - lin.weight).abs().max()
    assert moved > 1e-3
    # the update lives on Ω: UᵀΔWV is zero off the pattern
    delta = layer.svft_U.T @ (layer.effective_weight() - lin.weight).detach() @ layer.svft_Vh.T
    off = torch.ones_like(delta, dtype=torch.bool)
    off[layer.svft_rows, layer.svft_cols] = False
    assert delta[off].abs().max() < 1e-4 * moved.item() + 1e-6
    expected = layer(x)
    merged = sl.merge(layer)
    torch.testing.assert_close(merged(x), expected, rtol=1e-5, atol=1e-5)


def test_svft_topk_refuses_non_square_layers_and_leaves_the_model_alone(model):
    """ThreeLayers has no square Linear: the first rectangular target fails, nothing is changed."""
    before = fingerprint(model)
    message = r"layer 'encoder.fc1' \(32×16\): pattern='topk'.*out_features == in_features"
    with pytest.raises(ValueError, match=message):
        sl.apply(model, "svft", pattern="topk")
    assert same_fingerprint(before, fingerprint(model))
    mixed = nn.Sequential(nn.Linear(8, 8), nn.Linear(8, 4))
    before = fingerprint(mixed)
    with pytest.raises(ValueError, match=r"layer '1' \(4×8\)"):  # and the square layer 0 is not half-applied
        sl.apply(mixed, "svft", pattern="topk")
    assert same_fingerprint(before, fingerprint(mixed))
    sl.apply(mixed, "svft", pattern="topk", targets=["0"])  # square targets only: fine
    assert sl.adapted_layers(mixed)["0"].pattern == "topk"


# -- declared options and paper counts ------------------------------------------------------------


def test_cross_option_and_option_errors_come_before_any_layer(model):
    """check_options / the declarations speak once per apply, naming the targets (not one layer)."""
    with pytest.raises(
        ValueError,
        match=r"^layers 'encoder\.fc1', 'encoder\.fc2', 'head': give rank= or "
        r"energy=, not both \(got rank=2, energy=0\.9\)",
    ):
        sl.apply(model, "svfit", rank=2, energy=0.9)
    with pytest.raises(TypeError, match=r"^layer 'head': gate must be True or False, got 1"):
        sl.apply(model, "svft", gate=1, targets=["head"])
    with pytest.raises(TypeError, match=r"^layer 'head': seed must be an int, got 0\.5"):
        sl.apply(model, "svft", seed=0.5, targets=["head"])
    with pytest.raises(ValueError, match=r"^layer 'head': peak_lr=0 is outside the allowed range \(0, inf\)"):
        sl.apply(model, "sorsa", peak_lr=0, targets=["head"])


def test_svft_off_diag_bound_is_the_layers():
    """off_diag ≤ min(out, in) − 1 is checked per layer with that layer's numbers."""
    sl.apply(nn.Linear(16, 8), "svft", off_diag=7)
    with pytest.raises(
        ValueError,
        match=r"\(8×16\): off_diag=8 is outside the allowed range \[0, 7\] = "
        r"\[0, min\(out, in\) − 1\]",
    ):
        sl.apply(nn.Linear(16, 8), "svft", off_diag=8)
    assert sl.method_class("svft").options["off_diag"].high == "min(out, in) − 1"


@pytest.mark.parametrize(
    "method, options",
    [
        ("loraxs", {"rank": 3}),
        ("svfit", {"energy": 0.8}),
        ("svft", {"off_diag": 1}),
        ("svft", {"pattern": "random", "off_diag": 2, "gate": False}),
        ("sorsa", {"rank": 3}),
    ],
)
def test_memory_report_formula_equals_measurement(model, ids, method, options):
    """After one AdamW step the measurement is exactly each layer's paper_counts (every row "=")."""
    sl.apply(model, method, **options)
    opt = sl.optimizer(model, lr=1e-3)
    model(ids).square().mean().backward()
    opt.step()
    matches = sl.memory_report(model, opt).methods[method].matches()
    assert all(matches.values()), matches
    layers = sl.adapted_layers(model).values()
    if method == "svfit":  # each layer counts its own r, chosen by energy
        assert [layer.paper_counts().trainable for layer in layers] == [layer.rank for layer in layers]
    if method == "svft":  # nnz, plus the gate when there is one
        gate = 1 if options.get("gate", True) else 0
        assert [layer.paper_counts().trainable for layer in layers] == [layer.nnz + gate for layer in layers]
