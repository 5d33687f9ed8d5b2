"""A non-finite gradient reaching a method's own optimizer work (GaLore's projection SVD, SST's
resampling and re-SVD, ReLoRA's merge) is refused with a ValueError naming the layer and the step,
*before* anything changes: every parameter, buffer, optimizer state tensor and learning rate is as
it was, so a loop that catches the error, zeroes the gradients and moves on continues exactly as
if the bad batch had never come.
"""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F

import spectrallab as sl
from conftest import SmallMLP

PERIOD = 5
CASES = {
    # method options, the step that runs the method's work, what the message must say
    "galore-first-projection": ("galore", {"rank": 2, "update_proj_gap": PERIOD}, 1, r"layer 'fc\d'.*step 1\b"),
    "galore-new-projection": (
        "galore",
        {"rank": 2, "update_proj_gap": PERIOD},
        PERIOD + 1,
        rf"layer 'fc\d'.*step {PERIOD + 1}\b",
    ),
    "sst-resample": (
        "sst",
        {"rank": 2, "resample_every": PERIOD, "warmup": 2, "periods_per_round": 2},
        PERIOD,
        rf"layer 'fc\d'.*step {PERIOD}\b",
    ),
    "sst-resvd": (
        "sst",
        {"rank": 2, "resample_every": PERIOD, "warmup": 2, "periods_per_round": 2},
        2 * PERIOD,
        rf"layer 'fc\d'.*step {2 * PERIOD}\b",
    ),
    "relora-merge": (
        "relora",
        {"rank": 2, "reset_every": PERIOD, "restart_warmup": 2, "seed": 0},
        PERIOD,
        rf"layer 'fc\d'.*step {PERIOD}\b.*merge",
    ),
}


def batch(i: int, poisoned: bool = False):
    g = torch.Generator().manual_seed(500 + i)
    x, y = torch.randn(16, 20, generator=g), torch.randn(16, 12, generator=g)
    if poisoned:
        x[3, 4] = float("nan")  # one bad input value: every gradient it reaches is NaN
    return x, y


def step(model, opt, x, y) -> None:
    loss = F.mse_loss(model(x), y)
    loss.backward()
    opt.step()
    opt.zero_grad()


def snapshot(model, opt) -> dict:
    return {
        "model": {k: v.clone() for k, v in model.state_dict().items()},
        "optimizer": copy.deepcopy(opt.state_dict()),
        "lr": [g["lr"] for g in opt.param_groups],
    }


def assert_same(a: dict, b: dict) -> None:
    assert a["model"].keys() == b["model"].keys()
    assert [k for k in a["model"] if not torch.equal(a["model"][k], b["model"][k])] == []
    assert a["lr"] == b["lr"]
    assert a["optimizer"]["param_groups"] == b["optimizer"]["param_groups"]
    sa, sb = a["optimizer"]["state"], b["optimizer"]["state"]
    assert sa.keys() == sb.keys()
    for i in sa:
        assert sa[i].keys() == sb[i].keys()
        for key in sa[i]:
            assert torch.equal(torch.as_tensor(sa[i][key]), torch.as_tensor(sb[i][key])), (i, key)


def build(method, options):
    torch.manual_seed(0)
    model = sl.apply(SmallMLP(), method, **options)
    return model, sl.optimizer(model, lr=1e-2)


@pytest.mark.parametrize("case", sorted(CASES))
def test_nonfinite_gradient_is_refused_before_anything_changes(case):
    method, options, bad_step, message = CASES[case]
    model, opt = build(method, options)
    for i in range(1, bad_step):
        step(model, opt, *batch(i))
    before = snapshot(model, opt)

    x, y = batch(0, poisoned=True)
    F.mse_loss(model(x), y).backward()
    with pytest.raises(ValueError, match=message) as error:
        opt.step()
    assert "non-finite" in str(error.value) and "nothing was updated" in str(error.value)
    assert_same(before, snapshot(model, opt))

    # Skip the bad batch; the run goes on exactly as one that never saw it.
    opt.zero_grad()
    for i in range(bad_step, bad_step + PERIOD + 1):
        step(model, opt, *batch(i))
    reference, reference_opt = build(method, options)
    for i in range(1, bad_step + PERIOD + 1):
        step(reference, reference_opt, *batch(i))
    assert_same(snapshot(reference, reference_opt), snapshot(model, opt))


def test_galore_by_hand_names_the_parameter():
    """A GaLoreAdamW built by hand (no layer names) still refuses, naming group and index."""
    from spectrallab.methods.galore import GaLoreAdamW

    torch.manual_seed(0)
    model = SmallMLP()
    opt = GaLoreAdamW(
        [
            {"params": [model.fc1.bias, model.fc2.bias]},
            {
                "params": [model.fc1.weight, model.fc2.weight],
                "rank": 2,
                "update_proj_gap": 5,
                "scale": 0.25,
                "proj_type": "std",
            },
        ]
    )
    bias = model.fc1.bias.detach().clone()
    x, y = batch(0, poisoned=True)
    F.mse_loss(model(x), y).backward()
    with pytest.raises(ValueError, match=r"param 0 of param group 1: .* at step 1\b"):
        opt.step()
    assert torch.equal(model.fc1.bias, bias) and not opt.state
