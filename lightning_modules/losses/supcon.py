r"""Supervised contrastive loss (Khosla et al., NeurIPS 2020, :math:`L^{sup}_{out}`), fused.

For anchors :math:`a \in A` with unit embeddings :math:`z_a`, candidates :math:`C` (the
anchors themselves, or every DDP rank's embeddings), labels :math:`y` and
:math:`s_{ac} = z_a^\top z_c / \tau`:

.. math::

    \mathcal{L}^{sup}_{out} = \frac{1}{|V|} \sum_{a \in V} \frac{-1}{|P(a)|}
        \sum_{p \in P(a)} \log \frac{\exp(s_{ap})}{\sum_{c \in C \setminus \{a\}} \exp(s_{ac})},
    \qquad P(a) = \{p \in C \setminus \{a\} : y_p = y_a\}

(eq. 2 of the paper), :math:`V` the anchors with at least one positive.  Since the
positives' term is linear in :math:`s`,
:math:`\sum_{p \in P(a)} s_{ap} = z_a^\top (S_{y_a} - z_a) / \tau` with
:math:`S_k = \sum_{c: y_c = k} z_c` the per-class sum of the candidates, so neither the
loss nor its gradient needs an ``n x m`` positive mask:

.. math::

    \frac{\partial \mathcal{L}}{\partial s_{ac}} = \frac{w_a}{|V|}
        \Bigl(P_{ac} - \frac{[y_c = y_a,\ c \ne a]}{|P(a)|}\Bigr),
    \qquad P = \operatorname{softmax}_{c \ne a}(s_{a\cdot}),

and the mask's products with :math:`z` are class sums again (``index_add``).  Forward and
backward keep one ``n x m`` float buffer (the softmax) where an autograd graph of masks
keeps several: measured in ``benchmarks/losses.py --loss supcon``.  The log-sum-exp makes
it finite at temperature 0.01; it runs in float32 under autocast.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["fused_supcon_loss"]


def _class_index(anchor_labels: Tensor, candidate_labels: Tensor) -> tuple[Tensor, Tensor, int]:
    """Dense class ids ``0..K-1`` shared by anchors and candidates."""
    both = torch.cat([anchor_labels, candidate_labels])
    uniq, inverse = torch.unique(both, return_inverse=True)
    n = anchor_labels.shape[0]
    return inverse[:n], inverse[n:], int(uniq.numel())


class _FusedSupCon(torch.autograd.Function):
    """``sum_a w_a [lse_a - mean_{p in P(a)} s_ap] / count`` with an analytic backward."""

    @staticmethod
    def forward(  # noqa: D102
        ctx: torch.autograd.function.FunctionCtx,
        a: Tensor,
        c: Tensor | None,
        ya: Tensor,
        yc: Tensor,
        n_classes: int,
        self_index: Tensor,
        tau: float,
        count: Tensor | None,
    ) -> Tensor:
        symmetric = c is None
        cand = a if symmetric else c
        rows = torch.arange(a.shape[0], device=a.device)
        class_sum = a.new_zeros(n_classes, a.shape[1]).index_add_(0, yc, cand)
        class_count = torch.bincount(yc, minlength=n_classes)
        n_pos = class_count[ya] - 1  # the anchor itself is among the candidates of its class
        pos_sum = ((class_sum[ya] - cand[self_index]) * a).sum(dim=1) / tau
        s = (a / tau) @ cand.T
        s[rows, self_index] = float("-inf")
        lse = torch.logsumexp(s, dim=1)
        valid = (n_pos > 0) & torch.isfinite(lse)
        if count is None:
            count = valid.sum().clamp(min=1).to(a.dtype)
        weight = valid.to(a.dtype) / count
        per_anchor = torch.where(valid, lse - pos_sum / n_pos.clamp(min=1), torch.zeros_like(lse))
        loss = (per_anchor * valid).sum() / count
        s.sub_(lse[:, None]).exp_()  # the softmax P over c != a
        s.nan_to_num_(0.0)  # rows without any candidate (lse = -inf)
        coef = weight / n_pos.clamp(min=1)
        ctx.save_for_backward(a, c, ya, yc, self_index, s, weight, coef)
        ctx.n_classes, ctx.tau, ctx.symmetric = n_classes, tau, symmetric
        return loss

    @staticmethod
    def backward(  # noqa: D102
        ctx: torch.autograd.function.FunctionCtx, grad: Tensor
    ) -> tuple[Tensor | None, ...]:
        a, c, ya, yc, self_index, p, weight, coef = ctx.saved_tensors
        cand = a if ctx.symmetric else c
        k, scale = ctx.n_classes, grad / ctx.tau
        # dS = W P - D M with W = diag(weight), D = diag(coef), M the positive mask.
        wp = p.mul_(weight[:, None])
        class_sum = cand.new_zeros(k, cand.shape[1]).index_add_(0, yc, cand)
        grad_a = wp @ cand - coef[:, None] * (class_sum[ya] - cand[self_index])  # dS c
        # dS^T a: P^T W a minus, for each candidate j, the coef-weighted anchors of its class
        # other than the anchor sitting at column j.
        da = coef[:, None] * a
        anchor_sum = a.new_zeros(k, a.shape[1]).index_add_(0, ya, da)
        grad_c = wp.T @ a - anchor_sum[yc]
        grad_c.index_add_(0, self_index, da)
        if ctx.symmetric:
            return (grad_a + grad_c) * scale, None, None, None, None, None, None, None
        return grad_a * scale, grad_c * scale, None, None, None, None, None, None


def fused_supcon_loss(
    anchors: Tensor,
    anchor_labels: Tensor,
    candidates: Tensor,
    candidate_labels: Tensor,
    self_index: Tensor,
    temperature: float,
    normalizer: Tensor | None = None,
) -> Tensor:
    """SupCon :math:`L^{sup}_{out}` of ``anchors`` against ``candidates``.

    Same value and gradient as
    :func:`~contraseg.lightning_modules.losses.contrastive.contrastive_loss` (not decoupled) with
    ``self_index`` given, without building any ``n x m`` mask.

    Args:
        anchors: ``(n, d)`` embeddings (normalised here).
        anchor_labels: ``(n,)`` integer labels.
        candidates: ``(m, d)`` embeddings containing the anchors (pass ``anchors`` itself
            for the single-process case: the symmetric path is then used).
        candidate_labels: ``(m,)`` labels of the candidates.
        self_index: ``(n,)`` column of each anchor in ``candidates``.
        temperature: Softmax temperature (validated by the caller).
        normalizer: Number of valid anchors to divide by (DDP: global count / world size);
            default the local count.

    Returns:
        Scalar loss.
    """
    with torch.autocast(device_type=anchors.device.type, enabled=False):
        a = F.normalize(anchors.float(), dim=1)
        c = None if candidates is anchors else F.normalize(candidates.float(), dim=1)
        ya, yc, k = _class_index(anchor_labels, candidate_labels)
        count = (
            None
            if normalizer is None
            else normalizer.float().clamp(min=torch.finfo(torch.float32).tiny)
        )
        return _FusedSupCon.apply(a, c, ya, yc, k, self_index, float(temperature), count)
