"""``full``: ordinary dense training — the baseline every other method is measured against.

The layer keeps a trainable dense ``W`` (out × in) and bias, exactly like ``nn.Linear``. It still
becomes an :class:`~spectrallab.methods.base.AdaptedLinear` so that spectra, merging, run records
and comparisons treat the baseline the same way as every method. Parameters outside the targeted
layers stay trainable (``freezes_others = False``): full training trains the whole model.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .base import AdaptedLinear, LayerCounts, Method, register, reset_linear_


class DenseLinear(AdaptedLinear):
    method = "full"

    def __init__(self, linear: nn.Linear):
        super().__init__(linear.in_features, linear.out_features)
        # Shares storage with the original layer: applying `full` costs no memory.
        self.weight = nn.Parameter(linear.weight.detach(), requires_grad=True)
        self.bias = None if linear.bias is None else nn.Parameter(linear.bias.detach(), requires_grad=True)

    def effective_weight(self) -> torch.Tensor:
        return self.weight

    def reset_parameters(self) -> None:
        """``nn.Linear``'s initialization (after ``model.to_empty()`` on a meta-device model)."""
        reset_linear_(self.weight, self.bias)

    def paper_counts(self) -> LayerCounts:
        """Dense training: ``mn`` weights, all trained; Adam keeps two moments per weight, ``2mn``."""
        return LayerCounts.dense(self.out_features, self.in_features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight, self.bias)


@register("full")
class Full(Method):
    """Dense training of every targeted weight (no options)."""

    options = {}
    freezes_others = False
    init_reads_weight = None  # works on a meta-device model: reset_parameters() initializes the layer

    def adapt(self, layer_name: str, linear: nn.Linear) -> DenseLinear:
        return DenseLinear(linear)
