"""Domain-specific batch normalisation for any network (Boutillon et al., MICCAI 2021).

:func:`convert_domain_bn` replaces every batch-norm layer of a module (``nn.BatchNorm1d/2d/3d``
and their subclasses, e.g. timm's ``BatchNormAct2d``, which keep their activation) by a
:class:`DomainBatchNorm` holding one copy per domain: its own running statistics and affine
parameters, initialised from the original layer.  Convolutions and everything else stay
shared.  The domain of each sample is set before the forward (:func:`set_domain`, or the
:func:`domain_context` manager); a batch mixing domains is split so every sample is
normalised with its own domain's statistics (one BN call per domain present, batched).
"""

from __future__ import annotations

import copy
from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import Tensor, nn

__all__ = ["DomainBatchNorm", "convert_domain_bn", "domain_context", "set_domain"]


class DomainBatchNorm(nn.Module):
    """One batch-norm layer per domain, selected per sample by ``self.domain``.

    Args:
        bn: The layer to replicate (its class, statistics and parameters are copied).
        num_domains: Number of domains.
    """

    def __init__(self, bn: nn.modules.batchnorm._BatchNorm, num_domains: int) -> None:
        super().__init__()
        if num_domains < 1:
            raise ValueError(f"num_domains must be >= 1, got {num_domains}")
        self.bns = nn.ModuleList([copy.deepcopy(bn) for _ in range(num_domains)])
        self.domain: Tensor | int | None = None

    def forward(self, x: Tensor) -> Tensor:  # noqa: D102
        d = self.domain
        if d is None:
            raise RuntimeError("DomainBatchNorm: no domain set (call set_domain(model, domain))")
        if isinstance(d, int):
            return self.bns[d](x)
        d = d.to(x.device)
        if d.shape != (x.shape[0],):
            raise ValueError(f"domain ids {tuple(d.shape)} for a batch of {x.shape[0]}")
        present = torch.unique(d).tolist()
        if len(present) == 1:
            return self.bns[int(present[0])](x)
        out = torch.empty_like(x)
        for k in present:  # one BN call per domain present in the batch
            rows = d == k
            out[rows] = self.bns[int(k)](x[rows])
        return out


def convert_domain_bn(module: nn.Module, num_domains: int) -> nn.Module:
    """Replace every batch-norm layer of ``module`` (in place) by a :class:`DomainBatchNorm`.

    Returns:
        ``module`` (or the replacement, if ``module`` itself is a batch-norm layer).
    """
    if isinstance(module, nn.modules.batchnorm._BatchNorm):
        return DomainBatchNorm(module, num_domains)
    for name, child in module.named_children():
        setattr(module, name, convert_domain_bn(child, num_domains))
    return module


def set_domain(module: nn.Module, domain: Tensor | int | None) -> None:
    """Set the domain (an int, or ``(B,)`` ids) of every :class:`DomainBatchNorm` in ``module``."""
    for layer in module.modules():
        if isinstance(layer, DomainBatchNorm):
            layer.domain = domain


@contextmanager
def domain_context(module: nn.Module, domain: Tensor | int) -> Iterator[None]:
    """Forward passes inside the block use ``domain``; the previous setting is restored."""
    layers = [m for m in module.modules() if isinstance(m, DomainBatchNorm)]
    previous = [m.domain for m in layers]
    set_domain(module, domain)
    try:
        yield
    finally:
        for layer, value in zip(layers, previous):
            layer.domain = value
