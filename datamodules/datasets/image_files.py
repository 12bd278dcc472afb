"""A folder of unlabeled images to predict on: any sizes, any layout of sub-folders.

Every file under ``root`` whose suffix is an image format (PNG, JPEG, BMP, TIFF, WebP) is an
item, in sorted order of its path relative to ``root``; its ``name`` is that path without the
suffix (``site_a/tile_07``), so predictions written under that name keep the folder's layout.
Images decode to RGB ``uint8`` (:func:`~contraseg.datamodules.datasets.io.read_image_rgb`;
multi-band TIFFs keep their first three bands via PIL); nothing is resized: the model pads
each image to its network's stride, or slides a window over it (``sliding_window``).
"""

from __future__ import annotations

import os
from typing import Any

from torch.utils.data import Dataset
from torchvision import tv_tensors

from contraseg.datamodules.datasets.io import DataFormatError, read_image_rgb, require_dir

__all__ = ["IMAGE_SUFFIXES", "ImageFiles"]

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")


class ImageFiles(Dataset):
    """Items ``{"image": tv_tensors.Image (3, H, W) uint8, "name": str}`` under ``root``.

    Args:
        root: Folder of images (searched recursively).

    Raises:
        FileNotFoundError: ``root`` does not exist.
        DataFormatError: ``root`` holds no image file.
    """

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = require_dir(root, "Folder of images to predict on")
        self.paths = sorted(p for p in self.root.rglob("*")
                            if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)  # fmt: skip
        if not self.paths:
            raise DataFormatError(f"{self.root} holds no image file (expected files ending in "
                                  f"{', '.join(IMAGE_SUFFIXES)})")  # fmt: skip
        self.names = [str(p.relative_to(self.root).with_suffix("")) for p in self.paths]

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> dict[str, Any]:
        return {"image": tv_tensors.Image(read_image_rgb(self.paths[index])),
                "name": self.names[index]}

