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

from contraseg.datamodules.batch_augment import scale_by_dtype
from contraseg.datamodules.datasets.info import IMAGENET_MEAN, IMAGENET_STD


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

    scale = staticmethod(scale_by_dtype)  # one rule, shared with the device half

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


class RandomRot90(v2.Transform):
    """Rotation by 90, 180 or 270 degrees (uniform) with probability ``p``, exact on every entry.

    ``torch.rot90`` on the image, masks and index maps alike (views are square crops).
    """

    def __init__(self, p: float) -> None:
        super().__init__()
        self.p = p

    def make_params(self, flat_inputs: list[Any]) -> dict[str, Any]:  # noqa: D102
        if self.p == 0 or not bool(torch.rand(()) < self.p):
            return {"k": 0}
        return {"k": int(torch.randint(1, 4, ()))}

    _get_params = make_params  # the hook's name before torchvision 0.21

    def transform(self, inpt: Any, params: dict[str, Any]) -> Any:  # noqa: D102
        if params["k"] == 0 or not isinstance(inpt, tv_tensors.Image | tv_tensors.Mask):
            return inpt
        return tv_tensors.wrap(torch.rot90(inpt.as_subclass(Tensor), params["k"], (-2, -1)),
                               like=inpt)  # fmt: skip

    _transform = transform


def build_geometric_transform(cfg: ViewAugmentation) -> v2.Compose:
    """The per-sample, geometric part of one view: crop, flips, rot90, in the source dtype.

    Args:
        cfg: View parameters.

    Returns:
        A transform over ``{"image": Image, "mask": Mask, "index": Mask}`` dicts (any subset).
    """
    return v2.Compose([
        v2.RandomResizedCrop(cfg.size, scale=tuple(cfg.crop_scale), ratio=tuple(cfg.crop_ratio)),
        v2.RandomHorizontalFlip(cfg.hflip_prob),
        v2.RandomVerticalFlip(cfg.vflip_prob),
        RandomRot90(cfg.rot90_prob),
    ])  # fmt: skip


def _chance(p: float) -> bool:
    """One Bernoulli draw from torch's RNG (none when ``p`` is 0)."""
    return p > 0 and bool(torch.rand(()) < p)


def _uniform(lo: float, hi: float) -> float:
    return float(torch.empty(1).uniform_(lo, hi))


def draw_photometric(cfg: ViewAugmentation, image: Tensor) -> dict[str, Tensor]:
    """Draw one sample's photometric parameters (applied on the device, batched).

    The distributions are those of the v2 recipe this replaces: jitter with ``jitter_prob``
    in a random order (``randperm(4)``) with factors ``U(max(0, 1 - s), 1 + s)`` and hue
    ``U(-h, h)`` (an op of strength 0 is not drawn), grey with ``grayscale_prob``, blur with
    ``blur_prob`` and ``sigma ~ U(0.1, 2)``, solarise with ``solarize_prob``; 3-channel images
    get the RGB ops, other ``uint8`` / ``uint16`` images GLCNet's multi-band ones (per-band
    brightness / contrast ``1 + U(-1, 1) * strength``, grey as one random band copied); a
    gamma ``U(gamma)`` with ``jitter_prob``; a seed for the random pixels (sparse pixel
    noise, Gaussian noise).  Every entry is always present (the batch collates), off when not
    drawn.

    Args:
        cfg: The view's parameters.
        image: The view after the geometric part (channels and dtype choose the ops).

    Returns:
        A dict of tensors (see :class:`contraseg.datamodules.batch_augment.BatchPhotometric`).
    """
    channels = image.shape[-3]
    rgb = channels == 3
    bands = not rgb and image.dtype in (torch.uint8, torch.uint16)
    p: dict[str, Any] = {"jitter": False, "order": torch.arange(4), "brightness": 1.0,
                         "contrast": 1.0, "saturation": 1.0, "hue": 0.0, "grey": False,
                         "grey_band": 0, "blur": False, "sigma": 1.0, "solarize": False,
                         "band_brightness": torch.ones(channels),
                         "band_contrast": torch.ones(channels), "gamma_on": False,
                         "gamma": 1.0, "seed": 0}  # fmt: skip
    if (rgb or bands) and _chance(cfg.jitter_prob):
        p["jitter"], p["order"] = True, torch.randperm(4)
        for name in ("brightness", "contrast", "saturation"):
            s = getattr(cfg, name)
            if s > 0:
                p[name] = _uniform(max(0.0, 1 - s), 1 + s)
        if cfg.hue > 0:
            p["hue"] = _uniform(-cfg.hue, cfg.hue)
        if bands:
            p["band_brightness"] = 1 + (2 * torch.rand(channels) - 1) * cfg.band_brightness
            p["band_contrast"] = 1 + (2 * torch.rand(channels) - 1) * cfg.band_contrast
    if (rgb or bands) and _chance(cfg.grayscale_prob):
        p["grey"] = True
        if bands:
            p["grey_band"] = int(torch.randint(channels, ()))
    if _chance(cfg.blur_prob):
        p["blur"], p["sigma"] = True, _uniform(0.1, 2.0)
    if rgb and _chance(cfg.solarize_prob):
        p["solarize"] = True
    if cfg.gamma is not None and _chance(cfg.jitter_prob):
        p["gamma_on"], p["gamma"] = True, _uniform(*cfg.gamma)
    if cfg.noise_std > 0 or (bands and p["jitter"] and cfg.pixel_noise_prob > 0):
        p["seed"] = int(torch.randint(0, 2**62, ()))
    out: dict[str, Tensor] = {}
    for key, value in p.items():
        if isinstance(value, Tensor):
            out[key] = value.to(torch.float32 if value.is_floating_point() else torch.int64)
        elif isinstance(value, bool):
            out[key] = torch.tensor(value)
        elif isinstance(value, int):
            out[key] = torch.tensor(value, dtype=torch.int64)
        else:
            out[key] = torch.tensor(value, dtype=torch.float32)
    return out


def draw_geometry(cfg: ViewAugmentation, height: int, width: int) -> dict[str, Tensor]:
    """One view's crop, flips and rot90, drawn in a worker for a view cropped on the device.

    Applied by :func:`contraseg.datamodules.batch_augment.device_geometry`.

    The distributions of the per-sample half (``RandomResizedCrop`` with ``crop_scale`` /
    ``crop_ratio``, flips, rot90): the crop box comes from torchvision's own
    ``RandomResizedCrop.make_params``.
    """
    crop = v2.RandomResizedCrop(cfg.size, scale=tuple(cfg.crop_scale), ratio=tuple(cfg.crop_ratio))
    box = crop.make_params([tv_tensors.Image(torch.empty(0, height, width, dtype=torch.uint8))])
    hflip = cfg.hflip_prob > 0 and bool(torch.rand(()) < cfg.hflip_prob)
    vflip = cfg.vflip_prob > 0 and bool(torch.rand(()) < cfg.vflip_prob)
    k = int(torch.randint(1, 4, ())) if cfg.rot90_prob > 0 and bool(
        torch.rand(()) < cfg.rot90_prob) else 0  # fmt: skip
    return {"box": torch.tensor([box["left"], box["top"], box["left"] + box["width"],
                                 box["top"] + box["height"]], dtype=torch.float32),
            "hflip": torch.tensor(hflip), "vflip": torch.tensor(vflip),
            "rot90": torch.tensor(k)}  # fmt: skip


class ViewDraws:
    """Sample transform of the device-made views: each view's geometry and photometrics drawn.

    For data whose pixels are made on the device (scenes rendered there, JPEGs decoded
    there): the worker draws, from the sample's seeded stream, every view's crop / flip /
    rot90 (:func:`draw_geometry`) and photometric parameters (:func:`draw_photometric`) and
    passes the sample's other entries through.

    Args:
        cfgs: One view configuration per view.
        size: ``(H, W)`` of every source image, or ``None`` to read the sample's ``size``.
    """

    def __init__(self, cfgs: Sequence[ViewAugmentation],
                 size: tuple[int, int] | None = None) -> None:  # fmt: skip
        self.cfgs, self.size = list(cfgs), size
        self._rgb = torch.zeros(3, 1, 1, dtype=torch.uint8)  # decoded / rendered: 8-bit RGB

    def __call__(self, sample: dict[str, Any]) -> dict[str, Any]:  # noqa: D102
        height, width = self.size or tuple(int(v) for v in sample["size"])
        geometry = [draw_geometry(cfg, height, width) for cfg in self.cfgs]
        photometric = [draw_photometric(cfg, self._rgb) for cfg in self.cfgs]
        return {**sample, "geometry": geometry, "photometric": photometric}



def no_photometric(size: int, mean: Sequence[float], std: Sequence[float]) -> ViewAugmentation:
    """A view configuration without photometric ops: only scale and normalise on the device."""
    return ViewAugmentation(size=size, jitter_prob=0.0, grayscale_prob=0.0, blur_prob=0.0,
                            mean=list(mean), std=list(std))  # fmt: skip


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


def pixel_index_map(height: int, width: int) -> tv_tensors.Mask:
    """Map whose pixel ``(y, x)`` holds ``y * width + x`` (int64), for correspondences."""
    return tv_tensors.Mask(torch.arange(height * width, dtype=torch.int64).view(height, width))


class MultiViewTransform:
    """Turn a raw sample into ``n`` independently augmented views.

    Input samples are dicts with ``image`` (``tv_tensors.Image``, uint8 for 8-bit data),
    ``label`` and optionally ``mask`` (``tv_tensors.Mask``).  The output holds ``views``
    (list of the views after the geometric part, in the image's dtype), ``photometric``
    (each view's drawn parameters, applied on the device by
    :class:`~contraseg.datamodules.batch_augment.BatchPhotometric`) and ``label``; with masks,
    ``masks``; with ``index_maps=True``, ``index_maps`` (each view's source-pixel indices)
    and ``source_size`` (``(H, W)`` of the source image, to decode the indices).

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
        self.cfgs = cfgs
        self.transforms = [build_geometric_transform(c) for c in cfgs]
        self.index_maps = index_maps

    def __call__(self, sample: dict[str, Any]) -> dict[str, Any]:  # noqa: D102
        image = sample["image"]
        extras: dict[str, tv_tensors.Mask] = {}
        if "mask" in sample:
            extras["mask"] = sample["mask"]
        out: dict[str, Any] = {"label": sample.get("label", -1), "views": [], "photometric": []}
        if self.index_maps:
            extras["index"] = pixel_index_map(*image.shape[-2:])
            out["source_size"] = torch.tensor(image.shape[-2:], dtype=torch.int64)
        for cfg, t in zip(self.cfgs, self.transforms):
            res = t({"image": image, **extras})
            view = res["image"].as_subclass(Tensor)
            out["views"].append(view)
            out["photometric"].append(draw_photometric(cfg, view))
            for key, name in (("mask", "masks"), ("index", "index_maps")):
                if key in res:
                    out.setdefault(name, []).append(res[key].as_subclass(Tensor))
        return out


class ImageMaskTransform:
    """Apply a transform jointly to the ``image`` (and ``mask``) of a raw sample.

    Args:
        transform: The joint transform.
        photometric: Training samples: the photometric configuration whose parameters are
            drawn after ``transform`` (the sample's ``photometric`` entry, applied on the
            device with the dtype scaling and normalisation); ``None``: the transform is
            complete (evaluation).
    """

    def __init__(self, transform: Callable[..., Any],
                 photometric: ViewAugmentation | None = None) -> None:  # fmt: skip
        self.transform, self.photometric = transform, photometric

    def __call__(self, sample: dict[str, Any]) -> dict[str, Any]:  # noqa: D102
        keys = [k for k in ("image", "mask") if k in sample]
        res = self.transform({k: sample[k] for k in keys})
        out = dict(sample)
        for k in keys:
            out[k] = res[k].as_subclass(Tensor)
        if self.photometric is not None:
            out["photometric"] = draw_photometric(self.photometric, out["image"])
        return out
