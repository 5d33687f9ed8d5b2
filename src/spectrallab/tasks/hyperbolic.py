"""Graph tasks for the hyperbolic networks: link prediction and node classification, full-batch.

The SST paper's hyperbolic experiments (HyboNet on link prediction and node classification) at a
size a CPU trains in seconds. Each task takes a :class:`~spectrallab.tasks.graphs.Graph` and a split
of it, builds the model (:mod:`spectrallab.hyperbolic`: ``geometry="hyperbolic"`` for HyboNet,
``"euclidean"`` for its GCN twin), and offers ``batch`` / ``loss`` / ``evaluate`` to
:func:`spectrallab.train`.

* :class:`LinkPrediction` — message passing over the *training* edges only; a training batch is every
  training edge (label 1) plus ``batch_size`` non-edges drawn afresh from the loop's generator
  (label 0; default: as many as there are training edges, as HGCN samples); loss: binary
  cross-entropy on the Fermi–Dirac logits. ``evaluate`` → ``val_loss, val_roc_auc, val_ap`` and the
  same for ``test_``, on the split's fixed positive and negative pairs.
* :class:`NodeClassification` — message passing over the whole graph; loss: cross-entropy on the
  training nodes; ``evaluate`` → ``val_loss, val_f1, val_acc`` and ``test_…``. F1 as HGCN reports it
  (:func:`spectrallab.tasks.graphs.f1`): binary F1 of the positive class for two classes (Disease),
  micro-F1 (= accuracy) otherwise.

A split is any object with the attributes named below (tensors); without one, the task calls
``tasks.graphs.link_split`` / ``node_split`` (``val``, ``test``, ``seed``).
"""

from __future__ import annotations

import zlib
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..hyperbolic import GCN, HyboNet, LinkPredictor, NodeClassifier, normalized_adjacency
from . import graphs
from .base import Task
from .graphs import Graph

GEOMETRIES = ("hyperbolic", "euclidean")


def _digest(graph: Graph) -> str:
    """A short fingerprint of the graph (edges, features, labels): a run record names its data."""
    crc = zlib.crc32(graph.edges.numpy().tobytes())
    crc = zlib.crc32(graph.features.numpy().tobytes(), crc)
    if graph.labels is not None:
        crc = zlib.crc32(graph.labels.numpy().tobytes(), crc)
    return f"{crc:08x}"


def _pairs(name: str, value: Any, num_nodes: int) -> torch.Tensor:
    t = torch.as_tensor(value)
    if t.dim() != 2 or t.shape[1] != 2 or t.dtype not in (torch.int64, torch.int32):
        raise ValueError(f"split.{name} must be an (E, 2) integer tensor, got {t.dtype} of shape {tuple(t.shape)}")
    if t.numel() and (int(t.min()) < 0 or int(t.max()) >= num_nodes):
        raise ValueError(f"split.{name}: node indices must lie in [0, {num_nodes - 1}]")
    return t.long()


def _indices(name: str, value: Any, num_nodes: int) -> torch.Tensor:
    t = torch.as_tensor(value)
    if t.dim() != 1 or t.dtype not in (torch.int64, torch.int32) or t.numel() == 0:
        raise ValueError(
            f"split.{name} must be a non-empty 1-d integer tensor of node indices, got "
            f"{t.dtype} of shape {tuple(t.shape)}"
        )
    if int(t.min()) < 0 or int(t.max()) >= num_nodes:
        raise ValueError(f"split.{name}: node indices must lie in [0, {num_nodes - 1}]")
    return t.long()


def _check_geometry(geometry: str) -> str:
    if geometry not in GEOMETRIES:
        raise ValueError(f"geometry={geometry!r} is not one of {', '.join(map(repr, GEOMETRIES))}")
    return geometry


class _GraphTask(Task):
    lr = 1e-2

    def _encoder(self) -> nn.Module:
        F_in = self.graph.features.shape[1]
        if self.geometry == "hyperbolic":
            return HyboNet(F_in, self.hidden, self.out, self.layers, dropout=self.dropout, k=self.k)
        return GCN(F_in, self.hidden, self.out, self.layers, dropout=self.dropout)

    def to(self, device):
        super().to(device)
        self.features = self.features.to(self.device)
        self.adjacency = self.adjacency.to(self.device)
        return self

    def _base_config(self) -> dict[str, Any]:
        return {
            "task": self.name,
            "graph": self.graph.name,
            "nodes": self.graph.num_nodes,
            "edges": self.graph.num_edges,
            "graph_digest": _digest(self.graph),
            "geometry": self.geometry,
            "hidden": self.hidden,
            "out": self.out,
            "layers": self.layers,
            "dropout": self.dropout,
            "k": self.k,
            "val": self.val,
            "test": self.test,
            "split_seed": self.split_seed,
        }


class LinkPrediction(_GraphTask):
    """Link prediction on ``graph`` with HyboNet (or its GCN twin) and the Fermi–Dirac decoder.

    ``split``: an object with ``train_edges``, ``val_pos``, ``val_neg``, ``test_pos``, ``test_neg``
    (E × 2 node-index tensors); ``None`` calls ``tasks.graphs.link_split(graph, val, test, seed)``.
    ``hidden`` / ``out``: the encoder's sizes (ambient sizes for HyboNet: points in R^out).
    """

    name = "link_prediction"

    def __init__(
        self,
        graph: Graph,
        split: Any = None,
        *,
        geometry: str = "hyperbolic",
        hidden: int = 32,
        out: int = 16,
        layers: int = 2,
        dropout: float = 0.0,
        k: float = 1.0,
        r: float = 2.0,
        t: float = 1.0,
        distance: str = "lorentzian",
        val: float = 0.05,
        test: float = 0.1,
        seed: int = 0,
    ):
        if not isinstance(graph, Graph):
            raise TypeError(f"graph must be a spectrallab.tasks.graphs.Graph, got {type(graph).__name__}")
        self.graph, self.geometry = graph, _check_geometry(geometry)
        self.hidden, self.out, self.layers, self.dropout, self.k = hidden, out, layers, dropout, k
        self.r, self.t, self.distance = r, t, distance
        self.val, self.test, self.split_seed = val, test, seed
        if split is None:
            split = graphs.link_split(graph, val, test, seed)
        N = graph.num_nodes
        self.train_edges = _pairs("train_edges", split.train_edges, N)
        self.val_pos, self.val_neg = _pairs("val_pos", split.val_pos, N), _pairs("val_neg", split.val_neg, N)
        self.test_pos, self.test_neg = _pairs("test_pos", split.test_pos, N), _pairs("test_neg", split.test_neg, N)
        if len(self.train_edges) == 0:
            raise ValueError("split.train_edges is empty: nothing to train on")
        # Non-edges are drawn against every known edge, so a sampled negative is never a held-out positive.
        every = torch.cat([graph.edges, self.train_edges, self.val_pos, self.test_pos])
        self._edge_keys = torch.unique(every.min(1).values * N + every.max(1).values)
        self.batch_size = len(self.train_edges)
        self.features = graph.features
        self.adjacency = normalized_adjacency(self.train_edges, N)  # held-out edges carry no messages

    def config(self) -> dict[str, Any]:
        return {**self._base_config(), "r": self.r, "t": self.t, "distance": self.distance}

    def make_model(self, seed: int = 0) -> nn.Module:
        torch.manual_seed(seed)
        distance = self.distance if self.geometry == "hyperbolic" else "lorentzian"  # ignored by GCN
        return LinkPredictor(self._encoder(), r=self.r, t=self.t, distance=distance)

    def negatives(self, count: int, generator: torch.Generator | None) -> torch.Tensor:
        """``count`` node pairs (u ≠ v) that are no edge of the graph, uniformly at random."""
        N = self.graph.num_nodes
        out = torch.empty(0, 2, dtype=torch.int64)
        while len(out) < count:  # rejection: on a sparse graph nearly every draw is a non-edge
            need = count - len(out)
            u = torch.randint(N, (2 * need,), generator=generator)
            v = (u + torch.randint(1, N, (2 * need,), generator=generator)) % N
            pairs = torch.stack([torch.minimum(u, v), torch.maximum(u, v)], 1)
            keep = ~torch.isin(pairs[:, 0] * N + pairs[:, 1], self._edge_keys)
            out = torch.cat([out, pairs[keep][:need]])
        return out

    def batch(self, split: str, batch_size: int, generator: torch.Generator | None):
        if split == "train":
            pos, neg = self.train_edges, self.negatives(batch_size, generator)
        elif split in ("val", "test"):
            pos, neg = getattr(self, f"{split}_pos"), getattr(self, f"{split}_neg")
        else:
            raise ValueError(f"split={split!r} is not one of 'train', 'val', 'test'")
        pairs = torch.cat([pos, neg])
        labels = torch.cat([torch.ones(len(pos)), torch.zeros(len(neg))])
        return pairs.to(self.device), labels.to(self.device)

    def loss(self, model: nn.Module, batch) -> torch.Tensor:
        pairs, labels = batch
        return F.binary_cross_entropy_with_logits(model(self.features, self.adjacency, pairs), labels)

    @torch.no_grad()
    def evaluate(self, model: nn.Module) -> dict[str, float]:
        was_training = model.training
        model.eval()
        z = model.encode(self.features, self.adjacency)
        metrics = {}
        for split in ("val", "test"):
            pairs, labels = self.batch(split, 0, None)
            logits = model.score(z, pairs)
            metrics[f"{split}_loss"] = float(F.binary_cross_entropy_with_logits(logits, labels))
            metrics[f"{split}_roc_auc"] = graphs.roc_auc(logits, labels)
            metrics[f"{split}_ap"] = graphs.average_precision(logits, labels)
        model.train(was_training)
        return metrics


class NodeClassification(_GraphTask):
    """Node classification on a labelled ``graph`` with HyboNet (or its twin) and the distance decoder.

    ``split``: an object with ``train``, ``val``, ``test`` (1-d node-index tensors), or a tuple of the
    three; ``None`` calls ``tasks.graphs.node_split(graph, val, test, seed)``.
    """

    name = "node_classification"

    def __init__(
        self,
        graph: Graph,
        split: Any = None,
        *,
        geometry: str = "hyperbolic",
        hidden: int = 32,
        out: int = 16,
        layers: int = 2,
        dropout: float = 0.0,
        k: float = 1.0,
        val: float = 0.1,
        test: float = 0.6,
        seed: int = 0,
    ):
        if not isinstance(graph, Graph):
            raise TypeError(f"graph must be a spectrallab.tasks.graphs.Graph, got {type(graph).__name__}")
        if graph.labels is None:
            raise ValueError(f"graph {graph.name!r} has no labels; node classification needs them")
        self.graph, self.geometry = graph, _check_geometry(geometry)
        self.hidden, self.out, self.layers, self.dropout, self.k = hidden, out, layers, dropout, k
        self.val, self.test, self.split_seed = val, test, seed
        if split is None:
            split = graphs.node_split(graph, val, test, seed)
        if isinstance(split, (tuple, list)):
            train, val_idx, test_idx = split
        else:
            train, val_idx, test_idx = split.train, split.val, split.test
        N = graph.num_nodes
        self.train_idx = _indices("train", train, N)
        self.val_idx, self.test_idx = _indices("val", val_idx, N), _indices("test", test_idx, N)
        self.labels = graph.labels
        self.batch_size = len(self.train_idx)
        self.features = graph.features
        self.adjacency = normalized_adjacency(graph.edges, N)

    def config(self) -> dict[str, Any]:
        return self._base_config()

    def make_model(self, seed: int = 0) -> nn.Module:
        torch.manual_seed(seed)
        return NodeClassifier(self._encoder(), self.graph.num_classes)

    def batch(self, split: str, batch_size: int, generator: torch.Generator | None):
        if split not in ("train", "val", "test"):
            raise ValueError(f"split={split!r} is not one of 'train', 'val', 'test'")
        idx = getattr(self, f"{split}_idx")  # full-batch: every node of the split
        return idx.to(self.device), self.labels[idx].to(self.device)

    def loss(self, model: nn.Module, batch) -> torch.Tensor:
        idx, labels = batch
        return F.cross_entropy(model(self.features, self.adjacency)[idx], labels)

    def majority_accuracy(self, split: str = "test") -> float:
        """Accuracy of always answering the training set's most frequent class (the baseline to beat)."""
        majority = torch.bincount(self.labels[self.train_idx]).argmax()
        return float((self.labels[getattr(self, f"{split}_idx")] == majority).float().mean())

    @torch.no_grad()
    def evaluate(self, model: nn.Module) -> dict[str, float]:
        was_training = model.training
        model.eval()
        logits = model(self.features, self.adjacency)
        model.train(was_training)
        metrics = {}
        for split in ("val", "test"):
            idx, labels = self.batch(split, 0, None)
            pred = logits[idx].argmax(-1)
            metrics[f"{split}_loss"] = float(F.cross_entropy(logits[idx], labels))
            metrics[f"{split}_f1"] = graphs.f1(pred, labels)
            metrics[f"{split}_acc"] = float((pred == labels).float().mean())
        return metrics


# -- the named tasks (``sl.task("disease_lp")`` ...): a generated graph and its task ----------------


def disease_lp(
    *,
    num_nodes: int = 2665,
    num_features: int = 1000,
    branching: tuple[int, int] = (1, 11),
    graph_seed: int = 0,
    **options: Any,
) -> LinkPrediction:
    """Link prediction on HGCN's Disease-style tree (:func:`~spectrallab.tasks.graphs.disease`)."""
    graph = graphs.disease(num_nodes, graph_seed, num_features=num_features, branching=branching)
    return LinkPrediction(graph, **options)


def disease_nc(
    *, num_nodes: int = 1044, num_features: int = 1000, graph_seed: int = 0, **options: Any
) -> NodeClassification:
    """Node classification (infected or not) on HGCN's Disease-style tree."""
    return NodeClassification(graphs.disease(num_nodes, graph_seed, num_features=num_features), **options)


def python_classes_lp(*, max_nodes: int | None = None, graph_seed: int = 0, **options: Any) -> LinkPrediction:
    """Link prediction on Python's own class hierarchy (:func:`~spectrallab.tasks.graphs.python_classes`)."""
    return LinkPrediction(graphs.python_classes(max_nodes, graph_seed), **options)


def python_classes_nc(*, max_nodes: int | None = None, graph_seed: int = 0, **options: Any) -> NodeClassification:
    """Node classification (the package that defines a class) on Python's class hierarchy."""
    return NodeClassification(graphs.python_classes(max_nodes, graph_seed), **options)


GRAPH_TASKS = {
    "disease_lp": disease_lp,
    "disease_nc": disease_nc,
    "python_classes_lp": python_classes_lp,
    "python_classes_nc": python_classes_nc,
}
