"""Supervised local contrast (Hu et al., MICCAI 2021): stage 2 of a three-stage recipe.

*Semi-supervised Contrastive Learning for Label-efficient Medical Image
Segmentation* (official code ``xhu248/semi_cotrast_seg``):

1. **global** contrast (SimCLR, temperature 0.5) pretrains the U-Net *encoder* on
   all unlabeled images: :class:`~lightning_modules.simclr.SimCLR` with the same
   timm encoder;
2. **local** supervised contrast (this module) starts from that encoder
   (``init_checkpoint``) and trains encoder *and decoder* on the few labeled
   images: the last decoder features go through a 1x1-conv head (``C -> 256 ->
   128``), are L2-normalised and contrasted pixel-wise with the SupCon loss
   (:func:`~lightning_modules.losses.pixel_supcon.pixel_supcon_loss`, temperature
   0.1), positives = same label; background pixels are not anchors but stay in the
   denominators;
3. fine-tuning (Dice / cross-entropy) of the whole U-Net:
   :class:`~lightning_modules.segmentation_finetune.SegmentationFineTune` with
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
from torch import Tensor

from lightning_modules.components import ConvProjectionHead
from lightning_modules.dense_base import DensePretrainModule, out_channels
from lightning_modules.losses.contrastive import check_temperature
from lightning_modules.losses.pixel_contrast import stride_sample, tiled_pixel_contrastive_loss
from lightning_modules.losses.pixel_supcon import pixel_supcon_loss
from lightning_modules.pixel_contrast import resize_labels

__all__ = ["SupervisedLocalContrast"]


class SupervisedLocalContrast(DensePretrainModule):
    """Hu et al.'s stage 2: pixel SupCon on the decoder features of a U-Net.

    Args:
        encoder: timm encoder name (smp ``tu-`` encoder).
        architecture: smp architecture (the paper: ``unet``).
        in_channels: Input channels.
        init_checkpoint: Stage-1 checkpoint (e.g. a SimCLR run with the same timm
            encoder, ``backbone.model.*``) initialising the encoder.
        memory_mode: ``stride`` or ``block`` (module docstring).
        stride: Sub-sampling step of the ``stride`` mode (paper: 4).
        block: Window side of the ``block`` mode (paper: 32 on 64 / 160 px slices).
        temperature: Softmax temperature (paper: 0.1).
        head_hidden: Hidden width of the 1x1-conv head (paper: 256).
        head_out: Embedding dimension (paper: 128).
        background_index: Label whose pixels are not anchors (``None``: every class
            anchors).
        ignore_index: Label of pixels that are neither anchors nor candidates.
        block_size: Anchors per block of the memory-bounded loss.
        optimizer: ``adam``, ``adamw``, ``sgd`` or ``lars``.
        lr: Peak learning rate.
        weight_decay: Weight decay (not on biases and norms).
        momentum: Momentum for SGD/LARS.
        warmup_epochs: Linear warmup epochs before the cosine decay.
        min_lr_ratio: Final LR as a fraction of ``lr``.
        num_classes: Accepted and ignored (the CLI links ``data.num_classes`` here).

    Raises:
        ValueError: On an unknown memory mode, bad stride / block or temperature.
    """

    def __init__(
        self,
        encoder: str = "resnet18",
        architecture: str = "unet",
        in_channels: int = 3,
        init_checkpoint: str | None = None,
        memory_mode: Literal["stride", "block"] = "stride",
        stride: int = 4,
        block: int = 32,
        temperature: float = 0.1,
        head_hidden: int = 256,
        head_out: int = 128,
        background_index: int | None = 0,
        ignore_index: int = 255,
        block_size: int = 4096,
        optimizer: str = "adam",
        lr: float = 1e-4,
        weight_decay: float = 1e-5,
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
        if memory_mode not in ("stride", "block"):
            raise ValueError(f"model.memory_mode must be 'stride' or 'block', got {memory_mode!r}")
        if stride < 1 or block < 1:
            raise ValueError(f"model.stride and model.block must be >= 1, got {stride}, {block}")
        self.temperature = check_temperature(temperature)
        self.memory_mode, self.stride, self.block = memory_mode, stride, block
        self.background_index, self.ignore_index = background_index, ignore_index
        self.block_size = block_size
        self.head = ConvProjectionHead(out_channels(self.net.decoder), [head_hidden], head_out)

    def batch_loss(self, batch: dict[str, Any]) -> tuple[Tensor, dict[str, Tensor]]:
        """Pixel SupCon over the pixels of every view of the batch (``views``, ``masks``).

        Args:
            batch: ``pretrain_views`` batch of the labeled subset.

        Returns:
            ``(loss, logs)``; logs hold the fraction of anchor pixels.

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
            loss = tiled_pixel_contrastive_loss(
                z, labels, self.block, anchor_mask=anchors, kind="supcon", **common
            )
        else:
            emb, lab, _ = stride_sample(z, labels, self.stride)
            mask = anchors[:, :: self.stride, :: self.stride].reshape(-1)
            loss = pixel_supcon_loss(emb, lab, anchor_mask=mask, **common)
        return loss, {"anchor_pixels": anchors.float().mean()}
