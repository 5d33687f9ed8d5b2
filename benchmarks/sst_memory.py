"""Peak memory of a pre-training step: SST against full rank (and LoRA as a peer), and against SST
through plain autograd (the previous forward, which kept one dense W per layer until backward).

Each configuration runs in a **fresh subprocess**, so no allocation of one run can hide in the
allocator pool of another: build the model, apply the method, build AdamW (``sl.optimizer``), then
take a few optimizer steps (forward, backward, step) on a fixed batch. Reported per configuration:

* ``step_MiB`` — peak resident memory during the steps *minus* the resident memory just before them
  (after construction). What a training step adds on top of the stored model: activations kept for
  backward, gradients, Adam's moments (allocated by the first step), and the transients of
  backward. The subtraction takes out the weights themselves — which differ by method (SST stores
  U and Vh, about twice a square W) and are the subject of ``sl.memory_report`` — and the
  interpreter and torch. The peak is the kernel's high-water mark ``VmHWM``, reset just before the
  steps by writing 5 to ``/proc/self/clear_refs`` (Linux ≥ 4.0), because ``ru_maxrss`` cannot be
  reset and would report the SVD workspace of ``sl.apply`` instead of the step. Where
  ``clear_refs`` is not writable the script falls back to ``ru_maxrss`` and says so.
* ``total_MiB`` — that peak, absolute (model, optimizer and everything else included).
* on CUDA also ``cuda_step_MiB`` = ``torch.cuda.max_memory_allocated()`` during the steps minus the
  allocated memory before them, and ``cuda_total_MiB``.
* ``s_per_step`` — the median of the timed steps (a rough number: one process at a time on a shared
  machine; ``--time`` runs the careful interleaved comparison below).

Ratios are to full rank in the same run. The model is the project's tiny GPT at ``d_model`` 1024
(rank 64, about 6 % of d as in the paper's OPT runs), a short context and many sequences, so that a
batch has thousands of tokens as in pre-training; SST and LoRA adapt every attention and MLP
projection (``qkv``, ``proj``, ``fc1``, ``fc2``), everything else trains in all runs.

``--time``: step time of SST (this backward), SST through plain autograd, and full rank on the
tiny GPT at d_model 128 with 4096 tokens per batch (the configuration ``pretrain_steps.py`` used to
quote), measured in interleaved rounds in one process, medians.

    python benchmarks/sst_memory.py            # memory table (and --time for the step times)
    python benchmarks/sst_memory.py --batch 256 --record-as sst_memory_16384_tokens   # where "auto" keeps W
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
TARGETS = ["qkv", "proj", "fc1", "fc2"]
CONFIGS = ["full", "lora", "sst", "sst_never", "sst_autograd"]
LABELS = {
    "full": "full rank",
    "lora": "LoRA",
    "sst": "SST (its backward, keep_weight=auto)",
    "sst_never": "SST (its backward, keep_weight=never)",
    "sst_autograd": "SST via plain autograd (previous forward)",
}


def use_plain_autograd() -> None:
    """Swap SST's forward for the previous one: F.linear on the dense effective weight, differentiated
    by autograd (which keeps that W for backward). Memory and time only — the vector gradients it
    leaves are the Σ-scaled ones, which is irrelevant to what is measured here."""
    import torch.nn.functional as F

    from spectrallab.methods.sst import SSTLayer

    SSTLayer.forward = lambda self, x: F.linear(x, self.effective_weight(), self.bias)


def memory_task(args):
    import spectrallab as sl

    return sl.task(
        "chargpt",
        n_chars=200_000,
        d_model=args.d_model,
        n_layer=args.n_layer,
        n_head=args.d_model // 64,
        context=args.context,
    )


def build(task, config: str, rank: int, device: str):
    import torch

    import spectrallab as sl

    if config == "sst_autograd":
        use_plain_autograd()
    model = task.make_model(seed=0).to(device)
    if config != "full":
        method = "sst" if config.startswith("sst") else config
        options = {"keep_weight": "never"} if config == "sst_never" else {}
        sl.apply(model, method, targets=TARGETS, freeze_others=False, rank=rank, **options)
    opt = sl.optimizer(model, lr=1e-4)
    batch = task.batch("train", task.batch_size, torch.Generator().manual_seed(0))
    return model, opt, tuple(t.to(device) for t in batch)


def _resident_MiB(field: str) -> float | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


def _reset_peak() -> bool:
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def child(args) -> None:
    """One configuration, alone in this process; prints one JSON line."""
    import torch

    torch.manual_seed(0)
    device = "cuda" if torch.cuda.is_available() and not args.cpu else "cpu"
    task = memory_task(args)
    task.batch_size = args.batch
    model, opt, batch = build(task, args.child, args.rank, device)
    import gc

    gc.collect()
    before = _resident_MiB("VmRSS")
    resettable = _reset_peak()
    if device == "cuda":
        torch.cuda.synchronize()
        cuda_before = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
    times = []
    for _ in range(args.steps):
        start = time.perf_counter()
        loss = task.loss(model, batch)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if device == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    if resettable and _resident_MiB("VmHWM") is not None:
        peak, how = _resident_MiB("VmHWM"), "VmHWM after clear_refs"
    else:  # ru_maxrss: KiB on Linux, the peak since the process started
        peak, how = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, "ru_maxrss (not resettable)"
    out = {
        "config": args.child,
        "device": device,
        "total_MiB": peak,
        "step_MiB": peak - before,
        "before_MiB": before,
        "peak_from": how,
        "s_per_step": statistics.median(times[1:] or times),
        "tokens_per_batch": task.batch_size * task.context,
        "loss": float(loss.detach()),
    }
    if device == "cuda":
        out["cuda_step_MiB"] = (torch.cuda.max_memory_allocated() - cuda_before) / 2**20
        out["cuda_total_MiB"] = torch.cuda.max_memory_allocated() / 2**20
    print(json.dumps(out))


def memory_table(args) -> dict:
    results = {}
    for config in CONFIGS:
        command = (
            [sys.executable, __file__, "--child", config]
            + [
                f"--{k.replace('_', '-')}={v}"
                for k, v in vars(args).items()
                if k in ("d_model", "n_layer", "context", "batch", "rank", "steps")
            ]
            + (["--cpu"] if args.cpu else [])
        )
        done = subprocess.run(command, capture_output=True, text=True, env=os.environ.copy())
        if done.returncode:
            raise RuntimeError(f"{config} failed:\n{done.stderr}")
        results[config] = json.loads(done.stdout.strip().splitlines()[-1])
    first = results["full"]
    print(
        f"tiny GPT d_model {args.d_model}, {args.n_layer} blocks, {first['tokens_per_batch']} tokens per batch, "
        f"rank {args.rank}, {args.steps} AdamW steps, device {first['device']}; peak from {first['peak_from']}"
    )
    keys = ["step_MiB", "total_MiB"] + (["cuda_step_MiB", "cuda_total_MiB"] if "cuda_step_MiB" in first else [])
    for config, r in results.items():
        cells = "  ".join(f"{key} {r[key]:8.1f} ({r[key] / first[key]:.2f}×)" for key in keys)
        step_ratio = r["s_per_step"] / first["s_per_step"]
        print(f"{LABELS[config]:>42}: {cells}  {r['s_per_step']:.2f} s/step ({step_ratio:.2f}×)")
    ratios = {config: {key: r[key] / first[key] for key in keys + ["s_per_step"]} for config, r in results.items()}
    saving = {key: results["sst"][key] / results["sst_autograd"][key] for key in keys}
    print("SST's backward vs plain autograd: " + ", ".join(f"{k} {v:.2f}×" for k, v in saving.items()))
    # What keep_weight="auto" costs over "never": nothing below 8·out_features tokens (no layer keeps
    # its W), at most an eighth of each keeping layer's saved input above.
    kept_cost = {key: results["sst"][key] / results["sst_never"][key] for key in keys}
    print("SST keep_weight=auto vs never: " + ", ".join(f"{k} {v:.2f}×" for k, v in kept_cost.items()))
    return {
        "model": memory_task(args).config() | {"batch_size": args.batch},
        "rank": args.rank,
        "steps": args.steps,
        "results": results,
        "relative_to_full": ratios,
        "sst_over_sst_autograd": saving,
        "sst_auto_over_sst_never": kept_cost,
    }


def step_times(args) -> dict:
    """SST (its backward), SST via plain autograd and full rank, interleaved in one process."""
    import copy

    import torch
    import torch.nn.functional as F

    sys.path.insert(0, str(HERE))
    from common import interleaved, train_step

    import spectrallab as sl
    from spectrallab.methods.sst import SSTLayer

    torch.manual_seed(0)
    task = sl.task("chargpt", n_chars=200_000, d_model=128, n_layer=4, n_head=4, context=128)
    task.batch_size = 32
    base = task.make_model(seed=0)
    batch = task.batch("train", task.batch_size, torch.Generator().manual_seed(0))
    steps = {}
    for config in ("full", "sst", "sst_autograd"):
        model = copy.deepcopy(base)
        if config != "full":
            sl.apply(model, "sst", targets=TARGETS, freeze_others=False, rank=8)
        if config == "sst_autograd":  # only these layers' forward, so that both SST runs coexist
            for layer in sl.adapted_layers(model).values():
                layer.forward = (lambda self: lambda x: F.linear(x, self.effective_weight(), self.bias))(layer)
        assert all(isinstance(layer, SSTLayer) for layer in sl.adapted_layers(model).values())
        steps[config] = train_step(model, task, batch, sl.optimizer(model, lr=1e-4))
    times = interleaved(steps, rounds=args.rounds, reps=3, warmup=2)
    relative = {c: t / times["full"] for c, t in times.items()}
    print(
        f"step time, tiny GPT d_model 128, 4 blocks, {task.batch_size * task.context} tokens, rank 8, "
        f"{args.rounds} interleaved rounds (medians):"
    )
    for c, t in times.items():
        print(f"{LABELS[c]:>42}: {t * 1e3:7.1f} ms/step ({relative[c]:.3f}× full)")
    return {
        "model": task.config() | {"batch_size": task.batch_size},
        "rank": 8,
        "ms_per_step": {c: t * 1e3 for c, t in times.items()},
        "relative_to_full": relative,
        "sst_over_sst_autograd": times["sst"] / times["sst_autograd"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--child", choices=CONFIGS, help=argparse.SUPPRESS)
    parser.add_argument("--d-model", type=int, default=1024)
    parser.add_argument("--n-layer", type=int, default=2)
    parser.add_argument("--context", type=int, default=64)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--rank", type=int, default=64)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--cpu", action="store_true", help="measure on the CPU even when CUDA is there")
    parser.add_argument("--time", action="store_true", help="also the interleaved step-time comparison")
    parser.add_argument("--no-record", action="store_true")
    parser.add_argument("--record-as", default="sst_memory", help="name of the record in results/ (another size)")
    args = parser.parse_args()
    if args.child:
        child(args)
        return
    result = {"memory": memory_table(args)}
    if args.time:
        result["time"] = step_times(args)
    if not args.no_record:
        sys.path.insert(0, str(HERE))
        from common import record

        print(f"recorded in {record(args.record_as, result)}")


if __name__ == "__main__":
    main()
