r"""Kernel velocity (Fort et al. 2020): how fast a network's empirical NTK moves during training.

The empirical NTK on a fixed probe batch ``x_1..x_N`` is the Gram matrix of the parameter
Jacobians of the logits.  Here the *trace* kernel over the logit dimension (one ``N x N``
matrix; Fort et al. also work with logit-summed kernels):

.. math::
    K_t[i, j] = \sum_{k=1}^{K} \langle \nabla_\theta f_k(x_i; \theta_t),
    \nabla_\theta f_k(x_j; \theta_t) \rangle

and the velocity between two times ``t`` and ``t + dt`` is the kernel distance per unit time

.. math::
    v(t) = \frac{1}{dt}\Big(1 - \frac{\langle K_t, K_{t+dt}\rangle_F}
    {\lVert K_t\rVert_F \, \lVert K_{t+dt}\rVert_F}\Big).

The Jacobians come from ``torch.func`` (``vmap`` of ``grad`` per logit), one logit at a time so
the memory is ``N x P`` rather than ``N x K x P``.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.func import functional_call, grad, vmap

__all__ = ["empirical_ntk", "kernel_distance", "kernel_velocity"]


def empirical_ntk(net: nn.Module, probe: Tensor) -> Tensor:
    """Trace empirical NTK ``(N, N)`` of ``net`` on ``probe (N, ...)`` (float64 accumulation).

    The network is evaluated as it is (call ``eval()`` first for BatchNorm networks).
    """
    params = {n: p.detach() for n, p in net.named_parameters()}
    buffers = dict(net.named_buffers())
    probe = probe.detach()

    def logit(p: dict[str, Tensor], x: Tensor, k: int) -> Tensor:
        return functional_call(net, (p, buffers), (x.unsqueeze(0),))[0, k]

    with torch.no_grad():
        n_logits = net(probe[:1]).shape[1]
    kernel = probe.new_zeros(probe.shape[0], probe.shape[0], dtype=torch.float64)
    for k in range(n_logits):
        jac = vmap(grad(logit), in_dims=(None, 0, None))(params, probe, k)
        flat = torch.cat([j.flatten(1) for j in jac.values()], dim=1).double()
        kernel += flat @ flat.T
    return kernel


def kernel_distance(k1: Tensor, k2: Tensor) -> Tensor:
    """``1 - <K1, K2>_F / (||K1|| ||K2||)`` (0 for kernels equal up to scale)."""
    k1, k2 = k1.double(), k2.double()
    return 1 - (k1 * k2).sum() / (k1.norm() * k2.norm()).clamp_min(1e-300)


def kernel_velocity(k1: Tensor, k2: Tensor, dt: float) -> float:
    """Kernel distance per unit time between kernels ``dt`` apart."""
    if dt <= 0:
        raise ValueError(f"kernel velocity needs dt > 0, got {dt}")
    return float(kernel_distance(k1, k2)) / dt
