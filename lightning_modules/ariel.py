"""ARIEL (Feng, Jing, Zhu, Tong; WWW 2022): GRACE, an adversarial view, an information term."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from contraseg.lightning_modules.components.graph_attack import adversarial_view, dense_adjacency
from contraseg.lightning_modules.graph_task import GraphContrastTask
from contraseg.lightning_modules.losses.graph_contrast import (
    grace_loss,
    information_regularizer,
    view_similarity,
)
from contraseg.lightning_modules.task import TaskLoss

__all__ = ["ARIEL"]


class ARIEL(GraphContrastTask):
    r"""ARIEL: GRACE on sampled subgraphs, contrasted also with an adversarial third view.

    Per step (official ``train.py:26-56``), on the batch's subgraph ``(x, A)`` (ARIEL
    samples 500 nodes: ``data.subgraph_nodes``):

    .. math::

        L = \operatorname{mean}_i \mathcal{L}(z^1, z^2)_i
            + \lambda \operatorname{mean}_i \mathcal{R}_i
            + w_{adv} \operatorname{mean}_i \mathcal{L}(z^1, z^{adv})_i

    with GRACE's :math:`\mathcal{L}`, the information regulariser :math:`\mathcal{R}`
    (:mod:`contraseg.lightning_modules.losses.graph_contrast`) and :math:`z^{adv}` the
    embedding of the adversarial view: the clean subgraph perturbed by
    :func:`~contraseg.lightning_modules.components.graph_attack.adversarial_view` to
    maximise :math:`\mathcal{L}(z^1, \cdot)` against the fixed view 1 (encoder frozen, in
    eval mode, during the attack), then embedded through the dense path of the encoder.

    Args:
        adversarial_weight: :math:`w_{adv}`, the adversarial loss weight (the official
            config calls it ``eps``; it is not a perturbation size).  0: no attack.
        regularizer_weight: :math:`\lambda` (official ``lamb``: 0, or 2 for Coauthor-CS).
        attack_steps: PGD iterations (official: 5).
        edge_budget: Flipped fraction of the subgraph's undirected edges (official 0.2).
        edge_step: Step size of the flip probabilities (official ``alpha``).
        feature_step: Sign-step size of the feature perturbation (official ``beta``).
        feature_budget: L-infinity radius of the feature perturbation (official 0.04).
        **kwargs: :class:`~contraseg.lightning_modules.graph_task.GraphContrastTask` arguments.
    """

    def __init__(
        self,
        adversarial_weight: float = 0.5,
        regularizer_weight: float = 0.0,
        attack_steps: int = 5,
        edge_budget: float = 0.2,
        edge_step: float = 200.0,
        feature_step: float = 0.01,
        feature_budget: float = 0.04,
        **kwargs: Any,
    ) -> None:
        if adversarial_weight < 0 or regularizer_weight < 0 or attack_steps < 1:
            raise ValueError("model.adversarial_weight and regularizer_weight must be >= 0 and "
                             f"attack_steps >= 1, got {adversarial_weight}, {regularizer_weight},"
                             f" {attack_steps}")  # fmt: skip
        if not 0 <= edge_budget <= 1 or feature_budget < 0:
            raise ValueError(f"model.edge_budget must be in [0, 1] and feature_budget >= 0, got "
                             f"{edge_budget} and {feature_budget}")  # fmt: skip
        super().__init__(**kwargs)

    @classmethod
    def tiny_test_args(cls, init_args: dict[str, Any]) -> list[str]:  # noqa: D102
        return [*super().tiny_test_args(init_args), "--model.init_args.attack_steps", "1"]

    def attack(self, view1: tuple[Tensor, Tensor], x: Tensor, edge_index: Tensor
               ) -> tuple[Tensor, Tensor]:  # fmt: skip
        """The adversarial view of ``(x, edge_index)`` against the fixed ``view1``."""
        hp = self.hparams
        was_training = self.training
        self.eval()
        try:
            with torch.no_grad():
                target = self.project(self.embed_graph(*view1))

            def loss(z: Tensor) -> Tensor:
                return grace_loss(target, self.project(z), self.temperature).mean()

            with torch.autocast(x.device.type, enabled=False):
                return adversarial_view(
                    self.encoder.forward_dense, loss, x.float(), edge_index,
                    steps=hp.attack_steps, edge_budget=hp.edge_budget, edge_step=hp.edge_step,
                    feature_step=hp.feature_step, feature_budget=hp.feature_budget,
                )  # fmt: skip
        finally:
            self.train(was_training)

    def training_loss(self, batch: dict[str, Any]) -> TaskLoss:
        """GRACE's loss + the regulariser + the adversarial view's loss (see the class)."""
        hp = self.hparams
        x, edges = batch["x"], batch["edge_index"]
        (x1, e1), (x2, e2) = self.views(x, edges)
        adversarial = self.attack((x1, e1), x, edges) if hp.adversarial_weight > 0 else None
        h1 = self.project(self.embed_graph(x1, e1))
        h2 = self.project(self.embed_graph(x2, e2))
        contrast = grace_loss(h1, h2, self.temperature, hp.loss_chunk_size).mean()
        loss, logs = contrast, {"contrast": contrast.detach()}
        if hp.regularizer_weight > 0:
            h = self.project(self.embed_graph(x, edges))
            reg = information_regularizer(view_similarity(h1, h2, self.temperature),
                                          view_similarity(h1, h, self.temperature),
                                          view_similarity(h2, h, self.temperature))  # fmt: skip
            loss = loss + hp.regularizer_weight * reg
            logs["regularizer"] = reg.detach()
        if adversarial is not None:
            x_adv, adj_adv = adversarial
            h_adv = self.project(self.encoder.forward_dense(x_adv, adj_adv))
            adv = grace_loss(h1, h_adv, self.temperature, hp.loss_chunk_size).mean()
            loss = loss + hp.adversarial_weight * adv
            logs["adversarial"] = adv.detach()
            clean = dense_adjacency(edges, x.shape[0])
            logs["flipped_edges"] = ((adj_adv - clean).abs().sum() / 2).detach()
        return TaskLoss(loss, logs)
