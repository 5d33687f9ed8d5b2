"""The contract every registered method keeps, checked for each one: methods × checks, as PEFT's
``tests/test_custom_models.py`` checks every tuner on every toy model.

A method is one file: once it is registered, ``apply``'s validation, merging, copying, state dicts
and resume, low precision, transformers' ``Conv1D``, the memory report and the Playground's session
must work for it with no edit elsewhere. So the parametrization is ``registered()`` itself, and the
bad inputs are generated from each method's ``Option`` declarations. ``ToyScale`` below, a method
written in this file, proves it: it runs the whole contract by being registered — and so does the
method a reader writes in the chapter "Your own method" (its cell is executed here, as the reader runs it).

Toy sizes throughout (SmallMLP: fc1 32×20, fc2 12×32): the file runs in seconds.
"""

from __future__ import annotations

import copy
import math
import re

import pytest
import torch
import torch.nn.functional as F
from test_your_own_method_claims import chapter_namespace, method_cell
from torch import nn

import spectrallab as sl
from conftest import SmallMLP, fingerprint, same_fingerprint
from spectrallab.checkpoint import atomic_save
from spectrallab.methods import base
from spectrallab.methods.base import AdaptedLinear, LayerCounts, registered
from spectrallab.methods.options import Option

CHAPTER_METHOD = "gated_lora"  # book/your_own_method.md's method, checked like the built-ins

# -- a method written here: registering it is all it takes to be checked like the built-ins -------


class ToyScaleLinear(AdaptedLinear):
    """``W' = diag(1 + s) W`` (``side="rows"``, s ∈ R^m) or ``W diag(1 + s)`` (``"cols"``, s ∈ R^n),
    ``W`` frozen: a scale per output (input) channel, in the spirit of (IA)³ (Liu et al. 2022,
    arXiv:2205.05638), which learns such vectors on activations."""

    def __init__(self, linear: nn.Linear, side: str, init: float, train_bias: bool):
        super().__init__(linear.in_features, linear.out_features)
        self.side = side
        self.weight = nn.Parameter(linear.weight.detach(), requires_grad=False)
        self.bias = None if linear.bias is None else nn.Parameter(linear.bias.detach(), requires_grad=train_bias)
        size = linear.out_features if side == "rows" else linear.in_features
        self.s = nn.Parameter(torch.full((size,), float(init), dtype=linear.weight.dtype, device=linear.weight.device))

    def effective_weight(self) -> torch.Tensor:
        scale = 1 + self.s
        return self.weight * (scale[:, None] if self.side == "rows" else scale[None, :])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.side == "cols":
            return F.linear(x * (1 + self.s), self.weight, self.bias)
        out = F.linear(x, self.weight)
        return out * (1 + self.s) + (0 if self.bias is None else self.bias)

    def paper_counts(self) -> LayerCounts:
        """Frozen ``mn`` plus one trained scale per channel (m or n), with Adam's two moments."""
        m, n = self.out_features, self.in_features
        trained = m if self.side == "rows" else n
        return LayerCounts.adam(m * n + trained, trained)


TOY = "contract_toy"


class ToyScale(sl.Method):
    """A scale per channel on a frozen weight (the test file's own method)."""

    options = {
        "side": Option("rows", "which side of W the trained scale multiplies", kind="choice", choices=("rows", "cols")),
        "init": Option(
            0.0,
            "s at the start (0: the pretrained function); 1 + s must stay > 0",
            kind="float",
            low=-1,
            high=1,
            low_open=True,
        ),
        "train_bias": Option(False, "train the layer's bias too", kind="bool"),
    }
    init_reads_weight = "it keeps W as it is"

    def adapt(self, layer_name: str, linear: nn.Linear) -> ToyScaleLinear:
        c = self.config
        return ToyScaleLinear(linear, c["side"], c["init"], c["train_bias"])


@pytest.fixture(autouse=True, scope="module")
def toy_registered():
    """``contract_toy`` and the chapter's ``gated_lora`` are registered for this module's tests only
    (the registry is restored after)."""
    before = registered()
    sl.register(TOY)(ToyScale)
    register_the_chapters_method()
    yield
    base._REGISTRY.clear()
    base._REGISTRY.update(before)


# -- options that fit the toy model, derived from the declarations -----------------------------------

PERIOD = 3  # every periodic method does its work every 3 steps here (SST, ReLoRA, GaLore)
RANK = 4  # a rank that fits every toy layer (min(out, in) = 12)


def options_for(method: str) -> dict:
    """The method's defaults, with a rank that fits the toy model and its periodic work every PERIOD
    steps: all the built-in methods need (their other defaults fit SmallMLP)."""
    cls = registered()[method]
    options = {"rank": RANK} if "rank" in cls.options else {}
    options.update(cls.period_options(PERIOD) or {})
    return options


def build(method: str, seed: int = 0, dtype: torch.dtype = torch.float32, **overrides) -> nn.Module:
    torch.manual_seed(seed)
    model = SmallMLP().to(dtype)
    return sl.apply(model, method, **{**options_for(method), **overrides})


def batch(i: int, dtype: torch.dtype = torch.float32) -> tuple[torch.Tensor, torch.Tensor]:
    """Batch i depends on i only (a resumed run sees the batches the uninterrupted one saw)."""
    g = torch.Generator().manual_seed(1000 + i)
    return torch.randn(16, 20, generator=g).to(dtype), torch.randn(16, 12, generator=g).to(dtype)


def train(
    model: nn.Module, opt: torch.optim.Optimizer, start: int, stop: int, dtype: torch.dtype = torch.float32
) -> None:
    for i in range(start, stop):
        x, y = batch(i, dtype)
        loss = F.mse_loss(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()


def probe(dtype: torch.dtype = torch.float32) -> torch.Tensor:
    return torch.randn(7, 20, generator=torch.Generator().manual_seed(99)).to(dtype)


def outputs(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(x)


# -- bad values, generated from an Option declaration --------------------------------------------


def _below(option: Option):
    if option.kind == "int" or option.kind == "seed":
        return option.low if option.low_open else option.low - 1
    return option.low if option.low_open else math.nextafter(option.low, -math.inf)


def _above(option: Option):
    if isinstance(option.high, str):
        # A bound that depends on the layer ("min(out, in)"): far above any dimension of the toy model.
        return 1000 if option.kind == "int" else 1000.0
    if option.kind == "int":
        return option.high if option.high_open else option.high + 1
    return option.high if option.high_open else math.nextafter(option.high, math.inf)


def bad_values(option: Option) -> list[tuple[str, object, type[Exception], list[str]]]:
    """``(label, value, error, phrases the message must contain)`` for every way to break ``option``."""
    cases = []
    if option.kind == "bool":
        allowed = ["True or False"]
        cases += [("int", 1, TypeError, allowed), ("str", "yes", TypeError, allowed)]
        if option.none is None:
            cases.append(("None", None, TypeError, allowed))
        return cases
    if option.kind == "choice":
        allowed = [repr(c) for c in option.allowed_choices()]
        cases.append(("not-a-choice", "no-such-choice", ValueError, allowed))
        if option.none is None:
            cases.append(("None", None, ValueError, allowed))
        return cases
    number = "an int" if option.kind in ("int", "seed") else "number"
    range_text = [] if option.kind == "seed" else [option.range_text()]
    wrong_type = [number] + range_text
    cases.append(("str", "3", TypeError, wrong_type))
    if option.kind in ("int", "seed"):
        cases.append(("float", 2.5, TypeError, wrong_type))
    elif option.finite:
        cases.append(("nan", math.nan, TypeError, wrong_type))
    cases.append(("bool", True, TypeError, wrong_type))
    if option.none is None:
        cases.append(("None", None, TypeError, wrong_type))
    if option.kind != "seed":
        # A bound given as a phrase depends on the layer or on another option: the range is then
        # stated with the actual numbers ("[1, 16]", "[0, 2] (it must be shorter than ...)").
        out_of_range = ["allowed range"] if isinstance(option.high, str) else range_text
        if option.low is not None:
            cases.append(("below-low", _below(option), ValueError, out_of_range))
        if option.high is not None:
            cases.append(("above-high", _above(option), ValueError, out_of_range))
    return cases


# -- the matrix: every registered method, the toy included --------------------------------------------
#
# The toy is registered while this module is collected, so that `registered()` lists it, and taken
# out again at once: modules collected after this one parametrize over the built-in registry only
# (`toy_registered` puts it back for this module's tests).


def register_the_chapters_method() -> None:
    """Run book/your_own_method.md's method cell, as a reader does: it registers "gated_lora"."""
    exec(compile(method_cell(), "book/your_own_method.md", "exec"), chapter_namespace())


_BUILT_IN = registered()
sl.register(TOY)(ToyScale)
register_the_chapters_method()
METHODS = sorted(registered())
OPTION_CASES = [
    pytest.param(method, name, value, error, phrases, id=f"{method}-{name}-{label}")
    for method in METHODS
    for name, option in registered()[method].options.items()
    if isinstance(option, Option)
    for label, value, error, phrases in bad_values(option)
]
base._REGISTRY.clear()
base._REGISTRY.update(_BUILT_IN)

LAYERS = ("fc1", "fc2")


def test_the_matrix_holds_every_built_in_method_the_toy_and_the_chapters_method():
    assert set(METHODS) == set(_BUILT_IN) | {TOY, CHAPTER_METHOD} and not {TOY, CHAPTER_METHOD} & set(_BUILT_IN)
    assert registered()[TOY] is ToyScale


@pytest.mark.parametrize("method", METHODS)
def test_every_option_is_declared(method):
    """Validation, messages, widgets and docs come from the declarations: no bare defaults."""
    cls = registered()[method]
    bare = sorted(name for name, option in cls.options.items() if not isinstance(option, Option))
    assert not bare, f"{method}: options without an Option declaration: {bare}"


@pytest.mark.parametrize("method, name, value, error, phrases", OPTION_CASES)
def test_a_bad_option_is_refused_naming_layer_option_and_range_and_changes_nothing(method, name, value, error, phrases):
    torch.manual_seed(0)
    model = SmallMLP()
    before = fingerprint(model)
    with pytest.raises(error) as info:
        sl.apply(model, method, **{**options_for(method), name: value})
    message = str(info.value)
    assert re.search(r"layers? '(fc1|fc2)'", message), message
    assert name in message, message
    for phrase in phrases:
        assert phrase in message, f"{phrase!r} not in {message!r}"
    assert same_fingerprint(before, fingerprint(model))


@pytest.mark.parametrize("method", METHODS)
def test_merge_is_exact_and_gives_linears_back(method):
    f64 = torch.float64
    model = build(method, dtype=f64)
    x = probe(f64)
    start = outputs(model, x)
    train(model, sl.optimizer(model, lr=1e-2), 0, 4, f64)
    adapted = outputs(model, x)
    assert not torch.equal(adapted, start)  # the steps moved the adapted function: a real test of merge
    sl.merge(model)
    assert all(type(getattr(model, name)) is nn.Linear for name in LAYERS)
    assert not any(isinstance(m, AdaptedLinear) for m in model.modules())
    torch.testing.assert_close(outputs(model, x), adapted, rtol=1e-10, atol=1e-12)


def tensors(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict(keep_vars=False).items()}


def assert_same_tensors(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    differ = [k for k in a if not torch.equal(a[k], b[k])]
    assert not differ, f"differ: {differ}"


@pytest.mark.parametrize("method", METHODS)
def test_deepcopy_computes_the_same_and_is_independent(method):
    model = build(method)
    train(model, sl.optimizer(model, lr=1e-2), 0, 2)
    clone = copy.deepcopy(model)
    x = probe()
    assert torch.equal(outputs(clone, x), outputs(model, x))
    assert_same_tensors(tensors(clone), tensors(model))
    shared = {t.data_ptr() for t in model.state_dict().values() if t.numel()} & {
        t.data_ptr() for t in clone.state_dict().values() if t.numel()
    }
    assert not shared, "the copy shares storage with the original"
    snapshot = tensors(model)
    train(clone, sl.optimizer(clone, lr=1e-2), 2, 4)
    assert_same_tensors(tensors(model), snapshot)  # training the copy leaves the original alone
    assert not torch.equal(outputs(clone, x), outputs(model, x))


@pytest.mark.parametrize("method", METHODS)
def test_state_dict_round_trip(method):
    trained = build(method)
    train(trained, sl.optimizer(trained, lr=1e-2), 0, 2)
    fresh = build(method, seed=1)  # another init: everything must come from the dict
    fresh.load_state_dict(trained.state_dict())
    assert_same_tensors(tensors(fresh), tensors(trained))
    x = probe()
    assert torch.equal(outputs(fresh, x), outputs(trained, x))


K, N = 4, 4  # save after K steps, continue N: the periodic work at step 6 falls inside the window


@pytest.mark.parametrize("method", METHODS)
def test_resume_from_a_checkpoint_is_bit_identical(method, tmp_path):
    first = build(method)
    first_opt = sl.optimizer(first, lr=1e-2)
    train(first, first_opt, 0, K)
    path = atomic_save({"model": first.state_dict(), "optimizer": first_opt.state_dict()}, tmp_path / "ckpt.pt")
    torch.manual_seed(7)  # dropout masks, random pruning: the same draws
    train(first, first_opt, K, K + N)

    saved = torch.load(path, weights_only=True)
    resumed = build(method, seed=1)
    resumed_opt = sl.optimizer(resumed, lr=1e-2)
    resumed.load_state_dict(saved["model"])
    resumed_opt.load_state_dict(saved["optimizer"])
    torch.manual_seed(7)
    train(resumed, resumed_opt, K, K + N)

    assert_same_tensors(tensors(resumed), tensors(first))
    a, b = first_opt.state_dict(), resumed_opt.state_dict()
    assert a["param_groups"] == b["param_groups"] and a["state"].keys() == b["state"].keys()
    for i, state in a["state"].items():
        assert state.keys() == b["state"][i].keys()
        for key, value in state.items():
            assert torch.equal(torch.as_tensor(value), torch.as_tensor(b["state"][i][key])), (i, key)
    untouched = tensors(build(method))  # and the run really moved
    assert any(not torch.equal(v, untouched[k]) for k, v in tensors(first).items())


@pytest.mark.parametrize("method", METHODS)
def test_bfloat16_model_trains_with_finite_outputs(method):
    bf16 = torch.bfloat16
    model = build(method, dtype=bf16)
    opt = sl.optimizer(model, lr=1e-2)
    for i in range(2):
        x, y = batch(i, bf16)
        out = model(x)
        assert out.dtype == bf16 and torch.isfinite(out).all()
        loss = F.mse_loss(out, y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert torch.isfinite(outputs(model, probe(bf16))).all()
    assert all(torch.isfinite(p).all() for p in model.parameters())


@pytest.mark.parametrize("method", METHODS)
def test_a_conv1d_layer_is_adapted_trained_and_merged_back(method):
    Conv1D = pytest.importorskip("transformers.pytorch_utils").Conv1D  # GPT-2's layer: y = x W + b
    f64 = torch.float64
    torch.manual_seed(0)
    model = nn.Sequential(Conv1D(32, 20), nn.Tanh(), Conv1D(12, 32)).to(f64)  # Conv1D(out, in)
    sl.apply(model, method, **options_for(method))
    assert sorted(sl.adapted_layers(model)) == ["0", "2"]
    x = probe(f64)
    start = outputs(model, x)
    train(model, sl.optimizer(model, lr=1e-2), 0, 2, f64)
    trained = outputs(model, x)
    assert not torch.equal(trained, start)
    sl.merge(model)
    assert type(model[0]) is Conv1D and type(model[2]) is Conv1D
    torch.testing.assert_close(outputs(model, x), trained, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("method", METHODS)
def test_memory_formula_equals_the_measured_bytes(method):
    model = build(method)
    opt = sl.optimizer(model, lr=1e-3)
    x, y = batch(0)
    F.mse_loss(model(x), y).backward()
    opt.step()  # the gradients stay: the report counts them
    for name, layer in sl.adapted_layers(model).items():
        assert layer.paper_counts() is not None, f"{method}: layer {name!r} has no paper_counts()"
    entry = sl.memory_report(model, opt).methods[method]
    assert entry.layers == len(LAYERS) and entry.formula is not None
    assert all(v in (True, None) for v in entry.matches().values()), entry.matches()


# Methods a Playground scenario is not meant for, with the reason (the test skips them): none so far.
NOT_FOR_THE_PLAYGROUND: dict[str, str] = {}
SCENARIO = "low-rank teacher"  # from scratch (no pretrained base to build), two 64×64 linears


@pytest.mark.parametrize("method", METHODS)
def test_a_playground_session_takes_steps(method, home):
    if method in NOT_FOR_THE_PLAYGROUND:
        pytest.skip(NOT_FOR_THE_PLAYGROUND[method])
    from spectrallab.widgets.session import SCENARIOS, TrainingSession

    scenario = SCENARIOS[SCENARIO]
    session = TrainingSession(scenario, method, options_for(method), scenario.suggested_lr(method), steps=2)
    try:
        events = [session.step() for _ in range(3)]  # the starting point (step 0), then two steps
    finally:
        session.close()
    assert session.error is None and session.done and session.step_count == 2
    assert [e.step for e in events] == [0, 1, 2]
    assert len(session.run.loss) == 2 and all(map(math.isfinite, session.run.loss))
