"""The digit-scene benchmark: real glyphs, held-out samples, masks, nuisance and determinism."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from contraseg.datamodules import DigitScenesDataModule, DigitSegmentationDataModule
from contraseg.datamodules.datasets.digit_scenes import DigitScenes, DigitSceneSpec, digit_glyphs
from contraseg.datamodules.datasets.textured_scenes import _OBJ_FIELDS


def test_glyph_pools_are_disjoint_stratified_and_real() -> None:
    from sklearn.datasets import load_digits

    raw = load_digits()
    train, train_y = digit_glyphs("train")
    val, val_y = digit_glyphs("val")
    assert len(train) + len(val) == 1797 and len(val) == pytest.approx(0.25 * 1797, abs=10)
    for d in range(10):  # every digit in both pools, in proportion
        share = float((val_y == d).sum()) / float((raw.target == d).sum())
        assert share == pytest.approx(0.25, abs=0.02)
    # the pools are the sklearn images themselves (0..16 -> 0..1), no image in both
    everything = torch.from_numpy(raw.images.reshape(1797, 64).astype("float32") / 16)
    rows = {tuple(r.tolist()) for r in everything}
    assert all(tuple(g.flatten().tolist()) in rows for g in train[:50])
    train_rows = {tuple(g.flatten().tolist()) for g in train}
    val_rows = {tuple(g.flatten().tolist()) for g in val}
    assert len(train_rows) > 1300 and len(val_rows) > 440
    assert not train_rows & val_rows  # no glyph in both pools
    assert torch.equal(digit_glyphs("val")[0], val)  # fixed split
    with pytest.raises(ValueError, match="digit_pool"):
        digit_glyphs("test")  # type: ignore[arg-type]


def test_scenes_are_deterministic_and_batched_rendering_equals_items() -> None:
    scenes = DigitScenes(8, DigitSceneSpec(image_size=64), seed=3)
    batch = scenes.render(range(8))
    for i in (0, 5):
        item = scenes[i]
        assert torch.equal(item["image"], batch["image"][i])
        assert torch.equal(item["mask"], batch["mask"][i])
        assert item["label"] == int(batch["label"][i])
    again = DigitScenes(8, DigitSceneSpec(image_size=64), seed=3).render([5])
    assert torch.equal(again["image"][0], batch["image"][5])
    other = DigitScenes(8, DigitSceneSpec(image_size=64), seed=4).render([5])
    assert not torch.equal(other["image"][0], batch["image"][5])


def test_masks_are_the_glyphs_and_labels_the_largest_digit() -> None:
    scenes = DigitScenes(64, DigitSceneSpec(image_size=96), seed=0)
    out = scenes.render(range(64))
    for i in range(64):
        classes = scenes.object_classes(i)
        present = set(out["mask"][i].unique().tolist()) - {0}
        assert present <= {c + 1 for c in classes}  # occlusion may hide a whole digit
        counts = torch.bincount(out["mask"][i].flatten(), minlength=11)[1:]
        assert int(out["label"][i]) == (int(counts.argmax()) if counts.sum() else -1)
    # one upright digit, no clutter: the mask is the glyph, upscaled (correlation with it)
    one = DigitScenes(16,
                      DigitSceneSpec(image_size=96, min_objects=1, max_objects=1,
                                     max_rotation=0.0, clutter=0), seed=1)  # fmt: skip
    glyphs, _ = one._glyph_pool(torch.device("cpu"))
    own, others = [], []
    for i in range(16):
        mask = one.render([i])["mask"][0] > 0
        ys, xs = torch.nonzero(mask, as_tuple=True)
        if ys.min() == 0 or xs.min() == 0 or ys.max() == 95 or xs.max() == 95:
            continue  # cut by the scene's border
        crop = mask[ys.min(): ys.max() + 1, xs.min(): xs.max() + 1].float()[None, None]
        small = F.interpolate(crop, size=(8, 8), mode="area")[0, 0].flatten()
        picked = one.glyph_indices(i)[0]
        for g in (picked, (picked + 1) % len(glyphs), (picked + 500) % len(glyphs)):
            glyph = glyphs[g, 0]  # the glyph's own extent (it may not fill its 8x8 box)
            gy, gx = torch.nonzero(glyph > 0.3, as_tuple=True)
            box = glyph[gy.min(): gy.max() + 1, gx.min(): gx.max() + 1][None, None]
            ref = F.interpolate(box, size=(8, 8), mode="bilinear", align_corners=False)
            corr = float(np.corrcoef(small.numpy(), ref.flatten().numpy())[0, 1])
            (own if g == picked else others).append(corr)
    assert len(own) >= 8 and min(own) > 0.6
    assert np.mean(own) > 0.8 and np.mean(own) - np.mean(others) > 0.3


def test_texture_and_colour_are_independent_of_the_digit() -> None:
    scenes = DigitScenes(1500, seed=0)
    fields = (*_OBJ_FIELDS, "digit", "family", "width")
    families = np.zeros((10, 8))
    for i in range(1500):
        objects, _, _, count, _ = scenes._draw(i)
        for k, digit in enumerate(scenes.object_classes(i)):
            family = min(int(objects[k, fields.index("family")] * 8), 7)
            families[digit, family] += 1
    expected = families.sum(1, keepdims=True) * families.sum(0, keepdims=True) / families.sum()
    chi2 = float(((families - expected) ** 2 / expected).sum())
    assert chi2 < 110  # 63 degrees of freedom: p ~ 1e-4 at 110; a texture-coded class: >> 1,000


def test_data_modules_hold_out_glyphs_for_validation() -> None:
    module = DigitSegmentationDataModule(num_train=32, num_val=8, label_fraction=4,
                                         batch_size=2, num_workers=0)  # fmt: skip
    assert module.num_classes == 11 and module.classes[:3] == ["background", "0", "1"]
    assert module.scenes("train", 4).digit_pool == "train"
    assert module.scenes("val", 4).digit_pool == "val"
    pre = DigitScenesDataModule(num_train=16, num_val=8, batch_size=4, num_workers=0)
    train, val = pre.build_datasets()
    assert (train.digit_pool, val.digit_pool) == ("train", "val") and pre.num_classes == 10
    with pytest.raises(ValueError, match="digit_size"):
        DigitScenesDataModule(scene={"digit_size": (0.5, 0.2)})
