"""spectrallab.experiments: the head-to-head settings the chapter and its learning-rate sweep share, and the
paired measurement on fixed validation windows that several chapters' claim checks use."""

from __future__ import annotations

import dataclasses
import json
import math

import numpy as np
import pytest
import torch

import spectrallab as sl
from spectrallab.experiments import METHODS, VALIDATION_SEED, PairedDifference, head_to_head
from spectrallab.tasks.base import Task


def test_each_profile_has_its_own_fixed_settings(monkeypatch):
    monkeypatch.setenv("SPECTRALLAB_PROFILE", "gpu")  # the active profile changes nothing when one is named
    ci, cpu, gpu = (head_to_head(p) for p in ("ci", "cpu", "gpu"))
    assert (ci.task_size["d_model"], ci.rank, ci.steps, ci.batch_size) == (32, 1, 600, 16)
    assert (cpu.task_size["d_model"], cpu.rank, cpu.steps, cpu.batch_size) == (64, 2, 400, 32)
    assert gpu.rank == gpu.task_size["d_model"] // 12 and gpu.steps == 8000
    assert len(cpu.seeds) >= 2 and len(gpu.seeds) >= 2
    assert head_to_head().profile == "gpu"
    assert ci.options("sst") == dict(rank=1, resample_every=20, warmup=4)
    assert cpu.options("relora") == dict(rank=2, reset_every=100, restart_warmup=10, prune_ratio=0.99)
    assert set(ci.as_dict()["options"]) == set(METHODS)
    json.dumps(gpu.as_dict())  # plain JSON: what a sweep records


def test_bad_input_is_named():
    with pytest.raises(ValueError, match="profile 'laptop'"):
        head_to_head("laptop")
    with pytest.raises(ValueError, match="'dora' is not a contender"):
        head_to_head("ci").options("dora")
    with pytest.raises(ValueError, match=r"lr=0 .*\(0, inf\)"):
        head_to_head("ci").pretrain(None, "sst", 0)


def test_a_seed_fixes_the_run_and_another_seed_changes_it():
    setup = dataclasses.replace(head_to_head("ci"), steps=20)
    task = setup.make_task()
    for method in ("sltrain", "sst"):  # SLTrain: global generator; SST: its seed option
        a, b, c = (setup.pretrain(task, method, 1e-2, seed)[0].final("val_loss") for seed in (0, 0, 1))
        assert a == b, method
        assert abs(a - c) > 1e-4, method
    run, report, model = setup.pretrain(task, "sst", 1e-2, 0)
    assert sl.adapted_layers(model) and report.optimizer_state > 0 and run.steps[-1] == 20


# -- the paired measurement on fixed windows ------------------------------------------------------


class Windows(Task):
    """A task whose i-th validation batch drawn from a generator is the constant i (shape batch × 1),
    and whose loss is the model's mean output: with y = 2x + 1, window i's loss is 2i + 1. It records
    every draw (split, batch size, generator, its state then) and the model's mode during the loss."""

    name, batch_size = "windows", 3

    def __init__(self):
        self.draws, self.modes = [], []

    def batch(self, split, batch_size, generator):
        index = sum(d[2] is generator for d in self.draws)
        self.draws.append((split, batch_size, generator, generator.get_state().clone()))
        return torch.full((batch_size, 1), float(index)), None

    def loss(self, model, batch):
        self.modes.append((model.training, torch.is_grad_enabled()))
        return model(batch[0]).mean()


def line(slope=2.0, intercept=1.0):
    model = torch.nn.Linear(1, 1)
    with torch.no_grad():
        model.weight.fill_(slope)
        model.bias.fill_(intercept)
    return model


def test_window_losses_scores_exactly_the_first_n_windows_of_one_fresh_generator():
    task, model = Windows(), line()
    losses = sl.window_losses(model, task, 4)
    # windows 0, 1, 2, 3 (not 1..4, not 0..4): 2i + 1
    assert losses.dtype == np.float64 and losses.tolist() == [1.0, 3.0, 5.0, 7.0]
    assert [d[:2] for d in task.draws] == [("val", 3)] * 4  # the task's batch size by default
    assert len({id(d[2]) for d in task.draws}) == 1  # one generator, drawn in turn
    fresh = torch.Generator().manual_seed(VALIDATION_SEED).get_state()
    assert torch.equal(task.draws[0][3], fresh)  # seeded with the fixed seed
    assert task.modes == [(False, False)] * 4  # eval mode, no gradients

    again = sl.window_losses(model, task, 4, batch_size=5, seed=7)  # a new call starts from a new generator
    assert again.tolist() == losses.tolist() and [d[1] for d in task.draws[4:]] == [5] * 4
    assert task.draws[4][2] is not task.draws[0][2]
    assert torch.equal(task.draws[4][3], torch.Generator().manual_seed(7).get_state())


def test_window_losses_puts_the_mode_back_and_rejects_a_bad_count():
    task, model = Windows(), line()
    model.train()
    sl.window_losses(model, task, 2)
    assert model.training
    model.eval()
    sl.window_losses(model, task, 2)
    assert not model.training
    for bad in (0, -1, 2.0, True):
        with pytest.raises(ValueError, match=rf"windows={bad!r} is outside the allowed range \[1, inf\)"):
            sl.window_losses(model, task, bad)


def test_window_losses_on_a_real_task_are_the_same_windows_for_every_model():
    setup = head_to_head("ci")
    task = setup.make_task()
    a, b = task.make_model(seed=0), task.make_model(seed=1)
    first, second = sl.window_losses(a, task, 3), sl.window_losses(a, task, 3)
    assert first.shape == (3,) and first.tolist() == second.tolist()
    g = torch.Generator().manual_seed(VALIDATION_SEED)  # what the chapters computed by hand
    with torch.no_grad():
        by_hand = [float(task.loss(b, task.batch("val", task.batch_size, g))) for _ in range(3)]
    assert sl.window_losses(b, task, 3).tolist() == by_hand


def test_paired_difference_by_hand():
    # two seeds, three windows: a − b per seed is [1, 2, 3] and [3, 2, 7]; averaged: d = [2, 2, 5]
    a = [np.array([2.0, 3.0, 4.0]), np.array([4.0, 4.0, 8.0])]
    b = [np.array([1.0, 1.0, 1.0]), np.array([1.0, 2.0, 1.0])]
    diff = sl.paired_difference(a, b)
    # mean 3; std(ddof=1) = √((1 + 1 + 4) / 2) = √3; two standard errors 2·√3/√3 = 2
    assert diff.mean == pytest.approx(3.0) and diff.two_se == pytest.approx(2.0)
    assert diff.per_seed == pytest.approx((2.0, 4.0)) and diff.windows == 3
    assert diff.verdict("b better", "b worse") == "b better"  # 3 > 2
    flipped = sl.paired_difference(b, a)
    assert flipped.mean == pytest.approx(-3.0) and flipped.verdict("b better", "b worse") == "b worse"
    # one seed given as a plain array; d = [1, 2, 3]: mean 2, 2·1/√3 ≈ 1.155 → still above
    one = sl.paired_difference(a[0], b[0])
    assert one.mean == pytest.approx(2.0) and one.two_se == pytest.approx(2 / math.sqrt(3)) and one.per_seed == (2.0,)


def test_paired_difference_verdict_thresholds_and_unanimity():
    within = PairedDifference(mean=1.0, two_se=1.0, per_seed=(1.0,), windows=4)  # not *more* than 2 SE
    assert within.verdict("up", "down") == "indistinguishable"
    assert within.verdict("up", "down", otherwise="tie") == "tie"
    split = PairedDifference(mean=3.0, two_se=1.0, per_seed=(7.0, -1.0), windows=4)
    assert split.verdict("up", "down") == "up"
    assert split.verdict("up", "down", unanimous=True) == "indistinguishable"  # one seed disagrees
    below = PairedDifference(mean=-3.0, two_se=1.0, per_seed=(-2.0, -4.0), windows=4)
    assert below.verdict("up", "down", unanimous=True) == "down"


def test_paired_difference_rejects_mismatched_or_too_few_windows():
    with pytest.raises(ValueError, match=r"same seeds' window losses, got shapes \(2, 3\) and \(1, 3\)"):
        sl.paired_difference([np.ones(3), np.ones(3)], [np.ones(3)])
    with pytest.raises(ValueError, match=r"1 window\(s\) is outside the allowed range \[2, inf\)"):
        sl.paired_difference(np.ones(1), np.zeros(1))
