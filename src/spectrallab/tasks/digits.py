"""Handwritten digits (scikit-learn's bundled 8×8 images: 1,797 samples, no download) with an MLP.

Pixels are scaled to [0, 1]; a fixed, stratified 80/20 split (seed 0) gives 1,437 training and
360 validation images. The model is ``fc1 → ReLU → fc2 → ReLU → fc3`` (64 → width → width → 10).

``view`` makes a *shifted* task for fine-tuning: the same digits seen differently —
``"rot90"`` rotates every image a quarter turn, ``"flip"`` mirrors it left-right,
``"invert"`` swaps ink and paper. A model pretrained on upright digits does poorly on them until
adapted; the label set stays the same, so the change lives in the features.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .base import Task

VIEWS = ("upright", "rot90", "flip", "invert")


def load_digits_split(view: str = "upright"):
    """(x_train, y_train, x_val, y_val) as float32/int64 tensors, deterministic."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    if view not in VIEWS:
        raise ValueError(f"digits view={view!r} is not one of {', '.join(VIEWS)}")
    data = load_digits()
    images = data.images.astype(np.float32) / 16.0
    if view == "rot90":
        images = np.rot90(images, k=1, axes=(1, 2))
    elif view == "flip":
        images = images[:, :, ::-1]
    elif view == "invert":
        images = 1.0 - images
    x = np.ascontiguousarray(images.reshape(len(images), 64))
    x_tr, x_va, y_tr, y_va = train_test_split(x, data.target, test_size=0.2, random_state=0, stratify=data.target)
    as_t = torch.from_numpy
    return as_t(x_tr), as_t(y_tr.astype(np.int64)), as_t(x_va), as_t(y_va.astype(np.int64))


class MLP(nn.Module):
    def __init__(self, n_in: int = 64, width: int = 128, n_out: int = 10):
        super().__init__()
        self.fc1 = nn.Linear(n_in, width)
        self.fc2 = nn.Linear(width, width)
        self.fc3 = nn.Linear(width, n_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc3(F.relu(self.fc2(F.relu(self.fc1(x)))))


class Digits(Task):
    name = "digits"
    batch_size = 64
    lr = 2e-3

    def __init__(self, view: str = "upright", width: int = 128):
        self.view, self.width = view, width
        self.x_train, self.y_train, self.x_val, self.y_val = load_digits_split(view)

    def shifted(self, view: str = "rot90") -> Digits:
        return Digits(view=view, width=self.width).to(self.device)

    def config(self):
        return {"task": self.name, "view": self.view, "width": self.width}

    def make_model(self, seed: int = 0) -> nn.Module:
        torch.manual_seed(seed)
        return MLP(64, self.width, 10)

    def batch(self, split, batch_size, generator):
        if split == "val":
            return self.x_val.to(self.device), self.y_val.to(self.device)
        idx = torch.randint(len(self.x_train), (batch_size,), generator=generator)
        return self.x_train[idx].to(self.device), self.y_train[idx].to(self.device)

    def loss(self, model, batch):
        x, y = batch
        return F.cross_entropy(model(x), y)

    @torch.no_grad()
    def evaluate(self, model):
        was_training = model.training
        model.eval()
        x, y = self.batch("val", len(self.x_val), None)
        logits = model(x)
        model.train(was_training)
        return {
            "val_loss": float(F.cross_entropy(logits, y)),
            "accuracy": float((logits.argmax(-1) == y).float().mean()),
        }
