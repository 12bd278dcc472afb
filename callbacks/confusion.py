"""Confusion-matrix figure of a classifier's validation split (row-normalised, with counts)."""

from __future__ import annotations

import lightning.pytorch as pl
import numpy as np
from matplotlib.figure import Figure

from contraseg.figures import save_and_log_figure

__all__ = ["ConfusionMatrixPlot", "confusion_figure"]


def confusion_figure(confusion: np.ndarray, class_names: list[str] | None = None) -> Figure:
    """Heat map of ``confusion`` normalised per true class, each cell with its count.

    Args:
        confusion: ``(C, C)`` counts, rows = true class, columns = prediction.
        class_names: Tick labels (default ``0..C-1``).

    Returns:
        A pyplot-free Matplotlib figure.
    """
    c = confusion.shape[0]
    names = class_names or [str(i) for i in range(c)]
    rates = confusion / np.maximum(confusion.sum(axis=1, keepdims=True), 1)
    fig = Figure(figsize=(1.0 + 0.6 * c, 0.8 + 0.6 * c))
    ax = fig.add_subplot()
    im = ax.imshow(rates, vmin=0, vmax=1, cmap="Blues")
    for i in range(c):
        for j in range(c):
            ax.text(j, i, str(int(confusion[i, j])), ha="center", va="center", fontsize=7,
                    color="white" if rates[i, j] > 0.5 else "black")  # fmt: skip
    ax.set_xticks(range(c), names, rotation=45, ha="right", fontsize=7)
    ax.set_yticks(range(c), names, fontsize=7)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true (row-normalised colour, counts written)")
    fig.colorbar(im, ax=ax, fraction=0.046)
    fig.tight_layout()
    return fig


class ConfusionMatrixPlot(pl.Callback):
    """After each validation epoch, plot ``pl_module.last_confusion`` (``ImageClassifier``).

    PNGs go to ``<log_dir>/confusion/epoch_XXXX.png`` and to W&B / TensorBoard as
    ``val/confusion``.
    """

    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:  # noqa: D102
        confusion = getattr(pl_module, "last_confusion", None)
        if confusion is None or trainer.sanity_checking or not trainer.is_global_zero:
            return
        datamodule = getattr(trainer, "datamodule", None)
        names = getattr(pl_module, "class_names", None) or getattr(datamodule, "classes", None)
        fig = confusion_figure(confusion.numpy(), list(names) if names else None)
        save_and_log_figure(trainer, fig, "val/confusion", trainer.log_dir, "confusion",
                            type(self).__name__)  # fmt: skip
