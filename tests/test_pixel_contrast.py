import math

import pytest
import torch

from contraseg.lightning_modules.losses.pixel_blocked import block_partition, stride_sample
from contraseg.lightning_modules.losses.pixel_contrast import (
    pixel_contrastive_loss,
    pixel_contrastive_loss_naive,
    tiled_pixel_contrastive_loss,
)


def _data(n=157, d=12, classes=5, seed=0, ignore_every=9):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=g, dtype=torch.float32).requires_grad_(True)
    y = torch.randint(0, classes, (n,), generator=g)
    if ignore_every:
        y[::ignore_every] = 255
    groups = torch.randint(0, 3, (n,), generator=g)
    anchor_mask = torch.rand(n, generator=g) > 0.4
    return x, y, groups, anchor_mask


def _value_and_grad(fn, x, *args, **kwargs):
    loss = fn(x, *args, **kwargs)
    (grad,) = torch.autograd.grad(loss, x)
    return loss.detach(), grad


VARIANTS = [
    {},
    {"anchor_mask": "mask"},
    {"groups": "groups", "negatives_from_own_group": True},
    {"anchor_mask": "mask", "groups": "groups", "negatives_from_own_group": True},
]


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("block_size", [1, 16, 50, 143, 157, 1000])
def test_chunked_matches_naive(variant, block_size):
    x, y, groups, mask = _data()
    kwargs = {
        k: {"mask": mask, "groups": groups}.get(v, v) if isinstance(v, str) else v
        for k, v in variant.items()
    }
    ref, ref_grad = _value_and_grad(pixel_contrastive_loss_naive, x, y, 0.1, **kwargs)
    val, grad = _value_and_grad(pixel_contrastive_loss, x, y, 0.1, block_size=block_size, **kwargs)
    torch.testing.assert_close(val, ref, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(grad, ref_grad, rtol=1e-4, atol=1e-7)
    assert grad[y == 255].abs().max() == 0


def _loop_reference(x, y, tau, ignore=255, anchor_mask=None, groups=None, own=False):
    z = torch.nn.functional.normalize(x.double(), dim=1)
    n = len(y)
    total, count = 0.0, 0
    for i in range(n):
        if y[i] == ignore or (anchor_mask is not None and not anchor_mask[i]):
            continue
        pos = [p for p in range(n) if p != i and y[p] == y[i]]
        neg = [
            j
            for j in range(n)
            if y[j] != ignore and y[j] != y[i] and (not own or groups[j] == groups[i])
        ]
        if not pos:
            continue
        s = lambda a, b: float(z[a] @ z[b]) / tau  # noqa: E731
        neg_sum = sum(math.exp(s(i, j)) for j in neg)
        li = 0.0
        for p in pos:
            e = math.exp(s(i, p))
            li += -math.log(e / (e + neg_sum))
        total += li / len(pos)
        count += 1
    return total / count


@pytest.mark.parametrize("own", [False, True])
def test_against_float64_loop(own):
    x, y, groups, mask = _data(n=23, d=4, classes=3, seed=3, ignore_every=5)
    ref = _loop_reference(x.detach(), y, 0.5, anchor_mask=mask, groups=groups, own=own)
    kwargs = {"anchor_mask": mask, "groups": groups, "negatives_from_own_group": own}
    val = pixel_contrastive_loss(x, y, 0.5, block_size=4, **kwargs)
    naive = pixel_contrastive_loss_naive(x, y, 0.5, **kwargs)
    assert val.item() == pytest.approx(ref, rel=1e-5)
    assert naive.item() == pytest.approx(ref, rel=1e-5)


def test_closed_form_two_classes():
    tau, n_a, n_b = 0.2, 6, 4
    u = torch.tensor([1.0, 0.0, 0.0])
    v = torch.tensor([0.6, 0.8, 0.0])  # unit, cosine 0.6 with u
    x = torch.cat([u.repeat(n_a, 1) * 3.0, v.repeat(n_b, 1) * 0.5])
    y = torch.tensor([0] * n_a + [1] * n_b)
    s_pos, s_neg = 1.0 / tau, 0.6 / tau
    # anchors of class a: n_b negatives; anchors of class b: n_a negatives
    la = math.log(1 + n_b * math.exp(s_neg - s_pos))
    lb = math.log(1 + n_a * math.exp(s_neg - s_pos))
    expected = (n_a * la + n_b * lb) / (n_a + n_b)
    for block in (3, 100):
        assert pixel_contrastive_loss(x, y, tau, block_size=block).item() == pytest.approx(
            expected, rel=1e-5
        )
    assert pixel_contrastive_loss_naive(x, y, tau).item() == pytest.approx(expected, rel=1e-5)


def test_small_temperature_finite():
    x, y, groups, _ = _data(n=200, d=8)
    for fn in (pixel_contrastive_loss, pixel_contrastive_loss_naive):
        kwargs = {"block_size": 37} if fn is pixel_contrastive_loss else {}
        val, grad = _value_and_grad(fn, x, y, 0.01, groups=groups, **kwargs)
        assert torch.isfinite(val) and torch.isfinite(grad).all()
        assert val > 0
    torch.testing.assert_close(
        pixel_contrastive_loss(x, y, 0.01, block_size=37),
        pixel_contrastive_loss_naive(x, y, 0.01),
        rtol=1e-5,
        atol=1e-5,
    )


def test_bf16_autocast_returns_fp32():
    x, y, _, _ = _data(n=120, d=16)
    w = torch.randn(16, 16)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        emb = x @ w
        assert emb.dtype == torch.bfloat16
        loss = pixel_contrastive_loss(emb, y, 0.1, block_size=32)
    assert loss.dtype == torch.float32
    ref = pixel_contrastive_loss_naive(emb.detach().float(), y, 0.1)
    torch.testing.assert_close(loss.detach(), ref, rtol=1e-5, atol=1e-6)
    (grad,) = torch.autograd.grad(loss, x)
    assert torch.isfinite(grad).all()


def test_anchors_without_positives_are_skipped():
    x, y, _, _ = _data(n=60, d=6, classes=3, ignore_every=0)
    y = y.clone()
    y[0], y[1] = 7, 8  # two singleton classes: no positives, but negatives of the others
    singles = torch.ones(60, dtype=torch.bool)
    singles[:2] = False
    full = pixel_contrastive_loss(x, y, 0.1, block_size=8)
    masked = pixel_contrastive_loss(x, y, 0.1, anchor_mask=singles, block_size=8)
    torch.testing.assert_close(full, masked)
    # the singletons still act as negatives
    other = pixel_contrastive_loss(x[2:], y[2:], 0.1, block_size=8)
    assert not torch.allclose(full, other)


def test_no_negatives_gives_zero_per_anchor():
    x = torch.randn(5, 3, requires_grad=True)
    y = torch.zeros(5, dtype=torch.long)
    for fn in (pixel_contrastive_loss, pixel_contrastive_loss_naive):
        val, grad = _value_and_grad(fn, x, y, 0.1)
        assert val.item() == 0.0 and torch.isfinite(grad).all()


@pytest.mark.parametrize("fn", [pixel_contrastive_loss, pixel_contrastive_loss_naive])
def test_all_ignored_returns_zero_with_graph(fn):
    x = torch.randn(10, 4, requires_grad=True)
    y = torch.full((10,), 255)
    loss = fn(x, y)
    assert loss.item() == 0.0 and loss.requires_grad
    loss.backward()
    assert torch.equal(x.grad, torch.zeros_like(x))


@pytest.mark.parametrize("tau", [0.0, -1.0, float("nan"), float("inf")])
def test_bad_temperature_raises(tau):
    x, y, _, _ = _data(n=10)
    with pytest.raises(ValueError):
        pixel_contrastive_loss(x, y, tau)
    with pytest.raises(ValueError):
        pixel_contrastive_loss_naive(x, y, tau)


def test_bad_arguments_raise():
    x, y, _, _ = _data(n=10)
    with pytest.raises(ValueError):
        pixel_contrastive_loss(x, y, negatives_from_own_group=True)
    with pytest.raises(ValueError):
        pixel_contrastive_loss(x, y[:5])
    with pytest.raises(ValueError):
        pixel_contrastive_loss(x, y, block_size=0)


def _dense(b=2, d=3, h=7, w=5):
    feats = torch.arange(b * d * h * w, dtype=torch.float32).reshape(b, d, h, w)
    labels = torch.arange(b * h * w).reshape(b, h, w)
    return feats, labels


def test_stride_sample_shapes_and_correspondence():
    feats, labels = _dense()
    emb, lab, grp = stride_sample(feats, labels, 3)
    assert emb.shape == (2 * 3 * 2, 3) and lab.shape == grp.shape == (12,)
    for k in range(12):
        b, r = divmod(k, 6)
        i, j = divmod(r, 2)
        assert grp[k] == b
        assert lab[k] == labels[b, 3 * i, 3 * j]
        torch.testing.assert_close(emb[k], feats[b, :, 3 * i, 3 * j])
    emb1, lab1, _ = stride_sample(feats, labels, 1)
    assert emb1.shape == (70, 3) and torch.equal(lab1, labels.reshape(-1))
    with pytest.raises(ValueError):
        stride_sample(feats, labels, 0)


def test_block_partition_shapes_and_correspondence():
    feats, labels = _dense()
    tiles = block_partition(feats, labels, 4)
    assert len(tiles) == 2 * 2  # ceil(7/4) x ceil(5/4)
    sizes = [t[1].numel() for t in tiles]
    assert sizes == [2 * 16, 2 * 4, 2 * 12, 2 * 3]
    assert sum(sizes) == labels.numel()
    seen = torch.cat([t[1] for t in tiles])
    assert torch.equal(seen.sort().values, labels.reshape(-1).sort().values)
    for emb, lab, grp in tiles:
        for k in range(lab.numel()):
            b, h, w = [int(v) for v in (labels == lab[k]).nonzero()[0]]
            assert grp[k] == b
            torch.testing.assert_close(emb[k], feats[b, :, h, w])


def test_tiled_loss_is_mean_over_valid_tiles():
    g = torch.Generator().manual_seed(0)
    feats = torch.randn(2, 8, 6, 6, generator=g, requires_grad=True)
    labels = torch.randint(0, 3, (2, 6, 6), generator=g)
    labels[:, :3, 3:] = 255  # one tile fully ignored
    loss = tiled_pixel_contrastive_loss(feats, labels, 3, temperature=0.1, block_size=5)
    per_tile = [
        pixel_contrastive_loss(e, lab, 0.1) for e, lab, _ in block_partition(feats, labels, 3)
    ]
    expected = torch.stack([per_tile[0], per_tile[2], per_tile[3]]).mean()
    torch.testing.assert_close(loss, expected)
    loss.backward()
    assert torch.isfinite(feats.grad).all()
