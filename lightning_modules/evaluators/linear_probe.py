"""Online linear probe: a linear classifier trained on detached features."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn
from torchmetrics.classification import MulticlassAccuracy


class OnlineLinearProbe(nn.Module):
    """Linear classifier on frozen (detached) features, trained alongside pretraining.

    Gradients never reach the encoder: the features are detached here.  Samples
    with a negative label (unlabeled data) are ignored.

    Args:
        in_dim: Feature dimension.
        num_classes: Number of classes.
    """

    def __init__(self, in_dim: int, num_classes: int) -> None:
        super().__init__()
        if num_classes < 2:
            raise ValueError(f"OnlineLinearProbe needs num_classes >= 2, got {num_classes}")
        self.linear = nn.Linear(in_dim, num_classes)
        self.train_acc = MulticlassAccuracy(num_classes, average="micro", ignore_index=-1)
        self.val_acc = MulticlassAccuracy(num_classes, average="micro", ignore_index=-1)

    def forward(self, features: Tensor) -> Tensor:
        """Logits ``(B, num_classes)`` for detached features ``(B, in_dim)``."""
        return self.linear(features.detach().float())

    def loss(self, features: Tensor, labels: Tensor, train: bool = True) -> Tensor:
        """Cross-entropy on labeled samples; updates the train or val accuracy.

        Args:
            features: ``(B, in_dim)`` features (detached here).
            labels: ``(B,)`` labels, ``-1`` for unlabeled samples.
            train: Update the training (else validation) accuracy.

        Returns:
            Scalar loss (0 if no sample is labeled).
        """
        logits = self(features)
        metric = self.train_acc if train else self.val_acc
        labeled = labels >= 0
        if labeled.any():
            metric.update(logits[labeled], labels[labeled])
        return (
            F.cross_entropy(logits, labels, ignore_index=-1) if labeled.any() else logits.sum() * 0
        )
