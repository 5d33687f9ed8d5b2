"""GaLore (Zhao et al. 2024, arXiv:2403.03507): the optimizer against its definition and against
``galore-torch`` (the authors' PyPI package, ``GaLoreAdamW``).

* Cross-check: the same weights and the same gradients through ``sl.optimizer`` and through
  ``galore_torch.GaLoreAdamW`` give the same weights out, over 13 steps with ``T = 5`` (projections at
  steps 1, 6, 11: two updates crossed), for a tall (m ≥ n) and a wide (m < n) weight and a plain
  AdamW layer and biases in the same optimizer; every ``proj_type``; our defaults are torch's.
* The state: moments of ``R`` (m×r or r×n) plus ``P`` per weight, counted by formula; full shapes
  and no projection for every other parameter; ``state_dict`` round-trips across a projection update.
* The schedule: ``P`` is the top-r singular subspace of the gradient at steps 1, T+1, 2T+1, …, and
  not recomputed in between; the moments are carried over unchanged when ``P`` changes.
* The update: lies in P's row (or column) space, has rank ≤ r, and is ``−η·α·sign(R)`` projected
  back on the first step, so it is linear in ``scale``.
* Bad input: ranks, options, optimizers, hand-built groups.
"""

from __future__ import annotations

import copy
import logging
import math

import pytest
import torch
from torch import nn

import spectrallab as sl
from conftest import fingerprint, same_fingerprint
from spectrallab.methods.galore import GaLoreAdamW, GaLoreLinear

# bitsandbytes (a galore-torch dependency) logs a warning on a CPU without its optional kernels.
logging.getLogger("bitsandbytes").setLevel(logging.ERROR)
galore_torch = pytest.importorskip("galore_torch")

PROJ_TYPES = ["std", "reverse_std", "left", "right", "full"]


class Net(nn.Module):
    """fc1: 48×20 (tall, m ≥ n), fc2: 12×48 (wide, m < n), head: 5×12 (not GaLore: plain AdamW)."""

    def __init__(self):
        super().__init__()
        self.fc1, self.fc2, self.head = nn.Linear(20, 48), nn.Linear(48, 12), nn.Linear(12, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.tanh(self.fc2(torch.tanh(self.fc1(x)))))


def base_net(seed: int = 0) -> Net:
    torch.manual_seed(seed)
    return Net()


def galore_net(rank=4, gap=5, scale=0.25, proj_type="std", seed=0) -> Net:
    return sl.apply(
        base_net(seed),
        "galore",
        rank=rank,
        update_proj_gap=gap,
        scale=scale,
        proj_type=proj_type,
        targets=["fc1", "fc2"],
    )


def batches(steps: int, seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        yield torch.randn(16, 20, generator=g), torch.randn(16, 5, generator=g)


def train(model, opt, steps, seed=1):
    for x, y in batches(steps, seed):
        loss = nn.functional.mse_loss(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()


def reference_optimizer(model: Net, rank, gap, scale, proj_type, **kwargs):
    """galore-torch as its README uses it: GaLore weights in one group, everything else in another."""
    galore = [model.fc1.weight, model.fc2.weight]
    regular = [p for p in model.parameters() if all(p is not w for w in galore)]
    groups = [
        {"params": regular},
        {"params": galore, "rank": rank, "update_proj_gap": gap, "scale": scale, "proj_type": proj_type},
    ]
    return galore_torch.GaLoreAdamW(groups, no_deprecation_warning=True, **kwargs)


# -- the cross-check -------------------------------------------------------------------------------


@pytest.mark.parametrize("proj_type", PROJ_TYPES)
def test_same_weights_out_as_galore_torch(proj_type):
    rank, gap, scale, steps = 4, 5, 0.25, 13  # projections at steps 1, 6, 11
    base = base_net()
    ours = galore_net(rank, gap, scale, proj_type)
    reference = copy.deepcopy(base)
    settings = dict(lr=1e-2, weight_decay=0.1, eps=1e-6, betas=(0.9, 0.99))
    opt = sl.optimizer(ours, **settings)
    ref_opt = reference_optimizer(reference, rank, gap, scale, proj_type, **settings)
    assert isinstance(opt, GaLoreAdamW)

    train(ours, opt, steps)
    train(reference, ref_opt, steps)
    for (name, mine), ref in zip(ours.named_parameters(), reference.parameters()):
        torch.testing.assert_close(mine, ref, rtol=1e-5, atol=1e-6, msg=name)
    # both projectors were refreshed twice, at the same steps, to the same P
    for layer, ref_w in ((ours.fc1, reference.fc1.weight), (ours.fc2, reference.fc2.weight)):
        state, projector = opt.state[layer.weight], ref_opt.state[ref_w]["projector"]
        assert int(state["step"]) == ref_opt.state[ref_w]["step"] == steps
        mine = [state[k] for k in ("projection_left", "projection_right") if k in state]
        theirs = projector.ortho_matrix if proj_type == "full" else [projector.ortho_matrix]
        assert len(mine) == len(theirs)
        for a, b in zip(mine, theirs):
            torch.testing.assert_close(a, b)
    # the check is not vacuous: training moved the weights, and GaLore is not plain AdamW
    plain = copy.deepcopy(base)
    train(plain, torch.optim.AdamW(plain.parameters(), lr=1e-2, weight_decay=0.1, eps=1e-6, betas=(0.9, 0.99)), steps)
    for name in ("fc1", "fc2"):
        moved = (ours.get_submodule(name).weight - base.get_submodule(name).weight).abs().max()
        gap_to_adamw = (ours.get_submodule(name).weight - plain.get_submodule(name).weight).abs().max()
        assert moved > 1e-3 and gap_to_adamw > 1e-3, (name, float(moved), float(gap_to_adamw))


def test_defaults_are_torch_adamw_defaults_with_galore_torch_arithmetic():
    """sl.optimizer(model, lr) for GaLore = galore-torch with eps=1e-8, weight_decay=1e-2 (torch's
    AdamW defaults); galore-torch's own defaults (eps=1e-6, no decay) give different weights."""
    base = base_net()
    ours = galore_net(gap=3)
    opt = sl.optimizer(ours, lr=1e-2)
    reference, other = copy.deepcopy(base), copy.deepcopy(base)
    ref_opt = reference_optimizer(reference, 4, 3, 0.25, "std", lr=1e-2, eps=1e-8, weight_decay=1e-2)
    other_opt = reference_optimizer(other, 4, 3, 0.25, "std", lr=1e-2)
    for model, o in ((ours, opt), (reference, ref_opt), (other, other_opt)):
        train(model, o, 8)
    torch.testing.assert_close(ours.fc1.weight, reference.fc1.weight, rtol=1e-5, atol=1e-6)
    assert (ours.fc1.weight - other.fc1.weight).abs().max() > 1e-5


# -- what sl.optimizer builds ----------------------------------------------------------------------


def test_optimizer_has_a_galore_group_and_a_plain_group():
    model = galore_net(rank=3, gap=7, scale=0.5, proj_type="reverse_std")
    assert isinstance(model.fc1, GaLoreLinear) and isinstance(model.head, nn.Linear)
    assert sl.trainable_parameters(model) == sum(p.numel() for p in model.parameters())  # nothing frozen
    opt = sl.optimizer(model, lr=1e-3)
    plain, galore = opt.param_groups
    assert "rank" not in plain
    assert {k: galore[k] for k in ("rank", "update_proj_gap", "scale", "proj_type")} == {
        "rank": 3,
        "update_proj_gap": 7,
        "scale": 0.5,
        "proj_type": "reverse_std",
    }
    assert [p is w for p, w in zip(galore["params"], (model.fc1.weight, model.fc2.weight))] == [True, True]
    assert len(plain["params"]) == len(list(model.parameters())) - 2  # biases and the head


def test_a_frozen_galore_weight_is_left_out():
    model = galore_net()
    model.fc1.weight.requires_grad_(False)
    opt = sl.optimizer(model, lr=1e-3)
    assert [tuple(p.shape) for p in opt.param_groups[1]["params"]] == [(12, 48)]


def test_optimizer_state_shapes_and_counts_by_formula():
    rank = 4
    model = galore_net(rank=rank)
    opt = sl.optimizer(model, lr=1e-3)
    train(model, opt, 2)
    for layer in (model.fc1, model.fc2):
        m, n = layer.weight.shape
        state = opt.state[layer.weight]
        if m >= n:  # tall: P = Vh[:r] (r × n), R = G Pᵀ (m × r)
            expected = {"step": (), "exp_avg": (m, rank), "exp_avg_sq": (m, rank), "projection_right": (rank, n)}
        else:  # wide: P = U[:, :r] (m × r), R = Pᵀ G (r × n)
            expected = {"step": (), "exp_avg": (rank, n), "exp_avg_sq": (rank, n), "projection_left": (m, rank)}
        assert {k: tuple(v.shape) for k, v in state.items()} == expected
        assert all(isinstance(v, torch.Tensor) for v in state.values())
        numel = sum(v.numel() for k, v in state.items() if k != "step")
        assert numel == 2 * max(m, n) * rank + min(m, n) * rank < 2 * m * n
    for p in (model.head.weight, model.fc1.bias):  # plain AdamW: full-size moments, no projection
        assert {k: tuple(v.shape) for k, v in opt.state[p].items()} == {
            "step": (),
            "exp_avg": tuple(p.shape),
            "exp_avg_sq": tuple(p.shape),
        }


@pytest.mark.parametrize("proj_type", PROJ_TYPES)
def test_paper_counts_are_the_state_the_optimizer_holds(proj_type):
    """The layer's formula (Table 1, and each proj_type's variant) against the tensors in ``opt.state``."""
    rank = 4
    model = galore_net(rank=rank, proj_type=proj_type)
    opt = sl.optimizer(model, lr=1e-3)
    train(model, opt, 1)
    for layer in (model.fc1, model.fc2):
        m, n = layer.weight.shape
        counts = layer.paper_counts()
        assert (counts.weights, counts.trainable, counts.gradients) == (m * n, m * n, m * n)  # gradients stay mn
        held = sum(v.numel() for k, v in opt.state[layer.weight].items() if k != "step")
        assert counts.optimizer_states == held < 2 * m * n
    report = sl.memory_report(model, opt)
    assert all(v in (True, None) for v in report.methods["galore"].matches().values())
    assert any("gradients are full size" in note for note in report.notes)


def test_full_projection_keeps_both_sides():
    model = galore_net(rank=3, proj_type="full")
    opt = sl.optimizer(model, lr=1e-3)
    train(model, opt, 1)
    state = opt.state[model.fc2.weight]
    assert {k: tuple(v.shape) for k, v in state.items() if k != "step"} == {
        "exp_avg": (3, 3),
        "exp_avg_sq": (3, 3),
        "projection_left": (12, 3),
        "projection_right": (3, 48),
    }


def test_state_dict_round_trip_across_a_projection_update():
    uninterrupted = galore_net(gap=3)
    opt = sl.optimizer(uninterrupted, lr=1e-2)
    train(uninterrupted, opt, 8)

    first = galore_net(gap=3)
    opt1 = sl.optimizer(first, lr=1e-2)
    xs = list(batches(8))
    for x, y in xs[:5]:
        loss = nn.functional.mse_loss(first(x), y)
        opt1.zero_grad()
        loss.backward()
        opt1.step()
    saved_model, saved_opt = copy.deepcopy(first.state_dict()), copy.deepcopy(opt1.state_dict())
    resumed = galore_net(gap=3, seed=5)  # different weights: everything must come from the checkpoint
    resumed.load_state_dict(saved_model)
    opt2 = sl.optimizer(resumed, lr=1e-2)
    opt2.load_state_dict(saved_opt)
    assert torch.equal(
        opt2.state[resumed.fc1.weight]["projection_right"], opt1.state[first.fc1.weight]["projection_right"]
    )
    for x, y in xs[5:]:  # step 7 recomputes P (its step count is 6)
        loss = nn.functional.mse_loss(resumed(x), y)
        opt2.zero_grad()
        loss.backward()
        opt2.step()
    for a, b in zip(resumed.parameters(), uninterrupted.parameters()):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


# -- the projection schedule and the stale moments ---------------------------------------------------


def test_projection_is_the_gradient_subspace_recomputed_exactly_every_gap_steps():
    rank, gap, steps = 3, 4, 11
    model = galore_net(rank=rank, gap=gap)
    opt = sl.optimizer(model, lr=1e-2)
    grads, projections = {}, {}

    def record_grads(i):
        grads[i] = (model.fc1.weight.grad.clone(), model.fc2.weight.grad.clone())

    for i, (x, y) in enumerate(batches(steps), start=1):
        loss = nn.functional.mse_loss(model(x), y)
        opt.zero_grad()
        loss.backward()
        record_grads(i)
        opt.step()
        projections[i] = (
            opt.state[model.fc1.weight]["projection_right"].clone(),
            opt.state[model.fc2.weight]["projection_left"].clone(),
        )
    refresh = [i for i in range(1, steps + 1) if (i - 1) % gap == 0]
    assert refresh == [1, 5, 9]
    for i in range(1, steps + 1):
        if i in refresh:  # P = top-r singular vectors of *this* step's gradient
            U1, _, Vh1 = torch.linalg.svd(grads[i][0], full_matrices=False)
            U2, _, _ = torch.linalg.svd(grads[i][1], full_matrices=False)
            torch.testing.assert_close(projections[i][0], Vh1[:rank])
            torch.testing.assert_close(projections[i][1], U2[:, :rank])
            if i > 1:
                assert not torch.allclose(projections[i][0], projections[i - 1][0], atol=1e-3)
        else:  # and untouched in between
            assert torch.equal(projections[i][0], projections[i - 1][0])
            assert torch.equal(projections[i][1], projections[i - 1][1])


def test_moments_are_carried_over_not_reprojected_when_p_changes():
    """Algorithm 2 (and galore-torch): at a refresh the new R is averaged into the old M and V."""
    gap, beta1, beta2 = 3, 0.9, 0.999
    model = galore_net(gap=gap)
    opt = sl.optimizer(model, lr=1e-2, betas=(beta1, beta2))
    data = list(batches(gap + 1))
    for x, y in data[:gap]:
        loss = nn.functional.mse_loss(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    state = opt.state[model.fc1.weight]
    M_old, V_old, P_old = state["exp_avg"].clone(), state["exp_avg_sq"].clone(), state["projection_right"].clone()
    x, y = data[gap]
    loss = nn.functional.mse_loss(model(x), y)
    opt.zero_grad()
    loss.backward()
    G = model.fc1.weight.grad.clone()
    opt.step()
    P_new = state["projection_right"]
    assert not torch.allclose(P_new, P_old, atol=1e-3)
    R = G @ P_new.T
    torch.testing.assert_close(state["exp_avg"], beta1 * M_old + (1 - beta1) * R)
    torch.testing.assert_close(state["exp_avg_sq"], beta2 * V_old + (1 - beta2) * R * R)


# -- the update ------------------------------------------------------------------------------------


def test_update_lies_in_the_projection_space_and_has_rank_at_most_r():
    rank = 3
    model = galore_net(rank=rank, gap=2)
    opt = sl.optimizer(model, lr=1e-2, weight_decay=0.0)
    for i, (x, y) in enumerate(batches(5), start=1):
        before = {n: model.get_submodule(n).weight.detach().clone() for n in ("fc1", "fc2")}
        loss = nn.functional.mse_loss(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        d1 = model.fc1.weight.detach() - before["fc1"]
        d2 = model.fc2.weight.detach() - before["fc2"]
        P1 = opt.state[model.fc1.weight]["projection_right"]  # rows of ΔW in P's row space
        P2 = opt.state[model.fc2.weight]["projection_left"]  # columns of ΔW in P's column space
        assert d1.norm() > 1e-3 and d2.norm() > 1e-3
        assert (d1 - d1 @ P1.T @ P1).norm() < 1e-5 * d1.norm() + 1e-7, i
        assert (d2 - P2 @ P2.T @ d2).norm() < 1e-5 * d2.norm() + 1e-7, i
        for d in (d1, d2):
            S = torch.linalg.svdvals(d)
            assert S[rank:].max() < 1e-5 * S[0], i


def test_first_step_is_minus_lr_scale_sign_r_projected_back_so_linear_in_scale():
    """Step 1 of Adam is ±lr per coordinate of R (bias correction makes M/√V = sign(R)); GaLore
    multiplies it by scale and projects it back: ΔW = −η·α·sign(G Pᵀ) P for a tall weight."""
    lr = 1e-2
    deltas = {}
    for scale in (0.25, 0.5):
        model = galore_net(scale=scale)
        before = model.fc1.weight.detach().clone()
        opt = sl.optimizer(model, lr=lr, weight_decay=0.0, eps=1e-12)
        x, y = next(batches(1))
        nn.functional.mse_loss(model(x), y).backward()
        G = model.fc1.weight.grad.clone()
        opt.step()
        P = torch.linalg.svd(G, full_matrices=False)[2][:4]
        expected = -lr * scale * torch.sign(G @ P.T) @ P
        deltas[scale] = model.fc1.weight.detach() - before
        torch.testing.assert_close(deltas[scale], expected, rtol=1e-4, atol=1e-7)
    torch.testing.assert_close(deltas[0.5], 2 * deltas[0.25], rtol=1e-4, atol=1e-8)


def test_weight_decay_is_decoupled_on_the_full_weight_after_the_update():
    lr, wd = 1e-2, 0.5
    model = galore_net()
    opt = sl.optimizer(model, lr=lr, weight_decay=wd, eps=1e-12)
    x, y = next(batches(1))
    before = model.fc1.weight.detach().clone()
    nn.functional.mse_loss(model(x), y).backward()
    G = model.fc1.weight.grad.clone()
    opt.step()
    P = torch.linalg.svd(G, full_matrices=False)[2][:4]
    updated = before - lr * 0.25 * torch.sign(G @ P.T) @ P
    torch.testing.assert_close(model.fc1.weight.detach(), updated * (1 - lr * wd), rtol=1e-4, atol=1e-7)


def test_low_precision_weights_svd_in_float32_state_in_their_dtype():
    model = galore_net().to(torch.bfloat16)
    opt = sl.optimizer(model, lr=1e-2)
    x, y = next(batches(1))
    nn.functional.mse_loss(model(x.bfloat16()), y.bfloat16()).backward()
    opt.step()
    state = opt.state[model.fc1.weight]
    assert state["projection_right"].dtype == state["exp_avg"].dtype == torch.bfloat16
    assert torch.isfinite(model.fc1.weight).all()


def test_merge_gives_plain_linears_with_the_same_outputs():
    model = galore_net()
    opt = sl.optimizer(model, lr=1e-2)
    train(model, opt, 3)
    x = torch.randn(4, 20)
    with torch.no_grad():
        before = model(x)
    sl.merge(model)
    assert not sl.adapted_layers(model) and type(model.fc1) is nn.Linear
    torch.testing.assert_close(model(x), before)


# -- the optimizer_groups hook is general -----------------------------------------------------------


class TwoGroups(sl.methods.Method):
    """A test-only method (not registered): its weights get their own learning rate."""

    name = "two_groups"

    def optimizer_groups(self, layers, optimizer_class):
        return optimizer_class, [{"params": [layer.weight for layer in layers.values()], "lr": 0.5}]


def test_a_method_can_give_its_parameters_their_own_group_options():
    model = sl.apply(base_net(), "full", targets=["fc1"])
    model.fc1.spec = TwoGroups()
    opt = sl.optimizer(model, lr=1e-3, optimizer="sgd")
    assert isinstance(opt, torch.optim.SGD)
    assert [g["lr"] for g in opt.param_groups] == [1e-3, 0.5]
    assert opt.param_groups[1]["params"][0] is model.fc1.weight


def test_two_methods_claiming_one_parameter_is_an_error():
    model = sl.apply(base_net(), "full", targets=["fc1", "fc2"])
    model.fc1.spec, model.fc2.spec = TwoGroups(), TwoGroups()

    class Greedy(TwoGroups):
        def optimizer_groups(self, layers, optimizer_class):
            return optimizer_class, [{"params": [model.fc1.weight, model.fc2.weight]}]

    model.fc2.spec = Greedy()
    with pytest.raises(ValueError, match="already claimed"):
        sl.optimizer(model, lr=1e-3)


# -- bad input -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "options, error, message",
    [
        (dict(rank=13), ValueError, r"layer 'fc2' \(12×48\): rank=13 is outside the allowed range \[1, 12\]"),
        (dict(rank=0), ValueError, r"layer 'fc1' \(48×20\): rank=0 is outside the allowed range \[1, 20\]"),
        (dict(rank=2.0), TypeError, "rank must be an int"),
        (dict(proj_type="diagonal"), ValueError, r"proj_type='diagonal' is not one of 'std', 'reverse_std'"),
        (dict(update_proj_gap=0), ValueError, r"update_proj_gap=0 is outside the allowed range \[1, inf\)"),
        (dict(update_proj_gap=2.5), TypeError, "update_proj_gap must be an int"),
        (dict(scale=0), ValueError, r"scale=0 is outside the allowed range \(0, inf\)"),
        (dict(scale=math.nan), TypeError, "scale must be a finite number"),
        (dict(projection="svd"), TypeError, "unknown option.*projection.*proj_type"),
    ],
)
def test_bad_options_fail_fast_and_change_nothing(options, error, message):
    model = base_net()
    before = fingerprint(model)
    with pytest.raises(error, match=message):
        sl.apply(model, "galore", targets=["fc1", "fc2"], **options)
    assert same_fingerprint(before, fingerprint(model))


@pytest.mark.parametrize("name, class_name", [("sgd", "SGD"), ("adam", "Adam"), (torch.optim.RMSprop, "RMSprop")])
def test_an_optimizer_that_cannot_project_is_refused(name, class_name):
    model = galore_net()
    with pytest.raises(
        ValueError, match=rf"method 'galore' \(layers fc1, fc2\).*optimizer='{class_name}' cannot do GaLore"
    ):
        sl.optimizer(model, optimizer=name)


def test_adamw_by_name_or_class_and_galore_subclasses_are_accepted():
    class Mine(GaLoreAdamW):
        pass

    for choice, expected in (("adamw", GaLoreAdamW), (torch.optim.AdamW, GaLoreAdamW), (Mine, Mine)):
        assert type(sl.optimizer(galore_net(), optimizer=choice)) is expected


def test_hand_built_galore_groups_are_validated():
    w, b = nn.Parameter(torch.randn(6, 4)), nn.Parameter(torch.randn(6))
    good = {"rank": 2, "update_proj_gap": 10, "scale": 0.25, "proj_type": "std"}
    GaLoreAdamW([{"params": [w], **good}])
    assert GaLoreAdamW([{"params": (q for q in [w]), **good}]).param_groups[0]["params"] == [w]  # a generator
    with pytest.raises(ValueError, match=r"\(6×4\): rank=5 is outside the allowed range \[1, 4\]"):
        GaLoreAdamW([{"params": [w], **good, "rank": 5}])
    with pytest.raises(ValueError, match="2-D weights"):
        GaLoreAdamW([{"params": [b], **good}])
    with pytest.raises(ValueError, match="also needs update_proj_gap"):
        GaLoreAdamW([{"params": [w], "rank": 2}])
    with pytest.raises(ValueError, match="proj_type='top' is not one of"):
        GaLoreAdamW([{"params": [w], **good, "proj_type": "top"}])
    with pytest.raises(ValueError, match=r"lr=-1 is outside"):
        GaLoreAdamW([w], lr=-1)
