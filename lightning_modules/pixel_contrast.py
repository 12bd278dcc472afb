"""Pixel-wise label contrast (Zhao et al., ICCV 2021): supervised dense pretraining.

*Contrastive Learning for Label-Efficient Semantic Segmentation* pretrains a
DeepLabV3+ with a supervised pixel-contrastive loss on the **labeled** images
themselves (the same few labels the model is later fine-tuned on), then fine-tunes
it with cross-entropy
(:class:`~lightning_modules.segmentation_finetune.SegmentationFineTune` with
``init_checkpoint`` and ``init_decoder: [""]``).

Two augmented views of each labeled image pass through the network; the decoder
output is resized to ``loss_size`` (bilinear; labels nearest), projected by two
1x1 convolutions (256 channels, BN + ReLU after the first) and L2-normalised.  The
loss (:mod:`lightning_modules.losses.pixel_contrast`, temperature 0.07) has three
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
"""

from __future__ import annotations

from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor

from lightning_modules.components import ConvProjectionHead
from lightning_modules.dense_base import DensePretrainModule, out_channels
from lightning_modules.losses.contrastive import check_temperature
from lightning_modules.losses.pixel_contrast import (
    cross_image_pixel_contrastive_loss,
    distortion_pixel_contrastive_loss,
    within_image_pixel_contrastive_loss,
)

__all__ = ["PixelContrast", "resize_labels"]

MODES = ("cross_image", "within_image", "distortion")


def resize_labels(labels: Tensor, size: tuple[int, int]) -> Tensor:
    """Nearest-neighbour resize of integer maps ``(B, H, W)`` to ``size`` (exact for ids)."""
    if tuple(labels.shape[-2:]) == tuple(size):
        return labels
    resized = F.interpolate(labels[:, None].double(), size=size, mode="nearest")
    return resized[:, 0].to(labels.dtype)


class PixelContrast(DensePretrainModule):
    """Zhao et al.'s supervised (or distortion-based) pixel-contrastive pretraining.

    Args:
        mode: ``cross_image``, ``within_image`` or ``distortion`` (module docstring).
        encoder: timm encoder name (the paper: ResNet-50; smp ``tu-`` encoder).
        architecture: smp architecture (the paper: ``deeplabv3plus``).
        in_channels: Input channels (4 for Potsdam RGB+IR).
        temperature: Softmax temperature (paper: 0.07).
        projection_channels: Width of the 1x1-conv projection (paper: 256).
        projection_layers: Number of 1x1 convolutions (paper: 2).
        loss_size: Side the decoder features are resized to before the loss
            (Zhao's ``resize_size``); ``None`` keeps the decoder resolution.
        distortion_cell: Source cell side (input pixels) that counts as "the same
            pixel" in ``distortion`` mode (default: the input / loss-map stride).
        ignore_index: Label of pixels that are neither anchors nor candidates.
        block_size: Anchors per block of the memory-bounded loss.
        init_checkpoint: Optional encoder initialisation (e.g. ImageNet timm weights,
            which the paper starts from).
        optimizer: ``sgd``, ``adam``, ``adamw`` or ``lars``.
        lr: Peak learning rate.
        weight_decay: Weight decay (not on biases and norms).
        momentum: Momentum for SGD/LARS.
        warmup_epochs: Linear warmup epochs before the cosine decay.
        min_lr_ratio: Final LR as a fraction of ``lr``.
        num_classes: Accepted and ignored (the CLI links ``data.num_classes`` here).

    Raises:
        ValueError: On an unknown mode, bad temperature or sizes.
    """

    def __init__(
        self,
        mode: Literal["cross_image", "within_image", "distortion"] = "cross_image",
        encoder: str = "resnet50",
        architecture: str = "deeplabv3plus",
        in_channels: int = 3,
        temperature: float = 0.07,
        projection_channels: int = 256,
        projection_layers: int = 2,
        loss_size: int | None = None,
        distortion_cell: int | None = None,
        ignore_index: int = 255,
        block_size: int = 4096,
        init_checkpoint: str | None = None,
        optimizer: str = "sgd",
        lr: float = 0.01,
        weight_decay: float = 1e-4,
        momentum: float = 0.9,
        warmup_epochs: float = 0.0,
        min_lr_ratio: float = 0.0,
        num_classes: int = 0,
    ) -> None:
        super().__init__(
            architecture, encoder, in_channels, init_checkpoint, optimizer, lr, weight_decay,
            momentum, warmup_epochs, min_lr_ratio,
        )  # fmt: skip
        self.save_hyperparameters()
        if mode not in MODES:
            raise ValueError(f"model.mode must be one of {MODES}, got {mode!r}")
        if projection_layers < 1 or projection_channels < 1:
            raise ValueError("model.projection_layers and model.projection_channels must be >= 1")
        for name, value in (("loss_size", loss_size), ("distortion_cell", distortion_cell)):
            if value is not None and value < 1:
                raise ValueError(f"model.{name} must be >= 1 or null, got {value}")
        self.temperature = check_temperature(temperature)
        self.mode, self.loss_size, self.distortion_cell = mode, loss_size, distortion_cell
        self.ignore_index, self.block_size = ignore_index, block_size
        self.head = ConvProjectionHead(
            out_channels(self.net.decoder),
            [projection_channels] * (projection_layers - 1),
            projection_channels,
        )

    def project(self, images: Tensor) -> Tensor:
        """Projected pixel embeddings ``(B, D, h, w)`` at the loss resolution (not normalised)."""
        features = self.decode(images)
        if self.loss_size is not None:
            size = (self.loss_size, self.loss_size)
            features = F.interpolate(features, size=size, mode="bilinear", align_corners=False)
        return self.head(features)

    def batch_loss(self, batch: dict[str, Any]) -> tuple[Tensor, dict[str, Tensor]]:
        """Pixel-contrastive loss of the first two views (``masks`` / ``index_maps``).

        Args:
            batch: ``pretrain_views`` batch with ``views``, ``masks`` and, for the
                distortion mode, ``index_maps`` and ``source_size``.

        Returns:
            ``(loss, logs)``; logs hold the fraction of ignored loss pixels.

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
            return loss, {}
        l1, l2 = maps
        common["ignore_index"] = self.ignore_index
        if self.mode == "within_image":
            loss = within_image_pixel_contrastive_loss(
                z1, l1, **common
            ) + within_image_pixel_contrastive_loss(z2, l2, **common)
        else:
            perm = torch.randperm(l1.shape[0], device=l1.device)
            loss = cross_image_pixel_contrastive_loss(z1, z2, l1, l2, perm, **common)
        return loss, {"ignored_pixels": (l1 == self.ignore_index).float().mean()}
