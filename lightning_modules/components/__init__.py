"""Reusable building blocks: backbones, heads, optimisers and distributed helpers."""

from lightning_modules.components.backbone import Backbone
from lightning_modules.components.heads import MLPHead
from lightning_modules.components.optim import LARS, build_optimizer, warmup_cosine_schedule

__all__ = ["LARS", "Backbone", "MLPHead", "build_optimizer", "warmup_cosine_schedule"]
