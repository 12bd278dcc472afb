"""Shared I/O helpers for the on-disk dataset readers.

The helpers here turn low-level failures (missing paths, undecodable images) into errors whose
messages name the offending path and say what layout or content was expected, so a broken dataset
directory can be diagnosed from the exception alone.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import tifffile
import torch
from PIL import Image, UnidentifiedImageError

__all__ = [
    "DataFormatError",
    "check_label_size",
    "decode_label_png",
    "read_image_rgb",
    "read_jpeg_bytes",
    "read_tiff_hwc",
    "require_dir",
    "require_file",
    "to_hwc",
]


class DataFormatError(ValueError):
    """A dataset file exists but its content does not match the expected format."""


def _with_hint(message: str, hint: str | None) -> str:
    return f"{message} ({hint})" if hint else message


def require_file(path: str | os.PathLike[str], what: str, hint: str | None = None) -> Path:
    """Checks that ``path`` is an existing regular file.

    Args:
        path: File that must exist.
        what: Human readable description of the file, e.g. ``"CIFAR-10 train batch"``.
        hint: Optional description of the expected layout, appended in parentheses.

    Returns:
        ``path`` as a :class:`~pathlib.Path`.

    Raises:
        FileNotFoundError: If ``path`` does not exist or is not a regular file. The message reads
            ``"<what> not found: <path> (<hint>)"``.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(_with_hint(f"{what} not found: {path}", hint))
    if not path.is_file():
        raise FileNotFoundError(
            _with_hint(f"{what} not found: {path} exists but is not a regular file", hint)
        )
    return path


def require_dir(path: str | os.PathLike[str], what: str, hint: str | None = None) -> Path:
    """Checks that ``path`` is an existing directory.

    Args:
        path: Directory that must exist.
        what: Human readable description of the directory, e.g. ``"SVHN root directory"``.
        hint: Optional description of the expected layout, appended in parentheses.

    Returns:
        ``path`` as a :class:`~pathlib.Path`.

    Raises:
        FileNotFoundError: If ``path`` does not exist or is not a directory. The message reads
            ``"<what> not found: <path> (<hint>)"``.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(_with_hint(f"{what} not found: {path}", hint))
    if not path.is_dir():
        raise FileNotFoundError(
            _with_hint(f"{what} not found: {path} exists but is not a directory", hint)
        )
    return path


_JPEG_MAGIC = b"\xff\xd8\xff"


def _decode_jpeg_rgb(data: bytes) -> torch.Tensor | None:
    """``torchvision.io.decode_jpeg`` of ``data`` as RGB, or ``None`` when it cannot decode it."""
    from torchvision.io import ImageReadMode, decode_jpeg

    try:
        buffer = torch.frombuffer(bytearray(data), dtype=torch.uint8)
        image = decode_jpeg(buffer, mode=ImageReadMode.RGB)
    except (RuntimeError, ValueError):
        return None  # e.g. a CMYK or damaged JPEG: PIL decodes it or names the fault
    return image if image.ndim == 3 and image.shape[0] == 3 else None


# start-of-frame markers (baseline, extended, progressive, lossless, ...); C4, C8, CC are not
_SOF_MARKERS = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}


def read_jpeg_bytes(path: str | os.PathLike[str]) -> tuple[bytes, tuple[int, int]]:
    """A JPEG file's bytes and its ``(height, width)`` from the frame header, undecoded.

    For decoding on the device (``torchvision.io.decode_jpeg(..., device="cuda")``): the
    loader workers only read the file and its size (to draw the crop).

    Raises:
        FileNotFoundError: If ``path`` does not exist.
        DataFormatError: If the file is not a JPEG or has no frame header; names the file.
    """
    path = require_file(path, "Image file")
    data = path.read_bytes()
    if data[:3] != _JPEG_MAGIC:
        raise DataFormatError(f"{path} is not a JPEG file (expected the bytes FF D8 FF at its "
                              "start): decoding on the device reads JPEGs only")  # fmt: skip
    pos = 2
    while pos + 4 <= len(data):
        if data[pos] != 0xFF:
            break
        marker = data[pos + 1]
        if marker == 0xFF:  # fill byte
            pos += 1
            continue
        length = int.from_bytes(data[pos + 2 : pos + 4], "big")
        if marker in _SOF_MARKERS and pos + 9 <= len(data):
            height = int.from_bytes(data[pos + 5 : pos + 7], "big")
            width = int.from_bytes(data[pos + 7 : pos + 9], "big")
            if height > 0 and width > 0:
                return data, (height, width)
            break
        pos += 2 + length
    raise DataFormatError(f"Could not read the frame header of JPEG file {path}: expected a "
                          "start-of-frame marker with the image size (truncated or damaged?)")


def read_image_rgb(path: str | os.PathLike[str]) -> torch.Tensor:
    """Decodes an image file into an RGB ``uint8`` tensor.

    JPEG files are decoded by ``torchvision.io.decode_jpeg`` (libjpeg-turbo, straight into a
    tensor): measured side by side on 320x256 JPEGs by ``benchmarks/pipeline.py``, it is the
    faster decoder here and gives the same pixels as PIL.  Every other format, and a JPEG
    that torchvision cannot decode, goes through PIL: any mode PIL understands (grayscale,
    palette, RGBA, CMYK, ...) is converted to RGB; alpha is dropped. EXIF orientation is not
    applied.

    Args:
        path: Image file to read.

    Returns:
        A contiguous ``torch.uint8`` tensor of shape ``(3, H, W)``.

    Raises:
        FileNotFoundError: If ``path`` does not exist.
        DataFormatError: If the file cannot be decoded (corrupt, truncated, not an image, or a
            format PIL does not support). The message names the file.
    """
    path = require_file(path, "Image file")
    if path.suffix.lower() in (".jpg", ".jpeg"):
        data = path.read_bytes()
        if data[:3] == _JPEG_MAGIC:
            decoded = _decode_jpeg_rgb(data)
            if decoded is not None:
                return decoded
    try:
        with Image.open(path) as img:
            img.load()
            rgb = img.convert("RGB")
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError, EOFError) as err:
        raise DataFormatError(
            f"Could not decode image file {path}: expected a readable image "
            f"(JPEG/PNG/BMP/TIFF/WebP/...) that PIL can decode, got {type(err).__name__}: {err}"
        ) from err
    except Image.DecompressionBombError as err:
        raise DataFormatError(
            f"Refusing to decode image file {path}: {err} (expected an image below PIL's "
            "decompression-bomb pixel limit)"
        ) from err
    array = np.asarray(rgb, dtype=np.uint8)
    if array.ndim != 3 or array.shape[2] != 3:  # defensive; convert("RGB") guarantees this
        raise DataFormatError(
            f"Decoded image {path} has shape {array.shape}, expected (H, W, 3) after RGB conversion"
        )
    return torch.from_numpy(array.copy()).permute(2, 0, 1).contiguous()


def decode_label_png(path: str | os.PathLike[str], what: str,
                     expected: str) -> tuple[np.ndarray, str]:  # fmt: skip
    """A label image's samples as they are stored (palette indices, grey levels), and its mode.

    Never converted (a palette PNG gives its indices, not colours); the caller checks mode,
    shape and values against its format.

    Raises:
        DataFormatError: The file cannot be decoded: ``Could not decode {what} {path}: expected
            {expected}, got ...``.
    """
    try:
        with Image.open(path) as img:
            img.load()
            return np.array(img), img.mode
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError, EOFError) as err:
        raise DataFormatError(f"Could not decode {what} {path}: expected {expected}, got "
                              f"{type(err).__name__}: {err}") from err  # fmt: skip


def check_label_size(image: torch.Tensor, label_shape: Sequence[int], image_path: Path,
                     label_path: Path, what: str = "") -> None:  # fmt: skip
    """Error naming both files when a ``(C, H, W)`` image and its ``(H, W)`` label differ in size.

    Raises:
        DataFormatError: ``Size mismatch: {what} image ... is WxH but label ... is WxH``.
    """
    if tuple(label_shape) != tuple(image.shape[1:]):
        kind = f"{what} image" if what else "image"
        raise DataFormatError(
            f"Size mismatch: {kind} {image_path} is {image.shape[2]}x{image.shape[1]} but label "
            f"{label_path} is {label_shape[1]}x{label_shape[0]} (WxH)"
        )


def to_hwc(array: np.ndarray, axes: str) -> np.ndarray:
    """Returns an ``(H, W, C)`` view of a tifffile series array given its ``axes`` string."""
    if array.ndim == 2:
        return array[:, :, None]
    if array.ndim == 3 and axes.endswith("YX") and not axes.endswith("S"):
        return np.moveaxis(array, 0, -1)  # planar (separate) configuration: (C, H, W)
    return array


def read_tiff_hwc(path: str | os.PathLike[str], what: str) -> np.ndarray:
    """Decodes a whole (small) TIFF into an ``(H, W, C)`` array.

    Raises:
        FileNotFoundError: If ``path`` does not exist.
        DataFormatError: If the file cannot be decoded; the message names the file.
    """
    path = require_file(path, what)
    try:
        with tifffile.TiffFile(path) as tif:
            series = tif.series[0]
            array = series.asarray()
            axes = series.axes
    except Exception as err:  # TiffFileError, ValueError, struct.error, OSError, ...
        raise DataFormatError(
            f"Could not decode {what} {path}: expected a readable TIFF, "
            f"got {type(err).__name__}: {err}"
        ) from err
    return to_hwc(array, axes)


def select_names(
    available: Sequence[str], names: Sequence[str] | None, what: str, where: str
) -> list[str]:
    """Restrict ``available`` (kept in its order) to ``names``, refusing unknown ones.

    Args:
        available: Names present in the split, in dataset order.
        names: Requested subset, or ``None`` for all.
        what: Data set name for messages (e.g. ``"Cityscapes"``).
        where: Where the split lives, for messages.

    Returns:
        The selected names.

    Raises:
        ValueError: If ``names`` is a string or names something not in ``available``.
    """
    if names is None:
        return list(available)
    if isinstance(names, str):
        raise ValueError("names must be a sequence of names, not a single string")
    wanted = set(names)
    missing = sorted(wanted.difference(available))
    if missing:
        raise ValueError(
            f"{len(missing)} requested {what} names are not in {where}, e.g. {missing[:5]}"
        )
    return [n for n in available if n in wanted]
