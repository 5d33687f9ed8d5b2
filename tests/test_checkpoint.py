"""Checkpoints in the training loop: a run killed at any moment (SIGKILL, even in the middle of a
checkpoint write) resumes from the last complete checkpoint to the same final weights, bit for
bit, as a run that was never interrupted; checkpoints and run records are written atomically."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from checkpointed_run import EVERY, STEPS, checkpointed_run

import spectrallab as sl
from spectrallab import checkpoint as ck
from spectrallab.runs import Run, load_runs

SCRIPT = Path(__file__).with_name("checkpointed_run.py")


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """The uninterrupted run (its own checkpoint file, never resumed from)."""
    os.environ.setdefault("SPECTRALLAB_HOME", str(tmp_path_factory.mktemp("home")))
    model, run = checkpointed_run(tmp_path_factory.mktemp("reference") / "run.pt")
    return {k: v.clone() for k, v in model.state_dict().items()}, run


def child(out: Path, checkpoint: Path, mode: str, home: Path) -> subprocess.Popen:
    env = {**os.environ, "SPECTRALLAB_HOME": str(home), "OMP_NUM_THREADS": "1", "PYTHONPATH": str(SCRIPT.parent)}
    return subprocess.Popen(
        [sys.executable, str(SCRIPT), str(out), str(checkpoint), mode],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )


def assert_same_weights(state: dict, expected: dict) -> None:
    assert state.keys() == expected.keys()
    assert [k for k in state if not torch.equal(state[k], expected[k])] == []


def test_sigkilled_run_resumes_to_the_uninterrupted_weights(tmp_path, reference):
    expected, expected_run = reference
    checkpoint, out = tmp_path / "run.pt", tmp_path / "final.pt"
    proc = child(out, checkpoint, "slow", tmp_path)
    deadline = time.monotonic() + 120
    while not checkpoint.exists():
        assert proc.poll() is None, proc.stdout.read().decode()
        assert time.monotonic() < deadline, "no checkpoint written"
        time.sleep(0.01)
    time.sleep(0.15)  # mid-run: between checkpoints, inside a step or a write
    proc.send_signal(signal.SIGKILL)
    assert proc.wait(30) == -signal.SIGKILL
    proc.stdout.close()
    assert not out.exists()
    step = torch.load(checkpoint, weights_only=True)["step"]
    assert EVERY <= step < STEPS and step % EVERY == 0

    proc = child(out, checkpoint, "run", tmp_path)
    output = proc.communicate(timeout=120)[0].decode()
    assert proc.returncode == 0, output
    final = torch.load(out, weights_only=True)
    assert_same_weights(final["model"], expected)
    assert final["loss"] == expected_run.loss and final["evals"] == expected_run.evals
    # One run record, complete: the resumed run kept the killed run's id.
    (record,) = load_runs(tmp_path / "runs")
    assert record.id == final["id"] and record.loss == expected_run.loss and record.steps == list(range(1, STEPS + 1))
    assert not list(tmp_path.glob(".run.pt.*.tmp"))


def test_a_kill_in_the_middle_of_a_write_leaves_the_previous_checkpoint(tmp_path, reference, monkeypatch):
    expected, expected_run = reference
    checkpoint, out = tmp_path / "run.pt", tmp_path / "final.pt"
    proc = child(out, checkpoint, "die-mid-write", tmp_path)
    output = proc.communicate(timeout=120)[0].decode()
    assert proc.returncode == -signal.SIGKILL, output
    (partial,) = tmp_path.glob(".run.pt.*.tmp")  # half a checkpoint, fsynced, never renamed
    assert 0 < partial.stat().st_size < checkpoint.stat().st_size
    with pytest.raises(Exception):  # noqa: B017 (torch raises another type per truncation point)
        torch.load(partial, weights_only=True)
    assert torch.load(checkpoint, weights_only=True)["step"] == EVERY  # the first one, intact

    monkeypatch.setenv("SPECTRALLAB_HOME", str(tmp_path))
    model, run = checkpointed_run(checkpoint)  # resumes (in this process) from step EVERY
    assert_same_weights(model.state_dict(), expected)
    assert run.loss == expected_run.loss and run.evals == expected_run.evals
    assert not partial.exists()  # the stale temporary was removed


def test_in_process_interruption_and_resume_yield_the_expected_events(tmp_path, reference, home):
    expected, expected_run = reference
    checkpoint = tmp_path / "run.pt"
    task = sl.task("teacher")

    def setup():
        model = task.make_model(seed=0)
        return sl.apply(model, "sst", rank=4, resample_every=5, warmup=2, periods_per_round=2, seed=0)

    kwargs = dict(
        lr=1e-2,
        schedule=sl.warmup_cosine(STEPS, warmup=3),
        eval_every=5,
        checkpoint=checkpoint,
        checkpoint_every=EVERY,
        name="checkpointed",
    )
    events = []
    for event in sl.train(setup(), task, STEPS, **kwargs):  # a widget's Pause: stop consuming at step 10
        events.append(event.step)
        if event.step == 10:
            break
    assert events == list(range(11)) and torch.load(checkpoint, weights_only=True)["step"] == 8
    model = setup()
    events = list(sl.train(model, task, STEPS, **kwargs))
    assert [e.step for e in events] == list(range(8, STEPS + 1))
    assert events[0].loss is None and events[0].metrics is None
    assert_same_weights(model.state_dict(), expected)
    # Running the finished cell again trains nothing and changes nothing.
    again = setup()
    assert [e.step for e in sl.train(again, task, STEPS, **kwargs)] == [STEPS]
    assert_same_weights(again.state_dict(), expected)
    # A checkpoint from other settings is refused, naming what differs.
    with pytest.raises(ValueError, match=r"different run \(lr: checkpoint 0.01, this run 0.02"):
        next(sl.train(setup(), task, STEPS, **{**kwargs, "lr": 2e-2}))
    with pytest.raises(ValueError, match=r"step 24, past steps=20"):
        next(sl.train(setup(), task, 20, **kwargs))
    with pytest.raises(ValueError, match=r"checkpoint_every=0 is outside"):
        next(sl.train(setup(), task, STEPS, **{**kwargs, "checkpoint_every": 0}))


def test_a_failed_write_leaves_the_previous_file(tmp_path, monkeypatch):
    run = Run("atomic")
    run.loss = [1.0, 2.0]
    path = run.save(tmp_path)
    before = path.read_text()

    def broken_fsync(fd):
        raise OSError("disk full")

    run.loss = [3.0] * 1000
    monkeypatch.setattr(os, "fsync", broken_fsync)
    with pytest.raises(OSError, match="disk full"):
        run.save(tmp_path)
    monkeypatch.undo()
    assert path.read_text() == before and json.loads(before)["loss"] == [1.0, 2.0]
    assert sorted(p.name for p in tmp_path.iterdir()) == [path.name]  # no temporary left behind

    target = tmp_path / "state.pt"
    ck.atomic_save({"x": torch.arange(3)}, target)
    monkeypatch.setattr(ck, "_save", lambda obj, file: (file.write(b"half"), 1 / 0))
    with pytest.raises(ZeroDivisionError):
        ck.atomic_save({"x": torch.arange(5)}, target)
    assert torch.equal(torch.load(target, weights_only=True)["x"], torch.arange(3))
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([path.name, target.name])
