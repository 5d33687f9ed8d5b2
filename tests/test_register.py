"""Registering a method the way a notebook does it: cells re-run, modules reloaded, names in any case."""

from __future__ import annotations

import importlib
import sys
import textwrap
import warnings

import pytest
import torch
from torch import nn

import spectrallab as sl
from spectrallab.methods.base import MethodRedefinedWarning, registered


@pytest.fixture
def clean_registry():
    """Whatever a test registers is gone afterwards (built-in methods restored as they were)."""
    before = registered()
    yield
    from spectrallab.methods import base

    base._REGISTRY.clear()
    base._REGISTRY.update(before)


def scaled_method(scale: float):
    """What a notebook cell defines: a method whose layer multiplies a frozen linear by ``scale``."""

    class Scaled(sl.AdaptedLinear):
        method = "scaled"

        def __init__(self, linear: nn.Linear):
            super().__init__(linear.in_features, linear.out_features)
            self.weight = nn.Parameter(linear.weight.detach().clone())
            self.bias = None if linear.bias is None else nn.Parameter(linear.bias.detach().clone())

        def effective_weight(self):
            return scale * self.weight

        def forward(self, x):
            return nn.functional.linear(x, self.effective_weight(), self.bias)

    class ScaledMethod(sl.Method):
        options = {}

        def adapt(self, layer_name, linear):
            return Scaled(linear)

    return ScaledMethod


def test_register_is_public_and_case_insensitive(clean_registry):
    sl.register("MyGate")(scaled_method(2.0))
    assert "mygate" in sl.methods() and "MyGate" not in sl.methods()
    for spelling in ("MyGate", "mygate", "MYGATE"):
        layer = sl.apply(nn.Linear(3, 2), spelling)
        assert layer.spec.name == "mygate"


def test_re_running_a_cell_replaces_the_method_with_a_warning_and_old_layers_keep_working(clean_registry):
    torch.manual_seed(0)
    x = torch.randn(4, 3)
    sl.register("scaled")(scaled_method(2.0))
    base = nn.Linear(3, 2)
    old_layer = sl.apply(nn.Linear(3, 2).requires_grad_(False), "scaled")
    old_layer.load_state_dict({k: v for k, v in base.state_dict().items()})
    with pytest.warns(MethodRedefinedWarning, match="'scaled' is registered again"):
        sl.register("Scaled")(scaled_method(3.0))  # the edited cell, run again (any spelling)
    new_layer = sl.apply(nn.Linear(3, 2), "scaled")
    new_layer.load_state_dict(base.state_dict())
    expected = nn.functional.linear(x, base.weight, base.bias)
    assert torch.allclose(new_layer(x), expected + 2 * nn.functional.linear(x, base.weight), atol=1e-6)
    assert torch.allclose(old_layer(x), expected + nn.functional.linear(x, base.weight), atol=1e-6)
    assert torch.allclose(sl.merge(old_layer)(x), old_layer(x), atol=1e-6)


def test_registering_the_same_class_twice_is_silent(clean_registry):
    cls = scaled_method(2.0)
    sl.register("same")(cls)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        sl.register("same")(cls)


@pytest.mark.parametrize("thing", [object, nn.Linear, sl.Method, 3, "lora"])
def test_registering_what_is_not_a_method_is_a_type_error(thing, clean_registry):
    before = registered()
    with pytest.raises(TypeError, match="not a subclass of spectrallab.Method"):
        sl.register("thing")(thing)
    assert registered() == before


@pytest.mark.parametrize("name", ["", "  lora", None, 3])
def test_a_bad_name_is_a_type_error(name):
    with pytest.raises(TypeError, match="name must be a non-empty string"):
        sl.register(name)


def test_reloading_a_method_module_replaces_its_method(tmp_path, monkeypatch, clean_registry):
    """``importlib.reload`` (what ``%autoreload`` does) of a module that registers a method."""
    module = tmp_path / "my_methods.py"

    def write(scale):
        module.write_text(
            textwrap.dedent(f"""
            import spectrallab as sl
            from tests_register_helper import scaled_method
            ScaledMethod = sl.register("reloaded")(scaled_method({scale}))
        """)
        )

    (tmp_path / "tests_register_helper.py").write_text("from test_register import scaled_method\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    write(2.0)
    first = importlib.import_module("my_methods")
    write(5.0)
    with pytest.warns(MethodRedefinedWarning, match="'reloaded'"):
        second = importlib.reload(first)
    assert sl.method_class("reloaded") is second.ScaledMethod
    layer = sl.apply(nn.Linear(3, 2, bias=False), "reloaded")
    assert torch.allclose(layer.effective_weight(), 5.0 * layer.weight)
    sys.modules.pop("my_methods", None)
    sys.modules.pop("tests_register_helper", None)


def test_a_method_must_declare_its_options():
    class Bare(sl.Method):
        options = {"rank": 8}

    with pytest.raises(TypeError, match=r"Bare.options must declare every option as a .*Option.*rank is not"):
        sl.register("bare_options")(Bare)
    assert "bare_options" not in sl.methods()
