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
    """

    def __init__(
        self,
        in_dim: int,
        hidden_dims: Sequence[int] = (2048,),
        out_dim: int = 128,
        batch_norm: bool = True,
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
        layers.append(nn.Linear(prev, out_dim))
        self.net = nn.Sequential(*layers)
        self.out_dim = out_dim

    def forward(self, x: Tensor) -> Tensor:
        """Project ``(B, in_dim)`` to ``(B, out_dim)``."""
        return self.net(x)


class ConvProjectionHead(nn.Module):
    """Dense projector of 1x1 convolutions ``in -> hidden... -> out`` (BN + ReLU between).

    Zhao et al. (2021) project decoder features with two 1x1 convolutions of 256
    channels (BN + ReLU after the first); Hu et al.'s official ``mlp`` is ``64 -> 256 ->
    128`` with nothing between the convolutions (``norm_act=False``).

    Args:
        in_channels: Input channels.
        hidden_channels: Widths of the hidden 1x1 convolutions.
        out_channels: Output channels (embedding dimension).
        norm_act: BatchNorm + ReLU after each hidden convolution.
    """

    def __init__(
        self,
        in_channels: int,
        hidden_channels: Sequence[int] = (256,),
        out_channels: int = 256,
        norm_act: bool = True,
    ) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        prev = in_channels
        for width in hidden_channels:
            layers.append(nn.Conv2d(prev, width, kernel_size=1, bias=not norm_act))
            if norm_act:
                layers += [nn.BatchNorm2d(width), nn.ReLU(inplace=True)]
            prev = width
        layers.append(nn.Conv2d(prev, out_channels, kernel_size=1))
        self.net = nn.Sequential(*layers)
        self.out_channels = out_channels

    def forward(self, x: Tensor) -> Tensor:
        """Project ``(B, in_channels, H, W)`` to ``(B, out_channels, H, W)`` (not normalised)."""
        return self.net(x)
