"""A sweep of faulty inputs over every reader: each fault is a clear error naming the file.

Every case writes a tiny data set in its real on-disk format (``conftest`` writers), breaks
one thing (a missing, truncated or empty file, a size mismatch, a label outside the class
set, the wrong band count, an empty list, leaked validation ids), reads the data the way a
run does (data module setup, then every item of both splits) and asserts that the error
names the broken file (or folder) and is one of the library's documented error types.
"""

from __future__ import annotations

import pickle
import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from conftest import (
    _png,
    write_cifar10,
    write_cityscapes,
    write_potsdam_crops,
    write_potsdam_tiles,
    write_segmentation_folder,
    write_voc,
)

from contraseg.datamodules.datasets.io import DataFormatError

ERRORS = (DataFormatError, FileNotFoundError, ValueError)


def _truncate(path: Path, keep: float = 0.4) -> Path:
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])
    return path


def _read_all(dataset) -> None:  # noqa: ANN001
    for i in range(len(dataset)):
        dataset[i]


def _seg(module: str, **kwargs) -> Callable[[Path], None]:  # noqa: ANN003
    """Load through the data module: setup (leakage) and every raw item of both splits."""

    def load(root: Path) -> None:
        from contraseg import datamodules

        dm = getattr(datamodules, module)(root=str(root), split_dir=str(root / "_splits"),
                                          num_workers=0, **kwargs)  # fmt: skip
        dm.setup("fit")
        for split in ("train", "val"):
            _read_all(dm.build(split))

    return load


# ----------------------------------------------------------------------------- faults
def voc_missing_label(root: Path) -> Path:
    path = root / "SegmentationClass" / "2007_000001.png"
    path.unlink()
    return path


def voc_truncated_label(root: Path) -> Path:
    return _truncate(root / "SegmentationClass" / "2007_000002.png")


def voc_rgb_label(root: Path) -> Path:
    path = root / "SegmentationClass" / "2007_000000.png"
    _png(path, np.zeros((48, 64, 3), dtype=np.uint8))
    return path


def voc_label_out_of_set(root: Path) -> Path:
    from conftest import _png as png

    from contraseg.datamodules.datasets.voc import voc_colormap

    path = root / "SegmentationClass" / "2007_000003.png"
    label = np.full((48, 64), 30, dtype=np.uint8)  # class 30 of 21
    png(path, label, voc_colormap().flatten().tolist())
    return path


def voc_size_mismatch(root: Path) -> Path:
    from PIL import Image

    path = root / "JPEGImages" / "2007_000001.jpg"
    Image.fromarray(np.zeros((20, 20, 3), dtype=np.uint8)).save(path)
    return path


def voc_empty_val(root: Path) -> Path:
    path = root / "ImageSets" / "Segmentation" / "val.txt"
    path.write_text("\n")
    return path


def voc_leak(root: Path) -> Path:
    path = root / "ImageSets" / "Segmentation" / "train.txt"
    path.write_text(path.read_text() + "2008_000001\n")
    return root


def voc_missing_root(root: Path) -> Path:
    shutil.rmtree(root)
    return root


def cs_image_missing(root: Path) -> Path:
    path = root / "gtFine" / "train" / "aachen" / "aachen_000001_000019_gtFine_labelIds.png"
    (root / "leftImg8bit" / "train" / "aachen" / "aachen_000001_000019_leftImg8bit.png").unlink()
    return path


def cs_label_missing(root: Path) -> Path:
    path = root / "gtFine" / "val" / "frankfurt" / "frankfurt_000000_000019_gtFine_labelIds.png"
    path.unlink()
    return path


def cs_truncated_image(root: Path) -> Path:
    folder = root / "leftImg8bit" / "train" / "bochum"
    return _truncate(folder / "bochum_000001_000019_leftImg8bit.png")


def cs_label_out_of_set(root: Path) -> Path:
    path = root / "gtFine" / "train" / "bochum" / "bochum_000000_000019_gtFine_labelIds.png"
    _png(path, np.full((64, 128), 40, dtype=np.uint8))  # labelIds stop at 33
    return path


def cs_size_mismatch(root: Path) -> Path:
    path = root / "gtFine" / "train" / "aachen" / "aachen_000000_000019_gtFine_labelIds.png"
    _png(path, np.zeros((32, 64), dtype=np.uint8))
    return path


def cs_leak(root: Path) -> Path:
    src = root / "leftImg8bit" / "val" / "frankfurt"
    for kind, folder in (("leftImg8bit", src), ("gtFine", root / "gtFine" / "val" / "frankfurt")):
        shutil.copytree(folder, root / kind / "train" / "frankfurt")
    return root


def pc_missing_crop(root: Path) -> Path:
    path = root / "train_RGBIR" / "top_potsdam_2_10_RGBIR__3.tif"
    path.unlink()
    return path


def pc_wrong_bands(root: Path) -> Path:
    import tifffile

    path = root / "val_RGBIR" / "top_potsdam_2_13_RGBIR__2.tif"
    tifffile.imwrite(path, np.zeros((64, 64, 3), dtype=np.uint8))
    return path


def pc_truncated_label(root: Path) -> Path:
    return _truncate(root / "train_lbl" / "top_potsdam_2_10_RGBIR__5.tif")


def pc_size_mismatch(root: Path) -> Path:
    import tifffile

    path = root / "train_lbl" / "top_potsdam_2_10_RGBIR__1.tif"
    tifffile.imwrite(path, np.zeros((32, 32, 3), dtype=np.uint8))
    return path


def pc_unknown_colour(root: Path) -> Path:
    import tifffile

    path = root / "train_lbl" / "top_potsdam_2_10_RGBIR__2.tif"
    tifffile.imwrite(path, np.full((64, 64, 3), 77, dtype=np.uint8))
    return path


def pc_empty_list(root: Path) -> Path:
    path = root / "val_RGBIR.txt"
    path.write_text("")
    return path


def pt_missing_tile(root: Path) -> Path:
    path = next((root / "4_Ortho_RGBIR").glob("top_potsdam_2_10_RGBIR.tif"))
    path.unlink()
    return path


def pt_wrong_bands(root: Path) -> Path:
    import tifffile

    path = root / "4_Ortho_RGBIR" / "top_potsdam_2_11_RGBIR.tif"
    tifffile.imwrite(path, np.zeros((80, 80, 3), dtype=np.uint8))
    return path


def pt_unknown_colour(root: Path) -> Path:
    import tifffile

    from contraseg.datamodules.datasets.potsdam import POTSDAM_TEST_TILES

    tile = POTSDAM_TEST_TILES[0]  # a test tile: every window of it is read
    path = root / "5_Labels_all_noBoundary" / f"top_potsdam_{tile}_label_noBoundary.tif"
    tifffile.imwrite(path, np.full((80, 80, 3), 77, dtype=np.uint8))
    return path


def pt_size_mismatch(root: Path) -> Path:
    import tifffile

    path = root / "5_Labels_all_noBoundary" / "top_potsdam_3_10_label_noBoundary.tif"
    tifffile.imwrite(path, np.zeros((40, 80, 3), dtype=np.uint8))
    return path


def sf_missing_mask(root: Path) -> Path:
    path = root / "masks" / "train" / "train_002.png"
    path.unlink()
    return root / "images" / "train" / "train_002.png"


def sf_out_of_set(root: Path) -> Path:
    path = root / "masks" / "val" / "val_001.png"
    _png(path, np.full((40, 48), 7, dtype=np.uint8))
    return path


def sf_size_mismatch(root: Path) -> Path:
    path = root / "masks" / "train" / "train_004.png"
    _png(path, np.zeros((20, 48), dtype=np.uint8))
    return path


def sf_corrupt_image(root: Path) -> Path:
    return _truncate(root / "images" / "train" / "train_001.png")


def sf_leak(root: Path) -> Path:
    for kind in ("images", "masks"):
        shutil.copy(root / kind / "val" / "val_000.png", root / kind / "train" / "val_000.png")
    return root


def sf_missing_table(root: Path) -> Path:
    path = root / "classes.yaml"
    path.unlink()
    return path


def cifar_truncated(root: Path) -> Path:
    return _truncate(root / "cifar-10-batches-py" / "data_batch_3")


def cifar_label_out_of_set(root: Path) -> Path:
    path = root / "cifar-10-batches-py" / "data_batch_1"
    batch = pickle.loads(path.read_bytes())
    batch["labels"][0] = 12
    path.write_bytes(pickle.dumps(batch, protocol=2))
    return path


def cifar_wrong_shape(root: Path) -> Path:
    path = root / "cifar-10-batches-py" / "test_batch"
    batch = pickle.loads(path.read_bytes())
    batch["data"] = batch["data"][:, :1024]
    path.write_bytes(pickle.dumps(batch, protocol=2))
    return path


def _write_svhn(root: Path, n: int = 4) -> Path:
    import scipy.io

    rng = np.random.default_rng(0)
    root.mkdir(parents=True, exist_ok=True)
    for split in ("train", "test"):
        scipy.io.savemat(root / f"{split}_32x32.mat", {
            "X": rng.integers(0, 256, (32, 32, 3, n), dtype=np.uint8),
            "y": rng.integers(1, 11, (n, 1)).astype(np.uint8)})  # fmt: skip
    return root


def svhn_truncated(root: Path) -> Path:
    return _truncate(root / "train_32x32.mat", 0.6)


def svhn_empty(root: Path) -> Path:
    import scipy.io

    path = root / "test_32x32.mat"
    scipy.io.savemat(path, {"X": np.zeros((32, 32, 3, 0), np.uint8), "y": np.zeros((0, 1))})
    return path


def svhn_label_out_of_set(root: Path) -> Path:
    import scipy.io

    path = root / "train_32x32.mat"
    scipy.io.savemat(path, {"X": np.zeros((32, 32, 3, 2), np.uint8), "y": np.array([[3], [11]])})
    return path


def _write_image_folder(root: Path) -> Path:
    for cls in ("cat", "dog"):
        for i in range(2):
            _png(root / cls / f"{i}.png", np.zeros((8, 8, 3), dtype=np.uint8))
    return root


def folder_corrupt(root: Path) -> Path:
    return _truncate(root / "dog" / "1.png")


def folder_empty_class(root: Path) -> Path:
    shutil.rmtree(root / "cat")
    (root / "cat").mkdir()
    return root / "cat"


def _svhn(root: Path) -> None:
    from contraseg.datamodules.datasets.svhn import SVHNDataset

    for split in ("train", "test"):
        _read_all(SVHNDataset(root, split))  # type: ignore[arg-type]


def _cifar(root: Path) -> None:
    from contraseg.datamodules.datasets.cifar import CIFARDataset

    for train in (True, False):
        _read_all(CIFARDataset(root, train=train))


def _image_folder(root: Path) -> None:
    from contraseg.datamodules.datasets.image_folder import ImageFolderDataset

    _read_all(ImageFolderDataset(root))


VOC = (lambda r: write_voc(r), _seg("VOCDataModule"))
CS = (lambda r: write_cityscapes(r), _seg("CityscapesDataModule"))
PC = (lambda r: write_potsdam_crops(r), _seg("PotsdamDataModule", strict_colours=True))
PT = (lambda r: write_potsdam_tiles(r),
      _seg("PotsdamTilesDataModule", crop_size=40, samples_per_epoch=4, strict_colours=True))
SF = (lambda r: write_segmentation_folder(r / "data"), _seg("SegmentationFolderDataModule"))
CASES = {
    "voc/missing_root": (*VOC, voc_missing_root),
    "voc/missing_label": (*VOC, voc_missing_label),
    "voc/truncated_label": (*VOC, voc_truncated_label),
    "voc/rgb_label": (*VOC, voc_rgb_label),
    "voc/label_out_of_set": (*VOC, voc_label_out_of_set),
    "voc/size_mismatch": (*VOC, voc_size_mismatch),
    "voc/empty_val_list": (*VOC, voc_empty_val),
    "voc/val_id_in_train_list": (*VOC, voc_leak),
    "cityscapes/image_missing": (*CS, cs_image_missing),
    "cityscapes/label_missing": (*CS, cs_label_missing),
    "cityscapes/truncated_image": (*CS, cs_truncated_image),
    "cityscapes/label_out_of_set": (*CS, cs_label_out_of_set),
    "cityscapes/size_mismatch": (*CS, cs_size_mismatch),
    "cityscapes/val_city_in_train": (*CS, cs_leak),
    "potsdam/missing_crop": (*PC, pc_missing_crop),
    "potsdam/wrong_bands": (*PC, pc_wrong_bands),
    "potsdam/truncated_label": (*PC, pc_truncated_label),
    "potsdam/size_mismatch": (*PC, pc_size_mismatch),
    "potsdam/unknown_colour_strict": (*PC, pc_unknown_colour),
    "potsdam/empty_list": (*PC, pc_empty_list),
    "potsdam_tiles/missing_tile": (*PT, pt_missing_tile),
    "potsdam_tiles/wrong_bands": (*PT, pt_wrong_bands),
    "potsdam_tiles/unknown_colour_strict": (*PT, pt_unknown_colour),
    "potsdam_tiles/size_mismatch": (*PT, pt_size_mismatch),
    "folder/missing_mask": (*SF, sf_missing_mask),
    "folder/label_out_of_set": (*SF, sf_out_of_set),
    "folder/size_mismatch": (*SF, sf_size_mismatch),
    "folder/corrupt_image": (*SF, sf_corrupt_image),
    "folder/val_image_in_train": (*SF, sf_leak),
    "folder/missing_class_table": (*SF, sf_missing_table),
    "cifar/truncated_batch": (write_cifar10, _cifar, cifar_truncated),
    "cifar/label_out_of_set": (write_cifar10, _cifar, cifar_label_out_of_set),
    "cifar/wrong_shape": (write_cifar10, _cifar, cifar_wrong_shape),
    "svhn/truncated_mat": (_write_svhn, _svhn, svhn_truncated),
    "svhn/empty_split": (_write_svhn, _svhn, svhn_empty),
    "svhn/label_out_of_set": (_write_svhn, _svhn, svhn_label_out_of_set),
    "image_folder/corrupt_image": (_write_image_folder, _image_folder, folder_corrupt),
    "image_folder/empty_class": (_write_image_folder, _image_folder, folder_empty_class),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_fault_is_a_clear_error_naming_the_file(case: str, tmp_path: Path) -> None:
    write, load, fault = CASES[case]
    root = write(tmp_path / "ds")
    load(root)  # the intact data set reads
    named = fault(root)
    with pytest.raises(ERRORS) as info:
        load(root)
    message = str(info.value)
    assert str(named) in message or named.name in message, f"{case}: {message}"
