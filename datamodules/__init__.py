"""LightningDataModules and the raw datasets they wrap."""

from datamodules.base import PretrainDataModule
from datamodules.classification import (
    CIFAR10DataModule,
    CIFAR100DataModule,
    ImageFolderDataModule,
    SVHNDataModule,
)
from datamodules.synthetic import SyntheticDataModule, SyntheticScenes

__all__ = [
    "CIFAR10DataModule",
    "CIFAR100DataModule",
    "ImageFolderDataModule",
    "PretrainDataModule",
    "SVHNDataModule",
    "SyntheticDataModule",
    "SyntheticScenes",
]
