"""Label-efficient fine-tuning: smp decoders over timm encoders, initialised from anything.

The encoder can start from random weights, from timm's ImageNet weights (when the
user has them), or from **any contraseg pretraining checkpoint**: weights under
``encoder.model.*`` are mapped by name onto the smp encoder (``net.encoder.model.*``),
and a report says what was loaded, what was skipped (shape mismatch) and what the
checkpoint did not have (see ``components.checkpoint_init``, which can also load decoder
parts such as GLCNet's ASPP and drop extra pretraining input channels).  Validation
accumulates a confusion matrix over the whole split (mIoU, per-class IoU, overall
accuracy, Cohen's kappa, F1) and can run sliding-window inference on images larger than
the training crops.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Literal

import torch
import torch.nn.functional as F
from segmentation_models_pytorch.losses import DiceLoss
from torch import Tensor

from contraseg.lightning_modules.components.checkpoint_init import init_from_checkpoint
from contraseg.lightning_modules.dense_task import DenseTask
from contraseg.lightning_modules.evaluators.segmentation_metrics import SegmentationMetrics
from contraseg.lightning_modules.evaluators.volume_metrics import VolumeMetrics
from contraseg.lightning_modules.task import TaskLoss

__all__ = ["SegmentationFineTune"]


def window_logits(
    predictor: Callable[[Tensor], Tensor],
    images: Tensor,
    window: int | tuple[int, int],
    stride: int | tuple[int, int],
    batch_size: int = 8,
    mode: Literal["constant", "gaussian"] = "constant",
) -> Tensor:
    """Logits of images of any size from windows: MONAI's ``sliding_window_inference``.

    Windows of ``window`` pixels every ``stride`` pixels (the last flush with the border;
    an image smaller than the window is padded and the output cropped back), ``batch_size``
    windows per call, overlapping outputs averaged (``constant``) or weighted by a Gaussian
    importance map (``gaussian``).  The one sliding window of the project: images, and the
    slices of volumes (:meth:`SegmentationFineTune.infer_volume`).

    Raises:
        ValueError: A stride outside ``[1, window]``.
    """
    from monai.inferers import sliding_window_inference

    windows = (window, window) if isinstance(window, int) else tuple(window)
    strides = (stride, stride) if isinstance(stride, int) else tuple(stride)
    if any(not 1 <= s <= w for s, w in zip(strides, windows)):
        raise ValueError(f"sliding_stride {stride} must lie in [1, sliding_window {window}]")
    # MONAI takes the overlap and steps int(window * (1 - overlap)) pixels: a quarter pixel
    # of margin makes that step exactly ``stride`` despite rounding (e.g. window 12, stride 5)
    overlap = [max(0.0, 1 - (s + 0.25) / w) for s, w in zip(strides, windows)]
    return sliding_window_inference(images, windows, batch_size, predictor, overlap=overlap,
                                    mode=mode)  # fmt: skip


class SegmentationFineTune(DenseTask):
    """Semantic segmentation with an smp decoder over a timm encoder.

    ``init_checkpoint`` (a :class:`~contraseg.lightning_modules.task.BaseTask` argument) initialises
    the encoder from a contraseg pretraining or fine-tuning checkpoint, or a plain timm
    state dict; ``freeze_encoder`` trains only the decoder and head.

    Args:
        num_classes: Output classes (linked from ``data.num_classes`` by the CLI).
        init_decoder: Decoder name prefixes also loaded from ``init_checkpoint``'s
            ``net.decoder.*`` (same smp architecture): ``["aspp"]`` for the DeepLabV3+ ASPP
            (GLCNet protocol), ``[""]`` for the whole decoder.  The head stays random.
        slice_input_channels: Load checkpoint convs with extra trailing input channels
            (e.g. image + mask pretraining) on their first ``in_channels`` channels.
        ignore_index: Label value ignored by the loss and metrics.
        sliding_window: Window size for validation/test inference (``None``: whole image).
        sliding_stride: Stride of the sliding window (default: half the window).
        class_names: Names used for per-class IoU logging (default: the data module's).
        loss: ``ce`` (cross-entropy), ``dice`` (smp's multiclass soft Dice) or ``ce+dice``
            (their sum).
        attention_channel: ``none``, or ``ones``: append a constant all-ones channel to
            every input (the network takes ``in_channels + 1``), so an encoder pretrained
            with an attention channel (Lee et al.) keeps its first convolution whole.
        miou_classes: Average ``val/miou`` / ``test/miou`` over these class names only
            (SYNTHIA -> Cityscapes's 16- and 13-class protocols); every class's IoU is
            still logged.  ``null``: all classes.
        **kwargs: :class:`~contraseg.lightning_modules.dense_task.DenseTask` arguments.
    """

    def __init__(
        self,
        num_classes: int = 2,
        init_decoder: list[str] | None = None,
        slice_input_channels: bool = True,
        ignore_index: int = 255,
        sliding_window: int | None = None,
        sliding_stride: int | None = None,
        class_names: list[str] | None = None,
        loss: Literal["ce", "dice", "ce+dice"] = "ce",
        attention_channel: Literal["none", "ones"] = "none",
        miou_classes: list[str] | None = None,
        **kwargs: Any,
    ) -> None:
        if miou_classes is not None and not miou_classes:
            raise ValueError("model.miou_classes is empty: list class names, or null for all")
        if loss not in ("ce", "dice", "ce+dice"):
            raise ValueError(f"model.loss must be 'ce', 'dice' or 'ce+dice', got {loss!r}")
        if attention_channel not in ("none", "ones"):
            raise ValueError(
                f"model.attention_channel must be 'none' or 'ones', got {attention_channel!r}"
            )
        if num_classes < 2:
            raise ValueError(f"model.num_classes must be >= 2, got {num_classes}")
        if init_decoder and kwargs.get("init_checkpoint") is None:
            raise ValueError("model.init_decoder needs model.init_checkpoint")
        super().__init__(**kwargs)

    @classmethod
    def tiny_test_args(cls, init_args: dict[str, Any]) -> list[str]:  # noqa: D102
        args = super().tiny_test_args(init_args)
        if str(init_args.get("architecture", "")).startswith("segmenter"):
            args[1] = "vit_tiny_patch16_224"  # a ViT architecture: the smallest ViT, not ResNet
        if init_args.get("encoder_weights"):  # no download in a smoke test
            args += ["--model.init_args.encoder_weights", "null"]
        if init_args.get("init_decoder"):  # the checkpoint is dropped by the base
            args += ["--model.init_args.init_decoder", "null"]
        if init_args.get("sliding_window"):
            args += ["--model.init_args.sliding_window", "32",
                     "--model.init_args.sliding_stride", "16"]  # fmt: skip
        return args

    def head_classes(self) -> int:  # noqa: D102
        return self.hparams.num_classes

    def task_state(self) -> dict[str, Any]:
        """The class names in use (the data module's, when none were given): export, predict."""
        return {**super().task_state(), "class_names": list(self.class_names)}

    def load_task_state(self, state: dict[str, Any]) -> None:  # noqa: D102
        super().load_task_state(state)
        if self.hparams.class_names is None and len(state.get("class_names") or []) == \
                self.num_classes:  # fmt: skip
            self.class_names = list(state["class_names"])

    def encoder_in_channels(self) -> int:  # noqa: D102
        return self.hparams.in_channels + (self.hparams.attention_channel == "ones")

    def configure_losses(self) -> None:
        """Cross-entropy and / or smp's multiclass soft Dice, both with the ignore index."""
        hp = self.hparams
        self.use_ce, self.use_dice = "ce" in hp.loss.split("+"), "dice" in hp.loss
        self.dice = DiceLoss("multiclass", ignore_index=hp.ignore_index) if self.use_dice else None

    def segmentation_loss(self, logits: Tensor, mask: Tensor) -> Tensor:
        """The configured loss in float32 (``loss``)."""
        logits = logits.float()
        total = logits.new_zeros(())
        if self.use_ce:
            total = total + F.cross_entropy(logits, mask, ignore_index=self.ignore_index)
        if self.dice is not None:
            total = total + self.dice(logits, mask)
        return total

    def _with_attention(self, images: Tensor) -> Tensor:
        if self.hparams.attention_channel == "ones":
            return torch.cat([images, images.new_ones(images[:, :1].shape)], dim=1)
        return images

    def embed(self, images: Tensor) -> Tensor:  # noqa: D102
        return super().embed(self._with_attention(images))

    def configure_metrics(self) -> None:
        """Confusion-matrix metrics over the whole validation / test split."""
        hp = self.hparams
        self.num_classes, self.ignore_index = hp.num_classes, hp.ignore_index
        self.class_names = hp.class_names or [f"class_{i}" for i in range(hp.num_classes)]
        self.val_metrics = SegmentationMetrics(hp.num_classes, hp.ignore_index)
        self.test_metrics = SegmentationMetrics(hp.num_classes, hp.ignore_index)
        self.val_volumes = VolumeMetrics(hp.num_classes)  # medical data: whole-volume batches
        self.test_volumes = VolumeMetrics(hp.num_classes)

    def load_checkpoint(self, path: str) -> dict[str, list[str]]:
        """Encoder and, with ``init_decoder``, decoder parts by name (head stays random)."""
        hp = self.hparams
        return init_from_checkpoint(self.net, path, hp.init_decoder, hp.slice_input_channels)

    def setup(self, stage: str) -> None:
        """Take class names from the datamodule when none were given."""
        super().setup(stage)
        names = getattr(getattr(self.trainer, "datamodule", None), "classes", None)
        if self.hparams.class_names is None and names and len(names) == self.num_classes:
            self.class_names = list(names)

    def forward(self, images: Tensor) -> Tensor:
        """Logits ``(B, num_classes, H, W)``."""
        return self.net(self._with_attention(images))

    def _infer(self, images: Tensor, predictor: Callable[[Tensor], Tensor] | None = None) -> Tensor:
        """Logits of whole images (padded to the stride) or by sliding window.

        ``predictor``: the network to run (default: this model; e.g. a frozen copy).
        """
        predictor = self if predictor is None else predictor
        window = self.hparams.sliding_window
        if window is None:  # whole images of any size: pad to the network's stride, crop back
            h, w = images.shape[-2:]
            multiple = self.net.pad_multiple  # the network contract
            pad_h, pad_w = -h % multiple, -w % multiple
            if pad_h or pad_w:
                return predictor(F.pad(images, (0, pad_w, 0, pad_h)))[..., :h, :w]
            return predictor(images)
        stride = self.hparams.sliding_stride or max(1, window // 2)
        return window_logits(predictor, images, window, stride)

    def training_loss(self, batch: dict[str, Any]) -> TaskLoss:
        """The configured loss (``loss``) with ignore index on the labeled crops."""
        return TaskLoss(self.segmentation_loss(self(batch["image"]), batch["mask"]))

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> dict[str, Tensor]:
        """Accumulate the confusion matrix; returns predictions for callbacks."""
        return self._eval_step(batch, self.val_metrics)

    def test_step(self, batch: dict[str, Any], batch_idx: int) -> dict[str, Tensor]:  # noqa: D102
        return self._eval_step(batch, self.test_metrics)

    def predict_step(self, batch: dict[str, Any], batch_idx: int) -> dict[str, Any]:
        """Class-index predictions ``(B, H, W)`` with image names (see ``callbacks``)."""
        return {"pred": self._infer(batch["image"]).argmax(1), "name": batch.get("name")}

    VOLUME_CHUNK = 16  # slices per forward when a volume is predicted slice by slice

    def infer_volume(self, volume: Tensor) -> Tensor:
        """Logits ``(D, K, H, W)`` of a ``(C, D, H, W)`` volume, slice by slice.

        With ``sliding_window`` each slice goes through MONAI's ``sliding_window_inference``
        (window ``sliding_window``, overlap from ``sliding_stride``); otherwise whole slices.
        """
        slices = volume.permute(1, 0, 2, 3)
        window = self.hparams.sliding_window
        outs = []
        for chunk in slices.split(self.VOLUME_CHUNK):
            if window is None:
                outs.append(self._infer(chunk))
            else:
                stride = self.hparams.sliding_stride or max(1, window // 2)
                outs.append(window_logits(self, chunk, window, stride, self.VOLUME_CHUNK))
        return torch.cat(outs)

    def _eval_step(self, batch: dict[str, Any], metrics: SegmentationMetrics) -> dict[str, Tensor]:
        stage = "val" if metrics is self.val_metrics else "test"
        if batch["image"].ndim == 5:  # one whole volume (contraseg.datamodules.medical)
            return self._eval_volume(batch, metrics, stage)
        logits = self._infer(batch["image"])
        loss = self.segmentation_loss(logits, batch["mask"])
        preds = logits.argmax(1)
        metrics.update(preds, batch["mask"])
        self.log(f"{stage}/loss", loss, batch_size=logits.shape[0], sync_dist=True)
        return {"pred": preds}

    def _eval_volume(self, batch: dict[str, Any], metrics: SegmentationMetrics,
                     stage: str) -> dict[str, Tensor]:  # fmt: skip
        if batch["image"].shape[0] != 1:
            raise ValueError("volume evaluation takes one volume per batch (val batch size 1)")
        logits = self.infer_volume(batch["image"][0])
        mask = batch["mask"][0]
        loss = self.segmentation_loss(logits, mask)
        preds = logits.argmax(1)
        metrics.update(preds, mask)
        spacing = tuple(float(s) for s in batch["spacing"][0])
        (self.val_volumes if stage == "val" else self.test_volumes).update(preds, mask, spacing)
        self.log(f"{stage}/loss", loss, batch_size=1, sync_dist=True)
        return {"pred": preds}

    def miou_indices(self) -> list[int] | None:
        """Class indices of ``miou_classes`` (``None``: all classes).

        Raises:
            ValueError: A name that is not one of the class names.
        """
        wanted = self.hparams.get("miou_classes")
        if wanted is None:
            return None
        unknown = [c for c in wanted if c not in self.class_names]
        if unknown:
            raise ValueError(f"model.miou_classes {unknown} are not class names "
                             f"{list(self.class_names)}")  # fmt: skip
        return [self.class_names.index(c) for c in wanted]

    def _log_metrics(self, metrics: SegmentationMetrics, stage: str) -> None:
        values = metrics.compute()
        subset = self.miou_indices()
        if subset is not None:
            values["miou"] = values["iou_per_class"][subset].nanmean()
        for key in ("miou", "overall_accuracy", "kappa", "mean_f1"):
            self.log(f"{stage}/{key}", values[key], prog_bar=key == "miou")
        for name, iou in zip(self.class_names, values["iou_per_class"]):
            if not torch.isnan(iou):
                self.log(f"{stage}/iou/{name}", iou)
        metrics.reset()
        volumes = self.val_volumes if stage == "val" else self.test_volumes
        if volumes.update_count:
            scores = volumes.compute()
            self.log(f"{stage}/dice", scores["mean_dice"].float(), prog_bar=True)
            self.log(f"{stage}/hd95", scores["mean_hd95"].float())
            for name, d, h in zip(self.class_names[1:], scores["dice_per_class"],
                                  scores["hd95_per_class"]):  # fmt: skip
                if not torch.isnan(d):
                    self.log(f"{stage}/dice/{name}", d.float())
                if not torch.isnan(h):
                    self.log(f"{stage}/hd95/{name}", h.float())
            volumes.reset()

    def on_validation_epoch_end(self) -> None:  # noqa: D102
        self._log_metrics(self.val_metrics, "val")

    def on_test_epoch_end(self) -> None:  # noqa: D102
        self._log_metrics(self.test_metrics, "test")
