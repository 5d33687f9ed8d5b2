"""ReLoRA: merge-and-reinit is exact, the reset leaves B = 0 and A ≠ 0 (no A = B = 0 trap), the
saddle right after a reset (∂L/∂A = 0, ∂L/∂B ≠ 0), optimizer-state pruning per mode, the jagged
LR multiplier, determinism under a seed, trainable counts and bad input."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from torch import nn

import spectrallab as sl
from conftest import SmallMLP, assert_rejected_and_unchanged
from spectrallab.methods.relora import ReLoRALinear, prune_state, round_half_up
from spectrallab.optim import effective_lr, lr_multiplier

LAYERS = ("fc1", "fc2")


def make(seed: int = 0, bias: bool = True, **options) -> SmallMLP:
    torch.manual_seed(seed)
    model = SmallMLP(bias)
    options = {"rank": 4, "alpha": 8, "reset_every": 1000, "restart_warmup": 0, **options}  # s = 2
    return sl.apply(model, "relora", **options)


def data(step: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(100 + step)
    return torch.randn(16, 20, generator=g), torch.randn(16, 12, generator=g)


def train_step(model, opt, step: int) -> float:
    x, y = data(step)
    loss = nn.functional.mse_loss(model(x), y)
    opt.zero_grad()
    loss.backward()
    opt.step()
    return float(loss.detach())


def backward(model, step: int = 0) -> None:
    for p in model.parameters():
        p.grad = None
    x, y = data(step)
    nn.functional.mse_loss(model(x), y).backward()


# -- the layer -------------------------------------------------------------------------------------


def test_starts_as_the_original_function_with_lora_init():
    torch.manual_seed(0)
    base = SmallMLP()
    model = sl.apply(copy.deepcopy(base), "relora", rank=4, alpha=8)
    x = torch.randn(5, 20)
    torch.testing.assert_close(model(x), base(x))
    layer = model.fc1
    assert isinstance(layer, ReLoRALinear) and layer.scale == 2.0
    assert torch.count_nonzero(layer.lora_B) == 0
    bound = 1 / math.sqrt(20)  # Kaiming-uniform with a = √5 on fan-in 20
    assert 0.8 * bound < layer.lora_A.abs().max() <= bound
    assert not layer.weight.requires_grad and layer.bias.requires_grad
    # W is a copy: a merge writes into it and never into the nn.Linear it came from.
    linear = nn.Linear(20, 8)
    original = linear.weight.detach().clone()
    single = sl.apply(linear, "relora", rank=2)
    with torch.no_grad():
        single.lora_B.fill_(0.5)
    single.merge_and_reinit()
    assert torch.equal(linear.weight, original) and not torch.equal(single.weight, original)


def test_merge_and_reinit_is_exact_and_redraws_a():
    model = make()
    opt = sl.optimizer(model, lr=1e-2)
    for step in range(3):
        train_step(model, opt, step)
    x = torch.randn(7, 20)
    before = model(x).detach()
    for name in LAYERS:
        layer = getattr(model, name)
        W, A, delta = layer.weight.detach().clone(), layer.lora_A.detach().clone(), layer.delta_weight().detach()
        assert delta.abs().max() > 1e-4  # a real update to merge
        layer.merge_and_reinit()
        torch.testing.assert_close(layer.weight, W + delta)
        assert torch.count_nonzero(layer.lora_B) == 0
        assert torch.count_nonzero(layer.lora_A) == layer.lora_A.numel()  # re-drawn, not zeroed
        assert not torch.allclose(layer.lora_A, A)
        assert layer.restarts == 1
    torch.testing.assert_close(model(x), before)  # the function is unchanged across the reset


def test_the_optimizer_merges_every_t_steps_and_the_function_is_kept():
    """With plain SGD the weight the step produces is computable; the merge must keep exactly it."""
    T = 3
    model = make(reset_every=T, restart_warmup=1)
    lr = 0.05
    opt = sl.optimizer(model, lr=lr, optimizer="sgd")
    for step in range(1, 2 * T + 1):
        x, y = data(step)
        loss = nn.functional.mse_loss(model(x), y)
        opt.zero_grad()
        loss.backward()
        factor = lr_multiplier(opt)
        expected = {}
        for name in LAYERS:
            layer = getattr(model, name)
            with torch.no_grad():
                A = layer.lora_A - factor * lr * layer.lora_A.grad
                B = layer.lora_B - factor * lr * layer.lora_B.grad
                expected[name] = layer.weight + layer.scale * B @ A
        opt.step()
        for name in LAYERS:
            layer = getattr(model, name)
            torch.testing.assert_close(layer.effective_weight(), expected[name])
            assert layer.restarts == step // T
            if step % T == 0:
                torch.testing.assert_close(layer.weight, expected[name])  # everything went into W
                assert torch.count_nonzero(layer.lora_B) == 0
    assert model.fc1.schedule.step == 2 * T and model.fc1.schedule.last_reset == 2 * T


def test_after_a_reset_b_is_zero_and_a_is_not_so_b_gets_a_gradient():
    model = make(reset_every=2)
    opt = sl.optimizer(model, lr=1e-2)
    for step in range(2):
        train_step(model, opt, step)
    backward(model)
    for name in LAYERS:
        layer = getattr(model, name)
        assert torch.count_nonzero(layer.lora_B) == 0 and torch.count_nonzero(layer.lora_A) > 0
        assert layer.lora_B.grad.norm() > 1e-4  # training can restart
    # The trap the re-init avoids: with A = B = 0 too, no factor would ever receive a gradient.
    trapped = copy.deepcopy(model)
    with torch.no_grad():
        for name in LAYERS:
            getattr(trapped, name).lora_A.zero_()
    backward(trapped)
    for name in LAYERS:
        layer = getattr(trapped, name)
        assert torch.count_nonzero(layer.lora_A.grad) == 0 and torch.count_nonzero(layer.lora_B.grad) == 0


def test_right_after_a_reset_the_gradient_of_a_is_exactly_zero():
    """The saddle: B = 0 ⇒ ∂L/∂A = s Bᵀ ∂L/∂W' = 0 exactly, while ∂L/∂B = s ∂L/∂W' Aᵀ ≠ 0."""
    T = 4
    model = make(reset_every=T, restart_warmup=2)
    opt = sl.optimizer(model, lr=1e-2)
    norms_a = []
    for step in range(1, 2 * T + 1):
        x, y = data(step)
        loss = nn.functional.mse_loss(model(x), y)
        opt.zero_grad()
        loss.backward()
        norms_a.append(float(model.fc1.lora_A.grad.norm()))
        if step in (1, T + 1):  # the first step of the run and the first after the reset
            for name in LAYERS:
                layer = getattr(model, name)
                assert torch.count_nonzero(layer.lora_A.grad) == 0
                assert layer.lora_B.grad.norm() > 1e-4
        opt.step()
    # Step T + 1 runs at lr multiplier 0, so B is still 0 at step T + 2; from step T + 3 on A moves.
    assert norms_a[T] == norms_a[T + 1] == 0.0
    assert norms_a[T + 2] > 0 and norms_a[T - 1] > 0


# -- optimizer-state pruning ----------------------------------------------------------------------


def dense_moments(**options):
    """A model and its Adam after steps with every moment entry non-zero (no reset yet)."""
    model = make(**options)
    opt = sl.optimizer(model, lr=1e-2)
    for step in range(3):
        train_step(model, opt, step)
    for name in LAYERS:
        for p in (getattr(model, name).lora_A, getattr(model, name).lora_B):
            assert torch.count_nonzero(opt.state[p]["exp_avg"]) == p.numel()
    return model, opt


@pytest.mark.parametrize(
    "mode, ratio", [("random", 0.75), ("random", 0.999), ("magnitude", 0.75), ("magnitude", 0.5), ("reset", 0.75)]
)
def test_the_reset_prunes_the_lora_moments_per_mode(mode, ratio):
    model, opt = dense_moments(reset_every=4, prune=mode, prune_ratio=ratio)
    others = {
        n: opt.state[p]["exp_avg"].clone() for n, p in model.named_parameters() if p.requires_grad and "lora" not in n
    }
    steps_before = {id(p): int(opt.state[p]["step"]) for p in model.parameters() if p.requires_grad}
    train_step(model, opt, 3)  # step 4: merge, re-init, prune
    for name in LAYERS:
        for p in (getattr(model, name).lora_A, getattr(model, name).lora_B):
            m, v = opt.state[p]["exp_avg"], opt.state[p]["exp_avg_sq"]
            kept = 0 if mode == "reset" else p.numel() - round_half_up(ratio * p.numel())
            assert torch.count_nonzero(m) == kept and torch.count_nonzero(v) == kept
            assert torch.equal(m != 0, v != 0)  # one mask for both moments
            assert int(opt.state[p]["step"]) == steps_before[id(p)] + 1  # the step counter is kept
    for n, p in model.named_parameters():  # embeddings, biases: untouched by the reset
        if n in others:
            assert torch.count_nonzero(opt.state[p]["exp_avg"]) == p.numel()


def test_magnitude_pruning_keeps_the_largest_first_moments_and_random_is_not_magnitude():
    model, opt = dense_moments()
    p = model.fc1.lora_B
    m_before = opt.state[p]["exp_avg"].clone()
    kept = p.numel() - round_half_up(0.9 * p.numel())
    largest = set(torch.topk(m_before.abs().flatten(), kept).indices.tolist())
    prune_state(opt, p, "magnitude", 0.9, torch.Generator().manual_seed(0))
    survivors = set(torch.nonzero(opt.state[p]["exp_avg"].flatten()).flatten().tolist())
    assert survivors == largest
    torch.testing.assert_close(opt.state[p]["exp_avg"].flatten()[list(largest)], m_before.flatten()[list(largest)])

    q = model.fc2.lora_B
    m_q = opt.state[q]["exp_avg"].clone()
    top_q = set(torch.topk(m_q.abs().flatten(), kept := q.numel() - round_half_up(0.9 * q.numel())).indices.tolist())
    prune_state(opt, q, "random", 0.9, torch.Generator().manual_seed(0))
    random_survivors = set(torch.nonzero(opt.state[q]["exp_avg"].flatten()).flatten().tolist())
    assert len(random_survivors) == kept and random_survivors != top_q


# -- the jagged schedule --------------------------------------------------------------------------


def test_lr_multiplier_drops_to_zero_at_each_reset_and_rewarms_linearly():
    model = make(reset_every=4, restart_warmup=2)
    opt = sl.optimizer(model, lr=1e-2)
    seen = []
    for step in range(12):
        seen.append(lr_multiplier(opt))
        train_step(model, opt, step)
    assert seen == [1, 1, 1, 1, 0, 0.5, 1, 1, 0, 0.5, 1, 1]
    assert opt.param_groups[0]["lr"] == 1e-2  # the user's lr is restored after every step


def test_restart_warmup_zero_means_no_jag_and_the_multiplier_composes_with_a_scheduler():
    model = make(reset_every=3, restart_warmup=0)
    opt = sl.optimizer(model, lr=1e-2)
    for step in range(7):
        assert lr_multiplier(opt) == 1.0
        train_step(model, opt, step)
    assert model.fc1.restarts == 2

    model = make(reset_every=5, restart_warmup=4)
    opt = sl.optimizer(model, lr=1e-2)
    cosine = sl.warmup_cosine(20, warmup=2)
    scheduler = torch.optim.lr_scheduler.LambdaLR(opt, cosine)
    lrs = []
    for step in range(12):
        lrs.append(effective_lr(opt))
        train_step(model, opt, step)
        scheduler.step()
    jag = [1, 1, 1, 1, 1, 0, 0.25, 0.5, 0.75, 1, 0, 0.25]
    torch.testing.assert_close(torch.tensor(lrs), torch.tensor([1e-2 * cosine(t) * j for t, j in enumerate(jag)]))


def test_train_reports_the_jagged_lr():
    task = sl.task("teacher")
    torch.manual_seed(0)
    model = sl.apply(task.make_model(seed=0), "relora", rank=2, reset_every=5, restart_warmup=2)
    run = sl.fit(model, task, 12, lr=1e-2, record=False)
    assert run.lr == pytest.approx([1e-2 * j for j in (1, 1, 1, 1, 1, 0, 0.5, 1, 1, 1, 0, 0.5)])


# -- determinism, counts, composition -------------------------------------------------------------


def trained_weights(global_seed: int, seed: int | None):
    """Weights after 5 steps with 2 resets; the base model is the same, the global RNG at apply is not."""
    torch.manual_seed(0)
    model = SmallMLP()
    torch.manual_seed(global_seed)
    sl.apply(model, "relora", rank=4, reset_every=2, restart_warmup=1, prune="random", prune_ratio=0.5, seed=seed)
    opt = sl.optimizer(model, lr=1e-2)
    for step in range(5):
        train_step(model, opt, step)
    return {n: p.detach().clone() for n, p in model.named_parameters()}


def test_deterministic_under_a_seed_and_seeds_differ():
    a, b = trained_weights(1, seed=7), trained_weights(2, seed=7)
    assert all(torch.equal(a[n], b[n]) for n in a)  # init, re-inits and pruning masks all follow the seed
    c = trained_weights(1, seed=8)
    assert not torch.equal(a["fc1.lora_A"], c["fc1.lora_A"]) and not torch.equal(a["fc1.weight"], c["fc1.weight"])
    d, e = trained_weights(3, seed=None), trained_weights(3, seed=None)  # torch.manual_seed before apply decides
    assert all(torch.equal(d[n], e[n]) for n in d)
    f = trained_weights(4, seed=None)
    assert not torch.equal(d["fc1.lora_A"], f["fc1.lora_A"])


def test_trainable_count_is_r_times_m_plus_n_plus_the_bias_and_nothing_is_frozen(model):
    r = 4
    no_bias = make(bias=False, rank=r)
    assert sl.trainable_parameters(no_bias) == r * (32 + 20) + r * (12 + 32)
    with_bias = make(bias=True, rank=r)
    assert sl.trainable_parameters(with_bias) == r * (32 + 20) + r * (12 + 32) + 32 + 12
    sl.apply(model, "relora", rank=2, targets=["fc1"])  # pre-training: the rest of the model trains
    assert model.embed.weight.requires_grad and model.head.weight.requires_grad


def test_warm_start_is_full_training_then_relora():
    torch.manual_seed(0)
    model = sl.apply(SmallMLP(), "full")
    opt = sl.optimizer(model, lr=1e-2)
    for step in range(3):
        train_step(model, opt, step)
    x = torch.randn(4, 20)
    warm = model(x).detach()
    sl.merge(model)
    sl.apply(model, "relora", rank=4, prune_ratio=0.99)
    torch.testing.assert_close(model(x), warm)


BAD = [
    (dict(rank=0), ValueError, r"layer 'fc1'.*rank=0 is outside the allowed range \[1, 20\]"),
    (
        dict(rank=4, reset_every=0),
        ValueError,
        r"layers 'fc1', 'fc2': reset_every=0 is outside the allowed range \[1, inf\)",
    ),
    (dict(rank=4, reset_every=2.5), TypeError, r"layers 'fc1', 'fc2': reset_every must be an int"),
    (
        dict(rank=4, reset_every=50),
        ValueError,
        r"layers 'fc1', 'fc2': restart_warmup=100 is outside the allowed range \[0, 49\].*reset_every=50",
    ),
    (dict(rank=4, restart_warmup=-1), ValueError, r"restart_warmup=-1 is outside the allowed range \[0, 1999\]"),
    (
        dict(rank=4, prune="svd"),
        ValueError,
        r"layers 'fc1', 'fc2': prune='svd' is not one of 'random', 'magnitude', 'reset'",
    ),
    (
        dict(rank=4, prune_ratio=1.5),
        ValueError,
        r"layers 'fc1', 'fc2': prune_ratio=1.5 is outside the allowed range \[0, 1\]",
    ),
    (dict(rank=4, prune_ratio="most"), TypeError, r"prune_ratio must be a finite number in \[0, 1\]"),
    (dict(rank=4, alpha=0), ValueError, r"alpha=0 is outside the allowed range \(0, inf\)"),
    (dict(rank=4, seed="x"), TypeError, r"seed must be an int or None"),
    (dict(rank=4, sparsity=0.1), TypeError, r"unknown option\(s\) sparsity"),
]


@pytest.mark.parametrize("options, error, message", BAD)
def test_bad_input_names_layer_value_and_range_and_changes_nothing(options, error, message):
    assert_rejected_and_unchanged("relora", options, error, message)
