"""The segmentation-scale synthetic benchmark: determinism, invariances, variants, modules."""

from __future__ import annotations

import pytest
import torch

from contraseg.datamodules import TexturedScenesDataModule, TexturedSegmentationDataModule
from contraseg.datamodules.datasets import SceneSpec, SyntheticScenes, TexturedScenes
from contraseg.datamodules.transforms import ViewAugmentation


def orientation_histograms(images: torch.Tensor, masks: torch.Tensor, classes: int) -> torch.Tensor:
    """Per-class histogram (8 bins over [0, pi)) of gradient orientation, magnitude-weighted."""
    grey = images.float().mean(1)
    gy, gx = grey[:, 1:, :-1] - grey[:, :-1, :-1], grey[:, :-1, 1:] - grey[:, :-1, :-1]
    angle = torch.remainder(torch.atan2(gy, gx), torch.pi)
    bins = (angle / torch.pi * 8).long().clamp(max=7)
    weight = torch.sqrt(gx * gx + gy * gy)
    m = masks[:, :-1, :-1]
    # only interior pixels: an object's edge orientation is not its texture
    interior = (m == masks[:, 1:, :-1]) & (m == masks[:, :-1, 1:])
    hist = torch.zeros(classes, 8)
    for c in range(classes):
        sel = interior & (m == c + 1)
        hist[c].index_add_(0, bins[sel], weight[sel])
    return hist / hist.sum(1, keepdim=True)


@pytest.mark.parametrize("generator", ["textured", "shapes"])
def test_rot90_maps_every_class_onto_itself(generator: str) -> None:
    """Texture orientation statistics of class c are unchanged by a 90-degree rotation.

    The old shapes generator gave class c a fixed stripe angle pi c / C, so rot90 turned
    class c's texture into class c + 3's and this test failed for it (TV distance ~0.5).
    """
    if generator == "textured":
        out = TexturedScenes(400, SceneSpec(image_size=48, num_classes=6),
                             seed=1).render(list(range(400)))
        images, masks = out["image"], out["mask"]
    else:
        items = [SyntheticScenes(1200, 32, 6, max_objects=1, seed=1)[i] for i in range(1200)]
        images = torch.stack([it["image"] for it in items])
        masks = torch.stack([it["mask"] for it in items])
    hist = orientation_histograms(images, masks, 6)
    rotated = orientation_histograms(images.rot90(1, (2, 3)), masks.rot90(1, (1, 2)), 6)
    tv = 0.5 * (hist - rotated).abs().sum(1)
    assert (tv < 0.15).all(), tv


def test_deterministic_and_batched_equals_single() -> None:
    ds = TexturedScenes(12, SceneSpec(image_size=48, num_classes=8, clutter=2, num_domains=3),
                        seed=5)
    batch = ds.render(list(range(12)))
    for i in (0, 7, 11):
        item = ds[i]
        assert torch.equal(item["image"], batch["image"][i])
        assert torch.equal(item["mask"], batch["mask"][i])
        assert item["label"] == int(batch["label"][i]) and item["domain"] == i % 3
    again = TexturedScenes(12, SceneSpec(image_size=48, num_classes=8, clutter=2, num_domains=3),
                           seed=5)[7]
    assert torch.equal(again["image"], ds[7]["image"])
    other = TexturedScenes(12, SceneSpec(image_size=48, num_classes=8, clutter=2, num_domains=3),
                           seed=6)[7]
    assert not torch.equal(other["image"], ds[7]["image"])


def test_masks_labels_and_occlusion() -> None:
    ds = TexturedScenes(64, SceneSpec(image_size=64, num_classes=6, min_objects=2, max_objects=5),
                        seed=2)
    out = ds.render(list(range(64)))
    mask, label = out["mask"], out["label"]
    assert out["image"].dtype == torch.uint8 and out["image"].shape == (64, 3, 64, 64)
    assert int(mask.min()) >= 0 and int(mask.max()) <= 6
    hist = torch.stack([torch.bincount(m.flatten(), minlength=7)[1:] for m in mask])
    assert torch.equal(label, hist.argmax(1))
    # several objects per scene, and every class occurs
    assert (hist.gt(0).sum(1) >= 1).all() and hist.gt(0).sum(1).float().mean() > 1.5
    assert hist.sum(0).gt(0).all()
    # occlusion: the painted-last object wins, so masks equal the layer-by-layer composite
    classes = [ds.object_classes(i) for i in range(64)]
    assert all(ds.min_objects <= len(c) <= ds.max_objects for c in classes)


def test_clutter_is_background_and_leaves_objects_alone() -> None:
    plain = TexturedScenes(16, SceneSpec(image_size=64), seed=3).render(list(range(16)))
    clutter = TexturedScenes(16, SceneSpec(image_size=64, clutter=4),
                             seed=3).render(list(range(16)))
    assert torch.equal(plain["mask"], clutter["mask"])  # distractors are labelled background
    on_objects = plain["mask"] > 0
    diff = (plain["image"].int() - clutter["image"].int()).abs().sum(1) > 0
    assert not diff[on_objects].any()  # objects drawn on top, unchanged
    assert diff[~on_objects].float().mean() > 0.1  # background changed by distractors


def test_imbalance_follows_the_requested_ratio() -> None:
    ds = TexturedScenes(3000, SceneSpec(image_size=16, num_classes=5, imbalance_ratio=10.0), seed=0)
    probs = ds.class_probs
    assert float(probs[0] / probs[-1]) == pytest.approx(10.0, rel=1e-5)
    expected = 10.0 ** (-torch.arange(5) / 4)
    assert torch.allclose(probs, expected / expected.sum(), atol=1e-6)
    counts = torch.zeros(5)
    for i in range(3000):
        for c in ds.object_classes(i):
            counts[c] += 1
    n = counts.sum()
    sigma = torch.sqrt(n * probs * (1 - probs))
    assert ((counts - n * probs).abs() < 4 * sigma).all(), (counts / n, probs)
    uniform = TexturedScenes(8, SceneSpec(image_size=16, num_classes=5), seed=0)
    assert torch.allclose(uniform.class_probs, torch.full((5,), 0.2))


def test_domains_change_appearance_not_content() -> None:
    one = TexturedScenes(8, SceneSpec(image_size=48), seed=4).render(list(range(8)))
    many = TexturedScenes(8, SceneSpec(image_size=48, num_domains=4), seed=4)
    out = many.render(list(range(8)))
    assert out["domain"].tolist() == [0, 1, 2, 3, 0, 1, 2, 3]
    assert torch.equal(out["mask"], one["mask"])
    same = out["domain"] == 0
    assert torch.equal(out["image"][same], one["image"][same])  # domain 0 is the clean regime
    for i in (1, 2, 3):
        assert (out["image"][i].float() - one["image"][i].float()).abs().mean() > 2
    fixed = TexturedScenes(8, SceneSpec(image_size=48, num_domains=4, domain=2),
                           seed=4).render([0, 1])
    assert fixed["domain"].tolist() == [2, 2]


@pytest.mark.parametrize(
    ("kwargs", "expected"),
    [
        ({"num_classes": 9}, "num_classes in"),
        ({"min_objects": 4, "max_objects": 2}, "min_objects <= max_objects"),
        ({"imbalance_ratio": 0.5}, "imbalance_ratio >= 1"),
        ({"num_domains": 2, "domain": 2}, "domain in"),
        ({"period": 1.0}, "period >= 3"),
        ({"image_size": 8}, "image_size >= 16"),
    ],
)
def test_bad_arguments_are_named(kwargs: dict, expected: str) -> None:
    with pytest.raises(ValueError, match=expected):
        TexturedScenes(4, SceneSpec(**{"image_size": 32, **kwargs}))


def test_index_out_of_range() -> None:
    with pytest.raises(IndexError, match="out of range"):
        TexturedScenes(4, SceneSpec(image_size=32))[4]


def test_segmentation_module_batches(tmp_path) -> None:
    dm = TexturedSegmentationDataModule(
        num_train=40, num_val=6, scene=SceneSpec(image_size=48, imbalance_ratio=5.0),
        label_fraction=4, batch_size=2, num_workers=0, split_dir=str(tmp_path),
    )  # fmt: skip
    dm.setup("fit")
    assert dm.num_classes == 7 and dm.classes[0] == "background" and len(dm.labeled_names()) == 4
    batch = next(iter(dm.train_dataloader()))
    assert batch["image"].shape == (2, 3, 48, 48) and batch["mask"].shape == (2, 48, 48)
    val = next(iter(dm.val_dataloader()))
    assert val["domain"].tolist() == [0, 0]
    # balanced validation: the val generator ignores the training imbalance
    assert dm.scenes("val", 4).imbalance_ratio == 1.0
    assert dm.scenes("train", 4).imbalance_ratio == 5.0
    with pytest.raises(ValueError, match="num_classes in"):
        TexturedSegmentationDataModule(scene={"num_classes": 12})


def test_pretrain_module_views_and_labels() -> None:
    dm = TexturedScenesDataModule(
        num_train=8, num_val=4, scene=SceneSpec(image_size=48), batch_size=4, num_workers=0,
        augment=ViewAugmentation(size=32), knn_bank_size=4,
    )  # fmt: skip
    dm.setup("fit")
    batch = next(iter(dm.train_dataloader()))
    assert len(batch["views"]) == 2 and batch["views"][0].shape == (4, 3, 32, 32)
    assert dm.probe_classes == 6 and batch["label"].min() >= 0


DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


@pytest.mark.parametrize("device", DEVICES)
def test_rendering_on_a_device_equals_the_cpu_rendering(device: str) -> None:
    """Workers draw (``draw``), the device renders (``render_draws``): the CPU scenes."""
    scenes = TexturedScenes(12, SceneSpec(image_size=64, clutter=2, num_domains=3), seed=4)
    ref = scenes.render(list(range(12)))
    out = {k: v.cpu() for k, v in scenes.render(list(range(12)), device=device).items()}
    if device == "cpu":
        assert all(torch.equal(out[k], ref[k]) for k in ref)
        return
    # float rounding differs between devices: a pixel level, and a boundary pixel or two
    assert (out["image"].int() - ref["image"].int()).abs().max() <= 2
    assert (out["mask"] != ref["mask"]).float().mean() < 1e-3
    assert torch.equal(out["domain"], ref["domain"])


def test_render_on_device_datamodule_makes_the_views_on_the_device() -> None:
    """``render_on_device``: batches of draws become views; an identity view is the scene."""
    plain = ViewAugmentation(size=48, crop_scale=(1.0, 1.0), crop_ratio=(1.0, 1.0),
                             hflip_prob=0.0, jitter_prob=0.0, grayscale_prob=0.0, blur_prob=0.0,
                             mean=[0.5] * 3, std=[0.25] * 3)  # fmt: skip
    dm = TexturedScenesDataModule(num_train=16, num_val=8, scene=SceneSpec(image_size=48),
                                  batch_size=4,
                                  num_workers=0, augment=plain, render_on_device=True,
                                  knn_bank_size=0)  # fmt: skip
    dm.setup("fit")
    batch = next(iter(dm.train_dataloader()))
    assert "scene" in batch and "views" not in batch  # only random numbers left the worker
    keys = batch["sample_index"].tolist()
    batch = dm.on_after_batch_transfer(batch, 0)
    ref = dm._raw_datasets()[0].render(keys)
    expected = (ref["image"].float() / 255 - 0.5) / 0.25
    assert len(batch["views"]) == 2 and batch["views"][0].dtype == torch.float32
    assert torch.allclose(batch["views"][0], expected, atol=1e-5)  # identity crop: exact
    assert torch.equal(batch["label"], ref["label"])
    strong = TexturedScenesDataModule(num_train=16, num_val=8, scene=SceneSpec(image_size=48),
                                      batch_size=4,
                                      num_workers=0, augment=ViewAugmentation(size=32),
                                      render_on_device=True, knn_bank_size=0)  # fmt: skip
    strong.setup("fit")
    views = strong.on_after_batch_transfer(next(iter(strong.train_dataloader())), 0)["views"]
    assert views[0].shape == (4, 3, 32, 32) and not torch.equal(views[0], views[1])


def test_simclr_fits_on_device_rendered_scenes() -> None:
    """A ``Trainer.fit`` through the hook: the batch the step sees is views, not draws."""
    import lightning as L

    from contraseg.lightning_modules import SimCLR

    dm = TexturedScenesDataModule(num_train=8, num_val=4, scene=SceneSpec(image_size=48),
                                  batch_size=4,
                                  num_workers=0, augment=ViewAugmentation(size=32),
                                  render_on_device=True, knn_bank_size=4)  # fmt: skip
    seen: list[tuple] = []

    class Probe(L.Callback):
        def on_train_batch_start(self, trainer, module, batch, batch_idx) -> None:  # noqa: ANN001
            seen.append((tuple(batch["views"][0].shape), batch["views"][0].dtype,
                         "scene" in batch, int((batch["label"] >= 0).sum())))  # fmt: skip

    torch.manual_seed(0)
    model = SimCLR(encoder="test_resnet", probe_classes=6, optimizer="sgd", lr=0.01)
    trainer = L.Trainer(max_steps=2, accelerator="cpu", logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False,
                        limit_val_batches=1, callbacks=[Probe()])  # fmt: skip
    trainer.fit(model, datamodule=dm)
    assert seen and all(s[:3] == ((4, 3, 32, 32), torch.float32, False) for s in seen)
    assert all(s[3] > 0 for s in seen)  # the rendered majority labels reach the probe


def test_dense_pretraining_views_rendered_on_the_device_keep_correspondences() -> None:
    """Segmentation pretraining on device-rendered scenes: masks and index maps stay exact."""
    views = ViewAugmentation(size=24, crop_scale=(0.3, 1.0), vflip_prob=0.5, rot90_prob=0.5,
                             jitter_prob=0.0, grayscale_prob=0.0, blur_prob=0.0,
                             mean=[0.0] * 3, std=[1.0] * 3)  # fmt: skip
    dm = TexturedSegmentationDataModule(num_train=16, num_val=4, scene=SceneSpec(image_size=48),
                                        batch_size=4,
                                        num_workers=0, pretrain_views=views,
                                        render_on_device=True, split_dir="unused")  # fmt: skip
    dm.setup("fit")
    batch = next(iter(dm.train_dataloader()))
    keys = batch["sample_index"].tolist()
    batch = dm.on_after_batch_transfer(batch, 0)
    ref = dm.scenes("train", 16).render(keys)
    assert batch["source_size"].tolist() == [[48, 48]] * 4
    image = ref["image"].float().div(255)
    for view, mask, index in zip(batch["views"], batch["masks"], batch["index_maps"]):
        assert view.shape == (4, 3, 24, 24) and mask.shape == index.shape == (4, 24, 24)
        errors = {}
        for dy, dx in ((0, 0), (0, 1), (1, 0), (0, -1), (-1, 0)):
            y, x = (index // 48 + dy).clamp(0, 47), (index % 48 + dx).clamp(0, 47)
            errors[dy, dx] = float(sum((view[b] - image[b][:, y[b], x[b]]).abs().mean()
                                       for b in range(4)))  # fmt: skip
        for b in range(4):  # every view pixel's mask is the source mask at its index
            assert torch.equal(mask[b], ref["mask"][b].flatten()[index[b]])
        # the bilinear view sits where its index map points: a pixel off is worse
        assert errors[0, 0] < min(v for k, v in errors.items() if k != (0, 0))
