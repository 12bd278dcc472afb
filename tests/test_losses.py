"""Tests for contraseg.lightning_modules.losses: NT-Xent / SupCon / decoupled / DirectCLR.

Every loss is checked (value and gradient) against a naive float64 reference written
with python loops over anchors and explicit exp-sums, straight from the papers.
"""

from __future__ import annotations

import math

import pytest
import torch
from torch import Tensor, nn

from contraseg.lightning_modules.losses.contrastive import (
    check_temperature,
    contrastive_loss,
    instance_labels,
    nt_xent_loss,
    paired_contrastive_loss,
)
from contraseg.lightning_modules.losses.directclr import directclr_loss, info_nce_loss

# ----------------------------------------------------------------------------- references


def _unit(x: Tensor) -> Tensor:
    return x / x.norm(dim=1, keepdim=True)


def _log_ratio(num_logit: Tensor, den_logits: Tensor) -> Tensor:
    """log(exp(num) / sum(exp(den))) with an explicit exp-sum (shifted by the row max,
    which is an exact identity, so that float64 does not overflow at tau = 1e-3)."""
    shift = den_logits.max().detach()
    return (num_logit - shift) - torch.log(torch.exp(den_logits - shift).sum())


def ref_nt_xent(z: Tensor, tau: float, decoupled: bool = False) -> Tensor:
    """SimCLR eq. 1 for view-major [v1; v2]: mean over all 2B anchors of l(i, j(i))."""
    z = _unit(z)
    n = z.shape[0]
    half = n // 2
    terms = []
    for i in range(n):
        j = (i + half) % n
        s = z[i] @ z.T / tau
        allowed = [k for k in range(n) if k != i and not (decoupled and k == j)]
        terms.append(-_log_ratio(s[j], s[allowed]))
    return torch.stack(terms).mean()


def ref_supcon(z: Tensor, labels: Tensor, tau: float, decoupled: bool = False) -> Tensor:
    """Khosla et al. L_out: mean over positives of -log softmax; anchors without positives
    (or, decoupled, without negatives) are skipped."""
    z = _unit(z)
    n = z.shape[0]
    labels = labels.tolist()
    terms = []
    for i in range(n):
        pos = [p for p in range(n) if p != i and labels[p] == labels[i]]
        neg = [a for a in range(n) if labels[a] != labels[i]]
        den = neg if decoupled else [a for a in range(n) if a != i]
        if not pos or not den:
            continue
        s = z[i] @ z.T / tau
        terms.append(-torch.stack([_log_ratio(s[p], s[den]) for p in pos]).mean())
    return torch.stack(terms).mean()


def ref_directclr(r1: Tensor, r2: Tensor, d0: int, tau: float) -> Tensor:
    """Symmetric InfoNCE on the first d0 dims (Jing et al. 2022)."""
    z1, z2 = _unit(r1[:, :d0]), _unit(r2[:, :d0])
    n = z1.shape[0]

    def nce(q: Tensor, k: Tensor) -> Tensor:
        return -torch.stack([_log_ratio(q[i] @ k[i] / tau, q[i] @ k.T / tau) for i in range(n)])

    return 0.5 * (nce(z1, z2).mean() + nce(z2, z1).mean())


def _value_and_grad(fn, *inputs: Tensor) -> tuple[Tensor, tuple[Tensor, ...]]:
    leaves = [x.detach().clone().requires_grad_(True) for x in inputs]
    loss = fn(*leaves)
    return loss.detach(), torch.autograd.grad(loss, leaves)


def _compare(fn, ref_fn, *inputs: Tensor, rtol: float = 1e-5, grad_rtol: float = 1e-4) -> Tensor:
    """fn on float32 inputs vs ref_fn on the same inputs in float64 (values and grads)."""
    loss, grads = _value_and_grad(fn, *[x.float() for x in inputs])
    ref, ref_grads = _value_and_grad(ref_fn, *[x.double() for x in inputs])
    assert loss.dtype == torch.float32
    assert math.isfinite(loss.item())
    torch.testing.assert_close(loss.double(), ref, rtol=rtol, atol=rtol)
    for g, rg in zip(grads, ref_grads):
        assert g.dtype == torch.float32 and torch.isfinite(g).all()
        scale = rg.abs().max().item()
        torch.testing.assert_close(g.double(), rg, rtol=grad_rtol, atol=grad_rtol * scale + 1e-8)
    return loss


def _views(batch: int, dim: int, n_views: int, seed: int, noise: float = 0.5) -> Tensor:
    """View-major stack of n_views noisy copies of `batch` random embeddings."""
    g = torch.Generator().manual_seed(seed)
    base = torch.randn(batch, dim, generator=g)
    return torch.cat([base + noise * torch.randn(batch, dim, generator=g) for _ in range(n_views)])


CASES = [(4, 8, 0.1, 0), (7, 16, 0.5, 1), (16, 32, 0.2, 2), (3, 3, 1.0, 3)]  # (B, d, tau, seed)


# ----------------------------------------------------------------------------- NT-Xent


@pytest.mark.parametrize("decoupled", [False, True])
@pytest.mark.parametrize(("batch", "dim", "tau", "seed"), CASES)
def test_nt_xent_fused_matches_reference(
    batch: int, dim: int, tau: float, seed: int, decoupled: bool
) -> None:
    z = _views(batch, dim, 2, seed)
    _compare(
        lambda x: nt_xent_loss(x, temperature=tau, decoupled=decoupled),
        lambda x: ref_nt_xent(x, tau, decoupled),
        z,
    )


@pytest.mark.parametrize("decoupled", [False, True])
@pytest.mark.parametrize(("batch", "dim", "tau", "seed"), CASES)
def test_nt_xent_generic_instance_labels_matches_reference(
    batch: int, dim: int, tau: float, seed: int, decoupled: bool
) -> None:
    z = _views(batch, dim, 2, seed)
    labels = torch.arange(batch).repeat(2)
    _compare(
        lambda x: nt_xent_loss(x, labels, temperature=tau, decoupled=decoupled),
        lambda x: ref_nt_xent(x, tau, decoupled),
        z,
    )
    # ... and the SupCon reference with instance labels is SimCLR eq. 1.
    _compare(
        lambda x: nt_xent_loss(x, labels, temperature=tau, decoupled=decoupled),
        lambda x: ref_supcon(x, labels, tau, decoupled),
        z,
    )


@pytest.mark.parametrize("decoupled", [False, True])
@pytest.mark.parametrize(("batch", "dim", "tau", "seed"), CASES)
def test_supcon_class_labels_matches_reference(
    batch: int, dim: int, tau: float, seed: int, decoupled: bool
) -> None:
    g = torch.Generator().manual_seed(100 + seed)
    n = 2 * batch + 1  # no view structure; some classes are singletons (skipped anchors)
    z = torch.randn(n, dim, generator=g)
    labels = torch.randint(0, max(2, n // 3), (n,), generator=g)
    labels[0] = 1000  # guaranteed singleton: an anchor without positives
    _compare(
        lambda x: nt_xent_loss(x, labels, temperature=tau, decoupled=decoupled),
        lambda x: ref_supcon(x, labels, tau, decoupled),
        z,
    )


@pytest.mark.parametrize("decoupled", [False, True])
@pytest.mark.parametrize(("batch", "dim", "tau", "seed"), CASES)
def test_multicrop_three_views_matches_reference(
    batch: int, dim: int, tau: float, seed: int, decoupled: bool
) -> None:
    z = _views(batch, dim, 3, seed)
    labels = torch.arange(batch).repeat(3)
    _compare(
        lambda x: nt_xent_loss(x, temperature=tau, decoupled=decoupled, n_views=3),
        lambda x: ref_supcon(x, labels, tau, decoupled),
        z,
    )


def test_instance_labels_view_major() -> None:
    assert instance_labels(3, 2).tolist() == [0, 1, 2, 0, 1, 2]
    assert instance_labels(2, 3).tolist() == [0, 1, 0, 1, 0, 1]


@pytest.mark.parametrize("decoupled", [False, True])
def test_fused_paths_agree_with_generic(decoupled: bool) -> None:
    """Fused symmetric, fused non-symmetric and generic paths give the same value/grads."""
    z = _views(6, 12, 2, seed=7)
    n, tau = z.shape[0], 0.3
    self_index = torch.arange(n)
    pos_index = (self_index + n // 2) % n
    labels = torch.arange(n // 2).repeat(2)

    def symmetric(x: Tensor) -> Tensor:
        return paired_contrastive_loss(x, x, pos_index, self_index, tau, decoupled)

    def non_symmetric(x: Tensor) -> Tensor:  # candidates is a different tensor object
        return paired_contrastive_loss(x, x * 1.0, pos_index, self_index, tau, decoupled)

    def generic(x: Tensor) -> Tensor:
        return contrastive_loss(x, labels, x, labels, self_index, tau, decoupled)

    ref_val, ref_grad = _value_and_grad(generic, z)
    for fn in (symmetric, non_symmetric):
        val, grad = _value_and_grad(fn, z)
        torch.testing.assert_close(val, ref_val)
        torch.testing.assert_close(grad[0], ref_grad[0], rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("decoupled", [False, True])
def test_paired_cross_set_matches_generic(decoupled: bool) -> None:
    """Anchors not among the candidates (self_index=None), positives by index."""
    g = torch.Generator().manual_seed(11)
    q, k = torch.randn(5, 8, generator=g), torch.randn(9, 8, generator=g)
    pos_index = torch.tensor([3, 0, 8, 3, 5])

    def paired(a: Tensor, c: Tensor) -> Tensor:
        return paired_contrastive_loss(a, c, pos_index, None, 0.2, decoupled)

    def generic(a: Tensor, c: Tensor) -> Tensor:
        return contrastive_loss(a, pos_index, c, torch.arange(9), None, 0.2, decoupled)

    val, grads = _value_and_grad(paired, q, k)
    ref_val, ref_grads = _value_and_grad(generic, q, k)
    torch.testing.assert_close(val, ref_val)
    for g_, rg in zip(grads, ref_grads):
        torch.testing.assert_close(g_, rg, rtol=1e-5, atol=1e-7)


def test_contrastive_loss_normalizer_is_used_verbatim() -> None:
    """The DDP normaliser can be fractional (global count / world size) or zero."""
    z = _views(3, 8, 2, seed=5)
    labels = torch.tensor([0, 0, 1, 2, 3, 3])  # 4 valid anchors
    idx = torch.arange(6)
    mean = contrastive_loss(z, labels, z, labels, idx, 0.2)
    for norm in (0.5, 2.0, 4.0 / 3.0):
        val = contrastive_loss(z, labels, z, labels, idx, 0.2, normalizer=torch.tensor(norm))
        torch.testing.assert_close(val, mean * 4 / norm)
    none_valid = torch.arange(6)
    zero = contrastive_loss(z, none_valid, z, none_valid, idx, 0.2, normalizer=torch.tensor(0.0))
    assert zero.item() == 0.0


def test_single_image_edge_cases() -> None:
    """One image, two views: NT-Xent is exactly 0 (the positive is the only candidate);
    decoupled has no negative, so the anchor is skipped (0, not -inf) on both paths."""
    z = torch.randn(2, 8, requires_grad=True)
    for decoupled in (False, True):
        for labels in (None, torch.tensor([0, 0])):
            loss = nt_xent_loss(z, labels, temperature=0.1, decoupled=decoupled)
            assert loss.item() == pytest.approx(0.0, abs=1e-6)
            (grad,) = torch.autograd.grad(loss, z)
            assert torch.isfinite(grad).all()


# ----------------------------------------------------------------------------- closed forms


@pytest.mark.parametrize("batch", [2, 5, 32])
@pytest.mark.parametrize("tau", [0.05, 0.5])
def test_identical_embeddings_closed_form(batch: int, tau: float) -> None:
    """All logits equal: NT-Xent = log(2n - 1), decoupled = log(2n - 2)."""
    z = torch.ones(2 * batch, 4)
    labels = torch.arange(batch).repeat(2)
    for lab in (None, labels):
        plain = nt_xent_loss(z, lab, temperature=tau)
        dec = nt_xent_loss(z, lab, temperature=tau, decoupled=True)
        assert plain.item() == pytest.approx(math.log(2 * batch - 1), rel=1e-6)
        assert dec.item() == pytest.approx(math.log(2 * batch - 2), rel=1e-6, abs=1e-6)


# ----------------------------------------------------------------------------- lightly


@pytest.mark.parametrize(("batch", "dim", "tau", "seed"), CASES + [(64, 128, 0.07, 4)])
def test_matches_lightly_ntxent(batch: int, dim: int, tau: float, seed: int) -> None:
    import lightly.loss as lightly_loss  # a dev dependency: the cross-check always runs
    z = _views(batch, dim, 2, seed)
    z0, z1 = z[:batch], z[batch:]
    ours, ours_grads = _value_and_grad(
        lambda a, b: nt_xent_loss(torch.cat([a, b]), temperature=tau), z0, z1
    )
    theirs, their_grads = _value_and_grad(lightly_loss.NTXentLoss(temperature=tau), z0, z1)
    torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-6)
    for g, tg in zip(ours_grads, their_grads):
        torch.testing.assert_close(g, tg, rtol=1e-4, atol=1e-4 * tg.abs().max().item())


# ------------------------------------------------------------------- pytorch-metric-learning


@pytest.mark.parametrize(("n", "dim", "classes", "tau", "seed"),
                         [(12, 8, 3, 0.1, 0), (40, 16, 5, 0.07, 1), (64, 32, 2, 0.5, 2)])
def test_supcon_matches_pytorch_metric_learning(
    n: int, dim: int, classes: int, tau: float, seed: int
) -> None:
    """Our SupCon (``nt_xent_loss`` with labels) and pixel SupCon equal pml's ``SupConLoss``."""
    from pytorch_metric_learning.losses import SupConLoss

    from contraseg.lightning_modules.losses import pixel_supcon_loss

    g = torch.Generator().manual_seed(seed)
    z = torch.randn(n, dim, generator=g, dtype=torch.float64)
    labels = torch.randint(0, classes, (n,), generator=g)
    theirs, their_grads = _value_and_grad(lambda a: SupConLoss(temperature=tau)(a, labels), z)
    for fn in (lambda a: nt_xent_loss(a, labels, temperature=tau),
               lambda a: pixel_supcon_loss(a, labels, temperature=tau, block_size=7)):  # fmt: skip
        ours, ours_grads = _value_and_grad(fn, z)
        torch.testing.assert_close(ours.double(), theirs.double(), rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(ours_grads[0].double(), their_grads[0].double(),
                                   rtol=1e-4, atol=1e-6)  # fmt: skip


# ----------------------------------------------------------------------------- temperature


@pytest.mark.parametrize("tau", [0.01, 0.001])
@pytest.mark.parametrize("path", ["fused", "generic", "decoupled", "multicrop", "directclr"])
def test_small_temperature_finite_and_accurate(tau: float, path: str) -> None:
    batch, dim = 48, 64
    x = _unit(_views(batch, dim, 3 if path == "multicrop" else 2, seed=21, noise=0.3))
    # Shift every embedding along a common direction so that cosine similarities differ by
    # ~10 * tau: the softmax is then neither saturated nor flat, while the logits
    # themselves are ~1 / tau (exp(1 / tau) overflows even float64 at tau = 1e-3).
    z = x + math.sqrt(1 / (10 * tau)) * torch.ones(dim) / math.sqrt(dim)
    labels = torch.arange(batch).repeat(2)
    fns = {
        "fused": (lambda x: nt_xent_loss(x, temperature=tau), lambda x: ref_nt_xent(x, tau)),
        "generic": (
            lambda x: nt_xent_loss(x, labels, temperature=tau),
            lambda x: ref_nt_xent(x, tau),
        ),
        "decoupled": (
            lambda x: nt_xent_loss(x, temperature=tau, decoupled=True),
            lambda x: ref_nt_xent(x, tau, decoupled=True),
        ),
        "multicrop": (
            lambda x: nt_xent_loss(x, temperature=tau, n_views=3),
            lambda x: ref_supcon(x, torch.arange(batch).repeat(3), tau),
        ),
        "directclr": (
            lambda x: directclr_loss(x[:batch], x[batch:], 40, temperature=tau),
            lambda x: ref_directclr(x[:batch], x[batch:], 40, tau),
        ),
    }
    fn, ref_fn = fns[path]
    # float32 logits carry ~1e-7 / tau absolute error; gradients scale like 1 / tau.
    _compare(fn, ref_fn, z, rtol=1e-4, grad_rtol=2e-3)


@pytest.mark.parametrize("bad", [0, 0.0, -1, -0.1, float("nan"), float("inf"), float("-inf")])
def test_invalid_temperature_raises(bad: float) -> None:
    with pytest.raises(ValueError, match="temperature"):
        check_temperature(bad)
    z = _views(4, 8, 2, seed=0)
    with pytest.raises(ValueError, match="temperature"):
        nt_xent_loss(z, temperature=bad)
    with pytest.raises(ValueError, match="temperature"):
        nt_xent_loss(z, torch.arange(4).repeat(2), temperature=bad)
    with pytest.raises(ValueError, match="temperature"):
        directclr_loss(z[:4], z[4:], 4, temperature=bad)


# ----------------------------------------------------------------------------- DirectCLR


@pytest.mark.parametrize(("batch", "dim", "tau", "seed"), CASES)
@pytest.mark.parametrize("d0_frac", [0.25, 1.0])
def test_directclr_matches_reference(
    batch: int, dim: int, tau: float, seed: int, d0_frac: float
) -> None:
    z = _views(batch, dim, 2, seed)
    d0 = max(1, int(dim * d0_frac))
    _compare(
        lambda a, b: directclr_loss(a, b, d0, temperature=tau),
        lambda a, b: ref_directclr(a, b, d0, tau),
        z[:batch],
        z[batch:],
    )


def test_directclr_ignores_trailing_dims() -> None:
    r1, r2 = torch.randn(6, 10), torch.randn(6, 10)
    r1b, r2b = r1.clone(), r2.clone()
    r1b[:, 4:], r2b[:, 4:] = torch.randn(6, 6), torch.randn(6, 6)
    assert directclr_loss(r1, r2, 4).item() == pytest.approx(directclr_loss(r1b, r2b, 4).item())
    r1.requires_grad_(True)
    (grad,) = torch.autograd.grad(directclr_loss(r1, r2, 4), r1)
    assert grad[:, 4:].abs().max().item() == 0.0
    assert grad[:, :4].abs().max().item() > 0.0


# ----------------------------------------------------------------------------- autocast


def _bf16_embeddings(rows: int, seed: int) -> tuple[nn.Linear, Tensor]:
    g = torch.Generator().manual_seed(seed)
    lin = nn.Linear(16, 32)
    with torch.no_grad():
        lin.weight.copy_(torch.randn(32, 16, generator=g) / 4)
        lin.bias.copy_(torch.randn(32, generator=g) / 4)
    return lin, torch.randn(rows, 16, generator=g)


@pytest.mark.parametrize(
    "loss_fn",
    [
        pytest.param(lambda z: nt_xent_loss(z, temperature=0.1), id="fused"),
        pytest.param(lambda z: nt_xent_loss(z, temperature=0.1, decoupled=True), id="decoupled"),
        pytest.param(
            lambda z: nt_xent_loss(z, torch.arange(6).repeat(2), temperature=0.1), id="generic"
        ),
        pytest.param(lambda z: nt_xent_loss(z, temperature=0.1, n_views=3), id="multicrop"),
        pytest.param(lambda z: directclr_loss(z[:6], z[6:], 20, temperature=0.1), id="directclr"),
    ],
)
def test_autocast_bf16_computes_in_float32(loss_fn) -> None:
    lin, x = _bf16_embeddings(12, seed=3)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        z = lin(x)
        assert z.dtype == torch.bfloat16
        loss = loss_fn(z)
    assert loss.dtype == torch.float32
    # Same (bf16-rounded) inputs in plain float32: the loss math itself is not in bf16.
    z32 = z.detach().float().requires_grad_(True)
    ref = loss_fn(z32)
    torch.testing.assert_close(loss.detach(), ref.detach(), rtol=1e-6, atol=1e-6)
    loss.backward()
    assert lin.weight.grad is not None and lin.weight.grad.dtype == torch.float32
    assert torch.isfinite(lin.weight.grad).all() and lin.weight.grad.abs().max() > 0


def test_info_nce_autocast_dtype() -> None:
    lin, x = _bf16_embeddings(8, seed=4)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        z = lin(x)
        loss = info_nce_loss(z[:4], z[4:], temperature=0.2)
    assert loss.dtype == torch.float32
    ref = info_nce_loss(z[:4].float(), z[4:].float(), temperature=0.2)
    torch.testing.assert_close(loss, ref, rtol=1e-6, atol=1e-6)


# ----------------------------------------------------------------------------- shape errors


def test_shape_errors() -> None:
    z = torch.randn(8, 4)
    with pytest.raises(ValueError, match="labels"):
        nt_xent_loss(z, torch.arange(7))
    with pytest.raises(ValueError, match="labels"):
        nt_xent_loss(z, torch.arange(8)[:, None])
    with pytest.raises(ValueError, match="n_views"):
        nt_xent_loss(torch.randn(7, 4))  # 7 rows, 2 views
    with pytest.raises(ValueError, match="n_views"):
        nt_xent_loss(z, n_views=3)
    with pytest.raises(ValueError, match="n_views"):
        nt_xent_loss(z, n_views=1)
    with pytest.raises(ValueError, match="d0"):
        directclr_loss(z[:4], z[4:], 0)
    with pytest.raises(ValueError, match="d0"):
        directclr_loss(z[:4], z[4:], 5)
    with pytest.raises(ValueError, match="d0"):
        directclr_loss(z[:4], z[4:], -1)
    with pytest.raises(ValueError):
        info_nce_loss(torch.randn(4, 3), torch.randn(5, 3))
    with pytest.raises(ValueError):
        contrastive_loss(z, torch.arange(8), torch.randn(8, 5), torch.arange(8), None, 0.1)


# ------------------------------------------------------------------------- fused SupCon


@pytest.mark.parametrize(
    "labels",
    [
        [0, 0, 1, 1, 2, 2, 3, 3],  # pairs
        [0, 1, 2, 3, 4, 5, 6, 0],  # mostly singletons: 6 anchors without a positive
        [5, 5, 5, 5, 5, 5, 5, 5],  # one class
        [0, 0, 0, 1, 2, 2, 7, -3],  # unequal classes, negative ids (CLAWS instance ids)
    ],
)
def test_fused_supcon_matches_loop_reference(labels: list[int]) -> None:
    """The mask-free fused SupCon equals Khosla et al.'s L_out written as loops."""
    g = torch.Generator().manual_seed(len(set(labels)))
    z = torch.randn(len(labels), 6, generator=g)
    y = torch.tensor(labels)
    _compare(lambda x: nt_xent_loss(x, y, temperature=0.3),
             lambda x: ref_supcon(x, y, 0.3), z)  # fmt: skip


def test_fused_supcon_candidates_and_normalizer() -> None:
    """Anchors as a slice of the candidates (the DDP layout): value and both gradients."""
    from contraseg.lightning_modules.losses.supcon import fused_supcon_loss

    g = torch.Generator().manual_seed(3)
    c = torch.randn(20, 5, generator=g, dtype=torch.float64)
    yc = torch.randint(0, 4, (20,), generator=g)
    rows = torch.arange(6, 12)

    def fused(cand: Tensor) -> Tensor:
        return fused_supcon_loss(cand[rows], yc[rows], cand, yc, rows, 0.2,
                                 normalizer=torch.tensor(2.5))  # fmt: skip

    def generic(cand: Tensor) -> Tensor:
        return contrastive_loss(cand[rows], yc[rows], cand, yc, rows, 0.2,
                                normalizer=torch.tensor(2.5))  # fmt: skip

    ours, ours_grad = _value_and_grad(fused, c)
    ref, ref_grad = _value_and_grad(generic, c)
    torch.testing.assert_close(ours.double(), ref.double(), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(ours_grad[0].double(), ref_grad[0].double(), rtol=1e-4, atol=1e-6)


def test_fused_supcon_no_positive_is_zero_and_finite() -> None:
    z = torch.randn(5, 4, requires_grad=True)
    loss = nt_xent_loss(z, torch.arange(5), temperature=0.01)
    loss.backward()
    assert loss.item() == 0.0 and torch.isfinite(z.grad).all() and z.grad.abs().sum() == 0
