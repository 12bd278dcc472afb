"""Per-class real batches for dataset condensation, from any classification DataModule.

:class:`CondensationDataModule` wraps a labelled
:class:`~contraseg.datamodules.base.PretrainDataModule` (CIFAR-10/100, SVHN, image folders, digits,
textured scenes, ...): at setup it decodes the training split once under the source's evaluation
transform (normalised, no augmentation, as the official code's ``images_all``) into a
:class:`ClassBank`, from which the method draws ``n`` images of every class at once
(:meth:`ClassBank.per_class`, vectorised); the source's held-out split is the test set of the
evaluation protocol.  The training loader has one item per epoch, because one epoch is one
outer iteration of condensation; the
draws themselves come from torch's RNG, which the task reseeds per step (exact resume).
"""

from __future__ import annotations

from typing import Any

import lightning as L
import torch
from lightning.pytorch.utilities import rank_zero_warn
from torch import Tensor
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from contraseg.datamodules.base import PretrainDataModule
from contraseg.datamodules.sampling import eval_loader

__all__ = ["ClassBank", "CondensationDataModule"]


class ClassBank:
    """All training images of a data set, indexed by class, on one device.

    Args:
        images: ``(N, ch, H, W)`` normalised images.
        labels: ``(N,)`` labels in ``0..num_classes-1``.
        num_classes: Number of classes (every class needs at least one image).

    Raises:
        ValueError: On a label outside the class set or a class without images.
    """

    def __init__(self, images: Tensor, labels: Tensor, num_classes: int) -> None:
        if labels.numel() and (labels.min() < 0 or labels.max() >= num_classes):
            bad = labels[(labels < 0) | (labels >= num_classes)][:5].tolist()
            raise ValueError(f"condensation needs labels in 0..{num_classes - 1}; got {bad} "
                             "(unlabelled images cannot be condensed)")  # fmt: skip
        counts = torch.bincount(labels, minlength=num_classes)
        if (counts == 0).any():
            empty = (counts == 0).nonzero().flatten().tolist()
            raise ValueError(f"condensation: classes {empty} have no training image")
        self.images, self.labels, self.num_classes = images, labels, num_classes
        self.counts = counts
        order = torch.argsort(labels, stable=True)
        start = torch.cumsum(counts, 0) - counts
        # (C, max_count) table of each class's image indices (padding: -1)
        col = torch.arange(int(counts.max())).view(1, -1)
        pos = (start.view(-1, 1) + col).clamp(max=len(labels) - 1)
        self.table = torch.where(col < counts.view(-1, 1), order[pos], -1)

    def to(self, device: torch.device | str) -> ClassBank:
        """The bank on ``device`` (images, labels and the index table)."""
        bank = object.__new__(ClassBank)
        bank.num_classes = self.num_classes
        bank.images, bank.labels = self.images.to(device), self.labels.to(device)
        bank.counts, bank.table = self.counts.to(device), self.table.to(device)
        return bank

    def per_class(self, n: int, generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
        """``n`` distinct random images of every class: ``(C, n', ch, H, W)`` and ``(C, n')``.

        ``n' = min(n, smallest class)`` so that every class has the same count (the classes
        are batched); the official code draws ``min(n, n_c)`` per class.
        """
        n = min(n, int(self.counts.min()))
        keys = torch.rand(self.table.shape, generator=generator, device=self.table.device)
        keys = keys.masked_fill(self.table < 0, 2.0)
        pick = keys.argsort(dim=1)[:, :n]
        idx = self.table.gather(1, pick)
        return self.images[idx], self.labels[idx]

    def of_class(self, c: int) -> Tensor:
        """Indices of class ``c``'s images."""
        return self.table[c, : int(self.counts[c])]


class _OnePerEpoch(Dataset):
    def __len__(self) -> int:
        return 1

    def __getitem__(self, index: int) -> dict[str, Any]:
        return {"index": index}


class CondensationDataModule(L.LightningDataModule):
    """Real data for dataset condensation.

    Args:
        source: A labelled classification DataModule (its ``eval_transform`` normalises;
            its ``val`` split is the test split of the evaluation protocol).
        test_batch_size: Batch size of the test loader (default: the source's).
        num_workers: Workers of the bank and test loaders (default: the source's).
    """

    def __init__(self, source: PretrainDataModule, test_batch_size: int | None = None,
                 num_workers: int | None = None) -> None:  # fmt: skip
        super().__init__()
        if source.num_classes < 2:
            raise ValueError(f"data.source {type(source).__name__} has {source.num_classes} "
                             "classes: condensation needs a labelled data set")  # fmt: skip
        self.source = source
        self.test_batch_size = test_batch_size
        self.num_workers = source.num_workers if num_workers is None else num_workers
        self._bank: ClassBank | None = None

    @classmethod
    def tiny_test_args(cls, init_args: dict[str, Any]) -> list[str]:
        """Nothing to shrink: the bank is the source's training split (small fixtures)."""
        return []

    @property
    def num_classes(self) -> int:
        """Classes of the source (linked into the model)."""
        return self.source.num_classes

    @property
    def probe_classes(self) -> int:
        """Classes scored by the evaluation protocol."""
        return self.source.num_classes

    @property
    def in_channels(self) -> int:
        """Image channels (linked into the model)."""
        return self.source.in_channels

    @property
    def image_size(self) -> int:
        """Side of the evaluation crops (the synthetic images' size)."""
        return self.source.eval_size

    @property
    def mean(self) -> list[float]:
        """Normalisation mean of the source (stored with the condensed set)."""
        return list(self.source.augment.mean)

    @property
    def std(self) -> list[float]:
        """Normalisation std of the source."""
        return list(self.source.augment.std)

    @property
    def classes(self) -> list[str]:
        """Class names where the source has them."""
        raw = self.source._raw_datasets()[0]
        names = getattr(raw, "classes", None)
        return [str(c) for c in names] if names else [str(c) for c in range(self.num_classes)]

    def setup(self, stage: str | None = None) -> None:
        """Set up the source (the bank is built on first use)."""
        self.source.setup(stage)

    @property
    def bank(self) -> ClassBank:
        """The training split as a :class:`ClassBank` (decoded once, with a progress bar)."""
        if self._bank is None:
            dataset = self.source.eval_dataset("train")
            loader = DataLoader(dataset, batch_size=256, num_workers=self.num_workers)
            images, labels = [], []
            for batch in tqdm(loader, desc="condensation: loading the real training set",
                              leave=False):  # fmt: skip
                images.append(batch["image"])
                labels.append(batch["label"])
            x, y = torch.cat(images), torch.cat(labels)
            if (y < 0).any():  # e.g. a scene whose object is hidden: no class to condense into
                rank_zero_warn(f"condensation: {int((y < 0).sum())} of {len(y)} training images "
                               "have no label (-1) and are left out of the real set")  # fmt: skip
                x, y = x[y >= 0], y[y >= 0]
            self._bank = ClassBank(x, y, self.num_classes)
        return self._bank

    def train_dataloader(self) -> DataLoader:
        """One placeholder item per epoch (an epoch is one outer iteration)."""
        return DataLoader(_OnePerEpoch(), batch_size=1)

    def test_dataloader(self) -> DataLoader:
        """The source's held-out split (normalised, no augmentation)."""
        dataset = self.source.eval_dataset("val")
        return eval_loader(dataset, self.test_batch_size or self.source.batch_size,
                           self.num_workers)  # fmt: skip
