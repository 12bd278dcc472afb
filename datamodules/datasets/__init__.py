"""Raw data-set readers, one file per data set (no LightningDataModule here).

Each reader reads one on-disk format and yields ``{"image": uint8 (or the file's dtype)
tv_tensors.Image, "mask"/"label", "name"}`` items; its class names, palette, ignore index,
statistics and default sizes are defined once, in its ``INFO`` (:class:`DatasetInfo`).
"""

from contraseg.datamodules.datasets.cifar import CIFARDataset
from contraseg.datamodules.datasets.cityscapes import CityscapesDataset
from contraseg.datamodules.datasets.image_folder import ImageFolderDataset
from contraseg.datamodules.datasets.info import DatasetInfo
from contraseg.datamodules.datasets.potsdam import PotsdamCrops, PotsdamTiles
from contraseg.datamodules.datasets.segmentation_folder import SegmentationFolder
from contraseg.datamodules.datasets.svhn import SVHNDataset
from contraseg.datamodules.datasets.synthetic import SyntheticScenes
from contraseg.datamodules.datasets.textured_scenes import SceneSpec, TexturedScenes
from contraseg.datamodules.datasets.voc import VOCSegmentation

__all__ = [
    "CIFARDataset",
    "CityscapesDataset",
    "DatasetInfo",
    "ImageFolderDataset",
    "PotsdamCrops",
    "PotsdamTiles",
    "SVHNDataset",
    "SceneSpec",
    "SegmentationFolder",
    "SyntheticScenes",
    "TexturedScenes",
    "VOCSegmentation",
]
