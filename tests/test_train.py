"""Training loop events, run records on disk, cached pretrained bases, profiles."""

from __future__ import annotations

import json

import pytest
import torch

import spectrallab as sl
from spectrallab.runs import load_runs


def test_train_yields_events_with_loss_lr_grad_norm_metrics_and_spectra(home):
    task = sl.task("teacher")
    model = task.make_model()
    events = list(
        sl.train(model, task, 20, lr=1e-2, eval_every=10, spectra_every=5, spectra_of=["fc1"], name="teacher-full")
    )
    assert [e.step for e in events] == list(range(21))
    assert events[0].loss is None and events[0].metrics is not None and "fc1" in events[0].spectra
    assert all(e.loss is not None and e.grad_norm > 0 and e.lr == 1e-2 for e in events[1:])
    assert [e.step for e in events if e.metrics] == [0, 10, 20]
    assert [e.step for e in events if e.spectra] == [0, 5, 10, 15, 20]
    assert events[-1].metrics["val_loss"] < events[0].metrics["val_loss"]
    # each step's own time is inside the wall time between its event and the one before it
    assert events[0].step_seconds is None
    for before, event in zip(events, events[1:]):
        assert 0 < event.step_seconds <= event.seconds - before.seconds + 1e-3


def test_fit_records_the_run_and_it_reloads(home):
    task = sl.task("digits")
    model = task.make_model()
    sl.apply(model, "lora", rank=4)
    run = sl.fit(model, task, 30, name="digits lora r4", config={"method": "lora", "rank": 4})
    assert run.path is not None and run.path.parent == home / "runs"
    data = json.loads(run.path.read_text())
    assert data["config"]["rank"] == 4 and data["config"]["methods"] == ["lora"]
    assert data["config"]["task"] == "digits" and data["config"]["task_config"]["view"] == "upright"
    assert data["config"]["trainable_parameters"] == sl.trainable_parameters(model)
    again = load_runs(method="lora", rank=4)
    assert len(again) == 1 and again[0].loss == run.loss and again[0].final("accuracy") == run.final("accuracy")
    assert load_runs(method="full") == []


def test_run_config_records_the_method_options_and_keeps_the_task_rank_apart(home):
    task = sl.task("teacher")  # the teacher has a rank of its own
    model = task.make_model()
    sl.apply(model, "lora", rank=2, alpha=4)
    run = sl.fit(model, task, 3, record=False)
    assert run.config["method"] == "lora" and run.config["rank"] == 2 and run.config["alpha"] == 4
    assert run.config["task_config"]["rank"] == task.rank != 2
    plain = sl.fit(task.make_model(), task, 3, record=False)
    assert plain.config["methods"] == ["none"] and "rank" not in plain.config


def test_a_stopped_generator_still_saves_its_record(home):
    task = sl.task("teacher")
    gen = sl.train(task.make_model(), task, 100, name="stopped")
    for event in gen:
        if event.step == 7:
            break
    gen.close()
    (run,) = load_runs(name="stopped")
    assert run.steps == list(range(1, 8))


def test_training_is_deterministic_under_a_seed(home):
    task = sl.task("digits")
    losses = []
    for _ in range(2):
        model = task.make_model(seed=3)
        losses.append(sl.fit(model, task, 15, seed=5, record=False).loss)
    assert losses[0] == losses[1]


def test_a_diverging_run_raises_a_clear_error(home):
    task = sl.task("teacher")
    with pytest.raises(FloatingPointError, match="loss became .* at step"):
        sl.fit(task.make_model(), task, 200, lr=1e6, optimizer=None, record=False)


def test_warmup_cosine_schedule():
    f = sl.warmup_cosine(100, warmup=10, floor=0.1)
    assert f(0) == pytest.approx(0.1) and f(9) == pytest.approx(1.0)
    assert f(10) == pytest.approx(1.0) and f(100) == pytest.approx(0.1)


def test_pretrained_base_is_cached_and_reproducible(home):
    task = sl.task("digits")
    a = sl.pretrained(task, steps=40)
    files = list((home / "bases").glob("digits-*.pt"))
    assert len(files) == 1
    stamp = files[0].stat().st_mtime_ns
    b = sl.pretrained(task, steps=40)
    assert files[0].stat().st_mtime_ns == stamp  # loaded, not retrained
    for pa, pb in zip(a.parameters(), b.parameters()):
        assert torch.equal(pa, pb)
    assert a is not b
    assert task.evaluate(a)["accuracy"] > 0.5
    sl.pretrained(task, steps=41)
    assert len(list((home / "bases").glob("digits-*.pt"))) == 2


def test_profiles(monkeypatch):
    monkeypatch.setenv("SPECTRALLAB_PROFILE", "gpu")
    assert sl.profile() == "gpu" and sl.pick(ci=1, cpu=2, gpu=3) == 3
    monkeypatch.delenv("SPECTRALLAB_PROFILE")
    monkeypatch.setenv("CI", "true")
    assert sl.profile() == "ci"
    monkeypatch.setenv("SPECTRALLAB_PROFILE", "huge")
    with pytest.raises(ValueError, match="SPECTRALLAB_PROFILE='huge' is not one of ci, cpu, gpu"):
        sl.profile()
    monkeypatch.setenv("SPECTRALLAB_DEVICE", "cpu")
    assert sl.device() == torch.device("cpu")


def test_tasks_are_offline_and_shiftable():
    digits = sl.task("digits")
    assert len(digits.x_train) == 1437 and len(digits.x_val) == 360
    rot = digits.shifted("rot90")
    assert not torch.equal(rot.x_train, digits.x_train) and torch.equal(rot.y_train, digits.y_train)
    gpt = sl.task("chargpt")
    x, y = gpt.batch("train", 4, torch.Generator().manual_seed(0))
    assert x.shape == (4, gpt.context) and torch.equal(x[:, 1:], y[:, :-1])
    docs = gpt.shifted("docs")
    assert docs.corpus == "docs" and "\n" in sl.tasks.decode(docs.train_ids[:2000])
    teacher = sl.task("teacher")
    shifted = teacher.shifted(shift_rank=2)
    assert torch.linalg.matrix_rank(shifted.W_star - teacher.W_star) == 2
    with pytest.raises(ValueError, match="unknown task 'mnist'"):
        sl.task("mnist")


def test_tiny_gpt_learns_something(home):
    task = sl.task("chargpt")
    model = task.make_model()
    run = sl.fit(model, task, 40, eval_every=20, record=False)
    assert run.final("val_loss") < run.evals[0]["val_loss"] - 0.5
    assert len(model.generate("def ", 20, generator=torch.Generator().manual_seed(0))) == 20


def test_method_lr_multipliers_compose_with_a_user_scheduler_and_are_restored():
    from spectrallab.optim import add_lr_multiplier, effective_lr

    p = torch.nn.Parameter(torch.ones(3))
    opt = torch.optim.SGD([p], lr=1.0)
    scheduler = torch.optim.lr_scheduler.LambdaLR(opt, lambda step: 1.0 / (step + 1))
    add_lr_multiplier(opt, lambda: 0.5)
    add_lr_multiplier(opt, lambda: 0.1)
    assert effective_lr(opt) == pytest.approx(0.05)
    for expected_step in (0.05, 0.025):  # user lr 1 then 1/2, times 0.05
        before = p.detach().clone()
        p.grad = torch.ones(3)
        opt.step()
        scheduler.step()
        torch.testing.assert_close(before - p.detach(), torch.full((3,), expected_step))
    assert opt.param_groups[0]["lr"] == pytest.approx(1 / 3)  # the scheduler's value, untouched
