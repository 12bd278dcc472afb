"""LightningDataModules over the synthetic scenes (:mod:`contraseg.datamodules.datasets.synthetic`).

:class:`SyntheticDataModule` serves image-level pretraining (the quickstart),
:class:`SyntheticSegmentationDataModule` segmentation with label fractions and the
unlabeled multi-view mode; both generate their data in memory, deterministically by seed.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from torch.utils.data import Dataset

from contraseg.datamodules.base import PretrainDataModule
from contraseg.datamodules.datasets.synthetic import SHAPES, SyntheticScenes
from contraseg.datamodules.segmentation import SegmentationDataModule


class SyntheticDataModule(PretrainDataModule):
    """Pretraining on :class:`SyntheticScenes` (the embedded default, no downloads).

    Args:
        num_train: Training images.
        num_val: Validation images (generated from a different seed).
        image_size: Rendered image size; views are cropped to ``augment.size``.
        num_classes: Object classes.
        max_objects: Maximum objects per image.
        data_seed: Seed of the generated data (val uses ``data_seed + 1``).
        **kwargs: :class:`~contraseg.datamodules.base.PretrainDataModule` arguments.
    """

    def __init__(
        self,
        num_train: int = 4096,
        num_val: int = 1024,
        image_size: int = 64,
        num_classes: int = 6,
        max_objects: int = 3,
        data_seed: int = 0,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.num_train, self.num_val, self.image_size = num_train, num_val, image_size
        self.num_classes, self.max_objects, self.data_seed = num_classes, max_objects, data_seed
        # fail fast on bad arguments
        SyntheticScenes(1, image_size, num_classes, max_objects, data_seed)

    @classmethod
    def tiny_test_args(cls, init_args: dict[str, Any]) -> list[str]:  # noqa: D102
        return [*super().tiny_test_args(init_args), "--data.init_args.num_train", "16",
                "--data.init_args.num_val", "8"]  # fmt: skip

    def build_datasets(self) -> tuple[SyntheticScenes, SyntheticScenes]:  # noqa: D102
        args = (self.image_size, self.num_classes, self.max_objects)
        return (
            SyntheticScenes(self.num_train, *args, seed=2 * self.data_seed),
            SyntheticScenes(self.num_val, *args, seed=2 * self.data_seed + 1),
        )


class NamedScenes(Dataset):
    """Items of a generated scene set selected by name (the zero-padded index), with names.

    Args:
        scenes: Any data set indexed by int (``SyntheticScenes``, ``TexturedScenes``).
        names: Zero-padded indices of the selected items.
        keys: Item entries kept (besides ``name``).
    """

    def __init__(
        self, scenes: Dataset, names: list[str], keys: Sequence[str] = ("image", "mask")
    ) -> None:
        self.scenes, self.names, self.keys = scenes, names, tuple(keys)

    def __len__(self) -> int:
        return len(self.names)

    def __getitem__(self, index: int) -> dict[str, Any]:  # noqa: D105
        name = self.names[index]
        item = self.scenes[int(name)]
        return {**{k: item[k] for k in self.keys}, "name": name}


class SyntheticSegmentationDataModule(SegmentationDataModule):
    """Segmentation of :class:`SyntheticScenes`: background + one class per object type.

    Args:
        num_train: Training images (the pool that label fractions are drawn from).
        num_val: Validation images (different seed).
        image_size: Rendered size.
        num_object_classes: Object classes (``num_classes = num_object_classes + 1``).
        max_objects: Maximum objects per image.
        data_seed: Seed of the generated data.
        crop_size: Training crop side (``null``: ``image_size``, the whole scene).
        mean: Normalisation mean (the scenes' 0.5 grey).
        std: Normalisation std.
        **kwargs: :class:`~contraseg.datamodules.segmentation.SegmentationDataModule` arguments.
    """

    name = "synthetic"
    tiny_crop, tiny_batch_size, tiny_label_fraction = None, 4, 8  # 32 px scenes: tiny already

    @classmethod
    def tiny_test_args(cls, init_args: dict[str, Any]) -> list[str]:  # noqa: D102
        return [*super().tiny_test_args(init_args), "--data.init_args.num_train", "200",
                "--data.init_args.num_val", "8"]  # fmt: skip

    def __init__(
        self,
        num_train: int = 2048,
        num_val: int = 256,
        image_size: int = 64,
        num_object_classes: int = 6,
        max_objects: int = 3,
        data_seed: int = 0,
        crop_size: int | None = None,
        mean: Sequence[float] = (0.5, 0.5, 0.5),
        std: Sequence[float] = (0.25, 0.25, 0.25),
        **kwargs: Any,
    ) -> None:
        super().__init__(crop_size=image_size if crop_size is None else crop_size, mean=mean,
                         std=std, **kwargs)  # fmt: skip
        self.num_train, self.num_val, self.image_size = num_train, num_val, image_size
        self.max_objects, self.data_seed = max_objects, data_seed
        self.classes = ["background", *SHAPES[:num_object_classes]]
        self.num_classes = num_object_classes + 1
        SyntheticScenes(1, image_size, num_object_classes, max_objects, data_seed)

    def _scenes(self, split: str) -> SyntheticScenes:
        n = self.num_train if split == "train" else self.num_val
        seed = 2 * self.data_seed + (0 if split == "train" else 1)
        return SyntheticScenes(n, self.image_size, self.num_classes - 1, self.max_objects, seed)

    def train_names(self) -> list[str]:  # noqa: D102
        return [f"{i:06d}" for i in range(self.num_train)]

    def build(self, split: str, names: Sequence[str] | None = None) -> Dataset:  # noqa: D102
        scenes = self._scenes(split)
        all_names = [f"{i:06d}" for i in range(len(scenes))]
        return NamedScenes(scenes, list(names) if names is not None else all_names)
