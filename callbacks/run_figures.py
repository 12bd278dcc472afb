"""Figures of a run: its learning curves and, for segmentation, the IoU of every class.

:class:`RunFigures` records, on rank zero, the training loss and learning rate every
``every_n_steps`` optimiser steps and the validation metrics it finds (kNN and probe accuracy,
mIoU, kappa, Dice, validation loss) at every validation end; it then draws

* ``<log_dir>/figures/curves_epoch_XXXX.png`` (W&B / TensorBoard key ``figures/curves``):
  loss, learning rate and each validation metric against optimiser steps;
* ``<log_dir>/figures/iou_epoch_XXXX.png`` (key ``val/iou_per_class``), when the task logs
  ``val/iou/<class>``: a bar per class with its value, classes by name.

The history is part of the callback's checkpoint state, so a resumed run's curves start
at step 0, not at the resume.
"""

from __future__ import annotations

import math
from typing import Any

import lightning.pytorch as pl
import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from torch import Tensor

from contraseg.figures import save_and_log_figure

__all__ = ["RunFigures", "curves_figure", "iou_figure"]

VALIDATION_METRICS = ("val/knn_acc", "val/probe_acc", "val/miou", "val/kappa", "val/dice",
                      "val/loss", "val/acc")  # fmt: skip


def curves_figure(history: dict[str, list[tuple[int, float]]], title: str) -> Figure:
    """One panel per recorded series (steps on x), the training loss first."""
    names = [n for n in ("train/loss", "lr") if history.get(n)]
    names += [n for n in sorted(history) if n not in names and history[n]]
    cols = min(3, max(1, len(names)))
    rows = max(1, math.ceil(len(names) / cols))
    fig = Figure(figsize=(4.2 * cols, 3.0 * rows), layout="constrained")
    FigureCanvasAgg(fig)
    axes = np.atleast_1d(fig.subplots(rows, cols, squeeze=False)).ravel()
    for ax, name in zip(axes, names):
        steps, values = zip(*history[name])
        ax.plot(steps, values, marker="o" if len(steps) < 30 else None, ms=3, lw=1.2)
        ax.set(title=name, xlabel="optimiser step")
        if name == "lr":
            ax.ticklabel_format(axis="y", style="sci", scilimits=(-3, 3))
        ax.grid(alpha=0.3)
    for ax in axes[len(names):]:
        ax.set_axis_off()
    fig.suptitle(title)
    return fig


def iou_figure(ious: dict[str, float], title: str) -> Figure:
    """Horizontal bars of the per-class IoU, each labelled with its value, and the mean."""
    names = list(ious)
    values = [ious[n] for n in names]
    fig = Figure(figsize=(6.0, 0.8 + 0.35 * len(names)), layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    bars = ax.barh(range(len(names)), values, color="tab:blue")
    ax.bar_label(bars, labels=[f"{v:.3f}" for v in values], fontsize=7, padding=2)
    ax.set_yticks(range(len(names)), names, fontsize=8)
    ax.invert_yaxis()
    ax.axvline(float(np.mean(values)), color="0.3", ls="--", lw=1,
               label=f"mean {np.mean(values):.3f}")  # fmt: skip
    ax.set(xlim=(0, 1.08), xlabel="IoU", title=title)
    ax.legend(fontsize=7, loc="lower right")
    return fig


class RunFigures(pl.Callback):
    """Learning curves and per-class IoU bars of a run (see the module docstring).

    Args:
        every_n_steps: Record loss and learning rate every this many optimiser steps
            (``None``: the trainer's ``log_every_n_steps``).
        every_n_epochs: Draw the figures every this many validation epochs (and at the end).
    """

    def __init__(self, every_n_steps: int | None = None, every_n_epochs: int = 1) -> None:
        super().__init__()
        if every_n_steps is not None and every_n_steps < 1:
            raise ValueError(f"RunFigures: every_n_steps must be >= 1, got {every_n_steps}")
        if every_n_epochs < 1:
            raise ValueError(f"RunFigures: every_n_epochs must be >= 1, got {every_n_epochs}")
        self.every_n_steps, self.every_n_epochs = every_n_steps, every_n_epochs
        self.history: dict[str, list[tuple[int, float]]] = {}
        self.written: list[str] = []

    def state_dict(self) -> dict[str, Any]:  # noqa: D102
        return {"history": {k: [list(p) for p in v] for k, v in self.history.items()}}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:  # noqa: D102
        self.history = {k: [(int(s), float(v)) for s, v in pts]
                        for k, pts in state_dict.get("history", {}).items()}  # fmt: skip

    def _add(self, name: str, step: int, value: Any) -> None:
        value = float(value.detach().float().mean()) if isinstance(value, Tensor) else value
        if isinstance(value, float | int) and math.isfinite(value):
            points = self.history.setdefault(name, [])
            if points and points[-1][0] == step:
                points[-1] = (step, float(value))
            else:
                points.append((step, float(value)))

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule,
                           outputs: Any, batch: Any, batch_idx: int) -> None:  # fmt: skip
        """Record the loss and the first group's learning rate every ``every_n_steps``."""
        every = self.every_n_steps or max(1, int(trainer.log_every_n_steps))
        step = int(trainer.global_step)
        if not trainer.is_global_zero or step % every:
            return
        loss = outputs.get("loss") if isinstance(outputs, dict) else outputs
        if loss is not None:
            self._add("train/loss", step, loss)
        if trainer.optimizers:
            self._add("lr", step, float(trainer.optimizers[0].param_groups[0]["lr"]))

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Record the validation metrics; draw every ``every_n_epochs``.

        At ``on_validation_end``: the task logs its epoch metrics (mIoU) in its own
        ``on_validation_epoch_end``, which Lightning calls after the callbacks'; Lightning
        runs checkpoint callbacks last, so the checkpoint of this epoch holds this point.
        """
        if trainer.sanity_checking:
            return
        if trainer.is_global_zero:
            step = int(trainer.global_step)
            metrics = trainer.callback_metrics
            for name in VALIDATION_METRICS:
                if name in metrics:
                    self._add(name, step, metrics[name])
        if (trainer.current_epoch + 1) % self.every_n_epochs == 0:
            self._draw(trainer)

    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """The final figures."""
        self._draw(trainer)

    def _draw(self, trainer: pl.Trainer) -> None:
        # trainer.log_dir broadcasts from rank zero: every rank evaluates it (else DDP hangs)
        log_dir = trainer.log_dir or trainer.default_root_dir
        if not trainer.is_global_zero or not self.history:
            return
        name = getattr(trainer.lightning_module, "__class__", type(None)).__name__
        title = f"{name}: step {trainer.global_step}, epoch {trainer.current_epoch}"
        path = save_and_log_figure(trainer, curves_figure(self.history, title), "figures/curves",
                                   log_dir, "figures", "RunFigures")  # fmt: skip
        if path:
            self.written.append(path)
        prefix = "val/iou/"
        ious = {k[len(prefix):]: float(v) for k, v in trainer.callback_metrics.items()
                if k.startswith(prefix)}  # fmt: skip
        if ious:
            fig = iou_figure(ious, f"{name}: per-class IoU (epoch {trainer.current_epoch})")
            path = save_and_log_figure(trainer, fig, "val/iou_per_class", log_dir, "figures_iou",
                                       "RunFigures")  # fmt: skip
            if path:
                self.written.append(path)
