"""Base of node-level graph contrast (GRACE, ARIEL): encoder, projection, views, evaluation.

A batch is one graph from :mod:`contraseg.datamodules.graphs`: ``x`` ``(n, f)``,
``edge_index`` ``(2, E)`` (both directions) and, for validation, ``y``.  The task
embeds it with a registered graph encoder
(:mod:`contraseg.lightning_modules.components.graph_encoders`), draws GRACE's two views
(edge dropping, feature-column masking) on the device, and scores the frozen encoder on
the whole graph with the official logistic-regression protocol
(:mod:`contraseg.lightning_modules.evaluators.node_classification`): ``val/acc`` and
``val/acc_std`` (over random splits), and under each evaluation attack of
``eval_attacks`` ``val/acc_<attack>`` (the same splits on an edge-flipped graph, which the
encoder embeds without retraining: an evasion attack on the test graph).
"""

from __future__ import annotations

from typing import Any, Literal

import torch
from torch import Tensor
from torch_geometric.utils import dropout_edge

from contraseg.lightning_modules.components.checkpoint_init import read_state_dict
from contraseg.lightning_modules.components.graph_attack import (
    random_edge_flips,
    surrogate_edge_attack,
)
from contraseg.lightning_modules.components.graph_encoders import build_graph_encoder
from contraseg.lightning_modules.components.heads import Projector
from contraseg.lightning_modules.evaluators.node_classification import (
    NodeClassificationProtocol,
    node_classification_accuracy,
)
from contraseg.lightning_modules.task import BaseTask

__all__ = ["EVAL_ATTACKS", "GraphContrastTask"]

EVAL_ATTACKS = ("random", "surrogate")


class GraphContrastTask(BaseTask):
    """Node-level graph contrast over a registered graph encoder.

    Args:
        encoder: Registered graph encoder (``gcn``; ``features``: the raw features, the
            reference of a ``validate`` run, nothing to train).
        hidden_channels: Embedding width ``h`` (the official ``num_hidden``).
        num_layers: Encoder layers (official: 2).
        activation: ``relu``, ``prelu`` or ``rrelu`` (official, per data set).
        projector: Projection head (GRACE: ``h -> p`` Linear, ELU, ``p -> h`` Linear; set
            ``hidden_dims: [p]`` and ``out_dim: h``).
        temperature: ``tau`` of the loss (official, per data set).
        drop_edge: Edge-dropping rate of view 1 and view 2 (official ``drop_edge_rate_1/2``).
        drop_feature: Feature-column masking rate of view 1 and view 2 (one column mask
            shared by all nodes; official ``drop_feature_rate_1/2``).
        loss_chunk_size: Rows of the similarity matrix computed at once (``None``: all;
            memory only, for graphs of tens of thousands of nodes trained whole).
        evaluation: The logistic-regression protocol (defaults: a cheap one; the official
            protocol is ``{repeats: 20, folds: 5, c_grid: 2^-10..2^9}``).
        eval_attacks: Attacks of the test graph to score under: ``random`` (uniform
            flips) and ``surrogate`` (PGD against an SGC surrogate; dense, graphs up to
            10,000 nodes).
        attack_ratio: Flipped fraction of the undirected edges of the evaluation attacks.
        optimizer: Official: Adam.
        lr: Official: per data set.
        weight_decay: Official: 1e-5 (Adam's L2 on the weights).
        min_lr_ratio: 1.0: a constant learning rate, as the official code.
        **kwargs: :class:`~contraseg.lightning_modules.task.BaseTask` arguments.
    """

    def __init__(
        self,
        encoder: str = "gcn",
        hidden_channels: int = 128,
        num_layers: int = 2,
        activation: Literal["relu", "prelu", "rrelu"] = "relu",
        projector: Projector = Projector((128,), 128, False, "elu"),  # noqa: B008
        temperature: float = 0.5,
        drop_edge: tuple[float, float] = (0.2, 0.4),
        drop_feature: tuple[float, float] = (0.3, 0.4),
        loss_chunk_size: int | None = None,
        evaluation: NodeClassificationProtocol = NodeClassificationProtocol(),  # noqa: B008
        eval_attacks: tuple[Literal["random", "surrogate"], ...] = (),
        attack_ratio: float = 0.2,
        optimizer: str = "adam",
        lr: float = 1e-3,
        weight_decay: float = 1e-5,
        min_lr_ratio: float = 1.0,
        **kwargs: Any,
    ) -> None:
        for rate in (*drop_edge, *drop_feature):
            if not 0.0 <= rate < 1.0:
                raise ValueError(f"model.drop_edge / drop_feature rates must be in [0, 1), "
                                 f"got {drop_edge} and {drop_feature}")  # fmt: skip
        unknown = set(eval_attacks) - set(EVAL_ATTACKS)
        if unknown:
            raise ValueError(f"model.eval_attacks: unknown {sorted(unknown)}; "
                             f"one of {EVAL_ATTACKS}")  # fmt: skip
        super().__init__(optimizer=optimizer, lr=lr, weight_decay=weight_decay,
                         min_lr_ratio=min_lr_ratio, **kwargs)  # fmt: skip
        self._attacked: dict[tuple[str, int, int], Tensor] = {}

    @classmethod
    def tiny_test_args(cls, init_args: dict[str, Any]) -> list[str]:
        """A two-split protocol without search (the graph is a small fixture)."""
        args = ["--model.init_args.evaluation",
                '{"repeats": 2, "folds": 1, "c_grid": [1.0], "train_ratio": 0.5}']  # fmt: skip
        if init_args.get("init_checkpoint"):
            args += ["--model.init_args.init_checkpoint", "null"]
        return args

    def configure_models(self) -> None:  # noqa: D102
        hp = self.hparams
        self.encoder = build_graph_encoder(hp.encoder, in_channels=hp.in_channels,
                                           hidden_channels=hp.hidden_channels,
                                           num_layers=hp.num_layers,
                                           activation=hp.activation)  # fmt: skip
        self.projector = Projector.of(hp.projector).mlp(self.encoder.out_channels)

    def configure_losses(self) -> None:  # noqa: D102
        self.temperature = float(self.hparams.temperature)

    def configure_metrics(self) -> None:
        """The evaluation protocol (``hparams`` keep it as a plain mapping)."""
        protocol = self.hparams.evaluation
        self.protocol = (protocol if isinstance(protocol, NodeClassificationProtocol)
                         else NodeClassificationProtocol(**protocol))  # fmt: skip

    def load_checkpoint(self, path: str) -> dict[str, list[str]]:
        """Initialise the encoder from a graph run's checkpoint (its ``encoder.*`` tensors)."""
        state = read_state_dict(path)
        source = {k[len("encoder."):]: v for k, v in state.items() if k.startswith("encoder.")}
        target = self.encoder.state_dict()
        report: dict[str, list[str]] = {"loaded": [], "shape_mismatch": [], "missing": []}
        for name, value in target.items():
            kind = ("missing" if name not in source else "loaded"
                    if source[name].shape == value.shape else "shape_mismatch")  # fmt: skip
            report[kind].append(name)
        self.encoder.load_state_dict({**target, **{k: source[k] for k in report["loaded"]}})
        return report

    # ----------------------------------------------------------------- pieces
    def views(self, x: Tensor, edge_index: Tensor) -> list[tuple[Tensor, Tensor]]:
        """GRACE's two views: edges dropped independently, feature columns masked."""
        out = []
        for p_edge, p_feature in zip(self.hparams.drop_edge, self.hparams.drop_feature,
                                     strict=True):  # fmt: skip
            edges, _ = dropout_edge(edge_index, p=float(p_edge), training=True)
            keep = torch.rand(x.shape[1], device=x.device) >= float(p_feature)
            out.append((x * keep.to(x.dtype), edges))
        return out

    def project(self, z: Tensor) -> Tensor:
        """The projection head (GRACE's ``fc2(elu(fc1(z)))``)."""
        return self.projector(z)

    def embed_graph(self, x: Tensor, edge_index: Tensor) -> Tensor:
        """Encoder embeddings of a sparse graph."""
        return self.encoder(x, edge_index)

    # ----------------------------------------------------------------- evaluation
    def _attacked_edges(self, name: str, batch: dict[str, Any]) -> Tensor:
        """The test graph under attack ``name`` (cached: a function of the graph and seed)."""
        x, edges, y = batch["x"], batch["edge_index"], batch["y"]
        key = (name, x.shape[0], edges.shape[1])
        if key not in self._attacked:
            seed, ratio = self.protocol.seed, float(self.hparams.attack_ratio)
            if name == "random":
                attacked = random_edge_flips(edges, x.shape[0], ratio, seed=seed)
            else:
                # gradients inside an evaluation loop (Lightning runs it in inference mode)
                with torch.inference_mode(False), torch.enable_grad(), \
                        torch.autocast(x.device.type, enabled=False):  # fmt: skip
                    attacked = surrogate_edge_attack(x.float().clone(), edges.clone(), y.clone(),
                                                     ratio, seed=seed)  # fmt: skip
            self._attacked[key] = attacked
        return self._attacked[key]

    def _score(self, x: Tensor, edge_index: Tensor, y: Tensor, stage: str, suffix: str) -> None:
        z = self.embed_graph(x, edge_index)
        mean, std = node_classification_accuracy(z, y, self.protocol)
        self.log(f"{stage}/acc{suffix}", mean, batch_size=1, prog_bar=not suffix)
        self.log(f"{stage}/acc{suffix}_std", std, batch_size=1)

    def _evaluate(self, batch: dict[str, Any], stage: str) -> None:
        x, edges, y = batch["x"], batch["edge_index"], batch["y"]
        self._score(x, edges, y, stage, "")
        for name in self.hparams.eval_attacks:
            self._score(x, self._attacked_edges(name, batch), y, stage, f"_{name}")

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        """Score the encoder on the whole graph (and on its attacked versions)."""
        self._evaluate(batch, "val")

    def test_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        """As :meth:`validation_step`, logged as ``test/``."""
        self._evaluate(batch, "test")

    def predict_step(self, batch: dict[str, Any], batch_idx: int) -> dict[str, Any]:
        """Node embeddings and labels of the whole graph."""
        return {"embedding": self.embed_graph(batch["x"], batch["edge_index"]),
                "label": batch.get("y")}  # fmt: skip

    def parameter_groups(self) -> list[dict[str, Any]]:
        """One group, weight decay on every parameter (official: ``Adam(model.parameters())``)."""
        return [{"params": [p for p in self.parameters() if p.requires_grad]}]

    def configure_optimizers(self) -> dict[str, Any]:  # noqa: D102
        if self.hparams.encoder == "features":
            raise ValueError("model.encoder 'features' has nothing to train: use it in a "
                             "`validate` run (the raw-feature reference)")  # fmt: skip
        return super().configure_optimizers()
