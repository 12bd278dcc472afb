r"""Herding selection (Welling 2009; the coreset baseline of dataset condensation).

Greedily picks ``k`` samples whose running mean of features stays closest to the class mean:

.. math::
    i_t = \arg\min_{i \notin \{i_1..i_{t-1}\}} \Big\lVert \mu -
    \frac{1}{t}\Big(f_i + \sum_{s<t} f_{i_s}\Big)\Big\rVert_2 ,\qquad
    \mu = \frac{1}{n}\sum_i f_i .

Each step is one vectorised distance over all candidates (``k`` steps, ``k`` = images per class).
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["herding"]


def herding(features: Tensor, k: int) -> Tensor:
    """Indices ``(k,)`` of the herding selection of ``features (n, d)``, in selection order.

    Raises:
        ValueError: If ``k`` exceeds the number of samples.
    """
    n = features.shape[0]
    if not 0 < k <= n:
        raise ValueError(f"herding: cannot select {k} of {n} samples")
    f = features.double()
    mu = f.mean(0)
    total = torch.zeros_like(mu)
    taken = torch.zeros(n, dtype=torch.bool, device=f.device)
    picks = []
    for t in range(1, k + 1):
        dist = (mu - (total + f) / t).norm(dim=1)
        dist[taken] = float("inf")
        i = int(dist.argmin())
        picks.append(i)
        taken[i] = True
        total += f[i]
    return torch.tensor(picks, dtype=torch.long, device=features.device)
