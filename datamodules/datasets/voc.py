"""Reader for PASCAL VOC 2012 segmentation, optionally augmented with SBD ("trainaug").

VOC 2012 layout (``root`` is the ``VOC2012`` folder or a folder containing
``VOCdevkit/VOC2012``)::

    JPEGImages/{id}.jpg
    SegmentationClass/{id}.png                     # palette ('P') PNG, indices 0..20, 255 = void
    ImageSets/Segmentation/{train,val,trainval}.txt

SBD layout (``sbd_root`` is ``benchmark_RELEASE/dataset`` or a folder above it)::

    img/{id}.jpg
    cls/{id}.mat                                   # MATLAB v5 struct GTcls, field Segmentation
    train.txt, val.txt

``trainaug`` = VOC train ∪ SBD train ∪ SBD val − VOC val (10,582 ids on the real data). Ids with a
VOC ``SegmentationClass`` PNG use it; the others read the SBD ``.mat`` label.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Final

import numpy as np
import scipy.io
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
    "VOC_CLASSES",
    "VOC",
    "VOC_IGNORE_INDEX",
    "VOC_PALETTE",
    "VOCSegmentation",
    "resolve_sbd_root",
    "resolve_voc_root",
    "trainaug_ids",
    "voc_colormap",
]

VOC_CLASSES: Final[tuple[str, ...]] = (
    "background",
    "aeroplane",
    "bicycle",
    "bird",
    "boat",
    "bottle",
    "bus",
    "car",
    "cat",
    "chair",
    "cow",
    "diningtable",
    "dog",
    "horse",
    "motorbike",
    "person",
    "pottedplant",
    "sheep",
    "sofa",
    "train",
    "tvmonitor",
)
VOC_IGNORE_INDEX: Final = 255

_VOC_HINT: Final = (
    "expected a VOC2012 folder (or a folder containing VOCdevkit/VOC2012) with JPEGImages/, "
    "SegmentationClass/ and ImageSets/Segmentation/{train,val,trainval}.txt"
)
_SBD_HINT: Final = (
    "expected the SBD benchmark_RELEASE/dataset folder (or a folder above it) with img/, cls/, "
    "train.txt and val.txt"
)


def voc_colormap(n: int = 256) -> np.ndarray:
    """Builds the standard PASCAL VOC colour map by bit interleaving.

    Bit ``j`` of the red, green and blue channel of colour ``i`` is taken from bits ``3k``,
    ``3k + 1`` and ``3k + 2`` of ``i`` (most significant bit first), as in ``VOCdevkit``'s
    ``labelcolormap.m``. Index 255 (void) is ``(224, 224, 192)``.

    Args:
        n: Number of colours.

    Returns:
        A ``np.uint8`` array of shape ``(n, 3)``.
    """
    cmap = np.zeros((n, 3), dtype=np.uint8)
    for i in range(n):
        r = g = b = 0
        c = i
        for j in range(8):
            r |= ((c >> 0) & 1) << (7 - j)
            g |= ((c >> 1) & 1) << (7 - j)
            b |= ((c >> 2) & 1) << (7 - j)
            c >>= 3
        cmap[i] = (r, g, b)
    return cmap


VOC_PALETTE: Final[tuple[tuple[int, int, int], ...]] = tuple(
    (int(r), int(g), int(b)) for r, g, b in voc_colormap(len(VOC_CLASSES))
)
"""RGB colours of the 21 VOC classes, indexed by class id (``voc_colormap(256)`` for all)."""
VOC: Final = DatasetInfo("voc", VOC_CLASSES, VOC_PALETTE, VOC_IGNORE_INDEX)

_VALID_LABELS: Final = np.array([*range(len(VOC_CLASSES)), VOC_IGNORE_INDEX])


def resolve_voc_root(root: str | os.PathLike[str]) -> Path:
    """Finds the ``VOC2012`` folder given it or a folder containing ``VOCdevkit/VOC2012``.

    Args:
        root: The ``VOC2012`` folder, or a folder containing ``VOCdevkit/VOC2012`` or ``VOC2012``.

    Returns:
        The ``VOC2012`` folder (the one holding ``JPEGImages/``).

    Raises:
        FileNotFoundError: If no candidate folder contains ``JPEGImages/``.
    """
    root = require_dir(root, "VOC root directory", _VOC_HINT)
    for candidate in (root, root / "VOCdevkit" / "VOC2012", root / "VOC2012"):
        if (candidate / "JPEGImages").is_dir():
            return candidate
    raise FileNotFoundError(f"VOC JPEGImages folder not found under {root} ({_VOC_HINT})")


def resolve_sbd_root(sbd_root: str | os.PathLike[str]) -> Path:
    """Finds SBD's ``dataset`` folder given it or a folder above it.

    Args:
        sbd_root: ``benchmark_RELEASE/dataset``, ``benchmark_RELEASE`` or its parent.

    Returns:
        The folder holding ``cls/``, ``img/``, ``train.txt`` and ``val.txt``.

    Raises:
        FileNotFoundError: If no candidate folder contains ``cls/``.
    """
    sbd_root = require_dir(sbd_root, "SBD root directory", _SBD_HINT)
    for candidate in (
        sbd_root,
        sbd_root / "dataset",
        sbd_root / "benchmark_RELEASE" / "dataset",
    ):
        if (candidate / "cls").is_dir():
            return candidate
    raise FileNotFoundError(f"SBD cls folder not found under {sbd_root} ({_SBD_HINT})")


def _read_id_list(path: Path, what: str, hint: str) -> list[str]:
    """Reads a one-id-per-line list file, keeping file order and dropping duplicates."""
    path = require_file(path, what, hint)
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        raise DataFormatError(f"{what} {path} is not a UTF-8 text file: {err}") from err
    ids: dict[str, None] = {}
    for lineno, line in enumerate(text.splitlines(), start=1):
        tokens = line.split()
        if not tokens:
            continue
        if len(tokens) != 1:
            raise DataFormatError(
                f"{what} {path} line {lineno}: expected one image id per line, got {line!r}"
            )
        ids.setdefault(tokens[0], None)
    if not ids:
        raise DataFormatError(f"{what} {path} lists no image ids (expected one id per line)")
    return list(ids)


def trainaug_ids(voc_root: str | os.PathLike[str], sbd_root: str | os.PathLike[str]) -> list[str]:
    """Computes the ``trainaug`` id list: VOC train ∪ SBD train ∪ SBD val − VOC val.

    Args:
        voc_root: ``VOC2012`` folder or a folder containing ``VOCdevkit/VOC2012``.
        sbd_root: SBD ``benchmark_RELEASE/dataset`` folder or a folder above it.

    Returns:
        Sorted unique ids (10,582 on the official data).

    Raises:
        FileNotFoundError: If a list file is missing.
        DataFormatError: If a list file is malformed.
    """
    voc = resolve_voc_root(voc_root)
    sbd = resolve_sbd_root(sbd_root)
    lists = voc / "ImageSets" / "Segmentation"
    voc_train = _read_id_list(lists / "train.txt", "VOC train list", _VOC_HINT)
    voc_val = _read_id_list(lists / "val.txt", "VOC val list", _VOC_HINT)
    sbd_train = _read_id_list(sbd / "train.txt", "SBD train list", _SBD_HINT)
    sbd_val = _read_id_list(sbd / "val.txt", "SBD val list", _SBD_HINT)
    return sorted((set(voc_train) | set(sbd_train) | set(sbd_val)) - set(voc_val))


def _read_png_label(path: Path) -> np.ndarray:
    """Reads a VOC ``SegmentationClass`` PNG as palette indices (never converted to RGB)."""
    array, mode = decode_label_png(path, "VOC label file",
                                   "a palette ('P') PNG of class indices")  # fmt: skip
    if mode not in ("P", "L"):
        raise DataFormatError(
            f"VOC label file {path} has mode {mode!r}, expected a palette ('P') or grayscale "
            "('L') PNG of class indices 0..20 and 255 (not an RGB colour image)"
        )
    return array


def _read_mat_label(path: Path) -> np.ndarray:
    """Reads ``GTcls.Segmentation`` from an SBD ``cls/{id}.mat`` file."""
    try:
        mat = scipy.io.loadmat(path, struct_as_record=False, squeeze_me=True)
    except NotImplementedError as err:  # MATLAB v7.3 (HDF5)
        raise DataFormatError(
            f"Could not read SBD label file {path}: {err} (expected a MATLAB v5 .mat file)"
        ) from err
    except Exception as err:  # corrupt files raise ValueError, MatReadError, TypeError, ...
        raise DataFormatError(
            f"Could not read SBD label file {path}: expected a MATLAB v5 .mat file with struct "
            f"'GTcls' holding field 'Segmentation', got {type(err).__name__}: {err}"
        ) from err
    if "GTcls" not in mat:
        found = sorted(k for k in mat if not k.startswith("__"))
        raise DataFormatError(
            f"SBD label file {path} has no variable 'GTcls' (found: {found}; expected struct "
            "GTcls with field Segmentation)"
        )
    segmentation = getattr(mat["GTcls"], "Segmentation", None)
    if not isinstance(segmentation, np.ndarray) or segmentation.ndim != 2:
        shape = getattr(segmentation, "shape", None)
        raise DataFormatError(
            f"SBD label file {path}: GTcls.Segmentation is missing or not a 2-D array (got shape "
            f"{shape}; expected an (H, W) uint8 array of class indices 0..20)"
        )
    if not np.issubdtype(segmentation.dtype, np.integer):
        raise DataFormatError(
            f"SBD label file {path}: GTcls.Segmentation has dtype {segmentation.dtype}, expected "
            "integer class indices 0..20"
        )
    return segmentation


class VOCSegmentation(Dataset[dict[str, Any]]):
    """PASCAL VOC 2012 semantic segmentation, with the SBD-augmented ``trainaug`` split.

    Files are located at construction time; pixel content is validated when a sample is read.

    Attributes:
        root: The ``VOC2012`` folder.
        sbd_root: SBD's ``dataset`` folder, or ``None``.
        split: Split name (``"train"``, ``"val"``, ``"trainval"``, ``"trainaug"`` or any list in
            ``ImageSets/Segmentation``).
        names: Sample ids in dataset order.
        classes: The 21 class names (:data:`VOC_CLASSES`).
        num_classes: ``21``.
        ignore_index: ``255``.
        palette: Class colours (:data:`VOC_PALETTE`).

    Example:
        >>> ds = VOCSegmentation("/data/VOC2012", "trainaug", "/data/SBD")  # doctest: +SKIP
        >>> sample = ds[0]  # {"image": Image (3,H,W) uint8, "mask": Mask (H,W) int64, "name": id}
    """

    def __init__(
        self,
        root: str | os.PathLike[str],
        split: str = "train",
        sbd_root: str | os.PathLike[str] | None = None,
        names: Sequence[str] | None = None,
    ) -> None:
        """Lists the samples of ``split`` and locates their image and label files.

        Args:
            root: ``VOC2012`` folder or a folder containing ``VOCdevkit/VOC2012``.
            split: ``"train"``, ``"val"``, ``"trainval"`` (or another list in
                ``ImageSets/Segmentation``), or ``"trainaug"``.
            sbd_root: SBD ``benchmark_RELEASE/dataset`` folder or a folder above it. Required for
                ``"trainaug"``; for other splits it only serves as a fallback source.
            names: Optional subset of ids to keep (e.g. a label-fraction list); the split order is
                kept.

        Raises:
            ValueError: If ``"trainaug"`` is requested without ``sbd_root``, or ``names`` holds
                ids not in the split (or is a plain string).
            FileNotFoundError: If a folder, list file, image or label is missing (the message
                names the missing file).
            DataFormatError: If a list file is malformed.
        """
        self.root = resolve_voc_root(root)
        self.sbd_root = resolve_sbd_root(sbd_root) if sbd_root is not None else None
        self.split = split
        if split == "trainaug":
            if self.sbd_root is None:
                raise ValueError(
                    "split 'trainaug' needs sbd_root (SBD benchmark_RELEASE/dataset folder)"
                )
            ids = trainaug_ids(self.root, self.sbd_root)
        else:
            list_path = self.root / "ImageSets" / "Segmentation" / f"{split}.txt"
            ids = _read_id_list(list_path, f"VOC {split} list", _VOC_HINT)

        ids = select_names(ids, names, "VOC", f"split {split!r}")

        self.names: list[str] = ids
        self._files = [(self._image_path(i), self._label_path(i)) for i in ids]
        self.info = VOC
        self.classes: list[str] = list(VOC.classes)
        self.num_classes: int = VOC.num_classes
        self.ignore_index: int = VOC.ignore_index
        self.palette: list[tuple[int, int, int]] = list(VOC.palette)

    def _image_path(self, image_id: str) -> Path:
        voc_path = self.root / "JPEGImages" / f"{image_id}.jpg"
        if voc_path.is_file() or self.sbd_root is None:
            return require_file(voc_path, f"VOC image for id {image_id!r}", _VOC_HINT)
        sbd_path = self.sbd_root / "img" / f"{image_id}.jpg"
        if sbd_path.is_file():
            return sbd_path
        raise FileNotFoundError(
            f"Image for id {image_id!r} not found: neither {voc_path} nor {sbd_path} exists"
        )

    def _label_path(self, image_id: str) -> Path:
        voc_path = self.root / "SegmentationClass" / f"{image_id}.png"
        if voc_path.is_file() or self.sbd_root is None:
            return require_file(voc_path, f"VOC label for id {image_id!r}", _VOC_HINT)
        sbd_path = self.sbd_root / "cls" / f"{image_id}.mat"
        if sbd_path.is_file():
            return sbd_path
        raise FileNotFoundError(
            f"Label for id {image_id!r} not found: neither {voc_path} nor {sbd_path} exists"
        )

    def __len__(self) -> int:
        return len(self._files)

    def __getitem__(self, index: int) -> dict[str, Any]:
        """Reads one sample.

        Args:
            index: Sample index (negative indices are supported).

        Returns:
            ``{"image": tv_tensors.Image (3, H, W) uint8, "mask": tv_tensors.Mask (H, W) int64,
            "name": id}`` with class indices ``0..20`` and ``255`` (void) in the mask.

        Raises:
            DataFormatError: If a file cannot be decoded, the label PNG is not a palette or
                grayscale image, the label holds values other than ``0..20``/``255``, or image
                and label sizes differ.
        """
        image_path, label_path = self._files[index]
        image = read_image_rgb(image_path)
        if label_path.suffix == ".mat":
            label = _read_mat_label(label_path)
        else:
            label = _read_png_label(label_path)
        if label.size:
            values = np.unique(label)
            bad = values[~np.isin(values, _VALID_LABELS)]
            if bad.size:
                raise DataFormatError(
                    f"VOC label file {label_path} contains values {bad[:10].tolist()} outside the "
                    "class indices 0..20 and 255 (void)"
                )
        check_label_size(image, label.shape, image_path, label_path)
        return {
            "image": tv_tensors.Image(image),
            "mask": tv_tensors.Mask(torch.from_numpy(label.astype(np.int64))),
            "name": self.names[index],
        }

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(split={self.split!r}, n={len(self)}, root={str(self.root)!r})"
        )
