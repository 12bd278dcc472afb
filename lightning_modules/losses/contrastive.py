r"""NT-Xent / SupCon-style contrastive loss with positives defined by index.

One formula covers SimCLR (two views, instance labels), multi-crop (``V`` views
per instance), supervised contrast (class labels, Khosla et al. 2020) and the
*decoupled* variant (Yeh et al. 2022) used by GLCNet, where positives are
removed from the denominator.

For an anchor :math:`i` with L2-normalised embedding :math:`z_i`, candidate set
:math:`C` (all embeddings, optionally gathered over DDP ranks), positives
:math:`P(i) = \{p \in C \setminus \{i\}: y_p = y_i\}` and
:math:`s_{ia} = z_i^\top z_a / \tau`:

.. math::

    \ell_i = -\frac{1}{|P(i)|} \sum_{p \in P(i)}
        \log \frac{\exp(s_{ip})}{\sum_{a \in A(i)} \exp(s_{ia})},
    \qquad
    A(i) = \begin{cases}
        C \setminus \{i\} & \text{NT-Xent (Chen et al. 2020, eq. 1)} \\
        C \setminus (\{i\} \cup P(i)) & \text{decoupled}
    \end{cases}

and :math:`\mathcal{L} = \frac{1}{|V|}\sum_{i \in V} \ell_i` over the anchors
:math:`V` that have at least one positive (and, when decoupled, one negative).
The denominator is a log-sum-exp, so the loss is finite for small temperatures
(0.01 and below) and is computed in float32 even under autocast.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from contraseg.lightning_modules.components import distributed as dist_utils
from contraseg.lightning_modules.losses.supcon import fused_supcon_loss


def check_temperature(temperature: float) -> float:
    """Validate a softmax temperature.

    Args:
        temperature: Candidate temperature.

    Returns:
        The temperature as a float.

    Raises:
        ValueError: If the temperature is not a finite number > 0.
    """
    t = float(temperature)
    if not math.isfinite(t) or t <= 0:
        raise ValueError(f"temperature must be a finite number > 0, got {temperature!r}")
    return t


def _check_pair(anchors: Tensor, candidates: Tensor) -> None:
    if anchors.ndim != 2 or candidates.ndim != 2 or anchors.shape[1] != candidates.shape[1]:
        raise ValueError(
            f"expected anchors (n, d) and candidates (m, d), got {tuple(anchors.shape)} "
            f"and {tuple(candidates.shape)}"
        )


def instance_labels(batch_size: int, n_views: int, device: torch.device | None = None) -> Tensor:
    """Instance ids for ``n_views`` view-major stacked views of ``batch_size`` images.

    The ids are offset by ``rank * batch_size`` so that they stay unique after an
    all-gather in DDP.

    Args:
        batch_size: Number of images per view on this rank.
        n_views: Number of views per image.
        device: Device of the result.

    Returns:
        Long tensor of shape ``(n_views * batch_size,)``.
    """
    ids = torch.arange(batch_size, device=device) + dist_utils.rank() * batch_size
    return ids.repeat(n_views)


def contrastive_loss(
    anchors: Tensor,
    anchor_labels: Tensor,
    candidates: Tensor,
    candidate_labels: Tensor,
    self_index: Tensor | None,
    temperature: float,
    decoupled: bool = False,
    normalizer: Tensor | None = None,
) -> Tensor:
    """Mean contrastive loss of ``anchors`` against ``candidates`` (see module docstring).

    Embeddings are L2-normalised here.  All similarity math runs in float32.

    Args:
        anchors: ``(n, d)`` anchor embeddings.
        anchor_labels: ``(n,)`` integer labels; equal labels are positives.
        candidates: ``(m, d)`` candidate embeddings (may include the anchors).
        candidate_labels: ``(m,)`` labels of the candidates.
        self_index: ``(n,)`` column of each anchor inside ``candidates`` (excluded
            from positives and denominator), or ``None`` if anchors are not among
            the candidates.
        temperature: Softmax temperature ``tau > 0``.
        decoupled: Drop positives from the denominator (DCL / GLCNet).
        normalizer: Optional number of valid anchors to divide by instead of the
            local count (used to make DDP averaging exact).

    Returns:
        Scalar loss.
    """
    tau = check_temperature(temperature)
    _check_pair(anchors, candidates)
    with torch.autocast(device_type=anchors.device.type, enabled=False):
        a = F.normalize(anchors.float(), dim=1)
        c = F.normalize(candidates.float(), dim=1)
        logits = a @ c.T / tau
        pos = anchor_labels[:, None] == candidate_labels[None, :]
        if self_index is not None:
            rows = torch.arange(a.shape[0], device=a.device)
            self_mask = torch.zeros_like(pos)
            self_mask[rows, self_index] = True
            pos = pos & ~self_mask
            excluded = self_mask | pos if decoupled else self_mask
        else:
            excluded = pos if decoupled else None
        denom = logits if excluded is None else logits.masked_fill(excluded, float("-inf"))
        lse = torch.logsumexp(denom, dim=1)
        n_pos = pos.sum(dim=1)
        pos_mean = (logits * pos).sum(dim=1) / n_pos.clamp(min=1)
        valid = (n_pos > 0) & torch.isfinite(lse)
        per_anchor = torch.where(valid, lse - pos_mean, torch.zeros_like(lse))
        if normalizer is None:
            count = valid.sum().clamp(min=1).to(per_anchor.dtype)
        else:  # may be fractional (global count / world size); 0 only if no anchor is valid
            count = normalizer.to(per_anchor.dtype).clamp(min=torch.finfo(torch.float32).tiny)
        return per_anchor.sum() / count


class _PairedLogSoftmaxNLL(torch.autograd.Function):
    """Fused ``mean_i [logsumexp_j s_ij - s_i,pos(i)]`` with ``s = a c^T / tau``.

    Saves only the softmax matrix and computes the gradients analytically
    (``dS = (P - onehot) / n``): the forward is one matrix product, one fused
    ``log_softmax`` and an in-place ``exp`` (the softmax kept for backward), the
    backward two matrix products, instead of the dozen passes over the ``n x m``
    matrix that an autograd graph of masks (or a cross-entropy over it) takes.
    """

    @staticmethod
    def forward(  # noqa: D102
        ctx: torch.autograd.function.FunctionCtx,
        a: Tensor,
        c: Tensor | None,
        pos_index: Tensor,
        self_index: Tensor | None,
        tau: float,
        decoupled: bool,
        count: float,
    ) -> Tensor:
        rows = torch.arange(a.shape[0], device=a.device)
        symmetric = c is None
        s = (a / tau) @ (a if symmetric else c).T
        if self_index is not None:
            s[rows, self_index] = float("-inf")
        if decoupled:  # the positive leaves the denominator: lse over the rest
            pos_logit = s[rows, pos_index]
            s[rows, pos_index] = float("-inf")
            lse = torch.logsumexp(s, dim=1)
            loss = (lse - pos_logit).sum() / count
            s.sub_(lse[:, None]).exp_()  # s is now the softmax P over the allowed columns
        else:  # one fused log-softmax pass, then P in place (measured: benchmarks/losses.py)
            s = torch.log_softmax(s, dim=1)
            loss = -s[rows, pos_index].sum() / count
            s.exp_()
        ctx.save_for_backward(a, c, pos_index, s)
        ctx.scale = 1.0 / (tau * count)
        ctx.symmetric = symmetric
        return loss

    @staticmethod
    def backward(  # noqa: D102
        ctx: torch.autograd.function.FunctionCtx, grad: Tensor
    ) -> tuple[Tensor | None, ...]:
        a, c, pos_index, p = ctx.saved_tensors
        scale = grad * ctx.scale
        grad_a = grad_c = None
        if ctx.symmetric:  # s = a a^T: dL/da = (P + P^T) a - onehot a - onehot^T a
            # two products instead of materialising P + P^T (a strided n x n pass)
            grad_a = torch.mm(p, a).addmm_(p.T, a).sub_(a[pos_index])
            grad_a.index_add_(0, pos_index, a, alpha=-1.0)
            return grad_a * scale, None, None, None, None, None, None
        if ctx.needs_input_grad[0]:
            grad_a = (p @ c - c[pos_index]) * scale
        if ctx.needs_input_grad[1]:
            grad_c = (p.T @ a).index_add_(0, pos_index, a, alpha=-1.0) * scale
        return grad_a, grad_c, None, None, None, None, None


def paired_contrastive_loss(
    anchors: Tensor,
    candidates: Tensor,
    positive_index: Tensor,
    self_index: Tensor | None,
    temperature: float,
    decoupled: bool = False,
) -> Tensor:
    """Contrastive loss when every anchor has exactly one positive, given by index.

    Same value as :func:`contrastive_loss` with one positive per anchor, but
    fused: about 2x faster and with one ``n x m`` buffer kept for backward.

    Args:
        anchors: ``(n, d)`` anchor embeddings (normalised here).
        candidates: ``(m, d)`` candidate embeddings (normalised here).
        positive_index: ``(n,)`` column of each anchor's positive in ``candidates``.
        self_index: ``(n,)`` column of each anchor itself, or ``None``.
        temperature: Softmax temperature ``tau > 0``.
        decoupled: Drop the positive from the denominator.

    Returns:
        Scalar loss (mean over anchors).
    """
    tau = check_temperature(temperature)
    _check_pair(anchors, candidates)
    with torch.autocast(device_type=anchors.device.type, enabled=False):
        a = F.normalize(anchors.float(), dim=1)
        c = None if candidates is anchors else F.normalize(candidates.float(), dim=1)
        return _PairedLogSoftmaxNLL.apply(
            a, c, positive_index, self_index, tau, decoupled, float(a.shape[0])
        )


def nt_xent_loss(
    embeddings: Tensor,
    labels: Tensor | None = None,
    temperature: float = 0.1,
    decoupled: bool = False,
    gather_distributed: bool = False,
    n_views: int = 2,
) -> Tensor:
    """NT-Xent over all views of a batch.

    With ``labels=None`` the ``N = n_views * B`` rows are ``n_views`` view-major
    stacked views of ``B`` images and the positives of a row are the other views
    of its image (SimCLR for two views, the multi-crop generalisation for more).
    With class ``labels`` it is SupCon (Khosla et al. 2020).

    Args:
        embeddings: ``(N, d)`` local embeddings, views stacked along dim 0.
        labels: Optional ``(N,)`` integer labels defining positives; they must be
            unique across ranks for instance discrimination under DDP (see
            :func:`instance_labels`).
        temperature: Softmax temperature ``tau > 0``.
        decoupled: Drop positives from the denominator (decoupled contrastive loss).
        gather_distributed: Contrast local anchors against the embeddings of all
            DDP ranks; gradients flow through the gather so that, after DDP's
            gradient averaging, the result equals one process on the global batch.
        n_views: Views per image when ``labels`` is ``None``.

    Returns:
        Scalar loss.
    """
    check_temperature(temperature)
    n = embeddings.shape[0]
    device = embeddings.device
    gather = gather_distributed and dist_utils.is_distributed()
    offset = dist_utils.rank() * n if gather else 0
    candidates = dist_utils.gather_with_grad(embeddings) if gather else embeddings
    self_index = torch.arange(n, device=device) + offset
    if labels is None:
        if n_views < 2 or n % n_views:
            raise ValueError(f"{n} embeddings cannot be split into n_views={n_views} views")
        # Decoupled with only 2 candidates (one image, one rank) leaves no negative: the
        # generic path skips such anchors, the fused one would return -inf.
        if n_views == 2 and not (decoupled and candidates.shape[0] <= 2):
            half = n // 2
            positive_index = (torch.arange(n, device=device) + half) % n + offset
            return paired_contrastive_loss(
                embeddings, candidates, positive_index, self_index, temperature, decoupled
            )
        labels = instance_labels(n // n_views, n_views, device)
    if labels.shape != (n,):
        raise ValueError(f"labels must have shape ({n},), got {tuple(labels.shape)}")
    if gather:
        candidate_labels = dist_utils.gather_no_grad(labels)
        normalizer = _global_valid_count(labels, candidate_labels, self_index, decoupled)
    else:
        candidate_labels, normalizer = labels, None
    if not decoupled:  # one softmax buffer, analytic backward (losses/supcon.py)
        return fused_supcon_loss(embeddings, labels, candidates, candidate_labels, self_index,
                                 temperature, normalizer)  # fmt: skip
    return contrastive_loss(
        embeddings,
        labels,
        candidates,
        candidate_labels,
        self_index,
        temperature,
        decoupled,
        normalizer,
    )


@torch.no_grad()
def _global_valid_count(
    labels: Tensor, candidate_labels: Tensor, self_index: Tensor, decoupled: bool
) -> Tensor:
    """Valid anchors over all ranks divided by world size (DDP averages rank losses)."""
    same = labels[:, None] == candidate_labels[None, :]
    n_same = same.sum(dim=1)  # includes the anchor itself
    valid = n_same > 1
    if decoupled:
        valid &= n_same < candidate_labels.shape[0]
    total = valid.sum().to(torch.float32)
    torch.distributed.all_reduce(total)
    return total / dist_utils.world_size()
