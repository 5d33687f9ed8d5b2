"""Graphs that need no download, for the hyperbolic tasks (link prediction, node classification).

A :class:`Graph` is an undirected graph with node features and, for node classification, node
labels: the common currency of the graph generators, the splits and metrics below and the models
of :mod:`spectrallab.hyperbolic`.

The SST paper trains HyboNet on the data sets of HGCN (Chami et al., 2019); two kinds are built here
on the fly, seeded and in well under a second:

- :func:`disease` — HGCN's *Disease*: an SIR epidemic on a random tree; the label is "was this
  person infected", the features carry each person's susceptibility. A tree: Gromov δ = 0.
- :func:`python_classes` — a real hierarchy present on every machine: the inheritance graph of
  Python's built-in and standard-library classes, labelled by the package that defines each class.

:func:`gromov_delta` measures how tree-like a graph is (HGCN's Table 1 reports it per data set);
:func:`link_split` and :func:`node_split` split a graph as HGCN does; :func:`roc_auc`,
:func:`average_precision` and :func:`f1` are the metrics HGCN and HyboNet report.
"""

from __future__ import annotations

import dataclasses
import importlib
import math
import re
import zlib
from dataclasses import dataclass

import networkx as nx
import numpy as np
import torch

from ..profiles import pick


@dataclass(frozen=True)
class Graph:
    """An undirected graph on nodes ``0 … N−1``.

    ``edges`` is ``(E, 2)`` int64 with each undirected edge once, as ``(u, v)`` with ``u < v``, no
    self-loops; ``features`` is ``(N, F)`` float32; ``labels`` is ``(N,)`` int64 or ``None``.
    Optional ``node_names`` (one string per node) and ``label_names`` (one per class) say what the
    nodes and classes are, for plots and tables.
    """

    name: str
    edges: torch.Tensor
    features: torch.Tensor
    labels: torch.Tensor | None = None
    node_names: tuple[str, ...] | None = None
    label_names: tuple[str, ...] | None = None

    def __post_init__(self) -> None:
        N = self.features.shape[0]
        if self.features.dim() != 2:
            raise ValueError(f"graph {self.name!r}: features must be (N, F), got shape {tuple(self.features.shape)}")
        e = self.edges
        if e.dim() != 2 or e.shape[1] != 2 or e.dtype != torch.int64:
            raise ValueError(
                f"graph {self.name!r}: edges must be an (E, 2) int64 tensor, got {e.dtype} of shape {tuple(e.shape)}"
            )
        if e.numel() and (int(e.min()) < 0 or int(e.max()) >= N):
            raise ValueError(
                f"graph {self.name!r}: edge endpoints must lie in [0, {N - 1}], got [{int(e.min())}, {int(e.max())}]"
            )
        if e.numel() and not bool((e[:, 0] < e[:, 1]).all()):
            raise ValueError(f"graph {self.name!r}: each edge must be stored once as (u, v) with u < v (no self-loops)")
        if self.labels is not None and tuple(self.labels.shape) != (N,):
            raise ValueError(f"graph {self.name!r}: labels must have shape ({N},), got {tuple(self.labels.shape)}")
        if self.node_names is not None and len(self.node_names) != N:
            raise ValueError(f"graph {self.name!r}: node_names must name all {N} nodes, got {len(self.node_names)}")
        if self.label_names is not None and self.labels is not None and len(self.label_names) < self.num_classes:
            raise ValueError(
                f"graph {self.name!r}: label_names must name all {self.num_classes} classes, "
                f"got {len(self.label_names)}"
            )

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
    def from_networkx(
        cls, name: str, graph: nx.Graph, features: torch.Tensor, labels: torch.Tensor | None = None, **names
    ) -> Graph:
        """From a networkx graph whose nodes are ``0 … N−1`` (self-loops and duplicates dropped).

        ``names`` are passed on (``node_names=``, ``label_names=``)."""
        pairs = sorted({(min(u, v), max(u, v)) for u, v in graph.edges() if u != v})
        edges = torch.tensor(pairs, dtype=torch.int64).reshape(-1, 2)
        return cls(name, edges, features.float(), labels, **names)

    def to_networkx(self) -> nx.Graph:
        graph = nx.Graph()
        graph.add_nodes_from(range(self.num_nodes))
        graph.add_edges_from(self.edges.tolist())
        return graph

    def __repr__(self) -> str:
        return (
            f"Graph({self.name!r}, nodes={self.num_nodes}, edges={self.num_edges}, "
            f"features={self.features.shape[1]}, classes={self.num_classes})"
        )


# ---------------------------------------------------------------------------------------------------
# Disease: an SIR epidemic on a random tree (HGCN's synthetic data set)
# ---------------------------------------------------------------------------------------------------


def random_tree(num_nodes: int, branching: tuple[int, int], rng: np.random.Generator) -> np.ndarray:
    """Parent of every node of a tree grown breadth first: node 0 is the root, and each node in turn
    gets a number of children drawn uniformly from ``branching = (lo, hi)`` (inclusive) until
    ``num_nodes`` exist. Returns ``parent`` with ``parent[0] = -1`` and ``parent[i] < i``."""
    lo, hi = branching
    parent = np.full(num_nodes, -1, dtype=np.int64)
    born, node = 1, 0
    while born < num_nodes:
        k = min(int(rng.integers(lo, hi + 1)), num_nodes - born)
        parent[born : born + k] = node
        born, node = born + k, node + 1
    return parent


def sir(
    neighbours: list[np.ndarray],
    susceptibility: np.ndarray,
    source: int,
    beta: float,
    gamma: float,
    rng: np.random.Generator,
) -> np.ndarray:
    """One run of a discrete-time SIR epidemic from ``source``; returns the nodes ever infected (bool).

    Each step, every infected node infects each susceptible neighbour ``j`` with probability
    ``beta · susceptibility[j]``; then each infected node recovers with probability ``gamma`` (so
    an infectious period is geometric with mean ``1/gamma`` steps) and is immune from then on.
    Nodes are visited in index order, so a seeded ``rng`` gives the same epidemic every time."""
    state = np.zeros(len(neighbours), dtype=np.int8)  # 0 susceptible, 1 infected, 2 recovered
    state[source] = 1
    infected = [source]
    while infected:
        newly = []
        for i in infected:
            nb = neighbours[i]
            nb = nb[state[nb] == 0]
            if nb.size:
                hit = nb[rng.random(nb.size) < beta * susceptibility[nb]]
                state[hit] = 1
                newly.extend(hit.tolist())
        still = [i for i in infected if rng.random() >= gamma]
        state[[i for i in infected if i not in set(still)]] = 2
        infected = sorted(still + newly)
    return state > 0


def disease(
    num_nodes: int = 1044,
    seed: int = 0,
    *,
    num_features: int = 1000,
    branching: tuple[int, int] = (2, 6),
    beta: float = 1.0,
    gamma: float = 0.5,
    traits_per_node: float = 10.0,
    mutation: float = 0.5,
    bias: float = 1.5,
    min_infected: float = 0.1,
    name: str | None = None,
) -> Graph:
    """HGCN's *Disease* graph: an SIR epidemic on a random tree; label 1 = infected, 0 = not.

    **From the paper** (Chami et al. 2019, §5.1 and Table 1): HGCN simulates the SIR disease
    spreading model; a node's label is whether it was infected, its features indicate its
    susceptibility to the disease; the graph is a tree (δ = 0) with 1,044 nodes, two classes and
    1,000 features for node classification. **From HGCN's released data files** (read,
    not copied): the node-classification tree (1,044 nodes, 1,043 edges) is grown breadth first with
    2–6 children per node, the link-prediction tree (2,665 nodes) with 1–11 — ``branching=(1, 11),
    num_nodes=2665`` builds the latter.

    **Chosen here** (the paper does not give them): each person has ``num_features`` binary traits,
    about ``traits_per_node`` of them present at the root; a child inherits each of its parent's
    traits except that, with probability ``mutation`` (½), it redraws it -- so relatives share about
    half their traits and features predict links well above chance, as in HGCN's results, where a
    feature-only MLP does well above chance on Disease link prediction. (At ``mutation=0.9``
    relatives share almost nothing: full-rank HyboNet then reached test ROC AUC 0.59 on the
    2,665-node tree; at ½ it reaches 0.92, near what HGCN and HyboNet report on their Disease data.) A fixed
    random fifth of the traits matter, each with a normal weight, and
    ``susceptibility = sigmoid(bias + 3 · z)``, ``z`` the weighted sum of a person's traits
    standardized over the trait distribution (mean susceptibility ≈ 0.66 at ``bias=1.5``). The
    features so carry susceptibility, through a hidden linear rule; whether a person was infected also depends on
    whether the infection reached them through their ancestors, which only the graph shows.
    The epidemic starts at the root; per step an infected node infects a susceptible neighbour with
    probability ``beta · susceptibility`` and recovers with probability ``gamma`` (:func:`sir`).
    Runs in which fewer than ``min_infected`` of the nodes catch it (the outbreak dies out early)
    are redrawn, up to 100 times, so that both classes are represented. The infected share varies
    from seed to seed (14–61 % over seeds 0–9 at 1,044 nodes, mean 36 %; seed 0: 243 infected, 23 %), as epidemics do.

    Measured at ``mutation=0.9`` (seed 0, 1,044 nodes): on HGCN's split (10 % / 60 %) a logistic
    regression on the features alone reached F1 0.29, with the neighbours' mean features added 0.59
    -- the graph carries what the features do not.

    On a tree the infected nodes always form a connected subtree containing the root: infection
    only travels along edges, from an infected node. Everything is drawn from one
    ``numpy.random.default_rng(seed)``: the same seed gives the same graph on every machine (with
    the same numpy).
    """
    where = f"disease(num_nodes={num_nodes})"
    if num_nodes < 4:
        raise ValueError(f"{where}: num_nodes must be at least 4")
    lo, hi = branching
    if not (1 <= lo <= hi):
        raise ValueError(f"{where}: branching=(lo, hi) needs 1 <= lo <= hi, got {branching}")
    if num_features < 1:
        raise ValueError(f"{where}: num_features must be >= 1, got {num_features}")
    for key, value in (("beta", beta), ("gamma", gamma)):
        if not 0 < value <= 1:
            raise ValueError(f"{where}: {key} must lie in (0, 1], got {value}")
    if not 0 <= mutation <= 1:
        raise ValueError(f"{where}: mutation must lie in [0, 1], got {mutation}")
    if not 0 <= min_infected < 1:
        raise ValueError(f"{where}: min_infected must lie in [0, 1), got {min_infected}")
    rng = np.random.default_rng(seed)
    parent = random_tree(num_nodes, branching, rng)

    # Traits, inherited down the tree (a child keeps each of its parent's traits with probability
    # 1 - mutation, else redraws it), so relatives look alike -- as in HGCN's data, where features
    # alone predict links far better than chance -- and the hidden susceptibility rule.
    density = min(traits_per_node / num_features, 1.0)
    traits = rng.random((num_nodes, num_features)) < density
    redraw = rng.random((num_nodes, num_features)) < mutation
    for child in range(1, num_nodes):
        traits[child] = np.where(redraw[child], traits[child], traits[parent[child]])
    matters = rng.random(num_features) < 0.2
    matters[rng.integers(num_features)] = True  # at least one trait matters
    weight = rng.standard_normal(num_features) * matters
    # Standardized over the trait distribution, so susceptibility has the same spread whatever
    # num_features and traits_per_node are.
    mean, std = density * weight.sum(), math.sqrt(max(density * (1 - density), 1e-12) * (weight**2).sum())
    susceptibility = 1.0 / (1.0 + np.exp(-(bias + 3.0 * (traits @ weight - mean) / std)))

    children: list[list[int]] = [[] for _ in range(num_nodes)]
    for child in range(1, num_nodes):
        children[parent[child]].append(child)
    neighbours = [
        np.array(sorted(children[i] + ([int(parent[i])] if i else [])), dtype=np.int64) for i in range(num_nodes)
    ]
    for _ in range(100):
        infected = sir(neighbours, susceptibility, 0, beta, gamma, rng)
        if infected.mean() >= min_infected:
            break
    else:
        raise ValueError(
            f"{where}: no outbreak reached min_infected={min_infected} of the nodes in 100 runs; "
            "raise beta, lower gamma or lower min_infected"
        )

    edges = torch.from_numpy(np.stack([parent[1:], np.arange(1, num_nodes)], axis=1))
    return Graph(
        name or f"disease-{num_nodes}",
        edges,
        torch.from_numpy(traits.astype(np.float32)),
        torch.from_numpy(infected.astype(np.int64)),
        label_names=("healthy", "infected"),
    )


# ---------------------------------------------------------------------------------------------------
# Python's class hierarchy: a real hierarchy on every machine
# ---------------------------------------------------------------------------------------------------

# The modules whose public classes are walked: the built-ins and ten standard-library packages with
# deep, rich class trees (syntax trees, exceptions, I/O streams, e-mail, XML, HTTP, logging), all
# present in every CPython 3.10-3.12 build (no optional C extension such as ssl or sqlite3).
CLASS_MODULES = (
    "builtins",
    "ast",
    "asyncio",
    "collections",
    "collections.abc",
    "email.charset",
    "email.errors",
    "email.feedparser",
    "email.generator",
    "email.headerregistry",
    "email.message",
    "email.mime.text",
    "email.policy",
    "http.client",
    "http.cookiejar",
    "http.cookies",
    "http.server",
    "io",
    "logging",
    "logging.handlers",
    "urllib.error",
    "urllib.parse",
    "urllib.request",
    "xml.dom.minidom",
    "xml.etree.ElementTree",
    "xml.sax.handler",
    "xml.sax.saxutils",
)
# Node-classification labels: the package that defines a class (a leading underscore dropped, so
# ``_io`` counts as ``io``); ancestors from any other package (``socketserver``, ``abc``, ...) are
# "other".
CLASS_FAMILIES = (
    "ast",
    "asyncio",
    "builtins",
    "collections",
    "email",
    "http",
    "io",
    "logging",
    "urllib",
    "xml",
    "other",
)
# Bookkeeping entries of a class's __dict__ that say nothing about what the class does.
_BOOKKEEPING = {
    "__module__",
    "__qualname__",
    "__doc__",
    "__dict__",
    "__weakref__",
    "__annotations__",
    "__firstlineno__",
    "__static_attributes__",
    "__orig_bases__",
    "__parameters__",
    "__abstractmethods__",
    "_abc_impl",
    "__slots__",
}


def _qualified(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


def _family(cls: type) -> str:
    package = cls.__module__.split(".")[0].lstrip("_")
    return package if package in CLASS_FAMILIES else "other"


def _tokens(cls: type) -> list[str]:
    """Words of the class name (``HTTPServerError`` -> http, server, error) and the names it defines."""
    words = re.findall(r"[A-Z]+(?![a-z])|[A-Z]?[a-z]+|\d+", cls.__name__)
    own = [k for k in vars(cls) if k not in _BOOKKEEPING]
    return [f"word:{w.lower()}" for w in words] + [f"attr:{k}" for k in own]


def class_hierarchy() -> dict[str, type]:
    """Every public class of :data:`CLASS_MODULES` and all its ancestors, by qualified name (sorted).

    A class counts for a module when its own ``__module__`` is in that module's package (so
    ``asyncio`` brings ``asyncio.events.AbstractEventLoop`` but ``json`` does not bring the ``dict``
    it imports); ancestors come from each class's MRO, whatever their module, so the graph reaches
    ``object``. Nothing defined at run time (in a notebook, by a test) can enter: only classes
    reachable from these modules' namespaces are walked."""
    found: dict[str, type] = {}
    seen: set[int] = set()
    for module_name in CLASS_MODULES:
        module = importlib.import_module(module_name)
        package = module_name.split(".")[0]
        for attr, value in sorted(vars(module).items()):
            if (
                isinstance(value, type)
                and not attr.startswith("_")
                and value.__module__.split(".")[0].lstrip("_") == package.lstrip("_")
            ):
                for ancestor in value.__mro__:
                    if id(ancestor) in seen:
                        continue
                    seen.add(id(ancestor))
                    # Two classes can share a qualified name (urllib.parse's result classes have
                    # namedtuple bases of the same name): number the later ones, in walk order.
                    key, k = _qualified(ancestor), 1
                    while key in found:
                        k += 1
                        key = f"{_qualified(ancestor)}~{k}"
                    found[key] = ancestor
    return dict(sorted(found.items()))


def python_classes(
    max_nodes: int | None = None, seed: int = 0, *, num_features: int = 512, name: str | None = None
) -> Graph:
    """The inheritance graph of Python's own classes: a real hierarchy present on every machine.

    Nodes are the classes of :func:`class_hierarchy` (the built-ins and a fixed list of
    standard-library modules, :data:`CLASS_MODULES`, with all their ancestors up to ``object``);
    an undirected edge joins each class to each of its direct bases. Single inheritance makes a
    tree rooted at ``object``; multiple inheritance (``io.TextIOWrapper``, the ``collections.abc``
    mix-ins, ``asyncio`` transports) adds a few cycles, so the graph is a near-tree (small δ).

    **Labels**: the package that defines the class, one of :data:`CLASS_FAMILIES` (``ast``,
    ``asyncio``, ``builtins``, ``collections``, ``email``, ``http``, ``io``, ``logging``, ``urllib``,
    ``xml``, and ``other`` for ancestors from elsewhere). Packages
    are subtrees of the hierarchy more often than not (an ``ast.BinOp`` is an ``ast.expr`` is an
    ``ast.AST``), so the graph helps, but not always (exceptions of every package hang off
    ``Exception``), so the features must help too.

    **Features**: a bag of hashed tokens, ``num_features`` wide and binary: the words of the class
    name and the names the class itself defines (its methods and attributes, bookkeeping such as
    ``__module__`` left out), each hashed with CRC-32 (stable across runs and machines, unlike
    ``hash``). The module name is not a token, so the label is not handed over.

    **Size**: with ``max_nodes`` below the hierarchy's size, classes are taken in an order shuffled
    by ``seed``, each with all its ancestors, while they fit — so any subset is connected and reaches
    ``object``; ``max_nodes=None`` (or a large value) takes all and ``seed`` does not matter.
    Nodes are numbered in order of qualified name; ``node_names`` holds those names.

    Python versions differ a little in their classes -- the whole hierarchy has 555 classes and 594
    edges on CPython 3.10.13, 562 and 602 on 3.11.7, 563 and 603 on 3.12.1 -- so counts differ
    slightly between machines; on one Python version the graph is the same everywhere. At full
    size (3.11): δ = 2 (sampled), diameter 12; a logistic regression on the features alone gets
    0.73 micro-F1 on a 15 % test split, 0.78 with the neighbours' mean features added.
    """
    everything = class_hierarchy()
    key_of = {id(c): q for q, c in everything.items()}
    if max_nodes is not None and max_nodes < 2:
        raise ValueError(f"python_classes: max_nodes must be at least 2 (or None for all), got {max_nodes}")
    if num_features < 1:
        raise ValueError(f"python_classes: num_features must be >= 1, got {num_features}")
    if max_nodes is None or max_nodes >= len(everything):
        chosen = set(everything)
    else:
        rng = np.random.default_rng(seed)
        candidates = [q for q in everything if q != "builtins.object"]
        chosen = {"builtins.object"}
        for i in rng.permutation(len(candidates)):
            missing = {key_of[id(a)] for a in everything[candidates[i]].__mro__} - chosen
            if len(chosen) + len(missing) <= max_nodes:
                chosen |= missing
            if len(chosen) == max_nodes:
                break
    names = sorted(chosen)
    index = {q: i for i, q in enumerate(names)}
    classes = [everything[q] for q in names]

    pairs = set()
    for i, cls in enumerate(classes):
        for base in cls.__bases__:
            j = index[key_of[id(base)]]
            pairs.add((min(i, j), max(i, j)))
    features = torch.zeros(len(names), num_features)
    for i, cls in enumerate(classes):
        for token in _tokens(cls):
            features[i, zlib.crc32(token.encode()) % num_features] = 1.0
    labels = torch.tensor([CLASS_FAMILIES.index(_family(c)) for c in classes], dtype=torch.int64)
    edges = torch.tensor(sorted(pairs), dtype=torch.int64).reshape(-1, 2)
    return Graph(
        name or f"python-classes-{len(names)}",
        edges,
        features,
        labels,
        node_names=tuple(names),
        label_names=CLASS_FAMILIES,
    )


def graph_defaults(name: str) -> dict:
    """Keyword arguments that size a graph for the active profile (:func:`spectrallab.profiles.pick`).

    ``"disease_nc"`` and ``"disease_lp"`` are HGCN's two Disease trees (1,044 and 2,665 nodes) on
    ``cpu`` and ``gpu``; ``ci`` takes a few hundred nodes and 200 features, enough to learn in
    seconds. ``"python_classes"`` is the whole hierarchy except on ``ci``."""
    sizes = {
        "disease_nc": pick(
            ci=dict(num_nodes=300, num_features=200), cpu=dict(num_nodes=1044), gpu=dict(num_nodes=1044)
        ),
        "disease_lp": pick(
            ci=dict(num_nodes=400, num_features=200, branching=(1, 11)),
            cpu=dict(num_nodes=2665, branching=(1, 11)),
            gpu=dict(num_nodes=2665, branching=(1, 11)),
        ),
        "python_classes": pick(ci=dict(max_nodes=300), cpu=dict(max_nodes=None), gpu=dict(max_nodes=None)),
    }
    if name not in sizes:
        raise ValueError(f"graph_defaults: unknown graph {name!r}; known: {', '.join(sizes)}")
    return sizes[name]


# ---------------------------------------------------------------------------------------------------
# Gromov δ-hyperbolicity
# ---------------------------------------------------------------------------------------------------


def _largest_component(graph: Graph | nx.Graph) -> nx.Graph:
    G = graph.to_networkx() if isinstance(graph, Graph) else graph
    if G.number_of_nodes() == 0:
        return nx.Graph()
    # The largest component; among equal sizes the one holding the smallest node, so ties are stable.
    nodes = max(nx.connected_components(G), key=lambda c: (len(c), -min(c)))
    return nx.convert_node_labels_to_integers(G.subgraph(sorted(nodes)), ordering="sorted")


def _four_point(d01, d23, d02, d13, d03, d12):
    """δ of each quadruple: half the gap between the largest and the middle of the three pair sums."""
    sums = np.sort(np.stack([d01 + d23, d02 + d13, d03 + d12]), axis=0)
    return (sums[2] - sums[1]) / 2


def gromov_delta(
    graph: Graph | nx.Graph, samples: int | None = None, seed: int = 0, *, exact_max: int = 60, max_anchors: int = 3000
) -> float:
    """Gromov's δ (the four-point condition) of the largest connected component, in hops.

    For four nodes x, y, z, w form the three sums ``d(x,y) + d(z,w)``, ``d(x,z) + d(y,w)`` and
    ``d(x,w) + d(y,z)`` of shortest-path distances; the quadruple's δ is half the difference between
    the largest and the second largest, and the graph's δ is the largest over all quadruples. A tree
    has δ = 0; the smaller δ is relative to the diameter, the more tree-like (hyperbolic) the graph.
    This is the absolute δ (not δ / diameter), the quantity HGCN's Table 1 reports (Disease 0,
    Cora 11), and like HGCN's it is computed on hop distances.

    ``samples=None`` on a component of at most ``exact_max`` nodes: exact, over all quadruples.
    Otherwise, as HGCN does, the largest δ over ``samples`` quadruples of distinct nodes drawn
    uniformly (default 50,000, HGCN's number): a lower bound on δ, usually exact when δ is small.
    On components of more than ``max_anchors`` nodes the quadruples are drawn among that many nodes
    chosen at random (their distances are still those of the whole component). Distances come from
    breadth-first search (scipy's compiled one, on the networkx graph's adjacency; networkx's own
    search in Python is far slower), kept as a ``max_anchors`` × ``max_anchors`` float32 matrix at most.
    """
    G = _largest_component(graph)
    n = G.number_of_nodes()
    if samples is not None and samples < 1:
        raise ValueError(f"gromov_delta: samples must be >= 1 (or None), got {samples}")
    if n < 4:
        return 0.0
    from scipy.sparse.csgraph import shortest_path

    adjacency = nx.to_scipy_sparse_array(G, nodelist=range(n), format="csr")
    rng = np.random.default_rng(seed)
    anchors = np.arange(n) if n <= max_anchors else np.sort(rng.choice(n, size=max_anchors, replace=False))
    D = np.concatenate(
        [
            shortest_path(adjacency, unweighted=True, directed=False, indices=chunk)[:, anchors]
            for chunk in np.array_split(anchors, max(1, len(anchors) // 256))
        ]
    ).astype(np.float32)
    m = len(anchors)
    if samples is None and n <= exact_max:
        # All (y, z, w) at once for each x: m^3 values, m <= exact_max.
        return max(
            float(
                _four_point(
                    D[x][:, None, None],
                    D[None, :, :],
                    D[x][None, :, None],
                    D[:, None, :],
                    D[x][None, None, :],
                    D[:, :, None],
                ).max()
            )
            for x in range(m)
        )
    count = 50_000 if samples is None else samples
    # Distinct quadruples: draw with replacement, redraw the rows that repeat a node.
    quads = rng.integers(0, m, size=(count, 4))
    while True:
        ordered = np.sort(quads, axis=1)
        repeats = (ordered[:, 1:] == ordered[:, :-1]).any(axis=1)
        if not repeats.any():
            break
        quads[repeats] = rng.integers(0, m, size=(int(repeats.sum()), 4))
    x, y, z, w = quads.T
    return float(_four_point(D[x, y], D[z, w], D[x, z], D[y, w], D[x, w], D[y, z]).max())


# ---------------------------------------------------------------------------------------------------
# Splits, as HGCN makes them
# ---------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class LinkSplit:
    """Edges for link prediction: train on ``train_edges``, score the held-out positives against as
    many sampled non-edges. All ``(k, 2)`` int64 with ``u < v``."""

    train_edges: torch.Tensor
    val_pos: torch.Tensor
    val_neg: torch.Tensor
    test_pos: torch.Tensor
    test_neg: torch.Tensor

    def __repr__(self) -> str:
        return (
            f"LinkSplit(train={len(self.train_edges)}, val={len(self.val_pos)}+{len(self.val_neg)}, "
            f"test={len(self.test_pos)}+{len(self.test_neg)})"
        )


def _check_fractions(where: str, val: float, test: float) -> None:
    for key, value in (("val", val), ("test", test)):
        if not 0 <= value < 1:
            raise ValueError(f"{where}: {key} must lie in [0, 1), got {value}")
    if val + test >= 1:
        raise ValueError(f"{where}: val + test must be below 1 (something must be left to train on), got {val + test}")


def link_split(graph: Graph, val: float = 0.05, test: float = 0.1, seed: int = 0) -> LinkSplit:
    """Hold out ``val`` and ``test`` of the edges (HGCN's 5 % and 10 %), each with as many non-edges.

    As in HGCN: the edges are shuffled, the first ``int(E · val)`` validate, the next
    ``int(E · test)`` test, the rest train (so removing them may disconnect the training graph, as
    on a tree it must). Negatives are distinct node pairs ``u < v`` that are not edges of the full
    graph, drawn uniformly without collision, none shared between validation and test. Training
    negatives are the trainer's business: HGCN draws fresh random non-train pairs every epoch.
    """
    where = f"link_split({graph.name!r})"
    _check_fractions(where, val, test)
    E, N = graph.num_edges, graph.num_nodes
    n_val, n_test = int(E * val), int(E * test)
    pairs_total = N * (N - 1) // 2
    if n_val + n_test > pairs_total - E:
        raise ValueError(f"{where}: needs {n_val + n_test} non-edges but the graph has only {pairs_total - E}")
    rng = np.random.default_rng(seed)
    edges = graph.edges.numpy()
    pos = edges[rng.permutation(E)]
    # Negatives by rejection: draw pairs, drop self-pairs, edges and repeats (pair code u * N + v).
    taken = set((edges[:, 0] * N + edges[:, 1]).tolist())
    negatives: list[int] = []
    need = n_val + n_test
    while len(negatives) < need:
        draw = rng.integers(0, N, size=(2 * (need - len(negatives)) + 16, 2))
        u, v = draw.min(axis=1), draw.max(axis=1)
        for code in (u * N + v)[u < v].tolist():
            if code not in taken:
                taken.add(code)
                negatives.append(code)
                if len(negatives) == need:
                    break
    neg = np.array(negatives, dtype=np.int64).reshape(-1)
    neg = np.stack([neg // N, neg % N], axis=1)
    as_t = lambda a: torch.from_numpy(np.ascontiguousarray(a, dtype=np.int64)).reshape(-1, 2)  # noqa: E731
    return LinkSplit(
        train_edges=as_t(pos[n_val + n_test :]),
        val_pos=as_t(pos[:n_val]),
        val_neg=as_t(neg[:n_val]),
        test_pos=as_t(pos[n_val : n_val + n_test]),
        test_neg=as_t(neg[n_val:]),
    )


def row_normalized(graph: Graph) -> Graph:
    """The same graph with every feature row scaled to unit length (HGCN's feature normalization).

    HyboNet lifts a feature vector f to the point at distance ‖f‖ from the origin, so unnormalized
    counts (a node with many traits) would start far out on the hyperboloid; all-zero rows stay zero."""
    norms = graph.features.norm(dim=1, keepdim=True).clamp_min(1e-12)
    return dataclasses.replace(graph, features=graph.features / norms)


def node_split(
    graph: Graph, val: float = 0.1, test: float = 0.6, seed: int = 0, *, balanced: bool = False
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(train, val, test)`` node indices (sorted int64), disjoint and covering every node.

    Stratified: from each class, ``round(val · size)`` nodes validate and ``round(test · size)``
    test, drawn at random; the rest train. The defaults are HGCN's for Disease (10 % validation,
    60 % test; HGCN uses 15 % / 15 % for Airport). ``balanced=True`` is HGCN's own rule for its
    synthetic sets: every class gives the *same* number of validation and test nodes,
    ``round(val · smallest class)`` and ``round(test · smallest class)``, so the held-out sets are
    balanced and the surplus of the larger classes trains.
    """
    where = f"node_split({graph.name!r})"
    if graph.labels is None:
        raise ValueError(f"{where}: the graph has no labels to split by")
    _check_fractions(where, val, test)
    rng = np.random.default_rng(seed)
    labels = graph.labels.numpy()
    classes = np.unique(labels)
    smallest = min(int((labels == c).sum()) for c in classes)
    parts: tuple[list, list, list] = ([], [], [])
    for c in classes:
        members = np.flatnonzero(labels == c)
        members = members[rng.permutation(len(members))]
        size = smallest if balanced else len(members)
        n_val, n_test = int(round(val * size)), int(round(test * size))
        parts[1].append(members[:n_val])
        parts[2].append(members[n_val : n_val + n_test])
        parts[0].append(members[n_val + n_test :])
    train, val_idx, test_idx = (torch.from_numpy(np.sort(np.concatenate(p)).astype(np.int64)) for p in parts)
    return train, val_idx, test_idx


# ---------------------------------------------------------------------------------------------------
# Metrics (tensors in, floats out; scikit-learn computes them)
# ---------------------------------------------------------------------------------------------------


def _numpy_pair(where: str, a: torch.Tensor, b: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    a = torch.as_tensor(a).detach().cpu()
    b = torch.as_tensor(b).detach().cpu()
    if a.shape[0] != b.shape[0]:
        raise ValueError(f"{where}: got {a.shape[0]} predictions but {b.shape[0]} labels")
    if a.shape[0] == 0:
        raise ValueError(f"{where}: nothing to score (empty input)")
    return a.numpy(), b.numpy()


def _binary_scores(where: str, scores, labels) -> tuple[np.ndarray, np.ndarray]:
    s, y = _numpy_pair(where, scores, labels)
    if s.ndim != 1:
        raise ValueError(f"{where}: scores must be one number per example, got shape {s.shape}")
    if not set(np.unique(y).tolist()) <= {0, 1}:
        raise ValueError(f"{where}: labels must be 0 (negative) or 1 (positive), got values {np.unique(y)[:5]}")
    if y.min() == y.max():
        raise ValueError(f"{where}: needs both positive and negative examples, got only label {int(y[0])}")
    return s.astype(np.float64), y.astype(np.int64)


def roc_auc(scores: torch.Tensor, labels: torch.Tensor) -> float:
    """Area under the ROC curve: the chance that a random positive scores above a random negative
    (ties count half)."""
    from sklearn.metrics import roc_auc_score

    s, y = _binary_scores("roc_auc", scores, labels)
    return float(roc_auc_score(y, s))


def average_precision(scores: torch.Tensor, labels: torch.Tensor) -> float:
    """Average precision: the mean, over the positives in decreasing order of score, of the precision
    among the examples ranked at or above each (scikit-learn's step-wise definition)."""
    from sklearn.metrics import average_precision_score

    s, y = _binary_scores("average_precision", scores, labels)
    return float(average_precision_score(y, s))


def f1(predictions: torch.Tensor, labels: torch.Tensor, average: str = "auto") -> float:
    """F1 score of class predictions (indices, or ``(N, C)`` scores whose argmax is taken).

    ``average="auto"`` follows HGCN: ``"binary"`` (F1 of class 1) with two classes, ``"micro"``
    (which equals accuracy) with more; ``"binary"``, ``"micro"``, ``"macro"`` and ``"weighted"`` as
    in scikit-learn."""
    from sklearn.metrics import f1_score

    allowed = ("auto", "binary", "micro", "macro", "weighted")
    if average not in allowed:
        raise ValueError(f"f1: average={average!r} is not one of {', '.join(allowed)}")
    p = torch.as_tensor(predictions)
    if p.dim() == 2:
        p = p.argmax(dim=1)
    p_np, y = _numpy_pair("f1", p, labels)
    if average == "auto":
        average = "binary" if max(int(p_np.max()), int(y.max())) <= 1 else "micro"
    return float(f1_score(y, p_np, average=average, zero_division=0))
