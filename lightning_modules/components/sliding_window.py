"""Sliding-window inference for dense prediction on images larger than the model's input."""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor
from tqdm.auto import tqdm

__all__ = ["gaussian_window", "sliding_window_inference", "window_starts"]


def _pair(value: int | tuple[int, int], name: str) -> tuple[int, int]:
    pair = (value, value) if isinstance(value, int) else tuple(value)
    if len(pair) != 2 or any(int(v) <= 0 for v in pair):
        raise ValueError(f"{name} must be a positive int or a pair of them, got {value!r}")
    return int(pair[0]), int(pair[1])


def window_starts(size: int, window: int, stride: int) -> list[int]:
    """Start offsets of windows along one axis, the last one flush with the border.

    Args:
        size: Axis length (``>= window``).
        window: Window length.
        stride: Step between consecutive windows (``<= window``).

    Returns:
        Sorted, unique offsets ``0, stride, 2 * stride, ..., size - window``.
    """
    starts = list(range(0, size - window + 1, stride))
    if starts[-1] != size - window:
        starts.append(size - window)
    return starts


def gaussian_window(
    window: tuple[int, int], sigma_scale: float = 0.125, device: torch.device | None = None
) -> Tensor:
    """Separable Gaussian importance map, peak 1 at the centre, strictly positive.

    Args:
        window: ``(height, width)`` of the map.
        sigma_scale: Standard deviation as a fraction of the window size (nnU-Net's 1/8).
        device: Device of the returned tensor.

    Returns:
        ``(height, width)`` float32 map.
    """
    axes = []
    for n in window:
        coords = torch.arange(n, dtype=torch.float32, device=device) - (n - 1) / 2
        sigma = max(n * sigma_scale, 1e-6)
        axes.append(torch.exp(-0.5 * (coords / sigma) ** 2))
    weights = axes[0][:, None] * axes[1][None, :]
    weights = weights / weights.max()
    positive_min = weights[weights > 0].min()
    return weights.clamp_min(positive_min)


@torch.no_grad()
def sliding_window_inference(
    model: Callable[[Tensor], Tensor],
    images: Tensor,
    window: int | tuple[int, int],
    stride: int | tuple[int, int],
    num_classes: int,
    batch_size: int = 8,
    weighting: Literal["uniform", "gaussian"] = "uniform",
    progress: bool = False,
) -> Tensor:
    """Predict dense logits by averaging the model's outputs over overlapping windows.

    Windows of size ``window`` are placed every ``stride`` pixels, the last one flush
    with the bottom/right border so that every pixel is covered.  An image smaller than
    the window along an axis is **zero-padded** (bottom/right) up to the window size and
    the output is cropped back.  Window crops of all images are fed to ``model``
    ``batch_size`` at a time; per-pixel outputs are averaged (``"uniform"``) or averaged
    with a Gaussian importance map that down-weights window borders (``"gaussian"``).
    Accumulation is in float32 on ``images.device``; runs under ``torch.no_grad``.

    Args:
        model: Maps ``(N, C_in, wh, ww)`` to ``(N, num_classes, wh, ww)`` logits.
        images: ``(B, C_in, H, W)`` batch.
        window: Window size, an int or ``(wh, ww)``.
        stride: Step between windows, an int or ``(sh, sw)``; must not exceed the window.
        num_classes: Number of output channels of ``model``.
        batch_size: Number of windows per model call.
        weighting: ``"uniform"`` or ``"gaussian"`` averaging of overlapping windows.
        progress: Show a tqdm progress bar over model calls.

    Returns:
        ``(B, num_classes, H, W)`` float32 averaged logits.

    Raises:
        ValueError: On invalid arguments or a model output of unexpected shape.
    """
    if images.ndim != 4:
        raise ValueError(f"images must be (B, C, H, W), got shape {tuple(images.shape)}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if weighting not in ("uniform", "gaussian"):
        raise ValueError(f"weighting must be 'uniform' or 'gaussian', got {weighting!r}")
    wh, ww = _pair(window, "window")
    sh, sw = _pair(stride, "stride")
    if sh > wh or sw > ww:
        raise ValueError(f"stride {(sh, sw)} larger than window {(wh, ww)} would leave gaps")

    b, _, h, w = images.shape
    pad_h, pad_w = max(wh - h, 0), max(ww - w, 0)
    if pad_h or pad_w:
        images = F.pad(images, (0, pad_w, 0, pad_h), mode="constant", value=0.0)
    hp, wp = images.shape[-2:]

    if weighting == "gaussian":
        weights = gaussian_window((wh, ww), device=images.device)
    else:
        weights = torch.ones(wh, ww, device=images.device)

    logits = torch.zeros(b, num_classes, hp, wp, dtype=torch.float32, device=images.device)
    norm = torch.zeros(1, 1, hp, wp, dtype=torch.float32, device=images.device)
    ys, xs = window_starts(hp, wh, sh), window_starts(wp, ww, sw)
    for y in ys:
        for x in xs:
            norm[..., y : y + wh, x : x + ww] += weights

    locations = [(i, y, x) for i in range(b) for y in ys for x in xs]
    chunks = range(0, len(locations), batch_size)
    for start in tqdm(chunks, desc="sliding window", disable=not progress, leave=False):
        chunk = locations[start : start + batch_size]
        crops = torch.stack([images[i, :, y : y + wh, x : x + ww] for i, y, x in chunk])
        out = model(crops)
        expected = (len(chunk), num_classes, wh, ww)
        if tuple(out.shape) != expected:
            raise ValueError(f"model returned shape {tuple(out.shape)}, expected {expected}")
        out = out.float() * weights
        for (i, y, x), o in zip(chunk, out):
            logits[i, :, y : y + wh, x : x + ww] += o

    return (logits / norm)[..., :h, :w]
