"""LoRA — Low-Rank Adaptation (Hu et al. 2021, arXiv:2106.09685) and FFA-LoRA (Sun et al. 2024).

The pretrained weight ``W ∈ R^{m×n}`` is frozen and a low-rank update is learned::

    W' = W + s · B A,      A ∈ R^{r×n},  B ∈ R^{m×r},  r ≪ min(m, n)
    y  = x Wᵀ + b + s · (dropout(x) Aᵀ) Bᵀ

with the scale ``s = alpha / r`` (Hu et al.), or ``s = alpha / √r`` with ``rslora=True``
(rank-stabilized LoRA, Kalajdzievski 2023, arXiv:2312.03732: keeps the update's magnitude stable
as r grows). ``alpha`` defaults to ``r`` (s = 1) — choose it explicitly when comparing ranks.

Initialization (``init=``), following HF PEFT so the two agree weight for weight:

* ``"default"``: ``A`` Kaiming-uniform with ``a = √5`` (what ``nn.Linear`` uses), ``B = 0``.
* ``"gaussian"``: ``A ~ N(0, (1/r)²)`` (standard deviation 1/r, as PEFT), ``B = 0``.

Either way ``BA = 0``, so the adapted model computes exactly the pretrained function at step 0, and
only ``B`` receives a non-zero gradient on the first step. Spectral initializations (PiSSA, MiLoRA,
OLoRA) plug into the same table with :func:`register_init`.

**FFA-LoRA** (``"ffa_lora"``, Sun et al. 2024, arXiv:2403.12313, "Improving LoRA in
privacy-preserving federated learning"): the same layer with ``A`` frozen at its random init and
only ``B`` trained. The update ``s·BA`` then lives in the fixed row space of ``A``, which halves the
trainable parameters and makes averaging ``B`` across clients exact (the paper's motivation).

Trainable parameters per layer: ``r(m + n)`` for LoRA, ``r·m`` for FFA-LoRA.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from .base import AdaptedLinear, LayerCounts, Method, check_finite_weight, check_rank, frozen, register, reset_linear_
from .options import Option, alpha_option, dropout_option, rank_option

# init name -> function(weight, rank, scale) -> (A, B, base_weight). `base_weight` is what stays
# frozen: W itself for LoRA's own inits, a residual for inits that move part of W into BA.
LoraInit = Callable[[torch.Tensor, int, float], tuple[torch.Tensor, torch.Tensor, torch.Tensor]]
LORA_INITS: dict[str, LoraInit] = {}
# Which singular directions of W an init copies into BA: None (it ignores the spectrum), "top"
# (the r largest, as PiSSA) or "bottom" (the r smallest, as MiLoRA). Widgets draw it on the spectrum.
INIT_SPECTRUM_PART: dict[str, str | None] = {}


def register_init(name: str, spectrum_part: str | None = None):
    """Add an initialization reachable as ``apply(model, "lora", init=name)``.

    ``spectrum_part`` says which singular directions of ``W`` it takes: None, "top" or "bottom".
    """
    if spectrum_part not in (None, "top", "bottom"):
        raise ValueError(f"spectrum_part={spectrum_part!r} is not one of None, 'top', 'bottom'")

    def decorate(fn: LoraInit) -> LoraInit:
        LORA_INITS[name] = fn
        INIT_SPECTRUM_PART[name] = spectrum_part
        return fn

    return decorate


def spectrum_indices(init: str, k: int, rank: int) -> list[int]:
    """Indices (0-based, into the descending spectrum of length k) that ``init`` copies into BA."""
    part = INIT_SPECTRUM_PART[init]
    if part == "top":
        return list(range(rank))
    if part == "bottom":
        return list(range(k - rank, k))
    return []


@register_init("default")
def kaiming_init(weight: torch.Tensor, rank: int, scale: float):
    A = torch.empty(rank, weight.shape[1], dtype=weight.dtype, device=weight.device)
    nn.init.kaiming_uniform_(A, a=math.sqrt(5))
    B = torch.zeros(weight.shape[0], rank, dtype=weight.dtype, device=weight.device)
    return A, B, weight


@register_init("gaussian")
def gaussian_init(weight: torch.Tensor, rank: int, scale: float):
    A = torch.randn(rank, weight.shape[1], dtype=weight.dtype, device=weight.device) / rank
    B = torch.zeros(weight.shape[0], rank, dtype=weight.dtype, device=weight.device)
    return A, B, weight


def lora_scale(alpha: float, rank: int, rslora: bool) -> float:
    """``alpha / r``, or ``alpha / √r`` for rank-stabilized LoRA."""
    return alpha / math.sqrt(rank) if rslora else alpha / rank


def lora_macs(tokens: int, m: int, n: int, r: int, backward: bool) -> dict[str, int]:
    """Multiply-adds of a LoRA layer's forward (and, with ``backward``, its backward) for ``tokens``
    rows, by path; ``W`` frozen, so no ``m × n`` weight gradient either way.

    ``"factored"`` (two skinny products, as the paper writes ``h = W₀x + BAx``): forward
    ``T·mn + T·r(m + n)``; backward ``∂x = g W₀ + (g B) A``, ``∂A = (g B)ᵀ x``, ``∂B = gᵀ (x Aᵀ)`` —
    ``T·mn + 2T·r(m + n)`` with the forward's ``x Aᵀ`` saved.
    ``"merged"`` (:class:`MergedLoRA`): ``W₀ + s·BA`` formed, ``m·n·r``, then one product ``T·mn``; the
    backward forms it again for ``∂x`` and computes ``g B`` and ``x Aᵀ`` once each for ``∂A``, ``∂B`` —
    ``mnr + T·mn + 2T·r(m + n)``. Merged is cheaper from ``T > mn / (m + n)`` tokens (``d / 2`` for a
    square d × d layer) in inference and from ``T > 2mn / (m + n)`` (``d``) in training.
    """
    T = tokens
    factored = T * m * n + T * r * (m + n)
    merged = m * n * r + T * m * n
    if backward:
        factored += T * m * n + 2 * T * r * (m + n)
        merged += m * n * r + T * m * n + 2 * T * r * (m + n)
    return {"factored": factored, "merged": merged}


class MergedLoRA(torch.autograd.Function):
    """``y = x (W₀ + s·BA)ᵀ + b`` through the merged weight, with LoRA's gradients computed directly.

    For long batches (``T`` above about the layer's width) one product with the merged ``m × n``
    weight is cheaper than the two skinny ones, whose ``T × r`` by ``r × n`` product is also a slow
    shape on a CPU (output as large as the layer's, inner size only ``r``). Autograd through the
    merged weight would form the full ``∂L/∂W = gᵀ x`` (``T·mn``, what LoRA exists to avoid), so the
    backward is written out::

        ∂L/∂x = g (W₀ + s·BA)      ∂L/∂A = s·(g B)ᵀ x      ∂L/∂B = s·gᵀ (x Aᵀ)      ∂L/∂b = Σ_rows g

    The merged weight is formed again in the backward rather than saved (``m·n·r`` multiply-adds
    against ``m·n`` floats of memory per layer): the activations kept are ``x`` alone, fewer than
    the factored path's ``x`` and ``x Aᵀ``. ``W₀`` and ``b`` are frozen (no gradient is computed
    for them). Equal to the factored forward and its autograd gradients up to rounding (tested in
    float64).
    """

    @staticmethod
    def forward(ctx, x, weight, bias, lora_A, lora_B, scale):
        ctx.save_for_backward(x, weight, lora_A, lora_B)
        ctx.scale = scale
        ctx.has_bias = bias is not None
        return F.linear(x, torch.addmm(weight, lora_B, lora_A, alpha=scale), bias)

    @staticmethod
    def backward(ctx, grad):
        x, weight, lora_A, lora_B = ctx.saved_tensors
        need_x, _, need_bias, need_A, need_B, _ = ctx.needs_input_grad
        s = ctx.scale
        rows = grad.reshape(-1, grad.shape[-1])
        inputs = x.reshape(-1, x.shape[-1])
        grad_x = grad_A = grad_B = grad_bias = None
        if need_x:
            grad_x = (rows @ torch.addmm(weight, lora_B, lora_A, alpha=s)).reshape(x.shape)
        if need_A:
            grad_A = (rows @ lora_B).T @ inputs  # r × n; the scale once, on the small result
            grad_A.mul_(s)
        if need_B:
            # (uᵀ g)ᵀ with u = x Aᵀ: the r × T by T × m product is the fast shape; its transpose is
            # the m × r gradient (AccumulateGrad lays it out like the parameter).
            grad_B = ((inputs @ lora_A.T).T @ rows).T
            grad_B.mul_(s)
        if need_bias and ctx.has_bias:
            grad_bias = rows.sum(0)
        return grad_x, None, grad_bias, grad_A, grad_B, None


def merged_is_cheaper(layer: LoRALinear, x: torch.Tensor) -> bool:
    """Whether :class:`MergedLoRA` takes fewer multiply-adds than the factored product for ``x``.

    Only without dropout: with it, the low-rank branch sees ``dropout(x)`` and the base ``x``, two
    different inputs that no single merged weight can serve. And only while ``W₀`` is frozen.
    """
    if not isinstance(layer.dropout, nn.Identity) and layer.training:
        return False
    if layer.weight.requires_grad:  # MergedLoRA computes no gradient for W₀ (a user unfroze it)
        return False
    tokens = x.numel() // max(1, x.shape[-1])
    backward = torch.is_grad_enabled() and (x.requires_grad or layer.lora_A.requires_grad or layer.lora_B.requires_grad)
    macs = lora_macs(tokens, layer.out_features, layer.in_features, layer.rank, backward)
    return macs["merged"] < macs["factored"]


def merged_lora(x, weight, bias, lora_A, lora_B, scale: float) -> torch.Tensor:
    """:class:`MergedLoRA` under autocast too: a custom Function's backward runs outside the
    autocast region, so the inputs are cast here, as ``F.linear`` would cast them, and the Function
    runs in that precision with autocast off (its gradients are cast back to each input's dtype)."""
    device = x.device.type
    if torch.is_autocast_enabled(device):
        dtype = torch.get_autocast_dtype(device)
        with torch.autocast(device, enabled=False):
            return MergedLoRA.apply(
                x.to(dtype),
                weight.to(dtype),
                None if bias is None else bias.to(dtype),
                lora_A.to(dtype),
                lora_B.to(dtype),
                scale,
            )
    return MergedLoRA.apply(x, weight, bias, lora_A, lora_B, scale)


class LoRALinear(AdaptedLinear):
    """``y = x Wᵀ + b + s·(dropout(x) Aᵀ) Bᵀ`` with ``W`` and ``b`` frozen."""

    method = "lora"

    def __init__(
        self, linear: nn.Linear, rank: int, alpha: float, rslora: bool, init: str, dropout: float, train_a: bool = True
    ):
        super().__init__(linear.in_features, linear.out_features)
        self.rank = rank
        self.alpha = alpha
        self.rslora = rslora
        self.init = init
        self.scale = lora_scale(alpha, rank, rslora)
        original = linear.weight.detach()
        A, B, base = LORA_INITS[init](original, rank, self.scale)
        self.weight = frozen(base)
        self.bias = None if linear.bias is None else frozen(linear.bias)
        self.lora_A = nn.Parameter(A.contiguous(), requires_grad=train_a)
        self.lora_B = nn.Parameter(B.contiguous())
        if base is not original:
            # The init moved part of W into BA (PiSSA, MiLoRA, OLoRA): keep the initial factors, so
            # the layer can still be exported as a plain LoRA on the original W (`export_lora`).
            self.register_buffer("lora_A0", A.detach().clone())
            self.register_buffer("lora_B0", B.detach().clone())
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()

    def delta_weight(self) -> torch.Tensor:
        """``ΔW = s · B A`` (out × in)."""
        return self.scale * (self.lora_B @ self.lora_A)

    def effective_weight(self) -> torch.Tensor:
        return self.weight + self.delta_weight()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """Every tensor afresh: ``W``, ``b`` as ``nn.Linear`` does, then ``A``, ``B`` by the layer's init.

        For a meta-device model after ``model.to_empty(device=...)``; load the pretrained base
        weights afterwards (their state_dict keys, ``<layer>.weight`` / ``<layer>.bias``, are the
        original layer's). With the default inits ``A`` and ``B`` do not depend on ``W``.
        """
        reset_linear_(self.weight, self.bias)
        A, B, base = LORA_INITS[self.init](self.weight.detach().clone(), self.rank, self.scale)
        self.weight.copy_(base)
        self.lora_A.copy_(A)
        self.lora_B.copy_(B)
        if getattr(self, "lora_A0", None) is not None:
            self.lora_A0.copy_(A)
            self.lora_B0.copy_(B)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Long batches: one product with W₀ + s·BA and LoRA's gradients written out (MergedLoRA),
        # when that is fewer multiply-adds (lora_macs). Otherwise two skinny matmuls, never the
        # dense ΔW: O(r(m+n)) per token instead of O(mn). The scale rides on an in-place add (no
        # scaled copy of the output); F.linear's backward does not need its own output, so
        # modifying it in place is safe for autograd.
        if merged_is_cheaper(self, x):
            return merged_lora(x, self.weight, self.bias, self.lora_A, self.lora_B, self.scale)
        out = F.linear(x, self.weight, self.bias)
        return out.add_(F.linear(F.linear(self.dropout(x), self.lora_A), self.lora_B), alpha=self.scale)

    def paper_counts(self) -> LayerCounts:
        """LoRA (Hu et al. 2021): frozen ``W`` (mn) plus ``B`` (m×r) and ``A`` (r×n); trainable
        ``r(m+n)``, Adam ``2r(m+n)`` — as the GaLore paper's Table 1 counts LoRA too (weights
        ``mn + mr + nr``, optimizer states ``2mr + 2nr``). FFA-LoRA (``A`` frozen) trains ``rm``.

        Inits that move part of ``W`` into ``BA`` (PiSSA, MiLoRA, OLoRA: LoRA with another init, the
        same counts) keep the initial ``B₀, A₀`` as buffers here (``r(m+n)`` extra) for the rank-2r
        export (:func:`export_lora`) — storage the papers do not have.
        """
        m, n, r = self.out_features, self.in_features, self.rank
        adapter = r * (m + n)
        trainable = adapter if self.lora_A.requires_grad else r * m
        return LayerCounts.adam(
            m * n + adapter, trainable, adapter if getattr(self, "lora_A0", None) is not None else 0
        )

    def as_lora(self) -> LoRAExport:
        """This layer as a plain LoRA on its original weight (rank r, or 2r for PiSSA/MiLoRA/OLoRA)."""
        return export_lora(self)

    def extra_repr(self) -> str:
        return (
            f"{super().extra_repr()}, rank={self.rank}, alpha={self.alpha:g}, scale={self.scale:g}, init={self.init!r}"
        )


class LoRAExport(NamedTuple):
    """A plain LoRA on the original weight: ``weight + scale · B @ A`` is the layer's weight now.

    Layers that can be written this way say so with an ``as_lora()`` method returning one of these
    (what ``spectrallab.save_peft`` writes; DoRA returns its :class:`~.dora.DoRAExport`).
    """

    A: torch.Tensor  # r' × in
    B: torch.Tensor  # out × r'
    scale: float
    weight: torch.Tensor  # the original (pre-init) W, out × in


def export_lora(layer: LoRALinear) -> LoRAExport:
    """Express ``layer`` as a plain LoRA on the weight it was built from (adapter switching).

    For an init that left W untouched this is ``(A, B, s, W)``, rank r. For an init that moved
    ``s·B₀A₀`` out of W (``W_res = W − s·B₀A₀``) the update relative to the original W is
    ``s(BA − B₀A₀) = s·[B | B₀][A ; −A₀]``: rank 2r, returned with ``W = W_res + s·B₀A₀``
    (summed in at least float32, stored in the layer's dtype). Only for layers whose effective
    weight is ``W + s·BA`` (not DoRA's rescaled one).
    """
    if type(layer).effective_weight is not LoRALinear.effective_weight:
        raise TypeError(
            f"export_lora needs a plain LoRA layer (effective weight W + s·BA); "
            f"{type(layer).__name__} computes its weight differently"
        )
    return factors_on_original(layer)


def factors_on_original(layer: LoRALinear) -> LoRAExport:
    """``(A', B', s, W)`` with ``W + s·B'A' = W_base + s·BA`` and ``W`` the weight the layer was built
    from (rank r, or 2r for an init that moved ``s·B₀A₀`` out of W). DoRA normalizes that same sum."""
    with torch.no_grad():
        A, B = layer.lora_A.detach().clone(), layer.lora_B.detach().clone()
        if getattr(layer, "lora_A0", None) is None:
            return LoRAExport(A, B, layer.scale, layer.weight.detach().clone())
        A0, B0, W_res = layer.lora_A0, layer.lora_B0, layer.weight.detach()
        wide = torch.promote_types(W_res.dtype, torch.float32)
        weight = torch.addmm(W_res.to(wide), B0.to(wide), A0.to(wide), alpha=layer.scale).to(W_res.dtype)
        return LoRAExport(torch.cat([A, -A0]), torch.cat([B, B0], dim=1), layer.scale, weight)


@register("lora")
class LoRA(Method):
    """Low-rank update ``W + (alpha/r)·BA`` on a frozen ``W``.

    Options: ``rank`` (8), ``alpha`` (None → rank, i.e. s = 1), ``rslora`` (False: s = alpha/r;
    True: s = alpha/√r), ``init`` ("default" | "gaussian" | any registered init),
    ``dropout`` on the adapter input (0.0).
    """

    options = {
        "rank": rank_option(),
        "alpha": alpha_option(),
        "rslora": Option(False, "rank-stabilized scale α/√r instead of α/r (Kalajdzievski 2023)", kind="bool"),
        "init": Option(
            "default",
            "how A and B start: Kaiming/Gaussian A with B = 0, or a spectral init",
            kind="choice",
            choices=lambda: sorted(LORA_INITS),
        ),
        "dropout": dropout_option(),
    }
    freezes_others = True
    train_a = True
    layer_class = LoRALinear

    def needs_weight_values(self) -> str | None:
        # The default inits draw A at random and set B = 0: the shape of W is enough.
        if self.config["init"] in ("default", "gaussian"):
            return None
        return f"init={self.config['init']!r} factorizes the pretrained weight (SVD or QR)"

    def check(self, layer_name: str, linear: nn.Linear) -> None:
        check_rank(layer_name, linear, self.config["rank"])
        if self.config["init"] not in ("default", "gaussian"):  # every other init decomposes W (SVD, QR)
            check_finite_weight(layer_name, linear.weight)

    def adapt(self, layer_name: str, linear: nn.Linear) -> LoRALinear:
        c = self.config
        alpha = float(c["rank"] if c["alpha"] is None else c["alpha"])
        return self.layer_class(
            linear, c["rank"], alpha, c["rslora"], c["init"], float(c["dropout"]), train_a=self.train_a
        )


@register("ffa_lora")
class FFALoRA(LoRA):
    """LoRA with ``A`` frozen at its random initialization; only ``B`` trains (Sun et al. 2024).

    Same options as ``lora``.
    """

    train_a = False
