"""The DataLoaders of every contraseg DataModule: :func:`train_loader`, :func:`eval_loader`.

The training sampler is :class:`contraseg.seeding.SeededSampler`: the order of epoch ``e`` and every
sample's augmentation seed are functions of ``(seed, e, index)``, so a resumed run continues
the interrupted one exactly (see :mod:`contraseg.seeding`).
"""

from __future__ import annotations

from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from contraseg.datamodules.batch_augment import collate_plans
from contraseg.seeding import SeededSampler, run_seed

__all__ = ["PREFETCH_FACTOR", "eval_loader", "train_loader"]

# batches each worker keeps ready: uint8 views are a quarter of float ones, so four per
# worker cost little memory and absorb the jitter of per-sample decode times
PREFETCH_FACTOR = 4


def train_loader(
    dataset: Dataset,
    batch_size: int,
    num_workers: int,
    drop_last: bool = True,
    shuffle: bool = True,
    weights: torch.Tensor | None = None,
    collate_fn: Any = collate_plans,
) -> DataLoader:
    """The training DataLoader of every contraseg DataModule (see the module docstring).

    Workers persist across epochs, batches go to pinned memory when CUDA is present (so the
    copy to the device is asynchronous), each worker keeps ``PREFETCH_FACTOR`` batches
    ready, and the collate function adds the photometric index plans
    (:func:`contraseg.datamodules.batch_augment.collate_plans`) in the workers.

    Args:
        dataset: Training set (a ``TransformedDataset`` applies the sample seeds).
        batch_size: Images per step and process.
        num_workers: Worker processes (results do not depend on it).
        drop_last: Drop the incomplete last batch.
        shuffle: Shuffle every epoch.
        weights: Per-item sampling weights: each epoch draws ``len(dataset)`` items with
            replacement (class-balanced sampling), still a function of ``(seed, epoch)``.
        collate_fn: Batch assembly (default: ``default_collate`` plus the photometric plans).
    """
    sampler = SeededSampler(dataset, run_seed(), shuffle=shuffle, weights=weights)
    if drop_last and sampler.num_samples < batch_size:
        per = f" ({sampler.num_samples} per process)" if sampler.num_replicas > 1 else ""
        raise ValueError(
            f"an epoch yields no batch: {len(dataset)} training samples{per} and data.batch_size "
            f"{batch_size} with the incomplete batch dropped; lower data.batch_size or use more "
            "training data (data.num_train, label_fraction)"
        )
    return DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=sampler,
        drop_last=drop_last,
        num_workers=num_workers,
        persistent_workers=num_workers > 0,
        pin_memory=torch.cuda.is_available(),
        prefetch_factor=PREFETCH_FACTOR if num_workers > 0 else None,
        collate_fn=collate_fn,
    )


def eval_loader(
    dataset: Dataset, batch_size: int, num_workers: int, sampler: Sampler | None = None
) -> DataLoader:
    """An evaluation DataLoader (validation, test, kNN bank, feature sets): dataset order.

    Workers persist across epochs (a validation loop per epoch would start them anew) and
    batches go to pinned memory when CUDA is present.

    Args:
        dataset: Evaluation set.
        batch_size: Items per batch (a whole volume is one item for the medical sets).
        num_workers: Worker processes.
        sampler: E.g. a ``DistributedSampler`` (one shard per rank); ``None``: in order.
    """
    return DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=sampler,
        num_workers=num_workers,
        persistent_workers=num_workers > 0,
        pin_memory=torch.cuda.is_available(),
    )
