r"""Weighted k-nearest-neighbour classifier (Wu et al. 2018) as a torchmetrics ``Metric``.

For a query :math:`q` and bank features :math:`b_j` (both L2-normalised) with
labels :math:`y_j`, the :math:`k` most similar bank entries vote with weights
:math:`w_j = \exp(q^\top b_j / \tau)`; the predicted class maximises
:math:`\sum_{j \in \mathrm{top}k} w_j\,[y_j = c]`.  States are concatenated over
DDP ranks, so every rank scores the full query set against the full bank.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor
from torchmetrics import Metric
from torchmetrics.utilities import dim_zero_cat


def weighted_knn_predict(
    queries: Tensor,
    bank: Tensor,
    bank_labels: Tensor,
    num_classes: int,
    k: int = 200,
    temperature: float = 0.1,
    chunk_size: int = 1024,
) -> Tensor:
    """Predict ``queries`` labels by a similarity-weighted vote of their ``k`` nearest neighbours.

    Args:
        queries: ``(n, d)`` features.
        bank: ``(m, d)`` reference features.
        bank_labels: ``(m,)`` labels in ``[0, num_classes)``.
        num_classes: Number of classes.
        k: Neighbours (clipped to ``m``).
        temperature: Vote temperature ``tau > 0``.
        chunk_size: Queries processed at once (bounds memory to ``chunk_size x m``).

    Returns:
        ``(n,)`` predicted labels.
    """
    if temperature <= 0:
        raise ValueError(f"kNN temperature must be > 0, got {temperature}")
    bank = F.normalize(bank.float(), dim=1)
    k = min(k, bank.shape[0])
    preds = []
    for chunk in queries.float().split(chunk_size):
        sim = F.normalize(chunk, dim=1) @ bank.T
        top_sim, top_idx = sim.topk(k, dim=1)
        weights = (top_sim / temperature).exp()
        votes = torch.zeros(chunk.shape[0], num_classes, device=chunk.device)
        votes.scatter_add_(1, bank_labels[top_idx], weights)
        preds.append(votes.argmax(dim=1))
    return torch.cat(preds) if preds else torch.empty(0, dtype=torch.long)


class WeightedKNN(Metric):
    """Accumulates bank and query features; ``compute()`` returns top-1 kNN accuracy.

    Args:
        num_classes: Number of classes.
        k: Neighbours.
        temperature: Vote temperature.
    """

    full_state_update = False

    def __init__(self, num_classes: int, k: int = 200, temperature: float = 0.1) -> None:
        super().__init__()
        if k < 1:
            raise ValueError(f"knn k must be >= 1, got {k}")
        self.num_classes, self.k, self.temperature = num_classes, k, temperature
        for name in ("bank_features", "bank_labels", "query_features", "query_labels"):
            self.add_state(name, default=[], dist_reduce_fx="cat")

    def update(self, features: Tensor, labels: Tensor, bank: bool) -> None:  # type: ignore[override]
        """Add labeled features to the bank (``bank=True``) or to the queries."""
        keep = labels >= 0
        features, labels = features.detach()[keep].float(), labels[keep]
        if bank:
            self.bank_features.append(features)
            self.bank_labels.append(labels)
        else:
            self.query_features.append(features)
            self.query_labels.append(labels)

    def compute(self) -> Tensor:
        """Top-1 accuracy of the queries; ``nan`` if bank or queries are empty."""
        # list states before a DDP sync, concatenated tensors after it
        if any(isinstance(s, list) and not s for s in (self.bank_features, self.query_features)):
            return torch.tensor(float("nan"), device=self.device)
        bank, bank_labels = dim_zero_cat(self.bank_features), dim_zero_cat(self.bank_labels)
        queries, labels = dim_zero_cat(self.query_features), dim_zero_cat(self.query_labels)
        if bank.shape[0] == 0 or queries.shape[0] == 0:  # every sample was unlabeled
            return torch.tensor(float("nan"))
        preds = weighted_knn_predict(
            queries, bank, bank_labels, self.num_classes, self.k, self.temperature
        )
        return (preds == labels).float().mean()
