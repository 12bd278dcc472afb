"""LightningDataModules; the raw readers they wrap are in :mod:`contraseg.datamodules.datasets`."""

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

__all__ = [
    "ADE20KDataModule",
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
