"""spectrallab.runs: what a run record says about the model it trained."""

from __future__ import annotations

import pytest

import spectrallab as sl
from spectrallab.runs import Run

# Options that make each method's in-run events happen within a few steps: ReLoRA merges and
# restarts, GaLore refreshes its projection, SST resamples and re-SVDs.
SHORT = {
    "relora": dict(reset_every=3, restart_warmup=1),
    "galore": dict(update_proj_gap=3),
    "sst": dict(resample_every=3, warmup=1),
}
STEPS = 8


@pytest.mark.parametrize("method", sl.methods())
def test_trainable_is_the_count_fit_recorded_and_it_holds_to_the_end(method, home):
    task = sl.task("digits", width=16)
    model = task.make_model(seed=0)
    rank = {"rank": 2} if "rank" in sl.method_class(method).options else {}
    sl.apply(model, method, **rank, **SHORT.get(method, {}))
    before = sl.trainable_parameters(model)
    run = sl.fit(model, task, STEPS, lr=1e-3, eval_every=STEPS, progress="off")
    # recorded at the start of the run; no method changes what trains during it
    assert run.trainable == run.config["trainable_parameters"] == before == sl.trainable_parameters(model)
    assert Run.load(run.path).trainable == before  # and it survives the record on disk


def test_full_and_frozen_counts_differ_as_expected(home):
    task = sl.task("digits", width=16)
    full = sl.fit(task.make_model(seed=0), task, 2, record=False, progress="off")
    lora = sl.fit(sl.apply(task.make_model(seed=0), "lora", rank=2), task, 2, record=False, progress="off")
    assert full.trainable == sum(p.numel() for p in task.make_model(seed=0).parameters())
    assert 0 < lora.trainable < full.trainable


def test_a_hand_made_run_states_its_count_in_its_config():
    assert Run("frozen base", config={"trainable_parameters": 0}).trainable == 0
    with pytest.raises(AttributeError, match="run 'old' has no trainable_parameters in its config"):
        _ = Run("old").trainable
    with pytest.raises(AttributeError):  # read from the record, never set beside it
        Run("x").trainable = 3
