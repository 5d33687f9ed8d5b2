"""Hyperbolic graph networks in the Lorentz model, so that every method runs on them as on an MLP.

The SST paper (Zhao et al., ICML 2025) trains HyboNet — Chen et al. 2022, "Fully Hyperbolic
Neural Networks" (arXiv 2105.14686) — on link prediction and node classification. This module
re-implements that network from the paper, on ``geoopt``'s Lorentz manifold.

**The Lorentz model.** With ``k > 0`` (curvature ``−1/k``), hyperbolic n-space is the upper sheet
``{x ∈ R^{n+1} : ⟨x, x⟩_L = −k, x₀ > 0}`` of the Minkowski inner product
``⟨x, y⟩_L = −x₀y₀ + Σᵢ xᵢyᵢ`` (``geoopt.Lorentz(k)``; its origin is ``(√k, 0, …, 0)``). ``x₀`` is the
*time* coordinate, the rest the *space* coordinates. Every size here counts the ambient
coordinates: a layer with ``out_features = m + 1`` outputs points of Hⁿ ⊂ R^{m+1}.

**The Lorentz linear layer** (the paper's "fully hyperbolic linear layer": a linear map
M = [vᵀ; W] of R^{n+1}, its output put back on the hyperboloid)::

    y = [ √(‖φ(x)‖² + k) ;  φ(x) ],     φ(x) = λ σ(vᵀx + b′) / ‖W h(x) + b‖ · (W h(x) + b)

σ is the logistic sigmoid, ``h`` an optional activation, dropout acts on the input, and λ > 0 sets
the largest distance from the origin the layer can reach. The space part has the direction of
``W h(x) + b`` and the length ``λσ(vᵀx + b′)``; the time part is what the constraint forces. The
paper writes the curvature as K < 0 (``√(‖φ‖² − 1/K)``); here ``k = −1/K``.

Choices, stated:

* ``M = [vᵀ; W]`` and ``[b′; b]`` are **one** ``nn.Linear(in_features, out_features)`` — the child
  ``.linear``. Its first output row is ``v`` (the time row), the others ``W``. So
  ``spectrallab.apply`` adapts exactly the paper's matrix M, with the same contract as for any
  ``nn.Linear`` (targets by name, all-or-nothing, ``merge``). Because it is one product, ``h`` is
  applied to the whole input, so the time row reads ``h(x)`` where the paper writes ``vᵀx``; with
  ``h = None`` (every layer of :class:`HyboNet` by default) the two agree.
* λ = exp(log λ) is learned, starts at ``scale`` = 5 and is capped at ``max_scale`` = 10. The cap is
  a float32 choice: the constraint's round-off grows like x₀², and at ‖φ‖ ≤ 10 (for k = 1, distance ≤ 3 from
  the origin) float32 keeps ``|⟨y, y⟩_L + k|`` near 1e-5.
* The initialization is ``nn.Linear``'s (Kaiming-uniform); the paper prescribes none.
* The time coordinate is computed by ``geoopt``'s ``projx`` from the space coordinates
  (``x₀ = √(k + ‖x_s‖²)``), which is the paper's formula evaluated on the stored space part.

**Aggregation** (HyboNet's graph layers aggregate with the Lorentz centroid of Law et al. 2019,
the point minimizing the weighted squared Lorentzian distances)::

    μ = √k · Σⱼ νⱼ xⱼ / | ‖Σⱼ νⱼ xⱼ‖_L |,      ‖a‖_L = √|⟨a, a⟩_L|

over a node and its neighbours with non-negative weights νⱼ (a row of the adjacency with self-loops;
any positive scaling of a row gives the same centroid). No attention (HyboNet's optional variant).

**Decoders.** Link prediction: the Fermi–Dirac decoder (Krioukov et al. 2010; HGCN, HyboNet)
``p(u, v) = 1 / (exp((d²(u, v) − r)/t) + 1)`` on the *squared Lorentzian distance*
``d²_L(a, b) = −2k − 2⟨a, b⟩_L`` (HyboNet's; ``distance="geodesic"`` uses geoopt's geodesic
distance squared, as HGCN). Node classification: HyboNet scores a node by its negative squared
Lorentzian distance to one learned point per class, plus a per-class bias:
``logit_c = −d²_L(x, p_c) + β_c``. HyboNet's implementation keeps the class points as manifold
parameters trained with Riemannian Adam; here a class point is ``p_c = (√(k + ‖z_c‖²), z_c)`` for a plain
parameter ``z_c ∈ Rⁿ`` (the hyperboloid is the graph of that function, so this chart covers it
smoothly). So **no parameter lives on a manifold, and ``spectrallab.optimizer``'s plain AdamW trains
everything** — SST's and GaLore's optimizer hooks need no Riemannian counterpart.

**The Euclidean twin** (:class:`GCN`) has the same layout with ``nn.Linear`` and mean aggregation
(row-normalized adjacency with self-loops), squared Euclidean distances in both decoders, and the
same names (``layers.<i>.transform``), for the Euclidean-vs-hyperbolic comparison.

Inputs are full-batch: node features ``(N, F)`` and a sparse ``(N, N)`` adjacency from
:func:`normalized_adjacency`. :class:`HyboNet` lifts a feature vector ``x`` onto the hyperboloid as
``expmap0((0, x))``, so a feature row of norm ρ lands at distance ρ from the origin: keep feature
norms of order one (row-normalize them).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

with warnings.catch_warnings():
    # geoopt 0.5 compiles a few helpers with torch.jit.script, which recent torch deprecates.
    warnings.filterwarnings("ignore", category=DeprecationWarning, message=".*torch.jit.script.*")
    import geoopt

__all__ = [
    "LorentzLinear",
    "LorentzCentroid",
    "LorentzGraphConv",
    "HyboNet",
    "GraphConv",
    "GCN",
    "LinkPredictor",
    "NodeClassifier",
    "normalized_adjacency",
    "lorentz_constraint_error",
    "lorentz_manifold",
]

# A denominator that can vanish (‖W h(x) + b‖ at a point the layer maps to the origin, ‖s‖_L of a
# centroid sum) is kept above this; far below any value a trained layer produces.
_EPS = 1e-8


def lorentz_manifold(k: float = 1.0) -> geoopt.Lorentz:
    """``geoopt.Lorentz(k)``: points with ⟨x, x⟩_L = −k (curvature −1/k), k fixed."""
    if isinstance(k, bool) or not isinstance(k, (int, float)) or not math.isfinite(k) or k <= 0:
        raise ValueError(f"k={k!r} is outside the allowed range (0, inf) (the hyperboloid ⟨x, x⟩_L = −k)")
    return geoopt.Lorentz(k=float(k))


def lorentz_constraint_error(x: torch.Tensor, k: float | torch.Tensor) -> torch.Tensor:
    """``max |⟨x, x⟩_L + k|`` over the rows of ``x`` (0 for points exactly on the hyperboloid)."""
    quad = -(x[..., 0] ** 2) + (x[..., 1:] ** 2).sum(-1)
    return (quad + k).abs().max()


def _activation(nonlinearity: str | Callable | None) -> Callable | None:
    if nonlinearity is None or callable(nonlinearity):
        return nonlinearity
    table = {"relu": F.relu, "tanh": torch.tanh, "gelu": F.gelu}
    if nonlinearity not in table:
        raise ValueError(
            f"nonlinearity={nonlinearity!r} is not one of None, {', '.join(map(repr, table))} or a callable"
        )
    return table[nonlinearity]


def _check_size(name: str, value, low: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise ValueError(f"{name}={value!r} is outside the allowed range [{low}, inf) (an int)")
    return value


def _check_dropout(dropout) -> float:
    if isinstance(dropout, bool) or not isinstance(dropout, (int, float)) or not 0 <= dropout < 1:
        raise ValueError(f"dropout={dropout!r} is outside the allowed range [0, 1)")
    return float(dropout)


class LorentzLinear(nn.Module):
    """HyboNet's Lorentz linear layer: points of the hyperboloid in R^in → points in R^out.

    ``y = [√(‖φ‖² + k); φ]``, ``φ = λσ(vᵀh(x) + b′) (W h(x) + b)/‖W h(x) + b‖`` with
    ``[vᵀ; W] = self.linear.weight`` and ``[b′; b] = self.linear.bias`` (see the module docstring for
    the paper's equation and the choices). ``in_features`` and ``out_features`` count the ambient
    coordinates (time included), so they are also the child ``nn.Linear``'s sizes; ``out_features``
    must be at least 2 (a time and a space coordinate).

    ``spectrallab.apply`` replaces ``self.linear`` like any ``nn.Linear``; this layer only ever calls
    it, so every method's layer works here and ``merge`` gives the ``nn.Linear`` back.
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        bias: bool = True,
        dropout: float = 0.0,
        nonlinearity: str | Callable | None = None,
        manifold: geoopt.Lorentz | None = None,
        scale: float = 5.0,
        max_scale: float = 10.0,
    ):
        super().__init__()
        _check_size("in_features", in_features, 1)
        _check_size("out_features", out_features, 2)
        if not (isinstance(scale, (int, float)) and isinstance(max_scale, (int, float)) and 0 < scale <= max_scale):
            raise ValueError(f"scale={scale!r}, max_scale={max_scale!r}: need 0 < scale <= max_scale")
        self.in_features, self.out_features = in_features, out_features
        self.manifold = manifold if manifold is not None else lorentz_manifold()
        self.linear = nn.Linear(in_features, out_features, bias=bias)
        self.dropout = nn.Dropout(_check_dropout(dropout))
        self.nonlinearity = _activation(nonlinearity)
        self.max_scale = float(max_scale)
        self.log_scale = nn.Parameter(torch.tensor(math.log(scale)))

    @property
    def scale(self) -> torch.Tensor:
        """λ, the bound on the output's space norm ‖φ‖ (learned, capped at ``max_scale``)."""
        return self.log_scale.exp().clamp(max=self.max_scale)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = x if self.nonlinearity is None else self.nonlinearity(x)
        z = self.linear(self.dropout(h))  # (…, out): [vᵀh + b′ ; W h + b]
        length = self.scale * torch.sigmoid(z[..., :1])  # ‖φ‖ = λσ(vᵀh + b′)
        direction = z[..., 1:]
        space = direction * (length / direction.norm(dim=-1, keepdim=True).clamp_min(_EPS))
        # projx sets the time coordinate to √(k + ‖space‖²): the paper's √(‖φ‖² + k).
        return self.manifold.projx(torch.cat([length, space], dim=-1))

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, k={float(self.manifold.k):g}"


class LorentzCentroid(nn.Module):
    """The Lorentz centroid of each node's neighbourhood: ``μ = √k s / √|⟨s, s⟩_L|``, ``s = A x``.

    ``adjacency``: a (sparse or dense) ``(N, N)`` non-negative matrix with self-loops (each row's
    scale cancels). The result lies on the hyperboloid whenever the rows of ``x`` do: a positive
    combination of points of the upper sheet is time-like (⟨s, s⟩_L < 0) and has s₀ > 0.
    """

    def __init__(self, manifold: geoopt.Lorentz | None = None):
        super().__init__()
        self.manifold = manifold if manifold is not None else lorentz_manifold()

    def forward(self, x: torch.Tensor, adjacency: torch.Tensor) -> torch.Tensor:
        s = adjacency @ x
        norm = self.manifold.inner(None, s, keepdim=True).abs().clamp_min(_EPS).sqrt()  # ‖s‖_L
        return self.manifold.k.sqrt() * s / norm


class LorentzGraphConv(nn.Module):
    """One HyboNet layer: a Lorentz linear layer (``.transform``), then the neighbourhood centroid."""

    def __init__(
        self,
        in_features: int,
        out_features: int,
        manifold: geoopt.Lorentz,
        *,
        bias: bool = True,
        dropout: float = 0.0,
        nonlinearity: str | Callable | None = None,
    ):
        super().__init__()
        self.transform = LorentzLinear(
            in_features, out_features, bias=bias, dropout=dropout, nonlinearity=nonlinearity, manifold=manifold
        )
        self.aggregate = LorentzCentroid(manifold)

    def forward(self, x: torch.Tensor, adjacency: torch.Tensor) -> torch.Tensor:
        return self.aggregate(self.transform(x), adjacency)


class HyboNet(nn.Module):
    """A fully hyperbolic GCN encoder (HyboNet): features → points of Hᵈ ⊂ R^out, one per node.

    ``x`` (N × in_features) is lifted to ``expmap0((0, x))`` ∈ R^{in_features+1}; then ``layers``
    Lorentz graph convolutions of sizes ``in_features+1 → hidden → … → hidden → out`` (ambient
    sizes: the output points live in R^out, hyperbolic dimension out − 1). ``nonlinearity`` is
    applied to the input of every layer but the first (default none: the Lorentz layer is
    nonlinear already, through its normalization and sigmoid). ``k``: the manifold's ⟨x, x⟩_L = −k.
    """

    hyperbolic = True

    def __init__(
        self,
        in_features: int,
        hidden: int,
        out: int,
        layers: int = 2,
        *,
        dropout: float = 0.0,
        nonlinearity: str | Callable | None = None,
        k: float = 1.0,
        bias: bool = True,
    ):
        super().__init__()
        _check_size("in_features", in_features, 1)
        _check_size("hidden", hidden, 2)
        _check_size("out", out, 2)
        _check_size("layers", layers, 1)
        self.in_features, self.out_features = in_features, out
        self.manifold = lorentz_manifold(k)
        sizes = [in_features + 1] + [hidden] * (layers - 1) + [out]
        self.layers = nn.ModuleList(
            LorentzGraphConv(
                sizes[i],
                sizes[i + 1],
                self.manifold,
                bias=bias,
                dropout=dropout,
                nonlinearity=nonlinearity if i > 0 else None,
            )
            for i in range(layers)
        )

    def lift(self, x: torch.Tensor) -> torch.Tensor:
        """``expmap0((0, x))``: a feature vector as a tangent vector at the origin, mapped onto Hⁿ."""
        return self.manifold.expmap0(F.pad(x, (1, 0)))

    def forward(self, x: torch.Tensor, adjacency: torch.Tensor) -> torch.Tensor:
        h = self.lift(x)
        for layer in self.layers:
            h = layer(h, adjacency)
        return h

    def sqdist(self, a: torch.Tensor, b: torch.Tensor, distance: str = "lorentzian") -> torch.Tensor:
        """Squared distance of rows: Lorentzian ``−2k − 2⟨a, b⟩_L`` (HyboNet) or geodesic² (HGCN)."""
        if distance == "geodesic":
            return self.manifold.dist(a, b) ** 2
        return -2 * self.manifold.k - 2 * self.manifold.inner(None, a, b)

    def chart(self, z: torch.Tensor) -> torch.Tensor:
        """The point ``(√(k + ‖z‖²), z)`` of the hyperboloid whose space coordinates are ``z``."""
        return self.manifold.projx(F.pad(z, (1, 0)))

    @property
    def chart_features(self) -> int:
        return self.out_features - 1


class GraphConv(nn.Module):
    """One layer of the Euclidean twin: ``A · linear(dropout(h(x)))`` (``.transform`` is an nn.Linear)."""

    def __init__(
        self,
        in_features: int,
        out_features: int,
        *,
        bias: bool = True,
        dropout: float = 0.0,
        nonlinearity: str | Callable | None = None,
    ):
        super().__init__()
        self.transform = nn.Linear(in_features, out_features, bias=bias)
        self.dropout = nn.Dropout(_check_dropout(dropout))
        self.nonlinearity = _activation(nonlinearity)

    def forward(self, x: torch.Tensor, adjacency: torch.Tensor) -> torch.Tensor:
        h = x if self.nonlinearity is None else self.nonlinearity(x)
        return adjacency @ self.transform(self.dropout(h))


class GCN(nn.Module):
    """The Euclidean twin of :class:`HyboNet`: the same sizes and names, ``nn.Linear`` + mean aggregation.

    Sizes ``in_features → hidden → … → out`` (no lift, so no extra input coordinate);
    ``nonlinearity`` (default ReLU: without one a GCN is linear) on the input of every layer but
    the first, as in :class:`HyboNet`.
    """

    hyperbolic = False

    def __init__(
        self,
        in_features: int,
        hidden: int,
        out: int,
        layers: int = 2,
        *,
        dropout: float = 0.0,
        nonlinearity: str | Callable | None = "relu",
        bias: bool = True,
    ):
        super().__init__()
        _check_size("in_features", in_features, 1)
        _check_size("hidden", hidden, 1)
        _check_size("out", out, 1)
        _check_size("layers", layers, 1)
        self.in_features, self.out_features = in_features, out
        sizes = [in_features] + [hidden] * (layers - 1) + [out]
        self.layers = nn.ModuleList(
            GraphConv(sizes[i], sizes[i + 1], bias=bias, dropout=dropout, nonlinearity=nonlinearity if i > 0 else None)
            for i in range(layers)
        )

    def forward(self, x: torch.Tensor, adjacency: torch.Tensor) -> torch.Tensor:
        for layer in self.layers:
            x = layer(x, adjacency)
        return x

    def sqdist(self, a: torch.Tensor, b: torch.Tensor, distance: str = "euclidean") -> torch.Tensor:
        return ((a - b) ** 2).sum(-1)

    def chart(self, z: torch.Tensor) -> torch.Tensor:
        return z

    @property
    def chart_features(self) -> int:
        return self.out_features


DISTANCES = ("lorentzian", "geodesic")


class LinkPredictor(nn.Module):
    """An encoder and the Fermi–Dirac decoder: ``logit(u, v) = (r − d²(z_u, z_v)) / t``.

    ``forward(x, adjacency, pairs)`` → one logit per row of ``pairs`` (E × 2 node indices);
    ``encode(x, adjacency)`` → node embeddings, ``score(z, pairs)`` → logits from embeddings.
    ``r`` and ``t`` are fixed (HGCN's defaults r = 2, t = 1). For a hyperbolic encoder ``distance``
    is ``"lorentzian"`` (HyboNet) or ``"geodesic"`` (HGCN); the Euclidean twin uses ‖a − b‖².
    """

    def __init__(self, encoder: nn.Module, r: float = 2.0, t: float = 1.0, distance: str = "lorentzian"):
        super().__init__()
        if distance not in DISTANCES:
            raise ValueError(f"distance={distance!r} is not one of {', '.join(map(repr, DISTANCES))}")
        if not (isinstance(t, (int, float)) and t > 0):
            raise ValueError(f"t={t!r} is outside the allowed range (0, inf)")
        self.encoder, self.r, self.t, self.distance = encoder, float(r), float(t), distance

    def encode(self, x: torch.Tensor, adjacency: torch.Tensor) -> torch.Tensor:
        return self.encoder(x, adjacency)

    def score(self, z: torch.Tensor, pairs: torch.Tensor) -> torch.Tensor:
        d2 = self.encoder.sqdist(z[pairs[:, 0]], z[pairs[:, 1]], self.distance)
        return (self.r - d2) / self.t

    def forward(self, x: torch.Tensor, adjacency: torch.Tensor, pairs: torch.Tensor) -> torch.Tensor:
        return self.score(self.encode(x, adjacency), pairs)

    def extra_repr(self) -> str:
        return f"r={self.r:g}, t={self.t:g}, distance={self.distance!r}"


class NodeClassifier(nn.Module):
    """An encoder and HyboNet's distance decoder: ``logit_c = −d²(z, p_c) + β_c``.

    One learned point ``p_c = encoder.chart(z_c)`` per class (``self.centroids`` holds the plain
    parameters ``z_c``; for HyboNet ``p_c = (√(k + ‖z_c‖²), z_c)``) and a bias ``β_c``. For the
    Euclidean twin this is a linear classifier (−‖x − p‖² = 2⟨x, p⟩ − ‖p‖² − ‖x‖², and ‖x‖² is the same
    for every class). ``forward(x, adjacency)`` → ``(N, classes)`` logits for every node.
    """

    def __init__(self, encoder: nn.Module, classes: int):
        super().__init__()
        _check_size("classes", classes, 2)
        self.encoder, self.classes = encoder, classes
        # Class points start near the origin, spread like the default nn.Linear rows of that width.
        n = encoder.chart_features
        self.centroids = nn.Parameter(torch.randn(classes, n) / math.sqrt(n))
        self.bias = nn.Parameter(torch.zeros(classes))

    def points(self) -> torch.Tensor:
        return self.encoder.chart(self.centroids)

    def forward(self, x: torch.Tensor, adjacency: torch.Tensor) -> torch.Tensor:
        z = self.encoder(x, adjacency)
        return -self.encoder.sqdist(z[:, None, :], self.points()[None, :, :]) + self.bias


def normalized_adjacency(edges: torch.Tensor, num_nodes: int) -> torch.Tensor:
    """The sparse ``(N, N)`` row-normalized adjacency with self-loops, ``D⁻¹(A + I)``, of undirected ``edges``.

    Mean aggregation for the Euclidean twin; for the Lorentz centroid only the support matters.
    ``edges`` (E × 2) holds each undirected edge once (either orientation).
    """
    if edges.dim() != 2 or edges.shape[1] != 2:
        raise ValueError(f"edges must be (E, 2), got shape {tuple(edges.shape)}")
    edges = edges.long().cpu()
    loops = torch.arange(num_nodes).repeat(2, 1)
    index = torch.cat([edges.T, edges.flip(1).T, loops], dim=1)
    index = torch.unique(index, dim=1)  # duplicates (an edge given in both orientations) count once
    degree = torch.bincount(index[0], minlength=num_nodes).float()
    values = 1.0 / degree[index[0]]
    return torch.sparse_coo_tensor(index, values, (num_nodes, num_nodes), check_invariants=True).coalesce()
