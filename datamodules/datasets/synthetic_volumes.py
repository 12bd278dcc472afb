"""Synthetic medical default: procedural 3-D subjects with organ-like structures.

Every subject is a pure function of ``(seed, index)``.  Geometry is defined in millimetres,
so a subject's voxel spacing (in-plane 0.6-1.0 mm, slices 1.5-3 mm, drawn per subject)
changes how many voxels a structure covers, as on real scanners.  A subject holds:

* a body: an ellipsoid of soft tissue in air;
* ``num_structures`` organ-like structures: ellipsoids around fixed template positions,
  with per-subject jitter of position (±6 mm), semi-axes (x0.75-1.25), an in-plane rotation
  (±35 degrees) and a radial deformation (2nd/3rd harmonics); each structure has its own
  mean intensity and texture (a 3-D grating whose period is the structure's) plus noise;
  later structures overwrite earlier ones where they overlap (occlusion);
* an orientation: the array is stored with random axis flips and a matching affine, so
  reading it goes through the same canonicalisation as a file.

``domain`` selects an acquisition regime of the same anatomy: ``0`` CT-like (int16 "HU",
window ``[-125, 275]`` covers the organs), ``d >= 1`` MR-like (float32 arbitrary units, a
smooth multiplicative bias field, a per-domain reordering and scaling of the structures'
intensities and more noise): the multi-domain benchmark's second scanner.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from contraseg.datamodules.datasets.medical import Protocol
from contraseg.datamodules.datasets.nifti import Volume, canonical

__all__ = ["SyntheticVolumes", "synthetic_protocol"]

# template centre (fraction of the FOV, z y x), semi-axes (mm), intensity (HU), period (mm)
_TEMPLATES = (
    ((0.50, 0.40, 0.35), (14.0, 16.0, 20.0), 60.0, 6.0),
    ((0.45, 0.60, 0.62), (12.0, 11.0, 9.0), 180.0, 3.0),
    ((0.55, 0.35, 0.68), (10.0, 8.0, 8.0), -40.0, 9.0),
    ((0.50, 0.62, 0.38), (9.0, 7.0, 12.0), 120.0, 4.5),
    ((0.40, 0.45, 0.50), (7.0, 6.0, 6.0), 240.0, 2.5),
    ((0.60, 0.55, 0.45), (8.0, 9.0, 7.0), 20.0, 7.5),
)


def synthetic_protocol(num_structures: int, domain: int = 0) -> Protocol:
    """The protocol of :class:`SyntheticVolumes` (CT for domain 0, MR otherwise)."""
    classes = ("background", *(f"structure_{i + 1}" for i in range(num_structures)))
    if domain == 0:
        return Protocol("synthetic_ct", classes, None, "ct", (-125.0, 275.0))
    return Protocol(f"synthetic_mr{domain}", classes, None, "mr", None)


class SyntheticVolumes:
    """Deterministic synthetic subjects (see the module docstring).

    Args:
        num_subjects: Number of subjects.
        shape: Voxel grid ``(D, H, W)`` of every subject.
        num_structures: Labelled structures (1-6).
        domain: Acquisition regime (0 CT-like, >= 1 MR-like).
        seed: Seed of the whole set.
    """

    def __init__(
        self,
        num_subjects: int = 12,
        shape: tuple[int, int, int] = (24, 64, 64),
        num_structures: int = 4,
        domain: int = 0,
        seed: int = 0,
    ) -> None:
        if not 1 <= num_structures <= len(_TEMPLATES):
            raise ValueError(
                f"num_structures must be in [1, {len(_TEMPLATES)}], got {num_structures}"
            )
        if num_subjects < 1 or min(shape) < 4:
            raise ValueError("num_subjects must be >= 1 and every side of shape >= 4")
        self.num_subjects, self.shape = num_subjects, tuple(int(s) for s in shape)
        self.num_structures, self.domain, self.seed = num_structures, domain, seed
        self.protocol = synthetic_protocol(num_structures, domain)
        self.ids = [f"synth{index:04d}" for index in range(num_subjects)]

    def __len__(self) -> int:
        return self.num_subjects

    def subject(self, index: int) -> tuple[Volume, Volume]:
        """Canonical image and label volumes of subject ``index``."""
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + index * 7919 + 1)
        d, h, w = self.shape

        def u(lo: float, hi: float, n: int = 1) -> torch.Tensor:
            return lo + (hi - lo) * torch.rand(n, generator=g)

        spacing = torch.cat([u(1.5, 3.0), u(0.6, 1.0).repeat(2)])  # (sD, sH, sW) mm
        extent = torch.tensor([d, h, w]) * spacing
        axes = [torch.arange(n, dtype=torch.float32) * s for n, s in zip((d, h, w), spacing)]
        z, y, x = torch.meshgrid(*axes, indexing="ij")
        # body: soft tissue (~ 0 HU) inside an ellipsoid, air (-1000 HU) outside
        body = ((z - extent[0] / 2) / (0.48 * extent[0])) ** 2 + (
            (y - extent[1] / 2) / (0.45 * extent[1])
        ) ** 2 + ((x - extent[2] / 2) / (0.47 * extent[2])) ** 2 < 1
        tissue, air = (-20.0, -1000.0) if self.domain == 0 else (250.0, 0.0)
        image = torch.where(body, torch.tensor(tissue), torch.tensor(air))
        label = torch.zeros(d, h, w, dtype=torch.uint8)
        means = self._intensities()
        scale = min(1.0, float(extent[1:].min()) / 64.0)  # templates are sized for a 64 mm FOV
        for c in range(self.num_structures):
            centre_frac, semi, _, period = _TEMPLATES[c]
            centre = torch.tensor(centre_frac) * extent + u(-6, 6, 3) * scale
            semi_axes = torch.tensor(semi) * u(0.75, 1.25, 3) * scale
            angle = float(u(-35, 35)) * math.pi / 180
            dz, dy, dx = z - centre[0], y - centre[1], x - centre[2]
            ry = math.cos(angle) * dy - math.sin(angle) * dx
            rx = math.sin(angle) * dy + math.cos(angle) * dx
            theta = torch.atan2(ry, rx)
            a2, p2, a3, p3 = u(0, 0.2), u(0, 6.3), u(0, 0.12), u(0, 6.3)
            radius = 1 + a2 * torch.cos(2 * theta + p2) + a3 * torch.cos(3 * theta + p3)
            r2 = (dz / semi_axes[0]) ** 2 + (ry / semi_axes[1]) ** 2 + (rx / semi_axes[2]) ** 2
            inside = (r2 < radius**2) & body
            phase = u(0, 6.3)
            texture = torch.sin(2 * math.pi * (ry + 0.5 * dz) / (period * scale) + phase)
            value = means[c] + 25.0 * texture
            image = torch.where(inside, value, image)
            label[inside] = c + 1
        image = self._acquire(image, body, z / extent[0], y / extent[1], g)
        return self._orient(image.numpy(), label.numpy(), spacing.tolist(), index, g)

    def _intensities(self) -> list[float]:
        """Mean intensity of every structure in this domain (HU for CT, a.u. for MR)."""
        base = [t[2] for t in _TEMPLATES[: self.num_structures]]
        if self.domain == 0:
            return base
        perm = torch.randperm(len(base), generator=torch.Generator().manual_seed(97 * self.domain))
        return [300.0 + 1.5 * base[int(i)] for i in perm]

    def _acquire(
        self,
        image: torch.Tensor,
        body: torch.Tensor,
        zf: torch.Tensor,
        yf: torch.Tensor,
        g: torch.Generator,
    ) -> torch.Tensor:
        """Scanner noise (CT) or bias field and noise (MR), in the domain's units."""
        noise = torch.randn(image.shape, generator=g)
        if self.domain == 0:
            return (image + 12.0 * noise).round().clamp(-1024, 3071).to(torch.int16)
        mr = torch.where(body, image, torch.zeros_like(image)).clamp(min=0)
        bias = 1 + 0.25 * torch.sin(
            math.pi * yf + float(torch.rand(1, generator=g)) * 3
        ) * torch.cos(math.pi * zf)
        return (mr * bias + (20.0 + 10 * self.domain) * noise).clamp(min=0).to(torch.float32)

    def _orient(
        self,
        image: np.ndarray,
        label: np.ndarray,
        spacing: list[float],
        index: int,
        g: torch.Generator,
    ) -> tuple[Volume, Volume]:
        """Store ``(D, H, W)`` as a flipped ``(x, y, z)`` array with its affine; canonicalise."""
        xyz_image, xyz_label = image.transpose(2, 1, 0), label.transpose(2, 1, 0)
        zooms = [spacing[2], spacing[1], spacing[0]]
        flips = (torch.rand(3, generator=g) < 0.5).tolist()
        affine = np.eye(4)
        for axis, flip in enumerate(flips):
            affine[axis, axis] = -zooms[axis] if flip else zooms[axis]
            if flip:  # voxel 0 sits at the far end: the world position of voxel i is unchanged
                affine[axis, 3] = zooms[axis] * (xyz_image.shape[axis] - 1)
                xyz_image = np.flip(xyz_image, axis)
                xyz_label = np.flip(xyz_label, axis)
        name = f"synthetic subject {self.ids[index]}"
        return (
            canonical(np.ascontiguousarray(xyz_image), affine, name),
            canonical(np.ascontiguousarray(xyz_label), affine, name + " (label)"),
        )
