"""Tied and shared weights: never updated twice, never silently untied.

GPT-2's ``lm_head.weight`` *is* the token embedding ``transformer.wte.weight``; BERT's masked-LM
decoder shares the word embeddings (and its bias with ``cls.predictions.bias``). A module used at
two places is one layer.
"""

from __future__ import annotations

import copy
import warnings

import pytest
import torch
from hf_models import batch, small_options, tiny_bert, tiny_gpt2
from torch import nn

import spectrallab as sl
from spectrallab.methods.base import AdaptedLinear
from spectrallab.methods.lora import LoRALinear

TIE = "lm_head.weight is tied to transformer.wte.weight"


def tie_warnings(record) -> list[str]:
    return [str(w.message) for w in record if "tied" in str(w.message)]


@pytest.mark.parametrize("method", ["full", "galore", "lora", "sst"])
def test_default_targets_leave_the_tied_head_out_with_one_warning(method):
    model = tiny_gpt2()
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        sl.apply(model, method, **small_options(method))
    assert len(tie_warnings(record)) == 1 and TIE in tie_warnings(record)[0]
    assert type(model.lm_head) is nn.Linear  # not adapted ...
    assert model.lm_head.weight is model.transformer.wte.weight  # ... and still tied
    assert len(sl.adapted_layers(model)) == 8  # the 8 Conv1D layers are


def test_a_regex_or_suffix_that_happens_to_match_a_tied_layer_warns_and_leaves_it_out():
    model = tiny_gpt2()
    with pytest.warns(UserWarning, match=TIE):
        sl.apply(model, "lora", rank=4, targets=r".*(c_attn|lm_head)")
    assert sorted(sl.adapted_layers(model)) == ["transformer.h.0.attn.c_attn", "transformer.h.1.attn.c_attn"]
    bert = tiny_bert()
    with pytest.warns(
        UserWarning, match="cls.predictions.decoder.weight is tied to bert.embeddings.word_embeddings.weight"
    ):
        sl.apply(bert, "lora", rank=4, targets=["decoder", "query"])
    assert type(bert.cls.predictions.decoder) is nn.Linear
    assert bert.cls.predictions.decoder.bias is bert.cls.predictions.bias


@pytest.mark.parametrize("targets", [["lm_head"], "lm_head", ["lm_head", "c_fc"]])
def test_naming_a_tied_layer_exactly_is_an_error_naming_both_places_and_nothing_changes(targets):
    model = tiny_gpt2()
    modules = dict(model.named_modules())
    with pytest.raises(ValueError, match=r"layer 'lm_head': lm_head.weight is tied to transformer.wte.weight"):
        sl.apply(model, "full", targets=targets)
    assert dict(model.named_modules()) == modules
    assert model.lm_head.weight is model.transformer.wte.weight


def test_only_tied_layers_matched_is_an_error():
    with pytest.raises(ValueError, match="match only layers with tied weights"), pytest.warns(UserWarning):
        sl.apply(tiny_gpt2(), "lora", rank=4, targets=r"lm_hea.")


def test_untied_on_purpose_the_head_is_adapted():
    model = tiny_gpt2(tie_word_embeddings=False)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no tie, no warning
        sl.apply(model, "lora", rank=4)
    assert isinstance(model.lm_head, LoRALinear)


def _adamw_steps(model, opt, steps=3):
    for i in range(steps):
        loss = model(**batch(i)).loss
        loss.backward()
        opt.step()
        opt.zero_grad()


def test_full_on_gpt2_trains_exactly_as_plain_adamw_on_the_plain_model():
    """The 'AdamW updates the tie twice' reproduction: before the fix, `full` turned the tied
    lm_head into a second Parameter on the embedding's storage and AdamW stepped it twice."""
    torch.manual_seed(0)
    plain = tiny_gpt2()
    adapted = copy.deepcopy(plain)
    start = plain.transformer.wte.weight.detach().clone()
    with pytest.warns(UserWarning, match=TIE):
        sl.apply(adapted, "full")
    _adamw_steps(plain, torch.optim.AdamW(plain.parameters(), lr=1e-2))
    _adamw_steps(adapted, sl.optimizer(adapted, lr=1e-2))
    sl.merge(adapted)  # Conv1D layers again: the state dicts line up name for name
    expected, got = plain.state_dict(), adapted.state_dict()
    assert expected.keys() == got.keys()
    assert (expected["transformer.wte.weight"] - start).abs().max() > 1e-3  # the steps did move it
    for key in expected:
        torch.testing.assert_close(got[key], expected[key], atol=2e-6, rtol=1e-5, msg=key)
    assert adapted.lm_head.weight is adapted.transformer.wte.weight


def aliased_gpt2(seed=0):
    """GPT-2 with the tie turned into two Parameters on one storage (what `full` used to make)."""
    torch.manual_seed(seed)
    tied = tiny_gpt2()
    aliased = copy.deepcopy(tied)
    aliased.lm_head.weight = nn.Parameter(aliased.transformer.wte.weight.detach())
    assert aliased.lm_head.weight is not aliased.transformer.wte.weight
    assert aliased.lm_head.weight.data_ptr() == aliased.transformer.wte.weight.data_ptr()
    return tied, aliased


def test_sl_optimizer_passes_aliased_memory_once_with_the_gradients_summed():
    tied, aliased = aliased_gpt2()
    naive = copy.deepcopy(aliased)
    naive.lm_head.weight = nn.Parameter(naive.transformer.wte.weight.detach())  # deepcopy keeps aliasing; be sure
    with pytest.warns(UserWarning, match="'transformer.wte.weight' and 'lm_head.weight' are two Parameters"):
        opt = sl.optimizer(aliased, lr=1e-2)
    assert sum(len(g["params"]) for g in opt.param_groups) == len(list(tied.parameters()))
    _adamw_steps(tied, torch.optim.AdamW(tied.parameters(), lr=1e-2))
    _adamw_steps(aliased, opt)
    _adamw_steps(naive, torch.optim.AdamW(naive.parameters(), lr=1e-2))
    wte = tied.transformer.wte.weight
    torch.testing.assert_close(aliased.transformer.wte.weight, wte, atol=1e-6, rtol=1e-5)
    # The reproduction: plain AdamW over the aliased model steps that memory twice per step.
    assert (naive.transformer.wte.weight - wte).abs().max() > 1e-3


def test_trainable_parameters_counts_aliased_memory_once():
    tied, aliased = aliased_gpt2()
    assert (
        sl.trainable_parameters(aliased) == sl.trainable_parameters(tied) == sum(p.numel() for p in tied.parameters())
    )


@pytest.mark.parametrize("method", ["lora", "sst", "full", "galore"])
def test_the_tie_survives_training_an_adapted_gpt2(method):
    model = tiny_gpt2()
    with pytest.warns(UserWarning, match=TIE):
        sl.apply(model, method, freeze_others=False, **small_options(method))
    _adamw_steps(model, sl.optimizer(model, lr=1e-2), steps=2)
    assert model.lm_head.weight is model.transformer.wte.weight


class SharedLayer(nn.Module):
    """One nn.Linear used at two places (``first`` and ``again``)."""

    def __init__(self):
        super().__init__()
        self.first = nn.Linear(8, 8)
        self.again = self.first
        self.out = nn.Linear(8, 3)

    def forward(self, x):
        return self.out(torch.tanh(self.again(torch.tanh(self.first(x)))))


@pytest.mark.parametrize("targets", [None, ["again"], ["first"]])
def test_a_module_used_at_two_places_is_adapted_once_and_replaced_at_both(targets):
    torch.manual_seed(0)
    model = SharedLayer()
    x = torch.randn(5, 8)
    sl.apply(model, "lora", rank=2, targets=targets)
    assert isinstance(model.first, LoRALinear) and model.first is model.again
    expected = 2 * (8 + 8) + (2 * (8 + 3) if targets is None else 0)
    assert sl.trainable_parameters(model) == expected  # one adapter, not two
    with torch.no_grad():
        model.first.lora_B.normal_()
    adapted = model(x)
    sl.merge(model)
    assert type(model.first) is nn.Linear and model.first is model.again
    assert not any(isinstance(m, AdaptedLinear) for m in model.modules())
    torch.testing.assert_close(model(x), adapted)
