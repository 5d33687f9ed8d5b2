"""VeRA — Vector-based Random Matrix Adaptation (Kopiczko et al. 2024, arXiv:2310.11454).

One pair of random low-rank matrices is drawn once, frozen, and **shared by every adapted layer**;
each layer learns only two scaling vectors::

    ΔW = diag(λ_b) · B · diag(λ_d) · A,     A ∈ R^{r×n_max},  B ∈ R^{m_max×r}  (frozen, shared)
    y  = x Wᵀ + b + λ_b ⊙ ((λ_d ⊙ (dropout(x) A_nᵀ)) B_mᵀ)

``n_max`` / ``m_max`` are the largest ``in_features`` / ``out_features`` over the layers of one
``apply`` call; a layer of shape ``m × n`` uses the slices ``A_n = A[:, :n]`` and ``B_m = B[:m]``
(as HF PEFT does). There is no alpha: the scale lives in ``λ_d``.

Initialization, following PEFT's ``VeraConfig`` defaults (and the paper: λ_b = 0, λ_d a constant):

* ``A`` then ``B`` are drawn from one ``torch.Generator`` seeded with ``projection_prng_key``
  (default 0), each Kaiming-uniform for a ReLU gain on its ``fan_in`` (its number of columns):
  ``A ~ U(±√(6/n_max))``, ``B ~ U(±√(6/r))``, generated in float32 on the CPU and then cast to the
  layer's dtype and device. With the same key and the same set of targets this reproduces PEFT's
  ``vera_A`` / ``vera_B`` bit for bit.
* ``λ_b = 0`` (so ``ΔW = 0`` and the model is unchanged at step 0) and ``λ_d = d_initial`` (0.1).
  ``d_initial = 0`` is refused: with ``λ_b = λ_d = 0`` both gradients vanish and nothing trains.

``rank`` has **no upper bound** tied to the layer shape: ``rank(ΔW) ≤ min(r, m, n)`` either way,
and the paper itself uses r larger than the hidden size (r = 1024 on RoBERTa-base, d = 768) — a
larger r only adds entries to λ_d. It must be an int ≥ 1. Default 256, PEFT's default.

Trainable parameters per layer: ``r + m``. The shared ``A``, ``B`` are buffers, not parameters.

**How the pair is shared.** ``Method.adapt`` builds one layer at a time, but ``apply`` calls
``Method.check`` on every target first (that is what makes it all-or-nothing), and one ``Method``
instance serves exactly one ``apply`` call. So :meth:`VeRA.check` records the largest in/out
features, and the first :meth:`VeRA.adapt` draws the pair at that size. The pair lives in one
small module, :class:`VeRAProjections` (two buffers), and **the same module object** is a
submodule of every layer: ``model.to(...)``/``.half()`` convert that module's buffers in place, so
the layers keep sharing one copy after a device or dtype change (sharing bare tensors would not
survive that: every module would convert its own copy). ``state_dict`` lists the pair under every
layer's name; ``torch.save`` stores the shared storage once. Layers of different dtype or device
get one such module per (device, dtype), all cast from the same float32 draw.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .base import AdaptedLinear, LayerCounts, Method, frozen, register, reset_linear_
from .lora import LoRAExport
from .options import Option, dropout_option


class VeRAProjections(nn.Module):
    """The frozen random pair ``A`` (r × n_max) and ``B`` (m_max × r) shared by the layers of one ``apply``."""

    def __init__(self, A: torch.Tensor, B: torch.Tensor, key: int = 0):
        super().__init__()
        self.register_buffer("A", A)
        self.register_buffer("B", B)
        self.key = key  # `projection_prng_key`: the draw can be repeated (reset_parameters)

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """Draw the pair again from ``key`` (the same numbers as at ``apply``; after ``to_empty()``)."""
        A, B = draw_projections(self.A.shape[0], self.B.shape[0], self.A.shape[1], self.key)
        self.A.copy_(A)
        self.B.copy_(B)

    def extra_repr(self) -> str:
        return f"A={tuple(self.A.shape)}, B={tuple(self.B.shape)}, shared"


def draw_projections(rank: int, max_out: int, max_in: int, key: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``A`` (rank × max_in) then ``B`` (max_out × rank), Kaiming-uniform (ReLU gain, fan_in), from one
    CPU generator seeded with ``key``, in float32 — the draw PEFT makes for ``vera_A``, ``vera_B``."""
    generator = torch.Generator(device="cpu").manual_seed(key)
    A = torch.empty(rank, max_in, dtype=torch.float32)
    B = torch.empty(max_out, rank, dtype=torch.float32)
    for t in (A, B):
        nn.init.kaiming_uniform_(t, a=0, mode="fan_in", nonlinearity="relu", generator=generator)
    return A, B


class VeRALinear(AdaptedLinear):
    """``y = x Wᵀ + b + λ_b ⊙ ((λ_d ⊙ (x A_nᵀ)) B_mᵀ)`` with ``W``, ``b``, ``A``, ``B`` frozen."""

    method = "vera"

    def __init__(self, linear: nn.Linear, projections: VeRAProjections, rank: int, d_initial: float, dropout: float):
        super().__init__(linear.in_features, linear.out_features)
        if (
            projections.A.shape[0] != rank
            or projections.A.shape[1] < linear.in_features
            or projections.B.shape[0] < linear.out_features
        ):
            raise ValueError(
                f"shared VeRA matrices A{tuple(projections.A.shape)}, B{tuple(projections.B.shape)} "
                f"cannot serve a {linear.out_features}×{linear.in_features} layer at rank {rank}"
            )
        self.rank = rank
        self.d_initial = d_initial
        weight = linear.weight.detach()
        self.weight = frozen(weight)
        self.bias = None if linear.bias is None else frozen(linear.bias)
        self.projections = projections  # the same module object in every layer of one apply
        self.lambda_d = nn.Parameter(torch.full((rank,), d_initial, dtype=weight.dtype, device=weight.device))
        self.lambda_b = nn.Parameter(torch.zeros(linear.out_features, dtype=weight.dtype, device=weight.device))
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()

    @property
    def vera_A(self) -> torch.Tensor:
        """This layer's slice ``A[:, :n]`` of the shared ``A`` (a view)."""
        return self.projections.A[:, : self.in_features]

    @property
    def vera_B(self) -> torch.Tensor:
        """This layer's slice ``B[:m]`` of the shared ``B`` (a view)."""
        return self.projections.B[: self.out_features]

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """``W``, ``b`` as ``nn.Linear`` does (load pretrained ones afterwards), the shared pair drawn
        again from its key, ``λ_d = d_initial`` and ``λ_b = 0`` — for a meta-device model after
        ``model.to_empty(device=...)``."""
        reset_linear_(self.weight, self.bias)
        self.projections.reset_parameters()
        self.lambda_d.fill_(self.d_initial)
        self.lambda_b.zero_()

    def delta_weight(self) -> torch.Tensor:
        """``ΔW = diag(λ_b) B_m diag(λ_d) A_n`` (out × in)."""
        return (self.lambda_b.unsqueeze(1) * self.vera_B) @ (self.lambda_d.unsqueeze(1) * self.vera_A)

    def effective_weight(self) -> torch.Tensor:
        return self.weight + self.delta_weight()

    def as_lora(self):
        """A plain LoRA of rank r on ``W``: ``B' = diag(λ_b) B_m diag(λ_d)``, ``A' = A_n``, scale 1.

        Chosen over PEFT's own VeRA type because every LoRA runtime loads it and it is exact for any
        rank; the price is storing ``A_n`` and ``B'`` (``r(m+n)`` numbers) instead of the two vectors
        and a seed. (The shared matrices are PEFT's bit for bit, so ``VeraConfig`` with the same
        ``projection_prng_key`` and targets also reproduces this layer from ``λ_b``, ``λ_d``.)"""

        with torch.no_grad():
            B = self.lambda_b.unsqueeze(1) * self.vera_B * self.lambda_d
            return LoRAExport(self.vera_A.detach().clone(), B.detach().contiguous(), 1.0, self.weight.detach())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Two skinny matmuls through the rank-r bottleneck, never the dense ΔW.
        out = F.linear(x, self.weight, self.bias)
        hidden = self.lambda_d * F.linear(self.dropout(x), self.vera_A)
        return out.add_(self.lambda_b * F.linear(hidden, self.vera_B))

    def paper_counts(self) -> LayerCounts:
        """VeRA (Kopiczko et al. 2024, arXiv:2310.11454): frozen ``W`` (mn) plus the trained scaling
        vectors ``λ_d`` (r) and ``λ_b`` (m): ``r + m`` trainable, Adam twice that.

        The random ``A``, ``B`` are shared by all layers (``r(n_max + m_max)`` once per model, buffers;
        the paper notes they can be regenerated from a seed), so they are not a per-layer count:
        ``extra`` is None and the measured buffers show them.
        """
        m, n = self.out_features, self.in_features
        trainable = self.rank + m
        return LayerCounts.adam(m * n + trainable, trainable, None)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, rank={self.rank}, d_initial={self.d_initial:g}"


@register("vera")
class VeRA(Method):
    """Frozen random ``A``, ``B`` shared by all adapted layers; per layer only ``λ_d`` (r) and ``λ_b`` (m) train.

    Options: ``rank`` (256, any int ≥ 1 — not bounded by the layer shape), ``d_initial`` (0.1, the
    initial value of every λ_d; non-zero), ``projection_prng_key`` (0, seeds the shared draw; the
    same key and targets give PEFT's matrices), ``dropout`` on the adapter input (0.0).
    """

    options = {
        # Not bounded by the layer: rank(ΔW) ≤ min(r, m, n) anyway, and the paper uses r > d.
        "rank": Option(256, "r, the rank of the shared random A, B (any size: only λ_d grows)", kind="int", low=1),
        "d_initial": Option(0.1, "the initial value of every entry of λ_d (non-zero; λ_b starts at 0)"),
        "projection_prng_key": Option(
            0,
            "seed of the shared draw of A, B (PEFT's projection_prng_key)",
            kind="int",
            low=0,
            high=2**64,
            high_open=True,
        ),
        "dropout": dropout_option(),
    }
    freezes_others = True
    init_reads_weight = None  # random shared pair and constant vectors: a meta-device model is fine

    def __init__(self, **options):
        super().__init__(**options)
        self._max_out = 0  # largest out/in features over the targets `check` has seen
        self._max_in = 0
        self._drawn = False  # sizes are fixed at the first adapt
        # One shared module per (device, dtype). Only modules are kept, no bare tensors: the layers
        # hold `spec` (this instance), and a tensor kept here would outlive a `model.to(device)`.
        self._shared: dict[tuple[torch.device, torch.dtype], VeRAProjections] = {}

    def check_options(self, where: str) -> None:
        # Zero is the one value no range can exclude: the declaration has checked it is finite.
        if self.config["d_initial"] == 0:
            raise ValueError(
                f"{where}: d_initial=0 is not allowed: with λ_b = λ_d = 0 every "
                f"gradient is zero and nothing trains (PEFT's default is 0.1)"
            )

    def check(self, layer_name: str, linear: nn.Linear) -> None:
        # Nothing about the layer can be refused (any rank, any shape); but every target passes
        # through here before the first adapt, so this is where the shared pair is sized.
        self._max_out = max(self._max_out, linear.out_features)
        self._max_in = max(self._max_in, linear.in_features)

    def projections(self, layer_name: str, linear: nn.Linear) -> VeRAProjections:
        """The shared pair for ``linear``'s device and dtype, drawn on first use."""
        if not self._drawn:
            self._max_out = max(self._max_out, linear.out_features)
            self._max_in = max(self._max_in, linear.in_features)
            self._drawn = True
        elif linear.out_features > self._max_out or linear.in_features > self._max_in:
            raise RuntimeError(
                f"layer {layer_name!r} ({linear.out_features}×{linear.in_features}) is larger than "
                f"the shared VeRA matrices ({self._max_out}×{self._max_in}) already drawn: call "
                f"check() on every target before the first adapt() (spectrallab.apply does)"
            )
        weight = linear.weight
        group = (weight.device, weight.dtype)
        if group not in self._shared:  # the same float32 draw, cast (re-drawing is cheap: r(m+n) numbers)
            A, B = draw_projections(
                self.config["rank"], self._max_out, self._max_in, self.config["projection_prng_key"]
            )
            self._shared[group] = VeRAProjections(
                A.to(device=weight.device, dtype=weight.dtype),
                B.to(device=weight.device, dtype=weight.dtype),
                self.config["projection_prng_key"],
            )
        return self._shared[group]

    def adapt(self, layer_name: str, linear: nn.Linear) -> VeRALinear:
        c = self.config
        return VeRALinear(
            linear, self.projections(layer_name, linear), c["rank"], float(c["d_initial"]), float(c["dropout"])
        )
