"""Pixel-wise label contrast (Zhao et al., ICCV 2021): supervised dense pretraining.

*Contrastive Learning for Label-Efficient Semantic Segmentation* pretrains a
DeepLabV3+ with a supervised pixel-contrastive loss on the **labeled** images
themselves (the same few labels the model is later fine-tuned on), then fine-tunes
it with cross-entropy
(:class:`~contraseg.lightning_modules.segmentation_finetune.SegmentationFineTune` with
``init_checkpoint`` and ``init_decoder: [""]``).

Two augmented views of each labeled image pass through the network; the decoder
output is resized to ``loss_size`` (bilinear; labels nearest), projected by two
1x1 convolutions (256 channels, BN + ReLU after the first) and L2-normalised.  The
loss (:mod:`contraseg.lightning_modules.losses.pixel_contrast`, temperature 0.07) has three
variants, one switch (``mode``):

* ``cross_image`` (the paper's default): view 1 of image ``b`` is paired with view 2
  of a randomly shuffled image; positives are same-label pixels of either image,
  negatives come only from the anchor's own image;
* ``within_image``: each view of each image is its own contrast set, the two views'
  losses are summed (official code);
* ``distortion``: the label-free variant; the positives of a pixel are the pixels
  of the other distortion that show the same source location (from the pixel-index
  maps carried through the augmentations), everything else is a negative.

Training batches come from a segmentation data module in ``pretrain_views`` mode
with ``pretrain_subset: labeled`` (``views``, ``masks``, ``index_maps``).

**Views, against the official code.**  The official code pairs each *un-augmented*
image with its augmented copy (``features_orig`` / ``features_aug``); the configs use
two random views (the paper's wording).  The official pairing is a config: give
``pretrain_views`` as a list whose first view has ``crop_scale: [1, 1]``,
``crop_ratio: [1, 1]`` and every flip / jitter / grey / blur probability 0.  The
self-pair deviation of the loss is documented in
:mod:`contraseg.lightning_modules.losses.pixel_contrast`.
"""

from __future__ import annotations

from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor

from contraseg.lightning_modules.components import Projector
from contraseg.lightning_modules.components.networks import out_channels, resize_labels
from contraseg.lightning_modules.dense_task import DenseTask
from contraseg.lightning_modules.losses.pixel_contrast import (
    cross_image_pixel_contrastive_loss,
    distortion_pixel_contrastive_loss,
    within_image_pixel_contrastive_loss,
)
from contraseg.lightning_modules.task import TaskLoss

__all__ = ["PixelContrast"]

MODES = ("cross_image", "within_image", "distortion")


class PixelContrast(DenseTask):
    """Zhao et al.'s supervised (or distortion-based) pixel-contrastive pretraining.

    The paper: DeepLabV3+ over an ImageNet ResNet-50 (``init_checkpoint``), SGD.

    Args:
        mode: ``cross_image``, ``within_image`` or ``distortion`` (module docstring).
        temperature: Softmax temperature (paper: 0.07).
        projector: 1x1-convolution projection (paper: 256 -> 256 with BatchNorm + ReLU).
        loss_size: Side the decoder features are resized to before the loss
            (Zhao's ``resize_size``); ``None`` keeps the decoder resolution.
        distortion_cell: Source cell side (input pixels) that counts as "the same
            pixel" in ``distortion`` mode (default: the input / loss-map stride).
        ignore_index: Label of pixels that are neither anchors nor candidates.
        block_size: Anchors per block of the memory-bounded loss.
        **kwargs: :class:`~contraseg.lightning_modules.dense_task.DenseTask` arguments.

    Raises:
        ValueError: On an unknown mode, bad temperature or sizes.
    """

    def __init__(
        self,
        mode: Literal["cross_image", "within_image", "distortion"] = "cross_image",
        temperature: float = 0.07,
        projector: Projector = Projector((256,), 256, True),  # noqa: B008
        loss_size: int | None = None,
        distortion_cell: int | None = None,
        ignore_index: int = 255,
        block_size: int = 4096,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)

    @classmethod
    def tiny_test_args(cls, init_args: dict[str, Any]) -> list[str]:  # noqa: D102
        # the decoder resolution of tiny crops is small already
        return [*super().tiny_test_args(init_args), "--model.init_args.loss_size", "null"]

    def configure_models(self) -> None:
        """DeepLabV3+ (or another smp network), then the 1x1-conv projection."""
        super().configure_models()
        hp = self.hparams
        self.head = Projector.of(hp.projector).conv(out_channels(self.net.decoder))

    def configure_losses(self) -> None:
        """Validate the mode, sizes and temperature."""
        hp = self.hparams
        if hp.mode not in MODES:
            raise ValueError(f"model.mode must be one of {MODES}, got {hp.mode!r}")
        for name in ("loss_size", "distortion_cell"):
            if hp[name] is not None and hp[name] < 1:
                raise ValueError(f"model.{name} must be >= 1 or null, got {hp[name]}")
        self.temperature = float(hp.temperature)
        self.mode, self.loss_size, self.distortion_cell = hp.mode, hp.loss_size, hp.distortion_cell
        self.ignore_index, self.block_size = hp.ignore_index, hp.block_size

    def project(self, images: Tensor) -> Tensor:
        """Projected pixel embeddings ``(B, D, h, w)`` at the loss resolution (not normalised)."""
        features = self.decode(images)
        if self.loss_size is not None:
            size = (self.loss_size, self.loss_size)
            features = F.interpolate(features, size=size, mode="bilinear", align_corners=False)
        return self.head(features)

    def training_loss(self, batch: dict[str, Any]) -> TaskLoss:
        """Pixel-contrastive loss of the first two views (``masks`` / ``index_maps``).

        Args:
            batch: ``pretrain_views`` batch with ``views``, ``masks`` and, for the
                distortion mode, ``index_maps`` and ``source_size``.

        Returns:
            The loss; logs hold the fraction of ignored loss pixels.

        Raises:
            ValueError: Without two views or the maps the mode needs.
        """
        views = batch["views"]
        key = "index_maps" if self.mode == "distortion" else "masks"
        if len(views) < 2 or len(batch.get(key, [])) < 2:
            raise ValueError(
                f"PixelContrast ({self.mode}) needs two views with {key} (use the data "
                "module's pretrain_views mode; supervised modes need pretrain_subset: labeled)"
            )
        if views[0].shape == views[1].shape:  # one pass (and batch statistics) for both views
            z1, z2 = self.project(torch.cat(views[:2])).chunk(2)
        else:
            z1, z2 = self.project(views[0]), self.project(views[1])
        maps = [resize_labels(m, tuple(z.shape[-2:])) for m, z in zip(batch[key][:2], (z1, z2))]
        common = {"temperature": self.temperature, "block_size": self.block_size}
        if self.mode == "distortion":
            cell = self.distortion_cell or max(1, views[0].shape[-1] // z1.shape[-1])
            width = batch["source_size"][:, 1]
            loss = distortion_pixel_contrastive_loss(z1, z2, *maps, width, cell, **common)
            return TaskLoss(loss)
        l1, l2 = maps
        common["ignore_index"] = self.ignore_index
        if self.mode == "within_image":
            loss = within_image_pixel_contrastive_loss(
                z1, l1, **common
            ) + within_image_pixel_contrastive_loss(z2, l2, **common)
        else:
            perm = torch.randperm(l1.shape[0], device=l1.device)
            loss = cross_image_pixel_contrastive_loss(z1, z2, l1, l2, perm, **common)
        return TaskLoss(loss, {"ignored_pixels": (l1 == self.ignore_index).float().mean()})
