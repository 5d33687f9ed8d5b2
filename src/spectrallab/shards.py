"""Parameters split across processes (FSDP2's DTensors), for method code that needs whole matrices.

Under FSDP2 (``torch.distributed.fsdp.fully_shard``, see :mod:`spectrallab.fsdp`) every parameter
is a *shard*: a ``torch.distributed.tensor.DTensor`` whose local tensor holds this process's rows.
Inside a forward and backward FSDP gathers the whole of each parameter, so a method whose algorithm
is its forward pass trains as in one process. What runs *outside* — optimizer step hooks, an
optimizer of the method's own — sees the shards, and a computation that needs a whole matrix (an
SVD, a column norm, indexing by singular index) must gather it first: every rank gathers the same
whole tensor, computes the same thing on it, and keeps its own shard of the result.

These helpers do that, and are the identity on an ordinary tensor, so the single-process code path
of a method that calls them is unchanged. Gathering is a *collective*: every rank must make the same
calls in the same order, which a method's hooks do because they run the same code on every rank on
the same (replicated) clocks and random streams.

DTensor is looked up in ``sys.modules`` instead of imported: importing ``torch.distributed.tensor``
costs about a second, and no tensor can be a DTensor in a process that never imported it.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager

import torch
from torch import nn


def _dtensor_class():
    module = sys.modules.get("torch.distributed.tensor")
    return None if module is None else module.DTensor


def is_sharded(t: object) -> bool:
    """True for a DTensor (a parameter, gradient or optimizer state under FSDP2)."""
    cls = _dtensor_class()
    return cls is not None and isinstance(t, cls)


def any_sharded(tensors: Sequence[object]) -> bool:
    return any(is_sharded(t) for t in tensors)


def whole(t: torch.Tensor) -> torch.Tensor:
    """``t`` itself, or for a DTensor the whole tensor, gathered (a collective), as a plain tensor."""
    return t.full_tensor() if is_sharded(t) else t


def shard_of(full: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """This rank's local part of ``full``, split as the DTensor ``like`` is split (no communication:
    every rank holds the same ``full``). ``full`` may have another size along unsharded dims."""
    from torch.distributed.tensor import distribute_tensor

    return distribute_tensor(full, like.device_mesh, like.placements, src_data_rank=None).to_local()


@torch.no_grad()
def write_whole_(t: torch.Tensor, full: torch.Tensor) -> None:
    """Set ``t`` to the whole value ``full``: a DTensor keeps this rank's shard of it.

    Every rank computed ``full`` from the same gathered inputs with the same code, so the shards
    agree with each other: taking the local part needs no communication.
    """
    if is_sharded(t):
        t.to_local().copy_(shard_of(full, t))
    else:
        t.copy_(full)


@torch.no_grad()
def modify_whole_(t: torch.Tensor, fn: Callable[[torch.Tensor], object]) -> None:
    """``fn(t)`` (an in-place change); for a DTensor, ``fn`` changes the gathered whole tensor and this
    rank keeps its shard of the result."""
    if is_sharded(t):
        full = t.full_tensor()
        fn(full)
        write_whole_(t, full)
    else:
        fn(t)


@contextmanager
def whole_parameters(module: nn.Module, names: Sequence[str]) -> Iterator[None]:
    """Inside, ``module.<name>`` is the whole parameter for every sharded one of ``names``; on exit
    each rank writes its shard of the (possibly changed) whole value back into the sharded parameter,
    which is put back in place (the same object: the optimizer and its state still know it).

    A no-op for ordinary parameters. The gathered stand-ins carry no gradient: read gradients with
    :func:`whole`. On an exception the sharded parameters are put back unchanged.
    """
    sharded = {name: module._parameters[name] for name in names if is_sharded(module._parameters.get(name))}
    if not sharded:
        yield
        return
    for name, param in sharded.items():
        module._parameters[name] = nn.Parameter(param.detach().full_tensor(), requires_grad=param.requires_grad)
    try:
        yield
    except BaseException:
        module._parameters.update(sharded)
        raise
    gathered = {name: module._parameters[name] for name in sharded}
    module._parameters.update(sharded)
    for name, param in sharded.items():
        write_whole_(param, gathered[name])


# -- without gathering: what a method computes from its own rows -----------------------------------
#
# A per-step computation that reduces over rows (a column norm, Pᵀ G) or acts on each row alone
# (G Pᵀ, a row norm) needs no whole matrix: each rank works on its rows, and only the small result
# crosses between processes. FSDP2 splits by rows (``Shard(0)``, its default), so these apply there;
# :func:`split_by_rows` says when, and a method falls back to gathering otherwise.


def split_by_rows(t: torch.Tensor) -> bool:
    """True for a DTensor split only by its first dimension (FSDP2's ``Shard(0)``; the mesh dims that
    ``Replicate`` it, as in HSDP, hold copies), so each rank holds whole rows of it."""
    return is_sharded(t) and all(p.is_replicate() or p.is_shard(0) for p in t.placements)


def local(t: torch.Tensor) -> torch.Tensor:
    """This rank's part of ``t`` (``t`` itself for an ordinary tensor): no communication."""
    return t.to_local() if is_sharded(t) else t


def sum_over_shards(partial: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """The sum, over the ranks that split ``like``, of ``partial``: a value each rank computed from its
    own shard of ``like`` (an all-reduce, returned as a plain tensor, the same on every rank).

    For an ordinary ``like``, ``partial`` is already the whole and is returned as it is. Mesh
    dimensions that replicate ``like`` are not summed over: their ranks computed the same value.
    """
    if not is_sharded(like):
        return partial
    from torch.distributed.tensor import DTensor, Partial, Replicate

    placements = [Replicate() if p.is_replicate() else Partial() for p in like.placements]
    return DTensor.from_local(partial, like.device_mesh, placements, run_check=False).full_tensor()


def gather_rows(rows: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """The whole tensor of which ``rows`` are this rank's, split by rows as ``like`` is
    (:func:`split_by_rows`): row i of the result belongs to row i of ``like``; the other dimensions
    may differ from ``like``'s. An all-gather of ``rows`` only; ``rows`` itself for an ordinary ``like``."""
    if not is_sharded(like):
        return rows
    if not split_by_rows(like):
        raise ValueError(f"gather_rows needs a tensor split by rows, not {like.placements}")
    from torch.distributed.tensor import DTensor

    shape = (like.shape[0], *rows.shape[1:])
    stride = torch.empty(shape, device="meta").stride()
    rows = rows.contiguous()
    split = DTensor.from_local(rows, like.device_mesh, like.placements, run_check=False, shape=shape, stride=stride)
    return split.full_tensor()
