"""PiSSA and MiLoRA — LoRA started on singular directions of W instead of at zero.

Both split the pretrained weight with its SVD ``W = U diag(S) Vh`` (S descending) and move r of its
singular triplets into the trainable factors; the rest stays frozen as a residual::

    S_r = S[idx] / s                         (s = alpha/r, or alpha/√r with rslora)
    A   = diag(√S_r) Vh[idx]                 (r × n)
    B   = U[:, idx] diag(√S_r)               (m × r)
    W_res = W − s · B A                      (the frozen base)

so ``W_res + s·BA = W``: the model computes the pretrained function at step 0, but, unlike LoRA,
both A and B are non-zero and receive gradients from the first step.

* **PiSSA** (``"pissa"``, Meng, Wang & Zhang 2024, arXiv:2404.02948, "Principal Singular values and
  Singular vectors Adaptation"): ``idx`` = the **top** r directions, so training starts on the
  principal part of W and the frozen residual holds the small rest. Numerically the same as HF
  PEFT's ``init_lora_weights="pissa"``.
* **MiLoRA** (``"milora"``, Wang et al. 2025, arXiv:2406.09044, NAACL 2025): ``idx`` = the
  **last** r directions (the minor singular components); the principal part stays frozen and
  training starts in the subspace orthogonal to it.

**Scaling (one definition, both methods).** The singular values are divided by ``s`` before the
square root, so ``s·BA = U[:, idx] diag(S[idx]) Vh[idx]`` and ``W_res`` are the same for every
``alpha`` (and for rslora): alpha only rescales the factors (``A, B ∝ 1/√s``), i.e. how fast they
move, never what is split off. This is PEFT's PiSSA convention. MiLoRA's paper trains with
``alpha = r`` (s = 1) — our default when ``alpha`` is not given, so the defaults reproduce the
paper — and the authors' initialization script divides by the scaling in the same way so that
alpha ≠ r also stays exact; we use that convention for MiLoRA too.

**Fast PiSSA** (randomized SVD): ``sl.apply(model, "pissa", rank=r, svd="randomized", n_iter=4,
oversample=10)`` uses :func:`spectrallab.linalg.randomized_svd` (Halko, Martinsson & Tropp:
``oversample`` extra sketch columns, ``n_iter`` power iterations) instead of the full SVD. PEFT's
``init_lora_weights="pissa_niter_K"`` is the same algorithm with ``n_iter=K, oversample=0``
(``torch.svd_lowrank`` with q = r). Its error shrinks like ``(σ_{r+1}/σ_r)^{2·n_iter+1}``: a
clear spectral gap at r makes it essentially exact, a flat spectrum does not. Random numbers come
from torch's global generator (seed with ``torch.manual_seed``). MiLoRA has no randomized variant:
a sketch finds the largest directions, not the smallest.

**Equivalences.** ``sl.apply(m, "pissa", rank=8)`` builds exactly what
``sl.apply(m, "lora", init="pissa", rank=8)`` builds (likewise ``"milora"``); the method name is
what ``layer.method`` records, and only the named methods take the ``svd`` options.

**Traps.** The base weight is *mutated* (it holds ``W_res``), so the adapter cannot be switched off
or swapped by dropping A and B; :func:`spectrallab.methods.lora.export_lora` rewrites a trained
layer as a plain LoRA of rank 2r on the original W (``s(BA − B₀A₀) = s[B | B₀][A ; −A₀]``).
PiSSA's factors start large, so its first gradients are large and it is learning-rate sensitive
(use a smaller learning rate than for LoRA). For MiLoRA, zero singular values (rank-deficient W)
give A = B = 0 rows/columns that never receive a gradient. SVDs run in float32 (bf16/fp16 weights
are upcast; results are cast back), and non-finite weights raise ``ValueError`` naming the layer
before any SVD. The layer given to ``apply`` is never modified.

Trainable parameters per layer: ``r(m + n)``, as LoRA.
"""

from __future__ import annotations

from contextvars import ContextVar
from typing import Any, ClassVar, NamedTuple

import torch
from torch import nn

from ..linalg import as_matrix, svd
from .base import register
from .lora import LoRA, LoRALinear, register_init
from .options import Option


class _SVDSettings(NamedTuple):
    method: str = "exact"
    n_iter: int = 4
    oversample: int = 10


# How the "pissa" init factorizes W. The init table's functions take (weight, rank, scale) only,
# so the "pissa" method passes its svd options to the init through this variable for the duration
# of one `adapt` call; `apply(..., "lora", init="pissa")` always gets the exact SVD.
_SVD_SETTINGS: ContextVar[_SVDSettings] = ContextVar(
    "spectrallab_pissa_svd",
    default=_SVDSettings(),  # noqa: B039 (a NamedTuple: immutable)
)


def wide_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype a factorization runs in: float32, or float64 for float64 weights."""
    return torch.promote_types(dtype, torch.float32)


def singular_split(weight: torch.Tensor, rank: int, scale: float, part: str):
    """``(A, B, W_res)`` for the top (PiSSA) or bottom (MiLoRA) ``rank`` singular triplets of W."""
    W = as_matrix(weight, "weight").to(wide_dtype(weight.dtype))  # finite-checked, upcast from bf16/fp16
    if part == "top":
        settings = _SVD_SETTINGS.get()
        U, S, Vh = svd(
            W,
            rank,
            method=settings.method,
            n_iter=settings.n_iter,
            oversample=settings.oversample,
            check_finite=False,  # as_matrix just proved W finite
        )
    else:
        U, S, Vh = svd(W, check_finite=False)
        U, S, Vh = U[:, -rank:], S[-rank:], Vh[-rank:]
    root = (S / scale).sqrt()
    A = root[:, None] * Vh
    B = U * root
    # W − s·BA in one pass over W (gemm accumulating into a copy of W): no m × n temporaries for
    # BA and s·BA, which at 4096² cost more than the randomized SVD's remaining work.
    W_res = torch.addmm(W, B, A, alpha=-scale)
    dtype = weight.dtype
    return A.to(dtype).contiguous(), B.to(dtype).contiguous(), W_res.to(dtype)


@register_init("pissa", spectrum_part="top")
def pissa_init(weight: torch.Tensor, rank: int, scale: float):
    """PiSSA: the top ``rank`` singular triplets of W into BA, ``S_r / s`` split as ``√·√``."""
    return singular_split(weight, rank, scale, "top")


@register_init("milora", spectrum_part="bottom")
def milora_init(weight: torch.Tensor, rank: int, scale: float):
    """MiLoRA: the last (smallest) ``rank`` singular triplets of W into BA, scaled as PiSSA."""
    return singular_split(weight, rank, scale, "bottom")


class InitLoRA(LoRA):
    """LoRA whose init is fixed by the method's name (``sl.apply(m, name)`` ≡ ``lora`` with ``init=name``).

    Same options as ``lora`` except ``init``; the weight must be finite (checked before any
    factorization, naming the layer).
    """

    init_name: ClassVar[str] = "default"
    options = {k: v for k, v in LoRA.options.items() if k != "init"}

    def __init__(self, **options: Any):
        super().__init__(**options)
        self.config["init"] = self.init_name

    # The finiteness check is LoRA.check's: it runs for every init that factorizes W, this one too.


@register("pissa")
class PiSSA(InitLoRA):
    """PiSSA: LoRA on the top-r singular triplets of W, the rest frozen as a residual (Meng et al. 2024).

    Options: as ``lora`` (``rank``, ``alpha``, ``rslora``, ``dropout``) plus ``svd`` ("exact" |
    "randomized"), and for the randomized SVD ``n_iter`` (power iterations, 4) and ``oversample``
    (extra sketch columns, 10). PEFT's ``"pissa_niter_K"`` = ``svd="randomized", n_iter=K,
    oversample=0``.
    """

    init_name = "pissa"
    options = {
        **InitLoRA.options,
        "svd": Option(
            "exact",
            "how the top-r triplets are found: the full SVD or a randomized one (Halko et al.)",
            kind="choice",
            choices=("exact", "randomized"),
        ),
        "n_iter": Option(4, "power iterations of the randomized SVD (PEFT's pissa_niter_K: K)", kind="int", low=0),
        "oversample": Option(10, "extra sketch columns of the randomized SVD (PEFT: 0)", kind="int", low=0),
    }

    def adapt(self, layer_name: str, linear: nn.Linear) -> LoRALinear:
        c = self.config
        token = _SVD_SETTINGS.set(_SVDSettings(c["svd"], c["n_iter"], c["oversample"]))
        try:
            return super().adapt(layer_name, linear)
        finally:
            _SVD_SETTINGS.reset(token)


@register("milora")
class MiLoRA(InitLoRA):
    """MiLoRA: LoRA on the last (minor) r singular triplets of W, the principal part frozen (Wang et al. 2025).

    Options: as ``lora`` (``rank``, ``alpha``, ``rslora``, ``dropout``); always the exact SVD.
    """

    init_name = "milora"
