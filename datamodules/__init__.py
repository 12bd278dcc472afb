"""LightningDataModules; the raw readers they wrap are in :mod:`contraseg.datamodules.datasets`.

The graph data modules import torch_geometric; they load on first use.
"""

import importlib
from typing import Any

from contraseg.datamodules.base import PretrainDataModule
from contraseg.datamodules.classification import (
    CIFAR10DataModule,
    CIFAR100DataModule,
    DigitsDataModule,
    ImageFolderDataModule,
    ISICDataModule,
    SVHNDataModule,
)
from contraseg.datamodules.condensation import ClassBank, CondensationDataModule
from contraseg.datamodules.domain_adaptation import SourceTargetDataModule
from contraseg.datamodules.medical import (
    BTCVDataModule,
    HippocampusDataModule,
    MMWHSDataModule,
    NiftiFolderDataModule,
    SyntheticMedicalDataModule,
)
from contraseg.datamodules.multidomain import MultiDomainDataModule
from contraseg.datamodules.segmentation import SegmentationDataModule
from contraseg.datamodules.segmentation_sets import (
    ADE20KDataModule,
    CityscapesDataModule,
    GTA5DataModule,
    ISICSegmentationDataModule,
    PotsdamDataModule,
    PotsdamTilesDataModule,
    SegmentationFolderDataModule,
    SynthiaDataModule,
    VOCDataModule,
)
from contraseg.datamodules.synthetic import (
    SyntheticDataModule,
    SyntheticSegmentationDataModule,
)
from contraseg.datamodules.textured import (
    DigitScenesDataModule,
    DigitSegmentationDataModule,
    TexturedScenesDataModule,
    TexturedSegmentationDataModule,
)

_GRAPHS = ("AmazonDataModule", "CSBMDataModule", "CoauthorDataModule", "GraphDataModule",
           "PlanetoidDataModule")


def __getattr__(name: str) -> Any:
    if name in _GRAPHS:
        return getattr(importlib.import_module(f"{__name__}.graphs"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "ADE20KDataModule",
    "AmazonDataModule",
    "CSBMDataModule",
    "CoauthorDataModule",
    "GraphDataModule",
    "PlanetoidDataModule",
    "ClassBank",
    "CondensationDataModule",
    "DigitsDataModule",
    "BTCVDataModule",
    "HippocampusDataModule",
    "MMWHSDataModule",
    "MultiDomainDataModule",
    "NiftiFolderDataModule",
    "SyntheticMedicalDataModule",
    "CityscapesDataModule",
    "GTA5DataModule",
    "SourceTargetDataModule",
    "SynthiaDataModule",
    "PotsdamDataModule",
    "PotsdamTilesDataModule",
    "VOCDataModule",
    "CIFAR10DataModule",
    "CIFAR100DataModule",
    "ImageFolderDataModule",
    "ISICDataModule",
    "ISICSegmentationDataModule",
    "PretrainDataModule",
    "SVHNDataModule",
    "SegmentationFolderDataModule",
    "SegmentationDataModule",
    "SyntheticDataModule",
    "SyntheticSegmentationDataModule",
    "DigitScenesDataModule",
    "DigitSegmentationDataModule",
    "TexturedScenesDataModule",
    "TexturedSegmentationDataModule",
]
