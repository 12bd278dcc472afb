"""The graph wing: raw formats, the CSBM, subgraph batches, GRACE / ARIEL, attacks, evaluation."""

from __future__ import annotations

import math
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from graph_files import write_graph_npz, write_planetoid

from contraseg.datamodules.datasets.graphs import contextual_sbm, edge_homophily, read_graph
from contraseg.datamodules.datasets.io import DataFormatError
from contraseg.datamodules.graphs import CSBMDataModule, PlanetoidDataModule
from contraseg.lightning_modules import ARIEL, GRACE
from contraseg.lightning_modules.components.graph_attack import (
    adversarial_view,
    dense_adjacency,
    flip,
    pgd_perturbation,
    project_edge_budget,
    random_edge_flips,
    surrogate_edge_attack,
)
from contraseg.lightning_modules.components.graph_encoders import (
    GCNEncoder,
    build_graph_encoder,
    gcn_normalize_dense,
)
from contraseg.lightning_modules.evaluators.node_classification import (
    NodeClassificationProtocol,
    node_classification_accuracy,
)
from contraseg.lightning_modules.losses.graph_contrast import (
    grace_loss,
    information_regularizer,
    view_similarity,
)
from contraseg.seeding import SampleKey


def _edge_set(edge_index: torch.Tensor) -> set[tuple[int, int]]:
    return {(int(a), int(b)) for a, b in edge_index.T.tolist() if a < b}


# ------------------------------------------------------------------ readers (real raw formats)
@pytest.mark.parametrize(("name", "isolated"), [("Cora", ()), ("CiteSeer", (530, 545))])
def test_planetoid_reader_returns_the_written_graph(name: str, isolated: tuple[int, ...],
                                                    tmp_path: Path) -> None:  # fmt: skip
    truth = write_planetoid(tmp_path, name, nodes=566, isolated_test=isolated, seed=3)
    data = read_graph(tmp_path, name)
    assert data.num_nodes == 566
    assert torch.equal(data.x, torch.from_numpy(truth["x"]))  # test rows back in node order
    assert torch.equal(data.y, torch.from_numpy(truth["y"]).long())
    assert _edge_set(data.edge_index) == truth["edges"]
    assert int(data.train_mask.sum()) == truth["train"]
    assert torch.nonzero(data.test_mask).flatten().tolist() == truth["test"]
    both = {(int(a), int(b)) for a, b in data.edge_index.T.tolist()}
    assert all((b, a) in both for a, b in both) and all(a != b for a, b in both)


@pytest.mark.parametrize("name", ["Computers", "Photo", "CS", "Physics"])
def test_npz_reader_symmetrises_drops_loops_and_binarises(name: str, tmp_path: Path) -> None:
    truth = write_graph_npz(tmp_path, name, seed=5)
    data = read_graph(tmp_path, name)
    assert torch.equal(data.x, torch.from_numpy(truth["x"]))
    assert torch.equal(data.y, torch.from_numpy(truth["y"]).long())
    assert _edge_set(data.edge_index) == truth["edges"]
    assert data.edge_index.shape[1] == 2 * len(truth["edges"])  # both directions, no loop


def test_a_missing_raw_file_is_named_with_where_it_belongs(tmp_path: Path) -> None:
    write_planetoid(tmp_path, "Cora")
    (tmp_path / "Cora" / "raw" / "ind.cora.graph").unlink()
    with pytest.raises(FileNotFoundError, match=r"ind\.cora\.graph.*put the raw files of Cora in"):
        read_graph(tmp_path, "Cora")
    with pytest.raises(FileNotFoundError, match=r"ms_academic_phy\.npz.*nothing is downloaded"):
        read_graph(tmp_path, "Physics")
    with pytest.raises(FileNotFoundError, match="data.root"):
        PlanetoidDataModule(root=str(tmp_path / "nowhere"))


def test_malformed_raw_files_are_named(tmp_path: Path) -> None:
    write_planetoid(tmp_path, "Cora")
    (tmp_path / "Cora" / "raw" / "ind.cora.tx").write_bytes(b"not a pickle")
    with pytest.raises(DataFormatError, match=r"ind\.cora\.tx: expected a pickled scipy"):
        read_graph(tmp_path, "Cora")
    write_graph_npz(tmp_path, "Photo")
    path = tmp_path / "Photo" / "raw" / "amazon_electronics_photo.npz"
    with np.load(path) as archive:
        kept = {k: archive[k] for k in archive.files if k != "labels"}
    np.savez(path, **kept)
    missing = r"amazon_electronics_photo\.npz: missing keys \['labels'\]"
    with pytest.raises(DataFormatError, match=missing):
        read_graph(tmp_path, "Photo")
    path.write_bytes(b"garbage")
    with pytest.raises(DataFormatError, match="not a readable .npz"):
        read_graph(tmp_path, "Photo")


def test_fixture_pickles_are_python2_protocol(tmp_path: Path) -> None:
    """The release's files are protocol-2 pickles read with ``encoding='latin1'``."""
    write_planetoid(tmp_path, "PubMed", nodes=520, features=4)
    raw = (tmp_path / "PubMed" / "raw" / "ind.pubmed.graph").read_bytes()
    assert raw[:2] == b"\x80\x02"
    assert isinstance(pickle.loads(raw, encoding="latin1"), dict)


# ------------------------------------------------------------------ the CSBM benchmark
def test_csbm_is_a_function_of_its_seed_with_the_asked_statistics() -> None:
    a, b = contextual_sbm(seed=4), contextual_sbm(seed=4)
    assert torch.equal(a.edge_index, b.edge_index) and torch.equal(a.x, b.x)
    assert not torch.equal(a.edge_index, contextual_sbm(seed=5).edge_index)
    assert torch.bincount(a.y).tolist() == [400] * 5  # balanced
    assert abs(edge_homophily(a.edge_index, a.y) - 0.7) < 0.03
    assert abs(a.edge_index.shape[1] / 2000 - 6.0) < 0.3  # mean degree
    assert set(a.x.unique().tolist()) == {0.0, 1.0} and int(a.x.sum(1).max()) <= 20
    low = contextual_sbm(num_nodes=600, homophily=0.2, seed=1)
    assert edge_homophily(low.edge_index, low.y) < 0.3


def test_csbm_raw_features_are_far_below_propagated_ones() -> None:
    """The benchmark's point: a node's words alone say little, its neighbourhood much more."""
    g = contextual_sbm(seed=0)
    protocol = NodeClassificationProtocol(repeats=2, folds=1, c_grid=(1.0,))
    raw, _ = node_classification_accuracy(g.x, g.y, protocol)
    a = gcn_normalize_dense(dense_adjacency(g.edge_index, g.num_nodes))
    propagated, _ = node_classification_accuracy(a @ (a @ g.x), g.y, protocol)
    assert raw < 0.55 and propagated > raw + 0.3, (raw, propagated)


# ------------------------------------------------------------------ data module
def test_subgraph_batches_are_induced_relabelled_and_seeded() -> None:
    dm = CSBMDataModule(num_nodes=300, subgraph_nodes=60, steps_per_epoch=3)
    steps = dm.train_dataloader().dataset
    first = steps[SampleKey(1, 0, 1234)]
    assert torch.equal(first["node_index"], steps[SampleKey(1, 0, 1234)]["node_index"])
    assert not torch.equal(first["node_index"], steps[SampleKey(1, 1, 99)]["node_index"])
    nodes = first["node_index"]
    assert first["num_nodes"] == 60 and torch.equal(nodes, nodes.unique())
    original = _edge_set(dm.graph.edge_index)
    mapped = {(int(nodes[a]), int(nodes[b])) for a, b in first["edge_index"].T.tolist() if a < b}
    chosen = set(nodes.tolist())
    assert mapped == {(a, b) for a, b in original if a in chosen and b in chosen}
    batch = dm.on_after_batch_transfer(dict(first), 0)
    assert torch.equal(batch["x"], dm.graph.x[nodes]) and torch.equal(batch["y"], dm.graph.y[nodes])
    whole = dm.on_after_batch_transfer(dict(dm.val_dataloader().dataset[0]), 0)
    assert whole["x"].shape[0] == 300 and whole["edge_index"] is dm.graph.edge_index


def test_sampling_without_isolated_nodes_and_the_feature_switch(tmp_path: Path) -> None:
    truth = write_planetoid(tmp_path, "CiteSeer", nodes=566, isolated_test=(530, 545))
    dm = PlanetoidDataModule(root=str(tmp_path), name="CiteSeer", subgraph_nodes=600,
                             sample_isolated=False, normalize_features=False)  # fmt: skip
    nodes = dm.train_dataloader().dataset[SampleKey(0, 0, 7)]["node_index"]
    with_edges = {i for edge in truth["edges"] for i in edge}
    assert set(nodes.tolist()) == with_edges and not {530, 545} & with_edges
    assert set(dm.graph.x.unique().tolist()) <= {0.0, 1.0}
    normalised = PlanetoidDataModule(root=str(tmp_path), name="CiteSeer").graph.x
    rows = normalised.sum(1)
    assert torch.allclose(rows[rows > 0], torch.ones(int((rows > 0).sum())))


# ------------------------------------------------------------------ losses vs naive loops
def _naive_grace(h1: torch.Tensor, h2: torch.Tensor, tau: float) -> torch.Tensor:
    """GRACE's official ``semi_loss`` (exp, sums, log), both directions, as a loop."""
    u, v = F.normalize(h1.double(), dim=1), F.normalize(h2.double(), dim=1)

    def semi(a: torch.Tensor, b: torch.Tensor) -> list[float]:
        out = []
        for i in range(len(a)):
            between = sum(math.exp(float(a[i] @ b[k]) / tau) for k in range(len(a)))
            within = sum(math.exp(float(a[i] @ a[k]) / tau) for k in range(len(a)) if k != i)
            out.append(-math.log(math.exp(float(a[i] @ b[i]) / tau) / (between + within)))
        return out

    return torch.tensor([(x + y) / 2 for x, y in zip(semi(u, v), semi(v, u), strict=True)])


def test_grace_loss_equals_the_official_formula_and_is_chunk_invariant() -> None:
    g = torch.Generator().manual_seed(0)
    h1, h2 = torch.randn(9, 5, generator=g), torch.randn(9, 5, generator=g)
    expected = _naive_grace(h1, h2, 0.4).float()
    assert torch.allclose(grace_loss(h1, h2, 0.4), expected, atol=1e-5)
    assert torch.allclose(grace_loss(h1, h2, 0.4, chunk_size=4), expected, atol=1e-5)
    tiny = grace_loss(h1, h2, 1e-3)  # exp(1000) overflows the naive form, not this one
    assert torch.isfinite(tiny).all()


def test_information_regularizer_is_the_official_hinge_with_stop_gradients() -> None:
    g = torch.Generator().manual_seed(1)
    h1, h2, h = (torch.randn(7, 4, generator=g, requires_grad=True) for _ in range(3))
    s12, s1z, s2z = (view_similarity(a, b, 0.5) for a, b in ((h1, h2), (h1, h), (h2, h)))
    s12d, s1zd, s2zd = s12.detach(), s1z.detach(), s2z.detach()
    naive = sum(max(0.0, 2 * float(s12d[i]) - float(s1zd[i]) - float(s2zd[i]))
                for i in range(7)) / 7
    reg = information_regularizer(s12, s1z, s2z)
    assert abs(float(reg) - naive) < 1e-5
    cos = F.cosine_similarity(h1, h2, dim=1)
    assert torch.allclose(s12, torch.exp(cos / 0.5))
    reg.backward()
    assert h.grad is None or float(h.grad.abs().sum()) == 0.0  # z enters only through sg[.]


# ------------------------------------------------------------------ encoder
def test_dense_and_sparse_gcn_paths_agree_and_match_kipf_welling() -> None:
    torch.manual_seed(0)
    g = contextual_sbm(num_nodes=50, num_features=12, seed=2)
    encoder = GCNEncoder(12, 8, num_layers=3, activation="prelu")
    adj = dense_adjacency(g.edge_index, 50)
    assert torch.allclose(encoder(g.x, g.edge_index), encoder.forward_dense(g.x, adj), atol=1e-5)
    a = adj + torch.eye(50)
    d = a.sum(1).rsqrt()
    assert torch.allclose(gcn_normalize_dense(adj), d[:, None] * a * d[None, :])
    assert [tuple(c.lin.weight.shape) for c in encoder.convs] == [(16, 12), (16, 16), (8, 16)]
    assert build_graph_encoder("features", in_channels=12)(g.x, g.edge_index) is g.x
    with pytest.raises(ValueError, match="model.encoder must be one of"):
        build_graph_encoder("gat", in_channels=12)


# ------------------------------------------------------------------ attacks
def _exact_projection(a: torch.Tensor, budget: float) -> torch.Tensor:
    clipped = a.double().clamp(0, 1)
    if float(clipped.sum()) <= budget:
        return clipped
    lo, hi = float(a.min()) - 1, float(a.max())
    for _ in range(200):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if float((a.double() - mid).clamp(0, 1).sum()) > budget else (lo, mid)
    return (a.double() - hi).clamp(0, 1)


@pytest.mark.parametrize("budget", [0.5, 3.0, 7.5, 1e6])
def test_bisection_projection_meets_the_budget_and_the_box(budget: float) -> None:
    a = torch.randn(40, generator=torch.Generator().manual_seed(3)) * 2
    p = project_edge_budget(a, budget, tol=1e-6)
    assert float(p.min()) >= 0.0 and float(p.max()) <= 1.0
    assert float(p.sum()) <= budget + 1e-4
    assert torch.allclose(p.double(), _exact_projection(a, budget), atol=1e-4)
    if budget < float(a.clamp(0, 1).sum()):
        assert float(p.sum()) == pytest.approx(budget, abs=1e-3)  # the budget binds
    else:
        assert torch.equal(p, a.clamp(0, 1))  # already feasible: only clipped


def test_flip_adds_and_removes_symmetrically() -> None:
    adj = dense_adjacency(torch.tensor([[0, 1], [1, 0]]), 3)
    upper = torch.triu_indices(3, 3, 1)  # (0,1), (0,2), (1,2)
    out = flip(adj, upper, torch.tensor([1.0, 1.0, 0.0]))
    assert out.tolist() == [[0, 0, 1], [0, 0, 0], [1, 0, 0]]


def _attack_setup() -> tuple:
    torch.manual_seed(0)
    g = contextual_sbm(num_nodes=80, num_features=30, words_per_node=6, seed=3)
    model = GRACE(in_channels=30, hidden_channels=16,
                  projector={"hidden_dims": [16], "out_dim": 16, "batch_norm": False,
                             "activation": "elu"})  # fmt: skip
    model.eval()
    with torch.no_grad():
        target = model.project(model.embed_graph(g.x, g.edge_index))

    def loss(z: torch.Tensor) -> torch.Tensor:
        return grace_loss(target, model.project(z), 0.5).mean()

    return g, model, loss


def test_a_pgd_step_increases_the_attacked_loss() -> None:
    g, model, loss = _attack_setup()
    adj = dense_adjacency(g.edge_index, 80)
    budget = g.edge_index.shape[1] * 0.2 / 2
    clean = float(loss(model.encoder.forward_dense(g.x, adj)))
    for edge_step, feature_step in ((200.0, 0.0), (0.0, 0.01), (200.0, 0.01)):
        s, delta = pgd_perturbation(model.encoder.forward_dense, loss, g.x, adj, budget, steps=1,
                                    edge_step=edge_step, feature_step=feature_step)  # fmt: skip
        upper = torch.triu_indices(80, 80, 1)
        attacked = float(loss(model.encoder.forward_dense(g.x + delta, flip(adj, upper, s))))
        assert attacked > clean, (edge_step, feature_step, attacked, clean)
        assert float(s.sum()) <= budget + 1e-3 and float(delta.abs().max()) <= 0.04 + 1e-7
    x_adv, adj_adv = adversarial_view(model.encoder.forward_dense, loss, g.x, g.edge_index,
                                      generator=torch.Generator().manual_seed(0))  # fmt: skip
    assert torch.equal(adj_adv, adj_adv.T) and set(adj_adv.unique().tolist()) <= {0.0, 1.0}
    assert float((adj_adv - adj).abs().sum() / 2) > 0 and float(adj_adv.diagonal().sum()) == 0


@pytest.mark.slow
def test_evaluation_attacks_flip_the_asked_share_and_the_surrogate_hurts_more() -> None:
    g = contextual_sbm(seed=6)  # the benchmark's 2,000 nodes (the attack is seconds)
    undirected = g.edge_index.shape[1] // 2
    flipped = random_edge_flips(g.edge_index, 2000, 0.2, seed=1)
    changed = len(_edge_set(flipped) ^ _edge_set(g.edge_index))
    assert changed == pytest.approx(0.2 * undirected, abs=3)  # repeats of a pair flip once
    assert torch.equal(flipped, random_edge_flips(g.edge_index, 2000, 0.2, seed=1))
    attacked = surrogate_edge_attack(g.x, g.edge_index, g.y, 0.2, seed=1)
    assert len(_edge_set(attacked) ^ _edge_set(g.edge_index)) <= 0.2 * undirected + 1
    protocol = NodeClassificationProtocol(repeats=2, folds=1, c_grid=(1.0,))

    def propagated_accuracy(edges: torch.Tensor) -> float:
        a = gcn_normalize_dense(dense_adjacency(edges, 2000))
        return node_classification_accuracy(a @ (a @ g.x), g.y, protocol)[0]

    clean, uniform, pgd = (propagated_accuracy(e) for e in (g.edge_index, flipped, attacked))
    assert pgd < uniform - 0.05 and uniform < clean, (clean, uniform, pgd)
    with pytest.raises(ValueError, match="max_nodes"):
        surrogate_edge_attack(g.x, g.edge_index, g.y, 0.2, max_nodes=100)


# ------------------------------------------------------------------ evaluation
def test_the_protocol_scores_a_separable_toy_perfectly_and_noise_at_chance() -> None:
    g = torch.Generator().manual_seed(0)
    y = torch.arange(300) % 3
    separable = F.one_hot(y, 3).float() + 0.05 * torch.randn(300, 3, generator=g)
    protocol = NodeClassificationProtocol(repeats=3)
    mean, std = node_classification_accuracy(separable, y, protocol)
    assert mean == 1.0 and std == 0.0
    noise, _ = node_classification_accuracy(torch.randn(300, 8, generator=g), y, protocol)
    assert 0.2 < noise < 0.47
    official = NodeClassificationProtocol(repeats=20, folds=5,
                                          c_grid=tuple(2.0**k for k in range(-10, 10)))
    assert official.c_grid[0] == 2**-10 and len(official.c_grid) == 20


# ------------------------------------------------------------------ tasks
def test_ariel_without_its_terms_is_grace_and_its_terms_are_finite() -> None:
    dm = CSBMDataModule(num_nodes=120, num_features=30, subgraph_nodes=50)
    batch = dm.on_after_batch_transfer(dm.train_dataloader().dataset[SampleKey(0, 0, 3)], 0)
    kwargs = {"in_channels": 30, "hidden_channels": 16,
              "projector": {"hidden_dims": [16], "out_dim": 16, "batch_norm": False,
                            "activation": "elu"}}  # fmt: skip
    torch.manual_seed(0)
    grace = GRACE(**kwargs)
    torch.manual_seed(0)
    plain = ARIEL(adversarial_weight=0.0, **kwargs)
    torch.manual_seed(5)
    expected = grace.training_loss(batch).loss
    torch.manual_seed(5)
    assert torch.equal(plain.training_loss(batch).loss, expected)
    torch.manual_seed(0)
    full = ARIEL(adversarial_weight=0.5, regularizer_weight=1.0, attack_steps=2, **kwargs)
    out = full.training_loss(batch)
    assert {"contrast", "regularizer", "adversarial", "flipped_edges"} <= set(out.logs)
    assert all(torch.isfinite(v) for v in out.logs.values()) and full.training
    out.loss.backward()
    assert all(p.grad is not None for p in full.encoder.parameters())


def test_the_features_encoder_refuses_to_train_and_decay_covers_every_parameter() -> None:
    model = GRACE(in_channels=10, encoder="features")
    with pytest.raises(ValueError, match="nothing to train"):
        model.configure_optimizers()
    groups = GRACE(in_channels=10, activation="prelu").parameter_groups()  # official Adam(all)
    assert len(groups) == 1 and "weight_decay" not in groups[0]
    assert len(groups[0]["params"]) == len(list(GRACE(in_channels=10,
                                                      activation="prelu").parameters()))


def test_official_recipes_in_the_configs() -> None:
    """ARIEL's node_cls/config.yaml (Shengyu-Feng/ARIEL e761cb8), per data set."""
    from contraseg.experiments.compose import compose_file

    official = {  # lr, h, p, act, de1, de2, df1, df2, tau, steps, eps, alpha, beta, lamb
        "cora": (5e-4, 128, 128, "relu", .2, .4, .3, .4, .4, 300, .5, 200, .01, 0),
        "citeseer": (1e-3, 256, 256, "prelu", .2, 0, .3, .2, .9, 200, 1, 50, .01, 0),
        "amazon_computers": (.01, 128, 128, "rrelu", .6, .3, .2, .3, .2, 2000, 1, 50, .01, 0),
        "amazon_photo": (.1, 256, 64, "relu", .3, .5, .1, .1, .3, 2000, .5, 200, .01, 0),
        "coauthor_cs": (5e-4, 256, 256, "rrelu", .3, .2, .3, .4, .4, 1000, 2, 50, .001, 2),
        "coauthor_physics": (.01, 128, 64, "rrelu", .4, .1, .1, .4, .5, 1500, 1, 50, .001, 0),
    }
    root = Path(__file__).resolve().parents[1] / "experiments" / "configs"
    for stem, values in official.items():
        cfg = compose_file(root / f"ariel_{stem}.yaml")
        m, d = cfg["model"]["init_args"], cfg["data"]["init_args"]
        steps = cfg["trainer"]["max_epochs"] * d["steps_per_epoch"]
        got = (m["lr"], m["hidden_channels"], m["projector"]["hidden_dims"][0], m["activation"],
               *m["drop_edge"], *m["drop_feature"], m["temperature"], steps,
               m["adversarial_weight"], m["edge_step"], m["feature_step"],
               m["regularizer_weight"])  # fmt: skip
        assert list(got) == list(values), stem
        assert m["projector"]["out_dim"] == m["hidden_channels"] and d["subgraph_nodes"] == 500
        assert m["evaluation"]["repeats"] == 20 and len(m["evaluation"]["c_grid"]) == 20
