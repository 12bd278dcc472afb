r"""InfoNCE of queries against their keys and a queue of negatives (MoCo, He et al. 2020).

For L2-normalised queries :math:`q_i` (online encoder), their positive keys :math:`k_i`
(momentum encoder, no gradient) and a queue :math:`Q \in \mathbb{R}^{K \times d}` of past
keys, MoCo's eq. 1 (MoCo v2: the same loss with an MLP head and stronger views) is

.. math::

    \mathcal{L} = -\frac1n \sum_i \log
        \frac{\exp(q_i^\top k_i / \tau)}
             {\exp(q_i^\top k_i / \tau) + \sum_{j=1}^{K} \exp(q_i^\top Q_j / \tau)}.

HCSC's *instance selection* (Guo et al. 2022) keeps queue key :math:`j` as a negative of
query :math:`i` only where a Bernoulli mask :math:`m_{ij} = 1`.  Two readings of "drop":

* ``masked="drop"``: :math:`\sum_j m_{ij} \exp(q_i^\top Q_j / \tau)`, the key is removed;
* ``masked="zero"``: the official code multiplies the *logit* by the mask
  (``hcsc.py``: ``logit * mask``), so a dropped key contributes :math:`\exp(0) = 1` to
  the denominator instead of vanishing.

Everything runs in float32 under autocast with a log-sum-exp denominator, so the loss is
finite at :math:`\tau = 0.01`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from contraseg.lightning_modules.losses.contrastive import check_temperature

__all__ = ["MASKED_MODES", "masked_logits", "queue_info_nce", "queue_info_nce_loss"]

MASKED_MODES = ("drop", "zero")


def _check(queries: Tensor, keys: Tensor, queue: Tensor) -> None:
    if queries.ndim != 2 or queries.shape != keys.shape:
        raise ValueError(
            f"queries and keys must both be (n, d), got {tuple(queries.shape)} and "
            f"{tuple(keys.shape)}"
        )
    if queue.ndim != 2 or queue.shape[1] != queries.shape[1]:
        raise ValueError(
            f"queue must be (K, {queries.shape[1]}), got {tuple(queue.shape)}"
        )


def masked_logits(logits: Tensor, keep: Tensor, masked: str) -> Tensor:
    """Apply a keep-mask to logits: ``drop`` sets dropped ones to -inf, ``zero`` to 0.

    Args:
        logits: Float logits (already divided by the temperature).
        keep: Bool (or 0/1) mask of the same shape.
        masked: ``"drop"`` or ``"zero"`` (the official HCSC multiplication by the mask).

    Returns:
        The masked logits.

    Raises:
        ValueError: On an unknown mode or a mask of another shape.
    """
    if masked not in MASKED_MODES:
        raise ValueError(f"masked must be one of {MASKED_MODES}, got {masked!r}")
    if keep.shape != logits.shape:
        raise ValueError(f"mask shape {tuple(keep.shape)} != logits {tuple(logits.shape)}")
    fill = float("-inf") if masked == "drop" else 0.0
    return logits.masked_fill(~keep.bool(), fill)


def queue_info_nce(
    queries: Tensor,
    keys: Tensor,
    queue: Tensor,
    temperature: float = 0.2,
    keep: Tensor | None = None,
    masked: str = "drop",
) -> tuple[Tensor, Tensor]:
    """MoCo's InfoNCE (module docstring) and its instance accuracy from the same logits.

    Without ``keep`` the loss is one fused log-softmax cross-entropy over the
    ``n x (1 + K)`` logits (target column 0), as the two-view NT-Xent's one-positive path;
    with ``keep`` a masked log-sum-exp.  ``keys`` and ``queue`` get no gradient.  The
    accuracy is the share of queries whose positive logit beats every *kept* negative
    (MoCo's top-1 "instance discrimination" accuracy), read off the logits the loss
    already built, so logging it costs no second ``n x K`` product.

    Args:
        queries: ``(n, d)`` query embeddings (normalised here).
        keys: ``(n, d)`` positive keys (normalised here; detached).
        queue: ``(K, d)`` negative keys (normalised here; detached).
        temperature: Softmax temperature ``tau > 0``.
        keep: Optional bool ``(n, K)``: queue key ``j`` is a negative of query ``i``.
        masked: How a dropped negative is removed, ``"drop"`` or ``"zero"``.

    Returns:
        ``(loss, accuracy)``: the scalar float32 loss (mean over queries) and the detached
        scalar accuracy.

    Raises:
        ValueError: On shapes that do not match, a bad temperature or mask mode.
    """
    loss, accuracy = _queue_info_nce(queries, keys, queue, temperature, keep, masked, True)
    assert accuracy is not None
    return loss, accuracy


def _queue_info_nce(queries: Tensor, keys: Tensor, queue: Tensor, temperature: float,
                    keep: Tensor | None, masked: str,
                    with_accuracy: bool) -> tuple[Tensor, Tensor | None]:  # fmt: skip
    """The loss, and the accuracy only when asked (HCSC calls the loss many times a step)."""
    tau = check_temperature(temperature)
    _check(queries, keys, queue)
    with torch.autocast(device_type=queries.device.type, enabled=False):
        q = F.normalize(queries.float(), dim=1)
        k = F.normalize(keys.detach().float(), dim=1)
        negatives = q @ F.normalize(queue.detach().float(), dim=1).T / tau
        if keep is not None:
            negatives = masked_logits(negatives, keep, masked)
        positive = (q * k).sum(dim=1, keepdim=True) / tau
        logits = torch.cat([positive, negatives], dim=1)
        accuracy = None
        if with_accuracy:
            with torch.no_grad():
                hardest = (negatives.max(dim=1).values if negatives.shape[1]
                           else positive[:, 0] - 1)  # fmt: skip
                accuracy = (positive[:, 0] > hardest).float().mean()
        if keep is None:  # one fused log-softmax (MoCo's cross-entropy with target 0)
            target = torch.zeros(q.shape[0], dtype=torch.long, device=q.device)
            return F.cross_entropy(logits, target), accuracy
        return (torch.logsumexp(logits, dim=1) - positive[:, 0]).mean(), accuracy


def queue_info_nce_loss(
    queries: Tensor,
    keys: Tensor,
    queue: Tensor,
    temperature: float = 0.2,
    keep: Tensor | None = None,
    masked: str = "drop",
) -> Tensor:
    """MoCo's InfoNCE (module docstring), optionally with a negative keep-mask.

    The loss of :func:`queue_info_nce` without its accuracy; same arguments.

    Returns:
        Scalar float32 loss (mean over queries).

    Raises:
        ValueError: On shapes that do not match, a bad temperature or mask mode.
    """
    return _queue_info_nce(queries, keys, queue, temperature, keep, masked, False)[0]
