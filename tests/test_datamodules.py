"""Datamodules and multi-view transforms: structure, determinism, correspondences, errors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision import tv_tensors

from contraseg.datamodules import (
    CIFAR10DataModule,
    ImageFolderDataModule,
    SyntheticDataModule,
)
from contraseg.datamodules.datasets import SyntheticScenes
from contraseg.datamodules.transforms import MultiViewTransform, ViewAugmentation

PLAIN = {"jitter_prob": 0.0, "grayscale_prob": 0.0, "blur_prob": 0.0, "mean": [0.0] * 3,
         "std": [1.0] * 3}  # fmt: skip


def test_synthetic_is_deterministic_and_consistent() -> None:
    a, b = SyntheticScenes(8, 32, 5, seed=3), SyntheticScenes(8, 32, 5, seed=3)
    other = SyntheticScenes(8, 32, 5, seed=4)
    for i in range(8):
        sa, sb = a[i], b[i]
        assert torch.equal(sa["image"], sb["image"]) and torch.equal(sa["mask"], sb["mask"])
        assert sa["image"].dtype == torch.uint8 and sa["image"].shape == (3, 32, 32)
        counts = torch.bincount(sa["mask"].flatten(), minlength=6)[1:]
        assert sa["label"] == int(counts.argmax()) and counts[sa["label"]] > 0
        assert int(sa["mask"].max()) <= 5
    assert not torch.equal(a[0]["image"], other[0]["image"])
    with pytest.raises(ValueError, match="num_classes"):
        SyntheticScenes(4, 32, num_classes=99)


def test_index_maps_follow_geometry() -> None:
    """With identity-size crops and a certain flip, view pixels equal source pixels at the index."""
    src = SyntheticScenes(1, 24, 4)[0]
    cfg = ViewAugmentation(size=24, crop_scale=(1.0, 1.0), crop_ratio=(1.0, 1.0), hflip_prob=1.0,
                           **PLAIN)  # fmt: skip
    out = MultiViewTransform(cfg, n_views=2, index_maps=True)(src)
    flat = src["image"].flatten(1)
    for view, idx, mask in zip(out["views"], out["index_maps"], out["masks"]):
        assert view.dtype == torch.uint8 and torch.equal(view, flat[:, idx])  # the file's dtype
        assert torch.equal(mask, src["mask"].flatten()[idx])
        assert torch.equal(idx[0], torch.arange(23, -1, -1))  # flipped row


def test_index_maps_under_random_crops() -> None:
    src = SyntheticScenes(1, 32, 4)[0]
    cfg = ViewAugmentation(size=16, crop_scale=(0.2, 0.6), hflip_prob=0.0, **PLAIN)
    torch.manual_seed(0)
    out = MultiViewTransform(cfg, n_views=2, index_maps=True)(src)
    for idx, mask in zip(out["index_maps"], out["masks"]):
        ys, xs = idx // 32, idx % 32
        assert idx.min() >= 0 and idx.max() < 32 * 32
        assert (ys.diff(dim=0) >= 0).all() and (xs.diff(dim=1) >= 0).all()  # monotone crop
        assert torch.equal(mask, src["mask"].flatten()[idx])  # masks and indices stay aligned


def test_synthetic_datamodule_batches() -> None:
    dm = SyntheticDataModule(num_train=16, num_val=8, image_size=32, batch_size=4, num_workers=0,
                             knn_bank_size=12, augment=ViewAugmentation(size=16))  # fmt: skip
    dm.setup("fit")
    batch = next(iter(dm.train_dataloader()))
    assert len(batch["views"]) == 2 and batch["views"][0].shape == (4, 3, 16, 16)
    assert batch["views"][0].dtype == torch.uint8 and batch["label"].shape == (4,)
    batch = dm.on_after_batch_transfer(batch, 0)  # the device half: photometrics, normalise
    assert batch["views"][0].dtype == torch.float32 and "photometric" not in batch
    loader = dm.val_dataloader()  # queries only: the bank is not a validation loader
    bank = dm.knn_bank_loader()
    assert len(loader.dataset) == 8 and len(bank.dataset) == 12
    assert next(iter(loader))["image"].shape == (4, 3, 16, 16)


def test_cifar_datamodule(cifar10_root: Path) -> None:
    dm = CIFAR10DataModule(root=str(cifar10_root), batch_size=4, num_workers=0)
    assert dm.num_classes == 10
    dm.setup("fit")
    assert len(dm.eval_dataset("train")) == 40 and len(dm.eval_dataset("val")) == 8
    batch = next(iter(dm.train_dataloader()))
    assert batch["views"][1].shape == (4, 3, 32, 32)


def test_missing_root_names_key(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="data.root"):
        CIFAR10DataModule(root=str(tmp_path / "missing"))


def _write_images(folder: Path, n: int, seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        Image.fromarray(rng.integers(0, 256, (20, 20, 3), dtype=np.uint8)).save(folder / f"{i}.png")


def test_image_folder_labeled_and_unlabeled(tmp_path: Path) -> None:
    for cls in ("cat", "dog"):
        _write_images(tmp_path / "labeled" / cls, 10)
    _write_images(tmp_path / "flat", 10)
    aug = ViewAugmentation(size=16)
    labeled = ImageFolderDataModule(str(tmp_path / "labeled"), val_fraction=0.2, batch_size=2,
                                    num_workers=0, augment=aug)  # fmt: skip
    assert labeled.num_classes == 2
    labeled.setup()
    train, val = labeled.eval_dataset("train"), labeled.eval_dataset("val")
    assert len(train) + len(val) == 20 and len(val) == 4
    assert len(labeled.knn_bank_loader().dataset) == 16  # the training images form the bank
    flat = ImageFolderDataModule(str(tmp_path / "flat"), batch_size=2, num_workers=0, augment=aug)
    assert flat.num_classes == 0
    flat.setup()
    assert next(iter(flat.train_dataloader()))["label"].tolist() == [-1, -1]
    assert flat.knn_bank_loader() is None  # no kNN bank without labels


def test_view_augmentation_validation() -> None:
    with pytest.raises(ValueError, match="crop_scale"):
        ViewAugmentation(crop_scale=(0.5, 0.2))
    with pytest.raises(ValueError, match="blur_prob"):
        ViewAugmentation(blur_prob=1.5)


def test_four_band_views_skip_rgb_only_ops() -> None:
    img = tv_tensors.Image(torch.randint(0, 256, (4, 20, 20), dtype=torch.uint8))
    cfg = ViewAugmentation(size=16, jitter_prob=1.0, grayscale_prob=1.0, mean=[0.5] * 4,
                           std=[0.5] * 4)  # fmt: skip
    out = MultiViewTransform(cfg)({"image": img, "label": 0})
    assert out["views"][0].shape == (4, 16, 16)


def test_rot90_and_vflip_keep_correspondences() -> None:
    src = SyntheticScenes(1, 24, 4)[0]
    cfg = ViewAugmentation(size=24, crop_scale=(1.0, 1.0), crop_ratio=(1.0, 1.0), hflip_prob=0.0,
                           vflip_prob=0.5, rot90_prob=1.0, **PLAIN)  # fmt: skip
    flat = src["image"].flatten(1)
    rotated = 0
    for seed in range(6):
        torch.manual_seed(seed)
        out = MultiViewTransform(cfg, n_views=1, index_maps=True)(src)
        view, idx = out["views"][0], out["index_maps"][0]
        assert torch.equal(view, flat[:, idx])  # exact, no interpolation
        assert torch.equal(out["masks"][0], src["mask"].flatten()[idx])
        assert sorted(idx.flatten().tolist()) == list(range(24 * 24))  # a permutation
        rotated += not torch.equal(idx, torch.arange(24 * 24).view(24, 24))
    assert rotated == 6


def test_asymmetric_views_from_cli(tmp_path, monkeypatch) -> None:
    from pathlib import Path

    from contraseg.experiments.cli import main

    monkeypatch.chdir(tmp_path)
    config = Path(__file__).resolve().parents[1] / "experiments" / "configs" / "quickstart.yaml"
    views = '[{"size": 16, "hflip_prob": 0.0}, {"size": 16, "rot90_prob": 0.8, "vflip_prob": 0.5}]'
    cli = main(["--config", str(config), "--data.augment", views, "--trainer.logger", "false"],
               run=False)  # fmt: skip
    dm = cli.datamodule
    assert dm.n_views == 2 and dm.view_augments[1].rot90_prob == 0.8
    dm.setup("fit")
    sample = dm.train_dataset()[0]
    assert [v.shape[-1] for v in sample["views"]] == [16, 16]


def _full_view(cfg: ViewAugmentation, image: tv_tensors.Image) -> torch.Tensor:
    """One view through both halves: per-sample transform, then the device half."""
    from contraseg.datamodules.batch_augment import (
        BatchPhotometric,
        apply_photometric,
        collate_plans,
    )

    batch = collate_plans([MultiViewTransform(cfg, n_views=1)({"image": image, "label": 0})])
    return apply_photometric(batch, [BatchPhotometric(cfg)])["views"][0][0]


def test_gamma_and_noise_views_hu_stage_two() -> None:
    """Intensity-only views: gamma x**g with g in the range, additive noise of the given std."""
    img = tv_tensors.Image(torch.full((3, 64, 64), 64, dtype=torch.uint8))
    base = dict(size=64, crop_scale=(1.0, 1.0), crop_ratio=(1.0, 1.0), hflip_prob=0.0,
                grayscale_prob=0.0, blur_prob=0.0, brightness=0.0, contrast=0.0,
                saturation=0.0, hue=0.0, mean=[0.0] * 3, std=[1.0] * 3)  # fmt: skip
    torch.manual_seed(0)
    out = _full_view(ViewAugmentation(jitter_prob=1.0, gamma=(2.0, 2.0), **base), img)
    assert torch.allclose(out, torch.full_like(out, (64 / 255) ** 2), atol=1e-6)
    noisy = _full_view(ViewAugmentation(jitter_prob=0.0, noise_std=0.1, **base), img)
    assert abs(float((noisy - 64 / 255).std()) - 0.1) < 0.01
    with pytest.raises(ValueError, match="gamma"):
        ViewAugmentation(gamma=(1.5, 0.5))


def test_image_folder_decodes_jpegs_on_the_device(tmp_path: Path) -> None:
    """``decode_on_device``: workers send bytes; identity views equal the worker-decoded image."""
    from contraseg.datamodules.datasets.io import DataFormatError, read_image_rgb

    rng = np.random.default_rng(0)
    folder = tmp_path / "jpegs"
    folder.mkdir()
    for i in range(8):
        Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(
            folder / f"{i}.jpg", quality=95)  # fmt: skip
    plain = ViewAugmentation(size=32, crop_scale=(1.0, 1.0), crop_ratio=(1.0, 1.0),
                             hflip_prob=0.0, **{**PLAIN, "mean": [0.5] * 3, "std": [0.25] * 3})
    dm = ImageFolderDataModule(str(folder), batch_size=4, num_workers=0, augment=plain,
                               decode_on_device=True, labeled=False, knn_bank_size=0,
                               val_fraction=0.25)  # fmt: skip
    dm.setup("fit")
    batch = next(iter(dm.train_dataloader()))
    assert isinstance(batch["jpeg"][0], bytes) and "views" not in batch
    paths = list(batch["path"])
    batch = dm.on_after_batch_transfer(batch, 0)
    expected = torch.stack([(read_image_rgb(p).float() / 255 - 0.5) / 0.25 for p in paths])
    assert torch.allclose(batch["views"][0], expected, atol=1e-5)
    assert torch.allclose(batch["views"][1], expected, atol=1e-5)
    strong = ImageFolderDataModule(str(folder), batch_size=4, num_workers=0, labeled=False,
                                   augment=ViewAugmentation(size=16), decode_on_device=True,
                                   knn_bank_size=0, val_fraction=0.25)  # fmt: skip
    strong.setup("fit")
    views = strong.on_after_batch_transfer(next(iter(strong.train_dataloader())), 0)["views"]
    assert views[0].shape == (4, 3, 16, 16) and not torch.equal(views[0], views[1])
    _write_images(folder, 1)  # a PNG among the JPEGs
    mixed = ImageFolderDataModule(str(folder), batch_size=4, num_workers=0, labeled=False,
                                  decode_on_device=True, val_fraction=0.25)  # fmt: skip
    mixed.setup("fit")
    with pytest.raises(DataFormatError, match=r"0\.png is not a JPEG"):
        mixed.train_dataloader()


def test_cpu_fits_run_the_batched_half_in_the_workers() -> None:
    """Training on the CPU with workers: the workers apply the batched half, same values."""
    import lightning as L

    from contraseg.datamodules.batch_augment import WorkerPhotometric

    def make(workers: int) -> SyntheticDataModule:
        dm = SyntheticDataModule(num_train=16, num_val=8, image_size=32, batch_size=4,
                                 num_workers=workers, knn_bank_size=0,
                                 augment=ViewAugmentation(size=16, blur_prob=0.5))  # fmt: skip
        dm.setup("fit")
        return dm

    in_workers = make(2)
    in_workers.trainer = L.Trainer(accelerator="cpu", logger=False, enable_progress_bar=False)
    loader = in_workers.train_dataloader()
    assert isinstance(loader.collate_fn, WorkerPhotometric)
    ours = next(iter(loader))
    assert "photometric" not in ours and ours["views"][0].dtype == torch.float32
    assert in_workers.on_after_batch_transfer(ours, 0) is ours  # nothing left to do
    reference = make(0)  # no trainer: the hook does it
    ref = reference.on_after_batch_transfer(next(iter(reference.train_dataloader())), 0)
    assert all(torch.equal(a, b) for a, b in zip(ours["views"], ref["views"]))
