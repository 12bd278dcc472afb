"""Reader for ADE20K as the scene-parsing challenge releases it (ADEChallengeData2016).

Layout::

    root/images/{training,validation}/ADE_{train,val}_NNNNNNNN.jpg
    root/annotations/{training,validation}/ADE_{train,val}_NNNNNNNN.png   # 'L' PNG, 0..150
    root/objectInfo150.txt            # header, then Idx  Ratio  Train  Val  Name (150 rows)

Label 0 is "other" (not evaluated) and becomes the ignore index; class ``k`` in 1..150 becomes
``k - 1`` (mmsegmentation's ``reduce_zero_label``, Segmenter's ADE20K protocol: 150 classes).
The class names are read from the release's ``objectInfo150.txt`` (its first name of each
row), so nothing is typed here.
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
from contraseg.datamodules.datasets.voc import voc_colormap

__all__ = ["ADE20KDataset", "ade20k_info", "read_object_info"]

_HINT: Final = (
    "expected the ADEChallengeData2016 layout root/images/{training,validation}/*.jpg, "
    "root/annotations/{training,validation}/*.png and root/objectInfo150.txt"
)
NUM_CLASSES: Final = 150


def read_object_info(path: str | os.PathLike[str]) -> tuple[str, ...]:
    """The 150 class names of ``objectInfo150.txt`` (first name of each row, by ``Idx``).

    Raises:
        DataFormatError: A row that is not ``Idx Ratio Train Val Name`` or not 150 classes.
    """
    path = require_file(path, "ADE20K class list objectInfo150.txt", _HINT)
    names: dict[int, str] = {}
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines()[1:], start=2):
        if not line.strip():
            continue
        fields = line.split("\t") if "\t" in line else line.split(None, 4)
        try:
            index = int(fields[0])
            name = fields[4].strip()
        except (ValueError, IndexError) as err:
            raise DataFormatError(f"{path} line {number}: expected 'Idx Ratio Train Val Name', "
                                  f"got {line!r}") from err  # fmt: skip
        names[index] = name.replace(",", ";").split(";")[0].strip()
    if sorted(names) != list(range(1, NUM_CLASSES + 1)):
        raise DataFormatError(f"{path} lists classes {sorted(names)[:3]}...{sorted(names)[-3:]} "
                              f"({len(names)}), expected Idx 1..{NUM_CLASSES}")  # fmt: skip
    return tuple(names[i] for i in range(1, NUM_CLASSES + 1))


def ade20k_info(root: str | os.PathLike[str]) -> DatasetInfo:
    """ADE20K's metadata with the class names of the release under ``root``."""
    classes = read_object_info(Path(root) / "objectInfo150.txt")
    palette = tuple(tuple(int(v) for v in c) for c in voc_colormap(NUM_CLASSES + 1)[1:])
    return DatasetInfo("ade20k", classes, palette, 255, crop_size=512)  # type: ignore[arg-type]


class ADE20KDataset(Dataset[dict[str, Any]]):
    """ADE20K scene parsing, 150 classes (``0`` "other" ignored).

    Args:
        root: The ``ADEChallengeData2016`` folder.
        split: ``training`` or ``validation``.
        names: Optional subset of image stems.

    Raises:
        FileNotFoundError: A missing folder, an image without annotation (named) or no image.
    """

    def __init__(self, root: str | os.PathLike[str],
                 split: Literal["training", "validation"] = "training",
                 names: Sequence[str] | None = None) -> None:  # fmt: skip
        if split not in ("training", "validation"):
            raise ValueError(f"split must be 'training' or 'validation', got {split!r}")
        self.root = require_dir(root, "ADE20K root directory", _HINT)
        image_dir = require_dir(self.root / "images" / split, f"ADE20K {split} images", _HINT)
        label_dir = require_dir(self.root / "annotations" / split,
                                f"ADE20K {split} annotations", _HINT)  # fmt: skip
        stems = sorted(p.stem for p in image_dir.glob("*.jpg"))
        if not stems:
            raise FileNotFoundError(f"No ADE20K image (*.jpg) under {image_dir} ({_HINT})")
        for stem in stems:
            require_file(label_dir / f"{stem}.png", f"ADE20K annotation of {image_dir / stem}.jpg",
                         _HINT)  # fmt: skip
        self.split = split
        self.names = select_names(stems, names, "ADE20K", f"the {split} images under {image_dir}")
        self._files = [(image_dir / f"{n}.jpg", label_dir / f"{n}.png") for n in self.names]

    def __len__(self) -> int:
        return len(self._files)

    def __getitem__(self, index: int) -> dict[str, Any]:
        """``{"image": uint8 Image, "mask": Mask int64 (0..149, 255), "name"}``.

        Raises:
            DataFormatError: An undecodable file, a label outside 0..150 or of another size.
        """
        image_path, label_path = self._files[index]
        image = read_image_rgb(image_path)
        label, mode = decode_label_png(label_path, "ADE20K annotation",
                                       "an 8-bit PNG of classes 0..150")  # fmt: skip
        if label.ndim != 2 or label.dtype != np.uint8 or label.max(initial=0) > NUM_CLASSES:
            raise DataFormatError(
                f"ADE20K annotation {label_path} (mode {mode!r}, shape {label.shape}, max "
                f"{label.max(initial=0)}) is not a single-channel PNG of classes 0..150")
        check_label_size(image, label.shape, image_path, label_path, "ADE20K")
        mask = label.astype(np.int64) - 1
        mask[mask < 0] = 255
        return {"image": tv_tensors.Image(image), "mask": tv_tensors.Mask(torch.from_numpy(mask)),
                "name": self.names[index]}  # fmt: skip
