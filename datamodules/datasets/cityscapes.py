"""Reader for the official Cityscapes fine-annotation release.

Layout::

    root/leftImg8bit/{split}/{city}/{stem}_leftImg8bit.png      # 8-bit RGB PNG
    root/gtFine/{split}/{city}/{stem}_gtFine_labelIds.png        # 8-bit 'L' PNG, labelIds 0..33

``stem`` is ``{city}_{seq:06d}_{frame:06d}``, e.g. ``aachen_000000_000019``. The 34 labelIds are
mapped to the 19 evaluation ``trainId`` classes with :data:`CITYSCAPES_LABEL_TO_TRAIN_ID`; every
other labelId (and ``-1``, "license plate") becomes the ignore index ``255``. The
``*_gtFine_labelTrainIds.png`` files are not part of the release and are not needed.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Final, Literal

import numpy as np
import torch
from torch.utils.data import Dataset
from torchvision import tv_tensors

from contraseg.datamodules.datasets.info import DatasetInfo
from contraseg.datamodules.datasets.io import (
    DataFormatError,
    check_label_size,
    decode_label_png,
    read_image_rgb,
    require_dir,
    require_file,
    select_names,
)

__all__ = [
    "CITYSCAPES_CLASSES",
    "CITYSCAPES",
    "CITYSCAPES_IGNORE_INDEX",
    "CITYSCAPES_LABEL_TO_TRAIN_ID",
    "CITYSCAPES_PALETTE",
    "CityscapesDataset",
    "encode_cityscapes_labels",
]

CITYSCAPES_IGNORE_INDEX: Final = 255

# The single source of truth: (labelId, trainId, class name, official colour) of the 19 evaluated
# classes, from cityscapesscripts/helpers/labels.py. Every labelId not listed maps to 255.
_TRAIN_LABELS: Final[tuple[tuple[int, int, str, tuple[int, int, int]], ...]] = (
    (7, 0, "road", (128, 64, 128)),
    (8, 1, "sidewalk", (244, 35, 232)),
    (11, 2, "building", (70, 70, 70)),
    (12, 3, "wall", (102, 102, 156)),
    (13, 4, "fence", (190, 153, 153)),
    (17, 5, "pole", (153, 153, 153)),
    (19, 6, "traffic light", (250, 170, 30)),
    (20, 7, "traffic sign", (220, 220, 0)),
    (21, 8, "vegetation", (107, 142, 35)),
    (22, 9, "terrain", (152, 251, 152)),
    (23, 10, "sky", (70, 130, 180)),
    (24, 11, "person", (220, 20, 60)),
    (25, 12, "rider", (255, 0, 0)),
    (26, 13, "car", (0, 0, 142)),
    (27, 14, "truck", (0, 0, 70)),
    (28, 15, "bus", (0, 60, 100)),
    (31, 16, "train", (0, 80, 100)),
    (32, 17, "motorcycle", (0, 0, 230)),
    (33, 18, "bicycle", (119, 11, 32)),
)

_MAX_LABEL_ID: Final = 33
_SPLITS: Final = ("train", "val", "test")
_HINT: Final = (
    "expected the official Cityscapes layout root/leftImg8bit/{split}/{city}/"
    "{stem}_leftImg8bit.png and root/gtFine/{split}/{city}/{stem}_gtFine_labelIds.png"
)
_IMAGE_SUFFIX: Final = "_leftImg8bit.png"
_LABEL_SUFFIX: Final = "_gtFine_labelIds.png"


def _build_lookup() -> np.ndarray:
    lut = np.full(256, CITYSCAPES_IGNORE_INDEX, dtype=np.uint8)
    for label_id, train_id, _, _ in _TRAIN_LABELS:
        lut[label_id] = train_id
    lut.setflags(write=False)
    return lut


CITYSCAPES_LABEL_TO_TRAIN_ID: Final[np.ndarray] = _build_lookup()
"""256-entry ``uint8`` lookup ``labelId -> trainId`` (read-only).

Index it with labelIds ``0..33``; ``-1`` also works through NumPy's negative indexing
(``CITYSCAPES_LABEL_TO_TRAIN_ID[-1] == 255``). Unlisted labelIds map to ``255``.
"""

CITYSCAPES_CLASSES: Final[tuple[str, ...]] = tuple(name for _, _, name, _ in _TRAIN_LABELS)
"""Names of the 19 trainId classes, indexed by trainId."""

CITYSCAPES_PALETTE: Final[tuple[tuple[int, int, int], ...]] = tuple(
    color for _, _, _, color in _TRAIN_LABELS
)
"""Official RGB colours of the 19 trainId classes, indexed by trainId."""
CITYSCAPES: Final = DatasetInfo(
    "cityscapes", CITYSCAPES_CLASSES, CITYSCAPES_PALETTE, CITYSCAPES_IGNORE_INDEX
)


def encode_cityscapes_labels(label_ids: np.ndarray) -> np.ndarray:
    """Maps a labelId array to trainIds.

    Args:
        label_ids: Integer array of labelIds in ``0..33`` (``-1`` is accepted too).

    Returns:
        An ``np.int64`` array of the same shape with trainIds ``0..18`` and ``255`` for ignored
        pixels.

    Raises:
        ValueError: If ``label_ids`` holds values outside ``-1..33``.
    """
    label_ids = np.asarray(label_ids)
    bad = _invalid_values(label_ids)
    if bad:
        raise ValueError(f"labelIds must lie in -1..33, found invalid values {bad}")
    return CITYSCAPES_LABEL_TO_TRAIN_ID[label_ids.astype(np.int64)].astype(np.int64)


def _invalid_values(label_ids: np.ndarray, limit: int = 10) -> list[int]:
    """Returns up to ``limit`` distinct values of ``label_ids`` outside ``-1..33``."""
    if label_ids.size == 0:
        return []
    values = np.unique(label_ids)
    bad = values[(values < -1) | (values > _MAX_LABEL_ID)]
    return [int(v) for v in bad[:limit]]


def _read_label_ids(path: Path) -> np.ndarray:
    """Reads a ``*_gtFine_labelIds.png`` file as a 2-D integer array."""
    array, mode = decode_label_png(path, "Cityscapes label file",
                                   "an 8-bit grayscale PNG of labelIds 0..33")  # fmt: skip
    if array.ndim != 2 or not np.issubdtype(array.dtype, np.integer):
        raise DataFormatError(
            f"Cityscapes label file {path} has mode {mode!r} (array shape {array.shape}, dtype "
            f"{array.dtype}), expected a single-channel 8-bit PNG of labelIds 0..33"
        )
    return array


class CityscapesDataset(Dataset[dict[str, Any]]):
    """Cityscapes ``leftImg8bit`` images with ``gtFine`` labels mapped to the 19 trainIds.

    Files are listed (and each image's label file is checked to exist) at construction time;
    pixel content is validated when a sample is read.

    Attributes:
        root: Dataset root containing ``leftImg8bit/`` and ``gtFine/``.
        split: ``"train"``, ``"val"`` or ``"test"``.
        names: Sorted stems of the samples, e.g. ``"aachen_000000_000019"``.
        classes: The 19 class names (:data:`CITYSCAPES_CLASSES`).
        num_classes: ``19``.
        ignore_index: ``255``.
        palette: Official class colours (:data:`CITYSCAPES_PALETTE`).

    Example:
        >>> ds = CityscapesDataset("/data/cityscapes", split="val")  # doctest: +SKIP
        >>> sample = ds[0]  # {"image": Image (3,H,W) uint8, "mask": Mask (H,W) int64, "name": str}
    """

    def __init__(
        self,
        root: str | os.PathLike[str],
        split: Literal["train", "val", "test"] = "train",
        names: Sequence[str] | None = None,
    ) -> None:
        """Lists the samples of ``split``.

        Args:
            root: Dataset root containing ``leftImg8bit/`` and ``gtFine/``.
            split: Which split to read.
            names: Optional subset of stems to keep (e.g. a label-fraction list). The dataset
                order stays the sorted order of the listing.

        Raises:
            ValueError: On an unknown ``split``, or if ``names`` contains stems that are not in the
                split (or is a plain string).
            FileNotFoundError: If the split's image folder is missing or an image has no label
                file (the message names the missing label file).
        """
        if split not in _SPLITS:
            raise ValueError(f"split must be one of {_SPLITS}, got {split!r}")
        self.root = require_dir(root, "Cityscapes root directory", _HINT)
        self.split = split
        image_dir = require_dir(
            self.root / "leftImg8bit" / split, f"Cityscapes {split} image folder", _HINT
        )
        label_dir = self.root / "gtFine" / split

        samples: dict[str, tuple[Path, Path]] = {}
        for city_dir in sorted(p for p in image_dir.iterdir() if p.is_dir()):
            for image_path in sorted(city_dir.glob(f"*{_IMAGE_SUFFIX}")):
                stem = image_path.name[: -len(_IMAGE_SUFFIX)]
                label_path = label_dir / city_dir.name / f"{stem}{_LABEL_SUFFIX}"
                require_file(label_path, f"Cityscapes label file for image {image_path}", _HINT)
                samples[stem] = (image_path, label_path)
        orphans = sorted(p for p in label_dir.glob(f"*/*{_LABEL_SUFFIX}")
                         if p.name[: -len(_LABEL_SUFFIX)] not in samples)  # fmt: skip
        if orphans:
            stem = orphans[0].name[: -len(_LABEL_SUFFIX)]
            raise FileNotFoundError(
                f"Cityscapes label file {orphans[0]} has no image (expected "
                f"{image_dir / orphans[0].parent.name / (stem + _IMAGE_SUFFIX)}); "
                f"{len(orphans)} labels without image in {label_dir} ({_HINT})"
            )
        if not samples:
            raise FileNotFoundError(
                f"No Cityscapes images (*{_IMAGE_SUFFIX}) found under {image_dir}/<city>/ ({_HINT})"
            )

        where = f"the {split} split under {image_dir}"
        stems = select_names(sorted(samples), names, "Cityscapes", where)

        self.names: list[str] = stems
        self._files = [samples[s] for s in stems]
        self.info = CITYSCAPES
        self.classes: list[str] = list(CITYSCAPES.classes)
        self.num_classes: int = CITYSCAPES.num_classes
        self.ignore_index: int = CITYSCAPES.ignore_index
        self.palette: list[tuple[int, int, int]] = list(CITYSCAPES.palette)

    def __len__(self) -> int:
        return len(self._files)

    def __getitem__(self, index: int) -> dict[str, Any]:
        """Reads one sample.

        Args:
            index: Sample index (negative indices are supported).

        Returns:
            ``{"image": tv_tensors.Image (3, H, W) uint8, "mask": tv_tensors.Mask (H, W) int64,
            "name": stem}`` with trainIds ``0..18`` and ``255`` in the mask.

        Raises:
            DataFormatError: If the image or label cannot be decoded, the label holds values
                outside ``0..33``, or image and label sizes differ.
        """
        image_path, label_path = self._files[index]
        image = read_image_rgb(image_path)
        label_ids = _read_label_ids(label_path)
        bad = _invalid_values(label_ids)
        if bad:
            raise DataFormatError(
                f"Cityscapes label file {label_path} contains values {bad} outside the labelIds "
                "0..33 (expected *_gtFine_labelIds.png, not a colour or instance image)"
            )
        check_label_size(image, label_ids.shape, image_path, label_path)
        train_ids = CITYSCAPES_LABEL_TO_TRAIN_ID[label_ids.astype(np.int64)].astype(np.int64)
        return {
            "image": tv_tensors.Image(image),
            "mask": tv_tensors.Mask(torch.from_numpy(train_ids)),
            "name": self.names[index],
        }

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(split={self.split!r}, n={len(self)}, root={str(self.root)!r})"
        )
