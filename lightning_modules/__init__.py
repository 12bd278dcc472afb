"""Contrastive and self-supervised objectives as LightningModules over one task base."""

from lightning_modules.attention_contrast import AttentionGuidedContrast
from lightning_modules.classifier import ImageClassifier
from lightning_modules.claws import CLAWS
from lightning_modules.condensation import DatasetCondensation
from lightning_modules.dense_task import DenseTask
from lightning_modules.directclr import DirectCLR
from lightning_modules.embedding_task import EmbeddingTask
from lightning_modules.glcnet import GLCNet
from lightning_modules.hcsc import HCSC
from lightning_modules.local_contrast import SupervisedLocalContrast
from lightning_modules.moco import MoCoV2
from lightning_modules.momentum_task import MomentumTask
from lightning_modules.multidomain import MultiDomainSegmentation
from lightning_modules.pixel_contrast import PixelContrast
from lightning_modules.segmentation_finetune import SegmentationFineTune
from lightning_modules.simclr import SimCLR
from lightning_modules.supcon import SupCon
from lightning_modules.task import BaseTask, TaskLoss

__all__ = [
    "AttentionGuidedContrast",
    "BaseTask",
    "CLAWS",
    "DatasetCondensation",
    "DenseTask",
    "DirectCLR",
    "EmbeddingTask",
    "GLCNet",
    "HCSC",
    "ImageClassifier",
    "MoCoV2",
    "MomentumTask",
    "MultiDomainSegmentation",
    "PixelContrast",
    "SegmentationFineTune",
    "SimCLR",
    "SupCon",
    "SupervisedLocalContrast",
    "TaskLoss",
]
