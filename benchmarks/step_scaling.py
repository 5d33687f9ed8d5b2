"""Train-step time relative to full rank over the tokens per batch, next to the multiply-add ratio.

The model: a stack of ``LAYERS`` square d × d ``nn.Linear`` layers (with bias) at d = 1024, each
followed by a GELU, after a ``LayerNorm`` — so that every linear layer, the first included, needs
``∂L/∂x`` as inside a transformer. Loss: MSE to a fixed random target. Each method adapts every
linear layer at rank ``RANK`` = 64 through ``sl.apply`` (pre-training: everything outside the
adapted layers trains) and steps through ``sl.optimizer`` (AdamW), so its own hooks run in the
timed step: SST's renormalization, GaLore's projection and back-projection. Periodic work is *off*
the timed window: SST resamples every 200 steps and GaLore refactorizes its gradient every 200 (the
defaults, the papers' settings); each method takes fewer steps here than that, GaLore's first SVD
falls in the untimed warm-up step, and ``pretrain_steps.py`` measures SST's periodic share apart.
Rounds alternate between methods at each T (``common.interleaved``), so machine noise hits all.
Timed in **CPU time of this process with one torch thread** (``time.process_time``): on a shared
machine wall time counts whatever else runs (2 cores under a load of 5 made wall-clock ratios swing
by ±40 % from one T to the next), while one thread's CPU time is the work this step did. A GPU, or
an idle machine, would use wall time and all threads instead.

**The multiply-add model** per square d × d layer, T tokens, rank r (matrix products only; the
elementwise work — bias, GELU, LayerNorm, Adam on each parameter — is left out, which is why the
measured ratios of the cheap methods sit a little above their counts):

* full: forward ``x Wᵀ``, ``∂L/∂x = g W``, ``G = gᵀ x`` — **3Td²**.
* LoRA (W frozen; A: r × d, B: d × r), the cheaper of its two exact paths
  (``spectrallab.methods.lora.lora_macs``): factored, forward Td² + 2Tdr, ∂x Td² + 2Tdr, ∂A and ∂B
  2Tdr (no G for W) — **2Td² + 6Tdr**; merged for T > d, ``W₀ + s·BA`` formed in the forward and
  again in the backward — **2Td² + 4Tdr + 2d²r**.
* GaLore: full rank's 3Td², plus projecting G to r × d and the step back to d × d every step —
  **3Td² + 2d²r** (+ one SVD of G per 200 steps, off the window).
* SLTrain (``W = s·BA + S``, S sparse, applied as a dense matrix): the dense S costs what full's W
  does, forward, ∂x and its G (whose support entries are ∂S), plus the low-rank branch as LoRA —
  **3Td² + 6Tdr**.
* SST: the cheaper of its two exact paths, forward and backward chosen independently
  (``spectrallab.methods.sst.SpectralLinear``): forward min(2Td², Td² + d³), backward
  min(3Td² + 2Tdr, 2Td² + 2d³ + d²r) — factored at small T, rebuilding W at large T; ≈ 5/3 of full
  for short batches, 1 + d/T for long ones. From T ≥ 8d the forward's W is kept for backward
  (``keep_weight="auto"``), which drops one d³: backward 2Td² + d³ + d²r, ≈ 1 + 2d/(3T).

    python benchmarks/step_scaling.py            # 2-4 minutes on one CPU core (longer on a loaded machine)
"""

from __future__ import annotations

import copy
import os
import time

import torch
import torch.nn.functional as F
from torch import nn

os.environ.setdefault("SPECTRALLAB_PROFILE", "cpu")
from common import interleaved, record  # noqa: E402

import spectrallab as sl  # noqa: E402
from spectrallab.methods.lora import lora_macs  # noqa: E402
from spectrallab.methods.sst import backward_macs, cheaper, forward_macs, keeps_weight  # noqa: E402

D, LAYERS, RANK = 1024, 2, 64
METHODS = ["full", "lora", "galore", "sltrain", "sst"]
TOKENS = [D // 2, D, 2 * D, 4 * D, 8 * D, 16 * D]
THREADS = 1  # with time.process_time: CPU time = the work done (see the module docstring)


def sst_paths(T: int, d: int, r: int) -> tuple[str, str]:
    """(forward path, backward path) SST takes for T tokens through a square layer, every gradient asked."""
    forward = cheaper(forward_macs(T, d, d, d))
    kept = forward == "rebuild" and keeps_weight("auto", T, d)
    return forward, cheaper(backward_macs(T, d, d, d, r, True, True, True, True, weight_kept=kept))


def macs_per_layer(method: str, T: int, d: int = D, r: int = RANK) -> int:
    """The multiply-add model of the module docstring, for one square d × d layer."""
    if method == "full":
        return 3 * T * d * d
    if method == "lora":
        # the layer's own counts, both paths (spectrallab.methods.lora.lora_macs)
        assert lora_macs(T, d, d, r, True)["factored"] == 2 * T * d * d + 6 * T * d * r
        return min(lora_macs(T, d, d, r, True).values())
    if method == "galore":
        return 3 * T * d * d + 2 * d * d * r
    if method == "sltrain":
        return 3 * T * d * d + 6 * T * d * r
    if method == "sst":
        forward = min(2 * T * d * d, T * d * d + d**3)
        # from T ≥ 8d (keep_weight="auto") the forward's W is kept and backward does not rebuild it
        kept = T * d * d + d**3 < 2 * T * d * d and T >= 8 * d
        backward = min(3 * T * d * d + 2 * T * d * r, 2 * T * d * d + (1 if kept else 2) * d**3 + d * d * r)
        # the formulas written here are the layer's own counts
        fwd = forward_macs(T, d, d, d)
        bwd = backward_macs(T, d, d, d, r, True, True, True, True, weight_kept=kept)
        assert kept == (cheaper(fwd) == "rebuild" and keeps_weight("auto", T, d))
        assert forward == min(fwd.values()) and backward == min(bwd.values()), (T, fwd, bwd)
        return forward + backward
    raise ValueError(f"method={method!r} is not one of {', '.join(map(repr, METHODS))}")


def stack(d: int, layers: int) -> nn.Sequential:
    parts: list[nn.Module] = [nn.LayerNorm(d)]
    for _ in range(layers):
        parts += [nn.Linear(d, d), nn.GELU()]
    return nn.Sequential(*parts)


def build(base: nn.Module, method: str):
    model = copy.deepcopy(base)
    if method != "full":  # pre-training: the LayerNorm and biases train in every run, LoRA's included
        sl.apply(model, method, rank=RANK, freeze_others=False)
    return model, sl.optimizer(model, lr=1e-4)


def step_fn(model, opt, x, y):
    def step() -> None:
        loss = F.mse_loss(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    return step


def main(rounds: int = 5) -> dict:
    threads = torch.get_num_threads()
    torch.set_num_threads(THREADS)
    try:  # run_all.py times other benchmarks after this one, with the machine's threads
        return measure(rounds)
    finally:
        torch.set_num_threads(threads)


def measure(rounds: int) -> dict:
    torch.manual_seed(0)
    base = stack(D, LAYERS)
    models = {method: build(base, method) for method in METHODS}
    generator = torch.Generator().manual_seed(0)
    rows = []
    print(
        f"{LAYERS} × [Linear({D}, {D}) + GELU] after a LayerNorm, rank {RANK}, AdamW; time ratio to full (count ratio)"
    )
    print(f"{'T':>7} {'SST path':>18} " + " ".join(f"{m:>16}" for m in METHODS))
    for T in TOKENS:
        x = torch.randn(T, D, generator=generator)
        y = torch.randn(T, D, generator=generator)
        steps = {method: step_fn(model, opt, x, y) for method, (model, opt) in models.items()}
        reps = max(1, (2 * D) // T)  # short steps repeated within a sample, so each lasts ≳ 0.1 s
        times = interleaved(steps, rounds=rounds, reps=reps, warmup=1, clock=time.process_time)
        time_ratio = {m: times[m] / times["full"] for m in METHODS}
        count_ratio = {m: macs_per_layer(m, T) / macs_per_layer("full", T) for m in METHODS}
        paths = sst_paths(T, D, RANK)
        rows.append(
            {
                "tokens": T,
                "tokens_over_d": T / D,
                "ms_per_step": {m: t * 1e3 for m, t in times.items()},
                "time_ratio_to_full": time_ratio,
                "count_ratio_to_full": count_ratio,
                "sst_paths": {"forward": paths[0], "backward": paths[1]},
            }
        )
        cells = " ".join(f"{time_ratio[m]:7.3f} ({count_ratio[m]:5.3f})" for m in METHODS)
        print(f"{T:>7} {'/'.join(paths):>18} {cells}   [full {times['full'] * 1e3:.0f} ms]", flush=True)
    result = {
        "model": {"d": D, "layers": LAYERS, "layout": "LayerNorm, then [Linear(d, d) + GELU] x layers", "bias": True},
        "rank": RANK,
        "optimizer": "AdamW via sl.optimizer (method hooks in the timed step; periodic work outside it)",
        "rounds": rounds,
        "clock": "time.process_time (CPU time of this process)",
        "torch_threads": THREADS,
        "count_model_per_layer": {
            "full": "3Td^2",
            "lora": "min(2Td^2 + 6Tdr, 2Td^2 + 4Tdr + 2d^2r)",
            "galore": "3Td^2 + 2d^2r",
            "sltrain": "3Td^2 + 6Tdr",
            "sst": "min(2Td^2, Td^2 + d^3) + min(3Td^2 + 2Tdr, 2Td^2 + 2d^3 + d^2r); from T >= 8d (W kept): "
            "Td^2 + d^3 + 2Td^2 + d^3 + d^2r",
        },
        "rows": rows,
    }
    print(f"recorded in {record('step_scaling', result)}")
    return result


if __name__ == "__main__":
    main()
