"""Visualisation of semantic-segmentation predictions.

* :func:`~contraseg.datamodules.datasets.palette.colourize` (beside the data-set metadata) maps a
  label map to RGB through a palette (ignore pixels get a fixed colour);
  :func:`denormalize` undoes the datamodule's normalisation of an image tensor.
* :class:`SegmentationOverlays` collects the first ``num_images`` validation samples of
  an epoch and logs a grid ``image | ground truth overlay | prediction overlay``: saved as
  PNG under ``<trainer.log_dir or default_root_dir>/predictions/epoch_XXXX.png`` and
  logged to :class:`~lightning.pytorch.loggers.WandbLogger` (``log_image``) and
  :class:`~lightning.pytorch.loggers.TensorBoardLogger` (``add_figure``) under
  ``val/predictions``.
* :class:`ColourPredictionWriter` writes ``trainer.predict`` outputs as palette ("P" mode)
  PNGs, which read back as class indices with ``np.array(Image.open(path))``.

Contract with the rest of the codebase (see
:class:`~contraseg.lightning_modules.segmentation_finetune.SegmentationFineTune` and
:class:`~contraseg.datamodules.segmentation.SegmentationDataModule`):

* batches are dicts with ``image`` ``(B, C, H, W)`` (normalised float), ``mask``
  ``(B, H, W)`` (long, ``ignore_index`` = ignore) and optionally ``name`` (``list[str]``);
* ``validation_step`` returns ``{"pred": (B, H, W)}`` and ``predict_step`` returns
  ``{"pred": (B, H, W), "name": list[str] | None}`` (a bare tensor is also accepted);
* the datamodule (optional) provides ``palette`` (RGB tuples, may be empty), ``mean``,
  ``std`` and ``ignore_index``.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import lightning.pytorch as pl
import numpy as np
import torch
from lightning.pytorch.callbacks import BasePredictionWriter
from lightning.pytorch.utilities import rank_zero_warn
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from torch import Tensor

from contraseg.datamodules.datasets.palette import (
    IGNORE_INDEX,
    colourize,
    palette_lut,
    save_palette_png,
    to_numpy_labels,
)
from contraseg.figures import image_loggers, save_and_log_figure

__all__ = ["ColourPredictionWriter", "SegmentationOverlays", "add_class_legend", "denormalize",
           "overlay"]


def denormalize(
    image: Tensor, mean: Sequence[float] | float, std: Sequence[float] | float
) -> np.ndarray:
    """Undo ``(x - mean) / std`` normalisation and convert to a displayable RGB image.

    Only the first three channels are shown (e.g. R, G, B of an RGB+IR image); one- or
    two-channel images show their first channel as grey.

    Args:
        image: ``(C, H, W)`` normalised float tensor (any device/dtype).
        mean: Per-channel mean (one per input channel, or a scalar).
        std: Per-channel std (one per input channel, or a scalar).

    Returns:
        ``np.uint8`` array of shape ``(H, W, 3)`` (values clipped to ``[0, 255]``).

    Raises:
        ValueError: If ``image`` is not 3-D or ``mean``/``std`` have fewer entries than
            the channels shown.
    """
    if image.ndim != 3:
        raise ValueError(f"image must be (C, H, W), got shape {tuple(image.shape)}")
    x = image.detach().cpu().float()
    channels = 3 if x.shape[0] >= 3 else 1
    x = x[:channels]
    m = torch.as_tensor(mean, dtype=torch.float32).flatten()
    s = torch.as_tensor(std, dtype=torch.float32).flatten()
    for name, stat in (("mean", m), ("std", s)):
        if stat.numel() != 1 and stat.numel() < channels:
            raise ValueError(f"{name} has {stat.numel()} entries, need at least {channels}")
    m = m.expand(channels) if m.numel() == 1 else m[:channels]
    s = s.expand(channels) if s.numel() == 1 else s[:channels]
    x = x * s[:, None, None] + m[:, None, None]
    x = (x.clamp(0.0, 1.0) * 255.0).round().to(torch.uint8)
    if channels == 1:
        x = x.expand(3, -1, -1)
    return np.ascontiguousarray(x.permute(1, 2, 0).numpy())


def overlay(
    rgb: np.ndarray,
    labels: np.ndarray | Tensor,
    palette: Sequence[Sequence[int]] | np.ndarray | None,
    alpha: float = 0.5,
    ignore_index: int | None = IGNORE_INDEX,
) -> np.ndarray:
    """Blend a colourised label map over an RGB image; ignored pixels stay untouched.

    Classes whose palette colour is black (the background or clutter class of most data
    sets: VOC, Cityscapes' void, the synthetic scenes) are left transparent too: blending
    black at half opacity would only darken the image.

    Args:
        rgb: ``(H, W, 3)`` uint8 image.
        labels: ``(H, W)`` class indices.
        palette: See :func:`colourize`.
        alpha: Opacity of the colour mask in ``[0, 1]``.
        ignore_index: Label left transparent (``None``: none).

    Returns:
        ``np.uint8`` array of shape ``(H, W, 3)``.
    """
    labels = to_numpy_labels(labels)
    if rgb.shape[:2] != labels.shape:
        raise ValueError(f"image {rgb.shape[:2]} and labels {labels.shape} differ in size")
    colours = colourize(labels, palette, ignore_index).astype(np.float32)
    weight = np.full(labels.shape, float(alpha), dtype=np.float32)
    if ignore_index is not None:
        weight[labels == ignore_index] = 0.0
    weight[(colours == 0).all(axis=-1)] = 0.0  # black classes: transparent
    weight = weight[..., None]
    blended = rgb.astype(np.float32) * (1.0 - weight) + colours * weight
    return np.clip(np.rint(blended), 0, 255).astype(np.uint8)


def add_class_legend(fig: Figure, class_names: Sequence[str] | None,
                     palette: Sequence[Sequence[int]] | np.ndarray | None,
                     present: Sequence[int] | None = None) -> None:  # fmt: skip
    """A colour legend of the classes under the figure (black classes marked transparent).

    Args:
        fig: The figure (space is made at its bottom).
        class_names: Names by class index (``None``: ``class <i>``).
        palette: See :func:`colourize`.
        present: Class indices to list (default: every named class).
    """
    from matplotlib.patches import Patch

    lut = palette_lut(palette)
    indices = sorted(set(present)) if present is not None else list(range(len(class_names or [])))
    handles = []
    for i in indices:
        if not 0 <= i < len(lut):
            continue
        name = class_names[i] if class_names and i < len(class_names) else f"class {i}"
        colour = lut[i] / 255.0
        black = not lut[i].any()
        handles.append(Patch(facecolor="none" if black else colour, edgecolor="0.3",
                             label=f"{name} (transparent)" if black else name))  # fmt: skip
    if handles:
        fig.legend(handles=handles, loc="lower center", ncol=min(len(handles), 6), fontsize=8,
                   frameon=False)  # fmt: skip
        rows = -(-len(handles) // 6)
        fig.subplots_adjust(bottom=min(0.4, 0.06 * rows + 0.04))


class SegmentationOverlays(pl.Callback):
    """Log a grid ``image | ground truth overlay | prediction overlay`` every few epochs.

    During validation (never the sanity check) of every epoch with
    ``(current_epoch + 1) % every_n_epochs == 0`` the first ``num_images`` samples of
    dataloader 0 seen by rank zero are copied to the CPU together with the predictions
    returned by ``validation_step`` (``{"pred": (B, H, W)}`` or a tensor). At the end of
    the epoch one figure is built (one row per sample), saved (``save_png=True``) to
    ``<trainer.log_dir or trainer.default_root_dir>/predictions/epoch_XXXX.png`` and logged
    to every :class:`~lightning.pytorch.loggers.WandbLogger` (``log_image``) and
    :class:`~lightning.pytorch.loggers.TensorBoardLogger` (``add_figure``) under
    ``val/predictions``; other loggers are skipped.

    Colours come from ``datamodule.palette`` (VOC colour map where empty), the image is
    de-normalised with ``datamodule.mean``/``std`` and ``datamodule.ignore_index`` pixels
    stay transparent (defaults: ImageNet statistics are *not* assumed; without a datamodule
    the image is shown with mean 0 and std 1, ignore index 255).

    Args:
        num_images: Number of samples per figure (``>= 1``).
        every_n_epochs: Run every this many epochs (``>= 1``).
        alpha: Opacity of the colour masks in ``[0, 1]``.
        save_png: Save the figure as PNG under the log directory.

    Attributes:
        samples: Samples of the current (or last) epoch: dicts with ``image``
            ``(C, H, W)`` float, ``mask`` ``(H, W)`` long or ``None``, ``pred`` ``(H, W)``
            long and ``name`` str, all on the CPU. Cleared when a validation epoch starts.
        last_png_path: Path of the last saved PNG, if any.
    """

    key = "val/predictions"

    def __init__(
        self,
        num_images: int = 4,
        every_n_epochs: int = 1,
        alpha: float = 0.5,
        save_png: bool = True,
    ) -> None:
        super().__init__()
        if num_images < 1:
            raise ValueError(f"num_images must be >= 1, got {num_images}")
        if every_n_epochs < 1:
            raise ValueError(f"every_n_epochs must be >= 1, got {every_n_epochs}")
        if not 0.0 <= alpha <= 1.0:
            raise ValueError(f"alpha must be in [0, 1], got {alpha}")
        self.num_images = num_images
        self.every_n_epochs = every_n_epochs
        self.alpha = alpha
        self.save_png = save_png
        self.samples: list[dict[str, Any]] = []
        self.last_png_path: str | None = None
        self._warned_no_pred = False

    # ------------------------------------------------------------------ Lightning hooks

    def _active(self, trainer: pl.Trainer) -> bool:
        return (
            not trainer.sanity_checking and (trainer.current_epoch + 1) % self.every_n_epochs == 0
        )

    def on_validation_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Clear the sample buffer.

        Args:
            trainer: The trainer.
            pl_module: The LightningModule being validated.
        """
        self.samples = []

    def on_validation_batch_end(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        """Copy samples of the batch to the CPU until ``num_images`` are buffered.

        Args:
            trainer: The trainer.
            pl_module: The LightningModule being validated.
            outputs: What ``validation_step`` returned (``{"pred": ...}`` or a tensor).
            batch: The batch (dict with ``image``, ``mask`` and optionally ``name``).
            batch_idx: Index of the batch.
            dataloader_idx: Index of the dataloader; only dataloader 0 is used.
        """
        if dataloader_idx != 0 or not trainer.is_global_zero or not self._active(trainer):
            return
        if len(self.samples) >= self.num_images:
            return
        pred = outputs.get("pred") if isinstance(outputs, dict) else outputs
        if not isinstance(pred, Tensor) or not isinstance(batch, dict) or "image" not in batch:
            if not self._warned_no_pred:
                rank_zero_warn(
                    "SegmentationOverlays: validation_step must return {'pred': (B, H, W)} and "
                    "batches must be dicts with 'image'; nothing is visualised"
                )
                self._warned_no_pred = True
            return
        images, masks, names = batch["image"], batch.get("mask"), batch.get("name")
        take = min(self.num_images - len(self.samples), images.shape[0])
        for i in range(take):
            name = names[i] if names is not None and i < len(names) else f"val_{batch_idx}_{i}"
            self.samples.append(
                {
                    "image": images[i].detach().float().cpu(),
                    "mask": masks[i].detach().long().cpu() if masks is not None else None,
                    "pred": pred[i].detach().long().cpu(),
                    "name": str(name),
                }
            )

    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Build, save and log the overlay grid of the buffered samples.

        Args:
            trainer: The trainer.
            pl_module: The LightningModule being validated.
        """
        if not self._active(trainer):
            return
        self._plot_and_log(trainer)

    # ------------------------------------------------------------------ internals

    def _plot_and_log(self, trainer: pl.Trainer) -> None:
        """Plot the buffered samples, save the PNG (rank zero) and log it to image loggers."""
        if not (self.save_png or image_loggers(trainer)):
            return
        # `trainer.log_dir` broadcasts from rank zero: it must be evaluated on all ranks.
        log_dir = (trainer.log_dir or trainer.default_root_dir) if self.save_png else None
        if not trainer.is_global_zero or not self.samples:
            return
        datamodule = getattr(trainer, "datamodule", None)
        fig = self._figure(self.samples, datamodule, trainer.current_epoch)
        path = save_and_log_figure(
            trainer, fig, self.key, log_dir, "predictions", "SegmentationOverlays"
        )
        if path is not None:
            self.last_png_path = path

    def _figure(self, samples: Sequence[dict[str, Any]], datamodule: Any, epoch: int) -> Figure:
        """Agg-backed grid figure: one row per sample, three columns."""
        palette = getattr(datamodule, "palette", None)
        mean = getattr(datamodule, "mean", None) or 0.0
        std = getattr(datamodule, "std", None) or 1.0
        ignore_index = getattr(datamodule, "ignore_index", IGNORE_INDEX)
        rows = len(samples)
        fig = Figure(figsize=(9.0, 3.0 * rows))
        FigureCanvasAgg(fig)
        axes = fig.subplots(rows, 3, squeeze=False)
        for row, sample in enumerate(samples):
            rgb = denormalize(sample["image"], mean, std)
            panels = [(rgb, sample["name"])]
            if sample["mask"] is not None:
                gt = overlay(rgb, sample["mask"], palette, self.alpha, ignore_index)
                panels.append((gt, f"{sample['name']} - ground truth"))
            else:
                panels.append((rgb, f"{sample['name']} - no ground truth"))
            pred = overlay(rgb, sample["pred"], palette, self.alpha, ignore_index)
            panels.append((pred, f"{sample['name']} - prediction"))
            for ax, (picture, title) in zip(axes[row], panels):
                ax.imshow(picture, interpolation="nearest")
                ax.set_title(title, fontsize=8)
                ax.set_axis_off()
        fig.suptitle(f"Validation predictions - epoch {epoch}")
        fig.tight_layout()
        classes = list(getattr(datamodule, "classes", None) or [])
        present = sorted({int(v) for s in samples for key in ("mask", "pred")
                          if s[key] is not None for v in s[key].unique().tolist()
                          if int(v) != ignore_index})  # fmt: skip
        add_class_legend(fig, classes or None, palette, present)
        return fig


class ColourPredictionWriter(BasePredictionWriter):
    """Write ``trainer.predict`` class maps as palette ("P" mode) PNGs.

    Each prediction ``(H, W)`` is saved as ``<output_dir>/<name>.png`` with its class
    indices as pixel values and the datamodule's ``palette`` (VOC colour map for missing
    entries, see :func:`palette_lut`) as the PNG palette, so it is viewed in colour yet
    ``np.array(Image.open(path))`` returns the class indices. Names come from the
    ``"name"`` entry of the prediction dict (``predict_step`` returns
    ``{"pred": (B, H, W), "name": list[str] | None}``; a bare tensor is also accepted);
    names may contain ``/`` (sub-folders are created; ``..`` parts are dropped) and a
    trailing ``.png`` is not doubled. Without names, ``pred_{batch_idx}_{i}`` is used
    (``pred_rank{r}_{batch_idx}_{i}`` when ``world_size > 1``). Every rank writes the
    items of its own shard.

    With ``overlays=True`` each image is also drawn with its prediction over it and a legend
    of the classes it holds (the data module's class names and palette), as
    ``<output_dir>/overlays/<name>.png``.

    Args:
        output_dir: Folder the PNGs are written to (created if missing).
        write_interval: ``"batch"`` (default), ``"epoch"`` or ``"batch_and_epoch"`` (the
            latter writes once, per batch).
        overlays: Also write the overlay pictures (batch-wise writing only).
        alpha: Opacity of the overlay colours.

    Attributes:
        written: Paths written by this process, in order.
    """

    def __init__(
        self,
        output_dir: str | os.PathLike[str],
        write_interval: Literal["batch", "epoch", "batch_and_epoch"] = "batch",
        overlays: bool = False,
        alpha: float = 0.5,
    ) -> None:
        super().__init__(write_interval)
        self.output_dir = Path(output_dir)
        self.overlays, self.alpha = overlays, alpha
        self.written: list[Path] = []

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        """Create the output folder.

        Args:
            trainer: The trainer.
            pl_module: The LightningModule.
            stage: ``"predict"`` (other stages do nothing extra).
        """
        super().setup(trainer, pl_module, stage)
        if stage == "predict":
            self.output_dir.mkdir(parents=True, exist_ok=True)

    def write_on_batch_end(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        prediction: Any,
        batch_indices: Sequence[int] | None,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int,
    ) -> None:
        """Write the predictions of one batch.

        Args:
            trainer: The trainer.
            pl_module: The LightningModule.
            prediction: ``{"pred": (B, H, W), "name": list[str] | None}`` or a tensor.
            batch_indices: Dataset indices of the batch (unused).
            batch: The batch; its ``name`` entry is used when the prediction has none.
            batch_idx: Index of the batch (fallback names).
            dataloader_idx: Index of the dataloader.
        """
        names = None
        if isinstance(batch, dict):
            names = batch.get("name")
        paths = self._write(trainer, prediction, batch_idx, names)
        if self.overlays and isinstance(batch, dict) and "image" in batch:
            preds = prediction.get("pred") if isinstance(prediction, dict) else prediction
            for image, pred, path in zip(batch["image"], preds, paths):
                self._write_overlay(trainer, image, pred, path)

    def _write_overlay(self, trainer: pl.Trainer, image: Tensor, pred: Tensor,
                       path: Path) -> None:  # fmt: skip
        datamodule = getattr(trainer, "datamodule", None)
        palette = getattr(datamodule, "palette", None)
        rgb = denormalize(image, getattr(datamodule, "mean", None) or 0.0,
                          getattr(datamodule, "std", None) or 1.0)  # fmt: skip
        h, w = rgb.shape[:2]
        fig = Figure(figsize=(max(4.0, 6.0 * w / max(h, w)), max(4.0, 6.0 * h / max(h, w)) + 1))
        FigureCanvasAgg(fig)
        ax = fig.add_subplot(1, 1, 1)
        ax.imshow(overlay(rgb, pred, palette, self.alpha), interpolation="nearest")
        ax.set_title(path.stem, fontsize=9)
        ax.set_axis_off()
        classes = list(getattr(datamodule, "classes", None) or []) or None
        add_class_legend(fig, classes, palette, pred.unique().tolist())
        target = self.output_dir / "overlays" / path.relative_to(self.output_dir)
        target.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(target, dpi=100)

    def write_on_epoch_end(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        predictions: Sequence[Any],
        batch_indices: Sequence[Any],
    ) -> None:
        """Write all predictions of the epoch (``write_interval="epoch"`` only).

        Args:
            trainer: The trainer.
            pl_module: The LightningModule.
            predictions: Batch predictions, or one list of them per dataloader.
            batch_indices: Dataset indices (unused).
        """
        if self.interval.on_batch:  # already written batch by batch
            return
        nested = bool(predictions) and isinstance(predictions[0], list)
        per_loader = predictions if nested else [predictions]
        for loader_predictions in per_loader:
            for batch_idx, prediction in enumerate(loader_predictions):
                self._write(trainer, prediction, batch_idx, None)

    # ------------------------------------------------------------------ internals

    def _write(
        self,
        trainer: pl.Trainer,
        prediction: Any,
        batch_idx: int,
        batch_names: Sequence[str] | None,
    ) -> list[Path]:
        if isinstance(prediction, dict):
            preds, names = prediction.get("pred"), prediction.get("name")
        else:
            preds, names = prediction, None
        names = names if names is not None else batch_names
        if not isinstance(preds, Tensor):
            raise TypeError(
                "ColourPredictionWriter needs predict_step to return {'pred': (B, H, W), ...} "
                f"or a tensor, got {type(prediction).__name__}"
            )
        if preds.ndim == 2:
            preds = preds.unsqueeze(0)
        if preds.ndim != 3:
            raise ValueError(f"predictions must be (B, H, W), got shape {tuple(preds.shape)}")
        datamodule = getattr(trainer, "datamodule", None)
        lut = palette_lut(getattr(datamodule, "palette", None))
        flat_palette = lut.reshape(-1).tolist()
        world_size = getattr(trainer, "world_size", 1)
        rank = getattr(trainer, "global_rank", 0)
        prefix = f"pred_rank{rank}" if world_size > 1 else "pred"
        preds = preds.detach().cpu()
        paths = []
        for i, pred in enumerate(preds):
            if names is not None and i < len(names) and names[i] is not None:
                rel = _safe_relative(str(names[i]))
            else:
                rel = f"{prefix}_{batch_idx}_{i}"
            path = self.output_dir / (rel if rel.lower().endswith(".png") else f"{rel}.png")
            path.parent.mkdir(parents=True, exist_ok=True)
            save_palette_png(pred, path, flat_palette)
            self.written.append(path)
            paths.append(path)
        return paths


def _safe_relative(name: str) -> str:
    """Relative, traversal-free version of an image name (``/`` keeps sub-folders)."""
    parts = [p for p in name.replace("\\", "/").split("/") if p not in ("", ".", "..")]
    return "/".join(parts) or "unnamed"
