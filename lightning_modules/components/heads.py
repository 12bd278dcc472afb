"""Projection heads."""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor, nn


class MLPHead(nn.Module):
    """MLP projector ``in -> hidden... -> out`` (Linear, [BN], ReLU per hidden layer).

    SimCLR uses one hidden layer (``hidden_dims=[2048]``, ``out_dim=128``); solo-learn's
    CIFAR recipe uses the same with BN.  ``hidden_dims=[]`` gives a linear projector.

    Args:
        in_dim: Input dimension.
        hidden_dims: Hidden layer widths.
        out_dim: Output dimension.
        batch_norm: Batch-norm after each hidden linear layer.
        last_batch_norm: Affine-free batch-norm on the output (as in SimCLR v2 / BYOL variants).
    """

    def __init__(
        self,
        in_dim: int,
        hidden_dims: Sequence[int] = (2048,),
        out_dim: int = 128,
        batch_norm: bool = True,
        last_batch_norm: bool = False,
    ) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        prev = in_dim
        for width in hidden_dims:
            layers.append(nn.Linear(prev, width, bias=not batch_norm))
            if batch_norm:
                layers.append(nn.BatchNorm1d(width))
            layers.append(nn.ReLU(inplace=True))
            prev = width
        layers.append(nn.Linear(prev, out_dim, bias=not last_batch_norm))
        if last_batch_norm:
            layers.append(nn.BatchNorm1d(out_dim, affine=False))
        self.net = nn.Sequential(*layers)
        self.out_dim = out_dim

    def forward(self, x: Tensor) -> Tensor:
        """Project ``(B, in_dim)`` to ``(B, out_dim)``."""
        return self.net(x)
