r"""Spectral diagnostics of embedding matrices for dimensional-collapse monitoring.

Pure ``torch`` functions (no Lightning) used by
:class:`contraseg.callbacks.rank_monitor.EmbeddingRankMonitor`:

* :func:`embedding_spectrum`: singular values of the embedding covariance, as plotted
  in DirectCLR (Jing et al., *Understanding Dimensional Collapse in Contrastive
  Self-supervised Learning*, ICLR 2022).
* :func:`effective_rank`: RankMe (Garrido et al., *RankMe: Assessing the Downstream
  Performance of Pretrained Self-Supervised Representations by Their Rank*, ICML 2023).
* :func:`collapsed_dimensions`: number of (numerically) vanished covariance directions.

All computations are carried out in ``float64``.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor


def _check_matrix(z: Tensor) -> Tensor:
    """Validate an ``(N, D)`` embedding matrix and return it as ``float64``.

    Args:
        z: Embedding matrix.

    Returns:
        ``z`` detached and cast to ``float64``.

    Raises:
        ValueError: If ``z`` is not 2-D or is empty.
    """
    if z.ndim != 2:
        raise ValueError(f"embeddings must be a 2-D (N, D) tensor, got shape {tuple(z.shape)}")
    if z.shape[0] == 0 or z.shape[1] == 0:
        raise ValueError(f"embeddings must be non-empty, got shape {tuple(z.shape)}")
    return z.detach().to(torch.float64)


def embedding_spectrum(z: Tensor, normalize: bool = True) -> Tensor:
    r"""Singular values of the embedding covariance matrix (DirectCLR, Jing et al. 2022).

    With rows :math:`z_i \in \mathbb{R}^D`, optionally L2-normalised
    (:math:`z_i \leftarrow z_i / \lVert z_i \rVert_2`), and centred
    (:math:`\bar z = \frac1N \sum_i z_i`), the covariance over dimensions is

    .. math::

        C = \frac1N \sum_{i=1}^{N} (z_i - \bar z)(z_i - \bar z)^\top
          = \frac1N \tilde Z^\top \tilde Z \in \mathbb{R}^{D \times D},

    and the spectrum is :math:`\sigma_1(C) \ge \dots \ge \sigma_D(C) \ge 0`. Dimensional
    collapse shows up as a tail of (near-)zero singular values.

    Args:
        z: ``(N, D)`` embeddings.
        normalize: L2-normalise each row before centring.

    Returns:
        ``(D,)`` ``float64`` tensor of singular values of :math:`C`, sorted descending,
        on the device of ``z``.

    Raises:
        ValueError: If ``z`` is not a non-empty 2-D tensor.
    """
    z = _check_matrix(z)
    if normalize:
        z = torch.nn.functional.normalize(z, p=2.0, dim=1)
    z = z - z.mean(dim=0, keepdim=True)
    cov = z.T @ z / z.shape[0]
    sigma = torch.linalg.svdvals(cov)
    return torch.sort(sigma, descending=True).values


def effective_rank(z: Tensor, eps: float = 1e-7) -> float:
    r"""RankMe effective rank of an embedding matrix (Garrido et al. 2023).

    With :math:`\sigma_1, \dots, \sigma_{\min(N, D)}` the singular values of the raw
    (neither centred nor normalised) embedding matrix :math:`Z \in \mathbb{R}^{N \times D}`,

    .. math::

        p_k = \frac{\sigma_k}{\lVert \sigma \rVert_1} + \varepsilon, \qquad
        \operatorname{RankMe}(Z) = \exp\Bigl(-\sum_k p_k \log p_k\Bigr).

    It ranges from about 1 (a single direction) to :math:`\min(N, D)` (all singular
    values equal).

    Args:
        z: ``(N, D)`` embeddings.
        eps: Small constant :math:`\varepsilon` added to each :math:`p_k` for numerical
            stability.

    Returns:
        The effective rank as a Python float (``0.0`` for an all-zero matrix, whose
        distribution :math:`p` is undefined).

    Raises:
        ValueError: If ``z`` is not a non-empty 2-D tensor or ``eps`` is negative.
    """
    if eps < 0:
        raise ValueError(f"eps must be >= 0, got {eps}")
    sigma = torch.linalg.svdvals(_check_matrix(z))
    total = sigma.sum()
    if total <= 0:
        return 0.0
    p = sigma / total + eps
    entropy = -(p * torch.log(p)).sum()
    return float(math.exp(entropy.item()))


def collapsed_dimensions(spectrum: Tensor, rel_threshold: float = 1e-5) -> int:
    r"""Count the collapsed dimensions of a covariance spectrum.

    A direction :math:`k` counts as collapsed when

    .. math::

        \sigma_k < \tau \cdot \max_j \sigma_j,

    with :math:`\tau` = ``rel_threshold``. An all-zero spectrum is fully collapsed.

    Args:
        spectrum: ``(D,)`` singular values, e.g. from :func:`embedding_spectrum`.
        rel_threshold: Relative threshold :math:`\tau \in (0, 1)`.

    Returns:
        Number of singular values below ``rel_threshold`` times the largest one.

    Raises:
        ValueError: If ``spectrum`` is not a non-empty 1-D tensor or ``rel_threshold`` is
            outside ``(0, 1)``.
    """
    if not 0.0 < rel_threshold < 1.0:
        raise ValueError(f"rel_threshold must be in (0, 1), got {rel_threshold}")
    if spectrum.ndim != 1 or spectrum.numel() == 0:
        raise ValueError(
            f"spectrum must be a non-empty 1-D tensor, got shape {tuple(spectrum.shape)}"
        )
    sigma = spectrum.detach().to(torch.float64)
    largest = sigma.max()
    if largest <= 0:
        return int(sigma.numel())
    return int((sigma < rel_threshold * largest).sum().item())
