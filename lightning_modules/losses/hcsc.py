r"""HCSC losses (Guo et al., CVPR 2022): selected instance and prototype contrast.

With L2-normalised queries :math:`q_i`, the prototype hierarchy of
:mod:`contraseg.lightning_modules.components.prototypes` (centroids :math:`C^l`, concentrations
:math:`\phi^l`, sample clusters :math:`a^l(i)`, parents :math:`p^l(c)`) and the MoCo queue
:math:`Q`:

**Instance selection** (paper eq. 5-6; official ``sample_neg_instance``): per level, queue
key :math:`j` stays a negative of query :math:`i` with probability

.. math::

    \pi^l_{ij} = 1 - \operatorname{softmax}_c\!\big(Q_j^\top C^l_c / \phi^l_c\big)_{a^l(i)},

drawn as a Bernoulli (probability clamped to :math:`[0, 0.999]` as in the official code), and
the level's InfoNCE (:func:`~contraseg.lightning_modules.losses.moco.queue_info_nce_loss`) uses the
kept keys; the instance loss is the *sum* over levels.

**Prototype contrast** (paper eq. 7-9; official ``get_protos``): the positive of query
:math:`i` at level :math:`l` is its prototype :math:`a^l(i)`; the negatives are the
prototypes that are no query's positive in the batch,

.. math::

    \ell^l_i = -\log \frac{\exp(q_i^\top C^l_{a(i)} / \phi^l_{a(i)})}
        {\exp(q_i^\top C^l_{a(i)} / \phi^l_{a(i)})
         + \sum_{c \in N} m_{ic} \exp(q_i^\top C^l_c / \phi^l_c)},

with, below the top level, :math:`m_{ic} \sim \mathrm{Bernoulli}(1 -
\operatorname{softmax}_{u}(C^{l\top}_c C^{l+1}_u / \phi^{l+1}_u)_{p^l(a(i))})` (clamped to
:math:`[10^{-4}, 0.999]`), and :math:`m = 1` at the top level; the prototype loss is the
*mean* over levels.  The official negative set is ``range(im2cluster.max())`` minus the
batch positives, which never includes the highest cluster id (an off-by-one); it is not
reproduced here: every non-positive prototype is a negative.  A dropped negative is
removed (``masked="drop"``) or, as in the official code, its logit set to 0
(``masked="zero"``: :math:`\exp(0)` stays in the denominator).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from contraseg.lightning_modules.losses.moco import masked_logits

__all__ = [
    "bernoulli_keep",
    "instance_keep_probability",
    "prototype_keep_probability",
    "prototype_negatives",
    "prototype_nce_loss",
]


@torch.no_grad()
def instance_keep_probability(
    queue: Tensor, centroids: Tensor, phi: Tensor, query_clusters: Tensor
) -> Tensor:
    """``(n, K)`` probability that queue key ``j`` stays a negative of query ``i``.

    Args:
        queue: ``(K, d)`` queue keys (unit norm).
        centroids: ``(k, d)`` prototypes of one level.
        phi: ``(k,)`` their concentrations (clamped to >= 1e-3 as officially).
        query_clusters: ``(n,)`` prototype of each query at this level.

    Returns:
        Probabilities clamped to ``[0, 0.999]``.
    """
    logits = queue.float() @ centroids.float().T / phi.float().clamp(min=1e-3)
    p = logits.softmax(dim=1)  # (K, k)
    return (1.0 - p[:, query_clusters].T).clamp(0.0, 0.999)


@torch.no_grad()
def prototype_keep_probability(
    centroids: Tensor,
    upper_centroids: Tensor,
    upper_phi: Tensor,
    positive_parents: Tensor,
    negatives: Tensor,
) -> Tensor:
    """``(n, m)`` probability that negative prototype ``negatives[j]`` is kept for query ``i``.

    Args:
        centroids: ``(k_l, d)`` prototypes of level ``l``.
        upper_centroids: ``(k_{l+1}, d)`` prototypes of level ``l + 1``.
        upper_phi: ``(k_{l+1},)`` their concentrations.
        positive_parents: ``(n,)`` parent (level ``l + 1``) of each query's positive.
        negatives: ``(m,)`` ids of the level-``l`` negative prototypes.

    Returns:
        Probabilities clamped to ``[1e-4, 0.999]``.
    """
    logits = centroids[negatives].float() @ upper_centroids.float().T / upper_phi.float()
    p = logits.softmax(dim=1)  # (m, k_{l+1})
    return (1.0 - p[:, positive_parents].T).clamp(1e-4, 0.999)


def bernoulli_keep(probability: Tensor, generator: torch.Generator | None = None) -> Tensor:
    """Bool mask drawn with ``P(True) = probability`` (torch's RNG unless ``generator``)."""
    return torch.bernoulli(probability, generator=generator).bool()


@torch.no_grad()
def prototype_negatives(num_prototypes: int, positives: Tensor) -> Tensor:
    """Ids of the prototypes that are no query's positive (every one of them, see above)."""
    is_positive = torch.zeros(num_prototypes, dtype=torch.bool, device=positives.device)
    is_positive[positives] = True
    return (~is_positive).nonzero()[:, 0]


def prototype_nce_loss(
    queries: Tensor,
    centroids: Tensor,
    phi: Tensor,
    positives: Tensor,
    negatives: Tensor,
    keep: Tensor | None = None,
    masked: str = "drop",
) -> Tensor:
    """ProtoNCE term of one level (module docstring), mean over queries.

    Args:
        queries: ``(n, d)`` queries (normalised here).
        centroids: ``(k, d)`` prototypes (unit norm; no gradient).
        phi: ``(k,)`` concentrations (temperatures per prototype).
        positives: ``(n,)`` prototype of each query.
        negatives: ``(m,)`` negative prototype ids.
        keep: Optional bool ``(n, m)`` selection of the negatives.
        masked: ``"drop"`` or ``"zero"`` (official).

    Returns:
        Scalar float32 loss.

    Raises:
        ValueError: On mismatched shapes.
    """
    if queries.ndim != 2 or centroids.ndim != 2 or queries.shape[1] != centroids.shape[1]:
        raise ValueError(f"queries (n, d) and centroids (k, d) expected, got "
                         f"{tuple(queries.shape)} and {tuple(centroids.shape)}")  # fmt: skip
    if positives.shape != (queries.shape[0],) or phi.shape != (centroids.shape[0],):
        raise ValueError(
            f"positives ({queries.shape[0]},) and phi ({centroids.shape[0]},) expected, got "
            f"{tuple(positives.shape)} and {tuple(phi.shape)}"
        )
    with torch.autocast(device_type=queries.device.type, enabled=False):
        q = F.normalize(queries.float(), dim=1)
        c, phi = centroids.detach().float(), phi.detach().float()
        positive = (q * c[positives]).sum(dim=1, keepdim=True) / phi[positives, None]
        negative = q @ c[negatives].T / phi[negatives][None, :]
        if keep is not None:
            negative = masked_logits(negative, keep, masked)
        logits = torch.cat([positive, negative], dim=1)
        return (torch.logsumexp(logits, dim=1) - positive[:, 0]).mean()
