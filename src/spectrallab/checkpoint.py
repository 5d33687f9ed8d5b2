"""Files that are never half-written, and the training loop's checkpoints.

**Atomic writes.** :func:`atomic_write` writes to a temporary file in the destination's folder,
flushes and ``fsync``\\s it, and ``os.replace``\\s it over the destination (then syncs the folder):
a reader — or a run resumed after a crash — sees the old file or the new one, never a mixture. A
process killed mid-write (``SIGKILL``, a dead kernel, a power cut) leaves at most a hidden
temporary ``.<name>.<random>.tmp`` next to it, which the next :func:`remove_stale_temporaries` of
that destination deletes. Run records (:mod:`spectrallab.runs`) and checkpoints use it.

**Checkpoints, the torch way.** A checkpoint of :func:`spectrallab.train` is one ``torch.save``\\d
dict of tensors and plain Python values (``torch.load(path, weights_only=True)`` reads it): the
model's and the optimizer's ``state_dict()`` (every method keeps its clocks and random streams in
the model, see :class:`~spectrallab.methods.base.AdaptedLinear`), the LR scheduler's, the step, the
data generator's and torch's global random states (so a resumed run draws the same batches and
dropout masks), the run's metric history, and an ``identity`` — the settings that define the run,
as JSON — that must match the run that resumes from it.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

import torch
from torch import nn

FORMAT = "spectrallab.train checkpoint"
VERSION = 1


def _temporary_prefix(path: Path) -> str:
    return f".{path.name}."


def atomic_write(path: Path | str, write: Callable[[IO[bytes]], None]) -> Path:
    """Write ``path`` atomically: ``write(file)`` fills a temporary file in the same folder, which is
    flushed, fsynced and ``os.replace``\\d over ``path``. On an exception the temporary is removed
    and ``path`` is untouched."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=_temporary_prefix(path), suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as file:
            write(file)
            file.flush()
            os.fsync(file.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    _sync_folder(path.parent)
    return path


def atomic_write_text(path: Path | str, text: str) -> Path:
    return atomic_write(path, lambda file: file.write(text.encode()))


def atomic_save(obj: Any, path: Path | str) -> Path:
    """``torch.save(obj, path)``, atomically."""
    return atomic_write(path, lambda file: _save(obj, file))


def _save(obj: Any, file: IO[bytes]) -> None:
    """The one place a checkpoint's bytes are written (a test replaces it to die mid-write)."""
    torch.save(obj, file)


def _sync_folder(folder: Path) -> None:
    """Make the rename itself durable (POSIX); a no-op where folders cannot be opened (Windows)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def remove_stale_temporaries(path: Path | str) -> list[Path]:
    """Delete the temporaries a killed :func:`atomic_write` of ``path`` left behind."""
    path = Path(path)
    if not path.parent.is_dir():
        return []
    stale = sorted(path.parent.glob(f"{_temporary_prefix(path)}*.tmp"))
    for tmp in stale:
        try:
            tmp.unlink()
        except FileNotFoundError:
            pass
    return stale


# -- the training loop's checkpoint -----------------------------------------------------------------

RUN_FIELDS = ("id", "name", "steps", "loss", "lr", "grad_norm", "seconds", "evals", "spectra")


def identity(**settings: Any) -> str:
    """The settings that define a run, as canonical JSON (compared when a run resumes)."""
    return json.dumps(settings, sort_keys=True, default=repr)


def training_state(
    *,
    step: int,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: Any | None,
    generator: torch.Generator,
    run: Any,
    run_identity: str,
    parallel: Any | None = None,
) -> dict:
    """Everything a resumed :func:`spectrallab.train` needs, as a ``weights_only``-loadable dict.

    Under several processes (``parallel``, a :class:`spectrallab.distributed.Parallel`) the model's and
    optimizer's states are the whole, unsharded ones (every rank takes part in gathering them; rank 0
    writes them), so a checkpoint is the same file whether the run used 1, 2 or N processes.
    """
    cuda = None
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        cuda = torch.cuda.get_rng_state_all()
    if parallel is None:
        model_state, optimizer_state = model.state_dict(), optimizer.state_dict()
    else:
        model_state, optimizer_state = parallel.state_dicts(model, optimizer)
    return {
        "format": FORMAT,
        "version": VERSION,
        "step": int(step),
        "identity": run_identity,
        "model": model_state,
        "optimizer": optimizer_state,
        "scheduler": None if scheduler is None else scheduler.state_dict(),
        "data_rng": generator.get_state(),
        "torch_rng": torch.get_rng_state(),
        "cuda_rng": cuda,
        "run": {k: getattr(run, k) for k in RUN_FIELDS},
    }


def optimizer_state_by_index(state: dict) -> dict:
    """An optimizer state dict in torch's own layout (``optimizer.state_dict()``: parameters numbered
    0, 1, ... across the groups in order) from ``torch.distributed.checkpoint``'s (parameters named by
    their fully qualified names, as FSDP's gathered state has them). A state already numbered is
    returned as it is. So one checkpoint format serves one process, DDP and FSDP2."""
    groups = state.get("param_groups", [])
    if all(isinstance(p, int) for group in groups for p in group["params"]):
        return state
    number: dict[str, int] = {}
    numbered_groups = []
    for group in groups:
        params = [number.setdefault(name, len(number)) for name in group["params"]]
        numbered_groups.append({**group, "params": params})
    unknown = sorted(set(state.get("state", {})) - set(number))
    if unknown:
        raise ValueError(f"optimizer state names parameters that no parameter group holds: {', '.join(unknown)}")
    return {
        "state": {number[name]: value for name, value in state.get("state", {}).items()},
        "param_groups": numbered_groups,
    }


def optimizer_state_by_name(model: nn.Module, optimizer: torch.optim.Optimizer, state: dict) -> dict:
    """The inverse of :func:`optimizer_state_by_index` for ``optimizer`` over ``model``'s parameters:
    torch's numbered layout renamed to fully qualified parameter names (what
    ``torch.distributed.checkpoint.state_dict.set_optimizer_state_dict`` reads). A state already
    named is returned as it is."""
    groups = state.get("param_groups", [])
    if not all(isinstance(p, int) for group in groups for p in group["params"]):
        return state
    names_of = {id(param): name for name, param in model.named_parameters(remove_duplicate=False)}
    ordered = [param for group in optimizer.param_groups for param in group["params"]]
    if len(ordered) != sum(len(group["params"]) for group in groups) or len(groups) != len(optimizer.param_groups):
        raise ValueError(
            f"optimizer state has {len(groups)} parameter groups of "
            f"{[len(group['params']) for group in groups]} parameters; this optimizer has "
            f"{[len(group['params']) for group in optimizer.param_groups]}"
        )
    missing = [i for i, param in enumerate(ordered) if id(param) not in names_of]
    if missing:
        raise ValueError(f"optimizer parameters {missing} are not parameters of the model")
    names = [names_of[id(param)] for param in ordered]
    return {
        "state": {names[i]: value for i, value in state.get("state", {}).items()},
        "param_groups": [{**group, "params": [names[i] for i in group["params"]]} for group in groups],
    }


def load_training_state(path: Path | str) -> dict:
    """Read a checkpoint written by :func:`spectrallab.train` (``weights_only=True``)."""
    state = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise ValueError(
            f"checkpoint {str(path)!r} is not a spectrallab.train checkpoint "
            f"(format {state.get('format') if isinstance(state, dict) else type(state).__name__!r})"
        )
    if state.get("version") != VERSION:
        raise ValueError(
            f"checkpoint {str(path)!r} has version {state.get('version')!r}; this spectrallab reads version {VERSION}"
        )
    return state


def restore_training_state(
    state: dict,
    path: Path | str,
    *,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: Any | None,
    generator: torch.Generator,
    run: Any,
    run_identity: str,
    parallel: Any | None = None,
) -> int:
    """Load ``state`` (from :func:`load_training_state`) into the run's objects; returns the step."""
    if state["identity"] != run_identity:
        saved, now = json.loads(state["identity"]), json.loads(run_identity)
        differ = sorted(k for k in saved.keys() | now.keys() if saved.get(k) != now.get(k))
        details = "; ".join(f"{k}: checkpoint {saved.get(k)!r}, this run {now.get(k)!r}" for k in differ)
        raise ValueError(
            f"checkpoint {str(path)!r} was written by a different run ({details}); "
            "delete it or choose another checkpoint path"
        )
    if (scheduler is None) != (state["scheduler"] is None):
        raise ValueError(
            f"checkpoint {str(path)!r} was written {'with' if state['scheduler'] is not None else 'without'}"
            f" an LR schedule; this run has {'one' if scheduler is not None else 'none'}"
        )
    if parallel is None:
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(optimizer_state_by_index(state["optimizer"]))  # also one FSDP wrote
    else:
        parallel.load_state(model, optimizer, state["model"], state["optimizer"])
    if scheduler is not None:
        scheduler.load_state_dict(state["scheduler"])
    generator.set_state(state["data_rng"])
    torch.set_rng_state(state["torch_rng"])
    if state["cuda_rng"] is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda_rng"])
    for key, value in state["run"].items():
        setattr(run, key, value)
    return int(state["step"])
