"""Train-step time of every registered fine-tuning method relative to LoRA at the same rank.

The same tiny GPT (cpu-profile size), the same layers (qkv, proj, fc1, fc2), rank 8, AdamW through
``sl.optimizer`` (so SORSA's regularizer hook is included); rounds alternate across methods.
"""

from __future__ import annotations

import copy
import os

import torch

os.environ.setdefault("SPECTRALLAB_PROFILE", "cpu")
from common import interleaved, record, train_step  # noqa: E402

import spectrallab as sl  # noqa: E402

TARGETS = ["qkv", "proj", "fc1", "fc2"]
RANK_OPTION = {"vera": {"rank": 8}, "svft": {}, "svfit": {"rank": 8}, "full": {}}


def main() -> dict:
    torch.manual_seed(0)
    task = sl.task("chargpt", n_chars=200_000).to("cpu")
    base = task.make_model()
    batch = task.batch("train", task.batch_size, torch.Generator().manual_seed(0))
    steps = {}
    for method in sl.methods():
        model = copy.deepcopy(base)
        sl.apply(model, method, targets=TARGETS, **RANK_OPTION.get(method, {"rank": 8}))
        steps[method] = train_step(model, task, batch, sl.optimizer(model, lr=1e-4))
    times = interleaved(steps, rounds=5, reps=5, warmup=2)
    relative = {m: t / times["lora"] for m, t in times.items()}
    for m in sorted(relative, key=relative.get):
        print(f"{m:>9}: {times[m] * 1e3:7.1f} ms/step  ({relative[m]:.2f}× LoRA)")
    result = {
        "model": task.config(),
        "rank": 8,
        "targets": TARGETS,
        "ms_per_step": {m: t * 1e3 for m, t in times.items()},
        "relative_to_lora": relative,
    }
    print(f"recorded in {record('method_steps', result)}")
    return result


if __name__ == "__main__":
    main()
