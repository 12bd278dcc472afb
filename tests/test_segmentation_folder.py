"""Users' own segmentation folders: reader, class table, errors naming the file, DataModule."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import tifffile
import torch
import yaml
from conftest import FOLDER_PALETTE, write_segmentation_folder
from PIL import Image

from contraseg.datamodules import SegmentationFolderDataModule
from contraseg.datamodules.datasets.io import DataFormatError
from contraseg.datamodules.datasets.segmentation_folder import SegmentationFolder, read_class_table
from contraseg.datamodules.transforms import ViewAugmentation


def test_index_masks_read_exactly(tmp_path: Path) -> None:
    root = write_segmentation_folder(tmp_path / "d")
    info = read_class_table(root / "classes.yaml")
    assert info.classes == ("background", "road", "building") and info.ignore_index == 255
    ds = SegmentationFolder(root, "train", info)
    assert len(ds) == 6 and ds.names[0] == "train_000"
    item = ds[0]
    expected = np.array(Image.open(root / "masks" / "train" / "train_000.png"))
    assert torch.equal(item["mask"], torch.from_numpy(expected.astype(np.int64)))
    raw = np.array(Image.open(root / "images" / "train" / "train_000.png"))
    assert torch.equal(item["image"], torch.from_numpy(raw).permute(2, 0, 1))


def test_colour_masks_map_through_the_palette(tmp_path: Path) -> None:
    root = write_segmentation_folder(tmp_path / "c", colour_masks=True)
    info = read_class_table(root / "classes.yaml")
    item = SegmentationFolder(root, "val", info)[1]
    rgb = np.array(Image.open(root / "masks" / "val" / "val_001.png"))
    for cls, colour in enumerate(FOLDER_PALETTE):
        assert int((item["mask"] == cls).sum()) == int(np.all(rgb == colour, axis=-1).sum())


def test_json_table_and_multiband_uint16_tiff(tmp_path: Path) -> None:
    root = tmp_path / "t"
    (root / "images" / "train").mkdir(parents=True)
    (root / "masks" / "train").mkdir(parents=True)
    (root / "classes.json").write_text('{"classes": ["a", "b"], "mean": [0.5, 0.5, 0.5, 0.5],'
                                       ' "std": [0.25, 0.25, 0.25, 0.25]}')  # fmt: skip
    image = np.random.default_rng(0).integers(0, 65535, (16, 16, 4), dtype=np.uint16)
    for name in ("x", "y"):  # two copies: BatchNorm training needs two images (a clear error)
        tifffile.imwrite(root / "images" / "train" / f"{name}.tif", image)
        tifffile.imwrite(root / "masks" / "train" / f"{name}.tif",
                         (image[..., 0] > 30000).astype(np.uint8))  # fmt: skip
    (root / "images" / "val").mkdir()
    (root / "masks" / "val").mkdir()
    dm = SegmentationFolderDataModule(str(root), crop_size=16, batch_size=1, num_workers=0,
                                      split_dir=str(tmp_path / "s"))  # fmt: skip
    assert dm.in_channels == 4 and dm.num_classes == 2 and dm.mean == [0.5] * 4
    raw = dm.build("train")[0]
    assert raw["image"].dtype == torch.uint16 and raw["image"].shape == (4, 16, 16)
    batch = dm.on_after_batch_transfer(next(iter(dm.train_dataloader())))
    expected = (torch.from_numpy(image.astype(np.float32) / 65535).permute(2, 0, 1) - 0.5) / 0.25
    flipped = expected.flip(-1)
    assert torch.allclose(batch["image"][0], expected, atol=1e-5) or torch.allclose(
        batch["image"][0], flipped, atol=1e-5)  # fmt: skip


@pytest.mark.parametrize("defect", ["label", "colour", "missing_mask", "size", "no_palette",
                                    "table", "ignore_is_class"])  # fmt: skip
def test_bad_input_names_the_file(tmp_path: Path, defect: str) -> None:
    root = write_segmentation_folder(tmp_path / defect, colour_masks=defect == "colour")
    mask = root / "masks" / "train" / "train_002.png"
    table = yaml.safe_load((root / "classes.yaml").read_text())
    if defect == "label":
        Image.fromarray(np.full((40, 48), 7, np.uint8)).save(mask)
        match = r"train_002\.png holds labels \[7\]"
    elif defect == "colour":
        Image.fromarray(np.full((40, 48, 3), 9, np.uint8)).save(mask)
        match = r"train_002\.png: 1920 pixels with colours outside the palette"
    elif defect == "missing_mask":
        mask.unlink()
        match = r"train_002\.png has no mask"
    elif defect == "size":
        Image.fromarray(np.zeros((8, 8), np.uint8)).save(mask)
        match = r"train_002\.png is \(40, 48\) but its mask .*train_002\.png is \(8, 8\)"
    elif defect == "no_palette":
        Image.fromarray(np.zeros((40, 48, 3), np.uint8)).save(mask)
        match = "colour image but the class table has no palette"
    elif defect == "table":
        (root / "classes.yaml").write_text("classes: []\n")
        match = r"classes\.yaml needs a non-empty 'classes' list"
    else:
        (root / "classes.yaml").write_text(yaml.safe_dump({**table, "ignore_index": 1}))
        match = "ignore_index 1 is a class index"
    with pytest.raises(DataFormatError, match=match):
        info = read_class_table(root / "classes.yaml")
        ds = SegmentationFolder(root, "train", info)
        ds[ds.names.index("train_002")]


@pytest.mark.parametrize("defect", ["size", "no_palette", "two_channels"])
def test_mask_layout_and_size_are_checked_at_setup(tmp_path: Path, defect: str) -> None:
    """From the headers, before any sample is drawn (a short run used to pass a bad mask)."""
    root = write_segmentation_folder(tmp_path / defect)
    mask = root / "masks" / "train" / "train_004.png"
    if defect == "size":
        Image.fromarray(np.zeros((8, 8), np.uint8)).save(mask)
        match = r"train_004\.png is \(40, 48\) but its mask .*train_004\.png is \(8, 8\)"
    elif defect == "no_palette":
        Image.fromarray(np.zeros((40, 48, 3), np.uint8)).save(mask)
        match = r"train_004\.png is a colour image but the class table has no palette"
    else:
        Image.fromarray(np.zeros((40, 48, 2), np.uint8), mode="LA").save(mask)
        match = r"train_004\.png has 2 channels"
    info = read_class_table(root / "classes.yaml")
    with pytest.raises(DataFormatError, match=match):
        SegmentationFolder(root, "train", info)  # nothing read yet
    SegmentationFolder(root, "train", info, check_headers=False)  # found when drawn instead


def test_a_missing_mask_names_the_suffix_argument(tmp_path: Path) -> None:
    root = write_segmentation_folder(tmp_path / "m")
    info = read_class_table(root / "classes.yaml")
    with pytest.raises(DataFormatError, match=r"train_000_segmentation\.png .*"
                       r"mask_suffix='_segmentation' \(data.init_args.mask_suffix"):  # fmt: skip
        SegmentationFolder(root, "train", info, mask_suffix="_segmentation")


def test_missing_root_and_skip(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="data.root"):
        SegmentationFolderDataModule(str(tmp_path / "nowhere"))
    root = write_segmentation_folder(tmp_path / "m")
    (root / "masks" / "train" / "train_001.png").unlink()
    info = read_class_table(root / "classes.yaml")
    ds = SegmentationFolder(root, "train", info, missing="skip")
    assert len(ds) == 5 and ds.missing_count == 1 and "train_001" not in ds.names


def test_datamodule_fractions_and_pretraining(tmp_path: Path) -> None:
    root = write_segmentation_folder(tmp_path / "f", n_train=10)
    common = {"crop_size": 32, "batch_size": 2, "num_workers": 0, "split_dir": str(tmp_path / "s")}
    dm = SegmentationFolderDataModule(str(root), label_fraction=4, **common)
    assert dm.classes == ("background", "road", "building") and dm.probe_classes == 0
    assert len(dm.labeled_names()) == 4 and set(dm.labeled_names()) <= set(dm.train_names())
    batch = next(iter(dm.train_dataloader()))
    assert batch["image"].shape == (2, 3, 32, 32) and batch["mask"].shape == (2, 32, 32)
    assert set(batch["mask"].unique().tolist()) <= {0, 1, 2, 255}
    val = next(iter(dm.val_dataloader()))
    assert val["image"].shape == (2, 3, 40, 48)
    pre = SegmentationFolderDataModule(str(root), pretrain_views=ViewAugmentation(size=24),
                                       **common)  # fmt: skip
    views = next(iter(pre.train_dataloader()))
    assert len(views["views"]) == 2 and views["views"][0].shape == (2, 3, 24, 24)
    assert len(pre.unlabeled_dataset(ViewAugmentation(size=24))) == 10  # every image


def test_whole_image_inference_of_any_size() -> None:
    """Images not divisible by the stride (users' data) are padded and cropped back."""
    from contraseg.lightning_modules import SegmentationFineTune

    model = SegmentationFineTune(num_classes=3, encoder="resnet18").eval()
    images = torch.randn(2, 3, 40, 48)
    with torch.no_grad():
        logits = model._infer(images)
        padded = model(torch.nn.functional.pad(images, (0, 16, 0, 24)))[..., :40, :48]
    assert logits.shape == (2, 3, 40, 48)
    torch.testing.assert_close(logits, padded)


def test_planar_tiff_and_colour_table(tmp_path: Path) -> None:
    """Planar (C, H, W) TIFFs read as (C, H, W) images too; the colour table refuses clashes."""
    from contraseg.datamodules.datasets.palette import ColourTable

    root = write_segmentation_folder(tmp_path / "p")
    image = np.random.default_rng(1).integers(0, 255, (5, 40, 48), dtype=np.uint8)
    tifffile.imwrite(root / "images" / "train" / "train_000.tif", image, planarconfig="separate")
    (root / "images" / "train" / "train_000.png").unlink()
    item = SegmentationFolder(root, "train", read_class_table(root / "classes.yaml"))[0]
    assert item["image"].shape == (5, 40, 48) and torch.equal(item["image"],
                                                              torch.from_numpy(image))  # fmt: skip
    table = ColourTable([(1, 2, 3), (4, 5, 6)], [7, 9])
    labels, known = table.decode(np.array([[[4, 5, 6], [1, 2, 3], [0, 0, 0]]], np.uint8), fill=255)
    assert labels.tolist() == [[9, 7, 255]] and known.tolist() == [[True, True, False]]
    with pytest.raises(ValueError, match="distinct"):
        ColourTable([(1, 2, 3), (1, 2, 3)], [0, 1])
