"""OLoRA — LoRA started on an orthonormal basis of W's leading columns (Büyükakyüz 2024, arXiv:2406.01775).

The thin QR decomposition ``W = Q R`` (Q: m×k orthonormal columns, R: k×n upper-trapezoidal,
k = min(m, n)) gives the init::

    B = Q[:, :r]            (m × r, orthonormal columns)
    A = R[:r]               (r × n, upper-trapezoidal: A[i, j] = 0 for j < i)
    W_res = W − s · B A     (the frozen base)

``B A = Q_r Q_rᵀ W`` is the projection of W onto the span of its first r columns, so ``W_res +
s·BA = W`` and the pretrained function is unchanged at step 0. This follows HF PEFT's
``init_lora_weights="olora"`` exactly — same sides, no transpose (QR of the ``out × in`` weight),
and **no division by s**: unlike PiSSA, what is split off (``s·BA``, ``W_res``) depends on alpha;
with s = 1 (our default, alpha = r) it is exactly the projection.

The base weight is mutated (it holds ``W_res``): to switch adapters, export a trained layer as a
plain LoRA of rank 2r on the original W with :func:`spectrallab.methods.lora.export_lora`. QR runs
in float32 (bf16/fp16 weights are upcast and the results cast back); non-finite weights raise
``ValueError`` naming the layer before the QR. ``sl.apply(m, "olora", rank=8)`` ≡
``sl.apply(m, "lora", init="olora", rank=8)``, with ``layer.method == "olora"``.

Trainable parameters per layer: ``r(m + n)``, as LoRA.
"""

from __future__ import annotations

import torch

from ..linalg import as_matrix
from .base import register
from .lora import register_init
from .pissa import InitLoRA, wide_dtype


@register_init("olora")
def olora_init(weight: torch.Tensor, rank: int, scale: float):
    """OLoRA: ``B = Q[:, :r]``, ``A = R[:r]`` from ``W = QR``; ``W_res = W − s·BA``."""
    W = as_matrix(weight, "weight").to(wide_dtype(weight.dtype))  # finite-checked, upcast from bf16/fp16
    Q, R = torch.linalg.qr(W)  # reduced: Q m×k, R k×n
    B, A = Q[:, :rank], R[:rank]
    W_res = W - scale * (B @ A)
    dtype = weight.dtype
    return A.to(dtype).contiguous(), B.to(dtype).contiguous(), W_res.to(dtype)


@register("olora")
class OLoRA(InitLoRA):
    """OLoRA: LoRA initialized from the thin QR of W (``B = Q_r``, ``A = R_r``), residual frozen.

    Options: as ``lora`` (``rank``, ``alpha``, ``rslora``, ``dropout``).
    """

    init_name = "olora"
