r"""Supervised pixel contrast with the SupCon denominator (Hu et al. 2021), memory-bounded.

Hu et al., *Semi-supervised Contrastive Learning for Label-efficient Medical
Image Segmentation* (MICCAI 2021; official code ``xhu248/semi_cotrast_seg``,
``SupConLoss`` applied to pixels) use Khosla et al.'s SupCon loss on the
L2-normalised pixel embeddings :math:`z_i`.  Pixels whose label is
``ignore_index`` are removed entirely.  For an anchor :math:`i` with
similarities :math:`s_{ij} = z_i^\top z_j / \tau`, positives
:math:`P(i) = \{p \ne i : y_p = y_i\}` and the denominator set
:math:`A(i) = \{j \ne i\}` (all other kept pixels, positives included):

.. math::

    \ell_i = -\frac{1}{|P(i)|} \sum_{p \in P(i)}
        \log \frac{e^{s_{ip}}}{\sum_{j \in A(i)} e^{s_{ij}}}
      = L_i - \frac{1}{|P(i)|} \sum_{p \in P(i)} s_{ip},
    \qquad L_i = \log \sum_{j \in A(i)} e^{s_{ij}},

and :math:`\mathcal{L} = \frac{1}{|V|} \sum_{i \in V} \ell_i` over the anchors
:math:`V` (all kept pixels, or those selected by ``anchor_mask``) that have at
least one positive.  Unlike Zhao et al.'s per-positive denominator
(:mod:`contraseg.lightning_modules.losses.pixel_contrast`) the other positives *are* in the
denominator.  Hu et al. exclude background pixels as anchors (``anchor_mask``)
while they stay in every denominator.

**Deviations from the official code.**  The official ``SupConLoss`` expects
already normalised features; we normalise here.  It averages over all
non-background anchors, so an anchor without a positive gives ``0 / 0 = NaN``;
we skip such anchors.

**Memory.**  :func:`pixel_supcon_loss` never materialises the ``N x N``
similarity matrix: a custom autograd Function processes the anchors in blocks of
``block_size`` rows, saves only :math:`L_i` and recomputes each ``block x N``
similarity block in backward with the analytic gradient

.. math::

    \frac{\partial \ell_i}{\partial s_{ij}} =
        \frac{e^{s_{ij}}}{\sum_{k \in A(i)} e^{s_{ik}}}
        - \frac{[j \in P(i)]}{|P(i)|}, \qquad j \in A(i),

so peak memory grows with ``block_size * N``.  All similarity math runs in
float32, also under autocast; the loss is finite at temperature 0.01.
"""

from __future__ import annotations

import torch
from torch import Tensor

from contraseg.lightning_modules.losses.contrastive import check_temperature
from contraseg.lightning_modules.losses.pixel_blocked import (
    BlockRule,
    _prepare,
    blocked_pixel_loss,
    tiled_pixel_loss,
)

__all__ = ["pixel_supcon_loss", "pixel_supcon_loss_naive", "tiled_pixel_supcon_loss"]


def _self_and_positive_masks(yb: Tensor, y: Tensor, rows: Tensor) -> tuple[Tensor, Tensor]:
    """Self (diagonal) and positive masks of one anchor block (``rows`` = anchor columns)."""
    self_mask = torch.zeros(rows.shape[0], y.shape[0], dtype=torch.bool, device=y.device)
    self_mask[torch.arange(rows.shape[0], device=rows.device), rows] = True
    pos = (yb[:, None] == y[None, :]) & ~self_mask
    return self_mask, pos


def _supcon_forward(
    s: Tensor, rows: Tensor, y: Tensor, g: Tensor | None, n_pos: Tensor
) -> tuple[Tensor, Tensor]:
    """Summed SupCon loss of a block and its ``L_i`` (``g``: SupCon has no groups)."""
    self_mask, pos = _self_and_positive_masks(y[rows], y, rows)
    pos_sum = s.masked_fill(~pos, 0.0).sum(dim=1)
    lse = torch.logsumexp(s.masked_fill_(self_mask, float("-inf")), dim=1)
    return (lse - pos_sum / n_pos).sum(), lse


def _supcon_backward(
    s: Tensor, rows: Tensor, y: Tensor, g: Tensor | None, n_pos: Tensor, lse: Tensor
) -> Tensor:
    """``d loss / d (s tau)`` of a block, from its saved ``L_i``."""
    self_mask, pos = _self_and_positive_masks(y[rows], y, rows)
    # d l_i / d s_ij = softmax_{A(i)}(s_ij) - [j in P(i)] / |P(i)|
    prob = s.sub_(lse[:, None]).exp_().masked_fill_(self_mask, 0.0)
    target = pos.to(s.dtype).div_(n_pos[:, None])
    return prob.sub_(target)


# the SupCon denominator (Hu et al.), run by pixel_blocked.BlockedPixelLoss
SUPCON = BlockRule(_supcon_forward, _supcon_backward)


def pixel_supcon_loss(
    embeddings: Tensor,
    labels: Tensor,
    temperature: float = 0.1,
    ignore_index: int = 255,
    anchor_mask: Tensor | None = None,
    block_size: int = 4096,
) -> Tensor:
    """SupCon pixel loss of Hu et al. in ``block_size x N`` memory (module docstring).

    Args:
        embeddings: ``(N, D)`` pixel embeddings (normalised here, any float dtype).
        labels: ``(N,)`` integer class labels; ``ignore_index`` pixels are dropped.
        temperature: Softmax temperature ``tau > 0``.
        ignore_index: Label of pixels that are neither anchors nor candidates.
        anchor_mask: Optional bool ``(N,)``; only these pixels act as anchors while
            every non-ignored pixel stays in the denominators (and is a positive
            of anchors of its class).
        block_size: Anchors processed per block; peak memory is
            ``O(block_size * N)``.

    Returns:
        Scalar float32 loss; 0 (attached to the graph) when no anchor has a positive.

    Raises:
        ValueError: On a bad temperature, block size or shapes.
    """
    return blocked_pixel_loss(
        embeddings, labels, SUPCON, temperature, ignore_index, anchor_mask, None,
        False, block_size,
    )[0]  # fmt: skip


def tiled_pixel_supcon_loss(
    features: Tensor,
    labels: Tensor,
    block: int,
    temperature: float = 0.1,
    ignore_index: int = 255,
    anchor_mask: Tensor | None = None,
    block_size: int = 4096,
) -> Tensor:
    r"""Mean of :func:`pixel_supcon_loss` over tiles (Hu et al.'s ``BlockConLoss``).

    :math:`\mathcal{L} = \frac{1}{|T|} \sum_{t \in T} \mathcal{L}_t` over the tiles with a
    valid anchor; a tile holds one spatial window of every image
    (:func:`~contraseg.lightning_modules.losses.pixel_blocked.tiled_pixel_loss`).

    Args:
        features: ``(B, D, H, W)`` dense embeddings.
        labels: ``(B, H, W)`` labels.
        block: Tile side.
        temperature: Softmax temperature ``tau > 0``.
        ignore_index: Label of ignored pixels.
        anchor_mask: Optional bool ``(B, H, W)`` anchor selection.
        block_size: Anchor block size of the per-tile loss.

    Returns:
        Scalar float32 loss.
    """
    return tiled_pixel_loss(
        features, labels, block, SUPCON, temperature, ignore_index, anchor_mask,
        False, block_size,
    )  # fmt: skip


def pixel_supcon_loss_naive(
    embeddings: Tensor,
    labels: Tensor,
    temperature: float = 0.1,
    ignore_index: int = 255,
    anchor_mask: Tensor | None = None,
) -> Tensor:
    """Reference implementation of :func:`pixel_supcon_loss` with plain autograd.

    Builds the full ``N x N`` similarity and mask matrices (``O(N^2)`` memory);
    meant for tests and small ``N`` only.

    Args:
        embeddings: ``(N, D)`` pixel embeddings (normalised here).
        labels: ``(N,)`` integer class labels.
        temperature: Softmax temperature ``tau > 0``.
        ignore_index: Label of ignored pixels.
        anchor_mask: Optional bool ``(N,)`` anchor selection.

    Returns:
        Scalar float32 loss.

    Raises:
        ValueError: On a bad temperature or shapes.
    """
    tau = check_temperature(temperature)
    with torch.autocast(device_type=embeddings.device.type, enabled=False):
        z, y, _, anchor_index, n_pos = _prepare(
            embeddings, labels, ignore_index, anchor_mask, None, False
        )
        if anchor_index.numel() == 0:
            return z.sum() * 0.0
        s = z[anchor_index] @ z.T / tau
        self_mask, pos = _self_and_positive_masks(y[anchor_index], y, anchor_index)
        # every valid anchor has a positive, so each row has a finite entry
        lse = torch.logsumexp(s.masked_fill(self_mask, float("-inf")), dim=1)
        pos_mean = torch.where(pos, s, torch.zeros_like(s)).sum(dim=1) / n_pos
        return (lse - pos_mean).mean()
