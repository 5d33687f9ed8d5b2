"""LoRA-XS — Low-Rank Adaptation with eXtremely Small number of parameters (Bałazy, Banaei, Aberer &
Tabor 2024, arXiv:2405.17604).

LoRA's two factors are not trained at all: they are the top-r singular directions of the pretrained
weight itself, frozen, and a small ``r × r`` matrix ``R`` between them is the only thing that
learns::

    W = U diag(S) Vh                          (truncated SVD, the r largest singular values)
    B = U_r            ∈ R^{m×r}   frozen
    A = diag(S_r) Vh_r ∈ R^{r×n}   frozen
    W' = W + s · B R A,            R ∈ R^{r×r} trainable
    y  = x Wᵀ + b + s · ((x Aᵀ) Rᵀ) Bᵀ

``W`` itself stays as it is (unlike PiSSA, nothing is subtracted from it). The update ``BRA`` lives
in the span of the top-r left and right singular vectors of ``W``: ``R`` mixes those directions
(an r × r "rotation and rescaling" inside the principal subspace), so ``r²`` numbers per layer
are trained, independent of ``m`` and ``n`` — 64 for r = 8 whatever the layer size.

Choices (the abstract gives the structure; the constants were checked against the authors'
public code, read for understanding only):

* **Which factor carries S.** ``A = diag(S_r) Vh_r`` and ``B = U_r``: the authors' code takes a
  truncated SVD ``Wᵀ ≈ U' Σ V'ᵀ`` and uses ``(U' Σ)ᵀ = diag(S_r) Vh_r`` as the encoder ``A`` and
  ``V' = U_r`` as the decoder ``B``.
* **Initialization of R.** ``R ~ N(0, σ²)`` with ``σ = 1e-5`` (``init_std``), as in the
  authors' code (``init_module_weights(..., sigma=0.00001)``). The model is therefore not
  *exactly* the pretrained one at step 0, but close: ``‖ΔW‖₂ ≤ s·‖R‖₂·σ₁ ≈ 2e-5·√r·s·σ₁``.
  ``init_std=0`` gives ``R = 0`` and an exactly unchanged model; unlike LoRA's ``B = 0`` this
  does not stall training, because ``∂L/∂R = s·Bᵀ G Aᵀ`` is non-zero with both frozen factors
  non-zero (``G = ∂L/∂W'``).
* **Scale.** ``s = alpha / r`` with ``alpha`` defaulting to ``r`` (``s = 1``), the same convention
  as this library's LoRA. The method is written ``W + BRA``; the authors' code inherits PEFT's
  ``lora_alpha / r`` scaling (their GLUE script defaults to ``alpha = 16``, their math script
  sets ``alpha = r``).

The SVD is computed in float32 (bf16/fp16 weights are upcast; the frozen factors are stored back
in the weight's dtype). Trainable parameters per layer: ``r²``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .. import linalg
from .base import AdaptedLinear, LayerCounts, Method, check_finite_weight, check_rank, frozen, register
from .lora import LoRAExport
from .options import Option, alpha_option, rank_option


class LoRAXSLinear(AdaptedLinear):
    """``y = x Wᵀ + b + s·((x Aᵀ) Rᵀ) Bᵀ``: ``W``, ``b``, ``A = diag(S_r)Vh_r``, ``B = U_r`` frozen."""

    method = "loraxs"

    def __init__(self, layer_name: str, linear: nn.Linear, rank: int, alpha: float, init_std: float):
        super().__init__(linear.in_features, linear.out_features)
        self.rank = rank
        self.alpha = alpha
        self.scale = alpha / rank
        W = linear.weight.detach()
        check_finite_weight(layer_name, W)
        U, S, Vh = linalg.svd(W, rank, name=f"layer {layer_name!r}")  # float32
        self.weight = frozen(W)  # shares storage with the original layer
        self.bias = None if linear.bias is None else frozen(linear.bias)
        self.xs_B = frozen(U.to(W.dtype).contiguous())  # m × r
        self.xs_A = frozen((S.unsqueeze(1) * Vh).to(W.dtype).contiguous())  # r × n
        R = torch.randn(rank, rank, dtype=torch.float32, device=W.device) * init_std
        self.xs_R = nn.Parameter(R.to(W.dtype))

    def delta_weight(self) -> torch.Tensor:
        """``ΔW = s · B R A`` (out × in)."""
        return self.scale * (self.xs_B @ self.xs_R @ self.xs_A)

    def effective_weight(self) -> torch.Tensor:
        return self.weight + self.delta_weight()

    def as_lora(self):
        """A plain LoRA of rank r on ``W`` (unchanged by LoRA-XS): ``B' = B R`` (m × r), ``A' = A``,
        the same scale ``s`` — ``s·B'A' = s·BRA`` exactly, up to the rounding of one r × r product."""

        with torch.no_grad():
            return LoRAExport(
                self.xs_A.detach().clone(), (self.xs_B @ self.xs_R).detach(), self.scale, self.weight.detach()
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Three skinny products (n→r→r→m), never the dense ΔW.
        out = F.linear(x, self.weight, self.bias)
        return out.add_(F.linear(F.linear(F.linear(x, self.xs_A), self.xs_R), self.xs_B), alpha=self.scale)

    def paper_counts(self) -> LayerCounts:
        """LoRA-XS (Bałazy et al. 2024, arXiv:2405.17604): frozen ``W`` (mn), ``B = U_r`` (m×r) and
        ``A = diag(S_r)Vh_r`` (r×n), and the trained ``r × r`` matrix ``R``: ``r²`` trainable,
        whatever the layer size; Adam ``2r²``."""
        m, n, r = self.out_features, self.in_features, self.rank
        return LayerCounts.adam(m * n + r * (m + n) + r * r, r * r)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, rank={self.rank}, alpha={self.alpha:g}, scale={self.scale:g}"


@register("loraxs")
class LoRAXS(Method):
    """Train only an ``r × r`` matrix between frozen SVD factors: ``W + (alpha/r)·U_r R diag(S_r) Vh_r``.

    Options: ``rank`` (8), ``alpha`` (None → rank, i.e. s = 1), ``init_std`` (1e-5: the standard
    deviation of the Gaussian init of ``R``; 0 gives ``R = 0``). Trainable per layer: ``r²``.
    """

    options = {
        "rank": rank_option(help="r, the number of top singular directions; R is r × r"),
        "alpha": alpha_option(),
        "init_std": Option(1e-5, "σ of R's Gaussian init (authors' code: 1e-5; 0 gives R = 0, W' = W)", low=0),
    }
    freezes_others = True
    init_reads_weight = "its frozen factors are the top singular vectors of the pretrained weight (an SVD)"

    def check(self, layer_name: str, linear: nn.Linear) -> None:
        check_rank(layer_name, linear, self.config["rank"])
        check_finite_weight(layer_name, linear.weight)

    def adapt(self, layer_name: str, linear: nn.Linear) -> LoRAXSLinear:
        c = self.config
        alpha = float(c["rank"] if c["alpha"] is None else c["alpha"])
        return LoRAXSLinear(layer_name, linear, c["rank"], alpha, float(c["init_std"]))
