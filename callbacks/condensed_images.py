"""Figures of dataset condensation: image grids of the set and kernel-velocity curves."""

from __future__ import annotations

import lightning as L
import torch
from lightning.pytorch.utilities import rank_zero_only
from matplotlib.figure import Figure

from contraseg.figures import save_and_log_figure

__all__ = ["CondensedImages", "condensed_grid", "velocity_figure"]


def velocity_figure(curve: list[tuple[int, float]], title: str) -> Figure:
    """Kernel velocity per epoch of an evaluation network (log scale)."""
    fig = Figure(figsize=(4.5, 3))
    ax = fig.subplots()
    ax.plot([e for e, _ in curve], [v for _, v in curve], marker="o")
    ax.set_yscale("log")
    ax.set_xlabel("epoch of the evaluation net")
    ax.set_ylabel("kernel velocity (per epoch)")
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    return fig


def condensed_grid(images: torch.Tensor, labels: torch.Tensor, mean: list[float],
                   std: list[float], classes: list[str], max_per_class: int = 10,
                   max_classes: int = 20, title: str = "") -> Figure:  # fmt: skip
    """A figure of the set: row ``c`` holds up to ``max_per_class`` images of class ``c``.

    Images are de-normalised with ``mean`` / ``std`` and clipped to ``[0, 1]`` for display.
    """
    m = torch.tensor(mean).view(-1, 1, 1)
    s = torch.tensor(std).view(-1, 1, 1)
    shown = [c for c in range(len(classes)) if (labels == c).any()][:max_classes]
    cols = max(min(int((labels == c).sum()), max_per_class) for c in shown)
    fig = Figure(figsize=(1.1 * cols + 1.2, 1.1 * len(shown) + 0.4))
    axes = fig.subplots(len(shown), cols, squeeze=False)
    for r, c in enumerate(shown):
        rows = images[labels == c][:cols]
        for j in range(cols):
            ax = axes[r][j]
            ax.set_xticks([])
            ax.set_yticks([])
            if j < len(rows):
                x = (rows[j].float().cpu() * s + m).clamp(0, 1).permute(1, 2, 0).numpy()
                ax.imshow(x[..., 0] if x.shape[-1] == 1 else x[..., :3], cmap="gray",
                          vmin=0, vmax=1)  # fmt: skip
            else:
                ax.axis("off")
            if j == 0:
                ax.set_ylabel(classes[c], rotation=0, ha="right", va="center", fontsize=8)
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    return fig


class CondensedImages(L.Callback):
    """PNG (``<log_dir>/condensed_images/epoch_XXXX.png``) and W&B image of the set.

    Also the kernel-velocity curve of every evaluation that measured one (the module's
    ``velocity_every``): ``<log_dir>/kernel_velocity/epoch_XXXX.png``, drawn at the end of
    the epoch that evaluated (the final evaluation: when the fit ends).

    Args:
        every_n_epochs: Outer iterations between grids (and one at the start).
        max_per_class: Images per class row.
        max_classes: Class rows.
    """

    def __init__(self, every_n_epochs: int = 100, max_per_class: int = 10,
                 max_classes: int = 20) -> None:  # fmt: skip
        if every_n_epochs < 1:
            raise ValueError(f"CondensedImages every_n_epochs must be >= 1, got {every_n_epochs}")
        self.every = every_n_epochs
        self.max_per_class, self.max_classes = max_per_class, max_classes
        self._velocity_drawn: set[int] = set()

    @rank_zero_only
    def _draw(self, trainer: L.Trainer, pl_module: L.LightningModule, iteration: int) -> None:
        dm = trainer.datamodule
        fig = condensed_grid(pl_module.images.detach(), pl_module.syn_labels, dm.mean, dm.std,
                             dm.classes, self.max_per_class, self.max_classes,
                             title=f"outer iteration {iteration}")  # fmt: skip
        save_and_log_figure(trainer, fig, "condensed/images",
                            trainer.log_dir or trainer.default_root_dir, "condensed_images",
                            type(self).__name__)  # fmt: skip

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """The set before outer iteration ``epoch`` (every ``every_n_epochs``, and at 0)."""
        if trainer.current_epoch % self.every == 0:
            self._draw(trainer, pl_module, trainer.current_epoch)

    @rank_zero_only
    def _draw_velocity(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        hp = pl_module.hparams
        name = f"{hp.method}{' + DSA' if hp.dsa else ''}, ipc {hp.ipc}"
        for iteration, res in sorted(getattr(pl_module, "eval_history", {}).items()):
            if res.get("velocity") and iteration not in self._velocity_drawn:
                self._velocity_drawn.add(iteration)
                fig = velocity_figure(res["velocity"], f"{name}, outer iteration {iteration}")
                save_and_log_figure(trainer, fig, "val/kernel_velocity_curve",
                                    trainer.log_dir or trainer.default_root_dir,
                                    "kernel_velocity", type(self).__name__)  # fmt: skip

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """The velocity curve of this epoch's evaluation (made at the epoch's start)."""
        self._draw_velocity(trainer, pl_module)

    def teardown(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        """The final evaluation's curve.

        The module evaluates in ``on_fit_end``, after the callbacks' ``on_fit_end``; the
        loggers are finalised after this hook.
        """
        if stage == "fit":
            self._draw_velocity(trainer, pl_module)
