"""Model surgery: put a method on a model's linear layers, take it off again, count what trains.

``apply`` is all-or-nothing: it resolves the targets, validates every layer and builds every
replacement *before* it touches the model, so a ``ValueError`` on the tenth layer leaves the first
nine as they were.

Linear layers are ``nn.Linear`` and transformers' ``Conv1D`` (GPT-2's, weight stored in × out):
methods see a Conv1D as the equivalent ``nn.Linear`` and ``merge`` gives the Conv1D back.

Shared weights. A parameter used at two places (GPT-2's ``lm_head.weight`` *is* the token
embedding ``transformer.wte.weight``) cannot be adapted at one of them: a method that keeps its own
copy of the weight (LoRA's frozen base, SST's factors) would silently untie the two, and one that
trains it in place (``full``, GaLore) would hand the optimizer the same storage twice. So a layer
whose weight or bias is also reached elsewhere is left out of the targets (one warning names the
ties), and naming it exactly is an error. A *module* used at two places is one layer: it is
adapted once and the adapted layer is put at every place.
"""

from __future__ import annotations

import difflib
import re
import warnings
from collections.abc import Iterable
from typing import Any

import torch
from torch import nn

from .methods.base import AdaptedLinear, Method, as_linear, is_conv1d, registered
from .methods.options import OptionTable, table
from .shards import is_sharded

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


def options_table(method: str | type[Method]) -> OptionTable:
    """A method's options — name, default, allowed values, help — from its declarations: a table in a
    notebook, aligned text when printed. ``method`` is a registered name or a :class:`Method` subclass."""
    cls = method if isinstance(method, type) and issubclass(method, Method) else method_class(method)
    return OptionTable(table(cls.options), title=f"options of {cls.name!r}")


def adapted_layers(model: nn.Module) -> dict[str, AdaptedLinear]:
    """Every adapted layer in ``model``, by module name."""
    return {name: m for name, m in model.named_modules() if isinstance(m, AdaptedLinear)}


def resolve_targets(model: nn.Module, targets: Targets = None) -> dict[str, nn.Module]:
    """The layers ``targets`` selects, by full module name.

    * ``None``: every ``nn.Linear`` and ``Conv1D`` (and every already-adapted layer, so that
      applying twice is reported instead of silently doing nothing).
    * a list of strings: module names equal to, or ending in ``.``\\+ an entry (``"fc1"`` matches
      ``"blocks.0.mlp.fc1"``); every entry must match something.
    * a string: a regular expression that must match the *full* module name (as PEFT does).

    A module used at several places is selected once, under its first name, if any of its names
    matches. A layer whose weight or bias is shared with another place (a tied embedding) is left
    out with one warning, or refused with a ``ValueError`` when ``targets`` names it exactly.
    """
    places = _module_names(model)
    candidates = {names[0]: m for m, names in places.values() if _adaptable(m)}
    every_name = [(n, m) for m, names in places.values() for n in names]
    explicit: set[str] = set()  # names given literally: a tie there is an error, not a warning
    if targets is None:
        chosen = dict(candidates)
    elif isinstance(targets, str):
        try:
            pattern = re.compile(targets)
        except re.error as err:
            raise ValueError(f"targets={targets!r} is not a valid regular expression: {err}") from None
        chosen = {places[id(m)][1][0]: m for n, m in every_name if pattern.fullmatch(n)}
        explicit = {targets}
    elif isinstance(targets, Iterable):
        entries = list(targets)
        if not entries or not all(isinstance(t, str) for t in entries):
            raise TypeError(
                f"targets must be None, a regex string or a non-empty list of module-name suffixes; got {targets!r}"
            )
        chosen = {}
        for entry in entries:
            hits = {places[id(m)][1][0]: m for n, m in every_name if n == entry or n.endswith("." + entry)}
            if not hits:
                raise ValueError(
                    f"targets entry {entry!r} matches no module. Linear layers in this model: {_name_list(candidates)}"
                )
            chosen.update(hits)
        explicit = set(entries)
    else:
        raise TypeError(f"targets must be None, a regex string or a list of module-name suffixes; got {targets!r}")

    if not chosen:
        raise ValueError(f"targets={targets!r} match no layer. Linear layers in this model: {_name_list(candidates)}")
    for name, module in chosen.items():
        if not _adaptable(module):
            raise TypeError(
                f"layer {name or '<model>'!r} is a {type(module).__name__}; methods adapt "
                f"nn.Linear and transformers' Conv1D layers only"
            )

    ties = _ties(model, chosen, places)
    for name, tie in ties.items():
        if explicit & set(places[id(chosen[name])][1]):
            raise ValueError(
                f"layer {name or '<model>'!r}: {tie} (one tensor used at both places). A method "
                "would untie them (its own copy of the weight) or update the shared tensor twice. "
                "Untie it first (Hugging Face: build with config.tie_word_embeddings=False, or "
                "give the layer its own copy: layer.weight = nn.Parameter(layer.weight.detach()"
                ".clone())), or leave it out of the targets"
            )
    if ties:
        warnings.warn(
            f"{'; '.join(ties.values())}; left out of the targets (adapting a tied weight would "
            "untie it or update it twice)",
            stacklevel=3,
        )
        chosen = {n: m for n, m in chosen.items() if n not in ties}
        if not chosen:
            raise ValueError(
                f"targets={targets!r} match only layers with tied weights ({', '.join(ties)}), "
                "which are left out; untie them first or choose other targets"
            )
    return chosen


def apply(
    model: nn.Module, method: str, *, targets: Targets = None, freeze_others: bool | None = None, **options: Any
) -> nn.Module:
    """Replace the targeted ``nn.Linear`` (and ``Conv1D``) layers of ``model`` by ``method``'s layers, in place.

    ``options`` are the method's keywords (``rank``, ``alpha``, ``init``, ... — see its docstring).
    ``freeze_others`` freezes every parameter outside the adapted layers; by default fine-tuning
    methods do (LoRA family) and pre-training methods do not (``full``, SST, ...).

    A model on the meta device (shapes, no values; ``with torch.device("meta"): ...``) is refused,
    naming the layer, by methods whose initialization reads the weight (SVD, QR, DoRA's norms); with
    the others, ``model.to_empty(device=...)`` and then each adapted layer's ``reset_parameters()``
    initialize the adapted layers (load pretrained base weights after that, for fine-tuning).

    Returns the model (or, when ``model`` itself is one linear layer, the adapted layer).
    Bad input raises ``ValueError``/``TypeError`` naming the layer, the value and the allowed range,
    and leaves the model exactly as it was.
    """
    spec = method_class(method)(**options)
    layers = resolve_targets(model, targets)
    for name, layer in layers.items():
        if isinstance(layer, AdaptedLinear):
            raise ValueError(
                f"layer {name or '<model>'!r} already has method {layer.method!r} applied; "
                f"call spectrallab.merge(model) first, or choose other targets"
            )
    reason = spec.needs_weight_values()
    for name, layer in layers.items():
        if reason is not None and layer.weight.is_meta:
            raise ValueError(
                f"layer {name or '<model>'!r} is on the meta device (a shape without values) and "
                f"method {spec.name!r} cannot be initialized there: {reason}. Load the weights "
                f"first (model.to_empty(device=...) then load_state_dict(...)), then apply"
            )
    # The options once (they do not depend on the layer), then each layer.
    spec.validate_options([name or "<model>" for name in layers])
    # Methods are written for nn.Linear: a Conv1D is shown as the equivalent nn.Linear.
    linears = {name: as_linear(layer) for name, layer in layers.items()}
    for name, linear in linears.items():
        spec.check(name or "<model>", linear)
    # Build every replacement before touching the model: a failure here changes nothing.
    replacements = {
        name: spec.build(name or "<model>", linear, type(layers[name]) if is_conv1d(layers[name]) else None)
        for name, linear in linears.items()
    }

    if "" in replacements:  # the model is itself one linear layer
        return replacements[""]
    places = _module_names(model)
    for name, new in replacements.items():
        for place in places[id(layers[name])][1]:  # a module used at two places is replaced at both
            _set_submodule(model, place, new)
    if freeze_others if freeze_others is not None else spec.freezes_others:
        inside = {id(p) for layer in adapted_layers(model).values() for p in layer.parameters()}
        newly_frozen = {n for n, p in model.named_parameters() if id(p) not in inside and p.requires_grad}
        for n, p in model.named_parameters():
            if n in newly_frozen:
                p.requires_grad_(False)
        setattr(model, _FROZEN_BY_APPLY, getattr(model, _FROZEN_BY_APPLY, set()) | newly_frozen)
    return model


def merge(model: nn.Module) -> nn.Module:
    """Turn every adapted layer back into a plain ``nn.Linear`` (or ``Conv1D``, where it was one)
    computing the same function.

    Parameters that ``apply`` froze are made trainable again, so the result is an ordinary model.
    """
    if isinstance(model, AdaptedLinear):
        return model.to_plain()
    places = _module_names(model)
    for layer in adapted_layers(model).values():
        plain = layer.to_plain()
        for place in places[id(layer)][1]:
            _set_submodule(model, place, plain)
    params = dict(model.named_parameters())
    for n in getattr(model, _FROZEN_BY_APPLY, set()):
        if n in params:
            params[n].requires_grad_(True)
    if hasattr(model, _FROZEN_BY_APPLY):
        delattr(model, _FROZEN_BY_APPLY)
    return model


def trainable_parameters(model: nn.Module) -> int:
    """Number of scalars that receive gradients (``requires_grad=True``), shared tensors once
    (one Parameter at two places, or two Parameters on the same memory)."""
    seen, total = set(), 0
    for p in model.parameters():
        key = memory_key(p)
        if p.requires_grad and key not in seen:
            seen.add(key)
            total += p.numel()
    return total


def memory_key(t: torch.Tensor) -> tuple:
    """Equal for two tensors that are the same numbers in memory (the same storage, offset, shape,
    strides and dtype); distinct views of one buffer (disjoint slices) get different keys. Meta and
    empty tensors have no memory to compare: their identity is the key. A DTensor (an FSDP2 shard) is
    keyed by its local tensor: the wrapper has no storage of its own."""
    if is_sharded(t):
        t = t.to_local()
    if t.is_meta or t.numel() == 0:
        return ("id", id(t))
    return (t.device, t.untyped_storage().data_ptr(), t.storage_offset(), tuple(t.shape), t.stride(), t.dtype)


def _adaptable(module: nn.Module) -> bool:
    return isinstance(module, (nn.Linear, AdaptedLinear)) or is_conv1d(module)


def _module_names(model: nn.Module) -> dict[int, tuple[nn.Module, list[str]]]:
    """Every module by identity, with all the names it is reached at (the first is its own name)."""
    places: dict[int, tuple[nn.Module, list[str]]] = {}
    for name, module in model.named_modules(remove_duplicate=False):
        places.setdefault(id(module), (module, []))[1].append(name)
    return places


def _ties(model: nn.Module, layers: dict[str, nn.Module], places) -> dict[str, str]:
    """For each layer whose own weight or bias is also reached outside it: "<its name> is tied to <other>"."""
    owners: dict[tuple, list[str]] = {}
    for name, p in model.named_parameters(remove_duplicate=False):
        owners.setdefault(memory_key(p), []).append(name)
    ties = {}
    for name, layer in layers.items():
        if isinstance(layer, AdaptedLinear):
            continue
        own = set(places[id(layer)][1])
        for pname, p in layer.named_parameters(recurse=False):
            others = [n for n in owners.get(memory_key(p), []) if n.rpartition(".")[0] not in own]
            if others:
                ties[name] = f"{_join(name, pname)} is tied to {', '.join(others)}"
                break
    return ties


def _join(prefix: str, name: str) -> str:
    return f"{prefix}.{name}" if prefix else name


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
