"""``python -m spectrallab.pretrain`` (or ``spectrallab-pretrain``): the head-to-head's pre-training
run from the command line — on one process, or on several under ``torchrun``.

The run is the one ``book/head_to_head.md`` races (:func:`spectrallab.experiments.head_to_head`): the
character-level GPT from scratch, a method applied to its ``qkv``, ``proj``, ``fc1`` and ``fc2``
layers with everything else training too, AdamW through :func:`spectrallab.optimizer`, a linear
warm-up and cosine decay. A profile (``--profile``, default the active one) gives the sizes, the
steps, the rank, the methods' periods and the tuned learning rate; every one of them can be
changed by a flag, and so can each option the method declares (its ``Option`` declarations make
the flags: ``--method sst --help`` lists SST's)::

    python -m spectrallab.pretrain --method sst --rank 8 --resample-every 100 --steps 2000 \\
        --checkpoint runs/sst.pt
    torchrun --nproc-per-node 2 -m spectrallab.pretrain --method galore   # DDP over 2 processes
    torchrun --nproc-per-node 2 -m spectrallab.pretrain --method lora --fsdp   # FSDP2 shards

* ``--checkpoint FILE``: a checkpoint every ``--checkpoint-every`` steps, and a killed run resumes
  from it when the same command runs again (bit for bit on one process: :func:`spectrallab.train`).
  The file holds the whole, unsharded state, so a run may resume on another number of processes.
* The run record lands with the notebooks' (``$SPECTRALLAB_HOME/runs``), so the ``Compare`` widget
  overlays a command-line run on the chapter's.
* Progress shows tokens/s; the last line is a summary: validation loss, perplexity, trainable
  parameters, optimizer-state bytes, peak memory and throughput (``--summary-json`` writes it too).
  The summary's tokens/s (and MFU, on a GPU) counts the training steps' own time after the first
  step: evaluations, checkpoints and the first step's one-time costs (compilation) are left out;
  ``tokens_per_second_overall`` in the JSON is the same call's steps over its whole wall time.
* Under ``torchrun`` each of N processes trains on its slice of the same global batch (see
  :mod:`spectrallab.distributed`), so ``--batch-size`` is the global batch and must split evenly.
* ``--autocast bf16`` runs forward and loss in bfloat16 autocast; ``--compile`` compiles the model
  with ``torch.compile``.

A method option that shares its name with a flag of the command is spelled ``--method-<name>``
(SST's sampling seed: ``--method-seed``; the run's ``--seed`` seeds the model and the data).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import socket
import sys
import time
from typing import Any

import torch

from . import distributed
from .apply import apply, method_class, trainable_parameters
from .experiments import LABELS, head_to_head
from .memory import memory_report
from .methods import registered
from .methods.options import Option
from .optim import optimizer as make_optimizer
from .profiles import PROFILES
from .tasks import CharGPT
from .train import fit, warmup_cosine

COMMAND_FLAGS = {
    "method",
    "profile",
    "steps",
    "batch_size",
    "lr",
    "schedule",
    "lr_warmup",
    "seed",
    "eval_every",
    "checkpoint",
    "checkpoint_every",
    "corpus",
    "n_chars",
    "d_model",
    "n_layer",
    "n_head",
    "context",
    "targets",
    "fsdp",
    "device",
    "autocast",
    "compile",
    "progress",
    "name",
    "summary_json",
}
AUTOCAST = {"bf16": torch.bfloat16, "fp16": torch.float16}


def flag_name(option: str) -> str:
    """The command-line spelling of a method option: ``update_proj_gap`` → ``update-proj-gap``;
    a name the command itself uses gets ``method-`` in front."""
    return ("method_" + option if option in COMMAND_FLAGS else option).replace("_", "-")


def _value_type(name: str, option: Option):
    """argparse's ``type=``: the declared kind, with "none"/"auto" for an option that may be None."""
    base = {"int": int, "seed": int, "float": float}.get(option.kind, str)

    def convert(text: str):
        if option.none is not None and text.lower() in ("none", "auto"):
            return None
        try:
            return base(text)
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"{name}: {text!r} is not {'an' if base is int else 'a'} {option.kind}"
            ) from None

    convert.__name__ = option.kind  # argparse's "invalid <name> value" message
    return convert


def add_method_options(parser: argparse.ArgumentParser, method: str) -> dict[str, str]:
    """One flag per option ``method`` declares; returns ``{argparse dest: option name}``."""
    group = parser.add_argument_group(
        f"options of {method!r} (declared by the method; default: the race's or the method's)"
    )
    dests = {}
    for name, option in method_class(method).options.items():
        flag = flag_name(name)
        help_text = option.help + (f"; {option.range_text()}" if option.kind in ("int", "float") else "")
        if option.none is not None:
            help_text += f"; none: {option.none}"
        kwargs: dict[str, Any] = {"dest": "opt_" + name, "default": argparse.SUPPRESS, "help": help_text}
        if option.kind == "bool":
            kwargs["action"] = argparse.BooleanOptionalAction
        else:
            kwargs["type"] = _value_type(flag, option)
            kwargs["metavar"] = option.kind.upper()
            if option.kind == "choice":
                kwargs["choices"] = option.allowed_choices()
                kwargs.pop("type")
                kwargs.pop("metavar")
        group.add_argument("--" + flag, **kwargs)
        dests["opt_" + name] = name
    return dests


def parser_for(method: str | None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="spectrallab-pretrain",
        description="Pre-train the head-to-head's character-level GPT with one method, on one process or "
        "under torchrun (DDP, or FSDP2 with --fsdp).",
    )
    parser.add_argument("--method", required=True, choices=registered(), help="the method (registered name)")
    parser.add_argument("--profile", choices=PROFILES, default=None, help="sizes, steps and rates (default: active)")
    run = parser.add_argument_group("the run (default: the profile's head-to-head)")
    run.add_argument("--steps", type=int, help="optimizer steps")
    run.add_argument("--batch-size", type=int, help="the global batch, in sequences (split over the processes)")
    run.add_argument("--lr", type=float, help="peak learning rate (default: the race's tuned rate)")
    run.add_argument("--schedule", choices=("cosine", "constant"), default="cosine", help="warm-up + cosine, or flat")
    run.add_argument("--lr-warmup", type=int, help="steps of linear LR warm-up (default: 5 %% of the steps)")
    run.add_argument("--seed", type=int, default=0, help="seeds the model, the method's draws and the data order")
    run.add_argument("--eval-every", type=int, help="validation cadence in steps (default: 10 per run)")
    run.add_argument("--checkpoint", help="checkpoint file: written periodically, resumed from when it exists")
    run.add_argument("--checkpoint-every", type=int, help="steps between checkpoints (default: 10 per run)")
    run.add_argument("--targets", help="comma-separated layer names to adapt (default: qkv,proj,fc1,fc2)")
    model = parser.add_argument_group("the model and data (default: the profile's)")
    model.add_argument("--corpus", choices=("python", "docs"), default="python", help="the training text")
    model.add_argument("--n-chars", type=int, help="characters of text")
    model.add_argument("--d-model", type=int, help="width d")
    model.add_argument("--n-layer", type=int, help="transformer blocks")
    model.add_argument("--n-head", type=int, help="attention heads")
    model.add_argument("--context", type=int, help="sequence length in characters (tokens)")
    system = parser.add_argument_group("where and how")
    system.add_argument("--fsdp", action="store_true", help="shard with FSDP2 (fully_shard) instead of DDP")
    system.add_argument("--device", help="cpu, cuda, cuda:1 ... (default: CUDA when available; torchrun: LOCAL_RANK)")
    system.add_argument("--autocast", choices=tuple(AUTOCAST), help="forward and loss in autocast at this dtype")
    system.add_argument("--compile", action="store_true", help="torch.compile the model")
    system.add_argument("--progress", choices=("bar", "lines", "off"), help="progress display (default: by terminal)")
    system.add_argument("--name", help="the run record's name")
    system.add_argument("--summary-json", help="also write the final summary to this JSON file")
    if method is not None and method in registered():
        parser.set_defaults(method_options=add_method_options(parser, method))
    return parser


def parse(argv: list[str] | None) -> argparse.Namespace:
    """Two passes: the method first (it decides which option flags exist), then everything."""
    first = argparse.ArgumentParser(add_help=False)
    first.add_argument("--method")
    known, _ = first.parse_known_args(argv)
    return parser_for(known.method).parse_args(argv)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def peak_memory(device: torch.device) -> tuple[int, str]:
    """Peak bytes of this process: CUDA's allocator peak on a GPU, else the resident set's peak."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device), "CUDA max_memory_allocated"
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024, "peak RSS"  # Linux: KiB


def optimizer_state_bytes(opt: torch.optim.Optimizer) -> int:
    """Bytes of every tensor in the optimizer state, on this process (a DTensor: its local shard)."""
    total = 0

    def visit(value):
        nonlocal total
        if isinstance(value, torch.Tensor):
            local = value.to_local() if hasattr(value, "to_local") else value
            total += local.numel() * local.element_size()
        elif isinstance(value, dict):
            for v in value.values():
                visit(v)
        elif isinstance(value, (list, tuple)):
            for v in value:
                visit(v)

    visit(opt.state)
    return total


def training_throughput(step_seconds: list[float], tokens_per_step: int) -> float:
    """Tokens per second of training: the steps' own time, without the evaluations and checkpoints
    between them, and without this call's first step when there are others. The first step pays
    for what happens once — ``torch.compile``'s compilation, CUDA's kernels and allocator warming
    up — which on a short GPU run would hide the rate a long run trains at (and so the MFU)."""
    steady = step_seconds[1:] if len(step_seconds) > 1 else step_seconds
    total = sum(steady)
    return tokens_per_step * len(steady) / total if steady and total > 0 else math.nan


# Dense bf16 tensor-core peaks (FLOP/s, without sparsity) from the vendors' data sheets, for MFU.
BF16_PEAK = {"H200": 989e12, "H100": 989e12, "A100": 312e12, "L40S": 362e12, "A10": 125e12}


def model_flops_per_token(model: torch.nn.Module, n_layer: int, d_model: int, context: int) -> int:
    """Training FLOPs per token of the dense architecture, as MFU counts them (PaLM, Appendix B):
    6·N for the weights' forward and backward (N: parameters outside the embeddings) plus
    12·L·d·T for attention's score and value products. The method's own savings or overheads are
    deliberately not in it: MFU says how much of the GPU the *model's* arithmetic uses."""
    embeddings = sum(m.weight.numel() for m in model.modules() if isinstance(m, torch.nn.Embedding))
    weights = sum(p.numel() for p in model.parameters()) - embeddings
    return 6 * weights + 12 * n_layer * d_model * context


def bf16_peak(device: torch.device) -> float | None:
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((peak for key, peak in BF16_PEAK.items() if key in name), None)


def _human(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{int(n)} B"
        n /= 1024
    return f"{n:.1f} GiB"


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Run the command; returns the summary (also printed as the last line, on rank 0)."""
    args = parse(argv)
    race = head_to_head(args.profile)
    method = args.method

    # -- processes and device --------------------------------------------------------------------
    parallel_run = distributed.launched() or args.fsdp
    if args.fsdp and not distributed.launched():  # FSDP2 on one process: a group of one
        os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
        os.environ.setdefault("MASTER_PORT", str(_free_port()))
        os.environ.setdefault("RANK", "0")
        os.environ.setdefault("WORLD_SIZE", "1")
    device = torch.device(args.device) if args.device else None
    rank, world = 0, 1
    if parallel_run:
        rank, world, device = distributed.init(device)
    elif device is None:
        from .profiles import device as default_device

        device = default_device()

    # -- the task, the model, the method ----------------------------------------------------------
    sizes = dict(race.task_size)
    for key in ("n_chars", "d_model", "n_layer", "n_head", "context"):
        if getattr(args, key) is not None:
            sizes[key] = getattr(args, key)
    task = CharGPT(corpus=args.corpus, **sizes, eval_batches=8)
    task.batch_size = args.batch_size or race.batch_size
    steps = args.steps or race.steps
    targets = args.targets.split(",") if args.targets else list(race.targets)
    options = dict(race.options(method)) if method in race.methods else {}
    for dest, name in getattr(args, "method_options", {}).items():
        if hasattr(args, dest):
            options[name] = getattr(args, dest)
    if method == "sst":
        options.setdefault("seed", args.seed)
    if args.lr is not None:
        lr = args.lr
    elif method in race.methods:
        lr = race.lr(method)
    else:
        lr = task.lr
    model = task.make_model(seed=args.seed)  # also seeds the global generator the method draws from
    flops_per_token = model_flops_per_token(model, task.n_layer, task.d_model, task.context)
    if method != "full":
        apply(model, method, targets=targets, freeze_others=False, **options)
    model.to(device)
    task.to(device)
    if args.compile:
        model.compile()
    parallel = distributed.wrap(model, fsdp=args.fsdp, device=device) if parallel_run else None
    opt = make_optimizer(model, lr=lr)
    warmup = args.lr_warmup if args.lr_warmup is not None else steps // 20
    schedule = warmup_cosine(steps, warmup=warmup) if args.schedule == "cosine" else None
    tokens_per_step = task.batch_size * task.context
    label = LABELS.get(method, method)
    name = args.name or f"{label} pretrain lr={lr:g} seed={args.seed}" + (f" ×{world}" if world > 1 else "")

    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    started = time.perf_counter()
    ends: list[Any] = []  # the first and the latest event: this call's steps and seconds
    step_seconds: list[float] = []  # each training step's own time, in order

    def keep_ends(event) -> None:
        if not ends:
            ends.append(event)
        ends[1:] = [event]
        if event.step_seconds is not None:
            step_seconds.append(event.step_seconds)

    run = fit(
        model,
        task,
        steps,
        optimizer=opt,
        lr=lr,
        schedule=schedule,
        eval_every=args.eval_every,
        seed=args.seed,
        name=name,
        progress=args.progress,
        on_event=keep_ends,
        tokens_per_step=tokens_per_step,
        checkpoint=args.checkpoint,
        checkpoint_every=args.checkpoint_every,
        parallel=parallel,
        autocast=AUTOCAST[args.autocast] if args.autocast else None,
        device=device,
        config={
            "command": "spectrallab.pretrain",
            "race_profile": race.profile,
            "targets": targets,
            "schedule": args.schedule,
            "lr_warmup": warmup,
            "autocast": args.autocast,
            "compile": args.compile,
        },
    )
    wall = time.perf_counter() - started

    # -- the summary -----------------------------------------------------------------------------
    # A sharded parameter's numel is the whole one's (a DTensor's shape is global). Summing each
    # process's local rows instead would count twice what FSDP2 holds unsharded at that moment: after
    # a forward without backward (the last evaluation) the root's parameters stay gathered.
    trainable = trainable_parameters(model)
    if parallel is None or parallel.kind == "ddp":
        state_bytes = memory_report(model, opt).optimizer_state  # bytes
    else:  # FSDP2: each process holds a shard of the optimizer's state; the whole is the sum
        state_bytes = round(parallel.mean(optimizer_state_bytes(opt)) * world)
    peak, peak_kind = peak_memory(device)
    first, last = ends[0], ends[-1]  # a resumed run's first event is the step it resumed at
    trained = last.step - first.step
    seconds = last.seconds - first.seconds
    tokens_per_second_overall = tokens_per_step * trained / seconds if trained and seconds > 0 else math.nan
    tokens_per_second = training_throughput(step_seconds, tokens_per_step)
    val = run.final("val_loss")
    peak_flops = bf16_peak(device)
    mfu = flops_per_token * tokens_per_second / peak_flops if peak_flops and trained else None
    summary = {
        "method": method,
        "steps": last.step,
        "steps_this_call": trained,
        "processes": world,
        "parallel": None if parallel is None else parallel.kind,
        "device": str(device),
        "val_loss": val,
        "perplexity": math.exp(val) if math.isfinite(val) else math.nan,
        "trainable_parameters": trainable,
        "optimizer_state_bytes": state_bytes,
        "peak_memory_bytes": peak,
        "peak_memory_kind": peak_kind,
        "tokens_per_step": tokens_per_step,
        "tokens_per_second": tokens_per_second,  # training steps after the first (training_throughput)
        "tokens_per_second_overall": tokens_per_second_overall,  # this call's steps over its wall time
        "model_flops_per_token": flops_per_token,
        "model_tflops_per_second": flops_per_token * tokens_per_second / 1e12,
        "mfu": mfu,  # against the GPU's dense bf16 peak; None off CUDA, or for a GPU not in BF16_PEAK
        "wall_seconds": wall,
        "lr": lr,
        "options": options,
        "run": run.id,
        "record": str(run.path) if run.path else None,
    }
    if rank == 0:
        speed = (
            f"{tokens_per_second:,.0f} tokens/s" + (f", MFU {mfu:.1%}" if mfu is not None else "")
            if trained
            else f"no step taken: {args.checkpoint} was already at step {last.step}"
        )
        print(
            f"{label}: val loss {val:.4f}, perplexity {summary['perplexity']:.2f}, "
            f"trainable {trainable:,}, optimizer state {_human(state_bytes)}, "
            f"peak memory {_human(peak)} ({peak_kind}), {speed} "
            f"({world} process{'es' if world > 1 else ''}, {device.type}), {summary['steps']} steps",
            flush=True,
        )
        if args.summary_json:
            from .checkpoint import atomic_write_text

            atomic_write_text(args.summary_json, json.dumps(summary, indent=1, default=str))
    if parallel_run:
        torch.distributed.destroy_process_group()
    return summary


def console() -> None:
    """The ``spectrallab-pretrain`` console script: a bad option value ends with its message, not a traceback."""
    try:
        main(sys.argv[1:])
    except ValueError as error:
        print(f"spectrallab-pretrain: error: {error}", file=sys.stderr)
        raise SystemExit(2) from None


if __name__ == "__main__":
    console()
