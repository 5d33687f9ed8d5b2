"""FSDP2 (``spectrallab.fsdp``): two processes (gloo, CPU) train as one process on the whole batch.

One process group of two ranks is spawned once for the whole file (``distributed`` below); it runs
every case and rank 0 saves what it gathered, whole. The tests then compare, in this process, with
one process trained on the concatenated batches:

* LoRA, SST (resampling, swaps and a re-SVD within the steps) and GaLore (new projections within
  the steps): the parameters after the run equal the single-process run's to float tolerance (for
  SST, the function ``U diag(Σ) Vh`` and Σ: an SVD's singular vectors are unique only up to sign);
* every other registered method either does the same or is refused by ``shard`` with a
  ``ValueError`` naming it, the model left unsharded (ReLoRA; SVFT's scalar gate);
* what each optimizer step gathers: whole matrices only for the periodic work (SST's period ends,
  GaLore's new projections); the steps between exchange r-sized results;
* checkpoints: a sharded run saved half-way and resumed in a new sharded model ends exactly where
  the uninterrupted run ends (SST and GaLore, whose state lives in hooks, buffers and GaLoreAdamW);
  the same checkpoint resumed in one process, and one process's half-way state resumed sharded, end
  where one process's uninterrupted run ends (the optimizer's state is torch's own numbered layout
  in both).
"""

from __future__ import annotations

import math
import os
import socket
import time
import traceback
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

import spectrallab as sl
from spectrallab.methods.base import registered

WORLD = 2
STEPS = 6
LR = 3e-4  # small enough that no Σ of SST is clamped to 0 (a degenerate SVD makes runs differ)
TASK = {"n_chars": 6000, "d_model": 16, "n_layer": 1, "n_head": 2, "context": 8}
BATCH = 8  # per step, split in halves between the ranks
OPTIONS = {
    "lora": {"rank": 2},
    # A period every 2 steps, a re-SVD every 2 periods: swaps at steps 2 and 6, a re-SVD at step 4.
    "sst": {"rank": 2, "resample_every": 2, "warmup": 1, "periods_per_round": 2},
    "galore": {"rank": 2, "update_proj_gap": 2},  # new projections at steps 1, 3, 5
    "relora": {"rank": 2, "reset_every": 2, "restart_warmup": 1},
    "sorsa": {"rank": 2, "gamma": 0.1},
    "vera": {"rank": 4},
    "sltrain": {"rank": 2},
    "svft": {"gate": False},
    "svft_gated": {"gate": True},  # a 0-d parameter: fully_shard cannot shard it
}
NO_RANK = ("full", "svfit", "svft", "svft_gated")
CHECKPOINTED = ("sst", "galore")
TIMEOUT = 240


def method_of(case: str) -> str:
    return "svft" if case == "svft_gated" else case


def cases() -> list[str]:
    return sorted(set(registered()) | {"svft_gated"})


def task():
    return sl.task("chargpt", **TASK)


def build(case: str):
    model = task().make_model(0)
    torch.manual_seed(1)  # the methods' own draws (LoRA's A, ReLoRA's seed)
    options = OPTIONS.get(case, {} if case in NO_RANK else {"rank": 2})
    sl.apply(model, method_of(case), **options)
    return model


def batches(n: int = STEPS):
    g = torch.Generator().manual_seed(5)
    t = task()
    return [t.batch("train", BATCH, g) for _ in range(n)]


def train(model, steps, rank: int | None = None, opt=None):
    """``steps`` (a list of batches) on ``model``; with ``rank``, only that rank's half of each batch."""
    opt = opt or sl.optimizer(model, lr=LR)
    t = task()
    for x, y in steps:
        if rank is not None:
            half = x.shape[0] // WORLD
            x, y = x[rank * half : (rank + 1) * half], y[rank * half : (rank + 1) * half]
        t.loss(model, (x, y)).backward()
        opt.step()
        opt.zero_grad()
    return opt


# -- the distributed side: one spawned group, every case -------------------------------------------


def gathered_per_step(model, steps, rank: int) -> list[list[int]]:
    """Train the sharded ``model``; for each optimizer step, the sizes (global numel) of every tensor
    made whole in it (``DTensor.full_tensor``: an all-gather, or the all-reduce of a partial sum)."""
    from torch.distributed.tensor import DTensor

    original = DTensor.full_tensor
    sizes: list[list[int]] = []
    stepping = False

    def counted(self, *args, **kwargs):
        if stepping:
            sizes[-1].append(self.numel())
        return original(self, *args, **kwargs)

    opt, t = sl.optimizer(model, lr=LR), task()
    DTensor.full_tensor = counted
    try:
        for x, y in steps:
            half = x.shape[0] // WORLD
            t.loss(model, (x[rank * half : (rank + 1) * half], y[rank * half : (rank + 1) * half])).backward()
            sizes.append([])
            stepping = True
            opt.step()
            stepping = False
            opt.zero_grad()
    finally:
        DTensor.full_tensor = original
    return sizes


def _worker(rank: int, port: int, out: str) -> None:
    import warnings

    from spectrallab import fsdp

    warnings.simplefilter("ignore", sl.MissingOptimizerHooksWarning)
    # FSDP2 warns that a wrapped module returns a view (an in-place op on it would skip its hooks);
    # the tiny GPT never modifies a layer's output in place.
    warnings.filterwarnings("ignore", message="FSDP2-wrapped module")
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=WORLD)
    out = Path(out)
    results = {}
    try:
        steps = batches()
        for case in cases():
            model = build(case)
            try:
                fsdp.shard(model)
            except ValueError as error:
                sharded = any(fsdp.is_sharded(p) for p in model.parameters())
                results[case] = {"refused": str(error), "left_sharded": sharded}
                continue
            train(model, steps, rank)
            state, _ = fsdp.full_state_dicts(model)
            results[case] = {"state": state}
        model = build("sst")  # one unit per transformer block instead of per adapted layer
        fsdp.shard(model, units="blocks")
        train(model, steps, rank)
        results["sst_blocks"] = {"state": fsdp.full_state_dicts(model)[0]}
        for case in ("sst", "galore"):  # what each optimizer step makes whole
            model = build(case)
            fsdp.shard(model)
            results[f"{case}_gathered"] = gathered_per_step(model, steps, rank)
        # A non-finite gradient on one rank's rows, at a step with new projections: both ranks refuse
        model = build("galore")
        fsdp.shard(model)
        opt = sl.optimizer(model, lr=LR)
        x, y = steps[0]
        half = x.shape[0] // WORLD
        task().loss(model, (x[rank * half : (rank + 1) * half], y[rank * half : (rank + 1) * half])).backward()
        if rank == 1:
            model.blocks[0].mlp.fc1.weight.grad.to_local()[0, 0] = float("nan")
        before = fsdp.full_state_dicts(model)[0]
        try:
            opt.step()
            raised = None
        except ValueError as error:
            raised = str(error)
        after = fsdp.full_state_dicts(model)[0]
        results["galore_nonfinite"] = {
            "raised": raised,
            "unchanged": all(torch.equal(before[k], after[k]) for k in before),
        }
        for case in CHECKPOINTED:  # half the steps, save, the rest in a fresh sharded model
            model = build(case)
            fsdp.shard(model)
            opt = train(model, steps[: STEPS // 2], rank)
            fsdp.save_checkpoint(out / f"{case}.pt", model, opt, step=STEPS // 2)
            model = build(case)
            fsdp.shard(model)
            opt = sl.optimizer(model, lr=LR)
            extra = fsdp.load_checkpoint(out / f"{case}.pt", model, opt)
            train(model, steps[extra["step"] :], rank, opt)
            results[f"{case}_resumed"] = {"state": fsdp.full_state_dicts(model)[0], "extra": extra}
            # one process's half-way state (every rank trains the whole batches alike), resumed sharded
            single = build(case)
            single_opt = train(single, steps[: STEPS // 2])
            model = build(case)
            fsdp.shard(model)
            opt = sl.optimizer(model, lr=LR)
            fsdp.load_full_state_dicts(model, opt, single.state_dict(), single_opt.state_dict())
            train(model, steps[STEPS // 2 :], rank, opt)
            results[f"{case}_from_one_process"] = {"state": fsdp.full_state_dicts(model)[0]}
    except Exception:
        results["error"] = traceback.format_exc()
    if rank == 0:
        torch.save(results, out / "results.pt")
    dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def distributed(tmp_path_factory) -> tuple[dict, Path]:
    if not dist.is_available() or not dist.is_gloo_available():
        pytest.skip("torch.distributed with the gloo backend is not available")
    out = tmp_path_factory.mktemp("fsdp")
    context = mp.start_processes(_worker, args=(_free_port(), str(out)), nprocs=WORLD, join=False, start_method="spawn")
    deadline = time.monotonic() + TIMEOUT
    while not context.join(timeout=1):
        if time.monotonic() > deadline:
            for process in context.processes:
                process.kill()
            pytest.fail(f"the two FSDP processes did not finish within {TIMEOUT} s")
    results = torch.load(out / "results.pt", weights_only=True)
    assert "error" not in results, results["error"]
    return results, out


# -- the comparisons ---------------------------------------------------------------------------------


def reference(case: str):
    model = build(case)
    train(model, batches())
    return model


def assert_same_training(case: str, state: dict, atol: float = 5e-6) -> None:
    """``state`` (gathered from the two ranks) against one process on the concatenated batches."""
    single = reference(case)
    sharded = build(case)
    sharded.load_state_dict(state)  # the same keys as one process's state_dict, buffers included
    layers = sl.adapted_layers(single)
    spectral = {f"{name}.{p}" for name in layers for p in ("U_active", "Vh_active", "U_frozen", "Vh_frozen")}
    reference_state = single.state_dict()
    for key, value in reference_state.items():
        if key in spectral and getattr(layers[key.rsplit(".", 1)[0]], "method", "") == "sst":
            continue  # singular vectors: compared through the function below
        if value.is_floating_point():
            torch.testing.assert_close(state[key], value, atol=atol, rtol=0, msg=lambda m, k=key: f"{case} {k}: {m}")
        else:
            assert torch.equal(state[key], value), f"{case} {key}: {state[key]} vs {value}"
    for name, layer in layers.items():  # every method's function, whatever its factors
        got = sl.adapted_layers(sharded)[name].effective_weight()
        torch.testing.assert_close(
            got, layer.effective_weight(), atol=atol, rtol=0, msg=lambda m, n=name: f"{case} {n}: {m}"
        )


@pytest.mark.parametrize("case", ["lora", "sst", "galore"])
def test_trains_as_one_process_on_the_whole_batch(distributed, case):
    results, _ = distributed
    assert "state" in results[case], results[case].get("refused")
    assert_same_training(case, results[case]["state"])
    if case == "sst":  # the run did cross the periodic work it is meant to test
        state = results[case]["state"]
        prefix = next(k for k in state if k.endswith("resvds_done")).rsplit(".", 1)[0]
        assert int(state[f"{prefix}.periods_done"]) == STEPS // OPTIONS["sst"]["resample_every"]
        assert int(state[f"{prefix}.resvds_done"]) == 1


def test_only_the_periodic_work_gathers_whole_matrices(distributed):
    """The steps between a method's periodic work exchange r-sized results, never a whole matrix:
    SST's renormalization sums r column lengths (its swaps and re-SVD at a period's end gather the
    factors), and GaLore's projected gradient R moves r rows or columns (its new projection every T
    steps gathers the whole gradient for the SVD)."""
    results, _ = distributed
    r = 2
    sst_layers = sl.adapted_layers(build("sst")).values()
    for step, sizes in enumerate(results["sst_gathered"], 1):
        if step % OPTIONS["sst"]["resample_every"]:
            assert sizes and max(sizes) <= r, f"SST step {step} (no period end) made whole: {sizes}"
        else:
            for layer in sst_layers:
                assert layer.U_active.numel() in sizes, f"SST step {step} (a period's end): {sizes}"
    shapes = [tuple(layer.weight.shape) for layer in sl.adapted_layers(build("galore")).values()]
    for step, sizes in enumerate(results["galore_gathered"], 1):
        if (step - 1) % OPTIONS["galore"]["update_proj_gap"]:
            assert sizes and max(sizes) <= max(max(m, n) * r for m, n in shapes) < min(m * n for m, n in shapes)
        else:  # a new projection: each layer's whole gradient, for its SVD
            for m, n in shapes:
                assert m * n in sizes, f"GaLore step {step} (new projections): {sizes}"


def test_a_non_finite_gradient_on_one_rank_stops_every_rank(distributed):
    """GaLore checks a gradient before its SVD from each rank's rows (a NaN in rank 1's shard): rank 0
    refuses too, naming the layer, and nothing was updated."""
    results, _ = distributed
    outcome = results["galore_nonfinite"]
    assert outcome["raised"] and "'blocks.0.mlp.fc1'" in outcome["raised"], outcome
    assert "1 non-finite value" in outcome["raised"], outcome["raised"]
    assert outcome["unchanged"]


def test_blocks_as_units_train_the_same(distributed):
    results, _ = distributed
    assert_same_training("sst", results["sst_blocks"]["state"])


def test_every_other_method_trains_or_is_refused_clearly(distributed):
    results, _ = distributed
    refused = {}
    for case in cases():
        if case in ("lora", "sst", "galore"):
            continue
        result = results[case]
        if "state" in result:
            assert_same_training(case, result["state"])
        else:
            message = result["refused"]
            assert f"'{method_of(case)}'" in message and "use DDP" in message, message
            assert not result["left_sharded"], f"{case}: refused, but the model was left (half) sharded"
            refused[case] = message
    assert set(refused) == {"relora", "svft_gated"}, refused
    assert "merge needs the whole matrix" in refused["relora"]
    assert "blocks.0.attn.qkv" in refused["relora"]  # the layers are named
    assert "svft_gate" in refused["svft_gated"] and "scalar" in refused["svft_gated"]


@pytest.mark.parametrize("case", CHECKPOINTED)
def test_a_sharded_checkpoint_resumes_exactly_and_loads_in_one_process(distributed, case):
    results, out = distributed
    resumed, uninterrupted = results[f"{case}_resumed"]["state"], results[case]["state"]
    assert results[f"{case}_resumed"]["extra"] == {"step": STEPS // 2}
    for key, value in uninterrupted.items():
        assert torch.equal(resumed[key], value), f"{case} {key}: the resumed run differs"
    saved = torch.load(out / f"{case}.pt", weights_only=True)
    model = build(case)
    model.load_state_dict(saved["model"])  # whole tensors, one process's keys (strict)
    assert saved["optimizer"]["state"], "the optimizer state was saved"
    assert all(isinstance(key, int) for key in saved["optimizer"]["state"]), "torch's numbered layout"
    # resumed in one process on the whole batches: where one process's uninterrupted run ends
    opt = sl.optimizer(model, lr=LR)
    opt.load_state_dict(saved["optimizer"])
    train(model, batches()[STEPS // 2 :], opt=opt)
    assert_same_training(case, model.state_dict())
    # and the other way round: one process's half-way state, resumed sharded
    assert_same_training(case, results[f"{case}_from_one_process"]["state"])
    single = build(case)
    train(single, batches(STEPS // 2))
    for key, value in single.state_dict().items():
        if value.is_floating_point():
            assert math.isfinite(float(saved["model"][key].double().sum()))
        else:
            assert torch.equal(saved["model"][key], value), f"{case} {key}: the half-way clocks differ"


def test_shard_needs_a_process_group():
    from spectrallab import fsdp

    model = build("lora")
    with pytest.raises(ValueError, match="init_process_group"):
        fsdp.shard(model)
