r"""DirectCLR loss (Jing et al., ICLR 2022): InfoNCE on a sub-vector of the representation.

DirectCLR removes the projector and applies the InfoNCE loss directly to the
first :math:`d_0` dimensions of the encoder representation
:math:`r \in \mathbb{R}^{d}`: :math:`z = r_{[:d_0]} / \lVert r_{[:d_0]} \rVert`.
The loss is the symmetric cross-view InfoNCE

.. math::

    \mathcal{L} = \tfrac12 \mathrm{NCE}(z^{(1)}, z^{(2)}) + \tfrac12 \mathrm{NCE}(z^{(2)}, z^{(1)}),
    \qquad
    \mathrm{NCE}(q, k) = -\frac1n \sum_i \log
        \frac{\exp(q_i^\top k_i / \tau)}{\sum_j \exp(q_i^\top k_j / \tau)},

where :math:`j` runs over the keys of the whole (gathered) batch.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from contraseg.lightning_modules.components import distributed as dist_utils
from contraseg.lightning_modules.losses.contrastive import check_temperature


def info_nce_loss(
    queries: Tensor, keys: Tensor, temperature: float = 0.1, gather_distributed: bool = False
) -> Tensor:
    """Cross-view InfoNCE: query ``i`` must pick key ``i`` among all keys.

    Args:
        queries: ``(n, d)`` query embeddings (normalised here).
        keys: ``(n, d)`` key embeddings, row ``i`` is the positive of query ``i``.
        temperature: Softmax temperature ``tau > 0``.
        gather_distributed: Use the keys of all DDP ranks as candidates (with
            gradients through the gather).

    Returns:
        Scalar loss.
    """
    tau = check_temperature(temperature)
    if queries.shape != keys.shape or queries.ndim != 2:
        raise ValueError(
            f"queries and keys must both be (n, d), got {tuple(queries.shape)} "
            f"and {tuple(keys.shape)}"
        )
    with torch.autocast(device_type=queries.device.type, enabled=False):
        q = F.normalize(queries.float(), dim=1)
        k = F.normalize(keys.float(), dim=1)
        target = torch.arange(q.shape[0], device=q.device)
        if gather_distributed and dist_utils.is_distributed():
            k = dist_utils.gather_with_grad(k)
            target = target + dist_utils.rank() * q.shape[0]
        return F.cross_entropy(q @ k.T / tau, target)


def directclr_loss(
    r1: Tensor,
    r2: Tensor,
    d0: int,
    temperature: float = 0.1,
    gather_distributed: bool = False,
) -> Tensor:
    """Symmetric InfoNCE on the first ``d0`` dimensions of two views' representations.

    Args:
        r1: ``(n, d)`` representations of view 1.
        r2: ``(n, d)`` representations of view 2.
        d0: Number of leading dimensions the loss sees (``0 < d0 <= d``).
        temperature: Softmax temperature ``tau > 0``.
        gather_distributed: Contrast against keys gathered from all DDP ranks.

    Returns:
        Scalar loss.
    """
    if not 0 < d0 <= r1.shape[1]:
        raise ValueError(f"d0 must be in (0, {r1.shape[1]}], got {d0}")
    z1, z2 = r1[:, :d0], r2[:, :d0]
    return 0.5 * (
        info_nce_loss(z1, z2, temperature, gather_distributed)
        + info_nce_loss(z2, z1, temperature, gather_distributed)
    )
