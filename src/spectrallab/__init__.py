"""Spectral Lab: low-rank, sparse and spectral training of neural networks, one readable method per file.

import spectrallab as sl
model = sl.apply(model, "lora", rank=8)     # in place; returns the model
opt = sl.optimizer(model, lr=1e-3)          # method-aware AdamW
sl.spectrum(model.fc1)                      # singular values of the effective weight
sl.options_table("lora")                    # a method's options: default, allowed values, help
sl.save_peft(model, "adapter/")             # a PEFT LoRA adapter, where an exact one exists
model = sl.merge(model)                     # back to plain nn.Linear, same outputs
"""

from . import linalg, methods, tasks  # noqa: F401  (methods registers every method; sl.methods() lists them)
from .apply import adapted_layers, apply, merge, method_class, options_table, resolve_targets, trainable_parameters
from .experiments import PairedDifference, paired_difference, window_losses
from .linalg import spectrum
from .memory import memory_report
from .methods.base import AdaptedLinear, Method, MissingOptimizerHooksWarning, register
from .optim import optimizer
from .peft_io import PeftExport, PeftExportError, load_peft, save_peft
from .profiles import device, pick, profile
from .runs import Run, load_runs
from .tasks import task
from .train import Event, fit, pretrained, train, warmup_cosine
from .truncate import TruncatedLinear, truncate

__version__ = "0.1.0"


__all__ = [
    "methods",
    "apply",
    "merge",
    "trainable_parameters",
    "optimizer",
    "spectrum",
    "adapted_layers",
    "method_class",
    "options_table",
    "resolve_targets",
    "linalg",
    "tasks",
    "task",
    "train",
    "fit",
    "pretrained",
    "Event",
    "Run",
    "load_runs",
    "warmup_cosine",
    "pick",
    "profile",
    "device",
    "memory_report",
    "Method",
    "AdaptedLinear",
    "register",
    "MissingOptimizerHooksWarning",
    "save_peft",
    "load_peft",
    "PeftExport",
    "PeftExportError",
    "truncate",
    "TruncatedLinear",
    "window_losses",
    "paired_difference",
    "PairedDifference",
]
