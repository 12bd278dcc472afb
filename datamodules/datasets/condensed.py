"""A synthetic training set written by :class:`~contraseg.lightning_modules.DatasetCondensation`.

File format (``torch.save`` of a dict; ``condensed/iter_XXXXX.pt`` under the run's log dir)::

    images:  float32 (N, C, H, W), in the normalised space of the source data
    labels:  int64 (N,)
    mean, std: the normalisation of the source data (lists of C floats)
    classes, num_classes, ipc, iteration, method: provenance

Items are de-normalised back to ``[0, 1]``-units float images (values outside ``[0, 1]`` are
kept: the optimised pixels are not clamped), so a DataModule's own ``Normalize`` with the
same statistics restores the stored tensors exactly (up to float rounding).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch.utils.data import Dataset
from torchvision import tv_tensors

from contraseg.datamodules.datasets.io import DataFormatError, require_file

__all__ = ["CondensedSet", "load_condensed"]

KEYS = ("images", "labels", "mean", "std")


def load_condensed(path: str | Path) -> dict[str, Any]:
    """Read and check a condensed-set file.

    Raises:
        FileNotFoundError: If the file is missing.
        DataFormatError: If it is not a condensed-set dict (names the file and the keys).
    """
    path = require_file(path, "condensed training set")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - torch raises many types for a bad file
        raise DataFormatError(f"could not read condensed set {path}: {err}") from err
    if not isinstance(obj, dict) or any(k not in obj for k in KEYS):
        raise DataFormatError(f"{path} is not a condensed set: expected a dict with keys {KEYS}")
    images, labels = obj["images"], obj["labels"]
    if images.dim() != 4 or labels.shape != (images.shape[0],):
        raise DataFormatError(f"{path}: images must be (N, C, H, W) and labels (N,), got "
                              f"{tuple(images.shape)} and {tuple(labels.shape)}")  # fmt: skip
    if len(obj["mean"]) != images.shape[1] or len(obj["std"]) != images.shape[1]:
        raise DataFormatError(f"{path}: mean/std have {len(obj['mean'])} channels, images "
                              f"{images.shape[1]}")  # fmt: skip
    return obj


class CondensedSet(Dataset):
    """The images of a condensed-set file as ``{"image": float (C, H, W), "label"}``."""

    def __init__(self, path: str | Path) -> None:
        obj = load_condensed(path)
        mean = torch.tensor(obj["mean"], dtype=torch.float32).view(-1, 1, 1)
        std = torch.tensor(obj["std"], dtype=torch.float32).view(-1, 1, 1)
        self.path = Path(path)
        self.images = obj["images"].float() * std + mean
        self.targets = obj["labels"].long().tolist()
        self.num_classes = int(obj.get("num_classes", max(self.targets) + 1))
        self.classes = list(obj.get("classes", [str(c) for c in range(self.num_classes)]))

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, index: int) -> dict[str, Any]:  # noqa: D105
        return {"image": tv_tensors.Image(self.images[index]), "label": int(self.targets[index])}
