"""How big the experiments are: ``SPECTRALLAB_PROFILE=ci|cpu|gpu``, each with a time budget that is met.

======= ==================================== =========================================================
profile for                                  budget (measured by ``benchmarks/chapters.py PROFILE``)
======= ==================================== =========================================================
``ci``  the tests (CI sets ``CI=true``)       ≤ 45 s per chapter on 2 CPU cores
``cpu`` a reader's laptop, no GPU (default)  ≤ 3 min per chapter, ≤ 20 min for the whole book, 2 cores
``gpu`` a reader with a GPU (default there)  ≤ 5 min per chapter on one H200-class GPU
======= ==================================== =========================================================

The budgets exclude setup (creating ``.venv``). Unset, the profile is ``ci`` under CI, ``gpu`` when
CUDA is available, else ``cpu``. Chapters size everything through :func:`pick`::

    steps = sl.pick(ci=200, cpu=2_000, gpu=20_000)

The device is CUDA whenever it is available (``SPECTRALLAB_DEVICE`` overrides), whatever the
profile: a small run on a GPU is still a GPU run.
"""

from __future__ import annotations

import os
from typing import TypeVar

import torch

PROFILES = ("ci", "cpu", "gpu")
# Seconds: "chapter" for each chapter's execution, "book" for all chapters together (None: no book budget).
BUDGETS = {
    "ci": {"chapter": 45, "book": None},
    "cpu": {"chapter": 180, "book": 1200},
    "gpu": {"chapter": 300, "book": None},
}
T = TypeVar("T")


def profile() -> str:
    """The active profile name."""
    chosen = os.environ.get("SPECTRALLAB_PROFILE", "").strip().lower()
    if chosen:
        if chosen not in PROFILES:
            raise ValueError(f"SPECTRALLAB_PROFILE={chosen!r} is not one of {', '.join(PROFILES)}")
        return chosen
    if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
        return "ci"
    return "gpu" if torch.cuda.is_available() else "cpu"


def pick(*, ci: T, cpu: T, gpu: T) -> T:
    """The value for the active profile."""
    return {"ci": ci, "cpu": cpu, "gpu": gpu}[profile()]


def device() -> torch.device:
    """``SPECTRALLAB_DEVICE`` if set, else CUDA when available, else CPU."""
    chosen = os.environ.get("SPECTRALLAB_DEVICE", "").strip()
    if chosen:
        return torch.device(chosen)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")
