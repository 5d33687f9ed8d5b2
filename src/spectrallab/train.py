"""A small training loop that streams what happens, so chapters and widgets can watch it.

:func:`train` is a generator: it takes one optimizer step per iteration and yields an
:class:`Event` (step, loss, learning rate, gradient norm, and — every ``eval_every`` /
``spectra_every`` steps — validation metrics and the singular values of chosen layers). A widget
can stop consuming it at any step; the run record is saved even then. :func:`fit` runs it to the
end and returns the :class:`~spectrallab.runs.Run`. :func:`pretrained` trains a base model once
and caches it on disk. With ``checkpoint="run.pt"`` both write a checkpoint every
``checkpoint_every`` steps (atomically) and resume from it when it exists, to the same final weights
as an uninterrupted run (see :func:`train` and :mod:`spectrallab.checkpoint`).

Nothing here is method-specific: the optimizer comes from :func:`spectrallab.optimizer`, which
carries each method's own behaviour.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from . import checkpoint as ckpt
from .apply import adapted_layers, trainable_parameters
from .distributed import Parallel
from .linalg import spectrum
from .optim import effective_lr
from .optim import optimizer as make_optimizer
from .profiles import device as default_device
from .profiles import profile
from .progress import Progress
from .runs import Run, home
from .tasks.base import Task


@dataclass
class Event:
    """What happened at one step. ``step`` counts completed optimizer steps (0 = before training)."""

    step: int
    loss: float | None
    lr: float
    grad_norm: float | None
    metrics: dict[str, float] | None = None  # validation metrics, when evaluated at this step
    spectra: dict[str, np.ndarray] | None = None  # singular values of tracked layers, when measured
    seconds: float = 0.0  # wall time since training started
    # This step's own work (batch, forward, backward, optimizer step), without the evaluation, spectra
    # and checkpoint that may follow it: what a throughput is made of. None for the step-0 event.
    step_seconds: float | None = None


def warmup_cosine(total_steps: int, warmup: int = 0, floor: float = 0.1) -> Callable[[int], float]:
    """LR multiplier: linear warm-up over ``warmup`` steps, then cosine decay to ``floor``."""

    def multiplier(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = min(1.0, (step - warmup) / max(1, total_steps - warmup))
        return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress))

    return multiplier


def train(
    model: nn.Module,
    task: Task,
    steps: int,
    *,
    optimizer: torch.optim.Optimizer | None = None,
    lr: float | None = None,
    batch_size: int | None = None,
    schedule: Callable[[int], float] | None = None,
    clip: float | None = None,
    eval_every: int | None = None,
    spectra_every: int | None = None,
    spectra_of: Sequence[str] = (),
    seed: int = 0,
    name: str | None = None,
    config: dict[str, Any] | None = None,
    record: bool = True,
    device: torch.device | str | None = None,
    run: Run | None = None,
    checkpoint: str | os.PathLike | None = None,
    checkpoint_every: int | None = None,
    parallel: Parallel | None = None,
    autocast: torch.dtype | None = None,
) -> Iterator[Event]:
    """Train ``model`` on ``task`` for ``steps`` optimizer steps, yielding an :class:`Event` per step.

    * ``optimizer``: defaults to ``spectrallab.optimizer(model, lr)`` (AdamW with method hooks);
      ``lr`` and ``batch_size`` default to the task's.
    * ``schedule``: LR multiplier as a function of the step (e.g. :func:`warmup_cosine`).
    * ``clip``: gradient-norm clipping threshold (the norm is reported before clipping).
    * ``eval_every``: validation cadence (default: 10 evaluations per run, plus step 0 and the last step).
    * ``spectra_every`` / ``spectra_of``: singular values of these layers (module names) every k steps.
    * ``config``: extra fields for the run record (``{"method": "lora", "rank": 4}``).
    * ``record``: save the run under ``$SPECTRALLAB_HOME/runs`` when it ends or is stopped early.
    * ``run``: a :class:`Run` to fill (``fit`` passes one and returns it).
    * ``checkpoint`` / ``checkpoint_every``: a file to checkpoint to every k steps (default: 10
      checkpoints per run) and at the last step, and to **resume from** when it exists.
    * ``parallel``: a :class:`~spectrallab.distributed.Parallel` (from
      :func:`spectrallab.distributed.wrap`) to train on several processes: ``model`` is the plain
      model, ``parallel.module`` its DDP wrapper or FSDP2-sharded self; every process draws the
      global batch of ``batch_size`` rows and trains on its slice, the recorded loss is the global
      batch's, and only rank 0 writes checkpoints and the record.
    * ``autocast``: a dtype (``torch.bfloat16``) to run the forward pass and loss under
      ``torch.autocast`` on the model's device (the parameters and optimizer stay in their dtype).

    **Resume.** With ``checkpoint="run.pt"``, a run that dies — a killed process, a restarted
    kernel, even mid-write — is continued by running the same code again: the model, the optimizer
    (and every method's state, which the model holds), the LR schedule, the step, the loss history
    and the random state of the data order (and torch's global generator: dropout) come back from
    the last complete checkpoint, and the run ends with the same weights, bit for bit, as one that
    was never interrupted. Build the model, apply the method and pass the same arguments as the
    first time::

        model = task.make_model(seed=0)
        sl.apply(model, "sst", rank=8)
        run = sl.fit(model, task, 2000, checkpoint="sst.pt", checkpoint_every=100)   # re-run: resumes

    A resumed generator yields one event for the step it resumed at (no loss, no evaluation), then
    one per remaining step; a finished checkpoint yields that event only. Writes are atomic (a
    temporary file in the same folder, fsync, ``os.replace``), so a kill leaves the previous
    checkpoint intact. A checkpoint written by a run with other settings (task, seed, batch size,
    lr, clip, method options) is refused with a ``ValueError``; ``steps`` may grow. The file is
    plain ``torch.save`` of a dict (``torch.load(path, weights_only=True)``; see
    :mod:`spectrallab.checkpoint`).
    """
    if not isinstance(steps, int) or isinstance(steps, bool) or steps < 1:
        raise ValueError(f"steps={steps!r} is outside the allowed range [1, inf)")
    run = run if run is not None else Run(name or "run")
    device = torch.device(device) if device is not None else default_device()
    model.to(device)
    task.to(device)
    modules = dict(model.named_modules())
    missing = [n for n in spectra_of if n not in modules]
    if missing:
        raise ValueError(f"spectra_of: no layer named {', '.join(map(repr, missing))} in the model")
    lr = task.lr if lr is None else lr
    batch_size = batch_size or task.batch_size
    opt = optimizer if optimizer is not None else make_optimizer(model, lr=lr)
    scheduler = torch.optim.lr_scheduler.LambdaLR(opt, schedule) if schedule is not None else None
    eval_every = eval_every or max(1, steps // 10)
    if checkpoint is None and checkpoint_every is not None:
        raise ValueError("checkpoint_every is set but checkpoint (the file to write) is not")
    if checkpoint_every is not None and (
        isinstance(checkpoint_every, bool) or not isinstance(checkpoint_every, int) or checkpoint_every < 1
    ):
        raise ValueError(f"checkpoint_every={checkpoint_every!r} is outside the allowed range [1, inf) (an int)")
    checkpoint_every = checkpoint_every or max(1, steps // 10)
    params = [p for p in model.parameters() if p.requires_grad]
    generator = torch.Generator().manual_seed(seed)
    main = parallel is None or parallel.main  # the one process that writes
    record = record and main
    forward = model if parallel is None else parallel.module
    if parallel is not None:
        parallel.share(batch_size)  # an uneven split is refused before anything runs
        if spectra_of and parallel.kind == "fsdp":
            raise ValueError("spectra_of is not available under FSDP (each process holds a shard of every weight)")

    def local_loss(batch) -> torch.Tensor:
        if parallel is not None:
            batch = parallel.local(batch, batch_size)
        if autocast is None:
            return task.loss(forward, batch)
        with torch.autocast(device.type, dtype=autocast):
            return task.loss(forward, batch)

    run.config = {
        # The task's own settings stay under their own key: a task may have a `rank` of its own
        # (the low-rank teacher's), which must never be read as the method's rank.
        "task": task.name,
        "task_config": task.config(),
        "steps": steps,
        "lr": lr,
        "batch_size": batch_size,
        "seed": seed,
        "clip": clip,
        "optimizer": type(opt).__name__,
        "profile": profile(),
        "device": str(device),
        "trainable_parameters": trainable_parameters(model),
        **_method_config(model),
        **({} if parallel is None else {"processes": parallel.world_size, "parallel": parallel.kind}),
        **(config or {}),
    }

    def measure_spectra(step: int) -> dict[str, np.ndarray]:
        values = {n: spectrum(modules[n]).cpu().numpy() for n in spectra_of}
        for n, s in values.items():
            run.spectra.setdefault(n, []).append([step, s.tolist()])
        return values

    def evaluate(step: int) -> dict[str, float]:
        metrics = task.evaluate(model)
        run.evals.append({"step": step, **metrics})
        return metrics

    # What a checkpoint must match to be resumed by this call (steps may grow; cadences may change).
    run_identity = ckpt.identity(
        task=task.name,
        task_config=task.config(),
        seed=seed,
        lr=lr,
        batch_size=batch_size,
        clip=clip,
        optimizer=type(opt).__name__,
        methods=_method_config(model),
    )
    first = 0
    if checkpoint is not None:
        checkpoint = Path(checkpoint)
        ckpt.remove_stale_temporaries(checkpoint)
        if checkpoint.exists():
            saved = ckpt.load_training_state(checkpoint)
            if saved["step"] > steps:
                raise ValueError(f"checkpoint {str(checkpoint)!r} is at step {saved['step']}, past steps={steps}")
            first = ckpt.restore_training_state(
                saved,
                checkpoint,
                model=model,
                optimizer=opt,
                scheduler=scheduler,
                generator=generator,
                run=run,
                run_identity=run_identity,
                parallel=parallel,
            )
            del saved

    def save_checkpoint(step: int) -> None:
        state = ckpt.training_state(
            step=step,
            model=model,
            optimizer=opt,
            scheduler=scheduler,
            generator=generator,
            run=run,
            run_identity=run_identity,
            parallel=parallel,
        )
        if main:
            ckpt.atomic_save(state, checkpoint)
        del state
        if parallel is not None:
            parallel.barrier()  # no rank runs ahead of a checkpoint it could be resumed from
        if record:
            run.save()  # the record so far, so a killed run still leaves one (atomic too)

    start = time.perf_counter() - (run.seconds[-1] if first and run.seconds else 0.0)
    finished = False  # the record of the finished run is saved
    try:
        if first:
            yield Event(first, None, effective_lr(opt), None, seconds=time.perf_counter() - start)
        else:
            yield Event(
                0,
                None,
                effective_lr(opt),
                None,
                metrics=evaluate(0),
                spectra=measure_spectra(0) if spectra_of else None,
            )
        model.train()
        for step in range(first + 1, steps + 1):
            step_started = time.perf_counter()
            loss = local_loss(task.batch("train", batch_size, generator))
            loss_value = float(loss.detach())
            if parallel is not None:
                loss_value = parallel.mean(loss_value)  # the global batch's loss, the same on every rank
            if not math.isfinite(loss_value):
                raise FloatingPointError(
                    f"loss became {loss_value} at step {step} (lr={opt.param_groups[0]['lr']:g}); "
                    "try a smaller learning rate"
                )
            opt.zero_grad(set_to_none=True)
            loss.backward()
            grad_norm = float(torch.nn.utils.clip_grad_norm_(params, clip if clip else math.inf))
            current_lr = effective_lr(opt)  # includes method-owned multipliers (ReLoRA restarts, SST warm-up)
            opt.step()
            if scheduler is not None:
                scheduler.step()
            step_ended = time.perf_counter()
            now = step_ended - start
            run.steps.append(step)
            run.loss.append(loss_value)
            run.lr.append(current_lr)
            run.grad_norm.append(grad_norm)
            run.seconds.append(now)
            metrics = evaluate(step) if step % eval_every == 0 or step == steps else None
            spectra = (
                measure_spectra(step)
                if spectra_of and spectra_every and (step % spectra_every == 0 or step == steps)
                else None
            )
            if checkpoint is not None and (step % checkpoint_every == 0 or step == steps):
                save_checkpoint(step)
            if step == steps and record:
                # Saved before the last event: a consumer that stops once it has the last step leaves
                # this generator suspended, and its `finally` would only run at garbage collection
                # (possibly at interpreter shutdown, when files can no longer be written).
                run.save()
                finished = True
            yield Event(step, loss_value, current_lr, grad_norm, metrics, spectra, now, step_ended - step_started)
    finally:
        if record and not finished:
            run.save()


def _method_config(model: nn.Module) -> dict[str, Any]:
    """``methods`` (names applied, or ["none"]); when one method made every adapted layer, also
    ``method`` and its options (``rank``, ``alpha``, ``init`` ...) as given to ``apply``."""
    layers = adapted_layers(model).values()
    out: dict[str, Any] = {"methods": sorted({layer.method for layer in layers}) or ["none"]}
    specs = {id(s): s for s in (getattr(layer, "spec", None) for layer in layers) if s is not None}
    if len(specs) == 1:
        (spec,) = specs.values()
        out.update(method=spec.name, **spec.config)
    return out


def fit(
    model: nn.Module,
    task: Task,
    steps: int,
    *,
    on_event: Callable[[Event], None] | None = None,
    name: str | None = None,
    progress: str | None = None,
    tokens_per_step: int | None = None,
    **kwargs: Any,
) -> Run:
    """Run :func:`train` to the end and return its :class:`Run` (saved to disk unless ``record=False``).

    ``progress``: ``"bar"``, ``"lines"`` or ``"off"`` (default: chosen by :mod:`spectrallab.progress` —
    a bar in a live notebook, a line every 15 s of a long run in a built page). Every other keyword
    goes to :func:`train`. ``tokens_per_step`` (the global batch's tokens) adds tokens/s to the progress.

    **Resume recipe** — checkpoint every k steps, and run the same cell or script again after a
    crash, a kill or a kernel restart::

        task = sl.task("chargpt")
        model = sl.apply(task.make_model(seed=0), "sst", rank=16)
        run = sl.fit(model, task, 5000, checkpoint="sst.pt", checkpoint_every=250)

    The second time, ``fit`` loads ``sst.pt`` (model, optimizer, method clocks, LR schedule, step,
    loss history, data order) and continues; the final weights equal an uninterrupted run's bit for
    bit, and the run record keeps its id. A finished checkpoint makes the call return at once.
    """
    run = Run(name or "run")
    label = name or " ".join(str(v) for v in (task.name, _method_config(model).get("method")) if v)
    parallel = kwargs.get("parallel")
    if parallel is not None and not parallel.main:
        progress = "off"  # one progress display for the whole run: rank 0's
    meter = Progress(steps, label, progress, tokens_per_step=tokens_per_step)
    try:
        for event in train(model, task, steps, run=run, **kwargs):
            meter.update(event.step, event.loss)
            if on_event is not None:
                on_event(event)
    finally:
        meter.close()
    return run


def pretrained(
    task: Task,
    steps: int,
    *,
    lr: float | None = None,
    seed: int = 0,
    batch_size: int | None = None,
    schedule: Callable[[int], float] | None = None,
    cache: bool = True,
) -> nn.Module:
    """A model fully trained on ``task``, trained once and cached in ``$SPECTRALLAB_HOME/bases``.

    The cache key hashes the task's configuration and the training settings, so changing either
    trains a new base. A returned model is a fresh copy: adapting it never alters the cache.
    """
    lr = task.lr if lr is None else lr
    key_fields = {
        "task": task.config(),
        "steps": steps,
        "lr": lr,
        "seed": seed,
        "batch_size": batch_size,
        "schedule": getattr(schedule, "__qualname__", None),
        "torch": torch.__version__.split("+")[0],
    }
    key = hashlib.sha256(json.dumps(key_fields, sort_keys=True, default=str).encode()).hexdigest()[:16]
    path = home() / "bases" / f"{task.name}-{key}.pt"
    model = task.make_model(seed=seed)
    if cache and path.exists():
        model.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
        return model.to(task.device)
    fit(
        model,
        task,
        steps,
        lr=lr,
        seed=seed,
        batch_size=batch_size,
        schedule=schedule,
        record=False,
        name=f"pretrain-{task.name}",
        config={"method": "full", "purpose": "pretrained base"},
    )
    if cache:
        ckpt.atomic_save({k: v.detach().cpu() for k, v in model.state_dict().items()}, path)
    return model
