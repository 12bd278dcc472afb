r"""Attention-guided supervised contrast (Ho Hin Lee et al., arXiv 2106.01596).

A segmentation image holds several classes, so it has no single "label" for
supervised contrast.  Lee et al. highlight **one semantic object at a time**: the
object's binary mask is appended to the image as an extra input channel
(*attention*), and the pair (image, mask of class :math:`k`) is labeled :math:`k`.
The same image therefore embeds into a different class cluster for every object
it is shown with.  Stage 1 (this module) trains the encoder with SupCon (Khosla et
al. 2020) over these pairs,

.. math::

    \mathcal{L} = \frac{1}{|I|} \sum_{i \in I} \frac{-1}{|P(i)|} \sum_{p \in P(i)}
        \log \frac{e^{z_i^\top z_p / \tau}}{\sum_{a \ne i} e^{z_i^\top z_a / \tau}},
    \qquad z_i = \frac{g(f([x_i; m_i]))}{\lVert g(f([x_i; m_i])) \rVert},

where :math:`[x; m]` is the image with the attention channel, :math:`f` the
encoder, :math:`g` the projector and :math:`P(i)` the other pairs (any image, any
view) highlighting the same class.  Stage 2 fine-tunes a segmentation network
from the encoder
(:class:`~contraseg.lightning_modules.segmentation_finetune.SegmentationFineTune` with
``init_checkpoint``; the extra input channel of the first convolution is dropped,
i.e. fine-tuning sees an all-zero attention channel).

Per image and step, up to ``objects_per_image`` classes present in **every** view
(at least ``min_object_pixels`` pixels, not excluded, not ignored) are drawn at
random; each becomes one sample of every view.  Images without such a class are
skipped in that step.  Under DDP each rank contrasts its own pairs: their number
varies from step to step and rank to rank, which an all-gather cannot take.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from contraseg.lightning_modules.components import Projector
from contraseg.lightning_modules.embedding_task import EmbeddingTask
from contraseg.lightning_modules.losses import nt_xent_loss
from contraseg.lightning_modules.task import TaskLoss

__all__ = ["AttentionGuidedContrast", "sample_objects"]


def sample_objects(
    masks: Sequence[Tensor],
    objects_per_image: int,
    min_pixels: int = 1,
    exclude: Sequence[int] = (),
    ignore_index: int = 255,
) -> tuple[Tensor, Tensor]:
    """Draw up to ``objects_per_image`` classes present in all views of each image.

    Args:
        masks: One ``(B, H, W)`` integer mask per view.
        objects_per_image: Maximum classes drawn per image (without replacement).
        min_pixels: A class must cover at least this many pixels in every view.
        exclude: Classes never drawn (e.g. background).
        ignore_index: Label that is never a class.

    Returns:
        ``(image_index, class_index)`` of the drawn ``(image, class)`` pairs, each ``(M,)``.
    """
    if objects_per_image < 1 or min_pixels < 1:
        raise ValueError("objects_per_image and min_pixels must be >= 1")
    b = masks[0].shape[0]
    valid = [m[m != ignore_index] for m in masks]
    num_classes = int(max((int(v.max()) + 1 if v.numel() else 1) for v in valid))
    present = torch.ones(b, num_classes, dtype=torch.bool, device=masks[0].device)
    for m in masks:
        keep = m != ignore_index
        flat = torch.arange(b, device=m.device).view(-1, 1, 1).expand_as(m)[keep] * num_classes
        counts = torch.bincount(flat + m[keep].long(), minlength=b * num_classes)
        present &= counts.view(b, num_classes) >= min_pixels
    for k in exclude:
        if 0 <= k < num_classes:
            present[:, k] = False
    scores = torch.rand(b, num_classes, device=present.device).masked_fill(~present, -1.0)
    top, cls = scores.topk(min(objects_per_image, num_classes), dim=1)
    chosen = top >= 0
    image_index = torch.arange(b, device=cls.device).view(-1, 1).expand_as(cls)[chosen]
    return image_index, cls[chosen]


class AttentionGuidedContrast(EmbeddingTask):
    """Stage 1 of Lee et al.: SupCon over (image + object-mask channel, object class).

    ``in_channels`` (a :class:`~contraseg.lightning_modules.task.BaseTask` argument, linked from the
    data) counts the image channels; the encoder gets ``in_channels + 1``.

    Args:
        objects_per_image: Classes highlighted per image and step.
        min_object_pixels: Minimum pixels of a class in every view to be drawn.
        exclude_classes: Classes never highlighted (e.g. ``[0]`` for background).
        ignore_index: Mask value that is not a class.
        temperature: SupCon temperature.
        projector: Projector shape (2048 -> 128 with BatchNorm).
        **kwargs: :class:`~contraseg.lightning_modules.embedding_task.EmbeddingTask` arguments
            (``encoder``, optimiser, ...).

    Raises:
        ValueError: On bad counts or temperature.
    """

    def __init__(
        self,
        objects_per_image: int = 2,
        min_object_pixels: int = 16,
        exclude_classes: Sequence[int] = (),
        ignore_index: int = 255,
        temperature: float = 0.1,
        projector: Projector = Projector((2048,), 128, True),  # noqa: B008
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)

    def encoder_in_channels(self) -> int:
        """Image channels plus the attention (object mask) channel."""
        return self.hparams.in_channels + 1

    def configure_models(self) -> None:  # noqa: D102
        super().configure_models()
        self.projector = self.build_projector()

    def configure_losses(self) -> None:  # noqa: D102
        hp = self.hparams
        if hp.objects_per_image < 1 or hp.min_object_pixels < 1:
            raise ValueError("model.objects_per_image and model.min_object_pixels must be >= 1")
        self.temperature = float(hp.temperature)

    def embed(self, images: Tensor) -> Tensor:
        """Representation of plain images: an all-zero attention channel is appended."""
        if images.shape[1] == self.hparams.in_channels:
            zeros = images.new_zeros(images.shape[0], 1, *images.shape[2:])
            images = torch.cat([images, zeros], dim=1)
        return self.encoder(images)

    def training_loss(self, batch: dict[str, Any]) -> TaskLoss:
        """SupCon over the drawn (image, object) pairs of every view.

        Args:
            batch: ``pretrain_views`` batch of the labeled subset (``views``, ``masks``).

        Returns:
            The loss; logs hold the number of pairs.  No probe embedding: pairs are
            labeled by object, not by image.

        Raises:
            ValueError: Without a mask per view.
        """
        views, masks = batch["views"], batch.get("masks", [])
        if len(views) < 2 or len(masks) != len(views):
            raise ValueError(
                "AttentionGuidedContrast needs >= 2 views with masks (use the data module's "
                "pretrain_views mode with pretrain_subset: labeled)"
            )
        hp = self.hparams
        index, cls = sample_objects(
            masks, hp.objects_per_image, hp.min_object_pixels, list(hp.exclude_classes),
            hp.ignore_index,
        )  # fmt: skip
        if index.numel() < 2:  # nothing to contrast: zero loss through every parameter (DDP)
            features = self.embed(views[0])
            zero = torch.zeros((), device=features.device)
            return TaskLoss(self.projector(features).sum() * 0.0, {"objects": zero})
        inputs = [
            torch.cat([v[index], (m[index] == cls.view(-1, 1, 1)).unsqueeze(1).to(v.dtype)], 1)
            for v, m in zip(views, masks)
        ]
        z = self.projector(self.encoder(torch.cat(inputs)))
        loss = nt_xent_loss(z, labels=cls.repeat(len(views)), temperature=self.temperature)
        objects = torch.tensor(float(index.numel()), device=z.device)
        return TaskLoss(loss, {"objects": objects})
