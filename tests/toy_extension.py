"""The "Add a method / a data set / an architecture" steps of docs/extending.md, done for real.

Kept in the tests on purpose: nothing here is shipped; the CLI reaches these classes by
``class_path: toy_extension.<Class>`` exactly as a user's own module.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import timm
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import Dataset
from torchvision import tv_tensors

from contraseg.datamodules.datasets.info import DatasetInfo
from contraseg.datamodules.segmentation import SegmentationDataModule
from contraseg.lightning_modules.components import Projector
from contraseg.lightning_modules.components.networks import register_architecture
from contraseg.lightning_modules.embedding_task import EmbeddingTask
from contraseg.lightning_modules.task import TaskLoss


# ---------------------------------------------------------------- step 1: the pure loss
def alignment_loss(z1: Tensor, z2: Tensor) -> Tensor:
    r"""Alignment of two views, :math:`\frac{1}{B}\sum_i \lVert \hat z^1_i - \hat z^2_i \rVert^2`.

    Args:
        z1: ``(B, D)`` embeddings of view 1.
        z2: ``(B, D)`` embeddings of view 2.

    Returns:
        Scalar float32 loss (``\hat z`` = L2-normalised ``z``).
    """
    z1, z2 = F.normalize(z1.float(), dim=1), F.normalize(z2.float(), dim=1)
    return (z1 - z2).pow(2).sum(dim=1).mean()


# ---------------------------------------------------------------- step 2: the method
class ToyAlignment(EmbeddingTask):
    """Encoder -> linear projector -> :func:`alignment_loss` of two views.

    Args:
        projector: Projector shape (the shared declaration; here linear, 16 wide).
        **kwargs: :class:`~contraseg.lightning_modules.embedding_task.EmbeddingTask` arguments.
    """

    def __init__(self, projector: Projector = Projector((), 16), **kwargs: Any) -> None:  # noqa: B008
        super().__init__(**kwargs)

    def configure_models(self) -> None:  # noqa: D102
        super().configure_models()
        self.projector = self.build_projector()

    def training_loss(self, batch: dict[str, Any]) -> TaskLoss:  # noqa: D102
        v1, v2 = batch["views"][:2]
        features = self.encoder(torch.cat([v1, v2]))
        z1, z2 = self.projector(features).chunk(2)
        return TaskLoss(alignment_loss(z1, z2), embedding=features[: v1.shape[0]])


# ---------------------------------------------------------------- step 3: the reader
STRIPES = DatasetInfo("stripes", ("background", "stripe"), ((0, 0, 0), (255, 255, 255)),
                      mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25), crop_size=32)  # fmt: skip


class StripesDataset(Dataset):
    """Images with one horizontal stripe and its mask, a pure function of ``(seed, index)``."""

    info = STRIPES

    def __init__(self, n: int, size: int = 32, seed: int = 0,
                 names: Sequence[str] | None = None) -> None:  # fmt: skip
        self.size, self.seed = size, seed
        self.names = list(names) if names is not None else [f"{i:04d}" for i in range(n)]

    def __len__(self) -> int:
        return len(self.names)

    def __getitem__(self, index: int) -> dict[str, Any]:
        name = self.names[index]
        g = torch.Generator().manual_seed(self.seed * 100_003 + int(name))
        top = int(torch.randint(0, self.size - 8, (1,), generator=g))
        mask = torch.zeros(self.size, self.size, dtype=torch.int64)
        mask[top : top + 8] = 1
        image = torch.randint(0, 96, (3, self.size, self.size), generator=g, dtype=torch.uint8)
        image[:, mask.bool()] += 128
        return {"image": tv_tensors.Image(image), "mask": tv_tensors.Mask(mask), "name": name}


# ---------------------------------------------------------------- step 4: the DataModule
class StripesDataModule(SegmentationDataModule):
    """Segmentation of :class:`StripesDataset` (label fractions and pretraining mode inherited).

    Args:
        num_train: Training images.
        num_val: Validation images.
        **kwargs: :class:`~contraseg.datamodules.segmentation.SegmentationDataModule` arguments.
    """

    info = STRIPES
    tiny_crop = 32

    def __init__(self, num_train: int = 64, num_val: int = 16, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.num_train, self.num_val = num_train, num_val

    def train_names(self) -> list[str]:  # noqa: D102
        return [f"{i:04d}" for i in range(self.num_train)]

    def build(self, split: str, names: Sequence[str] | None = None) -> Dataset:  # noqa: D102
        if split == "train":
            return StripesDataset(self.num_train, seed=0, names=names or self.train_names())
        return StripesDataset(self.num_val, seed=1)


# ---------------------------------------------------------------- step 5: an architecture
class _FeatureEncoder(nn.Module):
    """A timm model's feature maps, deepest last (the contract's ``net.encoder``)."""

    def __init__(self, name: str, in_channels: int) -> None:
        super().__init__()
        self.model = timm.create_model(name, features_only=True, in_chans=in_channels)
        self.out_channels = list(self.model.feature_info.channels())

    def forward(self, x: Tensor) -> list[Tensor]:  # noqa: D102
        return self.model(x)


class _TopDown(nn.Module):
    """The deepest map projected to ``width`` channels and upsampled to 1/4 resolution."""

    def __init__(self, channels: int, width: int) -> None:
        super().__init__()
        self.proj = nn.Conv2d(channels, width, kernel_size=1)

    def forward(self, features: list[Tensor]) -> Tensor:  # noqa: D102
        size = features[1].shape[-2:]  # the stride-4 map
        return F.interpolate(self.proj(features[-1]), size=size, mode="bilinear")


class ToyNet(nn.Module):
    """The smallest network of the contract: timm features -> 1x1 conv -> logits."""

    def __init__(self, encoder: str, in_channels: int, classes: int | None, width: int) -> None:
        super().__init__()
        self.encoder = _FeatureEncoder(encoder, in_channels)
        self.decoder = _TopDown(self.encoder.out_channels[-1], width)
        self.segmentation_head: nn.Module = nn.Identity()  # no classes: decoder features
        if classes:
            self.segmentation_head = nn.Sequential(nn.Conv2d(width, classes, kernel_size=1),
                                                   nn.Upsample(scale_factor=4.0))  # fmt: skip
        self.pad_multiple = 32

    def forward(self, x: Tensor) -> Tensor:  # noqa: D102
        return self.segmentation_head(self.decoder(self.encoder(x)))


@register_architecture("toy_topdown", "README example: timm features, one 1x1 conv")
def toy_topdown(encoder: str, in_channels: int, classes: int | None = None,
                **options: Any) -> nn.Module:  # fmt: skip
    """Build :class:`ToyNet` (``decoder_channels[0]`` its width; other options unused)."""
    channels = options.get("decoder_channels") or [32]
    return ToyNet(encoder, in_channels, classes, int(channels[0]))
