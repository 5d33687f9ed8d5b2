"""``python -m spectrallab.pretrain``: flags from the methods' declarations, the summary, the run
record, a kill and a resume, and the same run under ``torchrun`` with DDP on 2 processes (gloo).

The model is tiny (d 16, one block), so every run takes seconds; what is checked is that the
command does what the library does, not how well it trains.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

import spectrallab as sl
from spectrallab import pretrain
from spectrallab.methods import registered

TINY = ["--profile", "ci", "--n-chars", "20000", "--d-model", "16", "--n-layer", "1", "--n-head", "2",
        "--context", "8", "--batch-size", "8", "--progress", "off"]  # fmt: skip


@pytest.fixture()
def home(tmp_path, monkeypatch):
    monkeypatch.setenv("SPECTRALLAB_HOME", str(tmp_path / "home"))
    return tmp_path


def command(*args: str) -> list[str]:
    return [sys.executable, "-m", "spectrallab.pretrain", *TINY, *args]


def child_env(home: Path) -> dict[str, str]:
    return {**os.environ, "SPECTRALLAB_HOME": str(home / "home"), "OMP_NUM_THREADS": "1"}


def model_state(path: Path) -> dict[str, torch.Tensor]:
    return torch.load(path, map_location="cpu", weights_only=True)["model"]


@pytest.mark.parametrize("method", registered())
def test_every_declared_option_is_a_flag(method):
    """The flags come from the Option declarations: one per option, of the declared kind."""
    parser = pretrain.parser_for(method)
    flags = {a.dest: a for a in parser._actions}
    for name in sl.method_class(method).options:
        assert "opt_" + name in flags, f"{method}: option {name!r} has no flag"


def test_flags_reach_the_method_and_clashing_names_are_prefixed(home):
    summary = pretrain.main([*TINY, "--method", "sst", "--rank", "2", "--resample-every", "7", "--method-seed", "5",
                             "--steps", "10"])  # fmt: skip
    assert summary["options"]["rank"] == 2 and summary["options"]["resample_every"] == 7
    assert summary["options"]["seed"] == 5  # --method-seed is SST's seed; --seed stays the run's


def test_summary_and_run_record(home, capsys):
    summary = pretrain.main([*TINY, "--method", "lora", "--rank", "2", "--steps", "12", "--summary-json",
                             str(home / "summary.json")])  # fmt: skip
    last = capsys.readouterr().out.strip().splitlines()[-1]
    for words in ("val loss", "perplexity", "trainable", "optimizer state", "peak memory", "tokens/s"):
        assert words in last
    assert math.isclose(summary["perplexity"], math.exp(summary["val_loss"]))
    assert summary["tokens_per_second"] > 0 and summary["optimizer_state_bytes"] > 0
    # training steps only (12 steps, 10 evaluations between them): faster than the wall-time rate
    assert summary["tokens_per_second"] > summary["tokens_per_second_overall"] > 0
    assert json.loads((home / "summary.json").read_text())["val_loss"] == summary["val_loss"]
    (run,) = sl.load_runs()  # next to the notebooks' records: Compare overlays it
    assert run.config["command"] == "spectrallab.pretrain" and run.config["method"] == "lora"
    assert run.final("val_loss") == summary["val_loss"] and run.steps[-1] == 12
    assert summary["trainable_parameters"] == run.config["trainable_parameters"]  # a count, not bytes


@pytest.mark.skipif(
    shutil.which("g++") is None, reason="torch.compile's inductor backend needs a C++ compiler on the CPU"
)
@pytest.mark.parametrize("method", ["sst", "lora"])
def test_compile_trains_as_eager(home, method):
    """--compile (torch.compile, its default inductor backend: generated C++ on the CPU) through SST's
    and LoRA's own autograd Functions, resampling included: the run ends where the eager run ends."""
    steps = [*TINY, "--method", method, "--rank", "2", "--steps", "8", "--eval-every", "8"]
    if method == "sst":
        steps += ["--resample-every", "4"]
    eager = pretrain.main([*steps, "--name", "eager"])
    try:
        compiled = pretrain.main([*steps, "--compile", "--name", "compiled"])
    finally:
        torch._dynamo.reset()
    assert math.isclose(compiled["val_loss"], eager["val_loss"], rel_tol=1e-5), (
        compiled["val_loss"],
        eager["val_loss"],
    )
    (record,) = [run for run in sl.load_runs() if run.name == "compiled"]
    assert record.config["compile"] is True


def test_training_throughput_leaves_out_the_first_step():
    """A first step that compiled for 10 s, then steps of 0.5 s at 1000 tokens: 2000 tokens/s."""
    assert pretrain.training_throughput([10.0, 0.5, 0.5, 0.5], 1000) == 2000
    assert pretrain.training_throughput([0.25], 1000) == 4000  # one step: all there is
    assert math.isnan(pretrain.training_throughput([], 1000))


def test_bad_values_get_the_methods_message(home):
    with pytest.raises(SystemExit):  # argparse: not an int
        pretrain.main([*TINY, "--method", "sst", "--rank", "two"])
    with pytest.raises(ValueError, match=r"rank=0.*allowed range"):
        pretrain.main([*TINY, "--method", "sst", "--rank", "0", "--steps", "3"])
    with pytest.raises(SystemExit):  # SST has no --alpha
        pretrain.main([*TINY, "--method", "sst", "--alpha", "2"])
    child = subprocess.run(command("--method", "lora", "--dropout", "1.5", "--steps", "3"), env=child_env(home),
                           capture_output=True, text=True, timeout=120)  # fmt: skip
    assert child.returncode == 2 and "dropout=1.5" in child.stderr and "Traceback" not in child.stderr


def test_killed_run_resumes_bit_for_bit(home):
    """SIGKILL after the first checkpoint; the same command again finishes the run with the weights of
    a run never interrupted (SST: resampling and re-SVD fall inside, period 25)."""
    steps = ["--method", "sst", "--rank", "2", "--resample-every", "25", "--steps", "300", "--checkpoint-every", "20"]
    killed = home / "killed.pt"
    child = subprocess.Popen(command(*steps, "--checkpoint", str(killed)), env=child_env(home))
    deadline = time.monotonic() + 120
    while not killed.exists() and child.poll() is None and time.monotonic() < deadline:
        time.sleep(0.005)
    child.send_signal(signal.SIGKILL)
    child.wait(timeout=60)
    assert killed.exists()
    at_kill = torch.load(killed, weights_only=True)["step"]
    assert at_kill < 300, "the run finished before it could be killed: give it more steps"
    resumed = subprocess.run(command(*steps, "--checkpoint", str(killed)), env=child_env(home), timeout=300)
    assert resumed.returncode == 0
    whole = home / "whole.pt"
    subprocess.run(command(*steps, "--checkpoint", str(whole)), env=child_env(home), timeout=300, check=True)
    a, b = model_state(killed), model_state(whole)
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert torch.load(killed, weights_only=True)["step"] == 300


def torchrun(*args: str, nproc: int = 2) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(nproc),
            "-m", "spectrallab.pretrain", *TINY, *args]  # fmt: skip


@pytest.mark.parametrize("method", ["sst", "galore"])
def test_ddp_on_two_processes_equals_one_process(home, method):
    """torchrun ×2 (gloo): each process trains on half of the same global batch, so the weights equal
    one process's on the whole batch, within the all-reduce's rounding; and the DDP checkpoint
    resumes on one process."""
    extra = {"sst": ["--rank", "2", "--resample-every", "10"], "galore": ["--rank", "2", "--update-proj-gap", "10"]}
    steps = ["--method", method, *extra[method], "--steps", "30", "--checkpoint-every", "15"]
    two, one = home / "two.pt", home / "one.pt"
    subprocess.run(torchrun(*steps, "--checkpoint", str(two), "--summary-json", str(home / "two.json")),
                   env=child_env(home), timeout=300, check=True)  # fmt: skip
    subprocess.run(command(*steps, "--checkpoint", str(one)), env=child_env(home), timeout=300, check=True)
    a, b = model_state(two), model_state(one)
    for key in a:
        if key.endswith("attn.qkv.bias"):
            # The key bias (the middle third) shifts every attention score of a query by the same
            # amount, which softmax ignores: its true gradient is 0, and Adam turns the rounding noise
            # left in it (different for 1 and 2 processes) into full-size steps. Only q's and v's count.
            d = a[key].numel() // 3
            a[key], b[key] = torch.cat([a[key][:d], a[key][2 * d :]]), torch.cat([b[key][:d], b[key][2 * d :]])
        if a[key].is_floating_point():
            torch.testing.assert_close(a[key], b[key], rtol=1e-4, atol=1e-5, msg=lambda m, k=key: f"{k}: {m}")
        else:
            assert torch.equal(a[key], b[key]), key  # clocks, indices, random streams: identical
    summary = json.loads((home / "two.json").read_text())
    assert summary["processes"] == 2 and summary["parallel"] == "ddp"
    # the two-process checkpoint continues on one process (steps may grow)
    more = [s if s != "30" else "40" for s in steps]
    subprocess.run(command(*more, "--checkpoint", str(two)), env=child_env(home), timeout=300, check=True)
    assert torch.load(two, weights_only=True)["step"] == 40


def test_bf16_autocast(home):
    """--autocast bf16: forward and loss in bfloat16 (SST's backward works in grad_y's dtype), the
    parameters stay float32, and the run trains."""
    summary = pretrain.main([*TINY, "--method", "sst", "--rank", "2", "--steps", "15", "--autocast", "bf16"])
    (run,) = sl.load_runs()
    assert run.config["autocast"] == "bf16"
    assert math.isfinite(summary["val_loss"]) and run.evals[-1]["val_loss"] < run.evals[0]["val_loss"]


@pytest.mark.parametrize("method", ["lora", "galore", "sst"])
def test_fsdp_on_two_processes_equals_one_process(home, method):
    """--fsdp: FSDP2 shards every adapted layer and the root; SST's swaps and re-SVD and GaLore's
    projection gather what they need. The whole-model checkpoint equals one process's run. (SST at a
    small lr: a large one clamps some Σ to 0, where the re-SVD's vectors are not unique.)"""
    extra = {
        "lora": ["--rank", "2"],
        "galore": ["--rank", "2", "--update-proj-gap", "10"],
        "sst": ["--rank", "2", "--resample-every", "10", "--lr", "3e-4"],
    }
    steps = ["--method", method, *extra[method], "--steps", "24", "--checkpoint-every", "12"]
    two, one = home / "two.pt", home / "one.pt"
    subprocess.run(torchrun(*steps, "--fsdp", "--checkpoint", str(two), "--summary-json", str(home / "two.json")),
                   env=child_env(home), timeout=300, check=True)  # fmt: skip
    subprocess.run(command(*steps, "--checkpoint", str(one), "--summary-json", str(home / "one.json")),
                   env=child_env(home), timeout=300, check=True)  # fmt: skip
    a, b = model_state(two), model_state(one)
    assert a.keys() == b.keys()
    for key in a:
        if a[key].is_floating_point() and not key.endswith("attn.qkv.bias"):  # the key bias: see the DDP test
            # Adam at the race's rates (GaLore's 0.16) turns reduce-scatter rounding into ~1e-5 here and
            # there; a lost or doubled update would be ~lr.
            torch.testing.assert_close(a[key], b[key], rtol=1e-3, atol=1e-4, msg=lambda m, k=key: f"{k}: {m}")
    sharded, whole = (json.loads((home / f"{n}.json").read_text()) for n in ("two", "one"))
    assert sharded["parallel"] == "fsdp"
    assert sharded["trainable_parameters"] == whole["trainable_parameters"]  # the shards add up


def test_fsdp_summary_counts_each_number_once(home):
    """Without a checkpoint the last evaluation (a forward without backward) leaves FSDP2's root
    parameters gathered on every process: the summary's trainable count must still be one model's,
    and the optimizer's state the sum of the shards (one process's, up to each shard's step count)."""
    steps = ["--method", "sst", "--rank", "2", "--steps", "4"]
    subprocess.run(torchrun(*steps, "--fsdp", "--summary-json", str(home / "two.json")),
                   env=child_env(home), timeout=300, check=True)  # fmt: skip
    subprocess.run(
        command(*steps, "--summary-json", str(home / "one.json")), env=child_env(home), timeout=300, check=True
    )
    sharded, whole = (json.loads((home / f"{n}.json").read_text()) for n in ("two", "one"))
    assert sharded["trainable_parameters"] == whole["trainable_parameters"]
    assert whole["optimizer_state_bytes"] <= sharded["optimizer_state_bytes"] < 1.05 * whole["optimizer_state_bytes"]


def test_fsdp_refuses_relora_with_a_reason(home):
    child = subprocess.run(torchrun("--method", "relora", "--steps", "4", "--fsdp"), env=child_env(home),
                           capture_output=True, text=True, timeout=300)  # fmt: skip
    assert child.returncode != 0
    (line,) = {x for x in child.stderr.splitlines() if x.startswith("spectrallab-pretrain: error:")}  # both ranks'
    assert "FSDP2" in line and "'relora'" in line and "DDP" in line  # the method, and what to use instead


def workers_of(marker: str) -> list[int]:
    """Pids of the processes whose command line contains ``marker`` (Linux /proc)."""
    pids = []
    for entry in Path("/proc").iterdir():
        try:
            if entry.name.isdigit() and marker in (entry / "cmdline").read_bytes().decode(errors="replace"):
                pids.append(int(entry.name))
        except OSError:
            continue
    return pids


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux's")
def test_killing_torchrun_stops_its_workers(home):
    """torchrun's workers live in sessions of their own: without spectrallab.distributed.die_with_launcher
    a `kill -9` of the launcher leaves them training and writing the checkpoint, beside the run that
    resumes from it. With it they die with the launcher and the checkpoint stops moving."""
    marker = str(home / "orphans.pt")
    launcher = subprocess.Popen(torchrun("--method", "sst", "--rank", "2", "--steps", "5000", "--checkpoint-every",
                                         "20", "--checkpoint", marker), env=child_env(home))  # fmt: skip
    deadline = time.monotonic() + 120
    while not Path(marker).exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    workers = [pid for pid in workers_of(marker) if pid != launcher.pid]
    assert len(workers) == 2, workers
    launcher.kill()
    launcher.wait(timeout=30)
    time.sleep(2)
    survivors = [pid for pid in workers if pid in workers_of(marker)]
    for pid in survivors:  # leave nothing running, whatever the verdict
        os.kill(pid, signal.SIGKILL)
    assert not survivors, "torchrun's workers outlived it"


def test_a_finished_checkpoint_says_so(home, capsys):
    args = [*TINY, "--method", "lora", "--rank", "2", "--steps", "6", "--checkpoint", str(home / "done.pt")]
    pretrain.main(args)
    again = pretrain.main(args)  # nothing left to train: returns at once, and the summary says why
    assert again["steps_this_call"] == 0
    assert "no step taken" in capsys.readouterr().out.strip().splitlines()[-1]


def test_model_flops_per_token_is_palms_count():
    """6·N (N: every weight outside the embeddings) + 12·L·d·T, written out for the tiny GPT."""
    L, d, T, V = 2, 32, 16, len(sl.tasks.chargpt.VOCAB)
    model = sl.task("chargpt", n_chars=20_000, d_model=d, n_layer=L, n_head=4, context=T).make_model()
    per_block = 4 * d * d + 4 * d + 8 * d * d + 5 * d + 4 * d  # attention, MLP (4d), two LayerNorms
    weights = L * per_block + 2 * d + d * V  # blocks, final LayerNorm, head
    assert pretrain.model_flops_per_token(model, L, d, T) == 6 * weights + 12 * L * d * T
