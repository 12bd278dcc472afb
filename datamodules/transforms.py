"""Augmentations: SimCLR-style views that can carry masks and pixel-index maps.

Built on ``torchvision.transforms.v2``: geometric transforms are applied jointly to
the image, to a segmentation mask and to a *pixel-index map* (every pixel holds
its flat index ``y * W + x`` in the source image), all wrapped as ``tv_tensors``;
photometric transforms touch only the image.  The index map lets dense methods
find which pixels of two views come from the same source pixel.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor
from torchvision import tv_tensors
from torchvision.transforms import v2

from datamodules.datasets.info import IMAGENET_MEAN, IMAGENET_STD


class ScaleByDtype(v2.Transform):
    """Images to float32 in the units their dtype implies (the step before ``Normalize``).

    * ``uint8`` -> ``x / 255`` and ``uint16`` -> ``x / 65535``: ``[0, 1]`` (exactly what
      ``v2.ToDtype(float32, scale=True)`` gives for uint8, so 8-bit results are unchanged);
    * signed integers (``int16`` CT volumes in Hounsfield units, ``int32``) -> their values
      as float: ``x / 32767`` would put the HU window in meaningless units, so the data
      set's mean / std are given in the original units;
    * floating point -> float32, values unchanged.

    Masks, index maps and other entries pass through untouched.
    """

    _transformed_types = (tv_tensors.Image,)

    @staticmethod
    def scale(image: Tensor) -> Tensor:
        """The float32 image of ``image`` (see the class docstring)."""
        if image.dtype == torch.uint8:
            return image.to(torch.float32).mul_(1.0 / 255)
        if image.dtype == torch.uint16:
            return image.to(torch.float32).mul_(1.0 / 65535)
        return image.to(torch.float32)

    def transform(self, inpt: Any, params: dict[str, Any]) -> Any:  # noqa: D102
        return tv_tensors.wrap(self.scale(inpt.as_subclass(Tensor)), like=inpt)

    _transform = transform  # the hook's name before torchvision 0.21


@dataclass
class ViewAugmentation:
    """Parameters of one augmented view (SimCLR recipe; defaults are the ImageNet ones).

    Attributes:
        size: Output crop size (pixels).
        crop_scale: Area range of ``RandomResizedCrop``.
        crop_ratio: Aspect-ratio range of ``RandomResizedCrop``.
        hflip_prob: Horizontal flip probability.
        vflip_prob: Vertical flip probability (remote sensing: no canonical "up").
        rot90_prob: Probability of a rotation by 90, 180 or 270 degrees (uniform), exact
            on pixels, masks and index maps (GLCNet's second view uses 0.8).
        jitter_prob: Probability of colour jitter.
        brightness: Jitter brightness strength.
        contrast: Jitter contrast strength.
        saturation: Jitter saturation strength.
        hue: Jitter hue strength.
        grayscale_prob: Probability of conversion to grey.
        blur_prob: Probability of Gaussian blur (kernel ~10% of ``size``).
        solarize_prob: Probability of solarisation.
        band_brightness: Multi-band images (not 3 channels): per-band brightness strength
            (blend towards white or black by ``|f - 1|``, ``f ~ U(1 ± b)``), applied with
            ``jitter_prob`` after the RGB jitter of the first three bands (GLCNet's 4-band
            recipe: 0.1).
        band_contrast: Multi-band images: per-band contrast strength (``x * f``,
            ``f ~ U(1 ± c)``, clipped), with the brightness.
        pixel_noise_prob: Multi-band images: with the jitter, each pixel is replaced by
            uniform noise in every band with this probability (GLCNet: 0.001).
        gamma: Range of a random gamma ``x ** g`` (``None``: none), applied with
            ``jitter_prob`` to images in ``[0, 1]`` units (Hu et al.'s stage 2).
        noise_std: Std of additive Gaussian noise in ``[0, 1]`` units (0: none).
        mean: Per-channel normalisation mean (length = channels).
        std: Per-channel normalisation std.
    """

    size: int = 224
    crop_scale: tuple[float, float] = (0.08, 1.0)
    crop_ratio: tuple[float, float] = (3 / 4, 4 / 3)
    hflip_prob: float = 0.5
    vflip_prob: float = 0.0
    rot90_prob: float = 0.0
    jitter_prob: float = 0.8
    brightness: float = 0.4
    contrast: float = 0.4
    saturation: float = 0.2
    hue: float = 0.1
    grayscale_prob: float = 0.2
    blur_prob: float = 0.5
    solarize_prob: float = 0.0
    band_brightness: float = 0.1
    band_contrast: float = 0.1
    pixel_noise_prob: float = 0.001
    gamma: tuple[float, float] | None = None
    noise_std: float = 0.0
    mean: Sequence[float] = field(default_factory=lambda: list(IMAGENET_MEAN))
    std: Sequence[float] = field(default_factory=lambda: list(IMAGENET_STD))

    def __post_init__(self) -> None:
        lo, hi = self.crop_scale
        if not 0 < lo <= hi <= 1:
            raise ValueError(f"crop_scale must satisfy 0 < min <= max <= 1, got {self.crop_scale}")
        probs = ("hflip_prob", "vflip_prob", "rot90_prob", "jitter_prob", "grayscale_prob",
                 "blur_prob", "solarize_prob", "pixel_noise_prob")  # fmt: skip
        for name in probs:
            p = getattr(self, name)
            if not 0 <= p <= 1:
                raise ValueError(f"{name} must be a probability in [0, 1], got {p}")
        if len(self.mean) != len(self.std):
            raise ValueError(f"mean {self.mean} and std {self.std} differ in length")
        if self.gamma is not None and not 0 < self.gamma[0] <= self.gamma[1]:
            raise ValueError(f"gamma must satisfy 0 < min <= max, got {self.gamma}")
        if self.noise_std < 0:
            raise ValueError(f"noise_std must be >= 0, got {self.noise_std}")


class _GammaNoise(v2.Transform):
    """Random gamma (with probability ``p``) and additive Gaussian noise on float images."""

    _transformed_types = (tv_tensors.Image,)

    def __init__(self, gamma: tuple[float, float] | None, p: float, noise_std: float) -> None:
        super().__init__()
        self.gamma, self.p, self.noise_std = gamma, p, noise_std

    def make_params(self, flat_inputs: list[Any]) -> dict[str, Any]:  # noqa: D102
        g = None
        if self.gamma is not None and bool(torch.rand(()) < self.p):
            lo, hi = self.gamma
            g = float(lo + (hi - lo) * torch.rand(()))
        return {"gamma": g}

    _get_params = make_params

    def transform(self, inpt: Any, params: dict[str, Any]) -> Any:  # noqa: D102
        x = inpt.as_subclass(Tensor)
        if params["gamma"] is not None:
            x = x.clamp(0, 1) ** params["gamma"]
        if self.noise_std > 0:
            x = x + torch.randn_like(x) * self.noise_std
        return tv_tensors.wrap(x, like=inpt)

    _transform = transform


def build_view_transform(cfg: ViewAugmentation) -> v2.Compose:
    """Compose the v2 pipeline for one view.

    Photometric steps for 3-channel RGB: colour jitter, grey, solarise.  Other channel
    counts (4-band RGB-IR, 1-channel medical) get :class:`MultiBandPhotometric` instead,
    as GLCNet's official 4-band recipe: the RGB jitter on the first three bands (if any),
    per-band brightness / contrast and sparse pixel noise (``jitter_prob``), and grey
    (``grayscale_prob``) as one random band copied into all bands.  Blur applies to all.

    Args:
        cfg: View parameters.

    Returns:
        A transform accepting an image (and optionally masks) as ``tv_tensors``.
    """
    kernel = max(3, int(0.1 * cfg.size) // 2 * 2 + 1)
    steps: list[Callable[..., Any]] = [
        v2.RandomResizedCrop(cfg.size, scale=tuple(cfg.crop_scale), ratio=tuple(cfg.crop_ratio)),
        v2.RandomHorizontalFlip(cfg.hflip_prob),
        v2.RandomVerticalFlip(cfg.vflip_prob),
        v2.RandomApply(
            [v2.RandomChoice([v2.RandomRotation((a, a)) for a in (90, 180, 270)])],
            p=cfg.rot90_prob,
        ),
        _RGBOnly(
            v2.RandomApply(
                [v2.ColorJitter(cfg.brightness, cfg.contrast, cfg.saturation, cfg.hue)],
                p=cfg.jitter_prob,
            )
        ),
        _RGBOnly(v2.RandomGrayscale(cfg.grayscale_prob)),
        v2.RandomApply([v2.GaussianBlur(kernel, sigma=(0.1, 2.0))], p=cfg.blur_prob),
        _RGBOnly(v2.RandomSolarize(threshold=128, p=cfg.solarize_prob)),
        MultiBandPhotometric(cfg),
        ScaleByDtype(),
    ]
    if cfg.gamma is not None or cfg.noise_std > 0:
        steps.append(_GammaNoise(cfg.gamma, cfg.jitter_prob, cfg.noise_std))
    steps.append(v2.Normalize(list(cfg.mean), list(cfg.std)))
    return v2.Compose(steps)


class MultiBandPhotometric(v2.Transform):
    """Photometric augmentation of non-RGB images (see :func:`build_view_transform`).

    Works in ``[0, 1]`` units on ``uint8`` / ``uint16`` images and returns the same dtype;
    3-channel images pass through (their jitter ran earlier), and so do signed-integer and
    float images (CT in Hounsfield units has no ``[0, 1]`` range to blend in).  Facts from
    GLCNet's official ``color_aug`` / ``random_image_to_gray`` (G-RSIM
    ``utils/data_for_self_GLCNet.py``).
    """

    _transformed_types = (tv_tensors.Image,)

    def __init__(self, cfg: ViewAugmentation) -> None:
        super().__init__()
        self.cfg = cfg
        self.rgb_jitter = v2.ColorJitter(cfg.brightness, cfg.contrast, cfg.saturation, cfg.hue)

    def make_params(self, flat_inputs: list[Any]) -> dict[str, Any]:  # noqa: D102
        return {
            "jitter": bool(torch.rand(()) < self.cfg.jitter_prob),
            "grey": bool(torch.rand(()) < self.cfg.grayscale_prob),
        }

    _get_params = make_params  # the hook's name before torchvision 0.21

    def transform(self, inpt: Any, params: dict[str, Any]) -> Any:  # noqa: D102
        image = inpt.as_subclass(Tensor)
        bands, dtype = image.shape[-3], image.dtype
        if bands == 3 or dtype not in (torch.uint8, torch.uint16):
            return inpt
        if not (params["jitter"] or params["grey"]):
            return inpt
        cfg, out = self.cfg, ScaleByDtype.scale(image)
        if params["jitter"]:
            if bands > 3:
                out[..., :3, :, :] = self.rgb_jitter(out[..., :3, :, :].clamp(0, 1))
            shape = (*out.shape[:-2], 1, 1)
            f = 1 + (2 * torch.rand(shape) - 1) * cfg.band_brightness
            out = torch.where(f > 1, out + (1 - out) * (f - 1), out * f)
            f = 1 + (2 * torch.rand(shape) - 1) * cfg.band_contrast
            out = (out * f).clamp(0, 1)
            if cfg.pixel_noise_prob > 0:
                hit = torch.rand(out.shape[-2:]) < cfg.pixel_noise_prob
                out = torch.where(hit, torch.rand(out.shape), out)
        if params["grey"]:
            band = int(torch.randint(bands, ()))
            out = out[..., band : band + 1, :, :].expand_as(out).clone()
        top = 255 if dtype == torch.uint8 else 65535
        return tv_tensors.wrap(out.mul(top).round_().to(dtype), like=inpt)

    _transform = transform


def build_eval_transform(
    size: int,
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
    resize: int | None = None,
) -> v2.Compose:
    """Deterministic evaluation transform: resize (shorter side), centre crop, normalise.

    Args:
        size: Output size.
        mean: Normalisation mean.
        std: Normalisation std.
        resize: Shorter-side size before cropping (default: ``size``, i.e. no crop
            margin; ImageNet protocols use ``int(size / 0.875)``).

    Returns:
        The transform.
    """
    return v2.Compose(
        [
            v2.Resize(resize or size),
            v2.CenterCrop(size),
            ScaleByDtype(),
            v2.Normalize(list(mean), list(std)),
        ]
    )


class _RGBOnly(torch.nn.Module):
    """Apply a photometric transform only to 3-channel images (identity otherwise)."""

    def __init__(self, transform: Callable[..., Any]) -> None:
        super().__init__()
        self.transform = transform

    def forward(self, *inputs: Any) -> Any:  # noqa: D102
        sample = inputs if len(inputs) > 1 else inputs[0]
        image = _find_image(sample)
        if image is not None and image.shape[-3] != 3:
            return sample
        return self.transform(sample)


def _find_image(sample: Any) -> Tensor | None:
    if isinstance(sample, tv_tensors.Image):
        return sample
    if isinstance(sample, dict):
        sample = list(sample.values())
    if isinstance(sample, list | tuple):
        for item in sample:
            found = _find_image(item)
            if found is not None:
                return found
    return None


def pixel_index_map(height: int, width: int) -> tv_tensors.Mask:
    """Map whose pixel ``(y, x)`` holds ``y * width + x`` (int64), for correspondences."""
    return tv_tensors.Mask(torch.arange(height * width, dtype=torch.int64).view(height, width))


class MultiViewTransform:
    """Turn a raw sample into ``n`` independently augmented views.

    Input samples are dicts with ``image`` (uint8 ``tv_tensors.Image``), ``label``
    and optionally ``mask`` (``tv_tensors.Mask``).  The output holds ``views`` (list
    of float tensors) and ``label``; with masks, ``masks``; with
    ``index_maps=True``, ``index_maps`` (each view's source-pixel indices) and
    ``source_size`` (``(H, W)`` of the source image, to decode the indices).

    Args:
        views: One :class:`ViewAugmentation` per view (asymmetric recipes), or a
            single one repeated ``n_views`` times.
        n_views: Number of views when ``views`` is a single configuration.
        index_maps: Also produce pixel-index maps.
    """

    def __init__(
        self,
        views: ViewAugmentation | Sequence[ViewAugmentation],
        n_views: int = 2,
        index_maps: bool = False,
    ) -> None:
        cfgs = [views] * n_views if isinstance(views, ViewAugmentation) else list(views)
        if len(cfgs) < 1:
            raise ValueError("MultiViewTransform needs at least one view")
        self.transforms = [build_view_transform(c) for c in cfgs]
        self.index_maps = index_maps

    def __call__(self, sample: dict[str, Any]) -> dict[str, Any]:  # noqa: D102
        image = sample["image"]
        extras: dict[str, tv_tensors.Mask] = {}
        if "mask" in sample:
            extras["mask"] = sample["mask"]
        out: dict[str, Any] = {"label": sample.get("label", -1), "views": []}
        if self.index_maps:
            extras["index"] = pixel_index_map(*image.shape[-2:])
            out["source_size"] = torch.tensor(image.shape[-2:], dtype=torch.int64)
        for t in self.transforms:
            res = t({"image": image, **extras})
            out["views"].append(res["image"].as_subclass(Tensor))
            for key, name in (("mask", "masks"), ("index", "index_maps")):
                if key in res:
                    out.setdefault(name, []).append(res[key].as_subclass(Tensor))
        return out


class ImageMaskTransform:
    """Apply a transform jointly to the ``image`` (and ``mask``) of a raw sample."""

    def __init__(self, transform: Callable[..., Any]) -> None:
        self.transform = transform

    def __call__(self, sample: dict[str, Any]) -> dict[str, Any]:  # noqa: D102
        keys = [k for k in ("image", "mask") if k in sample]
        res = self.transform({k: sample[k] for k in keys})
        out = dict(sample)
        for k in keys:
            out[k] = res[k].as_subclass(Tensor)
        return out
