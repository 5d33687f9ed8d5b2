"""The Hugging Face ``Trainer`` runs a method's whole algorithm when given ``sl.optimizer``.

``Trainer(model, args, optimizers=(sl.optimizer(model, ...), None))``: the Trainer wraps the
optimizer (accelerate's ``AcceleratedOptimizer``, whose ``step`` calls ours, so the method's step
hooks fire) and builds its own LR scheduler on it (linear decay by default), which writes
``group["lr"]``; the method-owned multipliers (SST's warm-up per period, ReLoRA's jagged restarts)
scale that value during each step only, so the two compose.
"""

from __future__ import annotations

import math

import pytest
import torch
from hf_models import batch, tiny_llama

import spectrallab as sl

transformers = pytest.importorskip("transformers")
pytest.importorskip("accelerate")
from transformers import Trainer, TrainingArguments  # noqa: E402

STEPS, LR = 12, 1e-2


def train(model, opt, tmp_path):
    """12 Trainer steps (batch 4) on random tokens; returns the Trainer and, per optimizer step,
    (lr the step used, lr the Trainer's scheduler set)."""
    used, scheduled = [], []
    # Registered after sl.optimizer's hooks: the pre-hook sees the scaled lr, the post-hook the restored one.
    opt.register_step_pre_hook(lambda o, a, k: used.append(o.param_groups[0]["lr"]))
    opt.register_step_post_hook(lambda o, a, k: scheduled.append(o.param_groups[0]["lr"]))
    data = [{key: value[i] for key, value in batch(s).items()} for s in range(STEPS) for i in range(4)]
    args = TrainingArguments(
        output_dir=str(tmp_path),
        max_steps=STEPS,
        per_device_train_batch_size=4,
        learning_rate=LR,
        report_to=[],
        save_strategy="no",
        use_cpu=True,
        logging_steps=1,
        disable_tqdm=True,
        dataloader_num_workers=0,
    )
    trainer = Trainer(model=model, args=args, train_dataset=data, optimizers=(opt, None))
    result = trainer.train()
    assert trainer.state.global_step == STEPS and len(used) == STEPS
    assert math.isfinite(result.training_loss)
    assert all(math.isfinite(h["loss"]) for h in trainer.state.log_history if "loss" in h)
    # Trainer's default schedule: linear decay from LR to 0 over the 12 steps, no warm-up.
    assert scheduled == pytest.approx([LR * (STEPS - k) / STEPS for k in range(STEPS)])
    return trainer, [u / s for u, s in zip(used, scheduled)]


def test_sst_resamples_re_svds_and_warms_up_each_period_under_trainer(tmp_path):
    torch.manual_seed(0)
    model = tiny_llama()
    sl.apply(model, "sst", rank=4, resample_every=4, warmup=2, periods_per_round=2, seed=1)
    layers = list(sl.adapted_layers(model).values())
    trainer, multipliers = train(model, sl.optimizer(model, lr=LR), tmp_path)
    assert type(trainer.optimizer).__name__ == "AcceleratedOptimizer"  # wrapped, and still ours inside
    for layer in layers:
        assert layer.period == 3 and layer.resvds == 1  # periods end at steps 4, 8, 12
        assert [h["step"] for h in layer.history] == [0, 4, 8, 12]
        assert [h["resvd"] for h in layer.history] == [False, False, True, False]
    assert any(layer.history[1]["active"] != layer.history[0]["active"] for layer in layers)
    # Warm-up over the first 2 steps of every period after the first (the first is the Trainer's
    # schedule to warm up), on top of the Trainer's decay.
    assert multipliers == pytest.approx([1, 1, 1, 1] + [0.5, 1, 1, 1] * 2)


def test_relora_merges_at_each_restart_under_trainer(tmp_path):
    torch.manual_seed(0)
    model = tiny_llama()
    sl.apply(model, "relora", rank=4, reset_every=4, restart_warmup=2, seed=1)
    layers = list(sl.adapted_layers(model).values())
    start = [layer.weight.detach().clone() for layer in layers]
    _, multipliers = train(model, sl.optimizer(model, lr=LR), tmp_path)
    for layer, w0 in zip(layers, start):
        assert layer.restarts == 3 and layer.schedule.last_reset == 12
        assert (layer.weight - w0).abs().max() > 1e-5  # B A was merged into W
        assert layer.lora_B.abs().max() == 0  # and restarted at the last reset
    # Jagged: 0 on the first step after each reset, back to 1 over 2 steps.
    assert multipliers == pytest.approx([1, 1, 1, 1, 0, 0.5, 1, 1, 0, 0.5, 1, 1])


def test_galore_refreshes_its_projections_under_trainer(tmp_path):
    torch.manual_seed(0)
    model = tiny_llama()
    sl.apply(model, "galore", rank=4, update_proj_gap=4)
    weight = model.model.layers[0].self_attn.q_proj.weight
    opt = sl.optimizer(model, lr=LR)
    assert type(opt).__name__ == "GaLoreAdamW"
    seen = []
    opt.register_step_post_hook(lambda o, a, k: seen.append(o.state[weight]["projection_right"].clone()))
    _, multipliers = train(model, opt, tmp_path)
    same = [torch.equal(a, b) for a, b in zip(seen, seen[1:])]
    # New projections at steps 1, 5, 9 (from that step's gradient); kept in between.
    assert same == [True, True, True, False, True, True, True, False, True, True, True]
    assert multipliers == pytest.approx([1.0] * STEPS)
