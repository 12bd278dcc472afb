"""Contrastive and self-supervised objectives as LightningModules."""

from lightning_modules.attention_contrast import AttentionGuidedContrast
from lightning_modules.base import PretrainModule
from lightning_modules.directclr import DirectCLR
from lightning_modules.glcnet import GLCNet
from lightning_modules.local_contrast import SupervisedLocalContrast
from lightning_modules.pixel_contrast import PixelContrast
from lightning_modules.segmentation_finetune import SegmentationFineTune
from lightning_modules.simclr import SimCLR

__all__ = [
    "AttentionGuidedContrast",
    "DirectCLR",
    "GLCNet",
    "PixelContrast",
    "PretrainModule",
    "SegmentationFineTune",
    "SimCLR",
    "SupervisedLocalContrast",
]
