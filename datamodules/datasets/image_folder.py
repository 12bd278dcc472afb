"""Reader for plain image folders, either labeled (one subfolder per class) or flat (unlabeled).

Layouts::

    root/<class_name>/**/<image>     # labeled: classes sorted by folder name
    root/<image>                     # flat: unlabeled, label -1

Hidden files and folders (names starting with ``.``) are ignored. Files are listed once, at
construction, in a deterministic (sorted) order; images are decoded lazily in ``__getitem__``.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any, Final

import numpy as np
from torch.utils.data import Dataset, Subset
from torchvision import tv_tensors

from contraseg.datamodules.datasets.io import (
    DataFormatError,
    read_image_rgb,
    read_jpeg_bytes,
    require_dir,
)

__all__ = ["DEFAULT_EXTENSIONS", "EncodedImages", "ImageFolderDataset"]

DEFAULT_EXTENSIONS: Final = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")
_HINT: Final = (
    "expected either class subfolders root/<class>/<image> (labeled) or images directly in "
    "root (flat, unlabeled)"
)


def _normalize_extensions(extensions: Iterable[str]) -> tuple[str, ...]:
    if isinstance(extensions, str):
        extensions = (extensions,)
    normalized = tuple(
        (e if e.startswith(".") else f".{e}").lower() for e in extensions if e.strip(".")
    )
    if not normalized:
        raise ValueError("extensions must contain at least one file extension")
    return normalized


def _is_image(entry: os.DirEntry[str], extensions: tuple[str, ...]) -> bool:
    return (
        not entry.name.startswith(".")
        and entry.is_file()
        and os.path.splitext(entry.name)[1].lower() in extensions
    )


def _scan_recursive(directory: Path, extensions: tuple[str, ...]) -> list[Path]:
    """Lists image files under ``directory`` (following symlinks, skipping cycles), sorted."""
    found: list[Path] = []
    seen: set[str] = set()
    stack = [directory]
    while stack:
        current = stack.pop()
        real = os.path.realpath(current)
        if real in seen:
            continue
        seen.add(real)
        with os.scandir(current) as it:
            for entry in it:
                if entry.name.startswith("."):
                    continue
                if entry.is_dir():
                    stack.append(Path(entry.path))
                elif _is_image(entry, extensions):
                    found.append(Path(entry.path))
    return sorted(found, key=lambda p: p.relative_to(directory).parts)


class ImageFolderDataset(Dataset[dict[str, Any]]):
    """Images from a folder, labeled by class subfolder or unlabeled (flat).

    Attributes:
        root: The dataset folder.
        extensions: Lower-case file extensions (with leading dot) that count as images.
        labeled: Whether samples carry class labels.
        classes: Sorted class (subfolder) names; empty when unlabeled.
        num_classes: ``len(classes)`` (``0`` when unlabeled).
        class_to_idx: Mapping from class name to label.
        paths: Image file paths, in sample order.
        targets: ``np.int64`` array of labels (``-1`` for every sample when unlabeled).

    Example:
        >>> ds = ImageFolderDataset("/data/pets")  # doctest: +SKIP
        >>> sample = ds[0]  # {"image": Image (3, H, W) uint8, "label": int}
    """

    def __init__(
        self,
        root: str | os.PathLike[str],
        labeled: bool | None = None,
        extensions: Iterable[str] = DEFAULT_EXTENSIONS,
    ) -> None:
        """Scans ``root`` and builds the sample list.

        Args:
            root: Dataset folder.
            labeled: ``None`` auto-detects the layout; ``True`` requires class subfolders;
                ``False`` ignores class structure and returns every image (recursively, if the
                folder has class subfolders) with label ``-1``.
            extensions: File extensions (case-insensitive) treated as images.

        Raises:
            FileNotFoundError: If ``root`` is missing or contains no images.
            DataFormatError: If the layout is mixed (images directly in ``root`` as well as
                class subfolders with images), if ``labeled=True`` on a flat folder, or if a
                class subfolder contains no images.
        """
        self.root = require_dir(root, "Image folder root", _HINT)
        self.extensions = _normalize_extensions(extensions)

        with os.scandir(self.root) as it:
            entries = sorted(it, key=lambda e: e.name)
        top_images = [Path(e.path) for e in entries if _is_image(e, self.extensions)]
        subdirs = [e for e in entries if not e.name.startswith(".") and e.is_dir()]
        per_class = {e.name: _scan_recursive(Path(e.path), self.extensions) for e in subdirs}
        class_dirs = [name for name, files in per_class.items() if files]
        empty_dirs = [name for name, files in per_class.items() if not files]

        if top_images and class_dirs:
            raise DataFormatError(
                f"Mixed layout in image folder {self.root}: found {len(top_images)} image(s) "
                f"directly in it (e.g. {top_images[0].name}) and class subfolder(s) with images "
                f"(e.g. {class_dirs[0]}/); {_HINT}"
            )
        if not top_images and not class_dirs:
            raise FileNotFoundError(
                f"No images found in image folder {self.root} (looked for extensions "
                f"{', '.join(self.extensions)}; {_HINT})"
            )
        is_class_layout = not top_images
        if labeled is True and not is_class_layout:
            raise DataFormatError(
                f"labeled=True but image folder {self.root} is flat (images directly in it, no "
                "class subfolders); expected root/<class>/<image>, or pass labeled=None/False"
            )
        self.labeled = is_class_layout if labeled is None else bool(labeled)

        if self.labeled:
            if empty_dirs:
                raise DataFormatError(
                    f"Class folder(s) without images in {self.root}: "
                    f"{', '.join(empty_dirs)} (looked for extensions "
                    f"{', '.join(self.extensions)}; every class subfolder must contain images)"
                )
            self.classes = sorted(class_dirs)
            self.class_to_idx = {name: i for i, name in enumerate(self.classes)}
            self.paths = [p for name in self.classes for p in per_class[name]]
            targets = [self.class_to_idx[name] for name in self.classes for _ in per_class[name]]
        else:
            self.classes = []
            self.class_to_idx = {}
            if is_class_layout:
                self.paths = [p for name in sorted(class_dirs) for p in per_class[name]]
            else:
                self.paths = top_images
            targets = [-1] * len(self.paths)
        self.targets = np.asarray(targets, dtype=np.int64)
        self.num_classes = len(self.classes)

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> dict[str, Any]:
        """Decodes one image.

        Args:
            index: Sample index (negative indices are supported).

        Returns:
            ``{"image": tv_tensors.Image (3, H, W) uint8 RGB, "label": int}``; label is ``-1``
            for unlabeled folders.

        Raises:
            DataFormatError: If the image file is corrupt or unreadable (the message names it).
        """
        image = read_image_rgb(self.paths[index])
        return {"image": tv_tensors.Image(image), "label": int(self.targets[index])}

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(root={str(self.root)!r}, labeled={self.labeled}, "
            f"n={len(self)}, num_classes={self.num_classes})"
        )


class EncodedImages(Dataset[dict[str, Any]]):
    """The JPEG files of an :class:`ImageFolderDataset` (or a ``Subset`` of one), undecoded.

    Items: ``{"jpeg": bytes, "size": (H, W) int64 tensor, "label": int, "path": str}``, for
    decoding batched on the device.  Every file must be a JPEG: the first other one is an
    error at construction, naming it.
    """

    def __init__(self, dataset: Dataset) -> None:
        indices: list[int] | None = None
        while isinstance(dataset, Subset):
            inner = list(dataset.indices)
            indices = inner if indices is None else [inner[i] for i in indices]
            dataset = dataset.dataset
        if not isinstance(dataset, ImageFolderDataset):
            raise TypeError(f"EncodedImages wraps an ImageFolderDataset, got {type(dataset)}")
        order = indices if indices is not None else list(range(len(dataset)))
        self.paths = [dataset.paths[i] for i in order]
        self.targets = dataset.targets[order]
        for path in self.paths:
            if path.suffix.lower() not in (".jpg", ".jpeg"):
                raise DataFormatError(f"{path} is not a JPEG file: data.decode_on_device "
                                      "needs a folder of JPEGs (set it to false to decode other "
                                      "formats in the loader workers)")  # fmt: skip

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> dict[str, Any]:  # noqa: D105
        import torch

        data, size = read_jpeg_bytes(self.paths[index])
        return {"jpeg": data, "size": torch.tensor(size), "label": int(self.targets[index]),
                "path": str(self.paths[index])}  # fmt: skip
