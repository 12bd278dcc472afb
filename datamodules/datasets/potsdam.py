"""Readers for ISPRS Potsdam (2D semantic labeling) in two on-disk layouts.

Classes follow the mmsegmentation order::

    0 impervious_surfaces (255, 255, 255)    3 tree    (0, 255, 0)
    1 building            (0, 0, 255)        4 car     (255, 255, 0)
    2 low_vegetation      (0, 255, 255)      5 clutter (255, 0, 0)

The eroded boundary colour ``(0, 0, 0)`` of the ``*_label_noBoundary.tif`` labels maps to the
ignore index ``255``. Any other colour also maps to ``255`` and is counted (``unknown_pixels`` /
the second return value of :func:`decode_potsdam_label`); with ``strict_colours=True`` it raises
:class:`~contraseg.datamodules.datasets.io.DataFormatError` instead.

GLCNet crop layout (:class:`PotsdamCrops`, 256x256 crops of the RGBIR tiles)::

    root/{split}_RGBIR/<name>.tif   # 4-band uint8 (R, G, B, IR), H x W x 4
    root/{split}_lbl/<name>.tif     # RGB colour-coded label, H x W x 3
    root/<list>_RGBIR.txt           # one file name per line, e.g. train, trainR1, val, valR1500
    root/<list>_lbl.txt             # matching label file names, same order

Official tile layout (:class:`PotsdamTiles`, 38 tiles of 6000x6000)::

    root/2_Ortho_RGB/top_potsdam_{id}_RGB.tif
    root/4_Ortho_RGBIR/top_potsdam_{id}_RGBIR.tif
    root/5_Labels_all/top_potsdam_{id}_label.tif
    root/5_Labels_all_noBoundary/top_potsdam_{id}_label_noBoundary.tif

TIFFs are read with ``tifffile`` (Pillow opens 4-band RGBIR files as RGBA).
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Final, Literal

import numpy as np
import tifffile
import torch
from torch.utils.data import Dataset
from torchvision import tv_tensors

from contraseg.datamodules.datasets.info import DatasetInfo
from contraseg.datamodules.datasets.io import (
    DataFormatError,
    read_tiff_hwc,
    require_dir,
    require_file,
    to_hwc,
)
from contraseg.datamodules.datasets.palette import ColourTable

__all__ = [
    "IGNORE_INDEX",
    "POTSDAM",
    "POTSDAM_TILES",
    "POTSDAM_CLASSES",
    "POTSDAM_PALETTE",
    "POTSDAM_TEST_TILES",
    "POTSDAM_TRAIN_TILES",
    "PotsdamCrops",
    "PotsdamTiles",
    "decode_potsdam_label",
]

POTSDAM_CLASSES: Final[tuple[str, ...]] = (
    "impervious_surfaces",
    "building",
    "low_vegetation",
    "tree",
    "car",
    "clutter",
)
POTSDAM_PALETTE: Final[list[tuple[int, int, int]]] = [
    (255, 255, 255),
    (0, 0, 255),
    (0, 255, 255),
    (0, 255, 0),
    (255, 255, 0),
    (255, 0, 0),
]
IGNORE_INDEX: Final = 255
BOUNDARY_COLOUR: Final = (0, 0, 0)
# GLCNet normalises x / 255 * 3.2 - 1.6, i.e. (x / 255 - 0.5) / 0.3125, on all four bands
POTSDAM: Final = DatasetInfo(
    "potsdam", POTSDAM_CLASSES, tuple(POTSDAM_PALETTE), IGNORE_INDEX,
    mean=(0.5,) * 4, std=(0.3125,) * 4, crop_size=256,
)  # fmt: skip
POTSDAM_TILES: Final = DatasetInfo(
    "potsdam_tiles", POTSDAM.classes, POTSDAM.palette, IGNORE_INDEX, POTSDAM.mean, POTSDAM.std,
    crop_size=512,
)  # fmt: skip

POTSDAM_TEST_TILES: Final[tuple[str, ...]] = (
    "2_13", "2_14", "3_13", "3_14", "4_13", "4_14", "4_15",
    "5_13", "5_14", "5_15", "6_13", "6_14", "6_15", "7_13",
)  # fmt: skip
POTSDAM_TRAIN_TILES: Final[tuple[str, ...]] = (
    "2_10", "2_11", "2_12", "3_10", "3_11", "3_12", "4_10", "4_11", "4_12",
    "5_10", "5_11", "5_12", "6_7", "6_8", "6_9", "6_10", "6_11", "6_12",
    "7_7", "7_8", "7_9", "7_10", "7_11", "7_12",
)  # fmt: skip

_BAND_COUNT: Final = {"rgb": 3, "rgbir": 4}


# class colours, and the eroded boundary colour mapped to the ignore index
_COLOURS: Final = ColourTable([*POTSDAM_PALETTE, BOUNDARY_COLOUR],
                              [*range(len(POTSDAM_PALETTE)), IGNORE_INDEX])  # fmt: skip


def decode_potsdam_label(rgb: np.ndarray) -> tuple[np.ndarray, int]:
    """Maps an ISPRS colour-coded label to class indices.

    Vectorised: colours are packed into 24-bit codes and looked up with ``np.searchsorted`` in the
    sorted table of the 7 known colours.

    Args:
        rgb: ``(H, W, 3)`` uint8 colour label.

    Returns:
        ``(mask, unknown_count)``: ``mask`` is an ``(H, W)`` int64 array with classes ``0..5`` and
        ``255`` for the boundary colour ``(0, 0, 0)`` and for unknown colours; ``unknown_count`` is
        the number of pixels whose colour is neither a class colour nor the boundary colour.

    Raises:
        ValueError: If ``rgb`` is not an ``(H, W, 3)`` array.
    """
    rgb = np.asarray(rgb)
    if rgb.ndim != 3 or rgb.shape[2] != 3:
        raise ValueError(f"Expected an (H, W, 3) colour label, got shape {rgb.shape}")
    mask, known = _COLOURS.decode(rgb, fill=IGNORE_INDEX)
    return mask, int(known.size - np.count_nonzero(known))


def _check_uint8_bands(array: np.ndarray, path: Path, what: str, bands: int) -> None:
    """Raises :class:`DataFormatError` unless ``array`` is ``(H, W, bands)`` uint8."""
    if array.ndim != 3 or array.shape[2] != bands:
        raise DataFormatError(
            f"{what} {path} has shape {array.shape}, expected (H, W, {bands}) with {bands} bands"
        )
    if array.dtype != np.uint8:
        raise DataFormatError(f"{what} {path} has dtype {array.dtype}, expected uint8")


def _decode_mask(rgb: np.ndarray, path: Path, strict_colours: bool) -> tuple[np.ndarray, int]:
    """Decodes a label window, raising in strict mode when unknown colours occur."""
    mask, unknown = decode_potsdam_label(rgb)
    if unknown and strict_colours:
        bad = np.unique(rgb[mask == IGNORE_INDEX].reshape(-1, 3), axis=0)
        bad = [tuple(int(v) for v in c) for c in bad if tuple(c) != BOUNDARY_COLOUR]
        raise DataFormatError(
            f"Label {path} contains {unknown} pixels with unknown colours {bad[:5]} "
            f"(expected only the ISPRS colours {POTSDAM_PALETTE} and boundary (0, 0, 0))"
        )
    if unknown and str(path) not in _REPORTED:
        _REPORTED.add(str(path))
        warnings.warn(
            f"{path}: {unknown} pixels with colours outside the ISPRS table set to ignore (255)",
            stacklevel=3,
        )
    return mask, unknown


_REPORTED: set[str] = set()  # label files whose unknown colours were already reported


def _strip_tif(name: str) -> str:
    for suffix in (".tif", ".tiff"):
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return name


def _read_list(path: Path) -> list[str]:
    require_file(path, "Potsdam split list", "expected one crop file name per line")
    with open(path, encoding="utf-8") as f:
        return [line.strip() for line in f if line.strip()]


class PotsdamCrops(Dataset[dict[str, Any]]):
    """ISPRS Potsdam in the GLCNet crop layout (256x256 RGBIR crops with colour labels).

    Crops are small, so each item decodes its two files whole.

    Args:
        root: Dataset directory (see the module docstring for the layout).
        split: Folder prefix, ``"train"`` or ``"val"``: images come from ``root/{split}_RGBIR``
            and labels from ``root/{split}_lbl``.
        list_name: Split list prefix; reads ``root/{list_name}_RGBIR.txt`` and
            ``root/{list_name}_lbl.txt``. Defaults to ``split`` (e.g. ``"trainR1"`` selects the
            138-crop 1% label split while images still come from ``train_RGBIR/``).
        bands: ``"rgbir"`` keeps all 4 bands, ``"rgb"`` the first three.
        names: Explicit crop names (with or without ``.tif``) overriding the list files; labels
            use the same names.
        missing: ``"error"`` raises if a listed file is absent; ``"skip"`` keeps only crops whose
            image and label are both present and records the number dropped in ``missing_count``.
        strict_colours: Raise :class:`DataFormatError` on unknown label colours instead of
            mapping them to ``ignore_index`` and counting them.

    Attributes:
        classes: Class names, mmseg order.
        num_classes: ``6``.
        ignore_index: ``255``.
        palette: RGB colour of each class.
        names: Crop names (without ``.tif``) in dataset order.
        missing_count: Number of listed crops dropped because a file was missing.
        unknown_pixels: Running count of unknown-colour label pixels decoded by this process
            (each DataLoader worker keeps its own count).

    Raises:
        FileNotFoundError: If a directory or list file is missing, or (``missing="error"``) a
            listed file is absent; the message names the file and the list.
        ValueError: On invalid arguments or if the two list files disagree in length.
    """

    info: DatasetInfo = POTSDAM
    classes: tuple[str, ...] = POTSDAM.classes
    num_classes: int = POTSDAM.num_classes
    ignore_index: int = POTSDAM.ignore_index
    palette: list[tuple[int, int, int]] = POTSDAM_PALETTE

    def __init__(
        self,
        root: str | os.PathLike[str],
        split: str = "train",
        list_name: str | None = None,
        bands: Literal["rgb", "rgbir"] = "rgbir",
        names: Sequence[str] | None = None,
        missing: Literal["error", "skip"] = "error",
        strict_colours: bool = False,
    ) -> None:
        if bands not in _BAND_COUNT:
            raise ValueError(f"bands must be 'rgb' or 'rgbir', got {bands!r}")
        if missing not in ("error", "skip"):
            raise ValueError(f"missing must be 'error' or 'skip', got {missing!r}")
        hint = "expected root/{split}_RGBIR/<name>.tif and root/{split}_lbl/<name>.tif"
        self.root = require_dir(root, "Potsdam root directory", hint)
        self.split = split
        self.list_name = list_name if list_name is not None else split
        self.bands = bands
        self.strict_colours = strict_colours
        self.image_dir = require_dir(self.root / f"{split}_RGBIR", "Potsdam image folder", hint)
        self.label_dir = require_dir(self.root / f"{split}_lbl", "Potsdam label folder", hint)
        self.unknown_pixels = 0

        if names is not None:
            image_names = [_strip_tif(n) for n in names]
            label_names = list(image_names)
            source = "the explicit `names` argument"
        else:
            image_list = self.root / f"{self.list_name}_RGBIR.txt"
            label_list = self.root / f"{self.list_name}_lbl.txt"
            image_names = [_strip_tif(n) for n in _read_list(image_list)]
            label_names = [_strip_tif(n) for n in _read_list(label_list)]
            if len(image_names) != len(label_names):
                raise ValueError(
                    f"Split lists {image_list} ({len(image_names)} names) and {label_list} "
                    f"({len(label_names)} names) differ in length"
                )
            source = f"split list {image_list}"

        kept_images: list[str] = []
        kept_labels: list[str] = []
        for image_name, label_name in zip(image_names, label_names):
            image_path = self.image_dir / f"{image_name}.tif"
            label_path = self.label_dir / f"{label_name}.tif"
            for path, what in ((image_path, "Potsdam image"), (label_path, "Potsdam label")):
                if not path.is_file() and missing == "error":
                    raise FileNotFoundError(
                        f"{what} not found: {path} (listed in {source}; pass missing='skip' to "
                        "use only the crops that are present)"
                    )
            if image_path.is_file() and label_path.is_file():
                kept_images.append(image_name)
                kept_labels.append(label_name)
        self.missing_count = len(image_names) - len(kept_images)
        self.names = kept_images
        self._label_names = kept_labels

    def __len__(self) -> int:
        return len(self.names)

    def __getitem__(self, index: int) -> dict[str, Any]:
        """Loads one crop.

        Returns:
            ``{"image": tv_tensors.Image (C, H, W) uint8, "mask": tv_tensors.Mask (H, W) int64,
            "name": str}`` with ``C`` = 4 (R, G, B, IR) or 3.

        Raises:
            DataFormatError: If a file cannot be decoded, the image is not 4-band uint8, the
                label is not 3-band uint8, or their sizes differ (messages name the files).
        """
        name = self.names[index]
        image_path = self.image_dir / f"{name}.tif"
        label_path = self.label_dir / f"{self._label_names[index]}.tif"
        image = read_tiff_hwc(image_path, "Potsdam image")
        _check_uint8_bands(image, image_path, "Potsdam RGBIR image", 4)
        label = read_tiff_hwc(label_path, "Potsdam label")
        _check_uint8_bands(label, label_path, "Potsdam colour label", 3)
        if image.shape[:2] != label.shape[:2]:
            raise DataFormatError(
                f"Potsdam image {image_path} is {image.shape[0]}x{image.shape[1]} but its label "
                f"{label_path} is {label.shape[0]}x{label.shape[1]}; expected equal sizes"
            )
        mask, unknown = _decode_mask(label, label_path, self.strict_colours)
        self.unknown_pixels += unknown
        chw = np.ascontiguousarray(image[:, :, : _BAND_COUNT[self.bands]].transpose(2, 0, 1))
        return {
            "image": tv_tensors.Image(torch.from_numpy(chw)),
            "mask": tv_tensors.Mask(torch.from_numpy(mask)),
            "name": name,
        }


def _window_starts(length: int, crop: int, stride: int) -> list[int]:
    """Start offsets of a sliding window along one axis; the last window is flush with the end."""
    starts = list(range(0, length - crop + 1, stride))
    if starts[-1] != length - crop:
        starts.append(length - crop)
    return starts


class PotsdamTiles(Dataset[dict[str, Any]]):
    """ISPRS Potsdam read from the official 6000x6000 tiles with windowed reads.

    Each tile is opened lazily, once per process, with ``tifffile.memmap`` and windows are sliced
    from the memory map, so a sample never decodes a whole tile (the official tiles are
    uncompressed and memory-mappable). A tile that cannot be memory-mapped (e.g. a compressed
    re-export) is instead decoded ONCE per process with ``tifffile.imread`` and the array is
    cached for the life of the process; note that this costs ``6000 * 6000 * C`` bytes of RAM per
    tile and per DataLoader worker. Open memory maps / cached arrays are never pickled: they are
    dropped when the dataset is sent to a worker and also reset if the dataset is used in a
    forked process, so each worker opens its own.

    Args:
        root: Dataset directory (see the module docstring for the layout).
        split: ``"train"`` (24 tiles) or ``"test"`` (14 tiles); ignored if ``tile_ids`` is given.
        tile_ids: Explicit tile ids such as ``"2_10"``.
        crop_size: Side of the square windows.
        mode: ``"sliding"``: deterministic grid covering every tile (last window flush with the
            border), ``len`` = total windows. ``"random"``: ``samples_per_epoch`` windows, item
            ``i`` drawn deterministically from ``(seed, epoch, i)``; call :meth:`set_epoch`.
        stride: Sliding-window stride; defaults to ``crop_size``. A stride larger than
            ``crop_size`` leaves gaps.
        samples_per_epoch: Length of the dataset in random mode.
        bands: ``"rgbir"`` reads ``4_Ortho_RGBIR``, ``"rgb"`` reads ``2_Ortho_RGB``.
        label_variant: ``"full"`` reads ``5_Labels_all``, ``"noBoundary"`` reads
            ``5_Labels_all_noBoundary`` (boundary pixels -> ``ignore_index``).
        seed: Seed of the random windows.
        strict_colours: Raise :class:`DataFormatError` on unknown label colours.

    Attributes:
        classes, num_classes, ignore_index, palette: As for :class:`PotsdamCrops`.
        tile_ids: Tile ids in dataset order.
        tile_sizes: ``(H, W)`` of each tile.
        windows: Sliding mode only: ``(tile_index, y, x)`` of each item.
        epoch: Current epoch (random mode).
        unknown_pixels: Running count of unknown-colour label pixels decoded by this process.

    Raises:
        FileNotFoundError: If the root or a tile / label file is missing.
        DataFormatError: If a header cannot be read, the band count or dtype is wrong, an image
            and its label differ in size, or a tile is smaller than ``crop_size``.
        ValueError: On invalid arguments.
    """

    info: DatasetInfo = POTSDAM_TILES
    classes: tuple[str, ...] = POTSDAM.classes
    num_classes: int = POTSDAM.num_classes
    ignore_index: int = POTSDAM.ignore_index
    palette: list[tuple[int, int, int]] = POTSDAM_PALETTE

    def __init__(
        self,
        root: str | os.PathLike[str],
        split: Literal["train", "test"] = "train",
        tile_ids: Sequence[str] | None = None,
        crop_size: int = 512,
        mode: Literal["random", "sliding"] = "sliding",
        stride: int | None = None,
        samples_per_epoch: int = 1000,
        bands: Literal["rgb", "rgbir"] = "rgbir",
        label_variant: Literal["full", "noBoundary"] = "full",
        seed: int = 0,
        strict_colours: bool = False,
    ) -> None:
        if bands not in _BAND_COUNT:
            raise ValueError(f"bands must be 'rgb' or 'rgbir', got {bands!r}")
        if mode not in ("random", "sliding"):
            raise ValueError(f"mode must be 'random' or 'sliding', got {mode!r}")
        if label_variant not in ("full", "noBoundary"):
            raise ValueError(f"label_variant must be 'full' or 'noBoundary', got {label_variant!r}")
        if tile_ids is None:
            if split not in ("train", "test"):
                raise ValueError(f"split must be 'train' or 'test', got {split!r}")
            tile_ids = POTSDAM_TRAIN_TILES if split == "train" else POTSDAM_TEST_TILES
        if not tile_ids:
            raise ValueError("tile_ids must not be empty")
        stride = crop_size if stride is None else stride
        if crop_size < 1 or stride < 1 or samples_per_epoch < 1:
            raise ValueError(
                f"crop_size, stride and samples_per_epoch must be positive, got {crop_size}, "
                f"{stride}, {samples_per_epoch}"
            )
        hint = (
            "expected the official ISPRS layout root/4_Ortho_RGBIR/top_potsdam_{id}_RGBIR.tif "
            "(or 2_Ortho_RGB/..._RGB.tif) and root/5_Labels_all/top_potsdam_{id}_label.tif "
            "(or 5_Labels_all_noBoundary/..._label_noBoundary.tif)"
        )
        self.root = require_dir(root, "Potsdam root directory", hint)
        self.split = split
        self.tile_ids = [str(t) for t in tile_ids]
        self.crop_size = crop_size
        self.mode = mode
        self.stride = stride
        self.samples_per_epoch = samples_per_epoch
        self.bands = bands
        self.label_variant = label_variant
        self.seed = seed
        self.strict_colours = strict_colours
        self.epoch = 0
        self.unknown_pixels = 0

        band_name = "RGBIR" if bands == "rgbir" else "RGB"
        image_dir = self.root / ("4_Ortho_RGBIR" if bands == "rgbir" else "2_Ortho_RGB")
        if label_variant == "full":
            label_dir, label_suffix = self.root / "5_Labels_all", "label"
        else:
            label_dir, label_suffix = self.root / "5_Labels_all_noBoundary", "label_noBoundary"
        self.image_paths = [
            require_file(image_dir / f"top_potsdam_{t}_{band_name}.tif", "Potsdam tile", hint)
            for t in self.tile_ids
        ]
        self.label_paths = [
            require_file(label_dir / f"top_potsdam_{t}_{label_suffix}.tif", "Potsdam label", hint)
            for t in self.tile_ids
        ]

        self.tile_sizes: list[tuple[int, int]] = []
        for image_path, label_path in zip(self.image_paths, self.label_paths):
            image_shape = self._header_shape(image_path, "Potsdam tile")
            label_shape = self._header_shape(label_path, "Potsdam label")
            n_bands = _BAND_COUNT[bands]
            if image_shape[2] != n_bands:
                raise DataFormatError(
                    f"Potsdam tile {image_path} has {image_shape[2]} bands, expected {n_bands} "
                    f"({band_name})"
                )
            if label_shape[2] != 3:
                raise DataFormatError(
                    f"Potsdam label {label_path} has {label_shape[2]} bands, "
                    "expected 3 (RGB colours)"
                )
            if image_shape[:2] != label_shape[:2]:
                raise DataFormatError(
                    f"Potsdam tile {image_path} is {image_shape[0]}x{image_shape[1]} but its label "
                    f"{label_path} is {label_shape[0]}x{label_shape[1]}; expected equal sizes"
                )
            if min(image_shape[:2]) < crop_size:
                raise DataFormatError(
                    f"Potsdam tile {image_path} is {image_shape[0]}x{image_shape[1]}, smaller than "
                    f"crop_size={crop_size}"
                )
            self.tile_sizes.append((image_shape[0], image_shape[1]))

        self.windows: list[tuple[int, int, int]] = []
        if mode == "sliding":
            for t, (h, w) in enumerate(self.tile_sizes):
                for y in _window_starts(h, crop_size, stride):
                    for x in _window_starts(w, crop_size, stride):
                        self.windows.append((t, y, x))

        self._cache: dict[Path, np.ndarray] = {}
        self._cache_pid = os.getpid()

    @staticmethod
    def _header_shape(path: Path, what: str) -> tuple[int, int, int]:
        """Reads ``(H, W, C)`` from the TIFF header without decoding pixel data."""
        try:
            with tifffile.TiffFile(path) as tif:
                series = tif.series[0]
                shape, axes, dtype = tuple(series.shape), series.axes, series.dtype
        except Exception as err:
            raise DataFormatError(
                f"Could not read the TIFF header of {what} {path}: {type(err).__name__}: {err}"
            ) from err
        if dtype != np.uint8:
            raise DataFormatError(f"{what} {path} has dtype {dtype}, expected uint8")
        if len(shape) == 2:
            return shape[0], shape[1], 1
        if len(shape) != 3:
            raise DataFormatError(f"{what} {path} has shape {shape}, expected (H, W, bands)")
        if axes.endswith("YX") and not axes.endswith("S"):
            return shape[1], shape[2], shape[0]
        return shape[0], shape[1], shape[2]

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_cache"] = {}  # never pickle open memory maps / decoded tiles
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._cache_pid = os.getpid()

    def _array(self, path: Path) -> np.ndarray:
        """Returns the ``(H, W, C)`` array of a tile: a memory map or, if compressed, a cache."""
        if self._cache_pid != os.getpid():  # forked worker: open our own handles
            self._cache = {}
            self._cache_pid = os.getpid()
        array = self._cache.get(path)
        if array is not None:
            return array
        try:
            with tifffile.TiffFile(path) as tif:
                axes = tif.series[0].axes
            try:
                array = tifffile.memmap(path, mode="r")
            except ValueError:  # not memory-mappable (compressed / non-contiguous): decode once
                array = tifffile.imread(path)
        except Exception as err:
            raise DataFormatError(
                f"Could not read Potsdam TIFF {path}: {type(err).__name__}: {err}"
            ) from err
        array = to_hwc(array, axes)
        self._cache[path] = array
        return array

    def set_epoch(self, epoch: int) -> None:
        """Sets the epoch used to draw random windows (random mode).

        With ``persistent_workers=True`` DataLoader workers hold their own copies, so call this
        before the workers are (re)created, or use non-persistent workers.
        """
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self.windows) if self.mode == "sliding" else self.samples_per_epoch

    def window(self, index: int) -> tuple[int, int, int]:
        """Returns ``(tile_index, y, x)`` of item ``index`` (random mode: for the current epoch)."""
        if not 0 <= index < len(self):
            raise IndexError(f"index {index} out of range for dataset of length {len(self)}")
        if self.mode == "sliding":
            return self.windows[index]
        rng = np.random.default_rng([self.seed, self.epoch, index])
        t = int(rng.integers(len(self.tile_ids)))
        h, w = self.tile_sizes[t]
        y = int(rng.integers(h - self.crop_size + 1))
        x = int(rng.integers(w - self.crop_size + 1))
        return t, y, x

    def __getitem__(self, index: int) -> dict[str, Any]:
        """Reads one window.

        Returns:
            ``{"image": tv_tensors.Image (C, S, S) uint8, "mask": tv_tensors.Mask (S, S) int64,
            "name": str, "tile": str, "window": (y, x)}`` with ``S = crop_size``.
        """
        t, y, x = self.window(index)
        s = self.crop_size
        image = self._array(self.image_paths[t])[y : y + s, x : x + s]
        label_path = self.label_paths[t]
        label = np.asarray(self._array(label_path)[y : y + s, x : x + s])
        mask, unknown = _decode_mask(label, label_path, self.strict_colours)
        self.unknown_pixels += unknown
        image_t = torch.from_numpy(np.ascontiguousarray(np.transpose(image, (2, 0, 1))))
        tile = self.tile_ids[t]
        return {
            "image": tv_tensors.Image(image_t),
            "mask": tv_tensors.Mask(torch.from_numpy(mask)),
            "name": f"top_potsdam_{tile}_{y}_{x}",
            "tile": tile,
            "window": (y, x),
        }
