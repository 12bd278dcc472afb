"""Seeds, training order and exact resume: every random draw a function of (seed, epoch, index).

The neutral layer of contraseg: data modules, tasks and callbacks import it; it imports
none of them.

Exact resume needs every random draw of a training run to be recomputable from the
checkpoint.  Lightning restores weights, optimiser, schedule and loop counters but not
the order of a ``shuffle=True`` DataLoader (it re-draws it from the global RNG, so a
resumed epoch replays epoch 0's batches) nor the RNG streams of the workers.  Here:

* :class:`SeededSampler` draws epoch ``e``'s order from ``(seed, e)`` (a
  ``DistributedSampler``, so DDP shards it and Lightning leaves it in place) and yields
  :class:`SampleKey` s ``(index, epoch, sample_seed)`` with
  ``sample_seed = mix_seed(seed, epoch, index)``;
* :class:`~contraseg.datamodules.base.TransformedDataset` seeds torch's RNG with the key's seed
  around the sample's transform (and passes the epoch to data sets that draw per-epoch
  content, e.g. random Potsdam windows), so the augmentation of a sample is the same for
  any worker count, rank or restart;
* the train loader (``contraseg.datamodules.sampling.train_loader``) of a resumed run is realigned
  to the checkpoint's epoch and, for a mid-epoch checkpoint, skips the batches already
  consumed (:func:`realign_train_loader`; our own skip, chosen over Lightning's
  stateful-dataloader path, which needs ``torchdata`` and per-worker iterator states).

The step-level randomness of the training step itself (random pixel samples, dropout)
is reseeded from ``(seed, epoch, batch)`` by ``BaseTask.on_train_batch_start``.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Iterator
from typing import Any, NamedTuple

import torch
import torch.distributed as dist
from torch.utils.data import DataLoader, Dataset, DistributedSampler

__all__ = [
    "SampleKey",
    "SeededSampler",
    "loader_state",
    "mix_seed",
    "realign_train_loader",
    "run_seed",
    "seeded_call",
]

_MASK = (1 << 63) - 1


def mix_seed(*values: int) -> int:
    """A 63-bit seed from integers (SplitMix64 finaliser over the sequence).

    Different tuples give unrelated streams, so ``(seed, epoch, index)`` and
    ``(seed, epoch, index + 1)`` do not produce shifted copies of one stream.
    """
    h = 0x9E3779B97F4A7C15
    for v in values:
        h = (h ^ (int(v) & 0xFFFFFFFFFFFFFFFF)) * 0xBF58476D1CE4E5B9 & 0xFFFFFFFFFFFFFFFF
        h = (h ^ (h >> 27)) * 0x94D049BB133111EB & 0xFFFFFFFFFFFFFFFF
        h ^= h >> 31
    return h & _MASK


def run_seed(default: int = 0) -> int:
    """The run's seed: ``seed_everything``'s (``PL_GLOBAL_SEED``), else ``default``."""
    return int(os.environ.get("PL_GLOBAL_SEED", default))


class SampleKey(NamedTuple):
    """What :class:`SeededSampler` yields instead of a bare index."""

    index: int
    epoch: int
    seed: int


def seeded_call(seed: int, fn: Any, *args: Any) -> Any:
    """``fn(*args)`` with torch's CPU RNG seeded by ``seed``; the caller's RNG state is kept."""
    state = torch.get_rng_state()
    torch.manual_seed(seed)
    try:
        return fn(*args)
    finally:
        torch.set_rng_state(state)


class SeededSampler(DistributedSampler):
    """Shuffled (or ordered) training order from ``(seed, epoch)`` with per-sample seeds.

    Args:
        dataset: The training set.
        seed: Run seed.
        shuffle: Shuffle every epoch (``False``: dataset order).
        epoch: Epoch of the first iteration (a resumed run's epoch).
        skip: Samples of this rank to skip in the first iteration (mid-epoch resume).
    """

    def __init__(
        self, dataset: Dataset, seed: int, shuffle: bool = True, epoch: int = 0, skip: int = 0,
        weights: torch.Tensor | None = None,
    ) -> None:  # fmt: skip
        ddp = dist.is_available() and dist.is_initialized()
        world, rank = (dist.get_world_size(), dist.get_rank()) if ddp else (1, 0)
        super().__init__(dataset, num_replicas=world, rank=rank, shuffle=shuffle, seed=seed)
        if weights is not None and weights.shape != (len(dataset),):  # type: ignore[arg-type]
            raise ValueError(f"sampling weights {tuple(weights.shape)} for {len(dataset)} items")  # type: ignore[arg-type]
        self.weights = weights
        self.set_epoch(epoch)
        self.skip = skip
        self.iter_epoch, self.iter_skip = -1, -1  # what the latest iterator was made with

    def _weighted_indices(self) -> list[int]:
        """``total_size`` draws with replacement from ``weights`` (seeded by seed and epoch)."""
        g = torch.Generator().manual_seed(mix_seed(self.seed, self.epoch, 7))
        draws = torch.multinomial(self.weights, self.total_size, replacement=True, generator=g)
        return draws[self.rank : self.total_size : self.num_replicas].tolist()

    def __iter__(self) -> Iterator[SampleKey]:  # type: ignore[override]
        indices = self._weighted_indices() if self.weights is not None else list(super().__iter__())
        skip, self.skip = self.skip, 0
        epoch = self.epoch
        self.iter_epoch, self.iter_skip = epoch, skip
        return iter(SampleKey(i, epoch, mix_seed(self.seed, epoch, i)) for i in indices[skip:])


def _seeded_loaders(trainer: Any) -> list[DataLoader]:
    combined = getattr(trainer.fit_loop, "_combined_loader", None)
    if combined is None:
        return []
    return [d for d in combined.flattened if isinstance(getattr(d, "sampler", None), SeededSampler)]


def loader_state(trainer: Any) -> list[dict[str, Any]]:
    """What a resumed run's training order depends on, per seeded train loader.

    Saved in every checkpoint (``BaseTask.on_save_checkpoint``) and compared on resume by
    :func:`realign_train_loader`.
    """
    return [{"batch_size": int(d.batch_size or 1), "dataset_size": len(d.sampler.dataset),
             "shuffle": bool(d.sampler.shuffle), "weighted": d.sampler.weights is not None,
             "num_replicas": int(d.sampler.num_replicas), "seed": int(d.sampler.seed)}
            for d in _seeded_loaders(trainer)]  # fmt: skip


_ORDER_KEYS = {"dataset_size": "training samples (data.num_train, the data set, label_fraction)",
               "shuffle": "shuffling", "weighted": "class-balanced sampling",
               "num_replicas": "processes (devices x nodes)", "seed": "seed (seed_everything)"}


def _check_resume(saved: dict[str, Any], now: dict[str, Any], mid_epoch: bool) -> None:
    """Raise when the resumed loader would not continue the checkpoint's sample order."""
    for key, what in _ORDER_KEYS.items():
        if key in saved and saved[key] != now[key]:
            raise ValueError(
                f"resume: the checkpoint's training order used {what} = {saved[key]}, this run "
                f"{now[key]}: the resumed run would not continue the interrupted one. Resume "
                "with the checkpoint's settings (its config.yaml), or start a new run"
            )
    if saved.get("batch_size", now["batch_size"]) != now["batch_size"]:
        message = (f"resume: the checkpoint was written with batch size {saved['batch_size']}, "
                   f"this run uses {now['batch_size']}")  # fmt: skip
        if mid_epoch:  # the skipped count would be in the new size: samples seen twice or never
            raise ValueError(f"{message}; it stopped inside an epoch, whose consumed samples "
                             "cannot be skipped in batches of another size. Resume with "
                             f"data.batch_size {saved['batch_size']}")  # fmt: skip
        warnings.warn(f"{message} (from an epoch end: the sample order is unaffected; the "
                      "learning-rate schedule and step counts change)", stacklevel=3)


def realign_train_loader(trainer: Any, saved: list[dict[str, Any]] | None = None) -> bool:
    """Point a resumed fit's train loader at the restored epoch and batch; ``True`` if moved.

    Called at ``on_train_start`` (``BaseTask``), when Lightning has restored and processed
    the loop state.  The loader's first iterator may exist already (``configure_optimizers``
    asks for ``estimated_stepping_batches``, which builds and iterates the train loader
    before the checkpoint is restored, and workers prefetch at once), so the sampler gets
    the restored epoch and the samples to skip (mid-epoch: ``batches done x batch size``)
    and the fetcher's iterator is recreated, as Lightning itself does at an epoch start.

    Args:
        trainer: The trainer.
        saved: :func:`loader_state` of the checkpoint (``None``: not known, e.g. an older
            checkpoint): a resume with another data size, shuffling, sampling, process count
            or seed is an error, a mid-epoch one with another batch size too.

    Raises:
        ValueError: The resumed order would not continue the checkpoint's.
    """
    loop = trainer.fit_loop
    fetcher = getattr(loop, "_data_fetcher", None)
    if fetcher is None or getattr(loop, "_combined_loader", None) is None:
        return False
    epoch = int(loop.epoch_progress.current.processed)
    done = int(loop.epoch_loop.batch_progress.current.ready) if loop.restarting else 0
    loaders = _seeded_loaders(trainer)
    if saved:
        for before, now in zip(saved, loader_state(trainer), strict=False):
            _check_resume(before, now, mid_epoch=done > 0)
    moved = False
    for loader in loaders:
        sampler = loader.sampler
        if isinstance(sampler, SeededSampler):
            skip = done * (loader.batch_size or 1)
            if (sampler.iter_epoch, sampler.iter_skip) != (epoch, skip):
                sampler.set_epoch(epoch)
                sampler.skip = skip
                moved = True
    if moved:
        iter(fetcher)  # a new iterator over the realigned sampler
    return moved
