"""Base LightningDataModule for pretraining: multi-view training, evaluation and kNN bank.

Subclasses only implement :meth:`PretrainDataModule.build_datasets`, returning raw
datasets whose items are ``{"image": uint8 tv_tensors.Image, "label": int, ...}``
(``label = -1`` when unknown).  This class owns augmentation, the kNN bank (a
fixed, seeded subset of the training set under the evaluation transform) and the
dataloaders.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import lightning as L
import torch
from lightning.pytorch.utilities import rank_zero_info
from torch.utils.data import DataLoader, Dataset, Sampler, Subset
from tqdm.auto import tqdm

from contraseg.datamodules.attention import ATTENTION_SOURCES, AttentionMaskDataset
from contraseg.datamodules.batch_augment import DeviceAugmentHooks
from contraseg.datamodules.sampling import eval_loader, train_loader
from contraseg.datamodules.transforms import (
    ImageMaskTransform,
    MultiViewTransform,
    ViewAugmentation,
    build_eval_transform,
)
from contraseg.seeding import SampleKey, seeded_call


class TransformedDataset(Dataset):
    """Apply a sample-level transform to every item of a dataset.

    Indexed by a :class:`~contraseg.seeding.SampleKey` (the training sampler's), the
    raw data set gets the key's epoch (``set_epoch``, if it has one) and the item is read
    and transformed under torch's RNG seeded by the key: augmentations are a function of
    ``(seed, epoch, index)`` whatever the worker count.
    """

    def __init__(self, dataset: Dataset, transform: Any) -> None:
        self.dataset, self.transform = dataset, transform

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, index: int | SampleKey) -> dict[str, Any]:  # noqa: D105
        if isinstance(index, SampleKey):
            set_epoch = getattr(self.dataset, "set_epoch", None)
            if set_epoch is not None:
                set_epoch(index.epoch)
            return seeded_call(index.seed, self._item, index.index)
        return self._item(index)

    def _item(self, index: int) -> dict[str, Any]:
        item = self.transform(self.dataset[index])
        if isinstance(item, dict):  # the dataset index (queues and prototypes key on it)
            item.setdefault("sample_index", index)
        return item


def dataset_labels(dataset: Dataset) -> torch.Tensor:
    """Integer image labels of a raw data set: its ``labels`` / ``targets``, else each item's.

    Reading items (rendered synthetic scenes, image folders without a label list) shows a
    progress bar.
    """
    for attr in ("labels", "targets"):
        values = getattr(dataset, attr, None)
        if values is not None and not callable(values):
            return torch.as_tensor(list(values) if isinstance(values, list) else values).long()
    n = len(dataset)  # type: ignore[arg-type]
    items = tqdm(range(n), desc="reading labels", disable=n < 2000, leave=False)
    return torch.tensor([int(dataset[i]["label"]) for i in items], dtype=torch.long)


class PretrainDataModule(DeviceAugmentHooks, L.LightningDataModule):
    """Multi-view pretraining data with evaluation splits.

    Training views are cropped and flipped in the workers (in the images' dtype) and get
    their photometric augmentation and normalisation batched on the device
    (:mod:`contraseg.datamodules.batch_augment`, ``on_after_batch_transfer``).

    Args:
        batch_size: Images per step and process (each yields ``n_views`` views).
        num_workers: DataLoader workers.
        augment: View augmentation (SimCLR recipe), or one per view for asymmetric
            recipes (e.g. GLCNet's plain first view and strongly augmented second view);
            a list sets the number of views.
        n_views: Views per image.
        eval_size: Evaluation crop size (``null``: ``augment.size``).
        eval_resize: Shorter-side resize before the evaluation crop (``null``: ``eval_size``).
        knn_bank_size: Training images in the kNN bank (``None``: all, 0: no kNN).
        index_maps: Also produce pixel-index maps for dense methods.
        seed: Seed of the kNN bank subset.
        attention_mask: Compute a foreground ``mask`` for every training image (``exg``:
            excess green + Otsu, :mod:`contraseg.datamodules.attention`), carried through the views
            as ``masks`` (CLAWS's hard attention); ``None``: items keep their own masks.
        class_balanced: Draw training images with probability ``1 / n_class`` (each epoch
            ``len(train)`` draws with replacement, seeded): the imbalanced-data sampler.
        train_set: A condensed-set file (``DatasetCondensation``'s ``condensed/*.pt``) that
            replaces the training split; the held-out split stays the data set's own.
    """

    num_classes: int = 0

    def __init__(
        self,
        batch_size: int = 256,
        num_workers: int = 4,
        augment: ViewAugmentation | list[ViewAugmentation] = ViewAugmentation(),  # noqa: B008
        n_views: int = 2,
        eval_size: int | None = None,
        eval_resize: int | None = None,
        knn_bank_size: int | None = None,
        index_maps: bool = False,
        seed: int = 0,
        attention_mask: str | None = None,
        class_balanced: bool = False,
        train_set: str | None = None,
    ) -> None:
        super().__init__()
        self.train_set_file = train_set
        self.class_balanced = class_balanced
        if attention_mask is not None and attention_mask not in ATTENTION_SOURCES:
            raise ValueError(f"data.attention_mask must be one of {ATTENTION_SOURCES} or null, "
                             f"got {attention_mask!r}")  # fmt: skip
        self.attention_mask = attention_mask
        if batch_size < 1:
            raise ValueError(f"data.batch_size must be >= 1, got {batch_size}")
        if n_views < 1:
            raise ValueError(f"data.n_views must be >= 1, got {n_views}")
        self.batch_size, self.num_workers = batch_size, num_workers
        if isinstance(augment, list):
            if not augment:
                raise ValueError("data.augment: an empty list of views")
            self.view_augments: list[ViewAugmentation] | None = list(augment)
            n_views = len(augment)
            augment = augment[0]
        else:
            self.view_augments = None
        self.augment = replace(augment)  # the signature's default instance stays untouched
        self.n_views, self.index_maps, self.seed = n_views, index_maps, seed
        self.eval_size = eval_size or self.augment.size
        self.eval_resize = eval_resize
        self.knn_bank_size = knn_bank_size
        self._raw: tuple[Dataset, Dataset] | None = None

    @classmethod
    def tiny_test_args(cls, init_args: dict[str, Any]) -> list[str]:
        """CLI overrides that make a config with these ``data.init_args`` run in seconds."""
        return ["--data.init_args.batch_size", "4"]

    @property
    def probe_classes(self) -> int:
        """Image-level classes of the online evaluators (``num_classes``; 0: unlabeled)."""
        return self.num_classes

    @property
    def in_channels(self) -> int:
        """Input channels (length of the normalisation mean)."""
        return len(self.augment.mean)

    def build_datasets(self) -> tuple[Dataset, Dataset]:
        """Return the raw ``(train, val)`` datasets (implemented by subclasses)."""
        raise NotImplementedError

    def _raw_datasets(self) -> tuple[Dataset, Dataset]:
        if self._raw is None:
            train, val = self.build_datasets()
            if self.train_set_file is not None:
                train = self._condensed(train)
            self._raw = (train, val)
        return self._raw

    def _condensed(self, original: Dataset) -> Dataset:
        """``data.train_set`` as the training split, checked against the data set."""
        from contraseg.datamodules.datasets.condensed import CondensedSet
        from contraseg.datamodules.datasets.io import DataFormatError

        path = self.train_set_file
        condensed = CondensedSet(path)  # type: ignore[arg-type]
        channels = condensed.images.shape[1]
        if self.num_classes and condensed.num_classes != self.num_classes:
            name = type(self).__name__
            raise DataFormatError(f"data.train_set {path}: {condensed.num_classes} "
                                  f"classes, {name} has {self.num_classes}")  # fmt: skip
        if channels != self.in_channels:
            raise DataFormatError(f"data.train_set {path}: {channels} channels, "
                                  f"{type(self).__name__} has {self.in_channels}")  # fmt: skip
        return condensed

    def setup(self, stage: str | None = None) -> None:
        """Build the raw splits; log class counts and the imbalance ratio of labelled data."""
        self._raw_datasets()
        if self.num_classes > 1 and (self.class_balanced or getattr(self, "log_counts", False)):
            counts = self.class_counts()
            seen = counts[counts > 0]
            ratio = float(seen.max() / seen.min()) if len(seen) else float("nan")
            rank_zero_info(f"{type(self).__name__} train class counts {counts.tolist()}, "
                           f"imbalance ratio {ratio:.1f}")  # fmt: skip

    def train_labels(self) -> torch.Tensor:
        """Image labels of the raw training split (``labels`` / ``targets``, else read)."""
        if getattr(self, "_train_labels", None) is None:
            self._train_labels = dataset_labels(self._raw_datasets()[0])
        return self._train_labels

    def class_counts(self) -> torch.Tensor:
        """Training images per class (labels ``< 0`` are unlabelled and not counted)."""
        labels = self.train_labels()
        return torch.bincount(labels[labels >= 0], minlength=self.num_classes)

    @property
    def eval_transform(self) -> ImageMaskTransform:
        """Deterministic evaluation transform."""
        return ImageMaskTransform(
            build_eval_transform(
                self.eval_size, self.augment.mean, self.augment.std, self.eval_resize
            )
        )

    def view_configs(self) -> list[ViewAugmentation]:
        """Every training view's configuration (``augment`` repeated, or one per view)."""
        return list(self.view_augments or [self.augment] * self.n_views)

    def train_dataset(self) -> Dataset:
        """Training set with multi-view augmentation (the per-sample half)."""
        views = MultiViewTransform(self.view_configs(), index_maps=self.index_maps)
        raw = self._raw_datasets()[0]
        if self.attention_mask is not None:
            raw = AttentionMaskDataset(raw, self.attention_mask)
        return TransformedDataset(raw, views)

    def eval_dataset(self, split: str = "val") -> Dataset:
        """Evaluation-transformed ``"train"`` or ``"val"`` split (used by callbacks)."""
        train, val = self._raw_datasets()
        if split not in ("train", "val"):
            raise ValueError(f"split must be 'train' or 'val', got {split!r}")
        raw = train if split == "train" else val
        if self.attention_mask is not None:
            raw = AttentionMaskDataset(raw, self.attention_mask)
        return TransformedDataset(raw, self.eval_transform)

    def knn_bank(self) -> Dataset | None:
        """Seeded subset of the training set under the eval transform, or ``None``."""
        if self.knn_bank_size == 0 or self.probe_classes < 2:
            return None
        bank = self.eval_dataset("train")
        n = len(bank)  # type: ignore[arg-type]
        if self.knn_bank_size is not None and self.knn_bank_size < n:
            g = torch.Generator().manual_seed(self.seed)
            idx = torch.randperm(n, generator=g)[: self.knn_bank_size].sort().values.tolist()
            bank = Subset(bank, idx)
        return bank

    def _loader(self, dataset: Dataset) -> DataLoader:
        return eval_loader(dataset, self.batch_size, self.num_workers)

    def train_dataloader(self) -> DataLoader:
        """Seeded order and augmentations (:mod:`contraseg.seeding`), resumable exactly."""
        weights = None
        if self.class_balanced:
            labels, counts = self.train_labels(), self.class_counts().float()
            if (labels < 0).any():
                raise ValueError("data.class_balanced needs a label for every training image")
            weights = (1.0 / counts.clamp(min=1))[labels]
        return train_loader(self.train_dataset(), self.batch_size, self.num_workers,
                            weights=weights, collate_fn=self.train_collate())  # fmt: skip

    def val_dataloader(self) -> DataLoader:
        """The held-out split (probe and kNN queries; the bank is :meth:`knn_bank_loader`)."""
        return self._loader(self.eval_dataset("val"))

    def knn_bank_loader(self, sampler: Sampler | None = None) -> DataLoader | None:
        """Loader of :meth:`knn_bank` (``None`` without a bank), read by the kNN evaluator.

        The bank is not a validation dataloader, so every metric has one place in
        Lightning's result tables.  Workers persist as those of the validation loader.

        Args:
            sampler: E.g. a ``DistributedSampler`` (one shard per rank).
        """
        bank = self.knn_bank()
        if bank is None:
            return None
        return eval_loader(bank, self.batch_size, self.num_workers, sampler)

    def test_dataloader(self) -> DataLoader:
        """Held-out split (the ``val`` split of these data sets)."""
        return self.val_dataloader()

    def predict_dataloader(self) -> DataLoader:  # noqa: D102
        return self._loader(self.eval_dataset("val"))
