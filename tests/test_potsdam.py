from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest
import tifffile
import torch
from torch.utils.data import DataLoader
from torchvision import tv_tensors

from contraseg.datamodules.datasets import potsdam as potsdam_module
from contraseg.datamodules.datasets.io import DataFormatError
from contraseg.datamodules.datasets.potsdam import (
    POTSDAM_CLASSES,
    POTSDAM_PALETTE,
    POTSDAM_TEST_TILES,
    POTSDAM_TRAIN_TILES,
    PotsdamCrops,
    PotsdamTiles,
    decode_potsdam_label,
)

REAL_ROOT = Path(__file__).resolve().parents[2] / "shared" / "data" / "potsdam-glcnet"
TRAIN_CROP = "top_potsdam_2_10_RGBIR__36"
VAL_CROP = "top_potsdam_2_13_RGBIR__26"

requires_real = pytest.mark.real_data  # collected only where ../shared has the crops


# --------------------------------------------------------------------------- helpers


def _random_label(rng: np.random.Generator, h: int, w: int) -> tuple[np.ndarray, np.ndarray]:
    classes = rng.integers(0, 6, size=(h, w))
    palette = np.array(POTSDAM_PALETTE, dtype=np.uint8)
    return palette[classes], classes.astype(np.int64)


def _make_tile_root(
    root: Path,
    tile_ids=("2_10",),
    size=(300, 300),
    bands: str = "rgbir",
    variant: str = "full",
    compression: str | None = None,
    seed: int = 0,
):
    rng = np.random.default_rng(seed)
    n = 4 if bands == "rgbir" else 3
    img_dir = root / ("4_Ortho_RGBIR" if bands == "rgbir" else "2_Ortho_RGB")
    suffix = "RGBIR" if bands == "rgbir" else "RGB"
    lbl_dir = root / ("5_Labels_all" if variant == "full" else "5_Labels_all_noBoundary")
    lbl_suffix = "label" if variant == "full" else "label_noBoundary"
    img_dir.mkdir(parents=True, exist_ok=True)
    lbl_dir.mkdir(parents=True, exist_ok=True)
    data = {}
    for tid in tile_ids:
        image = rng.integers(0, 256, size=(*size, n), dtype=np.uint8)
        rgb, classes = _random_label(rng, *size)
        tifffile.imwrite(
            img_dir / f"top_potsdam_{tid}_{suffix}.tif",
            image,
            photometric="rgb",
            compression=compression,
        )
        tifffile.imwrite(
            lbl_dir / f"top_potsdam_{tid}_{lbl_suffix}.tif",
            rgb,
            photometric="rgb",
            compression=compression,
        )
        data[tid] = (image, classes, rgb)
    return data


def _make_crop_root(root: Path, names=("a", "b", "c"), split="train", size=(16, 16), seed=0):
    rng = np.random.default_rng(seed)
    (root / f"{split}_RGBIR").mkdir(parents=True, exist_ok=True)
    (root / f"{split}_lbl").mkdir(parents=True, exist_ok=True)
    data = {}
    for name in names:
        image = rng.integers(0, 256, size=(*size, 4), dtype=np.uint8)
        rgb, classes = _random_label(rng, *size)
        tifffile.imwrite(root / f"{split}_RGBIR" / f"{name}.tif", image, photometric="rgb")
        tifffile.imwrite(root / f"{split}_lbl" / f"{name}.tif", rgb, photometric="rgb")
        data[name] = (image, classes)
    listing = "".join(f"{n}.tif\n" for n in names)
    (root / f"{split}_RGBIR.txt").write_text(listing)
    (root / f"{split}_lbl.txt").write_text(listing)
    return data


# --------------------------------------------------------------------------- decoding


def test_constants():
    assert len(POTSDAM_CLASSES) == 6 and len(POTSDAM_PALETTE) == 6
    assert len(POTSDAM_TEST_TILES) == 14 and len(POTSDAM_TRAIN_TILES) == 24
    assert not set(POTSDAM_TEST_TILES) & set(POTSDAM_TRAIN_TILES)
    assert POTSDAM_PALETTE[POTSDAM_CLASSES.index("car")] == (255, 255, 0)
    assert POTSDAM_PALETTE[POTSDAM_CLASSES.index("building")] == (0, 0, 255)


def test_decode_known_boundary_and_unknown_colours():
    colours = [*POTSDAM_PALETTE, (0, 0, 0), (12, 34, 56), (255, 0, 255)]
    rgb = np.array(colours, dtype=np.uint8).reshape(1, -1, 3)
    mask, unknown = decode_potsdam_label(rgb)
    assert mask.dtype == np.int64 and mask.shape == (1, 9)
    assert mask.tolist() == [[0, 1, 2, 3, 4, 5, 255, 255, 255]]
    assert unknown == 2  # boundary is ignored but not counted


def test_decode_random_roundtrip():
    rgb, classes = _random_label(np.random.default_rng(1), 40, 50)
    mask, unknown = decode_potsdam_label(rgb)
    assert unknown == 0
    np.testing.assert_array_equal(mask, classes)
    with pytest.raises(ValueError):
        decode_potsdam_label(rgb[..., :2])


# --------------------------------------------------------------------------- real GLCNet crops


@requires_real
@pytest.mark.parametrize("bands, channels", [("rgbir", 4), ("rgb", 3)])
def test_real_train_crop(bands, channels):
    ds = PotsdamCrops(REAL_ROOT, split="train", bands=bands, missing="skip")
    assert ds.missing_count == 13823
    assert ds.names == [TRAIN_CROP] and len(ds) == 1
    assert ds.num_classes == 6 and ds.ignore_index == 255
    item = ds[0]
    assert item["name"] == TRAIN_CROP
    assert isinstance(item["image"], tv_tensors.Image) and isinstance(item["mask"], tv_tensors.Mask)
    assert item["image"].dtype == torch.uint8 and item["image"].shape == (channels, 256, 256)
    assert item["mask"].dtype == torch.int64 and item["mask"].shape == (256, 256)
    raw = tifffile.imread(REAL_ROOT / "train_RGBIR" / f"{TRAIN_CROP}.tif")
    np.testing.assert_array_equal(item["image"].numpy(), raw[:, :, :channels].transpose(2, 0, 1))

    # Class pixel counts equal the colour counts computed independently.
    label = tifffile.imread(REAL_ROOT / "train_lbl" / f"{TRAIN_CROP}.tif")
    mask = item["mask"].numpy()
    assert set(np.unique(mask).tolist()) == {0, 2, 3}
    for colour, cls in [((0, 255, 0), 3), ((0, 255, 255), 2), ((255, 255, 255), 0)]:
        expected = int(np.all(label == np.array(colour, dtype=np.uint8), axis=-1).sum())
        assert expected > 0
        assert int((mask == cls).sum()) == expected
    assert ds.unknown_pixels == 0


@requires_real
def test_real_val_crop_and_lists():
    # The val crop is listed in the full val list only, not in the 1,500-crop valR1500 subset.
    assert VAL_CROP + ".tif" in (REAL_ROOT / "val_RGBIR.txt").read_text().split()
    assert VAL_CROP + ".tif" not in (REAL_ROOT / "valR1500_RGBIR.txt").read_text().split()
    ds = PotsdamCrops(REAL_ROOT, split="val", missing="skip")
    assert ds.missing_count == 8063 and ds.names == [VAL_CROP]
    item = ds[0]
    assert item["image"].shape == (4, 256, 256) and item["mask"].shape == (256, 256)
    label = tifffile.imread(REAL_ROOT / "val_lbl" / f"{VAL_CROP}.tif")
    mask = item["mask"].numpy()
    assert set(np.unique(mask).tolist()) == {0, 2, 3, 5}
    for cls, colour in enumerate(POTSDAM_PALETTE):
        expected = int(np.all(label == np.array(colour, dtype=np.uint8), axis=-1).sum())
        assert int((mask == cls).sum()) == expected
    assert ds.unknown_pixels == 0
    rgb = PotsdamCrops(REAL_ROOT, split="val", bands="rgb", missing="skip")
    assert rgb[0]["image"].shape == (3, 256, 256)
    r1500 = PotsdamCrops(REAL_ROOT, split="val", list_name="valR1500", missing="skip")
    assert len(r1500) == 0 and r1500.missing_count == 1500
    r1 = PotsdamCrops(REAL_ROOT, split="train", list_name="trainR1", missing="skip")
    assert len(r1) == 0 and r1.missing_count == 138


@requires_real
def test_real_missing_error_names_file_and_list():
    with pytest.raises(
        FileNotFoundError, match=r"top_potsdam_7_8_RGBIR__519\.tif.*trainR1_RGBIR\.txt"
    ):
        PotsdamCrops(REAL_ROOT, split="train", list_name="trainR1")


# --------------------------------------------------------------------------- crop fixtures


def test_crops_fixture_roundtrip_and_names(tmp_path):
    data = _make_crop_root(tmp_path)
    ds = PotsdamCrops(tmp_path)
    assert ds.names == ["a", "b", "c"] and ds.missing_count == 0
    for i, name in enumerate(ds.names):
        item = ds[i]
        np.testing.assert_array_equal(item["image"].numpy(), data[name][0].transpose(2, 0, 1))
        np.testing.assert_array_equal(item["mask"].numpy(), data[name][1])
    sub = PotsdamCrops(tmp_path, names=["c.tif", "a"], bands="rgb")
    assert sub.names == ["c", "a"] and sub[0]["image"].shape == (3, 16, 16)


def test_crops_missing_list_and_missing_image(tmp_path):
    _make_crop_root(tmp_path)
    with pytest.raises(FileNotFoundError, match="trainR1_RGBIR.txt"):
        PotsdamCrops(tmp_path, list_name="trainR1")
    (tmp_path / "train_RGBIR" / "b.tif").unlink()
    with pytest.raises(FileNotFoundError, match=r"b\.tif.*train_RGBIR\.txt"):
        PotsdamCrops(tmp_path)
    ds = PotsdamCrops(tmp_path, missing="skip")
    assert ds.names == ["a", "c"] and ds.missing_count == 1


def test_crops_unknown_colour_counted_and_strict(tmp_path):
    _make_crop_root(tmp_path, names=["a"])
    label_path = tmp_path / "train_lbl" / "a.tif"
    rgb = tifffile.imread(label_path)
    rgb[0, :3] = (10, 20, 30)
    rgb[1, 0] = (0, 0, 0)  # boundary: ignored, not counted
    tifffile.imwrite(label_path, rgb, photometric="rgb")
    ds = PotsdamCrops(tmp_path)
    mask = ds[0]["mask"]
    assert (mask[0, :3] == 255).all() and mask[1, 0] == 255
    assert ds.unknown_pixels == 3
    with pytest.raises(DataFormatError, match=r"a\.tif.*unknown colours"):
        PotsdamCrops(tmp_path, strict_colours=True)[0]


def test_crops_size_mismatch_band_count_corrupt(tmp_path):
    _make_crop_root(tmp_path, names=["a", "b", "c"])
    tifffile.imwrite(
        tmp_path / "train_lbl" / "a.tif", np.zeros((8, 16, 3), np.uint8), photometric="rgb"
    )
    tifffile.imwrite(
        tmp_path / "train_RGBIR" / "b.tif", np.zeros((16, 16, 3), np.uint8), photometric="rgb"
    )
    (tmp_path / "train_RGBIR" / "c.tif").write_bytes(b"not a tiff at all")
    ds = PotsdamCrops(tmp_path)
    with pytest.raises(DataFormatError, match=r"train_RGBIR/a\.tif.*train_lbl/a\.tif"):
        ds[0]
    with pytest.raises(DataFormatError, match=r"b\.tif.*4 bands"):
        ds[1]
    with pytest.raises(DataFormatError, match=r"c\.tif"):
        ds[2]


# --------------------------------------------------------------------------- tile fixtures


def test_tiles_sliding_covers_every_pixel(tmp_path):
    data = _make_tile_root(tmp_path, tile_ids=("2_10", "3_11"), size=(300, 260))
    ds = PotsdamTiles(tmp_path, tile_ids=["2_10", "3_11"], crop_size=128, mode="sliding")
    # 300 -> starts 0,128,172 ; 260 -> starts 0,128,132
    assert len(ds) == 2 * 3 * 3
    for tid, (image, classes, _) in data.items():
        img = np.full((4, 300, 260), -1, dtype=np.int64)
        msk = np.full((300, 260), -1, dtype=np.int64)
        for i in range(len(ds)):
            item = ds[i]
            if item["tile"] != tid:
                continue
            y, x = item["window"]
            assert item["image"].shape == (4, 128, 128) and item["mask"].shape == (128, 128)
            assert item["mask"].dtype == torch.int64 and item["image"].dtype == torch.uint8
            img[:, y : y + 128, x : x + 128] = item["image"].numpy()
            msk[y : y + 128, x : x + 128] = item["mask"].numpy()
        np.testing.assert_array_equal(img, image.transpose(2, 0, 1))
        np.testing.assert_array_equal(msk, classes)
    windows = {ds[i]["window"] for i in range(len(ds)) if ds[i]["tile"] == "2_10"}
    assert (172, 132) in windows  # last window flush with bottom-right border
    assert max(y for y, _ in windows) + 128 == 300 and max(x for _, x in windows) + 128 == 260


def test_tiles_sliding_stride_and_exact_fit(tmp_path):
    _make_tile_root(tmp_path, size=(256, 256))
    ds = PotsdamTiles(tmp_path, tile_ids=["2_10"], crop_size=128, stride=64)
    assert [w[1:] for w in ds.windows] == [(y, x) for y in (0, 64, 128) for x in (0, 64, 128)]
    with pytest.raises(DataFormatError, match="smaller than crop_size"):
        PotsdamTiles(tmp_path, tile_ids=["2_10"], crop_size=512)


def test_tiles_random_deterministic_and_in_bounds(tmp_path):
    data = _make_tile_root(tmp_path, tile_ids=("2_10", "6_7"), size=(200, 220))
    kw = dict(tile_ids=["2_10", "6_7"], crop_size=64, mode="random", samples_per_epoch=20)
    a = PotsdamTiles(tmp_path, seed=3, **kw)
    b = PotsdamTiles(tmp_path, seed=3, **kw)
    c = PotsdamTiles(tmp_path, seed=4, **kw)
    assert len(a) == 20
    wa = [(a[i]["tile"], a[i]["window"]) for i in range(20)]
    assert wa == [(b[i]["tile"], b[i]["window"]) for i in range(20)]
    assert wa != [(c[i]["tile"], c[i]["window"]) for i in range(20)]
    assert a[5]["window"] == a[5]["window"]  # independent of access order
    for _tid, (y, x) in wa:
        assert 0 <= y <= 200 - 64 and 0 <= x <= 220 - 64
    item = a[7]
    y, x = item["window"]
    image, classes, _ = data[item["tile"]]
    np.testing.assert_array_equal(
        item["image"].numpy(), image[y : y + 64, x : x + 64].transpose(2, 0, 1)
    )
    np.testing.assert_array_equal(item["mask"].numpy(), classes[y : y + 64, x : x + 64])
    a.set_epoch(1)
    b.set_epoch(1)
    we1 = [(a[i]["tile"], a[i]["window"]) for i in range(20)]
    assert we1 != wa and we1 == [(b[i]["tile"], b[i]["window"]) for i in range(20)]
    a.set_epoch(0)
    assert [(a[i]["tile"], a[i]["window"]) for i in range(20)] == wa
    assert len({w for _, w in wa}) > 10


def test_tiles_memmap_no_full_decode(tmp_path, monkeypatch):
    _make_tile_root(tmp_path, size=(300, 300))
    ds = PotsdamTiles(
        tmp_path, tile_ids=["2_10"], crop_size=100, mode="random", samples_per_epoch=8
    )

    def _no_imread(*args, **kwargs):
        raise AssertionError("full-tile decode via tifffile.imread")

    calls = []
    real_memmap = tifffile.memmap

    def _spy_memmap(*args, **kwargs):
        calls.append(args[0])
        return real_memmap(*args, **kwargs)

    monkeypatch.setattr(tifffile, "imread", _no_imread)
    monkeypatch.setattr(tifffile, "memmap", _spy_memmap)
    monkeypatch.setattr(tifffile.TiffFile, "asarray", _no_imread)
    monkeypatch.setattr(tifffile.TiffPage, "asarray", _no_imread)
    for i in range(len(ds)):
        assert ds[i]["image"].shape == (4, 100, 100)
    assert len(calls) == 2  # image + label opened once each, not per sample
    assert all(isinstance(a, np.memmap) for a in ds._cache.values())
    # Open memory maps are never pickled.
    clone = pickle.loads(pickle.dumps(ds))
    assert clone._cache == {}
    assert clone[0]["window"] == ds[0]["window"]


def test_tiles_compressed_fallback_decodes_once(tmp_path, monkeypatch):
    data = _make_tile_root(tmp_path, size=(150, 150), compression="zlib")
    calls = []
    real_imread = tifffile.imread

    def _spy_imread(*args, **kwargs):
        calls.append(args[0])
        return real_imread(*args, **kwargs)

    monkeypatch.setattr(tifffile, "imread", _spy_imread)
    ds = PotsdamTiles(tmp_path, tile_ids=["2_10"], crop_size=50, mode="sliding")
    image, classes, _ = data["2_10"]
    for i in range(len(ds)):
        item = ds[i]
        y, x = item["window"]
        np.testing.assert_array_equal(
            item["image"].numpy(), image[y : y + 50, x : x + 50].transpose(2, 0, 1)
        )
        np.testing.assert_array_equal(item["mask"].numpy(), classes[y : y + 50, x : x + 50])
    assert len(ds) == 9 and len(calls) == 2  # one decode per file, cached


def test_tiles_rgb_and_noboundary_unknown_and_strict(tmp_path):
    _make_tile_root(tmp_path, bands="rgb", variant="noBoundary", size=(64, 64))
    lbl = tmp_path / "5_Labels_all_noBoundary" / "top_potsdam_2_10_label_noBoundary.tif"
    rgb = tifffile.imread(lbl)
    rgb[:2, :] = 0  # boundary rows
    rgb[10, 10] = (1, 2, 3)  # unknown
    rgb[40, 40:45] = (200, 100, 0)  # unknown
    tifffile.imwrite(lbl, rgb, photometric="rgb")
    ds = PotsdamTiles(
        tmp_path, tile_ids=["2_10"], crop_size=32, bands="rgb", label_variant="noBoundary"
    )
    assert len(ds) == 4 and ds[0]["image"].shape == (3, 32, 32)
    assert ds.unknown_pixels == 1  # running count: window (0, 0) holds one unknown pixel
    ds.unknown_pixels = 0
    masks = [ds[i]["mask"] for i in range(len(ds))]
    assert (masks[0][:2] == 255).all() and masks[0][10, 10] == 255
    assert ds.unknown_pixels == 6
    strict = PotsdamTiles(
        tmp_path,
        tile_ids=["2_10"],
        crop_size=32,
        bands="rgb",
        label_variant="noBoundary",
        strict_colours=True,
    )
    with pytest.raises(DataFormatError, match="label_noBoundary.tif"):
        strict[0]
    assert strict[1]["mask"].shape == (32, 32)  # window without unknown colours is fine


def test_tiles_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="top_potsdam_2_10_RGBIR.tif"):
        PotsdamTiles(tmp_path, tile_ids=["2_10"], crop_size=32)
    _make_tile_root(tmp_path, tile_ids=("2_10", "2_11", "2_12"), size=(64, 64))
    # Default split needs all 24 train tiles: error names the first missing one.
    with pytest.raises(FileNotFoundError, match="top_potsdam_3_10_RGBIR.tif"):
        PotsdamTiles(tmp_path, split="train", crop_size=32)
    # Size mismatch names both files.
    tifffile.imwrite(
        tmp_path / "5_Labels_all" / "top_potsdam_2_11_label.tif",
        np.zeros((64, 60, 3), np.uint8),
        photometric="rgb",
    )
    with pytest.raises(DataFormatError, match=r"top_potsdam_2_11_RGBIR\.tif.*_2_11_label\.tif"):
        PotsdamTiles(tmp_path, tile_ids=["2_11"], crop_size=32)
    # Wrong band count names the file and the expected bands.
    tifffile.imwrite(
        tmp_path / "4_Ortho_RGBIR" / "top_potsdam_2_12_RGBIR.tif",
        np.zeros((64, 64, 3), np.uint8),
        photometric="rgb",
    )
    with pytest.raises(DataFormatError, match=r"top_potsdam_2_12_RGBIR\.tif.*expected 4"):
        PotsdamTiles(tmp_path, tile_ids=["2_12"], crop_size=32)
    # Corrupt tile names the file.
    (tmp_path / "4_Ortho_RGBIR" / "top_potsdam_2_10_RGBIR.tif").write_bytes(b"garbage")
    with pytest.raises(DataFormatError, match=r"top_potsdam_2_10_RGBIR\.tif"):
        PotsdamTiles(tmp_path, tile_ids=["2_10"], crop_size=32)


def test_tiles_dataloader_workers(tmp_path):
    _make_tile_root(tmp_path, size=(128, 128))
    ds = PotsdamTiles(tmp_path, tile_ids=["2_10"], crop_size=64)
    ds[0]  # open memmaps in the main process first; workers must open their own
    loader = DataLoader(ds, batch_size=2, num_workers=2)
    batches = list(loader)
    assert sum(b["image"].shape[0] for b in batches) == 4
    ref = torch.stack([ds[i]["mask"] for i in range(4)])
    np.testing.assert_array_equal(torch.cat([b["mask"] for b in batches]).numpy(), ref.numpy())


def test_module_all_exports():
    for name in potsdam_module.__all__:
        assert hasattr(potsdam_module, name)


def test_tiles_planar_separate_layout(tmp_path):
    data = _make_tile_root(tmp_path, size=(96, 96))
    image = data["2_10"][0]
    path = tmp_path / "4_Ortho_RGBIR" / "top_potsdam_2_10_RGBIR.tif"
    tifffile.imwrite(path, image.transpose(2, 0, 1), photometric="rgb", planarconfig="separate")
    ds = PotsdamTiles(tmp_path, tile_ids=["2_10"], crop_size=48)
    for i in range(len(ds)):
        y, x = ds[i]["window"]
        np.testing.assert_array_equal(
            ds[i]["image"].numpy(), image[y : y + 48, x : x + 48].transpose(2, 0, 1)
        )
