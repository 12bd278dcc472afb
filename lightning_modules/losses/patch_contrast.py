r"""Patch-wise cross-domain contrast (Liu et al., arXiv 2104.11056): contraseg's reading.

The paper's public text (abstract, introduction, Fig. 1) states the idea: patches of the two
domains that are structurally similar *in label space* should be close in feature space,
with a label disparity measured "at several levels of resolution".  Sizes, the disparity
formula, the threshold, the temperature and the negatives are not public; every one is an
argument here, and the formulas below are this project's design:

* A label map is cut into a :math:`G \times G` grid of patches.  Patch :math:`i` at pyramid
  level :math:`\ell` (``levels``, e.g. 1, 2, 4) is split into :math:`\ell \times \ell`
  sub-patches; :math:`h^{\ell}_{i,s} \in \Delta^{C-1}` is the class histogram of sub-patch
  :math:`s` (ignored pixels left out, normalised to sum 1).
* Disparity (total variation averaged over sub-patches, then levels; in :math:`[0, 1]`):
  :math:`d(i, j) = \frac{1}{L}\sum_{\ell}\frac{1}{\ell^2}\sum_{s}\tfrac12
  \lVert h^{\ell}_{i,s} - h^{\ell}_{j,s}\rVert_1`.
* Each source patch :math:`i` takes as positive the target patch
  :math:`j^*(i) = \arg\min_j d(i, j)` if :math:`d(i, j^*) < \delta` (``threshold``); the
  target patches with :math:`d(i, j) \ge \delta` are its negatives, the other near matches
  are left out of its denominator.
* With L2-normalised projected, pooled patch features :math:`u_i` (source) and :math:`v_j`
  (target), :math:`\mathcal{L} = -\frac{1}{|P|}\sum_{i \in P}\log
  \frac{e^{u_i \cdot v_{j^*}/\tau}}{e^{u_i \cdot v_{j^*}/\tau} + \sum_{j \in N_i}
  e^{u_i \cdot v_j/\tau}}` over the matched source patches :math:`P` (log-sum-exp).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["label_disparity", "match_patches", "patch_histograms", "patch_info_nce"]


def patch_histograms(labels: Tensor, num_classes: int, grid: int, levels: Sequence[int],
                     ignore_index: int = 255) -> tuple[Tensor, Tensor]:  # fmt: skip
    """Multi-level class histograms of the ``grid x grid`` patches of label maps.

    Args:
        labels: ``(B, H, W)`` class ids (``H`` and ``W`` divisible by ``grid * max(levels)``).
        num_classes: Number of classes ``C``.
        grid: Patches per side.
        levels: Sub-patches per side at each level.
        ignore_index: Pixels left out of the histograms.

    Returns:
        ``(B * grid**2, C * sum(l**2))`` histograms (patch-major, then level, sub-patch,
        class; every sub-patch's histogram sums to 1, or to 0 when all its pixels are
        ignored), and a ``(B * grid**2,)`` mask of patches with at least one labelled pixel.
    """
    b, h, w = labels.shape
    finest = grid * max(levels)
    if h % finest or w % finest:
        raise ValueError(f"label maps of {h}x{w} px do not divide into {grid}x{grid} patches of "
                         f"{max(levels)}x{max(levels)} sub-patches")  # fmt: skip
    valid = labels != ignore_index
    onehot = F.one_hot(torch.where(valid, labels, 0).long(), num_classes).float()
    onehot = (onehot * valid[..., None]).permute(0, 3, 1, 2)  # (B, C, H, W)
    parts = []
    for level in levels:
        counts = F.adaptive_avg_pool2d(onehot, grid * level)  # class shares per sub-patch
        totals = counts.sum(1, keepdim=True)
        hist = torch.where(totals > 0, counts / totals.clamp(min=1e-12), torch.zeros_like(counts))
        # (B, C, G*l, G*l) -> (B, G, G, l, l, C): patch-major, sub-patches within
        hist = hist.view(b, num_classes, grid, level, grid, level).permute(0, 2, 4, 3, 5, 1)
        parts.append(hist.reshape(b * grid * grid, -1))
    labelled = F.adaptive_avg_pool2d(valid[:, None].float(), grid).flatten() > 0
    return torch.cat(parts, 1), labelled


def label_disparity(hist_a: Tensor, hist_b: Tensor, num_classes: int,
                    levels: Sequence[int]) -> Tensor:  # fmt: skip
    """``(Na, Nb)`` disparities of :func:`patch_histograms` rows (module docstring formula)."""
    out = hist_a.new_zeros(hist_a.shape[0], hist_b.shape[0])
    start = 0
    for level in levels:
        width = level * level * num_classes
        a = hist_a[:, start:start + width].reshape(hist_a.shape[0], level * level, num_classes)
        bb = hist_b[:, start:start + width].reshape(hist_b.shape[0], level * level, num_classes)
        tv = (a[:, None] - bb[None]).abs().sum(-1) / 2  # (Na, Nb, l*l)
        out = out + tv.mean(-1)
        start += width
    return out / len(levels)


def match_patches(disparity: Tensor, threshold: float) -> tuple[Tensor, Tensor, Tensor]:
    """Positive and negatives of each row: ``(index (Na,), matched (Na,), negatives (Na, Nb))``.

    ``index`` is the column of smallest disparity, ``matched`` whether it is below
    ``threshold``, ``negatives`` the columns at or above it.
    """
    best, index = disparity.min(1)
    return index, best < threshold, disparity >= threshold


def patch_info_nce(anchors: Tensor, candidates: Tensor, positive: Tensor, matched: Tensor,
                   negatives: Tensor, temperature: float = 0.1) -> Tensor:  # fmt: skip
    """InfoNCE of matched anchors against their positive and their negatives.

    Args:
        anchors: ``(Na, D)`` source patch features (normalised here).
        candidates: ``(Nb, D)`` target patch features (normalised here).
        positive: ``(Na,)`` positive column per anchor.
        matched: ``(Na,)`` anchors with a positive (the loss averages over these).
        negatives: ``(Na, Nb)`` negative columns per anchor.
        temperature: ``tau``.

    Returns:
        Scalar loss in float32 (0 with no matched anchor).
    """
    u, v = F.normalize(anchors.float(), dim=1), F.normalize(candidates.float(), dim=1)
    if not matched.any():
        return (u.sum() + v.sum()) * 0.0
    logits = u @ v.T / temperature
    keep = negatives.clone()
    keep[torch.arange(len(positive), device=keep.device), positive] = True
    logits = logits.masked_fill(~keep, float("-inf"))
    pos = logits.gather(1, positive[:, None]).squeeze(1)
    loss = torch.logsumexp(logits, 1) - pos
    return loss[matched].mean()
