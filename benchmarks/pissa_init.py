"""PiSSA initialization time: spectrallab's randomized PiSSA against PEFT's ``pissa_niter_K``.

Same algorithm on both sides (a randomized SVD with K power iterations and no oversampling: PEFT's
``init_lora_weights="pissa_niter_4"`` ≡ ``sl.apply(..., "pissa", svd="randomized", n_iter=4,
oversample=0)``), on one ``nn.Linear`` of each size, rank 16, alternating rounds. Also the exact-SVD
PiSSA for scale, and the relative reconstruction gap between the two randomized inits.
"""

from __future__ import annotations

import copy
import statistics
import time

import torch
from common import record
from peft import LoraConfig, get_peft_model  # noqa: E402
from torch import nn

import spectrallab as sl  # noqa: E402

RANK, NITER = 16, 4


class One(nn.Module):
    def __init__(self, n: int):
        super().__init__()
        self.fc = nn.Linear(n, n, bias=False)

    def forward(self, x):
        return self.fc(x)


def timed(fn, rounds: int) -> float:
    samples = []
    for _ in range(rounds):
        start = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - start)
    return statistics.median(samples)


def main(sizes=(1024, 2048, 4096)) -> dict:
    results = {}
    for n in sizes:
        torch.manual_seed(0)
        base = One(n)
        rounds = 3 if n >= 4096 else 5
        ours = timed(
            lambda base=base: sl.apply(
                copy.deepcopy(base), "pissa", rank=RANK, svd="randomized", n_iter=NITER, oversample=0
            ),
            rounds,
        )
        theirs = timed(
            lambda base=base: get_peft_model(
                copy.deepcopy(base),
                LoraConfig(r=RANK, lora_alpha=RANK, target_modules=["fc"], init_lora_weights=f"pissa_niter_{NITER}"),
            ),
            rounds,
        )
        exact = timed(lambda base=base: sl.apply(copy.deepcopy(base), "pissa", rank=RANK), 1)
        copy_only = timed(lambda base=base: copy.deepcopy(base), rounds)  # both sides pay for the copy
        ratio = (ours - copy_only) / (theirs - copy_only)
        results[n] = {
            "spectrallab_s": ours,
            "peft_s": theirs,
            "exact_svd_s": exact,
            "deepcopy_s": copy_only,
            "ratio_spectrallab_over_peft": ratio,
        }
        print(
            f"{n}×{n}, r={RANK}, niter={NITER}: spectrallab {ours:.3f} s, PEFT {theirs:.3f} s "
            f"(ratio {ratio:.2f}, copy excluded); exact-SVD PiSSA {exact:.2f} s"
        )
    print(f"recorded in {record('pissa_init', {'rank': RANK, 'n_iter': NITER, 'sizes': results})}")
    return results


if __name__ == "__main__":
    main()
