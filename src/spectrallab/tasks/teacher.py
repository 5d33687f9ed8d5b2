"""A synthetic low-rank teacher: regression onto ``y = x W*ᵀ + noise`` with a chosen spectrum.

``W* = U diag(σ) Vᵀ`` has exactly ``rank`` non-zero singular values, decaying geometrically
(``σ_i = decay^i``, scaled so ``σ_1 = 1``), with Haar-random ``U``, ``V``. Inputs are standard
Gaussian, so the population loss of a student ``W`` is ``‖W − W*‖_F² / out + noise²`` and the
best rank-r student is the Eckart–Young truncation of ``W*`` — every number in a chapter on this
task can be checked against a formula.

The student is a two-layer *linear* network ``y = x W₁ᵀ W₂ᵀ`` (layers ``fc1``, ``fc2``): its
end-to-end map is linear, but gradient descent on the factors is known to favour low rank
(Arora et al. 2019, arXiv:1905.13655), which makes it a clean lens on spectra during training.

``shift_rank`` > 0 adds a second, independent low-rank term (``shift_scale``·rank-``shift_rank``):
the *shifted* task a pretrained student is fine-tuned to. The true update is then exactly rank
``shift_rank`` — the situation LoRA is designed for.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .base import Task


def random_orthonormal(rows: int, cols: int, generator: torch.Generator) -> torch.Tensor:
    Q, R = torch.linalg.qr(torch.randn(rows, cols, generator=generator, dtype=torch.float64))
    return (Q * torch.sign(torch.diagonal(R))).float()  # sign fix makes Q Haar-distributed


def low_rank_matrix(out: int, inp: int, rank: int, decay: float, generator: torch.Generator) -> torch.Tensor:
    U = random_orthonormal(out, rank, generator)
    V = random_orthonormal(inp, rank, generator)
    sigma = decay ** torch.arange(rank, dtype=torch.float32)
    return (U * sigma) @ V.T


class TwoLayerLinear(nn.Module):
    def __init__(self, n_in: int, width: int, n_out: int):
        super().__init__()
        self.fc1 = nn.Linear(n_in, width, bias=False)
        self.fc2 = nn.Linear(width, n_out, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.fc1(x))


class LowRankTeacher(Task):
    name = "teacher"
    batch_size = 128
    lr = 3e-3

    def __init__(
        self,
        n_in: int = 64,
        n_out: int = 64,
        rank: int = 8,
        decay: float = 0.8,
        noise: float = 0.01,
        width: int = 64,
        shift_rank: int = 0,
        shift_scale: float = 0.5,
        n_val: int = 2048,
        seed: int = 0,
    ):
        if not 1 <= rank <= min(n_in, n_out):
            raise ValueError(f"teacher rank={rank} is outside the allowed range [1, {min(n_in, n_out)}]")
        if not 0 <= shift_rank <= min(n_in, n_out):
            raise ValueError(f"shift_rank={shift_rank} is outside the allowed range [0, {min(n_in, n_out)}]")
        self.n_in, self.n_out, self.rank, self.decay, self.noise = n_in, n_out, rank, decay, noise
        self.width, self.shift_rank, self.shift_scale, self.n_val, self.seed = (
            width,
            shift_rank,
            shift_scale,
            n_val,
            seed,
        )
        g = torch.Generator().manual_seed(seed)
        self.W_base = low_rank_matrix(n_out, n_in, rank, decay, g)
        self.W_shift = (
            shift_scale * low_rank_matrix(n_out, n_in, shift_rank, decay, g) if shift_rank else torch.zeros(n_out, n_in)
        )
        self.W_star = self.W_base + self.W_shift
        gv = torch.Generator().manual_seed(seed + 1)
        self.val_x = torch.randn(n_val, n_in, generator=gv)
        self.val_y = self.val_x @ self.W_star.T + noise * torch.randn(n_val, n_out, generator=gv)

    def shifted(self, shift_rank: int = 2, shift_scale: float = 0.5) -> LowRankTeacher:
        """The same base teacher plus a rank-``shift_rank`` change (for fine-tuning)."""
        c = self.config()
        c.update(shift_rank=shift_rank, shift_scale=shift_scale)
        c.pop("task")
        return LowRankTeacher(**c).to(self.device)

    def config(self):
        return {
            "task": self.name,
            "n_in": self.n_in,
            "n_out": self.n_out,
            "rank": self.rank,
            "decay": self.decay,
            "noise": self.noise,
            "width": self.width,
            "shift_rank": self.shift_rank,
            "shift_scale": self.shift_scale,
            "n_val": self.n_val,
            "seed": self.seed,
        }

    def make_model(self, seed: int = 0) -> nn.Module:
        torch.manual_seed(seed)
        return TwoLayerLinear(self.n_in, self.width, self.n_out)

    def batch(self, split, batch_size, generator):
        if split == "val":
            return self.val_x.to(self.device), self.val_y.to(self.device)
        x = torch.randn(batch_size, self.n_in, generator=generator)
        y = x @ self.W_star.T + self.noise * torch.randn(batch_size, self.n_out, generator=generator)
        return x.to(self.device), y.to(self.device)

    def loss(self, model, batch):
        x, y = batch
        return F.mse_loss(model(x), y)

    @torch.no_grad()
    def evaluate(self, model):
        was_training = model.training
        model.eval()
        loss = self.loss(model, self.batch("val", self.n_val, None))
        model.train(was_training)
        return {"val_loss": float(loss)}
