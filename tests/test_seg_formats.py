"""Format tests for the Cityscapes and VOC/SBD segmentation readers on tiny on-disk fixtures."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
import scipy.io
import torch
from PIL import Image
from torchvision import tv_tensors

from contraseg.datamodules.datasets.cityscapes import (
    CITYSCAPES_CLASSES,
    CITYSCAPES_LABEL_TO_TRAIN_ID,
    CITYSCAPES_PALETTE,
    CityscapesDataset,
    encode_cityscapes_labels,
)
from contraseg.datamodules.datasets.io import DataFormatError
from contraseg.datamodules.datasets.voc import (
    VOC_CLASSES,
    VOC_PALETTE,
    VOCSegmentation,
    resolve_sbd_root,
    resolve_voc_root,
    trainaug_ids,
    voc_colormap,
)

H, W = 4, 6

# ----------------------------------------------------------------------------------------------
# Cityscapes fixtures
# ----------------------------------------------------------------------------------------------

CS_TRAIN = {
    "aachen": ["aachen_000001_000019", "aachen_000000_000019"],
    "bochum": ["bochum_000000_000313"],
}


def _cs_label(seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    arr = rng.integers(0, 34, size=(H, W), dtype=np.uint8)
    arr[0, :4] = [0, 7, 26, 33]  # unlabeled, road, car, bicycle
    return arr


def _cs_image(seed: int) -> np.ndarray:
    return np.random.default_rng(100 + seed).integers(0, 256, size=(H, W, 3), dtype=np.uint8)


def _image_path(root: Path, split: str, stem: str) -> Path:
    return root / "leftImg8bit" / split / stem.split("_")[0] / f"{stem}_leftImg8bit.png"


def _label_path(root: Path, split: str, stem: str) -> Path:
    return root / "gtFine" / split / stem.split("_")[0] / f"{stem}_gtFine_labelIds.png"


def _write_png(path: Path, arr: np.ndarray, mode: str | None = None) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    img = Image.fromarray(arr, mode=mode) if mode else Image.fromarray(arr)
    img.save(path)


@pytest.fixture
def cityscapes_root(tmp_path: Path) -> Path:
    root = tmp_path / "cityscapes"
    seed = 0
    for split, cities in (("train", CS_TRAIN), ("val", {"lindau": ["lindau_000000_000019"]})):
        for stems in cities.values():
            for stem in stems:
                _write_png(_image_path(root, split, stem), _cs_image(seed))
                _write_png(_label_path(root, split, stem), _cs_label(seed), mode="L")
                seed += 1
    # Files that must be ignored by the listing.
    (root / "gtFine" / "train" / "aachen" / "aachen_000000_000019_gtFine_color.png").touch()
    return root


def test_cityscapes_label_table():
    lut = CITYSCAPES_LABEL_TO_TRAIN_ID
    assert lut.shape == (256,) and lut.dtype == np.uint8
    expected = {7: 0, 8: 1, 11: 2, 12: 3, 13: 4, 17: 5, 19: 6, 20: 7, 21: 8, 22: 9, 23: 10}
    expected |= {24: 11, 25: 12, 26: 13, 27: 14, 28: 15, 31: 16, 32: 17, 33: 18}
    for label_id in range(34):
        assert lut[label_id] == expected.get(label_id, 255), label_id
    assert lut[-1] == 255
    assert sorted(int(v) for v in set(lut.tolist()) - {255}) == list(range(19))
    assert len(CITYSCAPES_CLASSES) == 19 and CITYSCAPES_CLASSES[13] == "car"
    assert CITYSCAPES_CLASSES[6] == "traffic light" and CITYSCAPES_CLASSES[18] == "bicycle"
    assert len(CITYSCAPES_PALETTE) == 19
    assert CITYSCAPES_PALETTE[0] == (128, 64, 128) and CITYSCAPES_PALETTE[13] == (0, 0, 142)
    assert CITYSCAPES_PALETTE[10] == (70, 130, 180) and CITYSCAPES_PALETTE[18] == (119, 11, 32)
    with pytest.raises(ValueError):
        lut[0] = 1  # read-only
    out = encode_cityscapes_labels(np.array([26, 0, 33, -1, 7]))
    assert out.tolist() == [13, 255, 18, 255, 0] and out.dtype == np.int64
    with pytest.raises(ValueError, match=r"\[34\]"):
        encode_cityscapes_labels(np.array([34, 1]))


def test_cityscapes_listing_and_items(cityscapes_root: Path):
    ds = CityscapesDataset(cityscapes_root, split="train")
    assert ds.names == ["aachen_000000_000019", "aachen_000001_000019", "bochum_000000_000313"]
    assert len(ds) == 3
    assert ds.num_classes == 19 and ds.ignore_index == 255
    assert ds.classes == list(CITYSCAPES_CLASSES) and ds.palette == list(CITYSCAPES_PALETTE)
    # Fixture seeds follow CS_TRAIN order: aachen_000001 = 0, aachen_000000 = 1, bochum = 2.
    seeds = {"aachen_000001_000019": 0, "aachen_000000_000019": 1, "bochum_000000_000313": 2}
    for i, name in enumerate(ds.names):
        item = ds[i]
        assert item["name"] == name
        assert isinstance(item["image"], tv_tensors.Image)
        assert isinstance(item["mask"], tv_tensors.Mask)
        assert item["image"].dtype == torch.uint8 and item["image"].shape == (3, H, W)
        assert item["mask"].dtype == torch.int64 and item["mask"].shape == (H, W)
        label = _cs_label(seeds[name])
        expected = CITYSCAPES_LABEL_TO_TRAIN_ID[label].astype(np.int64)
        assert np.array_equal(item["mask"].numpy(), expected)
        assert item["mask"][0, :4].tolist() == [255, 0, 13, 18]
        image = torch.from_numpy(_cs_image(seeds[name])).permute(2, 0, 1)
        assert torch.equal(item["image"].as_subclass(torch.Tensor), image)
    assert ds[-1]["name"] == "bochum_000000_000313"

    val = CityscapesDataset(cityscapes_root, split="val")
    assert val.names == ["lindau_000000_000019"]


def test_cityscapes_names_subset(cityscapes_root: Path):
    ds = CityscapesDataset(cityscapes_root, names=["bochum_000000_000313", "aachen_000000_000019"])
    assert ds.names == ["aachen_000000_000019", "bochum_000000_000313"]
    assert ds[1]["name"] == "bochum_000000_000313"
    with pytest.raises(ValueError, match="nowhere_000000_000000"):
        CityscapesDataset(cityscapes_root, names=["nowhere_000000_000000"])
    with pytest.raises(ValueError, match="split"):
        CityscapesDataset(cityscapes_root, split="extra")  # type: ignore[arg-type]


def test_cityscapes_missing_split_folder(cityscapes_root: Path):
    missing = cityscapes_root / "leftImg8bit" / "test"
    with pytest.raises(FileNotFoundError, match=re.escape(str(missing))):
        CityscapesDataset(cityscapes_root, split="test")


def test_cityscapes_image_without_label(cityscapes_root: Path):
    label = _label_path(cityscapes_root, "train", "bochum_000000_000313")
    label.unlink()
    with pytest.raises(FileNotFoundError, match=re.escape(str(label))):
        CityscapesDataset(cityscapes_root)


def test_cityscapes_bad_label_values(cityscapes_root: Path):
    label = _label_path(cityscapes_root, "train", "aachen_000000_000019")
    arr = _cs_label(0)
    arr[1, 1], arr[2, 2] = 34, 200
    _write_png(label, arr, mode="L")
    ds = CityscapesDataset(cityscapes_root)
    with pytest.raises(DataFormatError, match=re.escape(str(label)) + r".*\[34, 200\]"):
        ds[0]


def test_cityscapes_size_mismatch(cityscapes_root: Path):
    stem = "aachen_000001_000019"
    label = _label_path(cityscapes_root, "train", stem)
    _write_png(label, np.zeros((H + 1, W), dtype=np.uint8), mode="L")
    ds = CityscapesDataset(cityscapes_root)
    pattern = (
        re.escape(str(_image_path(cityscapes_root, "train", stem))) + ".*" + re.escape(str(label))
    )
    with pytest.raises(DataFormatError, match=pattern):
        ds[1]


def test_cityscapes_corrupt_png(cityscapes_root: Path):
    label = _label_path(cityscapes_root, "train", "aachen_000000_000019")
    label.write_bytes(b"\x89PNG\r\n\x1a\n" + b"garbage" * 10)
    image = _image_path(cityscapes_root, "train", "bochum_000000_000313")
    image.write_bytes(b"not a png at all")
    ds = CityscapesDataset(cityscapes_root)
    with pytest.raises(DataFormatError, match=re.escape(str(label))):
        ds[0]
    with pytest.raises(DataFormatError, match=re.escape(str(image))):
        ds[2]


def test_cityscapes_rgb_label_rejected(cityscapes_root: Path):
    label = _label_path(cityscapes_root, "train", "aachen_000000_000019")
    _write_png(label, np.zeros((H, W, 3), dtype=np.uint8))
    with pytest.raises(DataFormatError, match=re.escape(str(label)) + ".*'RGB'"):
        CityscapesDataset(cityscapes_root)[0]


# ----------------------------------------------------------------------------------------------
# VOC / SBD fixtures
# ----------------------------------------------------------------------------------------------

VOC_TRAIN = ["2007_000032", "2007_000039"]
VOC_VAL = ["2007_000033", "2007_000042"]
SBD_TRAIN = ["2007_000039", "2008_000002", "2007_000033", "2008_000003"]  # 000033 is VOC val
SBD_VAL = ["2008_000008", "2007_000042", "2008_000002"]  # 000042 is VOC val; 000002 repeated
SBD_ONLY = ["2008_000002", "2008_000003", "2008_000008"]
EXPECTED_TRAINAUG = sorted(set(VOC_TRAIN) | set(SBD_ONLY))


def _voc_label(seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    arr = rng.integers(0, 21, size=(H, W), dtype=np.uint8)
    arr[0, 0], arr[0, 1], arr[-1, -1] = 15, 0, 255
    return arr


def _seed(image_id: str) -> int:
    return int(image_id.replace("_", "")) % 10_000


def _write_palette_png(path: Path, arr: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    img = Image.fromarray(arr, mode="P")
    img.putpalette(voc_colormap(256).reshape(-1).tolist())
    img.save(path)


def _write_jpeg(path: Path, h: int = H, w: int = W) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    arr = np.random.default_rng(h * w).integers(0, 256, size=(h, w, 3), dtype=np.uint8)
    Image.fromarray(arr).save(path, quality=95)


def _write_sbd_mat(path: Path, seg: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    boundaries = np.empty((20, 1), dtype=object)
    for k in range(20):
        boundaries[k, 0] = np.zeros(seg.shape, dtype=np.uint8)
    present = np.unique(seg[(seg > 0) & (seg < 255)]).astype(np.uint8).reshape(-1, 1)
    scipy.io.savemat(
        path,
        {"GTcls": {"Segmentation": seg, "Boundaries": boundaries, "CategoriesPresent": present}},
    )


def _write_list(path: Path, ids: list[str]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(f"{i}\n" for i in ids))


@pytest.fixture
def voc_dirs(tmp_path: Path) -> tuple[Path, Path]:
    """Returns (folder containing VOCdevkit/VOC2012, folder containing benchmark_RELEASE)."""
    voc = tmp_path / "voc" / "VOCdevkit" / "VOC2012"
    lists = voc / "ImageSets" / "Segmentation"
    _write_list(lists / "train.txt", VOC_TRAIN)
    _write_list(lists / "val.txt", VOC_VAL)
    _write_list(lists / "trainval.txt", sorted(VOC_TRAIN + VOC_VAL))
    for image_id in VOC_TRAIN + VOC_VAL:
        _write_jpeg(voc / "JPEGImages" / f"{image_id}.jpg")
        _write_palette_png(
            voc / "SegmentationClass" / f"{image_id}.png", _voc_label(_seed(image_id))
        )
    sbd = tmp_path / "sbd" / "benchmark_RELEASE" / "dataset"
    _write_list(sbd / "train.txt", SBD_TRAIN)
    _write_list(sbd / "val.txt", SBD_VAL)
    for image_id in sorted(set(SBD_TRAIN + SBD_VAL)):
        _write_jpeg(sbd / "img" / f"{image_id}.jpg")
        seg = _voc_label(_seed(image_id)).copy()
        seg[-1, -1] = 0  # SBD has no void label
        _write_sbd_mat(sbd / "cls" / f"{image_id}.mat", seg)
    # Most SBD images are also VOC JPEGs; 2008_000008 is only in SBD img/ (fallback path).
    for image_id in ["2008_000002", "2008_000003"]:
        _write_jpeg(voc / "JPEGImages" / f"{image_id}.jpg")
    return tmp_path / "voc", tmp_path / "sbd"


def test_voc_palette_and_classes():
    assert len(VOC_CLASSES) == 21
    assert VOC_CLASSES[0] == "background" and VOC_CLASSES[15] == "person"
    assert VOC_CLASSES[-1] == "tvmonitor"
    assert len(VOC_PALETTE) == 21
    assert VOC_PALETTE[0] == (0, 0, 0) and VOC_PALETTE[1] == (128, 0, 0)
    assert VOC_PALETTE[15] == (192, 128, 128) and VOC_PALETTE[20] == (0, 64, 128)
    cmap = voc_colormap(256)
    assert cmap.shape == (256, 3) and cmap.dtype == np.uint8
    assert tuple(cmap[255]) == (224, 224, 192)


def test_sbd_mat_roundtrip(tmp_path: Path):
    seg = _voc_label(3)
    path = tmp_path / "x.mat"
    _write_sbd_mat(path, seg)
    gt = scipy.io.loadmat(path, struct_as_record=False, squeeze_me=True)["GTcls"]
    assert gt.Segmentation.dtype == np.uint8
    assert np.array_equal(gt.Segmentation, seg)


def test_root_resolution(voc_dirs: tuple[Path, Path]):
    voc_parent, sbd_parent = voc_dirs
    voc = voc_parent / "VOCdevkit" / "VOC2012"
    sbd = sbd_parent / "benchmark_RELEASE" / "dataset"
    assert resolve_voc_root(voc_parent) == voc and resolve_voc_root(voc) == voc
    assert resolve_sbd_root(sbd_parent) == sbd and resolve_sbd_root(sbd) == sbd
    assert resolve_sbd_root(sbd.parent) == sbd
    with pytest.raises(FileNotFoundError, match=re.escape(str(sbd_parent))):
        resolve_voc_root(sbd_parent)
    with pytest.raises(FileNotFoundError, match=re.escape(str(voc_parent))):
        resolve_sbd_root(voc_parent)


def test_trainaug_set_arithmetic(voc_dirs: tuple[Path, Path]):
    voc_parent, sbd_parent = voc_dirs
    ids = trainaug_ids(voc_parent, sbd_parent)
    assert ids == EXPECTED_TRAINAUG
    assert len(ids) == 5
    assert not set(ids) & set(VOC_VAL)
    assert set(ids) == (set(VOC_TRAIN) | set(SBD_TRAIN) | set(SBD_VAL)) - set(VOC_VAL)


def test_voc_train_items_read_palette_indices(voc_dirs: tuple[Path, Path]):
    voc_parent, _ = voc_dirs
    ds = VOCSegmentation(voc_parent, split="train")
    assert ds.names == VOC_TRAIN and len(ds) == 2
    assert ds.num_classes == 21 and ds.ignore_index == 255
    assert ds.classes == list(VOC_CLASSES) and ds.palette == list(VOC_PALETTE)
    for i, image_id in enumerate(VOC_TRAIN):
        item = ds[i]
        assert item["name"] == image_id
        assert isinstance(item["image"], tv_tensors.Image)
        assert isinstance(item["mask"], tv_tensors.Mask)
        assert item["image"].dtype == torch.uint8 and item["image"].shape == (3, H, W)
        assert item["mask"].dtype == torch.int64 and item["mask"].shape == (H, W)
        assert np.array_equal(item["mask"].numpy(), _voc_label(_seed(image_id)))
        # Index 15 (person) has palette colour (192, 128, 128) but must read back as 15.
        assert item["mask"][0, 0] == 15 and item["mask"][-1, -1] == 255
    png = voc_parent / "VOCdevkit" / "VOC2012" / "SegmentationClass" / f"{VOC_TRAIN[0]}.png"
    with Image.open(png) as img:
        assert img.mode == "P"
        assert img.convert("RGB").getpixel((0, 0)) == (192, 128, 128)

    assert VOCSegmentation(voc_parent / "VOCdevkit" / "VOC2012", split="val").names == VOC_VAL
    assert len(VOCSegmentation(voc_parent, split="trainval")) == 4


def test_voc_grayscale_label_accepted(voc_dirs: tuple[Path, Path]):
    voc_parent, _ = voc_dirs
    png = voc_parent / "VOCdevkit" / "VOC2012" / "SegmentationClass" / f"{VOC_TRAIN[1]}.png"
    arr = _voc_label(7)
    _write_png(png, arr, mode="L")
    assert np.array_equal(VOCSegmentation(voc_parent)[1]["mask"].numpy(), arr)


def test_voc_trainaug_dataset(voc_dirs: tuple[Path, Path]):
    voc_parent, sbd_parent = voc_dirs
    ds = VOCSegmentation(voc_parent, split="trainaug", sbd_root=sbd_parent)
    assert ds.names == EXPECTED_TRAINAUG
    for i, image_id in enumerate(ds.names):
        item = ds[i]
        assert item["name"] == image_id
        assert item["image"].shape == (3, H, W) and item["mask"].shape == (H, W)
        expected = _voc_label(_seed(image_id)).astype(np.int64)
        if image_id in SBD_ONLY:  # read from SBD .mat
            expected[-1, -1] = 0
        assert np.array_equal(item["mask"].numpy(), expected), image_id
    # 2007_000039 is in both VOC train and SBD train: the VOC PNG (with its 255 pixel) wins.
    assert ds[ds.names.index("2007_000039")]["mask"][-1, -1] == 255

    subset = VOCSegmentation(
        voc_parent, "trainaug", sbd_parent, names=["2008_000008", "2007_000032"]
    )
    assert subset.names == ["2007_000032", "2008_000008"]
    with pytest.raises(ValueError, match="2007_000033"):
        VOCSegmentation(voc_parent, "trainaug", sbd_parent, names=["2007_000033"])


def test_voc_trainaug_needs_sbd(voc_dirs: tuple[Path, Path]):
    voc_parent, _ = voc_dirs
    with pytest.raises(ValueError, match="sbd_root"):
        VOCSegmentation(voc_parent, split="trainaug")


def test_voc_rgb_label_rejected(voc_dirs: tuple[Path, Path]):
    voc_parent, _ = voc_dirs
    png = voc_parent / "VOCdevkit" / "VOC2012" / "SegmentationClass" / f"{VOC_TRAIN[0]}.png"
    _write_png(png, np.zeros((H, W, 3), dtype=np.uint8))
    with pytest.raises(DataFormatError, match=re.escape(str(png)) + ".*'RGB'"):
        VOCSegmentation(voc_parent)[0]


def test_voc_bad_label_values(voc_dirs: tuple[Path, Path]):
    voc_parent, sbd_parent = voc_dirs
    png = voc_parent / "VOCdevkit" / "VOC2012" / "SegmentationClass" / f"{VOC_TRAIN[0]}.png"
    arr = _voc_label(1)
    arr[1, 1], arr[2, 2] = 21, 254
    _write_palette_png(png, arr)
    with pytest.raises(DataFormatError, match=re.escape(str(png)) + r".*\[21, 254\]"):
        VOCSegmentation(voc_parent)[0]

    mat = sbd_parent / "benchmark_RELEASE" / "dataset" / "cls" / "2008_000003.mat"
    seg = _voc_label(2)
    seg[0, 0] = 40
    _write_sbd_mat(mat, seg)
    ds = VOCSegmentation(voc_parent, "trainaug", sbd_parent)
    with pytest.raises(DataFormatError, match=re.escape(str(mat)) + r".*\[40\]"):
        ds[ds.names.index("2008_000003")]


def test_voc_size_mismatch(voc_dirs: tuple[Path, Path]):
    voc_parent, sbd_parent = voc_dirs
    voc = voc_parent / "VOCdevkit" / "VOC2012"
    jpg = voc / "JPEGImages" / f"{VOC_TRAIN[1]}.jpg"
    _write_jpeg(jpg, H + 2, W)
    png = voc / "SegmentationClass" / f"{VOC_TRAIN[1]}.png"
    with pytest.raises(DataFormatError, match=re.escape(str(jpg)) + ".*" + re.escape(str(png))):
        VOCSegmentation(voc_parent)[1]

    jpg = voc / "JPEGImages" / "2008_000002.jpg"
    _write_jpeg(jpg, H, W + 3)
    mat = sbd_parent / "benchmark_RELEASE" / "dataset" / "cls" / "2008_000002.mat"
    ds = VOCSegmentation(voc_parent, "trainaug", sbd_parent)
    with pytest.raises(DataFormatError, match=re.escape(str(jpg)) + ".*" + re.escape(str(mat))):
        ds[ds.names.index("2008_000002")]


def test_voc_missing_files(voc_dirs: tuple[Path, Path]):
    voc_parent, sbd_parent = voc_dirs
    voc = voc_parent / "VOCdevkit" / "VOC2012"
    sbd = sbd_parent / "benchmark_RELEASE" / "dataset"

    lst = voc / "ImageSets" / "Segmentation" / "test.txt"
    with pytest.raises(FileNotFoundError, match=re.escape(str(lst))):
        VOCSegmentation(voc_parent, split="test")

    png = voc / "SegmentationClass" / f"{VOC_VAL[0]}.png"
    png.unlink()
    with pytest.raises(FileNotFoundError, match=re.escape(str(png))):
        VOCSegmentation(voc_parent, split="val")

    jpg = voc / "JPEGImages" / f"{VOC_TRAIN[0]}.jpg"
    jpg.unlink()
    with pytest.raises(FileNotFoundError, match=re.escape(str(jpg))):
        VOCSegmentation(voc_parent, split="train")
    _write_jpeg(jpg)

    mat = sbd / "cls" / "2008_000003.mat"
    mat.unlink()
    with pytest.raises(FileNotFoundError, match=re.escape(str(mat))):
        VOCSegmentation(voc_parent, split="trainaug", sbd_root=sbd_parent)

    sbd_list = sbd / "val.txt"
    sbd_list.unlink()
    with pytest.raises(FileNotFoundError, match=re.escape(str(sbd_list))):
        trainaug_ids(voc_parent, sbd_parent)


def test_voc_malformed_list(voc_dirs: tuple[Path, Path]):
    voc_parent, _ = voc_dirs
    lst = voc_parent / "VOCdevkit" / "VOC2012" / "ImageSets" / "Segmentation" / "train.txt"
    lst.write_text("2007_000032 1\n")
    with pytest.raises(DataFormatError, match=re.escape(str(lst)) + ".*line 1"):
        VOCSegmentation(voc_parent)


def test_voc_corrupt_files(voc_dirs: tuple[Path, Path]):
    voc_parent, sbd_parent = voc_dirs
    voc = voc_parent / "VOCdevkit" / "VOC2012"
    sbd = sbd_parent / "benchmark_RELEASE" / "dataset"

    png = voc / "SegmentationClass" / f"{VOC_TRAIN[0]}.png"
    png.write_bytes(b"\x89PNG\r\n\x1a\n" + b"broken" * 10)
    jpg = voc / "JPEGImages" / f"{VOC_TRAIN[1]}.jpg"
    jpg.write_bytes(b"\xff\xd8\xff" + b"broken")
    ds = VOCSegmentation(voc_parent)
    with pytest.raises(DataFormatError, match=re.escape(str(png))):
        ds[0]
    with pytest.raises(DataFormatError, match=re.escape(str(jpg))):
        ds[1]

    corrupt = sbd / "cls" / "2008_000003.mat"
    corrupt.write_bytes(b"MATLAB 5.0 MAT-file" + b"\x00" * 20 + b"garbage")
    no_gtcls = sbd / "cls" / "2008_000008.mat"
    scipy.io.savemat(no_gtcls, {"GTinst": {"Segmentation": np.zeros((H, W), np.uint8)}})
    ds = VOCSegmentation(voc_parent, "trainaug", sbd_parent)
    with pytest.raises(DataFormatError, match=re.escape(str(corrupt))):
        ds[ds.names.index("2008_000003")]
    with pytest.raises(DataFormatError, match=re.escape(str(no_gtcls)) + ".*GTcls"):
        ds[ds.names.index("2008_000008")]
