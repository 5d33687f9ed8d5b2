"""Graphs that need no download, for the hyperbolic tasks (link prediction, node classification).

A :class:`Graph` is an undirected graph with node features and, for node classification, node
labels: the common currency of the graph generators, the splits and metrics below and the models
of :mod:`spectrallab.hyperbolic`.
"""

from __future__ import annotations

from dataclasses import dataclass

import networkx as nx
import torch


@dataclass(frozen=True)
class Graph:
    """An undirected graph on nodes ``0 … N−1``.

    ``edges`` is ``(E, 2)`` int64 with each undirected edge once, as ``(u, v)`` with ``u < v``, no
    self-loops; ``features`` is ``(N, F)`` float32; ``labels`` is ``(N,)`` int64 or ``None``.
    """

    name: str
    edges: torch.Tensor
    features: torch.Tensor
    labels: torch.Tensor | None = None

    def __post_init__(self) -> None:
        N = self.features.shape[0]
        if self.features.dim() != 2:
            raise ValueError(f"graph {self.name!r}: features must be (N, F), got shape {tuple(self.features.shape)}")
        e = self.edges
        if e.dim() != 2 or e.shape[1] != 2 or e.dtype != torch.int64:
            raise ValueError(f"graph {self.name!r}: edges must be an (E, 2) int64 tensor, got "
                             f"{e.dtype} of shape {tuple(e.shape)}")
        if e.numel() and (int(e.min()) < 0 or int(e.max()) >= N):
            raise ValueError(f"graph {self.name!r}: edge endpoints must lie in [0, {N - 1}], "
                             f"got [{int(e.min())}, {int(e.max())}]")
        if e.numel() and not bool((e[:, 0] < e[:, 1]).all()):
            raise ValueError(f"graph {self.name!r}: each edge must be stored once as (u, v) with u < v "
                             "(no self-loops)")
        if self.labels is not None and tuple(self.labels.shape) != (N,):
            raise ValueError(f"graph {self.name!r}: labels must have shape ({N},), got {tuple(self.labels.shape)}")

    @property
    def num_nodes(self) -> int:
        return self.features.shape[0]

    @property
    def num_edges(self) -> int:
        return self.edges.shape[0]

    @property
    def num_classes(self) -> int:
        return 0 if self.labels is None else int(self.labels.max()) + 1

    @classmethod
    def from_networkx(cls, name: str, graph: nx.Graph, features: torch.Tensor,
                      labels: torch.Tensor | None = None) -> "Graph":
        """From a networkx graph whose nodes are ``0 … N−1`` (self-loops and duplicates dropped)."""
        pairs = sorted({(min(u, v), max(u, v)) for u, v in graph.edges() if u != v})
        edges = torch.tensor(pairs, dtype=torch.int64).reshape(-1, 2)
        return cls(name, edges, features.float(), labels)

    def to_networkx(self) -> nx.Graph:
        graph = nx.Graph()
        graph.add_nodes_from(range(self.num_nodes))
        graph.add_edges_from(self.edges.tolist())
        return graph

    def __repr__(self) -> str:
        return (f"Graph({self.name!r}, nodes={self.num_nodes}, edges={self.num_edges}, "
                f"features={self.features.shape[1]}, classes={self.num_classes})")
