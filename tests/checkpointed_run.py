"""A small SST run with checkpoints, used by tests/test_checkpoint.py in this process and in child
processes that it kills (``python tests/checkpointed_run.py OUT CHECKPOINT MODE``).

MODE: ``run`` (to the end), ``slow`` (sleeps between steps, to be killed), ``die-mid-write`` (the
second checkpoint write stops after half of its bytes, fsyncs them and SIGKILLs its own process).
"""

from __future__ import annotations

import io
import os
import signal
import sys
import time

import torch

STEPS = 24
EVERY = 4


def checkpointed_run(checkpoint, mode: str = "run"):
    """Train the teacher's two-layer model under SST (period 5, so checkpoints fall on and off
    period boundaries) with a warm-up + cosine schedule; returns (model, run)."""
    import spectrallab as sl
    from spectrallab import checkpoint as ck

    if mode == "die-mid-write":
        real, calls = ck._save, []

        def dying(obj, file):
            calls.append(1)
            if len(calls) < 2:
                return real(obj, file)
            buffer = io.BytesIO()
            real(obj, buffer)
            data = buffer.getvalue()
            file.write(data[: len(data) // 2])
            file.flush()
            os.fsync(file.fileno())
            os.kill(os.getpid(), signal.SIGKILL)

        ck._save = dying

    task = sl.task("teacher")
    model = task.make_model(seed=0)
    sl.apply(model, "sst", rank=4, resample_every=5, warmup=2, periods_per_round=2, seed=0)
    pause = (lambda event: time.sleep(0.1)) if mode == "slow" else None
    run = sl.fit(
        model,
        task,
        STEPS,
        lr=1e-2,
        schedule=sl.warmup_cosine(STEPS, warmup=3),
        eval_every=5,
        checkpoint=checkpoint,
        checkpoint_every=EVERY,
        on_event=pause,
        name="checkpointed",
        progress="off",
    )
    return model, run


if __name__ == "__main__":
    torch.set_num_threads(1)
    out, checkpoint, mode = sys.argv[1:4]
    model, run = checkpointed_run(checkpoint, mode)
    torch.save({"model": model.state_dict(), "loss": run.loss, "evals": run.evals, "id": run.id}, out)
