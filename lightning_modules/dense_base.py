"""Shared plumbing of dense pretraining methods over an smp network.

GLCNet, pixel-wise label contrast (Zhao et al.) and supervised local contrast
(Hu et al.) all pretrain a whole segmentation network (encoder *and* decoder) on
multi-view batches of a segmentation data module in ``pretrain_views`` mode.  This
base class owns what they share:

* the smp network (:func:`build_dense_net`: a ``tu-<timm>`` encoder, the decoder,
  and *no* segmentation head), whose weights live under ``net.encoder.model.*`` and
  ``net.decoder.*`` (the layout
  :class:`~lightning_modules.segmentation_finetune.SegmentationFineTune` loads);
* optional encoder initialisation from an earlier checkpoint (e.g. Hu et al.'s
  stage 1 global contrast, or ImageNet weights);
* the optimiser with warmup + cosine, representation export (``predict``) and a
  validation loop that only drives callbacks such as the rank monitor.

A method implements :meth:`DensePretrainModule.batch_loss`.
"""

from __future__ import annotations

from typing import Any

import lightning as L
import segmentation_models_pytorch as smp
from lightning.pytorch.utilities import rank_zero_info
from torch import Tensor, nn

from lightning_modules.components.checkpoint_init import (
    load_encoder_from_checkpoint,
    summarize,
)
from lightning_modules.components.optim import OPTIMIZERS, param_groups, scheduled_optimizer

__all__ = ["ARCHITECTURES", "DensePretrainModule", "build_dense_net"]

ARCHITECTURES = {"deeplabv3plus": "DeepLabV3Plus", "unet": "Unet", "fpn": "FPN"}


def build_dense_net(architecture: str, encoder: str, in_channels: int) -> nn.Module:
    """An smp network over a timm encoder whose forward returns the decoder features.

    Args:
        architecture: ``deeplabv3plus``, ``unet`` or ``fpn``.
        encoder: timm model name (smp ``tu-<name>`` encoder).
        in_channels: Input channels.

    Returns:
        The smp model with ``segmentation_head`` replaced by ``nn.Identity`` (no unused
        parameters in pretraining).

    Raises:
        ValueError: On an unknown architecture.
    """
    if architecture not in ARCHITECTURES:
        raise ValueError(
            f"model.architecture must be one of {list(ARCHITECTURES)}, got {architecture!r}"
        )
    net = getattr(smp, ARCHITECTURES[architecture])(
        encoder_name=f"tu-{encoder}", encoder_weights=None, in_channels=in_channels, classes=1
    )
    net.segmentation_head = nn.Identity()
    return net


def out_channels(module: nn.Module) -> int:
    """Output channels of the last convolution of ``module``."""
    convs = [m for m in module.modules() if isinstance(m, nn.Conv2d)]
    if not convs:
        raise ValueError(f"{type(module).__name__} has no Conv2d layer")
    return convs[-1].out_channels


class DensePretrainModule(L.LightningModule):
    """Base of dense pretraining methods (see the module docstring).

    Args:
        architecture: smp architecture of :func:`build_dense_net`.
        encoder: timm encoder name.
        in_channels: Input channels (4 for Potsdam RGB+IR).
        init_checkpoint: Optional checkpoint initialising the encoder (contraseg
            pretraining / fine-tuning checkpoint or a plain timm state dict).
        optimizer: ``adam``, ``adamw``, ``sgd`` or ``lars``.
        lr: Peak learning rate.
        weight_decay: Weight decay of weights (biases and norms get none).
        momentum: Momentum for SGD/LARS.
        warmup_epochs: Linear warmup length in epochs before the cosine decay.
        min_lr_ratio: Final LR of the cosine schedule as a fraction of ``lr``.

    Raises:
        ValueError: On an unknown optimiser or architecture, or negative warmup.
    """

    def __init__(
        self,
        architecture: str,
        encoder: str,
        in_channels: int,
        init_checkpoint: str | None,
        optimizer: str,
        lr: float,
        weight_decay: float,
        momentum: float,
        warmup_epochs: float,
        min_lr_ratio: float,
    ) -> None:
        super().__init__()
        if optimizer.lower() not in OPTIMIZERS:
            raise ValueError(f"model.optimizer must be one of {OPTIMIZERS}, got {optimizer!r}")
        if warmup_epochs < 0:
            raise ValueError(f"model.warmup_epochs must be >= 0, got {warmup_epochs}")
        self.net = build_dense_net(architecture, encoder, in_channels)
        self.feature_dim = self.net.encoder.out_channels[-1]
        self.init_report: dict[str, list[str]] | None = None
        if init_checkpoint is not None:
            self.init_report = load_encoder_from_checkpoint(self.net.encoder, init_checkpoint)
            rank_zero_info(f"encoder init from {init_checkpoint}: {summarize(self.init_report)}")
        self.optim_cfg = {
            "name": optimizer,
            "lr": float(lr),
            "weight_decay": weight_decay,
            "momentum": momentum,
        }
        self.warmup_epochs, self.min_lr_ratio = warmup_epochs, min_lr_ratio

    # ----------------------------------------------------------------- methods implement
    def batch_loss(self, batch: dict[str, Any]) -> tuple[Tensor, dict[str, Tensor]]:
        """Loss of a ``pretrain_views`` batch and extra scalars to log."""
        raise NotImplementedError

    # ----------------------------------------------------------------- shared behaviour
    def decode(self, images: Tensor) -> Tensor:
        """Decoder features ``(B, C_dec, h, w)`` (1/4 resolution for DeepLabV3+, full for U-Net)."""
        return self.net(images)

    def embed(self, images: Tensor) -> Tensor:
        """Global average pool of the last encoder map (rank monitor, export)."""
        return self.net.encoder(images)[-1].mean(dim=(2, 3))

    def forward(self, images: Tensor) -> Tensor:
        """Alias of :meth:`embed`."""
        return self.embed(images)

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> Tensor:
        """:meth:`batch_loss` of the batch; logs ``train/loss`` and ``train/<part>``."""
        loss, logs = self.batch_loss(batch)
        bsz = batch["views"][0].shape[0]
        self.log("train/loss", loss, prog_bar=True, batch_size=bsz, sync_dist=True)
        for key, value in logs.items():
            self.log(f"train/{key}", value, batch_size=bsz, sync_dist=True)
        return loss

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        """No labels to score: the loop only drives callbacks (e.g. the rank monitor)."""
        return None

    def predict_step(self, batch: dict[str, Any], batch_idx: int) -> dict[str, Tensor]:
        """Representations (and labels) of a batch, e.g. to export embeddings."""
        return {"embedding": self.embed(batch["image"]), "label": batch["label"]}

    def configure_optimizers(self) -> dict[str, Any]:
        """Optimiser (no decay on biases and norms) with warmup + cosine per step."""
        return scheduled_optimizer(
            param_groups(self), self.trainer, self.warmup_epochs, self.min_lr_ratio,
            **self.optim_cfg,
        )  # fmt: skip
