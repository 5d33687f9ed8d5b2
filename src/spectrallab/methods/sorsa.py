"""SORSA — Singular Values and Orthonormal Regularized Singular Vectors Adaptation (Cao 2024,
arXiv:2409.00055; later versions with Z. Song).

The top-r singular triplets of the pretrained weight become trainable; the rest is a frozen
residual::

    W     = U diag(S) Vh
    B     = U[:, :r]  (m × r),   S_p = S[:r]  (r),   A = Vh[:r]  (r × n)      all trainable
    W_res = W − B diag(S_p) A                                                 frozen
    W'    = W_res + B diag(S_p) A          (= W at step 0)
    y     = x W_resᵀ + b + ((x Aᵀ) ⊙ S_p) Bᵀ

(The paper writes ``W_p = U_p diag(S_p) V_pᵀ``; here ``B = U_p`` and ``A = V_pᵀ``, the
library's LoRA naming.) Unlike PiSSA, the singular values are a separate vector, and the singular
vectors are kept close to orthonormal by a regularizer

    L_reg = ‖A Aᵀ − I‖_F + ‖Bᵀ B − I‖_F            (per layer; Frobenius norms, not squared)

so that the magnitude lives in ``S_p`` and the directions stay directions.

**How the regularizer enters the update.** The step is ``W_{p,t+1} = W_{p,t} − η_t ∇L_train −
γ_t ∇L_reg`` (the paper; also the author's explainer, blog.yang-cao.com/article/sorsa-explain);
the authors' training loop realizes it by
adding ``(γ / η) · ∇L_reg`` to the gradients *after* gradient clipping and *before* the
optimizer step, with ``η`` the peak (configured) learning rate. With SGD this gives
``γ_t = γ · η_t / η``: the regularizer's step follows the learning-rate schedule and equals ``γ``
at the peak, whatever ``η`` is. With Adam/AdamW the sum goes through the moment normalization, as
in the authors' code. We do the same in :meth:`SORSA.attach_optimizer`: an optimizer **step
pre-hook** adds ``(γ/η)·∂L_reg/∂A`` to ``A.grad`` and ``(γ/η)·∂L_reg/∂B`` to ``B.grad`` when
``opt.step()`` runs — after any clipping the loop did between ``backward()`` and ``step()``.
The gradients are analytic, no extra autograd pass:

    ∂‖AAᵀ − I‖_F / ∂A = 2 (AAᵀ − I) A / ‖AAᵀ − I‖_F
    ∂‖BᵀB − I‖_F / ∂B = 2 B (BᵀB − I) / ‖BᵀB − I‖_F

(taken as 0 where the norm is exactly 0; the norm is not differentiable there). ``η`` is, per
parameter group, ``initial_lr`` when a torch LR scheduler has set it, else the group's ``lr`` when
the optimizer was built; ``peak_lr=`` overrides it. ``gamma=0`` is SORSA without the regularizer
(the paper's ablation).

Choices, with their source:

* ``gamma`` defaults to 4e-4, the value in the authors' training scripts (with η = 3e-5, so the
  regularizer's gradient weight is γ/η ≈ 13).
* ``reduction="mean"`` (default) follows the authors' code, which *averages* the norms over all
  adapted matrices of the model (divides the sum by 2 × number of layers): the published
  γ = 4e-4 was tuned that way, so this default makes it mean what the paper reports.
  ``reduction="sum"`` applies ``L_reg`` of each layer as written above (2L times stronger for L
  adapted layers at the same γ).
* No ``alpha``: the paper's ``W_p`` has no scale (the authors' code has an optional one that
  defaults to 1).

The SVD runs in float32 (bf16/fp16 weights are upcast); ``A``, ``S_p``, ``B`` and ``W_res`` are
stored in the weight's dtype (in low precision ``W_res + B diag(S_p) A`` then equals ``W`` only to
that dtype's rounding). SORSA replaces ``W`` by ``W_res``: switching adapters needs the original
``W``, which is ``W_res + B₀ diag(S₀) A₀`` of the *initial* factors — kept as buffers
(``sorsa_A0``, ``sorsa_S0``, ``sorsa_B0``; ``r(m+n) + r`` numbers the paper does not store) so that
``spectrallab.save_peft`` can write the layer as a rank-2r LoRA on the original ``W``.

Trainable parameters per layer: ``r(m + n) + r``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .. import linalg
from ..shards import is_sharded, shard_of, whole_parameters
from .base import AdaptedLinear, LayerCounts, Method, check_finite_weight, check_rank, frozen, register
from .lora import LoRAExport
from .options import Option, rank_option


def _norm_grad(E: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``‖E‖_F`` and ``E / ‖E‖_F`` (zero where the norm is 0)."""
    norm = torch.linalg.matrix_norm(E)
    # E = 0 exactly where the norm is 0, so the clamp gives 0 there (and no host sync on a GPU).
    return norm, E / norm.clamp_min(torch.finfo(E.dtype).tiny)


class SORSALinear(AdaptedLinear):
    """``y = x W_resᵀ + b + ((x Aᵀ) ⊙ S) Bᵀ``; ``A``, ``S``, ``B`` trainable, ``W_res``, ``b`` frozen."""

    method = "sorsa"

    def __init__(self, layer_name: str, linear: nn.Linear, rank: int):
        super().__init__(linear.in_features, linear.out_features)
        self.rank = rank
        W = linear.weight.detach()
        check_finite_weight(layer_name, W)
        U, S, Vh = linalg.svd(W, rank, name=f"layer {layer_name!r}")  # float32
        dtype = W.dtype
        B, S, A = U.to(dtype).contiguous(), S.to(dtype), Vh.to(dtype).contiguous()
        # The residual from the factors as stored (rounded to the weight's dtype), computed in float32.
        residual = W.float() - (B.float() * S.float()) @ A.float()
        self.weight = frozen(residual.to(dtype))  # W_res: a new tensor
        self.bias = None if linear.bias is None else frozen(linear.bias)
        self.sorsa_A = nn.Parameter(A)  # r × n
        self.sorsa_S = nn.Parameter(S)  # r
        self.sorsa_B = nn.Parameter(B)  # m × r
        # The initial factors, kept (r(m+n) + r numbers) so a trained layer can still be written as a
        # plain LoRA on the original W: W' − W = B diag(S) A − B₀ diag(S₀) A₀ (see `as_lora`).
        self.register_buffer("sorsa_A0", A.detach().clone())
        self.register_buffer("sorsa_S0", S.detach().clone())
        self.register_buffer("sorsa_B0", B.detach().clone())

    def principal_weight(self) -> torch.Tensor:
        """``W_p = B diag(S) A`` (out × in)."""
        return (self.sorsa_B * self.sorsa_S) @ self.sorsa_A

    def effective_weight(self) -> torch.Tensor:
        return self.weight + self.principal_weight()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.linear(x, self.weight, self.bias)
        return out.add_(F.linear(F.linear(x, self.sorsa_A) * self.sorsa_S, self.sorsa_B))

    def as_lora(self):
        """A plain LoRA of rank 2r on the original ``W = W_res + B₀ diag(S₀) A₀``, scale 1:
        ``W' − W = B diag(S) A − B₀ diag(S₀) A₀ = [B diag(S) | −B₀ diag(S₀)] [A ; A₀]``."""

        with torch.no_grad():
            wide = torch.promote_types(self.weight.dtype, torch.float32)
            B0S0 = self.sorsa_B0 * self.sorsa_S0
            weight = torch.addmm(self.weight.to(wide), B0S0.to(wide), self.sorsa_A0.to(wide)).to(self.weight.dtype)
            A = torch.cat([self.sorsa_A.detach(), self.sorsa_A0])
            B = torch.cat([self.sorsa_B.detach() * self.sorsa_S.detach(), -B0S0], dim=1)
            return LoRAExport(A, B, 1.0, weight)

    def orthonormality(self) -> torch.Tensor:
        """``L_reg = ‖AAᵀ − I‖_F + ‖BᵀB − I‖_F`` (float32, differentiable)."""
        A, B = self.sorsa_A.float(), self.sorsa_B.float()
        eye = torch.eye(self.rank, device=A.device)
        return torch.linalg.matrix_norm(A @ A.T - eye) + torch.linalg.matrix_norm(B.T @ B - eye)

    @torch.no_grad()
    def regularizer_grads(self) -> tuple[torch.Tensor, torch.Tensor]:
        """``(∂L_reg/∂A, ∂L_reg/∂B)`` in float32, analytically (see the module docstring)."""
        A, B = self.sorsa_A.float(), self.sorsa_B.float()
        eye = torch.eye(self.rank, device=A.device)
        _, dir_a = _norm_grad(A @ A.T - eye)
        _, dir_b = _norm_grad(B.T @ B - eye)
        return 2 * dir_a @ A, 2 * B @ dir_b

    def paper_counts(self) -> LayerCounts:
        """SORSA (Cao 2024, arXiv:2409.00055): frozen residual ``W_res`` (mn) plus the trained ``A``
        (r×n), ``S_p`` (r) and ``B`` (m×r): ``r(m+n) + r`` trainable, Adam twice that. This library
        also keeps the initial ``A₀, S₀, B₀`` as buffers (``r(m+n) + r`` extra, not in the paper) for
        the rank-2r PEFT export (:meth:`as_lora`)."""
        m, n, r = self.out_features, self.in_features, self.rank
        trainable = r * (m + n) + r
        return LayerCounts.adam(m * n + trainable, trainable, trainable)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, rank={self.rank}"


@register("sorsa")
class SORSA(Method):
    """Trainable top-r singular triplets over a frozen residual, with an orthonormal regularizer.

    Options: ``rank`` (8); ``gamma`` (4e-4; 0 disables the regularizer); ``peak_lr`` (None: the
    optimizer's configured lr, per parameter group); ``reduction`` ("mean": averaged over the 2·L
    matrices, as the authors' code — the default | "sum": per-layer ``‖AAᵀ−I‖_F + ‖BᵀB−I‖_F``).
    The regularizer is applied by :func:`spectrallab.optimizer` (a step pre-hook adding
    ``(γ/η)·∇L_reg`` after clipping). Trainable per layer: ``r(m + n) + r``.
    """

    options = {
        "rank": rank_option(help="r, how many top singular triplets (B, S_p, A) train"),
        "gamma": Option(4e-4, "γ, the weight of the orthonormal regularizer (authors' scripts: 4e-4; 0: off)", low=0),
        "peak_lr": Option(
            None,
            "η in γ/η, the peak learning rate",
            low=0,
            low_open=True,
            none="the optimizer's configured lr, per parameter group",
        ),
        "reduction": Option(
            "mean",
            "L_reg averaged over the 2·L matrices (authors' code) or summed per layer",
            kind="choice",
            choices=("mean", "sum"),
        ),
    }
    freezes_others = True
    init_reads_weight = "it splits the top singular triplets off the pretrained weight (an SVD)"

    @property
    def needs_optimizer_hooks(self) -> str | None:
        """The regularizer is a step pre-hook; gamma = 0 has none to miss."""
        if self.config["gamma"] == 0:
            return None
        return "SORSA's orthonormal regularizer (γ·∇L_reg added to the gradient before each step)"

    def check(self, layer_name: str, linear: nn.Linear) -> None:
        check_rank(layer_name, linear, self.config["rank"])
        check_finite_weight(layer_name, linear.weight)

    def adapt(self, layer_name: str, linear: nn.Linear) -> SORSALinear:
        return SORSALinear(layer_name, linear, self.config["rank"])

    def fsdp_refusal(self) -> None:
        """None: under FSDP2 the regularizer's gradient is computed from the whole A and B (gathered) on
        every rank, and each rank adds its shard of it to its shard of the gradient."""
        return None

    def attach_optimizer(self, optimizer: torch.optim.Optimizer, layers: dict[str, SORSALinear]) -> None:
        gamma = float(self.config["gamma"])
        if gamma == 0 or not layers:
            return
        # Groups by position, read from the optimizer at each step: ``load_state_dict`` replaces the
        # group dicts (a resumed run must see the loaded ``initial_lr``), but never their order.
        group_of = {id(p): i for i, group in enumerate(optimizer.param_groups) for p in group["params"]}
        attach_lr = [group["lr"] for group in optimizer.param_groups]
        # Only layers whose factors this optimizer actually updates.
        mine = [layer for layer in layers.values() if id(layer.sorsa_A) in group_of or id(layer.sorsa_B) in group_of]
        if not mine:
            return
        divisor = 2 * len(mine) if self.config["reduction"] == "mean" else 1
        peak_lr = self.config["peak_lr"]

        def peak(opt: torch.optim.Optimizer, param: nn.Parameter) -> float:
            if peak_lr is not None:
                return float(peak_lr)
            i = group_of[id(param)]
            return float(opt.param_groups[i].get("initial_lr", attach_lr[i]))

        def add_regularizer_gradient(opt, args, kwargs):
            for layer in mine:
                with whole_parameters(layer, ("sorsa_A", "sorsa_B")):  # gathered under FSDP2, else a no-op
                    grads = layer.regularizer_grads()
                for param, grad in zip((layer.sorsa_A, layer.sorsa_B), grads):
                    if id(param) not in group_of or not param.requires_grad:
                        continue
                    step = (grad * (gamma / (peak(opt, param) * divisor))).to(param.dtype)
                    if is_sharded(param):  # FSDP2: this rank's shard of the whole regularizer gradient
                        if param.grad is None:
                            param.grad = torch.zeros_like(param)
                        param.grad.to_local().add_(shard_of(step, like=param))
                    elif param.grad is None:
                        param.grad = step
                    else:
                        param.grad.add_(step)

        optimizer.register_step_pre_hook(add_regularizer_gradient)
