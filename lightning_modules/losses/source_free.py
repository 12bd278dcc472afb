r"""Losses of source-free domain-adaptive segmentation (PR-SFDA, Luo et al., arXiv 2106.12123).

PR-SFDA's abstract names its two phases; its code and thresholds are not public, so the
building blocks come from the papers it builds on (contraseg's reading, see
docs/domain_adaptation.md):

* **Maximum squares** (Chen et al., ICCV 2019; ZJULearning/MaxSquareLoss ``utils/loss.py``):
  with softmax :math:`p_{n,c}` over :math:`N` pixels and :math:`C` classes,
  :math:`\mathcal{L}_{MS} = -\frac{1}{2NC}\sum_{n,c} p_{n,c}^2`.  With the *image-wise class
  weighting* (IW), per image :math:`h_c = |\{n : \hat y_n = c\}|` (arg-max counts) and
  :math:`w_c = 1 / \max(h_c^{r}\,(\sum_k h_k)^{1-r}, 1)` (:math:`r` = ``ratio``, 0.2), and
  :math:`\mathcal{L}_{MS\text{-}IW} = -\frac{1}{BC}\sum_{b,n,c} w_{b,\hat y_{b,n}}\,p_{b,n,c}^2`
  (weights detached).
* **Negative learning** (Kim et al., NLNL, ICCV 2019): for a complementary label
  :math:`\bar y_n` (a class pixel :math:`n` is unlikely to be),
  :math:`\mathcal{L}_{NL} = -\frac{1}{|V|}\sum_{n \in V}\log(1 - p_{n,\bar y_n})`, computed as
  :math:`\operatorname{LSE}_{k \ne \bar y}(z_k) - \operatorname{LSE}_k(z_k)` (finite for any
  logit scale).
* **Class-balanced pseudo labels** (LDBE, You et al. 2021; CBST): per predicted class
  :math:`c`, the threshold is the confidence at the top ``proportion`` quantile of the pixels
  predicted :math:`c`; a pixel keeps its pseudo label when its confidence reaches its class's
  threshold (every class keeps its most confident pixels, rare ones included).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = [
    "class_balanced_thresholds",
    "complementary_labels",
    "confidence_histogram",
    "max_squares_loss",
    "negative_learning_loss",
    "positive_learning_loss",
    "pseudo_labels",
]


def max_squares_loss(logits: Tensor, image_weighting: bool = False, ratio: float = 0.2) -> Tensor:
    """Maximum-squares loss of ``(B, C, H, W)`` logits (plain or image-wise weighted).

    Args:
        logits: Segmentation logits (softmax over dim 1, in float32).
        image_weighting: Chen et al.'s image-wise class weighting (IW).
        ratio: IW's exponent ``r`` (0.2 in the official code).

    Returns:
        The scalar loss (negative: minimising it raises the squared probabilities).
    """
    probs = logits.float().softmax(1)
    if not image_weighting:
        return -probs.pow(2).mean() / 2
    b, c = probs.shape[:2]
    pred = probs.argmax(1).flatten(1)  # (B, N)
    hist = torch.stack([torch.bincount(p, minlength=c) for p in pred]).float()  # (B, C)
    total = hist.sum(1, keepdim=True)
    weights = 1 / torch.clamp(hist.pow(ratio) * total.pow(1 - ratio), min=1.0)
    pixel_w = torch.gather(weights, 1, pred).view(b, 1, *probs.shape[2:]).detach()
    return -(probs.pow(2) * pixel_w).sum() / (b * c)


def negative_learning_loss(logits: Tensor, complementary: Tensor,
                           ignore_index: int = 255) -> Tensor:  # fmt: skip
    """Mean ``-log(1 - p_k)`` over pixels with a complementary label ``k``.

    Args:
        logits: ``(B, C, H, W)`` logits.
        complementary: ``(B, H, W)`` complementary class per pixel (``ignore_index``: none).
        ignore_index: Pixels without a complementary label.

    Returns:
        Scalar loss (0 when no pixel has a complementary label).
    """
    z = logits.float().movedim(1, -1)  # (B, H, W, C)
    valid = complementary != ignore_index
    if not valid.any():
        return z.sum() * 0.0
    z, k = z[valid], complementary[valid].long()
    others = z.scatter(1, k[:, None], float("-inf"))
    return (torch.logsumexp(z, 1) - torch.logsumexp(others, 1)).mean()


def confidence_histogram(confidence: Tensor, pred: Tensor, num_classes: int,
                         bins: int = 1000) -> Tensor:  # fmt: skip
    """``(C, bins)`` counts of max-probability values per predicted class over ``[0, 1]``.

    Accumulated batch by batch (sum the results): the thresholds of a whole target set in
    constant memory, where keeping every pixel's confidence (Cityscapes: 2 M per image)
    would not fit.
    """
    index = pred.flatten().long() * bins + (confidence.flatten().float() * bins).long().clamp(
        0, bins - 1)
    return torch.bincount(index, minlength=num_classes * bins).view(num_classes, bins)


def class_balanced_thresholds(histogram: Tensor, proportion: float) -> Tensor:
    """Per-class thresholds keeping the top ``proportion`` of each predicted class's pixels.

    Args:
        histogram: ``(C, bins)`` counts of :func:`confidence_histogram`.
        proportion: Share of each class's pixels kept, in ``(0, 1]``.

    Returns:
        ``(C,)`` thresholds: the lower edge of the bin where the count from the top reaches
        ``proportion`` of the class (so at least that share is kept, at most one bin more); a
        class no pixel predicts gets 2, above any probability (nothing to keep; finite, so that
        a checkpoint holding it is written).
    """
    if not 0 < proportion <= 1:
        raise ValueError(f"proportion must be in (0, 1], got {proportion}")
    counts = histogram.double()
    bins = counts.shape[1]
    from_top = counts.flip(1).cumsum(1)  # pixels at or above each bin, top bin first
    wanted = proportion * counts.sum(1, keepdim=True)
    reached = (from_top >= wanted - 1e-9).double().argmax(1)  # first bin from the top
    edges = (bins - 1 - reached).double() / bins
    return torch.where(counts.sum(1) > 0, edges, torch.full_like(edges, 2.0)).float()


def pseudo_labels(probs: Tensor, thresholds: Tensor, ignore_index: int = 255) -> Tensor:
    """Arg-max labels where the confidence reaches the class's threshold, else ``ignore_index``.

    Args:
        probs: ``(B, C, H, W)`` probabilities.
        thresholds: ``(C,)`` per-class thresholds (:func:`class_balanced_thresholds`).
        ignore_index: Label of the pixels left out.
    """
    confidence, pred = probs.max(1)
    keep = confidence >= thresholds.to(probs.device)[pred]
    return torch.where(keep, pred, torch.full_like(pred, ignore_index))


def complementary_labels(probs: Tensor, min_rank: int, generator: torch.Generator | None = None,
                         min_confidence: float = 0.0,
                         ignore_index: int = 255) -> Tensor:  # fmt: skip
    """A complementary label per pixel: a class drawn uniformly among those ranked ``>= min_rank``.

    Ranks count from the most probable class (rank 0), so ``min_rank = C // 2`` draws among
    the less likely half (LDBE draws rank ``C // 2 + U{-3..3}``).  Pixels whose confidence is
    below ``min_confidence`` (NLNL's SelNL keeps pixels above ``1 / C``) get ``ignore_index``.

    Args:
        probs: ``(B, C, H, W)`` probabilities of the frozen pseudo-label model.
        min_rank: Lowest rank drawn, in ``[1, C)``.
        generator: Random generator (on ``probs``' device).
        min_confidence: Selection threshold on the max probability.
        ignore_index: Label of unselected pixels.

    Returns:
        ``(B, H, W)`` long tensor.
    """
    c = probs.shape[1]
    if not 1 <= min_rank < c:
        raise ValueError(f"min_rank must be in [1, {c}), got {min_rank}")
    order = probs.argsort(1, descending=True)  # (B, C, H, W) classes by rank
    draw = torch.randint(min_rank, c, (probs.shape[0], 1, *probs.shape[2:]),
                         generator=generator, device=probs.device)  # fmt: skip
    labels = order.gather(1, draw).squeeze(1)
    keep = probs.max(1).values >= min_confidence
    return torch.where(keep, labels, torch.full_like(labels, ignore_index))


def positive_learning_loss(logits: Tensor, labels: Tensor, ignore_index: int = 255) -> Tensor:
    """Cross-entropy on the pseudo-labelled pixels (0 when none is labelled)."""
    if not (labels != ignore_index).any():
        return logits.float().sum() * 0.0
    return F.cross_entropy(logits.float(), labels, ignore_index=ignore_index)

