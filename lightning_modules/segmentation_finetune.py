"""Label-efficient fine-tuning: smp decoders over timm encoders, initialised from anything.

The encoder can start from random weights, from timm's ImageNet weights (when the
user has them), or from **any contraseg pretraining checkpoint**: weights under
``backbone.model.*`` are mapped by name onto the smp encoder (``encoder.model.*``),
and a report says what was loaded, what was skipped (shape mismatch) and what the
checkpoint did not have (see ``components.checkpoint_init``, which can also load decoder
parts such as GLCNet's ASPP and drop extra pretraining input channels).  Validation
accumulates a confusion matrix over the whole split (mIoU, per-class IoU, overall
accuracy, Cohen's kappa, F1) and can run sliding-window inference on images larger than
the training crops.
"""

from __future__ import annotations

from typing import Any, Literal

import lightning as L
import segmentation_models_pytorch as smp
import torch
import torch.nn.functional as F
from lightning.pytorch.utilities import rank_zero_info
from torch import Tensor

from lightning_modules.components.checkpoint_init import (
    CHECKPOINT_PREFIXES,
    init_from_checkpoint,
    load_encoder_from_checkpoint,
    summarize,
)
from lightning_modules.components.optim import OPTIMIZERS, param_groups, scheduled_optimizer
from lightning_modules.components.sliding_window import sliding_window_inference
from lightning_modules.evaluators.segmentation_metrics import SegmentationMetrics

ARCHITECTURES = {"deeplabv3plus": "DeepLabV3Plus", "unet": "Unet", "fpn": "FPN"}
__all__ = ["CHECKPOINT_PREFIXES", "SegmentationFineTune", "load_encoder_from_checkpoint"]


class SegmentationFineTune(L.LightningModule):
    """Semantic segmentation with an smp decoder over a timm encoder.

    Args:
        num_classes: Output classes (linked to ``data.num_classes`` by the CLI).
        in_channels: Input channels (linked to ``data.in_channels``; 4 for RGB+IR).
        architecture: ``deeplabv3plus``, ``unet`` or ``fpn``.
        encoder: timm model name (used as smp's ``tu-<name>`` encoder).
        encoder_weights: ``None`` (random) or ``"imagenet"`` (timm weights; needs them
            downloadable or cached).
        init_checkpoint: Checkpoint initialising the encoder: a contraseg pretraining or
            fine-tuning checkpoint, or a plain timm state dict (e.g. ImageNet weights).
        init_decoder: Decoder name prefixes also loaded from ``init_checkpoint``'s
            ``net.decoder.*`` (same smp architecture): ``["aspp"]`` for the DeepLabV3+ ASPP
            (GLCNet protocol), ``[""]`` for the whole decoder.  The head stays random.
        slice_input_channels: Load checkpoint convs with extra trailing input channels
            (e.g. image + mask pretraining) on their first ``in_channels`` channels.
        freeze_encoder: Train only the decoder and head (linear-probe-style segmentation).
        ignore_index: Label value ignored by the loss and metrics.
        optimizer: ``adamw``, ``adam``, ``sgd`` or ``lars``.
        lr: Peak learning rate.
        weight_decay: Weight decay (not applied to biases and norms).
        warmup_epochs: Linear warmup epochs before the cosine decay.
        sliding_window: Window size for validation/test inference (``None``: whole image).
        sliding_stride: Stride of the sliding window (default: half the window).
        class_names: Names used for per-class IoU logging (default ``class_<i>``).
    """

    def __init__(
        self,
        num_classes: int = 2,
        in_channels: int = 3,
        architecture: Literal["deeplabv3plus", "unet", "fpn"] = "deeplabv3plus",
        encoder: str = "resnet18",
        encoder_weights: str | None = None,
        init_checkpoint: str | None = None,
        init_decoder: list[str] | None = None,
        slice_input_channels: bool = True,
        freeze_encoder: bool = False,
        ignore_index: int = 255,
        optimizer: str = "adamw",
        lr: float = 1e-3,
        weight_decay: float = 1e-4,
        warmup_epochs: float = 0.0,
        sliding_window: int | None = None,
        sliding_stride: int | None = None,
        class_names: list[str] | None = None,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        if num_classes < 2:
            raise ValueError(f"model.num_classes must be >= 2, got {num_classes}")
        if architecture not in ARCHITECTURES:
            raise ValueError(f"model.architecture must be one of {list(ARCHITECTURES)}")
        if optimizer.lower() not in OPTIMIZERS:
            raise ValueError(f"model.optimizer must be one of {OPTIMIZERS}, got {optimizer!r}")
        if init_decoder and init_checkpoint is None:
            raise ValueError("model.init_decoder needs model.init_checkpoint")
        self.net = getattr(smp, ARCHITECTURES[architecture])(
            encoder_name=f"tu-{encoder}",
            encoder_weights=encoder_weights,
            in_channels=in_channels,
            classes=num_classes,
        )
        self.init_report: dict[str, list[str]] | None = None
        if init_checkpoint is not None:
            self.init_report = init_from_checkpoint(
                self.net, init_checkpoint, init_decoder, slice_input_channels
            )
            rank_zero_info(f"init from {init_checkpoint}: {summarize(self.init_report)}")
        if freeze_encoder:
            self.net.encoder.requires_grad_(False)
        self.num_classes, self.ignore_index = num_classes, ignore_index
        self.class_names = class_names or [f"class_{i}" for i in range(num_classes)]
        self.val_metrics = SegmentationMetrics(num_classes, ignore_index)
        self.test_metrics = SegmentationMetrics(num_classes, ignore_index)

    def setup(self, stage: str) -> None:
        """Take class names from the datamodule when none were given."""
        names = getattr(getattr(self.trainer, "datamodule", None), "classes", None)
        if self.hparams.class_names is None and names and len(names) == self.num_classes:
            self.class_names = list(names)

    def forward(self, images: Tensor) -> Tensor:
        """Logits ``(B, num_classes, H, W)``."""
        return self.net(images)

    def _infer(self, images: Tensor) -> Tensor:
        window = self.hparams.sliding_window
        if window is None:
            return self(images)
        stride = self.hparams.sliding_stride or max(1, window // 2)
        return sliding_window_inference(self, images, window, stride, self.num_classes)

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> Tensor:
        """Cross-entropy with ignore index on the labeled crops."""
        logits = self(batch["image"])
        loss = F.cross_entropy(logits.float(), batch["mask"], ignore_index=self.ignore_index)
        self.log("train/loss", loss, prog_bar=True, batch_size=logits.shape[0], sync_dist=True)
        return loss

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> dict[str, Tensor]:
        """Accumulate the confusion matrix; returns predictions for callbacks."""
        return self._eval_step(batch, self.val_metrics)

    def test_step(self, batch: dict[str, Any], batch_idx: int) -> dict[str, Tensor]:  # noqa: D102
        return self._eval_step(batch, self.test_metrics)

    def predict_step(self, batch: dict[str, Any], batch_idx: int) -> dict[str, Any]:
        """Class-index predictions ``(B, H, W)`` with image names (see ``callbacks``)."""
        return {"pred": self._infer(batch["image"]).argmax(1), "name": batch.get("name")}

    def _eval_step(self, batch: dict[str, Any], metrics: SegmentationMetrics) -> dict[str, Tensor]:
        logits = self._infer(batch["image"])
        loss = F.cross_entropy(logits.float(), batch["mask"], ignore_index=self.ignore_index)
        preds = logits.argmax(1)
        metrics.update(preds, batch["mask"])
        stage = "val" if metrics is self.val_metrics else "test"
        self.log(f"{stage}/loss", loss, batch_size=logits.shape[0], sync_dist=True)
        return {"pred": preds}

    def _log_metrics(self, metrics: SegmentationMetrics, stage: str) -> None:
        values = metrics.compute()
        for key in ("miou", "overall_accuracy", "kappa", "mean_f1"):
            self.log(f"{stage}/{key}", values[key], prog_bar=key == "miou")
        for name, iou in zip(self.class_names, values["iou_per_class"]):
            if not torch.isnan(iou):
                self.log(f"{stage}/iou/{name}", iou)
        metrics.reset()

    def on_validation_epoch_end(self) -> None:  # noqa: D102
        self._log_metrics(self.val_metrics, "val")

    def on_test_epoch_end(self) -> None:  # noqa: D102
        self._log_metrics(self.test_metrics, "test")

    def configure_optimizers(self) -> dict[str, Any]:
        """Optimiser over trainable parameters with warmup + cosine per step."""
        hp = self.hparams
        return scheduled_optimizer(
            param_groups(self.net), self.trainer, hp.warmup_epochs,
            name=hp.optimizer, lr=hp.lr, weight_decay=hp.weight_decay,
        )  # fmt: skip
