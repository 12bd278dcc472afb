r"""Foreground masks for hard attention (CLAWS): a vegetation index with Otsu's threshold.

CLAWS (Herrera-Gerena et al. 2021) multiplies a hard attention mask into each crop so the
encoder ignores the background; for plant imagery the mask comes from a vegetation index.
:func:`excess_green_mask` computes the excess-green index of Woebbecke et al. (1995) on
chromatic coordinates,

.. math::

    r, g, b = \frac{(R, G, B)}{R + G + B}, \qquad \mathrm{ExG} = 2g - r - b,

and keeps the pixels above Otsu's (1979) threshold, the one maximising the between-class
variance :math:`\omega_0 \omega_1 (\mu_0 - \mu_1)^2` of the index's 256-bin histogram.
:class:`AttentionMaskDataset` adds that mask to raw items as ``mask`` (1 = foreground), so
the view transforms crop and flip it with the image.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor
from torch.utils.data import Dataset
from torchvision import tv_tensors

__all__ = ["ATTENTION_SOURCES", "AttentionMaskDataset", "excess_green_mask", "otsu_threshold"]

ATTENTION_SOURCES = ("exg",)


def otsu_threshold(values: Tensor, bins: int = 256) -> float:
    """Otsu's threshold of ``values`` (any shape), over a ``bins``-bin histogram.

    Returns:
        The threshold (a bin edge between the two classes); the values' minimum when they
        are constant.
    """
    v = values.flatten().float()
    lo, hi = float(v.min()), float(v.max())
    if hi <= lo:
        return lo
    hist = torch.histc(v, bins=bins, min=lo, max=hi).double()
    centres = lo + (torch.arange(bins, dtype=torch.float64) + 0.5) * (hi - lo) / bins
    w0 = hist.cumsum(0)
    w1 = hist.sum() - w0
    m0 = (hist * centres).cumsum(0)
    mu0 = m0 / w0.clamp(min=1e-12)
    mu1 = (m0[-1] - m0) / w1.clamp(min=1e-12)
    between = w0 * w1 * (mu0 - mu1) ** 2
    k = int(between[:-1].argmax())  # split after bin k
    return lo + (k + 1) * (hi - lo) / bins


def excess_green_mask(image: Tensor) -> Tensor:
    """Foreground (vegetation) mask of an RGB image: ExG above its Otsu threshold.

    Args:
        image: ``(3, H, W)`` (or more bands: the first three are R, G, B), any dtype.

    Returns:
        ``(H, W)`` int64 mask, 1 = foreground.

    Raises:
        ValueError: If the image has fewer than 3 channels.
    """
    if image.ndim != 3 or image.shape[0] < 3:
        raise ValueError(f"excess_green_mask needs a (C>=3, H, W) image, got {tuple(image.shape)}")
    rgb = image[:3].double()
    chroma = rgb / rgb.sum(dim=0, keepdim=True).clamp(min=1e-12)
    exg = 2 * chroma[1] - chroma[0] - chroma[2]
    return (exg > otsu_threshold(exg)).long()


class AttentionMaskDataset(Dataset):
    """Raw items with a computed foreground ``mask`` (replacing any mask they had).

    Args:
        dataset: Raw data set with ``{"image": (C, H, W), ...}`` items.
        source: ``"exg"`` (:func:`excess_green_mask`).

    Raises:
        ValueError: On an unknown source.
    """

    def __init__(self, dataset: Dataset, source: str = "exg") -> None:
        if source not in ATTENTION_SOURCES:
            raise ValueError(f"attention mask source must be one of {ATTENTION_SOURCES}, "
                             f"got {source!r}")  # fmt: skip
        self.dataset, self.source = dataset, source

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def set_epoch(self, epoch: int) -> None:
        """Forward the epoch to a data set that has one."""
        if hasattr(self.dataset, "set_epoch"):
            self.dataset.set_epoch(epoch)

    def __getitem__(self, index: int) -> dict[str, Any]:  # noqa: D105
        item = dict(self.dataset[index])
        item["mask"] = tv_tensors.Mask(excess_green_mask(torch.as_tensor(item["image"])))
        return item
