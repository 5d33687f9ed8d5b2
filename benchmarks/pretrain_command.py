"""Tokens per second of ``python -m spectrallab.pretrain`` for each pre-training method, on one process
and under ``torchrun --nproc-per-node 2``, with DDP and with ``--fsdp`` (FSDP2; ReLoRA is refused
there) — gloo on the CPU, NCCL on a GPU machine.

Each method runs the command as a user would (a fresh process, the ``cpu`` profile's model unless
a profile is given, ``--steps`` steps) and reads the summary the command writes: its tokens/s
counts the training steps' own time after the first (no evaluations, no one-time warm-up), and
``overall_tokens_per_second`` the same steps over the run's wall time, evaluations included.
The ratio of each method's throughput to full-rank training's is printed next to it, measured in
the same run. Rounds alternate between methods, and the median of the rounds is kept. On a 2-core
CPU, two processes each get one core where one process had both: DDP × 2 there measures the cost
of the all-reduce and the duplicated work, not a speed-up.

    python benchmarks/pretrain_command.py [PROFILE] [STEPS] [ROUNDS]
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from common import record

METHODS = ["full", "lora", "relora", "galore", "sltrain", "sst"]
FSDP_REFUSED = {"relora"}  # its merge needs whole matrices: spectrallab.fsdp refuses it


def tokens_per_second(method: str, profile: str, steps: int, processes: int, home: Path, fsdp: bool = False) -> dict:
    summary = home / f"{method}-{processes}{'-fsdp' if fsdp else ''}.json"
    launcher = (
        [sys.executable, "-m", "spectrallab.pretrain"]
        if processes == 1
        else [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nproc-per-node",
            str(processes),
            "-m",
            "spectrallab.pretrain",
        ]  # fmt: skip
    )
    env = {**os.environ, "SPECTRALLAB_HOME": str(home), "SPECTRALLAB_PROFILE": profile}
    if processes > 1:
        env["OMP_NUM_THREADS"] = str(max(1, (os.cpu_count() or 1) // processes))
    subprocess.run(
        [
            *launcher,
            "--method",
            method,
            "--profile",
            profile,
            "--steps",
            str(steps),
            "--progress",
            "off",
            "--summary-json",
            str(summary),
            *(["--fsdp"] if fsdp else []),
        ],  # fmt: skip
        env=env,
        check=True,
        stdout=subprocess.DEVNULL,
    )
    return json.loads(summary.read_text())


def main(profile: str = "cpu", steps: int = 100, rounds: int = 3) -> dict:
    results: dict[str, dict] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for processes, fsdp in ((1, False), (2, False), (2, True)):
            methods = [m for m in METHODS if not (fsdp and m in FSDP_REFUSED)]
            samples: dict[str, list[float]] = {m: [] for m in methods}
            last: dict[str, dict] = {}
            for _ in range(rounds):
                for method in methods:
                    last[method] = tokens_per_second(method, profile, steps, processes, Path(tmp), fsdp)
                    samples[method].append(last[method]["tokens_per_second"])
            median = {m: statistics.median(v) for m, v in samples.items()}
            key = f"processes_{processes}" + ("_fsdp" if fsdp else "")
            results[key] = {
                m: {
                    "tokens_per_second": median[m],
                    "relative_to_full": median[m] / median["full"],
                    "samples": samples[m],
                    "overall_tokens_per_second": last[m]["tokens_per_second_overall"],
                    "val_loss": last[m]["val_loss"],
                    "optimizer_state_bytes": last[m]["optimizer_state_bytes"],
                    "peak_memory_bytes": last[m]["peak_memory_bytes"],
                }
                for m in methods
            }
            how = " FSDP2" if fsdp else (" DDP" if processes > 1 else "")
            print(f"{processes} process{'es' if processes > 1 else ''}{how} ({profile} profile, {steps} steps):")
            for m in methods:
                r = results[key][m]
                print(f"  {m:>8}: {r['tokens_per_second']:>9,.0f} tokens/s  ({r['relative_to_full']:.2f}× full)")
    for m in METHODS:
        single = results["processes_1"][m]["tokens_per_second"]
        results["processes_2"][m]["ddp2_over_single"] = results["processes_2"][m]["tokens_per_second"] / single
        if m in results["processes_2_fsdp"]:
            results["processes_2_fsdp"][m]["fsdp2_over_ddp2"] = (
                results["processes_2_fsdp"][m]["tokens_per_second"] / results["processes_2"][m]["tokens_per_second"]
            )
    out = {"profile": profile, "steps": steps, "rounds": rounds, **results}
    print(f"recorded: {record('pretrain_command', out)}")
    return out


if __name__ == "__main__":
    args = sys.argv[1:]
    main(*(args[:1] or ["cpu"]), *(int(a) for a in args[1:3]))
