"""Singular value decompositions and the numbers we read off a spectrum.

Notation: ``W ∈ R^{m×n}``, ``k = min(m, n)``, ``W = U diag(S) Vh`` with ``S`` descending.

* :func:`svd` — exact (LAPACK) or randomized (Halko, Martinsson & Tropp 2011, arXiv:0909.4061:
  a Gaussian sketch with ``oversample`` extra columns and ``n_iter`` power iterations, each
  re-orthonormalized). The randomized error grows as the spectral gap ``σ_{r+1}/σ_r`` approaches 1;
  power iterations shrink it like ``(σ_{r+1}/σ_r)^{2q+1}``.
* Spectra metrics: :func:`energy` captured by the top r values, :func:`effective_rank` (entropy,
  Roy & Vetterli 2007 — the "RankMe" measure), :func:`stable_rank` ``‖W‖_F²/‖W‖_2²``,
  :func:`eckart_young_error` (the best rank-r error), :func:`principal_angles` and
  :func:`subspace_overlap` between subspaces, :func:`orthogonality_error` ``‖QᵀQ − I‖_F``,
  :func:`intruder_dimensions` (Shuttleworth et al. 2024: new top singular vectors after fine-tuning).

Low-precision inputs (bf16/fp16) are upcast to float32 for the factorization — LAPACK has no
half-precision SVD, and half precision would lose the small singular values anyway — and the
factors are returned in float32 (callers cast back where they store weights).
"""

from __future__ import annotations

import math
from typing import Literal, NamedTuple

import torch
from torch import nn


class SVD(NamedTuple):
    U: torch.Tensor  # m × r, orthonormal columns
    S: torch.Tensor  # r, descending, non-negative
    Vh: torch.Tensor  # r × n, orthonormal rows


def all_finite(t: torch.Tensor) -> bool:
    """True when every entry is finite — one reduction instead of an elementwise mask.

    A NaN or ±inf entry always makes the sum non-finite; a finite sum therefore proves all entries
    finite. Only a non-finite sum (a bad entry, or an overflow of huge values) needs the exact test.
    """
    return bool(torch.isfinite(t.sum())) or bool(torch.isfinite(t).all())


def is_conv1d(module: nn.Module) -> bool:
    """True for transformers' ``Conv1D`` (or a subclass), without importing transformers.

    GPT-2's projections are ``Conv1D`` layers, linear layers that store their weight transposed
    (in × out). Recognised by class name and module, so spectrallab never imports transformers.
    """
    return any(cls.__name__ == "Conv1D" and cls.__module__.startswith("transformers.") for cls in type(module).__mro__)


def as_matrix(x: torch.Tensor | nn.Module, name: str = "matrix") -> torch.Tensor:
    """A detached float32 2-D tensor from a tensor or a (linear or adapted) layer; finite values only.

    A layer that says what dense weight it applies through ``effective_weight()`` (every adapted
    layer, :class:`spectrallab.AdaptedLinear`) contributes that; a ``Conv1D`` its weight transposed
    to out × in; any other layer its ``weight``. Asked by duck typing, so this module of tensor math
    needs no layer class.
    """
    effective = getattr(x, "effective_weight", None) if isinstance(x, nn.Module) else None
    if callable(effective):
        w = effective()
    elif isinstance(x, nn.Module) and is_conv1d(x):
        w = x.weight.T
    elif isinstance(x, nn.Module) and isinstance(getattr(x, "weight", None), torch.Tensor):
        w = x.weight
    elif isinstance(x, torch.Tensor):
        w = x
    else:
        raise TypeError(f"{name}: expected a 2-D tensor or a layer with a weight, got {type(x).__name__}")
    if w.ndim != 2:
        raise ValueError(f"{name}: expected a 2-D matrix, got shape {tuple(w.shape)}")
    w = w.detach()
    if w.dtype not in (torch.float32, torch.float64):
        w = w.float()
    if not all_finite(w):
        bad = int((~torch.isfinite(w)).sum())
        raise ValueError(f"{name}: has {bad} non-finite value(s) (NaN or inf); an SVD needs all values finite")
    return w


def svd(
    W: torch.Tensor | nn.Module,
    rank: int | None = None,
    *,
    method: Literal["exact", "randomized"] = "exact",
    oversample: int = 10,
    n_iter: int = 2,
    generator: torch.Generator | None = None,
    name: str = "matrix",
    check_finite: bool = True,
) -> SVD:
    """Top-``rank`` singular triplets of ``W`` (all ``k`` when ``rank`` is None).

    ``check_finite=False`` skips the pass over ``W`` that proves it finite, for a caller that has
    just done so itself (a float32/float64 tensor from :func:`as_matrix`); anything else is still
    read through :func:`as_matrix`.
    """
    if check_finite or not (isinstance(W, torch.Tensor) and W.ndim == 2 and W.dtype in (torch.float32, torch.float64)):
        W = as_matrix(W, name)
    else:
        W = W.detach()
    k = min(W.shape)
    rank = k if rank is None else rank
    if isinstance(rank, bool) or not isinstance(rank, int) or not 1 <= rank <= k:
        raise ValueError(f"{name} ({W.shape[0]}×{W.shape[1]}): rank={rank!r} is outside the allowed range [1, {k}]")
    if method == "exact":
        U, S, Vh = torch.linalg.svd(W, full_matrices=False)
        return SVD(U[:, :rank], S[:rank], Vh[:rank])
    if method == "randomized":
        return _randomized_svd(W, rank, oversample, n_iter, generator)
    raise ValueError(f"svd method={method!r} is not one of 'exact', 'randomized'")


def randomized_svd(
    W: torch.Tensor, rank: int, *, oversample: int = 10, n_iter: int = 2, generator: torch.Generator | None = None
) -> SVD:
    """Halko–Martinsson–Tropp randomized SVD (their Algorithm 4.4 + 5.1).

    1. Sketch: ``Y = W Ω`` with Gaussian ``Ω ∈ R^{n×(r+p)}`` (``p = oversample``).
    2. Power iterations ``Y ← W (Wᵀ Y)``, re-orthonormalizing with QR each half-step so the small
       singular values are not lost to rounding.
    3. ``Q = orth(Y)``; exact SVD of the small ``B = Qᵀ W``; ``U = Q U_B``.

    The same steps, sketch and random draws as ``torch.svd_lowrank(W, q=rank + oversample,
    niter=n_iter)`` (for ``m ≥ n``; it works on ``Wᵀ`` when ``m < n``), so the two agree up to rounding
    when seeded alike.
    """
    return _randomized_svd(as_matrix(W), rank, oversample, n_iter, generator)


def _randomized_svd(W: torch.Tensor, rank: int, oversample: int, n_iter: int, generator: torch.Generator | None) -> SVD:
    """The algorithm of :func:`randomized_svd` on an already validated float matrix."""
    m, n = W.shape
    width = min(rank + oversample, min(m, n))
    # Drawn where the generator lives (a CPU generator with a CUDA matrix is the common case), then moved.
    omega = torch.randn(
        n, width, dtype=W.dtype, generator=generator, device=generator.device if generator is not None else W.device
    ).to(W.device)
    Q = torch.linalg.qr(W @ omega).Q
    for _ in range(n_iter):
        # Wᵀ Q as (Qᵀ W)ᵀ: the same products, but a row-major W is then streamed along its rows
        # (2-3× faster on CPU than a gemm reading W transposed, at 4096² with 16 columns), and the
        # transposed r × n result already has the column-major layout LAPACK's QR works in.
        Z = torch.linalg.qr((Q.T @ W).T).Q
        Q = torch.linalg.qr(W @ Z).Q
    # B = Qᵀ W (width × n) factored through its transpose, Bᵀ = P diag(S) Rᵀ, so B = R diag(S) Pᵀ:
    # the transposed view is a column-major tall matrix, which LAPACK factors without a copy and
    # ~4× faster than the wide row-major B (0.25 vs 1 ms at 16 × 4096).
    P, S, Rh = torch.linalg.svd((Q.T @ W).T, full_matrices=False)
    return SVD(Q @ Rh[:rank].T, S[:rank], P[:, :rank].T.contiguous())  # only the kept columns of U are formed


def spectrum(x: torch.Tensor | nn.Module) -> torch.Tensor:
    """Singular values (descending, float32) of a matrix or of a layer's *effective* weight."""
    name = type(x).__name__ if isinstance(x, nn.Module) else "matrix"
    return torch.linalg.svdvals(as_matrix(x, name))


def truncate(W: torch.Tensor, rank: int) -> torch.Tensor:
    """The best rank-``rank`` approximation ``U_r diag(S_r) Vh_r`` (Eckart–Young)."""
    U, S, Vh = svd(W, rank)
    return (U * S) @ Vh


def eckart_young_error(S: torch.Tensor, rank: int, norm: Literal["fro", "spectral"] = "fro") -> torch.Tensor:
    """Smallest possible ``‖W − W_r‖`` over rank-r ``W_r``: ``√Σ_{i>r} σ_i²`` (fro) or ``σ_{r+1}``."""
    tail = S[rank:]
    if norm == "fro":
        return tail.square().sum().sqrt()
    return tail[0] if tail.numel() else S.new_zeros(())


def energy(S: torch.Tensor, rank: int | None = None) -> torch.Tensor:
    """Fraction of ``‖W‖_F²`` captured by the top ``rank`` values (all cumulative fractions if None)."""
    power = S.double().square()
    cumulative = power.cumsum(0) / power.sum()
    return (cumulative if rank is None else cumulative[rank - 1]).to(S.dtype)


def rank_for_energy(S: torch.Tensor, fraction: float) -> int:
    """Smallest r whose top-r values capture at least ``fraction`` of the energy."""
    if not 0 < fraction <= 1:
        raise ValueError(f"energy fraction={fraction} is outside the allowed range (0, 1]")
    cumulative = energy(S.double())  # in float64: a float32 cumsum reaches 1.0 before the last value
    return int(torch.searchsorted(cumulative, torch.tensor(fraction - 1e-12, dtype=torch.float64)).item()) + 1


def effective_rank(S: torch.Tensor) -> torch.Tensor:
    """``exp(H(p))`` with ``p_i = σ_i / Σσ`` (Roy & Vetterli 2007; RankMe, Garrido et al. 2023).

    Equals r for r equal non-zero singular values, 1 for a rank-1 matrix.
    """
    p = S.double() / S.double().sum()
    p = p[p > 0]
    return torch.exp(-(p * p.log()).sum()).to(S.dtype)


def stable_rank(S: torch.Tensor) -> torch.Tensor:
    """``‖W‖_F² / ‖W‖_2² = Σσ_i² / σ_1²`` — a rank that small singular values barely move."""
    return (S.double().square().sum() / S.double()[0].square()).to(S.dtype)


def orthonormal_basis(X: torch.Tensor) -> torch.Tensor:
    Q, _ = torch.linalg.qr(as_matrix(X).double())
    return Q


def principal_angles(X: torch.Tensor, Y: torch.Tensor) -> torch.Tensor:
    """Principal angles (radians, ascending) between the column spaces of ``X`` and ``Y``.

    ``cos θ_i`` are the singular values of ``Q_Xᵀ Q_Y`` (Björck & Golub 1973).
    """
    if X.shape[0] != Y.shape[0]:
        raise ValueError(
            f"principal_angles: both bases need the same number of rows, got {X.shape[0]} and {Y.shape[0]}"
        )
    cosines = torch.linalg.svdvals(orthonormal_basis(X).T @ orthonormal_basis(Y)).clamp(-1.0, 1.0)
    return torch.arccos(cosines).float()


def subspace_overlap(X: torch.Tensor, Y: torch.Tensor) -> float:
    """``‖Q_Xᵀ Q_Y‖_F² / min(dim X, dim Y)`` ∈ [0, 1]: 1 when one subspace contains the other,
    about ``max(dim)/m`` for random subspaces of ``R^m``, 0 when orthogonal."""
    cos = torch.cos(principal_angles(X, Y).double())
    return float(cos.square().sum() / min(X.shape[1], Y.shape[1]))


def orthogonality_error(Q: torch.Tensor) -> float:
    """``‖QᵀQ − I‖_F`` for the columns of ``Q`` (pass ``Vh.T`` for the rows of ``Vh``)."""
    Q = as_matrix(Q).double()
    eye = torch.eye(Q.shape[1], dtype=Q.dtype, device=Q.device)
    return float(torch.linalg.matrix_norm(Q.T @ Q - eye))


def spectral_gap(S: torch.Tensor, rank: int) -> float:
    """``σ_{r+1} / σ_r`` — the ratio that governs randomized SVD's error at rank r (1 = no gap)."""
    if rank >= S.numel():
        return 0.0
    return float(S[rank] / S[rank - 1]) if S[rank - 1] > 0 else math.nan


class Intruders(NamedTuple):
    """What :func:`intruder_dimensions` found in the top ``k`` singular vectors of a fine-tuned weight."""

    count: int  # how many of the top-k fine-tuned singular vectors are intruders
    indices: torch.Tensor  # their positions in the fine-tuned spectrum (0-based, ascending, int64)
    max_similarity: torch.Tensor  # (k,): max_i |cos(u'_j, u_i)| for each of the top-k fine-tuned vectors
    similarity: torch.Tensor  # (k, k_pre): |cos(u'_j, u_i)| against every pretrained singular vector
    singular_values: torch.Tensor  # (k,): σ'_j of the fine-tuned weight, to place intruders in its spectrum
    epsilon: float

    def count_below(self, epsilon: float) -> int:
        """The count at another threshold, from the same decomposition (for count-vs-ε curves)."""
        return int((self.max_similarity < check_similarity_threshold(epsilon)).sum())


def check_similarity_threshold(epsilon, name: str = "intruder_dimensions") -> float:
    """A cosine-similarity threshold: a finite number in (0, 1]."""
    if isinstance(epsilon, bool) or not isinstance(epsilon, (int, float)) or not math.isfinite(epsilon):
        raise TypeError(f"{name}: epsilon must be a finite number in (0, 1], got {epsilon!r}")
    if not 0 < epsilon <= 1:
        raise ValueError(f"{name}: epsilon={epsilon} is outside the allowed range (0, 1]")
    return float(epsilon)


def intruder_dimensions(
    W_pre: torch.Tensor | nn.Module,
    W_ft: torch.Tensor | nn.Module,
    k: int = 10,
    epsilon: float = 0.5,
    *,
    side: Literal["left", "right"] = "left",
    name: str = "intruder_dimensions",
) -> Intruders:
    """Intruder dimensions of a fine-tuned weight (Shuttleworth, Andreas, Torralba & Sharma 2024,
    "LoRA vs Full Fine-tuning: An Illusion of Equivalence", arXiv:2410.21228).

    Take the SVDs of the pretrained weight ``W_pre = U diag(S) Vh`` and of the fine-tuned one
    ``W_ft = U' diag(S') Vh'`` (same shape, m×n). A singular vector ``u'_j`` of ``W_ft`` is an
    **intruder dimension** when it is unlike every pretrained singular vector::

        max_i |cos(u'_j, u_i)| = max_i |u'_jᵀ u_i| < ε,        i = 1 … min(m, n)

    and the paper counts intruders among the ``k`` *highest-ranking* fine-tuned vectors
    (j = 1 … k; k = 10, with the count plotted against a range of ε; the authors' script and HF
    PEFT's intruder mitigation default to ε = 0.5).
    LoRA's low-rank update adds a few such new, large directions; full fine-tuning mostly rotates
    the existing ones a little, so its top vectors keep a close pretrained match.

    Choices where the paper's text leaves room (stated here and in the intruder chapter):

    * **Left singular vectors** (columns of U, the output space of an ``nn.Linear`` weight), as the
      authors' released code does; ``side="right"`` compares the rows of Vh (the input space)
      instead.
    * **Absolute** cosine: a singular vector is defined only up to sign, so ``u`` and ``−u`` are
      the same direction (the released code also takes ``abs``).
    * Matched against **all** ``min(m, n)`` pretrained singular vectors of the thin SVD, not only
      the top k: a small pretrained direction that grows large is not new. When the compared space
      has dimension ``min(m, n)`` (the output space when ``m ≤ n``, for ``side="left"``) these
      vectors span it, so ``max_i |cos| ≥ 1/√min(m, n)`` and no ε below that finds an intruder.
    * Strict ``<``, as the paper's definition. ``W_pre`` and ``W_ft`` may be tensors or layers
      (an adapted layer contributes its effective weight ``W + ΔW``); both are read in float32 or
      float64 (half precision is upcast).

    A property of the definition worth knowing: singular vectors of nearly equal singular values
    are unstable, so a small dense update can mix two of them into ``(u_1 ± u_2)/√2``, whose best
    match is about 0.71 — counted at ε above that although no new direction appeared. Read counts at
    high ε, or deep k, together with the singular values (``singular_values``) and the spectrum.

    Returns an :class:`Intruders`: the count at ``epsilon``, the intruders' positions in the
    fine-tuned spectrum, each top-k vector's best similarity (``count_below(ε)`` recounts at any
    other ε), the k × min(m, n) similarity matrix and the top-k fine-tuned singular values.
    """
    pre = as_matrix(W_pre, f"{name}: W_pre")
    ft = as_matrix(W_ft, f"{name}: W_ft")
    if pre.shape != ft.shape:
        raise ValueError(
            f"{name}: W_pre and W_ft must have the same shape, got {tuple(pre.shape)} and {tuple(ft.shape)}"
        )
    limit = min(pre.shape)
    if isinstance(k, bool) or not isinstance(k, int):
        raise TypeError(f"{name}: k must be an int in [1, {limit}], got {k!r}")
    if not 1 <= k <= limit:
        raise ValueError(
            f"{name} ({pre.shape[0]}×{pre.shape[1]}): k={k} is outside the allowed range "
            f"[1, {limit}] = [1, min(out, in)]"
        )
    epsilon = check_similarity_threshold(epsilon, name)
    if side not in ("left", "right"):
        raise ValueError(f"{name}: side={side!r} is not one of 'left', 'right'")
    dtype = torch.promote_types(pre.dtype, ft.dtype)
    U_pre, _, Vh_pre = torch.linalg.svd(pre.to(dtype), full_matrices=False)
    U_ft, S_ft, Vh_ft = torch.linalg.svd(ft.to(device=pre.device, dtype=dtype), full_matrices=False)
    if side == "left":
        similarity = (U_ft[:, :k].T @ U_pre).abs()  # rows: fine-tuned u'_j, columns: pretrained u_i
    else:
        similarity = (Vh_ft[:k] @ Vh_pre.T).abs()
    similarity = similarity.clamp(max=1.0)  # |cos| ≤ 1; rounding may overshoot by an ulp
    max_similarity = similarity.max(dim=1).values
    indices = torch.nonzero(max_similarity < epsilon).flatten()
    return Intruders(int(indices.numel()), indices, max_similarity, similarity, S_ft[:k], epsilon)
