"""Pretraining datamodules over image-classification formats: CIFAR, SVHN, image folders."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any, Literal

import torch
from torch.utils.data import Dataset, Subset

from contraseg.datamodules.base import PretrainDataModule, TransformedDataset
from contraseg.datamodules.batch_augment import device_views
from contraseg.datamodules.datasets.cifar import CIFARDataset
from contraseg.datamodules.datasets.digits import DigitsDataset
from contraseg.datamodules.datasets.image_folder import EncodedImages, ImageFolderDataset
from contraseg.datamodules.datasets.io import DataFormatError, require_dir
from contraseg.datamodules.datasets.isic import (
    ISIC2018_CLASSES,
    ISIC2019_CLASSES,
    ISICClassification,
    lesion_split,
)
from contraseg.datamodules.datasets.svhn import SVHNDataset
from contraseg.datamodules.transforms import ViewAugmentation, ViewDraws

CIFAR10_MEAN, CIFAR10_STD = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)
CIFAR100_MEAN, CIFAR100_STD = (0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)
SVHN_MEAN, SVHN_STD = (0.4377, 0.4438, 0.4728), (0.1980, 0.2010, 0.1970)
DIGITS_MEAN, DIGITS_STD = (0.3057,), (0.3240,)  # measured: train split at 32 px, seed 0


def small_image_views(mean: tuple[float, ...], std: tuple[float, ...]) -> ViewAugmentation:
    """SimCLR views for 32x32 images (solo-learn's CIFAR recipe: no blur, strong jitter)."""
    return ViewAugmentation(
        size=32, crop_scale=(0.08, 1.0), brightness=0.8, contrast=0.8, saturation=0.8, hue=0.2,
        blur_prob=0.0, mean=list(mean), std=list(std),
    )  # fmt: skip


class CIFAR10DataModule(PretrainDataModule):
    """CIFAR-10 from the official python pickles (``root/cifar-10-batches-py``).

    Args:
        root: Folder containing ``cifar-10-batches-py`` (or that folder itself).
        augment: View augmentation (default: solo-learn's 32 px recipe with CIFAR-10's
            statistics).
        **kwargs: :class:`~contraseg.datamodules.base.PretrainDataModule` arguments.
    """

    variant: Literal["cifar10", "cifar100"] = "cifar10"

    def __init__(
        self,
        root: str,
        augment: ViewAugmentation | list[ViewAugmentation] = small_image_views(  # noqa: B008
            CIFAR10_MEAN, CIFAR10_STD),
        **kwargs: Any,
    ) -> None:  # fmt: skip
        super().__init__(augment=augment, **kwargs)
        self.root = require_dir(root, f"data.root ({self.variant} data set)")
        self.num_classes = 10 if self.variant == "cifar10" else 100

    def build_datasets(self) -> tuple[Dataset, Dataset]:  # noqa: D102
        return (
            CIFARDataset(self.root, train=True, variant=self.variant),
            CIFARDataset(self.root, train=False, variant=self.variant),
        )


class CIFAR100DataModule(CIFAR10DataModule):
    """CIFAR-100 (fine labels) from the official pickles (``root/cifar-100-python``).

    Args:
        root: Folder containing ``cifar-100-python`` (or that folder itself).
        augment: View augmentation (default: the 32 px recipe with CIFAR-100's statistics).
        **kwargs: :class:`~contraseg.datamodules.base.PretrainDataModule` arguments.
    """

    variant = "cifar100"

    def __init__(
        self,
        root: str,
        augment: ViewAugmentation | list[ViewAugmentation] = small_image_views(  # noqa: B008
            CIFAR100_MEAN, CIFAR100_STD),
        **kwargs: Any,
    ) -> None:  # fmt: skip
        super().__init__(root, augment=augment, **kwargs)


class SVHNDataModule(PretrainDataModule):
    """SVHN from the official ``{train,test,extra}_32x32.mat`` files.

    Args:
        root: Folder with the ``.mat`` files.
        use_extra: Add the 531k ``extra`` images to the training set.
        augment: View augmentation (default: the 32 px recipe with SVHN's statistics).
        **kwargs: :class:`~contraseg.datamodules.base.PretrainDataModule` arguments.
    """

    num_classes = 10

    def __init__(
        self,
        root: str,
        use_extra: bool = False,
        augment: ViewAugmentation | list[ViewAugmentation] = small_image_views(  # noqa: B008
            SVHN_MEAN, SVHN_STD),
        **kwargs: Any,
    ) -> None:  # fmt: skip
        super().__init__(augment=augment, **kwargs)
        self.root = require_dir(root, "data.root (SVHN .mat files)")
        self.use_extra = use_extra

    def build_datasets(self) -> tuple[Dataset, Dataset]:  # noqa: D102
        train: Dataset = SVHNDataset(self.root, "train")
        if self.use_extra:
            train = torch.utils.data.ConcatDataset([train, SVHNDataset(self.root, "extra")])
        return train, SVHNDataset(self.root, "test")


class DigitsDataModule(PretrainDataModule):
    """scikit-learn's digits (bundled, offline), upsampled to ``size`` px, 1 channel.

    Args:
        size: Image side (32: the condensation literature's input size).
        test_fraction: Stratified held-out fraction (the validation / test split).
        split_seed: Seed of the split.
        background: Amplitude of class-irrelevant backgrounds (gratings + blobs; 0: none).
        augment: View augmentation (default: crops of half the image or more, mild jitter,
            no flips: digits are not mirror-symmetric); its ``size`` must equal ``size``.
        **kwargs: :class:`~contraseg.datamodules.base.PretrainDataModule` arguments.
    """

    num_classes = 10

    def __init__(self, size: int = 32, test_fraction: float = 0.3, split_seed: int = 0,
                 background: float = 0.0,
                 augment: ViewAugmentation | list[ViewAugmentation] = ViewAugmentation(  # noqa: B008
                     size=32, crop_scale=(0.5, 1.0), brightness=0.4, contrast=0.4,
                     saturation=0.0, hue=0.0, blur_prob=0.0, grayscale_prob=0.0, hflip_prob=0.0,
                     mean=list(DIGITS_MEAN), std=list(DIGITS_STD)),
                 **kwargs: Any) -> None:  # fmt: skip
        views = augment if isinstance(augment, list) else [augment]
        if any(view.size != size for view in views):
            raise ValueError(f"data.augment size {[view.size for view in views]} must equal "
                             f"data.size ({size}): set both")  # fmt: skip
        super().__init__(augment=augment, **kwargs)
        self.size, self.test_fraction, self.split_seed = size, test_fraction, split_seed
        self.background = background

    def build_datasets(self) -> tuple[Dataset, Dataset]:  # noqa: D102
        args = (self.size, self.test_fraction, self.split_seed, self.background)
        return DigitsDataset("train", *args), DigitsDataset("test", *args)


class ImageFolderDataModule(PretrainDataModule):
    """Your own images: class sub-folders (labeled) or a flat folder (unlabeled).

    Without ``val_root`` a seeded ``val_fraction`` of ``root`` is held out.  Unlabeled
    data disables the probe and kNN evaluators (``num_classes = 0``).

    Args:
        root: Training image folder.
        val_root: Optional validation folder with the same layout.
        val_fraction: Held-out fraction when ``val_root`` is not given.
        labeled: Force labeled/unlabeled; ``None`` detects the layout.
        decode_on_device: Decode the training JPEGs on the training device, batched
            (``torchvision.io.decode_jpeg(..., device=...)``: nvJPEG on a GPU), in
            ``on_after_batch_transfer``: workers only read each file and its size from the
            header and draw the views' parameters; views are cropped on the device
            (:func:`~contraseg.datamodules.batch_augment.device_geometry`).  Every training image
            must be a JPEG.  Validation and the kNN bank decode in the workers as before.
        **kwargs: :class:`~contraseg.datamodules.base.PretrainDataModule` arguments.
    """

    @classmethod
    def tiny_test_args(cls, init_args: dict[str, Any]) -> list[str]:
        """Small views and no separate validation folder (the fixture is one folder)."""
        small = ["--data.init_args.eval_size", "32", "--data.init_args.eval_resize", "36",
                 "--data.init_args.augment", '{"size": 32}']  # fmt: skip
        return [*super().tiny_test_args(init_args), "--data.init_args.val_root", "null",
                "--data.init_args.val_fraction", "0.25", *small]  # fmt: skip

    def __init__(
        self,
        root: str,
        val_root: str | None = None,
        val_fraction: float = 0.05,
        labeled: bool | None = None,
        decode_on_device: bool = False,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.decode_on_device = decode_on_device
        if not 0 < val_fraction < 1:
            raise ValueError(f"data.val_fraction must be in (0, 1), got {val_fraction}")
        self.root = require_dir(root, "data.root (image folder)")
        self.val_root = Path(val_root) if val_root else None
        if self.val_root is not None:
            require_dir(self.val_root, "data.val_root (image folder)")
        self.val_fraction = val_fraction
        self.train_set = ImageFolderDataset(self.root, labeled=labeled)
        self.num_classes = self.train_set.num_classes if self.train_set.labeled else 0

    def build_datasets(self) -> tuple[Dataset, Dataset]:  # noqa: D102
        if self.val_root is not None:
            val = ImageFolderDataset(self.val_root, labeled=self.train_set.labeled)
            if val.labeled and val.classes != self.train_set.classes:
                raise ValueError(
                    f"class folders of {self.val_root} {val.classes} differ from those of "
                    f"{self.root} {self.train_set.classes}"
                )
            return self.train_set, val
        n = len(self.train_set)
        n_val = max(1, int(round(n * self.val_fraction)))
        if n_val >= n:
            raise ValueError(f"{self.root} holds {n} images: too few to hold out a validation set")
        order = torch.randperm(n, generator=torch.Generator().manual_seed(self.seed)).tolist()
        return Subset(self.train_set, sorted(order[n_val:])), Subset(
            self.train_set, sorted(order[:n_val])
        )


    def train_dataset(self) -> Dataset:
        """Multi-view training set; with ``decode_on_device`` undecoded JPEGs (see the class)."""
        if not self.decode_on_device:
            return super().train_dataset()
        if self.attention_mask is not None or self.train_set_file is not None:
            raise ValueError("data.decode_on_device cannot be combined with data.attention_mask "
                             "or data.train_set (they need decoded images in the workers)")
        return TransformedDataset(EncodedImages(self._raw_datasets()[0]),
                                  ViewDraws(self.view_configs()))  # fmt: skip

    def on_after_batch_transfer(self, batch: Any, dataloader_idx: int = 0) -> Any:
        """Undecoded batches: decode on the batch's device, crop the views, then photometrics."""
        if isinstance(batch, dict) and "jpeg" in batch:
            device = batch["label"].device
            images = decode_jpegs(batch.pop("jpeg"), batch.pop("path"), device)
            batch.pop("size")
            images = [im.float().div_(255) for im in images]
            batch["views"] = device_views(images, batch.pop("geometry"), self.view_configs())
        return super().on_after_batch_transfer(batch, dataloader_idx)


def decode_jpegs(data: list[bytes], paths: list[str], device: torch.device) -> list[torch.Tensor]:
    """Decode JPEG files' bytes to RGB uint8 images on ``device`` in one batched call.

    Raises:
        DataFormatError: Naming the first file that does not decode.
    """
    from torchvision.io import ImageReadMode, decode_jpeg

    buffers = [torch.frombuffer(bytearray(d), dtype=torch.uint8) for d in data]
    try:
        return decode_jpeg(buffers, mode=ImageReadMode.RGB, device=device)
    except RuntimeError:
        for buffer, path in zip(buffers, paths):  # find the file to name
            try:
                decode_jpeg(buffer, mode=ImageReadMode.RGB, device=device)
            except RuntimeError as err:
                raise DataFormatError(f"Could not decode JPEG file {path} on {device}: "
                                      f"{err}") from err  # fmt: skip
        raise


class ISICDataModule(PretrainDataModule):
    """ISIC 2018 task 3 (HAM10000, 7 diagnoses) or ISIC 2019 (9) for SupCon / SuperCon.

    The validation split is drawn **by lesion** (``lesion_split``); class counts and the
    imbalance ratio of the training split are logged at setup.

    Args:
        root: Folder holding the year's image folder and CSVs.
        year: 2018 or 2019.
        val_fraction: Share of images held out (whole lesions).
        split_seed: Seed of the lesion split.
        split_by: ``lesion`` (the lesion metadata CSV must exist: an error naming it
            otherwise) or ``image`` (a per-image split, with a warning: images of one lesion
            can land on both sides and inflate validation scores).
        **kwargs: :class:`~contraseg.datamodules.base.PretrainDataModule` arguments.
    """

    log_counts = True

    def __init__(self, root: str, year: int = 2018, val_fraction: float = 0.2,
                 split_seed: int = 0, split_by: Literal["lesion", "image"] = "lesion",
                 **kwargs: Any) -> None:  # fmt: skip
        super().__init__(**kwargs)
        if not 0 < val_fraction < 1:
            raise ValueError(f"data.val_fraction must be in (0, 1), got {val_fraction}")
        if split_by not in ("lesion", "image"):
            raise ValueError(f"data.split_by must be 'lesion' or 'image', got {split_by!r}")
        self.split_by = split_by
        self.root, self.year = root, year
        self.val_fraction, self.split_seed = val_fraction, split_seed
        self.class_names = ISIC2018_CLASSES if year == 2018 else ISIC2019_CLASSES
        self.num_classes = len(self.class_names)

    def build_datasets(self) -> tuple[Dataset, Dataset]:  # noqa: D102
        by_lesion = self.split_by == "lesion"
        full = ISICClassification(self.root, self.year, require_lesions=by_lesion)
        if not by_lesion:
            warnings.warn(f"ISIC {self.year} ({self.root}): split_by image: images of one lesion "
                          "can land in both training and validation (inflated validation "
                          "scores)", stacklevel=2)  # fmt: skip
        lesions = full.lesions if by_lesion else {}
        train, val = lesion_split(full.names, lesions, self.val_fraction, self.split_seed)
        return (ISICClassification(self.root, self.year, train, by_lesion),
                ISICClassification(self.root, self.year, val, by_lesion))  # fmt: skip
