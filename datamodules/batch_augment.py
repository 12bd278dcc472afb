"""The batched half of every view pipeline: photometric augmentation on the device.

Every training view is made in two parts (the GPU-first split):

* **in the workers, per sample** (:mod:`contraseg.datamodules.transforms`): decode, the geometric
  transforms (``RandomResizedCrop``, flips, rot90) applied jointly to image, mask and
  pixel-index map *in the file's dtype* (uint8 stays uint8), and the *draw* of every random
  photometric parameter (:func:`contraseg.datamodules.transforms.draw_photometric`) from the
  sample's ``(seed, epoch, index)`` stream;
* **on the batch, after it reaches the device** (``on_after_batch_transfer`` of the
  DataModules, here): colour jitter with hue in a per-sample random order, grey, Gaussian
  blur, solarise, the multi-band photometrics, gamma and noise, ``ScaleByDtype`` and the
  normalisation, each applied with the drawn parameters to the samples that drew it.

The parameters travel with the batch as ``photometric`` (one dict of per-sample tensors per
view); :func:`collate_plans` (the training loaders' collate function, run in the workers)
adds each op's sample indices (``plan``), so the device part needs no host synchronisation.
Random *pixels* (GLCNet's sparse pixel noise, additive Gaussian noise) come from a
counter-based hash of ``(sample seed, pixel)`` (:func:`hash_uniform`): the same numbers on
every device, for every batch composition, and no per-sample generator loop.

The ops equal torchvision's per-sample functional ops (``adjust_brightness``,
``adjust_contrast``, ``adjust_saturation``, ``adjust_hue``, ``rgb_to_grayscale``,
``gaussian_blur``, ``solarize``) on float images to float rounding (tests:
``tests/test_batch_augment.py``).  Why not kornia, the field's batched-augmentation library:
its ``ColorJitter`` applies one random op order to the whole batch (torchvision's, which the
recipes cite, draws the order per sample) and draws its parameters on the device from the
global RNG, which would tie the augmentation of a sample to the batch it lands in and break
exact resume and the DDP-equals-one-process property; the ops here are a few lines each.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.data import default_collate

__all__ = [
    "BatchPhotometric",
    "JITTER_OPS",
    "adjust_brightness",
    "adjust_contrast",
    "adjust_hue",
    "adjust_saturation",
    "apply_photometric",
    "collate_plans",
    "gaussian_blur",
    "gaussian_kernels",
    "hash_uniform",
    "photometric_plan",
    "rgb_to_grey",
    "scale_by_dtype",
    "solarize",
]

# torchvision's ColorJitter order indices: 0 brightness, 1 contrast, 2 saturation, 3 hue
JITTER_OPS = ("brightness", "contrast", "saturation", "hue")
SOLARIZE_THRESHOLD = 128 / 255  # RandomSolarize(threshold=128) of the uint8 recipes, in [0, 1]


# ---------------------------------------------------------------------------- batched ops
def scale_by_dtype(images: Tensor) -> Tensor:
    """Float32 images in the units their dtype implies (``ScaleByDtype``'s rule).

    ``uint8 / 255`` and ``uint16 / 65535`` give ``[0, 1]``; signed integers (CT in Hounsfield
    units) and floats keep their values.
    """
    if images.dtype == torch.uint8:
        return images.to(torch.float32).mul_(1.0 / 255)
    if images.dtype == torch.uint16:
        return images.to(torch.float32).mul_(1.0 / 65535)
    return images.to(torch.float32)


def _per_sample(values: Tensor, like: Tensor) -> Tensor:
    return values.to(like.dtype).view(-1, *([1] * (like.ndim - 1)))


def _blend(a: Tensor, b: Tensor, ratio: Tensor) -> Tensor:
    """``a * r + b * (1 - r)`` clamped to ``[0, 1]`` (torchvision's ``_blend`` on floats)."""
    r = _per_sample(ratio, a)
    return a.mul(r).add_(b.mul(1.0 - r)).clamp_(0, 1)


def rgb_to_grey(images: Tensor) -> Tensor:
    """ITU-R 601 luma ``(B, 1, H, W)`` of ``(B, 3, H, W)`` images (torchvision's weights)."""
    r, g, b = images.unbind(dim=-3)
    return r.mul(0.2989).add_(g, alpha=0.587).add_(b, alpha=0.114).unsqueeze(-3)


def adjust_brightness(images: Tensor, factor: Tensor) -> Tensor:
    """``clamp(x * f, 0, 1)`` with one factor per sample."""
    return images.mul(_per_sample(factor, images)).clamp_(0, 1)


def adjust_contrast(images: Tensor, factor: Tensor) -> Tensor:
    """Blend with each image's mean grey value."""
    mean = rgb_to_grey(images).mean(dim=(-3, -2, -1), keepdim=True)
    return _blend(images, mean, factor)


def adjust_saturation(images: Tensor, factor: Tensor) -> Tensor:
    """Blend with each pixel's grey value."""
    return _blend(images, rgb_to_grey(images), factor)


def _rgb_to_hsv(images: Tensor) -> Tensor:
    r, g, b = images.unbind(dim=-3)
    maxc, minc = images.amax(dim=-3), images.amin(dim=-3)
    same = maxc == minc
    span = maxc - minc
    s = span / torch.where(same, torch.ones_like(maxc), maxc)
    div = torch.where(same, torch.ones_like(span), span)
    rc, gc, bc = (maxc - r) / div, (maxc - g) / div, (maxc - b) / div
    h = torch.where(maxc == r, bc - gc, torch.where(maxc == g, 2.0 + rc - bc, 4.0 + gc - rc))
    h = torch.where(same, torch.zeros_like(h), h)
    h = torch.remainder(h / 6.0 + 1.0, 1.0)
    return torch.stack((h, s, maxc), dim=-3)


def _hsv_to_rgb(images: Tensor) -> Tensor:
    """HSV to RGB in closed form, one broadcast pass (torchvision selects sectors instead).

    Channel ``n`` in ``(5, 3, 1)`` (R, G, B) is ``v - v s clamp(min(k, 4 - k), 0, 1)`` with
    ``k = (n + 6 h) mod 6``.
    """
    h, s, v = images.unsqueeze(-3).unbind(dim=-4)
    n = torch.arange(5.0, 0.0, -2.0, dtype=images.dtype, device=images.device).view(3, 1, 1)
    k = torch.remainder(n + h * 6.0, 6.0)
    return v - v * s * torch.minimum(k, 4.0 - k).clamp_(0.0, 1.0)


def adjust_hue(images: Tensor, factor: Tensor) -> Tensor:
    """Shift the hue by ``factor`` (in turns, ``[-0.5, 0.5]``) per sample, through HSV."""
    hsv = _rgb_to_hsv(images)
    h, s, v = hsv.unbind(dim=-3)
    h = torch.remainder(h + _per_sample(factor, h), 1.0)
    return _hsv_to_rgb(torch.stack((h, s, v), dim=-3))


def solarize(images: Tensor, threshold: float = SOLARIZE_THRESHOLD) -> Tensor:
    """Invert pixels at or above ``threshold`` (``[0, 1]`` images)."""
    return torch.where(images >= threshold, 1.0 - images, images)


def gaussian_kernels(kernel_size: int, sigma: Tensor) -> Tensor:
    """1-D Gaussian kernels ``(B, k)``, one per sigma, exactly as torchvision builds them."""
    lim = (kernel_size - 1) / (2.0 * math.sqrt(2.0))
    x = torch.linspace(-lim, lim, steps=kernel_size, dtype=torch.float32, device=sigma.device)
    return torch.softmax(-(x / sigma.to(torch.float32).view(-1, 1)).pow(2), dim=-1)


def gaussian_blur(images: Tensor, kernel_size: int, sigma: Tensor) -> Tensor:
    """Separable Gaussian blur with one sigma per sample, reflect padding (torchvision's).

    A depthwise convolution of the whole batch (every channel of every sample its own group),
    first along rows then along columns.
    """
    b, c, h, w = images.shape
    k = gaussian_kernels(kernel_size, sigma).repeat_interleave(c, dim=0)  # (B*C, k)
    pad = kernel_size // 2
    x = F.pad(images.reshape(1, b * c, h, w), (pad, pad, pad, pad), mode="reflect")
    x = F.conv2d(x, k.view(b * c, 1, kernel_size, 1), groups=b * c)
    x = F.conv2d(x, k.view(b * c, 1, 1, kernel_size), groups=b * c)
    return x.view(b, c, h, w)


_GOLDEN, _MIX1, _MIX2 = 0x9E3779B97F4A7C15, 0xBF58476D1CE4E5B9, 0x94D049BB133111EB


def _signed(value: int) -> int:
    """An unsigned 64-bit constant as the int64 with the same bits."""
    return value - (1 << 64) if value >= 1 << 63 else value


def _shr(x: Tensor, bits: int) -> Tensor:
    """Logical right shift of int64 (torch's ``>>`` is arithmetic)."""
    return (x >> bits) & ((1 << (64 - bits)) - 1)


def hash_uniform(seeds: Tensor, count: int, stream: int = 0) -> Tensor:
    """Uniform ``[0, 1)`` numbers ``(B, count)`` from a SplitMix64 hash of ``(seed, stream, i)``.

    Counter-based: element ``i`` of sample ``b`` depends only on ``seeds[b]``, ``stream`` and
    ``i``, so the numbers are the same on CPU and CUDA and for any batch composition (int64
    arithmetic wraps identically on both).  24 bits of resolution (float32's mantissa).
    """
    offset = _signed(_GOLDEN * (stream + 1) & ((1 << 64) - 1))
    z = seeds.to(torch.int64).view(-1, 1) + offset
    z = z + torch.arange(1, count + 1, device=seeds.device, dtype=torch.int64) * _signed(_GOLDEN)
    z = (z ^ _shr(z, 30)) * _signed(_MIX1)
    z = (z ^ _shr(z, 27)) * _signed(_MIX2)
    z = z ^ _shr(z, 31)
    return _shr(z, 40).to(torch.float32) * (1.0 / (1 << 24))


def _hash_normal(seeds: Tensor, count: int, stream: int) -> Tensor:
    """Standard normal numbers by Box-Muller over two hashed uniform streams."""
    u1 = hash_uniform(seeds, count, stream).clamp_(min=1.0 / (1 << 25))
    u2 = hash_uniform(seeds, count, stream + 1)
    return torch.sqrt(-2.0 * torch.log(u1)) * torch.cos(2 * math.pi * u2)


# ------------------------------------------------------------------------------- plans
def photometric_plan(params: dict[str, Tensor]) -> dict[str, Tensor]:
    """Sample indices of every op of a batch's drawn parameters (``int64``, maybe empty).

    Keys: ``jitter<slot><op>`` (the samples whose jitter applies op ``op`` at position
    ``slot`` of their random order), ``jitter``, ``grey``, ``blur``, ``solarize``, ``gamma``.
    Computed on the CPU (in the loader workers by :func:`collate_plans`), so selecting the
    samples of an op on the device needs no synchronisation.
    """
    jitter = params["jitter"].bool()
    plan = {name: params[name].bool().nonzero().flatten()
            for name in ("jitter", "grey", "blur", "solarize", "gamma_on")}  # fmt: skip
    order = params["order"]
    for slot in range(len(JITTER_OPS)):
        for op in range(len(JITTER_OPS)):
            plan[f"jitter{slot}{op}"] = (jitter & (order[:, slot] == op)).nonzero().flatten()
    return plan


def collate_plans(samples: list[Any]) -> Any:
    """``default_collate``, then a :func:`photometric_plan` for every ``photometric`` entry."""
    batch = default_collate(samples)
    if isinstance(batch, dict) and "photometric" in batch:
        entry = batch["photometric"]
        for params in entry if isinstance(entry, list) else [entry]:
            params["plan"] = photometric_plan(params)
    return batch


# ----------------------------------------------------------------------------- modules
class BatchPhotometric:
    """The device half of one view's pipeline (see the module docstring).

    Args:
        cfg: The view's :class:`~contraseg.datamodules.transforms.ViewAugmentation` (any object
            with its attributes): kernel size from ``size``, the configured jitter ops,
            ``noise_std``, ``pixel_noise_prob``, ``mean`` and ``std``.
    """

    def __init__(self, cfg: Any) -> None:
        self.cfg = cfg
        self.kernel = max(3, int(0.1 * cfg.size) // 2 * 2 + 1)
        strengths = (cfg.brightness, cfg.contrast, cfg.saturation, cfg.hue)
        self.jitter_ops = [op for op, s in enumerate(strengths) if s > 0]  # None in torchvision
        self.mean, self.std = list(cfg.mean), list(cfg.std)
        self._stats: dict[torch.device, tuple[Tensor, Tensor]] = {}

    def normalize(self, images: Tensor) -> Tensor:
        """``(x - mean) / std`` per channel, with the statistics cached per device."""
        stats = self._stats.get(images.device)
        if stats is None:
            stats = tuple(torch.tensor(v, dtype=torch.float32).view(-1, 1, 1).to(images.device)
                          for v in (self.mean, self.std))  # fmt: skip
            self._stats[images.device] = stats  # type: ignore[assignment]
        mean, std = stats
        if images.shape[-3] != mean.shape[0]:
            raise ValueError(f"images have {images.shape[-3]} channels, the normalisation "
                             f"mean {self.mean} has {mean.shape[0]}")  # fmt: skip
        return images.sub(mean).div_(std)

    def __call__(self, images: Tensor, params: dict[str, Tensor] | None) -> Tensor:
        """Augment and normalise a batch ``(B, C, H, W)`` in its source dtype.

        Args:
            images: The views after the per-sample part (uint8, uint16, int16 or float).
            params: The batch's drawn parameters (``None``: only scale and normalise).

        Returns:
            Float32 normalised views on the images' device.
        """
        x = scale_by_dtype(images)
        if params is not None:
            plan = params.get("plan")
            if plan is None:
                plan = photometric_plan({k: v.cpu() for k, v in params.items()})
            plan = {k: v.to(images.device, non_blocking=True) for k, v in plan.items()}
            x = self._photometric(x, images.dtype, params, plan)
        return self.normalize(x)

    def _photometric(self, x: Tensor, dtype: torch.dtype, params: dict[str, Tensor],
                     plan: dict[str, Tensor]) -> Tensor:  # fmt: skip
        cfg, channels = self.cfg, x.shape[1]
        if channels == 3:  # RGB: jitter, grey, blur, solarise (the v2 pipeline's order)
            x = self._jitter(x, params, plan)
            x = _on(x, plan["grey"], lambda t, i: rgb_to_grey(t).expand_as(t).contiguous())
            x = self._blur(x, params, plan)
            x = _on(x, plan["solarize"], lambda t, i: solarize(t))
        else:
            x = self._blur(x, params, plan)
            if dtype in (torch.uint8, torch.uint16):
                x = self._bands(x, params, plan)
        if cfg.gamma is not None:
            g = params["gamma"]
            x = _on(x, plan["gamma_on"], lambda t, i: t.clamp(0, 1) ** _per_sample(g[i], t))
        if cfg.noise_std > 0:
            n = x[0].numel()
            noise = _hash_normal(params["seed"], n, stream=2).view_as(x)
            x = x + noise * cfg.noise_std
        return x

    def _jitter(self, x: Tensor, params: dict[str, Tensor], plan: dict[str, Tensor]) -> Tensor:
        ops: tuple[Callable[[Tensor, Tensor], Tensor], ...] = (
            adjust_brightness, adjust_contrast, adjust_saturation, adjust_hue)  # fmt: skip
        for slot in range(len(JITTER_OPS)):
            for op in self.jitter_ops:
                factor = params[JITTER_OPS[op]]
                x = _on(x, plan[f"jitter{slot}{op}"], lambda t, i, o=op, f=factor: ops[o](t, f[i]))
        return x

    def _blur(self, x: Tensor, params: dict[str, Tensor], plan: dict[str, Tensor]) -> Tensor:
        sigma = params["sigma"]
        return _on(x, plan["blur"], lambda t, i: gaussian_blur(t, self.kernel, sigma[i]))

    def _bands(self, x: Tensor, params: dict[str, Tensor], plan: dict[str, Tensor]) -> Tensor:
        """GLCNet's multi-band photometrics (``MultiBandPhotometric``'s rules, in float)."""
        cfg = self.cfg

        if x.shape[1] > 3:  # the RGB jitter on the first three bands (values are in [0, 1])
            x = torch.cat((self._jitter(x[:, :3], params, plan), x[:, 3:]), dim=1)

        def jitter(t: Tensor, i: Tensor) -> Tensor:
            f = params["band_brightness"][i].to(t.dtype)[..., None, None]
            t = torch.where(f > 1, t + (1 - t) * (f - 1), t * f)
            t = (t * params["band_contrast"][i].to(t.dtype)[..., None, None]).clamp(0, 1)
            if cfg.pixel_noise_prob > 0:
                seeds = params["seed"][i]
                hw = t.shape[-2] * t.shape[-1]
                hit = hash_uniform(seeds, hw, stream=0).view(-1, 1, *t.shape[-2:])
                noise = hash_uniform(seeds, t[0].numel(), stream=1).view_as(t)
                t = torch.where(hit < cfg.pixel_noise_prob, noise, t)
            return t

        def grey(t: Tensor, i: Tensor) -> Tensor:
            band = params["grey_band"][i].view(-1, 1, 1, 1).expand(-1, 1, *t.shape[-2:])
            return t.gather(1, band).expand_as(t).contiguous()

        x = _on(x, plan["jitter"], jitter)
        return _on(x, plan["grey"], grey)


def _on(x: Tensor, index: Tensor, fn: Callable[..., Tensor]) -> Tensor:
    """``x`` with its samples ``index`` replaced by ``fn(x[index], index)``.

    Only the selected samples are computed; the index is host metadata-free (its length is
    known without synchronising), so an op nobody drew costs nothing.
    """
    if index.numel() == 0:
        return x
    if index.numel() == x.shape[0]:  # the plan's indices are sorted: every sample, in order
        return fn(x, index)
    return x.index_copy(0, index, fn(x.index_select(0, index), index))


def apply_photometric(batch: dict[str, Any], views: Sequence[BatchPhotometric],
                      key: str = "views") -> dict[str, Any]:  # fmt: skip
    """Run the device half on a collated batch: ``batch[key]`` (a list of views or one image).

    ``photometric`` (the drawn parameters) is consumed; the rest of the batch is unchanged.
    """
    params = batch.pop("photometric", None)
    if key == "views":
        plist = params if isinstance(params, list) else [params] * len(batch["views"])
        batch["views"] = [views[v % len(views)](x, p)
                          for v, (x, p) in enumerate(zip(batch["views"], plist))]  # fmt: skip
    else:
        batch[key] = views[0](batch[key], params)
    return batch


class WorkerPhotometric:
    """Collate function that also runs the batched half in the loader workers (CPU training).

    When the model trains on the CPU, the "device" is the training process's own cores;
    loader workers are idle cores in parallel, so there the batched half runs in them, on
    each assembled batch (the same ops and values: a sample's result does not depend on its
    batch).  Batches whose pixels are made on the device (``scene``, ``jpeg``) keep their
    parameters for ``on_after_batch_transfer``.

    Args:
        views: The DataModule's :meth:`DeviceAugmentHooks.device_views`.
    """

    def __init__(self, views: Sequence[BatchPhotometric]) -> None:
        self.views = list(views)

    def __call__(self, samples: list[Any]) -> Any:  # noqa: D102
        batch = collate_plans(samples)
        if isinstance(batch, dict) and "photometric" in batch and (
                "views" in batch or "image" in batch):  # fmt: skip
            batch = apply_photometric(batch, self.views, "views" if "views" in batch else "image")
        return batch


class DeviceAugmentHooks:
    """DataModule mixin: the device half of the training views in ``on_after_batch_transfer``.

    A DataModule lists its views' :class:`BatchPhotometric` in :meth:`device_views`; every
    batch that carries ``photometric`` parameters (the training loader's) is augmented and
    normalised right after Lightning moved it to the device (the GPU when there is one);
    evaluation batches pass through.  When the trainer runs on the CPU and the loader has
    workers, the workers run that half instead (:meth:`train_collate`).  Outside a trainer
    (benchmarks, tests) call :meth:`on_after_batch_transfer` on a loader's batch yourself.
    """

    def train_collate(self) -> Any:
        """The training loader's collate function: :class:`WorkerPhotometric` for CPU fits."""
        trainer = getattr(self, "trainer", None)  # LightningDataModule.trainer (None: none yet)
        cpu = trainer is not None and trainer.strategy.root_device.type == "cpu"
        if cpu and getattr(self, "num_workers", 0) > 0:
            return WorkerPhotometric(self.device_views())
        return collate_plans

    def view_configs(self) -> list[Any]:
        """One view configuration per training view (a single one for image batches)."""
        raise NotImplementedError

    def device_views(self) -> list[BatchPhotometric]:
        """One device transform per :meth:`view_configs` entry."""
        return [BatchPhotometric(cfg) for cfg in self.view_configs()]

    def on_after_batch_transfer(self, batch: Any, dataloader_idx: int = 0) -> Any:
        """Apply :func:`apply_photometric` to training batches (``photometric`` present)."""
        if isinstance(batch, dict) and "photometric" in batch:
            trainer = getattr(self, "trainer", None)
            precision = str(getattr(trainer, "precision", "32-true"))
            if precision in ("bf16-true", "16-true", "64-true"):
                raise ValueError(f"trainer.precision {precision!r} casts the batch's float "
                                 "augmentation parameters before they reach the device; the "
                                 "device half of the views needs them in float32: use "
                                 "'bf16-mixed' / '16-mixed' (autocast) or '32-true'")  # fmt: skip
            cached = self.__dict__.get("_device_views")
            if cached is None:
                cached = self.__dict__["_device_views"] = self.device_views()
            return apply_photometric(batch, cached, "views" if "views" in batch else "image")
        return batch


def device_geometry(images: Tensor | list[Tensor], geometry: dict[str, Tensor],
                    size: int) -> Tensor:  # fmt: skip
    """Batched resized crop, flips and rot90 of ``[0, 1]`` float images on their device.

    ``torchvision.ops.roi_align`` with adaptive sampling (``ceil(box / size)`` points per
    output pixel and axis: an identity crop copies pixels exactly, a larger box averages
    like an anti-aliased resize), then the flips and rotations as ``torch.where`` over the
    batch.  Not bitwise the worker path's antialiased bilinear resize: views made on the
    device are a documented variant of those made in workers.  ``images`` may be a list of
    ``(C, H, W)`` images of different sizes (decoded files).
    """
    from torchvision.ops import roi_align

    def crop(batch: Tensor, box: Tensor) -> Tensor:
        index = torch.arange(batch.shape[0], device=batch.device, dtype=batch.dtype)[:, None]
        boxes = torch.cat((index, box.to(batch.device, batch.dtype)), dim=1)
        return roi_align(batch, boxes, output_size=size, spatial_scale=1.0, sampling_ratio=-1,
                         aligned=True)  # fmt: skip

    if isinstance(images, Tensor):
        out = crop(images, geometry["box"])
    else:
        out = torch.cat([crop(im[None], geometry["box"][i : i + 1])
                         for i, im in enumerate(images)])  # fmt: skip
    return _flip_rotate(out, geometry)


def _flip_rotate(out: Tensor, geometry: dict[str, Tensor]) -> Tensor:
    """The drawn flips and rot90 of every sample of ``(B, ..., S, S)``, as ``torch.where``."""
    shape = (-1,) + (1,) * (out.ndim - 1)
    out = torch.where(geometry["hflip"].view(shape), out.flip(-1), out)
    out = torch.where(geometry["vflip"].view(shape), out.flip(-2), out)
    k = geometry["rot90"].view(shape)
    for turns in (1, 2, 3):
        out = torch.where(k == turns, torch.rot90(out, turns, (-2, -1)), out)
    return out


def device_nearest(maps: Tensor, geometry: dict[str, Tensor], size: int) -> Tensor:
    """The crop, flips and rot90 of :func:`device_geometry` on label maps ``(B, H, W)``.

    Centre-aligned nearest sampling (``F.interpolate``'s ``nearest-exact``: source row
    ``top + floor((i + 0.5) * h / size)``), the pixel whose centre is nearest to where the
    image's bilinear sample of output pixel ``i`` lies; exact values on masks and
    pixel-index maps.
    """
    box = geometry["box"].to(maps.device)
    steps = torch.arange(size, device=maps.device, dtype=torch.float32)
    left, top = box[:, 0:1], box[:, 1:2]
    width, height = box[:, 2:3] - left, box[:, 3:4] - top
    centres = steps + 0.5
    rows = (top + torch.floor(centres * height / size)).long().clamp_(0, maps.shape[-2] - 1)
    cols = (left + torch.floor(centres * width / size)).long().clamp_(0, maps.shape[-1] - 1)
    batch = torch.arange(maps.shape[0], device=maps.device)[:, None, None]
    return _flip_rotate(maps[batch, rows[:, :, None], cols[:, None, :]], geometry)


def device_views(images: Tensor | list[Tensor], geometry: Sequence[dict[str, Tensor]],
                 cfgs: Sequence[Any]) -> list[Tensor]:  # fmt: skip
    """Every view of ``[0, 1]`` float source images, cropped with its drawn ``geometry``."""
    return [device_geometry(images, g, cfg.size) for g, cfg in zip(geometry, cfgs)]
