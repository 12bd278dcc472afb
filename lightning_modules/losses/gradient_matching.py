"""Gradient matching of dataset condensation: DC (Zhao et al. 2021) and DCC (Lee et al. 2022).

Gradients are lists of tensors, one per network parameter.  Per-class gradients carry a
leading class dimension ``(C, *shape)`` (what ``torch.func.vmap`` over classes returns, or a
``torch.stack`` of a per-class loop); a single gradient has the parameter's own shape.

The layer distance is the official one (VICO-UoE DatasetCondensation ``distance_wb``, used
unchanged by Saehyung-Lee/DCC ``utils.py``): a gradient of a 4-D (conv), 3-D or 2-D (linear)
parameter is reshaped to ``(out, -1)`` and compared row by row with a cosine; 1-D parameters
(biases, norm affine) contribute 0; ``eps = 1e-6`` is added to the product of the norms.
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor

__all__ = ["EPS", "dc_loss", "dcc_loss", "gradient_distance", "layer_distance"]

EPS = 1e-6  # official distance_wb: + 0.000001 on the product of the row norms


def layer_distance(g_syn: Tensor, g_real: Tensor, eps: float = EPS, batch_dims: int = 0) -> Tensor:
    r"""Row-wise cosine distance of one layer's gradients.

    .. math::
        d(A, B) = \sum_{i=1}^{\mathrm{out}} \Big(1 - \frac{A_{i\cdot} \cdot B_{i\cdot}}
        {\lVert A_{i\cdot}\rVert \, \lVert B_{i\cdot}\rVert + \epsilon}\Big)

    with ``A, B`` the gradients reshaped to ``(out, -1)``; 0 for 1-D parameters.

    Args:
        g_syn: Gradient from the synthetic set, ``(*batch, *shape)``.
        g_real: Gradient from the real batch, same shape.
        eps: Added to the product of the norms (official value ``1e-6``).
        batch_dims: Leading dimensions that index classes (summed over as well).

    Returns:
        Scalar distance (summed over rows and leading dimensions).
    """
    if g_syn.shape != g_real.shape:
        raise ValueError(f"gradient shapes differ: {tuple(g_syn.shape)} vs {tuple(g_real.shape)}")
    shape = g_syn.shape[batch_dims:]
    if len(shape) <= 1:
        return g_syn.new_zeros(())
    lead = g_syn.shape[: batch_dims + 1]
    a = g_syn.reshape(*lead, -1)
    b = g_real.reshape(*lead, -1)
    cos = (a * b).sum(-1) / (a.norm(dim=-1) * b.norm(dim=-1) + eps)
    return (1 - cos).sum()


def gradient_distance(g_syn: Sequence[Tensor], g_real: Sequence[Tensor], eps: float = EPS,
                      batch_dims: int = 0) -> Tensor:  # fmt: skip
    r"""The matching distance :math:`D = \sum_{\ell} d(\nabla_S^\ell, \nabla_T^\ell)` over layers.

    Args:
        g_syn: Per-parameter gradients from synthetic data.
        g_real: Per-parameter gradients from real data (no graph needed).
        eps: See :func:`layer_distance`.
        batch_dims: Leading class dimensions of every gradient (summed over).

    Returns:
        Scalar distance.
    """
    if len(g_syn) != len(g_real):
        raise ValueError(f"{len(g_syn)} synthetic vs {len(g_real)} real gradients")
    total = g_syn[0].new_zeros(())
    for a, b in zip(g_syn, g_real, strict=True):
        total = total + layer_distance(a, b, eps, batch_dims)
    return total


def dc_loss(g_syn: Sequence[Tensor], g_real: Sequence[Tensor], eps: float = EPS) -> Tensor:
    r"""DC (gradient matching per class).

    .. math::
        \mathcal{L}_{DC} = \sum_{c=1}^{C} D\big(\nabla_\theta \ell(S_c; \theta),\;
        \nabla_\theta \ell(T_c; \theta)\big)

    with :math:`\ell` the mean cross-entropy of a class's synthetic images :math:`S_c` or real
    batch :math:`T_c`.

    Args:
        g_syn: Per-class synthetic gradients, each ``(C, *shape)``.
        g_real: Per-class real gradients, each ``(C, *shape)``.
        eps: See :func:`layer_distance`.

    Returns:
        Scalar loss.
    """
    return gradient_distance(g_syn, g_real, eps, batch_dims=1)


def dcc_loss(g_syn_all: Sequence[Tensor], g_real: Sequence[Tensor], eps: float = EPS) -> Tensor:
    r"""DCC (contrastive signals: one distance over all classes, Lee et al. 2022 Eq. 5).

    .. math::
        \mathcal{L}_{DCC} = D\Big(\nabla_\theta \ell(S; \theta),\;
        \frac{1}{C}\sum_{c=1}^{C} \nabla_\theta \ell(T_c; \theta)\Big)

    with :math:`\ell(S)` the mean cross-entropy over the whole synthetic set, so the logits of
    every class take part in each synthetic image's gradient (official ``main.py``: the real
    gradients are divided by the number of classes and summed).

    Args:
        g_syn_all: Gradient of the mean CE over the whole synthetic set (parameter shapes).
        g_real: Per-class real gradients ``(C, *shape)``, or their class mean (parameter
            shapes: one backward of the class-averaged loss gives it directly).
        eps: See :func:`layer_distance`.

    Returns:
        Scalar loss.
    """
    pairs = zip(g_real, g_syn_all, strict=True)
    mean_real = [r.mean(0) if r.dim() == s.dim() + 1 else r for r, s in pairs]
    return gradient_distance(g_syn_all, mean_real, eps)
