"""Pre-training step time of each memory-efficient method relative to full-rank training, one run.

The same tiny GPT, the same layers (qkv, proj, fc1, fc2), rank r, AdamW through ``sl.optimizer``
(so every method's own work — ReLoRA's merges, GaLore's projections, SST's enhanced gradient,
renormalization, resampling and re-SVD — is inside the timed steps); rounds alternate between
methods. Each timed call is a block of 20 optimizer steps with the periodic work every 20 steps —
ten times more often than the papers' 200 — so the overheads shown are upper bounds.

Also measured: the share of SST's time spent in its periodic SVD work (the SST paper attributes
0.5–0.8 % of training time to SVD), and, on a CUDA GPU, the same table on a model large enough to
fill it, with ``torch.cuda.max_memory_allocated`` per method.
"""

from __future__ import annotations

import copy
import os
import statistics
import time

import torch

os.environ.setdefault("SPECTRALLAB_PROFILE", "cpu")
from common import interleaved, record  # noqa: E402

import spectrallab as sl  # noqa: E402

TARGETS = ["qkv", "proj", "fc1", "fc2"]
PRETRAINING = ["full", "lora", "relora", "galore", "sltrain", "sst"]


def options(method: str, rank: int, period: int) -> dict:
    """Each method at rank r, with its periodic work every ``period`` steps (ReLoRA* prunes 99 %)."""
    if method == "full":
        return {}
    opts = {"rank": rank, **(sl.method_class(method).period_options(period) or {})}
    if method == "relora":
        opts["prune_ratio"] = 0.99
    return opts


def build(task, base, method: str, rank: int, period: int):
    model = copy.deepcopy(base)
    if method != "full":  # pre-training: everything outside the adapted layers trains, LoRA included
        sl.apply(model, method, targets=TARGETS, freeze_others=False, **options(method, rank, period))
    return model, sl.optimizer(model, lr=1e-4)


def block_of_steps(model, task, opt, batches, sync):
    """``len(batches)`` optimizer steps (forward, backward, step, with method hooks)."""

    def run() -> None:
        for batch in batches:
            loss = task.loss(model, batch)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        sync()

    return run


def compare(task, rank: int, period: int, block: int, rounds: int, cuda: bool) -> dict:
    torch.manual_seed(0)
    base = task.make_model()
    generator = torch.Generator().manual_seed(0)
    batches = [task.batch("train", task.batch_size, generator) for _ in range(block)]
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    present = [m for m in PRETRAINING if m in sl.methods()]
    runs, peak = {}, {}
    for method in present:
        model, opt = build(task, base, method, rank, period)
        runs[method] = block_of_steps(model, task, opt, batches, sync)
        if cuda:  # peak memory of this method alone: one block from a reset counter
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
            runs[method]()
            peak[method] = torch.cuda.max_memory_allocated() / 2**20
    times = interleaved(runs, rounds=rounds, reps=1, warmup=1)
    per_step = {m: t / block * 1e3 for m, t in times.items()}
    relative = {m: per_step[m] / per_step["full"] for m in per_step}
    for m in present:
        extra = f", peak {peak[m]:,.0f} MiB" if m in peak else ""
        print(f"{m:>8}: {per_step[m]:8.2f} ms/step  ({relative[m]:.3f}× full){extra}")
    return {"ms_per_step": per_step, "relative_to_full": relative, "peak_MiB": peak or None}


def sst_periodic_share(task, rank: int, sst_ms_per_step: float, reps: int = 5) -> dict:
    """SST's periodic work (resampling + swap, and the re-SVD closing each round) as a share of
    training time at the paper's schedule: T3 = 200 steps per period, a round of ⌈k/r⌉ periods."""
    torch.manual_seed(0)
    model = sl.apply(task.make_model(), "sst", rank=rank, targets=TARGETS)
    layers = list(sl.adapted_layers(model).values())

    def median_ms(fn) -> float:
        fn()  # warm-up
        times = []
        for _ in range(reps):
            start = time.perf_counter()
            fn()
            times.append(time.perf_counter() - start)
        return statistics.median(times) * 1e3

    def resample_all() -> None:
        for layer in layers:
            layer.swap_in(layer._draw(layer.S.detach()))

    def resvd_all() -> None:
        for layer in layers:
            layer.resvd()

    resample_ms, resvd_ms = median_ms(resample_all), median_ms(resvd_all)
    periods_per_round = max(layer.periods_per_round for layer in layers)
    period = 200
    amortized = resample_ms / period + resvd_ms / (period * periods_per_round)
    share = amortized / sst_ms_per_step
    print(
        f"SST periodic work at the paper's schedule (T3 = {period}, {periods_per_round} periods per round): "
        f"resample {resample_ms:.2f} ms, re-SVD {resvd_ms:.2f} ms per event over all layers -> "
        f"{share:.3%} of training time (paper: 0.5-0.8 % for SVD)"
    )
    return {
        "resample_ms": resample_ms,
        "resvd_ms": resvd_ms,
        "period": period,
        "periods_per_round": periods_per_round,
        "share_of_step_time": share,
    }


def main() -> dict:
    task = sl.task("chargpt", n_chars=200_000).to("cpu")
    print(f"CPU, TinyGPT {task.config()}, rank 8:")
    cpu = compare(task, rank=8, period=20, block=20, rounds=5, cuda=False)
    result = {"cpu": {"model": task.config(), "rank": 8, **cpu}}
    if "sst" in cpu["ms_per_step"]:
        result["cpu"]["sst_periodic"] = sst_periodic_share(task, 8, cpu["ms_per_step"]["sst"])
    if torch.cuda.is_available():
        big = sl.task("chargpt", n_chars=1_000_000, d_model=1024, n_layer=8, n_head=16, context=256).to("cuda")
        big.batch_size = 32
        print(f"CUDA {torch.cuda.get_device_name(0)}, TinyGPT {big.config()}, rank 128:")
        gpu = compare(big, rank=128, period=50, block=50, rounds=3, cuda=True)
        result["cuda"] = {"model": big.config(), "rank": 128, **gpu}
        if "sst" in gpu["ms_per_step"]:
            result["cuda"]["sst_periodic"] = sst_periodic_share(big, 128, gpu["ms_per_step"]["sst"])
    print(f"recorded in {record('pretrain_steps', result)}")
    return result


if __name__ == "__main__":
    main()
