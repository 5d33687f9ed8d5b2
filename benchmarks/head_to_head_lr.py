"""Learning-rate sweep of the head-to-head chapter's six contenders, at exactly its settings.

    nice -n 19 env OMP_NUM_THREADS=1 .venv/bin/python benchmarks/head_to_head_lr.py cpu   # or ci, gpu
    ... head_to_head_lr.py cpu --methods sst      # rerun SST only, keep the others' entries
    ... head_to_head_lr.py cpu --resume           # continue an interrupted sweep

The settings — sizes, rank, steps, periods, schedule — are ``spectrallab.experiments.head_to_head``'s
for the profile, the ones ``book/head_to_head.md`` runs, and every run is
``HeadToHead.pretrain``, the chapter's own. Each method runs on a log grid of rates (factor 2,
centred on a prior guess; when the best rate is at an edge of the grid the grid grows on that side,
twice at most) over two seeds, **other than the chapter's** (the rate is chosen on training seeds
the chapter does not report; the validation text is the same). The best rate is the one with the
lowest mean final validation loss over the seeds. Results, with the settings and the machine:
``results/head_to_head_lr_<profile>.json``; the chapter's ``LR`` table must equal its ``best``
(``tests/test_head_to_head_claims.py`` checks). The file is rewritten after every run, so an
interrupted sweep loses at most one run (``--resume``).
"""

from __future__ import annotations

import argparse
import json
import math
import time

from common import RESULTS, record

SWEEP_SEEDS = (100, 101)
# The centre of each method's grid: the ci rates of an earlier one-seed sweep, and half of them in
# cpu and an eighth in gpu (wider models and longer runs want smaller rates).
PRIOR_CI = {"full": 1e-2, "lora": 1e-2, "relora": 4e-2, "galore": 8e-2, "sltrain": 4e-2, "sst": 4e-2}
PRIOR_SCALE = {"ci": 1.0, "cpu": 0.5, "gpu": 0.125}
GRID = (-2, -1, 0, 1, 2)  # powers of 2 around the centre
MAX_EXTENSIONS = 2


def rate(centre: float, power: int) -> float:
    return float(f"{centre * 2.0**power:.3g}")  # round: the rates are read and typed by people


def summarize(entries: list[dict], methods) -> dict:
    table = {}
    for method in methods:
        by_lr: dict[float, list[dict]] = {}
        for e in entries:
            if e["method"] == method:
                by_lr.setdefault(e["lr"], []).append(e)
        table[method] = {
            lr: {
                "mean_val_loss": sum(e["val_loss"] for e in es) / len(es),
                "spread_val_loss": max(e["val_loss"] for e in es) - min(e["val_loss"] for e in es),
                "seeds": [e["seed"] for e in es],
            }
            for lr, es in sorted(by_lr.items())
        }
    return table


def main(profile: str, methods: list[str] | None = None, resume: bool = False) -> dict:
    import os

    os.environ["SPECTRALLAB_PROFILE"] = profile  # only the task's device choice reads it; sizes are explicit
    import torch

    from spectrallab.experiments import head_to_head

    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", torch.get_num_threads())))
    setup = head_to_head(profile)
    settings = setup.as_dict()
    name = f"head_to_head_lr_{profile}"
    path = RESULTS / f"{name}.json"
    entries: list[dict] = []
    chosen = list(methods or setup.methods)
    if (resume or methods) and path.exists():
        old = json.loads(path.read_text())
        if old.get("settings") != settings:
            raise SystemExit(f"{path} was measured at other settings: rerun without --resume/--methods")
        entries = [e for e in old["runs"] if resume or e["method"] not in chosen]
    task = setup.make_task()
    centre = {m: PRIOR_CI[m] * PRIOR_SCALE[profile] for m in setup.methods}

    def save(complete: bool) -> dict:
        table = summarize(entries, setup.methods)
        best = {m: min(t, key=lambda lr: t[lr]["mean_val_loss"]) for m, t in table.items() if t}
        result = {
            "profile": profile,
            "complete": complete,
            "settings": settings,
            "sweep_seeds": list(SWEEP_SEEDS),
            "selection": "lowest mean final validation loss over the sweep seeds",
            "grid": "centre * 2**k, k in -2..2, extended at an edge up to twice",
            "best": best,
            "table": {m: {f"{lr:g}": v for lr, v in t.items()} for m, t in table.items()},
            "runs": entries,
        }
        record(name, result)
        return result

    def run_rate(method: str, lr: float) -> float:
        losses = []
        for seed in SWEEP_SEEDS:
            done = [e for e in entries if (e["method"], e["lr"], e["seed"]) == (method, lr, seed)]
            if done:
                losses.append(done[0]["val_loss"])
                continue
            wall, cpu = time.perf_counter(), time.process_time()
            run, _, _ = setup.pretrain(task, method, lr, seed)
            entry = {
                "method": method,
                "lr": lr,
                "seed": seed,
                "val_loss": run.final("val_loss"),
                "perplexity": run.final("perplexity"),
                "wall_s": round(time.perf_counter() - wall, 2),
                "cpu_s": round(time.process_time() - cpu, 2),
            }
            entries.append(entry)
            losses.append(entry["val_loss"])
            save(complete=False)
            print(
                f"{method:>8} lr {lr:<8g} seed {seed}: val loss {entry['val_loss']:.4f}  "
                f"({entry['wall_s']:.1f} s wall, {entry['cpu_s']:.1f} s cpu)",
                flush=True,
            )
        return sum(losses) / len(losses) if all(map(math.isfinite, losses)) else math.inf

    for method in chosen:
        powers = list(GRID)
        means = {k: run_rate(method, rate(centre[method], k)) for k in powers}
        for _ in range(MAX_EXTENSIONS):  # grow the grid while the best is at its edge
            best = min(means, key=means.get)
            if best == min(means):
                k = best - 1
            elif best == max(means):
                k = best + 1
            else:
                break
            means[k] = run_rate(method, rate(centre[method], k))
        best = min(means, key=means.get)
        edge = " (still at the edge of the grid)" if best in (min(means), max(means)) else ""
        print(f"{method:>8}: best lr {rate(centre[method], best):g}, mean val loss {means[best]:.4f}{edge}", flush=True)
    result = save(complete=True)
    print(f"best: {result['best']}\nrecorded in {path}")
    return result


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("profile", choices=["ci", "cpu", "gpu"])
    parser.add_argument("--methods", help="comma-separated: rerun only these, keep the others' entries")
    parser.add_argument("--resume", action="store_true", help="continue an interrupted sweep at the same settings")
    args = parser.parse_args()
    main(args.profile, args.methods.split(",") if args.methods else None, args.resume)
