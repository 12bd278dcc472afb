"""Segmentation datamodule base: label fractions, joint augmentation, unlabeled views."""

from __future__ import annotations

from pathlib import Path

import torch

from contraseg.datamodules import SyntheticSegmentationDataModule
from contraseg.datamodules.transforms import ViewAugmentation


def make(tmp_path: Path, **kwargs) -> SyntheticSegmentationDataModule:
    base = dict(num_train=200, num_val=8, image_size=32, batch_size=4, num_workers=0,
                split_dir=str(tmp_path / "splits"))  # fmt: skip
    return SyntheticSegmentationDataModule(**{**base, **kwargs})


def test_label_fraction_split_file_is_reused(tmp_path: Path) -> None:
    dm = make(tmp_path, label_fraction=0.05, seed=3)
    names = dm.labeled_names()
    assert len(names) == 10
    split = tmp_path / "splits" / "synthetic_5pct_seed3.txt"
    assert split.is_file()
    assert make(tmp_path, label_fraction=0.05, seed=3).labeled_names() == names
    assert make(tmp_path, label_fraction=0.05, seed=4).labeled_names() != names
    assert len(make(tmp_path, label_fraction=7).labeled_names()) == 7
    assert len(make(tmp_path).labeled_names()) == 200
    custom = tmp_path / "mine.txt"
    custom.write_text("000001\n000005\n")
    assert make(tmp_path, split_file=str(custom)).labeled_names() == ["000001", "000005"]


def test_joint_augmentation_keeps_image_and_mask_aligned(tmp_path: Path) -> None:
    """Crops padded beyond the image get ignore labels; mask classes stay where objects are."""
    dm = make(tmp_path, crop_size=48, resize_range=(32, 40), label_fraction=4,
              mean=[0.0] * 3, std=[1.0] * 3)  # fmt: skip
    ds = dm.train_dataset()
    torch.manual_seed(0)
    for i in range(len(ds)):
        item = ds[i]
        image, mask = item["image"], item["mask"]
        assert image.shape == (3, 48, 48) and mask.shape == (48, 48)
        # only padding is labeled 255 in synthetic masks; a 32-40 px image padded to 48
        ignore = mask == 255
        assert ignore.any() and (image[:, ignore] == 0).all()  # padding is black
        assert set(mask.unique().tolist()) <= set(range(dm.num_classes)) | {255}


def test_loaders_and_unlabeled_views(tmp_path: Path) -> None:
    dm = make(tmp_path, label_fraction=8)
    batch = next(iter(dm.train_dataloader()))
    assert batch["image"].shape == (4, 3, 32, 32) and batch["mask"].dtype == torch.int64
    assert len(batch["name"]) == 4
    val = next(iter(dm.val_dataloader()))
    assert val["image"].shape == (4, 3, 32, 32)
    unlabeled = dm.unlabeled_dataset(ViewAugmentation(size=16), n_views=2)
    assert len(unlabeled) == 200
    sample = unlabeled[0]
    assert len(sample["views"]) == 2 and len(sample["index_maps"]) == 2
    assert sample["masks"][0].shape == (16, 16)
    assert dm.num_classes == 7 and dm.classes[0] == "background" and dm.in_channels == 3


def test_potsdam_tiles_draw_new_windows_every_epoch(seg_roots) -> None:
    from contraseg.datamodules import PotsdamTilesDataModule

    dm = PotsdamTilesDataModule(str(seg_roots["potsdam_tiles"]), crop_size=32,
                                samples_per_epoch=8, batch_size=4, num_workers=1)  # fmt: skip
    loader = dm.train_dataloader()
    epochs = []
    for epoch in range(2):
        loader.sampler.set_epoch(epoch)  # as Lightning does before each epoch
        epochs.append([(t, tuple(w.tolist())) for b in loader
                       for t, w in zip(b["tile"], torch.stack(b["window"], 1))])  # fmt: skip
    assert len(epochs[0]) == 8 and epochs[0] != epochs[1]
    loader.sampler.set_epoch(0)
    again = [(t, tuple(w.tolist())) for b in loader
             for t, w in zip(b["tile"], torch.stack(b["window"], 1))]  # fmt: skip
    assert again == epochs[0]  # the worker saw epoch 0 again: deterministic per epoch
