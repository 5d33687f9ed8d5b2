"""Exact resume, the torch way: ``model.state_dict()`` + ``optimizer.state_dict()`` hold every
method's state (clocks, generators, schedules), so N steps, save, load into a freshly built
model + apply + optimizer, M more steps equals N + M uninterrupted steps bit for bit.

Periods are 5 steps (SST's resampling, ReLoRA's restarts, GaLore's projection updates) and the
checkpoint lands on a period boundary (N = 10) and off one (N = 12). The fresh model is built from
a *different* random init, so anything the state dicts miss shows up as a difference.
"""

from __future__ import annotations

import io

import pytest
import torch
import torch.nn.functional as F

import spectrallab as sl
from conftest import SmallMLP
from spectrallab.methods.base import registered
from spectrallab.optim import lr_multiplier

PERIOD = 5
# Small, fast settings for every registered method; periodic methods get PERIOD, and the
# options that exercise their random streams (sampling, pruning masks).
OPTIONS = {
    "full": {},
    "lora": {"rank": 2},
    "ffa_lora": {"rank": 2},
    "dora": {"rank": 2},
    "pissa": {"rank": 2},
    "milora": {"rank": 2},
    "olora": {"rank": 2},
    "loraxs": {"rank": 2},
    "vera": {"rank": 8},
    "svfit": {"rank": 3},
    "svft": {"off_diag": 1},
    "sorsa": {"rank": 2, "gamma": 0.05},
    "sltrain": {"rank": 2, "sparsity": 0.2, "seed": None},
    "galore": {"rank": 2, "update_proj_gap": PERIOD},
    "relora": {"rank": 2, "reset_every": PERIOD, "restart_warmup": 2, "prune_ratio": 0.5, "seed": None},
    "sst": {"rank": 2, "resample_every": PERIOD, "warmup": 2, "periods_per_round": 2},
}
# Variants whose state differs: SST's sequential sampling counts draws; ReLoRA's magnitude pruning.
VARIANTS = {
    "sst-sequential": ("sst", {**OPTIONS["sst"], "sampling": "sequential", "gradient": "default"}),
    "relora-magnitude": ("relora", {**OPTIONS["relora"], "prune": "magnitude"}),
}
CASES = {name: (name, opts) for name, opts in OPTIONS.items()} | VARIANTS
OPTIMIZERS = {"adamw": {"optimizer": "adamw", "lr": 1e-2}, "sgd": {"optimizer": "sgd", "lr": 5e-2, "momentum": 0.9}}
NEEDS_ITS_OWN_OPTIMIZER = {"galore"}  # GaLore refuses SGD by design (it projects Adam's moments)


def batches(start: int, stop: int):
    """Batch i depends on i only, so a resumed run sees the same data as an uninterrupted one."""
    for i in range(start, stop):
        g = torch.Generator().manual_seed(1000 + i)
        yield torch.randn(16, 20, generator=g), torch.randn(16, 12, generator=g)


def build(method: str, options: dict, optimizer: dict, init_seed: int):
    torch.manual_seed(init_seed)
    model = sl.apply(SmallMLP(), method, **options)
    return model, sl.optimizer(model, **optimizer)


def run(model, opt, start: int, stop: int) -> None:
    for x, y in batches(start, stop):
        loss = F.mse_loss(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()


def assert_same_state(a_model, a_opt, b_model, b_opt) -> None:
    a, b = a_model.state_dict(), b_model.state_dict()
    assert a.keys() == b.keys()
    differ = [k for k in a if not torch.equal(a[k], b[k])]
    assert not differ, f"differ after resume: {differ}"
    sa, sb = a_opt.state_dict(), b_opt.state_dict()
    assert sa["param_groups"] == sb["param_groups"]
    assert sa["state"].keys() == sb["state"].keys()
    for i in sa["state"]:
        assert sa["state"][i].keys() == sb["state"][i].keys()
        for key, value in sa["state"][i].items():
            assert torch.equal(torch.as_tensor(value), torch.as_tensor(sb["state"][i][key])), (i, key)


def test_every_registered_method_has_a_resume_case():
    assert set(registered()) == set(OPTIONS)


@pytest.mark.parametrize("n", [2 * PERIOD, 2 * PERIOD + 2], ids=["on-boundary", "off-boundary"])
@pytest.mark.parametrize("opt_name", sorted(OPTIMIZERS))
@pytest.mark.parametrize("case", sorted(CASES))
def test_save_load_continue_equals_uninterrupted(case, opt_name, n):
    method, options = CASES[case]
    if opt_name != "adamw" and method in NEEDS_ITS_OWN_OPTIMIZER:
        pytest.skip(f"{method} refuses {opt_name} by design")
    total = n + 8
    optimizer = OPTIMIZERS[opt_name]

    straight, straight_opt = build(method, options, optimizer, init_seed=0)
    run(straight, straight_opt, 0, total)

    first, first_opt = build(method, options, optimizer, init_seed=0)
    run(first, first_opt, 0, n)
    buffer = io.BytesIO()
    torch.save({"model": first.state_dict(), "optimizer": first_opt.state_dict()}, buffer)
    del first, first_opt
    buffer.seek(0)
    saved = torch.load(buffer, weights_only=True)
    resumed, resumed_opt = build(method, options, optimizer, init_seed=1)  # a different init: all must load
    resumed.load_state_dict(saved["model"])
    resumed_opt.load_state_dict(saved["optimizer"])
    run(resumed, resumed_opt, n, total)

    assert_same_state(straight, straight_opt, resumed, resumed_opt)
    if method == "sst":  # the log restarts at the loaded state and then matches the uninterrupted one
        for name in ("fc1", "fc2"):
            log, full = getattr(resumed, name).history, getattr(straight, name).history
            assert log[0]["resumed"] and log[0]["step"] == n
            assert log[0]["active"] == max((h for h in full if h["step"] <= n), key=lambda h: h["step"])["active"]
            assert log[1:] == [h for h in full if h["step"] > n]
    # And the run really moved (a resume that loads nothing and trains nothing would also "agree").
    torch.manual_seed(0)
    untouched = sl.apply(SmallMLP(), method, **options)
    assert any(not torch.equal(v, untouched.state_dict()[k]) for k, v in straight.state_dict().items())


def period_starts(layer) -> list[int]:
    return [h["step"] for h in layer.history]


def test_sst_rebuilt_optimizer_continues_the_schedule():
    """A re-run ``opt = sl.optimizer(model)`` cell mid-period keeps the periods at the same steps."""
    options = OPTIONS["sst"]
    straight, straight_opt = build("sst", options, OPTIMIZERS["adamw"], init_seed=0)
    multipliers = []
    for x, y in batches(0, 4 * PERIOD):
        multipliers.append(lr_multiplier(straight_opt))
        F.mse_loss(straight(x), y).backward()
        straight_opt.step()
        straight_opt.zero_grad()

    model, opt = build("sst", options, OPTIMIZERS["adamw"], init_seed=0)
    rebuilt_multipliers = []
    for i, (x, y) in enumerate(batches(0, 4 * PERIOD)):
        if i == 7:  # mid-period (step 8 of a 5-step period)
            opt = sl.optimizer(model, **OPTIMIZERS["adamw"])
        rebuilt_multipliers.append(lr_multiplier(opt))
        F.mse_loss(model(x), y).backward()
        opt.step()
        opt.zero_grad()
    # SST's warm-up starts with the second period (the first is the loop's schedule to warm up)
    expected = [1.0 if s < PERIOD else min(1.0, (s % PERIOD + 1) / 2) for s in range(4 * PERIOD)]
    assert rebuilt_multipliers == multipliers == expected
    for name in ("fc1", "fc2"):
        layer = getattr(model, name)
        assert period_starts(layer) == period_starts(getattr(straight, name)) == [0, 5, 10, 15, 20]
        assert [h["resvd"] for h in layer.history] == [False, False, True, False, True]
        assert layer.period == 4 and layer.resvds == 2


def test_relora_rebuilt_optimizer_continues_the_schedule():
    options = OPTIONS["relora"]
    model, opt = build("relora", options, OPTIMIZERS["adamw"], init_seed=0)
    multipliers, restarts = [], []
    for i, (x, y) in enumerate(batches(0, 4 * PERIOD)):
        if i == 7:
            opt = sl.optimizer(model, **OPTIMIZERS["adamw"])
        multipliers.append(lr_multiplier(opt))
        F.mse_loss(model(x), y).backward()
        opt.step()
        opt.zero_grad()
        restarts.append(model.fc1.restarts)
    # Restarts after steps 5, 10, 15, 20; the multiplier is j/2 on the j-th step after a restart.
    assert restarts == [s // PERIOD for s in range(1, 4 * PERIOD + 1)]
    expected = [1.0] * PERIOD + [min(1.0, ((s - PERIOD) % PERIOD) / 2) for s in range(PERIOD, 4 * PERIOD)]
    assert multipliers == expected
    assert model.fc1.schedule.step == 4 * PERIOD and model.fc1.schedule.last_reset == 4 * PERIOD
