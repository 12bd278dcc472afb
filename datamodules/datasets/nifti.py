"""NIfTI volumes: reading with nibabel, canonical orientation, pair checks, normalisation.

A :class:`Volume` holds an array in ``(D, H, W)`` order, i.e. the canonical (RAS+) voxel
axes ``(x, y, z)`` read backwards, so that ``D`` is the axial (slice) axis, and the voxel
spacing in the same order, in millimetres.  Intensities keep the file's stored dtype
(``int16`` Hounsfield units for CT, whatever the scanner wrote for MR); normalisation is a
separate, per-modality step applied when a slice is served:

* CT: clip to a Hounsfield window ``[lo, hi]`` (BTCV's ``[-125, 275]``) and scale to ``[0, 1]``;
* MR: per-volume percentile z-score: clip to the volume's ``[p_lo, p_hi]`` percentiles
  (0.5 and 99.5 by default) and standardise with the clipped volume's mean and std
  (statistics computed once per volume, :func:`intensity_stats`).

Every failure names the file: a missing or truncated ``.nii.gz``, a label whose shape,
affine or spacing differs from its image, label values outside the protocol's table.
"""

from __future__ import annotations

import warnings
import zlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import nibabel as nib
import numpy as np

from contraseg.datamodules.datasets.io import DataFormatError, require_file

__all__ = [
    "Volume",
    "canonical",
    "check_pair",
    "intensity_stats",
    "map_labels",
    "normalize_intensity",
    "read_nifti",
    "write_nifti",
]

# scanners write tiny rotations (rounding): below this angle no notice
OBLIQUE_NOTICE_DEGREES = 0.5


@dataclass
class Volume:
    """One canonical volume.

    Attributes:
        array: ``(D, H, W)`` voxels in the stored dtype (D = axial axis).
        spacing: ``(sD, sH, sW)`` voxel size in mm.
        affine: The canonical 4x4 voxel-to-world affine (RAS+, of the ``(x, y, z)`` axes).
        path: Source file (for error messages), or a description.
        stats: Intensity statistics (:func:`intensity_stats`), filled when needed.
    """

    array: np.ndarray
    spacing: tuple[float, float, float]
    affine: np.ndarray
    path: str = ""
    stats: dict[str, float] = field(default_factory=dict)


def canonical(array: np.ndarray, affine: np.ndarray, path: str = "") -> Volume:
    """Reorient an ``(x, y, z)`` voxel array with its affine to RAS+ and to ``(D, H, W)``.

    Args:
        array: 3-D array in the file's voxel order.
        affine: Its 4x4 voxel-to-world affine.
        path: Source, for messages.

    Returns:
        The canonical :class:`Volume`.

    Raises:
        DataFormatError: If the array is not 3-D (a singleton 4th axis is dropped).
    """
    if array.ndim == 4 and array.shape[3] == 1:
        array = array[..., 0]
    if array.ndim != 3:
        raise DataFormatError(f"{path}: expected a 3-D volume, got shape {array.shape}")
    oblique = float(np.degrees(np.max(nib.affines.obliquity(affine))))
    if oblique > OBLIQUE_NOTICE_DEGREES:
        warnings.warn(f"{path}: the voxel axes are oblique to the world axes by up to "
                      f"{oblique:.2f} degrees; they are taken as the nearest world axes (RAS+) "
                      "without resampling, so world positions are off by that rotation",
                      stacklevel=2)  # fmt: skip
    current = nib.orientations.io_orientation(affine)
    target = nib.orientations.axcodes2ornt(("R", "A", "S"))
    transform = nib.orientations.ornt_transform(current, target)
    data = nib.orientations.apply_orientation(array, transform)
    new_affine = affine @ nib.orientations.inv_ornt_aff(transform, array.shape)
    zooms = np.sqrt((new_affine[:3, :3] ** 2).sum(axis=0))  # spacing of x, y, z
    data = np.ascontiguousarray(data.transpose(2, 1, 0))
    return Volume(data, (float(zooms[2]), float(zooms[1]), float(zooms[0])), new_affine, path)


def read_nifti(path: str | Path, what: str = "NIfTI volume") -> Volume:
    """Read a ``.nii`` / ``.nii.gz`` file into a canonical :class:`Volume`.

    The stored dtype is kept when the header has no intensity scaling (``scl_slope`` unset
    or 1 and ``scl_inter`` 0); otherwise nibabel's scaled values are used.

    Args:
        path: The file.
        what: Description for the missing-file message.

    Returns:
        The canonical volume.

    Raises:
        FileNotFoundError: If the file is missing.
        DataFormatError: If it is not NIfTI, truncated or corrupt.
    """
    path = require_file(path, what)
    try:
        image = nib.load(str(path))
        array = np.asanyarray(image.dataobj)
    except (EOFError, OSError, zlib.error, ValueError, nib.filebasedimages.ImageFileError) as err:
        raise DataFormatError(
            f"{path}: cannot read this NIfTI file ({type(err).__name__}: {err}); "
            "it is truncated, corrupt or not NIfTI-1/2 (.nii or .nii.gz)"
        ) from err
    array = np.asarray(array)
    if array.dtype.kind in "fc":  # one NaN voxel makes losses and scores NaN or meaningless
        bad = int(array.size - np.count_nonzero(np.isfinite(array)))
        if bad:
            raise DataFormatError(
                f"{path}: {bad} of {array.size} voxels are not finite (NaN or inf); replace them "
                "(e.g. with the background value) before training or evaluating on this volume"
            )
    return canonical(array, image.affine, str(path))


def write_nifti(path: str | Path, array: np.ndarray, affine: np.ndarray) -> None:
    """Write an ``(x, y, z)`` array with its affine (fixtures, synthetic exports)."""
    nib.save(nib.Nifti1Image(array, affine), str(path))


def check_pair(image: Volume, label: Volume, atol: float = 1e-3) -> None:
    """Raise unless ``label`` lies on ``image``'s voxel grid (shape, spacing, affine).

    Raises:
        DataFormatError: Naming the label file and both values.
    """
    if image.array.shape != label.array.shape:
        raise DataFormatError(
            f"{label.path}: label shape {label.array.shape} differs from its "
            f"image's {image.array.shape} ({image.path})"
        )
    if not np.allclose(image.spacing, label.spacing, atol=atol):
        raise DataFormatError(
            f"{label.path}: label spacing {label.spacing} mm differs from its "
            f"image's {image.spacing} mm ({image.path})"
        )
    if not np.allclose(image.affine, label.affine, atol=atol):
        raise DataFormatError(
            f"{label.path}: label affine differs from its image's "
            f"({image.path}):\n{label.affine}\nvs\n{image.affine}"
        )


def map_labels(array: np.ndarray, table: Mapping[int, int] | None, path: str = "") -> np.ndarray:
    """Raw label values to class indices through ``table`` (``None``: values are classes).

    Args:
        array: Raw label volume (any integer or integral float dtype).
        table: ``raw value -> class`` for every allowed value.
        path: Source, for messages.

    Returns:
        ``uint8`` class volume.

    Raises:
        DataFormatError: On non-integral values or values outside the table.
    """
    values = np.unique(array)
    if not np.all(np.equal(np.mod(values, 1), 0)):
        raise DataFormatError(f"{path}: label volume has non-integer values {values[:5]}")
    values = values.astype(np.int64)
    if table is None:
        if values.min() < 0 or values.max() > 254:
            raise DataFormatError(f"{path}: label values {values.tolist()} outside [0, 254]")
        return array.astype(np.uint8)
    unknown = sorted(set(values.tolist()) - set(int(k) for k in table))
    if unknown:
        raise DataFormatError(
            f"{path}: label values {unknown} are not in the protocol's table "
            f"{sorted(int(k) for k in table)}"
        )
    lut = np.zeros(int(values.max()) - int(values.min()) + 1, dtype=np.uint8)
    for raw, cls in table.items():
        if values.min() <= int(raw) <= values.max():
            lut[int(raw) - int(values.min())] = cls
    return lut[array.astype(np.int64) - int(values.min())]


def intensity_stats(array: np.ndarray, percentiles: tuple[float, float] = (0.5, 99.5)) -> dict:
    """Per-volume percentile bounds and the clipped volume's mean / std (MR z-score)."""
    lo, hi = np.percentile(array, percentiles)
    clipped = np.clip(array.astype(np.float32), lo, hi)
    std = float(clipped.std())
    return {
        "lo": float(lo),
        "hi": float(hi),
        "mean": float(clipped.mean()),
        "std": std if std > 0 else 1.0,
    }


def normalize_intensity(
    array: np.ndarray,
    modality: str,
    window: tuple[float, float] | None = None,
    stats: Mapping[str, float] | None = None,
) -> np.ndarray:
    """Per-modality normalisation to float32 (see the module docstring).

    Args:
        array: Voxels (any shape) in the stored dtype.
        modality: ``ct`` (HU window to ``[0, 1]``) or ``mr`` (percentile z-score).
        window: CT window ``(lo, hi)`` in HU.
        stats: MR statistics of the whole volume (:func:`intensity_stats`).

    Returns:
        float32 array of the same shape.
    """
    x = array.astype(np.float32)
    if modality == "ct":
        if window is None:
            raise ValueError("CT normalisation needs a HU window (lo, hi)")
        lo, hi = window
        return (np.clip(x, lo, hi) - lo) / (hi - lo)
    if modality == "mr":
        if stats is None:
            raise ValueError("MR normalisation needs the volume's intensity statistics")
        return (np.clip(x, stats["lo"], stats["hi"]) - stats["mean"]) / stats["std"]
    raise ValueError(f"modality must be 'ct' or 'mr', got {modality!r}")
