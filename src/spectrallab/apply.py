"""Model surgery: put a method on a model's linear layers, take it off again, count what trains.

``apply`` is all-or-nothing: it resolves the targets, validates every layer and builds every
replacement *before* it touches the model, so a ``ValueError`` on the tenth layer leaves the first
nine as they were.
"""

from __future__ import annotations

import difflib
import re
from typing import Any, Iterable

from torch import nn

from .methods.base import AdaptedLinear, Method, registered

Targets = None | str | Iterable[str]

# Attribute on the model: names of parameters that `apply` froze, so `merge` can unfreeze them.
_FROZEN_BY_APPLY = "_spectrallab_frozen"


def method_class(name: str) -> type[Method]:
    """The registered :class:`Method` for ``name``; an unknown name suggests the closest one."""
    table = registered()
    if not isinstance(name, str):
        raise TypeError(f"method must be a name (str), one of {', '.join(sorted(table))}; got {name!r}")
    key = name.lower()
    if key not in table:
        close = difflib.get_close_matches(key, table, n=1, cutoff=0.5)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        raise ValueError(f"unknown method {name!r}.{hint} Known methods: {', '.join(sorted(table))}")
    return table[key]


def adapted_layers(model: nn.Module) -> dict[str, AdaptedLinear]:
    """Every adapted layer in ``model``, by module name."""
    return {name: m for name, m in model.named_modules() if isinstance(m, AdaptedLinear)}


def resolve_targets(model: nn.Module, targets: Targets = None) -> dict[str, nn.Module]:
    """The layers ``targets`` selects, by full module name.

    * ``None``: every ``nn.Linear`` (and every already-adapted layer, so that applying twice is
      reported instead of silently doing nothing).
    * a list of strings: module names equal to, or ending in ``.``\\+ an entry (``"fc1"`` matches
      ``"blocks.0.mlp.fc1"``); every entry must match something.
    * a string: a regular expression that must match the *full* module name (as PEFT does).
    """
    candidates = {name: m for name, m in model.named_modules() if isinstance(m, (nn.Linear, AdaptedLinear))}
    if targets is None:
        chosen = candidates
    elif isinstance(targets, str):
        try:
            pattern = re.compile(targets)
        except re.error as err:
            raise ValueError(f"targets={targets!r} is not a valid regular expression: {err}") from None
        chosen = {n: m for n, m in model.named_modules() if pattern.fullmatch(n)}
    elif isinstance(targets, Iterable):
        entries = list(targets)
        if not entries or not all(isinstance(t, str) for t in entries):
            raise TypeError(f"targets must be None, a regex string or a non-empty list of module-name "
                            f"suffixes; got {targets!r}")
        chosen = {}
        for entry in entries:
            hits = {n: m for n, m in model.named_modules() if n == entry or n.endswith("." + entry)}
            if not hits:
                raise ValueError(f"targets entry {entry!r} matches no module. Linear layers in this model: "
                                 f"{_name_list(candidates)}")
            chosen.update(hits)
    else:
        raise TypeError(f"targets must be None, a regex string or a list of module-name suffixes; got {targets!r}")

    if not chosen:
        raise ValueError(f"targets={targets!r} match no layer. Linear layers in this model: {_name_list(candidates)}")
    for name, module in chosen.items():
        if not isinstance(module, (nn.Linear, AdaptedLinear)):
            raise TypeError(f"layer {name or '<model>'!r} is a {type(module).__name__}; methods adapt "
                            f"nn.Linear layers only")
    return chosen


def apply(model: nn.Module, method: str, *, targets: Targets = None, freeze_others: bool | None = None,
          **options: Any) -> nn.Module:
    """Replace the targeted ``nn.Linear`` layers of ``model`` by ``method``'s layers, in place.

    ``options`` are the method's keywords (``rank``, ``alpha``, ``init``, ... — see its docstring).
    ``freeze_others`` freezes every parameter outside the adapted layers; by default fine-tuning
    methods do (LoRA family) and pre-training methods do not (``full``, SST, ...).

    Returns the model (or, when ``model`` itself is an ``nn.Linear``, the adapted layer).
    Bad input raises ``ValueError``/``TypeError`` naming the layer, the value and the allowed range,
    and leaves the model exactly as it was.
    """
    spec = method_class(method)(**options)
    layers = resolve_targets(model, targets)
    for name, layer in layers.items():
        if isinstance(layer, AdaptedLinear):
            raise ValueError(f"layer {name or '<model>'!r} already has method {layer.method!r} applied; "
                             f"call spectrallab.merge(model) first, or choose other targets")
    for name, layer in layers.items():
        spec.check(name or "<model>", layer)
    # Build every replacement before touching the model: a failure here changes nothing.
    replacements = {name: spec.adapt(name or "<model>", layer) for name, layer in layers.items()}
    for new in replacements.values():
        new.spec = spec  # what `optimizer` asks for the method's hooks

    if "" in replacements:  # the model is itself one linear layer
        return replacements[""]
    for name, new in replacements.items():
        _set_submodule(model, name, new)
    if freeze_others if freeze_others is not None else spec.freezes_others:
        inside = {id(p) for layer in adapted_layers(model).values() for p in layer.parameters()}
        newly_frozen = {n for n, p in model.named_parameters() if id(p) not in inside and p.requires_grad}
        for n, p in model.named_parameters():
            if n in newly_frozen:
                p.requires_grad_(False)
        setattr(model, _FROZEN_BY_APPLY, getattr(model, _FROZEN_BY_APPLY, set()) | newly_frozen)
    return model


def merge(model: nn.Module) -> nn.Module:
    """Turn every adapted layer back into a plain ``nn.Linear`` computing the same function.

    Parameters that ``apply`` froze are made trainable again, so the result is an ordinary model.
    """
    if isinstance(model, AdaptedLinear):
        return model.to_linear()
    for name, layer in adapted_layers(model).items():
        _set_submodule(model, name, layer.to_linear())
    params = dict(model.named_parameters())
    for n in getattr(model, _FROZEN_BY_APPLY, set()):
        if n in params:
            params[n].requires_grad_(True)
    if hasattr(model, _FROZEN_BY_APPLY):
        delattr(model, _FROZEN_BY_APPLY)
    return model


def trainable_parameters(model: nn.Module) -> int:
    """Number of scalars that receive gradients (``requires_grad=True``), shared tensors once."""
    seen, total = set(), 0
    for p in model.parameters():
        if p.requires_grad and id(p) not in seen:
            seen.add(id(p))
            total += p.numel()
    return total


def _set_submodule(model: nn.Module, name: str, module: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, module)


def _name_list(modules: dict[str, nn.Module], limit: int = 12) -> str:
    names = [n or "<model>" for n in modules]
    if not names:
        return "(none)"
    shown = ", ".join(names[:limit])
    return shown + (f", ... ({len(names)} in all)" if len(names) > limit else "")

