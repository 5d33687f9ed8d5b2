"""Tiny Hugging Face models built from configs (random init, nothing downloaded) for the HF tests.

Two layers, hidden size 32, vocabulary 100: a forward pass takes about a millisecond. GPT-2 brings
transformers' ``Conv1D`` and a tied ``lm_head``; LLaMA plain ``nn.Linear`` layers (untied head);
BERT a tied masked-LM decoder whose bias is shared too.
"""

from __future__ import annotations

import pytest
import torch

transformers = pytest.importorskip("transformers")

from transformers import (  # noqa: E402 (after importorskip: only when transformers is there)
    BertConfig,
    BertForMaskedLM,
    GPT2Config,
    GPT2LMHeadModel,  # noqa: E402
    LlamaConfig,
    LlamaForCausalLM,
)
from transformers.pytorch_utils import Conv1D  # noqa: E402,F401  (re-exported for the tests)

VOCAB = 100
_IDS = {"bos_token_id": 0, "eos_token_id": 0, "pad_token_id": 0}


def tiny_gpt2(**overrides) -> GPT2LMHeadModel:
    config = GPT2Config(
        n_layer=2,
        n_embd=32,
        n_head=2,
        vocab_size=VOCAB,
        n_positions=32,
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attn_pdrop=0.0,
        **{**_IDS, **overrides},
    )
    return GPT2LMHeadModel(config)


def tiny_llama(**overrides) -> LlamaForCausalLM:
    config = LlamaConfig(
        num_hidden_layers=2,
        hidden_size=32,
        intermediate_size=64,
        num_attention_heads=2,
        num_key_value_heads=2,
        vocab_size=VOCAB,
        max_position_embeddings=32,
        **{**_IDS, **overrides},
    )
    return LlamaForCausalLM(config)


def tiny_bert(**overrides) -> BertForMaskedLM:
    config = BertConfig(
        num_hidden_layers=2,
        hidden_size=32,
        intermediate_size=64,
        num_attention_heads=2,
        vocab_size=VOCAB,
        max_position_embeddings=32,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
        **{**_IDS, **overrides},
    )
    return BertForMaskedLM(config)


MODELS = {"gpt2": tiny_gpt2, "llama": tiny_llama, "bert": tiny_bert}


def batch(seed: int = 0, n: int = 4, length: int = 12) -> dict[str, torch.Tensor]:
    """Random token ids (never 0, the pad id) as inputs and labels."""
    ids = torch.randint(1, VOCAB, (n, length), generator=torch.Generator().manual_seed(seed))
    return {"input_ids": ids, "labels": ids.clone()}


def small_options(method: str) -> dict:
    """Rank 4 where the method has a rank, and its periodic work every 2 steps where it has some."""
    from spectrallab.methods.base import registered

    cls = registered()[method]
    options = {"rank": 4} if "rank" in cls.options else {}
    options.update(cls.period_options(2) or {})
    return options
