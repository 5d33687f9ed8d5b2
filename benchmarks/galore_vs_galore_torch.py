"""GaLore step time: spectrallab's ``GaLoreAdamW`` (through ``sl.optimizer``) against ``galore-torch``'s.

The same tiny GPT (cpu-profile size), GaLore on the attention and MLP weights (qkv, proj, fc1,
fc2) at rank d/4 = 32, everything else (embeddings, norms, head, biases) in the plain AdamW group of
the same optimizer, the same batch and the same hyperparameters. Three timings, rounds alternating
between the two implementations (and the order rotated every round):

* ``train_step``: forward, backward, ``opt.step()`` with the paper's ``update_proj_gap = 200`` (no
  SVD inside the timed steps: the projections are computed in the warm-up). Forward and backward
  are the same computation in both and dominate, so a second galore-torch copy is timed in the same
  rounds: its ratio to the first is the noise floor of this number on a busy machine;
* ``optimizer_step``: ``opt.step()`` alone on fixed gradients, ``update_proj_gap = 200`` — the part
  the two implementations actually differ in;
* ``optimizer_step_svd``: ``opt.step()`` alone with ``update_proj_gap = 1``, so every step
  recomputes every projection (the cost of a refresh step; the SVD is the same LAPACK call in both).

The ratio spectrallab / galore-torch is the number to watch (goal ≤ 1.0).
"""

from __future__ import annotations

import copy
import logging
import os
import statistics

import torch

os.environ.setdefault("SPECTRALLAB_PROFILE", "cpu")
from common import interleaved, record, train_step  # noqa: E402

import spectrallab as sl  # noqa: E402

logging.getLogger("bitsandbytes").setLevel(logging.ERROR)  # "no optional CPU kernels" on import
from galore_torch import GaLoreAdamW as ReferenceGaLoreAdamW  # noqa: E402

TARGETS = ["qkv", "proj", "fc1", "fc2"]
SETTINGS = dict(lr=1e-3, eps=1e-8, weight_decay=1e-2)  # spectrallab's defaults, given to both


def pair(base, task, rank: int, gap: int):
    """(ours, optimizer), (reference, optimizer) on identical copies of ``base``."""
    ours = sl.apply(copy.deepcopy(base), "galore", rank=rank, update_proj_gap=gap, scale=0.25, targets=TARGETS)
    opt = sl.optimizer(ours, **SETTINGS)
    reference = copy.deepcopy(base)
    names = {n for n in sl.adapted_layers(ours)}
    galore = [m.weight for n, m in reference.named_modules() if n in names]
    regular = [p for p in reference.parameters() if all(p is not w for w in galore)]
    ref_opt = ReferenceGaLoreAdamW(
        [
            {"params": regular},
            {"params": galore, "rank": rank, "update_proj_gap": gap, "scale": 0.25, "proj_type": "std"},
        ],
        no_deprecation_warning=True,
        **SETTINGS,
    )
    assert len(opt.param_groups[1]["params"]) == len(galore) == 4 * task.n_layer
    return (ours, opt), (reference, ref_opt)


def rotating(candidates: dict, rounds: int, reps: int, warmup: int = 3) -> dict[str, float]:
    """``interleaved`` with the order of the candidates rotated every round: on a busy 2-core machine
    the first candidate of a round was measured slower more often than not, whoever it was."""
    for fn in candidates.values():
        for _ in range(warmup):
            fn()
    names, samples = list(candidates), {name: [] for name in candidates}
    for r in range(rounds):
        order = names[r % len(names) :] + names[: r % len(names)]
        for name, seconds in interleaved({n: candidates[n] for n in order}, rounds=1, reps=reps, warmup=0).items():
            samples[name].append(seconds)
    return {name: statistics.median(values) for name, values in samples.items()}


def step_only(model, task, batch, opt):
    """Gradients once, then ``opt.step()`` alone (the gradients stay; only the optimizer is timed)."""
    opt.zero_grad(set_to_none=True)
    task.loss(model, batch).backward()
    return opt.step


def main() -> dict:
    torch.manual_seed(0)
    task = sl.task("chargpt", n_chars=200_000).to("cpu")
    base = task.make_model()
    rank = task.d_model // 4
    batch = task.batch("train", task.batch_size, torch.Generator().manual_seed(0))
    results = {}

    (ours, opt), (ref, ref_opt) = pair(base, task, rank, gap=200)
    _, (control, control_opt) = pair(base, task, rank, gap=200)
    results["train_step"] = rotating(
        {
            "spectrallab": train_step(ours, task, batch, opt),
            "galore_torch": train_step(ref, task, batch, ref_opt),
            "galore_torch_again": train_step(control, task, batch, control_opt),
        },
        rounds=15,
        reps=3,
    )
    (ours, opt), (ref, ref_opt) = pair(base, task, rank, gap=200)
    results["optimizer_step"] = rotating(
        {"spectrallab": step_only(ours, task, batch, opt), "galore_torch": step_only(ref, task, batch, ref_opt)},
        rounds=10,
        reps=20,
    )
    (ours, opt), (ref, ref_opt) = pair(base, task, rank, gap=1)
    results["optimizer_step_svd"] = rotating(
        {"spectrallab": step_only(ours, task, batch, opt), "galore_torch": step_only(ref, task, batch, ref_opt)},
        rounds=10,
        reps=5,
        warmup=2,
    )

    out = {"model": task.config(), "rank": rank, "targets": TARGETS, "scale": 0.25, **SETTINGS, "ms": {}, "ratio": {}}
    for name, times in results.items():
        ratio = times["spectrallab"] / times["galore_torch"]
        out["ms"][name] = {k: v * 1e3 for k, v in times.items()}
        out["ratio"][name] = ratio
        print(
            f"GaLore {name:>18}: spectrallab {times['spectrallab'] * 1e3:8.2f} ms, galore-torch "
            f"{times['galore_torch'] * 1e3:8.2f} ms, ratio {ratio:.3f} (goal <= 1.0)"
        )
    # The same galore-torch setup timed twice: how far apart two identical candidates land on this
    # machine now. A train_step ratio within this of 1.0 is noise (forward and backward are identical).
    out["noise_ratio_train_step"] = results["train_step"]["galore_torch_again"] / results["train_step"]["galore_torch"]
    print(f"noise: galore-torch timed twice in the same rounds, ratio {out['noise_ratio_train_step']:.3f}")
    print(f"recorded in {record('galore_vs_galore_torch', out)}")
    return out


if __name__ == "__main__":
    main()
