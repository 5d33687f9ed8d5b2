"""DoRA — Weight-Decomposed Low-Rank Adaptation (Liu et al. 2024, arXiv:2402.09353).

The pretrained weight is split into a magnitude and a direction; LoRA adapts the direction and the
magnitude is learned on its own::

    V  = W + s · B A                     (the LoRA-updated weight, m × n)
    W' = diag(mag / ‖V‖_row) · V         (each output row rescaled to length mag_i)

``‖V‖_row`` is the Euclidean norm of each **output row** of the ``out × in`` weight (the paper's
"column-wise" norm is the same thing in its ``in × out`` convention; PEFT takes
``torch.linalg.norm(W + sBA, dim=1)`` of the ``out × in`` matrix). ``mag ∈ R^m`` starts at
``‖W + sBA‖_row`` of the initial factors — ``‖W‖_row`` for the default inits, where ``BA = 0`` —
so ``W' = W`` at step 0 for every LoRA init.

**Detached norm** (paper §4.3, "treat ‖V + ΔV‖_c as a constant"; PEFT does the same): the norm is
recomputed from the current A, B on every forward but carries no gradient. The gradients of
``mag``, ``A`` and ``B`` are those of ``y = diag(mag / c) (W + sBA) x`` with ``c`` a constant.
This saves the memory of backpropagating through a row norm of an ``m × n`` matrix.

Forward (PEFT's formulation, no dense ``W'`` per forward)::

    y = (mag / ‖V‖_row) ⊙ (x Wᵀ + s · (x Aᵀ) Bᵀ) + b

The row norms themselves are computed without the dense ``V``, from
``‖V_i‖² = ‖W_i‖² + 2s·⟨B_i, (W Aᵀ)_i⟩ + s²·B_i (A Aᵀ) B_iᵀ`` — an ``m × r`` and an ``r × r``
product, in float32. (The expansion loses relative precision only where a row of ``sBA`` nearly
cancels the row of ``W``, where the DoRA quotient is ill-conditioned anyway.)
:meth:`DoRALinear.effective_weight` gives the dense ``W'`` for merging and spectra.

With ``dropout > 0`` in training mode the layer follows the official code and PEFT::

    y = x Wᵀ + b + (mag/‖V‖ − 1) ⊙ (x̃ Wᵀ) + (mag/‖V‖) ⊙ s·(x̃ Aᵀ) Bᵀ,     x̃ = dropout(x)

which equals the formula above in expectation (and exactly in eval mode or with dropout 0).

Options are LoRA's (``rank``, ``alpha``, ``rslora``, ``init``, ``dropout``), with the same
meaning and the same rank check. Trainable parameters per layer: ``r(m + n) + m``.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from .base import LayerCounts, register
from .lora import LoRA, LoRALinear, factors_on_original


class DoRAExport(NamedTuple):
    """DoRA on the original weight: ``magnitude ⊙ V / ‖V‖_row`` with ``V = weight + scale · B @ A``."""

    A: torch.Tensor  # r' × in
    B: torch.Tensor  # out × r'
    scale: float
    weight: torch.Tensor  # the original (pre-init) W, out × in
    magnitude: torch.Tensor  # out


class DoRALinear(LoRALinear):
    """``y = (mag / ‖W + sBA‖_row) ⊙ (x Wᵀ + s·(x Aᵀ) Bᵀ) + b``; ``W``, ``b`` frozen, norm detached."""

    method = "dora"

    def __init__(
        self, linear: nn.Linear, rank: int, alpha: float, rslora: bool, init: str, dropout: float, train_a: bool = True
    ):
        super().__init__(linear, rank, alpha, rslora, init, dropout, train_a=train_a)
        # The same function as the forward's norm, so mag / norm is exactly 1 at step 0.
        self.magnitude = nn.Parameter(self.weight_norm())

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """LoRA's reset, then ``mag`` at the new row norms (``W' = W`` again)."""
        super().reset_parameters()
        self.magnitude.copy_(self.weight_norm())

    def weight_norm(self) -> torch.Tensor:
        """``‖W + s·BA‖`` per output row (length m), without a dense ``m × n`` temporary; no gradient."""
        with torch.no_grad():
            A, B, s = self.lora_A, self.lora_B, self.scale
            wide = torch.promote_types(self.weight.dtype, torch.float32)  # at least float32; float64 stays
            w_sq = torch.linalg.vector_norm(self.weight, dim=1, dtype=wide).square()
            wa = F.linear(self.weight, A).to(wide)  # W Aᵀ, m × r
            a, b = A.to(wide), B.to(wide)
            cross = (b * wa).sum(1)  # ⟨B_i, (W Aᵀ)_i⟩
            quad = ((b @ (a @ a.T)) * b).sum(1)  # ‖(B A)_i‖²
            sq = w_sq + (2 * s) * cross + (s * s) * quad
            return sq.clamp_min(0).sqrt().to(self.weight.dtype)

    def row_scale(self) -> torch.Tensor:
        """``mag / ‖W + sBA‖_row``: gradient flows to ``mag`` only (the norm is a constant)."""
        return self.magnitude / self.weight_norm()

    def paper_counts(self) -> LayerCounts:
        """DoRA (Liu et al. 2024, arXiv:2402.09353): LoRA's frozen ``W`` (mn), ``B`` (m×r) and ``A``
        (r×n), plus the magnitude vector ``mag`` (m): trainable ``r(m+n) + m``, Adam twice that.

        As for LoRA, an init that moves part of ``W`` into ``BA`` (``init="pissa"``, ...) keeps the
        initial ``B₀, A₀`` as buffers (``r(m+n)`` extra) for the export on the original ``W``.
        """
        m, n, r = self.out_features, self.in_features, self.rank
        adapter = r * (m + n)
        trainable = (adapter if self.lora_A.requires_grad else r * m) + m
        return LayerCounts.adam(
            m * n + adapter + m, trainable, adapter if getattr(self, "lora_A0", None) is not None else 0
        )

    def as_lora(self) -> DoRAExport:
        """LoRA factors on the original W (rank r, or 2r for an init that moved part of W into BA)
        and the magnitude: ``W_res + s·BA = W + s·B'A'``, so the direction, its norm and the
        rescaled weight are the same on the original W — PEFT's DoRA form."""
        A, B, scale, weight = factors_on_original(self)
        return DoRAExport(A, B, scale, weight, self.magnitude.detach().clone())

    def effective_weight(self) -> torch.Tensor:
        direction = self.weight + self.delta_weight()
        return self.row_scale().unsqueeze(1) * direction

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        scale_rows = self.row_scale()
        if self.training and not isinstance(self.dropout, nn.Identity):
            dropped = self.dropout(x)
            out = F.linear(x, self.weight, self.bias)
            out = out + (scale_rows - 1) * F.linear(dropped, self.weight)
            lora = F.linear(F.linear(dropped, self.lora_A), self.lora_B)
            return out + scale_rows * (self.scale * lora)
        # (x Wᵀ + s·x Aᵀ Bᵀ), then the row scale; the in-place add is safe (F.linear's backward
        # does not need its output), the multiply is not done in place because its backward does.
        out = F.linear(x, self.weight).add_(F.linear(F.linear(x, self.lora_A), self.lora_B), alpha=self.scale)
        out = out * scale_rows
        return out if self.bias is None else out.add_(self.bias)


@register("dora")
class DoRA(LoRA):
    """LoRA on the direction of each output row plus a learned per-row magnitude (Liu et al. 2024).

    ``W' = mag ⊙ (W + sBA) / ‖W + sBA‖_row``, the norm detached in backward; ``mag`` starts at the
    row norms, so the model is unchanged at step 0. Options as ``lora``: ``rank`` (8), ``alpha``
    (None → rank), ``rslora`` (False), ``init`` ("default" | "gaussian" | any registered LoRA init),
    ``dropout`` (0.0).
    """

    layer_class = DoRALinear

    def needs_weight_values(self) -> str | None:
        # A meta model would get its magnitudes from random weights, and loading the pretrained
        # weights afterwards would leave them stale: W' ≠ W at step 0, silently.
        return "its magnitude starts at the pretrained weight's row norms"
