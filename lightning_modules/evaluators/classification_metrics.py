"""Image classification metrics for imbalanced data, over torchmetrics.

Accumulated over the whole split (and across DDP ranks by torchmetrics):

* ``accuracy`` (micro) and ``balanced_accuracy`` (macro recall = mean per-class recall);
* ``macro_f1`` and ``f1_per_class``, ``recall_per_class``;
* ``macro_auroc``: one-vs-rest ROC AUC per class from the softmax scores, averaged;
* ``confusion``: the ``C x C`` matrix (rows: true class), plotted by
  :class:`contraseg.callbacks.ConfusionMatrixPlot`.
"""

from __future__ import annotations

from torch import Tensor, nn
from torchmetrics.classification import (
    MulticlassAccuracy,
    MulticlassAUROC,
    MulticlassConfusionMatrix,
    MulticlassF1Score,
    MulticlassRecall,
)

__all__ = ["ClassificationMetrics"]


class ClassificationMetrics(nn.Module):
    """Accuracy, balanced accuracy, macro / per-class F1 and recall, macro AUROC, confusion.

    Args:
        num_classes: Classes ``C``.
    """

    def __init__(self, num_classes: int) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.accuracy = MulticlassAccuracy(num_classes, average="micro")
        self.balanced = MulticlassAccuracy(num_classes, average="macro")
        self.f1 = MulticlassF1Score(num_classes, average="none")
        self.recall = MulticlassRecall(num_classes, average="none")
        self.auroc = MulticlassAUROC(num_classes, average="macro")
        self.confusion = MulticlassConfusionMatrix(num_classes)

    def update(self, logits: Tensor, target: Tensor) -> None:
        """Add a batch of ``(N, C)`` logits and ``(N,)`` targets."""
        probs = logits.float().softmax(dim=1)
        preds = probs.argmax(dim=1)
        for metric in (self.accuracy, self.balanced, self.f1, self.recall, self.confusion):
            metric.update(preds, target)
        self.auroc.update(probs, target)

    def compute(self) -> dict[str, Tensor]:
        """All metrics of the accumulated split (macro F1 averages the per-class F1)."""
        f1 = self.f1.compute()
        return {
            "accuracy": self.accuracy.compute(),
            "balanced_accuracy": self.balanced.compute(),
            "macro_f1": f1.mean(),
            "f1_per_class": f1,
            "recall_per_class": self.recall.compute(),
            "macro_auroc": self.auroc.compute(),
            "confusion": self.confusion.compute(),
        }

    def reset(self) -> None:  # noqa: D102
        for metric in self.children():
            metric.reset()

    @property
    def update_count(self) -> int:
        """Batches accumulated since the last reset."""
        return int(self.accuracy.update_count)
