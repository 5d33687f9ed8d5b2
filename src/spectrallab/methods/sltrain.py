"""SLTrain — a sparse plus low-rank approach for parameter and memory efficient pretraining (Han, Li,
Huang, Hong, Takeda, Jawanpuria & Mishra, arXiv:2406.02214, NeurIPS 2024).

A pre-training parametrization with **no dense weight at all**: each ``m × n`` weight is the sum of
a low-rank product and a sparse matrix on a support chosen at random once and never changed::

    W = s · B A + S,      B ∈ R^{m×r},  A ∈ R^{r×n},  s = alpha / r
    S = Σ_{(i,j) ∈ Ω} v_ij e_i e_jᵀ,   Ω ⊂ [m]×[n] fixed, |Ω| = nnz ≈ δ·m·n
    y = x Wᵀ + b

Trainable: ``A``, ``B``, the ``nnz`` values ``v`` of ``S``, and the bias. The paper's argument:
low-rank factors learn the head of the spectrum but cannot lift its tail, and a random sparse
matrix — which has a spread-out, nearly full-rank spectrum — supplies the tail at a cost of only
``δ·m·n`` parameters (the support itself is a fixed index buffer, not a parameter).

**Initialization** (paper §4 and the authors' ``SpLoRaLinear``): ``A`` Kaiming-uniform with
``a = √5`` (U(±1/√n), what ``nn.Linear`` uses), ``B = 0``, the support ``Ω`` uniform without
replacement over the ``m·n`` positions, the values ``v ~ U(−1/√n, 1/√n)`` with ``n`` the input size
(the same bound as ``nn.Linear``'s weights). The scale convention is LoRA's, ``s = alpha/r``: the
paper's LLaMA runs use ``r = 128``, ``δ = 0.03``, ``α = 32``.

**The function changes at ``apply``**: the layer's weight is *replaced* by ``s·BA + S`` with
``BA = 0``, i.e. by the fresh sparse ``S`` — this is a way to train from scratch, not an adapter
on a trained weight (the trained ``W`` is dropped). Only the bias is kept.

Storage: ``S`` is a 1-D parameter ``sparse_values`` (nnz) plus a buffer ``sparse_index`` of flat
positions ``i·n + j`` (sorted, int64). The forward pass scatters the values into a dense ``m × n``
matrix and applies it next to the two skinny low-rank matmuls; the authors' CUDA kernel builds the
dense weight on the fly in the same way (it is freed after the matmul), so the memory saved is in
parameters and optimizer state, not in the per-step weight.

Choices, where the paper or the authors' code leave room:

* ``nnz = ⌊δ·m·n + ½⌋`` (round half up), at least 1. The authors' code truncates
  (``int(δ·m·n)``); rounding keeps the realized density closest to δ.
* ``sparsity = 1`` is allowed (every position on the support: ``S`` is dense and the method is
  full-rank training plus a low-rank term); the authors' code requires δ < 1.
* The bias keeps the model's own values and stays trainable. (The authors' layer re-draws it from
  U(±1/√m); we keep what the model chose, e.g. zeros in a GPT.)
* ``seed=None`` draws the layers' random streams from torch's global generator at ``apply``
  (``torch.manual_seed`` makes it reproducible; under ``torch.distributed`` every rank takes rank 0's
  draw, see ``resolve_seed``); an int seeds them from the seed and the layer name.
  The stream supplies ``A``, the support and the values.

Trainable parameters per layer: ``r(m + n) + nnz`` (+ ``m`` with a bias).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from .base import AdaptedLinear, LayerCounts, Method, check_rank, layer_generator, register, resolve_seed
from .options import Option, alpha_option, rank_option
from .relora import kaiming_factor, round_half_up


def support_size(out_features: int, in_features: int, sparsity: float) -> int:
    """``nnz = ⌊δ·m·n + ½⌋``, at least 1 (see the module docstring)."""
    return max(1, min(out_features * in_features, round_half_up(sparsity * out_features * in_features)))


def random_support(total: int, nnz: int, generator: torch.Generator) -> torch.Tensor:
    """``nnz`` distinct flat positions in ``[0, total)``, uniformly at random, sorted."""
    if total <= 1 << 24:
        flat = torch.randperm(total, generator=generator)[:nnz]
    else:  # avoid a permutation as long as the matrix: draw, deduplicate, top up
        flat = torch.empty(0, dtype=torch.long)
        while flat.numel() < nnz:
            draw = torch.randint(0, total, (2 * (nnz - flat.numel()) + 16,), generator=generator)
            flat = torch.cat([flat, draw]).unique()
        flat = flat[torch.randperm(flat.numel(), generator=generator)[:nnz]]
    return flat.sort().values


class SLTrainLinear(AdaptedLinear):
    """``y = x (s·BA + S)ᵀ + b`` with ``S`` sparse on a fixed random support; all of it trainable."""

    method = "sltrain"

    def __init__(self, linear: nn.Linear, rank: int, alpha: float, sparsity: float, generator: torch.Generator):
        super().__init__(linear.in_features, linear.out_features)
        m, n = self.out_features, self.in_features
        W = linear.weight.detach()
        self.rank, self.alpha, self.scale, self.sparsity = rank, alpha, alpha / rank, sparsity
        self.nnz = support_size(m, n, sparsity)
        like = {"dtype": W.dtype, "device": W.device}
        self.lora_A = nn.Parameter(torch.empty(rank, n, **like))  # r × n
        self.lora_B = nn.Parameter(torch.empty(m, rank, **like))  # m × r
        self.register_buffer("sparse_index", torch.empty(self.nnz, dtype=torch.long, device=W.device))
        self.sparse_values = nn.Parameter(torch.empty(self.nnz, **like))
        self.bias = None if linear.bias is None else nn.Parameter(linear.bias.detach().clone())
        # The stream before its first draw: `reset_parameters` replays it, so a layer built on the
        # meta device and reset after `to_empty()` is the layer a real device would have given.
        self._initial_stream = generator.get_state()
        self._draw(generator)

    @torch.no_grad()
    def _draw(self, generator: torch.Generator) -> None:
        """A, then the support, then the values, from ``generator``; ``B = 0``."""
        m, n = self.out_features, self.in_features
        self.lora_A.copy_(kaiming_factor(self.rank, n, generator, self.lora_A))
        self.lora_B.zero_()
        self.sparse_index.copy_(random_support(m * n, self.nnz, generator))
        bound = 1 / math.sqrt(n)
        values = torch.empty(self.nnz, dtype=torch.float32).uniform_(-bound, bound, generator=generator)
        self.sparse_values.copy_(values)

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """The draws of ``apply`` again (same stream, same numbers), and the bias as ``nn.Linear``
        initializes it (its trained values are gone) — for a meta-device model after ``to_empty()``."""
        self._draw(torch.Generator().set_state(self._initial_stream))
        if self.bias is not None:
            bound = 1 / math.sqrt(self.in_features)
            nn.init.uniform_(self.bias, -bound, bound)

    @property
    def density(self) -> float:
        """The realized density ``nnz / (m·n)``."""
        return self.nnz / (self.out_features * self.in_features)

    def rows_cols(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The support as (row, column) index vectors."""
        return self.sparse_index // self.in_features, self.sparse_index % self.in_features

    def sparse_weight(self) -> torch.Tensor:
        """The dense ``m × n`` matrix ``S`` (zero off the support; differentiable in the values)."""
        flat = self.sparse_values.new_zeros(self.out_features * self.in_features)
        return flat.scatter(0, self.sparse_index, self.sparse_values).view(self.out_features, self.in_features)

    def low_rank_weight(self) -> torch.Tensor:
        """``s · B A`` (out × in)."""
        return self.scale * (self.lora_B @ self.lora_A)

    def effective_weight(self) -> torch.Tensor:
        return self.low_rank_weight() + self.sparse_weight()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.linear(x, self.sparse_weight(), self.bias)
        return out.add_(F.linear(F.linear(x, self.lora_A), self.lora_B), alpha=self.scale)

    def paper_counts(self) -> LayerCounts:
        """SLTrain (Han et al. 2024, arXiv:2406.02214): ``W = s·BA + S`` with no dense ``W``; ``B``
        (m×r), ``A`` (r×n) and the ``nnz ≈ δmn`` values of ``S`` train: ``r(m+n) + nnz``, Adam twice
        that. The fixed random support needs its indices too: ``nnz`` extra elements (one flat index per
        value; their width is the implementation's choice, so the report gives elements, and bytes as
        measured). ``nnz`` is this layer's own support size (:func:`support_size`: ``⌊δmn + ½⌋``
        clamped to ``[1, mn]``), not recomputed from δ.
        """
        m, n, r = self.out_features, self.in_features, self.rank
        trainable = r * (m + n) + self.nnz
        return LayerCounts.adam(trainable, trainable, self.nnz)

    def extra_repr(self) -> str:
        return (
            f"{super().extra_repr()}, rank={self.rank}, alpha={self.alpha:g}, scale={self.scale:g}, "
            f"nnz={self.nnz} (density {self.density:.4f})"
        )


@register("sltrain")
class SLTrain(Method):
    """Sparse plus low-rank weights ``s·BA + S`` with a fixed random support (Han et al. 2024).

    Options: ``rank`` (8); ``alpha`` (None → rank, s = 1; the paper uses α = 32 at r = 128);
    ``sparsity`` (δ = 0.03, the kept density of ``S``, in (0, 1]); ``seed`` (None: from torch's
    global generator). Re-initializes the layer (the trained weight is dropped). Trainable per
    layer: ``r(m + n) + nnz`` (+ bias), ``nnz = ⌊δ·m·n + ½⌋``.
    """

    options = {
        "rank": rank_option(help="r, the rank of the low-rank part B A"),
        "alpha": alpha_option(),
        "sparsity": Option(
            0.03,
            "δ, the kept density of the sparse part S (nnz = ⌊δmn + ½⌋)",
            kind="float",
            low=0,
            high=1,
            low_open=True,
        ),
        "seed": Option(
            None,
            "seeds the layers' streams (A, the support, the values) with the layer name",
            kind="seed",
            none="drawn from torch's global generator",
        ),
    }
    freezes_others = False
    init_reads_weight = None  # W is dropped anyway: a meta-device model is fine (reset_parameters)

    def check(self, layer_name: str, linear: nn.Linear) -> None:
        check_rank(layer_name, linear, self.config["rank"])  # the options themselves: validate_options

    def adapt(self, layer_name: str, linear: nn.Linear) -> SLTrainLinear:
        c = self.config
        if not hasattr(self, "_seed"):  # one draw per apply, so torch.manual_seed before apply fixes all
            self._seed = resolve_seed(c["seed"])
        alpha = float(c["rank"] if c["alpha"] is None else c["alpha"])
        return SLTrainLinear(linear, c["rank"], alpha, float(c["sparsity"]), layer_generator(self._seed, layer_name))
