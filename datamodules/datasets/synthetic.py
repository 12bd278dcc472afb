"""Embedded default data: procedural textured scenes with pixel masks, no files needed.

Every image is a textured background with one to ``max_objects`` objects.  An
object's class fixes its *shape* and its stripe *frequency*, while colours, position,
size, rotation, stripe orientation and phase are random, so colour alone says nothing
about the class, a rotation or flip keeps every class, and a model has to learn shape
and texture.  (For dense methods at 96-128 px see :mod:`.textured_scenes`.)  Each sample
has an image-level label (the class covering most pixels), and a pixel mask (``0``
background, ``c + 1`` for class ``c``).  Samples are a pure function of ``(seed, index)``:
the same on every machine and in every worker.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor
from torch.utils.data import Dataset
from torchvision import tv_tensors

SHAPES = ("disk", "square", "triangle", "ring", "cross", "diamond", "ellipse", "bar")


def _shape_mask(shape: str, u: Tensor, v: Tensor) -> Tensor:
    """Boolean mask of a unit-size shape in local coordinates ``(u, v)``."""
    r2 = u * u + v * v
    if shape == "disk":
        return r2 <= 1
    if shape == "square":
        return torch.maximum(u.abs(), v.abs()) <= 0.8
    if shape == "triangle":
        return (v >= -0.5) & (math.sqrt(3) * u.abs() + v <= 1)
    if shape == "ring":
        return (r2 <= 1) & (r2 >= 0.35)
    if shape == "cross":
        return ((u.abs() <= 0.3) & (v.abs() <= 1)) | ((v.abs() <= 0.3) & (u.abs() <= 1))
    if shape == "diamond":
        return u.abs() + v.abs() <= 1
    if shape == "ellipse":
        return u * u + 4 * v * v <= 1
    if shape == "bar":
        return (u.abs() <= 1) & (v.abs() <= 0.35)
    raise ValueError(f"unknown shape {shape!r}")


class SyntheticScenes(Dataset):
    """Deterministic procedural scenes (see module docstring).

    Args:
        num_samples: Number of images.
        image_size: Height and width in pixels.
        num_classes: Object classes (at most ``len(SHAPES)``).
        max_objects: Maximum objects per image.
        seed: Seed of the whole data set; train and val use different seeds.
    """

    def __init__(
        self,
        num_samples: int = 4096,
        image_size: int = 64,
        num_classes: int = 6,
        max_objects: int = 3,
        seed: int = 0,
    ) -> None:
        if not 2 <= num_classes <= len(SHAPES):
            raise ValueError(f"num_classes must be in [2, {len(SHAPES)}], got {num_classes}")
        if num_samples < 1 or image_size < 8 or max_objects < 1:
            raise ValueError(
                "SyntheticScenes needs num_samples >= 1, image_size >= 8 and max_objects >= 1, "
                f"got {num_samples}, {image_size}, {max_objects}"
            )
        self.num_samples, self.size = num_samples, image_size
        self.num_classes, self.max_objects, self.seed = num_classes, max_objects, seed
        self.classes = list(SHAPES[:num_classes])
        lin = (torch.arange(image_size, dtype=torch.float32) + 0.5) / image_size
        self._yy, self._xx = torch.meshgrid(lin, lin, indexing="ij")

    def __len__(self) -> int:
        return self.num_samples

    def _background(self, g: torch.Generator) -> Tensor:
        field = torch.zeros_like(self._xx)
        for _ in range(3):
            theta, freq, phase = torch.rand(3, generator=g).tolist()
            direction = self._xx * math.cos(theta * math.pi) + self._yy * math.sin(theta * math.pi)
            field += torch.sin(2 * math.pi * (1 + 2 * freq) * direction + 2 * math.pi * phase)
        t = (field / 6 + 0.5).clamp(0, 1)
        c1, c2 = torch.rand(2, 3, 1, 1, generator=g) * 0.8 + 0.1
        noise = torch.rand(3, self.size, self.size, generator=g) * 0.1
        return c1 * t + c2 * (1 - t) + noise

    def _object(self, g: torch.Generator, cls: int, large: bool) -> tuple[Tensor, Tensor]:
        lo, hi = (0.22, 0.34) if large else (0.1, 0.18)
        rnd = torch.rand(6, generator=g).tolist()
        radius = lo + (hi - lo) * rnd[0]
        cy, cx = radius + (1 - 2 * radius) * rnd[1], radius + (1 - 2 * radius) * rnd[2]
        rot = 2 * math.pi * rnd[3]
        dy, dx = (self._yy - cy) / radius, (self._xx - cx) / radius
        u = dx * math.cos(rot) + dy * math.sin(rot)
        v = -dx * math.sin(rot) + dy * math.cos(rot)
        inside = _shape_mask(SHAPES[cls], u, v)
        # stripe frequency is class-specific, orientation random: a rotation or flip maps
        # every class onto itself (a class-specific angle made rot90 map class c onto c + 3)
        angle = math.pi * rnd[5]
        freq = 4.0 + 3.0 * (cls % 3)
        stripes = torch.sin(
            2 * math.pi * freq * (self._xx * math.cos(angle) + self._yy * math.sin(angle))
            + 2 * math.pi * rnd[4]
        )
        t = (stripes > 0).float()
        c1, c2 = torch.rand(2, 3, 1, 1, generator=g)
        return inside, c1 * t + c2 * (1 - t)

    def __getitem__(self, index: int) -> dict[str, Any]:
        """Return ``{"image": uint8 Image (3,H,W), "mask": Mask (H,W), "label": int}``."""
        if not 0 <= index < self.num_samples:
            raise IndexError(f"index {index} out of range for {self.num_samples} samples")
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + index)
        image = self._background(g)
        mask = torch.zeros(self.size, self.size, dtype=torch.int64)
        n_obj = int(torch.randint(1, self.max_objects + 1, (1,), generator=g))
        classes = torch.randint(0, self.num_classes, (n_obj,), generator=g).tolist()
        for k, cls in enumerate(classes):
            inside, texture = self._object(g, cls, large=k == 0)
            image = torch.where(inside, texture, image)
            mask[inside] = cls + 1
        counts = torch.bincount(mask.flatten(), minlength=self.num_classes + 1)[1:]
        label = int(counts.argmax())
        pixels = (image.clamp(0, 1) * 255).round().to(torch.uint8)
        return {"image": tv_tensors.Image(pixels), "mask": tv_tensors.Mask(mask), "label": label}
