"""Reader for GTA5 ("Playing for Data", Richter et al., ECCV 2016), the synthetic source domain.

Layout of the release::

    root/images/NNNNN.png     # 1914x1052 RGB frames (a few are 1914x1055)
    root/labels/NNNNN.png     # palette ('P') PNG whose *indices* are Cityscapes labelIds

The label files are read as their palette indices (``np.asarray`` of the ``P`` image, as
DAFormer's and MaxSquare's converters do), which are Cityscapes labelIds; they map to the 19
Cityscapes train ids with the same lookup as Cityscapes
(:data:`~contraseg.datamodules.datasets.cityscapes.CITYSCAPES_LABEL_TO_TRAIN_ID`).

**File-count quirk.**  The official page lists 24,966 frames, but the download holds 24,941
complete pairs (frames 2154-2158, 4634-4637, 7115-7119, 9683-9688 and 12050-12054 lack a
file, IAST-ECCV2020 issue #2).  The reader keeps the complete pairs, counts the frames with
only an image or only a label and reports them (``missing``, and one log line); it never
pairs an image with another frame's label.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Final

import numpy as np
import torch
from torch.utils.data import Dataset
from torchvision import tv_tensors

from contraseg.datamodules.datasets.cityscapes import CITYSCAPES, CITYSCAPES_LABEL_TO_TRAIN_ID
from contraseg.datamodules.datasets.io import (
    DataFormatError,
    check_label_size,
    decode_label_png,
    read_image_rgb,
    require_dir,
    select_names,
)

__all__ = ["GTA5", "GTA5Dataset", "read_official_split"]

log = logging.getLogger(__name__)

GTA5: Final = dataclasses.replace(CITYSCAPES, name="gta5")
"""GTA5's metadata: Cityscapes's 19 classes, palette and ignore index."""

_HINT: Final = ("expected the GTA5 release layout root/images/NNNNN.png (RGB) and "
                "root/labels/NNNNN.png (palette PNG of Cityscapes labelIds)")  # fmt: skip


def read_official_split(path: str | os.PathLike[str]) -> dict[str, list[str]]:
    """The official ``split.mat`` (``trainIds`` / ``valIds`` / ``testIds``) as 5-digit stems.

    Raises:
        DataFormatError: If the file cannot be read as MATLAB data or lacks the three keys.
    """
    from scipy.io import loadmat

    try:
        mat = loadmat(str(path))
    except Exception as err:  # scipy raises ValueError / MatReadError / OSError
        raise DataFormatError(f"Could not read the GTA5 split file {path}: expected the "
                              f"official split.mat, got {type(err).__name__}: {err}") from err
    keys = ("trainIds", "valIds", "testIds")
    if not all(k in mat for k in keys):
        found = sorted(k for k in mat if not k.startswith("__"))
        raise DataFormatError(f"GTA5 split file {path} holds {found}, expected {list(keys)}")
    return {k[:-3]: [f"{int(i):05d}" for i in np.asarray(mat[k]).ravel()] for k in keys}


def _read_label_ids(path: Path) -> np.ndarray:
    """A GTA5 label PNG's palette indices (Cityscapes labelIds) as a 2-D array."""
    array, mode = decode_label_png(path, "GTA5 label file",
                                   "a palette PNG of Cityscapes labelIds")  # fmt: skip
    if mode not in ("P", "L") or array.ndim != 2:
        raise DataFormatError(
            f"GTA5 label file {path} has mode {mode!r} (shape {array.shape}): expected a palette "
            "('P') PNG whose indices are Cityscapes labelIds (a colour-converted label loses them)"
        )
    return array


class GTA5Dataset(Dataset[dict[str, Any]]):
    """GTA5 frames with labels mapped to the 19 Cityscapes train ids.

    Attributes:
        names: Sorted 5-digit stems of the complete pairs.
        missing: ``{"images_without_label": [...], "labels_without_image": [...]}``.

    Args:
        root: Folder with ``images/`` and ``labels/``.
        names: Optional subset of stems (a label fraction or an official split list).
    """

    def __init__(self, root: str | os.PathLike[str], names: Sequence[str] | None = None) -> None:
        self.root = require_dir(root, "GTA5 root directory", _HINT)
        image_dir = require_dir(self.root / "images", "GTA5 image folder", _HINT)
        label_dir = require_dir(self.root / "labels", "GTA5 label folder", _HINT)
        images = {p.stem: p for p in image_dir.glob("*.png")}
        labels = {p.stem: p for p in label_dir.glob("*.png")}
        self.missing = {"images_without_label": sorted(set(images) - set(labels)),
                        "labels_without_image": sorted(set(labels) - set(images))}  # fmt: skip
        pairs = sorted(set(images) & set(labels))
        if not pairs:
            raise FileNotFoundError(f"No GTA5 image/label pair under {self.root} ({_HINT})")
        n_missing = sum(len(v) for v in self.missing.values())
        if n_missing and names is None:
            log.warning(
                "GTA5 under %s: %d complete pairs; %d frames have only an image (e.g. %s) and %d "
                "only a label (e.g. %s): kept out (the release's 24,966 vs 24,941 quirk)",
                self.root, len(pairs), len(self.missing["images_without_label"]),
                self.missing["images_without_label"][:3],
                len(self.missing["labels_without_image"]),
                self.missing["labels_without_image"][:3],
            )  # fmt: skip
        self.names = select_names(pairs, names, "GTA5", f"the complete pairs under {self.root}")
        self._files = [(images[n], labels[n]) for n in self.names]
        self.info = GTA5
        self.classes, self.num_classes = list(GTA5.classes), GTA5.num_classes
        self.ignore_index, self.palette = GTA5.ignore_index, list(GTA5.palette)

    def __len__(self) -> int:
        return len(self._files)

    def __getitem__(self, index: int) -> dict[str, Any]:
        """``{"image": uint8 Image (3,H,W), "mask": Mask (H,W) int64 train ids, "name"}``.

        Raises:
            DataFormatError: An undecodable file, a label that is not a palette PNG, or image
                and label sizes that differ (each names the file).
        """
        image_path, label_path = self._files[index]
        image = read_image_rgb(image_path)
        label_ids = _read_label_ids(label_path)
        check_label_size(image, label_ids.shape, image_path, label_path, "GTA5")
        train_ids = CITYSCAPES_LABEL_TO_TRAIN_ID[label_ids.astype(np.int64)].astype(np.int64)
        return {"image": tv_tensors.Image(image),
                "mask": tv_tensors.Mask(torch.from_numpy(train_ids)), "name": self.names[index]}

    def __repr__(self) -> str:
        return f"GTA5Dataset(n={len(self)}, root={str(self.root)!r})"
