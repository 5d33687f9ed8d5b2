"""The memory report: measured bytes of parameters, gradients and optimizer state, next to each
paper's formula.

The expected sizes here are written out from the layer shapes (SmallMLP: fc1 is 32×20, fc2 12×32),
not taken from ``spectrallab.memory``: the report's measurement, its formula table and this file
must all agree, float32, 4 bytes per scalar. Methods that are not registered yet are skipped. The
formulas themselves are each layer's ``paper_counts()`` in its method's file.
"""

from __future__ import annotations

import json
import types

import pytest
import torch
from torch import nn

import spectrallab as sl
from conftest import SmallMLP
from spectrallab import memory

SHAPES = [(32, 20), (12, 32)]  # (m, n) = (out, in) of SmallMLP's fc1, fc2
F32 = 4


def one_step(model: nn.Module, optimizer: torch.optim.Optimizer) -> None:
    """backward + step, gradients left in place (memory_report is called before zero_grad)."""
    x = torch.randn(8, 20, generator=torch.Generator().manual_seed(0))
    model(x).square().mean().backward()
    optimizer.step()


def adapted(method: str, bias: bool = True, **options) -> tuple[nn.Module, torch.optim.Optimizer, memory.MemoryReport]:
    if method not in sl.methods():
        pytest.skip(f"method {method!r} is not registered yet (its file is being written)")
    torch.manual_seed(0)
    model = sl.apply(SmallMLP(bias=bias), method, **options)
    opt = sl.optimizer(model, lr=1e-3)
    one_step(model, opt)
    return model, opt, sl.memory_report(model, opt)


def per_layer(count) -> int:
    return sum(count(m, n) for m, n in SHAPES)


def test_full_training_measured_equals_mn_and_2mn():
    model, opt, report = adapted("full")
    weights = per_layer(lambda m, n: m * n)  # 32·20 + 12·32 = 1024
    biases = 32 + 12
    full = report.methods["full"]
    assert full.layers == 2
    assert full.measured.parameters == full.measured.trainable == full.measured.gradients == F32 * weights
    assert full.measured.optimizer_state == F32 * 2 * weights  # Adam: exp_avg + exp_avg_sq
    assert all(full.matches().values())
    # the biases are measured outside the formulas, with their own gradients and moments
    assert report.outside.parameters == report.outside.gradients == F32 * biases
    assert report.outside.optimizer_state == F32 * 2 * biases
    # whole model: everything trains; Adam adds one float32 `step` counter per parameter tensor
    assert report.parameters == report.trainable_parameters == F32 * (weights + biases)
    assert report.frozen_parameters == 0
    assert report.optimizer_step_counters == F32 * 4
    assert report.optimizer_state == F32 * 2 * (weights + biases) + F32 * 4
    assert report.total == report.parameters + report.gradients + report.optimizer_state


# (method, options, trainable per m×n layer, parameters stored per layer, extra buffer elements per layer)
R = 4
FINE_TUNING = [
    ("lora", {"rank": R}, lambda m, n: R * (m + n), lambda m, n: m * n + R * (m + n), lambda m, n: 0),
    ("pissa", {"rank": R}, lambda m, n: R * (m + n), lambda m, n: m * n + R * (m + n), lambda m, n: R * (m + n)),
    ("ffa_lora", {"rank": R}, lambda m, n: R * m, lambda m, n: m * n + R * (m + n), lambda m, n: 0),
    ("dora", {"rank": R}, lambda m, n: R * (m + n) + m, lambda m, n: m * n + R * (m + n) + m, lambda m, n: 0),
    ("loraxs", {"rank": R}, lambda m, n: R * R, lambda m, n: m * n + R * (m + n) + R * R, lambda m, n: 0),
    ("svfit", {"rank": R}, lambda m, n: R, lambda m, n: m * n + R * (m + n) + 2 * R, lambda m, n: 0),
    (
        "sorsa",
        {"rank": R},
        lambda m, n: R * (m + n) + R,
        lambda m, n: m * n + R * (m + n) + R,
        lambda m, n: R * (m + n) + R,
    ),
    # SVFT-B with one off-diagonal: nnz = 3k − 2, plus the gate; U, S, Vh replace W; row/col indices
    (
        "svft",
        {"off_diag": 1},
        lambda m, n: 3 * min(m, n) - 2 + 1,
        lambda m, n: min(m, n) * (m + n) + min(m, n) + 3 * min(m, n) - 2 + 1,
        lambda m, n: 2 * (3 * min(m, n) - 2),
    ),
]


@pytest.mark.parametrize("method, options, trainable, stored, extra", FINE_TUNING, ids=[c[0] for c in FINE_TUNING])
def test_fine_tuning_methods_measured_equals_formula(method, options, trainable, stored, extra):
    model, opt, report = adapted(method, **options)
    entry = report.methods[method]
    t = per_layer(trainable)
    assert entry.measured.trainable == entry.measured.gradients == F32 * t
    assert entry.measured.optimizer_state == F32 * 2 * t
    assert entry.measured.parameters == F32 * per_layer(stored)
    assert entry.measured.buffer_elements == per_layer(extra)
    assert all(v in (True, None) for v in entry.matches().values()), entry.matches()
    assert entry.formula.trainable == t and entry.formula.optimizer_states == 2 * t
    # fine-tuning freezes everything else: the biases get no gradient and no optimizer state
    assert report.outside.trainable == report.outside.gradients == report.outside.optimizer_state == 0
    assert report.trainable_parameters == sl.trainable_parameters(model) * F32


def test_vera_counts_its_vectors_and_shows_the_shared_matrices_as_buffers():
    rank = 8
    model, opt, report = adapted("vera", rank=rank)
    entry = report.methods["vera"]
    assert entry.measured.trainable == F32 * per_layer(lambda m, n: rank + m)
    assert entry.measured.optimizer_state == F32 * 2 * per_layer(lambda m, n: rank + m)
    # one shared A (r × max n) and B (max m × r), counted once although every layer holds them
    assert entry.measured.buffer_elements == rank * 32 + 32 * rank
    assert entry.matches()["buffer_elements"] is None  # not a per-layer formula


def test_gradients_counted_only_for_trainable_parameters_and_only_while_present():
    model, opt, report = adapted("lora", rank=R)
    frozen = [p for p in model.parameters() if not p.requires_grad]
    assert frozen and all(p.grad is None for p in frozen)
    assert report.gradients == report.trainable_parameters == F32 * per_layer(lambda m, n: R * (m + n))
    assert report.frozen_parameters == F32 * (per_layer(lambda m, n: m * n) + 32 + 12)
    opt.zero_grad()
    after = sl.memory_report(model, opt)
    assert after.gradients == 0
    assert any("before zero_grad" in note for note in after.notes)


def test_before_the_first_step_the_report_says_so():
    torch.manual_seed(0)
    model = sl.apply(SmallMLP(), "lora", rank=R)
    opt = sl.optimizer(model, lr=1e-3)
    report = sl.memory_report(model, opt)
    assert report.optimizer_state == 0
    assert any("at least one backward() and step()" in note for note in report.notes)
    assert sl.memory_report(model).optimizer is None


def test_layer_without_formula_falls_back_to_measured_only(monkeypatch):
    from spectrallab.methods.lora import LoRALinear

    monkeypatch.setattr(LoRALinear, "paper_counts", lambda self: None)
    model, opt, report = adapted("lora", rank=R)
    entry = report.methods["lora"]
    assert entry.formula is None and set(entry.matches().values()) == {None}
    assert entry.measured.trainable == F32 * per_layer(lambda m, n: R * (m + n))  # still measured
    assert any("no memory formula for method 'lora'" in note for note in report.notes)
    assert "—" in str(report)


def test_memory_module_knows_no_method_by_name():
    """Formulas live in the method files (each layer's paper_counts): memory.py only measures and renders."""
    import inspect

    source = inspect.getsource(memory)
    named = [m for m in sl.methods() if f'"{m}"' in source or f"'{m}'" in source]
    assert named == []


def test_formula_table_has_every_registered_method():
    table = memory.formula_table(12, 32, rank=4)
    assert set(table) == set(sl.methods())
    assert table["lora"] == memory.LayerCounts(12 * 32 + 4 * 44, 4 * 44, 2 * 4 * 44, 0)
    assert table["full"] == memory.LayerCounts.dense(12, 32)
    assert all(c is not None for c in table.values()), [m for m, c in table.items() if c is None]


def test_nested_optimizer_state_is_counted():
    """A projector object inside optimizer.state[p] (as GaLore keeps it) is walked into."""

    class ProjectedSGD(torch.optim.SGD):
        def step(self, closure=None):
            for group in self.param_groups:
                for p in group["params"]:
                    if p.ndim == 2 and "projector" not in self.state[p]:
                        self.state[p]["projector"] = types.SimpleNamespace(matrix=torch.zeros(3, p.shape[1]), rank=3)
                        self.state[p]["moments"] = [torch.zeros(p.shape[0], 3), {"sq": torch.zeros(p.shape[0], 3)}]
            return super().step(closure)

    model = SmallMLP(bias=False)
    opt = ProjectedSGD(model.parameters(), lr=0.1)
    one_step(model, opt)
    report = sl.memory_report(model, opt)
    assert report.optimizer_state == F32 * per_layer(lambda m, n: 3 * n + 2 * 3 * m)
    assert any("assume Adam" in note for note in report.notes)
    assert not report.methods and any("no adapted layers" in note for note in report.notes)


def test_galore_formula_projects_the_smaller_side_and_keeps_full_gradients():
    # Table 1 of the GaLore paper (m ≤ n): weights mn, optimizer states mr + 2nr
    wide = memory.formula_table(12, 32, rank=4)
    tall = memory.formula_table(32, 12, rank=4)
    assert wide["galore"].optimizer_states == tall["galore"].optimizer_states == 12 * 4 + 2 * 32 * 4
    assert wide["galore"].weights == wide["full"].weights and wide["galore"].gradients == 12 * 32
    lora, galore = wide["lora"], wide["galore"]
    assert galore.weights + galore.optimizer_states < lora.weights + lora.optimizer_states  # mn+mr+2nr < mn+3mr+3nr


@pytest.mark.parametrize(
    "proj_type, states",
    [
        ("std", lambda m, n, r: min(m, n) * r + 2 * max(m, n) * r),
        ("left", lambda m, n, r: m * r + 2 * n * r),
        ("right", lambda m, n, r: n * r + 2 * m * r),
    ],
)
def test_galore_measured_optimizer_state(proj_type, states):
    rank = 4
    model, opt, report = adapted("galore", bias=False, rank=rank, proj_type=proj_type)
    entry = report.methods["galore"]
    assert entry.measured.optimizer_state == F32 * per_layer(lambda m, n: states(m, n, rank))
    assert all(v in (True, None) for v in entry.matches().values()), entry.matches()


def test_galore_saves_optimizer_state_not_gradients():
    rank = 4
    model, opt, report = adapted("galore", bias=False, rank=rank)
    entry = report.methods["galore"]
    full_model, full_opt, full_report = adapted("full", bias=False)
    # what GaLore does not save, visible in the report: the gradients are exactly full training's
    dense = F32 * per_layer(lambda m, n: m * n)
    assert entry.measured.gradients == full_report.methods["full"].measured.gradients == dense
    assert report.gradients == full_report.gradients and entry.formula.gradients * F32 == dense
    # what it saves: the optimizer state, projector on the smaller side plus two moments on the larger
    states = per_layer(lambda m, n: min(m, n) * rank + 2 * max(m, n) * rank)
    assert entry.measured.optimizer_state == F32 * states
    assert entry.measured.optimizer_state < full_report.methods["full"].measured.optimizer_state / 2
    assert any("GaLore shrinks the optimizer state only" in note for note in report.notes)


def test_relora_measured():
    model, opt, report = adapted("relora", rank=R)
    entry = report.methods["relora"]
    t = per_layer(lambda m, n: R * (m + n))
    assert entry.measured.trainable == F32 * t and entry.measured.optimizer_state == F32 * 2 * t
    assert all(v in (True, None) for v in entry.matches().values()), entry.matches()


def test_sltrain_measured():
    model, opt, report = adapted("sltrain", bias=False, rank=R, sparsity=0.1)
    entry = report.methods["sltrain"]
    nnz = per_layer(lambda m, n: int(0.1 * m * n + 0.5))  # δmn values, rounded half up: 64 + 38
    t = per_layer(lambda m, n: R * (m + n)) + nnz
    assert entry.measured.trainable == entry.measured.gradients == F32 * t
    assert entry.measured.optimizer_state == F32 * 2 * t
    assert entry.measured.parameters == F32 * t  # no dense W is stored
    assert entry.measured.buffer_elements == nnz  # one index per sparse value
    assert all(v in (True, None) for v in entry.matches().values()), entry.matches()


def test_sst_measured():
    model, opt, report = adapted("sst", bias=False, rank=R)
    entry = report.methods["sst"]
    t = per_layer(lambda m, n: R * (m + n) + min(m, n))
    assert entry.measured.trainable == entry.measured.gradients == F32 * t
    assert entry.measured.optimizer_state == F32 * 2 * t
    # all of U, Σ, Vh are held (r vectors trained, k − r frozen): SST does not save weight storage
    stored = per_layer(lambda m, n: min(m, n) * (m + n) + min(m, n))
    assert entry.measured.parameters + F32 * entry.measured.buffer_elements >= F32 * stored
    assert stored > per_layer(lambda m, n: m * n)
    assert all(v in (True, None) for v in entry.matches().values()), entry.matches()


def test_report_renders_and_serializes():
    model, opt, report = adapted("dora", rank=R)
    text = str(report)
    assert "dora: 2 adapted layer(s)" in text and "optimizer state" in text and "≠" not in text
    page = report._repr_html_()
    assert page.count("<table>") == 2 and "dora" in page
    data = json.loads(json.dumps(report.as_dict()))
    assert data["methods"]["dora"]["matches"]["trainable"] is True
    assert data["total"] == report.total
    # a wrong formula shows up as a mismatch, in the table and in the notes
    broken = memory.MethodMemory(
        "dora",
        2,
        F32,
        memory.LayerCounts(1, 1, 2),
        report.methods["dora"].measured,
        report.methods["dora"].full_reference,
    )
    assert broken.matches()["trainable"] is False


def test_bad_input():
    with pytest.raises(TypeError, match="nn.Module"):
        sl.memory_report("model")
    with pytest.raises(TypeError, match="torch.optim.Optimizer"):
        sl.memory_report(SmallMLP(), optimizer={"lr": 1})


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_peak_is_reported():
    torch.manual_seed(0)
    model = sl.apply(SmallMLP().cuda(), "lora", rank=R)
    opt = sl.optimizer(model, lr=1e-3)
    torch.cuda.reset_peak_memory_stats()
    x = torch.randn(8, 20, device="cuda")
    model(x).square().mean().backward()
    opt.step()
    report = sl.memory_report(model, opt)
    assert report.cuda_peak is not None and report.cuda_peak >= report.parameters + report.gradients
