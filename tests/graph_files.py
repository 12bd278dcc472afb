"""Tiny graphs written in the raw formats torch_geometric reads (Planetoid pickles, Shchur npz).

Each writer returns the graph it wrote (``x``, ``y``, undirected ``edges`` as a set of
``(i, j)`` with ``i < j``), so tests compare the readers against what is on disk.
"""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any

import numpy as np
import scipy.sparse as sp

PLANETOID_FILES = {"Cora": "cora", "CiteSeer": "citeseer", "PubMed": "pubmed"}
NPZ_FILES = {"Computers": "amazon_electronics_computers", "Photo": "amazon_electronics_photo",
             "CS": "ms_academic_cs", "Physics": "ms_academic_phy"}  # fmt: skip


def _dump(path: Path, obj: Any) -> None:
    with path.open("wb") as f:
        pickle.dump(obj, f, protocol=2)  # the release's pickles are Python 2 era


def _one_hot(y: np.ndarray, classes: int) -> np.ndarray:
    out = np.zeros((len(y), classes), dtype=np.int32)
    out[np.arange(len(y)), y] = 1
    return out


def write_planetoid(root: Path, name: str = "Cora", nodes: int = 560, features: int = 12,
                    classes: int = 3, train: int = 10, labelled: int = 520,
                    isolated_test: tuple[int, ...] = (),
                    seed: int = 0) -> dict[str, Any]:  # fmt: skip
    """``root/<name>/raw/ind.<name>.*`` of a random graph; the truth as the reader should see it.

    The format's public split puts 500 validation nodes after the ``train`` ones, so a
    graph needs at least ``train + 500`` nodes before its test nodes (the defaults).

    Nodes ``labelled..nodes-1`` are the test nodes, listed shuffled in ``test.index``;
    ``isolated_test`` ids (CiteSeer's quirk) are left out of ``tx`` / ``ty`` / ``test.index``
    and get no edges, so the reader pads them with zero features and class 0.
    """
    rng = np.random.default_rng(seed)
    x = (rng.random((nodes, features)) < 0.3).astype(np.float32)
    y = rng.integers(0, classes, nodes)
    y[:classes] = np.arange(classes)  # every class present
    for i in isolated_test:
        x[i], y[i] = 0.0, 0
    connected = [i for i in range(nodes) if i not in isolated_test]
    edges: set[tuple[int, int]] = set()
    while len(edges) < 2 * nodes:
        a, b = rng.choice(connected, 2, replace=False)
        edges.add((int(min(a, b)), int(max(a, b))))
    graph: dict[int, list[int]] = {i: [] for i in connected}
    for a, b in sorted(edges):
        graph[a].append(b)
        graph[b].append(a)
    test_ids = [i for i in range(labelled, nodes) if i not in isolated_test]
    rng.shuffle(test_ids)
    raw = root / name / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    stem = PLANETOID_FILES[name]
    _dump(raw / f"ind.{stem}.x", sp.csr_matrix(x[:train]))
    _dump(raw / f"ind.{stem}.y", _one_hot(y[:train], classes))
    _dump(raw / f"ind.{stem}.allx", sp.csr_matrix(x[:labelled]))
    _dump(raw / f"ind.{stem}.ally", _one_hot(y[:labelled], classes))
    _dump(raw / f"ind.{stem}.tx", sp.csr_matrix(x[test_ids]))
    _dump(raw / f"ind.{stem}.ty", _one_hot(y[test_ids], classes))
    _dump(raw / f"ind.{stem}.graph", graph)
    (raw / f"ind.{stem}.test.index").write_text("".join(f"{i}\n" for i in test_ids))
    return {"x": x, "y": y, "edges": edges, "train": train, "test": sorted(test_ids)}


def write_graph_npz(root: Path, name: str = "Computers", nodes: int = 30, features: int = 10,
                    classes: int = 3, seed: int = 0) -> dict[str, Any]:  # fmt: skip
    """``root/<name>/raw/<file>.npz`` in Shchur et al.'s CSR layout.

    The adjacency holds one self-loop and only one direction of each edge, and the
    attributes are counts (some 2.0): the reader must symmetrise, drop the loop and binarise.
    """
    rng = np.random.default_rng(seed)
    counts = rng.integers(0, 3, (nodes, features)).astype(np.float32) * (
        rng.random((nodes, features)) < 0.4)  # fmt: skip
    y = rng.integers(0, classes, nodes)
    y[:classes] = np.arange(classes)
    edges: set[tuple[int, int]] = set()
    while len(edges) < 2 * nodes:
        a, b = rng.choice(nodes, 2, replace=False)
        edges.add((int(min(a, b)), int(max(a, b))))
    rows = [a for a, _ in sorted(edges)] + [0]
    cols = [b for _, b in sorted(edges)] + [0]  # a self-loop
    adj = sp.csr_matrix((np.ones(len(rows), np.float32), (rows, cols)), shape=(nodes, nodes))
    attr = sp.csr_matrix(counts)
    raw = root / name / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    np.savez(raw / f"{NPZ_FILES[name]}.npz", adj_data=adj.data, adj_indices=adj.indices,
             adj_indptr=adj.indptr, adj_shape=np.array(adj.shape), attr_data=attr.data,
             attr_indices=attr.indices, attr_indptr=attr.indptr,
             attr_shape=np.array(attr.shape), labels=y, node_names=np.arange(nodes))  # fmt: skip
    return {"x": (counts > 0).astype(np.float32), "y": y, "edges": edges}


def write_graph_root(root: Path) -> Path:
    """Every graph set of the data modules under one root (torch_geometric's layout)."""
    write_planetoid(root, "Cora")
    write_planetoid(root, "CiteSeer", nodes=566, isolated_test=(530, 545), seed=1)
    write_planetoid(root, "PubMed", nodes=550, features=8, seed=2)
    for k, name in enumerate(NPZ_FILES):
        write_graph_npz(root, name, seed=10 + k)
    return root
