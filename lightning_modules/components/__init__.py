"""Reusable building blocks: backbones, heads, optimisers and distributed helpers."""

from lightning_modules.components.backbone import Backbone
from lightning_modules.components.heads import ConvProjectionHead, MLPHead
from lightning_modules.components.optim import LARS, build_optimizer, warmup_cosine_schedule

__all__ = [
    "LARS",
    "Backbone",
    "ConvProjectionHead",
    "MLPHead",
    "build_optimizer",
    "warmup_cosine_schedule",
]
