"""Colour helpers of label maps: palette look-up tables, colourised maps, palette PNGs.

They live beside the data-set metadata (:class:`~contraseg.datamodules.datasets.info.DatasetInfo`
palettes) and are used by the visualisation callbacks and the prediction writer.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np
from PIL import Image
from torch import Tensor

from contraseg.datamodules.datasets.voc import voc_colormap

__all__ = [
    "IGNORE_INDEX",
    "ColourTable",
    "colourize",
    "palette_lut",
    "save_palette_png",
    "to_numpy_labels",
]

IGNORE_INDEX = 255
_LUT_SIZE = 256


class ColourTable:
    """Vectorised colour -> label look-up of colour-coded label images.

    Colours are packed into 24-bit codes ``r << 16 | g << 8 | b`` and looked up with
    ``np.searchsorted`` in the sorted table: one pass over the pixels, no loop over classes.

    Args:
        colours: RGB triples.
        values: Label of each colour.

    Raises:
        ValueError: Lengths differ or two colours are equal.
    """

    def __init__(self, colours: Sequence[Sequence[int]], values: Sequence[int]) -> None:
        codes = self.encode(np.asarray(colours, dtype=np.uint8).reshape(-1, 3))
        if len(codes) != len(values) or len(np.unique(codes)) != len(codes):
            raise ValueError("ColourTable needs one value per colour and distinct colours")
        order = np.argsort(codes)
        self.keys = codes[order]
        self.values = np.asarray(values, dtype=np.int64)[order]

    @staticmethod
    def encode(rgb: np.ndarray) -> np.ndarray:
        """``(..., 3)`` colours as int32 codes ``r << 16 | g << 8 | b``."""
        rgb = np.asarray(rgb).astype(np.int32, copy=False)
        return (rgb[..., 0] << 16) | (rgb[..., 1] << 8) | rgb[..., 2]

    def decode(self, rgb: np.ndarray, fill: int) -> tuple[np.ndarray, np.ndarray]:
        """Labels of an ``(H, W, 3)`` colour image.

        Returns:
            ``(labels, known)``: ``(H, W)`` int64 labels, ``fill`` where the colour is not in
            the table, and the boolean map of known colours.
        """
        codes = self.encode(rgb[..., :3])
        idx = np.minimum(np.searchsorted(self.keys, codes), len(self.keys) - 1)
        known = self.keys[idx] == codes
        return np.where(known, self.values[idx], fill).astype(np.int64, copy=False), known


def palette_lut(palette: Sequence[Sequence[int]] | np.ndarray | None) -> np.ndarray:
    """Build a 256-entry RGB look-up table from a (possibly short or empty) palette.

    Entry ``i`` is ``palette[i]`` for ``i < len(palette)`` and the PASCAL VOC
    bit-interleave colour :func:`contraseg.datamodules.datasets.voc.voc_colormap` otherwise, so
    every class index in ``[0, 256)`` has a deterministic colour.

    Args:
        palette: RGB triples in ``[0, 255]``; ``None`` or empty gives the VOC colour map.

    Returns:
        ``np.uint8`` array of shape ``(256, 3)``.

    Raises:
        ValueError: If the palette is not ``(N, 3)``, has more than 256 entries or values
            outside ``[0, 255]``.
    """
    lut = voc_colormap(_LUT_SIZE)
    if palette is None or len(palette) == 0:
        return lut
    colours = np.asarray(palette, dtype=np.int64)
    if colours.ndim != 2 or colours.shape[1] != 3:
        raise ValueError(f"palette must be a sequence of RGB triples, got shape {colours.shape}")
    if len(colours) > _LUT_SIZE:
        raise ValueError(f"palette has {len(colours)} colours, at most {_LUT_SIZE} are supported")
    if colours.min() < 0 or colours.max() > 255:
        raise ValueError("palette values must lie in [0, 255]")
    lut[: len(colours)] = colours.astype(np.uint8)
    return lut


def to_numpy_labels(labels: np.ndarray | Tensor) -> np.ndarray:
    """``(H, W)`` integer label map as an ``int64`` NumPy array."""
    if isinstance(labels, Tensor):
        labels = labels.detach().cpu().numpy()
    labels = np.asarray(labels)
    if labels.ndim != 2:
        raise ValueError(f"labels must be a (H, W) map, got shape {labels.shape}")
    if not np.issubdtype(labels.dtype, np.integer):
        raise TypeError(f"labels must have an integer dtype, got {labels.dtype}")
    return labels.astype(np.int64, copy=False)


def colourize(
    labels: np.ndarray | Tensor,
    palette: Sequence[Sequence[int]] | np.ndarray | None,
    ignore_index: int | None = IGNORE_INDEX,
    ignore_colour: Sequence[int] = (0, 0, 0),
) -> np.ndarray:
    """Map a label map to colours with a vectorised palette look-up.

    Args:
        labels: ``(H, W)`` integer class indices (NumPy array or tensor, any device).
        palette: RGB triples; missing or extra indices fall back to the VOC colour map
            (see :func:`palette_lut`).
        ignore_index: Label drawn with ``ignore_colour`` (``None``: no ignore label).
        ignore_colour: RGB colour of ignored pixels.

    Returns:
        ``np.uint8`` array of shape ``(H, W, 3)``.

    Raises:
        ValueError: If a (non-ignored) label lies outside ``[0, 256)``.
    """
    labels = to_numpy_labels(labels)
    lut = palette_lut(palette)
    ignored = labels == ignore_index if ignore_index is not None else np.zeros_like(labels, bool)
    valid = labels[~ignored]
    if valid.size and (valid.min() < 0 or valid.max() >= len(lut)):
        raise ValueError(
            f"labels must lie in [0, {len(lut)}) apart from ignore_index={ignore_index}, got "
            f"range [{valid.min()}, {valid.max()}]"
        )
    out = lut[np.where(ignored, 0, labels)]
    out[ignored] = np.asarray(ignore_colour, dtype=np.uint8)
    return out


def save_palette_png(
    labels: np.ndarray | Tensor,
    path: str | os.PathLike[str],
    palette: Sequence[int] | Sequence[Sequence[int]] | np.ndarray | None = None,
) -> None:
    """Save a class map as a "P" mode PNG whose pixel values are the class indices.

    Args:
        labels: ``(H, W)`` integer map with values in ``[0, 256)``.
        path: Output file.
        palette: Flat ``[r0, g0, b0, r1, ...]`` list or RGB triples (see
            :func:`palette_lut`); ``None`` uses the VOC colour map.

    Raises:
        ValueError: If a value lies outside ``[0, 256)``.
    """
    array = to_numpy_labels(labels)
    if array.size and (array.min() < 0 or array.max() >= _LUT_SIZE):
        raise ValueError(
            f"palette PNGs hold indices in [0, {_LUT_SIZE}), got [{array.min()}, {array.max()}]"
        )
    if palette is not None and len(palette) and np.ndim(palette) == 1:
        flat = [int(v) for v in palette]
    else:
        flat = palette_lut(palette).reshape(-1).tolist()  # type: ignore[arg-type]
    image = Image.fromarray(array.astype(np.uint8))  # mode "L"
    image.putpalette(flat)  # attaching a palette turns "L" into "P", pixel values kept
    image.save(path)
