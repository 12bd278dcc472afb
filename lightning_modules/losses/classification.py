r"""Classification losses for imbalanced data (SuperCon stage 2 options).

With logits :math:`z \in \mathbb{R}^C`, target :math:`y`, softmax :math:`p` and class
training counts :math:`n_c`:

* class-weighted cross-entropy, weights of Cui et al. (CVPR 2019, "effective number"):
  :math:`w_c = \frac{1 - \beta}{1 - \beta^{n_c}}`, normalised to :math:`\sum_c w_c = C`
  (:math:`\beta \to 1` gives inverse frequency, :math:`\beta = 0` uniform weights);
  :math:`\mathcal{L} = \sum_i w_{y_i} \ell_i / \sum_i w_{y_i}` (PyTorch's weighted mean);
* focal loss (Lin et al., ICCV 2017, eq. 5): :math:`\mathcal{L} = -\frac{1}{N}\sum_i
  w_{y_i} (1 - p_{i, y_i})^\gamma \log p_{i, y_i}`;
* logit-adjusted cross-entropy (Menon et al., ICLR 2021, eq. 10):
  :math:`\ell_i = -\log \frac{e^{z_{y_i} + \tau \log \pi_{y_i}}}{\sum_c e^{z_c + \tau \log \pi_c}}`
  with priors :math:`\pi_c = n_c / \sum n`; predictions use the raw logits.

All run in float32 (log-softmax, so finite for any logit scale).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["class_balanced_weights", "focal_loss", "logit_adjusted_cross_entropy"]


def class_balanced_weights(counts: Tensor, beta: float = 0.999) -> Tensor:
    """Effective-number class weights (Cui et al. 2019), summing to the number of classes.

    Args:
        counts: ``(C,)`` training images per class (a class with 0 images gets weight 0).
        beta: ``0 <= beta < 1``.

    Returns:
        ``(C,)`` float32 weights.
    """
    if not 0 <= beta < 1:
        raise ValueError(f"beta must be in [0, 1), got {beta}")
    counts = counts.double()
    effective = (1 - torch.pow(torch.tensor(beta, dtype=torch.float64), counts)) / (1 - beta)
    weights = torch.where(counts > 0, 1 / effective.clamp(min=1e-12), torch.zeros_like(counts))
    return (weights * (counts > 0).sum() / weights.sum()).float()


def focal_loss(logits: Tensor, target: Tensor, gamma: float = 2.0,
               weight: Tensor | None = None) -> Tensor:  # fmt: skip
    """Mean focal loss (``gamma = 0``: cross-entropy with the same ``weight`` per sample).

    Args:
        logits: ``(N, C)`` logits.
        target: ``(N,)`` class indices.
        gamma: Focusing parameter ``>= 0``.
        weight: Optional ``(C,)`` class weights (the ``alpha`` of the paper).

    Returns:
        Scalar loss.
    """
    if gamma < 0:
        raise ValueError(f"gamma must be >= 0, got {gamma}")
    log_p = F.log_softmax(logits.float(), dim=1).gather(1, target[:, None])[:, 0]
    loss = -((1 - log_p.exp()).clamp(min=0) ** gamma) * log_p
    if weight is not None:
        loss = loss * weight.to(loss)[target]
    return loss.mean()


def logit_adjusted_cross_entropy(logits: Tensor, target: Tensor, log_prior: Tensor,
                                 tau: float = 1.0) -> Tensor:  # fmt: skip
    """Cross-entropy on ``logits + tau * log_prior`` (Menon et al. 2021).

    Args:
        logits: ``(N, C)`` logits.
        target: ``(N,)`` class indices.
        log_prior: ``(C,)`` log class priors of the training set.
        tau: Adjustment strength.

    Returns:
        Scalar loss.
    """
    return F.cross_entropy(logits.float() + tau * log_prior.to(torch.float32), target)
