"""The interface every task offers to the training loop, chapters and widgets."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn


class Task:
    """Data, a model to train on it, a loss and an evaluation — all offline and deterministic.

    Subclasses set ``name``, ``batch_size`` and ``lr`` (sensible defaults for full training) and
    implement the four methods below. ``device`` is where batches are created.
    """

    name: str = "task"
    batch_size: int = 64
    lr: float = 1e-3

    def make_model(self, seed: int = 0) -> nn.Module:
        raise NotImplementedError

    def batch(self, split: str, batch_size: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        raise NotImplementedError

    def loss(self, model: nn.Module, batch: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        raise NotImplementedError

    @torch.no_grad()
    def evaluate(self, model: nn.Module) -> dict[str, float]:
        """Validation metrics; always contains ``val_loss``."""
        raise NotImplementedError

    def config(self) -> dict[str, Any]:
        """Everything that defines the task (recorded with every run, keys the pretrained-base cache)."""
        raise NotImplementedError

    def to(self, device: torch.device | str) -> Task:
        self.device = torch.device(device)
        return self

    device: torch.device = torch.device("cpu")

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.config().items() if k != "task")
        return f"{type(self).__name__}({args})"
