"""How big the experiments are: ``SPECTRALLAB_PROFILE=ci|cpu|gpu``.

* ``ci``  — every chapter well under a minute on 2 CPU cores (CI sets ``CI=true``, which selects it).
* ``cpu`` — a reader's laptop: minutes, numbers worth reading.
* ``gpu`` — the real-size experiments, on CUDA.

Unset, the profile is ``ci`` under CI, ``gpu`` when CUDA is available, else ``cpu``. Chapters
size everything through :func:`pick`::

    steps = sl.pick(ci=200, cpu=2_000, gpu=20_000)

The device is CUDA whenever it is available (``SPECTRALLAB_DEVICE`` overrides), whatever the
profile: a small run on a GPU is still a GPU run.
"""

from __future__ import annotations

import os
from typing import TypeVar

import torch

PROFILES = ("ci", "cpu", "gpu")
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
