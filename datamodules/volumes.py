"""Volumes served as 2-D slices, whole volumes or 3-D patches, from a per-process cache.

:class:`VolumeStore` reads a subject once per process (each DataLoader worker keeps its own
copy) and optionally writes it as ``.npy`` under ``cache_dir``, which later runs and
workers memory-map instead of decompressing the ``.nii.gz`` again.  A cache entry is keyed by
its source: the image and label files' resolved paths, sizes and modification times, the slice
size, the protocol and :data:`CACHE_VERSION`; an edited file or changed option gets a new
entry (the stale one is deleted with a warning), and two folders sharing one cache never see
each other's volumes.  The stored arrays keep
the file's dtype; slices are normalised per modality when served
(:func:`~contraseg.datamodules.datasets.nifti.normalize_intensity`).  ``reads`` counts
decompressions (``benchmarks/medical.py`` and the tests use it).

Datasets over a store:

* :class:`SliceDataset`: axial slices ``{"image": (C, H, W), "mask": (H, W), "name":
  "<subject>:<z>", "subject"}``; ``context`` neighbouring slices on each side become extra
  channels (2.5-D); an explicit ``index`` list (e.g. foreground-weighted, see
  :func:`foreground_weighted_index`) replaces the plain enumeration;
* :class:`VolumeDataset`: whole normalised volumes ``(C, D, H, W)`` with their spacing, for
  per-volume evaluation;
* :class:`PatchDataset`: 3-D patches, centred on a foreground voxel with probability
  ``foreground_prob``, as a seeded function of the item index.
"""

from __future__ import annotations

import hashlib
import json
import os
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset
from torchvision import tv_tensors

from contraseg.datamodules.datasets.medical import Protocol, Subject
from contraseg.datamodules.datasets.nifti import (
    Volume,
    check_pair,
    intensity_stats,
    map_labels,
    normalize_intensity,
    read_nifti,
)
from contraseg.datamodules.datasets.synthetic_volumes import SyntheticVolumes

__all__ = [
    "CACHE_VERSION",
    "PatchDataset",
    "SliceDataset",
    "VolumeDataset",
    "VolumeStore",
    "foreground_weighted_index",
]


CACHE_VERSION = 2  # bump when what a cache entry holds changes (old entries are rebuilt)


@dataclass
class Loaded:
    """One subject as served: raw-dtype image, class labels, spacing, intensity stats."""

    image: np.ndarray
    label: np.ndarray
    spacing: tuple[float, float, float]
    stats: dict[str, float]


class VolumeStore:
    """Reads, checks, label-maps, optionally resizes and caches subjects.

    Args:
        protocol: Class table, modality and window.
        subjects: On-disk subjects, or ``None`` with ``synthetic``.
        synthetic: In-memory generator instead of files.
        slice_size: Resize every slice to ``slice_size`` x ``slice_size`` (image bilinear,
            label nearest; spacing scaled accordingly); ``None`` keeps the grid.
        cache_dir: Folder for ``.npy`` copies (memory-mapped on later reads).
    """

    def __init__(
        self,
        protocol: Protocol,
        subjects: Sequence[Subject] | None = None,
        synthetic: SyntheticVolumes | None = None,
        slice_size: int | None = None,
        cache_dir: str | Path | None = None,
    ) -> None:
        if (subjects is None) == (synthetic is None):
            raise ValueError("give exactly one of subjects and synthetic")
        self.protocol, self.synthetic, self.slice_size = protocol, synthetic, slice_size
        self.subjects = {s.id: s for s in subjects} if subjects is not None else {}
        self.ids = list(self.subjects) if subjects is not None else list(synthetic.ids)
        self.cache_dir = None if cache_dir is None else Path(cache_dir) / protocol.name
        self._cache: dict[str, Loaded] = {}
        self._keys: dict[str, tuple[dict, str]] = {}
        self.reads = 0

    def __getstate__(self) -> dict:  # workers start with an empty cache of their own
        return {**self.__dict__, "_cache": {}}

    def load(self, subject_id: str) -> Loaded:
        """The subject, read at most once per process."""
        if subject_id not in self._cache:
            self._cache[subject_id] = self._from_npy(subject_id) or self._read(subject_id)
        return self._cache[subject_id]

    def _read(self, subject_id: str) -> Loaded:
        self.reads += 1
        if self.synthetic is not None:
            image, label = self.synthetic.subject(self.ids.index(subject_id))
        else:
            subject = self.subjects[subject_id]
            image = read_nifti(subject.image, f"{self.protocol.name} image")
            if subject.label is None:
                raise ValueError(f"{subject.image}: subject {subject_id} has no label file")
            label = read_nifti(subject.label, f"{self.protocol.name} label")
            check_pair(image, label)
        classes = map_labels(label.array, self.protocol.label_table, label.path)
        if classes.max() >= self.protocol.num_classes:
            raise ValueError(
                f"{label.path}: class {int(classes.max())} outside the "
                f"{self.protocol.num_classes} classes of {self.protocol.name}"
            )
        loaded = self._resize(image, classes)
        if self.cache_dir is not None:
            self._to_npy(subject_id, loaded)
        return loaded

    def _resize(self, image: Volume, classes: np.ndarray) -> Loaded:
        stats = intensity_stats(image.array) if self.protocol.modality == "mr" else {}
        size = self.slice_size
        if size is None or image.array.shape[1:] == (size, size):
            return Loaded(image.array, classes, image.spacing, stats)
        d, h, w = image.array.shape
        x = torch.from_numpy(image.array.astype(np.float32))[:, None]
        y = torch.from_numpy(classes)[:, None].float()
        x = F.interpolate(x, (size, size), mode="bilinear", align_corners=False)[:, 0]
        y = F.interpolate(y, (size, size), mode="nearest")[:, 0]
        spacing = (image.spacing[0], image.spacing[1] * h / size, image.spacing[2] * w / size)
        return Loaded(x.numpy(), y.to(torch.uint8).numpy(), spacing, stats)

    def _source(self, subject_id: str) -> dict:
        """What a cache entry is a function of: the files (path, size, mtime) and the options.

        Synthetic subjects: the generator's arguments.  A changed label file, another folder
        sharing the cache or other reading options give another key.
        """
        options = {"slice_size": self.slice_size, "protocol": repr(self.protocol),
                   "version": CACHE_VERSION}  # fmt: skip
        if self.synthetic is not None:
            g = self.synthetic
            return {**options, "synthetic": [g.num_subjects, list(g.shape), g.num_structures,
                                             g.domain, g.seed]}  # fmt: skip
        files = {}
        subject = self.subjects[subject_id]
        for role, path in (("image", subject.image), ("label", subject.label)):
            if path is not None:
                stat = Path(path).stat()
                files[role] = [str(Path(path).resolve()), stat.st_size, stat.st_mtime_ns]
        return {**options, "files": files}

    def _keyed(self, subject_id: str) -> tuple[dict, str]:
        """The subject's source description and its cache key (computed once per process)."""
        if subject_id not in self._keys:
            source = self._source(subject_id)
            digest = hashlib.sha1(json.dumps(source, sort_keys=True).encode()).hexdigest()[:16]
            self._keys[subject_id] = (source, digest)
        return self._keys[subject_id]

    def _paths(self, subject_id: str, key: str) -> tuple[Path, Path, Path]:
        base = self.cache_dir / f"{subject_id}_{self.slice_size or 'native'}_{key}"
        return Path(f"{base}_image.npy"), Path(f"{base}_label.npy"), Path(f"{base}_meta.json")

    def _from_npy(self, subject_id: str) -> Loaded | None:
        if self.cache_dir is None:
            return None
        source, key = self._keyed(subject_id)
        image, label, meta = self._paths(subject_id, key)
        info = None
        if image.is_file() and label.is_file() and meta.is_file():
            try:
                info = json.loads(meta.read_text())
            except ValueError:
                info = None
        if info is not None and info.get("source") == source:
            return Loaded(np.load(image, mmap_mode="r"), np.load(label, mmap_mode="r"),
                          tuple(info["spacing"]), info["stats"])  # fmt: skip
        self._drop_stale(subject_id, source)
        return None

    def _drop_stale(self, subject_id: str, source: dict) -> None:
        """Delete this subject's entries made from the same files before they changed.

        Entries of other files (another folder sharing the cache) are left for their owners,
        with a notice that this folder gets its own.
        """
        ours = {role: entry[0] for role, entry in source.get("files", {}).items()}
        for meta in self.cache_dir.glob(f"{subject_id}_{self.slice_size or 'native'}_*_meta.json"):
            try:
                theirs = json.loads(meta.read_text()).get("source", {})
            except ValueError:
                theirs = {}
            their_files = {r: e[0] for r, e in theirs.get("files", {}).items()}
            if theirs and ours and their_files != ours:
                warnings.warn(f"{meta}: the cache holds subject {subject_id} read from other files "
                              f"({sorted(their_files.values())}); building an entry for "
                              f"{sorted(ours.values())} beside it", stacklevel=3)  # fmt: skip
                continue
            if their_files == ours or not theirs:
                warnings.warn(f"{meta}: cache entry of subject {subject_id} is stale (its source "
                              "files or reading options changed); rebuilding it", stacklevel=3)
                stem = meta.name[: -len("_meta.json")]
                for path in (meta, meta.with_name(f"{stem}_image.npy"),
                             meta.with_name(f"{stem}_label.npy")):  # fmt: skip
                    path.unlink(missing_ok=True)

    def _to_npy(self, subject_id: str, loaded: Loaded) -> None:
        self.cache_dir.mkdir(parents=True, exist_ok=True)
        source, key = self._keyed(subject_id)  # as looked up: the files are stat'ed once
        image, label, meta = self._paths(subject_id, key)
        tag = f".{os.getpid()}.tmp"  # workers may write the same entry at once: each renames
        for path, array in ((image, loaded.image), (label, loaded.label)):
            tmp = path.with_name(path.name + tag)
            with tmp.open("wb") as handle:
                np.save(handle, array)
            os.replace(tmp, path)
        tmp = meta.with_name(meta.name + tag)
        tmp.write_text(json.dumps({"spacing": list(loaded.spacing), "stats": loaded.stats,
                                   "source": source}))  # fmt: skip
        os.replace(tmp, meta)  # last: an entry counts only once its meta exists

    def normalized(self, loaded: Loaded, array: np.ndarray) -> np.ndarray:
        """``array`` (part of ``loaded.image``) normalised for this protocol's modality."""
        p = self.protocol
        return normalize_intensity(array, p.modality, p.window, loaded.stats)

    def slice_counts(self, ids: Sequence[str]) -> list[tuple[str, int, bool]]:
        """``(subject, z, has_foreground)`` for every slice of ``ids``."""
        out = []
        for sid in ids:
            label = self.load(sid).label
            fg = (label.reshape(label.shape[0], -1) > 0).any(axis=1)
            out += [(sid, z, bool(f)) for z, f in enumerate(fg)]
        return out


def foreground_weighted_index(
    slices: Sequence[tuple[str, int, bool]], share: float, seed: int
) -> list[tuple[str, int]]:
    """One epoch's slice list (same length) in which ``share`` of the draws hold foreground.

    Slices are drawn with replacement (seeded, fixed for the run; the training sampler then
    shuffles it per epoch): foreground slices with total probability ``share``, the others
    with ``1 - share``.  If either kind is absent all slices are drawn uniformly.
    """
    fg = torch.tensor([f for _, _, f in slices], dtype=torch.bool)
    n_fg = int(fg.sum())
    if n_fg in (0, len(slices)):
        weights = torch.ones(len(slices))
    else:
        weights = torch.where(fg, share / n_fg, (1 - share) / (len(slices) - n_fg))
    g = torch.Generator().manual_seed(seed)
    draws = torch.multinomial(weights, len(slices), replacement=True, generator=g)
    return [(slices[i][0], slices[i][1]) for i in draws.tolist()]


class SliceDataset(Dataset):
    """Axial slices of a store's subjects (see the module docstring).

    Args:
        store: The volume store.
        ids: Subjects served.
        index: Explicit ``(subject, z)`` list (default: every slice of ``ids`` in order).
        context: Neighbouring slices per side added as channels (edge slices repeat).
        channels: Repeat the (1 + 2 * context)-channel image to this many channels
            (``None``: no repeat), e.g. 3 for ImageNet-shaped encoders with ``context=0``.
    """

    def __init__(
        self,
        store: VolumeStore,
        ids: Sequence[str],
        index: Sequence[tuple[str, int]] | None = None,
        context: int = 0,
        channels: int | None = None,
    ) -> None:
        self.store, self.ids, self.context, self.channels = store, list(ids), context, channels
        if index is None:
            index = [(s, z) for s, z, _ in store.slice_counts(self.ids)]
        self.index = list(index)
        self.names = [f"{s}:{z:04d}" for s, z in self.index]

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, i: int) -> dict:
        sid, z = self.index[i]
        loaded = self.store.load(sid)
        depth = loaded.image.shape[0]
        zs = np.clip(np.arange(z - self.context, z + self.context + 1), 0, depth - 1)
        image = torch.from_numpy(self.store.normalized(loaded, np.asarray(loaded.image[zs])))
        if self.channels is not None and self.channels != image.shape[0]:
            image = image.repeat(self.channels // image.shape[0], 1, 1)
        mask = torch.from_numpy(np.asarray(loaded.label[z], dtype=np.int64))
        return {
            "image": tv_tensors.Image(image),
            "mask": tv_tensors.Mask(mask),
            "name": self.names[i],
            "subject": sid,
        }


class VolumeDataset(Dataset):
    """Whole normalised volumes: ``image (C, D, H, W)``, ``mask (D, H, W)``, ``spacing (3,)``.

    ``C`` is the slice channel count of the matching :class:`SliceDataset` (``context``
    slices per side stacked, then repeated to ``channels``), so a 2-D network sees each
    slice exactly as in training; ``mean`` / ``std`` are the data module's normalisation.
    """

    def __init__(
        self,
        store: VolumeStore,
        ids: Sequence[str],
        mean: Sequence[float],
        std: Sequence[float],
        context: int = 0,
        channels: int | None = None,
    ) -> None:
        self.store, self.ids = store, list(ids)
        self.mean = torch.tensor(list(mean)).view(-1, 1, 1, 1)
        self.std = torch.tensor(list(std)).view(-1, 1, 1, 1)
        self.context, self.channels = context, channels
        self.names = list(self.ids)

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, i: int) -> dict:
        sid = self.ids[i]
        loaded = self.store.load(sid)
        volume = torch.from_numpy(self.store.normalized(loaded, np.asarray(loaded.image)))
        depth = volume.shape[0]
        shifts = [
            np.clip(np.arange(depth) + k, 0, depth - 1)
            for k in range(-self.context, self.context + 1)
        ]
        image = torch.stack([volume[s] for s in shifts])  # (1 + 2 context, D, H, W)
        if self.channels is not None and self.channels != image.shape[0]:
            image = image.repeat(self.channels // image.shape[0], 1, 1, 1)
        image = (image - self.mean) / self.std
        return {
            "image": image,
            "mask": torch.from_numpy(np.asarray(loaded.label, dtype=np.int64)),
            "spacing": torch.tensor(loaded.spacing, dtype=torch.float64),
            "subject": sid,
        }


class PatchDataset(Dataset):
    """3-D patches ``(1, pd, ph, pw)`` with labels, a seeded function of the item index.

    Args:
        store: The volume store.
        ids: Subjects; item ``i`` comes from subject ``ids[i % len(ids)]``.
        patch_size: ``(pd, ph, pw)`` (volumes smaller than it are zero / ignore padded).
        samples_per_subject: Items per subject and epoch.
        foreground_prob: Probability that the patch is centred on a foreground voxel.
        seed: Seed of the patch positions.
        ignore_index: Label of padded voxels.
    """

    def __init__(
        self,
        store: VolumeStore,
        ids: Sequence[str],
        patch_size: Sequence[int],
        samples_per_subject: int = 4,
        foreground_prob: float = 0.5,
        seed: int = 0,
        ignore_index: int = 255,
    ) -> None:
        self.store, self.ids, self.patch = store, list(ids), tuple(int(p) for p in patch_size)
        self.n, self.p, self.seed, self.ignore = (
            samples_per_subject,
            foreground_prob,
            seed,
            ignore_index,
        )

    def __len__(self) -> int:
        return len(self.ids) * self.n

    def __getitem__(self, i: int) -> dict:
        sid = self.ids[i % len(self.ids)]
        loaded = self.store.load(sid)
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + i)
        label = np.asarray(loaded.label)
        fg = np.argwhere(label > 0)
        if len(fg) and float(torch.rand(1, generator=g)) < self.p:
            centre = fg[int(torch.randint(len(fg), (1,), generator=g))]
        else:
            centre = np.array([int(torch.randint(s, (1,), generator=g)) for s in label.shape])
        starts = [int(c) - p // 2 for c, p in zip(centre, self.patch)]
        out_img = np.zeros(self.patch, dtype=np.float32)
        out_lab = np.full(self.patch, self.ignore, dtype=np.int64)
        src, dst = [], []
        for s, p, n in zip(starts, self.patch, label.shape):
            lo, hi = max(s, 0), min(s + p, n)
            src.append(slice(lo, hi))
            dst.append(slice(lo - s, hi - s))
        out_img[tuple(dst)] = self.store.normalized(loaded, np.asarray(loaded.image[tuple(src)]))
        out_lab[tuple(dst)] = label[tuple(src)]
        return {
            "image": torch.from_numpy(out_img)[None],
            "mask": torch.from_numpy(out_lab),
            "subject": sid,
            "start": torch.tensor(starts),
        }
