r"""CLAWS (Herrera-Gerena et al., arXiv 2112.00847): hard attention and weak supervision.

No official code exists; this follows the abstract: a SimCLR-style network whose inputs are
multiplied by a hard attention mask (the encoder sees the foreground only), and weak labels
that make "contrastive learning within class clusters".  With :math:`y_i` the weak label of
image :math:`i` when it has one and a unique instance id otherwise, one supervised
contrastive loss (Khosla et al. 2020, :func:`~contraseg.lightning_modules.losses.nt_xent_loss` with
labels) covers both parts:

.. math::

    \ell_a = -\frac{1}{|P(a)|} \sum_{p \in P(a)} \log
        \frac{\exp(z_a^\top z_p / \tau)}{\sum_{b \ne a} \exp(z_a^\top z_b / \tau)},
    \qquad P(a) = \{p \ne a : y_p = y_a\},

so a weakly labelled view's positives are every view of its class in the (DDP-gathered)
batch, an unlabelled view's are the other views of its own image (instance
discrimination).  Which images carry their weak label is a seeded function of the dataset
index (``weak_label_fraction``), the same in every epoch and on every rank.

The attention mask comes from the data: the items' own masks (synthetic scenes and
segmentation sets; ``background_classes`` are masked out) or ``data.attention_mask: exg``
(excess green + Otsu, :mod:`contraseg.datamodules.attention`); it is cropped and flipped with each
view.  ``attention: none`` is the ablation.  Evaluation inputs are masked the same way.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from contraseg.lightning_modules.components.heads import Projector
from contraseg.lightning_modules.embedding_task import EmbeddingTask
from contraseg.lightning_modules.losses import nt_xent_loss
from contraseg.lightning_modules.task import TaskLoss
from contraseg.seeding import mix_seed

__all__ = ["CLAWS"]

ATTENTION = ("mask", "none")


class CLAWS(EmbeddingTask):
    """SimCLR network with hard attention masks and weak class-cluster supervision.

    Args:
        temperature: Contrastive temperature.
        projector: Projector shape (SimCLR's: 2048 -> 128 with BatchNorm).
        attention: ``mask`` (multiply the foreground mask into every view) or ``none``.
        background_classes: Mask values that are background (``0``: the synthetic scenes'
            background and the ExG mask's).
        ignore_index: Mask value treated as background too (unlabelled pixels).
        weak_label_fraction: Share of the training images whose image label is used.
        weak_label_seed: Seed of which images those are.
        gather_distributed: Contrast against every DDP rank's views (with gradients).
        **kwargs: :class:`~contraseg.lightning_modules.embedding_task.EmbeddingTask` arguments.
    """

    UNIT = (*EmbeddingTask.UNIT, "weak_label_fraction")

    def __init__(
        self,
        temperature: float = 0.2,
        projector: Projector = Projector((2048,), 128, True),  # noqa: B008
        attention: str = "mask",
        background_classes: Sequence[int] = (0,),
        ignore_index: int = 255,
        weak_label_fraction: float = 0.1,
        weak_label_seed: int = 0,
        gather_distributed: bool = True,
        **kwargs: Any,
    ) -> None:
        if attention not in ATTENTION:
            raise ValueError(f"model.attention must be one of {ATTENTION}, got {attention!r}")
        super().__init__(**kwargs)

    def configure_models(self) -> None:  # noqa: D102
        super().configure_models()
        self.projector = self.build_projector()

    def configure_losses(self) -> None:  # noqa: D102
        self.temperature = float(self.hparams.temperature)

    # ----------------------------------------------------------------- attention
    def attend(self, images: Tensor, masks: Tensor | None) -> Tensor:
        """``images * foreground`` (``attention: mask``) or ``images`` (``none``).

        Raises:
            ValueError: If attention is on and the batch has no masks.
        """
        if self.hparams.attention == "none":
            return images
        if masks is None:
            raise ValueError(
                "CLAWS attention 'mask' needs masks in the batch: a data module whose items "
                "carry masks (synthetic scenes, segmentation sets) or data.attention_mask: "
                "exg; or model.attention: none"
            )
        background = torch.as_tensor(list(self.hparams.background_classes), device=masks.device)
        foreground = ~torch.isin(masks, background) & (masks != self.hparams.ignore_index)
        return images * foreground[:, None].to(images.dtype)

    def eval_inputs(self, batch: dict[str, Any]) -> Tensor:
        """Evaluation images under the same attention as the training views."""
        return self.attend(batch["image"], batch.get("mask"))

    # -------------------------------------------------------------- weak labels
    def weak_labels(self, labels: Tensor, index: Tensor) -> Tensor:
        """Labels of the images chosen as weakly labelled, ``-1`` for the rest."""
        fraction = float(self.hparams.weak_label_fraction)
        seed = int(self.hparams.weak_label_seed)
        draws = torch.tensor([mix_seed(seed, int(i)) / 2**63 for i in index.tolist()],
                             device=labels.device)  # fmt: skip
        return torch.where((draws < fraction) & (labels >= 0), labels, -1)

    def training_loss(self, batch: dict[str, Any]) -> TaskLoss:
        """SupCon over class clusters (weak labels) and instances (the rest)."""
        views, masks = batch["views"], batch.get("masks")
        n = views[0].shape[0]
        inputs = [self.attend(v, None if masks is None else masks[i]) for i, v in enumerate(views)]
        features = self.encoder(self.stack(inputs))
        index = batch.get("sample_index")
        if index is None:
            raise ValueError("CLAWS needs batch['sample_index'] to pick the weakly labelled images")
        index = torch.as_tensor(index, device=features.device).long()
        weak = self.weak_labels(batch["label"].to(features.device), index)
        ids = torch.where(weak >= 0, weak, -(index + 1))  # instance ids never meet class ids
        loss = nt_xent_loss(self.projector(features), labels=ids.repeat(len(views)),
                            temperature=self.temperature,
                            gather_distributed=self.hparams.gather_distributed)  # fmt: skip
        logs = {"weak_fraction": (weak >= 0).float().mean()}
        if self.hparams.attention == "mask":
            logs["foreground"] = torch.stack([(x != 0).float().mean() for x in inputs]).mean()
        return TaskLoss(loss, logs, embedding=features[:n])
