"""SVFit — fine-tuning only the top singular values (Sun, Wei, Wu, Shi, He, Ma, Xie & Yang 2024,
arXiv:2409.05926, "SVFit: Parameter-Efficient Fine-Tuning of Large Pre-Trained Models Using
Singular Values").

Each pretrained weight is split by its SVD into a best rank-r part and the rest::

    W  = U_r diag(σ_r) Vh_r + W_e
    W' = U_r diag(σ)   Vh_r + W_e         σ ∈ R^r trainable, starts at σ_r
    y  = x W'ᵀ + b

``U_r``, ``Vh_r`` (the "fundamental subspaces") and ``W_e`` stay frozen; the ``r`` singular values
are the only trainable numbers, so each of the top-r rank-one pieces ``u_i v_iᵀ`` can grow or
shrink but never turn. ``W' = W`` at step 0.

**Choosing r.** ``rank=r`` directly, or ``energy=f`` (default 0.99 when neither is given): the
smallest r whose top-r singular values capture a fraction ``f`` of the energy ``‖W‖_F² = Σσ_i²``
(:func:`spectrallab.linalg.rank_for_energy`). The abstract's criterion is "the most critical
singular values that capture over 99% of the matrix's information"; we read "information" as the
squared-singular-value energy (the Eckart–Young error measure), which is what
``rank_for_energy`` uses. r is chosen per layer, so different layers train different counts.

**Additive or multiplicative?** The abstract: "these top-r singular values are then used as
trainable parameters to scale the fundamental subspaces of the matrix" — the singular values
*themselves* are the parameters (no public code exists to say otherwise). We therefore train
``σ`` directly, initialized at ``σ_r``: ``∂L/∂σ_i = u_iᵀ G v_i`` with ``G = ∂L/∂W'``. This is the
additive form ``σ_r + δ`` (``δ = 0`` at start) under any optimizer step that ignores the
parameter's value (SGD, Adam); it differs only under weight decay, which here pulls the singular
values toward 0 (AdamW's default ``weight_decay=0.01`` slowly shrinks them; pass
``weight_decay=0`` for the pure method). The multiplicative form ``σ_r ⊙ (1 + δ)`` would scale
each gradient by ``σ_i`` and is not what the paper describes.

**Implementation.** ``W_e = W − U_r diag(σ_r) Vh_r`` is never stored: ``W' = W + U_r diag(σ − σ_r)
Vh_r`` is the same matrix, keeps ``W`` shared with the original layer (no copy), and is equal to
``W`` bit for bit at step 0 even in bf16. The forward is ``x Wᵀ + b + ((x Vh_rᵀ) ⊙ (σ − σ_r)) U_rᵀ``,
two skinny products. The SVD runs in float32; ``U_r``, ``Vh_r`` are stored in the weight's dtype,
``σ`` and ``σ_r`` in float32 (r numbers: a bf16 ``σ ≈ 10`` could not absorb a step of 1e-3).

Trainable parameters per layer: ``r``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .. import linalg
from .base import AdaptedLinear, LayerCounts, Method, check_finite_weight, check_rank, frozen, register
from .lora import LoRAExport
from .options import Option


class SVFitLinear(AdaptedLinear):
    """``y = x Wᵀ + b + ((x Vh_rᵀ) ⊙ (σ − σ_r)) U_rᵀ`` — only ``σ`` (length r) trains."""

    method = "svfit"

    def __init__(self, layer_name: str, linear: nn.Linear, rank: int | None, energy: float | None):
        super().__init__(linear.in_features, linear.out_features)
        W = linear.weight.detach()
        check_finite_weight(layer_name, W)
        U, S, Vh = linalg.svd(W, name=f"layer {layer_name!r}")  # all k triplets, float32
        if rank is None:
            # (clamped: an all-zero W has no energy to split and gets r = k)
            rank = min(linalg.rank_for_energy(S, energy), S.numel()) if S.sum() > 0 else S.numel()
        self.rank = rank
        self.energy = float(linalg.energy(S, rank))  # what the chosen r captures
        self.weight = frozen(W)
        self.bias = None if linear.bias is None else frozen(linear.bias)
        self.svfit_U = frozen(U[:, :rank].to(W.dtype).contiguous())  # m × r
        self.svfit_Vh = frozen(Vh[:rank].to(W.dtype).contiguous())  # r × n
        self.sigma_init = frozen(S[:rank].clone())  # σ_r, float32
        self.sigma = nn.Parameter(S[:rank].clone())  # trainable, float32

    def delta_sigma(self) -> torch.Tensor:
        return self.sigma - self.sigma_init

    def effective_weight(self) -> torch.Tensor:
        delta = self.delta_sigma().to(self.weight.dtype)
        return self.weight + (self.svfit_U * delta) @ self.svfit_Vh

    def as_lora(self):
        """A plain LoRA of rank r on ``W``: ``ΔW = U_r diag(σ − σ_r) Vh_r``, so ``B' = U_r diag(σ − σ_r)``,
        ``A' = Vh_r``, scale 1 (r is this layer's, which ``energy=`` may choose per layer)."""

        with torch.no_grad():
            B = self.svfit_U * self.delta_sigma().to(self.weight.dtype)
            return LoRAExport(self.svfit_Vh.detach().clone(), B.detach(), 1.0, self.weight.detach())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.linear(x, self.weight, self.bias)
        h = F.linear(x, self.svfit_Vh) * self.delta_sigma().to(x.dtype)
        return out.add_(F.linear(h, self.svfit_U))

    def paper_counts(self) -> LayerCounts:
        """SVFit (Sun et al. 2024, arXiv:2409.05926): only the top-r singular values train (``r``,
        this layer's own r: ``energy=`` chooses it per layer), Adam ``2r``.

        Stored as this library does: ``W`` (mn), ``U_r`` (m×r), ``Vh_r`` (r×n), the initial ``σ_r``
        and the trained ``σ`` (r each): ``mn + r(m+n) + 2r``.
        """
        m, n, r = self.out_features, self.in_features, self.rank
        return LayerCounts.adam(m * n + r * (m + n) + 2 * r, r)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, rank={self.rank}, energy={self.energy:.4f}"


@register("svfit")
class SVFit(Method):
    """Train only the top-r singular values of each weight; vectors and the residual stay frozen.

    Options: ``rank`` (None) or ``energy`` (None; 0.99 when neither is given) — give at most one.
    ``energy=f`` picks per layer the smallest r capturing a fraction ``f ∈ (0, 1]`` of ``Σσ_i²``.
    Trainable per layer: ``r``.
    """

    options = {
        "rank": Option(
            None,
            "r, how many of the top singular values σ train",
            kind="int",
            low=1,
            high="min(out, in)",
            none="chosen per layer by energy",
        ),
        "energy": Option(
            None,
            "f, the fraction of Σσ_i² the top-r values must capture (r chosen per layer)",
            low=0,
            low_open=True,
            high=1,
            none="0.99 unless rank is given",
        ),
    }
    freezes_others = True
    init_reads_weight = "it starts from the singular values and vectors of the pretrained weight (an SVD)"
    default_energy = 0.99

    def check_options(self, where: str) -> None:
        c = self.config
        if c["rank"] is not None and c["energy"] is not None:
            raise ValueError(
                f"{where}: give rank= or energy=, not both (got rank={c['rank']!r}, energy={c['energy']!r})"
            )

    def check(self, layer_name: str, linear: nn.Linear) -> None:
        if self.config["rank"] is not None:
            check_rank(layer_name, linear, self.config["rank"])
        check_finite_weight(layer_name, linear.weight)

    def adapt(self, layer_name: str, linear: nn.Linear) -> SVFitLinear:
        c = self.config
        energy = (
            None if c["rank"] is not None else float(c["energy"] if c["energy"] is not None else self.default_energy)
        )
        return SVFitLinear(layer_name, linear, c["rank"], energy)
