"""What a data set *is*, defined once per data set: :class:`DatasetInfo`.

Readers (``datamodules/datasets/<name>.py``) define their ``INFO``; LightningDataModules take
class names, palette, ignore index, normalisation statistics, default crop size and band
count from it, and so do the colour helpers of the callbacks (``palette_lut``).
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["IMAGENET_MEAN", "IMAGENET_STD", "DatasetInfo"]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class DatasetInfo:
    """Metadata of one data set.

    Attributes:
        name: Short name (split files are named after it).
        classes: Class names, in label order.
        palette: RGB colour per class (label images and plots).
        ignore_index: Label value that is no class.
        mean: Per-band normalisation mean, in the units of the dtype-scaled image
            (``[0, 1]`` for integer images, physical units for signed ones; see
            :class:`~contraseg.datamodules.transforms.ScaleByDtype`).
        std: Per-band normalisation std.
        crop_size: Default training crop size.
    """

    name: str
    classes: tuple[str, ...]
    palette: tuple[tuple[int, int, int], ...] = ()
    ignore_index: int = 255
    mean: tuple[float, ...] = IMAGENET_MEAN
    std: tuple[float, ...] = IMAGENET_STD
    crop_size: int = 512

    def __post_init__(self) -> None:
        if len(self.mean) != len(self.std):
            raise ValueError(f"{self.name}: mean and std differ in length")
        if self.palette and len(self.palette) != len(self.classes):
            raise ValueError(f"{self.name}: {len(self.palette)} colours for "
                             f"{len(self.classes)} classes")  # fmt: skip

    @property
    def num_classes(self) -> int:
        """Number of classes."""
        return len(self.classes)

    @property
    def bands(self) -> int:
        """Number of image bands (length of ``mean``)."""
        return len(self.mean)
