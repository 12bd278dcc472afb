"""LightningDataModules; the raw readers they wrap are in :mod:`datamodules.datasets`."""

from datamodules.base import PretrainDataModule
from datamodules.classification import (
    CIFAR10DataModule,
    CIFAR100DataModule,
    DigitsDataModule,
    ImageFolderDataModule,
    ISICDataModule,
    SVHNDataModule,
)
from datamodules.condensation import ClassBank, CondensationDataModule
from datamodules.medical import (
    BTCVDataModule,
    HippocampusDataModule,
    MMWHSDataModule,
    NiftiFolderDataModule,
    SyntheticMedicalDataModule,
)
from datamodules.multidomain import MultiDomainDataModule
from datamodules.segmentation import SegmentationDataModule
from datamodules.segmentation_sets import (
    CityscapesDataModule,
    ISICSegmentationDataModule,
    PotsdamDataModule,
    PotsdamTilesDataModule,
    SegmentationFolderDataModule,
    VOCDataModule,
)
from datamodules.synthetic import (
    SyntheticDataModule,
    SyntheticSegmentationDataModule,
)
from datamodules.textured import (
    DigitScenesDataModule,
    DigitSegmentationDataModule,
    TexturedScenesDataModule,
    TexturedSegmentationDataModule,
)

__all__ = [
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
