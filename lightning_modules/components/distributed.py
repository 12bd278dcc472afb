"""Distributed helpers: all-gathers with and without gradients.

The gradient-carrying gather follows the convention that every rank computes a
loss on its *local* anchors against the *global* set of candidates.  DDP then
averages parameter gradients over ranks, so the backward of the gather has to
**sum** the gradients that all ranks send to a given slice (not just keep the
local one, a bug that silently scales gradients by ``1 / world_size``).
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import Tensor


def is_distributed() -> bool:
    """Return whether a default process group is initialised with more than one rank."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def world_size() -> int:
    """Return the number of processes (1 outside of distributed runs)."""
    return dist.get_world_size() if is_distributed() else 1


def rank() -> int:
    """Return this process's rank (0 outside of distributed runs)."""
    return dist.get_rank() if is_distributed() else 0


class _GatherWithGrad(torch.autograd.Function):
    """All-gather whose backward sums the incoming gradients over ranks."""

    @staticmethod
    def forward(ctx: torch.autograd.function.FunctionCtx, x: Tensor) -> Tensor:  # noqa: D102
        gathered = [torch.empty_like(x) for _ in range(dist.get_world_size())]
        dist.all_gather(gathered, x.contiguous())
        return torch.cat(gathered, dim=0)

    @staticmethod
    def backward(ctx: torch.autograd.function.FunctionCtx, grad: Tensor) -> Tensor:  # noqa: D102
        grad = grad.contiguous()
        dist.all_reduce(grad, op=dist.ReduceOp.SUM)
        chunk = grad.shape[0] // dist.get_world_size()
        start = dist.get_rank() * chunk
        return grad[start : start + chunk]


def gather_with_grad(x: Tensor) -> Tensor:
    """Concatenate ``x`` from all ranks along dim 0, keeping the autograd graph.

    All ranks must pass tensors of the same shape.  Outside of a distributed run
    this is the identity.

    Args:
        x: Local tensor of shape ``(n, ...)``.

    Returns:
        Tensor of shape ``(world_size * n, ...)``, rank-major.
    """
    if not is_distributed():
        return x
    return _GatherWithGrad.apply(x)


@torch.no_grad()
def gather_no_grad(x: Tensor) -> Tensor:
    """Concatenate ``x`` from all ranks along dim 0 without gradients.

    Args:
        x: Local tensor of shape ``(n, ...)``, equal shape on all ranks.

    Returns:
        Tensor of shape ``(world_size * n, ...)``, rank-major.
    """
    if not is_distributed():
        return x
    gathered = [torch.empty_like(x) for _ in range(dist.get_world_size())]
    dist.all_gather(gathered, x.contiguous())
    return torch.cat(gathered, dim=0)
