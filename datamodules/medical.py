"""Medical segmentation DataModules: 2-D slices for training, whole volumes for evaluation.

:class:`MedicalDataModule` is a :class:`~contraseg.datamodules.segmentation.SegmentationDataModule`
whose "images" are the axial slices of subjects, so every dense method of the project
(pretraining views, label fractions, fine-tuning) runs on it unchanged, with three medical
rules:

* **splits are by subject**: ``label_fraction`` counts (or takes a fraction of) labelled
  *training subjects*, never slices; validation subjects are the protocol's official test
  cases (BTCV's 12 TransUNet cases) or a seeded ``val_subjects`` share; a subject on both
  sides is an error;
* **foreground-weighted slices**: the training epoch is a seeded draw in which
  ``foreground_share`` of the slices contain a structure (``None``: every slice once);
* **per-volume evaluation**: in fine-tuning mode validation batches are whole volumes
  (``image (1, C, D, H, W)``, ``mask``, ``spacing``) that
  :class:`~contraseg.lightning_modules.segmentation_finetune.SegmentationFineTune` predicts slice by
  slice and scores with MONAI's Dice and HD95 in millimetres.

Data sets: :class:`BTCVDataModule`, :class:`MMWHSDataModule`, :class:`HippocampusDataModule`,
:class:`NiftiFolderDataModule` (users' own volumes) and :class:`SyntheticMedicalDataModule`
(the embedded default, no download).  Class counts per split are logged at setup.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from lightning.pytorch.utilities import rank_zero_info
from torch.utils.data import DataLoader, Dataset

from contraseg.datamodules.base import TransformedDataset
from contraseg.datamodules.datasets.io import DataFormatError
from contraseg.datamodules.datasets.medical import (
    BTCV,
    BTCV8,
    HIPPOCAMPUS,
    MMWHS,
    Protocol,
    btcv_subjects,
    hippocampus_subjects,
    mmwhs_subjects,
    pattern_subjects,
)
from contraseg.datamodules.datasets.synthetic_volumes import SyntheticVolumes
from contraseg.datamodules.sampling import eval_loader
from contraseg.datamodules.segmentation import SegmentationDataModule
from contraseg.datamodules.volumes import (
    SliceDataset,
    VolumeDataset,
    VolumeStore,
    foreground_weighted_index,
)

__all__ = [
    "BTCVDataModule",
    "HippocampusDataModule",
    "MMWHSDataModule",
    "MedicalDataModule",
    "NiftiFolderDataModule",
    "SyntheticMedicalDataModule",
]


class MedicalDataModule(SegmentationDataModule):
    """Slices of subjects for training, volumes for evaluation (see the module docstring).

    Args:
        protocol: The data set's protocol (subclasses fix it).
        val_subjects: Validation subjects when the protocol has no official test list: a
            fraction (< 1) or a count.
        slice_size: In-plane resize of every slice (``None``: native grid).
        context: Neighbouring slices per side as extra channels (2.5-D).
        channels: Repeat the slice channels to this many (e.g. 3), ``None`` for none.
        foreground_share: Share of foreground slices in a training epoch (``None``: all
            slices once).
        cache_dir: Folder for ``.npy`` copies of the decoded volumes.
        labelled_subjects: Number of labelled training subjects (overrides
            ``label_fraction``, which reads ``1`` as 100%).
        crop_size: Training crop side (``null``: ``slice_size``, else 64).
        mean: Normalisation mean per input channel (``null``: 0.5 for CT, whose windowed
            intensities lie in [0, 1]; 0 for MR, z-scored per volume).
        std: Normalisation std (``null``: 0.5 for CT, 1 for MR).
        **kwargs: :class:`~contraseg.datamodules.segmentation.SegmentationDataModule` arguments
            (``label_fraction`` counts subjects here).
    """

    tiny_crop = 32
    tiny_label_fraction = 2

    @classmethod
    def tiny_test_args(cls, init_args: dict[str, Any]) -> list[str]:  # noqa: D102
        args = super().tiny_test_args(init_args)
        if init_args.get("labelled_subjects") is not None:
            args += ["--data.init_args.labelled_subjects", "1"]
        return args

    def __init__(
        self,
        val_subjects: float = 0.25,
        slice_size: int | None = None,
        context: int = 0,
        channels: int | None = None,
        foreground_share: float | None = 0.8,
        cache_dir: str | None = None,
        labelled_subjects: int | None = None,
        crop_size: int | None = None,
        mean: Sequence[float] | None = None,
        std: Sequence[float] | None = None,
        **kwargs: Any,
    ) -> None:
        protocol = self.protocol  # set by the subclass before calling this constructor
        if foreground_share is not None and not 0 < foreground_share < 1:
            raise ValueError(
                f"data.foreground_share must be in (0, 1) or null, got {foreground_share}"
            )
        if context < 0:
            raise ValueError(f"data.context must be >= 0, got {context}")
        norm = (0.5,) if protocol.modality == "ct" else (0.0,)
        scale = (0.5,) if protocol.modality == "ct" else (1.0,)
        n_ch = channels or 2 * context + 1
        super().__init__(
            crop_size=crop_size if crop_size is not None else slice_size or 64,
            mean=list(norm) * n_ch if mean is None else mean,
            std=list(scale) * n_ch if std is None else std,
            **kwargs,
        )
        self.val_subjects_arg = val_subjects
        if labelled_subjects is not None:
            if labelled_subjects < 1:
                raise ValueError(f"data.labelled_subjects must be >= 1, got {labelled_subjects}")
            self.label_fraction = int(labelled_subjects)
        self.slice_size, self.context, self.channels = slice_size, context, channels
        self.foreground_share, self.cache_dir = foreground_share, cache_dir
        self.name, self.classes = protocol.name, protocol.classes
        self.num_classes = protocol.num_classes
        self._store: VolumeStore | None = None

    protocol: Protocol  # the data set's protocol, set by each subclass

    # ---------------------------------------------------------------- subclasses
    def make_store(self) -> VolumeStore:
        """The :class:`VolumeStore` over every subject of the data set."""
        raise NotImplementedError

    # ---------------------------------------------------------------- subjects
    @property
    def store(self) -> VolumeStore:
        """The (lazily built) volume store."""
        if self._store is None:
            self._store = self.make_store()
        return self._store

    def split(self) -> tuple[list[str], list[str]]:
        """``(train, val)`` subject ids: official test cases or a seeded subject split."""
        ids = list(self.store.ids)
        official = [s for s in self.protocol.test_subjects if s in ids]
        if official:
            val = official
        else:
            n = self.val_subjects_arg
            n_val = int(round(n * len(ids))) if n < 1 else int(n)
            n_val = min(max(n_val, 1), len(ids) - 1)
            g = torch.Generator().manual_seed(self.seed + 4099)
            val = sorted(ids[i] for i in torch.randperm(len(ids), generator=g)[:n_val].tolist())
        train = [s for s in ids if s not in set(val)]
        if set(train) & set(val):  # pragma: no cover - by construction
            raise DataFormatError(f"{self.name}: subjects on both sides of the split")
        return train, val

    def train_names(self) -> list[str]:
        """Training subject ids (``label_fraction`` selects among them)."""
        return self.split()[0]

    def _slices(self, ids: Sequence[str]) -> SliceDataset:
        return SliceDataset(self.store, ids, context=self.context, channels=self.channels)

    def build(self, split: str, names: Sequence[str] | None = None) -> Dataset:
        """All slices of the ``split``'s subjects (or of the subjects ``names``)."""
        train, val = self.split()
        ids = list(names) if names is not None else (train if split == "train" else val)
        return self._slices(ids)

    def setup(self, stage: str | None = None) -> None:
        """Check the subject split and log the class voxel counts of both sides."""
        train, val = self.split()
        overlap = set(train) & set(val)
        if overlap:
            raise DataFormatError(f"{self.name}: subjects {sorted(overlap)} in train and val")
        labelled = self.labeled_names()
        for tag, ids in (("train (labelled)", labelled), ("val", val)):
            counts = torch.zeros(self.num_classes, dtype=torch.long)
            for sid in ids:
                counts += torch.bincount(
                    torch.from_numpy(self.store.load(sid).label.ravel().astype("int64")),
                    minlength=self.num_classes,
                )
            share = ", ".join(f"{c}={int(n)}" for c, n in zip(self.classes, counts))
            rank_zero_info(f"{self.name} {tag}: {len(ids)} subjects; voxels {share}")

    # ---------------------------------------------------------------- datasets
    def train_dataset(self) -> Dataset:
        """Foreground-weighted slices of the labelled subjects, jointly augmented."""
        names = self.labeled_names()
        if not names:
            raise ValueError(f"{self.name}: no labelled training subject")
        slices = self.store.slice_counts(names)
        index = (
            None
            if self.foreground_share is None
            else foreground_weighted_index(slices, self.foreground_share, self.seed)
        )
        data = SliceDataset(self.store, names, index, self.context, self.channels)
        return TransformedDataset(data, self.train_transform())

    def val_dataset(self) -> Dataset:
        """Whole validation volumes (fine-tuning) or their slices (pretraining callbacks)."""
        if self.pretrain_views is not None:
            return self.eval_dataset("val")
        return VolumeDataset(
            self.store, self.split()[1], self.mean, self.std, self.context, self.channels
        )

    def val_dataloader(self) -> DataLoader:
        """One volume per batch in fine-tuning mode."""
        dataset = self.val_dataset()
        if isinstance(dataset, VolumeDataset):
            return eval_loader(dataset, 1, self.num_workers)
        return self._loader(dataset)


class SyntheticMedicalDataModule(MedicalDataModule):
    """The embedded synthetic volumes (:mod:`contraseg.datamodules.datasets.synthetic_volumes`).

    Args:
        num_subjects: Subjects generated.
        shape: ``(D, H, W)`` of every subject.
        num_structures: Labelled structures.
        domain: 0 CT-like, >= 1 MR-like acquisition regime.
        volume_seed: Seed of the subjects (``seed`` picks the labelled ones).
        crop_size: Training crop side (``null``: the slice height, ``shape[1]``).
        **kwargs: :class:`MedicalDataModule` arguments.
    """

    def __init__(
        self,
        num_subjects: int = 16,
        shape: tuple[int, int, int] = (24, 64, 64),
        num_structures: int = 4,
        domain: int = 0,
        volume_seed: int = 0,
        crop_size: int | None = None,
        **kwargs: Any,
    ) -> None:
        self.volumes = SyntheticVolumes(num_subjects, shape, num_structures, domain, volume_seed)
        self.protocol = self.volumes.protocol
        super().__init__(crop_size=shape[1] if crop_size is None else crop_size, **kwargs)

    def make_store(self) -> VolumeStore:  # noqa: D102
        return VolumeStore(
            self.protocol,
            synthetic=self.volumes,
            slice_size=self.slice_size,
            cache_dir=self.cache_dir,
        )


class _OnDisk(MedicalDataModule):
    def __init__(self, root: str, **kwargs: Any) -> None:
        self.root = root
        super().__init__(**kwargs)

    def subjects(self) -> list:
        raise NotImplementedError

    def make_store(self) -> VolumeStore:  # noqa: D102
        return VolumeStore(
            self.protocol, self.subjects(), slice_size=self.slice_size, cache_dir=self.cache_dir
        )


class BTCVDataModule(_OnDisk):
    """BTCV (Synapse) abdomen CT: 13 organs, or the TransUNet 8-organ protocol.

    Args:
        root: Folder holding ``RawData/Training/{img,label}``.
        organs: ``8`` (TransUNet protocol, its 12 test cases as validation) or ``13``.
        **kwargs: :class:`MedicalDataModule` arguments (``slice_size: 224`` as TransUNet).
    """

    def __init__(self, root: str, organs: int = 8, **kwargs: Any) -> None:
        if organs not in (8, 13):
            raise ValueError(f"data.organs must be 8 or 13, got {organs}")
        self.protocol = BTCV8 if organs == 8 else BTCV
        super().__init__(root, **kwargs)

    def subjects(self) -> list:  # noqa: D102
        return btcv_subjects(self.root)


class MMWHSDataModule(_OnDisk):
    """MM-WHS whole-heart CT (or MR): 7 structures from raw values 205 ... 850.

    Args:
        root: Folder holding ``ct_train_<id>_{image,label}.nii.gz`` (any depth).
        modality: ``ct`` or ``mr`` files.
        **kwargs: :class:`MedicalDataModule` arguments (Hu et al.: ``slice_size: 160``).
    """

    def __init__(self, root: str, modality: str = "ct", **kwargs: Any) -> None:
        if modality not in ("ct", "mr"):
            raise ValueError(f"data.modality must be 'ct' or 'mr', got {modality!r}")
        self.modality = modality
        mr = Protocol("mmwhs_mr", MMWHS.classes, MMWHS.label_table, "mr", None)
        self.protocol = MMWHS if modality == "ct" else mr
        super().__init__(root, **kwargs)

    def subjects(self) -> list:  # noqa: D102
        return mmwhs_subjects(self.root, self.modality)


class HippocampusDataModule(_OnDisk):
    """MSD Task04 Hippocampus MR (anterior / posterior; Hu et al.: 64 x 64 slices)."""

    def __init__(self, root: str, **kwargs: Any) -> None:
        self.protocol = HIPPOCAMPUS
        super().__init__(root, **kwargs)

    def subjects(self) -> list:  # noqa: D102
        return hippocampus_subjects(self.root)


class NiftiFolderDataModule(_OnDisk):
    """Users' own subjects: image / label NIfTI pairs by ``{id}`` pattern.

    Args:
        root: Data set folder.
        classes: Class names, background first.
        image_pattern: Image path pattern relative to ``root``.
        label_pattern: Label path pattern relative to ``root``.
        modality: ``ct`` (HU ``window``) or ``mr`` (percentile z-score).
        window: CT window in HU.
        label_values: Raw label value of every class in order (default ``0..C-1``).
        name: Name used for split files.
        **kwargs: :class:`MedicalDataModule` arguments.
    """

    def __init__(
        self,
        root: str,
        classes: Sequence[str] = ("background", "foreground"),
        image_pattern: str = "images/{id}.nii.gz",
        label_pattern: str = "labels/{id}.nii.gz",
        modality: str = "ct",
        window: tuple[float, float] = (-125.0, 275.0),
        label_values: Sequence[int] | None = None,
        name: str = "nifti_folder",
        **kwargs: Any,
    ) -> None:
        values = list(range(len(classes))) if label_values is None else list(label_values)
        if len(values) != len(classes):
            raise ValueError(
                f"data.label_values has {len(values)} entries for {len(classes)} classes"
            )
        self.patterns = (image_pattern, label_pattern)
        window_hu = tuple(window) if modality == "ct" else None
        table = {v: i for i, v in enumerate(values)}
        self.protocol = Protocol(name, tuple(classes), table, modality, window_hu)
        super().__init__(root, **kwargs)

    def subjects(self) -> list:  # noqa: D102
        return pattern_subjects(self.root, *self.patterns)
