"""Contrastive and self-supervised objectives as LightningModules over one task base.

The graph methods (GRACE, ARIEL and their base) import torch_geometric; they load on first
use (``contraseg.lightning_modules.ARIEL``), so image runs do not pay for it.
"""

import importlib
from typing import Any

from contraseg.lightning_modules.attention_contrast import AttentionGuidedContrast
from contraseg.lightning_modules.classifier import ImageClassifier
from contraseg.lightning_modules.claws import CLAWS
from contraseg.lightning_modules.condensation import DatasetCondensation
from contraseg.lightning_modules.dense_task import DenseTask
from contraseg.lightning_modules.directclr import DirectCLR
from contraseg.lightning_modules.embedding_task import EmbeddingTask
from contraseg.lightning_modules.glcnet import GLCNet
from contraseg.lightning_modules.hcsc import HCSC
from contraseg.lightning_modules.local_contrast import SupervisedLocalContrast
from contraseg.lightning_modules.moco import MoCoV2
from contraseg.lightning_modules.momentum_task import MomentumTask
from contraseg.lightning_modules.multidomain import MultiDomainSegmentation
from contraseg.lightning_modules.patch_contrast import PatchContrastAdaptation
from contraseg.lightning_modules.pixel_contrast import PixelContrast
from contraseg.lightning_modules.segmentation_finetune import SegmentationFineTune
from contraseg.lightning_modules.simclr import SimCLR
from contraseg.lightning_modules.source_free import SourceFreeAdaptation
from contraseg.lightning_modules.supcon import SupCon
from contraseg.lightning_modules.task import BaseTask, TaskLoss

_LAZY = {"ARIEL": "ariel", "GRACE": "grace", "GraphContrastTask": "graph_task"}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(f"{__name__}.{_LAZY[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "ARIEL",
    "AttentionGuidedContrast",
    "BaseTask",
    "CLAWS",
    "DatasetCondensation",
    "DenseTask",
    "DirectCLR",
    "EmbeddingTask",
    "GLCNet",
    "GRACE",
    "GraphContrastTask",
    "HCSC",
    "ImageClassifier",
    "MoCoV2",
    "MomentumTask",
    "MultiDomainSegmentation",
    "PatchContrastAdaptation",
    "PixelContrast",
    "SegmentationFineTune",
    "SimCLR",
    "SourceFreeAdaptation",
    "SupCon",
    "SupervisedLocalContrast",
    "TaskLoss",
]
