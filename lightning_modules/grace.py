"""GRACE (Zhu, Xu, Yu, Liu, Wu, Wang; ICML GRL+ 2020): node-level InfoNCE between two views."""

from __future__ import annotations

from typing import Any

from contraseg.lightning_modules.graph_task import GraphContrastTask
from contraseg.lightning_modules.losses.graph_contrast import grace_loss
from contraseg.lightning_modules.task import TaskLoss

__all__ = ["GRACE"]


class GRACE(GraphContrastTask):
    """GRACE: two views (edge dropping, feature masking) -> GCN -> projection -> InfoNCE.

    The loss is :func:`~contraseg.lightning_modules.losses.graph_contrast.grace_loss`
    (inter- and intra-view negatives, symmetric) averaged over the batch's nodes; the
    batch is the whole graph (``data.subgraph_nodes: null``) as in GRACE's code, or a
    sampled subgraph.

    Args:
        **kwargs: :class:`~contraseg.lightning_modules.graph_task.GraphContrastTask` arguments.
    """

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)

    def training_loss(self, batch: dict[str, Any]) -> TaskLoss:
        """GRACE's loss of the batch graph's two views."""
        (x1, e1), (x2, e2) = self.views(batch["x"], batch["edge_index"])
        h1 = self.project(self.embed_graph(x1, e1))
        h2 = self.project(self.embed_graph(x2, e2))
        loss = grace_loss(h1, h2, self.temperature, self.hparams.loss_chunk_size).mean()
        return TaskLoss(loss)
