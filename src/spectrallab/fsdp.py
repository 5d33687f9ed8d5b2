"""FSDP2 for adapted models: shard the parameters across processes, and checkpoint whole.

``torch.distributed.fsdp.fully_shard`` (FSDP2) splits every parameter of a module into one shard per
process (a ``DTensor``, row-wise), gathers the whole of each for the forward and backward pass, and
reduce-scatters the gradients, so each process keeps and optimizes only its own rows. ::

    import torch.distributed as dist
    from spectrallab import fsdp

    dist.init_process_group("gloo")            # "nccl" on GPUs; one process per device
    model = sl.apply(model, "sst", rank=8)      # apply first: init-time SVDs see whole matrices
    fsdp.shard(model)                           # each adapted layer, then the root
    opt = sl.optimizer(model, lr=1e-3)          # after shard: the optimizer must hold the shards
    ...                                         # the usual loop, each rank on its part of the batch
    fsdp.save_checkpoint("run.pt", model, opt)  # whole (unsharded) tensors, written by rank 0
    fsdp.load_checkpoint("run.pt", model, opt)  # in a new run, after shard and sl.optimizer

Each rank runs the same loop on its own slice of the batch; FSDP averages the gradients, so a step
equals one process's step on the concatenated batch, up to float rounding (``tests/test_fsdp.py``).

**Which methods.** A method whose algorithm is its forward pass (LoRA and its inits — PiSSA, MiLoRA,
OLoRA —, DoRA, VeRA, full, ...) trains as in one process: FSDP hands the forward whole tensors.
Methods with optimizer-side work declare whether it handles shards
(:meth:`~spectrallab.methods.base.Method.fsdp_refusal`): SST's swaps and re-SVD (at a period's
end), GaLore's projection from the gradient's SVD (every T steps) and SORSA's regularizer gather
what they need whole, compute the same on every rank and keep each rank's shard
(:mod:`spectrallab.shards`); the work of every other step — SST's renormalization, GaLore's
projected gradient — runs on each rank's rows and exchanges only r-sized results. ReLoRA's merge is
refused. :func:`shard` asks every method on the model before it touches anything, and
refuses with the method, its layers and the reason. Init-time factorizations (PiSSA's and SST's
SVDs) run in ``sl.apply``, before sharding, on whole matrices — so apply first, then shard.

FSDP2 warns (``UserWarning``) when a wrapped layer returns a view, as adapted layers do: an in-place
op on that output would skip FSDP's backward hook. Models that add to a layer's output out of place
(``x = x + attn(x)``, the tiny GPT, transformers' blocks) are unaffected.

**Checkpoints** are whole tensors, the same keys as one process's ``model.state_dict()``
(``torch.distributed.checkpoint.state_dict`` with ``full_state_dict=True, cpu_offload=True``), and
the optimizer's state is in torch's own layout, as one process's ``optimizer.state_dict()``
(parameters numbered across the groups; that API names them instead, and the names are converted
on the way out and back: :func:`spectrallab.checkpoint.optimizer_state_by_index`). So a run trained
sharded resumes in one process or under DDP, and the other way round. Loading runs torch's state
initialization (one step with zero gradients at lr 0) with spectrallab's step hooks paused, so it
moves no clock (SST's ``steps_taken``) and starts no period.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from .apply import adapted_layers
from .checkpoint import atomic_save, optimizer_state_by_index, optimizer_state_by_name
from .methods.base import Method
from .shards import is_sharded

__all__ = ["shard", "refusals", "full_state_dicts", "load_full_state_dicts", "save_checkpoint", "load_checkpoint"]

Units = Callable[[str, nn.Module], bool]


def refusals(model: nn.Module) -> dict[str, tuple[Method, list[str]]]:
    """``{reason: (method, layer names)}`` for every method on ``model`` that cannot train under FSDP2."""
    found: dict[int, tuple[Method, list[str]]] = {}
    for name, layer in adapted_layers(model).items():
        spec = getattr(layer, "spec", None)
        if spec is not None:
            found.setdefault(id(spec), (spec, []))[1].append(name)
    out = {}
    for spec, names in found.values():
        reason = spec.fsdp_refusal()
        if reason is not None:
            out[reason] = (spec, names)
    return out


def _shown(names: list[str]) -> str:
    return ", ".join(names[:4]) + (f", ... ({len(names)} layers)" if len(names) > 4 else "")


def shard(
    model: nn.Module,
    *,
    mesh=None,
    units: str | Units = "adapted",
    **fully_shard_options: Any,
) -> nn.Module:
    """Apply FSDP2 (``fully_shard``) to ``model`` in place: each unit, then the root; returns ``model``.

    * ``mesh``: a ``DeviceMesh`` (default: one dimension over every process of the default group, on
      the device type of the model's parameters).
    * ``units``: which submodules get their own ``fully_shard`` (their parameters gathered together,
      one all-gather per unit): ``"adapted"`` (every adapted layer, the default), ``"blocks"`` (every
      item of an ``nn.ModuleList`` — a transformer's blocks), or a predicate ``(name, module) → bool``.
      Everything else goes with the root.
    * other keywords go to ``fully_shard`` (``reshard_after_forward``, ``mp_policy``, ...).

    Refused before anything is changed (``ValueError``): no process group, a model already sharded,
    a method on the model that cannot train sharded (named with its layers and the reason). Build
    the optimizer *after* this (``sl.optimizer(model)``): sharding replaces the parameters.
    """
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    if not dist.is_available() or not dist.is_initialized():
        raise ValueError(
            "spectrallab.fsdp.shard needs a torch.distributed process group: call "
            "torch.distributed.init_process_group(...) first (one process per device, e.g. with torchrun)"
        )
    already = [name for name, p in model.named_parameters() if is_sharded(p)]
    if already:
        raise ValueError(f"the model is already sharded (parameter {already[0]!r} is a DTensor); shard it once")
    refused = refusals(model)
    if refused:
        lines = [
            f"method {spec.name!r} (layers {_shown(names)}): {reason}; FSDP2 is not supported for "
            f"{spec.name}, use DDP (torch.nn.parallel.DistributedDataParallel)"
            for reason, (spec, names) in refused.items()
        ]
        raise ValueError("cannot shard this model with FSDP2: " + "; ".join(lines))
    # fully_shard refuses a 0-d parameter — after it has sharded the units before it. Checked first.
    layers = adapted_layers(model)
    for name, p in model.named_parameters():
        if p.dim() == 0:
            owner = max((layer for layer in layers if name.startswith(f"{layer}.")), key=len, default=None)
            whose = "" if owner is None else f" (layer {owner!r}, method {getattr(layers[owner], 'method', '?')!r})"
            raise ValueError(
                f"cannot shard this model with FSDP2: parameter {name!r}{whose} is a scalar (0-d), which "
                "FSDP2's fully_shard cannot shard; use DDP (torch.nn.parallel.DistributedDataParallel), "
                "or make it a 1-element vector"
            )
    if isinstance(units, str):
        if units not in ("adapted", "blocks"):
            raise ValueError(
                f"units={units!r} is not one of 'adapted', 'blocks' (or a predicate (name, module) → bool)"
            )
        adapted = {id(m) for m in adapted_layers(model).values()}
        in_lists = {id(m) for parent in model.modules() if isinstance(parent, nn.ModuleList) for m in parent}
        chosen = adapted if units == "adapted" else in_lists
        selected = [(name, m) for name, m in model.named_modules() if id(m) in chosen and m is not model]
    elif callable(units):
        selected = [(name, m) for name, m in model.named_modules() if m is not model and units(name, m)]
    else:
        raise TypeError(f"units must be 'adapted', 'blocks' or a predicate (name, module) → bool, got {units!r}")
    if mesh is None:
        device = next((p.device for p in model.parameters()), torch.device("cpu"))
        mesh = init_device_mesh(device.type, (dist.get_world_size(),))
    # Innermost first (reverse module order): a unit's parameters are those no inner unit took.
    for _, module in reversed(selected):
        fully_shard(module, mesh=mesh, **fully_shard_options)
    fully_shard(model, mesh=mesh, **fully_shard_options)
    return model


# -- whole checkpoints -----------------------------------------------------------------------------


def _options(**kwargs):
    from torch.distributed.checkpoint.state_dict import StateDictOptions

    return StateDictOptions(full_state_dict=True, cpu_offload=True, **kwargs)


def full_state_dicts(
    model: nn.Module, optimizer: torch.optim.Optimizer | None = None
) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """``(model_state, optimizer_state)`` of a sharded model as whole CPU tensors (a collective: call
    it on every rank). Rank 0 gets them; the other ranks get empty dicts. The model's keys are those of
    one process's ``model.state_dict()``, buffers (every method's clocks and random streams) included;
    the optimizer's, one process's ``optimizer.state_dict()``: its parameters numbered, not named."""
    from torch.distributed.checkpoint.state_dict import get_model_state_dict, get_optimizer_state_dict

    model_state = get_model_state_dict(model, options=_options())
    optim_state = None if optimizer is None else get_optimizer_state_dict(model, optimizer, options=_options())
    if optim_state:  # rank 0's; the others' are empty
        optim_state = optimizer_state_by_index(optim_state)
    return model_state, optim_state


@contextmanager
def _step_hooks_paused(optimizer: torch.optim.Optimizer) -> Iterator[None]:
    """No step hook of ``optimizer`` runs inside (torch's private hook dicts, put back on exit).

    ``set_optimizer_state_dict`` initializes an empty optimizer's state with one step on zero
    gradients at lr 0; spectrallab's hooks would count it (SST's ``steps_taken``), scale it, and could
    end a period. The loaded state replaces everything that step wrote.
    """
    saved = [
        (hooks, dict(hooks)) for hooks in (optimizer._optimizer_step_pre_hooks, optimizer._optimizer_step_post_hooks)
    ]
    for hooks, _ in saved:
        hooks.clear()
    try:
        yield
    finally:
        for hooks, content in saved:
            hooks.clear()
            hooks.update(content)


def _contiguous(value: Any) -> Any:
    if torch.is_tensor(value):
        return value.contiguous()
    if isinstance(value, dict):
        return {k: _contiguous(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_contiguous(v) for v in value)
    return value


def load_full_state_dicts(
    model: nn.Module,
    optimizer: torch.optim.Optimizer | None,
    model_state: dict[str, Any],
    optimizer_state: dict[str, Any] | None = None,
) -> None:
    """Load whole state dicts (from :func:`full_state_dicts`, or one process's ``model.state_dict()``
    and ``optimizer.state_dict()``; an optimizer state named by parameter, as earlier versions saved
    it, loads too) into a sharded model and its optimizer: rank 0 passes them, the other ranks may pass empty dicts
    (rank 0's are broadcast). A collective: call it on every rank, after ``shard`` and ``sl.optimizer``.
    The optimizer is loaded first, then the model, so nothing the optimizer's initialization touched
    survives."""
    from torch.distributed.checkpoint.state_dict import set_model_state_dict, set_optimizer_state_dict

    # The broadcast from rank 0 sends each tensor's storage as it lies: a non-contiguous one (an
    # SVD's factors are column-major — GaLore's projection) arrives on the other ranks with its
    # entries permuted (torch 2.13). So contiguous copies are sent, and the optimizer's whole
    # (not sharded) state tensors get their saved layout back afterwards: a matrix product rounds
    # differently with another layout, and a resumed run should match an uninterrupted one bit for bit.
    model_state = _contiguous(model_state)
    if optimizer is not None and optimizer_state:
        optimizer_state = optimizer_state_by_name(model, optimizer, optimizer_state)
    if optimizer is not None and optimizer_state is not None:
        layouts = [_layouts(optimizer_state) if dist.get_rank() == 0 else None]
        dist.broadcast_object_list(layouts, src=0)
        with _step_hooks_paused(optimizer):
            set_optimizer_state_dict(
                model, optimizer, _contiguous(optimizer_state), options=_options(broadcast_from_rank0=True)
            )
        _restore_layouts(model, optimizer, layouts[0])
    set_model_state_dict(model, model_state, options=_options(broadcast_from_rank0=True))


def _layouts(optimizer_state: dict[str, Any]) -> dict[tuple[str, str], tuple[int, ...]]:
    """``{(parameter name, state key): strides}`` of the non-contiguous tensors of a full optimizer state."""
    return {
        (name, key): tuple(value.stride())
        for name, state in optimizer_state.get("state", {}).items()
        for key, value in state.items()
        if torch.is_tensor(value) and not value.is_contiguous()
    }


def _restore_layouts(model: nn.Module, optimizer: torch.optim.Optimizer, layouts: dict) -> None:
    if not layouts:
        return
    names = {id(p): name for name, p in model.named_parameters()}
    for param, state in optimizer.state.items():
        for key, value in list(state.items()):
            strides = layouts.get((names.get(id(param)), key))
            if strides is not None and torch.is_tensor(value) and not is_sharded(value):
                state[key] = torch.empty_strided(value.shape, strides, dtype=value.dtype, device=value.device)
                state[key].copy_(value)


def save_checkpoint(
    path: str | os.PathLike, model: nn.Module, optimizer: torch.optim.Optimizer | None = None, **extra: Any
) -> None:
    """Gather whole state (every rank calls this) and have rank 0 write ``{"model", "optimizer",
    **extra}`` atomically (:func:`spectrallab.checkpoint.atomic_save`); ``torch.load(path,
    weights_only=True)`` reads it. ``extra``: plain values to keep with it (the step, ...)."""
    model_state, optim_state = full_state_dicts(model, optimizer)
    if dist.get_rank() == 0:
        atomic_save({"model": model_state, "optimizer": optim_state, **extra}, path)
    dist.barrier()  # no rank goes on (and perhaps reads the file) before it is complete


def load_checkpoint(
    path: str | os.PathLike, model: nn.Module, optimizer: torch.optim.Optimizer | None = None
) -> dict[str, Any]:
    """Load a :func:`save_checkpoint` file into a sharded model and its optimizer (every rank calls
    this; rank 0 reads the file and broadcasts). Returns the ``extra`` values, on every rank."""
    saved = torch.load(path, map_location="cpu", weights_only=True) if dist.get_rank() == 0 else None
    box = [None if saved is None else {k: v for k, v in saved.items() if k not in ("model", "optimizer")}]
    dist.broadcast_object_list(box, src=0)
    load_full_state_dicts(
        model, optimizer, saved["model"] if saved else {}, (saved["optimizer"] if saved else {}) if optimizer else None
    )
    return box[0]
