"""Segmentation-scale synthetic benchmark: multi-object scenes whose classes are texture families.

A scene (96-128 px, any size) holds several objects on a textured background.  An object's
*class* fixes only its texture family; everything else is per-object nuisance:

* shape: an ellipse of random aspect deformed by random 2nd/3rd radial harmonics, any rotation;
* texture: family fixed by class; orientation, phase and period (±25% around ``period`` px)
  random, so a rotation, flip or moderate rescale maps every class onto itself (the families
  are rotation-invariant *as families*; the old 32 px generator, whose stripe angle was the
  class, mapped class ``c`` onto ``c + 3`` under ``rot90``);
* colour: two random colours (one light, one dark, order random) per object;
* occlusion: objects are painted in order, later ones on top; the mask is the visible one.

The background has its own family (low-frequency colour field, a faint coarse grating and
pixel noise: rich per-image nuisance, separable from every class by frequency).  Variants:

* ``clutter``: that many class-irrelevant distractors per scene (untextured, colour-gradient
  shapes of any size, labelled background), drawn under the objects; with
  ``clutter_textured`` they are small patches of the *class* textures instead (a random
  family each, different per image, still background), clutter that only a foreground
  mask tells from the objects (CLAWS's hard attention);
* ``imbalance_ratio``: object classes drawn long-tailed, ``p_c ∝ ratio^(-c/(C-1))`` (class 0
  ``ratio`` times as frequent as the last);
* ``num_domains``: domain ``d`` (``index % num_domains`` unless ``domain`` fixes it) renders the
  same classes under its own gamma, contrast, colour cast, texture period and noise; domain 0
  is the clean regime.  Items carry ``"domain"``.

Rendering is vectorised over objects and scenes (:meth:`TexturedScenes.render` draws a whole
batch in tensor ops); a scene is a pure function of ``(seed, index)``.  ``benchmarks/scenes.py``
reports scenes/s.  Mask ids: ``0`` background, ``c + 1`` for class ``c``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.data import Dataset
from torchvision import tv_tensors

TEXTURES = ("stripes", "checker", "dots", "rings", "zigzag", "rays", "blobs", "grid")

# per-object random numbers (one torch.rand draw per scene, sliced in this order)
_OBJ_FIELDS = (
    "cy", "cx", "radius", "aspect", "rot", "a2", "p2", "a3", "p3",
    "tex_angle", "tex_phase", "tex_period", "swap", *(f"light{i}" for i in range(3)),
    *(f"dark{i}" for i in range(3)), "cls",
)  # fmt: skip
_BG_FIELDS = 16  # background field: 3 gratings (angle, period, phase) + 2 colours + nuisance
_BLOB_ANGLES = 5


def _domain_regime(domain: int) -> dict[str, float]:
    """Rendering regime of a domain: identity for 0, a fixed random regime for others."""
    if domain == 0:
        return {"gamma": 1.0, "contrast": 1.0, "period": 1.0, "noise": 0.03,
                "cast0": 1.0, "cast1": 1.0, "cast2": 1.0, "blur": 0.0}  # fmt: skip
    r = torch.rand(8, generator=torch.Generator().manual_seed(7919 * domain + 17)).tolist()
    return {
        "gamma": math.exp((r[0] - 0.5) * 1.4),  # 0.5 .. 2
        "contrast": 0.5 + 0.4 * r[1],
        "period": 0.75 + 0.6 * r[2],
        "noise": 0.04 + 0.1 * r[3],
        "cast0": 0.75 + 0.5 * r[4],
        "cast1": 0.75 + 0.5 * r[5],
        "cast2": 0.75 + 0.5 * r[6],
        "blur": float(r[7] > 0.5),
    }


@dataclass(frozen=True)
class SceneSpec:
    """What a textured scene looks like: one argument, ``data.init_args.scene``.

    The generator and both textured data modules take this one dataclass; a config changes
    single fields (``scene: {clutter: 3}`` keeps the other defaults).

    Attributes:
        image_size: Height and width in pixels (96-128 is the benchmark's range).
        num_classes: Object classes (texture families), at most ``len(TEXTURES)``; the
            segmentation modules add the background class.
        min_objects: Fewest objects per scene.
        max_objects: Most objects per scene.
        period: Mean texture period in pixels.
        clutter: Distractor shapes per scene (labelled background).
        clutter_textured: Paint the distractors with the class textures (a uniform random
            family each, smaller than objects; still labelled background): class-irrelevant
            texture clutter that only a foreground mask separates from the objects.
        imbalance_ratio: Frequency ratio of the most to the least common class (1: uniform).
        num_domains: Number of rendering regimes; items carry their domain id.
        domain: Render every scene in this domain instead of ``index % num_domains``.

    Raises:
        ValueError: On a field outside its range (all offending fields named).
    """

    image_size: int = 96
    num_classes: int = 6
    min_objects: int = 2
    max_objects: int = 5
    period: float = 8.0
    clutter: int = 0
    clutter_textured: bool = False
    imbalance_ratio: float = 1.0
    num_domains: int = 1
    domain: int | None = None

    def __post_init__(self) -> None:
        checks = (
            (2 <= self.num_classes <= len(TEXTURES), f"num_classes in [2, {len(TEXTURES)}]"),
            (self.image_size >= 16, "image_size >= 16"),
            (1 <= self.min_objects <= self.max_objects, "1 <= min_objects <= max_objects"),
            (self.period >= 3.0, "period >= 3 px"),
            (self.clutter >= 0, "clutter >= 0"),
            (self.imbalance_ratio >= 1.0, "imbalance_ratio >= 1"),
            (self.num_domains >= 1, "num_domains >= 1"),
            (self.domain is None or 0 <= self.domain < self.num_domains,
             "domain in [0, num_domains)"),
        )  # fmt: skip
        failed = [expected for ok, expected in checks if not ok]
        if failed:
            raise ValueError(f"scene expects {'; '.join(failed)}; got {self}")


class TexturedScenes(Dataset):
    """Deterministic multi-object texture scenes (see the module docstring).

    Args:
        num_samples: Number of scenes.
        scene: What the scenes look like (:class:`SceneSpec`).
        seed: Seed of the whole data set (train and val use different seeds).

    Raises:
        ValueError: On ``num_samples < 1`` (the scene fields are checked by
            :class:`SceneSpec`).
    """

    # names of per-object random numbers a subclass draws after ``_OBJ_FIELDS`` (same stream)
    _EXTRA_OBJECT_FIELDS: tuple[str, ...] = ()

    def __init__(self, num_samples: int = 2048, scene: SceneSpec = SceneSpec(),  # noqa: B008
                 seed: int = 0) -> None:  # fmt: skip
        if num_samples < 1:
            raise ValueError(f"TexturedScenes expects num_samples >= 1, got {num_samples}")
        if not isinstance(scene, SceneSpec):
            raise TypeError(f"TexturedScenes expects a SceneSpec, got {type(scene).__name__}")
        self.scene = scene
        num_classes, imbalance_ratio = scene.num_classes, scene.imbalance_ratio
        self.num_samples, self.size, self.num_classes = num_samples, scene.image_size, num_classes
        self.min_objects, self.max_objects = scene.min_objects, scene.max_objects
        self.period, self.clutter, self.seed = scene.period, scene.clutter, seed
        self.num_domains, self.domain = scene.num_domains, scene.domain
        self.imbalance_ratio, self.clutter_textured = imbalance_ratio, scene.clutter_textured
        self.classes = list(TEXTURES[:num_classes])
        self.num_textures = num_classes  # families drawn (digit scenes: all, as nuisance)
        exponents = torch.arange(num_classes, dtype=torch.float64) / (num_classes - 1)
        probs = imbalance_ratio ** (-exponents)
        self.class_probs = (probs / probs.sum()).float()
        self._cdf = self.class_probs.cumsum(0)
        self._grids: dict[torch.device, tuple[Tensor, Tensor]] = {}  # pixel units, per device
        self._regimes = [_domain_regime(d) for d in range(scene.num_domains)]

    def _grid(self, device: torch.device) -> tuple[Tensor, Tensor]:
        """Pixel-centre coordinates ``(H, W)`` on ``device`` (cached)."""
        if device not in self._grids:
            pix = torch.arange(self.size, dtype=torch.float32, device=device) + 0.5
            self._grids[device] = torch.meshgrid(pix, pix, indexing="ij")  # type: ignore[assignment]
        return self._grids[device]

    def __len__(self) -> int:
        return self.num_samples

    def domain_of(self, index: int) -> int:
        """Domain id of scene ``index``."""
        return self.domain if self.domain is not None else index % self.num_domains

    # ------------------------------------------------------------------ parameters
    def _draw(self, index: int) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
        """Random numbers of one scene: objects, distractors, background, count, noise seed."""
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + index)
        k, n_f = self.max_objects, len(_OBJ_FIELDS)
        objects = torch.rand(k, n_f + len(self._EXTRA_OBJECT_FIELDS), generator=g)
        background = torch.rand(_BG_FIELDS, generator=g)
        count = torch.randint(self.min_objects, self.max_objects + 1, (1,), generator=g)
        noise_seed = torch.randint(0, 2**31 - 1, (1,), generator=g)
        clutter = torch.rand(self.clutter, n_f, generator=g)  # last: variants add, not reshuffle
        return objects, clutter, background, count, noise_seed

    def object_classes(self, index: int) -> list[int]:
        """Classes of scene ``index``'s objects in painting order (later ones on top)."""
        objects, _, _, count, _ = self._draw(index)
        u = objects[: int(count), _OBJ_FIELDS.index("cls")].contiguous()
        return torch.searchsorted(self._cdf, u, right=True).clamp(max=self.num_classes - 1).tolist()

    # ------------------------------------------------------------------ rendering
    def _local(self, p: Tensor, cols: dict[str, int], radius: Tensor) -> tuple[Tensor, ...]:
        """Object-frame coordinates ``(N, K, H, W)``: shape frame and texture frame (px)."""
        s = float(self.size)
        yy, xx = self._grid(p.device)
        cy = (p[..., cols["cy"]] * 1.1 - 0.05) * s
        cx = (p[..., cols["cx"]] * 1.1 - 0.05) * s
        dy = yy - cy[..., None, None]
        dx = xx - cx[..., None, None]
        rot = (p[..., cols["rot"]] * 2 * math.pi)[..., None, None]
        u = (dx * rot.cos() + dy * rot.sin()) / radius[..., None, None]
        v = (-dx * rot.sin() + dy * rot.cos()) / radius[..., None, None]
        aspect = (0.55 + 0.45 * p[..., cols["aspect"]])[..., None, None]
        v = v / aspect
        ang = (p[..., cols["tex_angle"]] * 2 * math.pi)[..., None, None]
        tu = dx * ang.cos() + dy * ang.sin()
        tv = -dx * ang.sin() + dy * ang.cos()
        return u, v, tu, tv

    @staticmethod
    def _inside(p: Tensor, cols: dict[str, int], u: Tensor, v: Tensor) -> Tensor:
        """Deformed-ellipse masks: ``rho <= 1 + a2 cos 2(t - p2) + a3 cos 3(t - p3)``."""
        rho = torch.sqrt(u * u + v * v)
        theta = torch.atan2(v, u)
        a2 = (0.25 * p[..., cols["a2"]])[..., None, None]
        a3 = (0.15 * p[..., cols["a3"]])[..., None, None]
        p2 = (p[..., cols["p2"]] * 2 * math.pi)[..., None, None]
        p3 = (p[..., cols["p3"]] * 2 * math.pi)[..., None, None]
        return rho <= 1 + a2 * torch.cos(2 * (theta - p2)) + a3 * torch.cos(3 * (theta - p3))

    def _textures(self, tu: Tensor, tv: Tensor, period: Tensor, phase: Tensor) -> Tensor:
        """Every family's pattern in ``[0, 1]``: ``(F, N, K, H, W)`` (tensor ops only)."""
        w = 2 * math.pi / period[..., None, None]
        ph = phase[..., None, None] * 2 * math.pi
        a, b = w * tu + ph, w * tv
        rho = torch.sqrt(tu * tu + tv * tv)
        per = period[..., None, None]
        zig = (torch.remainder(tv / per, 1.0) - 0.5).abs() * per
        blobs = sum(
            torch.cos(w * 0.7 * (tu * math.cos(t) + tv * math.sin(t)) + ph * (i + 1))
            for i, t in enumerate(torch.arange(_BLOB_ANGLES) * math.pi / _BLOB_ANGLES)
        )
        families = [
            0.5 + 0.5 * torch.sin(a),  # stripes
            (torch.sin(a) * torch.sin(b) > 0).float(),  # checker
            (torch.cos(a) + torch.cos(b) > 0.9).float(),  # dots
            0.5 + 0.5 * torch.sin(w * rho + ph),  # rings around the object's centre
            0.5 + 0.5 * torch.sin(w * (tu + 1.2 * zig) + ph),  # zigzag (chevrons)
            0.5 + 0.5 * torch.sin(8 * torch.atan2(tv, tu) + ph),  # rays
            (blobs > 0).float(),  # isotropic blobs
            ((torch.sin(a / 2).abs() < 0.3) | (torch.sin(b / 2).abs() < 0.3)).float(),  # grid
        ]
        return torch.stack(families[: self.num_textures])

    def _paint(self, p: Tensor, table: Tensor, distractor: bool) -> tuple:
        """Masks ``(N, K, H, W)``, colours ``(N, K, 3, H, W)`` and classes ``(N, K)``."""
        cols = {name: i for i, name in enumerate(_OBJ_FIELDS)}
        textured = not distractor or self.clutter_textured
        if distractor and textured:  # texture clutter: small patches of any class's texture
            radius = (0.04 + 0.08 * p[..., cols["radius"]]) * self.size
        elif distractor:
            radius = (0.06 + 0.22 * p[..., cols["radius"]]) * self.size
        else:
            radius = (0.1 + 0.12 * p[..., cols["radius"]]) * self.size
        u, v, tu, tv = self._local(p, cols, radius)
        inside = self._inside(p, cols, u, v)
        period_gain = table[:, self._REGIME_KEYS.index("period"), None]
        period = self.period * (0.8 + 0.45 * p[..., cols["tex_period"]]) * period_gain
        light = 0.55 + 0.4 * p[..., [cols[f"light{i}"] for i in range(3)]]
        dark = 0.05 + 0.4 * p[..., [cols[f"dark{i}"] for i in range(3)]]
        swap = (p[..., cols["swap"]] > 0.5)[..., None]
        c1, c2 = torch.where(swap, dark, light), torch.where(swap, light, dark)
        if not textured:  # untextured: a linear colour gradient across the shape
            t = (0.5 + 0.5 * tu / radius[..., None, None]).clamp(0, 1)
            classes = torch.full(p.shape[:2], -1, dtype=torch.long, device=p.device)
        else:
            if distractor:  # uniform families, whatever the objects' imbalance
                classes = (p[..., cols["cls"]] * self.num_textures).long()
            else:
                u = p[..., cols["cls"]].contiguous()
                classes = torch.searchsorted(self._cdf.to(p.device), u, right=True)
            classes = classes.clamp(max=self.num_textures - 1)
            patterns = self._textures(tu, tv, period, p[..., cols["tex_phase"]])
            t = patterns.gather(0, classes[None, ..., None, None].expand(1, *patterns.shape[1:]))[0]
        colour = c1[..., None, None] * t[:, :, None] + c2[..., None, None] * (1 - t[:, :, None])
        return inside, colour, classes

    def _background(self, bg: Tensor) -> Tensor:
        """Low-frequency two-colour field plus a faint coarse grating: ``(N, 3, H, W)``."""
        s = float(self.size)
        yy, xx = self._grid(bg.device)
        field = torch.zeros(bg.shape[0], self.size, self.size, device=bg.device)
        for j in range(3):
            angle = bg[:, 3 * j, None, None] * math.pi
            period = s * (0.6 + 1.4 * bg[:, 3 * j + 1, None, None])
            direction = xx * angle.cos() + yy * angle.sin()
            phase = 2 * math.pi * bg[:, 3 * j + 2, None, None]
            field = field + torch.sin(2 * math.pi * direction / period + phase)
        t = (field / 6 + 0.5).clamp(0, 1)[:, None]
        c1 = 0.15 + 0.7 * bg[:, 9:12, None, None]
        c2 = 0.15 + 0.7 * bg[:, 12:15, None, None]
        angle = bg[:, 15, None, None] * 2 * math.pi
        direction = xx * angle.cos() + yy * angle.sin()
        grating = torch.sin(2 * math.pi * direction / (3 * self.period))
        return c1 * t + c2 * (1 - t) + 0.06 * grating[:, None]

    def draw(self, index: int) -> dict[str, Tensor]:
        """Every random number of scene ``index``, pixel noise included (CPU, cheap).

        What loader workers compute when the scenes render on the device
        (:meth:`render_draws`); ``default_collate`` batches these dicts.
        """
        if not 0 <= index < self.num_samples:
            raise IndexError(f"index {index} out of range for {self.num_samples} scenes")
        objects, clutter, background, count, noise_seed = self._draw(index)
        g = torch.Generator().manual_seed(int(noise_seed))
        noise = torch.randn(3, self.size, self.size, generator=g)
        return {"objects": objects, "clutter": clutter, "background": background,
                "count": count[0], "noise": noise,
                "domain": torch.tensor(self.domain_of(index))}  # fmt: skip

    def render(self, indices: Sequence[int],
               device: torch.device | str | None = None) -> dict[str, Tensor]:  # fmt: skip
        """Render scenes in one batch of tensor ops, on ``device`` (default: the CPU).

        The random numbers of each scene come from its own CPU generator (:meth:`draw`) and
        every pixel is computed on ``device``, so a GPU renders a batch without loader
        workers and equals the CPU rendering to float rounding.

        Returns:
            ``{"image": uint8 (N, 3, H, W), "mask": int64 (N, H, W), "label": (N,),
            "domain": (N,)}``; ``label`` is the class covering most pixels.
        """
        draws = [self.draw(i) for i in indices]
        batch = {k: torch.stack([d[k] for d in draws]) for k in draws[0]}
        dev = torch.device(device) if device is not None else torch.device("cpu")
        return self.render_draws({k: v.to(dev) for k, v in batch.items()})

    def render_draws(self, draws: dict[str, Tensor]) -> dict[str, Tensor]:
        """Render a batch of :meth:`draw` results on their device (see :meth:`render`)."""
        objects, counts, domains = draws["objects"], draws["count"], draws["domain"]
        dev, n = objects.device, objects.shape[0]
        table = self._regime_table(dev)[domains]  # (N, 8) per-scene regime
        image = self._background(draws["background"])
        if self.clutter:
            inside, colour, _ = self._paint(draws["clutter"], table, True)
            for k in range(self.clutter):  # painter's order over a handful of layers
                image = torch.where(inside[:, k, None], colour[:, k], image)
        inside, colour, classes = self._paint(objects, table, False)
        active = torch.arange(self.max_objects, device=dev)[None] < counts[:, None]
        inside = inside & active[..., None, None]
        mask = torch.zeros(n, self.size, self.size, dtype=torch.long, device=dev)
        for k in range(self.max_objects):
            image = torch.where(inside[:, k, None], colour[:, k], image)
            mask = torch.where(inside[:, k], classes[:, k, None, None] + 1, mask)
        image = self._apply_regimes(image, table, draws["noise"])
        hist = F.one_hot(mask.flatten(1), self.num_classes + 1).sum(1)[:, 1:]
        label = torch.where(hist.sum(1) > 0, hist.argmax(1), -1)
        pixels = (image.clamp(0, 1) * 255).round().to(torch.uint8)
        return {"image": pixels, "mask": mask, "label": label, "domain": domains}

    _REGIME_KEYS = ("gamma", "contrast", "period", "noise", "cast0", "cast1", "cast2", "blur")

    def _regime_table(self, device: torch.device) -> Tensor:
        """``(num_domains, 8)`` regime parameters in ``_REGIME_KEYS`` order, on ``device``."""
        rows = [[r[k] for k in self._REGIME_KEYS] for r in self._regimes]
        return torch.tensor(rows, dtype=torch.float32).to(device)

    def _apply_regimes(self, image: Tensor, table: Tensor, noise: Tensor) -> Tensor:
        """Per-domain blur, contrast, gamma, colour cast and pixel noise."""

        def col(key: str) -> Tensor:
            return table[:, self._REGIME_KEYS.index(key), None, None, None]

        blurred = F.avg_pool2d(image, 3, stride=1, padding=1, count_include_pad=False)
        image = torch.where(col("blur") > 0, blurred, image)
        image = 0.5 + (image - 0.5) * col("contrast")
        image = image.clamp(0, 1) ** col("gamma")
        cast = torch.cat([col("cast0"), col("cast1"), col("cast2")], dim=1)
        return image * cast + noise * col("noise")

    def __getitem__(self, index: int) -> dict[str, Any]:
        """``{"image": uint8 Image (3,H,W), "mask": Mask (H,W), "label": int, "domain": int}``."""
        out = self.render([index])
        return {
            "image": tv_tensors.Image(out["image"][0]),
            "mask": tv_tensors.Mask(out["mask"][0]),
            "label": int(out["label"][0]),
            "domain": int(out["domain"][0]),
        }
