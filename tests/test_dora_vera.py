"""DoRA and VeRA, checked against their definitions and cross-checked against HF PEFT.

DoRA: output equals the base model at step 0, the magnitude starts at ‖W‖ per output row, the
norm is detached (gradients by hand and from PEFT), and the same SGD steps as PEFT's
``LoraConfig(use_dora=True)`` give the same merged weights. VeRA: our seeded draw *is* PEFT's
shared ``vera_A`` / ``vera_B`` (bit for bit), so the runs start identical without copying anything;
``ΔW = diag(λ_b) B diag(λ_d) A``, ``λ_b = 0 ⇒ ΔW = 0``, one shared pair for all layers.
"""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

import spectrallab as sl
from conftest import SmallMLP, fingerprint, same_fingerprint, sgd_steps
from spectrallab.methods.dora import DoRALinear
from spectrallab.methods.vera import VeRA, VeRALinear, VeRAProjections

peft = pytest.importorskip("peft")
from peft import LoraConfig, VeraConfig, get_peft_model  # noqa: E402


def base_model(seed: int = 0, bias: bool = True) -> SmallMLP:
    torch.manual_seed(seed)
    return SmallMLP(bias)


def peft_layers(peft_model, attr: str) -> dict[str, nn.Module]:
    return {
        name.split(".")[-1]: m
        for name, m in peft_model.named_modules()
        if isinstance(getattr(m, attr, None), nn.ParameterDict | nn.ModuleDict) and "default" in getattr(m, attr)
    }


def trainable(model) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def assert_same_merged(ours, reference, base, x):
    """Outputs, then merged weights and biases, agree; and training moved the weights."""
    ours.eval(), reference.eval()
    torch.testing.assert_close(ours(x), reference(x), rtol=1e-5, atol=1e-6)
    merged_ref = reference.merge_and_unload()
    merged_ours = sl.merge(ours)
    for name in ("fc1", "fc2"):
        mine, ref = getattr(merged_ours, name), getattr(merged_ref, name)
        assert type(mine) is nn.Linear
        torch.testing.assert_close(mine.weight, ref.weight, rtol=1e-5, atol=1e-6)
        if ref.bias is not None:
            torch.testing.assert_close(mine.bias, ref.bias)
        moved = (mine.weight - getattr(base, name).weight).abs().max()
        assert 1e-4 < moved < 10


# -- DoRA -------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "rank, alpha, rslora, init, dropout",
    [
        (4, 8, False, "default", 0.0),
        (2, 6, True, "gaussian", 0.0),
        (4, 4, False, "default", 0.25),  # dropout: PEFT's (and the official code's) training-mode formula
    ],
)
def test_dora_same_init_same_steps_as_peft(rank, alpha, rslora, init, dropout):
    base = base_model()
    ours = sl.apply(copy.deepcopy(base), "dora", rank=rank, alpha=alpha, rslora=rslora, init=init, dropout=dropout)
    config = LoraConfig(
        r=rank,
        lora_alpha=alpha,
        use_rslora=rslora,
        use_dora=True,
        target_modules=["fc1", "fc2"],
        init_lora_weights=True if init == "default" else "gaussian",
        lora_dropout=dropout,
    )
    reference = get_peft_model(copy.deepcopy(base), config)

    layers = peft_layers(reference, "lora_magnitude_vector")
    assert sorted(layers) == ["fc1", "fc2"]
    for name, ref in layers.items():
        mine = getattr(ours, name)
        assert isinstance(mine, DoRALinear) and mine.scale == pytest.approx(ref.scaling["default"])
        # magnitude = ‖W‖ per output row, as PEFT's (the norm is over dim=1 of the out × in weight)
        row_norms = getattr(base, name).weight.detach().norm(dim=1)
        torch.testing.assert_close(mine.magnitude.detach(), row_norms)
        torch.testing.assert_close(ref.lora_magnitude_vector["default"].weight.detach(), row_norms)
        with torch.no_grad():  # the random A is the only factor that differs: give ours PEFT's
            mine.lora_A.copy_(ref.lora_A["default"].weight)

    assert trainable(ours) == trainable(reference) == sum(rank * (m + n) + m for m, n in ((32, 20), (12, 32)))
    x = torch.randn(5, 20)
    torch.testing.assert_close(ours(x), reference(x))

    sgd_steps(ours, 5)
    sgd_steps(reference, 5)
    assert_same_merged(ours, reference, base, x)


def test_dora_is_the_base_model_at_init(model, ids):
    """W' = W at step 0 for every layer (with and without bias); the magnitude is ‖W‖_row."""
    before = model(ids)
    weights = {n: m.weight.detach().clone() for n, m in model.named_modules() if isinstance(m, nn.Linear)}
    sl.apply(model, "dora", rank=4)
    torch.testing.assert_close(model(ids), before)
    for name, layer in sl.adapted_layers(model).items():
        torch.testing.assert_close(layer.magnitude.detach(), weights[name].norm(dim=1))
        torch.testing.assert_close(layer.effective_weight(), weights[name])


def test_dora_is_the_base_model_at_init_for_every_lora_init():
    """Spectral inits (PiSSA, OLoRA, ...) move part of W into BA; mag = ‖W_res + sBA‖_row still gives W' = W."""
    from spectrallab.methods.lora import LORA_INITS

    base = base_model()
    x = torch.randn(4, 20)
    for init in sorted(LORA_INITS):
        ours = sl.apply(copy.deepcopy(base), "dora", rank=4, alpha=8, init=init)
        torch.testing.assert_close(ours(x), base(x), rtol=1e-5, atol=1e-5, msg=f"init={init}")
        torch.testing.assert_close(
            ours.fc1.magnitude.detach(), base.fc1.weight.detach().norm(dim=1), rtol=1e-5, atol=1e-5, msg=f"init={init}"
        )


def test_dora_norm_is_per_output_row_and_matches_the_dense_norm():
    layer = sl.apply(nn.Linear(24, 10), "dora", rank=3, alpha=6)
    with torch.no_grad():
        layer.lora_B.normal_(0, 0.5)  # a real update, comparable in size to W
    dense = layer.weight + layer.scale * layer.lora_B @ layer.lora_A
    torch.testing.assert_close(layer.weight_norm(), dense.norm(dim=1), rtol=1e-5, atol=1e-6)
    # each output row of W' has length exactly `magnitude`
    torch.testing.assert_close(layer.effective_weight().norm(dim=1), layer.magnitude.detach(), rtol=1e-5, atol=1e-6)


def test_dora_norm_is_detached_in_backward():
    """Gradients of m, A, B: by hand (norm a constant), from PEFT, and not those of the un-detached norm."""
    base = base_model()
    ours = sl.apply(copy.deepcopy(base), "dora", rank=3, alpha=3, targets=["fc1"])
    config = LoraConfig(r=3, lora_alpha=3, use_dora=True, target_modules=["fc1"])
    reference = get_peft_model(copy.deepcopy(base), config)
    ref = peft_layers(reference, "lora_magnitude_vector")["fc1"]
    mine = ours.fc1
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():  # move away from init, so that the norm differs from m and B ≠ 0
        mine.lora_A.copy_(torch.randn(mine.lora_A.shape, generator=g))
        mine.lora_B.copy_(0.3 * torch.randn(mine.lora_B.shape, generator=g))
        mine.magnitude.mul_(1 + 0.2 * torch.rand(mine.magnitude.shape, generator=g))
        ref.lora_A["default"].weight.copy_(mine.lora_A)
        ref.lora_B["default"].weight.copy_(mine.lora_B)
        ref.lora_magnitude_vector["default"].weight.copy_(mine.magnitude)

    x = torch.randn(8, 20, generator=g)
    G = torch.randn(8, 32, generator=g)  # loss = Σ G ⊙ fc1(x)
    (G * ours.fc1(x)).sum().backward()
    (G * reference.base_model.model.fc1(x)).sum().backward()
    for mine_p, ref_p in (
        (mine.magnitude, ref.lora_magnitude_vector["default"].weight),
        (mine.lora_A, ref.lora_A["default"].weight),
        (mine.lora_B, ref.lora_B["default"].weight),
    ):
        torch.testing.assert_close(mine_p.grad, ref_p.grad, rtol=1e-5, atol=1e-6)

    # by hand, with c = m / ‖V‖ a constant:  y = c ⊙ (x Vᵀ) + b,  V = W + sBA
    with torch.no_grad():
        A, B, s, W = mine.lora_A, mine.lora_B, mine.scale, mine.weight
        V = W + s * B @ A
        norm = V.norm(dim=1)
        c = mine.magnitude / norm
        grad_m = (G * (x @ V.T)).sum(0) / norm
        grad_B = s * (G * c).T @ (x @ A.T)
        grad_A = s * B.T @ (G * c).T @ x
    torch.testing.assert_close(mine.magnitude.grad, grad_m, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(mine.lora_B.grad, grad_B, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(mine.lora_A.grad, grad_A, rtol=1e-5, atol=1e-6)

    # the un-detached norm would give a different gradient for B (so the check above has teeth)
    B_free = B.detach().clone().requires_grad_(True)
    V_free = W + s * B_free @ A
    y_free = x @ (mine.magnitude.detach() / V_free.norm(dim=1)).unsqueeze(1).mul(V_free).T
    (G * y_free).sum().backward()
    assert not torch.allclose(B_free.grad, grad_B, rtol=1e-3, atol=1e-5)


def test_dora_rank_out_of_range_leaves_the_model_untouched(model):
    before = fingerprint(model)
    with pytest.raises(ValueError, match=r"rank=17 is outside the allowed range \[1, 16\]"):
        sl.apply(model, "dora", rank=17)  # encoder.fc2 is 16×32, head 8×16: fails on a later layer
    assert same_fingerprint(before, fingerprint(model))
    with pytest.raises(ValueError, match="rank=0"):
        sl.apply(model, "dora", rank=0)
    with pytest.raises(TypeError, match="rank must be an int"):
        sl.apply(model, "dora", rank=2.0)
    assert same_fingerprint(before, fingerprint(model))


# -- VeRA -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("key", [0, 5])
def test_vera_shared_matrices_are_peft_bit_for_bit(key):
    base = base_model()
    ours = sl.apply(copy.deepcopy(base), "vera", rank=6, projection_prng_key=key)
    reference = get_peft_model(
        copy.deepcopy(base), VeraConfig(r=6, target_modules=["fc1", "fc2"], projection_prng_key=key)
    )
    shared = ours.fc1.projections
    assert shared is ours.fc2.projections  # one module, one copy
    # sized by the largest in / out over the targets: fc1 is 32×20, fc2 12×32
    assert shared.A.shape == (6, 32) and shared.B.shape == (32, 6)
    vera_A, vera_B = reference.base_model.vera_A["default"], reference.base_model.vera_B["default"]
    assert torch.equal(shared.A, vera_A) and torch.equal(shared.B, vera_B)
    # Kaiming-uniform, ReLU gain, fan_in = number of columns
    assert shared.A.abs().max() <= (6 / 32) ** 0.5 and shared.B.abs().max() <= (6 / 6) ** 0.5
    # slices: A[:, :n], B[:m], as views of the shared storage
    assert torch.equal(ours.fc1.vera_A, vera_A[:, :20]) and torch.equal(ours.fc2.vera_B, vera_B[:12])
    assert ours.fc1.vera_A.data_ptr() == ours.fc2.vera_A.data_ptr() == shared.A.data_ptr()
    # a different key, a different draw
    other = sl.apply(copy.deepcopy(base), "vera", rank=6, projection_prng_key=key + 1)
    assert not torch.equal(other.fc1.projections.A, shared.A)


@pytest.mark.parametrize(
    "rank, d_initial, dropout",
    [
        (4, 0.1, 0.0),
        (40, 0.5, 0.0),  # r larger than every layer dimension: allowed, as in the paper
        (8, 0.1, 0.2),
    ],
)
def test_vera_same_steps_as_peft(rank, d_initial, dropout):
    base = base_model()
    ours = sl.apply(copy.deepcopy(base), "vera", rank=rank, d_initial=d_initial, dropout=dropout)
    reference = get_peft_model(
        copy.deepcopy(base),
        VeraConfig(r=rank, d_initial=d_initial, vera_dropout=dropout, target_modules=["fc1", "fc2"]),
    )
    layers = peft_layers(reference, "vera_lambda_d")
    for name, ref in layers.items():
        mine = getattr(ours, name)
        assert torch.equal(mine.lambda_d, ref.vera_lambda_d["default"])
        assert torch.equal(mine.lambda_b, ref.vera_lambda_b["default"])
    # trainable per layer: r + m (the shared A, B are buffers)
    assert trainable(ours) == trainable(reference) == (rank + 32) + (rank + 12)
    x = torch.randn(5, 20)
    torch.testing.assert_close(ours(x), base(x))  # λ_b = 0

    sgd_steps(ours, 5, lr=0.2)
    sgd_steps(reference, 5, lr=0.2)
    for name, ref in layers.items():
        mine = getattr(ours, name)
        torch.testing.assert_close(mine.lambda_b, ref.vera_lambda_b["default"], rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(mine.lambda_d, ref.vera_lambda_d["default"], rtol=1e-5, atol=1e-6)
    assert_same_merged(ours, reference, base, x)


def test_vera_delta_weight_formula_and_zero_at_init(model, ids):
    before = model(ids)
    weights = {n: m.weight.detach().clone() for n, m in model.named_modules() if isinstance(m, nn.Linear)}
    sl.apply(model, "vera", rank=5)
    layers = sl.adapted_layers(model)
    assert len({id(layer.projections) for layer in layers.values()}) == 1
    for name, layer in layers.items():  # λ_b = 0 ⇒ ΔW = 0
        assert torch.count_nonzero(layer.lambda_b) == 0 and torch.all(layer.lambda_d == 0.1)
        assert torch.count_nonzero(layer.delta_weight()) == 0
        torch.testing.assert_close(layer.effective_weight(), weights[name], rtol=0, atol=0)
    torch.testing.assert_close(model(ids), before)

    g = torch.Generator().manual_seed(1)
    layer = layers["encoder.fc1"]  # 32×16
    with torch.no_grad():
        layer.lambda_b.copy_(torch.randn(32, generator=g))
        layer.lambda_d.copy_(torch.randn(5, generator=g))
    A, B = layer.projections.A[:, :16], layer.projections.B[:32]
    expected = torch.diag(layer.lambda_b) @ B @ torch.diag(layer.lambda_d) @ A
    torch.testing.assert_close(layer.delta_weight(), expected)
    x = torch.randn(3, 16, generator=g)
    torch.testing.assert_close(layer(x), x @ (weights["encoder.fc1"] + expected).T + layer.bias)
    # merging gives the same function
    merged = sl.merge(copy.deepcopy(model))
    torch.testing.assert_close(merged(ids), model(ids), rtol=1e-5, atol=1e-6)


def test_vera_sharing_survives_dtype_and_copy():
    model = sl.apply(base_model(), "vera", rank=4)
    model.double()
    assert model.fc1.projections is model.fc2.projections
    assert model.fc1.projections.A.dtype == torch.float64
    assert model.fc1.vera_A.data_ptr() == model.fc2.vera_A.data_ptr()
    twin = copy.deepcopy(model)
    assert twin.fc1.projections is twin.fc2.projections and twin.fc1.projections is not model.fc1.projections
    assert not any(b.requires_grad for b in model.buffers())
    assert {n for n, p in model.named_parameters() if p.requires_grad} == {
        "fc1.lambda_d",
        "fc1.lambda_b",
        "fc2.lambda_d",
        "fc2.lambda_b",
    }


def test_vera_merge_after_training_keeps_the_function():
    model = sl.apply(base_model(), "vera", rank=8)
    sgd_steps(model, 3, lr=0.2)
    x = torch.randn(4, 20)
    expected = model(x)
    merged = sl.merge(model)
    assert not sl.adapted_layers(merged)
    torch.testing.assert_close(merged(x), expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(
    "options, error, message",
    [
        ({"rank": 0}, ValueError, r"rank=0 is outside the allowed range \[1, inf\)"),
        ({"rank": -3}, ValueError, "rank=-3"),
        ({"rank": 2.5}, TypeError, "rank must be an int"),
        ({"rank": True}, TypeError, "rank must be an int"),
        ({"d_initial": 0}, ValueError, "d_initial=0 is not allowed"),
        ({"d_initial": float("nan")}, TypeError, "d_initial must be a finite"),
        ({"projection_prng_key": -1}, ValueError, "projection_prng_key=-1"),
        ({"projection_prng_key": "0"}, TypeError, "projection_prng_key must be an int"),
        ({"dropout": 1.0}, ValueError, "dropout=1.0"),
        ({"d_inital": 0.1}, TypeError, "unknown option"),
    ],
)
def test_vera_bad_options_raise_and_leave_the_model_untouched(model, options, error, message):
    before = fingerprint(model)
    with pytest.raises(error, match=message):
        sl.apply(model, "vera", **options)
    assert same_fingerprint(before, fingerprint(model))


def test_vera_adapt_needs_check_on_every_target_first():
    """Used by hand (not through apply), a layer larger than the already-drawn pair is refused."""
    spec = VeRA(rank=2)
    small, big = nn.Linear(4, 3), nn.Linear(8, 6)
    spec.check("small", small)
    layer = spec.adapt("small", small)
    assert isinstance(layer, VeRALinear) and isinstance(layer.projections, VeRAProjections)
    with pytest.raises(RuntimeError, match="call check"):
        spec.adapt("big", big)


def test_vera_rank_is_not_bounded_by_the_layer():
    """The paper uses r > d (r = 1024 on d = 768): a rank above min(out, in) is accepted."""
    layer = sl.apply(nn.Linear(6, 4), "vera", rank=50)
    assert layer.lambda_d.shape == (50,) and layer.vera_A.shape == (50, 6)
    assert layer.paper_counts().trainable == 50 + 4


def test_vera_option_errors_name_every_target_before_any_layer(model):
    """Option errors come once per apply, naming the targets, before any layer is looked at."""
    with pytest.raises(ValueError, match=r"^layers 'encoder\.fc1', 'encoder\.fc2', 'head': d_initial=0 is not"):
        sl.apply(model, "vera", d_initial=0.0)
    with pytest.raises(
        ValueError,
        match=r"^layer 'head': projection_prng_key=18446744073709551616 is outside "
        r"the allowed range \[0, 18446744073709551616\)",
    ):
        sl.apply(model, "vera", projection_prng_key=2**64, targets=["head"])


@pytest.mark.parametrize(
    "method, options",
    [
        ("dora", {"rank": 3}),
        ("dora", {"rank": 3, "init": "pissa"}),
        ("vera", {"rank": 40}),
    ],
)
def test_memory_report_formula_equals_measurement(model, ids, method, options):
    """After one AdamW step every row the formula models is "=" (VeRA's shared pair is not a per-layer
    count: its extra row is left out, not compared)."""
    sl.apply(model, method, **options)
    opt = sl.optimizer(model, lr=1e-3)
    model(ids).square().mean().backward()
    opt.step()
    matches = sl.memory_report(model, opt).methods[method].matches()
    assert matches.pop("buffer_elements") is (None if method == "vera" else True)
    assert all(matches.values()), matches
    if method == "dora":  # r(m + n) + m per layer, m the magnitudes
        expected = sum(3 * (m + n) + m for m, n in [(32, 16), (16, 32), (8, 16)])
        assert sum(layer.paper_counts().trainable for layer in sl.adapted_layers(model).values()) == expected
