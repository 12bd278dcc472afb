"""Graph encoders by registry: GRACE's / ARIEL's GCN, and the raw features as a reference.

**The graph-encoder contract.**  A builder registered under a name
(:func:`register_graph_encoder`) is called as ``build(in_channels=..., hidden_channels=...,
num_layers=..., activation=...)`` (a builder without some part ignores its argument) and
returns an ``nn.Module`` ``encoder`` with

* ``encoder(x, edge_index, edge_weight=None)``: node embeddings ``(n, encoder.out_channels)``
  of a sparse graph (``edge_index`` ``(2, E)``, both directions, no self-loops);
* ``encoder.forward_dense(x, adj)``: the same function of a dense ``(n, n)`` adjacency
  without self-loops, which may be fractional and carry gradients (ARIEL's attack
  differentiates through it); for a 0/1 ``adj`` it equals the sparse path;
* ``encoder.out_channels``: the embedding width.

:func:`check_graph_encoder` verifies it on every built encoder.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn
from torch_geometric.nn import GCNConv

__all__ = [
    "GRAPH_ENCODERS",
    "GCNEncoder",
    "FeatureEncoder",
    "build_graph_encoder",
    "check_graph_encoder",
    "gcn_normalize_dense",
    "register_graph_encoder",
]

GRAPH_ENCODERS: dict[str, Callable[..., nn.Module]] = {}


Builder = Callable[..., nn.Module]


def register_graph_encoder(name: str) -> Callable[[Builder], Builder]:
    """Decorator registering a graph-encoder builder under ``name`` (see the module contract)."""

    def add(builder: Builder) -> Builder:
        if name in GRAPH_ENCODERS:
            raise ValueError(f"graph encoder {name!r} is registered already")
        GRAPH_ENCODERS[name] = builder
        return builder

    return add


def gcn_normalize_dense(adj: Tensor) -> Tensor:
    r"""``D^{-1/2} (A + I) D^{-1/2}`` of a dense adjacency (Kipf & Welling's propagation matrix).

    ``D`` is the row sum of ``A + I``; rows of zero degree stay zero (as ARIEL's
    ``normalize_adj_tensor`` and torch_geometric's ``gcn_norm``).
    """
    a = adj + torch.eye(adj.shape[0], dtype=adj.dtype, device=adj.device)
    d = a.sum(1).pow(-0.5)
    d = torch.where(torch.isinf(d), torch.zeros_like(d), d)
    return d[:, None] * a * d[None, :]


def _activation(name: str) -> nn.Module:
    table: dict[str, Callable[[], nn.Module]] = {"relu": nn.ReLU, "prelu": nn.PReLU,
                                                 "rrelu": nn.RReLU, "elu": nn.ELU}  # fmt: skip
    if name not in table:
        raise ValueError(f"model.activation must be one of {sorted(table)}, got {name!r}")
    return table[name]()


class GCNEncoder(nn.Module):
    """GRACE's encoder: ``num_layers`` GCN layers ``in -> 2h -> ... -> 2h -> h``.

    The activation follows every layer, the last included, and is one module shared by all
    layers (one PReLU slope for the whole encoder), as GRACE's and ARIEL's ``Encoder``.  The
    layers are torch_geometric's ``GCNConv`` (Glorot weights, zero bias; ARIEL's own
    ``layers.py`` draws them uniformly in ``±1/sqrt(out)``).

    Args:
        in_channels: Node feature width.
        hidden_channels: ``h``, the embedding width.
        num_layers: GCN layers (>= 2, as the official ``Encoder`` asserts).
        activation: ``relu``, ``prelu`` or ``rrelu`` (the official per-data-set choice).
    """

    def __init__(self, in_channels: int, hidden_channels: int = 128, num_layers: int = 2,
                 activation: str = "relu") -> None:  # fmt: skip
        super().__init__()
        if num_layers < 2:
            raise ValueError(f"model.num_layers must be >= 2, got {num_layers}")
        widths = [in_channels] + [2 * hidden_channels] * (num_layers - 1) + [hidden_channels]
        self.convs = nn.ModuleList(GCNConv(a, b) for a, b in zip(widths[:-1], widths[1:],
                                                                  strict=True))  # fmt: skip
        self.activation = _activation(activation)
        self.out_channels = hidden_channels

    def forward(self, x: Tensor, edge_index: Tensor, edge_weight: Tensor | None = None) -> Tensor:
        """Embeddings of a sparse graph."""
        for conv in self.convs:
            x = self.activation(conv(x, edge_index, edge_weight))
        return x

    def forward_dense(self, x: Tensor, adj: Tensor) -> Tensor:
        """Embeddings of a dense (possibly fractional) adjacency without self-loops."""
        propagate = gcn_normalize_dense(adj)
        for conv in self.convs:
            x = self.activation(propagate @ conv.lin(x) + conv.bias)
        return x


class FeatureEncoder(nn.Module):
    """The node features themselves (no parameters): the raw-feature reference row."""

    def __init__(self, in_channels: int) -> None:
        super().__init__()
        self.out_channels = in_channels

    def forward(self, x: Tensor, edge_index: Tensor, edge_weight: Tensor | None = None) -> Tensor:
        """``x``."""
        return x

    def forward_dense(self, x: Tensor, adj: Tensor) -> Tensor:
        """``x``."""
        return x


@register_graph_encoder("gcn")
def _gcn(in_channels: int, hidden_channels: int = 128, num_layers: int = 2,
         activation: str = "relu", **_: Any) -> nn.Module:  # fmt: skip
    return GCNEncoder(in_channels, hidden_channels, num_layers, activation)


@register_graph_encoder("features")
def _features(in_channels: int, **_: Any) -> nn.Module:
    return FeatureEncoder(in_channels)


def check_graph_encoder(encoder: nn.Module, name: str) -> None:
    """Raise a ``TypeError`` naming ``name`` and what is missing if the contract is not met."""
    missing = [a for a in ("forward_dense", "out_channels") if not hasattr(encoder, a)]
    if missing:
        raise TypeError(f"graph encoder {name!r} lacks {missing} (see "
                        "contraseg.lightning_modules.components.graph_encoders)")  # fmt: skip


def build_graph_encoder(name: str, **kwargs: Any) -> nn.Module:
    """The encoder registered as ``name``, built with ``kwargs`` and checked."""
    if name not in GRAPH_ENCODERS:
        raise ValueError(f"model.encoder must be one of {sorted(GRAPH_ENCODERS)}, got {name!r}")
    encoder = GRAPH_ENCODERS[name](**kwargs)
    check_graph_encoder(encoder, name)
    return encoder
