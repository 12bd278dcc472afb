"""scikit-learn's handwritten digits (UCI optdigits test part: 1,797 images, 8x8, 10 classes).

Bundled with scikit-learn (``sklearn.datasets.load_digits``), so a real image data set is
available offline.  Pixels are 0..16; they are scaled to ``uint8`` (x 255/16) and upsampled
to ``size`` px (bilinear, the condensation literature's 32 px).  There is no official split:
a seeded, stratified ``test_fraction`` is held out (the same for every run with one seed).

``background > 0`` composites every digit (pixel-wise maximum) over a class-irrelevant
background of that amplitude: a sinusoidal grating of random orientation, frequency (2-6
cycles per image) and phase plus three Gaussian blobs, drawn per image from a seed of its
own split, so most of an image's energy carries no class information (the DCC paper's
task-irrelevant setting).
"""

from __future__ import annotations

import math
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset
from torchvision import tv_tensors

__all__ = ["DigitsDataset"]


def _split(labels: np.ndarray, test_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Stratified seeded split of indices (per class, ``round(n_c * test_fraction)`` held out)."""
    rng = np.random.default_rng(seed)
    train, test = [], []
    for c in np.unique(labels):
        idx = rng.permutation(np.flatnonzero(labels == c))
        k = int(round(len(idx) * test_fraction))
        test.append(idx[:k])
        train.append(idx[k:])
    return np.sort(np.concatenate(train)), np.sort(np.concatenate(test))


def backgrounds(n: int, size: int, seed: int) -> torch.Tensor:
    """``(n, 1, size, size)`` class-irrelevant backgrounds in ``[0, 1]`` (gratings + blobs)."""
    g = torch.Generator().manual_seed(seed)
    yy, xx = torch.meshgrid(torch.arange(size).float(), torch.arange(size).float(), indexing="ij")
    theta = torch.rand(n, 1, 1, generator=g) * math.pi
    freq = 2 + 4 * torch.rand(n, 1, 1, generator=g)
    phase = 2 * math.pi * torch.rand(n, 1, 1, generator=g)
    proj = xx * torch.cos(theta) + yy * torch.sin(theta)
    grating = 0.5 + 0.5 * torch.sin(2 * math.pi * freq * proj / size + phase)
    centres = torch.rand(n, 3, 2, generator=g) * size
    sigma = size * (0.08 + 0.12 * torch.rand(n, 3, 1, 1, generator=g))
    d2 = (yy - centres[..., 0, None, None]) ** 2 + (xx - centres[..., 1, None, None]) ** 2
    blobs = torch.exp(-d2 / (2 * sigma**2)).amax(1)
    return (0.6 * grating + 0.6 * blobs).clamp(0, 1).unsqueeze(1)


class DigitsDataset(Dataset):
    """One split of the digits as ``{"image": uint8 (1, size, size), "label"}``.

    Args:
        split: ``train`` or ``test``.
        size: Output side in pixels.
        test_fraction: Held-out fraction per class.
        seed: Seed of the split (and of the backgrounds).
        background: Amplitude of the class-irrelevant background (0: none).
    """

    def __init__(self, split: Literal["train", "test"] = "train", size: int = 32,
                 test_fraction: float = 0.3, seed: int = 0,
                 background: float = 0.0) -> None:  # fmt: skip
        from sklearn.datasets import load_digits

        if split not in ("train", "test"):
            raise ValueError(f"digits split must be 'train' or 'test', got {split!r}")
        if not 0 < test_fraction < 1:
            raise ValueError(f"digits test_fraction must be in (0, 1), got {test_fraction}")
        raw = load_digits()
        images, labels = raw.images.astype(np.float32), raw.target.astype(np.int64)
        train, test = _split(labels, test_fraction, seed)
        idx = train if split == "train" else test
        x = torch.from_numpy(images[idx] * (255.0 / 16.0)).unsqueeze(1)
        if size != 8:
            x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)
        if background < 0:
            raise ValueError(f"digits background must be >= 0, got {background}")
        if background > 0:
            bg = backgrounds(len(x), size, 2 * seed + (split == "test")) * (255.0 * background)
            x = torch.maximum(x, bg)
        self.images = x.round().clamp(0, 255).to(torch.uint8)
        self.targets = labels[idx].tolist()
        self.classes = [str(c) for c in range(10)]

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, index: int) -> dict[str, Any]:  # noqa: D105
        return {"image": tv_tensors.Image(self.images[index]), "label": int(self.targets[index])}
