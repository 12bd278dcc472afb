r"""Momentum-encoder pieces of MoCo-style methods: EMA update, key queue, shuffle-BN.

* :func:`ema_update`: :math:`\theta_k \leftarrow m\,\theta_k + (1 - m)\,\theta_q` over
  parameters (MoCo eq. 2; buffers such as BN statistics stay the key encoder's own).
* :func:`ema_momentum`: constant :math:`m`, or BYOL's cosine schedule
  :math:`m_t = m_1 - (m_1 - m_0)(\cos(\pi t / T) + 1) / 2` rising to :math:`m_1` (1 in
  BYOL; 0.999 in solo-learn's MoCo v2+) at the last step.
* :class:`KeyQueue`: the FIFO of past keys as **persistent buffers** (keys, the dataset
  index of each key, the write pointer, the fill count), so a checkpoint restores the
  queue exactly (lightly's memory bank is not persistent: lightly #993).  Under DDP the
  keys of all ranks are gathered (no gradient) before they are written, in rank order,
  so every rank holds the same queue (facebookresearch/moco #97).  Its length need not
  be a multiple of the global batch: writes wrap around.
* :func:`shuffle_across_ranks` / :func:`unshuffle_across_ranks`: MoCo's shuffle-BN, the
  key batch permuted across ranks before the key encoder so that its BN statistics are
  not those of the query batch; the identity on one process.
* :class:`SplitBatchNorm2d` / :func:`split_batch_norm` and :func:`shuffle_batch`: the
  official one-GPU substitute for shuffle-BN (MoCo's CIFAR demo,
  ``colab/moco_cifar10_demo.ipynb``): BN statistics of ``S`` sub-batches in training, and
  the key batch permuted before the key encoder so that its sub-batches hold other images
  than the queries'.
"""

from __future__ import annotations

import math

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn

from contraseg.lightning_modules.components import distributed as dist_utils

__all__ = [
    "KeyQueue",
    "SplitBatchNorm2d",
    "shuffle_batch",
    "split_batch_norm",
    "ema_momentum",
    "ema_update",
    "shuffle_across_ranks",
    "unshuffle_across_ranks",
]


@torch.no_grad()
def ema_update(online: nn.Module, target: nn.Module, momentum: float) -> None:
    """``target <- momentum * target + (1 - momentum) * online`` over parameters.

    Args:
        online: Module trained by the optimiser.
        target: Its momentum copy (same architecture).
        momentum: EMA momentum in ``[0, 1]``.

    Raises:
        ValueError: If the two modules do not have the same parameter shapes.
    """
    src, dst = list(online.parameters()), list(target.parameters())
    if len(src) != len(dst) or any(a.shape != b.shape for a, b in zip(src, dst, strict=True)):
        raise ValueError("ema_update: online and target modules differ in their parameters")
    torch._foreach_mul_(dst, momentum)
    torch._foreach_add_(dst, [p.detach() for p in src], alpha=1.0 - momentum)


def ema_momentum(base: float, step: int, total_steps: int, schedule: str = "constant",
                 final: float = 1.0) -> float:  # fmt: skip
    """EMA momentum at optimiser step ``step`` of ``total_steps``.

    Args:
        base: Momentum ``m_0`` (0.999 in MoCo v2 at batch 256).
        step: Current step (0-based).
        total_steps: Steps of the whole run.
        schedule: ``"constant"`` or ``"cosine"`` (to ``final`` at the last step).
        final: Momentum ``m_1`` at the last step of the cosine schedule.

    Returns:
        The momentum.

    Raises:
        ValueError: On an unknown schedule.
    """
    if schedule == "constant":
        return base
    if schedule != "cosine":
        raise ValueError(f"EMA schedule must be 'constant' or 'cosine', got {schedule!r}")
    progress = min(max(step / max(total_steps, 1), 0.0), 1.0)
    return final - (final - base) * (math.cos(math.pi * progress) + 1.0) / 2.0


class KeyQueue(nn.Module):
    """FIFO queue of ``size`` L2-normalised keys of dimension ``dim`` (module docstring).

    It starts, as MoCo's, from random unit vectors (index ``-1``); ``filled`` counts how
    many real keys have been written (at most ``size``).

    Args:
        size: Number of keys ``K``.
        dim: Key dimension.
        seed: Seed of the random initial keys (a private generator: the global RNG is
            not touched).
    """

    def __init__(self, size: int, dim: int, seed: int = 0) -> None:
        super().__init__()
        if size < 1 or dim < 1:
            raise ValueError(f"KeyQueue needs size >= 1 and dim >= 1, got {size}, {dim}")
        g = torch.Generator().manual_seed(seed)
        self.register_buffer("keys", F.normalize(torch.randn(size, dim, generator=g), dim=1))
        self.register_buffer("indices", torch.full((size,), -1, dtype=torch.long))
        self.register_buffer("ptr", torch.zeros((), dtype=torch.long))
        self.register_buffer("filled", torch.zeros((), dtype=torch.long))

    @property
    def size(self) -> int:
        """Number of slots ``K``."""
        return self.keys.shape[0]

    @torch.no_grad()
    def enqueue(self, keys: Tensor, indices: Tensor | None = None, gather: bool = True) -> None:
        """Write ``keys`` (and their dataset indices) at the pointer, wrapping around.

        Args:
            keys: ``(n, dim)`` keys of this rank (normalised here).
            indices: ``(n,)`` dataset index of each key (``-1`` when unknown).
            gather: Under DDP, write the keys of all ranks (rank-major), as the queue is
                shared; ``False`` writes only the local ones.

        Raises:
            ValueError: If the key dimension or the index count does not match.
        """
        if keys.ndim != 2 or keys.shape[1] != self.keys.shape[1]:
            raise ValueError(f"keys must be (n, {self.keys.shape[1]}), got {tuple(keys.shape)}")
        if indices is None:
            indices = torch.full((keys.shape[0],), -1, dtype=torch.long, device=keys.device)
        if indices.shape != (keys.shape[0],):
            raise ValueError(f"indices must be ({keys.shape[0]},), got {tuple(indices.shape)}")
        keys, indices = keys.detach(), indices.to(keys.device, torch.long)
        if gather:
            keys, indices = dist_utils.gather_no_grad(keys), dist_utils.gather_no_grad(indices)
        n, size = keys.shape[0], self.size
        start = int(self.ptr)
        if n > size:  # only the last `size` keys survive; they end where the pointer lands
            start = (start + n - size) % size
            keys, indices = keys[-size:], indices[-size:]
        slots = (start + torch.arange(keys.shape[0], device=keys.device)) % size
        self.keys[slots] = F.normalize(keys.float(), dim=1).to(self.keys.dtype)
        self.indices[slots] = indices
        self.ptr.fill_((int(self.ptr) + n) % size)
        self.filled.fill_(min(int(self.filled) + n, size))


def shuffle_across_ranks(x: Tensor) -> tuple[Tensor, Tensor]:
    """MoCo's batch shuffle: this rank's share of a random permutation of the global batch.

    The permutation is drawn on rank 0 (torch's global RNG) and broadcast.

    Args:
        x: ``(n, ...)`` local batch (equal ``n`` on every rank).

    Returns:
        ``(shuffled local batch, unshuffle index)``; ``(x, arange(n))`` on one process.
    """
    if not dist_utils.is_distributed():
        return x, torch.arange(x.shape[0], device=x.device)
    gathered = dist_utils.gather_no_grad(x)
    perm = torch.randperm(gathered.shape[0], device=x.device)
    dist.broadcast(perm, src=0)
    mine = perm.view(dist_utils.world_size(), -1)[dist_utils.rank()]
    return gathered[mine], torch.argsort(perm)


def unshuffle_across_ranks(x: Tensor, unshuffle: Tensor) -> Tensor:
    """Undo :func:`shuffle_across_ranks`: this rank's rows of the restored global batch.

    Args:
        x: ``(n, ...)`` outputs of the shuffled local batch.
        unshuffle: The index returned by :func:`shuffle_across_ranks`.

    Returns:
        ``(n, ...)`` outputs aligned with the original local batch.
    """
    if not dist_utils.is_distributed():
        return x[unshuffle]
    gathered = dist_utils.gather_no_grad(x)
    return gathered[unshuffle.view(dist_utils.world_size(), -1)[dist_utils.rank()]]


class SplitBatchNorm2d(nn.BatchNorm2d):
    """BatchNorm2d whose training statistics are those of ``num_splits`` sub-batches.

    Sample ``i`` of a batch belongs to sub-batch ``i mod S`` (the official demo's
    reshape to ``(n / S, S * C, H, W)``); the running statistics are the mean of the
    sub-batches' updates.  In eval mode it is a plain BatchNorm2d, and its state dict is
    a BatchNorm2d's, so a checkpoint loads into the unsplit network.

    Args:
        num_features: Channels.
        num_splits: Sub-batches ``S`` (the batch must be divisible by it).
        **kwargs: :class:`torch.nn.BatchNorm2d` arguments.
    """

    def __init__(self, num_features: int, num_splits: int, **kwargs: object) -> None:
        super().__init__(num_features, **kwargs)
        if num_splits < 1:
            raise ValueError(f"num_splits must be >= 1, got {num_splits}")
        self.num_splits = num_splits

    def forward(self, x: Tensor) -> Tensor:  # noqa: D102
        s = self.num_splits
        if not self.training or s == 1:
            return super().forward(x)
        n, c, h, w = x.shape
        if n % s:
            raise ValueError(f"SplitBatchNorm2d: batch {n} is not divisible by num_splits {s}")
        mean = self.running_mean.repeat(s)
        var = self.running_var.repeat(s)
        out = F.batch_norm(x.reshape(n // s, c * s, h, w), mean, var,
                           self.weight.repeat(s) if self.weight is not None else None,
                           self.bias.repeat(s) if self.bias is not None else None,
                           True, self.momentum if self.momentum is not None else 0.1,
                           self.eps).reshape(n, c, h, w)  # fmt: skip
        with torch.no_grad():
            self.running_mean.copy_(mean.view(s, c).mean(dim=0))
            self.running_var.copy_(var.view(s, c).mean(dim=0))
            self.num_batches_tracked.add_(1)
        return out


def split_batch_norm(module: nn.Module, num_splits: int) -> int:
    """Replace every ``nn.BatchNorm2d`` of ``module`` in place by a :class:`SplitBatchNorm2d`.

    Parameters and buffers are kept (the same tensors).

    Returns:
        How many layers were replaced.
    """
    count = 0
    for name, child in list(module.named_children()):
        if type(child) is nn.BatchNorm2d:
            split = SplitBatchNorm2d(child.num_features, num_splits, eps=child.eps,
                                     momentum=child.momentum, affine=child.affine,
                                     track_running_stats=child.track_running_stats)  # fmt: skip
            split.load_state_dict(child.state_dict())
            split.train(child.training)
            split.to(child.running_mean.device if child.running_mean is not None else "cpu")
            setattr(module, name, split)
            count += 1
        else:
            count += split_batch_norm(child, num_splits)
    return count


def shuffle_batch(x: Tensor, seed: int) -> tuple[Tensor, Tensor]:
    """A seeded permutation of the batch and its inverse (the one-process key shuffle).

    Args:
        x: ``(n, ...)`` batch.
        seed: Seed of the permutation (e.g. from the optimiser step, so a resumed run
            draws the same permutations).

    Returns:
        ``(x[perm], argsort(perm))``.
    """
    generator = torch.Generator().manual_seed(int(seed))
    perm = torch.randperm(x.shape[0], generator=generator).to(x.device)
    return x[perm], torch.argsort(perm)
