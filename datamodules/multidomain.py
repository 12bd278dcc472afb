"""Several segmentation sets as domains of one training run (Boutillon et al. 2021).

:class:`MultiDomainDataModule` takes a list of segmentation data modules (any
:class:`~contraseg.datamodules.segmentation.SegmentationDataModule`: the medical volumes, the
textured scenes, users' folders), tags every item with its domain index, and trains on their union
with **balanced sampling**: each epoch draws ``sum_d N_d`` items with replacement, every
domain with probability ``1 / D`` whatever its size (seeded, resumable like every training
loader here).  Batches therefore mix domains; ``batch["domain"]`` carries the ids.  Validation
concatenates the domains' validation sets (whole volumes for medical sets, one per batch).
The domains must agree on classes and input channels.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import lightning as L
import torch
from lightning.pytorch.utilities import rank_zero_info
from torch.utils.data import ConcatDataset, DataLoader, Dataset

from contraseg.datamodules.sampling import eval_loader, train_loader
from contraseg.datamodules.segmentation import SegmentationDataModule
from contraseg.datamodules.volumes import VolumeDataset

__all__ = ["DomainTagged", "MultiDomainDataModule"]


class DomainTagged(Dataset):
    """Items of ``dataset`` with ``"domain": domain`` added (sample keys pass through)."""

    def __init__(self, dataset: Dataset, domain: int) -> None:
        self.dataset, self.domain = dataset, domain

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, index: Any) -> dict[str, Any]:  # noqa: D105
        return {**self.dataset[index], "domain": self.domain}


class _KeyedConcat(ConcatDataset):
    """``ConcatDataset`` that forwards the training sampler's ``SampleKey`` to its part."""

    def __getitem__(self, key: Any) -> Any:  # noqa: D105
        index = getattr(key, "index", key)
        part = next(i for i, end in enumerate(self.cumulative_sizes) if index < end)
        local = index - (self.cumulative_sizes[part - 1] if part else 0)
        return self.datasets[part][key._replace(index=local) if hasattr(key, "index") else local]


class MultiDomainDataModule(L.LightningDataModule):
    """Union of segmentation data modules, one domain each, sampled balanced.

    Args:
        domains: The data modules (order = domain id).
        batch_size: Images per step and process.
        num_workers: DataLoader workers.
        balanced: Equal probability per domain (``False``: proportional to size).
        train_domains: Domains trained on (default all); the others are only evaluated,
            which gives the single-domain baselines and their cross-domain scores.
    """

    def __init__(self, domains: Sequence[SegmentationDataModule], batch_size: int = 8,
                 num_workers: int = 2, balanced: bool = True,
                 train_domains: Sequence[int] | None = None) -> None:  # fmt: skip
        super().__init__()
        if not domains:
            raise ValueError("data.domains is empty")
        first = domains[0]
        for k, dm in enumerate(domains):
            if dm.num_classes != first.num_classes or dm.in_channels != first.in_channels:
                raise ValueError(f"domain {k} ({type(dm).__name__}) has {dm.num_classes} classes "
                                 f"and {dm.in_channels} channels, domain 0 {first.num_classes} and "
                                 f"{first.in_channels}: domains must agree")  # fmt: skip
        self.domains, self.batch_size = list(domains), batch_size
        self.num_workers, self.balanced = num_workers, balanced
        self.num_classes, self.in_channels = first.num_classes, first.in_channels
        self.classes, self.ignore_index = first.classes, first.ignore_index
        self.probe_classes = 0
        self.name = "+".join(dm.name for dm in self.domains)
        self.train_domains = (
            list(range(len(domains))) if train_domains is None else list(train_domains)
        )
        if not self.train_domains or not set(self.train_domains) <= set(range(len(domains))):
            raise ValueError(f"data.train_domains {train_domains} must be a non-empty subset of "
                             f"0..{len(domains) - 1}")  # fmt: skip

    @property
    def num_domains(self) -> int:
        """Number of domains."""
        return len(self.domains)

    @classmethod
    def tiny_test_args(cls, init_args: dict[str, Any]) -> list[str]:  # noqa: D102
        return ["--data.init_args.batch_size", "2"]

    def setup(self, stage: str | None = None) -> None:  # noqa: D102
        for dm in self.domains:
            dm.setup(stage)

    def train_dataset(self) -> Dataset:
        """The trained domains' labelled training sets, tagged, concatenated."""
        parts = [DomainTagged(self.domains[k].train_dataset(), k) for k in self.train_domains]
        return _KeyedConcat(parts)

    def train_dataloader(self) -> DataLoader:
        """Balanced (or proportional) draws over domains, seeded per epoch."""
        data = self.train_dataset()
        sizes = [len(d) for d in data.datasets]
        rank_zero_info(f"multi-domain training items per domain: {sizes}")
        weights = torch.cat([torch.full((n,), 1.0 / (n * len(sizes)) if self.balanced else 1.0)
                             for n in sizes])  # fmt: skip
        return train_loader(data, self.batch_size, self.num_workers, weights=weights)

    def val_dataloader(self) -> DataLoader:
        """Every domain's validation set, tagged (one volume per batch for medical sets)."""
        parts = [DomainTagged(dm.val_dataset(), k) for k, dm in enumerate(self.domains)]
        volumes = any(isinstance(p.dataset, VolumeDataset) for p in parts)
        batch = 1 if volumes else min(dm.val_batch_size for dm in self.domains)
        return eval_loader(ConcatDataset(parts), batch, self.num_workers)

    def test_dataloader(self) -> DataLoader:  # noqa: D102
        return self.val_dataloader()

    def on_after_batch_transfer(self, batch: Any, dataloader_idx: int = 0) -> Any:
        """Training batches: each domain's device half (normalisation) on its samples."""
        if not (isinstance(batch, dict) and "photometric" in batch):
            return batch
        params = {k: v for k, v in batch.pop("photometric").items() if k != "plan"}
        images, domain = batch["image"], batch["domain"]
        out = torch.empty(images.shape, dtype=torch.float32, device=images.device)
        for k in self.train_domains:
            index = (domain == k).nonzero().flatten()
            if index.numel():
                sub = {name: v.index_select(0, index) for name, v in params.items()}
                part = self.domains[k].on_after_batch_transfer(
                    {"image": images.index_select(0, index), "photometric": sub})
                out[index] = part["image"]
        batch["image"] = out
        return batch
