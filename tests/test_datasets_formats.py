"""Tests for the on-disk dataset readers, using tiny fixtures written in the official formats."""

from __future__ import annotations

import os
import pickle
import re
from pathlib import Path

import numpy as np
import pytest
import scipy.io
import torch
from PIL import Image
from torch.utils.data import default_collate
from torchvision import tv_tensors

from contraseg.datamodules.datasets.cifar import CIFARDataset
from contraseg.datamodules.datasets.image_folder import ImageFolderDataset
from contraseg.datamodules.datasets.io import (
    DataFormatError,
    read_image_rgb,
    read_jpeg_bytes,
    require_dir,
    require_file,
)
from contraseg.datamodules.datasets.svhn import SVHNDataset

CIFAR10_NAMES = [
    "airplane", "automobile", "bird", "cat", "deer",
    "dog", "frog", "horse", "ship", "truck",
]  # fmt: skip


def _dump(path: Path, obj: object) -> None:
    with path.open("wb") as f:
        pickle.dump(obj, f, protocol=2)


def _hwc_to_rows(images: np.ndarray) -> np.ndarray:
    """(N, 32, 32, 3) HWC -> official (N, 3072) rows: R plane, G plane, B plane."""
    return np.ascontiguousarray(images.transpose(0, 3, 1, 2).reshape(len(images), 3072))


def _random_images(rng: np.random.Generator, n: int) -> np.ndarray:
    return rng.integers(0, 256, size=(n, 32, 32, 3), dtype=np.uint8)


def make_cifar10(root: Path, n: int = 3, seed: int = 0) -> dict[str, tuple[np.ndarray, list[int]]]:
    """Writes root/cifar-10-batches-py in the official layout; returns {file: (hwc, labels)}."""
    rng = np.random.default_rng(seed)
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    written = {}
    for i, name in enumerate([f"data_batch_{k}" for k in range(1, 6)] + ["test_batch"]):
        images = _random_images(rng, n)
        labels = [int(v) for v in rng.integers(0, 10, size=n)]
        _dump(
            folder / name,
            {
                "batch_label": f"batch {i + 1} of 5",
                "labels": labels,
                "data": _hwc_to_rows(images),
                "filenames": [f"img_{i}_{j}.png" for j in range(n)],
            },
        )
        written[name] = (images, labels)
    _dump(
        folder / "batches.meta",
        {"num_cases_per_batch": n, "label_names": CIFAR10_NAMES, "num_vis": 3072},
    )
    return written


def make_cifar100(root: Path, n: int = 4, seed: int = 1) -> dict[str, tuple[np.ndarray, ...]]:
    rng = np.random.default_rng(seed)
    folder = root / "cifar-100-python"
    folder.mkdir(parents=True)
    written = {}
    for split in ("train", "test"):
        images = _random_images(rng, n)
        fine = [int(v) for v in rng.integers(0, 100, size=n)]
        coarse = [int(v) for v in rng.integers(0, 20, size=n)]
        _dump(
            folder / split,
            {
                "filenames": [f"{split}_{j}.png" for j in range(n)],
                "batch_label": f"{split} batch 1 of 1",
                "fine_labels": fine,
                "coarse_labels": coarse,
                "data": _hwc_to_rows(images),
            },
        )
        written[split] = (images, fine, coarse)
    _dump(
        folder / "meta",
        {
            "fine_label_names": [f"fine_{i:02d}" for i in range(100)],
            "coarse_label_names": [f"coarse_{i:02d}" for i in range(20)],
        },
    )
    return written


# --------------------------------------------------------------------------------------- CIFAR


def test_cifar10_train_roundtrip(tmp_path: Path) -> None:
    written = make_cifar10(tmp_path, n=3)
    ds = CIFARDataset(tmp_path, train=True)

    assert len(ds) == 15
    assert ds.classes == CIFAR10_NAMES
    assert ds.num_classes == 10
    assert ds.images.shape == (15, 32, 32, 3) and ds.images.dtype == np.uint8
    assert ds.targets.dtype == np.int64
    expected_images = np.concatenate([written[f"data_batch_{k}"][0] for k in range(1, 6)])
    expected_labels = sum((written[f"data_batch_{k}"][1] for k in range(1, 6)), [])
    np.testing.assert_array_equal(ds.images, expected_images)
    assert ds.targets.tolist() == expected_labels

    sample = ds[7]
    assert set(sample) == {"image", "label"}
    assert isinstance(sample["image"], tv_tensors.Image)
    assert sample["image"].dtype == torch.uint8 and sample["image"].shape == (3, 32, 32)
    assert isinstance(sample["label"], int) and sample["label"] == expected_labels[7]
    np.testing.assert_array_equal(sample["image"].numpy(), expected_images[7].transpose(2, 0, 1))


def test_cifar10_known_pixel_from_raw_row_layout(tmp_path: Path) -> None:
    make_cifar10(tmp_path, n=2)
    folder = tmp_path / "cifar-10-batches-py"
    data = np.zeros((2, 3072), dtype=np.uint8)
    # Image 1, pixel (row 5, col 7): R plane at offset 0, G at 1024, B at 2048, row-major 32x32.
    data[1, 0 * 1024 + 5 * 32 + 7] = 11
    data[1, 1 * 1024 + 5 * 32 + 7] = 22
    data[1, 2 * 1024 + 5 * 32 + 7] = 33
    data[0, 31 * 32 + 0] = 250  # image 0, R at bottom-left (row 31, col 0)
    _dump(folder / "test_batch", {"batch_label": "testing", "labels": [4, 9], "data": data})

    ds = CIFARDataset(tmp_path, train=False)
    img1 = ds[1]["image"]
    assert img1[:, 5, 7].tolist() == [11, 22, 33]
    assert int(img1.sum()) == 11 + 22 + 33
    assert ds.images[1, 5, 7].tolist() == [11, 22, 33]
    assert ds[0]["image"][0, 31, 0].item() == 250
    assert ds[0]["image"][0, 0, 31].item() == 0
    assert [ds[0]["label"], ds[1]["label"]] == [4, 9]


def test_cifar10_test_split_and_root_pointing_at_batch_folder(tmp_path: Path) -> None:
    written = make_cifar10(tmp_path, n=2)
    for root in (tmp_path, tmp_path / "cifar-10-batches-py", str(tmp_path)):
        ds = CIFARDataset(root, train=False)
        assert len(ds) == 2
        np.testing.assert_array_equal(ds.images, written["test_batch"][0])
        assert ds.targets.tolist() == written["test_batch"][1]
        assert ds.root == tmp_path / "cifar-10-batches-py"


def test_cifar10_accepts_bytes_keys(tmp_path: Path) -> None:
    # Python 2 pickles loaded with encoding="bytes" style: keys and names are bytes.
    written = make_cifar10(tmp_path, n=2)
    folder = tmp_path / "cifar-10-batches-py"
    images, labels = written["test_batch"]
    _dump(folder / "test_batch", {b"labels": labels, b"data": _hwc_to_rows(images)})
    _dump(folder / "batches.meta", {b"label_names": [n.encode() for n in CIFAR10_NAMES]})
    ds = CIFARDataset(tmp_path, train=False)
    assert ds.classes == CIFAR10_NAMES
    np.testing.assert_array_equal(ds.images, images)


def test_cifar100_fine_and_coarse(tmp_path: Path) -> None:
    written = make_cifar100(tmp_path, n=4)
    images, fine, coarse = written["train"]

    ds = CIFARDataset(tmp_path, train=True, variant="cifar100")
    assert ds.num_classes == 100 and ds.classes[3] == "fine_03"
    assert ds.targets.tolist() == fine
    np.testing.assert_array_equal(ds.images, images)
    assert ds[2]["label"] == fine[2]

    ds_coarse = CIFARDataset(tmp_path / "cifar-100-python", variant="cifar100", label_type="coarse")
    assert ds_coarse.num_classes == 20 and ds_coarse.classes[19] == "coarse_19"
    assert ds_coarse.targets.tolist() == coarse

    test = CIFARDataset(tmp_path, train=False, variant="cifar100")
    np.testing.assert_array_equal(test.images, written["test"][0])


def test_cifar_collates_into_batch(tmp_path: Path) -> None:
    make_cifar10(tmp_path, n=2)
    ds = CIFARDataset(tmp_path, train=False)
    batch = default_collate([ds[0], ds[1]])
    assert batch["image"].shape == (2, 3, 32, 32) and batch["image"].dtype == torch.uint8
    assert batch["label"].tolist() == ds.targets.tolist()


def test_cifar_invalid_arguments(tmp_path: Path) -> None:
    make_cifar10(tmp_path)
    with pytest.raises(ValueError, match="variant"):
        CIFARDataset(tmp_path, variant="cifar1000")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="coarse"):
        CIFARDataset(tmp_path, variant="cifar10", label_type="coarse")


def test_cifar_missing_root(tmp_path: Path) -> None:
    missing = tmp_path / "nope"
    with pytest.raises(FileNotFoundError, match=re.escape(str(missing))):
        CIFARDataset(missing)


def test_cifar_root_without_dataset_folder(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="cifar-10-batches-py"):
        CIFARDataset(tmp_path)
    with pytest.raises(FileNotFoundError, match="cifar-100-python"):
        CIFARDataset(tmp_path, variant="cifar100")


def test_cifar_missing_batch_file(tmp_path: Path) -> None:
    make_cifar10(tmp_path)
    (tmp_path / "cifar-10-batches-py" / "data_batch_3").unlink()
    with pytest.raises(
        FileNotFoundError, match=r"CIFAR-10 train batch not found: .*data_batch_3 \(expected"
    ):
        CIFARDataset(tmp_path, train=True)
    assert len(CIFARDataset(tmp_path, train=False)) == 3  # test split is unaffected


def test_cifar_missing_meta_file(tmp_path: Path) -> None:
    make_cifar100(tmp_path)
    (tmp_path / "cifar-100-python" / "meta").unlink()
    with pytest.raises(FileNotFoundError, match=r"meta file not found: .*cifar-100-python.meta"):
        CIFARDataset(tmp_path, variant="cifar100")


def test_cifar_missing_cifar100_split(tmp_path: Path) -> None:
    make_cifar100(tmp_path)
    (tmp_path / "cifar-100-python" / "test").unlink()
    with pytest.raises(FileNotFoundError, match=r"CIFAR-100 test file not found: .*test"):
        CIFARDataset(tmp_path, train=False, variant="cifar100")


def test_cifar_corrupt_pickle(tmp_path: Path) -> None:
    make_cifar10(tmp_path)
    (tmp_path / "cifar-10-batches-py" / "data_batch_2").write_bytes(b"\x00\x01garbage\xff" * 8)
    with pytest.raises(DataFormatError, match=r"data_batch_2"):
        CIFARDataset(tmp_path)


def test_cifar_truncated_pickle(tmp_path: Path) -> None:
    make_cifar10(tmp_path)
    path = tmp_path / "cifar-10-batches-py" / "test_batch"
    path.write_bytes(path.read_bytes()[:100])
    with pytest.raises(DataFormatError, match=r"Could not unpickle .*test_batch"):
        CIFARDataset(tmp_path, train=False)


def test_cifar_pickle_with_disallowed_global_is_rejected(tmp_path: Path) -> None:
    class Evil:
        def __reduce__(self):
            return (os.getcwd, ())

    make_cifar10(tmp_path)
    path = tmp_path / "cifar-10-batches-py" / "test_batch"
    _dump(path, {"labels": [0], "data": np.zeros((1, 3072), np.uint8), "x": Evil()})
    with pytest.raises(DataFormatError, match=r"test_batch.*not allowed"):
        CIFARDataset(tmp_path, train=False)


def test_cifar_pickle_not_a_dict(tmp_path: Path) -> None:
    make_cifar10(tmp_path)
    _dump(tmp_path / "cifar-10-batches-py" / "test_batch", [1, 2, 3])
    with pytest.raises(DataFormatError, match=r"test_batch does not contain a dict"):
        CIFARDataset(tmp_path, train=False)


def test_cifar_wrong_data_shape(tmp_path: Path) -> None:
    make_cifar10(tmp_path)
    _dump(
        tmp_path / "cifar-10-batches-py" / "data_batch_1",
        {"labels": [0, 1], "data": np.zeros((2, 100), dtype=np.uint8)},
    )
    with pytest.raises(DataFormatError, match=r"data_batch_1.*\(2, 100\).*\(N, 3072\)"):
        CIFARDataset(tmp_path)


def test_cifar_wrong_data_dtype(tmp_path: Path) -> None:
    make_cifar10(tmp_path)
    _dump(
        tmp_path / "cifar-10-batches-py" / "test_batch",
        {"labels": [0], "data": np.zeros((1, 3072), dtype=np.float32)},
    )
    with pytest.raises(DataFormatError, match=r"test_batch.*float32.*uint8"):
        CIFARDataset(tmp_path, train=False)


def test_cifar_labels_data_length_mismatch(tmp_path: Path) -> None:
    make_cifar10(tmp_path)
    _dump(
        tmp_path / "cifar-10-batches-py" / "data_batch_4",
        {"labels": [0, 1, 2], "data": np.zeros((2, 3072), dtype=np.uint8)},
    )
    with pytest.raises(DataFormatError, match=r"data_batch_4.*3 entries.*2 rows"):
        CIFARDataset(tmp_path)


def test_cifar100_labels_data_length_mismatch(tmp_path: Path) -> None:
    make_cifar100(tmp_path, n=4)
    path = tmp_path / "cifar-100-python" / "train"
    with path.open("rb") as f:
        batch = pickle.load(f)
    batch["coarse_labels"] = batch["coarse_labels"][:-1]
    _dump(path, batch)
    assert len(CIFARDataset(tmp_path, variant="cifar100")) == 4  # fine labels still fine
    with pytest.raises(DataFormatError, match=r"cifar-100-python.train.*'coarse_labels'"):
        CIFARDataset(tmp_path, variant="cifar100", label_type="coarse")


def test_cifar_label_out_of_range(tmp_path: Path) -> None:
    make_cifar10(tmp_path)
    _dump(
        tmp_path / "cifar-10-batches-py" / "test_batch",
        {"labels": [0, 10], "data": np.zeros((2, 3072), dtype=np.uint8)},
    )
    with pytest.raises(DataFormatError, match=r"test_batch.*\[0, 10\)"):
        CIFARDataset(tmp_path, train=False)


def test_cifar_missing_key(tmp_path: Path) -> None:
    make_cifar10(tmp_path)
    _dump(tmp_path / "cifar-10-batches-py" / "test_batch", {"data": np.zeros((1, 3072), np.uint8)})
    with pytest.raises(DataFormatError, match=r"test_batch is missing key 'labels'"):
        CIFARDataset(tmp_path, train=False)


def test_cifar_bad_meta(tmp_path: Path) -> None:
    make_cifar10(tmp_path)
    _dump(tmp_path / "cifar-10-batches-py" / "batches.meta", {"label_names": ["a", "b"]})
    with pytest.raises(DataFormatError, match=r"batches.meta.*2 names, expected 10"):
        CIFARDataset(tmp_path)


# ---------------------------------------------------------------------------------------- SVHN


def make_svhn(root: Path, split: str, n: int = 5, seed: int = 2) -> tuple[np.ndarray, np.ndarray]:
    """Writes root/{split}_32x32.mat like the official files; returns (X, y) as written."""
    rng = np.random.default_rng(seed)
    x = rng.integers(0, 256, size=(32, 32, 3, n), dtype=np.uint8)
    y = rng.integers(1, 11, size=(n, 1)).astype(np.uint8)
    y[0, 0] = 10  # always include a "10" (digit 0)
    root.mkdir(parents=True, exist_ok=True)
    scipy.io.savemat(root / f"{split}_32x32.mat", {"X": x, "y": y})
    return x, y


def test_svhn_roundtrip_and_label_mapping(tmp_path: Path) -> None:
    x, y = make_svhn(tmp_path, "train", n=5)
    x[4, 9, 1, 2] = 123  # known pixel: image 2, row 4, col 9, channel G
    scipy.io.savemat(tmp_path / "train_32x32.mat", {"X": x, "y": y})

    ds = SVHNDataset(tmp_path, split="train")
    assert len(ds) == 5
    assert ds.classes == [str(d) for d in range(10)] and ds.num_classes == 10
    assert ds.images.shape == (5, 32, 32, 3) and ds.images.dtype == np.uint8
    assert ds.targets.dtype == np.int64
    expected = y[:, 0].astype(np.int64) % 10
    assert ds.targets.tolist() == expected.tolist()
    assert ds.targets[0] == 0  # 10 -> 0
    assert ds.targets.min() >= 0 and ds.targets.max() <= 9

    sample = ds[2]
    assert isinstance(sample["image"], tv_tensors.Image)
    assert sample["image"].dtype == torch.uint8 and sample["image"].shape == (3, 32, 32)
    assert sample["image"][1, 4, 9].item() == 123
    np.testing.assert_array_equal(sample["image"].numpy(), x[:, :, :, 2].transpose(2, 0, 1))
    assert sample["label"] == int(expected[2])


def test_svhn_splits_and_single_image(tmp_path: Path) -> None:
    make_svhn(tmp_path, "test", n=3)
    x, _ = make_svhn(tmp_path, "extra", n=1)  # MATLAB drops the trailing singleton dim
    assert len(SVHNDataset(tmp_path, split="test")) == 3
    extra = SVHNDataset(str(tmp_path), split="extra")
    assert len(extra) == 1 and extra[0]["label"] == 0
    np.testing.assert_array_equal(extra.images[0], x[..., 0])
    with pytest.raises(ValueError, match="split"):
        SVHNDataset(tmp_path, split="val")  # type: ignore[arg-type]


def test_svhn_missing_root(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"SVHN root directory not found: .*missing"):
        SVHNDataset(tmp_path / "missing")


def test_svhn_missing_split_file(tmp_path: Path) -> None:
    make_svhn(tmp_path, "train")
    with pytest.raises(FileNotFoundError, match=r"SVHN test file not found: .*test_32x32\.mat"):
        SVHNDataset(tmp_path, split="test")


def test_svhn_corrupt_file(tmp_path: Path) -> None:
    (tmp_path / "train_32x32.mat").write_bytes(b"not a mat file at all" * 20)
    with pytest.raises(DataFormatError, match=r"train_32x32\.mat"):
        SVHNDataset(tmp_path)


def test_svhn_wrong_x_shape(tmp_path: Path) -> None:
    x = np.zeros((28, 28, 3, 2), dtype=np.uint8)
    scipy.io.savemat(tmp_path / "train_32x32.mat", {"X": x, "y": np.ones((2, 1), np.uint8)})
    with pytest.raises(
        DataFormatError, match=r"train_32x32\.mat.*\(28, 28, 3, 2\).*\(32, 32, 3, N\)"
    ):
        SVHNDataset(tmp_path)


def test_svhn_wrong_x_dtype(tmp_path: Path) -> None:
    x = np.zeros((32, 32, 3, 2), dtype=np.float64)
    scipy.io.savemat(tmp_path / "train_32x32.mat", {"X": x, "y": np.ones((2, 1), np.uint8)})
    with pytest.raises(DataFormatError, match=r"train_32x32\.mat.*float64.*uint8"):
        SVHNDataset(tmp_path)


@pytest.mark.parametrize("bad", [0, 11])
def test_svhn_labels_out_of_range(tmp_path: Path, bad: int) -> None:
    x, y = make_svhn(tmp_path, "test", n=4)
    y[2, 0] = bad
    scipy.io.savemat(tmp_path / "test_32x32.mat", {"X": x, "y": y})
    with pytest.raises(DataFormatError, match=rf"test_32x32\.mat.*1\.\.10.*\[{bad}\]"):
        SVHNDataset(tmp_path, split="test")


def test_svhn_label_count_mismatch(tmp_path: Path) -> None:
    x = np.zeros((32, 32, 3, 3), dtype=np.uint8)
    scipy.io.savemat(tmp_path / "train_32x32.mat", {"X": x, "y": np.ones((2, 1), np.uint8)})
    with pytest.raises(DataFormatError, match=r"train_32x32\.mat.*2 labels.*3 images"):
        SVHNDataset(tmp_path)


def test_svhn_missing_variable(tmp_path: Path) -> None:
    scipy.io.savemat(tmp_path / "train_32x32.mat", {"X": np.zeros((32, 32, 3, 2), np.uint8)})
    with pytest.raises(DataFormatError, match=r"train_32x32\.mat is missing variable 'y'"):
        SVHNDataset(tmp_path)


# -------------------------------------------------------------------------------- image folder


def _save(path: Path, array: np.ndarray, mode: str | None = None, **kwargs: object) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array, mode=mode).save(path, **kwargs)


def _rgb(rng: np.random.Generator, h: int = 6, w: int = 5) -> np.ndarray:
    return rng.integers(0, 256, size=(h, w, 3), dtype=np.uint8)


def test_image_folder_labeled_roundtrip(tmp_path: Path) -> None:
    rng = np.random.default_rng(3)
    dog_a, dog_b, cat_a = _rgb(rng), _rgb(rng, 4, 7), _rgb(rng)
    dog_a[2, 3] = [1, 2, 3]
    _save(tmp_path / "dog" / "b.png", dog_b)
    _save(tmp_path / "dog" / "a.png", dog_a)
    _save(tmp_path / "cat" / "nested" / "x.PNG", cat_a)  # nested + upper-case extension
    (tmp_path / "cat" / "notes.txt").write_text("not an image")
    (tmp_path / "cat" / ".hidden.png").write_bytes(b"ignored")
    (tmp_path / ".cache").mkdir()

    ds = ImageFolderDataset(tmp_path)
    assert ds.labeled is True
    assert ds.classes == ["cat", "dog"] and ds.num_classes == 2
    assert ds.class_to_idx == {"cat": 0, "dog": 1}
    assert [p.relative_to(tmp_path).as_posix() for p in ds.paths] == [
        "cat/nested/x.PNG",
        "dog/a.png",
        "dog/b.png",
    ]
    assert ds.targets.dtype == np.int64 and ds.targets.tolist() == [0, 1, 1]

    sample = ds[1]
    assert isinstance(sample["image"], tv_tensors.Image)
    assert sample["image"].dtype == torch.uint8 and sample["image"].shape == (3, 6, 5)
    assert sample["image"][:, 2, 3].tolist() == [1, 2, 3]
    np.testing.assert_array_equal(sample["image"].numpy(), dog_a.transpose(2, 0, 1))
    assert sample["label"] == 1
    assert ds[2]["image"].shape == (3, 4, 7)
    np.testing.assert_array_equal(ds[0]["image"].numpy(), cat_a.transpose(2, 0, 1))

    assert ImageFolderDataset(tmp_path, labeled=True).classes == ["cat", "dog"]
    unlabeled = ImageFolderDataset(tmp_path, labeled=False)
    assert unlabeled.labeled is False and unlabeled.classes == [] and unlabeled.num_classes == 0
    assert len(unlabeled) == 3 and unlabeled.targets.tolist() == [-1, -1, -1]


def test_image_folder_flat_unlabeled_converts_modes_to_rgb(tmp_path: Path) -> None:
    rng = np.random.default_rng(4)
    rgb = _rgb(rng)
    gray = rng.integers(0, 256, size=(6, 5), dtype=np.uint8)
    rgba = rng.integers(0, 256, size=(6, 5, 4), dtype=np.uint8)
    _save(tmp_path / "c_rgb.png", rgb)
    _save(tmp_path / "a_gray.png", gray)
    _save(tmp_path / "b_rgba.png", rgba)
    _save(tmp_path / "d_photo.jpg", _rgb(rng, 16, 16), quality=90)
    _save(tmp_path / "e_bitmap.bmp", rgb)
    (tmp_path / "empty_subdir").mkdir()  # no images: does not make the layout mixed

    ds = ImageFolderDataset(tmp_path)
    assert ds.labeled is False and ds.classes == [] and ds.num_classes == 0
    assert [p.name for p in ds.paths] == [
        "a_gray.png", "b_rgba.png", "c_rgb.png", "d_photo.jpg", "e_bitmap.bmp",
    ]  # fmt: skip
    assert all(ds[i]["label"] == -1 for i in range(len(ds)))
    images = [ds[i]["image"] for i in range(len(ds))]
    assert all(im.dtype == torch.uint8 and im.shape[0] == 3 for im in images)
    np.testing.assert_array_equal(images[0].numpy(), np.stack([gray] * 3))
    np.testing.assert_array_equal(images[1].numpy(), rgba[..., :3].transpose(2, 0, 1))
    np.testing.assert_array_equal(images[2].numpy(), rgb.transpose(2, 0, 1))
    assert images[3].shape == (3, 16, 16)  # JPEG is lossy: only check decoding
    np.testing.assert_array_equal(images[4].numpy(), rgb.transpose(2, 0, 1))

    only_png = ImageFolderDataset(tmp_path, extensions=["png"])
    assert len(only_png) == 3


def test_image_folder_labeled_true_on_flat_raises(tmp_path: Path) -> None:
    _save(tmp_path / "a.png", np.zeros((2, 2, 3), np.uint8))
    with pytest.raises(DataFormatError, match=rf"labeled=True.*{re.escape(str(tmp_path))}.*flat"):
        ImageFolderDataset(tmp_path, labeled=True)


def test_image_folder_mixed_layout_raises(tmp_path: Path) -> None:
    _save(tmp_path / "loose.png", np.zeros((2, 2, 3), np.uint8))
    _save(tmp_path / "cls" / "a.png", np.zeros((2, 2, 3), np.uint8))
    with pytest.raises(DataFormatError, match=r"Mixed layout.*loose\.png.*cls/"):
        ImageFolderDataset(tmp_path)


def test_image_folder_empty_raises(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=rf"No images found .*{re.escape(str(tmp_path))}"):
        ImageFolderDataset(tmp_path)
    (tmp_path / "readme.txt").write_text("hi")
    (tmp_path / "cls").mkdir()
    with pytest.raises(FileNotFoundError, match=r"No images found"):
        ImageFolderDataset(tmp_path)


def test_image_folder_empty_class_dir_raises(tmp_path: Path) -> None:
    _save(tmp_path / "cat" / "a.png", np.zeros((2, 2, 3), np.uint8))
    (tmp_path / "dog").mkdir()
    with pytest.raises(DataFormatError, match=r"without images.*dog"):
        ImageFolderDataset(tmp_path)


def test_image_folder_missing_root(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"Image folder root not found: .*absent"):
        ImageFolderDataset(tmp_path / "absent")
    (tmp_path / "file.png").write_bytes(b"x")
    with pytest.raises(FileNotFoundError, match="not a directory"):
        ImageFolderDataset(tmp_path / "file.png")


def test_image_folder_corrupt_image_raises_on_load(tmp_path: Path) -> None:
    rng = np.random.default_rng(5)
    _save(tmp_path / "cls" / "good.png", _rgb(rng))
    (tmp_path / "cls" / "garbage.jpg").write_bytes(b"\xff\xd8\xff definitely not a jpeg")
    good_png = tmp_path / "cls" / "good.png"
    (tmp_path / "cls" / "truncated.png").write_bytes(good_png.read_bytes()[:60])

    ds = ImageFolderDataset(tmp_path)  # listing does not decode
    assert [p.name for p in ds.paths] == ["garbage.jpg", "good.png", "truncated.png"]
    with pytest.raises(DataFormatError, match=r"garbage\.jpg.*expected a readable image"):
        ds[0]
    assert ds[1]["image"].shape == (3, 6, 5)
    with pytest.raises(DataFormatError, match=r"truncated\.png"):
        ds[2]


# ------------------------------------------------------------------------------------ io helpers


def test_read_image_rgb(tmp_path: Path) -> None:
    arr = np.arange(2 * 3 * 3, dtype=np.uint8).reshape(2, 3, 3)
    _save(tmp_path / "img.png", arr)
    out = read_image_rgb(tmp_path / "img.png")
    assert out.dtype == torch.uint8 and out.shape == (3, 2, 3) and out.is_contiguous()
    np.testing.assert_array_equal(out.numpy(), arr.transpose(2, 0, 1))

    (tmp_path / "bad.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 10)
    with pytest.raises(DataFormatError, match=r"bad\.png") as info:
        read_image_rgb(tmp_path / "bad.png")
    assert isinstance(info.value, ValueError)
    with pytest.raises(FileNotFoundError, match=r"missing\.png"):
        read_image_rgb(tmp_path / "missing.png")


def test_read_image_rgb_decodes_jpeg_like_pil(tmp_path: Path) -> None:
    """JPEGs take torchvision's decoder: PIL's pixels; grey JPEGs become RGB; damage is named."""
    rng = np.random.default_rng(0)
    y, x = np.mgrid[0:40, 0:56]
    arr = np.stack([x * 4, y * 6, (x + y) * 2], -1) + rng.integers(0, 20, (40, 56, 3))
    Image.fromarray(arr.clip(0, 255).astype(np.uint8)).save(tmp_path / "a.jpg", quality=90)
    Image.fromarray(arr[..., 0].clip(0, 255).astype(np.uint8)).save(tmp_path / "g.jpeg")
    for name in ("a.jpg", "g.jpeg"):
        with Image.open(tmp_path / name) as img:
            ref = torch.from_numpy(np.asarray(img.convert("RGB")).copy()).permute(2, 0, 1)
        out = read_image_rgb(tmp_path / name)
        assert out.shape == ref.shape and out.dtype == torch.uint8
        assert (out.int() - ref.int()).abs().max() <= 1, name  # same libjpeg-turbo decode
    data = (tmp_path / "a.jpg").read_bytes()
    (tmp_path / "cut.jpg").write_bytes(data[: len(data) // 2])
    with pytest.raises(DataFormatError, match=r"cut\.jpg"):
        read_image_rgb(tmp_path / "cut.jpg")
    _save(tmp_path / "really_png.jpg", np.zeros((2, 3, 3), np.uint8), format="PNG")
    assert read_image_rgb(tmp_path / "really_png.jpg").shape == (3, 2, 3)  # by content


def test_read_jpeg_bytes_reads_the_frame_size(tmp_path: Path) -> None:
    """The undecoded path (decoding on the device): bytes and (H, W) from the SOF header."""
    arr = np.random.default_rng(1).integers(0, 256, (37, 53, 3), dtype=np.uint8)
    for name, kwargs in (("base.jpg", {}), ("prog.jpg", {"progressive": True})):
        Image.fromarray(arr).save(tmp_path / name, **kwargs)
        data, size = read_jpeg_bytes(tmp_path / name)
        assert size == (37, 53) and data == (tmp_path / name).read_bytes()
    _save(tmp_path / "x.png", arr)
    with pytest.raises(DataFormatError, match=r"x\.png is not a JPEG"):
        read_jpeg_bytes(tmp_path / "x.png")
    (tmp_path / "stub.jpg").write_bytes(b"\xff\xd8\xff\xe0\x00\x10JFIF\x00")
    with pytest.raises(DataFormatError, match=r"stub\.jpg"):
        read_jpeg_bytes(tmp_path / "stub.jpg")


def test_require_helpers(tmp_path: Path) -> None:
    (tmp_path / "f").write_text("x")
    assert require_file(tmp_path / "f", "thing") == tmp_path / "f"
    assert require_dir(str(tmp_path), "dir") == tmp_path
    with pytest.raises(FileNotFoundError, match=r"^Widget not found: .*g \(look here\)$"):
        require_file(tmp_path / "g", "Widget", hint="look here")
    with pytest.raises(FileNotFoundError, match=r"not a regular file"):
        require_file(tmp_path, "Widget")
    with pytest.raises(FileNotFoundError, match=r"^Data dir not found: .*nope$"):
        require_dir(tmp_path / "nope", "Data dir")
