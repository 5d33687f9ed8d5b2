"""Properties that no other test pins down: each test here fails on a specific, plausible breakage.

What they guard (and the change each one was seen to fail on, see issue 14):

1. ``apply`` is all-or-nothing even when *building* a later layer fails (not validating it): the
   earlier layers, their parameters and ``requires_grad`` flags stay as they were. Breaks if
   ``apply`` inserts each replacement as soon as it is built.
2. SST layers of the same shape sample their first active singular indices independently. Breaks
   if a layer's generator is seeded without its name (``base.layer_generator``).
3. LoRA's dropout acts on the adapter input only, never on the frozen path. Breaks if the frozen
   ``x Wᵀ + b`` is computed from the dropped-out input too.
4. List targets match whole dotted name parts: ``"c1"`` is not ``encoder.fc1``. Breaks with a bare
   ``endswith(entry)``.
5. The training loop records the gradient norm *before* clipping. Breaks if the clipped norm is
   recorded.
6. The last step is evaluated even when it is not a multiple of ``eval_every``.
7. ``Run.best(mode="max")`` is the largest value, not the smallest.
8. ReLoRA's optimizer-state pruning zeroes ``⌊prune_ratio·N + ½⌋`` entries, as its docstring says,
   at sizes where that differs from Python's ``round`` (banker's), ``floor``/``int`` and ``ceil``.
"""

from __future__ import annotations

import copy
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import spectrallab as sl
from conftest import ThreeLayers
from spectrallab.methods import base
from spectrallab.methods.base import registered
from spectrallab.methods.lora import LoRA
from spectrallab.methods.relora import prune_state
from spectrallab.runs import Run


@pytest.fixture
def clean_registry():
    """Whatever a test registers is gone afterwards (built-in methods restored as they were)."""
    before = registered()
    yield
    base._REGISTRY.clear()
    base._REGISTRY.update(before)


def snapshot(model: nn.Module) -> dict:
    """Everything a half-applied method could change: which module sits where, each parameter's
    identity, values and requires_grad flag."""
    return {
        "modules": [(n, id(m), type(m)) for n, m in model.named_modules()],
        "params": [(n, id(p), p.detach().clone(), p.requires_grad) for n, p in model.named_parameters()],
    }


def assert_same(before: dict, after: dict) -> None:
    assert after["modules"] == before["modules"]
    assert [(n, i, g) for n, i, _, g in after["params"]] == [(n, i, g) for n, i, _, g in before["params"]]
    for (n, _, v0, _), (_, _, v1, _) in zip(before["params"], after["params"]):
        assert torch.equal(v0, v1), n


# 1 ---------------------------------------------------------------------------------------------


def test_a_failure_while_building_a_later_layer_leaves_the_earlier_ones_untouched(clean_registry):
    built = []

    @sl.register("fails_on_second_build")
    class FailsOnSecondBuild(LoRA):
        """LoRA whose ``adapt`` raises on the second layer: validation (check) passes for all."""

        def adapt(self, layer_name, linear):
            if built:
                raise RuntimeError(f"layer {layer_name!r}: cannot build (test)")
            built.append(layer_name)
            return super().adapt(layer_name, linear)

    model = ThreeLayers()
    before = snapshot(model)
    with pytest.raises(RuntimeError, match="cannot build"):
        sl.apply(model, "fails_on_second_build", rank=2, targets=["fc1", "fc2"])
    assert built == ["encoder.fc1"]  # the first layer *was* built, so there was something to undo
    assert_same(before, snapshot(model))
    assert sl.adapted_layers(model) == {}
    assert not hasattr(model, "_spectrallab_frozen")


# 2 ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("sampling", ["multinomial", "uniform"])
def test_sst_layers_of_the_same_shape_draw_different_first_index_sets(sampling):
    # Two layers with the *same* weight: their spectra are equal, so only the layer name (mixed into
    # each layer's generator) can make the draws differ. 8 of 64 indices: C(64, 8) ≈ 4.4e9 sets.
    model = nn.Sequential(nn.Linear(64, 64), nn.Linear(64, 64))
    with torch.no_grad():
        model[1].weight.copy_(model[0].weight)
    sl.apply(model, "sst", rank=8, seed=0, sampling=sampling)
    first, second = model[0].active_index.tolist(), model[1].active_index.tolist()
    assert len(set(first)) == len(set(second)) == 8
    assert first != second


# 3 ---------------------------------------------------------------------------------------------


def test_lora_dropout_never_touches_the_frozen_path():
    torch.manual_seed(0)
    linear = nn.Linear(16, 12)
    layer = sl.apply(copy.deepcopy(linear), "lora", rank=4, alpha=8, dropout=0.9)
    layer.train()
    x = torch.randn(32, 16)
    # Fresh layer: B = 0, so the output is the frozen layer's, bit for bit, whatever dropout drops.
    assert torch.equal(layer(x), linear(x))

    with torch.no_grad():
        layer.lora_B.normal_()
    torch.manual_seed(1)
    out = layer(x)
    torch.manual_seed(1)  # the same dropout mask
    dropped = F.dropout(x, p=0.9, training=True)
    expected = F.linear(x, linear.weight, linear.bias) + layer.scale * (dropped @ layer.lora_A.T) @ layer.lora_B.T
    torch.testing.assert_close(out, expected)


# 4 ---------------------------------------------------------------------------------------------


def test_list_targets_match_whole_name_parts_only():
    with pytest.raises(ValueError, match="'c1' matches no module"):
        sl.apply(ThreeLayers(), "lora", rank=2, targets=["c1"])
    model = sl.apply(ThreeLayers(), "lora", rank=2, targets=["fc1"])
    assert set(sl.adapted_layers(model)) == {"encoder.fc1"}


# 5, 6 ------------------------------------------------------------------------------------------


def test_the_recorded_gradient_norm_is_the_norm_before_clipping():
    task = sl.task("teacher")
    model = task.make_model()
    # The first step's gradient, by hand: the loop draws its batch from Generator(seed).
    by_hand = copy.deepcopy(model)
    batch = task.batch("train", task.batch_size, torch.Generator().manual_seed(0))
    task.loss(by_hand, batch).backward()
    norm = math.sqrt(sum(float(p.grad.pow(2).sum()) for p in by_hand.parameters() if p.grad is not None))
    clip = 1e-3
    assert norm > 100 * clip  # clipping really changes the gradient, so a clipped norm would show

    run = sl.fit(model, task, 1, clip=clip, seed=0, record=False, device="cpu", progress="off")
    assert run.grad_norm[0] == pytest.approx(norm, rel=1e-5)


def test_the_last_step_is_evaluated_even_off_the_cadence():
    task = sl.task("teacher")
    events = list(sl.train(task.make_model(), task, 5, eval_every=2, record=False, device="cpu"))
    assert [e.step for e in events if e.metrics is not None] == [0, 2, 4, 5]
    run = sl.fit(task.make_model(), task, 5, eval_every=2, record=False, device="cpu", progress="off")
    assert [e["step"] for e in run.evals] == [0, 2, 4, 5]
    assert run.final() == run.evals[-1]["val_loss"]


# 7 ---------------------------------------------------------------------------------------------


def test_run_best_honours_mode_max():
    run = Run(
        "r",
        evals=[
            {"step": 0, "accuracy": 0.2, "val_loss": 2.0},
            {"step": 1, "accuracy": 0.9, "val_loss": 0.5},
            {"step": 2, "accuracy": 0.6, "val_loss": 1.0},
        ],
    )
    assert run.best("accuracy", mode="max") == 0.9
    assert run.best("val_loss", mode="max") == 2.0
    assert run.best("val_loss") == 0.5
    assert run.best("accuracy", mode="min") == 0.2


# 8 ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "ratio, expected",
    [
        (0.25, 3),  # 2.5: ⌊x + ½⌋ = 3, while round (banker's) = floor = int = 2
        (0.21, 2),  # 2.1: ⌊x + ½⌋ = 2, while ceil = 3
    ],
)
@pytest.mark.parametrize("mode", ["random", "magnitude"])
def test_relora_prunes_the_documented_number_of_entries(ratio, expected, mode):
    param = nn.Parameter(torch.zeros(2, 5))  # N = 10
    opt = torch.optim.Adam([param])
    opt.state[param] = {
        "step": torch.tensor(3.0),
        "exp_avg": torch.arange(1.0, 11.0).view(2, 5),
        "exp_avg_sq": torch.ones(2, 5),
    }
    assert prune_state(opt, param, mode, ratio, torch.Generator().manual_seed(0)) == expected
    state = opt.state[param]
    assert int((state["exp_avg"] == 0).sum()) == int((state["exp_avg_sq"] == 0).sum()) == expected
    assert torch.equal(state["exp_avg"] == 0, state["exp_avg_sq"] == 0)  # one mask for both
    assert float(state["step"]) == 3.0
