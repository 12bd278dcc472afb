import math

import pytest
import torch

from contraseg.lightning_modules.losses.pixel_contrast import (
    _source_cells,
    cross_image_pixel_contrastive_loss,
    distortion_pixel_contrastive_loss,
    pixel_contrastive_loss_naive,
    within_image_pixel_contrastive_loss,
)


def _maps(b=3, d=6, h=5, w=4, classes=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    feats = torch.randn(b, d, h, w, generator=g).requires_grad_(True)
    labels = torch.randint(0, classes, (b, h, w), generator=g)
    labels[:, 0, ::2] = 255
    return feats, labels


def _pixels(features):
    """(D, H, W) -> (H * W, D) in row-major pixel order."""
    return features.permute(1, 2, 0).reshape(-1, features.shape[0])


def _grads(loss, *tensors):
    return torch.autograd.grad(loss, tensors)


# ------------------------------------------------------------------ within-image


def _within_reference(feats, labels, tau):
    losses = []
    for b in range(feats.shape[0]):
        lab = labels[b].reshape(-1)
        if not _has_anchor(lab):
            continue
        losses.append(pixel_contrastive_loss_naive(_pixels(feats[b]), lab, tau))
    return torch.stack(losses).mean()


def _has_anchor(lab, ignore=255):
    kept = lab[lab != ignore]
    return bool((torch.unique(kept, return_counts=True)[1] > 1).any()) if kept.numel() else False


@pytest.mark.parametrize("block_size", [1, 7, 4096])
def test_within_image_matches_reference(block_size):
    feats, labels = _maps()
    labels[1] = 255  # an image without anchors is skipped, not averaged as 0
    loss = within_image_pixel_contrastive_loss(feats, labels, 0.2, block_size=block_size)
    ref = _within_reference(feats, labels, 0.2)
    torch.testing.assert_close(loss, ref, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(_grads(loss, feats)[0], _grads(ref, feats)[0], rtol=1e-4, atol=1e-7)
    assert _grads(within_image_pixel_contrastive_loss(feats, labels, 0.2), feats)[0][1].eq(0).all()


def test_within_image_does_not_mix_images():
    feats, labels = _maps(b=2)
    loss = within_image_pixel_contrastive_loss(feats, labels, 0.1)
    single0 = within_image_pixel_contrastive_loss(feats[:1], labels[:1], 0.1)
    single1 = within_image_pixel_contrastive_loss(feats[1:], labels[1:], 0.1)
    torch.testing.assert_close(loss, (single0 + single1) / 2)


def test_within_image_no_anchor_is_zero_with_graph():
    feats, _ = _maps()
    labels = torch.full((3, 5, 4), 255)
    loss = within_image_pixel_contrastive_loss(feats, labels)
    assert loss.item() == 0.0 and loss.requires_grad and loss.dtype == torch.float32
    assert _grads(loss, feats)[0].eq(0).all()


# ------------------------------------------------------------------ cross-image


def _cross_reference(f1, f2, l1, l2, perm, tau):
    losses = []
    for b in range(f1.shape[0]):
        e = torch.cat([_pixels(f1[b]), _pixels(f2[perm[b]])])
        lab = torch.cat([l1[b].reshape(-1), l2[perm[b]].reshape(-1)])
        if not _has_anchor(lab):
            continue
        groups = torch.cat([torch.zeros(l1[b].numel()), torch.ones(l2[perm[b]].numel())])
        losses.append(
            pixel_contrastive_loss_naive(e, lab, tau, groups=groups, negatives_from_own_group=True)
        )
    return torch.stack(losses).mean()


def _cross_pair_loop(e1, e2, l1, l2, tau, ignore=255):
    """Hand-written float64 loss of one pair: negatives only from the anchor's image."""
    z = torch.nn.functional.normalize(torch.cat([e1, e2]).double(), dim=1)
    y = torch.cat([l1, l2]).tolist()
    img = [0] * len(l1) + [1] * len(l2)
    n = len(y)
    total, count = 0.0, 0
    for i in range(n):
        if y[i] == ignore:
            continue
        pos = [p for p in range(n) if p != i and y[p] == y[i]]
        neg = [j for j in range(n) if y[j] not in (ignore, y[i]) and img[j] == img[i]]
        if not pos:
            continue
        s = lambda a, c: float(z[a] @ z[c]) / tau  # noqa: E731
        neg_sum = sum(math.exp(s(i, j)) for j in neg)
        total += sum(
            -math.log(math.exp(s(i, p)) / (math.exp(s(i, p)) + neg_sum)) for p in pos
        ) / len(pos)
        count += 1
    return total / count


def _two_batches(seed=0):
    f1, l1 = _maps(b=3, h=5, w=4, seed=seed)
    f2, l2 = _maps(b=3, h=4, w=6, seed=seed + 1)  # different spatial size
    return f1, f2, l1, l2


@pytest.mark.parametrize("block_size", [1, 7, 4096])
@pytest.mark.parametrize("perm", [None, [2, 0, 1]])
def test_cross_image_matches_reference(block_size, perm):
    f1, f2, l1, l2 = _two_batches()
    permutation = None if perm is None else torch.tensor(perm)
    loss = cross_image_pixel_contrastive_loss(
        f1, f2, l1, l2, permutation, temperature=0.2, block_size=block_size
    )
    ref = _cross_reference(f1, f2, l1, l2, perm or [0, 1, 2], 0.2)
    torch.testing.assert_close(loss, ref, rtol=1e-5, atol=1e-6)
    for g, r in zip(_grads(loss, f1, f2), _grads(ref, f1, f2)):
        torch.testing.assert_close(g, r, rtol=1e-4, atol=1e-7)


def test_cross_image_negatives_only_from_own_image_hand_written():
    f1, f2, l1, l2 = _two_batches(seed=4)
    loss = cross_image_pixel_contrastive_loss(
        f1[:1], f2[1:2], l1[:1], l2[1:2], temperature=0.5, block_size=3
    )
    ref = _cross_pair_loop(
        _pixels(f1[0].detach()), _pixels(f2[1].detach()), l1[0].reshape(-1), l2[1].reshape(-1), 0.5
    )
    assert loss.item() == pytest.approx(ref, rel=1e-5)
    # with negatives from both images the loss is different
    e = torch.cat([_pixels(f1[0]), _pixels(f2[1])])
    unrestricted = pixel_contrastive_loss_naive(
        e, torch.cat([l1[0].reshape(-1), l2[1].reshape(-1)]), 0.5
    )
    assert unrestricted.item() != pytest.approx(ref, rel=1e-3)


def test_cross_image_permutation_pairs_images():
    f1, f2, l1, l2 = _two_batches(seed=7)
    perm = torch.tensor([1, 2, 0])
    permuted = cross_image_pixel_contrastive_loss(f1, f2, l1, l2, perm, temperature=0.1)
    # explicit permutation == identity pairing with the second batch reordered
    reordered = cross_image_pixel_contrastive_loss(f1, f2[perm], l1, l2[perm], temperature=0.1)
    identity = cross_image_pixel_contrastive_loss(f1, f2, l1, l2, temperature=0.1)
    torch.testing.assert_close(permuted, reordered)
    assert not torch.allclose(permuted, identity)
    # a case where the pairing decides which pairs have anchors at all
    l1c = torch.full_like(l1, 255)
    l2c = torch.full_like(l2, 255)
    l1c[0, 0, 0] = 5  # a singleton in batch 1 ...
    l2c[1, 0, 0] = 5  # ... whose only positive is in image 1 of batch 2
    l2c[1, 0, 1] = 6  # and a negative next to it
    none = cross_image_pixel_contrastive_loss(f1, f2, l1c, l2c, temperature=0.1)
    assert none.item() == 0.0 and none.requires_grad
    paired = cross_image_pixel_contrastive_loss(f1, f2, l1c, l2c, torch.tensor([1, 0, 2]), 0.1)
    z1 = torch.nn.functional.normalize(f1[0, :, 0, 0].detach(), dim=0)
    z2 = torch.nn.functional.normalize(f2[1, :, 0, 0].detach(), dim=0)
    z3 = torch.nn.functional.normalize(f2[1, :, 0, 1].detach(), dim=0)
    # anchor in batch 1: no negatives in its own image -> 0;
    # anchor in batch 2: positive z1, negative z3 in its own image
    s_pos, s_neg = float(z2 @ z1) / 0.1, float(z2 @ z3) / 0.1
    expected = (0.0 + math.log1p(math.exp(s_neg - s_pos))) / 2
    assert paired.item() == pytest.approx(expected, rel=1e-5)


def test_cross_image_bad_arguments():
    f1, f2, l1, l2 = _two_batches()
    with pytest.raises(ValueError, match="permutation"):
        cross_image_pixel_contrastive_loss(f1, f2, l1, l2, torch.tensor([0, 0, 1]))
    with pytest.raises(ValueError, match="permutation"):
        cross_image_pixel_contrastive_loss(f1, f2, l1, l2, torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="labels2"):
        cross_image_pixel_contrastive_loss(f1, f2, l1, l1)
    with pytest.raises(ValueError, match=r"\(B, D\)"):
        cross_image_pixel_contrastive_loss(f1, f2[:2], l1, l2[:2])
    with pytest.raises(ValueError, match=r"\(B, D\)"):
        cross_image_pixel_contrastive_loss(f1, f2[:, :3], l1, l2)
    with pytest.raises(ValueError, match="features1"):
        cross_image_pixel_contrastive_loss(f1[0], f2, l1, l2)
    with pytest.raises(ValueError, match="temperature"):
        cross_image_pixel_contrastive_loss(f1, f2, l1, l2, temperature=0.0)


# ------------------------------------------------------------------ distortion

SRC_H, SRC_W, CELL = 8, 8, 2


def _source_ids():
    return torch.arange(SRC_H * SRC_W).reshape(SRC_H, SRC_W)


def _cells_from_coords(ys, xs):
    """Hand-made cell labels from source coordinates (no id decoding)."""
    cells_x = math.ceil(SRC_W / CELL)
    return (ys[:, None] // CELL) * cells_x + xs[None, :] // CELL


def _views():
    """View 1: crop rows 0..5, cols 1..6; view 2: crop rows 2..7, cols 0..5, flipped."""
    src = _source_ids()
    idx1 = src[0:6, 1:7]
    idx2 = src[2:8, 0:6].flip(1)
    lab1 = _cells_from_coords(torch.arange(0, 6), torch.arange(1, 7))
    lab2 = _cells_from_coords(torch.arange(2, 8), torch.arange(5, -1, -1))
    return idx1, idx2, lab1, lab2


def _distortion_reference(f1, f2, lab1, lab2, anchors1, anchors2, tau):
    losses = []
    for b in range(f1.shape[0]):
        e = torch.cat([_pixels(f1[b]), _pixels(f2[b])])
        lab = torch.cat([lab1[b].reshape(-1), lab2[b].reshape(-1)])
        mask = torch.cat([anchors1[b].reshape(-1), anchors2[b].reshape(-1)])
        losses.append(pixel_contrastive_loss_naive(e, lab, tau, ignore_index=-1, anchor_mask=mask))
    return torch.stack(losses).mean()


def test_source_cells_of_cropped_and_flipped_views():
    idx1, idx2, lab1, lab2 = _views()
    assert torch.equal(_source_cells(idx1, SRC_W, CELL), lab1)
    assert torch.equal(_source_cells(idx2, SRC_W, CELL), lab2)
    # non-square source, cell not dividing the width
    src = torch.arange(3 * 5).reshape(3, 5)
    cells = _source_cells(src, 5, 2)
    expected = torch.tensor([[0, 0, 1, 1, 2], [0, 0, 1, 1, 2], [3, 3, 4, 4, 5]])
    assert torch.equal(cells, expected)
    assert torch.equal(_source_cells(torch.tensor([-1, -7, 3]), 5, 2), torch.tensor([-1, -1, 1]))


@pytest.mark.parametrize("block_size", [1, 7, 4096])
def test_distortion_matches_hand_made_labels(block_size):
    idx1, idx2, lab1, lab2 = _views()
    g = torch.Generator().manual_seed(0)
    f1 = torch.randn(2, 5, 6, 6, generator=g).requires_grad_(True)
    f2 = torch.randn(2, 5, 6, 6, generator=g).requires_grad_(True)
    index1, index2 = idx1.expand(2, 6, 6), idx2.expand(2, 6, 6)
    loss = distortion_pixel_contrastive_loss(
        f1, f2, index1, index2, SRC_W, CELL, temperature=0.2, block_size=block_size
    )
    # hand-made anchors: cell rows {0,1,2} x cols {0..3} in view 1, rows {1,2,3} x cols {0,1,2}
    # in view 2, so the shared cells are rows {1, 2} x cols {0, 1, 2}
    cells_x = SRC_W // CELL

    def shared(lab):
        return (lab // cells_x >= 1) & (lab // cells_x <= 2) & (lab % cells_x <= 2)

    a1, a2 = shared(lab1), shared(lab2)
    assert a1.sum() > 0 and a2.sum() > 0 and not a1.all() and not a2.all()
    lab1, lab2, a1, a2 = (t.expand(2, 6, 6) for t in (lab1, lab2, a1, a2))
    ref = _distortion_reference(f1, f2, lab1, lab2, a1, a2, 0.2)
    torch.testing.assert_close(loss, ref, rtol=1e-5, atol=1e-6)
    for g_, r in zip(_grads(loss, f1, f2), _grads(ref, f1, f2)):
        torch.testing.assert_close(g_, r, rtol=1e-4, atol=1e-7)


def test_distortion_identical_views_flipped():
    """View 2 = horizontal flip of view 1: every cell occurs in both, all pixels anchor."""
    src = _source_ids()
    g = torch.Generator().manual_seed(1)
    f1 = torch.randn(1, 4, 8, 8, generator=g).requires_grad_(True)
    f2 = torch.randn(1, 4, 8, 8, generator=g).requires_grad_(True)
    loss = distortion_pixel_contrastive_loss(f1, f2, src[None], src.flip(1)[None], SRC_W, CELL, 0.1)
    lab = _cells_from_coords(torch.arange(8), torch.arange(8))
    ones = torch.ones(1, 8, 8, dtype=torch.bool)
    ref = _distortion_reference(f1, f2, lab[None], lab.flip(1)[None], ones, ones, 0.1)
    torch.testing.assert_close(loss, ref, rtol=1e-5, atol=1e-6)


def test_distortion_ignores_negative_ids():
    idx1, idx2, lab1, lab2 = _views()
    idx1, idx2, lab1, lab2 = idx1.clone(), idx2.clone(), lab1.clone(), lab2.clone()
    idx1[:2, :] = -1  # e.g. padding after a rotation
    lab1[:2, :] = -1
    idx2[:, 0] = -5
    lab2[:, 0] = -1
    g = torch.Generator().manual_seed(2)
    f1 = torch.randn(1, 5, 6, 6, generator=g).requires_grad_(True)
    f2 = torch.randn(1, 5, 6, 6, generator=g).requires_grad_(True)
    loss = distortion_pixel_contrastive_loss(f1, f2, idx1[None], idx2[None], SRC_W, CELL, 0.2)
    a1 = (lab1 >= 0) & torch.isin(lab1, lab2[lab2 >= 0])
    a2 = (lab2 >= 0) & torch.isin(lab2, lab1[lab1 >= 0])
    ref = _distortion_reference(f1, f2, lab1[None], lab2[None], a1[None], a2[None], 0.2)
    torch.testing.assert_close(loss, ref, rtol=1e-5, atol=1e-6)
    g1, g2 = _grads(loss, f1, f2)
    assert g1[0, :, :2].eq(0).all() and g2[0, :, :, 0].eq(0).all()
    assert g1[0, :, 2:].abs().sum() > 0


def test_distortion_disjoint_views_is_zero():
    src = _source_ids()
    f1 = torch.randn(2, 3, 4, 8, requires_grad=True)
    f2 = torch.randn(2, 3, 4, 8, requires_grad=True)
    loss = distortion_pixel_contrastive_loss(
        f1, f2, src[:4].expand(2, 4, 8), src[4:].expand(2, 4, 8), SRC_W, CELL
    )
    assert loss.item() == 0.0 and loss.requires_grad
    assert all(g.eq(0).all() for g in _grads(loss, f1, f2))


def test_distortion_bad_arguments():
    idx1, idx2, _, _ = _views()
    f = torch.randn(1, 3, 6, 6)
    i1, i2 = idx1[None], idx2[None]
    with pytest.raises(ValueError, match="source_width"):
        distortion_pixel_contrastive_loss(f, f, i1, i2, 0, CELL)
    with pytest.raises(ValueError, match="cell"):
        distortion_pixel_contrastive_loss(f, f, i1, i2, SRC_W, 0)
    with pytest.raises(ValueError, match="integer"):
        distortion_pixel_contrastive_loss(f, f, i1.float(), i2, SRC_W, CELL)
    with pytest.raises(ValueError, match="index2"):
        distortion_pixel_contrastive_loss(f, f, i1, i2[:, :3], SRC_W, CELL)
    with pytest.raises(ValueError, match=r"\(B, D\)"):
        distortion_pixel_contrastive_loss(f, f.expand(2, 3, 6, 6), i1, i2.expand(2, 6, 6), 8, 2)
