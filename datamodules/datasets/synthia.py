"""Reader for SYNTHIA-RAND-CITYSCAPES (Ros et al., CVPR 2016), the second synthetic source.

Layout of the release::

    root/RGB/0000000.png .. 0009399.png     # 9,400 RGB frames, 1280x760
    root/GT/LABELS/0000000.png ...          # 16-bit multi-channel PNG, class id in channel 0 (R)

**Why torchvision reads the labels.**  The label files are 16-bit-per-channel PNGs.  Pillow
opens a 48-bit RGB PNG as 8-bit ``RGB``, keeping each sample's high byte, so every class id
below 256 reads as 0 (silently wrong); DAFormer uses OpenCV and MaxSquare imageio's
FreeImage plugin (which downloads a library at import, impossible offline).
``torchvision.io.decode_png`` (libpng, already a dependency) returns the ``uint16`` samples
unchanged with ``ImageReadMode.UNCHANGED``: no new package is needed.  A label that decodes
as 8 bits (a converted copy) is refused, naming the file.

SYNTHIA's ids (0 void ... 22 lane-marking) map to the 19 Cityscapes train ids with
:data:`SYNTHIA_TO_TRAIN_ID` (DAFormer's table); terrain, truck and train never occur, which
is why the protocols evaluate 16 (:data:`SYNTHIA_16_CLASSES`) or 13
(:data:`SYNTHIA_13_CLASSES`, also without wall, fence and pole) classes on Cityscapes val.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Final

import numpy as np
import torch
from torch.utils.data import Dataset
from torchvision import tv_tensors

from contraseg.datamodules.datasets.cityscapes import CITYSCAPES, CITYSCAPES_CLASSES
from contraseg.datamodules.datasets.io import (
    DataFormatError,
    check_label_size,
    read_image_rgb,
    require_dir,
    select_names,
)

__all__ = [
    "SYNTHIA",
    "SYNTHIA_13_CLASSES",
    "SYNTHIA_16_CLASSES",
    "SYNTHIA_TO_TRAIN_ID",
    "SynthiaDataset",
    "read_png16",
]

SYNTHIA: Final = dataclasses.replace(CITYSCAPES, name="synthia")
"""SYNTHIA's metadata: labels in Cityscapes's 19 train ids (three never occur)."""

_ID_TO_TRAIN_ID: Final = {3: 0, 4: 1, 2: 2, 21: 3, 5: 4, 7: 5, 15: 6, 9: 7, 6: 8, 16: 9, 1: 10,
                          10: 11, 17: 12, 8: 13, 18: 14, 19: 15, 20: 16, 12: 17, 11: 18}
_MAX_ID: Final = 22  # 22 lane-marking; 0 void, 13 parking, 14 road-work and 22 are ignored


def _lookup() -> np.ndarray:
    lut = np.full(_MAX_ID + 1, CITYSCAPES.ignore_index, dtype=np.int64)
    for sid, train_id in _ID_TO_TRAIN_ID.items():
        lut[sid] = train_id
    lut.setflags(write=False)
    return lut


SYNTHIA_TO_TRAIN_ID: Final[np.ndarray] = _lookup()
"""``(23,)`` lookup SYNTHIA class id -> Cityscapes train id (255: void, parking, road-work,
lane-marking)."""

SYNTHIA_16_CLASSES: Final[tuple[str, ...]] = tuple(
    c for c in CITYSCAPES_CLASSES if c not in ("terrain", "truck", "train"))
"""The 16 classes of the SYNTHIA->Cityscapes protocol (MaxSquare's ``synthia_Dataset``)."""

SYNTHIA_13_CLASSES: Final[tuple[str, ...]] = tuple(
    c for c in SYNTHIA_16_CLASSES if c not in ("wall", "fence", "pole"))
"""The 13 classes of the other protocol (tllib's ``evaluate_classes``)."""

_HINT: Final = (
    "expected the SYNTHIA-RAND-CITYSCAPES layout root/RGB/NNNNNNN.png and "
    "root/GT/LABELS/NNNNNNN.png (16-bit PNG, class id in the first channel)"
)


def read_png16(path: str | os.PathLike[str], what: str) -> np.ndarray:
    """A 16-bit PNG's samples, unchanged, as an ``(H, W, C)`` ``uint16`` array (libpng).

    Raises:
        DataFormatError: If the file is not a decodable PNG or not 16 bits per sample.
    """
    from torchvision.io import ImageReadMode, decode_png, read_file

    try:
        decoded = decode_png(read_file(str(path)), ImageReadMode.UNCHANGED)
    except (RuntimeError, ValueError) as err:
        raise DataFormatError(f"Could not decode {what} {path}: expected a 16-bit PNG, got "
                              f"{type(err).__name__}: {err}") from err
    if decoded.dtype != torch.uint16:
        raise DataFormatError(
            f"{what} {path} has {str(decoded.dtype).removeprefix('torch.')} samples: expected "
            "a 16-bit PNG (SYNTHIA's GT/LABELS files; an 8-bit copy has lost the class ids)"
        )
    return decoded.permute(1, 2, 0).numpy()


class SynthiaDataset(Dataset[dict[str, Any]]):
    """SYNTHIA-RAND-CITYSCAPES frames with labels mapped to the 19 Cityscapes train ids.

    Args:
        root: Folder with ``RGB/`` and ``GT/LABELS/``.
        names: Optional subset of stems.

    Raises:
        FileNotFoundError: A missing folder, an image without label (named) or no frame.
    """

    def __init__(self, root: str | os.PathLike[str], names: Sequence[str] | None = None) -> None:
        self.root = require_dir(root, "SYNTHIA root directory", _HINT)
        image_dir = require_dir(self.root / "RGB", "SYNTHIA image folder", _HINT)
        label_dir = require_dir(self.root / "GT" / "LABELS", "SYNTHIA label folder", _HINT)
        stems = sorted(p.stem for p in image_dir.glob("*.png"))
        if not stems:
            raise FileNotFoundError(f"No SYNTHIA frame (*.png) under {image_dir} ({_HINT})")
        for stem in stems:
            if not (label_dir / f"{stem}.png").is_file():
                raise FileNotFoundError(f"SYNTHIA image {image_dir / (stem + '.png')} has no "
                                        f"label {label_dir / (stem + '.png')} ({_HINT})")
        self.names = select_names(stems, names, "SYNTHIA", f"the frames under {image_dir}")
        self._files = [(image_dir / f"{n}.png", label_dir / f"{n}.png") for n in self.names]
        self.info = SYNTHIA
        self.classes, self.num_classes = list(SYNTHIA.classes), SYNTHIA.num_classes
        self.ignore_index, self.palette = SYNTHIA.ignore_index, list(SYNTHIA.palette)

    def __len__(self) -> int:
        return len(self._files)

    def __getitem__(self, index: int) -> dict[str, Any]:
        """``{"image": uint8 Image (3,H,W), "mask": Mask (H,W) int64 train ids, "name"}``.

        Raises:
            DataFormatError: An undecodable file, a label that is not 16-bit, a class id above
                22, or image and label sizes that differ (each names the file).
        """
        image_path, label_path = self._files[index]
        image = read_image_rgb(image_path)
        ids = read_png16(label_path, "SYNTHIA label file")[..., 0].astype(np.int64)
        if ids.max(initial=0) > _MAX_ID:
            bad = np.unique(ids[ids > _MAX_ID])[:5].tolist()
            raise DataFormatError(f"SYNTHIA label file {label_path} holds class ids {bad} in its "
                                  f"first channel, expected 0..{_MAX_ID}")  # fmt: skip
        check_label_size(image, ids.shape, image_path, label_path, "SYNTHIA")
        return {"image": tv_tensors.Image(image),
                "mask": tv_tensors.Mask(torch.from_numpy(SYNTHIA_TO_TRAIN_ID[ids])),
                "name": self.names[index]}  # fmt: skip

    def __repr__(self) -> str:
        return f"SynthiaDataset(n={len(self)}, root={str(Path(self.root))!r})"
