"""LightningDataModules over the segmentation-scale synthetic benchmarks (two generators).

The generators: :mod:`contraseg.datamodules.datasets.textured_scenes` and
:mod:`contraseg.datamodules.datasets.digit_scenes`.
:class:`TexturedScenesDataModule` serves image-level pretraining (SimCLR, DirectCLR, with the
majority class as the kNN/probe label); :class:`TexturedSegmentationDataModule` serves
segmentation with label fractions and the unlabeled multi-view mode of the dense methods.
Both take the generator's variants (clutter, class imbalance, domains).  Validation scenes
come from another seed and, with ``balanced_val`` (default), from uniform classes.
:class:`DigitScenesDataModule` and :class:`DigitSegmentationDataModule` are the same two
modules over the handwritten-digit scenes (classes are shapes), validation scenes drawn from
held-out glyphs only.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch.utils.data import Dataset

from contraseg.datamodules.base import PretrainDataModule, TransformedDataset
from contraseg.datamodules.batch_augment import device_nearest, device_views
from contraseg.datamodules.datasets.digit_scenes import DIGIT_CLASSES, DigitScenes, DigitSceneSpec
from contraseg.datamodules.datasets.textured_scenes import TEXTURES, SceneSpec, TexturedScenes
from contraseg.datamodules.segmentation import SegmentationDataModule
from contraseg.datamodules.synthetic import NamedScenes
from contraseg.datamodules.transforms import ViewDraws


class _SceneArgs:
    """The generator's :class:`SceneSpec` both modules share, checked once at configuration."""

    generator: type[TexturedScenes] = TexturedScenes
    spec: type = SceneSpec

    def _set_scene(self, scene: Any, data_seed: int, balanced_val: bool = False) -> None:
        if isinstance(scene, Mapping):  # from Python: the dataclass's own defaults fill in
            scene = self.spec(**scene)
        if not isinstance(scene, self.spec):
            raise TypeError(f"data.scene must be a {self.spec.__name__} (or its fields), got "
                            f"{type(scene).__name__}")  # fmt: skip
        self.scene, self.data_seed, self.balanced_val = scene, data_seed, balanced_val
        self.scenes("train", 1)  # fail fast on bad arguments

    def generator_args(self, split: str) -> dict[str, Any]:
        """The generator's arguments for ``split`` (validation: uniform classes if balanced)."""
        if split != "train" and self.balanced_val:
            return {"scene": dataclasses.replace(self.scene, imbalance_ratio=1.0)}
        return {"scene": self.scene}

    def scenes(self, split: str, num_samples: int) -> TexturedScenes:
        """The ``train`` or ``val`` generator (seeds ``2 s`` and ``2 s + 1``)."""
        seed = 2 * self.data_seed + (0 if split == "train" else 1)
        return self.generator(num_samples, **self.generator_args(split), seed=seed)


class _ScenePretrain(_SceneArgs, PretrainDataModule):
    """Image-level pretraining on a scene generator (``generator`` of the subclass)."""

    @classmethod
    def tiny_test_args(cls, init_args: dict[str, Any]) -> list[str]:  # noqa: D102
        return [*super().tiny_test_args(init_args), "--data.init_args.num_train", "16",
                "--data.init_args.num_val", "8"]  # fmt: skip

    def build_datasets(self) -> tuple[TexturedScenes, TexturedScenes]:  # noqa: D102
        return self.scenes("train", self.num_train), self.scenes("val", self.num_val)

    def train_dataset(self) -> Dataset:
        """Multi-view training set; with ``render_on_device`` only draws (see the class)."""
        if not self.render_on_device:
            return super().train_dataset()
        if self.attention_mask is not None or self.train_set_file is not None:
            raise ValueError("data.render_on_device renders the scenes themselves: it cannot be "
                             "combined with data.attention_mask or data.train_set")  # fmt: skip
        scenes = self._raw_datasets()[0]
        views = ViewDraws(self.view_configs(), (scenes.size,) * 2)
        return TransformedDataset(_SceneDraws(scenes), views)

    def on_after_batch_transfer(self, batch: Any, dataloader_idx: int = 0) -> Any:
        """Device-rendered batches: render, crop the views; then the photometric half."""
        if isinstance(batch, dict) and "scene" in batch:
            scenes = self._raw_datasets()[0]
            rendered = scenes.render_draws(batch.pop("scene"))
            images = rendered["image"].float().div_(255)
            batch["views"] = device_views(images, batch.pop("geometry"), self.view_configs())
            batch["label"] = rendered["label"]
        return super().on_after_batch_transfer(batch, dataloader_idx)


class TexturedScenesDataModule(_ScenePretrain):
    """Image-level pretraining on :class:`TexturedScenes` (label: the largest visible class).

    Args:
        num_train: Training scenes.
        num_val: Validation scenes.
        scene: What the scenes look like (:class:`SceneSpec`: size, classes, objects, texture
            period, clutter, imbalance, domains); views are cropped to ``augment.size``.
        balanced_val: Validation classes uniform whatever ``scene.imbalance_ratio``.
        data_seed: Seed of the generated data.
        render_on_device: Render the training scenes on the training device, batched, inside
            ``on_after_batch_transfer`` (a GPU needs no CPU workers then): workers only draw
            each scene's random numbers and each view's crop, flip and photometric
            parameters; the views are cropped on the device (:func:`device_geometry`,
            bilinear with adaptive sampling instead of the workers' antialiased resize) and
            augmented there.  Validation and the kNN bank render in the workers as before.
        **kwargs: :class:`~contraseg.datamodules.base.PretrainDataModule` arguments.
    """

    def __init__(
        self,
        num_train: int = 4096,
        num_val: int = 512,
        scene: SceneSpec = SceneSpec(),  # noqa: B008
        balanced_val: bool = True,
        data_seed: int = 0,
        render_on_device: bool = False,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.num_train, self.num_val = num_train, num_val
        self.render_on_device = render_on_device
        self._set_scene(scene, data_seed, balanced_val)
        self.num_classes = self.scene.num_classes


class _SceneDraws(Dataset):
    """A scene's random numbers (:meth:`TexturedScenes.draw`) instead of its pixels.

    Args:
        scenes: The generator.
        indices: The scenes served (default: all).
    """

    def __init__(self, scenes: TexturedScenes, indices: Sequence[int] | None = None) -> None:
        self.scenes = scenes
        self.indices = list(indices) if indices is not None else list(range(len(scenes)))

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, index: int) -> dict[str, Any]:  # noqa: D105
        return {"scene": self.scenes.draw(self.indices[index]), "label": -1}  # label: rendered


class _SceneSegmentation(_SceneArgs, SegmentationDataModule):
    """Segmentation of a scene generator (``generator`` of the subclass)."""

    tiny_crop, tiny_batch_size, tiny_label_fraction = 32, 2, 4

    @classmethod
    def tiny_test_args(cls, init_args: dict[str, Any]) -> list[str]:  # noqa: D102
        return [*super().tiny_test_args(init_args), "--data.init_args.num_train", "16",
                "--data.init_args.num_val", "4",
                "--data.init_args.scene.image_size", "48"]  # fmt: skip

    def train_names(self) -> list[str]:  # noqa: D102
        return [f"{i:06d}" for i in range(self.num_train)]

    def build(self, split: str, names: Sequence[str] | None = None) -> Dataset:  # noqa: D102
        scenes = self.scenes(split, self.num_train if split == "train" else self.num_val)
        all_names = [f"{i:06d}" for i in range(len(scenes))]
        selected = list(names) if names is not None else all_names
        return NamedScenes(scenes, selected, keys=("image", "mask", "domain"))

    def unlabeled_dataset(self, views: Any, n_views: int = 2) -> Dataset:
        """The multi-view pretraining set; with ``render_on_device`` only draws (see the class)."""
        if not self.render_on_device:
            return super().unlabeled_dataset(views, n_views)
        names = self.labeled_names() if self.pretrain_subset == "labeled" else self.train_names()
        if not names:
            raise ValueError(f"{self.name}: the labeled training subset is empty (no image found)")
        scenes = self.scenes("train", self.num_train)
        cfgs = list(views) if isinstance(views, list) else [views] * n_views
        draws = _SceneDraws(scenes, [int(n) for n in names])
        return TransformedDataset(draws, ViewDraws(cfgs, (scenes.size,) * 2))

    def on_after_batch_transfer(self, batch: Any, dataloader_idx: int = 0) -> Any:
        """Device-rendered batches: views, masks and index maps made on the device."""
        if isinstance(batch, dict) and "scene" in batch:
            if "_device_scenes" not in self.__dict__:  # one generator: its grids stay cached
                self._device_scenes = self.scenes("train", self.num_train)
            rendered = self._device_scenes.render_draws(batch.pop("scene"))
            images, masks = rendered["image"].float().div_(255), rendered["mask"]
            n, size = images.shape[0], images.shape[-1]
            index = torch.arange(size * size, device=images.device).view(1, size, size)
            index = index.expand(n, -1, -1)
            geometry, cfgs = batch.pop("geometry"), self.view_configs()
            batch["views"] = device_views(images, geometry, cfgs)
            batch["masks"] = [device_nearest(masks, g, c.size) for g, c in zip(geometry, cfgs)]
            batch["index_maps"] = [device_nearest(index, g, c.size)
                                   for g, c in zip(geometry, cfgs)]  # fmt: skip
            batch["source_size"] = torch.tensor([size, size], device=images.device).expand(n, 2)
        return super().on_after_batch_transfer(batch, dataloader_idx)


class TexturedSegmentationDataModule(_SceneSegmentation):
    """Segmentation of :class:`TexturedScenes`: background + one class per texture family.

    Args:
        num_train: Training scenes (the pool label fractions are drawn from).
        num_val: Validation scenes.
        scene: What the scenes look like (:class:`SceneSpec`); ``scene.num_classes`` object
            classes plus the background (``num_classes = scene.num_classes + 1``); items carry
            ``"domain"``.
        balanced_val: Validation classes uniform whatever ``scene.imbalance_ratio``.
        data_seed: Seed of the generated data.
        render_on_device: In the pretraining mode (``pretrain_views``), render the training
            scenes on the training device and make the views, masks and pixel-index maps
            there (as :class:`TexturedScenesDataModule`'s option; masks and index maps by
            nearest sampling, exact).  Fine-tuning and validation render in the workers.
        crop_size: Training crop side (``null``: ``scene.image_size``, the whole scene).
        mean: Normalisation mean (the scenes' 0.5 grey).
        std: Normalisation std.
        **kwargs: :class:`~contraseg.datamodules.segmentation.SegmentationDataModule` arguments.
    """

    name = "textured"

    def __init__(
        self,
        num_train: int = 2048,
        num_val: int = 256,
        scene: SceneSpec = SceneSpec(),  # noqa: B008
        balanced_val: bool = True,
        data_seed: int = 0,
        render_on_device: bool = False,
        crop_size: int | None = None,
        mean: Sequence[float] = (0.5, 0.5, 0.5),
        std: Sequence[float] = (0.25, 0.25, 0.25),
        **kwargs: Any,
    ) -> None:
        self._set_scene(scene, data_seed, balanced_val)
        size = self.scene.image_size
        super().__init__(crop_size=size if crop_size is None else crop_size, mean=mean, std=std,
                         **kwargs)  # fmt: skip
        self.render_on_device = render_on_device
        self.num_train, self.num_val = num_train, num_val
        self.classes = ["background", *TEXTURES[: self.scene.num_classes]]
        self.num_classes = self.scene.num_classes + 1


class _DigitArgs(_SceneArgs):
    """Digit scenes: training scenes draw the training glyphs, validation the held-out ones."""

    generator = DigitScenes
    spec = DigitSceneSpec

    def generator_args(self, split: str) -> dict[str, Any]:  # noqa: D102
        return {"scene": self.scene, "digit_pool": "train" if split == "train" else "val"}


class DigitScenesDataModule(_DigitArgs, _ScenePretrain):
    """Image-level pretraining on :class:`DigitScenes` (label: the largest visible digit).

    Validation scenes are built only from held-out glyphs (``scene.holdout_fraction`` of each
    digit's 1,797 samples, a fixed seeded split), training scenes only from the others.

    Args:
        num_train: Training scenes.
        num_val: Validation scenes.
        scene: What the scenes look like (:class:`DigitSceneSpec`: size, digits per scene,
            glyph size and rotation, texture period, clutter, held-out share); views are
            cropped to ``augment.size``.
        data_seed: Seed of the generated scenes.
        render_on_device: Render training scenes on the training device (see
            :class:`TexturedScenesDataModule`).
        **kwargs: :class:`~contraseg.datamodules.base.PretrainDataModule` arguments.
    """

    def __init__(
        self,
        num_train: int = 4096,
        num_val: int = 512,
        scene: DigitSceneSpec = DigitSceneSpec(),  # noqa: B008
        data_seed: int = 0,
        render_on_device: bool = False,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.num_train, self.num_val, self.num_classes = num_train, num_val, len(DIGIT_CLASSES)
        self.render_on_device = render_on_device
        self._set_scene(scene, data_seed)


class DigitSegmentationDataModule(_DigitArgs, _SceneSegmentation):
    """Segmentation of :class:`DigitScenes`: background + the ten digits (shapes).

    Args:
        num_train: Training scenes (the pool label fractions are drawn from).
        num_val: Validation scenes (held-out glyphs only).
        scene: What the scenes look like (:class:`DigitSceneSpec`).
        data_seed: Seed of the generated scenes.
        render_on_device: Render pretraining scenes on the device (see
            :class:`TexturedSegmentationDataModule`).
        crop_size: Training crop side (``null``: ``scene.image_size``, the whole scene).
        mean: Normalisation mean (the scenes' 0.5 grey).
        std: Normalisation std.
        **kwargs: :class:`~contraseg.datamodules.segmentation.SegmentationDataModule` arguments.
    """

    name = "digit_scenes"

    def __init__(
        self,
        num_train: int = 2048,
        num_val: int = 256,
        scene: DigitSceneSpec = DigitSceneSpec(),  # noqa: B008
        data_seed: int = 0,
        render_on_device: bool = False,
        crop_size: int | None = None,
        mean: Sequence[float] = (0.5, 0.5, 0.5),
        std: Sequence[float] = (0.25, 0.25, 0.25),
        **kwargs: Any,
    ) -> None:
        self._set_scene(scene, data_seed)
        size = self.scene.image_size
        super().__init__(crop_size=size if crop_size is None else crop_size, mean=mean, std=std,
                         **kwargs)  # fmt: skip
        self.render_on_device = render_on_device
        self.num_train, self.num_val = num_train, num_val
        self.classes = ["background", *DIGIT_CLASSES]
        self.num_classes = len(self.classes)
