"""A shape benchmark of real data: handwritten digits placed in textured, cluttered scenes.

The textured benchmark (:mod:`~contraseg.datamodules.datasets.textured_scenes`) names a class by its
texture family, and random convolutional features are strong texture descriptors (a random
frozen ResNet-18 reaches most of what pretraining does there).  Here the class is a *shape*
drawn by a person: scikit-learn's 1,797 real handwritten digits (``load_digits``, 8x8, 0-16;
the UCI optdigits test part, bundled, no download), upscaled bilinearly and placed at random
positions, sizes, aspect ratios and rotations over the textured benchmark's backgrounds and
clutter.  Everything that is not the digit's shape is per-object nuisance:

* texture: a uniform random family of all eight (stripes, checker, ...), random orientation,
  phase and period, with two random colours (one light, one dark), so no texture or colour
  predicts a class;
* pose: centre anywhere, glyph side ``digit_size`` of the scene (default 25-45%), width
  x0.8-1, rotation within ``±max_rotation`` degrees (small by default: a 6 rotated by 180
  degrees is a 9);
* clutter: ``clutter`` distractors per scene (untextured gradient shapes, or with
  ``clutter_textured`` small patches of the textures), labelled background.

Mask ids: ``0`` background, ``d + 1`` for digit ``d`` (the glyph's pixels above
``threshold`` of its intensity range); the image-level label is the digit covering most
pixels.  The writers of the digits are not known, so train and validation are held apart by
*digit sample*: a seeded, stratified ``holdout_fraction`` of the 1,797 glyphs
(:func:`~contraseg.datamodules.datasets.digits._split`) is the only source of validation scenes
(``digit_pool="val"``), the rest of training scenes.  A scene is a pure function of
``(seed, index)`` and renders batched on any device, as the textured scenes.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor

from contraseg.datamodules.datasets.digits import _split
from contraseg.datamodules.datasets.textured_scenes import (
    _OBJ_FIELDS,
    TEXTURES,
    SceneSpec,
    TexturedScenes,
)

__all__ = ["DIGIT_CLASSES", "DigitSceneSpec", "DigitScenes", "digit_glyphs"]

DIGIT_CLASSES = tuple(str(d) for d in range(10))
# extra per-object random numbers of a digit object (after the textured scenes' fields)
_DIGIT_FIELDS = ("digit", "family", "width")


def digit_glyphs(pool: Literal["train", "val", "all"] = "all", holdout_fraction: float = 0.25,
                 split_seed: int = 0) -> tuple[Tensor, Tensor]:  # fmt: skip
    """The glyphs of one pool: ``(n, 1, 8, 8)`` float in ``[0, 1]`` and their ``(n,)`` digits.

    Args:
        pool: ``train`` (the glyphs not held out), ``val`` (the held-out ones) or ``all``.
        holdout_fraction: Held-out share of each digit's glyphs.
        split_seed: Seed of the stratified split.

    Raises:
        ValueError: On an unknown pool or a fraction outside ``(0, 1)``.
    """
    from sklearn.datasets import load_digits

    if pool not in ("train", "val", "all"):
        raise ValueError(f"digit_pool must be 'train', 'val' or 'all', got {pool!r}")
    if not 0 < holdout_fraction < 1:
        raise ValueError(f"holdout_fraction must be in (0, 1), got {holdout_fraction}")
    raw = load_digits()
    labels = raw.target.astype("int64")
    train, val = _split(labels, holdout_fraction, split_seed)
    idx = {"train": train, "val": val, "all": slice(None)}[pool]
    images = torch.from_numpy(raw.images[idx].astype("float32") / 16.0).unsqueeze(1)
    return images.contiguous(), torch.from_numpy(labels[idx]).contiguous()


@dataclass(frozen=True)
class DigitSceneSpec:
    """What a digit scene looks like: one argument, ``data.init_args.scene``.

    The generator and both digit data modules take this one dataclass; a config changes
    single fields (``scene: {clutter: 0}`` keeps the other defaults).

    Attributes:
        image_size: Height and width in pixels.
        min_objects: Fewest digits per scene.
        max_objects: Most digits per scene.
        digit_size: Range of the glyph side as a fraction of the scene side.
        max_rotation: Largest rotation of a glyph in degrees (either way).
        threshold: Glyph intensity (0-1) above which a pixel is the digit's.
        period: Mean texture period in pixels.
        clutter: Distractor shapes per scene (labelled background).
        clutter_textured: Distractors painted with the textures instead of gradients.
        num_domains: Rendering regimes (see :class:`SceneSpec`).
        domain: Render every scene in this domain.
        holdout_fraction: Held-out share of each digit's glyphs (the validation pool).
        split_seed: Seed of the glyph split (fixed across runs by default).

    Raises:
        ValueError: On a field outside its range (all offending fields named).
    """

    image_size: int = 96
    min_objects: int = 1
    max_objects: int = 3
    digit_size: tuple[float, float] = (0.25, 0.45)
    max_rotation: float = 20.0
    threshold: float = 0.3
    period: float = 6.0
    clutter: int = 2
    clutter_textured: bool = True
    num_domains: int = 1
    domain: int | None = None
    holdout_fraction: float = 0.25
    split_seed: int = 0

    def __post_init__(self) -> None:
        object.__setattr__(self, "digit_size", tuple(float(v) for v in self.digit_size))
        lo, hi = self.digit_size if len(self.digit_size) == 2 else (0.0, 0.0)
        checks = ((0 < lo <= hi <= 1, "digit_size = (lo, hi) with 0 < lo <= hi <= 1"),
                  (0 <= self.max_rotation <= 180, "max_rotation in [0, 180] degrees"),
                  (0 < self.threshold < 1, "threshold in (0, 1)"),
                  (0 < self.holdout_fraction < 1, "holdout_fraction in (0, 1)"))  # fmt: skip
        failed = [expected for ok, expected in checks if not ok]
        if failed:
            raise ValueError(f"scene expects {'; '.join(failed)}; got {self}")
        self.textured()  # the textured scene's fields: their checks too

    def textured(self) -> SceneSpec:
        """The background, clutter and layout fields as the textured generator's spec."""
        return SceneSpec(
            image_size=self.image_size, num_classes=len(TEXTURES), min_objects=self.min_objects,
            max_objects=self.max_objects, period=self.period, clutter=self.clutter,
            clutter_textured=self.clutter_textured, num_domains=self.num_domains,
            domain=self.domain,
        )  # fmt: skip


class DigitScenes(TexturedScenes):
    """Handwritten digits in textured, cluttered scenes (see the module docstring).

    Args:
        num_samples: Number of scenes.
        scene: What the scenes look like (:class:`DigitSceneSpec`).
        digit_pool: Glyphs drawn from: ``train``, ``val`` (held out) or ``all``.
        seed: Seed of the scenes.

    Raises:
        ValueError: On ``num_samples < 1`` or an unknown ``digit_pool``.
    """

    _EXTRA_OBJECT_FIELDS = _DIGIT_FIELDS

    def __init__(self, num_samples: int = 2048,
                 scene: DigitSceneSpec = DigitSceneSpec(),  # noqa: B008
                 digit_pool: Literal["train", "val", "all"] = "train",
                 seed: int = 0) -> None:  # fmt: skip
        if not isinstance(scene, DigitSceneSpec):
            raise TypeError(f"DigitScenes expects a DigitSceneSpec, got {type(scene).__name__}")
        super().__init__(num_samples, scene.textured(), seed)
        self.scene = scene
        self.classes = list(DIGIT_CLASSES)
        self.num_classes = len(DIGIT_CLASSES)
        self.num_textures = len(TEXTURES)
        self.digit_size, self.max_rotation = scene.digit_size, scene.max_rotation
        self.threshold, self.digit_pool = scene.threshold, digit_pool
        glyphs, digits = digit_glyphs(digit_pool, scene.holdout_fraction, scene.split_seed)
        self._pool: dict[torch.device, tuple[Tensor, Tensor]] = {torch.device("cpu"):
                                                                  (glyphs, digits)}  # fmt: skip

    def _glyph_pool(self, device: torch.device) -> tuple[Tensor, Tensor]:
        if device not in self._pool:
            glyphs, digits = self._pool[torch.device("cpu")]
            self._pool[device] = (glyphs.to(device), digits.to(device))
        return self._pool[device]

    @property
    def pool_size(self) -> int:
        """Glyphs in this generator's pool."""
        return int(self._pool[torch.device("cpu")][1].numel())

    def glyph_indices(self, index: int) -> list[int]:
        """Pool indices of scene ``index``'s digits in painting order."""
        objects, _, _, count, _ = self._draw(index)
        u = objects[: int(count), len(_OBJ_FIELDS) + _DIGIT_FIELDS.index("digit")]
        return (u * self.pool_size).long().clamp(max=self.pool_size - 1).tolist()

    def object_classes(self, index: int) -> list[int]:
        """Digits of scene ``index``'s objects in painting order (later ones on top)."""
        digits = self._pool[torch.device("cpu")][1]
        return [int(digits[i]) for i in self.glyph_indices(index)]

    def _paint(self, p: Tensor, table: Tensor, distractor: bool) -> tuple:
        """Distractors as the textured scenes'; objects are textured digit glyphs."""
        if distractor:
            return super()._paint(p, table, True)
        cols = {name: i for i, name in enumerate((*_OBJ_FIELDS, *_DIGIT_FIELDS))}
        n, k = p.shape[:2]
        size = float(self.size)
        yy, xx = self._grid(p.device)
        lo, hi = self.digit_size
        half = (lo + (hi - lo) * p[..., cols["radius"]]) * size / 2  # (N, K) glyph half-side
        cy = (0.1 + 0.8 * p[..., cols["cy"]]) * size
        cx = (0.1 + 0.8 * p[..., cols["cx"]]) * size
        dy, dx = yy - cy[..., None, None], xx - cx[..., None, None]
        angle = ((p[..., cols["rot"]] - 0.5) * 2 * math.radians(self.max_rotation))[..., None, None]
        width = (0.8 + 0.2 * p[..., cols["width"]])[..., None, None]
        u = (dx * angle.cos() + dy * angle.sin()) / (half[..., None, None] * width)
        v = (-dx * angle.sin() + dy * angle.cos()) / half[..., None, None]
        glyphs, digits = self._glyph_pool(p.device)
        pick = (p[..., cols["digit"]] * len(digits)).long().clamp(max=len(digits) - 1)
        grid = torch.stack([u, v], dim=-1).reshape(n * k, self.size, self.size, 2)
        intensity = F.grid_sample(glyphs[pick.flatten()], grid, mode="bilinear",
                                  padding_mode="zeros", align_corners=False)  # fmt: skip
        inside = intensity.reshape(n, k, self.size, self.size) > self.threshold
        classes = digits[pick]
        # nuisance: a uniform texture family, orientation, phase, period and two colours
        tex = (p[..., cols["tex_angle"]] * 2 * math.pi)[..., None, None]
        tu, tv = dx * tex.cos() + dy * tex.sin(), -dx * tex.sin() + dy * tex.cos()
        period_gain = table[:, self._REGIME_KEYS.index("period"), None]
        period = self.period * (0.8 + 0.45 * p[..., cols["tex_period"]]) * period_gain
        patterns = self._textures(tu, tv, period, p[..., cols["tex_phase"]])
        family = (p[..., cols["family"]] * self.num_textures).long()
        family = family.clamp(max=self.num_textures - 1)
        t = patterns.gather(0, family[None, ..., None, None].expand(1, *patterns.shape[1:]))[0]
        light = 0.55 + 0.4 * p[..., [cols[f"light{i}"] for i in range(3)]]
        dark = 0.05 + 0.4 * p[..., [cols[f"dark{i}"] for i in range(3)]]
        swap = (p[..., cols["swap"]] > 0.5)[..., None]
        c1, c2 = torch.where(swap, dark, light), torch.where(swap, light, dark)
        colour = c1[..., None, None] * t[:, :, None] + c2[..., None, None] * (1 - t[:, :, None])
        return inside, colour, classes
