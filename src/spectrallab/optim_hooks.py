"""The step-hook plumbing that methods install on a torch optimizer: LR multipliers and step checks.

It sits at the bottom of the library (torch only), so a method file can use it without importing
:mod:`spectrallab.optim`, which builds optimizers for adapted models and so sits above every method.
``spectrallab.optim`` re-exports these functions (``spectrallab.optim.add_lr_multiplier`` works).
"""

from __future__ import annotations

from collections.abc import Callable

import torch

# -- methods that own part of the learning-rate schedule -----------------------------------------
#
# ReLoRA's jagged restarts and SST's warm-up after each resampling are part of the method, not of
# the user's schedule: a hand-written loop with its own scheduler must still get them. A method
# registers a multiplier (a side-effect-free callable returning a float for the *next* step); during
# ``opt.step()`` every group's lr is multiplied by the product of all registered multipliers, and
# restored afterwards, so a user's LR scheduler (which writes ``group["lr"]``) composes with it.
#
# -- checks before anything changes ----------------------------------------------------------------
#
# A method whose step does more than the optimizer's arithmetic (an SVD, a merge) validates its
# input first, through ``add_step_check``: every check runs at the very start of ``opt.step()``,
# before the LR scaling and before any method hook or the optimizer touch a parameter, so a
# ``ValueError`` leaves parameters, buffers and optimizer state exactly as they were — a loop can
# catch it, ``zero_grad()`` and go on with the next batch.


def install(opt: torch.optim.Optimizer) -> None:
    """The first pre-hook (checks, then LR scaling) and the first post-hook (LR restore), once."""
    if hasattr(opt, "_spectrallab_lr_multipliers"):
        return
    opt._spectrallab_lr_multipliers = []
    opt._spectrallab_checks = []
    saved: list[float] = []

    def check_and_scale(optimizer, args, kwargs):
        for check in optimizer._spectrallab_checks:
            check(optimizer)
        factor = lr_multiplier(optimizer)
        saved[:] = [group["lr"] for group in optimizer.param_groups]
        for group in optimizer.param_groups:
            group["lr"] = group["lr"] * factor

    def restore(optimizer, args, kwargs):
        for group, lr in zip(optimizer.param_groups, saved):
            group["lr"] = lr

    # Registered first, so they wrap every other method hook (hooks run in order).
    opt.register_step_pre_hook(check_and_scale)
    opt.register_step_post_hook(restore)


def add_lr_multiplier(opt: torch.optim.Optimizer, multiplier: Callable[[], float]) -> None:
    """Scale every param group's lr by ``multiplier()`` for the duration of each ``opt.step()``."""
    install(opt)
    opt._spectrallab_lr_multipliers.append(multiplier)


def add_step_check(opt: torch.optim.Optimizer, check: Callable[[torch.optim.Optimizer], None]) -> None:
    """Run ``check(opt)`` at the start of every ``opt.step()``, before anything is changed.

    ``check`` raises (``ValueError`` naming the layer and the step) to refuse the step.
    """
    install(opt)
    opt._spectrallab_checks.append(check)


def lr_multiplier(opt: torch.optim.Optimizer) -> float:
    """The product of the method-owned LR multipliers that the next ``opt.step()`` will apply."""
    factor = 1.0
    for multiplier in getattr(opt, "_spectrallab_lr_multipliers", ()):
        factor *= float(multiplier())
    return factor


def effective_lr(opt: torch.optim.Optimizer, group: int = 0) -> float:
    """The learning rate the next step really uses: the group's lr times the method multipliers."""
    return opt.param_groups[group]["lr"] * lr_multiplier(opt)
