"""A group of spawned CPU processes joined in one ``torch.distributed`` process group (gloo), for the
distributed tests (``tests/test_ddp.py``; an FSDP test can share it).

Starting processes and a process group costs seconds (each child imports torch and spectrallab), so a
test module starts one :class:`SpawnedGroup` (a module-scoped fixture) and runs every case in it::

    group = SpawnedGroup(world_size=2)
    results = group.run(case, "lora", 7)   # case(rank, world_size, "lora", 7) on every rank
    group.close()

``case`` is a module-level function (it is pickled by name; the children import its module, with the
parent's ``sys.path``). What it returns comes back per rank, in rank order, through ``torch.save``
bytes (tensors included). An exception on any rank fails the call at once with that rank's
traceback; a rank that neither answers nor fails within ``timeout`` seconds (a hung collective) fails
it too. Either way the group is torn down and the next :meth:`SpawnedGroup.run` starts a fresh one,
so one broken case cannot stall or poison the others. A child also exits on its own when its parent
is gone.
"""

from __future__ import annotations

import io
import multiprocessing as mp
import os
import queue
import socket
import time
import traceback
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist


def free_port() -> int:
    """A TCP port on localhost that nothing listens on now (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _dumps(value: Any) -> bytes:
    buffer = io.BytesIO()
    torch.save(value, buffer)
    return buffer.getvalue()


def _loads(data: bytes) -> Any:
    return torch.load(io.BytesIO(data), weights_only=False)


def _serve(rank: int, world_size: int, backend: str, port: int, timeout: float, parent: int, inbox, outbox) -> None:
    """A child: join the process group, then run the cases it is sent until told to stop."""
    torch.set_num_threads(1)  # the tests' models are tiny; more threads only fight over the cores
    try:
        dist.init_process_group(
            backend,
            init_method=f"tcp://127.0.0.1:{port}",
            rank=rank,
            world_size=world_size,
            timeout=timedelta(seconds=timeout),  # a collective that waits longer raises
        )
    except BaseException:
        outbox.put((rank, False, traceback.format_exc()))
        return
    outbox.put((rank, True, None))  # joined
    try:
        while True:
            try:
                job = inbox.get(timeout=1.0)
            except queue.Empty:
                if os.getppid() != parent:  # the test run is gone: do not linger
                    return
                continue
            if job is None:
                return
            fn, args = job
            try:
                outbox.put((rank, True, _dumps(fn(rank, world_size, *args))))
            except BaseException:
                outbox.put((rank, False, traceback.format_exc()))
    finally:
        dist.destroy_process_group()


class SpawnedGroup:
    """``world_size`` spawned processes in one process group; see the module docstring."""

    def __init__(self, world_size: int = 2, backend: str = "gloo", timeout: float = 60.0):
        self.world_size, self.backend, self.timeout = world_size, backend, timeout
        self._procs: list = []

    def _start(self) -> None:
        context = mp.get_context("spawn")  # not fork: a forked child would inherit the parent's threads and state
        self._inboxes = [context.Queue() for _ in range(self.world_size)]
        self._outbox = context.Queue()
        port = free_port()
        self._procs = [
            context.Process(
                target=_serve,
                args=(rank, self.world_size, self.backend, port, self.timeout, os.getpid(), inbox, self._outbox),
                daemon=True,
            )
            for rank, inbox in enumerate(self._inboxes)
        ]
        for proc in self._procs:
            proc.start()
        self._collect(self.timeout, "joining the process group")

    def run(self, fn: Callable[..., Any], *args: Any, timeout: float | None = None) -> list[Any]:
        """``fn(rank, world_size, *args)`` on every rank; the results in rank order."""
        if not self._procs:
            self._start()
        for inbox in self._inboxes:
            inbox.put((fn, args))
        return [_loads(data) for data in self._collect(self.timeout if timeout is None else timeout, fn.__name__)]

    def _collect(self, timeout: float, what: str) -> list[Any]:
        answers: dict[int, Any] = {}
        deadline = time.monotonic() + timeout
        while len(answers) < self.world_size:
            try:
                rank, ok, value = self._outbox.get(timeout=max(0.1, min(1.0, deadline - time.monotonic())))
            except queue.Empty:
                dead = [r for r, proc in enumerate(self._procs) if not proc.is_alive() and r not in answers]
                if dead or time.monotonic() > deadline:
                    self.close(force=True)
                    reason = f"rank(s) {dead} died" if dead else f"no answer within {timeout:g} s"
                    missing = sorted(set(range(self.world_size)) - set(answers))
                    raise TimeoutError(
                        f"{what}: {reason} (waiting for rank(s) {missing}); the group was torn down"
                    ) from None
                continue
            if not ok:
                self.close(force=True)  # the other ranks may be stuck in a collective
                raise AssertionError(f"{what} failed on rank {rank}:\n{value}")
            answers[rank] = value
        return [answers[rank] for rank in range(self.world_size)]

    def close(self, force: bool = False) -> None:
        """Stop the children (at once with ``force``; else let them leave the group first)."""
        if not force:
            for inbox in self._inboxes if self._procs else ():
                inbox.put(None)
            for proc in self._procs:
                proc.join(timeout=10)
        for proc in self._procs:
            if proc.is_alive():
                proc.kill()
            proc.join(timeout=10)
        self._procs = []
