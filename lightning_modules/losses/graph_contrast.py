r"""Node-level graph contrast: GRACE's loss and ARIEL's information regulariser.

GRACE (Zhu, Xu, Yu, Liu, Wu, Wang; ICML GRL+ workshop 2020, arXiv 2006.04131), eq. (1)-(2),
as its and ARIEL's code compute it (ARIEL ``model.py:81-133``): with projections
:math:`u_i, v_i` of node :math:`i` in two views, :math:`\theta` the cosine similarity and
:math:`\tau` the temperature,

.. math::

    \ell(u_i, v_i) = -\log \frac{e^{\theta(u_i, v_i)/\tau}}
        {\sum_{k} e^{\theta(u_i, v_k)/\tau} + \sum_{k \ne i} e^{\theta(u_i, u_k)/\tau}},
    \qquad
    \mathcal{L}_i = \tfrac12 \big(\ell(u_i, v_i) + \ell(v_i, u_i)\big)

(inter-view negatives :math:`v_k` and intra-view negatives :math:`u_k`).  ARIEL (Feng, Jing,
Zhu, Tong; WWW 2022, arXiv 2202.06491) adds, per node, with
:math:`s(a, b)_i = e^{\theta(a_i, b_i)/\tau}` and :math:`z` the clean graph's projection,

.. math::

    \mathcal{R}_i = \max\big(0,\; 2\,s(z^1, z^2)_i - \mathrm{sg}[s(z^1, z)_i]
        - \mathrm{sg}[s(z^2, z)_i]\big)

(official ``train.py:41-49``; ``sg`` is stop-gradient): the agreement of the two views may
not exceed what each view shares with the clean graph.  Both are computed in float32 from
log-sum-exp, so no exponential overflows at small temperatures.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["grace_loss", "information_regularizer", "view_similarity"]


def _directed(a: Tensor, b: Tensor, temperature: float, chunk_size: int | None) -> Tensor:
    """``l(a_i, b_i)`` for every node (rows in chunks of ``chunk_size``)."""
    n = a.shape[0]
    step = n if chunk_size is None else chunk_size
    out = []
    for start in range(0, n, step):
        rows = slice(start, min(n, start + step))
        between = a[rows] @ b.T / temperature  # (r, n)
        within = a[rows] @ a.T / temperature
        index = torch.arange(rows.start, rows.stop, device=a.device)
        local = torch.arange(len(index), device=a.device)
        within[local, index] = float("-inf")  # k != i
        positive = between[local, index]
        out.append(torch.logsumexp(torch.cat([between, within], 1), 1) - positive)
    return torch.cat(out)


def grace_loss(h1: Tensor, h2: Tensor, temperature: float = 0.5,
               chunk_size: int | None = None) -> Tensor:  # fmt: skip
    r"""GRACE's symmetric node-level InfoNCE :math:`\mathcal{L}_i` (module docstring), per node.

    Args:
        h1: ``(n, d)`` projections of view 1.
        h2: ``(n, d)`` projections of view 2 (same node order).
        temperature: :math:`\tau > 0`.
        chunk_size: Rows of the ``n x n`` similarity computed at once (``None``: all;
            GRACE's ``batched_semi_loss`` for large graphs); the result does not depend on it.

    Returns:
        ``(n,)`` losses (the mean is the objective).
    """
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    if h1.shape != h2.shape or h1.dim() != 2:
        raise ValueError(f"views must be (n, d) of one shape, got {tuple(h1.shape)} and "
                         f"{tuple(h2.shape)}")  # fmt: skip
    a, b = F.normalize(h1.float(), dim=1), F.normalize(h2.float(), dim=1)
    forward = _directed(a, b, temperature, chunk_size)
    return 0.5 * (forward + _directed(b, a, temperature, chunk_size))


def view_similarity(h1: Tensor, h2: Tensor, temperature: float = 0.5) -> Tensor:
    r""":math:`s(h^1, h^2)_i = e^{\theta(h^1_i, h^2_i)/\tau}` per node, ``(n,)``."""
    return torch.exp(F.cosine_similarity(h1.float(), h2.float(), dim=1) / temperature)


def information_regularizer(s12: Tensor, s1z: Tensor, s2z: Tensor) -> Tensor:
    r"""ARIEL's :math:`\operatorname{mean}_i \mathcal{R}_i` (module docstring).

    Args:
        s12: :math:`s(z^1, z^2)`, ``(n,)`` (carries the gradient).
        s1z: :math:`s(z^1, z)`, ``(n,)`` (detached here).
        s2z: :math:`s(z^2, z)`, ``(n,)`` (detached here).
    """
    return torch.clamp(2 * s12 - s1z.detach() - s2z.detach(), min=0).mean()
