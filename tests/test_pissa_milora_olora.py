"""PiSSA, MiLoRA and OLoRA: LoRA started on W's own singular / QR directions, with W's remainder frozen.

What is checked: the function is unchanged at init (``W_res + s·BA = W``); the split-off part has
exactly the singular values it should (top r for PiSSA, last r for MiLoRA) and does not depend on
alpha for PiSSA; OLoRA's B is orthonormal and A upper-trapezoidal; randomized PiSSA is within a
bound set by the spectral gap; HF PEFT gives the same effective weights at init and after the same
SGD steps (products and merged weights compared, never factors: SVD signs are arbitrary); bf16,
NaN and rank errors; the rank-2r export on the original weight; merge.
"""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

import spectrallab as sl
from conftest import SmallMLP, ThreeLayers, fingerprint, same_fingerprint, sgd_steps
from spectrallab.linalg import orthogonality_error
from spectrallab.methods import pissa as pissa_module
from spectrallab.methods.lora import INIT_SPECTRUM_PART, LORA_INITS, LoRALinear, export_lora

try:
    import peft
    from peft import LoraConfig, get_peft_model
except ImportError:  # the cross-checks need the pinned PEFT (the `test` extra); the rest does not
    peft = None
needs_peft = pytest.mark.skipif(peft is None, reason="HF PEFT is not installed")

METHODS = ["pissa", "milora", "olora"]


def mlp() -> SmallMLP:
    torch.manual_seed(0)
    return SmallMLP()


def split_off(layer: LoRALinear) -> torch.Tensor:
    """``s·BA`` — the part of W the init moved into the trainable factors."""
    return layer.delta_weight().detach()


def spectrum_matrix(m: int, n: int, rank: int, gap: float, seed: int = 0) -> torch.Tensor:
    """``m × n`` with top ``rank`` singular values in [0.8, 1] and ``σ_{r+1}/σ_r = gap``."""
    g = torch.Generator().manual_seed(seed)
    U, _ = torch.linalg.qr(torch.randn(m, n, generator=g))
    V, _ = torch.linalg.qr(torch.randn(n, n, generator=g))
    S = torch.cat([torch.linspace(1.0, 0.8, rank), 0.8 * gap * 0.97 ** torch.arange(n - rank)])
    return (U * S) @ V.T


def linear_with(weight: torch.Tensor, bias: bool = False) -> nn.Linear:
    layer = nn.Linear(weight.shape[1], weight.shape[0], bias=bias)
    with torch.no_grad():
        layer.weight.copy_(weight)
    return layer


# -- registration and equivalence -----------------------------------------------------------------


def test_registered_as_methods_and_inits():
    assert set(METHODS) <= set(sl.methods())
    assert set(METHODS) <= set(LORA_INITS)
    assert INIT_SPECTRUM_PART["pissa"] == "top" and INIT_SPECTRUM_PART["milora"] == "bottom"
    assert INIT_SPECTRUM_PART["olora"] is None
    # the named methods take lora's options minus `init`; only pissa has the svd options
    assert "init" not in sl.method_class("pissa").options and "svd" in sl.method_class("pissa").options
    assert set(sl.method_class("milora").options) == set(sl.method_class("lora").options) - {"init"}


@pytest.mark.parametrize("method", METHODS)
def test_named_method_is_lora_with_that_init(method):
    base = mlp()
    named = sl.apply(copy.deepcopy(base), method, rank=4, alpha=8)
    via_lora = sl.apply(copy.deepcopy(base), "lora", init=method, rank=4, alpha=8)
    for name in ("fc1", "fc2"):
        a, b = getattr(named, name), getattr(via_lora, name)
        assert a.method == method and b.method == "lora" and a.init == b.init == method
        for tensor in ("weight", "lora_A", "lora_B", "lora_A0", "lora_B0"):
            assert torch.equal(getattr(a, tensor), getattr(b, tensor)), tensor
    assert sl.trainable_parameters(named) == 4 * (20 + 32) + 4 * (32 + 12)


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("alpha, rslora", [(None, False), (16, False), (3, True)])
def test_function_unchanged_at_init_and_original_layer_untouched(method, alpha, rslora):
    base = mlp()
    originals = {n: getattr(base, n).weight.detach().clone() for n in ("fc1", "fc2")}
    fc1 = base.fc1
    x = torch.randn(5, 20)
    before = base(x)
    sl.apply(base, method, rank=4, alpha=alpha, rslora=rslora)
    torch.testing.assert_close(base(x), before, rtol=1e-5, atol=1e-6)
    assert torch.equal(fc1.weight, originals["fc1"])  # the replaced nn.Linear was not modified
    for name, W in originals.items():
        layer = getattr(base, name)
        torch.testing.assert_close(layer.weight + split_off(layer), W, rtol=0, atol=1e-6)  # W_res + s·BA = W
        assert not torch.allclose(layer.weight, W)  # ... and W_res really is a residual
        assert layer.lora_A.requires_grad and layer.lora_B.requires_grad and not layer.weight.requires_grad


# -- PiSSA / MiLoRA spectra -----------------------------------------------------------------------


@pytest.mark.parametrize("method, part", [("pissa", "top"), ("milora", "bottom")])
def test_split_off_part_has_the_right_singular_values(method, part):
    W = spectrum_matrix(40, 24, rank=6, gap=0.5)
    S = torch.linalg.svdvals(W)
    r = 5
    layer = sl.apply(linear_with(W), method, rank=r, alpha=10)
    taken, kept = (S[:r], S[r:]) if part == "top" else (S[-r:], S[:-r])
    torch.testing.assert_close(torch.linalg.svdvals(split_off(layer))[:r], taken, rtol=1e-5, atol=1e-6)
    # the frozen residual holds the other k − r values (and r zeros)
    torch.testing.assert_close(torch.linalg.svdvals(layer.weight)[: S.numel() - r], kept, rtol=1e-4, atol=1e-6)
    # the product is the truncated SVD itself (compared as a product: signs are arbitrary)
    U, S_, Vh = torch.linalg.svd(W, full_matrices=False)
    idx = slice(0, r) if part == "top" else slice(-r, None)
    torch.testing.assert_close(split_off(layer), (U[:, idx] * S_[idx]) @ Vh[idx], rtol=0, atol=1e-5)


@pytest.mark.parametrize("method", ["pissa", "milora"])
def test_split_does_not_depend_on_alpha_only_the_factor_size_does(method):
    """Same W: ``s·BA`` and ``W_res`` identical for every alpha (and rslora); ``√s·A``, ``√s·B`` too."""
    W = spectrum_matrix(32, 20, rank=4, gap=0.5)
    layers = [
        sl.apply(linear_with(W), method, rank=4, alpha=a, rslora=rs)
        for a, rs in [(None, False), (1, False), (32, False), (8, True)]
    ]
    ref = layers[0]
    assert len({layer.scale for layer in layers}) == len(layers)
    for layer in layers[1:]:
        torch.testing.assert_close(split_off(layer), split_off(ref), rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(layer.weight, ref.weight, rtol=1e-5, atol=1e-6)
        # the same SVD call on the same W gives the same vectors, so here factors can be compared
        root, ref_root = layer.scale**0.5, ref.scale**0.5
        torch.testing.assert_close(root * layer.lora_B, ref_root * ref.lora_B, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(root * layer.lora_A, ref_root * ref.lora_A, rtol=1e-5, atol=1e-6)


# -- OLoRA ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("shape", [(32, 20), (12, 32)])
def test_olora_b_orthonormal_a_upper_trapezoidal_projection_of_w(shape):
    torch.manual_seed(0)
    W = torch.randn(*shape)
    r, alpha = 6, 12  # s = 2: OLoRA does not divide by s, so s·BA = 2·(projection) here
    layer = sl.apply(linear_with(W), "olora", rank=r, alpha=alpha)
    B, A = layer.lora_B.detach(), layer.lora_A.detach()
    assert orthogonality_error(B) < 1e-5
    assert torch.count_nonzero(torch.tril(A, diagonal=-1)) == 0  # A[i, j] = 0 for j < i
    # BA = Q_r Q_rᵀ W: the projection of W on the span of its first r columns (= span of B)
    torch.testing.assert_close(B @ A, B @ (B.T @ W), rtol=0, atol=1e-5)
    assert torch.linalg.matrix_rank(torch.cat([B, W[:, :r]], dim=1)) == r
    torch.testing.assert_close(layer.weight, W - layer.scale * (B @ A), rtol=0, atol=1e-6)
    one = sl.apply(linear_with(W), "olora", rank=r)  # alpha = r, s = 1
    torch.testing.assert_close(split_off(layer), 2 * split_off(one), rtol=1e-5, atol=1e-6)


# -- randomized PiSSA -----------------------------------------------------------------------------


def energy_deficit(W: torch.Tensor, layer: LoRALinear, rank: int) -> float:
    """``1 − ‖W − W_res‖²_F / Σ_{i≤r} σ_i²``: how much of the best rank-r energy the split missed."""
    exact = torch.linalg.svdvals(W.double())[:rank].square().sum()
    return float(1 - (W.double() - layer.weight.double()).square().sum() / exact)


@pytest.mark.parametrize("gap", [0.3, 0.7])
@pytest.mark.parametrize("n_iter", [1, 2])
def test_randomized_pissa_error_is_bounded_by_the_spectral_gap(gap, n_iter):
    """With ``oversample=10``: energy deficit ≤ g^(2(2q+1)) (g = σ_{r+1}/σ_r, q = n_iter) + float32
    rounding; ``‖W − W_res‖_F`` then matches the exact PiSSA's to half that."""
    r = 8
    W = spectrum_matrix(96, 64, rank=r, gap=gap)
    exact = sl.apply(linear_with(W), "pissa", rank=r)
    bound = gap ** (2 * (2 * n_iter + 1)) + 2e-6
    for seed in range(3):
        torch.manual_seed(seed)
        fast = sl.apply(linear_with(W), "pissa", rank=r, svd="randomized", n_iter=n_iter, oversample=10)
        torch.testing.assert_close(fast.weight + split_off(fast), W, rtol=0, atol=1e-6)  # exact at init anyway
        assert 0 <= energy_deficit(W, fast, r) + 1e-6 and energy_deficit(W, fast, r) <= bound
        norm_fast = torch.linalg.matrix_norm(W - fast.weight)
        norm_exact = torch.linalg.matrix_norm(W - exact.weight)
        assert abs(float(norm_fast / norm_exact) - 1) <= bound / 2 + 1e-6


def test_randomized_pissa_without_a_gap_is_visibly_worse():
    r = 8
    gapped, flat = spectrum_matrix(96, 64, r, gap=0.3), spectrum_matrix(96, 64, r, gap=0.99)
    torch.manual_seed(0)
    good = energy_deficit(gapped, sl.apply(linear_with(gapped), "pissa", rank=r, svd="randomized", n_iter=1), r)
    torch.manual_seed(0)
    bad = energy_deficit(flat, sl.apply(linear_with(flat), "pissa", rank=r, svd="randomized", n_iter=1), r)
    assert good < 1e-3 < 1e-2 < bad


# -- PEFT cross-checks ----------------------------------------------------------------------------


def peft_layers(peft_model) -> dict[str, nn.Module]:
    return {
        name.split(".")[-1]: m
        for name, m in peft_model.named_modules()
        if hasattr(m, "lora_A") and "default" in getattr(m, "lora_A", {})
    }


def peft_split_off(ref) -> torch.Tensor:
    return ref.scaling["default"] * (ref.lora_B["default"].weight @ ref.lora_A["default"].weight).detach()


@needs_peft
@pytest.mark.parametrize(
    "method, rank, alpha, rslora",
    [
        ("pissa", 4, 8, False),
        ("pissa", 6, 3, True),
        ("olora", 4, 8, False),
        ("olora", 5, 5, True),
    ],
)
def test_same_effective_weights_as_peft_at_init_and_after_sgd(method, rank, alpha, rslora):
    base = mlp()
    ours = sl.apply(copy.deepcopy(base), method, rank=rank, alpha=alpha, rslora=rslora)
    config = LoraConfig(
        r=rank,
        lora_alpha=alpha,
        use_rslora=rslora,
        target_modules=["fc1", "fc2"],
        init_lora_weights=method,
        lora_dropout=0.0,
    )
    reference = get_peft_model(copy.deepcopy(base), config)
    refs = peft_layers(reference)
    assert sorted(refs) == ["fc1", "fc2"]
    for name, ref in refs.items():
        mine = getattr(ours, name)
        assert ref.scaling["default"] == pytest.approx(mine.scale)
        # the same split: the same residual base weight and the same s·BA (products, not factors)
        torch.testing.assert_close(mine.weight, ref.get_base_layer().weight, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(split_off(mine), peft_split_off(ref), rtol=1e-5, atol=1e-6)
    assert sl.trainable_parameters(ours) == sum(p.numel() for p in reference.parameters() if p.requires_grad)
    x = torch.randn(5, 20)
    torch.testing.assert_close(ours(x), reference(x), rtol=1e-5, atol=1e-6)

    sgd_steps(ours)
    sgd_steps(reference)
    torch.testing.assert_close(ours(x), reference(x), rtol=1e-5, atol=1e-6)
    merged_ref, merged_ours = reference.merge_and_unload(), sl.merge(ours)
    for name in ("fc1", "fc2"):
        mine, theirs = getattr(merged_ours, name).weight, getattr(merged_ref, name).weight
        torch.testing.assert_close(mine, theirs, rtol=1e-5, atol=1e-6)
        moved = (mine - getattr(base, name).weight).abs().max()
        assert 1e-3 < moved < 10  # training really moved the weights


@needs_peft
def test_randomized_pissa_agrees_with_peft_pissa_niter():
    """PEFT's ``pissa_niter_4`` (q = r, no oversampling) and ours capture the same energy on a gapped W."""
    r, q = 8, 4
    W = spectrum_matrix(96, 64, rank=r, gap=0.3)
    torch.manual_seed(0)
    reference = get_peft_model(
        nn.Sequential(linear_with(W)),
        LoraConfig(r=r, lora_alpha=2 * r, target_modules=["0"], init_lora_weights=f"pissa_niter_{q}"),
    )
    ref = peft_layers(reference)["0"]
    ref_norm = torch.linalg.matrix_norm(W - ref.get_base_layer().weight)
    exact = torch.linalg.svdvals(W)[:r].square().sum().sqrt()
    for oversample in (0, 10):
        torch.manual_seed(0)
        ours = sl.apply(linear_with(W), "pissa", rank=r, alpha=2 * r, svd="randomized", n_iter=q, oversample=oversample)
        norm = torch.linalg.matrix_norm(W - ours.weight)
        assert float(abs(norm - ref_norm) / exact) < 1e-4 and float(abs(norm - exact) / exact) < 1e-4
        torch.testing.assert_close(ours.weight + split_off(ours), W, rtol=0, atol=1e-6)
    assert float(abs(ref_norm - exact) / exact) < 1e-4


# -- dtypes and errors ----------------------------------------------------------------------------


@pytest.mark.parametrize("method", METHODS)
def test_bf16_weights_are_upcast_and_keep_their_dtype(method):
    base = mlp()
    wide = sl.apply(copy.deepcopy(base), method, rank=4)
    low = copy.deepcopy(base).to(torch.bfloat16)
    low_fc1 = low.fc1.weight.detach().clone()
    sl.apply(low, method, rank=4)  # torch.linalg.svd / qr have no bf16 kernels: this needs the upcast
    for name in ("fc1", "fc2"):
        layer = getattr(low, name)
        assert {layer.weight.dtype, layer.lora_A.dtype, layer.lora_B.dtype, layer.lora_A0.dtype} == {torch.bfloat16}
        # same split as in float32, up to bf16 rounding
        torch.testing.assert_close(
            layer.effective_weight().float(), getattr(wide, name).effective_weight(), rtol=2e-2, atol=2e-2
        )
        torch.testing.assert_close(split_off(layer).float(), split_off(getattr(wide, name)), rtol=2e-2, atol=2e-2)
    torch.testing.assert_close(low.fc1.effective_weight(), low_fc1, rtol=2e-2, atol=2e-2)
    x = torch.randn(3, 20)
    assert low(x.bfloat16()).dtype == torch.bfloat16


@pytest.mark.parametrize("method", METHODS)
def test_nan_weight_names_the_layer_before_any_factorization_and_leaves_the_model(method, monkeypatch):
    torch.manual_seed(0)
    model = ThreeLayers()
    with torch.no_grad():
        model.encoder["fc2"].weight[3, 5] = float("nan")
    before = {n: (type(m), id(m)) for n, m in model.named_modules()}
    params = {n: p.detach().clone() for n, p in model.named_parameters()}
    calls = []
    monkeypatch.setattr(pissa_module, "svd", lambda *a, **k: calls.append(1))
    monkeypatch.setattr(torch.linalg, "qr", lambda *a, **k: calls.append(1))
    with pytest.raises(ValueError, match=r"layer 'encoder\.fc2'.*1 non-finite"):
        sl.apply(model, method, rank=2)
    assert calls == []  # checked before any SVD / QR, so nothing was factorized
    assert {n: (type(m), id(m)) for n, m in model.named_modules()} == before
    for n, p in model.named_parameters():
        torch.testing.assert_close(p.detach(), params[n], rtol=0, atol=0, equal_nan=True)
        assert p.requires_grad
    # through "lora" with init=..., the init itself refuses when it reaches that layer (a ValueError
    # without the layer's name; earlier layers were factorized, but the model is still unchanged)
    monkeypatch.undo()
    with pytest.raises(ValueError, match="non-finite"):
        sl.apply(model, "lora", init=method, rank=2)
    assert {n: (type(m), id(m)) for n, m in model.named_modules()} == before


@pytest.mark.parametrize("method", METHODS)
def test_rank_above_min_dim_is_the_standard_error(method, model):
    with pytest.raises(ValueError, match=r"layer 'head' \(8×16\): rank=9 is outside the allowed range \[1, 8\]"):
        sl.apply(model, method, rank=9, targets=["head"])
    layer = sl.apply(nn.Linear(16, 8), method, rank=8)  # r = min(m, n) is allowed: W_res ≈ 0 for PiSSA
    assert layer.lora_A.shape == (8, 16)


def test_option_errors():
    lin = nn.Linear(8, 6)
    with pytest.raises(ValueError, match="svd='fast' is not one of 'exact', 'randomized'"):
        sl.apply(lin, "pissa", rank=2, svd="fast")
    with pytest.raises(ValueError, match=r"n_iter=-1 is outside the allowed range"):
        sl.apply(lin, "pissa", rank=2, svd="randomized", n_iter=-1)
    with pytest.raises(TypeError, match="unknown option"):
        sl.apply(lin, "milora", rank=2, svd="randomized")  # a sketch cannot find the smallest directions
    with pytest.raises(TypeError, match="unknown option"):
        sl.apply(lin, "pissa", rank=2, init="olora")  # the method name is the init


# -- export as plain LoRA of rank 2r, merge -------------------------------------------------------


@pytest.mark.parametrize("method", METHODS)
def test_export_as_rank_2r_lora_on_the_original_weight_after_training(method):
    base = mlp()
    model = sl.apply(copy.deepcopy(base), method, rank=3, alpha=6)
    init_buffers = {n: b.clone() for n, b in model.named_buffers()}
    sgd_steps(model)
    x = torch.randn(7, 20)
    for name in ("fc1", "fc2"):
        layer, original = getattr(model, name), getattr(base, name)
        for b in ("lora_A0", "lora_B0"):  # the remembered init is a buffer: saved, never trained
            assert torch.equal(getattr(layer, b), init_buffers[f"{name}.{b}"]) and b in layer.state_dict()
        A2, B2, scale, weight = export_lora(layer)
        assert A2.shape == (6, original.in_features) and B2.shape == (original.out_features, 6)
        assert scale == layer.scale
        torch.testing.assert_close(weight, original.weight, rtol=0, atol=1e-6)  # the original W is recovered
        torch.testing.assert_close(weight + scale * B2 @ A2, layer.effective_weight(), rtol=0, atol=1e-6)
        # a plain LoRA of rank 2r on the untouched original layer, loaded with the export, is the same layer
        plain = sl.apply(copy.deepcopy(original), "lora", rank=6, alpha=6 * scale)
        with torch.no_grad():
            plain.lora_A.copy_(A2)
            plain.lora_B.copy_(B2)
        assert plain.scale == pytest.approx(scale)
        h = x if name == "fc1" else torch.randn(7, 32)
        torch.testing.assert_close(plain(h), layer(h), rtol=1e-5, atol=1e-5)


def test_export_of_a_plain_lora_is_itself_and_other_layers_are_refused():
    layer = sl.apply(nn.Linear(10, 6), "lora", rank=2)
    assert not hasattr(layer, "lora_A0")
    A, B, scale, weight = export_lora(layer)
    assert torch.equal(A, layer.lora_A) and torch.equal(B, layer.lora_B) and torch.equal(weight, layer.weight)

    class Rescaled(LoRALinear):  # an effective weight that is not W + s·BA (as DoRA's)
        def effective_weight(self):
            return 2 * super().effective_weight()

    odd = Rescaled(nn.Linear(10, 6), 2, 2.0, False, "pissa", 0.0)
    with pytest.raises(TypeError, match="plain LoRA layer"):
        export_lora(odd)


@pytest.mark.parametrize("method", METHODS)
def test_merge_gives_the_same_outputs(method):
    model = sl.apply(mlp(), method, rank=4, alpha=8)
    sgd_steps(model, 3)
    x = torch.randn(6, 20)
    before = model(x).detach()
    merged = sl.merge(model)
    assert all(type(m) is nn.Linear for m in (merged.fc1, merged.fc2))
    torch.testing.assert_close(merged(x), before, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("init", ["pissa", "milora", "olora"])
def test_lora_with_a_decomposing_init_names_the_layer_with_non_finite_weights(init):
    torch.manual_seed(0)
    model = ThreeLayers()
    with torch.no_grad():
        model.head.weight[0, 0] = float("inf")
    before = fingerprint(model)
    with pytest.raises(ValueError, match=r"layer 'head': weight has 1 non-finite value"):
        sl.apply(model, "lora", rank=2, init=init)
    assert same_fingerprint(before, fingerprint(model))


def test_pissa_svd_options_are_declared():
    """The svd options are declarations (choices, ranges) the widgets and docs read; init is not one."""
    pissa = sl.method_class("pissa")
    assert pissa.option_choices("svd") == ["exact", "randomized"]
    assert pissa.options["n_iter"].default == 4 and pissa.options["oversample"].default == 10
    assert pissa.options["rank"] is sl.method_class("lora").options["rank"]
    with pytest.raises(TypeError, match=r"^layer 'head': oversample must be an int in \[0, inf\), got 2\.0"):
        sl.apply(ThreeLayers(), "pissa", rank=2, oversample=2.0, targets=["head"])


@pytest.mark.parametrize("method", METHODS)
def test_memory_report_formula_equals_measurement(method, model, ids):
    sl.apply(model, method, rank=2)
    opt = sl.optimizer(model, lr=1e-3)
    model(ids).square().mean().backward()
    opt.step()
    matches = sl.memory_report(model, opt).methods[method].matches()
    assert all(matches.values()), matches  # B₀, A₀ kept as buffers: r(m + n) extra, counted
