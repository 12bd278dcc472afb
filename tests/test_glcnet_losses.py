"""GLCNet losses: style statistics, patch correspondences, RoI pooling, loss switches."""

from __future__ import annotations

import pytest
import torch
from torchvision import tv_tensors
from torchvision.transforms import v2

from contraseg.datamodules.transforms import MultiViewTransform, ViewAugmentation, pixel_index_map
from contraseg.lightning_modules.losses.contrastive import nt_xent_loss
from contraseg.lightning_modules.losses.glcnet import (
    glcnet_loss,
    local_matching_embeddings,
    patch_boxes,
    sample_corresponding_patches,
    style_features,
)

# ----------------------------------------------------------------------------- style


def test_style_features_closed_form():
    x = torch.randn(3, 5, 7, 6) * 2 + 1
    out = style_features(x, eps=0.0)
    assert out.shape == (3, 10)
    flat = x.reshape(3, 5, -1)
    n = flat.shape[-1]
    mean = flat.sum(-1) / n
    var = ((flat - mean[..., None]) ** 2).sum(-1) / (n - 1)
    torch.testing.assert_close(out[:, :5], mean)
    torch.testing.assert_close(out[:, 5:], var)
    biased = style_features(x, eps=1e-3, unbiased=False)
    torch.testing.assert_close(biased[:, 5:], var * (n - 1) / n + 1e-3)
    # Not a Gram matrix: a constant map has zero variance whatever its value.
    const = torch.full((2, 4, 3, 3), 7.0)
    torch.testing.assert_close(style_features(const, eps=0.0)[:, 4:], torch.zeros(2, 4))
    # One pixel: no NaN.
    assert torch.isfinite(style_features(torch.randn(2, 3, 1, 1))).all()
    with pytest.raises(ValueError):
        style_features(torch.randn(2, 3, 4))


# ------------------------------------------------------------------ correspondences


def _check_patches(c1, c2, valid, maps1, maps2, patch_size, values1=None, values2=None):
    half = patch_size // 2
    for b in range(c1.shape[0]):
        h1, w1 = maps1.shape[-2:]
        h2, w2 = maps2.shape[-2:]
        pts = c1[b][valid[b]]
        # Valid patches come first.
        n = int(valid[b].sum())
        assert valid[b][:n].all() and not valid[b][n:].any()
        for (y1, x1), (y2, x2) in zip(c1[b][valid[b]].tolist(), c2[b][valid[b]].tolist()):
            assert maps1[b, y1, x1] == maps2[b, y2, x2]  # same source pixel
            assert maps1[b, y1, x1] >= 0
            if values1 is not None:
                assert values1[b, y1, x1] == values2[b, y2, x2]
            for y, x, h, w in ((y1, x1, h1, w1), (y2, x2, h2, w2)):
                assert y - half >= 0 and y - half + patch_size <= h
                assert x - half >= 0 and x - half + patch_size <= w
        # View-1 windows pairwise disjoint: Chebyshev distance of centres >= patch size.
        if len(pts) > 1:
            d = (pts[:, None, :] - pts[None, :, :]).abs().amax(-1)
            d = d + torch.eye(len(pts), dtype=d.dtype) * 10**6
            assert (d >= patch_size).all()


def _rand_views(seed: int, src: int = 96, size: int = 64):
    """Two views of a source whose pixel value is its flat index (nearest resampling)."""
    torch.manual_seed(seed)
    image = tv_tensors.Image(torch.arange(src * src, dtype=torch.float32).view(1, src, src))
    index = pixel_index_map(src, src)
    crop = v2.RandomResizedCrop(
        size, scale=(0.4, 1.0), interpolation=v2.InterpolationMode.NEAREST, antialias=False
    )
    geo2 = v2.Compose([v2.RandomHorizontalFlip(0.5), v2.RandomVerticalFlip(0.5)])
    img1, idx1 = crop(image, index)
    img2, idx2 = geo2(*crop(image, index))
    k = int(torch.randint(0, 4, ()).item())
    if k:
        img2 = v2.functional.rotate(img2, 90.0 * k)
        idx2 = v2.functional.rotate(idx2, 90.0 * k)
    return img1[0], idx1, img2[0], idx2


def test_correspondence_crops_flips_rot90_many_seeds():
    maps1, maps2, vals1, vals2 = [], [], [], []
    for seed in range(40):
        v1, i1, v2_, i2 = _rand_views(seed)
        # Sanity of the construction: nearest resampling keeps value == source id.
        assert torch.equal(v1.long(), i1) and torch.equal(v2_.long(), i2)
        maps1.append(i1)
        maps2.append(i2)
        vals1.append(v1)
        vals2.append(v2_)
    m1, m2 = torch.stack(maps1), torch.stack(maps2)
    g = torch.Generator().manual_seed(0)
    c1, c2, valid = sample_corresponding_patches(m1, m2, num_patches=4, patch_size=16, generator=g)
    assert c1.shape == c2.shape == (40, 4, 2) and valid.shape == (40, 4)
    assert c1.dtype == torch.long and valid.dtype == torch.bool
    _check_patches(c1, c2, valid, m1, m2, 16, torch.stack(vals1), torch.stack(vals2))
    # scale >= 0.4 on both crops: they overlap, so most images get all 4 patches.
    assert valid.any(1).all()
    assert valid.float().mean() > 0.8


def test_correspondence_pure_rot90_and_flip():
    src = 64
    base = pixel_index_map(src, src).as_subclass(torch.Tensor)
    views = [
        torch.rot90(base, 1, (0, 1)),
        torch.rot90(base, 3, (0, 1)),
        base.flip(0),
        base.flip(1),
        base.flip(0).flip(1),
    ]
    m1 = base.expand(len(views), src, src).clone()
    m2 = torch.stack(views)
    g = torch.Generator().manual_seed(1)
    c1, c2, valid = sample_corresponding_patches(m1, m2, num_patches=4, patch_size=16, generator=g)
    assert valid.all()
    _check_patches(c1, c2, valid, m1, m2, 16)
    # Rotation by +90 (counter-clockwise in torch.rot90 dims (0, 1)): (y, x) -> (W-1-x, y).
    y, x = c1[0].unbind(-1)
    torch.testing.assert_close(c2[0], torch.stack([src - 1 - x, y], -1))


def test_correspondence_multiview_transform():
    aug = ViewAugmentation(
        size=64,
        crop_scale=(0.4, 1.0),
        jitter_prob=0.0,
        grayscale_prob=0.0,
        blur_prob=0.0,
        mean=[0.0] * 3,
        std=[1.0] * 3,
    )
    transform = MultiViewTransform(aug, index_maps=True)
    image = tv_tensors.Image(torch.randint(0, 256, (3, 96, 96), dtype=torch.uint8))
    m1, m2 = [], []
    for seed in range(20):
        torch.manual_seed(seed)
        out = transform({"image": image, "label": 0})
        a, b = out["index_maps"]
        assert a.shape == b.shape == (64, 64)
        m1.append(a)
        m2.append(b)
    m1, m2 = torch.stack(m1), torch.stack(m2)
    c1, c2, valid = sample_corresponding_patches(m1, m2, num_patches=4, patch_size=16)
    _check_patches(c1, c2, valid, m1, m2, 16)
    assert valid.any(1).all()


def test_disjoint_views_invalid_and_partial_overlap():
    src = pixel_index_map(64, 128).as_subclass(torch.Tensor)
    left, right = src[:, :64], src[:, 64:]
    c1, c2, valid = sample_corresponding_patches(left[None], right[None], 4, 16)
    assert not valid.any()
    assert (c1 == 0).all() and (c2 == 0).all()
    # A 20x20 overlap admits exactly one 16x16 window in view 2: one valid patch.
    full = pixel_index_map(64, 64).as_subclass(torch.Tensor)
    corner = full[44:, 44:]
    c1, c2, valid = sample_corresponding_patches(full[None], corner[None], 4, 16, max_tries=5)
    assert valid.tolist() == [[True, False, False, False]]
    _check_patches(c1, c2, valid, full[None], corner[None], 16)
    # Negative ids (padding) never match.
    pad = torch.full((1, 64, 64), -1, dtype=torch.long)
    assert not sample_corresponding_patches(pad, pad, 4, 16)[2].any()


def test_sampling_reproducible_with_generator_and_validation():
    m1 = torch.stack([_rand_views(s)[1] for s in range(4)])
    m2 = torch.stack([_rand_views(s)[3] for s in range(4)])
    a = sample_corresponding_patches(m1, m2, 4, 16, torch.Generator().manual_seed(3))
    b = sample_corresponding_patches(m1, m2, 4, 16, torch.Generator().manual_seed(3))
    for x, y in zip(a, b):
        assert torch.equal(x, y)
    with pytest.raises(ValueError):
        sample_corresponding_patches(m1[0], m2[0])
    with pytest.raises(ValueError):
        sample_corresponding_patches(m1, m2, num_patches=0)


def test_greedy_retries_fill_tight_packing():
    # 40x40 views, 16x16 patches: four disjoint windows fit, but a single greedy pass
    # often blocks the fourth; the retries (only for short images) recover it.
    full = pixel_index_map(40, 40).as_subclass(torch.Tensor).expand(32, 40, 40).clone()
    one = sample_corresponding_patches(
        full, full, 4, 16, generator=torch.Generator().manual_seed(0), max_tries=1
    )[2]
    c1, c2, valid = sample_corresponding_patches(
        full, full, 4, 16, generator=torch.Generator().manual_seed(0), max_tries=50
    )
    _check_patches(c1, c2, valid, full, full, 16)
    assert not one.all()
    assert valid.all()


# ------------------------------------------------------------------------ RoI pooling


def test_patch_boxes_format():
    centres = torch.tensor([[[8, 10], [30, 20]], [[16, 16], [0, 0]]])
    boxes = patch_boxes(centres, 16)
    assert boxes.shape == (4, 5)
    torch.testing.assert_close(boxes[0], torch.tensor([0.0, 2.0, 0.0, 18.0, 16.0]))
    torch.testing.assert_close(boxes[2], torch.tensor([1.0, 8.0, 8.0, 24.0, 24.0]))
    quarter = patch_boxes(centres, 16, scale=0.25)
    torch.testing.assert_close(quarter[:, 1:], boxes[:, 1:] * 0.25)
    valid = torch.tensor([[True, False], [True, False]])
    kept = patch_boxes(centres, 16, valid=valid)
    torch.testing.assert_close(kept, boxes[[0, 2]])


@pytest.mark.parametrize("down", [1, 4])
def test_local_matching_recovers_constant_regions(down):
    # Features constant on 16x16 image blocks (4x4 blocks of 4x4, 64x64 image).
    b, c, size, ps = 2, 3, 64, 16
    block_vals = torch.randn(b, c, 4, 4)
    feat = block_vals.repeat_interleave(ps // down, -1).repeat_interleave(ps // down, -2)
    feat2 = feat.flip(-1)  # view 2: horizontally flipped
    ys = torch.tensor([[0, 1, 3, 2], [2, 0, 1, 3]])
    xs = torch.tensor([[0, 2, 3, 1], [1, 3, 0, 2]])
    centres_1 = torch.stack([ys * ps + ps // 2, xs * ps + ps // 2], -1)
    centres_2 = torch.stack([centres_1[..., 0], size - centres_1[..., 1]], -1)
    valid = torch.tensor([[True, True, False, True], [True, True, True, True]])
    r1, r2 = local_matching_embeddings(
        feat, feat2, centres_1, centres_2, valid, ps, (size, size), output_size=2
    )
    assert r1.shape == r2.shape == (int(valid.sum()), c)
    expected = torch.cat([block_vals[i][:, ys[i], xs[i]].T[valid[i]] for i in range(b)])
    torch.testing.assert_close(r1, expected)
    torch.testing.assert_close(r2, expected)


def test_local_matching_equals_window_mean():
    torch.manual_seed(0)
    feat = torch.randn(2, 5, 48, 48, requires_grad=True)
    centres = torch.tensor([[[8, 8], [20, 33]], [[40, 40], [24, 9]]])
    valid = torch.ones(2, 2, dtype=torch.bool)
    r1, _ = local_matching_embeddings(feat, feat, centres, centres, valid, 16, (48, 48))
    expected = torch.stack(
        [
            feat[i, :, y - 8 : y + 8, x - 8 : x + 8].mean((1, 2))
            for i in range(2)
            for y, x in centres[i].tolist()
        ]
    )
    torch.testing.assert_close(r1, expected)
    r1.sum().backward()
    assert feat.grad is not None and torch.isfinite(feat.grad).all()


# ---------------------------------------------------------------------------- loss


def _pairs(n=8, d=16, k=20, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(m, dd, generator=g) for m, dd in ((n, d), (n, d), (k, 8), (k, 8))]


def test_glcnet_loss_weights_and_switches():
    g1, g2, l1, l2 = _pairs()
    ref_g = nt_xent_loss(torch.cat([g1, g2]), temperature=0.5, decoupled=True)
    ref_l = nt_xent_loss(torch.cat([l1, l2]), temperature=0.5, decoupled=True)
    loss, parts = glcnet_loss(g1, g2, l1, l2)
    torch.testing.assert_close(loss, 0.5 * ref_g + 0.5 * ref_l)
    torch.testing.assert_close(parts["loss_global"], ref_g)
    torch.testing.assert_close(parts["loss_local"], ref_l)
    loss, _ = glcnet_loss(g1, g2, l1, l2, weight=1.0)
    torch.testing.assert_close(loss, ref_g)
    loss, _ = glcnet_loss(g1, g2, l1, l2, weight=0.0)
    torch.testing.assert_close(loss, ref_l)
    loss, _ = glcnet_loss(g1, g2, l1, l2, weight=0.3)
    torch.testing.assert_close(loss, 0.3 * ref_g + 0.7 * ref_l)
    loss, parts = glcnet_loss(g1, g2, None, None, use_local=False, weight=0.2)
    torch.testing.assert_close(loss, ref_g)
    assert set(parts) == {"loss_global"}
    loss, parts = glcnet_loss(None, None, l1, l2, use_global=False)
    torch.testing.assert_close(loss, ref_l)
    assert set(parts) == {"loss_local"}
    # Decoupled: differs from the standard NT-Xent.
    assert not torch.allclose(ref_g, nt_xent_loss(torch.cat([g1, g2]), temperature=0.5))


def test_glcnet_loss_errors():
    g1, g2, l1, l2 = _pairs()
    with pytest.raises(ValueError):
        glcnet_loss(g1, g2, l1, l2, use_global=False, use_local=False)
    with pytest.raises(ValueError):
        glcnet_loss(g1, g2, l1, l2, weight=1.5)
    with pytest.raises(ValueError):
        glcnet_loss(g1, g2, None, None)
    with pytest.raises(ValueError):
        glcnet_loss(g1, g2[:-1], l1, l2)
    with pytest.raises(ValueError):
        glcnet_loss(g1, g2, l1, l2, temperature=0.0)


def test_glcnet_loss_finite_small_temperature_and_empty_local():
    g1, g2, l1, l2 = (t.requires_grad_() for t in _pairs())
    loss, parts = glcnet_loss(g1 * 10, g2 * 10, l1 * 10, l2 * 10, temperature=0.01)
    assert torch.isfinite(loss) and all(torch.isfinite(v) for v in parts.values())
    loss.backward()
    assert all(torch.isfinite(t.grad).all() for t in (g1, g2, l1, l2))
    e1 = torch.zeros(0, 8, requires_grad=True)
    loss, parts = glcnet_loss(g1, g2, e1, torch.zeros(0, 8))
    assert parts["loss_local"] == 0
    loss.backward()
