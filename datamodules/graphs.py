"""Graph DataModules: one node-classification graph, served whole or as sampled subgraphs.

The graph is read once (:mod:`contraseg.datamodules.datasets.graphs`) and its features and
labels are kept on the training device; a batch carries only node ids and edges
(``{"node_index": (n,) | None, "edge_index": (2, E), "num_nodes": n}``), and
:meth:`GraphDataModule.on_after_batch_transfer` gathers ``x`` and ``y`` there.  So a step on
Coauthor-Physics (34,493 x 8,415 features, 1.2 GB as float32) copies no features.

* training: ``steps_per_epoch`` batches per epoch, each the whole graph
  (``subgraph_nodes: null``, GRACE) or the subgraph induced by ``subgraph_nodes`` uniform
  random nodes, relabelled ``0..n-1`` (ARIEL's 500 per step).  The nodes of step ``i`` of
  epoch ``e`` are a function of ``(seed, e, i)`` (:class:`contraseg.seeding.SeededSampler`),
  so a resumed run draws the same subgraphs;
* validation / test: the whole graph, with ``y``: the evaluator embeds every node.

One official training "epoch" of GRACE / ARIEL is one optimiser step; the configs group
them (``steps_per_epoch``) and count them with ``trainer.max_steps``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import lightning as L
import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset
from torch_geometric.data import Data
from torch_geometric.transforms import NormalizeFeatures
from torch_geometric.utils import degree, subgraph

from contraseg.datamodules.datasets.graphs import (
    AMAZON,
    COAUTHOR,
    PLANETOID,
    contextual_sbm,
    read_graph,
)
from contraseg.datamodules.datasets.io import require_dir
from contraseg.datamodules.sampling import eval_loader, train_loader
from contraseg.seeding import SampleKey

__all__ = [
    "AmazonDataModule",
    "CSBMDataModule",
    "CoauthorDataModule",
    "GraphDataModule",
    "PlanetoidDataModule",
]


def _single(items: list[dict[str, Any]]) -> dict[str, Any]:
    """Collate of a batch of one graph: the item itself."""
    if len(items) != 1:
        raise ValueError(f"graph batches hold one graph, got {len(items)}")
    return items[0]


class _SubgraphSteps(Dataset):
    """``steps`` training batches: the whole graph, or a seeded induced subgraph per key."""

    def __init__(self, edge_index: Tensor, num_nodes: int, steps: int, nodes: int | None,
                 pool: Tensor) -> None:  # fmt: skip
        self.edge_index, self.num_nodes, self.steps = edge_index, num_nodes, steps
        self.nodes, self.pool = nodes, pool

    def __len__(self) -> int:
        return self.steps

    def __getitem__(self, key: int | SampleKey) -> dict[str, Any]:
        if self.nodes is None:
            return {"node_index": None, "edge_index": self.edge_index, "num_nodes": self.num_nodes}
        seed = key.seed if isinstance(key, SampleKey) else int(key)
        g = torch.Generator().manual_seed(seed)
        take = min(self.nodes, len(self.pool))
        nodes = self.pool[torch.randperm(len(self.pool), generator=g)[:take]].sort().values
        edges, _ = subgraph(nodes, self.edge_index, relabel_nodes=True, num_nodes=self.num_nodes)
        return {"node_index": nodes, "edge_index": edges, "num_nodes": take}


class _WholeGraph(Dataset):
    def __init__(self, edge_index: Tensor, num_nodes: int) -> None:
        self.edge_index, self.num_nodes = edge_index, num_nodes

    def __len__(self) -> int:
        return 1

    def __getitem__(self, index: int) -> dict[str, Any]:
        return {"node_index": None, "edge_index": self.edge_index, "num_nodes": self.num_nodes}


class GraphDataModule(L.LightningDataModule):
    """One graph for self-supervised node representations (subclasses say which).

    Args:
        normalize_features: Row-normalise the features (each row sums to 1:
            torch_geometric's ``NormalizeFeatures``), as GRACE's and ARIEL's papers intend.
            ``False`` reproduces what ARIEL's official code actually trains on: it passes
            ``NormalizeFeatures`` as a dataset ``transform`` but reads ``dataset.data``, which
            no transform touches, so its features stay raw binary bags of words.
        subgraph_nodes: Each training batch is the subgraph induced by this many uniform
            random nodes (ARIEL: 500); ``None``: the whole graph (GRACE).
        sample_isolated: Draw the subgraph's nodes from every node.  ``False``: only from
            nodes with an edge, as ARIEL's official sampler (a networkx graph built from the
            edge list, which has no isolated nodes; CiteSeer has 48).
        steps_per_epoch: Training batches per epoch (one official "epoch" is one step).
        num_workers: DataLoader workers of the training batches (subgraph extraction).
    """

    def __init__(
        self,
        normalize_features: bool = True,
        subgraph_nodes: int | None = None,
        sample_isolated: bool = True,
        steps_per_epoch: int = 1,
        num_workers: int = 0,
    ) -> None:
        super().__init__()
        if subgraph_nodes is not None and subgraph_nodes < 2:
            raise ValueError(f"data.subgraph_nodes must be >= 2 or null, got {subgraph_nodes}")
        if steps_per_epoch < 1:
            raise ValueError(f"data.steps_per_epoch must be >= 1, got {steps_per_epoch}")
        self.normalize_features = normalize_features
        self.subgraph_nodes, self.sample_isolated = subgraph_nodes, sample_isolated
        self.steps_per_epoch, self.num_workers = steps_per_epoch, num_workers
        self._graph: Data | None = None
        self._on_device: dict[torch.device, tuple[Tensor, Tensor]] = {}

    @classmethod
    def tiny_test_args(cls, init_args: dict[str, Any]) -> list[str]:
        """CLI overrides that make a config with these ``data.init_args`` run in seconds."""
        args = ["--data.init_args.steps_per_epoch", "2"]
        if init_args.get("subgraph_nodes") is not None:
            args += ["--data.init_args.subgraph_nodes", "24"]
        return args

    def load_graph(self) -> Data:
        """The raw graph ``Data(x, edge_index, y)`` (implemented by subclasses)."""
        raise NotImplementedError

    @property
    def graph(self) -> Data:
        """The graph, read once, with its features normalised if asked."""
        if self._graph is None:
            graph = self.load_graph()
            if self.normalize_features:
                graph = NormalizeFeatures()(graph)
            self._graph = graph
        return self._graph

    @property
    def in_channels(self) -> int:
        """Node feature dimension."""
        return int(self.graph.x.shape[1])

    @property
    def num_classes(self) -> int:
        """Node classes."""
        return int(self.graph.y.max()) + 1

    @property
    def probe_classes(self) -> int:
        """Classes of the evaluator (the node classes)."""
        return self.num_classes

    def _pool(self) -> Tensor:
        g = self.graph
        if self.sample_isolated:
            return torch.arange(g.num_nodes)
        return torch.nonzero(degree(g.edge_index[0], g.num_nodes) > 0).flatten()

    def train_dataloader(self) -> DataLoader:  # noqa: D102
        g = self.graph
        steps = _SubgraphSteps(g.edge_index, g.num_nodes, self.steps_per_epoch,
                               self.subgraph_nodes, self._pool())  # fmt: skip
        return train_loader(steps, batch_size=1, num_workers=self.num_workers,
                            drop_last=False, collate_fn=_single)  # fmt: skip

    def val_dataloader(self) -> DataLoader:  # noqa: D102
        loader = eval_loader(_WholeGraph(self.graph.edge_index, self.graph.num_nodes), 1, 0)
        loader.collate_fn = _single
        return loader

    def test_dataloader(self) -> DataLoader:  # noqa: D102
        return self.val_dataloader()

    def predict_dataloader(self) -> DataLoader:  # noqa: D102
        return self.val_dataloader()

    def on_after_batch_transfer(self, batch: dict[str, Any], dataloader_idx: int) -> dict[str, Any]:
        """Gather the batch's features and labels from the device-resident graph."""
        device = batch["edge_index"].device
        if device not in self._on_device:
            self._on_device[device] = (self.graph.x.to(device), self.graph.y.to(device))
        x, y = self._on_device[device]
        nodes = batch["node_index"]
        if nodes is not None:
            x, y = x[nodes], y[nodes]
        return {**batch, "x": x, "y": y}


def _root(root: str, name: str) -> Path:
    return require_dir(root, f"data.root (a folder holding {name}/raw/, torch_geometric's layout)")


class PlanetoidDataModule(GraphDataModule):
    """Cora, CiteSeer or PubMed (Planetoid raw files under ``root/<name>/raw``).

    Args:
        root: Folder holding ``<name>/raw/ind.<name>.*`` (torch_geometric's layout).
        name: ``Cora``, ``CiteSeer`` or ``PubMed``.
        **kwargs: :class:`GraphDataModule` arguments.
    """

    def __init__(self, root: str, name: Literal["Cora", "CiteSeer", "PubMed"] = "Cora",
                 **kwargs: Any) -> None:  # fmt: skip
        super().__init__(**kwargs)
        if name not in PLANETOID:
            raise ValueError(f"data.name must be one of {sorted(PLANETOID)}, got {name!r}")
        self.root, self.name = str(_root(root, name)), name

    def load_graph(self) -> Data:  # noqa: D102
        return read_graph(self.root, self.name)


class AmazonDataModule(GraphDataModule):
    """Amazon Computers or Photo (``root/<name>/raw/amazon_electronics_<name>.npz``).

    Args:
        root: Folder holding ``<name>/raw/*.npz`` (torch_geometric's layout).
        name: ``Computers`` or ``Photo``.
        **kwargs: :class:`GraphDataModule` arguments.
    """

    def __init__(self, root: str, name: Literal["Computers", "Photo"] = "Computers",
                 **kwargs: Any) -> None:  # fmt: skip
        super().__init__(**kwargs)
        if name not in AMAZON:
            raise ValueError(f"data.name must be one of {sorted(AMAZON)}, got {name!r}")
        self.root, self.name = str(_root(root, name)), name

    def load_graph(self) -> Data:  # noqa: D102
        return read_graph(self.root, self.name)


class CoauthorDataModule(GraphDataModule):
    """Coauthor CS or Physics (``root/<name>/raw/ms_academic_{cs,phy}.npz``).

    Args:
        root: Folder holding ``<name>/raw/*.npz`` (torch_geometric's layout).
        name: ``CS`` or ``Physics``.
        **kwargs: :class:`GraphDataModule` arguments.
    """

    def __init__(self, root: str, name: Literal["CS", "Physics"] = "CS",
                 **kwargs: Any) -> None:  # fmt: skip
        super().__init__(**kwargs)
        if name not in COAUTHOR:
            raise ValueError(f"data.name must be one of {sorted(COAUTHOR)}, got {name!r}")
        self.root, self.name = str(_root(root, name)), name

    def load_graph(self) -> Data:  # noqa: D102
        return read_graph(self.root, self.name)


class CSBMDataModule(GraphDataModule):
    """The embedded graph benchmark: a contextual SBM.

    The graph is :func:`contraseg.datamodules.datasets.graphs.contextual_sbm`'s.

    Args:
        num_nodes: Nodes.
        num_classes: Classes (balanced).
        num_features: Vocabulary of the binary bag-of-words features.
        avg_degree: Mean degree.
        homophily: Expected fraction of edges within a class.
        words_per_node: Words drawn per node.
        feature_signal: Probability that a word comes from the node's class topic.
        graph_seed: Seed of the graph (the run's seed does not change the graph).
        **kwargs: :class:`GraphDataModule` arguments.
    """

    def __init__(
        self,
        num_nodes: int = 2000,
        num_classes: int = 5,
        num_features: int = 500,
        avg_degree: float = 6.0,
        homophily: float = 0.7,
        words_per_node: int = 20,
        feature_signal: float = 0.2,
        graph_seed: int = 0,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.spec = dict(num_nodes=num_nodes, num_classes=num_classes, num_features=num_features,
                         avg_degree=avg_degree, homophily=homophily,
                         words_per_node=words_per_node, feature_signal=feature_signal,
                         seed=graph_seed)  # fmt: skip

    def load_graph(self) -> Data:  # noqa: D102
        return contextual_sbm(**self.spec)
