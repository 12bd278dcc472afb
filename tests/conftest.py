"""Shared fixtures: tiny data sets written in the real on-disk formats."""

from __future__ import annotations

import csv
import json
import os
import pickle
import sys
from collections.abc import Iterator
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import yaml
from graph_files import write_graph_root
from PIL import Image

os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("WANDB_SILENT", "true")
if int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1")) > 1:
    # pytest -n N: N workers share the cores; one intra-op thread each (and in the runs they
    # start) instead of N x cores contending threads.  Measured on the 2-core machine (A/B/A/B,
    # golden runs + condensation tests, -n 2, loaded): 79-80 s with the default, 72-74 s with 1
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    import torch

    torch.set_num_threads(1)
REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def _finish_wandb_runs() -> Iterator[None]:
    """A W&B run a test leaves open is finished: Lightning's WandbLogger would reuse it.

    (An open run makes the next in-process W&B logger of the worker write into the old run's
    folder, which is gone with that test's tmp_path: seen as a table step without its run.)
    """
    yield
    wandb = sys.modules.get("wandb")
    if wandb is not None and getattr(wandb, "run", None) is not None:
        wandb.finish()


QUICKSTART = REPO / "experiments" / "configs" / "quickstart.yaml"


def quickstart_tiny(num_train: int) -> list[str]:
    """CLI overrides that make ``quickstart.yaml`` a seconds-long CPU run (batches of 8)."""
    return ["--trainer.accelerator", "cpu", "--data.init_args.num_train", str(num_train),
            "--data.init_args.num_val", "8", "--data.init_args.batch_size", "8",
            "--data.init_args.num_workers", "0", "--data.init_args.knn_bank_size", "8",
            "--trainer.enable_progress_bar", "false", "--model.init_args.encoder", "resnet18",
            "--trainer.logger=lightning.pytorch.loggers.CSVLogger",
            "--trainer.logger.save_dir", "csv"]  # fmt: skip


def write_table(folder: Path, table: dict) -> Path:
    """A table file (``reproduce.py``'s format) written from a dict; returns its path."""
    path = folder / f"{table['name']}.yaml"
    path.write_text(yaml.safe_dump(table))
    return path


def write_cifar10(root: Path, per_batch: int = 8, seed: int = 0) -> Path:
    """Write the official CIFAR-10 python layout with ``per_batch`` images per file."""
    rng = np.random.default_rng(seed)
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    names = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
    for name in names:
        batch = {
            "batch_label": f"{name}",
            "data": rng.integers(0, 256, (per_batch, 3072), dtype=np.uint8),
            "labels": [int(x) for x in rng.integers(0, 10, per_batch)],
            "filenames": [f"img_{i}.png" for i in range(per_batch)],
        }
        with open(folder / name, "wb") as fh:
            pickle.dump(batch, fh, protocol=2)
    meta = {"label_names": [f"class{i}" for i in range(10)], "num_cases_per_batch": per_batch}
    with open(folder / "batches.meta", "wb") as fh:
        pickle.dump(meta, fh, protocol=2)
    return root


@pytest.fixture(scope="session")
def cifar10_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_cifar10(tmp_path_factory.mktemp("cifar"))


def _png(path: Path, array: np.ndarray, palette: list[int] | None = None) -> None:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    image = Image.fromarray(array)
    if palette is not None:
        image = image.convert("P")
        image.putpalette(palette)
        image = Image.fromarray(array, mode="P")
        image.putpalette(palette)
    image.save(path)


def write_cityscapes(root: Path, h: int = 64, w: int = 128, seed: int = 0) -> Path:
    """Official layout: leftImg8bit/{split}/{city}/*_leftImg8bit.png + gtFine labelIds PNGs."""
    rng = np.random.default_rng(seed)
    ids = np.array([0, 7, 8, 11, 26, 33], dtype=np.uint8)
    for split, cities in (("train", ("aachen", "bochum")), ("val", ("frankfurt",))):
        for city in cities:
            for k in range(2):
                stem = f"{city}_{k:06d}_000019"
                _png(root / "leftImg8bit" / split / city / f"{stem}_leftImg8bit.png",
                     rng.integers(0, 256, (h, w, 3), dtype=np.uint8))  # fmt: skip
                _png(root / "gtFine" / split / city / f"{stem}_gtFine_labelIds.png",
                     ids[rng.integers(0, len(ids), (h, w))])  # fmt: skip
    return root


def write_gta5(root: Path, n: int = 4, h: int = 40, w: int = 72, seed: int = 0,
               missing_label: tuple[int, ...] = ()) -> Path:
    """GTA5 release layout: images/NNNNN.png (RGB), labels/NNNNN.png (palette of labelIds)."""
    rng = np.random.default_rng(seed)
    ids = np.array([0, 7, 8, 11, 24, 26, 33], dtype=np.uint8)
    palette = list(rng.integers(0, 256, 768, dtype=np.uint8))
    for k in range(1, n + 1):
        _png(root / "images" / f"{k:05d}.png", rng.integers(0, 256, (h, w, 3), dtype=np.uint8))
        if k not in missing_label:
            _png(root / "labels" / f"{k:05d}.png", ids[rng.integers(0, len(ids), (h, w))],
                 palette=[int(v) for v in palette])  # fmt: skip
    return root


def png16(path: Path, array: np.ndarray) -> None:
    """A 16-bit PNG (greyscale or RGB, as SYNTHIA's labels) written from the PNG specification.

    Pillow cannot write 16-bit multi-channel PNGs; the chunks are simple enough to write here.
    """
    import struct
    import zlib

    array = np.asarray(array, dtype=">u2")
    if array.ndim == 2:
        array = array[..., None]
    h, w, c = array.shape
    colour = {1: 0, 3: 2, 4: 6}[c]

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (struct.pack(">I", len(data)) + kind + data
                + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF))  # fmt: skip

    rows = b"".join(b"\x00" + array[i].tobytes() for i in range(h))
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 16, colour,
                                                                     0, 0, 0))
                     + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b""))  # fmt: skip


def write_synthia(root: Path, n: int = 5, h: int = 38, w: int = 64, seed: int = 0) -> Path:
    """SYNTHIA-RAND-CITYSCAPES layout: RGB/NNNNNNN.png and 16-bit GT/LABELS/NNNNNNN.png."""
    rng = np.random.default_rng(seed)
    for k in range(n):
        _png(root / "RGB" / f"{k:07d}.png", rng.integers(0, 256, (h, w, 3), dtype=np.uint8))
        label = np.zeros((h, w, 3), dtype=np.uint16)
        label[..., 0] = rng.integers(0, 23, (h, w))  # the class id (SYNTHIA 0..22)
        label[..., 1] = rng.integers(0, 3000, (h, w))  # instance ids: not read
        png16(root / "GT" / "LABELS" / f"{k:07d}.png", label)
    return root


def write_ade20k(root: Path, n_train: int = 4, n_val: int = 2, h: int = 40, w: int = 56,
                 seed: int = 0) -> Path:
    """ADEChallengeData2016 layout: images/, annotations/ ('L' PNG 0..150), objectInfo150.txt."""
    rng = np.random.default_rng(seed)
    rows = [f"{i}\t{0.01:.4f}\t{100}\t{10}\tclass{i};alias{i}" for i in range(1, 151)]
    rows[0] = "1\t0.1576\t11664\t1172\twall"
    rows[1] = "2\t0.1072\t6046\t612\tbuilding, edifice"
    root.mkdir(parents=True, exist_ok=True)
    header = "Idx\tRatio\tTrain\tVal\tName\n"
    (root / "objectInfo150.txt").write_text(header + "\n".join(rows) + "\n")
    for split, prefix, n in (("training", "train", n_train), ("validation", "val", n_val)):
        for k in range(1, n + 1):
            stem = f"ADE_{prefix}_{k:08d}"
            _jpg(root / "images" / split / f"{stem}.jpg", rng, (h, w))
            _png(root / "annotations" / split / f"{stem}.png",
                 rng.integers(0, 151, (h, w), dtype=np.uint8))  # fmt: skip
    return root


def write_voc(root: Path, h: int = 48, w: int = 64, seed: int = 0) -> Path:
    """VOC2012 layout: JPEGImages, palette SegmentationClass PNGs, ImageSets/Segmentation."""
    from PIL import Image

    from contraseg.datamodules.datasets.voc import voc_colormap

    rng = np.random.default_rng(seed)
    voc = root / "VOC2012"
    palette = voc_colormap().flatten().tolist()
    splits = {"train": [f"2007_{i:06d}" for i in range(4)], "val": ["2008_000001"]}
    for split, ids in splits.items():
        (voc / "ImageSets" / "Segmentation").mkdir(parents=True, exist_ok=True)
        (voc / "ImageSets" / "Segmentation" / f"{split}.txt").write_text("\n".join(ids) + "\n")
        for image_id in ids:
            (voc / "JPEGImages").mkdir(parents=True, exist_ok=True)
            Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(
                voc / "JPEGImages" / f"{image_id}.jpg"
            )
            label = rng.integers(0, 21, (h, w)).astype(np.uint8)
            label[0, :] = 255
            _png(voc / "SegmentationClass" / f"{image_id}.png", label, palette)
    return voc


def write_potsdam_tiles(root: Path, size: int = 80, seed: int = 0) -> Path:
    """Raw tile layout: 4_Ortho_RGBIR/*_RGBIR.tif + 5_Labels_all_noBoundary/*.tif (colours)."""
    import tifffile

    from contraseg.datamodules.datasets.potsdam import (
        POTSDAM_PALETTE,
        POTSDAM_TEST_TILES,
        POTSDAM_TRAIN_TILES,
    )

    rng = np.random.default_rng(seed)
    colours = np.array([*POTSDAM_PALETTE, (0, 0, 0)], dtype=np.uint8)
    (root / "4_Ortho_RGBIR").mkdir(parents=True)
    (root / "5_Labels_all_noBoundary").mkdir(parents=True)
    for tile in (*POTSDAM_TRAIN_TILES, *POTSDAM_TEST_TILES):
        tifffile.imwrite(root / "4_Ortho_RGBIR" / f"top_potsdam_{tile}_RGBIR.tif",
                         rng.integers(0, 256, (size, size, 4), dtype=np.uint8))  # fmt: skip
        label = colours[rng.integers(0, len(colours), (size, size))]
        tifffile.imwrite(
            root / "5_Labels_all_noBoundary" / f"top_potsdam_{tile}_label_noBoundary.tif", label
        )
    return root


def write_potsdam_crops(root: Path, size: int = 64, seed: int = 0) -> Path:
    """GLCNet crop layout: {train,val}_RGBIR/*.tif (4-band uint8), *_lbl/*.tif (ISPRS colours),
    and the split lists ``train``, ``trainR1``, ``val``, ``valR1500`` (``*_RGBIR.txt`` /
    ``*_lbl.txt``, one ``<name>.tif`` per line) with the official crop names."""
    import tifffile

    from contraseg.datamodules.datasets.potsdam import POTSDAM_PALETTE

    rng = np.random.default_rng(seed)
    colours = np.array([*POTSDAM_PALETTE, (0, 0, 0)], dtype=np.uint8)  # + eroded boundary
    crops = {"train": [f"top_potsdam_2_10_RGBIR__{i}" for i in range(1, 7)],
             "val": [f"top_potsdam_2_13_RGBIR__{i}" for i in range(1, 4)]}  # fmt: skip
    for split, names in crops.items():
        (root / f"{split}_RGBIR").mkdir(parents=True)
        (root / f"{split}_lbl").mkdir(parents=True)
        for name in names:
            tifffile.imwrite(root / f"{split}_RGBIR" / f"{name}.tif",
                             rng.integers(0, 256, (size, size, 4), dtype=np.uint8))  # fmt: skip
            label = colours[rng.integers(0, len(colours), (size // 8, size // 8))]
            tifffile.imwrite(root / f"{split}_lbl" / f"{name}.tif",
                             label.repeat(8, axis=0).repeat(8, axis=1))  # fmt: skip
    lists = {"train": crops["train"], "trainR1": crops["train"][::-1][:4],
             "val": crops["val"], "valR1500": crops["val"][:2]}  # fmt: skip
    for list_name, names in lists.items():
        for kind in ("RGBIR", "lbl"):
            (root / f"{list_name}_{kind}.txt").write_text("".join(f"{n}.tif\n" for n in names))
    return root


FOLDER_CLASSES = ["background", "road", "building"]
FOLDER_PALETTE = [[0, 0, 0], [128, 64, 128], [70, 70, 70]]


def write_segmentation_folder(
    root: Path, colour_masks: bool = False, h: int = 40, w: int = 48, seed: int = 0,
    n_train: int = 6, n_val: int = 2,
) -> Path:
    """Segmentation-folder layout: images/{split}/*.png, masks/{split}/*.png, classes.yaml."""
    import yaml

    rng = np.random.default_rng(seed)
    table = {"classes": FOLDER_CLASSES, "ignore_index": 255}
    if colour_masks:
        table["palette"] = FOLDER_PALETTE
    root.mkdir(parents=True, exist_ok=True)
    (root / "classes.yaml").write_text(yaml.safe_dump(table))
    for split, n in (("train", n_train), ("val", n_val)):
        for i in range(n):
            name = f"{split}_{i:03d}"
            _png(root / "images" / split / f"{name}.png",
                 rng.integers(0, 256, (h, w, 3), dtype=np.uint8))  # fmt: skip
            mask = rng.integers(0, 3, (h, w)).astype(np.uint8)
            mask[0, :5] = 255
            if colour_masks:
                colours = np.array([*FOLDER_PALETTE, [0, 0, 0]], dtype=np.uint8)
                _png(root / "masks" / split / f"{name}.png",
                     colours[np.where(mask == 255, 0, mask)])  # fmt: skip
            else:
                _png(root / "masks" / split / f"{name}.png", mask)
    return root


def write_image_folder(root: Path, classes: int = 3, per_class: int = 6, size: int = 40) -> Path:
    """Class sub-folders of PNG images (``root/<class>/<i>.png``), the ImageNet layout."""
    rng = np.random.default_rng(0)
    for c in range(classes):
        for i in range(per_class):
            _png(root / f"class_{c}" / f"{i:03d}.png",
                 rng.integers(0, 256, (size, size, 3), dtype=np.uint8))  # fmt: skip
    return root


# ------------------------------------------------------------------ medical volumes (NIfTI)
AFFINE = np.diag([-0.8, 0.8, 2.5, 1.0])  # LAS: x flipped, so canonicalisation must flip it back


def _subject(rng: np.random.Generator, shape=(12, 10, 6), values=(0, 1, 2), dtype=np.int16):
    """A random image volume and a label volume with two box structures."""
    image = rng.integers(-300, 400, size=shape).astype(dtype)
    label = np.zeros(shape, dtype=np.uint8 if max(values) < 256 else np.int16)
    label[2:6, 3:7, 1:4] = values[1]
    label[7:10, 2:5, 2:5] = values[2]
    return image, label


def _save(path: Path, array: np.ndarray, affine: np.ndarray = AFFINE) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(array, affine), str(path))
    return path


def write_btcv(root: Path, ids=("0001", "0002", "0005", "0006", "0008")) -> Path:
    rng = np.random.default_rng(0)
    base = root / "RawData" / "Training"
    for i in ids:
        image, label = _subject(rng, values=(0, 8, 5))  # aorta, esophagus
        _save(base / "img" / f"img{i}.nii.gz", image)
        _save(base / "label" / f"label{i}.nii.gz", label)
    return root


def write_mmwhs(root: Path, n: int = 4) -> Path:
    rng = np.random.default_rng(1)
    for k in range(n):
        image, label = _subject(rng, values=(0, 205, 850))
        _save(root / f"ct_train_{1001 + k}_image.nii.gz", image)
        _save(root / f"ct_train_{1001 + k}_label.nii.gz", label.astype(np.int16))
    return root


def write_hippocampus(root: Path, n: int = 4) -> Path:
    rng = np.random.default_rng(2)
    training = []
    for k in range(n):
        image, label = _subject(rng, dtype=np.float32)
        name = f"hippocampus_{k:03d}.nii.gz"
        _save(root / "imagesTr" / name, image)
        _save(root / "labelsTr" / name, label)
        training.append({"image": f"./imagesTr/{name}", "label": f"./labelsTr/{name}"})
    (root / "imagesTr" / "._hippocampus_000.nii.gz").write_bytes(b"\x00\x05\x16\x07")
    (root / "dataset.json").write_text(json.dumps({"name": "Hippocampus", "training": training}))
    return root




# ------------------------------------------------------------------ ISIC (jpg + CSV / png masks)
def _jpg(path: Path, rng: np.random.Generator, size: tuple[int, int] = (30, 40)) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(rng.integers(0, 255, (*size, 3), dtype=np.uint8)).save(path, quality=90)


def write_isic_diagnosis(root: Path, year: int = 2018, n: int = 24, seed: int = 0) -> Path:
    """ISIC 2018 task 3 (HAM10000 metadata with lesion ids) or 2019 layout, one-hot CSV."""
    rng = np.random.default_rng(seed)
    classes = (["MEL", "NV", "BCC", "AKIEC", "BKL", "DF", "VASC"] if year == 2018
               else ["MEL", "NV", "BCC", "AK", "BKL", "DF", "VASC", "SCC", "UNK"])  # fmt: skip
    folder = "ISIC2018_Task3_Training_Input" if year == 2018 else "ISIC_2019_Training_Input"
    rows, meta = [], []
    for i in range(n):
        image = f"ISIC_{24306 + i:07d}"
        _jpg(root / folder / f"{image}.jpg", rng)
        label = [0, 1, 1, 1, 2, 0][i % 6] if i % 7 else len(classes) - 2  # imbalanced, no UNK
        rows.append([image] + ["1.0" if c == label else "0.0" for c in range(len(classes))])
        meta.append((f"HAM_{i // 3:07d}", image))  # three images per lesion
    gt = ("ISIC2018_Task3_Training_GroundTruth.csv" if year == 2018
          else "ISIC_2019_Training_GroundTruth.csv")  # fmt: skip
    with (root / gt).open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["image", *classes])
        w.writerows(rows)
    if year == 2018:
        with (root / "HAM10000_metadata.csv").open("w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["lesion_id", "image_id", "dx", "dx_type", "age", "sex", "localization"])
            w.writerows([[les, img, "nv", "histo", "45.0", "male", "back"] for les, img in meta])
    return root


def write_isic_segmentation(root: Path, n: int = 6, val: int = 2, seed: int = 0) -> Path:
    """ISIC 2018 task 1: jpg inputs and 0/255 ``_segmentation.png`` masks, train + val."""
    rng = np.random.default_rng(seed)
    for split, count in (("Training", n), ("Validation", val)):
        for i in range(count):
            name = f"ISIC_{(0 if split == 'Training' else 9000) + i:07d}"
            _jpg(root / f"ISIC2018_Task1-2_{split}_Input" / f"{name}.jpg", rng, (36, 48))
            mask = np.zeros((36, 48), np.uint8)
            mask[8:28, 10 + i : 30 + i] = 255
            out = root / f"ISIC2018_Task1_{split}_GroundTruth" / f"{name}_segmentation.png"
            out.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(mask).save(out)
    return root


@pytest.fixture(scope="session")
def data_roots(
    seg_roots: dict[str, Path], cifar10_root: Path, tmp_path_factory: pytest.TempPathFactory
) -> dict[str, Path]:
    """Tiny data set in its real on-disk format per data module class (config smoke tests)."""
    return {
        "CityscapesDataModule": seg_roots["cityscapes"],
        "GTA5DataModule": write_gta5(tmp_path_factory.mktemp("gta5")),
        "ADE20KDataModule": write_ade20k(tmp_path_factory.mktemp("ade20k")),
        "SynthiaDataModule": write_synthia(tmp_path_factory.mktemp("synthia")),
        "VOCDataModule": seg_roots["voc"],
        "PotsdamDataModule": seg_roots["potsdam"],
        "PotsdamTilesDataModule": seg_roots["potsdam_tiles"],
        "CIFAR10DataModule": cifar10_root,
        "ImageFolderDataModule": write_image_folder(tmp_path_factory.mktemp("imagenet") / "train"),
        "BTCVDataModule": write_btcv(tmp_path_factory.mktemp("btcv")),
        "ISICDataModule": write_isic_diagnosis(tmp_path_factory.mktemp("isic")),
        "ISICSegmentationDataModule": write_isic_segmentation(tmp_path_factory.mktemp("isic1")),
        "MMWHSDataModule": write_mmwhs(tmp_path_factory.mktemp("mmwhs")),
        "HippocampusDataModule": write_hippocampus(tmp_path_factory.mktemp("hippocampus")),
        "SegmentationFolderDataModule": write_segmentation_folder(
            tmp_path_factory.mktemp("folder") / "my_data"),  # fmt: skip
        **dict.fromkeys(("PlanetoidDataModule", "AmazonDataModule", "CoauthorDataModule"),
                        write_graph_root(tmp_path_factory.mktemp("graphs"))),
    }


@pytest.fixture(scope="session")
def seg_roots(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    base = tmp_path_factory.mktemp("seg")
    return {
        "cityscapes": write_cityscapes(base / "cityscapes"),
        "voc": write_voc(base / "voc"),
        "potsdam_tiles": write_potsdam_tiles(base / "potsdam"),
        "potsdam": write_potsdam_crops(base / "potsdam_crops"),
    }


# The two real Potsdam crops (``../shared/data``, not in a user's clone) are an extra check:
# tests marked ``real_data`` are collected only when the files are there.
REAL_POTSDAM = REPO.parent / "shared" / "data" / "potsdam-glcnet"


def real_potsdam_available() -> bool:
    return (REAL_POTSDAM / "train_RGBIR" / "top_potsdam_2_10_RGBIR__36.tif").is_file()


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if real_potsdam_available():
        return
    real = [item for item in items if item.get_closest_marker("real_data")]
    if real:
        items[:] = [item for item in items if not item.get_closest_marker("real_data")]
        config.hook.pytest_deselected(items=real)


def pytest_report_header(config: pytest.Config) -> str:
    found = "found" if real_potsdam_available() else "absent: real-data checks deselected"
    return f"real Potsdam crops {REAL_POTSDAM}: {found}"
