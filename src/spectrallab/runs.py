"""Run records: every training run's configuration and metrics, kept on disk as JSON.

Comparisons survive a kernel restart: a chapter trains, the record lands in
``$SPECTRALLAB_HOME/runs`` (default ``~/.cache/spectrallab/runs``), and any later notebook can
:func:`load_runs` and re-plot it. A record is plain JSON — readable by anything.
"""

from __future__ import annotations

import json
import math
import os
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .checkpoint import atomic_write_text


def home() -> Path:
    """Where Spectral Lab keeps runs and cached pretrained bases."""
    return Path(os.environ.get("SPECTRALLAB_HOME", Path.home() / ".cache" / "spectrallab"))


def runs_dir() -> Path:
    return home() / "runs"


@dataclass
class Run:
    """One training run: ``config`` (what was run) and its metric history.

    * ``steps``, ``loss``, ``lr``, ``grad_norm``, ``seconds``: one entry per optimizer step.
    * ``evals``: ``{"step": s, "val_loss": ..., <task metrics>}`` at each evaluation (step 0 included).
    * ``spectra``: ``{layer: [[step, [σ_1, σ_2, ...]], ...]}`` for the tracked layers.
    """

    name: str
    config: dict[str, Any] = field(default_factory=dict)
    steps: list[int] = field(default_factory=list)
    loss: list[float] = field(default_factory=list)
    lr: list[float] = field(default_factory=list)
    grad_norm: list[float] = field(default_factory=list)
    seconds: list[float] = field(default_factory=list)
    evals: list[dict[str, float]] = field(default_factory=list)
    spectra: dict[str, list] = field(default_factory=dict)
    id: str = field(default_factory=lambda: time.strftime("%Y%m%d-%H%M%S-") + uuid.uuid4().hex[:6])
    path: Path | None = None

    # -- reading -------------------------------------------------------------------------------
    def eval_series(self, metric: str = "val_loss") -> tuple[list[int], list[float]]:
        pairs = [(e["step"], e[metric]) for e in self.evals if metric in e]
        return [p[0] for p in pairs], [p[1] for p in pairs]

    def final(self, metric: str = "val_loss") -> float:
        """The last evaluated value of ``metric`` (NaN if never evaluated)."""
        _, values = self.eval_series(metric)
        return values[-1] if values else math.nan

    @property
    def trainable(self) -> int:
        """The model's trainable parameters (shared ones once) when it was trained: what
        :func:`spectrallab.train` records in ``config["trainable_parameters"]`` at the start of every
        run (no method changes which parameters train during a run). A hand-made record states it the
        same way: ``Run("frozen base", config={"trainable_parameters": 0})``."""
        if "trainable_parameters" not in self.config:
            raise AttributeError(
                f"run {self.name!r} has no trainable_parameters in its config "
                "(sl.fit records it; a hand-made Run needs config={'trainable_parameters': n})"
            )
        return self.config["trainable_parameters"]

    def best(self, metric: str = "val_loss", mode: str = "min") -> float:
        _, values = self.eval_series(metric)
        if not values:
            return math.nan
        return min(values) if mode == "min" else max(values)

    # -- writing -------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "id": self.id,
            "config": self.config,
            "steps": self.steps,
            "loss": self.loss,
            "lr": self.lr,
            "grad_norm": self.grad_norm,
            "seconds": self.seconds,
            "evals": self.evals,
            "spectra": self.spectra,
        }

    def save(self, directory: Path | str | None = None) -> Path:
        directory = Path(directory) if directory is not None else runs_dir()
        directory.mkdir(parents=True, exist_ok=True)
        path = directory / f"{self.id}-{_slug(self.name)}.json"
        # Atomic (temporary file in the same folder, fsync, os.replace): a reader, or a kill at any
        # moment, never leaves half a record — only the previous one or the new one.
        atomic_write_text(path, json.dumps(self.to_dict(), default=_jsonable))
        self.path = path
        return path

    @classmethod
    def load(cls, path: Path | str) -> Run:
        data = json.loads(Path(path).read_text())
        run = cls(**{k: v for k, v in data.items() if k in cls.__dataclass_fields__ and k != "path"})
        run.path = Path(path)
        return run


def load_runs(directory: Path | str | None = None, **match: Any) -> list[Run]:
    """All recorded runs, oldest first; ``match`` keeps those whose name or config has these values
    (``load_runs(task="digits", method="lora")``)."""
    directory = Path(directory) if directory is not None else runs_dir()
    runs = [Run.load(p) for p in sorted(directory.glob("*.json"))] if directory.exists() else []

    def keep(run: Run) -> bool:
        fields = {"name": run.name, **run.config}
        return all(fields.get(k) == v for k, v in match.items())

    return [r for r in runs if keep(r)]


def _slug(text: str) -> str:
    return "".join(ch if ch.isalnum() or ch in "-_" else "-" for ch in text)[:60] or "run"


def _jsonable(value: Any):
    if hasattr(value, "tolist"):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    return repr(value)
