"""Reader for your own segmentation data: image and mask folders matched by name.

Layout (folder names are arguments; ``{split}`` is replaced by the split)::

    root/images/{split}/<name>.<jpg|png|tif|...>
    root/masks/{split}/<name><mask_suffix>.<png|tif>
    root/classes.yaml                     # or classes.json

The class table::

    classes: [background, road, building]        # label value = position in the list
    palette: [[0, 0, 0], [128, 64, 128], [70, 70, 70]]   # optional
    ignore_index: 255                             # optional (default 255)
    mean: [0.485, 0.456, 0.406]                   # optional, per band, in ScaleByDtype units
    std: [0.229, 0.224, 0.225]

Masks are either single-channel class indices (8/16-bit PNG, palette PNG, TIFF) or, when the
table has a ``palette``, RGB colour images whose colours are mapped to classes.  A value or
colour outside the class table, a missing mask, an image and mask of different sizes or an
undecodable file raises :class:`~contraseg.datamodules.datasets.io.DataFormatError` naming the file.
TIFF images keep their band count and dtype (e.g. 4-band or 16-bit); other images are read
as RGB ``uint8``.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Final, Literal

import numpy as np
import tifffile
import torch
import yaml
from PIL import Image
from torch.utils.data import Dataset
from torchvision import tv_tensors

from contraseg.datamodules.datasets.info import IMAGENET_MEAN, IMAGENET_STD, DatasetInfo
from contraseg.datamodules.datasets.io import (
    DataFormatError,
    read_image_rgb,
    read_tiff_hwc,
    require_dir,
    require_file,
)
from contraseg.datamodules.datasets.palette import ColourTable

__all__ = ["SegmentationFolder", "read_class_table"]

IMAGE_EXTENSIONS: Final = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")
MASK_EXTENSIONS: Final = (".png", ".tif", ".tiff", ".bmp")


def read_class_table(
    path: str | os.PathLike[str], name: str = "segmentation_folder"
) -> DatasetInfo:
    """Read a YAML / JSON class table (module docstring) into a :class:`DatasetInfo`.

    Raises:
        FileNotFoundError: The file does not exist.
        DataFormatError: It is not a mapping with a non-empty ``classes`` list, or its palette,
            statistics or ignore index do not fit the classes.
    """
    path = require_file(path, "class table", "expected classes.yaml / classes.json with a "
                        "'classes' list")  # fmt: skip
    text = path.read_text(encoding="utf-8")
    try:
        table = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
    except (json.JSONDecodeError, yaml.YAMLError) as err:
        raise DataFormatError(f"class table {path} is not valid {path.suffix[1:]}: {err}") from err
    if not isinstance(table, dict) or not isinstance(table.get("classes"), list) or not table[
            "classes"]:  # fmt: skip
        raise DataFormatError(f"class table {path} needs a non-empty 'classes' list")
    classes = tuple(str(c) for c in table["classes"])
    palette = tuple(tuple(int(v) for v in c) for c in table.get("palette") or ())
    ignore = int(table.get("ignore_index", 255))
    if ignore < len(classes) and ignore >= 0:
        raise DataFormatError(f"class table {path}: ignore_index {ignore} is a class index")
    if any(len(c) != 3 or not all(0 <= v <= 255 for v in c) for c in palette):
        raise DataFormatError(f"class table {path}: palette entries must be [r, g, b] in 0..255")
    if len(set(palette)) != len(palette):
        raise DataFormatError(f"class table {path}: two classes share a palette colour")
    mean = tuple(float(v) for v in table.get("mean", IMAGENET_MEAN))
    std = tuple(float(v) for v in table.get("std", IMAGENET_STD))
    try:
        return DatasetInfo(name, classes, palette, ignore, mean, std)
    except ValueError as err:
        raise DataFormatError(f"class table {path}: {err}") from err


def _files(folder: Path, extensions: tuple[str, ...]) -> dict[str, Path]:
    """``stem -> path`` of the image files directly in ``folder`` (hidden files skipped)."""
    found: dict[str, Path] = {}
    for entry in sorted(folder.iterdir()):
        hidden = entry.name.startswith(".")
        if entry.is_file() and not hidden and entry.suffix.lower() in extensions:
            if entry.stem in found:
                raise DataFormatError(f"{folder} holds two files named {entry.stem}.*: "
                                      f"{found[entry.stem].name} and {entry.name}")  # fmt: skip
            found[entry.stem] = entry
    return found


def _read_array(path: Path, what: str) -> np.ndarray:
    """``(H, W)`` or ``(H, W, C)`` array of an image file, dtype kept (TIFFs: any band layout)."""
    if path.suffix.lower() in (".tif", ".tiff"):
        array = read_tiff_hwc(path, what)
        return array[:, :, 0] if array.shape[2] == 1 else array
    try:
        with Image.open(path) as img:
            return np.asarray(img)  # "P" PNGs read as their indices
    except Exception as err:  # PIL / tifffile raise many types for corrupt files
        raise DataFormatError(
            f"Could not decode {what} {path}: {type(err).__name__}: {err}"
        ) from err


def _header(path: Path, what: str) -> tuple[tuple[int, int], int]:
    """``((H, W), channels)`` of an image file from its header, without decoding the pixels."""
    try:
        if path.suffix.lower() in (".tif", ".tiff"):
            with tifffile.TiffFile(path) as tif:
                series = tif.series[0]
                shape = dict(zip(series.axes, series.shape, strict=True))
            bands = shape.get("S", 1) * shape.get("C", 1)
            return (int(shape["Y"]), int(shape["X"])), int(bands)
        with Image.open(path) as img:
            width, height = img.size
            return (height, width), len(img.getbands()) if img.mode != "P" else 1
    except Exception as err:  # PIL / tifffile raise many types for corrupt files
        raise DataFormatError(
            f"Could not read the header of {what} {path}: {type(err).__name__}: {err}"
        ) from err


class SegmentationFolder(Dataset[dict[str, Any]]):
    """One split of a segmentation folder (module docstring).

    Args:
        root: Data set folder.
        split: Split name substituted for ``{split}``.
        info: The class table (:func:`read_class_table`).
        image_dir: Image folder relative to ``root``.
        mask_dir: Mask folder relative to ``root``.
        mask_suffix: Text between the image name and the mask extension
            (e.g. ``_segmentation`` for ISIC).
        names: Restrict to these image names (without extension).
        missing: ``error`` (an image without mask raises) or ``skip`` it.
        check_headers: Check every mask's channels and every pair's size at construction
            from the file headers (about 1 ms a pair).

    Raises:
        FileNotFoundError: A folder is missing.
        DataFormatError: An image has no mask (``missing="error"``) or two files share a name.
        ValueError: ``names`` holds names not in the split.
    """

    def __init__(
        self,
        root: str | os.PathLike[str],
        split: str,
        info: DatasetInfo,
        image_dir: str = "images/{split}",
        mask_dir: str = "masks/{split}",
        mask_suffix: str = "",
        names: list[str] | None = None,
        missing: Literal["error", "skip"] = "error",
        check_headers: bool = True,
    ) -> None:
        hint = (f"expected root/{image_dir} and root/{mask_dir} with masks named "
                f"<image>{mask_suffix}.png")  # fmt: skip
        self.root = require_dir(root, "segmentation folder root", hint)
        self.info, self.split = info, split
        self.image_dir = require_dir(
            self.root / image_dir.format(split=split), "image folder", hint
        )
        self.mask_dir = require_dir(self.root / mask_dir.format(split=split), "mask folder", hint)
        images = _files(self.image_dir, IMAGE_EXTENSIONS)
        masks = _files(self.mask_dir, MASK_EXTENSIONS)
        if names is not None:
            unknown = sorted(set(names) - set(images))
            if unknown:
                raise ValueError(f"{len(unknown)} names are not images of {self.image_dir}, "
                                 f"e.g. {unknown[:5]}")  # fmt: skip
            images = {n: images[n] for n in names}
        self.items: list[tuple[str, Path, Path]] = []
        for name, image in images.items():
            mask = masks.get(name + mask_suffix)
            if mask is None:
                if missing == "error":
                    raise DataFormatError(
                        f"image {image} has no mask {self.mask_dir / (name + mask_suffix)}.png "
                        f"(or .tif/.tiff/.bmp): masks are named <image name><mask_suffix> with "
                        f"mask_suffix={mask_suffix!r} (data.init_args.mask_suffix, e.g. "
                        "'_segmentation' for ISIC); pass missing='skip' to leave such images out"
                    )
                continue
            self.items.append((name, image, mask))
        self.missing_count = len(images) - len(self.items)
        self.names = [name for name, _, _ in self.items]
        palette = info.palette
        self._colours = ColourTable(palette, range(len(palette))) if palette else None
        if check_headers:
            self._check_headers()

    def _check_headers(self) -> None:
        """Every mask's channel layout and every pair's size, from the file headers only.

        A bad mask is then an error at setup, not only when a run happens to draw it (a
        2-batch run could pass where a full epoch fails).  Label values need the pixels and
        stay checked when a mask is read.
        """
        colour_ok = self._colours is not None
        for _, image_path, mask_path in self.items:
            mask_size, mask_bands = _header(mask_path, "mask")
            if mask_bands in (3, 4) and not colour_ok:
                raise DataFormatError(
                    f"mask {mask_path} is a colour image but the class table has no palette "
                    "(give one, or store class indices in a single-channel mask)"
                )
            if mask_bands not in (1, 3, 4):
                raise DataFormatError(
                    f"mask {mask_path} has {mask_bands} channels: expected an (H, W) map of "
                    "class indices or an RGB palette image"
                )
            image_size, _ = _header(image_path, "image")
            if image_size != mask_size:
                raise DataFormatError(
                    f"image {image_path} is {image_size} but its mask {mask_path} is "
                    f"{mask_size}; expected equal sizes"
                )

    def __len__(self) -> int:
        return len(self.items)

    def _image(self, path: Path) -> torch.Tensor:
        if path.suffix.lower() not in (".tif", ".tiff"):
            return read_image_rgb(path)
        array = read_tiff_hwc(path, "image")
        if array.ndim != 3:
            raise DataFormatError(f"image {path} has shape {array.shape}, expected (H, W[, bands])")
        if array.dtype.kind not in "uif":
            raise DataFormatError(f"image {path} has dtype {array.dtype}, expected numbers")
        if array.dtype == np.uint32 or array.dtype.kind == "f" and array.dtype != np.float32:
            array = array.astype(np.float32)
        return torch.from_numpy(np.ascontiguousarray(array.transpose(2, 0, 1)))

    def _mask(self, path: Path) -> np.ndarray:
        array = _read_array(path, "mask")
        n, ignore = self.info.num_classes, self.info.ignore_index
        if array.ndim == 3 and array.shape[2] in (3, 4):
            if self._colours is None:
                raise DataFormatError(
                    f"mask {path} is a colour image but the class table has no palette "
                    "(give one, or store class indices in a single-channel mask)"
                )
            mask, known = self._colours.decode(array, fill=ignore)
            if not known.all():
                bad = np.unique(array[..., :3][~known].reshape(-1, 3), axis=0)[:5].tolist()
                raise DataFormatError(f"mask {path}: {int((~known).sum())} pixels with colours "
                                      f"outside the palette, e.g. {bad}")  # fmt: skip
            return mask
        if array.ndim != 2 or array.dtype.kind not in "ui":
            raise DataFormatError(f"mask {path} has shape {array.shape} and dtype {array.dtype}: "
                                  "expected an (H, W) integer map of class indices")  # fmt: skip
        mask = array.astype(np.int64)
        bad = np.setdiff1d(np.unique(mask), [*range(n), ignore])
        if bad.size:
            raise DataFormatError(f"mask {path} holds labels {bad[:10].tolist()} outside the "
                                  f"{n} classes 0..{n - 1} and ignore_index {ignore}")  # fmt: skip
        return mask

    def __getitem__(self, index: int) -> dict[str, Any]:
        """``{"image": Image (C, H, W) in the file's dtype, "mask": Mask (H, W), "name"}``."""
        name, image_path, mask_path = self.items[index]
        image, mask = self._image(image_path), self._mask(mask_path)
        if tuple(image.shape[1:]) != mask.shape:
            raise DataFormatError(f"image {image_path} is {tuple(image.shape[1:])} but its mask "
                                  f"{mask_path} is {mask.shape}; expected equal sizes")  # fmt: skip
        return {"image": tv_tensors.Image(image),
                "mask": tv_tensors.Mask(torch.from_numpy(mask)), "name": name}  # fmt: skip
