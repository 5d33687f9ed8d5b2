"""One training run on several processes, on PyTorch's own engine (``torch.distributed``).

``torchrun --nproc-per-node N`` starts N processes with ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``
and a rendezvous address in their environment; :func:`init` joins them into a process group (NCCL
on CUDA, gloo on the CPU) and :func:`wrap` puts the model under ``DistributedDataParallel`` — or,
with ``fsdp=True``, shards it with FSDP2 (:mod:`spectrallab.fsdp`). :func:`spectrallab.train`
takes the resulting :class:`Parallel` as ``parallel=`` and does the rest.

**The data do not depend on the number of processes.** Every process draws the *global* batch from
the run's one seeded generator and trains on its own contiguous slice of the rows (rank r of N takes
rows ``r·B/N … (r+1)·B/N``). DDP averages the gradients, so N processes take the step that one
process takes on the whole batch, up to the rounding of the all-reduce; the reported loss is the
mean over the processes, which is the global batch's loss. So a run keeps its data order when it
is resumed on a different number of processes, and a DDP run can be checked against one process.

**Method state stays identical on every rank.** Each process applies the method to an identical
model (the same seed), DDP broadcasts rank 0's parameters and buffers when it wraps the model and
the buffers again at every forward; the gradients every method hook reads (GaLore's projection,
SST's enhanced gradient) are the all-reduced ones; and every random stream a method draws from
after ``apply`` (SST's sampling, ReLoRA's re-initialization) lives in a buffer of the model. So the
periodic work — SST's resampling and re-SVD, ReLoRA's merges, GaLore's projection updates — makes
the same decision on every rank without any extra communication. ``tests/test_ddp.py`` proves it for
every registered method.

Only rank 0 writes (checkpoints, run records, progress); every rank reads a checkpoint to resume.
"""

from __future__ import annotations

import ctypes
import os
import signal
import sys
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

PR_SET_PDEATHSIG = 1  # <linux/prctl.h>


def launched() -> bool:
    """Whether this process was started by ``torchrun`` (or another launcher) as one of several."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def die_with_launcher() -> None:
    """Ask Linux to SIGKILL this process when its parent (``torchrun``'s agent) dies.

    ``torchrun`` puts its workers in sessions of their own, so a job scheduler's (or a user's)
    ``kill -9`` of the launcher, even of its process group, leaves them running: they finish the
    run and keep writing its checkpoint — while the same command, run again to resume, writes it
    too. With ``PR_SET_PDEATHSIG`` the kernel kills each worker as soon as the launcher is gone, so a
    killed run is really stopped and resumes cleanly. Elsewhere than Linux this does nothing.
    """
    if not sys.platform.startswith("linux"):
        return
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    except (OSError, AttributeError):
        return
    if os.getppid() == 1:  # the launcher died before the request was made
        os.kill(os.getpid(), signal.SIGKILL)


def init(device: torch.device | None = None) -> tuple[int, int, torch.device]:
    """Join the process group of a ``torchrun`` launch; returns ``(rank, world_size, device)``.

    NCCL when the device is CUDA (each process on ``cuda:LOCAL_RANK``), gloo on the CPU. A process
    group that already exists is used as it is. A worker started by ``torchrun`` also dies with it
    (:func:`die_with_launcher`).
    """
    if launched():
        die_with_launcher()
    if device is None:
        device = torch.device(f"cuda:{int(os.environ.get('LOCAL_RANK', 0))}" if torch.cuda.is_available() else "cpu")
    if device.type == "cuda":
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    return dist.get_rank(), dist.get_world_size(), device


@dataclass
class Parallel:
    """How one run is spread over the processes of a group.

    ``module`` is what the forward pass goes through (the DDP wrapper, or the FSDP2-sharded model);
    the plain model — its names, its ``state_dict``, its evaluation — stays what ``train`` is given.
    """

    module: nn.Module
    rank: int
    world_size: int
    kind: str  # "ddp" or "fsdp"

    @property
    def main(self) -> bool:
        """Rank 0: the process that writes checkpoints, records and progress."""
        return self.rank == 0

    def share(self, batch_size: int) -> int:
        """The rows of a global batch of ``batch_size`` that each process trains on."""
        if batch_size % self.world_size:
            raise ValueError(
                f"batch_size={batch_size} is not divisible by the {self.world_size} processes; "
                f"the global batch must split evenly (use a multiple of {self.world_size})"
            )
        return batch_size // self.world_size

    def local(self, batch: Any, batch_size: int) -> Any:
        """This rank's rows of a global batch (a tensor, or a tuple/list of tensors batched on dim 0)."""
        share = self.share(batch_size)
        rows = slice(self.rank * share, (self.rank + 1) * share)
        if isinstance(batch, (tuple, list)):
            return type(batch)(t[rows] for t in batch)
        return batch[rows]

    def mean(self, value: float) -> float:
        """The mean of ``value`` over the ranks (the global batch's loss from the local ones)."""
        tensor = torch.tensor([value], dtype=torch.float64, device=self.device)
        dist.all_reduce(tensor)
        return float(tensor) / self.world_size

    @property
    def device(self) -> torch.device:
        # gloo reduces CPU tensors, NCCL CUDA ones: the tensor goes where the backend wants it.
        return (
            torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else torch.device("cpu")
        )

    def barrier(self) -> None:
        dist.barrier()

    # -- checkpoints: the whole state, whatever the number of processes ------------------------------
    def state_dicts(self, model: nn.Module, optimizer: torch.optim.Optimizer) -> tuple[dict, dict]:
        """The model's and optimizer's whole state dicts (a collective under FSDP2, whose rank 0 gets
        them gathered; under DDP every rank holds all of it already)."""
        if self.kind == "fsdp":
            from .fsdp import full_state_dicts

            return full_state_dicts(model, optimizer)
        return model.state_dict(), optimizer.state_dict()

    def load_state(
        self, model: nn.Module, optimizer: torch.optim.Optimizer, model_state: dict, optimizer_state: dict
    ) -> None:
        """Load whole state dicts into this rank's model and optimizer (every rank read the file)."""
        if self.kind == "fsdp":
            from .fsdp import load_full_state_dicts

            load_full_state_dicts(model, optimizer, model_state, optimizer_state)
            return
        from .checkpoint import optimizer_state_by_index

        model.load_state_dict(model_state)
        optimizer.load_state_dict(optimizer_state_by_index(optimizer_state))


def wrap(model: nn.Module, *, fsdp: bool = False, device: torch.device | None = None) -> Parallel:
    """Put ``model`` (already adapted by ``sl.apply``, on its device) under DDP, or shard it with
    FSDP2 when ``fsdp``; the process group must exist (:func:`init`)."""
    if not dist.is_initialized():
        raise RuntimeError("no torch.distributed process group: call spectrallab.distributed.init() first")
    rank, world = dist.get_rank(), dist.get_world_size()
    if fsdp:
        from .fsdp import shard

        shard(model)
        return Parallel(model, rank, world, "fsdp")
    device = device or next(model.parameters()).device
    ids = [device.index] if device.type == "cuda" else None
    return Parallel(nn.parallel.DistributedDataParallel(model, device_ids=ids), rank, world, "ddp")
