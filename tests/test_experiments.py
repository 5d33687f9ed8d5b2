"""spectrallab.experiments: the head-to-head settings the chapter and its learning-rate sweep share."""

from __future__ import annotations

import dataclasses
import json

import pytest

import spectrallab as sl
from spectrallab.experiments import METHODS, head_to_head


def test_each_profile_has_its_own_fixed_settings(monkeypatch):
    monkeypatch.setenv("SPECTRALLAB_PROFILE", "gpu")      # the active profile changes nothing when one is named
    ci, cpu, gpu = (head_to_head(p) for p in ("ci", "cpu", "gpu"))
    assert (ci.task_size["d_model"], ci.rank, ci.steps, ci.batch_size) == (32, 1, 600, 16)
    assert (cpu.task_size["d_model"], cpu.rank, cpu.steps, cpu.batch_size) == (64, 2, 400, 32)
    assert gpu.rank == gpu.task_size["d_model"] // 12 and gpu.steps == 8000
    assert len(cpu.seeds) >= 2 and len(gpu.seeds) >= 2
    assert head_to_head().profile == "gpu"
    assert ci.options("sst") == dict(rank=1, resample_every=20, warmup=4)
    assert cpu.options("relora") == dict(rank=2, reset_every=100, restart_warmup=10, prune_ratio=0.99)
    assert set(ci.as_dict()["options"]) == set(METHODS)
    json.dumps(gpu.as_dict())                             # plain JSON: what a sweep records


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
    for method in ("sltrain", "sst"):                     # SLTrain: global generator; SST: its seed option
        a, b, c = (setup.pretrain(task, method, 1e-2, seed)[0].final("val_loss") for seed in (0, 0, 1))
        assert a == b, method
        assert abs(a - c) > 1e-4, method
    run, report, model = setup.pretrain(task, "sst", 1e-2, 0)
    assert sl.adapted_layers(model) and report.optimizer_state > 0 and run.steps[-1] == 20
