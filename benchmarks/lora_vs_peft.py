"""Train-step time of spectrallab's LoRA against HF PEFT's LoRA on the same model, same run.

Both adapt the same layers of the same tiny GPT (rank 8, alpha 16) and take full AdamW steps
(forward, backward, step) on the same batch; rounds alternate between the two. The ratio
spectrallab / PEFT is the number to watch (goal ≤ 1.0).
"""

from __future__ import annotations

import copy
import os

import torch
from common import interleaved, record, train_step

os.environ.setdefault("SPECTRALLAB_PROFILE", "cpu")
from peft import LoraConfig, get_peft_model  # noqa: E402

import spectrallab as sl  # noqa: E402

TARGETS = ["qkv", "proj", "fc1", "fc2"]


def step_fn(model, task, batch):
    return train_step(
        model, task, batch, torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    )


def main() -> dict:
    torch.manual_seed(0)
    task = sl.task("chargpt", n_chars=200_000)
    task.to("cpu")
    base = task.make_model()
    ours = sl.apply(copy.deepcopy(base), "lora", rank=8, alpha=16, targets=TARGETS)
    peft = get_peft_model(copy.deepcopy(base), LoraConfig(r=8, lora_alpha=16, target_modules=TARGETS))
    assert sl.trainable_parameters(ours) == sum(p.numel() for p in peft.parameters() if p.requires_grad)
    batch = task.batch("train", task.batch_size, torch.Generator().manual_seed(0))
    times = interleaved(
        {"spectrallab": step_fn(ours, task, batch), "peft": step_fn(peft, task, batch)}, rounds=7, reps=10
    )
    ratio = times["spectrallab"] / times["peft"]
    print(
        f"LoRA train step on TinyGPT {task.config()}: spectrallab {times['spectrallab'] * 1e3:.2f} ms, "
        f"PEFT {times['peft'] * 1e3:.2f} ms, ratio spectrallab/PEFT = {ratio:.3f} (goal <= 1.0)"
    )
    result = {
        "model": task.config(),
        "rank": 8,
        "targets": TARGETS,
        "ms_per_step": {k: v * 1e3 for k, v in times.items()},
        "ratio_spectrallab_over_peft": ratio,
    }
    print(f"recorded in {record('lora_vs_peft', result)}")
    return result


if __name__ == "__main__":
    main()
