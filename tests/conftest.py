"""Shared fixtures. Every test runs in the ``ci`` profile with its own SPECTRALLAB_HOME."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

# Set before torch and spectrallab load, and inherited by every kernel a chapter test starts and
# by the book build. One thread: the test models are tiny, one thread runs them as fast as two, and
# it never degrades (by 10× and more) when another process competes for the cores.
os.environ["SPECTRALLAB_PROFILE"] = "ci"
os.environ.setdefault("SPECTRALLAB_HOME", tempfile.mkdtemp(prefix="spectrallab-test-home-"))
os.environ.setdefault("OMP_NUM_THREADS", "1")
# Chapter kernels print compact progress lines, as in the book build, rather than widget bars.
os.environ.setdefault("SPECTRALLAB_PROGRESS", "lines")

import pytest  # noqa: E402
import torch  # noqa: E402
from torch import nn  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
ARTIFACTS = ROOT / "test-artifacts"


@pytest.fixture
def home(tmp_path, monkeypatch) -> Path:
    """A fresh SPECTRALLAB_HOME for one test (runs and cached bases land here)."""
    monkeypatch.setenv("SPECTRALLAB_HOME", str(tmp_path))
    return tmp_path


class ThreeLayers(nn.Module):
    """A small model with nested names (``encoder.fc1``), a norm and an embedding."""

    def __init__(self, d: int = 16, out: int = 8):
        super().__init__()
        self.embed = nn.Embedding(10, d)
        self.encoder = nn.ModuleDict({"fc1": nn.Linear(d, 32), "norm": nn.LayerNorm(32), "fc2": nn.Linear(32, d)})
        self.head = nn.Linear(d, out, bias=False)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        h = self.embed(ids).mean(1)
        h = self.encoder["fc2"](torch.relu(self.encoder["norm"](self.encoder["fc1"](h))))
        return self.head(h)


class SmallMLP(nn.Module):
    """20 → 32 → 12 with tanh: the model every cross-check against PEFT adapts (fc1, fc2)."""

    def __init__(self, bias: bool = True):
        super().__init__()
        self.fc1 = nn.Linear(20, 32, bias=bias)
        self.fc2 = nn.Linear(32, 12, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(torch.tanh(self.fc1(x)))


def sgd_steps(model: nn.Module, steps: int = 5, lr: float = 0.05) -> None:
    """The same SGD steps on the same random regression data, whoever the model is (ours or PEFT's)."""
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=lr)
    g = torch.Generator().manual_seed(7)
    torch.manual_seed(123)  # dropout masks: two models draw them in the same order
    for _ in range(steps):
        x, y = torch.randn(16, 20, generator=g), torch.randn(16, 12, generator=g)
        loss = nn.functional.mse_loss(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()


PRETRAIN_STEPS = 400  # the digits base every fine-tuning claim test starts from


@pytest.fixture(scope="session")
def rotated_digits():
    """(upright digits task, rotated-digits task): a base is pretrained on the first (cached under
    the session's SPECTRALLAB_HOME, so once per session) and fine-tuned on the second."""
    import spectrallab as sl

    task = sl.tasks.Digits(width=128).to(sl.device())
    sl.pretrained(task, steps=PRETRAIN_STEPS)
    return task, task.shifted(view="rot90")


@pytest.fixture
def model() -> ThreeLayers:
    torch.manual_seed(0)
    return ThreeLayers()


@pytest.fixture
def ids() -> torch.Tensor:
    return torch.randint(0, 10, (4, 5), generator=torch.Generator().manual_seed(1))


def fingerprint(model: nn.Module) -> dict:
    """Structure, values and trainability of a model — to check nothing was half-applied."""
    return {
        "modules": [(n, type(m).__name__) for n, m in model.named_modules()],
        "params": {n: (p.detach().clone(), p.requires_grad) for n, p in model.named_parameters()},
        "attrs": sorted(k for k in vars(model) if k.startswith("_spectrallab")),
    }


def same_fingerprint(a: dict, b: dict) -> bool:
    if a["modules"] != b["modules"] or a["attrs"] != b["attrs"] or a["params"].keys() != b["params"].keys():
        return False
    return all(
        torch.equal(a["params"][n][0], b["params"][n][0]) and a["params"][n][1] == b["params"][n][1]
        for n in a["params"]
    )


def assert_rejected_and_unchanged(method: str, options: dict, error: type[Exception], message: str) -> None:
    """``apply`` refuses ``options`` with ``error`` matching ``message`` and leaves SmallMLP as it was."""
    import spectrallab as sl

    torch.manual_seed(0)
    model = SmallMLP()
    before = fingerprint(model)
    with pytest.raises(error, match=message):
        sl.apply(model, method, **options)
    assert same_fingerprint(before, fingerprint(model))


# -- the book, built once per session and shared by every module that reads it --------------------
# (Here and not in a test module: a fixture imported into a second module is a second fixture, and
# the book would be built twice.)


@pytest.fixture(scope="session")
def book_cache(tmp_path_factory) -> Path:
    """One execution cache for the session's book builds: the student build re-uses what the
    instructor build executed (book/_ext/execution_cache.py)."""
    return tmp_path_factory.mktemp("book-cache")


def build_book(out: Path, cache: Path, audience: str) -> str:
    """Build the book into ``out`` (-W) for ``audience``; returns the build log."""
    env = {**os.environ, "SPECTRALLAB_BOOK_CACHE": str(cache), "SPECTRALLAB_AUDIENCE": audience}
    result = subprocess.run(
        [
            str(Path(sys.executable).parent / "jupyter-book"),
            "build",
            str(ROOT),
            "--all",
            "-W",
            "-n",
            "--keep-going",
            "--path-output",
            str(out),
        ],
        capture_output=True,
        text=True,
        timeout=1800,
        env=env,
    )
    log = result.stdout + result.stderr
    ARTIFACTS.mkdir(exist_ok=True)
    name = "book-build.log" if audience == "instructor" else f"book-build-{audience}.log"
    (ARTIFACTS / name).write_text(log)
    assert result.returncode == 0, f"{audience} book build failed (log in test-artifacts/{name}):\n{log[-6000:]}"
    return log


@pytest.fixture(scope="session")
def built_book(tmp_path_factory, book_cache) -> Path:
    """Build the book once per session (every chapter executed into a fresh cache, -W): the HTML directory."""
    out = tmp_path_factory.mktemp("book")
    build_book(out, book_cache, "instructor")
    return out / "_build" / "html"


@pytest.fixture(scope="session")
def built_student_book(built_book, tmp_path_factory, book_cache) -> Path:
    """The student edition (SPECTRALLAB_AUDIENCE=student), built after the instructor edition from its
    execution cache, so it executes nothing: the HTML directory."""
    out = tmp_path_factory.mktemp("student-book")
    log = build_book(out, book_cache, "student")
    caches = {
        re.search(r"Using jupyter-cache at: (\S+)", text).group(1)
        for text in (log, (ARTIFACTS / "book-build.log").read_text())
        if "Using jupyter-cache at:" in text
    }
    assert len(caches) == 1, f"the two builds used different execution caches (did src/ or widgets/ change?): {caches}"
    assert "Executing notebook" not in log, "the student build executed a chapter instead of using the cache"
    return out / "_build" / "html"
