"""No silent skip: a method whose algorithm runs in optimizer hooks warns when trained without them.

SST (resampling, renormalization), ReLoRA (restarts), GaLore (projection) and SORSA (its regularizer)
do part of their work in step hooks that ``spectrallab.optimizer`` installs. A plain
``torch.optim.AdamW(model.parameters())`` trains the same parameters without them; the layers then
warn once (:class:`spectrallab.MissingOptimizerHooksWarning`), naming themselves and the fix.
"""

from __future__ import annotations

import copy
import io
import warnings

import pytest
import torch
from torch import nn

import spectrallab as sl
from spectrallab.methods.base import Method

HOOKED = {
    "sst": dict(rank=4, resample_every=2, warmup=0, seed=0),
    "relora": dict(rank=4, reset_every=2, restart_warmup=1, seed=0),
    "galore": dict(rank=4, update_proj_gap=2),
    "sorsa": dict(rank=4),
}


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1 = nn.Linear(12, 10)
        self.fc2 = nn.Linear(10, 6)

    def forward(self, x):
        return self.fc2(torch.tanh(self.fc1(x)))


def adapted(method: str, **options) -> Net:
    torch.manual_seed(0)
    return sl.apply(Net(), method, **{**HOOKED.get(method, dict(rank=4)), **options})


def steps(model: nn.Module, opt: torch.optim.Optimizer, n: int = 4, seed: int = 0) -> None:
    g = torch.Generator().manual_seed(seed)
    for _ in range(n):
        x, y = torch.randn(8, 12, generator=g), torch.randn(8, 6, generator=g)
        loss = nn.functional.mse_loss(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()


def hook_warnings(record) -> list[str]:
    return [str(w.message) for w in record if issubclass(w.category, sl.MissingOptimizerHooksWarning)]


@pytest.mark.parametrize("method", sorted(HOOKED))
@pytest.mark.parametrize("kind", ["default", "foreach", "fused"])  # fused AdamW: the HF Trainer's default
def test_a_plain_adamw_warns_once_naming_the_layers_and_the_fix(method, kind):
    model = adapted(method)
    options = {} if kind == "default" else {kind: True}
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        steps(model, torch.optim.AdamW(model.parameters(), lr=1e-2, **options), n=6)
    (message,) = hook_warnings(record)
    assert f"method {method!r} (layers fc1, fc2)" in message
    assert "spectrallab.optimizer(model, lr=...)" in message
    assert "optimizers=(spectrallab.optimizer(model, lr=...), None)" in message


@pytest.mark.parametrize("method", sorted(HOOKED))
def test_spectrallab_optimizer_does_not_warn(method):
    model = adapted(method)
    with warnings.catch_warnings():
        warnings.simplefilter("error", sl.MissingOptimizerHooksWarning)
        steps(model, sl.optimizer(model, lr=1e-2), n=6)


@pytest.mark.parametrize("method", ["sst", "relora"])
def test_a_resumed_run_warns_only_without_spectrallab_optimizer(method):
    model = adapted(method)
    opt = sl.optimizer(model, lr=1e-2)
    steps(model, opt, n=3)
    buffer = io.BytesIO()
    torch.save({"model": model.state_dict(), "optimizer": opt.state_dict()}, buffer)

    buffer.seek(0)
    saved = torch.load(buffer, weights_only=True)
    resumed = adapted(method)
    resumed.load_state_dict(saved["model"])
    resumed_opt = sl.optimizer(resumed, lr=1e-2)
    resumed_opt.load_state_dict(saved["optimizer"])
    with warnings.catch_warnings():
        warnings.simplefilter("error", sl.MissingOptimizerHooksWarning)
        steps(resumed, resumed_opt, n=3, seed=1)

    # The same checkpoint continued by a plain AdamW is caught (the flag is not in the checkpoint).
    plain = adapted(method)
    plain.load_state_dict(saved["model"])
    with pytest.warns(sl.MissingOptimizerHooksWarning, match=f"method {method!r}"):
        steps(plain, torch.optim.AdamW(plain.parameters(), lr=1e-2), n=3, seed=1)


def test_a_second_plain_optimizer_and_a_deep_copy_are_caught():
    model = adapted("sst")
    steps(model, sl.optimizer(model, lr=1e-2), n=2)  # hooked: quiet
    copy_ = copy.deepcopy(model)
    with pytest.warns(sl.MissingOptimizerHooksWarning, match="method 'sst'"):
        steps(model, torch.optim.SGD(model.parameters(), lr=1e-2), n=2)  # the same layers, another optimizer
    with pytest.warns(sl.MissingOptimizerHooksWarning, match="method 'sst'"):
        steps(copy_, torch.optim.SGD(copy_.parameters(), lr=1e-2), n=2)


def test_an_optimizer_of_other_parameters_does_not_warn():
    model = adapted("sst")
    other = nn.Linear(3, 3)
    with warnings.catch_warnings():
        warnings.simplefilter("error", sl.MissingOptimizerHooksWarning)
        opt = torch.optim.AdamW(other.parameters(), lr=1e-2)
        other(torch.randn(2, 3)).sum().backward()
        opt.step()
        model(torch.randn(2, 12)).sum().backward()  # the SST model trains in the same process, hooked
        sl_opt = sl.optimizer(model, lr=1e-2)
        sl_opt.step()


def test_evaluation_and_no_grad_forwards_do_not_warn():
    model = adapted("sst")
    x = torch.randn(4, 12)
    with warnings.catch_warnings():
        warnings.simplefilter("error", sl.MissingOptimizerHooksWarning)
        for _ in range(3):  # weights loaded or edited between evaluations: no training
            model.eval()
            model(x)
            model.train()
            with torch.no_grad():
                model(x)
                model.fc1.S.mul_(1.01)
        # A forward and backward without a step (a gradient check) changes no parameter either.
        for _ in range(2):
            model(x).sum().backward()


def test_lora_and_full_never_warn():
    for method in ("lora", "full", "dora"):
        model = adapted(method) if method != "full" else sl.apply(Net(), "full")
        with warnings.catch_warnings():
            warnings.simplefilter("error", sl.MissingOptimizerHooksWarning)
            steps(model, torch.optim.AdamW(model.parameters(), lr=1e-2))


def test_sorsa_without_its_regularizer_has_nothing_to_miss():
    model = adapted("sorsa", gamma=0)
    with warnings.catch_warnings():
        warnings.simplefilter("error", sl.MissingOptimizerHooksWarning)
        steps(model, torch.optim.AdamW(model.parameters(), lr=1e-2))


def test_one_warning_per_apply_however_many_layers_and_steps():
    model = nn.Sequential(*[nn.Linear(8, 8) for _ in range(9)])
    sl.apply(model, "relora", rank=2, reset_every=2, restart_warmup=1, seed=0)
    opt = torch.optim.SGD(model.parameters(), lr=1e-2)
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        for _ in range(4):
            opt.zero_grad()
            model(torch.randn(2, 8)).sum().backward()
            opt.step()
    (message,) = hook_warnings(record)
    assert "layers 0, 1, 2, 3, 4, 5, ... (9 layers)" in message


def test_every_method_with_optimizer_hooks_declares_what_they_do():
    """A new method that overrides attach_optimizer must say what a plain optimizer would skip."""
    for name, cls in sl.methods.registered().items():
        if cls.attach_optimizer is not Method.attach_optimizer:
            assert cls.needs_optimizer_hooks, (
                f"method {name!r} installs optimizer hooks but its needs_optimizer_hooks is None"
            )


def test_the_hugging_face_trainer_default_optimizer_warns(tmp_path):
    pytest.importorskip("transformers")
    pytest.importorskip("accelerate")
    from hf_models import batch, tiny_llama
    from transformers import Trainer, TrainingArguments

    torch.manual_seed(0)
    model = tiny_llama()
    sl.apply(model, "sst", rank=4, resample_every=2, warmup=0, seed=1)
    data = [{key: value[i] for key, value in batch(s).items()} for s in range(3) for i in range(2)]
    args = TrainingArguments(
        output_dir=str(tmp_path),
        max_steps=3,
        per_device_train_batch_size=2,
        learning_rate=1e-2,
        report_to=[],
        save_strategy="no",
        use_cpu=True,
        disable_tqdm=True,
        dataloader_num_workers=0,
    )
    with pytest.warns(sl.MissingOptimizerHooksWarning, match="optimizers=\\(spectrallab.optimizer"):
        Trainer(model=model, args=args, train_dataset=data).train()


def test_a_galore_adamw_built_by_hand_runs_galore_and_does_not_warn():
    from spectrallab.methods.galore import GaLoreAdamW

    model = adapted("galore")
    groups = [
        {
            "params": [model.fc1.weight, model.fc2.weight],
            "rank": 4,
            "update_proj_gap": 2,
            "scale": 0.25,
            "proj_type": "std",
        },
        {"params": [model.fc1.bias, model.fc2.bias]},
    ]
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        steps(model, GaLoreAdamW(groups, lr=1e-3))
    assert hook_warnings(record) == []
