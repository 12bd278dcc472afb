"""Reusable building blocks: networks, heads, optimisers and distributed helpers."""

from contraseg.lightning_modules.components.heads import ConvProjectionHead, MLPHead, Projector
from contraseg.lightning_modules.components.networks import TimmEncoder, build_segmentation_net
from contraseg.lightning_modules.components.optim import (
    LARS,
    build_optimizer,
    warmup_cosine_schedule,
)

__all__ = [
    "LARS",
    "ConvProjectionHead",
    "MLPHead",
    "Projector",
    "TimmEncoder",
    "build_optimizer",
    "build_segmentation_net",
    "warmup_cosine_schedule",
]
