"""Optimisers (SGD, AdamW, LARS) and the warmup + cosine learning-rate schedule."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import nn
from torch.optim import Optimizer


class LARS(Optimizer):
    """Layer-wise Adaptive Rate Scaling (You et al. 2017) on top of SGD with momentum.

    For every parameter group without ``lars_exclude``, the update of a weight
    ``w`` with gradient ``g`` is scaled by the trust ratio
    ``eta * ||w|| / (||g|| + weight_decay * ||w||)`` (1 where a norm is zero).
    Groups flagged ``lars_exclude=True`` (biases, norm layers, linear probes, as in
    SimCLR) get plain SGD with momentum and their own weight decay.

    Why not timm's ``Lars`` (also ``foreach``, and bitwise equal to this class on SimCLR's
    groups): it adapts every group whose weight decay is non-zero, so an excluded group that
    is decayed (MoCo's and HCSC's ``decay_all_parameters``, biases and norms included) would
    be trust-scaled; ``tests/test_optim_eval.py`` shows both facts.  lightly's ``LARS`` is
    not a runtime dependency.

    Args:
        params: Parameters or parameter groups.
        lr: Learning rate.
        momentum: Momentum factor.
        weight_decay: L2 weight decay added to the gradient.
        eta: LARS trust coefficient.
        nesterov: Use Nesterov momentum.
    """

    def __init__(
        self,
        params: Iterable[torch.Tensor] | Iterable[dict],
        lr: float,
        momentum: float = 0.9,
        weight_decay: float = 0.0,
        eta: float = 0.02,
        nesterov: bool = False,
    ) -> None:
        if lr <= 0:
            raise ValueError(f"LARS lr must be > 0, got {lr}")
        defaults = {
            "lr": lr,
            "momentum": momentum,
            "weight_decay": weight_decay,
            "eta": eta,
            "nesterov": nesterov,
            "lars_exclude": False,
        }
        super().__init__(params, defaults)

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> float | None:  # noqa: D102
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            params = [p for p in group["params"] if p.grad is not None]
            if params:
                self._group_step(group, params)
        return loss

    def _group_step(self, group: dict[str, Any], params: list[torch.Tensor]) -> None:
        """One group's update with ``torch._foreach`` kernels (a few launches per group).

        The same per-tensor arithmetic as the textbook loop (``tests/test_optim_eval.py``
        checks it bitwise on CPU); on a GPU the loop costs ~10 kernel launches per tensor.
        """
        wd, mom, eta = group["weight_decay"], group["momentum"], group["eta"]
        grads = [p.grad for p in params]
        d_p = torch._foreach_add(grads, params, alpha=wd) if wd != 0 else list(grads)
        if not group["lars_exclude"]:
            w_norm = torch.stack(torch._foreach_norm(params))
            g_norm = torch.stack(torch._foreach_norm(grads))
            denom = g_norm + wd * w_norm
            trust = torch.where((w_norm > 0) & (denom > 0), eta * w_norm / denom,
                                torch.ones_like(w_norm))  # fmt: skip
            d_p = torch._foreach_mul(d_p, list(trust.unbind()))
        if mom != 0:
            bufs, fresh = [], []
            for p, d in zip(params, d_p):
                state = self.state[p]
                if "momentum_buffer" not in state:
                    state["momentum_buffer"] = d.clone()
                    fresh.append(True)
                else:
                    fresh.append(False)
                bufs.append(state["momentum_buffer"])
            old = [b for b, f in zip(bufs, fresh) if not f]
            if old:
                torch._foreach_mul_(old, mom)
                torch._foreach_add_(old, [d for d, f in zip(d_p, fresh) if not f])
            d_p = torch._foreach_add(d_p, bufs, alpha=mom) if group["nesterov"] else bufs
        torch._foreach_add_(params, d_p, alpha=-group["lr"])


def split_decay_groups(module: nn.Module) -> tuple[list[nn.Parameter], list[nn.Parameter]]:
    """Split trainable parameters into (weights, biases-and-norm-parameters).

    Args:
        module: Module whose parameters are split.

    Returns:
        ``(decay, no_decay)``: parameters with ``ndim > 1`` and the rest.
    """
    decay, no_decay = [], []
    for p in module.parameters():
        if p.requires_grad:
            (decay if p.ndim > 1 else no_decay).append(p)
    return decay, no_decay


OPTIMIZERS = ("sgd", "adamw", "adam", "lars")


def build_optimizer(
    groups: list[dict],
    name: str = "lars",
    lr: float = 0.3,
    weight_decay: float = 1e-4,
    momentum: float = 0.9,
    betas: tuple[float, float] = (0.9, 0.999),
    eta: float = 0.02,
    fused: bool | None = None,
) -> Optimizer:
    """Create an optimiser from parameter groups.

    Groups may carry ``weight_decay``, ``lr`` and ``lars_exclude`` overrides.  SGD, Adam and
    AdamW use PyTorch's fused kernels (one kernel for all parameters) when every parameter
    is on a CUDA device, or when ``fused=True``; LARS always updates with ``_foreach`` kernels.

    Args:
        groups: Parameter groups (``{"params": [...], ...}``).
        name: One of ``sgd``, ``adamw``, ``adam``, ``lars``.
        lr: Base learning rate.
        weight_decay: Default weight decay.
        momentum: Momentum (SGD, LARS).
        betas: Adam betas.
        eta: LARS trust coefficient.
        fused: Fused SGD / Adam / AdamW kernels (``None``: when all parameters are on CUDA;
            CPU runs keep the default ``foreach`` path, bitwise as before).

    Returns:
        The optimiser.
    """
    key = name.lower()
    if key == "lars":
        return LARS(groups, lr=lr, momentum=momentum, weight_decay=weight_decay, eta=eta)
    clean = [{k: v for k, v in g.items() if k != "lars_exclude"} for g in groups]
    if fused is None:
        tensors = [p for g in clean for p in g["params"]]
        fused = bool(tensors) and all(p.is_cuda for p in tensors)
    extra = {"fused": True} if fused else {}
    if key == "sgd":
        return torch.optim.SGD(clean, lr=lr, momentum=momentum, weight_decay=weight_decay,
                               **extra)  # fmt: skip
    if key == "adamw":
        return torch.optim.AdamW(clean, lr=lr, betas=betas, weight_decay=weight_decay, **extra)
    if key == "adam":
        return torch.optim.Adam(clean, lr=lr, betas=betas, weight_decay=weight_decay, **extra)
    raise ValueError(f"optimizer must be one of {OPTIMIZERS}, got {name!r}")


def warmup_cosine_schedule(
    optimizer: Optimizer, warmup_steps: int, total_steps: int, min_lr_ratio: float = 0.0,
    schedule: str = "cosine", poly_power: float = 0.9,
) -> torch.optim.lr_scheduler.LambdaLR:
    """Linear warmup from ~0 to the base LR, then cosine (or poly) decay to ``min_lr_ratio * lr``.

    Args:
        optimizer: Optimiser whose groups' ``lr`` are the peak values.
        warmup_steps: Steps of linear warmup.
        total_steps: Total optimisation steps.
        min_lr_ratio: Final LR as a fraction of the peak.
        schedule: ``cosine`` (``0.5 (1 + cos(pi t))``) or ``poly`` (``(1 - t) ** poly_power``)
            of the post-warmup progress ``t`` in ``[0, 1]``.
        poly_power: Power of ``poly``.

    Returns:
        A per-step ``LambdaLR``.

    Written here rather than taken from a dependency: torch's ``LinearLR`` + ``SequentialLR``
    + ``CosineAnnealingLR`` share one absolute ``eta_min`` across parameter groups (the floor
    here is relative to each group's own peak, e.g. a probe's) and rise again after
    ``T_max``; timm's ``CosineLRScheduler`` is not a torch scheduler (Lightning would need a
    custom ``lr_scheduler_step``), and lightly's ``CosineWarmupScheduler`` would make lightly a
    runtime dependency for these ten lines.
    """
    warmup_steps = max(0, int(warmup_steps))
    total_steps = max(1, int(total_steps))

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        span = max(1, total_steps - warmup_steps)
        progress = min(1.0, (step - warmup_steps) / span)
        if schedule == "poly":
            return min_lr_ratio + (1 - min_lr_ratio) * (1 - progress) ** poly_power
        return min_lr_ratio + (1 - min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def param_groups(module: nn.Module) -> list[dict]:
    """Weights with weight decay, biases and norm parameters without (and without LARS)."""
    decay, no_decay = split_decay_groups(module)
    groups = [{"params": decay}, {"params": no_decay, "weight_decay": 0.0, "lars_exclude": True}]
    return [g for g in groups if g["params"]]


def steps_per_epoch(trainer: Any, total: int) -> float:
    """Optimiser steps of one epoch: ``ceil(batches / accumulation)``, as Lightning counts them.

    A run limited by ``max_steps`` (``max_epochs: -1``, the budget curves) has no epoch count
    to divide the total by, so the epoch is measured on the training loader; without a sized
    loader, ``total / max_epochs``.
    """
    batches = getattr(trainer, "num_training_batches", math.inf)
    fit_loop = getattr(trainer, "fit_loop", None)
    if not math.isfinite(batches) and fit_loop is not None:
        fit_loop.setup_data()  # what estimated_stepping_batches does unless max_steps is set
        batches = trainer.num_training_batches
    if isinstance(batches, (int, float)) and math.isfinite(batches) and batches > 0:
        return float(math.ceil(batches / max(1, int(trainer.accumulate_grad_batches))))
    return total / max(1, trainer.max_epochs or 1)


def scheduled_optimizer(
    groups: list[dict],
    trainer: Any,
    warmup_epochs: float = 0.0,
    min_lr_ratio: float = 0.0,
    schedule: str = "cosine",
    poly_power: float = 0.9,
    **optim_kwargs: Any,
) -> dict[str, Any]:
    """Optimiser plus per-step warmup + cosine schedule, as ``configure_optimizers`` returns.

    Args:
        groups: Parameter groups (see :func:`build_optimizer`).
        trainer: The Lightning trainer (``estimated_stepping_batches``, ``max_epochs``).
        warmup_epochs: Warmup length in epochs (converted to steps).
        min_lr_ratio: Final LR as a fraction of the peak.
        schedule: ``cosine`` or ``poly`` (:func:`warmup_cosine_schedule`).
        poly_power: Power of ``poly``.
        **optim_kwargs: :func:`build_optimizer` arguments (``name``, ``lr``, ...).

    Returns:
        ``{"optimizer": ..., "lr_scheduler": {"scheduler": ..., "interval": "step"}}``.
    """
    optimizer = build_optimizer(groups, **optim_kwargs)
    total = int(trainer.estimated_stepping_batches)  # (this also sets the training data up)
    warmup = int(round(warmup_epochs * steps_per_epoch(trainer, total)))
    if schedule not in ("cosine", "poly"):
        raise ValueError(f"model.schedule must be 'cosine' or 'poly', got {schedule!r}")
    scheduler = warmup_cosine_schedule(optimizer, warmup, total, min_lr_ratio, schedule,
                                       poly_power)  # fmt: skip
    return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}
