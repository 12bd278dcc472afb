"""ISIC skin-lesion sets: 2018 task 1 (segmentation), 2018 task 3 / HAM10000 and 2019 (diagnosis).

Layouts (the official archives unpacked under one root):

* **ISIC 2018 task 1**: ``ISIC2018_Task1-2_Training_Input/ISIC_0000000.jpg`` with
  ``ISIC2018_Task1_Training_GroundTruth/ISIC_0000000_segmentation.png`` (0 background, 255
  lesion; read as classes 0/1, any other value is an error), and the same for
  ``..._Validation_...`` when present (the official validation split);
* **ISIC 2018 task 3 = HAM10000**: ``ISIC2018_Task3_Training_Input/*.jpg``, the one-hot
  ``ISIC2018_Task3_Training_GroundTruth.csv`` (``image,MEL,NV,BCC,AKIEC,BKL,DF,VASC``) and
  ``HAM10000_metadata.csv`` (``lesion_id,image_id,dx,...``);
* **ISIC 2019**: ``ISIC_2019_Training_Input/*.jpg``, ``ISIC_2019_Training_GroundTruth.csv``
  (``image,MEL,NV,BCC,AK,BKL,DF,VASC,SCC,UNK``; UNK has no training image) and optionally
  ``ISIC_2019_Training_Metadata.csv`` (with ``lesion_id``, empty for some images).

Neither diagnosis set has an official validation split, and HAM10000 holds several images of
one lesion: :func:`lesion_split` splits **by lesion** (an image without lesion id is its own
group) so no lesion lands on both sides.  Bad input: a CSV row without its image or a row that
is not one-hot is an error naming the CSV; images in the folder without a row are ignored and
counted in a warning (the archives ship extra files, e.g. ``*_superpixels.png``).
"""

from __future__ import annotations

import csv
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset
from torchvision import tv_tensors

from contraseg.datamodules.datasets.info import DatasetInfo
from contraseg.datamodules.datasets.io import (
    DataFormatError,
    read_image_rgb,
    require_dir,
    require_file,
)

__all__ = [
    "ISIC2018_CLASSES",
    "ISIC2019_CLASSES",
    "ISIC_SEG",
    "ISICClassification",
    "ISICSegmentation",
    "lesion_split",
    "read_isic_labels",
]

ISIC2018_CLASSES = ("MEL", "NV", "BCC", "AKIEC", "BKL", "DF", "VASC")
ISIC2019_CLASSES = ("MEL", "NV", "BCC", "AK", "BKL", "DF", "VASC", "SCC", "UNK")
ISIC_SEG = DatasetInfo(
    "isic2018_seg", ("background", "lesion"), ((0, 0, 0), (255, 255, 255)), crop_size=256
)
_LAYOUT = {
    2018: (
        "ISIC2018_Task3_Training_Input",
        "ISIC2018_Task3_Training_GroundTruth.csv",
        "HAM10000_metadata.csv",
        "image_id",
        ISIC2018_CLASSES,
    ),
    2019: (
        "ISIC_2019_Training_Input",
        "ISIC_2019_Training_GroundTruth.csv",
        "ISIC_2019_Training_Metadata.csv",
        "image",
        ISIC2019_CLASSES,
    ),
}


def _rows(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as f:
        reader = csv.DictReader(f)
        rows = list(reader)
        return rows if reader.fieldnames else []


def read_isic_labels(csv_path: str | Path, classes: Sequence[str]) -> dict[str, int]:
    """``image id -> class index`` from an ISIC one-hot ground-truth CSV.

    Raises:
        DataFormatError: Missing columns, non-numeric cells, or a row that is not one-hot.
    """
    path = require_file(csv_path, "ISIC ground-truth CSV")
    rows = _rows(path)
    needed = ["image", *classes]
    if not rows or any(c not in rows[0] for c in needed):
        have = list(rows[0]) if rows else []
        raise DataFormatError(f"{path}: expected columns {needed}, got {have}")
    labels = {}
    for line, row in enumerate(rows, start=2):
        try:
            onehot = np.array([float(row[c]) for c in classes])
        except ValueError as err:
            raise DataFormatError(f"{path}, line {line}: non-numeric class cell ({err})") from err
        if not (np.isin(onehot, (0.0, 1.0)).all() and onehot.sum() == 1):
            raise DataFormatError(
                f"{path}, line {line} ({row['image']}): expected exactly one 1 "
                f"among {list(classes)}, got {onehot.tolist()}"
            )
        labels[row["image"]] = int(onehot.argmax())
    return labels


def read_lesion_ids(csv_path: Path | None, id_column: str, required: bool = False
                    ) -> dict[str, str]:  # fmt: skip
    """``image id -> lesion id`` from a metadata CSV (empty cells: none).

    Raises:
        DataFormatError: ``required`` and the file is missing (a split without lesion ids
            would put one lesion's images on both sides), or a column is missing.
    """
    if csv_path is None or not csv_path.is_file():
        if required:
            raise DataFormatError(
                f"{csv_path}: lesion metadata not found; it is needed to split by lesion (one "
                "lesion's images on both sides of a split inflate validation scores). Put the "
                "file there, or set data.init_args.split_by image to accept a per-image split"
            )
        return {}
    rows = _rows(csv_path)
    if rows and ("lesion_id" not in rows[0] or id_column not in rows[0]):
        raise DataFormatError(f"{csv_path}: expected columns lesion_id and {id_column}")
    return {r[id_column]: r["lesion_id"] for r in rows if r.get("lesion_id")}


def lesion_split(
    images: Sequence[str], lesions: dict[str, str], val_fraction: float, seed: int
) -> tuple[list[str], list[str]]:
    """Seeded ``(train, val)`` split of ``images`` by lesion (groups never straddle it)."""
    groups: dict[str, list[str]] = {}
    for image in sorted(images):
        groups.setdefault(lesions.get(image, f"image:{image}"), []).append(image)
    keys = sorted(groups)
    order = torch.randperm(len(keys), generator=torch.Generator().manual_seed(seed)).tolist()
    n_val = int(round(val_fraction * len(images)))
    val: list[str] = []
    for i in order:
        if len(val) >= n_val:
            break
        val += groups[keys[i]]
    held = set(val)
    return [i for i in sorted(images) if i not in held], sorted(val)


class ISICClassification(Dataset):
    """Dermoscopy images with their diagnosis: ``{"image": uint8 (3, H, W), "label", "name"}``.

    Args:
        root: Folder holding the year's input folder and CSVs.
        year: 2018 (task 3 / HAM10000, 7 classes) or 2019 (9 classes incl. UNK).
        names: Image ids to serve (default all rows of the CSV).
        require_lesions: The metadata CSV with lesion ids must exist (splits by lesion).
    """

    def __init__(
        self, root: str | Path, year: int = 2018, names: Sequence[str] | None = None,
        require_lesions: bool = True,
    ) -> None:  # fmt: skip
        if year not in _LAYOUT:
            raise ValueError(f"ISIC year must be 2018 or 2019, got {year}")
        self.root = require_dir(root, f"ISIC {year} root")
        folder, gt, meta, id_column, self.classes = _LAYOUT[year]
        self.image_dir = require_dir(self.root / folder, f"ISIC {year} image folder")
        self.csv = self.root / gt
        labels = read_isic_labels(self.csv, self.classes)
        files = {p.stem: p for p in self.image_dir.glob("*.jpg")}
        missing = sorted(set(labels) - set(files))
        if missing:
            raise DataFormatError(
                f"{self.csv}: {len(missing)} rows have no image in "
                f"{self.image_dir} (e.g. {missing[:3]})"
            )
        extra = sorted(set(files) - set(labels))
        if extra:
            warnings.warn(
                f"ISIC {year}: {len(extra)} images in {self.image_dir} have no row "
                f"in {self.csv} and are ignored (e.g. {extra[:3]})",
                stacklevel=2,
            )
        self.ignored = len(extra)
        self.lesions = read_lesion_ids(self.root / meta, id_column, require_lesions)
        self.all_labels = labels
        self.names = sorted(labels) if names is None else list(names)
        self.files = files
        self.labels = [labels[n] for n in self.names]

    def __len__(self) -> int:
        return len(self.names)

    def __getitem__(self, i: int) -> dict:
        name = self.names[i]
        image = read_image_rgb(self.files[name])
        return {"image": tv_tensors.Image(image), "label": self.labels[i], "name": name}


class ISICSegmentation(Dataset):
    """ISIC 2018 task 1 pairs: ``{"image": uint8 (3, H, W), "mask": 0/1 (H, W), "name"}``.

    Args:
        root: Folder holding the task's input and ground-truth folders.
        split: ``Training`` or ``Validation`` (the official folder names).
        names: Image ids to serve (default all).
    """

    def __init__(
        self, root: str | Path, split: str = "Training", names: Sequence[str] | None = None
    ) -> None:
        root = require_dir(root, "ISIC 2018 task 1 root")
        self.image_dir = require_dir(root / f"ISIC2018_Task1-2_{split}_Input", "ISIC images")
        self.mask_dir = require_dir(root / f"ISIC2018_Task1_{split}_GroundTruth", "ISIC masks")
        images = {p.stem: p for p in self.image_dir.glob("ISIC_*.jpg")}
        masks = {
            p.name[: -len("_segmentation.png")]: p
            for p in self.mask_dir.glob("ISIC_*_segmentation.png")
        }
        missing = sorted(set(images) - set(masks))
        if missing:
            raise DataFormatError(
                f"{self.mask_dir}: no <id>_segmentation.png for {missing[:3]} "
                f"({len(missing)} images)"
            )
        orphans = sorted(set(masks) - set(images))
        if orphans:
            raise DataFormatError(f"{self.image_dir}: no image for masks {orphans[:3]}")
        self.images, self.masks = images, masks
        self.names = sorted(images) if names is None else list(names)

    def __len__(self) -> int:
        return len(self.names)

    def __getitem__(self, i: int) -> dict:
        name = self.names[i]
        image = read_image_rgb(self.images[name])
        path = self.masks[name]
        with Image.open(path) as im:
            mask = np.array(im.convert("L"))
        values = np.unique(mask)
        if not np.isin(values, (0, 255)).all():
            raise DataFormatError(f"{path}: lesion masks hold 0 and 255 only, got {values[:6]}")
        if mask.shape != tuple(image.shape[1:]):
            raise DataFormatError(f"{path}: mask {mask.shape} vs image {tuple(image.shape[1:])}")
        return {
            "image": tv_tensors.Image(image),
            "mask": tv_tensors.Mask(torch.from_numpy((mask == 255).astype(np.int64))),
            "name": name,
        }
