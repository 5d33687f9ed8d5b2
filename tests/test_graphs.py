"""Graphs for the hyperbolic tasks: generators, δ-hyperbolicity, splits and metrics."""

from __future__ import annotations

import networkx as nx
import pytest
import torch

from spectrallab.tasks import (
    Graph,
    average_precision,
    disease,
    f1,
    graph_defaults,
    graphs,
    gromov_delta,
    link_split,
    node_split,
    python_classes,
    roc_auc,
)
from spectrallab.tasks.graphs import CLASS_FAMILIES


@pytest.fixture(scope="module")
def small_disease() -> Graph:
    return disease(300, seed=0, num_features=100)


@pytest.fixture(scope="module")
def classes() -> Graph:
    return python_classes()


def same(a: Graph, b: Graph) -> bool:
    return torch.equal(a.edges, b.edges) and torch.equal(a.features, b.features) and torch.equal(a.labels, b.labels)


# --- Graph validation ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "edges, match",
    [
        (torch.tensor([[0, 5]]), r"endpoints must lie in \[0, 3\]"),
        (torch.tensor([[2, 1]]), "u < v"),
        (torch.tensor([[1, 1]]), "u < v"),
        (torch.tensor([0, 1]), r"\(E, 2\) int64"),
        (torch.tensor([[0.0, 1.0]]), r"\(E, 2\) int64"),
    ],
)
def test_bad_edges_raise_naming_the_graph(edges, match):
    with pytest.raises(ValueError, match=match) as err:
        Graph("toy", edges, torch.zeros(4, 2))
    assert "'toy'" in str(err.value)


def test_bad_labels_and_names_raise():
    with pytest.raises(ValueError, match="'toy'.*labels must have shape"):
        Graph("toy", torch.tensor([[0, 1]]), torch.zeros(4, 2), torch.zeros(3, dtype=torch.int64))
    with pytest.raises(ValueError, match="'toy'.*node_names"):
        Graph("toy", torch.tensor([[0, 1]]), torch.zeros(4, 2), node_names=("a", "b"))


# --- disease ---------------------------------------------------------------------------------------


def test_disease_is_a_tree_with_binary_labels(small_disease):
    g = small_disease
    assert (g.num_nodes, g.num_edges) == (300, 299)
    assert nx.is_tree(g.to_networkx())
    assert g.features.shape == (300, 100) and g.features.dtype == torch.float32
    assert set(g.features.unique().tolist()) == {0.0, 1.0}
    assert set(g.labels.unique().tolist()) == {0, 1}
    assert 0.1 <= g.labels.float().mean() <= 0.9  # min_infected guarantees >= 10 %
    assert g.label_names == ("healthy", "infected")


def test_disease_infected_nodes_are_a_subtree_holding_the_root():
    for seed in range(3):
        g = disease(400, seed=seed, num_features=50)
        infected = torch.nonzero(g.labels).flatten().tolist()
        assert 0 in infected
        assert nx.is_connected(g.to_networkx().subgraph(infected))


def test_disease_branching_as_in_hgcn_files():
    for branching in [(2, 6), (1, 11)]:
        g = disease(500, seed=1, num_features=20, branching=branching)
        children = torch.bincount(g.edges[:, 0], minlength=g.num_nodes)
        internal = children[children > 0]
        # Every internal node but the last one filled has lo..hi children.
        assert int(internal[:-1].min()) >= branching[0] and int(internal.max()) <= branching[1]


def test_disease_is_deterministic_and_seeded(small_disease):
    assert same(small_disease, disease(300, seed=0, num_features=100))
    other = disease(300, seed=1, num_features=100)
    assert not torch.equal(small_disease.edges, other.edges)
    assert not torch.equal(small_disease.features, other.features)


def test_disease_features_carry_inherited_traits():
    # Parent and child share more traits than random pairs (traits are inherited), yet not most:
    # 1000 traits, 1 % present, 10 % kept -> ~1.1 shared along an edge, ~0.1 between strangers.
    g = disease(300, seed=0)
    x = g.features
    shared_edge = (x[g.edges[:, 0]] * x[g.edges[:, 1]]).sum(1).mean()
    gen = torch.Generator().manual_seed(0)
    r = torch.randint(0, g.num_nodes, (2000, 2), generator=gen)
    shared_random = (x[r[:, 0]] * x[r[:, 1]]).sum(1).mean()
    assert shared_edge > 4 * shared_random
    assert shared_edge < 0.5 * x.sum(1).mean()


def test_disease_bad_arguments():
    with pytest.raises(ValueError, match="num_nodes=2"):
        disease(2)
    with pytest.raises(ValueError, match="branching"):
        disease(100, branching=(3, 2))
    with pytest.raises(ValueError, match="beta must lie in"):
        disease(100, beta=0.0)
    with pytest.raises(ValueError, match="no outbreak"):
        disease(100, beta=0.01, gamma=1.0, min_infected=0.5)


# --- python_classes --------------------------------------------------------------------------------


def test_python_classes_is_a_connected_near_tree(classes):
    g = classes
    G = g.to_networkx()
    assert nx.is_connected(G)
    assert 500 <= g.num_nodes <= 650  # 555 / 562 / 563 on CPython 3.10 / 3.11 / 3.12
    cycles = g.num_edges - g.num_nodes + 1  # from multiple inheritance
    assert 0 < cycles < 0.15 * g.num_nodes
    assert g.node_names is not None and len(set(g.node_names)) == g.num_nodes
    assert "builtins.object" in g.node_names and "ast.BinOp" in g.node_names
    obj = g.node_names.index("builtins.object")
    assert nx.eccentricity(G, obj) <= 12
    assert gromov_delta(g, samples=20_000) <= 3


def test_python_classes_edges_are_inheritance(classes):
    names = classes.node_names
    pairs = {(names[u], names[v]) for u, v in classes.edges.tolist()}
    pairs |= {(b, a) for a, b in pairs}
    assert ("ast.BinOp", "ast.expr") in pairs
    assert ("ast.expr", "ast.AST") in pairs
    assert ("builtins.KeyError", "builtins.LookupError") in pairs
    assert ("ast.BinOp", "builtins.object") not in pairs  # only direct bases


def test_python_classes_labels_and_features(classes):
    g = classes
    assert g.label_names == CLASS_FAMILIES and g.num_classes == len(CLASS_FAMILIES)
    counts = torch.bincount(g.labels, minlength=len(CLASS_FAMILIES))
    assert (counts[:-1] >= 10).all()  # every named package is well represented
    label = dict(zip(g.node_names, (CLASS_FAMILIES[i] for i in g.labels.tolist())))
    assert label["ast.BinOp"] == "ast" and label["builtins.object"] == "builtins"
    assert label["_io.TextIOWrapper"] == "io" and label["collections.OrderedDict"] == "collections"
    assert g.features.shape[1] == 512 and set(g.features.unique().tolist()) == {0.0, 1.0}
    assert (g.features.sum(1) > 0).all()
    assert g.features.unique(dim=0).shape[0] > 0.8 * g.num_nodes  # features tell classes apart


def test_python_classes_subsets_are_connected_and_seeded(classes):
    a, b = python_classes(150, seed=0), python_classes(150, seed=1)
    assert a.num_nodes == 150 and nx.is_connected(a.to_networkx())
    assert set(a.node_names) <= set(classes.node_names)
    assert same(a, python_classes(150, seed=0))
    assert a.node_names != b.node_names
    with pytest.raises(ValueError, match="max_nodes"):
        python_classes(1)


def test_python_classes_ignores_classes_made_at_run_time(classes):
    class Extra(KeyError):  # a subclass of a walked class, created now
        pass

    assert same(python_classes(), classes)
    assert not any("Extra" in n for n in python_classes().node_names)


# --- gromov_delta ----------------------------------------------------------------------------------


def test_delta_of_trees_is_zero():
    tree = nx.random_labeled_tree(40, seed=3) if hasattr(nx, "random_labeled_tree") else nx.random_tree(40, seed=3)
    assert gromov_delta(tree) == 0.0  # exact (40 nodes)
    assert gromov_delta(disease(1044, num_features=10)) == 0.0  # sampled


@pytest.mark.parametrize("n, delta", [(4, 1.0), (5, 0.5), (6, 1.0), (8, 2.0), (9, 1.5)])
def test_delta_of_cycles(n, delta):
    # By hand: C_4 on its four nodes: sums 1+1, 2+2, 1+1 -> (4 - 2)/2 = 1. C_5, any four nodes
    # (say 0,1,2,3): 1+1, 2+2, 2+1 -> (4 - 3)/2 = 1/2. C_4k, nodes 0,k,2k,3k: 2k, 4k, 2k -> k.
    assert gromov_delta(nx.cycle_graph(n)) == delta


def test_delta_of_a_grid_and_of_a_clique():
    # The corners of an m x m grid: sides m, diagonals 2m -> (4m - 2m)/2 = m.
    grid = nx.convert_node_labels_to_integers(nx.grid_2d_graph(5, 5))
    assert gromov_delta(grid) == 4.0
    assert 0 < gromov_delta(grid, samples=5000) <= 4.0  # sampled: a lower bound
    assert gromov_delta(nx.complete_graph(6)) == 0.0


def test_delta_uses_the_largest_component():
    G = nx.disjoint_union(nx.cycle_graph(8), nx.path_graph(3))
    assert gromov_delta(G) == 2.0
    assert gromov_delta(nx.path_graph(3)) == 0.0


# --- splits ----------------------------------------------------------------------------------------


def pair_set(t: torch.Tensor) -> set:
    return set(map(tuple, t.tolist()))


def test_link_split_sizes_disjoint_and_negatives_are_non_edges():
    g = disease(400, seed=0, num_features=10, branching=(1, 11))
    s = link_split(g, seed=0)
    E = g.num_edges
    assert (len(s.val_pos), len(s.test_pos)) == (int(E * 0.05), int(E * 0.1))
    assert (len(s.val_neg), len(s.test_neg)) == (len(s.val_pos), len(s.test_pos))
    train, vp, tp = pair_set(s.train_edges), pair_set(s.val_pos), pair_set(s.test_pos)
    assert len(train) + len(vp) + len(tp) == E and train | vp | tp == pair_set(g.edges)
    negs = pair_set(s.val_neg) | pair_set(s.test_neg)
    assert len(negs) == len(s.val_neg) + len(s.test_neg)  # no repeats, none shared
    assert not negs & pair_set(g.edges)
    for t in (s.train_edges, s.val_neg, s.test_neg):
        assert t.dtype == torch.int64 and bool((t[:, 0] < t[:, 1]).all())
    again, other = link_split(g, seed=0), link_split(g, seed=1)
    assert torch.equal(again.test_pos, s.test_pos) and torch.equal(again.test_neg, s.test_neg)
    assert not torch.equal(other.test_pos, s.test_pos)


def test_link_split_negatives_on_a_dense_graph():
    # K_10 less 12 edges: 33 edges, 12 non-edges; most random pairs collide with an edge.
    K = nx.complete_graph(10)
    K.remove_edges_from(list(K.edges())[::3][:12])
    g = Graph.from_networkx("dense", K, torch.zeros(10, 1))
    for seed in range(5):
        s = link_split(g, val=0.1, test=0.2, seed=seed)
        negs = pair_set(s.val_neg) | pair_set(s.test_neg)
        assert len(negs) == len(s.val_neg) + len(s.test_neg) == 3 + 6
        assert not negs & pair_set(g.edges)
    with pytest.raises(ValueError, match="only 12"):
        link_split(g, val=0.2, test=0.3)


def test_link_split_bad_fractions():
    g = disease(50, num_features=5)
    with pytest.raises(ValueError, match="val \\+ test"):
        link_split(g, val=0.5, test=0.5)
    with pytest.raises(ValueError, match="test must lie in"):
        link_split(g, test=-0.1)


def test_node_split_stratified_and_balanced(small_disease):
    g = small_disease
    train, val, test = node_split(g, seed=0)
    allidx = torch.cat([train, val, test])
    assert len(allidx) == g.num_nodes and len(allidx.unique()) == g.num_nodes
    for part, frac in ((val, 0.1), (test, 0.6)):
        for c in (0, 1):
            size = int((g.labels == c).sum())
            assert int((g.labels[part] == c).sum()) == round(frac * size)
    _, bval, btest = node_split(g, seed=0, balanced=True)
    for part in (bval, btest):
        counts = torch.bincount(g.labels[part], minlength=2)
        assert counts[0] == counts[1] > 0
    assert torch.equal(node_split(g, seed=0)[2], test)
    assert not torch.equal(node_split(g, seed=1)[2], test)
    with pytest.raises(ValueError, match="no labels"):
        node_split(Graph("bare", torch.tensor([[0, 1]]), torch.zeros(2, 1)))


# --- metrics ---------------------------------------------------------------------------------------


def test_auc_and_ap_by_hand():
    scores = torch.tensor([0.9, 0.8, 0.4, 0.3])
    labels = torch.tensor([1, 0, 1, 0])
    # Positive/negative pairs: (0.9, 0.8) (0.9, 0.3) (0.4, 0.3) ordered, (0.4, 0.8) not -> 3/4.
    assert roc_auc(scores, labels) == pytest.approx(0.75)
    # Ranked: pos (precision 1/1, recall 1/2), neg, pos (precision 2/3, recall 1) -> 1/2 + 1/3.
    assert average_precision(scores, labels) == pytest.approx(5 / 6)
    assert roc_auc(torch.tensor([0.5, 0.5]), torch.tensor([1, 0])) == pytest.approx(0.5)  # a tie: half
    assert roc_auc(-scores, labels) == pytest.approx(0.25)
    with pytest.raises(ValueError, match="both positive and negative"):
        roc_auc(scores, torch.ones(4, dtype=torch.int64))
    with pytest.raises(ValueError, match="4 predictions but 3 labels"):
        average_precision(scores, labels[:3])


def test_f1_by_hand():
    pred = torch.tensor([1, 1, 0, 0, 1])
    true = torch.tensor([1, 0, 0, 1, 1])
    # TP = 2, FP = 1, FN = 1: precision = recall = 2/3 -> F1 = 2/3.
    assert f1(pred, true) == pytest.approx(2 / 3)
    # Class 0: TP 1, FP 1, FN 1 -> 1/2; macro = (1/2 + 2/3) / 2.
    assert f1(pred, true, average="macro") == pytest.approx((1 / 2 + 2 / 3) / 2)
    # Three classes: "auto" is micro F1 = accuracy (3 of 4 right); logits are argmaxed.
    logits = torch.tensor([[3.0, 0, 0], [0, 2.0, 0], [0, 0, 1.0], [1.0, 0, 0]])
    assert f1(logits, torch.tensor([0, 1, 2, 2])) == pytest.approx(0.75)
    with pytest.raises(ValueError, match="average='mean'"):
        f1(pred, true, average="mean")


def test_graph_defaults_ci_profile():
    # conftest sets the ci profile: a few hundred nodes.
    nc = disease(**graph_defaults("disease_nc"))
    lp = disease(**graph_defaults("disease_lp"))
    assert 200 <= nc.num_nodes <= 500 and 200 <= lp.num_nodes <= 500
    assert python_classes(**graph_defaults("python_classes")).num_nodes == 300
    with pytest.raises(ValueError, match="unknown graph"):
        graph_defaults("cora")


def test_row_normalized_scales_every_feature_row_to_unit_length_and_keeps_zero_rows():
    features = torch.tensor([[3.0, 4.0], [0.0, 0.0], [1.0, 0.0]])
    graph = graphs.Graph("rows", torch.tensor([[0, 1], [1, 2]]), features, torch.tensor([0, 1, 0]))
    out = graphs.row_normalized(graph)
    assert torch.allclose(out.features, torch.tensor([[0.6, 0.8], [0.0, 0.0], [1.0, 0.0]]))
    assert torch.equal(out.edges, graph.edges) and torch.equal(out.labels, graph.labels)
    assert torch.equal(graph.features, features)  # the original graph is left as it was
