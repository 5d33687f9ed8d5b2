"""The GPU path: runs only where CUDA is available (skipped on the CPU-only CI machine; run by
``benchmarks/gpu_check.sh`` on a GPU machine).

* ``sl.device()`` picks the GPU and the profile defaults to ``gpu``;
* a spectrum is computed on the device: the weight never crosses to the CPU, only the k singular values;
* every pre-training method takes the same steps on CUDA as on the CPU, within float tolerance
  (TF32 off), SST's resampling and re-SVD and GaLore's projection updates included;
* the pre-training command trains in bf16 autocast on the GPU and reports MFU.
"""

from __future__ import annotations

import copy
import os

import pytest
import torch

import spectrallab as sl
from spectrallab import pretrain

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def test_device_and_profile_pick_the_gpu(monkeypatch):
    monkeypatch.delenv("SPECTRALLAB_DEVICE", raising=False)
    monkeypatch.delenv("SPECTRALLAB_PROFILE", raising=False)
    monkeypatch.delenv("CI", raising=False)
    assert sl.device().type == "cuda" and sl.profile() == "gpu"


def test_a_spectrum_stays_on_the_device():
    layer = sl.apply(torch.nn.Sequential(torch.nn.Linear(512, 256)).cuda(), "sst", rank=8)[0]
    values = sl.spectrum(layer)
    assert values.device.type == "cuda" and values.shape == (256,)


@pytest.mark.parametrize("method", ["full", "lora", "relora", "galore", "sltrain", "sst"])
def test_steps_on_cuda_equal_steps_on_cpu(method, monkeypatch):
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    task = sl.task("chargpt", n_chars=20_000, d_model=32, n_layer=1, n_head=2, context=16)
    model = task.make_model(seed=0)
    if method != "full":
        opts = {"rank": 4, **(sl.method_class(method).period_options(5) or {})}
        sl.apply(model, method, freeze_others=False, **opts)
    models = {"cpu": model, "cuda": copy.deepcopy(model).cuda()}
    batches = [task.batch("train", 8, torch.Generator().manual_seed(i)) for i in range(12)]
    for where, m in models.items():
        opt = sl.optimizer(m, lr=1e-3)
        for x, y in batches:
            loss = task.loss(m, (x.to(where), y.to(where)))
            opt.zero_grad()
            loss.backward()
            opt.step()
    cpu, gpu = models["cpu"].state_dict(), models["cuda"].state_dict()
    for key, value in cpu.items():
        if value.is_floating_point():
            torch.testing.assert_close(gpu[key].cpu(), value, rtol=1e-3, atol=1e-4, msg=lambda m, k=key: f"{k}: {m}")


def test_the_command_trains_in_bf16_on_the_gpu(tmp_path, monkeypatch):
    monkeypatch.setenv("SPECTRALLAB_HOME", str(tmp_path))
    summary = pretrain.main(["--method", "sst", "--profile", "ci", "--steps", "20", "--autocast", "bf16",
                             "--progress", "off"])  # fmt: skip
    assert summary["device"].startswith("cuda") and summary["peak_memory_kind"] == "CUDA max_memory_allocated"
    name = torch.cuda.get_device_name(0)
    if any(key in name for key in pretrain.BF16_PEAK):
        assert 0 < summary["mfu"] < 1
    assert os.path.exists(summary["record"])
