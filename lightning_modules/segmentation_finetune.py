"""Label-efficient fine-tuning: smp decoders over timm encoders, initialised from anything.

The encoder can start from random weights, from timm's ImageNet weights (when the
user has them), or from **any contraseg pretraining checkpoint**: weights under
``backbone.model.*`` are mapped by name onto the smp encoder (``encoder.model.*``),
and a report says what was loaded, what was skipped (shape mismatch) and what the
checkpoint did not have.  Validation accumulates a confusion matrix over the whole
split (mIoU, per-class IoU, overall accuracy, Cohen's kappa, F1) and can run
sliding-window inference on images larger than the training crops.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import lightning as L
import segmentation_models_pytorch as smp
import torch
import torch.nn.functional as F
from lightning.pytorch.utilities import rank_zero_info
from torch import Tensor, nn

from lightning_modules.components.optim import OPTIMIZERS, param_groups, scheduled_optimizer
from lightning_modules.components.sliding_window import sliding_window_inference
from lightning_modules.evaluators.segmentation_metrics import SegmentationMetrics

ARCHITECTURES = {"deeplabv3plus": "DeepLabV3Plus", "unet": "Unet", "fpn": "FPN"}


# where encoder weights live: contraseg pretraining, contraseg fine-tuning, a plain timm file
CHECKPOINT_PREFIXES = ("backbone.model.", "net.encoder.model.", "")


def load_encoder_from_checkpoint(
    encoder: nn.Module, checkpoint_path: str | Path
) -> dict[str, list[str]]:
    """Copy encoder weights from a checkpoint into an smp timm encoder, by name.

    Accepted: contraseg pretraining checkpoints (``backbone.model.*``), contraseg
    fine-tuning checkpoints (``net.encoder.model.*``) and plain timm state dicts (e.g.
    ImageNet weights you downloaded).  The first prefix whose names match the encoder
    is used.

    Args:
        encoder: ``model.encoder`` of an smp model with a ``tu-`` (timm) encoder.
        checkpoint_path: Lightning checkpoint (``state_dict`` inside) or a plain state dict.

    Returns:
        ``{"loaded": [...], "shape_mismatch": [...], "missing": [...]}`` key lists
        (names relative to the timm model), plus ``"prefix"``.
    """
    path = Path(checkpoint_path)
    if not path.is_file():
        raise FileNotFoundError(f"model.init_checkpoint {str(path)!r} does not exist")
    state = torch.load(path, map_location="cpu", weights_only=True)
    state = state.get("state_dict", state)
    target = encoder.model.state_dict()
    source: dict[str, Tensor] = {}
    prefix = ""
    for prefix in CHECKPOINT_PREFIXES:
        source = {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}
        if set(source) & set(target):
            break
    else:
        raise ValueError(
            f"{path} has no encoder weights under any of {CHECKPOINT_PREFIXES} that match the "
            f"{type(encoder.model).__name__} encoder: not a contraseg or timm checkpoint?"
        )
    report: dict[str, list[str]] = {
        "loaded": [], "shape_mismatch": [], "missing": [], "prefix": [prefix]
    }  # fmt: skip
    update = {}
    for name, value in target.items():
        if name not in source:
            report["missing"].append(name)
        elif source[name].shape != value.shape:
            report["shape_mismatch"].append(name)
        else:
            update[name] = source[name]
            report["loaded"].append(name)
    encoder.model.load_state_dict(update, strict=False)
    return report


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
        self.net = getattr(smp, ARCHITECTURES[architecture])(
            encoder_name=f"tu-{encoder}",
            encoder_weights=encoder_weights,
            in_channels=in_channels,
            classes=num_classes,
        )
        self.init_report: dict[str, list[str]] | None = None
        if init_checkpoint is not None:
            self.init_report = load_encoder_from_checkpoint(self.net.encoder, init_checkpoint)
            r = self.init_report
            rank_zero_info(
                f"encoder init from {init_checkpoint}: {len(r['loaded'])} tensors loaded, "
                f"{len(r['shape_mismatch'])} shape mismatches {r['shape_mismatch'][:5]}, "
                f"{len(r['missing'])} not in the checkpoint {r['missing'][:5]}"
            )
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
