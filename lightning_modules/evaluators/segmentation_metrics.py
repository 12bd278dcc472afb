"""Semantic-segmentation metrics computed from a dataset-level confusion matrix.

All metrics are derived from one ``C x C`` confusion matrix ``cm`` accumulated over the
whole split (rows = ground truth, columns = prediction), never averaged per image.
With ``TP_c = cm[c, c]``, ``FP_c = sum_r cm[r, c] - TP_c`` and ``FN_c = sum_k cm[c, k] - TP_c``:

* ``IoU_c = TP_c / (TP_c + FP_c + FN_c)`` (``nan`` where the union is 0);
* ``mIoU = mean of IoU_c over classes with union > 0``, i.e. classes present in the
  target *or* predicted at least once.  Classes absent from both are excluded (not
  counted as 0 nor as 1);
* ``OA = trace(cm) / N`` with ``N = sum(cm)`` (pixels that are not ``ignore_index``);
* ``F1_c = 2 TP_c / (2 TP_c + FP_c + FN_c)`` (``nan`` where the denominator is 0) and
  ``mean_f1`` the mean over the defined classes, same convention as mIoU;
* Cohen's ``kappa = (p_o - p_e) / (1 - p_e)`` with ``p_o = OA`` and
  ``p_e = sum_c (row_c * col_c) / N^2`` (row/column marginals of ``cm``).
"""

from __future__ import annotations

import torch
from torch import Tensor
from torchmetrics import Metric

__all__ = ["SegmentationMetrics", "confusion_matrix", "metrics_from_confusion"]


def confusion_matrix(
    preds: Tensor, target: Tensor, num_classes: int, ignore_index: int | None = 255
) -> Tensor:
    """Confusion matrix of a batch of dense predictions, with a single ``bincount``.

    Args:
        preds: Class indices ``(B, H, W)`` or logits/scores ``(B, C, H, W)`` (arg-maxed
            over dim 1).
        target: Ground-truth class indices ``(B, H, W)``.
        num_classes: Number of classes ``C``.
        ignore_index: Target value whose pixels are dropped (``None`` keeps all pixels).

    Returns:
        ``(C, C)`` int64 tensor, ``cm[t, p]`` = number of pixels of true class ``t``
        predicted as ``p``.

    Raises:
        ValueError: On shape mismatch or class indices outside ``[0, C)``.
    """
    if preds.ndim == target.ndim + 1:
        preds = preds.argmax(dim=1)
    if preds.shape != target.shape:
        raise ValueError(
            f"preds {tuple(preds.shape)} and target {tuple(target.shape)} shapes differ"
        )
    preds = preds.reshape(-1).long()
    target = target.reshape(-1).long()
    if ignore_index is not None:
        keep = target != ignore_index
        preds, target = preds[keep], target[keep]
    if target.numel() > 0:
        bad = (target < 0) | (target >= num_classes) | (preds < 0) | (preds >= num_classes)
        if bool(bad.any()):
            raise ValueError(f"class indices must lie in [0, {num_classes}) or be ignore_index")
    counts = torch.bincount(target * num_classes + preds, minlength=num_classes * num_classes)
    return counts.reshape(num_classes, num_classes)


def metrics_from_confusion(cm: Tensor) -> dict[str, Tensor]:
    """Derive segmentation metrics from a confusion matrix (see the module docstring).

    Computation is done in float64 on the CPU (the matrix is small) and results are
    returned as float32 on ``cm``'s device.

    Args:
        cm: ``(C, C)`` confusion matrix, rows = target, columns = prediction.

    Returns:
        Dict with ``miou`` (mean IoU over classes with union > 0, ``nan`` if none),
        ``iou_per_class`` ``(C,)`` (``nan`` where union == 0), ``overall_accuracy``,
        ``kappa`` (Cohen's; 1 in the degenerate case ``p_e == p_o == 1``, 0 if
        ``p_e == 1 != p_o``), ``f1_per_class`` ``(C,)`` and ``mean_f1``.  Everything is
        ``nan`` when ``cm`` is empty.
    """
    device = cm.device
    m = cm.detach().to("cpu", torch.float64)
    nan = torch.tensor(float("nan"), dtype=torch.float64)
    tp = m.diagonal()
    rows = m.sum(dim=1)  # true pixels per class
    cols = m.sum(dim=0)  # predicted pixels per class
    fp = cols - tp
    fn = rows - tp
    total = m.sum()

    union = tp + fp + fn
    defined = union > 0
    iou = torch.where(defined, tp / union.clamp_min(1), nan)
    f1_den = 2 * tp + fp + fn
    f1 = torch.where(f1_den > 0, 2 * tp / f1_den.clamp_min(1), nan)
    miou = iou[defined].mean() if bool(defined.any()) else nan
    mean_f1 = f1[defined].mean() if bool(defined.any()) else nan

    if total > 0:
        p_o = tp.sum() / total
        p_e = (rows * cols).sum() / total**2
        if p_e < 1:
            kappa = (p_o - p_e) / (1 - p_e)
        else:
            kappa = torch.ones_like(p_o) if p_o >= 1 else torch.zeros_like(p_o)
    else:
        p_o = kappa = nan

    out = {
        "miou": miou,
        "iou_per_class": iou,
        "overall_accuracy": p_o,
        "kappa": kappa,
        "f1_per_class": f1,
        "mean_f1": mean_f1,
    }
    return {k: v.to(device=device, dtype=torch.float32) for k, v in out.items()}


class SegmentationMetrics(Metric):
    """Split-level mIoU / OA / Cohen's kappa / F1 from an accumulated confusion matrix.

    The state is a single ``(C, C)`` int64 confusion matrix summed across processes, so
    the result is exactly that of the whole split (not a mean of per-batch values).
    Pixels whose target equals ``ignore_index`` are dropped.  See the module docstring
    for the formulas and the mIoU convention (mean over classes with union > 0).

    Args:
        num_classes: Number of classes ``C``.
        ignore_index: Target value to ignore (``None`` to keep all pixels).
        **kwargs: Forwarded to :class:`torchmetrics.Metric`.
    """

    is_differentiable = False
    higher_is_better = True
    full_state_update = False

    confmat: Tensor

    def __init__(self, num_classes: int, ignore_index: int | None = 255, **kwargs: object) -> None:
        super().__init__(**kwargs)
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        self.add_state(
            "confmat",
            default=torch.zeros(num_classes, num_classes, dtype=torch.long),
            dist_reduce_fx="sum",
        )

    def update(self, preds: Tensor, target: Tensor) -> None:
        """Accumulate a batch.

        Args:
            preds: Class indices ``(B, H, W)`` or logits ``(B, C, H, W)``.
            target: Ground-truth class indices ``(B, H, W)``.
        """
        cm = confusion_matrix(preds, target, self.num_classes, self.ignore_index)
        self.confmat += cm.to(self.confmat.device)

    def compute(self) -> dict[str, Tensor]:
        """Return the metrics of :func:`metrics_from_confusion` on the accumulated matrix."""
        return metrics_from_confusion(self.confmat)
