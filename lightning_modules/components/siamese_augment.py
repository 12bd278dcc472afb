"""Differentiable siamese augmentation (DSA, Zhao & Bilen 2021), as the DCC / DSA official code.

Families (strategy ``color_crop_cutout_flip_scale_rotate``) with the official ranges
(``ParamDiffAug``): colour = brightness ``x + (b - .5)``, saturation ``(x - mean_ch) * 2s +
mean_ch``, contrast ``(x - mean) * (c + .5) + mean``; crop = integer shift of up to 1/8 of the
side with zeros outside; cutout = a zeroed square of half the side; flip (p .5); scale = per
axis in ``[1/1.2, 1.2]``; rotate = ``[-15, 15]`` degrees (bilinear, zeros outside).  The
official single mode ``'S'`` applies **one family per call**, chosen at random.

*Siamese*: the real batch and the synthetic images of a class share one parameter draw.
Here a draw holds ``G`` parameter groups and every image names its group, so the per-class
siamese augmentation of all classes is one vectorised call per batch (:meth:`sample` with
``groups = C``, then :meth:`apply` with ``group = class``).  Non-siamese training
augmentation (:meth:`__call__`) draws one family per call and parameters per image.

Why not kornia (the library the field uses for differentiable augmentation): measured with
kornia 0.9, ``ColorJiggle`` clamps its output to ``[0, 1]`` (a standardised batch of range
``[-5.9, 5.4]`` came out in ``[0, 1]``), which destroys the normalised images DSA works on,
and replaying sampled parameters on a batch of another size fails (``grid_sampler(): expected
grid and input to have same batch size``), while a class's real batch (256) and synthetic
images (``ipc``) differ in size (checked 2026-12-01; kornia is not a dependency).
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["DSAParams", "SiameseAugment"]

FAMILIES = ("color", "crop", "cutout", "flip", "scale", "rotate")


class DSAParams(NamedTuple):
    """One draw: ``G`` groups of parameters (index 0..G-1)."""

    family: Tensor  # (G,) index into the strategy's families
    brightness: Tensor  # (G,) U(0, 1)
    saturation: Tensor  # (G,) U(0, 1)
    contrast: Tensor  # (G,) U(0, 1)
    shift: Tensor  # (G, 2) integer crop shifts (rows, cols)
    cutout: Tensor  # (G, 2) cutout centres (rows, cols)
    flip: Tensor  # (G,) U(0, 1) (flip when < prob_flip)
    scale: Tensor  # (G, 2) scale factors (x, y)
    angle: Tensor  # (G,) radians

    def take(self, index: Tensor) -> DSAParams:
        """The parameters of each image (``index``: the group of every image)."""
        return DSAParams(*(t[index] for t in self))


class SiameseAugment:
    """DSA with the official parameter ranges.

    Args:
        strategy: Families joined by ``_`` (``none``: identity).
        prob_flip: Flip probability.
        ratio_scale: Max scale factor (min ``1 / ratio``).
        ratio_rotate: Max rotation in degrees.
        ratio_crop_pad: Max crop shift as a fraction of the side.
        ratio_cutout: Cutout side as a fraction of the image side.
        brightness: Brightness range (offset ``(U - .5) * brightness``).
        saturation: Saturation factor range ``U * saturation``.
        contrast: Contrast factor offset ``U + contrast``.

    Raises:
        ValueError: On an unknown family.
    """

    def __init__(self, strategy: str = "color_crop_cutout_flip_scale_rotate",
                 prob_flip: float = 0.5, ratio_scale: float = 1.2, ratio_rotate: float = 15.0,
                 ratio_crop_pad: float = 0.125, ratio_cutout: float = 0.5,
                 brightness: float = 1.0, saturation: float = 2.0,
                 contrast: float = 0.5) -> None:  # fmt: skip
        self.families = () if strategy.lower() == "none" else tuple(strategy.split("_"))
        unknown = [f for f in self.families if f not in FAMILIES]
        if unknown:
            raise ValueError(f"DSA strategy {strategy!r}: unknown families {unknown}; "
                             f"known {FAMILIES}")  # fmt: skip
        self.prob_flip, self.ratio_scale, self.ratio_rotate = prob_flip, ratio_scale, ratio_rotate
        self.ratio_crop_pad, self.ratio_cutout = ratio_crop_pad, ratio_cutout
        self.brightness, self.saturation, self.contrast = brightness, saturation, contrast

    def sample(self, groups: int, size: tuple[int, int], device: torch.device | str = "cpu",
               one_family: bool = False,
               generator: torch.Generator | None = None) -> DSAParams:  # fmt: skip
        """Draw ``groups`` parameter groups for images of ``size = (H, W)``.

        Args:
            groups: Number of groups (classes for siamese use, images otherwise).
            size: Image height and width (crop and cutout ranges).
            device: Device of the parameters.
            one_family: One family for all groups (the official per-call choice).
            generator: RNG (default: torch's global one).
        """
        h, w = size
        g = generator

        def u(*shape: int) -> Tensor:
            return torch.rand(*shape, generator=g, device=device)

        def ints(low: int, high: int) -> Tensor:
            return torch.randint(low, high, (groups,), generator=g, device=device)

        n_fam = max(len(self.families), 1)
        fam = torch.randint(0, n_fam, (1 if one_family else groups,), generator=g, device=device)
        fam = fam.expand(groups).clone()
        sh, sw = int(h * self.ratio_crop_pad + 0.5), int(w * self.ratio_crop_pad + 0.5)
        shift = torch.stack([ints(-sh, sh + 1), ints(-sw, sw + 1)], 1)
        ch, cw = int(h * self.ratio_cutout + 0.5), int(w * self.ratio_cutout + 0.5)
        cut = torch.stack([ints(0, h + (1 - ch % 2)), ints(0, w + (1 - cw % 2))], 1)
        r = self.ratio_scale
        scale = u(groups, 2) * (r - 1.0 / r) + 1.0 / r
        angle = (u(groups) - 0.5) * 2 * self.ratio_rotate / 180 * math.pi
        return DSAParams(fam, u(groups), u(groups), u(groups), shift, cut, u(groups), scale, angle)

    def apply(self, x: Tensor, params: DSAParams, group: Tensor | None = None) -> Tensor:
        """Augment ``x (B, C, H, W)`` with each image's group's parameters (differentiable).

        Args:
            x: Images.
            params: A draw from :meth:`sample`.
            group: ``(B,)`` group of each image (default: image ``i`` uses group ``i``).
        """
        if not self.families:
            return x
        if group is None:
            group = torch.arange(x.shape[0], device=x.device)
        p = params.take(group.to(params.family.device))
        out = x
        for k, name in enumerate(self.families):
            idx = (p.family == k).nonzero().squeeze(1)
            if idx.numel() == 0:
                continue
            sub = p.take(idx)
            y = getattr(self, f"_{name}")(x[idx], sub)
            out = out.index_put((idx.to(x.device),), y)
        return out.contiguous()

    def __call__(self, x: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """Non-siamese: one family for the batch, parameters per image."""
        params = self.sample(x.shape[0], x.shape[-2:], x.device, one_family=True,
                             generator=generator)  # fmt: skip
        return self.apply(x, params)

    # ----------------------------------------------------------------- the families
    def _color(self, x: Tensor, p: DSAParams) -> Tensor:
        b = p.brightness.view(-1, 1, 1, 1).to(x)
        x = x + (b - 0.5) * self.brightness
        s = p.saturation.view(-1, 1, 1, 1).to(x)
        m = x.mean(dim=1, keepdim=True)
        x = (x - m) * (s * self.saturation) + m
        c = p.contrast.view(-1, 1, 1, 1).to(x)
        m = x.mean(dim=(1, 2, 3), keepdim=True)
        return (x - m) * (c + self.contrast) + m

    def _crop(self, x: Tensor, p: DSAParams) -> Tensor:
        n, _, h, w = x.shape
        shift = p.shift.to(x.device)
        rows = torch.arange(h, device=x.device).view(1, h, 1) + shift[:, 0].view(-1, 1, 1)
        cols = torch.arange(w, device=x.device).view(1, 1, w) + shift[:, 1].view(-1, 1, 1)
        valid = ((rows >= 0) & (rows < h) & (cols >= 0) & (cols < w)).unsqueeze(1)
        flat = (rows.clamp(0, h - 1) * w + cols.clamp(0, w - 1)).view(n, 1, h * w)
        y = x.flatten(2).gather(2, flat.expand(-1, x.shape[1], -1)).view_as(x)
        return y * valid.to(x)

    def _cutout(self, x: Tensor, p: DSAParams) -> Tensor:
        _, _, h, w = x.shape
        ch, cw = int(h * self.ratio_cutout + 0.5), int(w * self.ratio_cutout + 0.5)
        lo_r = (p.cutout[:, 0] - ch // 2).view(-1, 1, 1).to(x.device)
        lo_c = (p.cutout[:, 1] - cw // 2).view(-1, 1, 1).to(x.device)
        r = torch.arange(h, device=x.device).view(1, h, 1)
        c = torch.arange(w, device=x.device).view(1, 1, w)
        hole = (r >= lo_r) & (r < lo_r + ch) & (c >= lo_c) & (c < lo_c + cw)
        return x * (~hole).unsqueeze(1).to(x)

    def _flip(self, x: Tensor, p: DSAParams) -> Tensor:
        f = (p.flip < self.prob_flip).view(-1, 1, 1, 1).to(x.device)
        return torch.where(f, x.flip(3), x)

    def _warp(self, x: Tensor, theta: Tensor) -> Tensor:
        grid = F.affine_grid(theta.to(x), list(x.shape), align_corners=False)
        return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)

    def _scale(self, x: Tensor, p: DSAParams) -> Tensor:
        theta = torch.zeros(x.shape[0], 2, 3, device=p.scale.device)
        theta[:, 0, 0], theta[:, 1, 1] = p.scale[:, 0], p.scale[:, 1]
        return self._warp(x, theta)

    def _rotate(self, x: Tensor, p: DSAParams) -> Tensor:
        cos, sin = torch.cos(p.angle), torch.sin(p.angle)
        theta = torch.stack([torch.stack([cos, -sin, torch.zeros_like(cos)], 1),
                             torch.stack([sin, cos, torch.zeros_like(cos)], 1)], 1)  # fmt: skip
        return self._warp(x, theta)
