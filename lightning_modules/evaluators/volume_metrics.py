r"""Per-volume Dice and HD95 (mm) of every structure, with MONAI's metrics.

For a subject with predicted and reference class volumes, structure :math:`c \ge 1`:

.. math::

    \mathrm{Dice}_c = \frac{2 |P_c \cap G_c|}{|P_c| + |G_c|},
    \qquad
    \mathrm{HD95}_c = \max\bigl(d_{95}(\partial P_c \to \partial G_c),\,
                               d_{95}(\partial G_c \to \partial P_c)\bigr)

with surface distances in millimetres from the voxel spacing (MONAI's
``compute_dice`` and ``compute_hausdorff_distance(percentile=95, spacing=...)``).  Scores are
per volume, then averaged over volumes per structure, and ``mean_dice`` / ``mean_hd95`` over
structures (the BTCV / TransUNet convention).  Empty structures:

* reference and prediction both empty: Dice and HD95 are undefined (``nan``) and the
  volume does not count for that structure;
* exactly one of them empty: Dice 0, and HD95 the volume's diagonal in mm (the largest
  distance possible: a missed or hallucinated structure is the worst case, not a skip).

States are per-volume rows concatenated across DDP ranks (``dist_reduce_fx="cat"``).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from monai.metrics import compute_dice, compute_hausdorff_distance
from torch import Tensor
from torchmetrics import Metric

__all__ = ["VolumeMetrics", "volume_scores"]


def volume_scores(
    pred: Tensor, target: Tensor, num_classes: int, spacing: tuple[float, float, float]
) -> tuple[Tensor, Tensor]:
    """Dice and HD95 (mm) of structures ``1..C-1`` for one volume.

    Args:
        pred: ``(D, H, W)`` predicted classes.
        target: ``(D, H, W)`` reference classes.
        num_classes: ``C`` including background.
        spacing: Voxel size ``(sD, sH, sW)`` in mm.

    Returns:
        ``dice`` and ``hd95``, each ``(C - 1,)`` float64 (see the module docstring).
    """
    if pred.shape != target.shape or pred.ndim != 3:
        raise ValueError(
            f"pred {tuple(pred.shape)} and target {tuple(target.shape)} must be "
            "equal (D, H, W) volumes"
        )
    p = F.one_hot(pred.long().cpu(), num_classes).permute(3, 0, 1, 2)[None].float()
    g = F.one_hot(target.long().cpu(), num_classes).permute(3, 0, 1, 2)[None].float()
    dice = compute_dice(p, g, include_background=False, ignore_empty=False)[0].double()
    p_any, g_any = p[0, 1:].flatten(1).any(1), g[0, 1:].flatten(1).any(1)
    both = p_any & g_any
    hd = torch.full((num_classes - 1,), math.nan, dtype=torch.float64)
    if bool(both.any()):
        idx = torch.nonzero(both)[:, 0] + 1
        sub_p = torch.cat([p[:, :1], p[:, idx]], dim=1)
        sub_g = torch.cat([g[:, :1], g[:, idx]], dim=1)
        hd[both] = compute_hausdorff_distance(
            sub_p, sub_g, include_background=False, percentile=95, spacing=list(spacing)
        )[0].double()
    diagonal = math.sqrt(sum((n * s) ** 2 for n, s in zip(pred.shape, spacing)))
    one = p_any ^ g_any
    hd[one] = diagonal
    dice[~(p_any | g_any)] = math.nan
    return dice, hd


class VolumeMetrics(Metric):
    """Accumulates :func:`volume_scores` per volume; ``compute`` averages (ignoring ``nan``).

    Args:
        num_classes: Classes including background.
    """

    full_state_update = False

    def __init__(self, num_classes: int) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.add_state("dice", default=[], dist_reduce_fx="cat")
        self.add_state("hd95", default=[], dist_reduce_fx="cat")

    def update(self, pred: Tensor, target: Tensor, spacing: tuple[float, float, float]) -> None:
        """Add one volume."""
        dice, hd = volume_scores(pred, target, self.num_classes, spacing)
        self.dice.append(dice[None].to(self.device))
        self.hd95.append(hd[None].to(self.device))

    def compute(self) -> dict[str, Tensor]:
        """``dice_per_class``, ``hd95_per_class`` (means over volumes), their means, count."""
        dice = (
            self.dice
            if isinstance(self.dice, Tensor)
            else torch.cat(self.dice)
            if self.dice
            else torch.empty(0, self.num_classes - 1, dtype=torch.float64)
        )
        hd = (
            self.hd95
            if isinstance(self.hd95, Tensor)
            else torch.cat(self.hd95)
            if self.hd95
            else torch.empty(0, self.num_classes - 1, dtype=torch.float64)
        )
        dice_c, hd_c = dice.nanmean(0), hd.nanmean(0)
        return {
            "dice_per_class": dice_c,
            "hd95_per_class": hd_c,
            "mean_dice": dice_c.nanmean(),
            "mean_hd95": hd_c.nanmean(),
            "volumes": torch.tensor(dice.shape[0]),
        }
