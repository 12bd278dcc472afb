"""Reader for the official SVHN "cropped digits" (format 2) MATLAB files.

Layout::

    root/{train,test,extra}_32x32.mat   # X: (32, 32, 3, N) uint8, y: (N, 1) in 1..10

Label ``10`` denotes the digit ``0`` and is mapped to ``0``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Final, Literal

import numpy as np
import scipy.io
import torch
from torch.utils.data import Dataset
from torchvision import tv_tensors

from contraseg.datamodules.datasets.io import DataFormatError, require_dir, require_file

__all__ = ["SVHNDataset"]

_SPLITS: Final = ("train", "test", "extra")
_HINT: Final = "expected the official SVHN cropped-digits layout root/{train,test,extra}_32x32.mat"


def _load_mat(path: Path) -> dict[str, Any]:
    """Loads a MATLAB file, converting decoding failures into :class:`DataFormatError`."""
    try:
        return scipy.io.loadmat(path)
    except OSError as err:  # e.g. a truncated download: "could not read bytes"
        raise DataFormatError(
            f"Could not read SVHN file {path}: {err} (truncated or incomplete download? "
            "expected the full MATLAB .mat file from ufldl.stanford.edu/housenumbers)"
        ) from err
    except NotImplementedError as err:  # MATLAB v7.3 (HDF5) files
        raise DataFormatError(
            f"Could not read SVHN file {path}: {err} (expected a MATLAB v5 .mat file as "
            "distributed at ufldl.stanford.edu/housenumbers)"
        ) from err
    except Exception as err:  # corrupt files raise ValueError, MatReadError, TypeError, ...
        raise DataFormatError(
            f"Could not read SVHN file {path}: expected a MATLAB .mat file with variables "
            f"'X' (32, 32, 3, N) uint8 and 'y' (N, 1), got {type(err).__name__}: {err}"
        ) from err


class SVHNDataset(Dataset[dict[str, Any]]):
    """SVHN cropped digits read from the official ``*_32x32.mat`` files.

    The whole split is loaded into memory at construction time (``extra`` is ~1.6 GB).

    Attributes:
        root: Directory containing the ``.mat`` files.
        split: ``"train"``, ``"test"`` or ``"extra"``.
        classes: ``["0", "1", ..., "9"]``.
        num_classes: ``10``.
        images: ``np.uint8`` array of shape ``(N, 32, 32, 3)`` (HWC, RGB).
        targets: ``np.int64`` array of shape ``(N,)`` with digits ``0..9``.

    Example:
        >>> ds = SVHNDataset("/data/svhn", split="test")  # doctest: +SKIP
        >>> sample = ds[0]  # {"image": Image (3, 32, 32) uint8, "label": int}
    """

    def __init__(
        self,
        root: str | os.PathLike[str],
        split: Literal["train", "test", "extra"] = "train",
    ) -> None:
        """Loads the requested split.

        Args:
            root: Directory containing ``{split}_32x32.mat``.
            split: Which split to load.

        Raises:
            ValueError: On an unknown ``split``.
            FileNotFoundError: If ``root`` or the split's ``.mat`` file is missing.
            DataFormatError: If the file is corrupt, lacks ``X``/``y``, has wrong shapes/dtypes,
                or has labels outside ``1..10``.
        """
        if split not in _SPLITS:
            raise ValueError(f"split must be one of {_SPLITS}, got {split!r}")
        self.split = split
        self.root = require_dir(root, "SVHN root directory", _HINT)
        path = require_file(self.root / f"{split}_32x32.mat", f"SVHN {split} file", _HINT)
        mat = _load_mat(path)

        for key in ("X", "y"):
            if key not in mat:
                found = sorted(k for k in mat if not k.startswith("__"))
                raise DataFormatError(
                    f"SVHN file {path} is missing variable '{key}' (found: {found}; expected "
                    "'X' (32, 32, 3, N) uint8 and 'y' (N, 1))"
                )
        x, y = mat["X"], mat["y"]
        if isinstance(x, np.ndarray) and x.shape == (32, 32, 3):
            x = x[..., np.newaxis]  # MATLAB drops the trailing singleton dim when N == 1
        if not isinstance(x, np.ndarray) or x.ndim != 4 or x.shape[:3] != (32, 32, 3):
            shape = getattr(x, "shape", None)
            raise DataFormatError(
                f"SVHN file {path}: 'X' has shape {shape}, expected (32, 32, 3, N)"
            )
        if x.dtype != np.uint8:
            raise DataFormatError(f"SVHN file {path}: 'X' has dtype {x.dtype}, expected uint8")
        n = x.shape[3]
        if n == 0:
            raise DataFormatError(f"SVHN file {path} holds no images ('X' has shape {x.shape})")

        if not isinstance(y, np.ndarray) or not (y.ndim == 1 or (y.ndim == 2 and y.shape[1] == 1)):
            shape = getattr(y, "shape", None)
            raise DataFormatError(f"SVHN file {path}: 'y' has shape {shape}, expected (N, 1)")
        y = y.reshape(-1)
        if y.shape[0] != n:
            raise DataFormatError(
                f"SVHN file {path}: 'y' has {y.shape[0]} labels but 'X' has {n} images "
                "(expected one label per image)"
            )
        if not (np.issubdtype(y.dtype, np.integer) or np.issubdtype(y.dtype, np.floating)):
            raise DataFormatError(
                f"SVHN file {path}: 'y' has dtype {y.dtype}, expected integer labels 1..10"
            )
        if n and (
            not np.all(np.isfinite(y))
            or not np.all(y == np.round(y))
            or y.min() < 1
            or y.max() > 10
        ):
            bad = y[~np.isin(y, np.arange(1, 11))]
            raise DataFormatError(
                f"SVHN file {path}: 'y' must contain integer labels in 1..10 (10 = digit 0), "
                f"found invalid values such as {bad[:5].tolist()}"
            )
        targets = y.astype(np.int64)
        targets[targets == 10] = 0

        self.images = np.ascontiguousarray(x.transpose(3, 0, 1, 2))
        self.targets = targets
        self.classes = [str(d) for d in range(10)]
        self.num_classes = len(self.classes)

    def __len__(self) -> int:
        return int(self.images.shape[0])

    def __getitem__(self, index: int) -> dict[str, Any]:
        """Returns one sample.

        Args:
            index: Sample index (negative indices are supported).

        Returns:
            ``{"image": tv_tensors.Image (3, 32, 32) uint8, "label": int}``.
        """
        image = torch.from_numpy(self.images[index]).permute(2, 0, 1).contiguous()
        return {"image": tv_tensors.Image(image), "label": int(self.targets[index])}

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(split={self.split!r}, n={len(self)}, root={str(self.root)!r})"
        )
