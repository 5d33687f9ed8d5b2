"""Every registered method under torch's DistributedDataParallel: two CPU processes (gloo), each
training on its half of a global batch, must end bit-identical to each other and to one process
that takes the ranks' shares in turn (DDP's gradient, bit for bit), and equal within float
tolerance to one process trained on the whole batch.

Why the ranks agree — and what DDP does not do for a method:

* DDP's constructor broadcasts rank 0's parameters **and buffers** (``broadcast_buffers=True``, the
  default) and every forward broadcasts the buffers again; backward all-reduces (averages) the
  gradients, so every rank's optimizer steps with the same numbers. A method whose state lives in
  parameters and persistent buffers (SST's ``rng_state`` and clocks, ReLoRA's stream, SLTrain's
  support ...) therefore starts from rank 0's draws, and whatever its optimizer hooks compute from
  that state and the averaged gradients (SST's resampling and re-SVD, ReLoRA's re-drawn ``A`` and
  pruning masks, GaLore's projections, SVDs of all-reduced gradients) is the same on every rank.
* What DDP does **not** sync: plain Python attributes (a seed kept on the method object, a generator
  in a hook's closure), anything drawn from the global generator after DDP was built, and — with
  ``DDP(..., broadcast_buffers=False)`` — buffers at all. So every rank here seeds its global
  generator differently before ``apply`` (``torch.manual_seed(100 + rank)``), and the buffer-free
  variant checks that methods drawing a stream from the global generator (``seed=None``) agree by
  construction: ``resolve_seed`` broadcasts rank 0's seed when a process group is initialized.

The checks run in one spawned group shared by every case (``tests/distributed_harness.py``).
"""

from __future__ import annotations

import warnings

import pytest
import torch
import torch.nn.functional as F
from distributed_harness import SpawnedGroup
from torch.nn.modules.utils import consume_prefix_in_state_dict_if_present
from torch.nn.parallel import DistributedDataParallel as DDP

import spectrallab as sl
from spectrallab.methods.base import registered

WORLD = 2
PERIOD = 3  # every periodic method does its work every 3 steps: within STEPS, twice
# SST resamples at step 3 and re-SVDs at 6 (two periods a round), ReLoRA restarts at 3 and 6, GaLore
# projects at 1, 4 and 7; step 7 is the first after SST's re-SVD and ReLoRA's second restart.
STEPS = 7
GLOBAL_BATCH = 8  # sequences per step, WORLD equal shares
LR = 1e-2
TASK = {"d_model": 32, "n_layer": 2, "n_head": 4, "context": 16, "n_chars": 20000}
METHODS = sorted(registered())

_task = None


def task():
    global _task
    if _task is None:
        _task = sl.task("chargpt", **TASK)
    return _task


def options_for(method: str, seed_none: bool = False) -> dict:
    """A rank that fits every layer of the tiny GPT, and the method's periodic work every PERIOD steps."""
    cls = registered()[method]
    options = {"rank": 4} if "rank" in cls.options else {}
    options.update(cls.period_options(PERIOD) or {})
    if "periods_per_round" in cls.options:
        options["periods_per_round"] = 2  # a re-SVD within the run, not only resampling
    if seed_none and "seed" in cls.options and cls.options["seed"].none is not None:
        options["seed"] = None  # the stream drawn from the global generator
    return options


def build(method: str, rank: int, seed_none: bool = False):
    """The same base model on every rank, then ``apply`` with a *different* global generator per rank."""
    model = task().make_model(seed=0)
    torch.manual_seed(100 + rank)
    return sl.apply(model, method, **options_for(method, seed_none))


def global_batch(step: int) -> tuple[torch.Tensor, torch.Tensor]:
    return task().batch("train", GLOBAL_BATCH, torch.Generator().manual_seed(step))


def train(model, forward, opt, rank: int = 0, world: int = 1, accumulate: int = 1, steps: int = STEPS) -> None:
    """STEPS steps; rank ``rank`` of ``world`` takes its contiguous share of each global batch. With
    ``accumulate=k`` one process takes the k shares in turn, each loss divided by k: the gradient DDP
    forms (each rank's gradient divided by the world size, then summed), bit for bit."""
    for step in range(steps):
        shares = zip(
            *(t.chunk(world * accumulate)[rank * accumulate : (rank + 1) * accumulate] for t in global_batch(step))
        )
        opt.zero_grad()
        for x, y in shares:
            logits = forward(x)
            loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1))
            (loss / accumulate if accumulate > 1 else loss).backward()
        opt.step()


def ddp_case(rank: int, world: int, method: str, broadcast_buffers: bool, seed_none: bool, optimizer_of: str) -> dict:
    """On each rank: apply, wrap in DDP, train on this rank's shares; the state that results.

    ``optimizer_of``: "model" builds ``sl.optimizer`` from the wrapped model, "ddp" from the wrapper
    (its parameter names prefixed ``module.``)."""
    model = build(method, rank, seed_none)
    drawn = {k: v.clone() for k, v in model.named_buffers()}  # this rank's own draws, before DDP syncs any
    with warnings.catch_warnings():
        # torch 2.13 deprecates broadcast_buffers; False is still the one way to skip the buffer sync at init.
        warnings.simplefilter("ignore", FutureWarning)
        ddp = DDP(model, broadcast_buffers=broadcast_buffers)
    with warnings.catch_warnings():
        warnings.simplefilter("error", sl.MissingOptimizerHooksWarning)  # the hooks are there: no warning
        opt = sl.optimizer(model if optimizer_of == "model" else ddp, lr=LR)
        train(model, ddp, opt, rank, world)
    return {
        "model": model.state_dict(),
        "optimizer": opt.state_dict(),
        "checkpoint": ddp.state_dict(),
        "buffers before DDP": drawn,
    }


# -- comparisons -------------------------------------------------------------------------------------


def flatten(state, prefix: str = "") -> dict[str, object]:
    """A nested state (dicts, lists, tensors, numbers) as {path: leaf}."""
    if isinstance(state, dict):
        return {k: v for key, value in state.items() for k, v in flatten(value, f"{prefix}{key}/").items()}
    if isinstance(state, (list, tuple)):
        return {k: v for i, value in enumerate(state) for k, v in flatten(value, f"{prefix}{i}/").items()}
    return {prefix.rstrip("/"): state}


def assert_identical(a, b, what: str) -> None:
    fa, fb = flatten(a), flatten(b)
    assert fa.keys() == fb.keys(), f"{what}: different keys"
    for key, x in fa.items():
        y = fb[key]
        if torch.is_tensor(x):
            assert x.dtype == y.dtype and x.shape == y.shape and torch.equal(x, y), f"{what}: {key} differs"
        else:
            assert x == y, f"{what}: {key} is {x!r} vs {y!r}"


def assert_close(a, b, what: str, rtol: float = 1e-4) -> None:
    """Floats within ``rtol`` of the tensor's scale; integers (indices, clocks, streams) exactly."""
    fa, fb = flatten(a), flatten(b)
    assert fa.keys() == fb.keys(), f"{what}: different keys"
    for key, x in fa.items():
        y = fb[key]
        if torch.is_tensor(x) and x.is_floating_point():
            scale = y.abs().max().item() if y.numel() else 0.0
            err = (x - y).abs().max().item() if x.numel() else 0.0
            assert err <= rtol * scale + 1e-7, f"{what}: {key} off by {err:.3g} (scale {scale:.3g})"
        elif torch.is_tensor(x):
            assert torch.equal(x, y), f"{what}: {key} differs"
        else:
            assert x == y, f"{what}: {key} is {x!r} vs {y!r}"


@pytest.fixture(scope="module")
def group():
    spawned = SpawnedGroup(WORLD, timeout=60)
    yield spawned
    spawned.close()


def probe_logits(model) -> torch.Tensor:
    x, _ = task().batch("val", 4, torch.Generator().manual_seed(99))
    with torch.no_grad():
        return model(x)


@pytest.mark.parametrize("method", METHODS)
def test_ddp_matches_one_process(group, method):
    ranks = group.run(ddp_case, method, True, False, "model")
    # Every rank: bit-identical parameters, buffers (the method's state) and optimizer state.
    for rank in range(1, WORLD):
        assert_identical(ranks[rank]["model"], ranks[0]["model"], f"{method}: model state of rank {rank} vs 0")
        assert_identical(ranks[rank]["optimizer"], ranks[0]["optimizer"], f"{method}: optimizer of rank {rank} vs 0")
    # One process taking the ranks' shares in turn (loss / WORLD each) forms DDP's gradient exactly, so
    # it ends bit-identical: DDP adds nothing but the averaging, every hook sees the same numbers.
    model = build(method, rank=0)
    opt = sl.optimizer(model, lr=LR)
    train(model, model, opt, accumulate=WORLD)
    assert_identical(ranks[0]["model"], model.state_dict(), f"{method}: DDP vs one process accumulating, model")
    assert_identical(ranks[0]["optimizer"], opt.state_dict(), f"{method}: DDP vs one process accumulating, optimizer")
    # One process on the concatenated batch: the same model within float tolerance. Not tighter than
    # 1e-3: step 7 is the first after SST's re-SVD, whose zeroed moments (Adam's step count kept) make
    # that step about ±lr/2 per entry whatever the gradient's size, so a gradient entry at float-noise
    # level (summed in another order here) moves by lr/2 either way (SST: 5e-4; every other method 1e-6).
    whole = build(method, rank=0)
    train(whole, whole, sl.optimizer(whole, lr=LR))
    # The wrapper's checkpoint is the model's, keys prefixed "module.": stripped, it loads into a plain model.
    checkpoint = dict(ranks[0]["checkpoint"])
    assert list(checkpoint) == [f"module.{k}" for k in ranks[0]["model"]]
    consume_prefix_in_state_dict_if_present(checkpoint, "module.")
    loaded = build(method, rank=1)
    loaded.load_state_dict(checkpoint)
    expected = probe_logits(whole)
    err = (probe_logits(loaded) - expected).abs().max().item()
    assert err <= 1e-3 * expected.abs().max().item(), (
        f"{method}: DDP vs one process on the whole batch: logits off by {err:.3g}"
    )


@pytest.mark.parametrize("method", METHODS)
def test_draws_agree_without_buffer_sync(group, method):
    """``DDP(broadcast_buffers=False)`` syncs only parameters: a method's buffers (its streams, SLTrain's
    support, PiSSA's initial factors) must already agree, though each rank seeded its global generator
    differently before ``apply`` — with ``seed=None`` too, where a method has it (``resolve_seed`` takes
    rank 0's seed). The optimizer is built from the DDP wrapper here: it must train exactly as one
    built from the model."""
    ranks = group.run(ddp_case, method, False, True, "ddp")
    for rank in range(1, WORLD):
        drawn = ranks[rank]["buffers before DDP"]
        assert_identical(drawn, ranks[0]["buffers before DDP"], f"{method}: buffers drawn at apply, rank {rank} vs 0")
        assert_identical(ranks[rank]["model"], ranks[0]["model"], f"{method}: model state of rank {rank} vs 0")
        assert_identical(ranks[rank]["optimizer"], ranks[0]["optimizer"], f"{method}: optimizer of rank {rank} vs 0")
    model = build(method, rank=0, seed_none=True)
    opt = sl.optimizer(model, lr=LR)
    train(model, model, opt, accumulate=WORLD)
    assert_identical(ranks[0]["model"], model.state_dict(), f"{method}: DDP vs one process accumulating, model")
    assert_identical(ranks[0]["optimizer"], opt.state_dict(), f"{method}: DDP vs one process accumulating, optimizer")


def hooks_warning_case(rank: int, world: int, method: str) -> dict:
    """One step under DDP with ``sl.optimizer(ddp)`` and one with a plain AdamW: which of them warns."""
    warned = {}
    for name in ("spectrallab", "plain"):
        model = build(method, rank)
        ddp = DDP(model)
        opt = sl.optimizer(ddp, lr=LR) if name == "spectrallab" else torch.optim.AdamW(ddp.parameters(), lr=LR)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", sl.MissingOptimizerHooksWarning)
            train(model, ddp, opt, rank, world, steps=1)
        warned[name] = [str(w.message) for w in caught if issubclass(w.category, sl.MissingOptimizerHooksWarning)]
    return warned


@pytest.mark.parametrize("method", [m for m in METHODS if registered()[m].needs_optimizer_hooks])
def test_missing_hooks_warning_under_ddp(group, method):
    """The layers inside the wrapper are the model's: ``sl.optimizer(ddp)`` carries their hooks (no
    warning), a plain optimizer over ``ddp.parameters()`` does not (the warning, once)."""
    for rank, warned in enumerate(group.run(hooks_warning_case, method)):
        assert warned["spectrallab"] == [], f"{method}, rank {rank}: sl.optimizer(ddp) warned {warned['spectrallab']}"
        assert len(warned["plain"]) == 1 and repr(method) in warned["plain"][0], (
            f"{method}, rank {rank}: {warned['plain']}"
        )
