"""Domain adaptation data: labeled source, unlabeled (or few-labeled) target, target validation.

:class:`SourceTargetDataModule` combines two segmentation data modules (any
:class:`~contraseg.datamodules.segmentation.SegmentationDataModule`: GTA5 or SYNTHIA and
Cityscapes, or two domains of the synthetic scenes) into training *streams*:

* ``source``: the source module's labeled training set (``image``, ``mask``);
* ``target``: every target training image **without its mask** (the mask is removed in the
  worker, so an unsupervised method cannot read it);
* ``target_labeled``: the target module's labeled subset (its ``label_fraction``), for the
  semi-supervised setting and for the target-trained oracle.

One training item holds one sample of each requested stream: the sampler runs over
``max(len(stream))`` indices; stream ``s`` reads its sample ``perm_s(epoch)[i mod N_s]``, a
permutation seeded by ``(run seed, epoch, stream)``, so streams of different sizes are
paired anew every epoch and a resumed run continues exactly (the key's seed drives the
augmentations, :mod:`contraseg.seeding`).  With **one** stream the batch is that stream's
plain batch (``image`` / ``mask``): the source-only baseline and the oracle are ordinary
:class:`~contraseg.lightning_modules.SegmentationFineTune` runs; with several, the batch is
``{stream: batch}``.  Validation, test and predict are the target's.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

import lightning as L
import torch
from lightning.pytorch.utilities import rank_zero_info
from torch.utils.data import DataLoader, Dataset

from contraseg.datamodules.base import TransformedDataset
from contraseg.datamodules.sampling import eval_loader, train_loader
from contraseg.datamodules.segmentation import SegmentationDataModule
from contraseg.seeding import SampleKey, mix_seed, run_seed

__all__ = ["STREAMS", "SourceTargetDataModule", "StreamPairs"]

Stream = Literal["source", "target", "target_labeled"]
STREAMS: tuple[str, ...] = ("source", "target", "target_labeled")


class _DropMask:
    """Remove the label of a target sample (the unsupervised target stream)."""

    def __init__(self, dataset: Dataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, key: Any) -> dict[str, Any]:
        return {k: v for k, v in self.dataset[key].items() if k != "mask"}


class StreamPairs(Dataset):
    """One sample of every stream per index, each stream in its own seeded order per epoch.

    Args:
        streams: Stream name -> data set (items read with a ``SampleKey`` when one is given).
    """

    def __init__(self, streams: dict[str, Any]) -> None:
        if not streams:
            raise ValueError("StreamPairs needs at least one stream")
        self.streams = streams
        self.sizes = {name: len(ds) for name, ds in streams.items()}
        empty = [name for name, n in self.sizes.items() if n == 0]
        if empty:
            raise ValueError(f"domain-adaptation streams {empty} hold no image")
        self._orders: dict[str, tuple[tuple[int, int], list[int]]] = {}

    def __len__(self) -> int:
        return max(self.sizes.values())

    def _order(self, name: str, epoch: int, seed: int) -> list[int]:
        cached = self._orders.get(name)
        if cached is None or cached[0] != (epoch, seed):  # one epoch's order per stream
            g = torch.Generator().manual_seed(mix_seed(seed, epoch, STREAMS.index(name) + 1))
            cached = self._orders[name] = ((epoch, seed),
                                           torch.randperm(self.sizes[name], generator=g).tolist())
        return cached[1]

    def __getitem__(self, key: int | SampleKey) -> dict[str, Any]:  # noqa: D105
        out = {}
        for k, (name, ds) in enumerate(self.streams.items()):
            if isinstance(key, SampleKey):
                local = self._order(name, key.epoch, run_seed())[key.index % self.sizes[name]]
                out[name] = ds[key._replace(index=local, seed=mix_seed(key.seed, k))]
            else:
                out[name] = ds[key % self.sizes[name]]
        return out


class _StreamCollate:
    """Collate each stream's samples with its own module's collate function (picklable)."""

    def __init__(self, collates: dict[str, Any]) -> None:
        self.collates = collates

    def __call__(self, samples: list[dict[str, Any]]) -> dict[str, Any]:
        return {name: fn([s[name] for s in samples]) for name, fn in self.collates.items()}


class _Flatten:
    """The single stream's item itself (one-stream training: a plain batch)."""

    def __init__(self, pairs: StreamPairs) -> None:
        self.pairs, self.name = pairs, next(iter(pairs.streams))

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, key: Any) -> dict[str, Any]:
        return self.pairs[key][self.name]


class SourceTargetDataModule(L.LightningDataModule):
    """Source and target domains for adaptation; validation on the target.

    Args:
        target: The target domain (its validation split scores every run).
        source: The labeled source domain; ``null`` for source-free adaptation.
        streams: Training streams (see the module docstring): ``[source]`` source-only,
            ``[target]`` source-free, ``[source, target]`` unsupervised DA,
            ``[source, target, target_labeled]`` semi-supervised DA, ``[target_labeled]``
            the target oracle (with the target's ``label_fraction`` as the label budget).
        batch_size: Samples per stream per step (``null``: each module's own).
        num_workers: DataLoader workers (``null``: the target's).

    Raises:
        ValueError: An unknown stream, a ``source`` stream without source, or domains whose
            classes or input channels differ.
    """

    def __init__(
        self,
        target: SegmentationDataModule,
        source: SegmentationDataModule | None = None,
        streams: Sequence[Stream] = ("source", "target"),
        batch_size: int | None = None,
        num_workers: int | None = None,
    ) -> None:
        super().__init__()
        streams = list(streams)
        unknown = [s for s in streams if s not in STREAMS]
        if unknown or not streams or len(set(streams)) != len(streams):
            raise ValueError(f"data.streams {streams} must be distinct names from {STREAMS}")
        if "source" in streams and source is None:
            raise ValueError("data.streams has 'source' but data.source is null (source-free "
                             "adaptation trains on streams: [target])")  # fmt: skip
        if source is not None and (source.num_classes != target.num_classes
                                   or source.in_channels != target.in_channels):  # fmt: skip
            raise ValueError(
                f"source {type(source).__name__} ({source.num_classes} classes, "
                f"{source.in_channels} channels) and target {type(target).__name__} "
                f"({target.num_classes}, {target.in_channels}) must agree")
        self.source, self.target, self.streams = source, target, streams
        self.batch_size = batch_size or target.batch_size
        self.num_workers = target.num_workers if num_workers is None else num_workers
        self.num_classes, self.in_channels = target.num_classes, target.in_channels
        self.classes, self.ignore_index = target.classes, target.ignore_index
        self.palette, self.probe_classes = target.palette, 0
        self.name = f"{source.name if source is not None else 'sourcefree'}_to_{target.name}"

    @property
    def source_free(self) -> bool:
        """Whether no source data reach training (only the ``target`` stream)."""
        return "source" not in self.streams and "target_labeled" not in self.streams

    @classmethod
    def tiny_test_args(cls, init_args: dict[str, Any]) -> list[str]:
        """The batch size, and each domain's own tiny arguments under its key."""
        import importlib

        args = ["--data.init_args.batch_size", "2"]
        for key in ("source", "target"):
            sub = init_args.get(key)
            if isinstance(sub, dict) and "class_path" in sub:
                module, name = sub["class_path"].rsplit(".", 1)
                sub_cls = getattr(importlib.import_module(module), name)
                prefix = f"--data.init_args.{key}.init_args."
                own = sub_cls.tiny_test_args(sub.get("init_args", {}))
                for flag, value in zip(own[::2], own[1::2]):
                    if value != "null":  # a nested null does not parse from the command line
                        args += [flag.replace("--data.init_args.", prefix, 1), value]
        return args

    def _module(self, stream: str) -> SegmentationDataModule:
        return self.source if stream == "source" else self.target  # type: ignore[return-value]

    def setup(self, stage: str | None = None) -> None:  # noqa: D102
        for dm in {id(m): m for m in (self.source, self.target) if m is not None}.values():
            dm.trainer = self.trainer
            dm.setup(stage)

    def stream_dataset(self, stream: str) -> Dataset:
        """One stream's training set (augmented as its module's fine-tuning samples)."""
        dm = self._module(stream)
        if stream == "target":  # every target training image, its mask removed
            every = TransformedDataset(dm.build("train"), dm.train_transform())
            return _DropMask(every)  # type: ignore[return-value]
        return dm.train_dataset()

    def train_dataset(self) -> Dataset:
        """The streams, paired (:class:`StreamPairs`); one stream's items flat."""
        pairs = StreamPairs({s: self.stream_dataset(s) for s in self.streams})
        rank_zero_info(f"domain-adaptation streams: {pairs.sizes}")
        return _Flatten(pairs) if len(self.streams) == 1 else pairs  # type: ignore[return-value]

    def train_dataloader(self) -> DataLoader:  # noqa: D102
        for dm in (self.source, self.target):
            if dm is not None:
                dm.trainer = self.trainer
        collates = {s: self._module(s).train_collate() for s in self.streams}
        collate = (next(iter(collates.values())) if len(self.streams) == 1
                   else _StreamCollate(collates))  # fmt: skip
        return train_loader(self.train_dataset(), self.batch_size, self.num_workers,
                            collate_fn=collate)  # fmt: skip

    def target_images(self) -> DataLoader:
        """Every target training image, whole and normalised, **without its mask**, in order.

        What a source-free method may read of the target (e.g. to set pseudo-label
        thresholds); evaluation batches of the target's ``val_batch_size``.
        """
        dm = self.target
        images = TransformedDataset(dm.build("train"), dm.normalise())
        return eval_loader(_DropMask(images), dm.val_batch_size, self.num_workers)  # type: ignore[arg-type]

    def val_dataloader(self) -> DataLoader:
        """The target's validation split."""
        return self.target.val_dataloader()

    def test_dataloader(self) -> DataLoader:  # noqa: D102
        return self.target.test_dataloader()

    def predict_dataloader(self) -> DataLoader:  # noqa: D102
        return self.target.predict_dataloader()

    def on_after_batch_transfer(self, batch: Any, dataloader_idx: int = 0) -> Any:
        """Each stream's device half (normalisation) by its own module."""
        if not isinstance(batch, dict):
            return batch
        if len(self.streams) == 1 or not set(batch) <= set(STREAMS):
            return self._module(self.streams[0]).on_after_batch_transfer(batch, dataloader_idx)
        return {s: self._module(s).on_after_batch_transfer(part, dataloader_idx)
                for s, part in batch.items()}  # fmt: skip
