"""ConvNet of the dataset-condensation literature (Gidaris & Komodakis; DC / DSA / DCC).

``depth`` x [conv ``width`` 3x3 (padding 1; 3 for 1-channel 28 px input, as the official
code), norm, activation, pool 2] + linear.  Norms as the official ``networks.py``:
``instancenorm`` is ``GroupNorm(C, C, affine=True)``, ``groupnorm`` is ``GroupNorm(4, C)``,
``layernorm`` normalises ``(C, H, W)``; 28 px inputs are treated as 32 px.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

__all__ = ["NORMS", "ConvNet", "reset_parameters"]

NORMS = ("instancenorm", "batchnorm", "groupnorm", "layernorm", "none")
ACTIVATIONS = {"relu": lambda: nn.ReLU(), "leakyrelu": lambda: nn.LeakyReLU(0.01),
               "sigmoid": lambda: nn.Sigmoid()}  # fmt: skip
POOLINGS = {"avgpooling": lambda: nn.AvgPool2d(2, 2), "maxpooling": lambda: nn.MaxPool2d(2, 2),
            "none": None}  # fmt: skip


def _norm(name: str, channels: int, size: int) -> nn.Module | None:
    if name == "instancenorm":
        return nn.GroupNorm(channels, channels, affine=True)
    if name == "batchnorm":
        return nn.BatchNorm2d(channels)
    if name == "groupnorm":
        return nn.GroupNorm(4, channels, affine=True)
    if name == "layernorm":
        return nn.LayerNorm([channels, size, size], elementwise_affine=True)
    return None


class ConvNet(nn.Module):
    """ConvNet-``depth`` classifier.

    Args:
        in_channels: Image channels.
        num_classes: Output logits.
        image_size: Square input size (28 is padded as the official code does).
        width: Channels of every conv.
        depth: Conv blocks.
        norm: One of :data:`NORMS`.
        activation: ``relu``, ``leakyrelu`` or ``sigmoid``.
        pooling: ``avgpooling``, ``maxpooling`` or ``none``.

    Raises:
        ValueError: On an unknown norm / activation / pooling, or a size pooled below 1 px.
    """

    def __init__(self, in_channels: int = 3, num_classes: int = 10, image_size: int = 32,
                 width: int = 128, depth: int = 3, norm: str = "instancenorm",
                 activation: str = "relu", pooling: str = "avgpooling") -> None:  # fmt: skip
        super().__init__()
        if norm not in NORMS:
            raise ValueError(f"ConvNet norm must be one of {NORMS}, got {norm!r}")
        if activation not in ACTIVATIONS:
            raise ValueError(f"ConvNet activation must be one of {tuple(ACTIVATIONS)}, "
                             f"got {activation!r}")
        if pooling not in POOLINGS:
            raise ValueError(f"ConvNet pooling must be one of {tuple(POOLINGS)}, got {pooling!r}")
        size = 32 if image_size == 28 else image_size
        layers: list[nn.Module] = []
        channels = in_channels
        for d in range(depth):
            pad = 3 if in_channels == 1 and d == 0 and image_size == 28 else 1
            layers.append(nn.Conv2d(channels, width, 3, padding=pad))
            if (n := _norm(norm, width, size)) is not None:
                layers.append(n)
            layers.append(ACTIVATIONS[activation]())
            channels = width
            if POOLINGS[pooling] is not None:
                layers.append(POOLINGS[pooling]())
                size //= 2
                if size < 1:
                    raise ValueError(f"ConvNet: {depth} poolings reduce {image_size} px below 1 px")
        self.features = nn.Sequential(*layers)
        self.num_features = width * size * size
        self.classifier = nn.Linear(self.num_features, num_classes)

    def embed(self, x: Tensor) -> Tensor:
        """Flattened features before the classifier ``(B, width * s * s)``."""
        return self.features(x).flatten(1)

    def forward(self, x: Tensor) -> Tensor:  # noqa: D102
        return self.classifier(self.embed(x))


@torch.no_grad()
def reset_parameters(module: nn.Module) -> None:
    """Re-initialise every submodule that has ``reset_parameters`` (a fresh random network)."""
    for m in module.modules():
        if m is not module and hasattr(m, "reset_parameters"):
            m.reset_parameters()
        if isinstance(m, nn.BatchNorm2d):
            m.reset_running_stats()
