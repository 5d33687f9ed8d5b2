"""Shared fixtures. Every test runs in the ``ci`` profile with its own SPECTRALLAB_HOME."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

# Set before torch and spectrallab load, and inherited by every kernel a chapter test starts and
# by the book build. One thread: the test models are tiny, one thread runs them as fast as two, and
# it never degrades (by 10× and more) when another process competes for the cores.
os.environ["SPECTRALLAB_PROFILE"] = "ci"
os.environ.setdefault("SPECTRALLAB_HOME", tempfile.mkdtemp(prefix="spectrallab-test-home-"))
os.environ.setdefault("OMP_NUM_THREADS", "1")

import pytest  # noqa: E402
import torch  # noqa: E402
from torch import nn  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


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
    return all(torch.equal(a["params"][n][0], b["params"][n][0]) and a["params"][n][1] == b["params"][n][1]
               for n in a["params"])
