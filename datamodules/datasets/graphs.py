"""Readers of node-classification graphs: the raw files torch_geometric reads, and a generated CSBM.

Each reader returns a :class:`torch_geometric.data.Data` with ``x`` (float node features,
as stored: binary bag-of-words for every set here), ``edge_index`` (both directions, no
self-loops, coalesced) and ``y`` (class ids), and never downloads: a missing file is a
:class:`FileNotFoundError` naming it and saying where it belongs.

=================  ==========================================================================
set                files under ``root`` (as torch_geometric's ``Planetoid``, ``Amazon``,
                   ``Coauthor`` datasets lay them out, so a PyG download folder works as is)
=================  ==========================================================================
Cora, CiteSeer,    ``<Name>/raw/ind.<name>.{x,tx,allx,y,ty,ally,graph,test.index}`` (the
PubMed             Planetoid release of Yang et al. 2016: pickled scipy.sparse features,
                   pickled one-hot labels, a pickled ``{node: [neighbours]}`` dict and a
                   text file of test node ids; ``<name>`` lower-case)
Computers, Photo   ``<Name>/raw/amazon_electronics_{computers,photo}.npz`` (Shchur et al. 2018)
CS, Physics        ``<Name>/raw/ms_academic_{cs,phy}.npz`` (Shchur et al. 2018)
=================  ==========================================================================

The parsing is torch_geometric's own (``torch_geometric.io.read_planetoid_data`` and
``read_npz``: the same node order, CiteSeer's zero rows for its isolated test nodes, the
binarised Amazon / Coauthor attributes); this module adds the file checks and the errors.

:func:`contextual_sbm` generates the embedded benchmark: a contextual stochastic block model
(Deshpande et al., NeurIPS 2018) with sparse binary class-dependent features.
"""

from __future__ import annotations

import dataclasses
import math
import os
import pickle
from pathlib import Path
from typing import Final

import numpy as np
import torch
from torch_geometric.data import Data

from contraseg.datamodules.datasets.io import DataFormatError, require_file

__all__ = [
    "AMAZON",
    "COAUTHOR",
    "GRAPH_SETS",
    "PLANETOID",
    "GraphSet",
    "contextual_sbm",
    "edge_homophily",
    "read_graph",
    "read_npz_graph",
    "read_planetoid",
]


@dataclasses.dataclass(frozen=True)
class GraphSet:
    """Where a named graph lives under its root and what it should hold.

    Attributes:
        name: The set's name as torch_geometric spells it (folder ``root/<name>/raw``).
        family: ``planetoid`` or ``npz``.
        file_stem: ``ind.<file_stem>.*`` (Planetoid) or ``<file_stem>.npz``.
        nodes: Published node count (checked: a mismatch names the file).
        features: Published feature count.
        classes: Published class count.
    """

    name: str
    family: str
    file_stem: str
    nodes: int
    features: int
    classes: int


PLANETOID: Final = {
    "Cora": GraphSet("Cora", "planetoid", "cora", 2708, 1433, 7),
    "CiteSeer": GraphSet("CiteSeer", "planetoid", "citeseer", 3327, 3703, 6),
    "PubMed": GraphSet("PubMed", "planetoid", "pubmed", 19717, 500, 3),
}
AMAZON: Final = {
    "Computers": GraphSet("Computers", "npz", "amazon_electronics_computers", 13752, 767, 10),
    "Photo": GraphSet("Photo", "npz", "amazon_electronics_photo", 7650, 745, 8),
}
COAUTHOR: Final = {
    "CS": GraphSet("CS", "npz", "ms_academic_cs", 18333, 6805, 15),
    "Physics": GraphSet("Physics", "npz", "ms_academic_phy", 34493, 8415, 5),
}
GRAPH_SETS: Final = {**PLANETOID, **AMAZON, **COAUTHOR}

PLANETOID_PARTS: Final = ("x", "tx", "allx", "y", "ty", "ally", "graph", "test.index")
NPZ_KEYS: Final = ("adj_data", "adj_indices", "adj_indptr", "adj_shape", "attr_data",
                   "attr_indices", "attr_indptr", "attr_shape", "labels")  # fmt: skip


def _where(spec: GraphSet, root: Path) -> str:
    files = (f"ind.{spec.file_stem}.{{{','.join(PLANETOID_PARTS)}}}"
             if spec.family == "planetoid" else f"{spec.file_stem}.npz")  # fmt: skip
    return (f"put the raw files of {spec.name} in {root / spec.name / 'raw'}/{files}, as "
            "torch_geometric's download lays them out; nothing is downloaded")


def read_planetoid(root: str | os.PathLike[str], name: str) -> Data:
    """Cora, CiteSeer or PubMed from ``root/<name>/raw/ind.<name>.*``.

    Returns:
        ``Data(x, edge_index, y)`` plus the public split's ``train_mask`` / ``val_mask`` /
        ``test_mask`` (first ``len(y)`` nodes / next 500 / ``test.index``).

    Raises:
        FileNotFoundError: A raw file is missing (named, with where it belongs).
        DataFormatError: A file does not parse as the Planetoid format (named).
    """
    from torch_geometric.io import read_planetoid_data
    from torch_geometric.io.planetoid import read_file

    spec = PLANETOID[name]
    root = Path(root)
    raw = root / spec.name / "raw"
    for part in PLANETOID_PARTS:
        require_file(raw / f"ind.{spec.file_stem}.{part}", f"{spec.name} raw file",
                     _where(spec, root))  # fmt: skip
    for part in PLANETOID_PARTS:  # one by one, so a bad file is named
        path = raw / f"ind.{spec.file_stem}.{part}"
        try:
            read_file(str(raw), spec.file_stem, part)
        except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError,
                UnicodeDecodeError, ImportError, IndexError, KeyError) as err:  # fmt: skip
            kind = ("a text file of node ids, one per line" if part == "test.index"
                    else "a pickled {node: [neighbours]} dict" if part == "graph"
                    else "a pickled scipy.sparse matrix or numpy array")  # fmt: skip
            raise DataFormatError(f"{path}: expected {kind} (Planetoid format): {err}") from err
    try:
        data = read_planetoid_data(str(raw), spec.file_stem)
    except (ValueError, IndexError, RuntimeError) as err:
        raise DataFormatError(f"{raw}: the files of {spec.name} do not fit together "
                              f"(node counts of ind.{spec.file_stem}.*): {err}"
                              ) from err  # fmt: skip
    data.x = data.x.float()
    return _checked(data, raw)


def read_npz_graph(path: str | os.PathLike[str]) -> Data:
    """An Amazon / Coauthor ``.npz`` (CSR adjacency and attributes, ``labels``).

    The adjacency is made undirected without self-loops and the attributes binarised
    (``x > 0``), as torch_geometric's ``read_npz`` does.

    Raises:
        DataFormatError: The file is not an ``.npz`` archive or lacks a key (named).
    """
    from torch_geometric.io import read_npz

    path = Path(path)
    try:
        with np.load(path, allow_pickle=False) as archive:
            missing = [k for k in NPZ_KEYS if k not in archive.files]
    except (OSError, ValueError) as err:
        raise DataFormatError(f"{path}: not a readable .npz archive: {err}") from err
    if missing:
        raise DataFormatError(f"{path}: missing keys {missing}; expected the CSR arrays "
                              f"{list(NPZ_KEYS)} of Shchur et al.'s release")  # fmt: skip
    try:
        data = read_npz(str(path), to_undirected=True)
    except (ValueError, IndexError, TypeError) as err:
        raise DataFormatError(f"{path}: the CSR arrays are inconsistent: {err}") from err
    data.x = data.x.float()
    return _checked(data, path)


def read_graph(root: str | os.PathLike[str], name: str) -> Data:
    """Any set of :data:`GRAPH_SETS` by name, from its raw files under ``root``."""
    if name not in GRAPH_SETS:
        raise ValueError(f"unknown graph set {name!r}; one of {sorted(GRAPH_SETS)}")
    spec = GRAPH_SETS[name]
    if spec.family == "planetoid":
        return read_planetoid(root, name)
    path = Path(root) / spec.name / "raw" / f"{spec.file_stem}.npz"
    require_file(path, f"{spec.name} raw file", _where(spec, Path(root)))
    return read_npz_graph(path)


def _checked(data: Data, where: Path) -> Data:
    n = data.num_nodes
    if data.x.dim() != 2 or data.x.shape[0] != n or data.y.shape != (n,):
        raise DataFormatError(f"{where}: {tuple(data.x.shape)} features and "
                              f"{tuple(data.y.shape)} labels for {n} nodes")  # fmt: skip
    if data.edge_index.numel() and int(data.edge_index.max()) >= n:
        raise DataFormatError(f"{where}: an edge names node {int(data.edge_index.max())} "
                              f"of a graph of {n} nodes")  # fmt: skip
    return Data(x=data.x, edge_index=data.edge_index, y=data.y.long(),
                **{k: data[k] for k in ("train_mask", "val_mask", "test_mask") if k in data})


def edge_homophily(edge_index: torch.Tensor, y: torch.Tensor) -> float:
    """Fraction of edges joining nodes of the same class (Zhu et al. 2020's edge homophily)."""
    if edge_index.numel() == 0:
        return float("nan")
    return float((y[edge_index[0]] == y[edge_index[1]]).float().mean())


def contextual_sbm(
    num_nodes: int = 2000,
    num_classes: int = 5,
    num_features: int = 500,
    avg_degree: float = 6.0,
    homophily: float = 0.7,
    words_per_node: int = 20,
    feature_signal: float = 0.2,
    seed: int = 0,
) -> Data:
    """A contextual stochastic block model with sparse binary class-dependent features.

    Classes are balanced (node ``i`` has class ``i mod C`` before a seeded shuffle).  Edges:
    ``num_nodes * avg_degree / 2`` undirected draws, each joining a uniform node to another
    node of its class with probability ``homophily`` and to a node of another class
    otherwise (multi-edges and self-loops removed), i.e. an SBM whose within- and
    between-class edge probabilities are ``p_in ~ h d C / n`` and
    ``p_out ~ (1 - h) d C / (n (C - 1))``.  Features: each class owns ``num_features / C``
    "topic" words; a node draws ``words_per_node`` words, each from its class's topic with
    probability ``feature_signal`` and uniformly from the whole vocabulary otherwise (a
    binary bag of words, like the citation sets').  A single node's words say little about
    its class; averaging over same-class neighbours (what a GCN does) says much more.

    Args:
        num_nodes: Nodes.
        num_classes: Classes.
        num_features: Vocabulary size (a multiple of ``num_classes`` is not needed).
        avg_degree: Mean degree.
        homophily: Expected edge homophily (``1 / C``: edges independent of classes).
        words_per_node: Words drawn per node (with replacement; the row is binary).
        feature_signal: Probability that a word comes from the node's class topic.
        seed: Everything is a function of it.

    Returns:
        ``Data(x, edge_index, y)``.
    """
    if not 0.0 <= homophily <= 1.0 or not 0.0 <= feature_signal <= 1.0:
        raise ValueError("homophily and feature_signal are probabilities")
    if num_classes < 2 or num_nodes < 2 * num_classes or num_features < num_classes:
        raise ValueError(f"a CSBM of {num_nodes} nodes, {num_classes} classes and "
                         f"{num_features} features is too small")  # fmt: skip
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(num_nodes) % num_classes
    y = y[torch.randperm(num_nodes, generator=g)]
    members = [torch.nonzero(y == c).flatten() for c in range(num_classes)]
    # edges: a uniform source; a same-class target w.p. h, else a uniform other-class one
    m = int(round(num_nodes * avg_degree / 2))
    src = torch.randint(num_nodes, (m,), generator=g)
    same = torch.rand(m, generator=g) < homophily
    offset = torch.randint(1, num_classes, (m,), generator=g)
    target_class = torch.where(same, y[src], (y[src] + offset) % num_classes)
    sizes = torch.tensor([len(v) for v in members])
    pick = (torch.rand(m, generator=g) * sizes[target_class]).long()
    starts = torch.cumsum(sizes, 0) - sizes
    order = torch.cat(members)
    dst = order[starts[target_class] + pick]
    keep = src != dst
    edge_index = torch.stack([src[keep], dst[keep]])
    from torch_geometric.utils import coalesce, to_undirected

    edge_index = coalesce(to_undirected(edge_index, num_nodes=num_nodes), num_nodes=num_nodes)
    # features: topic words w.p. feature_signal, else any word
    topic = math.ceil(num_features / num_classes)
    draws = torch.randint(num_features, (num_nodes, words_per_node), generator=g)
    topical = torch.rand(num_nodes, words_per_node, generator=g) < feature_signal
    topic_word = (y[:, None] * topic + torch.randint(topic, (num_nodes, words_per_node),
                                                     generator=g)) % num_features  # fmt: skip
    words = torch.where(topical, topic_word, draws)
    x = torch.zeros(num_nodes, num_features)
    x.scatter_(1, words, 1.0)
    return Data(x=x, edge_index=edge_index, y=y)
