import math

import pytest
import torch

from contraseg.lightning_modules.losses.pixel_blocked import block_partition
from contraseg.lightning_modules.losses.pixel_contrast import tiled_pixel_contrastive_loss
from contraseg.lightning_modules.losses.pixel_supcon import (
    pixel_supcon_loss,
    pixel_supcon_loss_naive,
    tiled_pixel_supcon_loss,
)


def _data(n=157, d=12, classes=5, seed=0, ignore_every=9):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=g, dtype=torch.float32).requires_grad_(True)
    y = torch.randint(0, classes, (n,), generator=g)
    if ignore_every:
        y[::ignore_every] = 255
    anchor_mask = torch.rand(n, generator=g) > 0.4
    return x, y, anchor_mask


def _value_and_grad(fn, x, *args, **kwargs):
    loss = fn(x, *args, **kwargs)
    (grad,) = torch.autograd.grad(loss, x)
    return loss.detach(), grad


@pytest.mark.parametrize("use_mask", [False, True])
@pytest.mark.parametrize("block_size", [1, 7, 50, 143, 157, 1000])
def test_blocked_matches_naive(use_mask, block_size):
    x, y, mask = _data()
    kwargs = {"anchor_mask": mask} if use_mask else {}
    ref, ref_grad = _value_and_grad(pixel_supcon_loss_naive, x, y, 0.1, **kwargs)
    val, grad = _value_and_grad(pixel_supcon_loss, x, y, 0.1, block_size=block_size, **kwargs)
    torch.testing.assert_close(val, ref, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(grad, ref_grad, rtol=1e-4, atol=1e-7)
    assert grad[y == 255].abs().max() == 0


def _loop_reference(x, y, tau, ignore=255, anchor_mask=None):
    """Hand-written float64 SupCon over pixels, straight from the definition."""
    z = torch.nn.functional.normalize(x.double(), dim=1)
    n = len(y)
    kept = [j for j in range(n) if y[j] != ignore]
    total, count = 0.0, 0
    for i in kept:
        if anchor_mask is not None and not anchor_mask[i]:
            continue
        pos = [p for p in kept if p != i and y[p] == y[i]]
        if not pos:
            continue
        s = lambda a, b: float(z[a] @ z[b]) / tau  # noqa: E731
        denom = sum(math.exp(s(i, j)) for j in kept if j != i)
        total += -sum(math.log(math.exp(s(i, p)) / denom) for p in pos) / len(pos)
        count += 1
    return total / count


@pytest.mark.parametrize("use_mask", [False, True])
def test_against_float64_loop(use_mask):
    x, y, mask = _data(n=23, d=4, classes=3, seed=3, ignore_every=5)
    y = y.clone()
    y[1] = 9  # singleton class: skipped as anchor, still in the denominators
    kwargs = {"anchor_mask": mask} if use_mask else {}
    ref = _loop_reference(x.detach(), y, 0.5, **kwargs)
    val = pixel_supcon_loss(x, y, 0.5, block_size=4, **kwargs)
    naive = pixel_supcon_loss_naive(x, y, 0.5, **kwargs)
    assert val.item() == pytest.approx(ref, rel=1e-5)
    assert naive.item() == pytest.approx(ref, rel=1e-5)


def test_gradient_against_float64_autograd():
    x, y, mask = _data(n=40, d=5, classes=3, seed=5, ignore_every=7)
    xd = x.detach().double().requires_grad_(True)
    z = torch.nn.functional.normalize(xd, dim=1)
    kept = y != 255
    s = z @ z.T / 0.3
    terms = []
    for i in range(40):
        if not kept[i] or not mask[i]:
            continue
        others = kept.clone()
        others[i] = False
        pos = others & (y == y[i])
        if not pos.any():
            continue
        terms.append(torch.logsumexp(s[i][others], 0) - s[i][pos].mean())
    torch.stack(terms).mean().backward()
    val, grad = _value_and_grad(pixel_supcon_loss, x, y, 0.3, anchor_mask=mask, block_size=6)
    torch.testing.assert_close(grad.double(), xd.grad, rtol=1e-4, atol=1e-7)


@pytest.mark.parametrize("sizes", [(6, 4), (1, 9), (5, 5)])
def test_closed_form_identical_embeddings(sizes):
    n_a, n_b = sizes
    n = n_a + n_b
    x = torch.randn(1, 3).repeat(n, 1) * torch.linspace(0.5, 3.0, n)[:, None]
    x.requires_grad_(True)
    y = torch.tensor([0] * n_a + [1] * n_b)
    # all similarities equal: l_i = log(N - 1) for every anchor with a positive
    expected = math.log(n - 1)
    for block in (1, 3, 100):
        val = pixel_supcon_loss(x, y, 0.2, block_size=block)
        assert val.item() == pytest.approx(expected, rel=1e-5)
    assert pixel_supcon_loss_naive(x, y, 0.2).item() == pytest.approx(expected, rel=1e-5)


def test_small_temperature_finite_with_large_norms():
    x, y, mask = _data(n=200, d=8)
    x = (x.detach() * 1e3).requires_grad_(True)
    for fn in (pixel_supcon_loss, pixel_supcon_loss_naive):
        kwargs = {"block_size": 37} if fn is pixel_supcon_loss else {}
        val, grad = _value_and_grad(fn, x, y, 0.01, anchor_mask=mask, **kwargs)
        assert torch.isfinite(val) and torch.isfinite(grad).all()
        assert val > 0
    torch.testing.assert_close(
        pixel_supcon_loss(x, y, 0.01, anchor_mask=mask, block_size=37),
        pixel_supcon_loss_naive(x, y, 0.01, anchor_mask=mask),
        rtol=1e-5,
        atol=1e-5,
    )


def test_bf16_autocast_returns_fp32():
    x, y, _ = _data(n=120, d=16)
    w = torch.randn(16, 16)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        emb = x @ w
        assert emb.dtype == torch.bfloat16
        loss = pixel_supcon_loss(emb, y, 0.1, block_size=32)
        naive = pixel_supcon_loss_naive(emb, y, 0.1)
    assert loss.dtype == torch.float32 and naive.dtype == torch.float32
    ref = pixel_supcon_loss_naive(emb.detach().float(), y, 0.1)
    torch.testing.assert_close(loss.detach(), ref, rtol=1e-5, atol=1e-6)
    fp32 = pixel_supcon_loss(x @ w, y, 0.1)
    torch.testing.assert_close(loss.detach(), fp32.detach(), rtol=5e-2, atol=5e-2)
    (grad,) = torch.autograd.grad(loss, x)
    assert torch.isfinite(grad).all()


def test_background_stays_in_denominator():
    x, y, _ = _data(n=60, d=6, classes=3, ignore_every=0)
    not_bg = y != 0
    masked = pixel_supcon_loss(x, y, 0.1, anchor_mask=not_bg, block_size=8)
    dropped = pixel_supcon_loss(x, torch.where(not_bg, y, 255), 0.1, block_size=8)
    assert not torch.allclose(masked, dropped)
    ref = _loop_reference(x.detach(), y, 0.1, anchor_mask=not_bg)
    assert masked.item() == pytest.approx(ref, rel=1e-5)


@pytest.mark.parametrize("fn", [pixel_supcon_loss, pixel_supcon_loss_naive])
@pytest.mark.parametrize("case", ["all_ignored", "singletons", "mask_empty"])
def test_no_valid_anchor_returns_zero_with_graph(fn, case):
    x = torch.randn(10, 4, requires_grad=True)
    y, kwargs = torch.arange(10), {}
    if case == "all_ignored":
        y = torch.full((10,), 255)
    elif case == "mask_empty":
        y = torch.zeros(10, dtype=torch.long)
        kwargs = {"anchor_mask": torch.zeros(10, dtype=torch.bool)}
    loss = fn(x, y, **kwargs)
    assert loss.item() == 0.0 and loss.requires_grad and loss.dtype == torch.float32
    loss.backward()
    assert torch.equal(x.grad, torch.zeros_like(x))


@pytest.mark.parametrize("tau", [0.0, -1.0, float("nan"), float("inf")])
def test_bad_temperature_raises(tau):
    x, y, _ = _data(n=10)
    with pytest.raises(ValueError, match="temperature"):
        pixel_supcon_loss(x, y, tau)
    with pytest.raises(ValueError, match="temperature"):
        pixel_supcon_loss_naive(x, y, tau)


def test_bad_arguments_raise():
    x, y, _ = _data(n=10)
    with pytest.raises(ValueError, match="block_size"):
        pixel_supcon_loss(x, y, block_size=0)
    with pytest.raises(ValueError, match="labels"):
        pixel_supcon_loss(x, y[:5])
    with pytest.raises(ValueError, match="embeddings"):
        pixel_supcon_loss(x[None], y)
    with pytest.raises(ValueError, match="anchor_mask"):
        pixel_supcon_loss(x, y, anchor_mask=torch.ones(3, dtype=torch.bool))


def _dense(seed=0):
    g = torch.Generator().manual_seed(seed)
    feats = torch.randn(2, 8, 6, 6, generator=g, requires_grad=True)
    labels = torch.randint(0, 3, (2, 6, 6), generator=g)
    labels[:, :3, 3:] = 255  # one tile fully ignored
    return feats, labels


def test_tiled_supcon_is_mean_over_valid_tiles():
    feats, labels = _dense()
    loss = tiled_pixel_supcon_loss(feats, labels, 3, temperature=0.1, block_size=5)
    per_tile = [pixel_supcon_loss(e, lab, 0.1) for e, lab, _ in block_partition(feats, labels, 3)]
    expected = torch.stack([per_tile[0], per_tile[2], per_tile[3]]).mean()
    torch.testing.assert_close(loss, expected)
    (grad,) = torch.autograd.grad(loss, feats)
    (ref_grad,) = torch.autograd.grad(expected, feats)
    torch.testing.assert_close(grad, ref_grad)
    other = tiled_pixel_contrastive_loss(feats, labels, 3, temperature=0.1)
    assert not torch.allclose(loss, other)


def test_tiled_supcon_with_anchor_mask_skips_tiles():
    feats, labels = _dense(seed=1)
    mask = torch.ones_like(labels, dtype=torch.bool)
    mask[:, 3:, :3] = False  # tile 2 has no anchors
    loss = tiled_pixel_supcon_loss(feats, labels, 3, temperature=0.2, anchor_mask=mask)
    tiles = block_partition(feats, labels, 3)
    expected = torch.stack(
        [pixel_supcon_loss(tiles[k][0], tiles[k][1], 0.2) for k in (0, 3)]
    ).mean()
    torch.testing.assert_close(loss, expected)


def test_tiled_supcon_all_ignored_is_zero():
    feats, _ = _dense()
    labels = torch.full((2, 6, 6), 255)
    loss = tiled_pixel_supcon_loss(feats, labels, 3)
    assert loss.item() == 0.0 and loss.requires_grad
