"""Long runs say how far they are: spectrallab.progress and fit(progress=...)."""

from __future__ import annotations

import pytest

import spectrallab as sl
from spectrallab.progress import Progress, progress_mode


def test_lines_mode_reports_step_time_left_and_rate(capsys):
    meter = Progress(100, "digits lora", "lines", quiet_seconds=0.0, every_seconds=0.0)
    for step in range(1, 101):
        meter.update(step, loss=1.0 / step)
    meter.close()
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[0].startswith("[digits lora] step 1/100:") and "s left" in lines[0] and "loss 1.000" in lines[0]
    assert len(lines) == 100  # 99 progress lines (none at the last step) and the closing line
    assert lines[-1].startswith("[digits lora] 100 steps in") and "steps/s" in lines[-1]


def test_lines_mode_is_silent_for_a_short_run(capsys):
    meter = Progress(50, "quick", "lines")  # the defaults: quiet for the first 10 s
    for step in range(1, 51):
        meter.update(step)
    meter.close()
    assert capsys.readouterr().out == ""


def test_bar_mode_clears_itself(capsys):
    meter = Progress(20, "bar run", "bar")
    for step in range(1, 21):
        meter.update(step, loss=0.5)
    meter.close()
    assert meter.bar is None
    assert capsys.readouterr().out == ""  # tqdm writes to stderr, never into the cell's stdout


def test_fit_reports_through_progress(capsys):
    task = sl.task("teacher")
    model = task.make_model(seed=0)
    sl.fit(model, task, 5, record=False, progress="off")
    assert capsys.readouterr().out == ""
    with pytest.raises(ValueError, match="progress mode 'loud' is not one of bar, lines, off"):
        sl.fit(model, task, 5, record=False, progress="loud")


def test_mode_from_the_environment(monkeypatch):
    monkeypatch.setenv("SPECTRALLAB_PROGRESS", "off")
    assert progress_mode() == "off"
    monkeypatch.setenv("SPECTRALLAB_PROGRESS", "noisy")
    with pytest.raises(ValueError, match="SPECTRALLAB_PROGRESS='noisy' is not one of bar, lines, off"):
        progress_mode()
