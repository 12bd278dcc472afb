"""Supervised local contrast (Hu et al., MICCAI 2021): stage 2 of a three-stage recipe.

*Semi-supervised Contrastive Learning for Label-efficient Medical Image
Segmentation* (official code ``xhu248/semi_cotrast_seg``):

1. **global** contrast (SimCLR, temperature 0.5) pretrains the U-Net *encoder* on
   all unlabeled images: :class:`~contraseg.lightning_modules.simclr.SimCLR` with the same
   timm encoder;
2. **local** supervised contrast (this module) starts from that encoder
   (``init_checkpoint``) and trains encoder *and decoder* on the few labeled
   images: the last decoder features (64 channels: the project's U-Net ends at 64 like
   the official one) go through a 1x1-conv head (``64 -> 256 -> 128``, no BN/ReLU
   between as in the official ``mlp``; ``projector.batch_norm`` adds them), are L2-normalised
   and contrasted pixel-wise with the SupCon loss
   (:func:`~contraseg.lightning_modules.losses.pixel_supcon.pixel_supcon_loss`, temperature
   0.1), positives = same label; background pixels are not anchors but stay in the
   denominators;
3. fine-tuning (Dice / cross-entropy) of the whole U-Net:
   :class:`~contraseg.lightning_modules.segmentation_finetune.SegmentationFineTune` with
   ``init_checkpoint`` = this module's checkpoint and ``init_decoder: [""]``.

The loss over all ``2 B H W`` pixels of the two views is quadratic; the paper
bounds it in one of two ways (``memory_mode``): ``stride`` keeps every
``stride``-th pixel in both directions, ``block`` splits the maps into ``block x
block`` windows and averages the per-window losses (a window meets only pixels of
the same window in all images and views).
"""

from __future__ import annotations

from typing import Any, Literal

import torch

from contraseg.lightning_modules.components import Projector
from contraseg.lightning_modules.components.networks import out_channels, resize_labels
from contraseg.lightning_modules.dense_task import DenseTask
from contraseg.lightning_modules.losses.pixel_blocked import stride_sample
from contraseg.lightning_modules.losses.pixel_supcon import (
    pixel_supcon_loss,
    tiled_pixel_supcon_loss,
)
from contraseg.lightning_modules.task import TaskLoss

__all__ = ["SupervisedLocalContrast"]


class SupervisedLocalContrast(DenseTask):
    """Hu et al.'s stage 2: pixel SupCon on the decoder features of a U-Net.

    ``init_checkpoint`` (a :class:`~contraseg.lightning_modules.task.BaseTask` argument) is the
    stage-1 checkpoint, e.g. a SimCLR run with the same timm encoder.  The official recipe:
    U-Net, Adam at lr 1e-4, weight decay 1e-4, constant lr (``min_lr_ratio: 1``), stage-2
    augmentation intensity only (brightness, gamma, noise; no crop or flip).

    Args:
        architecture: Segmentation architecture (the paper: ``unet``).
        memory_mode: ``stride`` or ``block`` (module docstring).
        stride: Sub-sampling step of the ``stride`` mode (paper: 4).
        block: Window side of the ``block`` mode (paper: 32 on 64 / 160 px slices).
        temperature: Softmax temperature (paper: 0.1).
        projector: 1x1-convolution head (paper: 256 -> 128; the official ``mlp`` has nothing
            between the convolutions).
        background_index: Label whose pixels are not anchors (``None``: every class
            anchors).
        ignore_index: Label of pixels that are neither anchors nor candidates.
        block_size: Anchors per block of the memory-bounded loss.
        **kwargs: :class:`~contraseg.lightning_modules.dense_task.DenseTask` arguments.

    Raises:
        ValueError: On an unknown memory mode, bad stride / block or temperature.
    """

    def __init__(
        self,
        architecture: str = "unet",
        memory_mode: Literal["stride", "block"] = "stride",
        stride: int = 4,
        block: int = 32,
        temperature: float = 0.1,
        projector: Projector = Projector((256,), 128, False),  # noqa: B008
        background_index: int | None = 0,
        ignore_index: int = 255,
        block_size: int = 4096,
        **kwargs: Any,
    ) -> None:
        super().__init__(architecture=architecture, **kwargs)

    def configure_models(self) -> None:
        """The smp network (U-Net in the paper), then the 1x1-conv head."""
        super().configure_models()
        hp = self.hparams
        self.head = Projector.of(hp.projector).conv(out_channels(self.net.decoder))

    def configure_losses(self) -> None:
        """Validate the memory mode and temperature."""
        hp = self.hparams
        if hp.memory_mode not in ("stride", "block"):
            raise ValueError(
                f"model.memory_mode must be 'stride' or 'block', got {hp.memory_mode!r}"
            )
        if hp.stride < 1 or hp.block < 1:
            raise ValueError(
                f"model.stride and model.block must be >= 1, got {hp.stride}, {hp.block}"
            )
        self.temperature = float(hp.temperature)
        self.memory_mode, self.stride, self.block = hp.memory_mode, hp.stride, hp.block
        self.background_index, self.ignore_index = hp.background_index, hp.ignore_index
        self.block_size = hp.block_size

    def training_loss(self, batch: dict[str, Any]) -> TaskLoss:
        """Pixel SupCon over the pixels of every view of the batch (``views``, ``masks``).

        Args:
            batch: ``pretrain_views`` batch of the labeled subset.

        Returns:
            The loss; logs hold the fraction of anchor pixels.

        Raises:
            ValueError: Without masks for every view.
        """
        views, masks = batch["views"], batch.get("masks", [])
        if len(masks) != len(views):
            raise ValueError(
                "SupervisedLocalContrast needs a mask per view (use the data module's "
                "pretrain_views mode with pretrain_subset: labeled)"
            )
        z = self.head(self.decode(torch.cat(views)))  # normalised (in float32) by the loss
        labels = torch.cat([resize_labels(m, tuple(z.shape[-2:])) for m in masks])
        anchors = labels != self.ignore_index
        if self.background_index is not None:
            anchors &= labels != self.background_index
        common = {
            "temperature": self.temperature,
            "ignore_index": self.ignore_index,
            "block_size": self.block_size,
        }
        if self.memory_mode == "block":
            loss = tiled_pixel_supcon_loss(z, labels, self.block, anchor_mask=anchors, **common)
        else:
            emb, lab, _ = stride_sample(z, labels, self.stride)
            mask = anchors[:, :: self.stride, :: self.stride].reshape(-1)
            loss = pixel_supcon_loss(emb, lab, anchor_mask=mask, **common)
        return TaskLoss(loss, {"anchor_pixels": anchors.float().mean()})
