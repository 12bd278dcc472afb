"""Base LightningDataModule for semantic segmentation with label fractions.

Subclasses implement :meth:`SegmentationDataModule.train_names` (all labeled
training image names) and :meth:`SegmentationDataModule.build` (a raw dataset of a
split, optionally restricted to names).  Raw items are
``{"image": uint8 tv_tensors.Image, "mask": tv_tensors.Mask, "name": str}``.

This class owns:

* the labeled subset (``label_fraction`` chosen by seed and stored in a split
  file under ``split_dir``, or an explicit ``split_file`` such as GLCNet's
  ``trainR1``), see :mod:`contraseg.datamodules.label_fractions`;
* joint image/mask augmentation for training (random rescale, crop padded with the
  ignore index, flip) and normalisation for evaluation;
* an *unlabeled view* of the whole training split with multi-view augmentation
  (masks and pixel-index maps carried through) for pretraining.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar, Literal

import lightning as L
from torch.utils.data import DataLoader, Dataset
from torchvision import tv_tensors
from torchvision.transforms import v2

from contraseg.datamodules.base import TransformedDataset
from contraseg.datamodules.batch_augment import DeviceAugmentHooks
from contraseg.datamodules.datasets.image_files import ImageFiles
from contraseg.datamodules.datasets.info import DatasetInfo
from contraseg.datamodules.datasets.io import DataFormatError
from contraseg.datamodules.label_fractions import check_fraction, labeled_subset, read_split_file
from contraseg.datamodules.sampling import eval_loader, train_loader
from contraseg.datamodules.transforms import (
    ImageMaskTransform,
    MultiViewTransform,
    ScaleByDtype,
    ViewAugmentation,
    no_photometric,
)

IGNORE_INDEX = 255


def joint_train_transform(
    crop_size: int,
    resize_range: tuple[int, int] | None,
    hflip_prob: float,
) -> v2.Compose:
    """Random shorter-side resize, crop (padding masks with the ignore index), flip.

    The per-sample half of the fine-tuning pipeline, in the image's dtype; the scaling and
    normalisation run on the device
    (:class:`~contraseg.datamodules.batch_augment.BatchPhotometric`).

    Args:
        crop_size: Square crop size.
        resize_range: Range of the shorter side before cropping, or ``None`` for none.
        hflip_prob: Horizontal flip probability.

    Returns:
        A transform over ``{"image": Image, "mask": Mask}`` dicts.
    """
    steps: list[Any] = []
    if resize_range is not None:
        lo, hi = resize_range
        steps.append(v2.RandomResize(int(lo), int(hi) + 1))
    steps += [
        v2.RandomCrop(
            crop_size, pad_if_needed=True, fill={tv_tensors.Image: 0, tv_tensors.Mask: IGNORE_INDEX}
        ),
        v2.RandomHorizontalFlip(hflip_prob),
    ]
    return v2.Compose(steps)


def eval_transform(mean: Sequence[float], std: Sequence[float]) -> v2.Compose:
    """Full-image evaluation transform: only dtype conversion and normalisation."""
    return v2.Compose(
        [
            ScaleByDtype(),
            v2.Normalize(list(mean), list(std)),
        ]
    )


class _NoImageLabel:
    """Wrap a sample transform and add ``label = -1`` (no image-level label)."""

    def __init__(self, transform: ImageMaskTransform) -> None:
        self.transform = transform

    def __call__(self, sample: dict[str, Any]) -> dict[str, Any]:
        return {**self.transform(sample), "label": -1}


class SegmentationDataModule(DeviceAugmentHooks, L.LightningDataModule):
    """Labeled (fraction) training, full validation and an unlabeled multi-view split.

    Training samples are cropped and flipped in the workers in the images' dtype; their
    photometric ops (pretraining views) and normalisation run batched on the device
    (:mod:`contraseg.datamodules.batch_augment`, ``on_after_batch_transfer``).

    Args:
        batch_size: Images per step and process.
        num_workers: DataLoader workers.
        crop_size: Training crop size (``null``: the data set's ``DatasetInfo.crop_size``;
            concrete data modules show their value).
        resize_range: Shorter-side range of the random rescale (``None``: no rescale).
        hflip_prob: Horizontal flip probability.
        mean: Normalisation mean, one value per input channel (``null``: the data set's
            ``DatasetInfo.mean``, ImageNet's without one).
        std: Normalisation std (``null``: as ``mean``).
        label_fraction: Fraction (``0.01`` = 1%) or number of labeled training
            images; ``None`` uses all.
        split_file: Explicit list of labeled training names (overrides ``label_fraction``).
        split_dir: Where generated split files are written and read.
        seed: Seed of the labeled subset.
        val_batch_size: Evaluation batch size (``null``: ``batch_size``).
        pretrain_views: Switch to *pretraining* mode: training batches are unlabeled
            multi-view samples of the whole training split (``views``, ``masks``,
            ``index_maps``) and validation batches carry ``label = -1``.
            A list gives one configuration per view (asymmetric recipes).
        n_views: Views per image in pretraining mode (with a single configuration).
        pretrain_subset: Images of the pretraining mode: ``"all"`` (the whole
            training split, unlabeled methods) or ``"labeled"`` (only the labeled
            subset, with its masks: Zhao et al., Hu et al. stage 2, Lee et al.).
        predict_dir: A folder of your own unlabeled images (any size, sub-folders kept) that
            ``predict`` runs on instead of the validation split
            (:class:`~contraseg.datamodules.datasets.image_files.ImageFiles`).
    """

    info: ClassVar[DatasetInfo | None] = None  # a subclass's data set: metadata defined once
    name = "dataset"
    num_classes = 0
    classes: Sequence[str] = ()
    palette: Sequence[tuple[int, int, int]] = ()
    ignore_index = IGNORE_INDEX
    default_crop_size = 512

    def __init_subclass__(cls, **kwargs: Any) -> None:
        """Take name, classes, palette, ignore index and crop size from the class's ``info``."""
        super().__init_subclass__(**kwargs)
        info = cls.__dict__.get("info")
        if info is not None:
            cls.name, cls.num_classes, cls.classes = info.name, info.num_classes, info.classes
            cls.palette, cls.ignore_index = info.palette, info.ignore_index
            cls.default_crop_size = info.crop_size

    def __init__(
        self,
        batch_size: int = 8,
        num_workers: int = 4,
        crop_size: int | None = None,
        resize_range: tuple[int, int] | None = None,
        hflip_prob: float = 0.5,
        mean: Sequence[float] | None = None,
        std: Sequence[float] | None = None,
        label_fraction: float | int | None = None,
        split_file: str | None = None,
        split_dir: str = "splits",
        seed: int = 0,
        val_batch_size: int | None = None,
        pretrain_views: ViewAugmentation | list[ViewAugmentation] | None = None,
        n_views: int = 2,
        pretrain_subset: Literal["all", "labeled"] = "all",
        predict_dir: str | None = None,
    ) -> None:
        super().__init__()
        crop_size = self.default_crop_size if crop_size is None else crop_size
        stats = self.info or DatasetInfo("default", ())
        mean = list(stats.mean) if mean is None else mean  # ImageNet's without info
        std = list(stats.std) if std is None else std
        if batch_size < 1 or crop_size < 1:
            raise ValueError("data.batch_size and data.crop_size must be >= 1")
        if len(mean) != len(std):
            raise ValueError(f"data.mean {list(mean)} and data.std {list(std)} differ in length")
        self.batch_size, self.num_workers = batch_size, num_workers
        self.val_batch_size = val_batch_size or batch_size
        self.crop_size, self.resize_range, self.hflip_prob = crop_size, resize_range, hflip_prob
        self.mean, self.std = list(mean), list(std)
        if label_fraction is not None:
            label_fraction = check_fraction(label_fraction)
        self.label_fraction, self.split_file = label_fraction, split_file
        self.split_dir, self.seed = Path(split_dir), seed
        if pretrain_subset not in ("all", "labeled"):
            raise ValueError(
                f"data.pretrain_subset must be 'all' or 'labeled', got {pretrain_subset!r}"
            )
        self.pretrain_views, self.n_views = pretrain_views, n_views
        self.pretrain_subset = pretrain_subset
        self.predict_dir = predict_dir

    # tiny smoke runs: crop (and view) size (None: keep the config's), batch, labeled images
    tiny_crop: ClassVar[int | None] = 64
    tiny_batch_size: ClassVar[int] = 2
    tiny_label_fraction: ClassVar[int] = 4

    @classmethod
    def tiny_test_args(cls, init_args: dict[str, Any]) -> list[str]:
        """CLI overrides that make a config with these ``data.init_args`` run in seconds.

        Used by the config smoke tests (the data root comes from the test fixtures); a new
        data module overrides this instead of adding a branch to the tests.
        """
        args = ["--data.init_args.batch_size", str(cls.tiny_batch_size),
                "--data.init_args.label_fraction", str(cls.tiny_label_fraction)]  # fmt: skip
        if cls.tiny_crop is not None:
            args += ["--data.init_args.crop_size", str(cls.tiny_crop),
                     "--data.init_args.resize_range", "null"]  # fmt: skip
            views = init_args.get("pretrain_views")
            if views is not None:
                small = ({**views, "size": cls.tiny_crop} if isinstance(views, dict)
                         else [{**v, "size": cls.tiny_crop} for v in views])  # fmt: skip
                args += ["--data.init_args.pretrain_views", json.dumps(small)]
        if "val_batch_size" in init_args:
            args += ["--data.init_args.val_batch_size", "1"]
        return args

    # ------------------------------------------------------------------ subclasses
    def train_names(self) -> list[str]:
        """Names of all labeled training images."""
        raise NotImplementedError

    def build(self, split: str, names: Sequence[str] | None = None) -> Dataset:
        """Raw dataset of ``split`` (``"train"`` or ``"val"``), restricted to ``names``."""
        raise NotImplementedError

    # ------------------------------------------------------------------ shared
    @property
    def probe_classes(self) -> int:
        """No image-level classes: segmentation data disables the online probe and kNN."""
        return 0

    @property
    def in_channels(self) -> int:
        """Number of input channels (length of ``mean``)."""
        return len(self.mean)

    def labeled_names(self) -> list[str]:
        """The labeled training subset (split file, seeded fraction, or all)."""
        names = self.train_names()
        if self.split_file is not None:
            return read_split_file(self.split_file, known=names)
        if self.label_fraction is None:
            return names
        tag = (
            f"{self.label_fraction * 100:g}pct"
            if isinstance(self.label_fraction, float) and self.label_fraction <= 1
            else f"{int(self.label_fraction)}img"
        )
        path = self.split_dir / f"{self.name}_{tag}_seed{self.seed}.txt"
        return labeled_subset(names, self.label_fraction, self.seed, path)

    # data sets whose splits come from official lists or folders check train/val leakage
    check_splits: ClassVar[bool] = False

    def setup(self, stage: str | None = None) -> None:
        """Check that no validation image is also a training image (``check_splits``)."""
        if stage in (None, "fit") and self.check_splits:
            self.check_leakage()

    def check_leakage(self) -> None:
        """Error when a name is both in the training list and the validation split.

        Official lists are checked as given (a VOC ``train.txt`` holding a ``val`` id, a
        Potsdam list naming a validation crop); the readers' ``names`` are compared.

        Raises:
            DataFormatError: Naming the overlap and the data set's root.
        """
        val = self.build("val")
        val_names = set(getattr(val, "names", None) or getattr(val, "tile_ids", None) or ())
        overlap = sorted(set(self.train_names()) & val_names)
        if overlap:
            where = getattr(self, "root", self.name)
            raise DataFormatError(
                f"{self.name} under {where}: {len(overlap)} validation images are also in the "
                f"training split (e.g. {overlap[:3]}): the training list leaks validation data"
            )

    def view_configs(self) -> list[ViewAugmentation]:
        """The pretraining views' configurations, or fine-tuning's (normalisation only)."""
        views = self.pretrain_views
        if views is None:
            return [self.train_photometric()]
        return list(views) if isinstance(views, list) else [views] * self.n_views

    def train_photometric(self) -> ViewAugmentation:
        """Photometric configuration of fine-tuning samples: none, only the normalisation."""
        return no_photometric(self.crop_size, self.mean, self.std)

    def train_transform(self) -> ImageMaskTransform:
        """The per-sample half of fine-tuning: joint resize, crop, flip; parameters drawn."""
        transform = joint_train_transform(self.crop_size, self.resize_range, self.hflip_prob)
        return ImageMaskTransform(transform, self.train_photometric())

    def train_dataset(self) -> Dataset:
        """Labeled training subset with joint augmentation."""
        names = self.labeled_names()
        if not names:
            raise ValueError(f"{self.name}: the labeled training subset is empty (no image found)")
        return TransformedDataset(self.build("train", names), self.train_transform())

    def eval_dataset(self, split: str = "val") -> Dataset:
        """Normalised ``train`` or ``val`` images with ``label = -1`` (for callbacks)."""
        if split not in ("train", "val"):
            raise ValueError(f"split must be 'train' or 'val', got {split!r}")
        transform = _NoImageLabel(self.normalise())
        return TransformedDataset(self.build(split), transform)

    def normalise(self) -> ImageMaskTransform:
        """Evaluation's per-sample transform: dtype scaling and the data set's mean / std."""
        return ImageMaskTransform(eval_transform(self.mean, self.std))

    def val_dataset(self) -> Dataset:
        """Full validation split, normalised only."""
        if self.pretrain_views is not None:
            return self.eval_dataset("val")
        return TransformedDataset(
            self.build("val"), self.normalise()
        )

    def unlabeled_dataset(
        self, views: ViewAugmentation | list[ViewAugmentation], n_views: int = 2
    ) -> Dataset:
        """Training split (or its labeled subset) as multi-view samples with masks and index maps.

        Args:
            views: Augmentation of every view, or one per view.
            n_views: Number of views with a single configuration.

        Returns:
            Dataset of ``views`` / ``masks`` / ``index_maps`` / ``source_size`` samples
            over the whole training split, or over :meth:`labeled_names` when
            ``pretrain_subset="labeled"``.
        """
        names = self.labeled_names() if self.pretrain_subset == "labeled" else None
        if names is not None and not names:
            raise ValueError(f"{self.name}: the labeled training subset is empty (no image found)")
        return TransformedDataset(
            self.build("train", names), MultiViewTransform(views, n_views, True)
        )

    def _loader(self, dataset: Dataset) -> DataLoader:
        return eval_loader(dataset, self.val_batch_size, self.num_workers)

    def train_dataloader(self) -> DataLoader:
        """Seeded order and augmentations (:mod:`contraseg.seeding`), resumable exactly."""
        dataset = (self.unlabeled_dataset(self.pretrain_views, self.n_views)
                   if self.pretrain_views is not None else self.train_dataset())  # fmt: skip
        size = len(dataset)  # type: ignore[arg-type]
        if size < 2:
            subset = (f"split_file {self.split_file}" if self.split_file
                      else f"label_fraction {self.label_fraction}")  # fmt: skip
            raise ValueError(
                f"{self.name}: the training set holds {size} image ({subset}); "
                "BatchNorm cannot train on batches of one image (its per-channel statistics "
                "need two or more): raise data.init_args.label_fraction (a count such as 2 is "
                "allowed) or list more names in the split file"
            )
        return train_loader(dataset, self.batch_size, self.num_workers,
                            drop_last=len(dataset) > self.batch_size,  # type: ignore[arg-type]
                            collate_fn=self.train_collate())  # fmt: skip

    def val_dataloader(self) -> DataLoader:  # noqa: D102
        return self._loader(self.val_dataset())

    def test_dataloader(self) -> DataLoader:  # noqa: D102
        return self.val_dataloader()

    def predict_dataloader(self) -> DataLoader:
        """``predict_dir``'s images (unlabeled, any size, one per batch), else the val split.

        The images are normalised with the data set's ``mean`` / ``std``, nothing else: the
        model pads each one to its network's stride or slides its window over it.
        """
        if self.predict_dir is None:
            return self.val_dataloader()
        return eval_loader(TransformedDataset(ImageFiles(self.predict_dir), self.normalise()), 1,
                           self.num_workers)  # fmt: skip
