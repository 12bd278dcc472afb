"""The device half of the view pipeline: batched ops against torchvision, draws, plans."""

from __future__ import annotations

import math

import pytest
import torch
from torch import Tensor
from torch.utils.data import default_collate
from torchvision import tv_tensors
from torchvision.transforms.v2 import functional as TF

from contraseg.datamodules.batch_augment import (
    BatchPhotometric,
    adjust_brightness,
    adjust_contrast,
    adjust_hue,
    adjust_saturation,
    apply_photometric,
    collate_plans,
    gaussian_blur,
    hash_uniform,
    photometric_plan,
    rgb_to_grey,
    solarize,
)
from contraseg.datamodules.transforms import MultiViewTransform, ViewAugmentation, draw_photometric

TOL = 1e-5


def _images(b: int = 6, c: int = 3, h: int = 20, w: int = 17, seed: int = 0) -> Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(b, c, h, w, generator=g)


@pytest.mark.parametrize(
    ("ours", "theirs", "lo", "hi"),
    [
        (adjust_brightness, TF.adjust_brightness, 0.0, 2.0),
        (adjust_contrast, TF.adjust_contrast, 0.0, 2.0),
        (adjust_saturation, TF.adjust_saturation, 0.0, 2.0),
        (adjust_hue, TF.adjust_hue, -0.5, 0.5),
    ],
)
def test_jitter_ops_equal_torchvision_per_sample(ours, theirs, lo: float, hi: float) -> None:
    x = _images()
    x[0] = 0.5  # a grey image (hue and saturation undefined)
    x[1, :, :4] = x[1, 0:1, :4]  # grey pixels inside a coloured image
    factors = torch.linspace(lo, hi, x.shape[0])
    out = ours(x, factors)
    for i in range(x.shape[0]):
        ref = theirs(x[i], float(factors[i]))
        assert torch.allclose(out[i], ref, atol=TOL, rtol=0), (i, (out[i] - ref).abs().max())


def test_grey_blur_solarize_equal_torchvision() -> None:
    x = _images(b=5, h=31, w=29)
    grey = torch.stack([TF.rgb_to_grayscale(v, 3) for v in x])
    assert torch.allclose(rgb_to_grey(x).expand_as(x), grey, atol=TOL)
    assert torch.equal(solarize(x), torch.stack([TF.solarize(v, 128 / 255) for v in x]))
    for k in (3, 9, 23):
        sigma = torch.tensor([0.1, 0.5, 1.0, 1.7, 2.0])
        out = gaussian_blur(x, k, sigma)
        for i in range(x.shape[0]):
            ref = TF.gaussian_blur(x[i], [k, k], [float(sigma[i])] * 2)
            assert torch.allclose(out[i], ref, atol=TOL), (k, i)


def _reference_rgb(x: Tensor, p: dict[str, Tensor], cfg: ViewAugmentation) -> Tensor:
    """One sample through torchvision's functional ops with the drawn parameters."""
    kernel = max(3, int(0.1 * cfg.size) // 2 * 2 + 1)
    ops = (TF.adjust_brightness, TF.adjust_contrast, TF.adjust_saturation, TF.adjust_hue)
    names = ("brightness", "contrast", "saturation", "hue")
    strength = (cfg.brightness, cfg.contrast, cfg.saturation, cfg.hue)
    x = x.float() / 255
    if p["jitter"]:
        for op in p["order"].tolist():
            if strength[op] > 0:
                x = ops[op](x, float(p[names[op]]))
    if p["grey"]:
        x = TF.rgb_to_grayscale(x, 3)
    if p["blur"]:
        x = TF.gaussian_blur(x, [kernel, kernel], [float(p["sigma"])] * 2)
    if p["solarize"]:
        x = TF.solarize(x, 128 / 255)
    return TF.normalize(x, list(cfg.mean), list(cfg.std))


@pytest.mark.parametrize("hue", [0.1, 0.0])
def test_batch_pipeline_equals_the_per_sample_reference(hue: float) -> None:
    """A batch mixing samples with and without each op equals torchvision sample by sample."""
    cfg = ViewAugmentation(size=24, jitter_prob=0.6, grayscale_prob=0.3, blur_prob=0.5,
                           solarize_prob=0.3, hue=hue)  # fmt: skip
    g = torch.Generator().manual_seed(1)
    images = torch.randint(0, 256, (24, 3, 24, 24), dtype=torch.uint8, generator=g)
    torch.manual_seed(0)
    samples = [draw_photometric(cfg, im) for im in images]
    params = collate_plans(samples)
    flags = {k: int(params[k].sum()) for k in ("jitter", "grey", "blur", "solarize")}
    assert all(0 < n < 24 for n in flags.values()), flags  # the batch mixes on and off
    out = BatchPhotometric(cfg)(images, params)
    for i in range(len(images)):
        ref = _reference_rgb(images[i], samples[i], cfg)
        assert torch.allclose(out[i], ref, atol=1e-4, rtol=0), (i, (out[i] - ref).abs().max())


def test_samples_do_not_depend_on_their_batch() -> None:
    """Each sample's result is the same alone or in any batch (DDP shards, worker counts)."""
    cfg = ViewAugmentation(size=32, noise_std=0.05, gamma=(0.7, 1.5))
    images = torch.randint(0, 256, (8, 3, 32, 32), dtype=torch.uint8)
    torch.manual_seed(3)
    samples = [draw_photometric(cfg, im) for im in images]
    aug = BatchPhotometric(cfg)
    whole = aug(images, collate_plans(samples))
    halves = torch.cat([aug(images[:5], collate_plans(samples[:5])),
                        aug(images[5:], collate_plans(samples[5:]))])  # fmt: skip
    single = torch.cat([aug(images[i : i + 1], collate_plans(samples[i : i + 1]))
                        for i in range(8)])  # fmt: skip
    assert torch.allclose(whole, halves, atol=1e-6) and torch.allclose(whole, single, atol=1e-6)


def test_draws_follow_the_configured_distributions() -> None:
    cfg = ViewAugmentation(jitter_prob=0.8, grayscale_prob=0.2, blur_prob=0.5, solarize_prob=0.1,
                           brightness=0.4, contrast=0.3, saturation=0.2, hue=0.1,
                           gamma=(0.5, 2.0))  # fmt: skip
    image = torch.zeros(3, 4, 4, dtype=torch.uint8)
    torch.manual_seed(0)
    n = 4000
    p = default_collate([draw_photometric(cfg, image) for _ in range(n)])
    se = 4 * math.sqrt(0.25 / n)  # four standard errors of a proportion
    for key, prob in (("jitter", 0.8), ("grey", 0.2), ("blur", 0.5), ("solarize", 0.1),
                      ("gamma_on", 0.8)):  # fmt: skip
        assert abs(p[key].float().mean() - prob) < se, key
    on = p["jitter"]
    for key, (lo, hi) in (("brightness", (0.6, 1.4)), ("contrast", (0.7, 1.3)),
                          ("saturation", (0.8, 1.2)), ("hue", (-0.1, 0.1))):  # fmt: skip
        v = p[key][on]
        assert lo <= float(v.min()) and float(v.max()) <= hi, key
        assert abs(float(v.mean()) - (lo + hi) / 2) < 0.02 * (hi - lo) * 4, key  # uniform mean
        assert abs(float(v.var()) - (hi - lo) ** 2 / 12) < 0.15 * (hi - lo) ** 2 / 12, key
        assert (p[key][~on] == (0.0 if key == "hue" else 1.0)).all()  # off: identity value
    first = torch.bincount(p["order"][on][:, 0], minlength=4).float() / int(on.sum())
    assert (first - 0.25).abs().max() < 0.04  # a uniform random order
    sigma = p["sigma"][p["blur"]]
    assert 0.1 <= float(sigma.min()) and float(sigma.max()) <= 2.0
    gamma = p["gamma"][p["gamma_on"]]
    assert 0.5 <= float(gamma.min()) and float(gamma.max()) <= 2.0


def test_zero_probabilities_draw_nothing() -> None:
    """Ops that are off consume no random numbers (fine-tuning streams stay as they were)."""
    cfg = ViewAugmentation(jitter_prob=0.0, grayscale_prob=0.0, blur_prob=0.0)
    torch.manual_seed(5)
    before = torch.get_rng_state()
    draw_photometric(cfg, torch.zeros(3, 4, 4, dtype=torch.uint8))
    assert torch.equal(before, torch.get_rng_state())


def test_four_band_photometrics_follow_glcnets_recipe() -> None:
    img = torch.full((1, 4, 32, 32), 128, dtype=torch.uint8)
    off = {"brightness": 0.0, "contrast": 0.0, "saturation": 0.0, "hue": 0.0,
           "mean": [0.0] * 4, "std": [1.0] * 4, "blur_prob": 0.0}  # fmt: skip

    def run(cfg: ViewAugmentation, image: Tensor, seed: int = 0) -> Tensor:
        torch.manual_seed(seed)
        return BatchPhotometric(cfg)(image, collate_plans([draw_photometric(cfg, image[0])]))[0]

    cfg = ViewAugmentation(jitter_prob=1.0, grayscale_prob=0.0, band_brightness=0.3,
                           band_contrast=0.0, pixel_noise_prob=0.0, **off)  # fmt: skip
    out = run(cfg, img)
    per_band = out.mean((1, 2))
    assert torch.equal(out.amin((1, 2)), out.amax((1, 2)))  # one factor per band
    assert len(set(per_band.tolist())) > 1
    x = 128 / 255
    assert ((per_band >= x * 0.7 - 1e-6) & (per_band <= x + (1 - x) * 0.3 + 1e-6)).all()
    noise = ViewAugmentation(jitter_prob=1.0, grayscale_prob=0.0, band_brightness=0.0,
                             band_contrast=0.0, pixel_noise_prob=0.5, **off)  # fmt: skip
    hit = (run(noise, img) != x).any(0).float().mean()
    assert 0.4 < float(hit) < 0.6  # about half the pixels replaced
    grey = ViewAugmentation(jitter_prob=0.0, grayscale_prob=1.0, **off)
    src = torch.randint(0, 256, (1, 4, 8, 8), dtype=torch.uint8)
    g = run(grey, src)
    assert any(torch.allclose(g[0], src[0, b].float() / 255) for b in range(4))
    assert (g == g[:1]).all()
    ct = torch.randint(-1000, 1000, (1, 1, 8, 8), dtype=torch.int16)  # HU: no band ops
    ct_cfg = ViewAugmentation(jitter_prob=1.0, grayscale_prob=1.0, band_brightness=0.3,
                              pixel_noise_prob=0.5, **{**off, "mean": [0.0], "std": [1.0]})
    assert torch.equal(run(ct_cfg, ct), ct[0].float())


def test_hash_uniform_is_uniform_and_batch_independent() -> None:
    seeds = torch.tensor([0, 1, 2**62 - 1, 12345])
    u = hash_uniform(seeds, 50000)
    assert u.min() >= 0 and u.max() < 1
    assert abs(float(u.mean()) - 0.5) < 0.01 and abs(float(u.var()) - 1 / 12) < 0.003
    assert torch.equal(hash_uniform(seeds[2:3], 50000)[0], u[2])
    assert not torch.equal(u[0], u[1]) and not torch.equal(hash_uniform(seeds, 10, 1), u[:, :10])
    # neighbouring elements are uncorrelated
    assert abs(float(torch.corrcoef(torch.stack((u[0, :-1], u[0, 1:])))[0, 1])) < 0.02


def test_plan_lists_the_samples_of_every_op() -> None:
    params = {"jitter": torch.tensor([True, False, True]), "grey": torch.tensor([0, 1, 1]),
              "blur": torch.tensor([False] * 3), "solarize": torch.tensor([True] * 3),
              "gamma_on": torch.tensor([False] * 3),
              "order": torch.tensor([[3, 2, 1, 0], [0, 1, 2, 3], [0, 3, 2, 1]])}  # fmt: skip
    plan = photometric_plan(params)
    assert plan["jitter"].tolist() == [0, 2] and plan["grey"].tolist() == [1, 2]
    assert plan["blur"].numel() == 0 and plan["solarize"].tolist() == [0, 1, 2]
    assert plan["jitter03"].tolist() == [0] and plan["jitter00"].tolist() == [2]
    assert plan["jitter13"].tolist() == [2] and plan["jitter10"].numel() == 0


def test_views_carry_uint8_and_apply_photometric_normalises() -> None:
    cfg = ViewAugmentation(size=16, mean=[0.5] * 3, std=[0.25] * 3)
    image = tv_tensors.Image(torch.randint(0, 256, (3, 24, 24), dtype=torch.uint8))
    torch.manual_seed(0)
    samples = [MultiViewTransform(cfg, n_views=2)({"image": image, "label": 1}) for _ in range(3)]
    batch = collate_plans(samples)
    assert batch["views"][0].dtype == torch.uint8 and len(batch["photometric"]) == 2
    no_plan = {**batch, "photometric": [{k: v for k, v in p.items() if k != "plan"}
                                        for p in batch["photometric"]]}  # fmt: skip
    aug = [BatchPhotometric(cfg)]
    out = apply_photometric(dict(batch), aug)
    assert "photometric" not in out and out["views"][1].dtype == torch.float32
    again = apply_photometric(no_plan, aug)  # the plan is rebuilt when absent
    assert all(torch.equal(a, b) for a, b in zip(out["views"], again["views"]))
    plain = BatchPhotometric(ViewAugmentation(size=16, mean=[0.5] * 3, std=[0.25] * 3))
    x = batch["views"][0]
    assert torch.allclose(plain(x, None), (x.float() / 255 - 0.5) / 0.25, atol=1e-6)


def test_true_half_precision_is_refused_with_a_clear_error() -> None:
    """``bf16-true`` would cast the drawn parameters (and crop boxes) before the device half."""
    import lightning as L

    from contraseg.datamodules import SyntheticDataModule

    dm = SyntheticDataModule(num_train=8, num_val=4, image_size=32, batch_size=4, num_workers=0,
                             knn_bank_size=0, augment=ViewAugmentation(size=16))  # fmt: skip
    dm.setup("fit")
    batch = next(iter(dm.train_dataloader()))
    dm.trainer = L.Trainer(accelerator="cpu", precision="bf16-true", logger=False)
    with pytest.raises(ValueError, match="bf16-mixed"):
        dm.on_after_batch_transfer(batch, 0)
