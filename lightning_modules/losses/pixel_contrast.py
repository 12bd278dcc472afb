r"""Supervised pixel-contrastive loss (Zhao et al. 2021; Hu et al. 2021), memory-bounded.

Zhao et al., *Contrastive Learning for Label-Efficient Semantic Segmentation*
(ICCV 2021; google-research ``supervised_pixel_contrastive_loss``) contrast the
L2-normalised pixel embeddings :math:`z_i` of a batch of dense feature maps.
Pixels whose label is ``ignore_index`` are removed entirely.  For an anchor
:math:`i` with similarities :math:`s_{ij} = z_i^\top z_j / \tau`, positives
:math:`P(i) = \{p \ne i : y_p = y_i\}` and negatives
:math:`N(i) = \{n : y_n \ne y_i\}` (optionally restricted to the anchor's own
image, :math:`g_n = g_i`):

.. math::

    \ell_i = \frac{1}{|P(i)|} \sum_{p \in P(i)}
        -\log \frac{e^{s_{ip}}}{e^{s_{ip}} + \sum_{n \in N(i)} e^{s_{in}}}
      = \frac{1}{|P(i)|} \sum_{p \in P(i)}
        \big[\operatorname{logaddexp}(s_{ip}, L_i) - s_{ip}\big],
    \qquad L_i = \log \sum_{n \in N(i)} e^{s_{in}},

and :math:`\mathcal{L} = \frac{1}{|V|} \sum_{i \in V} \ell_i` over the anchors
:math:`V` (all kept pixels, or those selected by ``anchor_mask``) that have at
least one positive.  Note the *per-positive* denominator
:math:`e^{s_{ip}} + \sum_n e^{s_{in}}`: unlike SupCon (see
:mod:`contraseg.lightning_modules.losses.contrastive`) the other positives are not in it.
An anchor without negatives has :math:`L_i = -\infty` and contributes 0.

**Self-pair.**  The official code builds the positive mask from label equality
alone, so it includes the anchor itself (:math:`p = i`, a constant
:math:`s_{ii} = 1/\tau`): that term only pushes negatives away, and it makes an
anchor that is the only pixel of its class count as "having a positive".  We
exclude it, as SupCon and :func:`~contraseg.lightning_modules.losses.contrastive_loss` do,
so that every positive term pulls two *different* pixels together and
singleton-class anchors are skipped instead of contributing a pure repulsion
weighted by :math:`1/|P(i)|` that depends on class frequency.

**Variants.**  ``anchor_mask`` restricts the anchors while every kept pixel stays
a candidate (Hu et al., MICCAI 2021: background pixels are not anchors but are
in the denominators).  ``negatives_from_own_group=True`` with ``groups`` = image
index per pixel takes the negatives only from the anchor's own image while
positives still come from all images (Zhao et al.'s cross-image variant).

**Memory.**  :func:`pixel_contrastive_loss` never materialises the ``N x N``
similarity matrix: a custom autograd Function processes the anchors in blocks
of ``block_size`` rows, saves only per-anchor statistics (:math:`L_i`,
:math:`|P(i)|`) and recomputes each ``block x N`` similarity block in backward
(manual gradient checkpointing) with the analytic gradient

.. math::

    \frac{\partial \ell_i}{\partial s_{ip}} = -\frac{\sigma_{ip}}{|P(i)|},
    \qquad
    \frac{\partial \ell_i}{\partial s_{in}} =
        \Big(\sum_{p} \frac{\sigma_{ip}}{|P(i)|}\Big) e^{s_{in} - L_i},
    \qquad \sigma_{ip} = \operatorname{sigmoid}(L_i - s_{ip}),

so peak memory grows with ``block_size * N``.  All similarity math runs in
float32, also under autocast; the loss is finite at temperature 0.01.
The driver around the blocked Function (validation, anchors, Hu et al.'s stride /
tile sub-sampling) is :mod:`contraseg.lightning_modules.losses.pixel_blocked`, shared with the
SupCon loss of :mod:`contraseg.lightning_modules.losses.pixel_supcon`;
:func:`tiled_pixel_contrastive_loss` averages this loss over tiles.

**Official composition (Zhao et al.).**  Over dense maps, one loss per image or
image pair, averaged over the units with at least one valid anchor:
:func:`within_image_pixel_contrastive_loss` (each image on its own),
:func:`cross_image_pixel_contrastive_loss` (an image and a permuted image of the
second batch; positives from both, negatives from the anchor's own image) and
:func:`distortion_pixel_contrastive_loss` (label-free: two distorted views of an
image, positives = pixels from the same source cell).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from contraseg.lightning_modules.losses.contrastive import check_temperature
from contraseg.lightning_modules.losses.pixel_blocked import (
    BlockRule,
    _prepare,
    block_partition,
    blocked_pixel_loss,
    check_dense,
    mean_or_zero,
    stride_sample,
    tiled_pixel_loss,
)

__all__ = [
    "block_partition",
    "cross_image_pixel_contrastive_loss",
    "distortion_pixel_contrastive_loss",
    "pixel_contrastive_loss",
    "pixel_contrastive_loss_naive",
    "stride_sample",
    "tiled_pixel_contrastive_loss",
    "within_image_pixel_contrastive_loss",
]


def _block_masks(
    yb: Tensor, y: Tensor, gb: Tensor | None, g: Tensor | None, rows: Tensor
) -> tuple[Tensor, Tensor]:
    """Positive and negative masks of one anchor block (``rows`` = anchor columns)."""
    pos = yb[:, None] == y[None, :]
    neg = ~pos
    if g is not None and gb is not None:
        neg &= gb[:, None] == g[None, :]
    pos[torch.arange(rows.shape[0], device=rows.device), rows] = False
    return pos, neg


def _per_positive_forward(
    s: Tensor, rows: Tensor, y: Tensor, g: Tensor | None, n_pos: Tensor
) -> tuple[Tensor, Tensor]:
    """Summed per-positive-denominator loss of a block and its ``L_i`` (negatives' LSE)."""
    pos, neg = _block_masks(y[rows], y, None if g is None else g[rows], g, rows)
    lneg = torch.logsumexp(s.masked_fill(~neg, float("-inf")), dim=1)
    # -log(e^s / (e^s + e^L)) = logaddexp(s, L) - s = softplus(L - s)
    terms = F.softplus(lneg[:, None] - s).masked_fill_(~pos, 0.0)
    return (terms.sum(dim=1) / n_pos).sum(), lneg


def _per_positive_backward(
    s: Tensor, rows: Tensor, y: Tensor, g: Tensor | None, n_pos: Tensor, lneg: Tensor
) -> Tensor:
    """``d loss / d (s tau)`` of a block, from its saved ``L_i``."""
    pos, neg = _block_masks(y[rows], y, None if g is None else g[rows], g, rows)
    lneg = lneg[:, None]
    # d l_i / d s_ip = -sigmoid(L_i - s_ip) / |P(i)|
    sig = torch.sigmoid(lneg - s).masked_fill_(~pos, 0.0)
    sig /= n_pos[:, None]
    weight = sig.sum(dim=1, keepdim=True)
    # d l_i / d s_in = weight_i * softmax over negatives; rows without negatives
    # have L_i = -inf (exp -> inf) but are fully masked here.
    s.sub_(lneg).exp_().masked_fill_(~neg, 0.0)
    return s.mul_(weight).sub_(sig)


# the per-positive denominator (Zhao et al.), run by pixel_blocked.BlockedPixelLoss
PER_POSITIVE = BlockRule(_per_positive_forward, _per_positive_backward)


def pixel_contrastive_loss(
    embeddings: Tensor,
    labels: Tensor,
    temperature: float = 0.07,
    ignore_index: int = 255,
    anchor_mask: Tensor | None = None,
    groups: Tensor | None = None,
    negatives_from_own_group: bool = False,
    block_size: int = 4096,
) -> Tensor:
    """Supervised pixel-contrastive loss in ``block_size x N`` memory (module docstring).

    Args:
        embeddings: ``(N, D)`` pixel embeddings (normalised here, any float dtype).
        labels: ``(N,)`` integer class labels; ``ignore_index`` pixels are dropped.
        temperature: Softmax temperature ``tau > 0``.
        ignore_index: Label of pixels that are neither anchors nor candidates.
        anchor_mask: Optional bool ``(N,)``; only these pixels act as anchors while
            every non-ignored pixel stays a positive / negative candidate.
        groups: Optional ``(N,)`` image index per pixel (used by
            ``negatives_from_own_group``).
        negatives_from_own_group: Take the negatives of an anchor only from its own
            group (image); positives still come from all groups.
        block_size: Anchors processed per block; peak memory is
            ``O(block_size * N)``.

    Returns:
        Scalar float32 loss; 0 (attached to the graph) when no anchor has a positive.

    Raises:
        ValueError: On a bad temperature, block size or shapes.
    """
    return blocked_pixel_loss(
        embeddings,
        labels,
        PER_POSITIVE,
        temperature,
        ignore_index,
        anchor_mask,
        groups,
        negatives_from_own_group,
        block_size,
    )[0]


def pixel_contrastive_loss_naive(
    embeddings: Tensor,
    labels: Tensor,
    temperature: float = 0.07,
    ignore_index: int = 255,
    anchor_mask: Tensor | None = None,
    groups: Tensor | None = None,
    negatives_from_own_group: bool = False,
) -> Tensor:
    """Reference implementation of :func:`pixel_contrastive_loss` with plain autograd.

    Builds the full ``N x N`` similarity and mask matrices (``O(N^2)`` memory, several
    ``N x N`` buffers saved for backward); meant for tests and small ``N`` only.

    Args:
        embeddings: ``(N, D)`` pixel embeddings (normalised here).
        labels: ``(N,)`` integer class labels.
        temperature: Softmax temperature ``tau > 0``.
        ignore_index: Label of ignored pixels.
        anchor_mask: Optional bool ``(N,)`` anchor selection.
        groups: Optional ``(N,)`` image index per pixel.
        negatives_from_own_group: Negatives only from the anchor's own group.

    Returns:
        Scalar float32 loss.
    """
    tau = check_temperature(temperature)
    with torch.autocast(device_type=embeddings.device.type, enabled=False):
        z, y, g, anchor_index, n_pos = _prepare(
            embeddings, labels, ignore_index, anchor_mask, groups, negatives_from_own_group
        )
        if anchor_index.numel() == 0:
            return z.sum() * 0.0
        s = z[anchor_index] @ z.T / tau
        pos, neg = _block_masks(
            y[anchor_index], y, None if g is None else g[anchor_index], g, anchor_index
        )
        has_neg = neg.any(dim=1, keepdim=True)
        # rows without negatives: logsumexp over finite dummies, then replaced by -inf, so
        # that no NaN gradient (exp(-inf - -inf)) reaches the graph.
        masked = torch.where(has_neg, s.masked_fill(~neg, float("-inf")), torch.zeros_like(s))
        lneg = torch.where(has_neg, torch.logsumexp(masked, dim=1, keepdim=True), float("-inf"))
        terms = torch.logaddexp(s, lneg.expand_as(s)) - s
        per_anchor = torch.where(pos, terms, torch.zeros_like(terms)).sum(dim=1) / n_pos
        return per_anchor.mean()


def tiled_pixel_contrastive_loss(
    features: Tensor,
    labels: Tensor,
    block: int,
    temperature: float = 0.07,
    ignore_index: int = 255,
    anchor_mask: Tensor | None = None,
    negatives_from_own_group: bool = False,
    block_size: int = 4096,
) -> Tensor:
    r"""Mean of :func:`pixel_contrastive_loss` over ``block x block`` tiles.

    :math:`\mathcal{L} = \frac{1}{|T|} \sum_{t \in T} \mathcal{L}_t` over the tiles with a
    valid anchor (:func:`~contraseg.lightning_modules.losses.pixel_blocked.tiled_pixel_loss`).

    Args:
        features: ``(B, D, H, W)`` dense embeddings.
        labels: ``(B, H, W)`` labels.
        block: Tile side.
        temperature: Softmax temperature ``tau > 0``.
        ignore_index: Label of ignored pixels.
        anchor_mask: Optional bool ``(B, H, W)`` anchor selection.
        negatives_from_own_group: Negatives only from the anchor's own image.
        block_size: Anchor block size of the per-tile loss.

    Returns:
        Scalar float32 loss.
    """
    return tiled_pixel_loss(
        features, labels, block, PER_POSITIVE, temperature, ignore_index, anchor_mask,
        negatives_from_own_group, block_size,
    )  # fmt: skip


def within_image_pixel_contrastive_loss(
    features: Tensor,
    labels: Tensor,
    temperature: float = 0.07,
    ignore_index: int = 255,
    block_size: int = 4096,
) -> Tensor:
    r"""Zhao et al.'s within-image loss: :func:`pixel_contrastive_loss` per image.

    Positives and negatives of an anchor come only from its own image;
    :math:`\mathcal{L} = \frac{1}{|I|} \sum_{b \in I} \mathcal{L}_b` over the images
    :math:`I` with at least one valid anchor.  The official code applies this to the
    original and to the augmented batch and sums the two; the caller does that.

    Args:
        features: ``(B, D, H, W)`` dense embeddings.
        labels: ``(B, H, W)`` labels.
        temperature: Softmax temperature ``tau > 0``.
        ignore_index: Label of ignored pixels.
        block_size: Anchor block size of :func:`pixel_contrastive_loss`.

    Returns:
        Scalar float32 loss; 0 (attached to the graph) when no image has a valid anchor.

    Raises:
        ValueError: On mismatched shapes, a bad temperature or block size.
    """
    check_dense(features, labels)
    losses = []
    for b in range(features.shape[0]):
        loss, count = blocked_pixel_loss(
            features[b].flatten(1).T,
            labels[b].reshape(-1),
            PER_POSITIVE,
            temperature,
            ignore_index,
            None,
            None,
            False,
            block_size,
        )
        if count:
            losses.append(loss)
    return mean_or_zero(losses, features)


def cross_image_pixel_contrastive_loss(
    features1: Tensor,
    features2: Tensor,
    labels1: Tensor,
    labels2: Tensor,
    permutation: Tensor | None = None,
    temperature: float = 0.07,
    ignore_index: int = 255,
    block_size: int = 4096,
) -> Tensor:
    r"""Zhao et al.'s cross-image loss over pairs of images.

    Image :math:`b` of batch 1 is paired with image :math:`\pi(b)` of batch 2 (the
    official code uses the augmented batch, shuffled by a random permutation
    :math:`\pi`).  The pixels of both images are concatenated; positives are the
    pixels with the anchor's label in *either* image, negatives only those of the
    anchor's *own* image (``negatives_from_own_group=True``).  Every kept pixel of
    both images is an anchor.  :math:`\mathcal{L}` is the mean of the pair losses
    over the pairs with at least one valid anchor.

    Args:
        features1: ``(B, D, H1, W1)`` dense embeddings of the first batch.
        features2: ``(B, D, H2, W2)`` dense embeddings of the second batch (the
            spatial size may differ from the first).
        labels1: ``(B, H1, W1)`` labels of the first batch.
        labels2: ``(B, H2, W2)`` labels of the second batch.
        permutation: Optional ``(B,)`` permutation of ``range(B)``; ``None`` pairs
            image ``b`` with image ``b``.
        temperature: Softmax temperature ``tau > 0``.
        ignore_index: Label of ignored pixels.
        block_size: Anchor block size of :func:`pixel_contrastive_loss`.

    Returns:
        Scalar float32 loss; 0 (attached to the graph) when no pair has a valid anchor.

    Raises:
        ValueError: On mismatched shapes, a permutation that is not one of
            ``range(B)``, a bad temperature or block size.
    """
    _check_two_views(features1, features2, labels1, labels2, "labels")
    batch = features1.shape[0]
    perm = _check_permutation(permutation, batch, features1.device)
    losses = []
    for b in range(batch):
        e1, e2 = features1[b].flatten(1).T, features2[int(perm[b])].flatten(1).T
        groups = torch.cat(
            [
                torch.zeros(e1.shape[0], dtype=torch.long, device=e1.device),
                torch.ones(e2.shape[0], dtype=torch.long, device=e1.device),
            ]
        )
        loss, count = blocked_pixel_loss(
            torch.cat([e1, e2]),
            torch.cat([labels1[b].reshape(-1), labels2[int(perm[b])].reshape(-1)]),
            PER_POSITIVE,
            temperature,
            ignore_index,
            None,
            groups,
            True,
            block_size,
        )
        if count:
            losses.append(loss)
    return mean_or_zero(losses, features1, features2)


def distortion_pixel_contrastive_loss(
    features1: Tensor,
    features2: Tensor,
    index1: Tensor,
    index2: Tensor,
    source_width: int | Tensor,
    cell: int,
    temperature: float = 0.07,
    block_size: int = 4096,
) -> Tensor:
    r"""Zhao et al.'s label-free loss between two distorted views of each image.

    In the paper a pixel's positive is "the same pixel under two distortions".  At
    the (lower) feature resolution this is realised as *the same source cell*: each
    feature pixel carries the id ``y * source_width + x`` of the original-image pixel
    it comes from (``index1`` / ``index2``; a negative id means "no source pixel" and
    the pixel is ignored), and its label is the id of the ``cell x cell`` source cell
    :math:`(\lfloor y / c \rfloor, \lfloor x / c \rfloor)` containing it.  Per image,
    the pixels of both views are concatenated; positives are the pixels covering the
    anchor's cell (in either view), negatives all other pixels of the two views.
    Anchors are restricted to pixels whose cell also occurs in the *other* view, so
    every anchor has a cross-view positive.  :math:`\mathcal{L}` is the mean over
    the images with at least one valid anchor.

    Args:
        features1: ``(B, D, H1, W1)`` dense embeddings of view 1.
        features2: ``(B, D, H2, W2)`` dense embeddings of view 2.
        index1: ``(B, H1, W1)`` integer source-pixel ids of view 1.
        index2: ``(B, H2, W2)`` integer source-pixel ids of view 2.
        source_width: Width ``>= 1`` of the original image (to decode the ids), or a
            ``(B,)`` tensor with one width per image (e.g. ``batch["source_size"][:, 1]``).
        cell: Side ``>= 1`` of the source cells that define positives.
        temperature: Softmax temperature ``tau > 0``.
        block_size: Anchor block size of :func:`pixel_contrastive_loss`.

    Returns:
        Scalar float32 loss; 0 (attached to the graph) when no image has a valid anchor.

    Raises:
        ValueError: On mismatched shapes, non-integer ids, ``source_width < 1``,
            ``cell < 1``, a bad temperature or block size.
    """
    _check_two_views(features1, features2, index1, index2, "index")
    for name, t in (("index1", index1), ("index2", index2)):
        if t.is_floating_point() or t.is_complex() or t.dtype == torch.bool:
            raise ValueError(f"{name} must be an integer tensor, got {t.dtype}")
    widths = source_width if isinstance(source_width, Tensor) else torch.tensor([source_width])
    if widths.numel() not in (1, index1.shape[0]) or bool((widths < 1).any()):
        raise ValueError(
            f"source_width must be >= 1 (one value or one per image), got {source_width}"
        )
    if cell < 1:
        raise ValueError(f"cell must be >= 1, got {cell}")
    cells1 = _source_cells(index1, source_width, cell)
    cells2 = _source_cells(index2, source_width, cell)
    losses = []
    for b in range(features1.shape[0]):
        c1, c2 = cells1[b].reshape(-1), cells2[b].reshape(-1)
        anchors = torch.cat([(c1 >= 0) & torch.isin(c1, c2), (c2 >= 0) & torch.isin(c2, c1)])
        loss, count = blocked_pixel_loss(
            torch.cat([features1[b].flatten(1).T, features2[b].flatten(1).T]),
            torch.cat([c1, c2]),
            PER_POSITIVE,
            temperature,
            -1,
            anchors,
            None,
            False,
            block_size,
        )
        if count:
            losses.append(loss)
    return mean_or_zero(losses, features1, features2)


def _source_cells(index: Tensor, source_width: int | Tensor, cell: int) -> Tensor:
    """Flattened source-cell id of every source-pixel id (``-1`` where the id is < 0)."""
    index = index.long()
    if isinstance(source_width, Tensor):  # one width per image of the (B, H, W) maps
        source_width = source_width.to(index.device).long().view(-1, *[1] * (index.ndim - 1))
    cells_x = -(-source_width // cell)
    ids = index.clamp_min(0)
    cells = (ids // source_width // cell) * cells_x + (ids % source_width) // cell
    return torch.where(index >= 0, cells, torch.full_like(cells, -1))


def _check_two_views(
    features1: Tensor, features2: Tensor, maps1: Tensor, maps2: Tensor, name: str
) -> None:
    for i, (f, m) in enumerate(((features1, maps1), (features2, maps2)), start=1):
        if f.ndim != 4 or m.shape != (f.shape[0], *f.shape[2:]):
            raise ValueError(
                f"expected features{i} (B, D, H, W) and {name}{i} (B, H, W), got "
                f"{tuple(f.shape)} and {tuple(m.shape)}"
            )
    if features1.shape[:2] != features2.shape[:2]:
        raise ValueError(
            f"features1 and features2 must agree in (B, D), got {tuple(features1.shape[:2])} "
            f"and {tuple(features2.shape[:2])}"
        )


def _check_permutation(permutation: Tensor | None, batch: int, device: torch.device) -> Tensor:
    if permutation is None:
        return torch.arange(batch, device=device)
    if permutation.shape != (batch,) or not torch.equal(
        permutation.detach().long().sort().values.cpu(), torch.arange(batch)
    ):
        raise ValueError(
            f"permutation must be a permutation of range({batch}), got {permutation.tolist()}"
        )
    return permutation.long()
