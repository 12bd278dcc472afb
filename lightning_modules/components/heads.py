"""Projection heads and :class:`Projector`, the one declaration of a projector's shape."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from torch import Tensor, nn

__all__ = ["ACTIVATIONS", "ConvProjectionHead", "MLPHead", "Projector"]

ACTIVATIONS: dict[str, type[nn.Module]] = {"relu": nn.ReLU, "elu": nn.ELU}


@dataclass(frozen=True)
class Projector:
    """The shape of a method's projection head: one argument, ``model.projector``.

    Every method declares ``projector: Projector = Projector(...)`` with its paper's
    values; a config changes single fields (``projector: {out_dim: 64}`` keeps the
    method's other fields).

    Attributes:
        hidden_dims: Hidden widths (``[]``: a linear projector).
        out_dim: Output (embedding) width.
        batch_norm: BatchNorm in the hidden layers.  An MLP keeps its activation without
            it; a 1x1-convolution head (Zhao et al., Hu et al.) has BatchNorm + ReLU with it
            and nothing between its convolutions without it (Hu et al.'s official ``mlp``).
        activation: The MLP's hidden activation, ``relu`` or ``elu`` (GRACE's and ARIEL's
            projection: Linear, ELU, Linear); convolution heads use ReLU only.
    """

    hidden_dims: Sequence[int] = (2048,)
    out_dim: int = 128
    batch_norm: bool = True
    activation: Literal["relu", "elu"] = "relu"

    def __post_init__(self) -> None:
        if int(self.out_dim) < 1 or any(int(w) < 1 for w in self.hidden_dims):
            raise ValueError(f"model.projector widths must be >= 1, got hidden_dims "
                             f"{list(self.hidden_dims)} and out_dim {self.out_dim}")  # fmt: skip
        if self.activation not in ACTIVATIONS:
            raise ValueError(f"model.projector.activation must be one of {sorted(ACTIVATIONS)}, "
                             f"got {self.activation!r}")  # fmt: skip

    @classmethod
    def of(cls, value: Projector | Mapping[str, Any]) -> Projector:
        """A :class:`Projector` from itself or all its fields (as ``hparams`` store it).

        Raises:
            ValueError: A mapping without every field: its missing fields would take
                :class:`Projector`'s defaults, not the method's (from the command line a
                partial ``projector`` merges onto the method's default instead).
        """
        if isinstance(value, cls):
            return value
        fields = {f.name for f in dataclasses.fields(cls)}
        value = {**({"activation": "relu"} if "activation" not in value else {}), **value}
        # (``activation`` came with issue 28: checkpoints from before it store the others)
        if set(value) != fields:
            raise ValueError(f"model.projector: give a Projector or all of {sorted(fields)}, "
                             f"got {dict(value)}")  # fmt: skip
        return cls(**value)

    def mlp(self, in_dim: int) -> MLPHead:
        """The MLP head ``in_dim -> hidden_dims -> out_dim``."""
        return MLPHead(in_dim, [int(w) for w in self.hidden_dims], int(self.out_dim),
                       self.batch_norm, self.activation)  # fmt: skip

    def conv(self, in_channels: int) -> ConvProjectionHead:
        """The 1x1-convolution head ``in_channels -> hidden_dims -> out_dim``."""
        if self.activation != "relu":
            raise ValueError("model.projector.activation: a convolution head uses ReLU")
        return ConvProjectionHead(in_channels, [int(w) for w in self.hidden_dims],
                                  int(self.out_dim), norm_act=self.batch_norm)  # fmt: skip


class MLPHead(nn.Module):
    """MLP projector ``in -> hidden... -> out`` (Linear, [BN], activation per hidden layer).

    SimCLR uses one hidden layer (``hidden_dims=[2048]``, ``out_dim=128``); solo-learn's
    CIFAR recipe uses the same with BN.  ``hidden_dims=[]`` gives a linear projector.

    Args:
        in_dim: Input dimension.
        hidden_dims: Hidden layer widths.
        out_dim: Output dimension.
        batch_norm: Batch-norm after each hidden linear layer.
        activation: ``relu`` or ``elu`` after each hidden layer.
    """

    def __init__(
        self,
        in_dim: int,
        hidden_dims: Sequence[int] = (2048,),
        out_dim: int = 128,
        batch_norm: bool = True,
        activation: str = "relu",
    ) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        prev = in_dim
        for width in hidden_dims:
            layers.append(nn.Linear(prev, width, bias=not batch_norm))
            if batch_norm:
                layers.append(nn.BatchNorm1d(width))
            layers.append(ACTIVATIONS[activation]())
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
