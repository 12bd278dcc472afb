"""Shared figure output for callbacks: PNG under the log dir, W&B image, TensorBoard figure."""

from __future__ import annotations

import os

import lightning.pytorch as pl
import numpy as np
from lightning.pytorch.loggers import TensorBoardLogger, WandbLogger
from lightning.pytorch.utilities import rank_zero_warn
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure


def image_loggers(trainer: pl.Trainer) -> list[WandbLogger | TensorBoardLogger]:
    """The attached loggers that can show images (W&B, TensorBoard)."""
    return [lg for lg in trainer.loggers if isinstance(lg, WandbLogger | TensorBoardLogger)]


def figure_to_array(fig: Figure) -> np.ndarray:
    """Render an Agg-backed figure to an ``(H, W, 3)`` uint8 array."""
    canvas = fig.canvas if isinstance(fig.canvas, FigureCanvasAgg) else FigureCanvasAgg(fig)
    canvas.draw()
    return np.asarray(canvas.buffer_rgba())[..., :3].copy()


def save_and_log_figure(
    trainer: pl.Trainer,
    fig: Figure,
    key: str,
    log_dir: str | None,
    subdir: str,
    owner: str,
) -> str | None:
    """Save ``fig`` as ``<log_dir>/<subdir>/epoch_XXXX.png`` and log it to image loggers.

    Call on rank zero only.  Failures are warnings (a plot must not kill a training run);
    the figure is cleared afterwards (it is created without pyplot, so this releases it).

    Args:
        trainer: The trainer (epoch, step, loggers).
        fig: The figure.
        key: Logging key (e.g. ``"rank/spectrum"``).
        log_dir: Run directory, or ``None`` to skip the PNG.
        subdir: Sub-directory of the PNGs.
        owner: Name used in warnings.

    Returns:
        The PNG path, or ``None`` if none was written.
    """
    path: str | None = None
    try:
        if log_dir is not None:
            out_dir = os.path.join(log_dir, subdir)
            os.makedirs(out_dir, exist_ok=True)
            path = os.path.join(out_dir, f"epoch_{trainer.current_epoch:04d}.png")
            fig.savefig(path, dpi=100)
        for logger in image_loggers(trainer):
            if isinstance(logger, WandbLogger):
                image = path if path is not None else figure_to_array(fig)
                logger.log_image(key=key, images=[image], step=trainer.global_step)
            else:
                logger.experiment.add_figure(key, fig, global_step=trainer.global_step, close=False)
    except Exception as err:  # a plotting/logging hiccup must not kill the training run
        rank_zero_warn(f"{owner}: could not save/log {key}: {err!r}")
    finally:
        fig.clear()
    return path
