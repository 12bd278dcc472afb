"""Contrastive and self-supervised objectives as LightningModules."""

from lightning_modules.base import PretrainModule
from lightning_modules.directclr import DirectCLR
from lightning_modules.glcnet import GLCNet
from lightning_modules.segmentation_finetune import SegmentationFineTune
from lightning_modules.simclr import SimCLR

__all__ = ["DirectCLR", "GLCNet", "PretrainModule", "SegmentationFineTune", "SimCLR"]
