"""HyboNet on the Lorentz model: the layer's formula, the constraint under every method, the method
contract (targets, all-or-nothing, merge) on Lorentz layers, learning, and exact resume.

Graphs are small balanced trees built here with networkx. A node's features are the indicators
of its ancestors (itself at half weight) at weight 0.3, next to 64 dimensions of noise, row-normalized:
an untrained network scores held-out edges by chance (AUC ≈ 0.5, the noise dominates its random
projection) and training must find the ancestry dimensions. (Ancestry alone would be too easy: a
random projection preserves it, so an untrained network already scores AUC ≈ 0.98.) A node's label
is the subtree of its depth-2 ancestor. The real generators and splits live in
``spectrallab.tasks.graphs``; the splits here are minimal stand-ins with the same attributes.
"""

from __future__ import annotations

import io
import math
import types

import geoopt
import networkx as nx
import pytest
import torch
from test_resume import OPTIONS  # small settings for every registered method, periods of 5 steps
from torch import nn

import spectrallab as sl
from spectrallab.hyperbolic import (
    HyboNet,
    LinkPredictor,
    LorentzCentroid,
    LorentzLinear,
    NodeClassifier,
    lorentz_constraint_error,
    lorentz_manifold,
    normalized_adjacency,
)
from spectrallab.methods.base import registered
from spectrallab.tasks.graphs import Graph
from spectrallab.tasks.hyperbolic import LinkPrediction, NodeClassification

# -- graphs and splits built here --------------------------------------------------------------------


def tree_graph(branch: int = 2, height: int = 5, signal: float = 0.3, noise_dims: int = 64) -> Graph:
    g = nx.balanced_tree(branch, height)
    N = g.number_of_nodes()
    ancestors = torch.zeros(N, N)
    labels = torch.zeros(N, dtype=torch.int64)
    for v, path in nx.single_source_shortest_path(g, 0).items():
        ancestors[v, path[:-1]] = 1.0
        ancestors[v, v] = 0.5
        labels[v] = path[2] - (1 + branch) if len(path) > 2 else 0  # the depth-2 subtree (b² classes)
    noise = torch.randn(N, noise_dims, generator=torch.Generator().manual_seed(0)) / math.sqrt(noise_dims)
    features = torch.cat([signal * ancestors / ancestors.norm(dim=1, keepdim=True), noise], 1)
    features = features / features.norm(dim=1, keepdim=True)
    return Graph.from_networkx(f"tree{branch}x{height}", g, features, labels)


def link_split(graph: Graph, val: float, test: float, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    edges = graph.edges[torch.randperm(graph.num_edges, generator=gen)]
    nv, nt = int(val * len(edges)), int(test * len(edges))
    N = graph.num_nodes
    known = set((graph.edges[:, 0] * N + graph.edges[:, 1]).tolist())
    negatives = []
    while len(negatives) < nv + nt:
        u, v = torch.randint(N, (2,), generator=gen).tolist()
        if u != v and min(u, v) * N + max(u, v) not in known:
            known.add(min(u, v) * N + max(u, v))
            negatives.append((min(u, v), max(u, v)))
    negatives = torch.tensor(negatives)
    return types.SimpleNamespace(
        train_edges=edges[nv + nt :],
        val_pos=edges[:nv],
        test_pos=edges[nv : nv + nt],
        val_neg=negatives[:nv],
        test_neg=negatives[nv:],
    )


def node_split(graph: Graph, val: float, test: float, seed: int = 0):
    order = torch.randperm(graph.num_nodes, generator=torch.Generator().manual_seed(seed))
    nv, nt = int(val * len(order)), int(test * len(order))
    return types.SimpleNamespace(train=order[nv + nt :], val=order[:nv], test=order[nv : nv + nt])


@pytest.fixture(scope="module")
def small_tree() -> Graph:
    return tree_graph(2, 5)  # 63 nodes


@pytest.fixture(scope="module")
def tree() -> Graph:
    return tree_graph(2, 7)  # 255 nodes


def small_link_task(graph, **kw) -> LinkPrediction:
    return LinkPrediction(graph, link_split(graph, 0.1, 0.1), hidden=16, out=8, **kw)


def lorentz_modules(model: nn.Module) -> dict[str, nn.Module]:
    return {n: m for n, m in model.named_modules() if isinstance(m, (LorentzLinear, LorentzCentroid))}


def layer_outputs(model: nn.Module, run) -> dict[str, torch.Tensor]:
    """Output of every Lorentz linear layer and every aggregation during ``run()``."""
    seen, hooks = {}, []
    for name, module in lorentz_modules(model).items():
        hooks.append(module.register_forward_hook(lambda m, a, out, name=name: seen.__setitem__(name, out.detach())))
    try:
        run()
    finally:
        for h in hooks:
            h.remove()
    return seen


def train_steps(model, task, opt, start: int, stop: int) -> None:
    """Step i's batch depends on i only, so a resumed run sees the data an uninterrupted one sees."""
    for i in range(start, stop):
        loss = task.loss(model, task.batch("train", task.batch_size, torch.Generator().manual_seed(1000 + i)))
        opt.zero_grad()
        loss.backward()
        opt.step()


# -- the layers against their formulas ---------------------------------------------------------------


@pytest.mark.parametrize("k", [1.0, 2.0])
def test_lorentz_linear_equals_the_papers_formula_by_hand(k):
    """H² ⊂ R³ → H² ⊂ R³, every number computed from the formula with Python floats."""
    M = [[0.5, -0.2, 0.1], [0.3, 0.8, -0.5], [-0.4, 0.2, 0.9]]  # rows: vᵀ, then W
    b = [0.1, -0.3, 0.2]  # b′, then b
    lam = 3.0
    xs = [0.6, 0.8]
    x = [math.sqrt(k + xs[0] ** 2 + xs[1] ** 2)] + xs  # on the hyperboloid ⟨x, x⟩_L = −k
    z = [sum(M[i][j] * x[j] for j in range(3)) + b[i] for i in range(3)]
    length = lam / (1 + math.exp(-z[0]))  # λσ(vᵀx + b′)
    norm = math.hypot(z[1], z[2])  # ‖Wx + b‖
    space = [length * z[1] / norm, length * z[2] / norm]
    expected = [math.sqrt(length**2 + k)] + space

    layer = LorentzLinear(3, 3, manifold=lorentz_manifold(k), scale=lam)
    with torch.no_grad():
        layer.linear.weight.copy_(torch.tensor(M))
        layer.linear.bias.copy_(torch.tensor(b))
    with torch.no_grad():
        y = layer(torch.tensor([x]))
    torch.testing.assert_close(y[0], torch.tensor(expected), atol=1e-6, rtol=1e-6)
    assert float(lorentz_constraint_error(y.detach(), k)) < 1e-5
    assert math.isclose(float(torch.linalg.vector_norm(y[0, 1:])), length, rel_tol=1e-6)


def test_lorentz_centroid_equals_its_formula_by_hand():
    k = 2.0
    manifold = lorentz_manifold(k)
    space = [[0.3, -1.0], [1.5, 0.2], [-0.4, 0.4]]
    pts = [[math.sqrt(k + a * a + c * c), a, c] for a, c in space]
    w = [0.5, 0.25, 0.25]
    s = [sum(w[i] * pts[i][j] for i in range(3)) for j in range(3)]
    lorentz_norm = math.sqrt(abs(-(s[0] ** 2) + s[1] ** 2 + s[2] ** 2))
    expected = [math.sqrt(k) * c / lorentz_norm for c in s]

    adjacency = torch.tensor([w, [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]])
    mu = LorentzCentroid(manifold)(torch.tensor(pts), adjacency)
    torch.testing.assert_close(mu[0], torch.tensor(expected), atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(mu[1:], torch.tensor(pts[1:]), atol=1e-6, rtol=1e-6)  # one point: itself
    assert float(lorentz_constraint_error(mu, k)) < 1e-5
    # The scale of a row cancels: sums and means of neighbours give the same centroid.
    torch.testing.assert_close(LorentzCentroid(manifold)(torch.tensor(pts), 4 * adjacency), mu)


def test_decoders_score_by_squared_distance(small_tree):
    """Fermi–Dirac logits (r − d²)/t and class logits −d²(x, p_c) + β_c, d² computed here by hand."""
    k = 2.0
    encoder = HyboNet(small_tree.features.shape[1], 8, 4, k=k)
    adjacency = normalized_adjacency(small_tree.edges, small_tree.num_nodes)
    z = encoder(small_tree.features, adjacency).detach().double()
    pairs = torch.tensor([[0, 1], [3, 40], [5, 5]])

    def minkowski(a, b):
        return -a[..., 0] * b[..., 0] + (a[..., 1:] * b[..., 1:]).sum(-1)

    a, b = z[pairs[:, 0]], z[pairs[:, 1]]
    lorentzian = -2 * k - 2 * minkowski(a, b)
    geodesic = math.sqrt(k) * torch.acosh((-minkowski(a, b) / k).clamp_min(1))
    for distance, d2 in [("lorentzian", lorentzian), ("geodesic", geodesic**2)]:
        decoder = LinkPredictor(encoder, r=1.5, t=0.5, distance=distance).double()
        torch.testing.assert_close(decoder.score(z, pairs), (1.5 - d2) / 0.5, atol=1e-6, rtol=1e-6)
    assert abs(float(lorentzian[2])) < 1e-5  # a point is at distance 0 from itself (z is float32)

    classifier = NodeClassifier(encoder, classes=3).double()
    with torch.no_grad():
        classifier.bias.copy_(torch.tensor([0.1, -0.2, 0.3]))
    points = classifier.points()
    assert float(lorentz_constraint_error(points, k)) < 1e-9
    torch.testing.assert_close(points[:, 1:], classifier.centroids)  # the chart keeps z_c
    x, A = small_tree.features.double(), adjacency.double()
    z = encoder(x, A)  # the encoder is float64 now
    expected = -(-2 * k - 2 * minkowski(z[:, None], points[None])) + classifier.bias
    torch.testing.assert_close(classifier(x, A), expected)


def test_normalized_adjacency_is_a_mean_with_self_loops(small_tree):
    A = normalized_adjacency(small_tree.edges, small_tree.num_nodes).to_dense()
    torch.testing.assert_close(A.sum(1), torch.ones(small_tree.num_nodes))
    assert bool((A.diagonal() > 0).all())
    assert int((A > 0).sum()) == 2 * small_tree.num_edges + small_tree.num_nodes


def test_lorentz_linear_contains_a_plain_linear_and_checks_its_sizes():
    layer = LorentzLinear(5, 4)
    assert type(layer.linear) is nn.Linear and tuple(layer.linear.weight.shape) == (4, 5)
    with pytest.raises(ValueError, match="out_features=1"):
        LorentzLinear(5, 1)
    with pytest.raises(ValueError, match="k=-1"):
        HyboNet(4, 8, 4, k=-1.0)


# -- every method keeps every layer on the hyperboloid -----------------------------------------------


@pytest.mark.parametrize("method", sorted(registered()))
def test_every_layer_stays_on_the_hyperboloid_after_training_with(method, small_tree):
    k = 2.0  # not 1, so a formula that forgets k fails
    task = small_link_task(small_tree, k=k)
    model = sl.apply(task.make_model(seed=0), method, **OPTIONS[method])
    before = model.encode(task.features, task.adjacency).detach()
    opt = sl.optimizer(model, lr=1e-2)
    train_steps(model, task, opt, 0, 100)
    outputs = layer_outputs(model, lambda: model.encode(task.features, task.adjacency))
    assert len(outputs) == 4  # two Lorentz linear layers, two aggregations
    for name, out in outputs.items():
        assert out.dtype == torch.float32 and bool(torch.isfinite(out).all()), name
        assert float(lorentz_constraint_error(out, k)) <= 1e-4, name
        assert float(out[:, 0].max()) > 1.5 * math.sqrt(k), f"{name}: every point sits at the origin"
    lifted = model.encoder.lift(task.features)
    assert float(lorentz_constraint_error(lifted, k)) <= 1e-4
    after = model.encode(task.features, task.adjacency).detach()
    assert float((after - before).abs().max()) > 1e-3, "training did not move the embeddings"


# -- the method contract on Lorentz layers -------------------------------------------------------------

INNER = ["encoder.layers.0.transform.linear", "encoder.layers.1.transform.linear"]


def test_targets_select_the_inner_linears_by_name(small_tree):
    task = small_link_task(small_tree)
    assert list(sl.resolve_targets(task.make_model())) == INNER
    model = sl.apply(task.make_model(), "sst", rank=2, targets=["layers.1.transform.linear"])
    assert list(sl.adapted_layers(model)) == [INNER[1]]
    assert type(model.encoder.layers[0].transform.linear) is nn.Linear
    model = sl.apply(task.make_model(), "lora", rank=2, targets=r".*layers\.0\.transform\.linear")
    assert list(sl.adapted_layers(model)) == [INNER[0]]
    # The Euclidean twin has the same names one level up: targets=None finds its linears too.
    twin = small_link_task(small_tree, geometry="euclidean").make_model()
    assert list(sl.resolve_targets(twin)) == ["encoder.layers.0.transform", "encoder.layers.1.transform"]


@pytest.mark.parametrize("method", ["sst", "lora", "relora", "galore", "pissa"])
def test_a_bad_rank_on_one_lorentz_layer_names_it_and_changes_nothing(method, small_tree):
    task = small_link_task(small_tree)  # layers 128→16 and 16→8: rank 12 fits the first only
    model = task.make_model()
    state = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(ValueError, match=r"encoder\.layers\.1\.transform\.linear.*rank=12"):
        sl.apply(model, method, rank=12)
    assert not sl.adapted_layers(model)
    assert all(type(layer.transform.linear) is nn.Linear for layer in model.encoder.layers)
    after = model.state_dict()
    assert after.keys() == state.keys() and all(torch.equal(after[k], state[k]) for k in state)
    assert all(p.requires_grad for n, p in model.named_parameters() if not n.endswith("manifold.k"))


@pytest.mark.parametrize("method", ["sst", "lora", "relora", "full", "galore", "dora"])
def test_merge_is_exact_on_lorentz_layers(method, small_tree):
    torch.manual_seed(0)
    task = small_link_task(small_tree)
    model = sl.apply(task.make_model(seed=1), method, **OPTIONS[method])
    train_steps(model, task, sl.optimizer(model, lr=1e-2), 0, 12)  # LoRA's B ≠ 0, SST resampled
    pairs, _ = task.batch("val", 0, None)
    model.eval()
    with torch.no_grad():
        z, logits = model.encode(task.features, task.adjacency), model(task.features, task.adjacency, pairs)
        sl.merge(model)
        assert not sl.adapted_layers(model)
        assert all(type(layer.transform.linear) is nn.Linear for layer in model.encoder.layers)
        torch.testing.assert_close(model.encode(task.features, task.adjacency), z, atol=1e-5, rtol=0)
        # Logits r − d² reach ~10 in size: float32 round-off there is relative (~1e-6).
        torch.testing.assert_close(model(task.features, task.adjacency, pairs), logits, atol=1e-5, rtol=1e-5)


# -- learning ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("geometry, method", [("hyperbolic", "sst"), ("hyperbolic", "full"), ("euclidean", "sst")])
def test_link_prediction_on_a_tree_learns(geometry, method, tree):
    task = LinkPrediction(tree, link_split(tree, 0.1, 0.1), geometry=geometry, hidden=32, out=16)
    model = task.make_model(seed=0)
    start = task.evaluate(model)
    options = {"rank": 4, "resample_every": 50, "warmup": 5} if method == "sst" else {}
    sl.apply(model, method, **options)
    run = sl.fit(model, task, 300, lr=1e-2, record=False, progress="off")
    end = run.evals[-1]
    assert set(end) >= {"val_loss", "val_roc_auc", "val_ap", "test_loss", "test_roc_auc", "test_ap"}
    assert abs(start["test_roc_auc"] - 0.5) < 0.1, start  # chance before training
    assert end["test_roc_auc"] > 0.72 and end["val_roc_auc"] > 0.72, end
    assert end["test_ap"] > 0.65, end


@pytest.mark.parametrize("geometry", ["hyperbolic", "euclidean"])
def test_node_classification_beats_the_majority_class(geometry, tree):
    task = NodeClassification(tree, node_split(tree, 0.2, 0.3), geometry=geometry, hidden=32, out=16)
    model = sl.apply(task.make_model(seed=0), "sst", rank=4, resample_every=50, warmup=5)
    run = sl.fit(model, task, 150, record=False, progress="off")
    end = run.evals[-1]
    majority = task.majority_accuracy("test")
    assert majority < 0.4  # 4 subtrees of equal size (and a few roots)
    assert end["test_acc"] > majority + 0.4, (end, majority)
    assert end["test_f1"] > 0.7 and end["val_f1"] > 0.7


def test_negatives_are_non_edges_drawn_from_the_generator(small_tree):
    task = small_link_task(small_tree)
    neg = task.negatives(500, torch.Generator().manual_seed(3))
    assert neg.shape == (500, 2) and bool((neg[:, 0] < neg[:, 1]).all())
    N = small_tree.num_nodes
    assert not bool(torch.isin(neg[:, 0] * N + neg[:, 1], small_tree.edges[:, 0] * N + small_tree.edges[:, 1]).any())
    assert torch.equal(neg, task.negatives(500, torch.Generator().manual_seed(3)))
    pairs, labels = task.batch("train", 7, torch.Generator().manual_seed(0))
    assert len(pairs) == len(task.train_edges) + 7 and int(labels.sum()) == len(task.train_edges)


# -- optimizers and resume -----------------------------------------------------------------------------


def test_no_manifold_parameters_so_adamw_trains_everything_and_riemannian_adam_is_accepted(small_tree):
    task = NodeClassification(small_tree, node_split(small_tree, 0.2, 0.3), hidden=16, out=8)
    model = task.make_model()
    assert not any(isinstance(p, geoopt.ManifoldParameter) for p in model.parameters())
    sl.apply(model, "sst", **OPTIONS["sst"])
    opt = sl.optimizer(model, lr=1e-2, optimizer=geoopt.optim.RiemannianAdam)
    assert isinstance(opt, geoopt.optim.RiemannianAdam)
    first = float(task.loss(model, task.batch("train", 0, None)))
    train_steps(model, task, opt, 0, 20)
    assert float(task.loss(model, task.batch("train", 0, None))) < first


def _round_trip(obj) -> dict:
    buffer = io.BytesIO()
    torch.save(obj.state_dict(), buffer)
    buffer.seek(0)
    return torch.load(buffer, weights_only=True)


@pytest.mark.parametrize("method", ["sst", "relora", "galore"])
def test_state_dicts_resume_a_hybonet_run_bit_for_bit(method, small_tree):
    task = small_link_task(small_tree)

    def build(init_seed):
        model = sl.apply(task.make_model(seed=init_seed), method, **OPTIONS[method])
        return model, sl.optimizer(model, lr=1e-2)

    straight, straight_opt = build(0)
    train_steps(straight, task, straight_opt, 0, 20)

    first, first_opt = build(0)
    train_steps(first, task, first_opt, 0, 12)  # off a period boundary (periods of 5)
    model_state, opt_state = _round_trip(first), _round_trip(first_opt)
    resumed, resumed_opt = build(7)  # another init: anything not restored shows
    resumed.load_state_dict(model_state)
    resumed_opt.load_state_dict(opt_state)
    train_steps(resumed, task, resumed_opt, 12, 20)

    a, b = straight.state_dict(), resumed.state_dict()
    assert a.keys() == b.keys()
    assert [k for k in a if not torch.equal(a[k], b[k])] == []


def test_fit_resumes_a_link_prediction_run_from_its_checkpoint(small_tree, tmp_path):
    """Through ``sl.fit``: the negatives come from the loop's generator, which the checkpoint carries."""
    task = small_link_task(small_tree)

    def build(init_seed):
        return sl.apply(task.make_model(seed=init_seed), "sst", **OPTIONS["sst"])

    straight = build(0)
    sl.fit(straight, task, 20, record=False, progress="off")
    sl.fit(build(0), task, 12, record=False, progress="off", checkpoint=tmp_path / "run.pt", checkpoint_every=6)
    resumed = build(3)
    run = sl.fit(resumed, task, 20, record=False, progress="off", checkpoint=tmp_path / "run.pt")
    assert run.steps[-1] == 20
    a, b = straight.state_dict(), resumed.state_dict()
    assert [k for k in a if not torch.equal(a[k], b[k])] == []


def test_truncate_and_spectrum_reach_the_weight_inside_a_lorentz_layer(small_tree):
    task = small_link_task(small_tree, k=2.0)
    model = task.make_model(seed=0)
    inner = model.encoder.layers[0].transform.linear
    torch.testing.assert_close(sl.spectrum(inner), torch.linalg.svdvals(inner.weight.detach()))
    sl.truncate(model, rank=3)
    assert type(model.encoder.layers[0].transform.linear) is not nn.Linear
    z = model.encode(task.features, task.adjacency).detach()
    assert float(lorentz_constraint_error(z, 2.0)) <= 1e-4


@pytest.mark.parametrize("name", ["disease_lp", "disease_nc", "python_classes_lp", "python_classes_nc"])
def test_named_graph_tasks_build_train_and_report_the_papers_metrics(name):
    """``sl.task(name)`` builds the generated graph at the profile's size; SST trains on it; the
    evaluation carries the metrics HGCN/HyboNet report (ROC AUC and AP for links, F1 for nodes)."""
    task = sl.task(name, hidden=16, out=8, **({"max_nodes": 120} if name.startswith("python") else {"num_nodes": 150}))
    model = task.make_model(seed=0)
    sl.apply(model, "sst", rank=2, resample_every=5, warmup=1)
    run = sl.fit(model, task, 12, lr=1e-2, eval_every=12, record=False)
    wanted = ("val_roc_auc", "val_ap", "test_roc_auc", "test_ap") if name.endswith("_lp") else ("val_f1", "test_f1")
    for metric in wanted:
        assert 0.0 <= run.final(metric) <= 1.0, (metric, run.final(metric))
    with torch.no_grad():
        assert lorentz_constraint_error(model.encoder(task.features, task.adjacency), task.k) <= 1e-4
