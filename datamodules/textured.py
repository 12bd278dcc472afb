"""LightningDataModules over the segmentation-scale benchmark (``datasets.textured_scenes``).

:class:`TexturedScenesDataModule` serves image-level pretraining (SimCLR, DirectCLR, with the
majority class as the kNN/probe label); :class:`TexturedSegmentationDataModule` serves
segmentation with label fractions and the unlabeled multi-view mode of the dense methods.
Both take the generator's variants (clutter, class imbalance, domains).  Validation scenes
come from another seed and, with ``balanced_val`` (default), from uniform classes.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from torch.utils.data import Dataset

from datamodules.base import PretrainDataModule
from datamodules.datasets.textured_scenes import TEXTURES, TexturedScenes
from datamodules.segmentation import SegmentationDataModule
from datamodules.synthetic import NamedScenes


class _SceneArgs:
    """The generator arguments both modules share, checked once at configuration."""

    def _set_scene_args(self, **scene: Any) -> None:
        self.scene_args = dict(scene)
        self.balanced_val = self.scene_args.pop("balanced_val")
        self.data_seed = self.scene_args.pop("data_seed")
        TexturedScenes(1, **self.scene_args, seed=self.data_seed)  # fail fast on bad arguments

    def scenes(self, split: str, num_samples: int) -> TexturedScenes:
        """The ``train`` or ``val`` generator (seeds ``2 s`` and ``2 s + 1``)."""
        args = dict(self.scene_args)
        if split != "train" and self.balanced_val:
            args["imbalance_ratio"] = 1.0
        seed = 2 * self.data_seed + (0 if split == "train" else 1)
        return TexturedScenes(num_samples, **args, seed=seed)


class TexturedScenesDataModule(_SceneArgs, PretrainDataModule):
    """Image-level pretraining on :class:`TexturedScenes` (label: the largest visible class).

    Args:
        num_train: Training scenes.
        num_val: Validation scenes.
        image_size: Rendered size (views are cropped to ``augment.size``).
        num_classes: Object classes (texture families).
        min_objects: Fewest objects per scene.
        max_objects: Most objects per scene.
        period: Mean texture period (px).
        clutter: Distractors per scene.
        clutter_textured: Distractors painted with class textures (still background).
        imbalance_ratio: Most / least frequent class in training.
        num_domains: Rendering regimes.
        domain: Restrict every scene to this domain.
        balanced_val: Validation classes uniform whatever ``imbalance_ratio``.
        data_seed: Seed of the generated data.
        **kwargs: :class:`~datamodules.base.PretrainDataModule` arguments.
    """

    def __init__(
        self,
        num_train: int = 4096,
        num_val: int = 512,
        image_size: int = 96,
        num_classes: int = 6,
        min_objects: int = 2,
        max_objects: int = 5,
        period: float = 8.0,
        clutter: int = 0,
        imbalance_ratio: float = 1.0,
        num_domains: int = 1,
        domain: int | None = None,
        balanced_val: bool = True,
        data_seed: int = 0,
        clutter_textured: bool = False,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.num_train, self.num_val, self.num_classes = num_train, num_val, num_classes
        self._set_scene_args(
            image_size=image_size, num_classes=num_classes, min_objects=min_objects,
            max_objects=max_objects, period=period, clutter=clutter,
            clutter_textured=clutter_textured, imbalance_ratio=imbalance_ratio,
            num_domains=num_domains, domain=domain,
            balanced_val=balanced_val, data_seed=data_seed,
        )  # fmt: skip

    @classmethod
    def tiny_test_args(cls, init_args: dict[str, Any]) -> list[str]:  # noqa: D102
        return [*super().tiny_test_args(init_args), "--data.init_args.num_train", "16",
                "--data.init_args.num_val", "8"]  # fmt: skip

    def build_datasets(self) -> tuple[TexturedScenes, TexturedScenes]:  # noqa: D102
        return self.scenes("train", self.num_train), self.scenes("val", self.num_val)


class TexturedSegmentationDataModule(_SceneArgs, SegmentationDataModule):
    """Segmentation of :class:`TexturedScenes`: background + one class per texture family.

    Args:
        num_train: Training scenes (the pool label fractions are drawn from).
        num_val: Validation scenes.
        image_size: Rendered size (default crop: the whole scene).
        num_object_classes: Texture classes (``num_classes = num_object_classes + 1``).
        min_objects: Fewest objects per scene.
        max_objects: Most objects per scene.
        period: Mean texture period (px).
        clutter: Distractors per scene (labelled background).
        clutter_textured: Distractors painted with class textures (still background).
        imbalance_ratio: Most / least frequent class in training.
        num_domains: Rendering regimes (items carry ``"domain"``).
        domain: Restrict every scene to this domain.
        balanced_val: Validation classes uniform whatever ``imbalance_ratio``.
        data_seed: Seed of the generated data.
        **kwargs: :class:`~datamodules.segmentation.SegmentationDataModule` arguments.
    """

    name = "textured"
    tiny_crop, tiny_batch_size, tiny_label_fraction = 32, 2, 4

    @classmethod
    def tiny_test_args(cls, init_args: dict[str, Any]) -> list[str]:  # noqa: D102
        return [*super().tiny_test_args(init_args), "--data.init_args.num_train", "16",
                "--data.init_args.num_val", "4", "--data.init_args.image_size", "48"]  # fmt: skip

    def __init__(
        self,
        num_train: int = 2048,
        num_val: int = 256,
        image_size: int = 96,
        num_object_classes: int = 6,
        min_objects: int = 2,
        max_objects: int = 5,
        period: float = 8.0,
        clutter: int = 0,
        imbalance_ratio: float = 1.0,
        num_domains: int = 1,
        domain: int | None = None,
        balanced_val: bool = True,
        data_seed: int = 0,
        clutter_textured: bool = False,
        **kwargs: Any,
    ) -> None:
        for key, value in (("crop_size", image_size), ("mean", [0.5] * 3), ("std", [0.25] * 3)):
            if kwargs.get(key) is None:
                kwargs[key] = value
        super().__init__(**kwargs)
        self.num_train, self.num_val = num_train, num_val
        self.classes = ["background", *TEXTURES[:num_object_classes]]
        self.num_classes = num_object_classes + 1
        self._set_scene_args(
            image_size=image_size, num_classes=num_object_classes, min_objects=min_objects,
            max_objects=max_objects, period=period, clutter=clutter,
            clutter_textured=clutter_textured, imbalance_ratio=imbalance_ratio,
            num_domains=num_domains, domain=domain,
            balanced_val=balanced_val, data_seed=data_seed,
        )  # fmt: skip

    def train_names(self) -> list[str]:  # noqa: D102
        return [f"{i:06d}" for i in range(self.num_train)]

    def build(self, split: str, names: Sequence[str] | None = None) -> Dataset:  # noqa: D102
        scenes = self.scenes(split, self.num_train if split == "train" else self.num_val)
        all_names = [f"{i:06d}" for i in range(len(scenes))]
        selected = list(names) if names is not None else all_names
        return NamedScenes(scenes, selected, keys=("image", "mask", "domain"))
