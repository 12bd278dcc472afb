r"""GLCNet: global style and local matching contrastive losses.

Li et al., "Global style and local matching contrastive learning network for
remote sensing semantic segmentation", IEEE TGRS 2022 (official code:
GeoX-Lab/G-RSIM, ``T-SS-GLCNet``).  Two views :math:`x^1, x^2` of one image are
encoded by a segmentation network (DeepLabv3+):

* **Global style contrast.**  The encoder (ASPP) output :math:`F \in
  \mathbb{R}^{C \times H \times W}` is summarised by its channel-wise style
  statistics (as in style transfer, *not* a Gram matrix)

  .. math::

      \mu_c = \frac{1}{HW} \sum_{h,w} F_{chw}, \qquad
      \sigma^2_c = \frac{1}{HW - 1} \sum_{h,w} (F_{chw} - \mu_c)^2, \qquad
      s = [\mu; \sigma^2] \in \mathbb{R}^{2C},

  projected by an MLP :math:`g` and contrasted with NT-Xent:
  :math:`\mathcal{L}_G = \ell(g(s^1), g(s^2))`.

* **Local matching contrast.**  Up to ``P`` (4) non-overlapping
  :math:`p \times p` (48 x 48) patches are centred on source pixels visible in
  both views; the decoder output (upsampled to the input size) is average-pooled
  over each patch window in each view, :math:`r^v_k = \frac{1}{p^2}
  \sum_{(y, x) \in \Omega^v_k} D^v_{:, y, x}`, projected by an MLP :math:`h` and
  contrasted over all :math:`K \le BP` matched patches of the batch:
  :math:`\mathcal{L}_L = \ell(h(r^1), h(r^2))`.

* **Total.**  :math:`\mathcal{L} = \lambda \mathcal{L}_G + (1 - \lambda)
  \mathcal{L}_L` with :math:`\lambda = 0.5`.

Here :math:`\ell` is the *decoupled* NT-Xent (positive pair removed from the
denominator), with :math:`\tau = 0.5` in the paper, for anchor :math:`i` with
positive :math:`j`:

.. math::

    \ell_i = -\log \frac{\exp(z_i^\top z_j / \tau)}
        {\sum_{a \ne i, a \ne j} \exp(z_i^\top z_a / \tau)},

averaged over the :math:`2N` anchors (see
:func:`contraseg.lightning_modules.losses.contrastive.nt_xent_loss`).

Patch correspondences come from *pixel-index maps*
(:func:`contraseg.datamodules.transforms.pixel_index_map`): every view carries, per pixel,
the flat index ``y * W + x`` of the source pixel it was resampled from, so two
pixels of different views show the same scene point iff their ids are equal.
"""

from __future__ import annotations

import torch
from torch import Tensor
from torchvision.ops import roi_align

from contraseg.lightning_modules.losses.contrastive import check_temperature, nt_xent_loss

__all__ = [
    "glcnet_loss",
    "local_matching_embeddings",
    "patch_boxes",
    "sample_corresponding_patches",
    "style_features",
]


def style_features(x: Tensor, eps: float = 1e-5, unbiased: bool = True) -> Tensor:
    r"""Global style vector: channel-wise mean and variance, concatenated.

    .. math::

        s(F) = [\mu_1, \dots, \mu_C, \sigma^2_1 + \epsilon, \dots, \sigma^2_C + \epsilon],
        \quad \mu_c = \frac{1}{HW}\sum_{h,w} F_{chw},
        \quad \sigma^2_c = \frac{1}{HW - \delta}\sum_{h,w} (F_{chw} - \mu_c)^2,

    with :math:`\delta = 1` (``unbiased``, ``torch.var``'s default as in the
    official code) or 0.  With a single pixel the variance is the biased one (0).
    The statistics are computed in float32 (autocast disabled) so that the
    variance of half-precision activations cannot overflow.

    Args:
        x: ``(B, C, H, W)`` feature map (GLCNet: the 256-channel ASPP output).
        eps: Constant added to the variance (numerical floor).
        unbiased: Bessel-corrected variance (``HW - 1`` denominator).

    Returns:
        ``(B, 2C)`` float32 tensor ``[mean, variance + eps]``.

    Raises:
        ValueError: If ``x`` is not 4-D.
    """
    if x.ndim != 4:
        raise ValueError(f"expected a (B, C, H, W) feature map, got shape {tuple(x.shape)}")
    with torch.autocast(device_type=x.device.type, enabled=False):
        flat = x.float().flatten(2)
        correction = 1 if unbiased and flat.shape[-1] > 1 else 0
        var, mean = torch.var_mean(flat, dim=2, correction=correction)
        return torch.cat([mean, var + eps], dim=1)


def _interior(height: int, width: int, patch_size: int, device: torch.device) -> Tensor:
    """Flat ``(H * W,)`` mask of centres whose patch window lies inside the view."""
    half = patch_size // 2
    ys = torch.arange(height, device=device)
    xs = torch.arange(width, device=device)
    ok_y = (ys >= half) & (ys - half + patch_size <= height)
    ok_x = (xs >= half) & (xs - half + patch_size <= width)
    return (ok_y[:, None] & ok_x[None, :]).flatten()


def _greedy_non_overlapping(
    candidates: Tensor,
    width: int,
    num_patches: int,
    patch_size: int,
    generator: torch.Generator | None,
) -> tuple[Tensor, Tensor]:
    """One greedy pass: pick random candidates, then drop those a window would overlap.

    Args:
        candidates: ``(B, N)`` bool mask of admissible centres (flat positions).
        width: Width of the view (to turn flat positions into ``(y, x)``).
        num_patches: Patches wanted per row.
        patch_size: Window size; centres must be ``>= patch_size`` apart (Chebyshev).
        generator: Random generator (on the device of ``candidates``).

    Returns:
        ``(B, num_patches)`` chosen flat positions (0 where none) and validity.
    """
    b, n = candidates.shape
    device = candidates.device
    cand = candidates.clone()
    flat = torch.arange(n, device=device)
    ys, xs = flat // width, flat % width
    chosen = torch.zeros(b, num_patches, dtype=torch.long, device=device)
    valid = torch.zeros(b, num_patches, dtype=torch.bool, device=device)
    for p in range(num_patches):
        # A uniform choice among the remaining candidates: argmax of iid uniform scores.
        scores = torch.rand(b, n, generator=generator, device=device)
        pick = scores.masked_fill(~cand, -1.0).argmax(dim=1)
        ok = cand.any(dim=1)
        chosen[:, p] = torch.where(ok, pick, torch.zeros_like(pick))
        valid[:, p] = ok
        py, px = (pick // width)[:, None], (pick % width)[:, None]
        near = ((ys[None] - py).abs() < patch_size) & ((xs[None] - px).abs() < patch_size)
        cand &= ~(near & ok[:, None])
    return chosen, valid


def sample_corresponding_patches(
    index_map_1: Tensor,
    index_map_2: Tensor,
    num_patches: int = 4,
    patch_size: int = 48,
    generator: torch.Generator | None = None,
    max_tries: int = 50,
) -> tuple[Tensor, Tensor, Tensor]:
    """Sample GLCNet's matched patch centres from two views' pixel-index maps.

    As in the official ``get_index``: a centre is a source-pixel id present in
    *both* views, chosen uniformly at random; its window (rows
    ``[y - p//2, y - p//2 + p)``, same for columns) must lie inside *both* views;
    such centres are **rejected**, never clamped, so the windows cover the same
    scene point in both views.  Unlike the official code, which only removes the
    ids inside a chosen window from the candidate list (so windows may partly
    overlap), later centres in view 1 are kept at Chebyshev distance
    ``>= patch_size`` from earlier ones, so the view-1 windows are disjoint.  When
    an id occurs several times in view 2 (up-sampling crops), the occurrence with
    the smallest flat position among those whose window fits is used; in view 1
    every occurrence is a candidate.

    Patches are picked greedily (``num_patches`` passes over the ``B x H x W``
    candidate mask, vectorised over the batch and the pixels).  A greedy pass may
    fall short although more disjoint windows would fit; the pass is then
    repeated, up to ``max_tries`` passes in all, for the short images only, and
    the pass with most patches is kept.  Patches still missing are flagged
    invalid (valid patches come first); disjoint views give no valid patch.

    Correspondences are found with a sort and binary search of the view-2 ids
    (``O(B H W log)`` time and memory, independent of the source size).  Negative
    ids are ignored, so fill padded regions (e.g. of non-square rotations) with
    ``-1`` (``fill={tv_tensors.Mask: -1}``).

    Args:
        index_map_1: ``(B, H1, W1)`` integer source ids of view 1.
        index_map_2: ``(B, H2, W2)`` integer source ids of view 2.
        num_patches: Patches per image (GLCNet: 4).
        patch_size: Window side in pixels of the views (GLCNet: 48 at 224).
        generator: Optional random generator; it must live on the maps' device.
        max_tries: Maximum greedy passes per image (>= 1).

    Returns:
        ``(centres_1, centres_2, valid)``: ``(B, num_patches, 2)`` long ``(y, x)``
        centres in view 1 and view 2 (0 where invalid) and the ``(B, num_patches)``
        bool validity mask.

    Raises:
        ValueError: On bad shapes or non-positive sizes.
    """
    if index_map_1.ndim != 3 or index_map_2.ndim != 3:
        raise ValueError(
            f"index maps must be (B, H, W), got {tuple(index_map_1.shape)} and "
            f"{tuple(index_map_2.shape)}"
        )
    if index_map_1.shape[0] != index_map_2.shape[0]:
        raise ValueError("index maps must have the same batch size")
    if num_patches < 1 or patch_size < 1 or max_tries < 1:
        raise ValueError(
            f"num_patches, patch_size and max_tries must be >= 1, got {num_patches}, "
            f"{patch_size}, {max_tries}"
        )
    device = index_map_1.device
    b, h1, w1 = index_map_1.shape
    _, h2, w2 = index_map_2.shape
    ids1 = index_map_1.reshape(b, -1).long()
    ids2 = index_map_2.to(device).reshape(b, -1).long()
    centres_1 = torch.zeros(b, num_patches, 2, dtype=torch.long, device=device)
    centres_2 = torch.zeros_like(centres_1)
    valid = torch.zeros(b, num_patches, dtype=torch.bool, device=device)
    if b == 0 or ids1.numel() == 0 or ids2.numel() == 0:
        return centres_1, centres_2, valid

    # Batch-offset keys make ids of different images distinct: key = b * S + id.
    span = int(torch.maximum(ids1.max(), ids2.max()).clamp(min=0).item()) + 1
    offset = torch.arange(b, device=device)[:, None] * span
    ok2 = _interior(h2, w2, patch_size, device)[None] & (ids2 >= 0)
    keys2 = (ids2 + offset)[ok2]
    pos2 = torch.arange(h2 * w2, device=device).expand(b, -1)[ok2]
    if keys2.numel() == 0:
        return centres_1, centres_2, valid
    keys2, order = torch.sort(keys2, stable=True)  # stable: smallest position first
    pos2 = pos2[order]
    keys1 = ids1 + offset
    j = torch.searchsorted(keys2, keys1).clamp(max=keys2.numel() - 1)
    match = (keys2[j] == keys1) & (ids1 >= 0)
    candidates = match & _interior(h1, w1, patch_size, device)[None]
    partner = pos2[j]  # (B, H1 * W1): flat position in view 2 of each view-1 pixel's id

    chosen = torch.zeros(b, num_patches, dtype=torch.long, device=device)
    best = torch.full((b,), -1, dtype=torch.long, device=device)
    todo = torch.arange(b, device=device)
    for _ in range(max_tries):
        picks, ok = _greedy_non_overlapping(
            candidates[todo], w1, num_patches, patch_size, generator
        )
        count = ok.sum(dim=1)
        better = count > best[todo]
        upd = todo[better]
        chosen[upd], valid[upd], best[upd] = picks[better], ok[better], count[better]
        # Retry only images that are short and could still have candidates.
        short = (best[todo] < num_patches) & candidates[todo].any(dim=1)
        todo = todo[short]
        if todo.numel() == 0:
            break

    flat2 = torch.gather(partner, 1, chosen)
    centres_1 = torch.stack([chosen // w1, chosen % w1], dim=-1)
    centres_2 = torch.stack([flat2 // w2, flat2 % w2], dim=-1)
    centres_1 = centres_1 * valid[..., None]
    centres_2 = centres_2 * valid[..., None]
    return centres_1, centres_2, valid


def patch_boxes(
    centres: Tensor,
    patch_size: int,
    scale: float | tuple[float, float] = 1.0,
    valid: Tensor | None = None,
) -> Tensor:
    """RoI boxes of the patch windows, in ``torchvision.ops.roi_align`` format.

    The window of centre ``(y, x)`` covers pixels ``[y - p//2, y - p//2 + p)``
    (same for ``x``), i.e. the continuous box with corners ``(x - p//2, y - p//2)``
    and ``(x - p//2 + p, y - p//2 + p)`` in pixel-edge coordinates; use it with
    ``aligned=True`` (pixel ``i`` spans ``[i, i + 1)``).  Coordinates are
    multiplied by ``scale`` for a feature map of lower resolution than the image.

    Args:
        centres: ``(B, P, 2)`` ``(y, x)`` patch centres in image pixels.
        patch_size: Window side in image pixels.
        scale: Feature-map / image size ratio, one float or ``(scale_y, scale_x)``.
        valid: Optional ``(B, P)`` bool mask; only these patches get a box.

    Returns:
        ``(K, 5)`` float32 boxes ``(batch_idx, x1, y1, x2, y2)``, ordered by
        image then patch (``K = B * P`` without ``valid``).

    Raises:
        ValueError: If ``centres`` is not ``(B, P, 2)``.
    """
    if centres.ndim != 3 or centres.shape[-1] != 2:
        raise ValueError(f"centres must be (B, P, 2), got {tuple(centres.shape)}")
    sy, sx = (scale, scale) if isinstance(scale, int | float) else scale
    b, p, _ = centres.shape
    batch_idx = torch.arange(b, device=centres.device)[:, None].expand(b, p)
    start = centres.float() - float(patch_size // 2)
    y1, x1 = start[..., 0] * sy, start[..., 1] * sx
    y2, x2 = (start[..., 0] + patch_size) * sy, (start[..., 1] + patch_size) * sx
    boxes = torch.stack([batch_idx.float(), x1, y1, x2, y2], dim=-1)
    if valid is None:
        return boxes.reshape(-1, 5)
    return boxes[valid.to(torch.bool)]


def local_matching_embeddings(
    features_1: Tensor,
    features_2: Tensor,
    centres_1: Tensor,
    centres_2: Tensor,
    valid: Tensor,
    patch_size: int,
    image_size: tuple[int, int],
    output_size: int = 1,
) -> tuple[Tensor, Tensor]:
    r"""Average-pooled decoder features of the matched patches of both views.

    :math:`r^v_k = \operatorname{mean}\,\operatorname{RoIAlign}(D^v, \Omega^v_k)`
    with ``spatial_scale = h / H`` (and ``w / W``), ``aligned=True``.  With
    ``output_size=1`` and adaptive sampling this is the mean of the features over
    the window when the window maps to whole feature pixels (e.g. the decoder
    output upsampled to the input size, as in GLCNet), a bilinear approximation
    otherwise.

    Args:
        features_1: ``(B, C, h, w)`` dense features of view 1.
        features_2: ``(B, C, h2, w2)`` dense features of view 2.
        centres_1: ``(B, P, 2)`` ``(y, x)`` centres in view 1 (image pixels).
        centres_2: ``(B, P, 2)`` matching centres in view 2.
        valid: ``(B, P)`` bool mask of matched patches.
        patch_size: Window side in image pixels.
        image_size: ``(H, W)`` of the views the centres refer to.
        output_size: RoIAlign output grid side before averaging.

    Returns:
        ``(K, C)`` embeddings of view 1 and view 2, row ``k`` of both being the
        same patch (``K`` = number of valid patches, image-major).
    """
    img_h, img_w = image_size

    def pool(features: Tensor, centres: Tensor) -> Tensor:
        scale = (features.shape[-2] / img_h, features.shape[-1] / img_w)
        boxes = patch_boxes(centres, patch_size, scale, valid).to(features.device)
        pooled = roi_align(
            features,
            boxes.to(features.dtype),
            output_size=output_size,
            spatial_scale=1.0,
            sampling_ratio=-1,
            aligned=True,
        )
        return pooled.mean(dim=(2, 3))

    return pool(features_1, centres_1), pool(features_2, centres_2)


def glcnet_loss(
    global_1: Tensor | None,
    global_2: Tensor | None,
    local_1: Tensor | None,
    local_2: Tensor | None,
    temperature: float = 0.5,
    weight: float = 0.5,
    use_global: bool = True,
    use_local: bool = True,
    gather_distributed: bool = False,
) -> tuple[Tensor, dict[str, Tensor]]:
    r"""GLCNet objective :math:`\lambda \mathcal{L}_G + (1 - \lambda) \mathcal{L}_L`.

    Each part is the decoupled NT-Xent of the paired projections
    (``nt_xent_loss(torch.cat([a, b]), decoupled=True)``).  With one part switched
    off (ablations ``noGlobal`` / ``noLocal``) the loss is the other part alone,
    unweighted, as in the official code.  A batch without any matched patch gives
    a local loss of 0 (still attached to the graph).

    Args:
        global_1: ``(B, d)`` projected global style embeddings of view 1.
        global_2: ``(B, d)`` same for view 2.
        local_1: ``(K, d')`` projected patch embeddings of view 1.
        local_2: ``(K, d')`` matching patch embeddings of view 2.
        temperature: NT-Xent temperature (GLCNet: 0.5).
        weight: :math:`\lambda \in [0, 1]`, weight of the global part.
        use_global: Include the global style contrast.
        use_local: Include the local matching contrast.
        gather_distributed: Contrast the *global* embeddings against those of all
            DDP ranks.  The local part always stays per rank: its number of
            matched patches ``K`` differs between ranks, which an all-gather of
            equal-sized tensors cannot take.

    Returns:
        The scalar loss and a dict of the detached parts (``loss_global``,
        ``loss_local`` for the parts switched on).

    Raises:
        ValueError: If both parts are off, the weight is outside ``[0, 1]``, an
            enabled part's embeddings are missing, or the pairs differ in shape.
    """
    if not (use_global or use_local):
        raise ValueError("glcnet_loss needs use_global or use_local (both are off)")
    if not 0.0 <= weight <= 1.0:
        raise ValueError(f"weight must be in [0, 1], got {weight}")
    check_temperature(temperature)

    def part(a: Tensor | None, b: Tensor | None, name: str, gather: bool) -> Tensor:
        if a is None or b is None:
            raise ValueError(f"{name} embeddings are required when use_{name} is on")
        if a.shape != b.shape or a.ndim != 2:
            raise ValueError(
                f"{name} embeddings must be two (N, d) tensors of the same shape, got "
                f"{tuple(a.shape)} and {tuple(b.shape)}"
            )
        if a.shape[0] == 0 and not gather:
            return (a.sum() + b.sum()).float() * 0.0
        return nt_xent_loss(
            torch.cat([a, b]), temperature=temperature, decoupled=True, gather_distributed=gather
        )

    parts: dict[str, Tensor] = {}
    if use_global:
        parts["loss_global"] = part(global_1, global_2, "global", gather_distributed)
    if use_local:
        parts["loss_local"] = part(local_1, local_2, "local", False)
    if use_global and use_local:
        loss = weight * parts["loss_global"] + (1.0 - weight) * parts["loss_local"]
    else:
        loss = next(iter(parts.values()))
    return loss, {k: v.detach() for k, v in parts.items()}
