"""Reader for the official CIFAR-10 / CIFAR-100 "python version" pickle files.

The files are read directly (no torchvision, no md5 checks). Layouts::

    root/cifar-10-batches-py/{data_batch_1..5, test_batch, batches.meta}
    root/cifar-100-python/{train, test, meta}

``root`` may also point directly at ``cifar-10-batches-py`` / ``cifar-100-python``.
"""

from __future__ import annotations

import os
import pickle
from pathlib import Path
from typing import Any, Final, Literal

import numpy as np
import torch
from torch.utils.data import Dataset
from torchvision import tv_tensors

from contraseg.datamodules.datasets.io import DataFormatError, require_dir, require_file

__all__ = ["CIFARDataset"]

_IMAGE_SIZE: Final = 32
_ROW_LEN: Final = 3 * _IMAGE_SIZE * _IMAGE_SIZE  # 3072: R plane, then G, then B (row-major)

_CIFAR10_DIR: Final = "cifar-10-batches-py"
_CIFAR100_DIR: Final = "cifar-100-python"
_CIFAR10_TRAIN: Final = tuple(f"data_batch_{i}" for i in range(1, 6))
_CIFAR10_HINT: Final = (
    "expected the official python pickle layout "
    "root/cifar-10-batches-py/data_batch_1..5, test_batch, batches.meta"
)
_CIFAR100_HINT: Final = (
    "expected the official python pickle layout root/cifar-100-python/train, test, meta"
)

# Globals an official CIFAR pickle may reference (numpy array reconstruction only). Anything else
# is rejected so that loading a dataset file cannot execute arbitrary code.
_ALLOWED_GLOBALS: Final = frozenset(
    {
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy.core.multiarray", "scalar"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "scalar"),
        ("numpy.core.numeric", "_frombuffer"),
        ("numpy._core.numeric", "_frombuffer"),
        ("_codecs", "encode"),
    }
)


class _RestrictedUnpickler(pickle.Unpickler):
    """Unpickler that only resolves the numpy globals needed for array payloads."""

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in _ALLOWED_GLOBALS:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(
            f"global '{module}.{name}' is not allowed (only numpy array payloads are accepted)"
        )


def _decode_key(key: object) -> object:
    return key.decode("latin1") if isinstance(key, bytes) else key


def _load_pickle_dict(path: Path, what: str) -> dict[str, Any]:
    """Loads a CIFAR pickle file into a dict with ``str`` keys.

    Args:
        path: Pickle file (must exist).
        what: Description used in error messages.

    Returns:
        The unpickled dict with ``bytes`` keys decoded to ``str``.

    Raises:
        DataFormatError: If the file is not a valid pickle of a dict.
    """
    try:
        with path.open("rb") as f:
            obj = _RestrictedUnpickler(f, encoding="latin1").load()
    except OSError:
        raise
    except Exception as err:  # garbage bytes can raise almost anything from the unpickler
        raise DataFormatError(
            f"Could not unpickle {what} {path}: expected a CIFAR python-version pickle "
            f"(a dict with numpy 'data' and label lists), got {type(err).__name__}: {err}"
        ) from err
    if not isinstance(obj, dict):
        raise DataFormatError(
            f"{what} {path} does not contain a dict (got {type(obj).__name__}); expected a "
            "CIFAR python-version pickle dict"
        )
    return {_decode_key(k): v for k, v in obj.items()}  # type: ignore[misc]


def _get_key(batch: dict[str, Any], key: str, path: Path, what: str) -> Any:
    if key not in batch:
        raise DataFormatError(
            f"{what} {path} is missing key '{key}' (found keys: {sorted(map(str, batch))})"
        )
    return batch[key]


def _parse_names(value: Any, key: str, path: Path, expected: int) -> list[str]:
    """Validates a list of class names from a meta file."""
    if isinstance(value, np.ndarray):
        value = value.tolist()
    if not isinstance(value, (list, tuple)) or not all(isinstance(v, (str, bytes)) for v in value):
        raise DataFormatError(
            f"Meta file {path}: '{key}' must be a list of strings, got {type(value).__name__}"
        )
    names = [v.decode("utf-8") if isinstance(v, bytes) else v for v in value]
    if len(names) != expected:
        raise DataFormatError(
            f"Meta file {path}: '{key}' has {len(names)} names, expected {expected}"
        )
    return names


def _parse_data(value: Any, path: Path, what: str) -> np.ndarray:
    """Validates a ``data`` array and returns it as (N, 32, 32, 3) uint8 (HWC)."""
    if not isinstance(value, np.ndarray):
        raise DataFormatError(
            f"{what} {path}: 'data' must be a numpy uint8 array of shape (N, {_ROW_LEN}), "
            f"got {type(value).__name__}"
        )
    if value.ndim != 2 or value.shape[1] != _ROW_LEN:
        raise DataFormatError(
            f"{what} {path}: 'data' has shape {value.shape}, expected (N, {_ROW_LEN}) "
            "(one row per image: 1024 R, then 1024 G, then 1024 B values, each 32x32 row-major)"
        )
    if value.dtype != np.uint8:
        raise DataFormatError(f"{what} {path}: 'data' has dtype {value.dtype}, expected uint8")
    n = value.shape[0]
    return value.reshape(n, 3, _IMAGE_SIZE, _IMAGE_SIZE).transpose(0, 2, 3, 1)


def _parse_labels(
    value: Any, key: str, n: int, num_classes: int, path: Path, what: str
) -> np.ndarray:
    """Validates a label list against the data length and class count."""
    try:
        labels = np.asarray(value)
    except Exception as err:
        raise DataFormatError(
            f"{what} {path}: '{key}' could not be converted to an array: {err}"
        ) from err
    if labels.ndim != 1 or not (np.issubdtype(labels.dtype, np.integer) or labels.size == 0):
        raise DataFormatError(
            f"{what} {path}: '{key}' must be a 1-D list of ints, got array of shape "
            f"{labels.shape} and dtype {labels.dtype}"
        )
    if labels.shape[0] != n:
        raise DataFormatError(
            f"{what} {path}: '{key}' has {labels.shape[0]} entries but 'data' has {n} rows "
            "(expected one label per image)"
        )
    labels = labels.astype(np.int64)
    if n and (labels.min() < 0 or labels.max() >= num_classes):
        raise DataFormatError(
            f"{what} {path}: '{key}' values must lie in [0, {num_classes}), "
            f"found range [{labels.min()}, {labels.max()}]"
        )
    return labels


class CIFARDataset(Dataset[dict[str, Any]]):
    """CIFAR-10 / CIFAR-100 read from the official python pickle files.

    All images are loaded into memory at construction time.

    Attributes:
        root: Directory containing the batch files (``.../cifar-10-batches-py`` or
            ``.../cifar-100-python``).
        train: Whether the training split was loaded.
        variant: ``"cifar10"`` or ``"cifar100"``.
        label_type: ``"fine"`` or ``"coarse"`` (only meaningful for CIFAR-100).
        classes: Class names from the meta file, indexed by label.
        num_classes: ``len(classes)``.
        images: ``np.uint8`` array of shape ``(N, 32, 32, 3)`` (HWC, RGB).
        targets: ``np.int64`` array of shape ``(N,)``.

    Example:
        >>> ds = CIFARDataset("/data", train=False)  # doctest: +SKIP
        >>> sample = ds[0]  # {"image": Image (3, 32, 32) uint8, "label": int}
    """

    def __init__(
        self,
        root: str | os.PathLike[str],
        train: bool = True,
        variant: Literal["cifar10", "cifar100"] = "cifar10",
        label_type: Literal["fine", "coarse"] = "fine",
    ) -> None:
        """Loads the requested split.

        Args:
            root: Directory containing ``cifar-10-batches-py`` / ``cifar-100-python``, or that
                folder itself.
            train: Load the training split (``True``) or the test split (``False``).
            variant: Which dataset to read.
            label_type: For CIFAR-100, use the 100 ``"fine"`` or the 20 ``"coarse"`` labels.
                Must be ``"fine"`` for CIFAR-10.

        Raises:
            ValueError: On an unknown ``variant`` / ``label_type``.
            FileNotFoundError: If ``root`` or a required file is missing.
            DataFormatError: If a file is corrupt or its content has the wrong keys, shapes,
                dtypes or label values.
        """
        if variant not in ("cifar10", "cifar100"):
            raise ValueError(f"variant must be 'cifar10' or 'cifar100', got {variant!r}")
        if label_type not in ("fine", "coarse"):
            raise ValueError(f"label_type must be 'fine' or 'coarse', got {label_type!r}")
        if variant == "cifar10" and label_type != "fine":
            raise ValueError("label_type='coarse' is only available for variant='cifar100'")

        self.train = train
        self.variant = variant
        self.label_type = label_type

        if variant == "cifar10":
            self.root = self._resolve_root(
                root, _CIFAR10_DIR, "batches.meta", "CIFAR-10", _CIFAR10_HINT
            )
            self._load_cifar10()
        else:
            self.root = self._resolve_root(root, _CIFAR100_DIR, "meta", "CIFAR-100", _CIFAR100_HINT)
            self._load_cifar100()
        self.num_classes = len(self.classes)

    @staticmethod
    def _resolve_root(
        root: str | os.PathLike[str], folder: str, marker: str, name: str, hint: str
    ) -> Path:
        """Returns the folder holding the batch files (``root/folder`` or ``root`` itself)."""
        root = require_dir(root, f"{name} root directory", hint)
        nested = root / folder
        if nested.is_dir():
            return nested
        if root.name == folder or (root / marker).is_file():
            return root
        raise FileNotFoundError(f"{name} folder not found: {nested} ({hint})")

    def _load_cifar10(self) -> None:
        meta_path = require_file(self.root / "batches.meta", "CIFAR-10 meta file", _CIFAR10_HINT)
        meta = _load_pickle_dict(meta_path, "CIFAR-10 meta file")
        self.classes = _parse_names(
            _get_key(meta, "label_names", meta_path, "CIFAR-10 meta file"),
            "label_names",
            meta_path,
            expected=10,
        )

        split = "train" if self.train else "test"
        names = _CIFAR10_TRAIN if self.train else ("test_batch",)
        what = f"CIFAR-10 {split} batch"
        # Check every file exists before reading any, so a missing batch fails fast.
        paths = [require_file(self.root / n, what, _CIFAR10_HINT) for n in names]
        images, targets = [], []
        for path in paths:
            batch = _load_pickle_dict(path, what)
            data = _parse_data(_get_key(batch, "data", path, what), path, what)
            labels = _parse_labels(
                _get_key(batch, "labels", path, what), "labels", len(data), 10, path, what
            )
            images.append(data)
            targets.append(labels)
        self.images = np.ascontiguousarray(np.concatenate(images, axis=0))
        self.targets = np.concatenate(targets, axis=0).astype(np.int64, copy=False)

    def _load_cifar100(self) -> None:
        meta_path = require_file(self.root / "meta", "CIFAR-100 meta file", _CIFAR100_HINT)
        meta = _load_pickle_dict(meta_path, "CIFAR-100 meta file")
        names_key = f"{self.label_type}_label_names"
        expected = 100 if self.label_type == "fine" else 20
        self.classes = _parse_names(
            _get_key(meta, names_key, meta_path, "CIFAR-100 meta file"),
            names_key,
            meta_path,
            expected=expected,
        )

        split = "train" if self.train else "test"
        what = f"CIFAR-100 {split} file"
        path = require_file(self.root / split, what, _CIFAR100_HINT)
        batch = _load_pickle_dict(path, what)
        data = _parse_data(_get_key(batch, "data", path, what), path, what)
        labels_key = f"{self.label_type}_labels"
        self.targets = _parse_labels(
            _get_key(batch, labels_key, path, what), labels_key, len(data), expected, path, what
        )
        self.images = np.ascontiguousarray(data)

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
        split = "train" if self.train else "test"
        return (
            f"{type(self).__name__}(variant={self.variant!r}, split={split!r}, "
            f"label_type={self.label_type!r}, n={len(self)}, root={str(self.root)!r})"
        )
