r"""The memory-bounded driver shared by the pixel-contrastive losses (Zhao et al., Hu et al.).

Both pixel losses contrast the L2-normalised embeddings of the kept (non-ignored) pixels of
dense maps; they differ only in the denominator, i.e. in the per-block math of a
:class:`BlockRule`: the loss of one ``block x N`` similarity block with a per-anchor
statistic (forward), and the analytic gradient with respect to that block, recomputed from
the statistic (backward).  This module owns everything around it:

* :class:`BlockedPixelLoss`, the one autograd Function: the loop over anchor blocks, the
  similarity block ``s = z_rows z^T / tau`` computed in forward and recomputed in backward
  (only the per-anchor statistic is saved), and the gradient
  ``dz = index_add(rows, dS z) + dS^T z_rows`` from the rule's ``dS``;
* :func:`blocked_pixel_loss`: validation, removal of ``ignore_index`` pixels, float32
  normalisation outside autocast, selection of the anchors that have a positive, and the
  call of the Function with a rule;
* Hu et al.'s two ways of bounding ``N`` on dense maps: :func:`stride_sample` (every
  ``stride``-th pixel) and :func:`block_partition` + :func:`tiled_pixel_loss` (the mean
  of the per-tile losses, :math:`\mathcal{L} = \frac{1}{|T|} \sum_{t \in T} \mathcal{L}_t`
  over the tiles with a valid anchor).

The per-positive rule lives in :mod:`contraseg.lightning_modules.losses.pixel_contrast` (Zhao et
al.), the SupCon one in :mod:`contraseg.lightning_modules.losses.pixel_supcon` (Hu et al.); both
import this module, which imports neither.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor

from contraseg.lightning_modules.losses.contrastive import check_temperature

__all__ = [
    "BlockRule",
    "BlockedPixelLoss",
    "block_partition",
    "blocked_pixel_loss",
    "check_dense",
    "mean_or_zero",
    "stride_sample",
    "tiled_pixel_loss",
]


class BlockRule(NamedTuple):
    """The per-block math of one pixel loss (what distinguishes the pixel losses).

    Both callables see one anchor block: ``s`` the ``(b, N)`` similarities
    ``z_rows z^T / tau`` (float32; the callable may overwrite it), ``rows`` the anchors'
    column indices in ``s``, ``y`` and ``g`` the labels and groups of all ``N`` kept pixels
    (``g`` may be ``None``), ``n_pos`` the anchors' positive counts.

    Attributes:
        forward: ``(s, rows, y, g, n_pos) -> (loss_sum, stat)``: the summed loss of the
            block's anchors and a ``(b,)`` per-anchor statistic kept for backward (a
            log-sum-exp of the denominator).
        backward: ``(s, rows, y, g, n_pos, stat) -> dS``: the gradient of the block's
            summed loss with respect to ``s * tau`` (the Function scales it by the
            incoming gradient, ``1 / tau`` and ``1 / count``).
    """

    forward: Callable[[Tensor, Tensor, Tensor, Tensor | None, Tensor], tuple[Tensor, Tensor]]
    backward: Callable[[Tensor, Tensor, Tensor, Tensor | None, Tensor, Tensor], Tensor]


class BlockedPixelLoss(torch.autograd.Function):
    """Blocked forward / recomputing backward of a pixel loss given by a :class:`BlockRule`.

    The mean over the ``count`` anchors of the rule's per-anchor loss; peak memory
    ``O(block_size * N)`` in both passes.
    """

    @staticmethod
    def forward(  # noqa: D102
        ctx: torch.autograd.function.FunctionCtx,
        z: Tensor,
        y: Tensor,
        g: Tensor | None,
        anchor_index: Tensor,
        n_pos: Tensor,
        tau: float,
        block_size: int,
        rule: BlockRule,
    ) -> Tensor:
        total = z.new_zeros(())
        stat = z.new_empty(anchor_index.shape[0])
        for start in range(0, anchor_index.shape[0], block_size):
            rows = anchor_index[start : start + block_size]
            stop = start + rows.shape[0]
            s = (z[rows] / tau) @ z.T
            block_sum, stat[start:stop] = rule.forward(s, rows, y, g, n_pos[start:stop])
            total += block_sum
        count = max(anchor_index.shape[0], 1)
        ctx.save_for_backward(z, y, g, anchor_index, n_pos, stat)
        ctx.tau, ctx.block_size, ctx.count, ctx.rule = tau, block_size, count, rule
        return total / count

    @staticmethod
    def backward(  # noqa: D102
        ctx: torch.autograd.function.FunctionCtx, grad: Tensor
    ) -> tuple[Tensor | None, ...]:
        z, y, g, anchor_index, n_pos, stat = ctx.saved_tensors
        scale = grad / (ctx.count * ctx.tau)
        grad_z = torch.zeros_like(z)
        for start in range(0, anchor_index.shape[0], ctx.block_size):
            rows = anchor_index[start : start + ctx.block_size]
            stop = start + rows.shape[0]
            a = z[rows]
            s = (a / ctx.tau) @ z.T
            dS = ctx.rule.backward(s, rows, y, g, n_pos[start:stop], stat[start:stop])  # noqa: N806
            dS.mul_(scale)
            grad_z.index_add_(0, rows, dS @ z)
            grad_z.addmm_(dS.T, a)
        return grad_z, None, None, None, None, None, None, None


def _prepare(
    embeddings: Tensor,
    labels: Tensor,
    ignore_index: int,
    anchor_mask: Tensor | None,
    groups: Tensor | None,
    negatives_from_own_group: bool,
) -> tuple[Tensor, Tensor, Tensor | None, Tensor, Tensor]:
    """Validate, drop ignored pixels, normalise and select the valid anchors.

    Returns:
        ``(z, labels, groups, anchor_index, n_pos)``: float32 normalised kept
        embeddings, their labels and groups, the indices (into the kept pixels)
        of anchors with at least one positive and their positive counts.
    """
    if embeddings.ndim != 2:
        raise ValueError(f"embeddings must be (N, D), got {tuple(embeddings.shape)}")
    n = embeddings.shape[0]
    for name, t in (("labels", labels), ("anchor_mask", anchor_mask), ("groups", groups)):
        if t is not None and t.shape != (n,):
            raise ValueError(f"{name} must have shape ({n},), got {tuple(t.shape)}")
    if negatives_from_own_group and groups is None:
        raise ValueError("negatives_from_own_group=True needs groups")
    keep = labels != ignore_index
    z = F.normalize(embeddings[keep].float(), dim=1)
    y = labels[keep]
    g = groups[keep] if (groups is not None and negatives_from_own_group) else None
    _, inverse, counts = torch.unique(y, return_inverse=True, return_counts=True)
    n_pos = counts[inverse] - 1  # same label, anchor itself excluded
    is_anchor = n_pos > 0
    if anchor_mask is not None:
        is_anchor &= anchor_mask[keep].bool()
    anchor_index = is_anchor.nonzero().squeeze(1)
    return z, y, g, anchor_index, n_pos[anchor_index]


def blocked_pixel_loss(
    embeddings: Tensor,
    labels: Tensor,
    rule: BlockRule,
    temperature: float,
    ignore_index: int,
    anchor_mask: Tensor | None,
    groups: Tensor | None,
    negatives_from_own_group: bool,
    block_size: int,
) -> tuple[Tensor, int]:
    """A blocked pixel loss and its number of valid anchors.

    Args:
        embeddings: ``(N, D)`` pixel embeddings (normalised here, any float dtype).
        labels: ``(N,)`` integer labels; ``ignore_index`` pixels are dropped.
        rule: The loss's per-block math (:class:`BlockRule`), applied by
            :class:`BlockedPixelLoss` to the kept, normalised pixels.
        temperature: Softmax temperature ``tau > 0``.
        ignore_index: Label of pixels that are neither anchors nor candidates.
        anchor_mask: Optional bool ``(N,)`` anchor selection.
        groups: Optional ``(N,)`` image index per pixel.
        negatives_from_own_group: Pass ``groups`` on (negatives from the own group).
        block_size: Anchors per block.

    Returns:
        ``(loss, count)``: the scalar float32 loss (a graph-attached 0 without a valid
        anchor) and the number of valid anchors.

    Raises:
        ValueError: On a bad temperature, block size or shapes.
    """
    tau = check_temperature(temperature)
    if block_size < 1:
        raise ValueError(f"block_size must be >= 1, got {block_size}")
    with torch.autocast(device_type=embeddings.device.type, enabled=False):
        z, y, g, anchor_index, n_pos = _prepare(
            embeddings, labels, ignore_index, anchor_mask, groups, negatives_from_own_group
        )
        count = int(anchor_index.numel())
        if count == 0:
            return z.sum() * 0.0, 0
        loss = BlockedPixelLoss.apply(z, y, g, anchor_index, n_pos.to(z.dtype), tau,
                                      int(block_size), rule)  # fmt: skip
        return loss, count


def stride_sample(features: Tensor, labels: Tensor, stride: int) -> tuple[Tensor, Tensor, Tensor]:
    """Keep every ``stride``-th pixel in both directions (Hu et al.'s "stride" mode).

    Pixel ``(b, h, w)`` with ``h % stride == 0`` and ``w % stride == 0`` is kept, so
    ``N = B * ceil(H / stride) * ceil(W / stride)`` and the loss costs
    ``stride^-4`` of the full-resolution one.

    Args:
        features: ``(B, D, H, W)`` dense embeddings.
        labels: ``(B, H, W)`` labels at the same resolution.
        stride: Sampling step ``>= 1``.

    Returns:
        ``(embeddings (M, D), labels (M,), groups (M,))`` in ``(b, h, w)`` row-major
        order, where ``groups`` is the image index ``b``.

    Raises:
        ValueError: On mismatched shapes or ``stride < 1``.
    """
    check_dense(features, labels)
    if stride < 1:
        raise ValueError(f"stride must be >= 1, got {stride}")
    return _flatten(features[:, :, ::stride, ::stride], labels[:, ::stride, ::stride])


def block_partition(
    features: Tensor, labels: Tensor, block: int
) -> list[tuple[Tensor, Tensor, Tensor]]:
    """Split dense maps into ``block x block`` spatial tiles (Hu et al.'s "block" mode).

    Each tile holds the pixels of one spatial window in *all* ``B`` images; the
    loss is computed independently per tile and the tile losses are averaged
    (:func:`tiled_pixel_loss`), so the cost is
    ``(H W / block^2) * (B block^2)^2`` instead of ``(B H W)^2`` and pixels only
    meet candidates from the same window.  Tiles at the right / bottom border are
    smaller when ``block`` does not divide ``H`` or ``W``.

    Args:
        features: ``(B, D, H, W)`` dense embeddings.
        labels: ``(B, H, W)`` labels.
        block: Tile side ``>= 1``.

    Returns:
        Row-major list of tiles ``(embeddings (M, D), labels (M,), groups (M,))``
        with pixels in ``(b, h, w)`` order and ``groups`` the image index.

    Raises:
        ValueError: On mismatched shapes or ``block < 1``.
    """
    check_dense(features, labels)
    if block < 1:
        raise ValueError(f"block must be >= 1, got {block}")
    height, width = labels.shape[1:]
    return [
        _flatten(
            features[:, :, i : i + block, j : j + block], labels[:, i : i + block, j : j + block]
        )
        for i in range(0, height, block)
        for j in range(0, width, block)
    ]


def tiled_pixel_loss(
    features: Tensor,
    labels: Tensor,
    block: int,
    rule: BlockRule,
    temperature: float = 0.07,
    ignore_index: int = 255,
    anchor_mask: Tensor | None = None,
    negatives_from_own_group: bool = False,
    block_size: int = 4096,
) -> Tensor:
    r"""Mean of a pixel-contrastive loss over the tiles of :func:`block_partition`.

    :math:`\mathcal{L} = \frac{1}{|T|} \sum_{t \in T} \mathcal{L}_t` over the tiles
    :math:`T` that have at least one valid anchor (a tile without one would add a
    meaningless 0 to the mean).

    Args:
        features: ``(B, D, H, W)`` dense embeddings.
        labels: ``(B, H, W)`` labels.
        block: Tile side.
        rule: The per-tile loss's per-block math (see :func:`blocked_pixel_loss`).
        temperature: Softmax temperature ``tau > 0``.
        ignore_index: Label of ignored pixels.
        anchor_mask: Optional bool ``(B, H, W)`` anchor selection.
        negatives_from_own_group: Negatives only from the anchor's own image.
        block_size: Anchor block size of the per-tile loss.

    Returns:
        Scalar float32 loss.

    Raises:
        ValueError: The errors of the per-tile loss.
    """
    tiles = block_partition(features, labels, block)
    masks: list[Tensor | None] = [None] * len(tiles)
    if anchor_mask is not None:
        height, width = labels.shape[1:]
        masks = [
            anchor_mask[:, i : i + block, j : j + block].reshape(-1)
            for i in range(0, height, block)
            for j in range(0, width, block)
        ]
    losses = []
    for (emb, lab, grp), mask in zip(tiles, masks):
        loss, count = blocked_pixel_loss(
            emb, lab, rule, temperature, ignore_index, mask, grp, negatives_from_own_group,
            block_size,
        )  # fmt: skip
        if count:
            losses.append(loss)
    return mean_or_zero(losses, features)


def mean_or_zero(losses: list[Tensor], *features: Tensor) -> Tensor:
    """Mean of the unit losses, or a graph-attached float32 zero when there are none."""
    if losses:
        return torch.stack(losses).mean()
    zero = features[0].float().sum() * 0.0
    for f in features[1:]:
        zero = zero + f.float().sum() * 0.0
    return zero


def check_dense(features: Tensor, labels: Tensor) -> None:
    """Raise unless ``features`` is ``(B, D, H, W)`` and ``labels`` ``(B, H, W)``."""
    if features.ndim != 4 or labels.shape != (features.shape[0], *features.shape[2:]):
        raise ValueError(
            f"expected features (B, D, H, W) and labels (B, H, W), got "
            f"{tuple(features.shape)} and {tuple(labels.shape)}"
        )


def _flatten(features: Tensor, labels: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    b, d, h, w = features.shape
    emb = features.permute(0, 2, 3, 1).reshape(b * h * w, d)
    groups = torch.arange(b, device=labels.device).repeat_interleave(h * w)
    return emb, labels.reshape(-1), groups
