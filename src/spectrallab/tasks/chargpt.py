"""A character-level language model (a tiny GPT) on text that is always present offline.

Corpora, read from the running Python's own installation — no download, deterministic for a given
Python version:

* ``"python"``: the standard library's top-level modules (``*.py`` in ``sysconfig``'s stdlib
  directory, sorted by file name, private ``_*.py`` skipped), concatenated until ``n_chars``.
* ``"docs"``: English prose — the help topics of ``pydoc`` (``pydoc_data.topics``, sorted by
  topic), the text behind ``help("if")``. A genuinely different distribution from code, for
  fine-tuning a model pretrained on ``"python"``.

Characters map to a fixed 97-symbol vocabulary (newline, printable ASCII, and one "unknown"), the
same for every corpus, so a model moves between corpora without touching its embeddings. The last
10 % of the text is the validation split.

The model is a standard pre-LayerNorm GPT (Radford et al. 2019): token + position embeddings,
``n_layer`` blocks of causal self-attention (``attn.qkv``, ``attn.proj``) and a GELU MLP
(``mlp.fc1``, ``mlp.fc2``), a final LayerNorm and an untied ``head``.
"""

from __future__ import annotations

import math
import sysconfig
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from .base import Task

VOCAB = ["\ufffd", "\n"] + [chr(c) for c in range(32, 127)]
_INDEX = {ch: i for i, ch in enumerate(VOCAB)}
CORPORA = ("python", "docs")


def encode(text: str) -> torch.Tensor:
    text = text.replace("\t", "    ")
    return torch.tensor([_INDEX.get(ch, 0) for ch in text], dtype=torch.long)


def decode(ids) -> str:
    return "".join(VOCAB[int(i)] for i in ids)


def load_corpus(corpus: str, n_chars: int) -> str:
    """The first ``n_chars`` characters of a corpus (deterministic; see the module docstring)."""
    if corpus == "python":
        root = Path(sysconfig.get_paths()["stdlib"])
        parts, size = [], 0
        for path in sorted(root.glob("*.py")):
            if path.name.startswith("_"):
                continue
            text = path.read_text(encoding="utf-8", errors="replace")
            parts.append(text)
            size += len(text)
            if size >= n_chars:
                break
        text = "".join(parts)
    elif corpus == "docs":
        from pydoc_data.topics import topics

        text = "\n\n".join(topics[key] for key in sorted(topics))
    else:
        raise ValueError(f"corpus={corpus!r} is not one of {', '.join(CORPORA)}")
    if len(text) < n_chars:
        raise ValueError(f"corpus {corpus!r} has only {len(text):,} characters here; asked for n_chars={n_chars:,}")
    return text[:n_chars]


class CausalSelfAttention(nn.Module):
    def __init__(self, d_model: int, n_head: int):
        super().__init__()
        self.n_head = n_head
        self.qkv = nn.Linear(d_model, 3 * d_model)
        self.proj = nn.Linear(d_model, d_model)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, d = x.shape
        q, k, v = self.qkv(x).split(d, dim=2)
        q, k, v = (z.view(b, t, self.n_head, d // self.n_head).transpose(1, 2) for z in (q, k, v))
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        return self.proj(y.transpose(1, 2).reshape(b, t, d))


class MLPBlock(nn.Module):
    def __init__(self, d_model: int):
        super().__init__()
        self.fc1 = nn.Linear(d_model, 4 * d_model)
        self.fc2 = nn.Linear(4 * d_model, d_model)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(x)))


class Block(nn.Module):
    def __init__(self, d_model: int, n_head: int):
        super().__init__()
        self.ln1 = nn.LayerNorm(d_model)
        self.attn = CausalSelfAttention(d_model, n_head)
        self.ln2 = nn.LayerNorm(d_model)
        self.mlp = MLPBlock(d_model)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln1(x))
        return x + self.mlp(self.ln2(x))


class TinyGPT(nn.Module):
    def __init__(
        self, vocab_size: int = len(VOCAB), d_model: int = 64, n_layer: int = 2, n_head: int = 4, context: int = 64
    ):
        super().__init__()
        if d_model % n_head:
            raise ValueError(f"d_model={d_model} must be divisible by n_head={n_head}")
        self.context = context
        self.tok_emb = nn.Embedding(vocab_size, d_model)
        self.pos_emb = nn.Embedding(context, d_model)
        self.blocks = nn.ModuleList(Block(d_model, n_head) for _ in range(n_layer))
        self.ln_f = nn.LayerNorm(d_model)
        self.head = nn.Linear(d_model, vocab_size, bias=False)
        self.apply(self._init)
        for name, p in self.named_parameters():  # GPT-2: scale residual projections by depth
            if name.endswith("attn.proj.weight") or name.endswith("mlp.fc2.weight"):
                nn.init.normal_(p, std=0.02 / math.sqrt(2 * n_layer))

    @staticmethod
    def _init(module: nn.Module) -> None:
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, std=0.02)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, std=0.02)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        t = ids.shape[1]
        x = self.tok_emb(ids) + self.pos_emb(torch.arange(t, device=ids.device))
        for block in self.blocks:
            x = block(x)
        return self.head(self.ln_f(x))

    @torch.no_grad()
    def generate(
        self, prompt: str, n_chars: int = 200, temperature: float = 0.8, generator: torch.Generator | None = None
    ) -> str:
        device = next(self.parameters()).device
        ids = encode(prompt).to(device)[None]
        for _ in range(n_chars):
            logits = self(ids[:, -self.context :])[:, -1] / temperature
            probs = torch.softmax(logits.float(), dim=-1).cpu()
            nxt = torch.multinomial(probs, 1, generator=generator).to(device)
            ids = torch.cat([ids, nxt], dim=1)
        return decode(ids[0, -n_chars:])


class CharGPT(Task):
    name = "chargpt"
    batch_size = 32
    lr = 3e-3

    def __init__(
        self,
        corpus: str = "python",
        n_chars: int = 300_000,
        d_model: int = 64,
        n_layer: int = 2,
        n_head: int = 4,
        context: int = 64,
        eval_batches: int = 8,
    ):
        self.corpus, self.n_chars = corpus, n_chars
        self.d_model, self.n_layer, self.n_head, self.context = d_model, n_layer, n_head, context
        self.eval_batches = eval_batches
        data = encode(load_corpus(corpus, n_chars))
        cut = int(0.9 * len(data))
        self.train_ids, self.val_ids = data[:cut], data[cut:]

    def shifted(self, corpus: str = "docs") -> CharGPT:
        c = self.config()
        c.pop("task")
        c["corpus"] = corpus
        if corpus == "docs":  # pydoc's topics are ~460k characters
            c["n_chars"] = min(c["n_chars"], 400_000)
        return CharGPT(**c).to(self.device)

    def config(self):
        return {
            "task": self.name,
            "corpus": self.corpus,
            "n_chars": self.n_chars,
            "d_model": self.d_model,
            "n_layer": self.n_layer,
            "n_head": self.n_head,
            "context": self.context,
            "eval_batches": self.eval_batches,
        }

    def make_model(self, seed: int = 0) -> nn.Module:
        torch.manual_seed(seed)
        return TinyGPT(len(VOCAB), self.d_model, self.n_layer, self.n_head, self.context)

    def batch(self, split, batch_size, generator):
        ids = self.train_ids if split == "train" else self.val_ids
        start = torch.randint(len(ids) - self.context - 1, (batch_size,), generator=generator)
        window = torch.stack([ids[s : s + self.context + 1] for s in start.tolist()])
        return window[:, :-1].to(self.device), window[:, 1:].to(self.device)

    def loss(self, model, batch):
        x, y = batch
        logits = model(x)
        return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1))

    @torch.no_grad()
    def evaluate(self, model):
        was_training = model.training
        model.eval()
        g = torch.Generator().manual_seed(1234)  # the same validation windows every time
        losses = [float(self.loss(model, self.batch("val", self.batch_size, g))) for _ in range(self.eval_batches)]
        model.train(was_training)
        val_loss = sum(losses) / len(losses)
        return {"val_loss": val_loss, "perplexity": math.exp(val_loss), "bits_per_char": val_loss / math.log(2)}
