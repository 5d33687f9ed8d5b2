"""Tasks that need no download, sized by the active profile (see :mod:`spectrallab.profiles`).

``task(name, **overrides)`` builds one: ``"teacher"`` (synthetic low-rank regression),
``"digits"`` (scikit-learn's bundled digits, MLP) or ``"chargpt"`` (a tiny character-level GPT on
Python's own standard library); each has ``.shifted(...)`` — the different task a pretrained model
is fine-tuned to. The graph tasks of the hyperbolic networks (HyboNet, :mod:`spectrallab.hyperbolic`):
``"disease_lp"`` / ``"disease_nc"`` (link prediction / node classification on an HGCN-style Disease
tree) and ``"python_classes_lp"`` / ``"python_classes_nc"`` (on Python's class hierarchy).

Graphs for the hyperbolic side (:mod:`spectrallab.tasks.graphs`): a :class:`Graph` holds edges,
node features and labels. ``disease(num_nodes, seed)`` is HGCN's synthetic Disease set (an SIR
epidemic on a random tree; label = infected), ``python_classes()`` the inheritance graph of
Python's own classes (label = defining package). ``gromov_delta(graph)`` measures how tree-like a
graph is; ``link_split`` / ``node_split`` split as HGCN does (5 % / 10 % of edges; 10 % / 60 % of
nodes); ``roc_auc``, ``average_precision`` and ``f1`` score the predictions.
``graph_defaults(name)`` gives each graph's size for the active profile.
"""

from __future__ import annotations

from typing import Any

from ..profiles import device, pick
from .base import Task
from .chargpt import CharGPT, TinyGPT, decode, encode, load_corpus
from .digits import MLP, Digits
from .graphs import (
    Graph,
    LinkSplit,
    average_precision,
    disease,
    f1,
    graph_defaults,
    gromov_delta,
    link_split,
    node_split,
    python_classes,
    roc_auc,
    row_normalized,
)
from .hyperbolic import GRAPH_TASKS, LinkPrediction, NodeClassification
from .pretrained import load_minilm, minilm_available
from .teacher import LowRankTeacher, TwoLayerLinear

TASKS = {"teacher": LowRankTeacher, "digits": Digits, "chargpt": CharGPT, **GRAPH_TASKS}


def profile_defaults(name: str) -> dict[str, Any]:
    """Sizes for the active profile: ``ci`` runs in seconds on 2 cores, ``gpu`` is worth reading."""
    if name == "digits":
        return {"width": pick(ci=128, cpu=256, gpu=512)}
    if name == "chargpt":
        # cpu: the ci model on 5x the text, so that several runs a chapter fit the cpu budget (3 min a
        # chapter on 2 cores: ~10 ms a step); d_model 128, 4 layers, context 128 costs ~200 ms a step.
        return pick(
            ci=dict(n_chars=200_000, d_model=64, n_layer=2, n_head=4, context=64),
            cpu=dict(n_chars=1_000_000, d_model=64, n_layer=2, n_head=4, context=64),
            gpu=dict(n_chars=3_500_000, d_model=384, n_layer=6, n_head=6, context=256),
        )
    if name in GRAPH_TASKS:
        return graph_defaults("python_classes" if name.startswith("python_classes") else name)
    return {}


def task(name: str, **overrides: Any) -> Task:
    """A task by name, sized for the active profile, on :func:`spectrallab.profiles.device`."""
    if name not in TASKS:
        raise ValueError(f"unknown task {name!r}; known tasks: {', '.join(TASKS)}")
    return TASKS[name](**{**profile_defaults(name), **overrides}).to(device())


__all__ = [
    "Task",
    "task",
    "TASKS",
    "LowRankTeacher",
    "TwoLayerLinear",
    "Digits",
    "MLP",
    "CharGPT",
    "TinyGPT",
    "encode",
    "decode",
    "load_corpus",
    "profile_defaults",
    "load_minilm",
    "minilm_available",
    "Graph",
    "LinkSplit",
    "disease",
    "python_classes",
    "gromov_delta",
    "link_split",
    "node_split",
    "roc_auc",
    "average_precision",
    "f1",
    "graph_defaults",
    "row_normalized",
    "LinkPrediction",
    "NodeClassification",
    "GRAPH_TASKS",
]
