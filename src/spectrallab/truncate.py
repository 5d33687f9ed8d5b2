"""Inference by pruning the spectrum: each weight replaced by its best rank-``r`` approximation.

``truncate(model, rank=r)`` (or ``energy=e``) replaces every targeted layer by a
:class:`TruncatedLinear` that stores two factors,

    y = x Aᵀ Bᵀ + b,    A = V_rᵀ (r × n),    B = U_r diag(Σ_r) (m × r),

so a layer holds ``r(m + n)`` numbers instead of ``mn`` and a forward pass costs ``r(m + n)``
multiply-adds per input instead of ``mn`` — a real saving whenever ``r < mn / (m + n)``.

* A dense layer (``nn.Linear``, transformers' ``Conv1D``, or any adapted layer through its
  ``effective_weight()``) is truncated by SVD: by Eckart–Young the best rank-``r`` approximation in
  the Frobenius and spectral norms.
* An SST layer is already in spectral form, ``W = U diag(Σ) Vᵀ``: keeping its ``r`` largest ``Σᵢ``
  and their vectors needs no SVD. This is the singular-value pruning of the SST paper (Zhao et al.,
  2025: "inference" in its title). It is the Eckart–Young cut only while ``U`` and ``V`` are
  orthonormal — right after a re-SVD. Between re-SVDs the trained vectors drift (they are kept at
  unit length, not orthogonal), and in short runs with few or no re-SVDs the drift is large: ``Σ`` is
  then not the spectrum of ``W``, and cutting by it can cost far more than the best rank-``r`` cut
  (measured once on the book's tiny GPT after 600 SST steps without a re-SVD: perplexity 16.9
  instead of 12.2 with 4 of 32 values kept). So ``method="auto"`` (the default) uses the spectral
  form when both factors are orthonormal to float32 precision (every entry of ``UᵀU − I`` and
  ``VᵀV − I`` within ``1e-4``) and an SVD of the effective weight otherwise: always the best cut.
  ``method="spectral"`` forces the cut by SST's own ``Σ``; ``method="svd"`` an SVD everywhere.

``energy=e`` keeps, per layer, the fewest singular values whose squares sum to at least ``e`` of
``‖W‖²_F`` (``e`` in (0, 1]). Like ``apply``, ``truncate`` is all-or-nothing: every layer is checked
and every replacement built before the model changes, and bad input names the layer, the value and
the allowed range. ``merge`` turns a truncated layer into a plain dense layer again.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from . import linalg
from .apply import Targets, _module_names, _set_submodule, resolve_targets
from .methods.base import AdaptedLinear, LayerCounts, as_linear, check_rank, is_conv1d


class TruncatedLinear(AdaptedLinear):
    """``y = (x Aᵀ) Bᵀ + b``: a rank-``r`` weight ``B A`` stored as its two factors (for inference)."""

    method = "truncated"

    def __init__(self, A: torch.Tensor, B: torch.Tensor, bias: torch.Tensor | None):
        super().__init__(A.shape[1], B.shape[0])
        self.rank = A.shape[0]
        self.A = nn.Parameter(A.contiguous(), requires_grad=False)  # r × n: V_rᵀ
        self.B = nn.Parameter(B.contiguous(), requires_grad=False)  # m × r: U_r diag(Σ_r)
        self.bias = None if bias is None else nn.Parameter(bias.detach().clone(), requires_grad=False)

    def effective_weight(self) -> torch.Tensor:
        return self.B @ self.A

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(F.linear(x, self.A), self.B, self.bias)

    def paper_counts(self) -> LayerCounts:
        """``W ≈ B A`` stored as ``B`` (m × r) and ``A`` (r × n): ``r(m+n)`` numbers instead of ``mn``;
        nothing trains."""
        return LayerCounts(self.rank * (self.out_features + self.in_features), 0, 0, 0)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, rank={self.rank}"


ORTHONORMAL_TOL = 1e-4  # max |QᵀQ − I| of factors "still orthonormal" (a fresh float32 SVD: ~1e-6)


def orthonormal(Q: torch.Tensor, tol: float = ORTHONORMAL_TOL) -> bool:
    """Whether the columns of ``Q`` are orthonormal, entry by entry (so the test does not grow with k)."""
    Q = Q.double()
    gram = Q.T @ Q
    return bool((gram - torch.eye(gram.shape[0], dtype=gram.dtype, device=gram.device)).abs().max() <= tol)


def spectral_form(layer: nn.Module, name: str, method: str) -> linalg.SVD:
    """All ``k`` singular triplets of ``layer``'s weight, largest first.

    SST layers: their own factors with ``method="spectral"``, and with ``"auto"`` while those factors
    are orthonormal (then they *are* an SVD); otherwise, and for every other layer, an SVD of the
    (effective) dense weight.
    """
    if method != "svd" and getattr(layer, "method", None) == "sst":
        U, S, Vh = layer.factors()  # the layer's own U, Σ, Vh, vectors in singular-index order
        if method == "spectral" or (orthonormal(U) and orthonormal(Vh.T)):
            return _sorted(U, S, Vh)
    weight = layer.effective_weight() if isinstance(layer, AdaptedLinear) else as_linear(layer).weight
    return linalg.svd(weight.detach(), name=f"layer {name!r}")


def _sorted(U: torch.Tensor, S: torch.Tensor, Vh: torch.Tensor) -> linalg.SVD:
    """SST's triplets ordered by |Σᵢ|, largest first."""
    order = torch.argsort(S.abs(), descending=True)
    signs = torch.sign(S[order])  # SST's Σ may cross zero while training: keep the function
    signs[signs == 0] = 1
    return linalg.SVD(U[:, order] * signs, S[order].abs(), Vh[order])


def weight_dtype(layer: nn.Module) -> torch.dtype:
    """The dtype the layer computes in: the factors are cast back to it (an SVD runs in float32)."""
    if isinstance(layer, AdaptedLinear):
        return layer.effective_weight().dtype
    return as_linear(layer).weight.dtype


def rank_for(name: str, layer: nn.Module, S: torch.Tensor, rank: int | None, energy: float | None) -> int:
    """``rank`` checked as every method checks it, or the fewest singular values holding ``energy``."""
    if rank is not None:
        return check_rank(name, as_linear(layer), rank)
    k = S.numel()
    share = torch.cumsum(S.double() ** 2, 0) / (S.double() ** 2).sum().clamp_min(1e-300)
    return min(k, int((share < energy - 1e-12).sum()) + 1)


@torch.no_grad()
def truncate(
    model: nn.Module,
    rank: int | None = None,
    *,
    energy: float | None = None,
    targets: Targets = None,
    method: Literal["auto", "svd", "spectral"] = "auto",
) -> nn.Module:
    """Replace each targeted layer of ``model`` by its best rank-``rank`` factors (in place).

    Give exactly one of ``rank`` (an int in [1, min(out, in)] for every targeted layer) or
    ``energy`` (a number in (0, 1]: per layer, the fewest singular values holding that share of
    ``‖W‖²_F``). ``targets`` as in :func:`spectrallab.apply` (default: every linear layer, adapted
    or not; tied layers are left out). ``method="auto"`` gives every layer its best rank-``r`` cut:
    SST layers in their own spectral form while their factors are orthonormal, through an SVD once
    they have drifted; ``"spectral"`` cuts SST layers by their own ``Σ`` regardless; ``"svd"`` uses an
    SVD everywhere (other layers are cut by SVD in every mode). Returns the model (or, when
    ``model`` is itself one layer, its truncated replacement). The truncated layers are frozen:
    this is for inference, and ``sl.merge`` makes them dense again.
    """
    if (rank is None) == (energy is None):
        raise TypeError(
            "truncate needs exactly one of rank= (an int) or energy= (a share in (0, 1]); "
            f"got rank={rank!r}, energy={energy!r}"
        )
    if energy is not None and (isinstance(energy, bool) or not isinstance(energy, (int, float)) or not 0 < energy <= 1):
        raise ValueError(f"energy={energy!r} is outside the allowed range (0, 1]")
    if method not in ("auto", "svd", "spectral"):
        raise ValueError(f"method={method!r} is not one of 'auto', 'svd', 'spectral'")
    layers = resolve_targets(model, targets)
    replacements = {}
    for name, layer in layers.items():  # every layer checked and built before the model changes
        label = name or "<model>"
        if isinstance(layer, TruncatedLinear):
            raise ValueError(
                f"layer {label!r} is already truncated (rank {layer.rank}); "
                f"call spectrallab.merge(model) first to truncate it again"
            )
        if next(iter(layer.parameters())).is_meta:
            raise ValueError(f"layer {label!r} is on the meta device: it has no values to truncate")
        U, S, Vh = spectral_form(layer, label, method)
        r = rank_for(label, layer, S, rank, energy)
        bias = layer.effective_bias if isinstance(layer, AdaptedLinear) else as_linear(layer).bias
        dtype = weight_dtype(layer)  # bf16/fp16 weights were upcast for the SVD: cast back
        new = TruncatedLinear(Vh[:r].to(dtype), (U[:, :r] * S[:r]).to(dtype), bias)
        origin = getattr(layer, "origin", None) or (type(layer) if is_conv1d(layer) else None)
        if origin is not None:
            new.origin = origin  # merge gives a Conv1D back
        replacements[name] = new
    if "" in replacements:
        return replacements[""]
    places = _module_names(model)
    for name, new in replacements.items():
        for place in places[id(layers[name])][1]:
            _set_submodule(model, place, new)
    return model
