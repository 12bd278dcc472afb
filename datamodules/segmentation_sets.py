"""Segmentation data modules: Cityscapes, VOC (+SBD), Potsdam, ADE20K, GTA5, SYNTHIA, your folders.

Each wraps a raw reader (``cityscapes.py``, ``voc.py``, ``potsdam.py``) in
:class:`~contraseg.datamodules.segmentation.SegmentationDataModule`, which adds label fractions,
joint augmentation and the unlabeled multi-view split.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

import torch
from torch.utils.data import Dataset

from contraseg.datamodules.datasets.ade20k import ADE20KDataset, ade20k_info
from contraseg.datamodules.datasets.cityscapes import CITYSCAPES, CityscapesDataset
from contraseg.datamodules.datasets.gta5 import GTA5, GTA5Dataset
from contraseg.datamodules.datasets.info import DatasetInfo
from contraseg.datamodules.datasets.io import require_dir
from contraseg.datamodules.datasets.isic import ISIC_SEG, ISICSegmentation
from contraseg.datamodules.datasets.potsdam import (
    POTSDAM,
    POTSDAM_TILES,
    PotsdamCrops,
    PotsdamTiles,
)
from contraseg.datamodules.datasets.segmentation_folder import SegmentationFolder, read_class_table
from contraseg.datamodules.datasets.synthia import SYNTHIA, SynthiaDataset
from contraseg.datamodules.datasets.voc import VOC, VOCSegmentation
from contraseg.datamodules.segmentation import SegmentationDataModule


def _band_stats(info: DatasetInfo, n_bands: int, mean: Sequence[float] | None,
                std: Sequence[float] | None) -> dict[str, list[float]]:
    """``null`` normalisation: the data set's statistics of the first ``n_bands``."""
    return {"mean": list(info.mean[:n_bands] if mean is None else mean),
            "std": list(info.std[:n_bands] if std is None else std)}  # fmt: skip


class CityscapesDataModule(SegmentationDataModule):
    """Cityscapes fine annotations (19 train ids), ``train`` (2,975) / ``val`` (500).

    Args:
        root: Folder with ``leftImg8bit/`` and ``gtFine/``.
        crop_size: Training crop side (Cityscapes's default from its ``DatasetInfo``).
        mean: Normalisation mean (Cityscapes's default: ImageNet's).
        std: Normalisation std.
        **kwargs: :class:`~contraseg.datamodules.segmentation.SegmentationDataModule` arguments.
    """

    info = CITYSCAPES
    check_splits = True

    def __init__(self, root: str, crop_size: int = CITYSCAPES.crop_size,
                 mean: Sequence[float] = CITYSCAPES.mean, std: Sequence[float] = CITYSCAPES.std,
                 **kwargs: Any) -> None:  # fmt: skip
        super().__init__(crop_size=crop_size, mean=mean, std=std, **kwargs)
        self.root = require_dir(root, "data.root (Cityscapes: leftImg8bit/ and gtFine/)")

    def train_names(self) -> list[str]:  # noqa: D102
        return list(CityscapesDataset(self.root, "train").names)

    def build(self, split: str, names: Sequence[str] | None = None) -> Dataset:  # noqa: D102
        return CityscapesDataset(self.root, split, names=names)


class VOCDataModule(SegmentationDataModule):
    """PASCAL VOC 2012 (21 classes); ``trainaug`` (10,582) when ``sbd_root`` is given.

    Args:
        root: ``VOC2012`` folder (or a folder containing ``VOCdevkit/VOC2012``).
        sbd_root: SBD ``benchmark_RELEASE`` folder for the augmented training set.
        crop_size: Training crop side (VOC's default from its ``DatasetInfo``).
        mean: Normalisation mean (VOC's default: ImageNet's).
        std: Normalisation std.
        **kwargs: :class:`~contraseg.datamodules.segmentation.SegmentationDataModule` arguments.
    """

    info = VOC
    check_splits = True
    tiny_crop = 32

    def __init__(self, root: str, sbd_root: str | None = None, crop_size: int = VOC.crop_size,
                 mean: Sequence[float] = VOC.mean, std: Sequence[float] = VOC.std,
                 **kwargs: Any) -> None:  # fmt: skip
        super().__init__(crop_size=crop_size, mean=mean, std=std, **kwargs)
        self.root = require_dir(root, "data.root (PASCAL VOC 2012)")
        self.sbd_root = require_dir(sbd_root, "data.sbd_root (SBD)") if sbd_root else None
        self.train_split = "trainaug" if sbd_root else "train"
        if sbd_root:
            self.name = "voc_trainaug"

    def train_names(self) -> list[str]:  # noqa: D102
        return list(VOCSegmentation(self.root, self.train_split, self.sbd_root).names)

    def build(self, split: str, names: Sequence[str] | None = None) -> Dataset:  # noqa: D102
        voc_split = self.train_split if split == "train" else "val"
        return VOCSegmentation(self.root, voc_split, self.sbd_root, names=names)


class PotsdamDataModule(SegmentationDataModule):
    """ISPRS Potsdam in GLCNet's 256x256 crop layout (``train_RGBIR/``, ``train_lbl/``, lists).

    Args:
        root: Folder with ``{train,val}_RGBIR/``, ``{train,val}_lbl/`` and the list files.
        bands: ``rgbir`` (4 bands, GLCNet) or ``rgb``.
        labeled_list: Official labeled list, e.g. ``trainR1`` (GLCNet's 1% split, 138
            crops); overrides ``label_fraction``.
        train_list: List of the whole training split (``train``: 13,824 crops).
        val_list: Validation list (``val``: 8,064, or ``valR1500``).
        missing: ``error`` or ``skip`` listed crops that are not on disk.
        strict_colours: A label pixel of a colour outside the six Potsdam classes is an error
            naming the file (default: it becomes the ignore index and is counted).
        crop_size: Training crop side (GLCNet's 256).
        mean: Normalisation mean; ``null``: GLCNet's statistics of the chosen ``bands``.
        std: Normalisation std; ``null``: as ``mean``.
        **kwargs: :class:`~contraseg.datamodules.segmentation.SegmentationDataModule` arguments.
    """

    info = POTSDAM
    check_splits = True

    def __init__(
        self,
        root: str,
        bands: Literal["rgb", "rgbir"] = "rgbir",
        labeled_list: str | None = None,
        train_list: str = "train",
        val_list: str = "val",
        missing: Literal["error", "skip"] = "error",
        strict_colours: bool = False,
        crop_size: int = POTSDAM.crop_size,
        mean: Sequence[float] | None = None,
        std: Sequence[float] | None = None,
        **kwargs: Any,
    ) -> None:
        n_bands = 4 if bands == "rgbir" else 3
        super().__init__(crop_size=crop_size, **_band_stats(self.info, n_bands, mean, std),
                         **kwargs)  # fmt: skip
        self.strict_colours = strict_colours
        if len(self.mean) != n_bands:
            raise ValueError(f"data.mean has {len(self.mean)} values but bands={bands!r}")
        self.root = require_dir(root, "data.root (Potsdam GLCNet crops)")
        self.bands, self.missing = bands, missing
        self.labeled_list, self.train_list, self.val_list = labeled_list, train_list, val_list

    def _crops(
        self, split: str, list_name: str, names: Sequence[str] | None = None
    ) -> PotsdamCrops:
        return PotsdamCrops(self.root, split, list_name, self.bands, names, self.missing,
                            self.strict_colours)  # fmt: skip

    def train_names(self) -> list[str]:  # noqa: D102
        return list(self._crops("train", self.train_list).names)

    def labeled_names(self) -> list[str]:  # noqa: D102
        if self.labeled_list is not None:
            return list(self._crops("train", self.labeled_list).names)
        return super().labeled_names()

    def build(self, split: str, names: Sequence[str] | None = None) -> Dataset:  # noqa: D102
        if split == "train":
            return self._crops("train", self.train_list, names)
        return self._crops("val", self.val_list)


class PotsdamTilesDataModule(SegmentationDataModule):
    """Raw 6000x6000 Potsdam tiles: random windows for training, a sliding grid for testing.

    The standard split (24 train / 14 test tiles) is used; label fractions select
    training *tiles*.  Windows are read through memory maps, never decoding a tile per
    sample (see :class:`~contraseg.datamodules.datasets.potsdam.PotsdamTiles`).

    Args:
        root: Folder with ``2_Ortho_RGB/`` or ``4_Ortho_RGBIR/`` and ``5_Labels_all*/``.
        bands: ``rgbir`` or ``rgb``.
        label_variant: ``full`` or ``noBoundary`` (eroded boundaries ignored).
        samples_per_epoch: Random training windows per epoch.
        strict_colours: Unknown label colours are an error naming the tile (default: ignored).
        crop_size: Training crop side (512-px windows).
        mean: Normalisation mean; ``null``: GLCNet's statistics of the chosen ``bands``.
        std: Normalisation std; ``null``: as ``mean``.
        **kwargs: :class:`~contraseg.datamodules.segmentation.SegmentationDataModule` arguments.
    """

    info = POTSDAM_TILES
    check_splits = True

    @classmethod
    def tiny_test_args(cls, init_args: dict[str, Any]) -> list[str]:  # noqa: D102
        return [*super().tiny_test_args(init_args), "--data.init_args.samples_per_epoch", "8"]

    def __init__(
        self,
        root: str,
        bands: Literal["rgb", "rgbir"] = "rgbir",
        label_variant: Literal["full", "noBoundary"] = "noBoundary",
        samples_per_epoch: int = 4000,
        strict_colours: bool = False,
        crop_size: int = POTSDAM_TILES.crop_size,
        mean: Sequence[float] | None = None,
        std: Sequence[float] | None = None,
        **kwargs: Any,
    ) -> None:
        n_bands = 4 if bands == "rgbir" else 3
        super().__init__(crop_size=crop_size, **_band_stats(self.info, n_bands, mean, std),
                         **kwargs)  # fmt: skip
        self.root = require_dir(root, "data.root (Potsdam tiles)")
        self.bands, self.label_variant = bands, label_variant
        self.samples_per_epoch, self.strict_colours = samples_per_epoch, strict_colours

    def train_names(self) -> list[str]:  # noqa: D102
        return list(self._tiles("train", None).tile_ids)

    def _tiles(self, split: str, names: Sequence[str] | None) -> PotsdamTiles:
        return PotsdamTiles(
            self.root, split, tile_ids=names, crop_size=self.crop_size,
            mode="random" if split == "train" else "sliding",
            samples_per_epoch=self.samples_per_epoch, bands=self.bands,
            label_variant=self.label_variant, seed=self.seed, strict_colours=self.strict_colours,
        )  # fmt: skip

    def build(self, split: str, names: Sequence[str] | None = None) -> Dataset:  # noqa: D102
        return self._tiles("train" if split == "train" else "test", names)


class SegmentationFolderDataModule(SegmentationDataModule):
    """Your own segmentation data: images and masks matched by name, a YAML/JSON class table.

    See :mod:`contraseg.datamodules.datasets.segmentation_folder` for the layout and the class
    table. Label fractions, joint augmentation and the unlabeled multi-view pretraining mode
    (``pretrain_views``) work as for every segmentation data module.

    Args:
        root: Data set folder.
        classes_file: Class table (default: ``root/classes.yaml``, else ``root/classes.json``).
        image_dir: Image folder relative to ``root`` (``{split}`` = the split).
        mask_dir: Mask folder relative to ``root``.
        mask_suffix: Text between the image name and the mask extension.
        train_split: Training split name.
        val_split: Validation split name.
        missing: ``error`` on an image without a mask, or ``skip`` it.
        **kwargs: :class:`~contraseg.datamodules.segmentation.SegmentationDataModule` arguments
            (normalisation defaults to the table's ``mean`` / ``std``).
    """

    check_splits = True

    def __init__(
        self,
        root: str,
        classes_file: str | None = None,
        image_dir: str = "images/{split}",
        mask_dir: str = "masks/{split}",
        mask_suffix: str = "",
        train_split: str = "train",
        val_split: str = "val",
        missing: Literal["error", "skip"] = "error",
        **kwargs: Any,
    ) -> None:
        folder = require_dir(root, "data.root (segmentation folder)")
        if classes_file is None:
            json_table = folder / "classes.json"
            classes_file = str(json_table if json_table.is_file() and not (
                folder / "classes.yaml").is_file() else folder / "classes.yaml")  # fmt: skip
        info = read_class_table(classes_file, name=folder.name)
        self.info = info  # instance metadata (before the base reads the statistics)
        self.name, self.num_classes, self.classes = info.name, info.num_classes, info.classes
        self.palette, self.ignore_index = info.palette, info.ignore_index
        super().__init__(**kwargs)
        self.root, self.missing = folder, missing
        self.layout = {"image_dir": image_dir, "mask_dir": mask_dir, "mask_suffix": mask_suffix}
        self.splits = {"train": train_split, "val": val_split}

    def _folder(self, split: str, names: Sequence[str] | None = None) -> SegmentationFolder:
        return SegmentationFolder(self.root, self.splits[split], self.info, names=names,
                                  missing=self.missing, **self.layout)  # type: ignore[arg-type]  # fmt: skip

    def train_names(self) -> list[str]:  # noqa: D102
        return list(self._folder("train").names)

    def build(self, split: str, names: Sequence[str] | None = None) -> Dataset:  # noqa: D102
        return self._folder("train" if split == "train" else "val",
                            list(names) if names is not None else None)  # fmt: skip


class ISICSegmentationDataModule(SegmentationDataModule):
    """ISIC 2018 task 1 lesion segmentation (background / lesion, masks 0/255).

    Validation is the official ``ISIC2018_Task1-2_Validation_Input`` split when it is under
    ``root``; otherwise a seeded ``val_fraction`` of the training images.

    Args:
        root: Folder holding the task-1 input and ground-truth folders.
        val_fraction: Held-out share when there is no official validation folder.
        crop_size: Training crop side (ISIC's default from its ``DatasetInfo``).
        mean: Normalisation mean (ISIC's default: ImageNet's).
        std: Normalisation std.
        **kwargs: :class:`~contraseg.datamodules.segmentation.SegmentationDataModule` arguments.
    """

    info = ISIC_SEG
    check_splits = True

    def __init__(self, root: str, val_fraction: float = 0.2, crop_size: int = ISIC_SEG.crop_size,
                 mean: Sequence[float] = ISIC_SEG.mean, std: Sequence[float] = ISIC_SEG.std,
                 **kwargs: Any) -> None:  # fmt: skip
        super().__init__(crop_size=crop_size, mean=mean, std=std, **kwargs)
        self.root = require_dir(root, "ISIC 2018 task 1 root")
        self.val_fraction = val_fraction
        self.official_val = (self.root / "ISIC2018_Task1-2_Validation_Input").is_dir()

    def _split(self) -> tuple[list[str], list[str]]:
        names = ISICSegmentation(self.root, "Training").names
        if self.official_val:
            return names, ISICSegmentation(self.root, "Validation").names
        g = torch.Generator().manual_seed(self.seed + 1)
        order = torch.randperm(len(names), generator=g).tolist()
        n_val = max(1, int(round(self.val_fraction * len(names))))
        held = {names[i] for i in order[:n_val]}
        return [n for n in names if n not in held], sorted(held)

    def train_names(self) -> list[str]:  # noqa: D102
        return self._split()[0]

    def build(self, split: str, names: Sequence[str] | None = None) -> Dataset:  # noqa: D102
        if split == "val" and self.official_val:
            return ISICSegmentation(self.root, "Validation", names)
        train, val = self._split()
        chosen = names or (train if split == "train" else val)
        return ISICSegmentation(self.root, "Training", chosen)


class _SyntheticSourceDataModule(SegmentationDataModule):
    """A synthetic source domain (GTA5, SYNTHIA): every frame trains, validation is the target's.

    Without ``split_mat`` (GTA5's official ``split.mat``) all frames form the training split
    and there is no validation split: such a module is the ``source`` of
    :class:`~contraseg.datamodules.domain_adaptation.SourceTargetDataModule`, which validates
    on the target (Cityscapes val, as every GTA5/SYNTHIA -> Cityscapes paper).
    """

    reader: Any = None
    has_split_mat = False

    def __init__(self, root: str, split_mat: str | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.root = require_dir(root, f"data.root ({self.name})")
        if split_mat is not None and not self.has_split_mat:
            raise ValueError(f"{self.name} has no official split.mat: leave split_mat null")
        self.split_mat = split_mat

    def _official(self) -> dict[str, list[str]] | None:
        if self.split_mat is None:
            return None
        from contraseg.datamodules.datasets.gta5 import read_official_split

        return read_official_split(self.split_mat)

    def _names(self, split: str) -> list[str] | None:
        official = self._official()
        if official is None:
            if split == "train":
                return None
            raise ValueError(f"{self.name} under {self.root} has no validation split without "
                             "data.split_mat: use it as the source of SourceTargetDataModule, "
                             "which validates on the target")  # fmt: skip
        present = set(self.reader(self.root).names)
        return [n for n in official[split] if n in present]

    def train_names(self) -> list[str]:  # noqa: D102
        names = self._names("train")
        return list(self.reader(self.root).names) if names is None else names

    def build(self, split: str, names: Sequence[str] | None = None) -> Dataset:  # noqa: D102
        return self.reader(self.root, names if names is not None else self._names(split))


class GTA5DataModule(_SyntheticSourceDataModule):
    """GTA5 frames (labels as Cityscapes's 19 train ids), the usual source of GTA5 -> Cityscapes.

    Complete image/label pairs only; frames missing a file are counted and reported
    (:class:`~contraseg.datamodules.datasets.gta5.GTA5Dataset`).

    Args:
        root: Folder with ``images/`` and ``labels/``.
        split_mat: The official ``split.mat`` (train / val ids); ``null``: every frame trains.
        crop_size: Training crop side.
        resize_range: Shorter-side range of the random rescale (GTA5 frames are 1052 px high).
        **kwargs: :class:`~contraseg.datamodules.segmentation.SegmentationDataModule` arguments.
    """

    info = GTA5
    reader = GTA5Dataset
    has_split_mat = True

    def __init__(self, root: str, split_mat: str | None = None, crop_size: int = GTA5.crop_size,
                 resize_range: tuple[int, int] | None = (512, 1024),
                 **kwargs: Any) -> None:  # fmt: skip
        super().__init__(root, split_mat, crop_size=crop_size, resize_range=resize_range,
                         **kwargs)  # fmt: skip


class SynthiaDataModule(_SyntheticSourceDataModule):
    """SYNTHIA-RAND-CITYSCAPES (labels as Cityscapes's 19 train ids; 16 of them occur).

    Score it with the 16- or 13-class protocol: the model's ``miou_classes``
    (:data:`~contraseg.datamodules.datasets.synthia.SYNTHIA_16_CLASSES`).

    Args:
        root: Folder with ``RGB/`` and ``GT/LABELS/``.
        crop_size: Training crop side.
        resize_range: Shorter-side range of the random rescale (frames are 760 px high).
        **kwargs: :class:`~contraseg.datamodules.segmentation.SegmentationDataModule` arguments.
    """

    info = SYNTHIA
    reader = SynthiaDataset

    def __init__(self, root: str, crop_size: int = SYNTHIA.crop_size,
                 resize_range: tuple[int, int] | None = (512, 1024),
                 **kwargs: Any) -> None:  # fmt: skip
        super().__init__(root, None, crop_size=crop_size, resize_range=resize_range, **kwargs)


class ADE20KDataModule(SegmentationDataModule):
    """ADE20K scene parsing (ADEChallengeData2016: 20,210 training, 2,000 validation images).

    150 classes named by the release's ``objectInfo150.txt``; label 0 ("other") is ignored.

    Args:
        root: The ``ADEChallengeData2016`` folder.
        crop_size: Training crop side (Segmenter's and mmsegmentation's 512).
        resize_range: Shorter-side range of the random rescale (512 x 0.5-2).
        **kwargs: :class:`~contraseg.datamodules.segmentation.SegmentationDataModule` arguments.
    """

    check_splits = True

    def __init__(self, root: str, crop_size: int = 512,
                 resize_range: tuple[int, int] | None = (256, 1024),
                 **kwargs: Any) -> None:  # fmt: skip
        folder = require_dir(root, "data.root (ADEChallengeData2016)")
        info = ade20k_info(folder)
        self.info = info  # instance metadata: the names come from the release
        self.name, self.num_classes, self.classes = info.name, info.num_classes, info.classes
        self.palette, self.ignore_index = info.palette, info.ignore_index
        super().__init__(crop_size=crop_size, resize_range=resize_range, **kwargs)
        self.root = folder

    def train_names(self) -> list[str]:  # noqa: D102
        return list(ADE20KDataset(self.root, "training").names)

    def build(self, split: str, names: Sequence[str] | None = None) -> Dataset:  # noqa: D102
        return ADE20KDataset(self.root, "training" if split == "train" else "validation", names)
