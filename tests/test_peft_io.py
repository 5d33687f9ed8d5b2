"""``sl.save_peft`` / ``sl.load_peft`` cross-checked against the installed Hugging Face PEFT.

Every registered method either round-trips (trained a few steps, ``save_peft``, then PEFT's own
``PeftModel.from_pretrained`` on the *original* model gives the same outputs) or refuses with the
"no exact PEFT form" error; adapters made by PEFT itself (LoRA, rsLoRA, DoRA, per-layer ranks) load
into spectrallab with PEFT's outputs; sl → PEFT → sl is the identity on outputs; bad input fails
with the file and layer named and leaves the model untouched.
"""

from __future__ import annotations

import copy
import json
import warnings

import pytest
import torch
from torch import nn

import spectrallab as sl
from spectrallab.methods.base import registered

peft = pytest.importorskip("peft")
pytest.importorskip("safetensors")
from peft import LoraConfig, PeftModel, get_peft_model  # noqa: E402

TOL = 1e-5


class Net(nn.Module):
    """Nested names (``blocks.0``), different shapes, biases: what a rank/alpha pattern must tell apart."""

    def __init__(self):
        super().__init__()
        self.fc1 = nn.Linear(12, 16)
        self.blocks = nn.ModuleList([nn.Linear(16, 16), nn.Linear(16, 16)])
        self.head = nn.Linear(16, 6)

    def forward(self, x):
        h = torch.tanh(self.fc1(x))
        for block in self.blocks:
            h = torch.tanh(block(h)) + h
        return self.head(h)


def base_model(seed: int = 0) -> Net:
    torch.manual_seed(seed)
    return Net()


def data(seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(32, 12, generator=g), torch.randn(32, 6, generator=g)


def train(model: nn.Module, steps: int = 4, lr: float = 2e-2) -> nn.Module:
    x, y = data()
    opt = sl.optimizer(model, lr=lr)
    for _ in range(steps):
        loss = nn.functional.mse_loss(model(x), y)
        loss.backward()
        opt.step()
        opt.zero_grad()
    return model.eval()


@torch.no_grad()
def outputs(model: nn.Module) -> torch.Tensor:
    return model.eval()(data(seed=7)[0])


def peft_ranks(peft_model) -> dict[str, int]:
    prefix = "base_model.model."
    return {
        name[len(prefix) :]: m.r["default"]
        for name, m in peft_model.named_modules()
        if hasattr(m, "lora_A") and "default" in getattr(m, "lora_A", {})
    }


# Options that make each method small and quick; a method registered later and not listed here is
# tried with its defaults. Every one must round-trip or refuse.
OPTIONS = {
    "lora": {"rank": 4, "alpha": 8},
    "ffa_lora": {"rank": 4, "alpha": 4},
    "dora": {"rank": 4, "alpha": 6},
    "pissa": {"rank": 3, "alpha": 6},
    "milora": {"rank": 3},
    "olora": {"rank": 3, "alpha": 3},
    "sorsa": {"rank": 3},
    "loraxs": {"rank": 4, "alpha": 8},
    "svfit": {"energy": 0.9},
    "vera": {"rank": 8},
    "svft": {"off_diag": 1},
    "relora": {"rank": 4},
    "galore": {"rank": 4},
    "sst": {"rank": 4},
    "sltrain": {"rank": 4},
    "full": {},
}
# The rank each exportable method must need on a layer adapted at rank r.
EXPECTED_RANK = {
    "lora": 1,
    "ffa_lora": 1,
    "dora": 1,
    "loraxs": 1,
    "vera": 1,
    "svfit": 1,
    "pissa": 2,
    "milora": 2,
    "olora": 2,
    "sorsa": 2,
}
NO_FORM = {"full", "galore", "sst", "sltrain", "relora", "svft"}


def test_the_options_cover_every_registered_method():
    # not required for the contract below (unknown methods use their defaults), but a new method
    # should get a deliberate entry here
    assert set(registered()) <= set(OPTIONS), sorted(set(registered()) - set(OPTIONS))


@pytest.mark.parametrize("method", sorted(registered()))
def test_every_method_round_trips_through_peft_or_refuses(method, tmp_path):
    base = base_model()
    reference = outputs(base)
    model = train(sl.apply(copy.deepcopy(base), method, **OPTIONS.get(method, {})))
    ours = outputs(model)
    assert (ours - reference).abs().max() > 1e-3, "training changed nothing: the check below would be vacuous"
    try:
        export = sl.save_peft(model, tmp_path / "adapter")
    except sl.PeftExportError as err:
        message = str(err)
        assert "no exact PEFT form" in message and "spectrallab.merge" in message and method in message
        assert method in NO_FORM or method not in OPTIONS, f"{method} should be exportable"
        assert not (tmp_path / "adapter").exists(), "a refused export must write nothing"
        return
    assert method not in NO_FORM, f"{method} has no exact PEFT form but was exported"

    peft_model = PeftModel.from_pretrained(copy.deepcopy(base), tmp_path / "adapter").eval()
    theirs = outputs(peft_model)
    assert (theirs - ours).abs().max() <= TOL, f"{method}: max diff {(theirs - ours).abs().max():.3g}"
    # the ranks PEFT built are the ones save_peft states, and the ones the method needs
    assert peft_ranks(peft_model) == export.ranks
    layers = sl.adapted_layers(model)
    assert set(export.ranks) == set(layers) == {"fc1", "blocks.0", "blocks.1", "head"}
    if method in EXPECTED_RANK:
        for name, layer in layers.items():
            needed = min(EXPECTED_RANK[method] * layer.rank, layer.out_features, layer.in_features)
            assert export.ranks[name] == needed, (name, export.ranks)
    config = json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())
    assert config == export.config and config["peft_type"] == "LORA"
    assert config["use_dora"] is (method == "dora")


def test_lora_and_rslora_are_written_as_themselves(tmp_path):
    for rslora in (False, True):
        model = train(sl.apply(base_model(), "lora", rank=4, alpha=6, rslora=rslora))
        export = sl.save_peft(model, tmp_path / str(rslora))
        c = export.config
        assert (c["r"], c["lora_alpha"], c["use_rslora"], c["rank_pattern"], c["alpha_pattern"]) == (
            4,
            6,
            rslora,
            {},
            {},
        )
        assert sorted(c["target_modules"]) == ["blocks.0", "blocks.1", "fc1", "head"]


def test_svfit_energy_gives_per_layer_ranks_through_rank_pattern(tmp_path):
    base = base_model()
    model = train(sl.apply(copy.deepcopy(base), "svfit", energy=0.8))
    export = sl.save_peft(model, tmp_path)
    ranks = {name: layer.rank for name, layer in sl.adapted_layers(model).items()}
    assert export.ranks == ranks and len(set(ranks.values())) > 1, ranks  # the pattern is exercised
    assert export.config["rank_pattern"]
    peft_model = PeftModel.from_pretrained(copy.deepcopy(base), tmp_path)
    assert peft_ranks(peft_model) == ranks
    assert (outputs(peft_model) - outputs(model)).abs().max() <= TOL


def test_a_mixed_model_is_written_as_one_config(tmp_path):
    """LoRA, rsLoRA, DoRA and LoRA-XS on different layers, different ranks: PEFT's config has one
    use_dora and one use_rslora, so the non-DoRA layers get a magnitude that rescales by 1, and the
    rsLoRA layer's scale is written as a plain alpha."""
    base = base_model()
    model = copy.deepcopy(base)
    sl.apply(model, "lora", targets=["fc1"], rank=2, alpha=5)
    sl.apply(model, "lora", targets=["blocks.0"], rank=4, alpha=3, rslora=True)
    sl.apply(model, "dora", targets=["blocks.1"], rank=3, alpha=6)
    sl.apply(model, "loraxs", targets=["head"], rank=5, alpha=10)
    train(model)
    export = sl.save_peft(model, tmp_path)
    assert export.config["use_dora"] is True and export.config["use_rslora"] is False
    assert export.ranks == {"fc1": 2, "blocks.0": 4, "blocks.1": 3, "head": 5}
    peft_model = PeftModel.from_pretrained(copy.deepcopy(base), tmp_path)
    assert peft_ranks(peft_model) == export.ranks
    scaling = {
        n[len("base_model.model.") :]: m.scaling["default"]
        for n, m in peft_model.named_modules()
        if hasattr(m, "scaling") and isinstance(m.scaling, dict) and m.scaling
    }
    assert scaling == pytest.approx({"fc1": 2.5, "blocks.0": 1.5, "blocks.1": 2.0, "head": 2.0}, rel=1e-12)
    assert (outputs(peft_model) - outputs(model)).abs().max() <= TOL


def test_a_suffix_shared_with_an_untargeted_module_becomes_a_regex(tmp_path):
    class Two(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc1 = nn.Linear(12, 12)
            self.inner = nn.ModuleDict({"fc1": nn.Linear(12, 6)})

        def forward(self, x):
            return self.inner["fc1"](torch.tanh(self.fc1(x)))

    torch.manual_seed(0)
    base = Two()
    model = sl.apply(copy.deepcopy(base), "lora", targets="fc1", rank=2)  # the top-level fc1 only
    with torch.no_grad():
        model.fc1.lora_B.normal_()
    export = sl.save_peft(model, tmp_path)
    assert isinstance(export.config["target_modules"], str)  # a list ["fc1"] would also hit inner.fc1
    peft_model = PeftModel.from_pretrained(copy.deepcopy(base), tmp_path)
    assert set(peft_ranks(peft_model)) == {"fc1"}
    x = data()[0]
    with torch.no_grad():
        assert (peft_model(x) - model(x)).abs().max() <= TOL


@pytest.mark.parametrize("method", sorted(NO_FORM))
def test_no_exact_form_errors_say_why(method, tmp_path):
    model = sl.apply(base_model(), method, **OPTIONS[method])
    with pytest.raises(ValueError, match="no exact PEFT form") as info:
        sl.save_peft(model, tmp_path / "a")
    assert "layer 'fc1'" in str(info.value) or "layer 'blocks" in str(info.value)
    assert not (tmp_path / "a").exists()


def test_save_needs_adapted_layers(tmp_path):
    with pytest.raises(ValueError, match="no adapted layers"):
        sl.save_peft(base_model(), tmp_path)


def test_trainable_parameters_outside_the_adapter_are_named_in_a_warning(tmp_path):
    model = sl.apply(base_model(), "lora", targets=["fc1"], rank=2, freeze_others=False)
    with pytest.warns(UserWarning, match="head.weight"):
        sl.save_peft(model, tmp_path)


@pytest.mark.parametrize("method, rank", [("pissa", 5), ("sorsa", 4), ("vera", 12)])
def test_a_rank_above_the_layer_size_is_written_at_min_out_in(method, rank, tmp_path):
    """2r (or VeRA's r) larger than a narrow layer: written as I·ΔW at rank min(out, in), still exact,
    and readable by load_peft (whose LoRA needs rank <= min(out, in))."""
    base = base_model()
    model = train(sl.apply(copy.deepcopy(base), method, rank=rank))
    export = sl.save_peft(model, tmp_path)
    factor = 1 if method == "vera" else 2
    assert export.ranks == {
        "fc1": min(factor * rank, 12),
        "blocks.0": min(factor * rank, 16),
        "blocks.1": min(factor * rank, 16),
        "head": 6,
    }
    peft_model = PeftModel.from_pretrained(copy.deepcopy(base), tmp_path)
    assert (outputs(peft_model) - outputs(model)).abs().max() <= TOL
    back = sl.load_peft(copy.deepcopy(base), tmp_path)
    assert (outputs(back) - outputs(model)).abs().max() <= TOL


# -- load_peft: adapters made by PEFT itself ------------------------------------------------------


def perturb(peft_model) -> None:
    """Make a fresh PEFT adapter do something: random lora_B, magnitudes moved off their init."""
    torch.manual_seed(3)
    with torch.no_grad():
        for name, p in peft_model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.3)
            elif "lora_magnitude_vector" in name:
                p.mul_(1 + 0.2 * torch.rand_like(p))


def peft_adapter(tmp_path, **config) -> tuple[Net, object]:
    """A PEFT model on a fresh Net with non-zero lora_B (and perturbed magnitudes), saved to tmp_path."""
    base = base_model()
    config.setdefault("target_modules", ["fc1", "blocks.0", "blocks.1", "head"])
    peft_model = get_peft_model(copy.deepcopy(base), LoraConfig(**config))
    perturb(peft_model)
    peft_model.save_pretrained(tmp_path)
    return base, peft_model.eval()


@pytest.mark.parametrize(
    "config",
    [
        {"r": 4, "lora_alpha": 8},
        {"r": 4, "lora_alpha": 8, "use_rslora": True},
        {"r": 3, "lora_alpha": 5, "use_dora": True},
        {"r": 4, "lora_alpha": 8, "rank_pattern": {"head": 2, "blocks.1": 6}, "alpha_pattern": {"head": 3}},
        {
            "r": 2,
            "lora_alpha": 4,
            "use_dora": True,
            "use_rslora": True,
            "rank_pattern": {"fc1": 5},
            "target_modules": ["fc1", "blocks.1"],
        },
    ],
    ids=["lora", "rslora", "dora", "patterns", "dora-rslora-pattern-subset"],
)
def test_load_peft_reproduces_peft_models(config, tmp_path):
    base, peft_model = peft_adapter(tmp_path, **config)
    theirs = outputs(peft_model)
    assert (theirs - outputs(base)).abs().max() > 1e-2  # the adapter does something
    model = sl.load_peft(copy.deepcopy(base), tmp_path)
    assert (outputs(model) - theirs).abs().max() <= TOL
    layers = sl.adapted_layers(model)
    assert {n: layer.rank for n, layer in layers.items()} == peft_ranks(peft_model)
    assert {layer.method for layer in layers.values()} == {"dora" if config.get("use_dora") else "lora"}
    assert all(layer.rslora is bool(config.get("use_rslora")) for layer in layers.values())
    assert sl.trainable_parameters(model) == sum(p.numel() for p in peft_model.parameters() if p.requires_grad)


@pytest.mark.parametrize(
    "method, options",
    [("lora", {"rank": 4, "alpha": 8}), ("dora", {"rank": 3}), ("pissa", {"rank": 3}), ("vera", {"rank": 6})],
)
def test_round_trip_sl_peft_sl(method, options, tmp_path):
    base = base_model()
    model = train(sl.apply(copy.deepcopy(base), method, **options))
    sl.save_peft(model, tmp_path)
    back = sl.load_peft(copy.deepcopy(base), tmp_path)
    assert (outputs(back) - outputs(model)).abs().max() <= TOL
    peft_model = PeftModel.from_pretrained(copy.deepcopy(base), tmp_path)
    assert (outputs(back) - outputs(peft_model)).abs().max() <= TOL
    # and back out again: the same files' worth of adapter
    export = sl.save_peft(back, tmp_path / "again")
    assert export.ranks == peft_ranks(peft_model)


# -- load_peft: bad input changes nothing --------------------------------------------------------


def snapshot(model: nn.Module):
    return (
        {k: v.clone() for k, v in model.state_dict().items()},
        {n: type(m) for n, m in model.named_modules()},
        {n: p.requires_grad for n, p in model.named_parameters()},
    )


def assert_unchanged(model: nn.Module, before) -> None:
    state, types, flags = snapshot(model)
    assert types == before[1] and flags == before[2]
    assert state.keys() == before[0].keys() and all(torch.equal(state[k], before[0][k]) for k in state)


def rewrite_config(directory, **changes):
    path = directory / "adapter_config.json"
    config = json.loads(path.read_text())
    config.update(changes)
    path.write_text(json.dumps(config))


def rewrite_weights(directory, edit):
    from safetensors.torch import load_file, save_file

    path = directory / "adapter_model.safetensors"
    tensors = load_file(str(path))
    edit(tensors)
    save_file(tensors, str(path))


def test_load_peft_bad_input(tmp_path):
    peft_adapter(tmp_path / "ok", r=4, lora_alpha=8)
    model = base_model()
    before = snapshot(model)

    with pytest.raises(FileNotFoundError, match="adapter_config.json"):
        sl.load_peft(model, tmp_path / "nowhere")

    import shutil

    cases = {}
    for case in (
        "no_weights",
        "ia3",
        "missing_module",
        "shape",
        "rank_vs_config",
        "bias",
        "extra_key",
        "not_targeted",
        "bad_json",
    ):
        shutil.copytree(tmp_path / "ok", tmp_path / case)
        cases[case] = tmp_path / case
    (cases["no_weights"] / "adapter_model.safetensors").unlink()
    rewrite_config(cases["ia3"], peft_type="IA3")
    rewrite_weights(
        cases["missing_module"],
        lambda t: t.update(
            {
                "base_model.model.decoder.lora_A.weight": torch.zeros(4, 16),
                "base_model.model.decoder.lora_B.weight": torch.zeros(16, 4),
            }
        ),
    )
    rewrite_weights(cases["shape"], lambda t: t.update({"base_model.model.head.lora_B.weight": torch.zeros(7, 4)}))
    rewrite_config(cases["rank_vs_config"], rank_pattern={"head": 2})
    rewrite_config(cases["bias"], bias="all")
    rewrite_weights(cases["extra_key"], lambda t: t.update({"base_model.model.head.lora_E": torch.zeros(4)}))
    rewrite_config(cases["not_targeted"], target_modules=["fc1", "blocks.0", "blocks.1"])
    (cases["bad_json"] / "adapter_config.json").write_text("{not json")

    expected = {
        "no_weights": (FileNotFoundError, "adapter_model.safetensors"),
        "ia3": (ValueError, "peft_type='IA3'"),
        "missing_module": (ValueError, "no module named 'decoder'"),
        "shape": (ValueError, r"layer 'head'.*\(7, 4\)"),
        "rank_vs_config": (ValueError, r"layer 'head'.*rank 2"),
        "bias": (ValueError, "bias='all'"),
        "extra_key": (ValueError, "lora_E"),
        "not_targeted": (ValueError, r"layer 'head'.*does not target it"),
        "bad_json": (ValueError, "not valid JSON"),
    }
    for case, (error, pattern) in expected.items():
        with pytest.raises(error, match=pattern):
            sl.load_peft(model, cases[case])
        assert_unchanged(model, before)


def test_load_peft_puts_everything_back_when_a_late_step_fails(tmp_path, monkeypatch):
    """Two rank groups: the first is applied, the second fails; the model must be as it was."""
    peft_adapter(tmp_path, r=4, lora_alpha=8, rank_pattern={"head": 2})
    model = base_model()
    before = snapshot(model)
    import spectrallab.peft_io as io

    calls = []

    def failing_apply(*args, **kwargs):
        calls.append(kwargs["rank"])
        if len(calls) == 2:
            raise RuntimeError("simulated failure in the second group")
        return sl.apply(*args, **kwargs)

    monkeypatch.setattr(io, "apply", failing_apply)
    with pytest.raises(RuntimeError, match="simulated"):
        sl.load_peft(model, tmp_path)
    assert len(calls) == 2
    assert_unchanged(model, before)
    assert not sl.adapted_layers(model) and not hasattr(model, "_spectrallab_frozen")


def test_load_peft_refuses_an_already_adapted_model(tmp_path):
    peft_adapter(tmp_path, r=4, lora_alpha=8)
    model = sl.apply(base_model(), "lora", rank=2)
    with pytest.raises(ValueError, match="already has method 'lora'"):
        sl.load_peft(model, tmp_path)


# -- transformers' Conv1D (GPT-2): PEFT's fan_in_fan_out=True ---------------------------------
#
# GPT-2's projections are Conv1D layers (weight stored in × out); its lm_head is tied to the token
# embedding. PEFT stores lora_A (r × in) and lora_B (out × r) as for nn.Linear and transposes B·A
# when it adds it to the Conv1D weight; DoRA's magnitude has one entry per output feature.

GPT2_TARGETS = ["c_attn", "c_proj", "c_fc"]


def gpt2(seed: int = 0):
    pytest.importorskip("transformers")
    from hf_models import tiny_gpt2

    torch.manual_seed(seed)
    return tiny_gpt2().eval()


def gpt2_ids(seed: int = 0) -> torch.Tensor:
    from hf_models import batch

    return batch(seed)["input_ids"]


@torch.no_grad()
def logits(model, seed: int = 7) -> torch.Tensor:
    return model.eval()(input_ids=gpt2_ids(seed)).logits


def conv1d_names(model) -> dict[str, nn.Module]:
    from hf_models import Conv1D

    return {n: m for n, m in model.named_modules() if isinstance(m, Conv1D)}


def train_gpt2(model, steps: int = 3, lr: float = 2e-2):
    from hf_models import batch

    model.train()
    opt = sl.optimizer(model, lr=lr)
    for step in range(steps):
        model(**batch(step)).loss.backward()
        opt.step()
        opt.zero_grad()
    return model.eval()


def peft_warnings(record) -> list[str]:
    """What PEFT warned about while loading (transformers' own deprecation notices are not ours)."""
    return [str(w.message) for w in record if "/peft/" in w.filename.replace("\\", "/")]


def from_pretrained_quietly(base, directory):
    """PeftModel.from_pretrained, asserting PEFT had nothing to warn about (fan_in_fan_out is right)."""
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        peft_model = PeftModel.from_pretrained(base, directory)
    assert not peft_warnings(record), peft_warnings(record)
    return peft_model.eval()


@pytest.mark.parametrize("method", sorted(registered()))
def test_gpt2_every_method_round_trips_through_peft_or_refuses(method, tmp_path):
    base = gpt2()
    model = train_gpt2(sl.apply(copy.deepcopy(base), method, targets=GPT2_TARGETS, **OPTIONS.get(method, {})))
    ours = logits(model)
    assert (ours - logits(base)).abs().max() > 1e-3, "training changed nothing: the check below would be vacuous"
    try:
        export = sl.save_peft(model, tmp_path / "adapter")
    except sl.PeftExportError as err:
        assert "no exact PEFT form" in str(err) and method in str(err)
        assert method in NO_FORM or method not in OPTIONS, f"{method} should be exportable"
        assert not (tmp_path / "adapter").exists(), "a refused export must write nothing"
        return
    assert method not in NO_FORM, f"{method} has no exact PEFT form but was exported"
    assert export.config["fan_in_fan_out"] is True

    peft_model = from_pretrained_quietly(copy.deepcopy(base), tmp_path / "adapter")
    theirs = logits(peft_model)
    assert (theirs - ours).abs().max() <= TOL, f"{method}: max diff {(theirs - ours).abs().max():.3g}"
    assert peft_ranks(peft_model) == export.ranks
    convs = conv1d_names(base)
    assert set(export.ranks) == set(convs)  # the 8 Conv1D layers: c_attn, both c_proj, c_fc
    # PEFT wrapped each Conv1D as fan_in_fan_out, with factors shaped on the Conv1D's (in, out)
    for name, conv in convs.items():
        lora = peft_model.base_model.model.get_submodule(name)
        n_in, n_out = conv.weight.shape
        r = export.ranks[name]
        assert lora.fan_in_fan_out and type(lora.base_layer) is type(conv)
        assert lora.lora_A["default"].weight.shape == (r, n_in)
        assert lora.lora_B["default"].weight.shape == (n_out, r)
        if method == "dora":
            assert lora.lora_magnitude_vector["default"].weight.shape == (n_out,)


@pytest.mark.parametrize(
    "config",
    [
        {"r": 4, "lora_alpha": 8},
        {"r": 4, "lora_alpha": 8, "use_rslora": True},
        {"r": 3, "lora_alpha": 5, "use_dora": True},
    ],
    ids=["lora", "rslora", "dora"],
)
def test_gpt2_load_peft_reproduces_peft_and_merges_to_conv1d(config, tmp_path):
    base = gpt2()
    peft_model = get_peft_model(
        copy.deepcopy(base), LoraConfig(target_modules=GPT2_TARGETS, fan_in_fan_out=True, **config)
    )
    perturb(peft_model)
    peft_model.save_pretrained(tmp_path)
    theirs = logits(peft_model)
    assert (theirs - logits(base)).abs().max() > 1e-2  # the adapter does something

    model = sl.load_peft(copy.deepcopy(base), tmp_path)
    assert (logits(model) - theirs).abs().max() <= TOL
    layers = sl.adapted_layers(model)
    convs = conv1d_names(base)
    assert set(layers) == set(convs) and all(layer.origin is type(convs[n]) for n, layer in layers.items())
    assert {layer.method for layer in layers.values()} == {"dora" if config.get("use_dora") else "lora"}

    sl.merge(model)
    assert {n: type(m) for n, m in conv1d_names(model).items()} == {n: type(m) for n, m in convs.items()}
    assert (logits(model) - theirs).abs().max() <= TOL
    # the merged Conv1D weights (in × out) are PEFT's own merged weights
    merged = peft_model.merge_and_unload()
    for name in convs:
        torch.testing.assert_close(
            model.get_submodule(name).weight, merged.get_submodule(name).weight, atol=1e-6, rtol=1e-5, msg=name
        )


@pytest.mark.parametrize("method", ["lora", "dora", "pissa", "vera"])
def test_gpt2_round_trip_sl_peft_sl(method, tmp_path):
    """sl → save_peft → PEFT (from_pretrained, then its own save_pretrained) → load_peft: the same logits."""
    base = gpt2()
    model = train_gpt2(sl.apply(copy.deepcopy(base), method, targets=GPT2_TARGETS, **OPTIONS[method]))
    ours = logits(model)
    sl.save_peft(model, tmp_path / "sl")
    peft_model = from_pretrained_quietly(copy.deepcopy(base), tmp_path / "sl")
    peft_model.save_pretrained(tmp_path / "peft")
    assert json.loads((tmp_path / "peft" / "adapter_config.json").read_text())["fan_in_fan_out"] is True
    direct = sl.load_peft(copy.deepcopy(base), tmp_path / "sl")
    back = sl.load_peft(copy.deepcopy(base), tmp_path / "peft")
    for again in (direct, back):
        assert (logits(again) - ours).abs().max() <= TOL
    sl.merge(back)
    assert set(conv1d_names(back)) == set(conv1d_names(base))
    assert (logits(back) - ours).abs().max() <= TOL


def test_gpt2_tied_lm_head_is_left_out_of_apply_and_of_the_adapter(tmp_path):
    base = gpt2()
    model = copy.deepcopy(base)
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        sl.apply(model, "lora", rank=4, alpha=8)  # default targets: every Linear / Conv1D
    tie = [str(w.message) for w in record if "tied" in str(w.message)]
    assert len(tie) == 1 and "lm_head.weight is tied to transformer.wte.weight" in tie[0], tie
    assert set(sl.adapted_layers(model)) == set(conv1d_names(base))  # lm_head is not among them
    train_gpt2(model)
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        export = sl.save_peft(model, tmp_path)
    assert not record, [str(w.message) for w in record]  # lm_head, wte frozen: nothing outside to name
    targets = export.config["target_modules"]
    assert not _matches(targets, "lm_head") and "lm_head" not in json.dumps(export.config)
    peft_model = from_pretrained_quietly(copy.deepcopy(base), tmp_path)
    assert "lm_head" not in peft_ranks(peft_model) and set(peft_ranks(peft_model)) == set(conv1d_names(base))
    inner = peft_model.base_model.model
    assert inner.lm_head.weight is inner.transformer.wte.weight  # PEFT's model keeps the tie
    assert (logits(peft_model) - logits(model)).abs().max() <= TOL


def _matches(targets, name: str) -> bool:
    """PEFT's rule: a list entry equal to the name or a dotted suffix of it; a string by re.fullmatch."""
    import re

    if isinstance(targets, str):
        return re.fullmatch(targets, name) is not None
    return any(name == t or name.endswith("." + t) for t in targets)


def perturbed_peft_gpt2(base, directory, **config):
    peft_model = get_peft_model(copy.deepcopy(base), LoraConfig(**config))
    torch.manual_seed(3)
    with torch.no_grad():
        for name, p in peft_model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.3)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*save_embedding_layers.*")
        peft_model.save_pretrained(directory)
    return peft_model.eval()


def test_gpt2_load_peft_refuses_an_adapter_on_the_tied_lm_head(tmp_path):
    """PEFT can put a LoRA on the tied lm_head (B·A added to its output, the shared weight untouched,
    and a copy of that weight saved: save_embedding_layers); spectrallab's methods do not adapt tied
    layers, so load_peft says so, naming the layer, and changes nothing. The advice it gives (give
    lm_head its own copy) then loads PEFT's outputs."""
    base = gpt2()
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*(tie_word_embeddings|fan_in_fan_out).*")
        peft_model = perturbed_peft_gpt2(base, tmp_path, r=2, lora_alpha=4, target_modules=["c_attn", "lm_head"])
    model = copy.deepcopy(base)
    before = snapshot(model)
    with pytest.raises(ValueError, match=r"layer 'lm_head'.*tied to transformer\.wte\.weight.*own copy"):
        sl.load_peft(model, tmp_path)
    assert_unchanged(model, before)
    assert model.lm_head.weight is model.transformer.wte.weight

    model.lm_head.weight = nn.Parameter(model.lm_head.weight.detach().clone())
    sl.load_peft(model, tmp_path)
    assert set(sl.adapted_layers(model)) == {"lm_head"} | {n for n in conv1d_names(base) if n.endswith("c_attn")}
    assert (logits(model) - logits(peft_model)).abs().max() <= TOL


def test_gpt2_load_peft_reads_an_untied_lm_head_with_its_saved_base_weight(tmp_path):
    """An untied lm_head in target_modules: PEFT also saves lm_head.base_layer.weight. Equal to the
    model's weight it is loaded as PEFT loads it (a no-op); different, load_peft refuses, naming it."""
    pytest.importorskip("transformers")
    from hf_models import tiny_gpt2

    torch.manual_seed(0)
    base = tiny_gpt2(tie_word_embeddings=False).eval()
    assert base.lm_head.weight is not base.transformer.wte.weight
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*fan_in_fan_out.*")
        peft_model = perturbed_peft_gpt2(base, tmp_path, r=2, lora_alpha=4, target_modules=["c_fc", "lm_head"])
    from safetensors.torch import load_file

    assert "base_model.model.lm_head.base_layer.weight" in load_file(str(tmp_path / "adapter_model.safetensors"))
    model = sl.load_peft(copy.deepcopy(base), tmp_path)
    assert (logits(model) - logits(peft_model)).abs().max() <= TOL

    other = copy.deepcopy(base)
    with torch.no_grad():
        other.lm_head.weight.add_(0.01)
    before = snapshot(other)
    with pytest.raises(ValueError, match=r"layer 'lm_head'.*base weight.*differs"):
        sl.load_peft(other, tmp_path)
    assert_unchanged(other, before)
