r"""Supervised contrastive pretraining (Khosla et al., NeurIPS 2020): SupCon stage 1 of SuperCon.

Every view of a labelled image is an anchor whose positives are all other views of its class
in the (DDP-gathered, with gradients) batch, :math:`\mathcal{L}^{sup}_{out}` (eq. 2):

.. math::

    \mathcal{L} = \frac{1}{|V|}\sum_{a \in V} \frac{-1}{|P(a)|} \sum_{p \in P(a)}
        \log \frac{\exp(z_a^\top z_p / \tau)}{\sum_{b \ne a} \exp(z_a^\top z_b / \tau)}

computed by the fused, mask-free :func:`~contraseg.lightning_modules.losses.nt_xent_loss` path
(:mod:`contraseg.lightning_modules.losses.supcon`).  As the official code (HobbitLong/SupContrast,
``losses.py``), the loss is multiplied by :math:`\tau / \tau_{base}` with
:math:`\tau_{base} = 0.07` (at :math:`\tau = 0.1` the loss and its gradients are x1.43, with
SGD a 1.43x learning rate); ``base_temperature: null`` is the paper's eq. 2 as written.  The
projector is the official one: ``Linear-ReLU-Linear`` without BatchNorm
(``projector: {batch_norm: true}`` adds it).  Images without a label (``-1``) fall back to
instance discrimination (their positives are their own other views), so the module also
trains on partly labelled data.  SuperCon's stage 2 is
:class:`~contraseg.lightning_modules.classifier.ImageClassifier` initialised from this checkpoint.
"""

from __future__ import annotations

from typing import Any

import torch

from contraseg.lightning_modules.components.heads import Projector
from contraseg.lightning_modules.embedding_task import EmbeddingTask
from contraseg.lightning_modules.losses import nt_xent_loss
from contraseg.lightning_modules.task import TaskLoss

__all__ = ["SupCon"]


class SupCon(EmbeddingTask):
    """Encoder -> MLP projector -> SupCon over every view of the batch.

    Args:
        temperature: SupCon temperature (0.1 in Khosla et al.).
        projector: Projector shape (the official head: 2048 -> 128, no BatchNorm).
        gather_distributed: Contrast against every DDP rank's views (with gradients).
        base_temperature: The official loss scale ``temperature / base_temperature``
            (0.07); ``None``: no scale (the paper's eq. 2).
        **kwargs: :class:`~contraseg.lightning_modules.embedding_task.EmbeddingTask` arguments.
    """

    def __init__(
        self,
        temperature: float = 0.1,
        projector: Projector = Projector((2048,), 128, False),  # noqa: B008
        gather_distributed: bool = True,
        base_temperature: float | None = 0.07,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)

    def configure_models(self) -> None:  # noqa: D102
        super().configure_models()
        self.projector = self.build_projector()

    def configure_losses(self) -> None:  # noqa: D102
        self.temperature = float(self.hparams.temperature)

    def training_loss(self, batch: dict[str, Any]) -> TaskLoss:
        """SupCon of the projected views; unlabelled images contrast as instances."""
        views = batch["views"]
        n = views[0].shape[0]
        features = self.encoder(self.stack(views))
        labels = torch.as_tensor(batch["label"], device=features.device).long()
        index = batch.get("sample_index")
        index = (torch.arange(n, device=features.device) if index is None
                 else torch.as_tensor(index, device=features.device).long())  # fmt: skip
        ids = torch.where(labels >= 0, labels, -(index + 1))  # instance ids never meet classes
        loss = nt_xent_loss(self.projector(features), labels=ids.repeat(len(views)),
                            temperature=self.temperature,
                            gather_distributed=self.hparams.gather_distributed)  # fmt: skip
        if self.hparams.base_temperature is not None:
            loss = loss * (self.temperature / float(self.hparams.base_temperature))
        return TaskLoss(loss, {"labelled": (labels >= 0).float().mean()}, embedding=features[:n])
