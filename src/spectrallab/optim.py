"""``optimizer(model)``: a standard torch optimizer over what trains, plus each method's hooks.

The result *is* a ``torch.optim.Optimizer`` (AdamW unless ``optimizer=`` says otherwise), so a
hand-written loop, an LR scheduler and ``state_dict`` all work as usual. Methods that change how
optimization works (SST's resampling, ReLoRA's restarts, GaLore's projection, SORSA's regularizer)
install step hooks on it through :meth:`Method.attach_optimizer`; a loop that calls
``opt.step()`` therefore runs the real algorithm.
"""

from __future__ import annotations

import warnings
from typing import Any

import torch
from torch import nn

from .apply import adapted_layers, memory_key
from .optim_hooks import add_lr_multiplier, add_step_check, effective_lr, install, lr_multiplier

__all__ = ["optimizer", "OPTIMIZERS", "add_lr_multiplier", "add_step_check", "effective_lr", "lr_multiplier"]

OPTIMIZERS: dict[str, type[torch.optim.Optimizer]] = {
    "adamw": torch.optim.AdamW,
    "adam": torch.optim.Adam,
    "sgd": torch.optim.SGD,
}


def optimizer(
    model: nn.Module, lr: float = 1e-3, optimizer: str | type[torch.optim.Optimizer] = "adamw", **kwargs: Any
) -> torch.optim.Optimizer:
    """Build the optimizer for ``model``'s trainable parameters and attach every method's hooks.

    ``optimizer`` is a name (``"adamw"``, ``"adam"``, ``"sgd"``) or an optimizer class; other
    keywords (``weight_decay``, ``betas``, ``momentum`` ...) go to it unchanged.

    Two method hooks, in this order (see :class:`~spectrallab.methods.base.Method`):

    1. ``optimizer_groups(layers, optimizer_class)`` — before the optimizer exists: a method may put
       its parameters in param groups with their own options and choose the optimizer class
       (GaLore: its weights in a projected group of a ``GaLoreAdamW``; ``optimizer="sgd"`` is then
       refused). Parameters in no method group form one ordinary group, listed first.
    2. ``attach_optimizer(optimizer, layers)`` — after: step hooks (SORSA's regularizer, ...).
    """
    if isinstance(optimizer, str):
        if optimizer.lower() not in OPTIMIZERS:
            raise ValueError(
                f"optimizer={optimizer!r} is not one of {', '.join(OPTIMIZERS)} (or pass an optimizer class)"
            )
        cls = OPTIMIZERS[optimizer.lower()]
    elif isinstance(optimizer, type) and issubclass(optimizer, torch.optim.Optimizer):
        cls = optimizer
    else:
        raise TypeError(f"optimizer must be a name or a torch.optim.Optimizer subclass, got {optimizer!r}")
    if not isinstance(lr, (int, float)) or isinstance(lr, bool) or not lr > 0:
        raise ValueError(f"lr={lr!r} is outside the allowed range (0, inf)")
    params, aliases = _distinct_trainable(model)
    if not params:
        raise ValueError(
            "the model has no trainable parameters (every requires_grad is False); "
            "apply a method first or unfreeze something"
        )

    # Group adapted layers by the method instance that made them; each method hooks in once.
    by_spec: dict[int, tuple[Any, dict]] = {}
    for name, layer in adapted_layers(model).items():
        spec = getattr(layer, "spec", None)
        if spec is not None:
            by_spec.setdefault(id(spec), (spec, {}))[1][name] = layer

    trainable = {id(p) for p in params}
    claimed: dict[int, str] = {}
    method_groups: list[dict[str, Any]] = []
    for spec, layers in by_spec.values():
        cls, groups = spec.optimizer_groups(layers, cls)
        for group in groups:
            mine = []
            for p in group["params"]:
                p = aliases.get(id(p), (p,))[0]  # a second Parameter on the same memory: the first one
                if id(p) not in trainable:
                    continue  # frozen by the user: nothing to optimize
                if id(p) in claimed:
                    raise ValueError(
                        f"method {spec.name!r} puts a parameter of shape {tuple(p.shape)} in an "
                        f"optimizer group that method {claimed[id(p)]!r} already claimed"
                    )
                claimed[id(p)] = spec.name
                mine.append(p)
            if mine:
                method_groups.append({**group, "params": mine})
    ordinary = [p for p in params if id(p) not in claimed]
    opt = cls(([{"params": ordinary}] if ordinary else []) + method_groups, lr=lr, **kwargs)
    if aliases:
        _sum_alias_gradients(opt, list(aliases.values()))

    install(opt)  # before any method hook: checks and LR scaling must come first
    for spec, layers in by_spec.values():
        spec.install_optimizer_hooks(opt, layers)  # attach_optimizer, and marks the layers hooked
    return opt


# -- each parameter once ----------------------------------------------------------------------------
#
# `model.parameters()` lists a Parameter used at two places once. Two *different* Parameters on the
# same memory (what `nn.Parameter(other.detach())` makes) would be listed twice, and AdamW would
# update those numbers twice per step with two separate moment estimates. The optimizer gets the
# first of them only; the others' gradients are added to its gradient before each step, which is
# what autograd does for one Parameter used at two places.


def _distinct_trainable(model: nn.Module) -> tuple[list[nn.Parameter], dict[int, tuple[nn.Parameter, nn.Parameter]]]:
    """The trainable parameters, one per memory, and ``{id(duplicate): (kept, duplicate)}``."""
    kept: dict[tuple, tuple[str, nn.Parameter]] = {}
    aliases: dict[int, tuple[nn.Parameter, nn.Parameter]] = {}
    params = []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        key = memory_key(p)
        if key in kept:
            first_name, first = kept[key]
            aliases[id(p)] = (first, p)
            warnings.warn(
                f"parameters {first_name!r} and {name!r} are two Parameters on the same memory; the "
                f"optimizer updates it once, with their gradients summed",
                stacklevel=3,
            )
            continue
        kept[key] = (name, p)
        params.append(p)
    return params, aliases


def _sum_alias_gradients(opt: torch.optim.Optimizer, pairs: list[tuple[nn.Parameter, nn.Parameter]]) -> None:
    def add_duplicates(optimizer, args, kwargs):
        for first, duplicate in pairs:
            if duplicate.grad is None:
                continue
            if first.grad is None:
                first.grad = duplicate.grad.clone()
            else:
                first.grad.add_(duplicate.grad)
            duplicate.grad = None

    opt.register_step_pre_hook(add_duplicates)  # first: every method hook sees the summed gradient
