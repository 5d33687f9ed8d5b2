"""SVFT — Parameter-Efficient Fine-Tuning with Singular Vectors (Lingam, Tejaswi, Vavre, Shetty,
Gudur, Ghosh, Dimakis, Choi, Bojchevski & Sanghavi 2024, arXiv:2405.19597).

The full SVD of the pretrained weight is frozen and a *sparse* k × k matrix ``M`` of coefficients
is learned between its singular vectors::

    W  = U diag(S) Vh                         (full thin SVD, k = min(m, n))
    W' = U (diag(S) + σ(g) · M) Vh            U, S, Vh frozen; the nonzeros of M (and g) train
    ΔW = σ(g) · Σ_{(i,j) ∈ Ω} M_ij u_i v_jᵀ

so the update is a sparse combination of outer products of W's own singular vectors. The sparsity
pattern ``Ω`` sets the expressivity:

* ``pattern="banded"``, ``off_diag=d``: the main diagonal and ``d`` diagonals on each side,
  ``nnz = k(2d+1) − d(d+1)``. ``d = 0`` is the paper's **SVFT-P** ("plain": only the singular
  values move, ``nnz = k``); ``d ≥ 1`` is **SVFT-B** (``ΔW`` can then have rank up to k).
* ``pattern="random"``: the same number of nonzeros at distinct positions drawn uniformly over
  the k × k matrix (**SVFT-R**), from a generator seeded by ``seed`` and the layer's name, so the
  pattern is reproducible and differs between layers. (The authors' code draws rows and columns
  independently, with possible repeats; we draw distinct positions so every value is a separate
  coefficient.)
* ``pattern="topk"`` (**SVFT-T**, the paper's "Top-k"): the positions where the left and right
  singular vectors are most *aligned*. The paper (§3.1) computes the alignment ``a_ij = u_iᵀ v_j``
  of every left singular vector with every right one and makes the top-k of them learnable — "the
  top-k strong interactions between singular vector directions" — and notes that this "only works
  when left and right singular vectors have the same size". So:

  - **Criterion.** ``Ω`` = the ``nnz`` positions with the largest ``|u_iᵀ v_j|``
    (:func:`singular_vector_alignment`). We rank by the *magnitude*: an SVD fixes each pair
    ``(u_i, v_i)`` only up to a joint sign flip, which flips the sign of row i and column i of
    ``a`` — a signed ranking would depend on LAPACK's sign convention, the magnitude does not.
    Exact ties are broken by position, row-major, so the pattern is deterministic. (Where the
    alignments are all near 0 apart from a few — a symmetric W has ``u_i = ±v_i``, so ``a = ±I`` —
    the rest of the ranking is decided by rounding noise: Top-k is meant for W whose left and right
    singular vectors genuinely overlap in several directions.)
  - **Count.** The paper's "k" is a count, not our ``k = min(m, n)``: ``nnz = k(2d+1) − d(d+1)``
    with ``d = off_diag``, the banded count: the paper's
    Table 5 compares Banded, Random and Top-k "matching the number of trainable coefficients", and
    the authors' code sizes all three by the same formula.
  - **Non-square W.** ``u_i ∈ R^m`` and ``v_j ∈ R^n`` have no inner product when ``m ≠ n``, and the
    paper defines none; we refuse such a layer with a ``ValueError`` (restrict ``targets`` to square
    layers). The authors' code instead falls back to the entries of whichever factor is square,
    which is not an alignment; we do not copy that. (For square W their code ranks the signed
    entries of ``U·V`` — rows of U against columns of V, a transpose away from the paper's
    ``UᵀV`` — we follow the paper's text.)

``M`` is stored as a 1-D parameter of its ``nnz`` values plus two fixed index buffers (row, col);
the dense k × k matrix is never built in the forward.

**Initialization and the gate** (from the authors' public code, read for understanding; the paper
defines ``W' = U(Σ + M)Vᵀ`` and the patterns): the nonzeros of M are Kaiming-normal over the
``nnz`` values (a 1 × nnz tensor, fan-in nnz: ``std = √(2/nnz)``), and M enters multiplied by a
trainable scalar gate ``σ(g)`` with ``g = 0`` (so σ(g) = ½). **SVFT therefore does not start at
W' = W**: ``ΔW = ½ U M Vh`` is a small random perturbation inside W's singular bases at step 0.
We follow the authors by default (``init="kaiming"``, ``gate=True``); ``init="zeros"`` starts
at ``M = 0`` (W' = W up to the SVD round trip) and ``gate=False`` drops the gate.

**Forward** ``x → x Vhᵀ → ⊙S + sparse M → ·Uᵀ → + b``: ``O((m+n)k + nnz)`` per token and no
dense ``W'``; :meth:`SVFTLayer.effective_weight` builds the dense matrix for merging and spectra.
The factors replace ``W`` (it is not kept): ``U diag(S) Vh`` reproduces ``W`` to float32 rounding
(~1e-6 relative); with bf16/fp16 weights the SVD runs in float32 and ``U, S, Vh`` are stored back
in the weight's dtype, so the round trip is exact only to a few ulps of that dtype. The trainable
values and the gate are kept in float32 (as the authors do).

Trainable parameters per layer: ``nnz`` (+ 1 with the gate).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .. import linalg
from .base import AdaptedLinear, LayerCounts, Method, check_finite_weight, frozen, layer_generator, register
from .options import Option

PATTERNS = ("banded", "random", "topk")
INITS = ("kaiming", "zeros")


def banded_nnz(k: int, off_diag: int) -> int:
    """Nonzeros of a k × k band with ``off_diag`` diagonals on each side of the main one."""
    return k * (2 * off_diag + 1) - off_diag * (off_diag + 1)


def banded_indices(k: int, off_diag: int) -> tuple[torch.Tensor, torch.Tensor]:
    rows, cols = [], []
    for offset in range(-off_diag, off_diag + 1):
        i = torch.arange(max(0, -offset), min(k, k - offset))
        rows.append(i)
        cols.append(i + offset)
    return torch.cat(rows), torch.cat(cols)


def random_indices(k: int, nnz: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """``nnz`` distinct positions of a k × k matrix, uniformly at random."""
    if k * k <= 1 << 22:
        flat = torch.randperm(k * k, generator=generator)[:nnz]
    else:  # avoid a k²-long permutation: draw, deduplicate, top up
        flat = torch.empty(0, dtype=torch.long)
        while flat.numel() < nnz:
            draw = torch.randint(0, k * k, (2 * (nnz - flat.numel()),), generator=generator)
            flat = torch.cat([flat, draw]).unique()
        flat = flat[torch.randperm(flat.numel(), generator=generator)[:nnz]]
    return flat // k, flat % k


def singular_vector_alignment(U: torch.Tensor, Vh: torch.Tensor) -> torch.Tensor:
    """``a_ij = u_iᵀ v_j`` for the columns ``u_i`` of U and the rows ``v_jᵀ`` of Vh (k × k, float32).

    Defined only when the two live in the same space (U is m × k, Vh is k × n with m = n).
    """
    if U.shape[0] != Vh.shape[1]:
        raise ValueError(
            f"singular vector alignment needs left and right singular vectors of the same size, "
            f"got U {tuple(U.shape)} and Vh {tuple(Vh.shape)}"
        )
    return U.float().T @ Vh.float().T


def topk_indices(alignment: torch.Tensor, nnz: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The ``nnz`` positions with the largest ``|alignment|``, largest first (ties: row-major order)."""
    k = alignment.shape[1]
    order = torch.argsort(alignment.abs().flatten().cpu(), descending=True, stable=True)[:nnz]
    return order // k, order % k


class SVFTLayer(AdaptedLinear):
    """``y = ((x Vhᵀ) (diag(S) + σ(g)·M)ᵀ) Uᵀ + b`` with ``M`` sparse; ``U``, ``S``, ``Vh``, ``b`` frozen."""

    method = "svft"

    def __init__(
        self, layer_name: str, linear: nn.Linear, pattern: str, off_diag: int, init: str, gate: bool, seed: int
    ):
        super().__init__(linear.in_features, linear.out_features)
        W = linear.weight.detach()
        check_finite_weight(layer_name, W)
        U, S, Vh = linalg.svd(W, name=f"layer {layer_name!r}")  # all k triplets, float32
        k = S.numel()
        self.k, self.pattern, self.off_diag, self.init = k, pattern, off_diag, init
        self.svft_U = frozen(U.to(W.dtype).contiguous())  # m × k
        self.svft_S = frozen(S.to(W.dtype))  # k
        self.svft_Vh = frozen(Vh.to(W.dtype).contiguous())  # k × n
        self.bias = None if linear.bias is None else frozen(linear.bias)

        if pattern == "banded":
            rows, cols = banded_indices(k, off_diag)
        elif pattern == "random":
            rows, cols = random_indices(k, banded_nnz(k, off_diag), layer_generator(seed, layer_name))
        else:  # "topk": from the float32 factors, before any cast to a low-precision dtype
            rows, cols = topk_indices(singular_vector_alignment(U, Vh), banded_nnz(k, off_diag))
        self.register_buffer("svft_rows", rows.to(W.device))
        self.register_buffer("svft_cols", cols.to(W.device))
        self.nnz = rows.numel()
        # M and the gate in at least float32 (as the authors keep them), float64 for a float64 weight
        wide = torch.promote_types(linear.weight.dtype, torch.float32)
        values = torch.zeros(self.nnz, dtype=wide, device=W.device)
        if init == "kaiming":
            nn.init.kaiming_normal_(values.unsqueeze(0))  # 1 × nnz: fan-in nnz, std √(2/nnz)
        self.svft_M = nn.Parameter(values)
        self.svft_gate = nn.Parameter(torch.zeros((), dtype=wide, device=W.device)) if gate else None

    @property
    def wide(self) -> torch.dtype:
        """The dtype the core is computed in: the factors' dtype, at least float32."""
        return torch.promote_types(self.svft_U.dtype, torch.float32)

    def coefficients(self) -> torch.Tensor:
        """The nonzero values of ``σ(g)·M`` (at least float32, length nnz)."""
        return self.svft_M if self.svft_gate is None else self.svft_M * torch.sigmoid(self.svft_gate)

    def core(self) -> torch.Tensor:
        """The dense k × k matrix ``diag(S) + σ(g)·M`` (at least float32)."""
        core = torch.diag(self.svft_S.to(self.wide))
        return core.index_put((self.svft_rows, self.svft_cols), self.coefficients(), accumulate=True)

    def effective_weight(self) -> torch.Tensor:
        dense = self.svft_U.to(self.wide) @ self.core() @ self.svft_Vh.to(self.wide)
        return dense.to(self.svft_U.dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.linear(x, self.svft_Vh)  # (…, k)
        # z_i = S_i h_i + Σ_{(i,j)∈Ω} M_ij h_j  — a gather and a scatter-add over the nnz entries
        sparse = h[..., self.svft_cols] * self.coefficients()
        z = (h * self.svft_S).to(self.wide).index_add(-1, self.svft_rows, sparse.to(self.wide))
        return F.linear(z.to(h.dtype), self.svft_U, self.bias)

    def paper_counts(self) -> LayerCounts:
        """SVFT (Lingam et al. 2024, arXiv:2405.19597): frozen ``U`` (m×k), ``S`` (k), ``Vh`` (k×n)
        replace ``W``; the ``nnz`` values of the sparse ``M`` train, plus the gate scalar ``g`` when
        this layer has one (the authors' code; the paper's ``W' = U(Σ + M)Vᵀ`` has none): Adam
        twice that. The pattern's row and column indices are buffers: ``2·nnz`` extra elements
        (int64 here). ``nnz`` is this layer's own (``k(2d+1) − d(d+1)`` for every pattern)."""
        m, n, k = self.out_features, self.in_features, self.k
        trainable = self.nnz + (1 if self.svft_gate is not None else 0)
        return LayerCounts.adam(k * (m + n) + k + trainable, trainable, 2 * self.nnz)

    def extra_repr(self) -> str:
        return (
            f"{super().extra_repr()}, k={self.k}, pattern={self.pattern!r}, off_diag={self.off_diag}, "
            f"nnz={self.nnz}, init={self.init!r}, gate={self.svft_gate is not None}"
        )


@register("svft")
class SVFT(Method):
    """Learn a sparse matrix of coefficients between the frozen singular vectors: ``U(diag(S) + σ(g)M)Vh``.

    Options: ``pattern`` ("banded" | "random" | "topk"), ``off_diag`` (0: plain/diagonal; d: d
    diagonals on each side; for "random" and "topk" the same count ``k(2d+1) − d(d+1)`` of random
    positions or of the positions with the largest ``|u_iᵀ v_j|``; "topk" needs square layers), ``init``
    ("kaiming": the authors' init, W' ≠ W at step 0 | "zeros": W' = W), ``gate`` (True: M scaled
    by a trainable σ(g), g = 0), ``seed`` (0, for the random pattern). Trainable per layer: nnz (+1).
    """

    options = {
        "pattern": Option(
            "banded",
            "Ω, where M's nonzeros sit: a band (SVFT-P/B), random (SVFT-R) or the "
            "top |u_iᵀ v_j| (SVFT-T, square layers)",
            kind="choice",
            choices=PATTERNS,
        ),
        "off_diag": Option(
            0,
            "d, diagonals on each side of the main one; nnz = k(2d+1) − d(d+1) for every pattern",
            kind="int",
            low=0,
            high="min(out, in) − 1",
        ),
        "init": Option(
            "kaiming",
            "how M's values start: Kaiming-normal (authors' code, W' ≠ W at step 0) or zeros (W' = W)",
            kind="choice",
            choices=INITS,
        ),
        "gate": Option(True, "scale M by a trainable σ(g), g = 0 at start (authors' code)", kind="bool"),
        "seed": Option(0, "seed of the random pattern Ω (mixed with the layer's name)", kind="seed"),
    }
    freezes_others = True
    init_reads_weight = "it replaces the weight by its singular vectors and values (an SVD)"

    def check(self, layer_name: str, linear: nn.Linear) -> None:
        c = self.config
        k = min(linear.out_features, linear.in_features)
        d = c["off_diag"]  # an int (the declaration checked); its bound is the layer's
        if not 0 <= d <= k - 1:
            raise ValueError(
                f"layer {layer_name!r} ({linear.out_features}×{linear.in_features}): off_diag={d} "
                f"is outside the allowed range [0, {k - 1}] = [0, min(out, in) − 1]"
            )
        if c["pattern"] == "topk" and linear.out_features != linear.in_features:
            raise ValueError(
                f"layer {layer_name!r} ({linear.out_features}×{linear.in_features}): pattern='topk' "
                "ranks the alignments u_iᵀ v_j, which exist only when out_features == in_features "
                "(left and right singular vectors of the same size); restrict targets to square "
                "layers or use pattern='random' for the same count"
            )
        check_finite_weight(layer_name, linear.weight)

    def adapt(self, layer_name: str, linear: nn.Linear) -> SVFTLayer:
        c = self.config
        return SVFTLayer(layer_name, linear, c["pattern"], c["off_diag"], c["init"], c["gate"], c["seed"])
