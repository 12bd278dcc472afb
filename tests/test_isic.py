"""ISIC 2018 task 1 / task 3 (HAM10000) / 2019 readers on fixtures in the official layouts."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import _jpg, write_isic_diagnosis, write_isic_segmentation
from PIL import Image

from contraseg.datamodules import ISICDataModule, ISICSegmentationDataModule
from contraseg.datamodules.datasets.io import DataFormatError
from contraseg.datamodules.datasets.isic import ISICClassification, ISICSegmentation, lesion_split


def test_ham10000_split_keeps_lesions_together(tmp_path: Path) -> None:
    root = write_isic_diagnosis(tmp_path / "isic")
    data = ISICClassification(root, 2018)
    assert len(data) == 24 and data.classes[0] == "MEL" and len(data.lesions) == 24
    train, val = lesion_split(data.names, data.lesions, 0.25, seed=0)
    lesion = data.lesions
    assert {lesion[i] for i in train}.isdisjoint({lesion[i] for i in val})
    assert len(val) == 6 and sorted(train + val) == data.names  # whole lesions of 3 images
    item = data[0]
    assert item["image"].dtype == torch.uint8 and item["image"].shape == (3, 30, 40)


def test_isic_module_counts_and_imbalance(tmp_path: Path) -> None:
    root = write_isic_diagnosis(tmp_path / "isic")
    dm = ISICDataModule(str(root), batch_size=4, num_workers=0, val_fraction=0.25)
    dm.setup("fit")
    counts = dm.class_counts()
    assert dm.num_classes == 7 and int(counts.sum()) == len(dm._raw_datasets()[0])
    labels = [r for r in ISICClassification(root).all_labels.values()]
    assert int(counts.sum()) < len(labels) and counts[1] > counts[3]


def test_isic2019_nine_columns(tmp_path: Path) -> None:
    root = write_isic_diagnosis(tmp_path / "isic19", year=2019)  # no metadata CSV written
    data = ISICClassification(root, 2019, require_lesions=False)
    assert data.classes[-1] == "UNK" and max(data.labels) == 7 and data.lesions == {}


def test_a_lesion_split_without_lesion_metadata_is_an_error(tmp_path: Path) -> None:
    """Without HAM10000_metadata.csv a by-lesion split is impossible: an error naming the file,
    never a silent per-image split; ``split_by: image`` accepts the leak with a warning."""
    root = write_isic_diagnosis(tmp_path / "isic")
    (root / "HAM10000_metadata.csv").unlink()
    dm = ISICDataModule(str(root), batch_size=4, num_workers=0, val_fraction=0.25)
    with pytest.raises(DataFormatError, match=r"HAM10000_metadata.csv: lesion metadata not found"
                       r".*split_by image"):  # fmt: skip
        dm.setup("fit")
    dm = ISICDataModule(str(root), batch_size=4, num_workers=0, val_fraction=0.25,
                        split_by="image")  # fmt: skip
    with pytest.warns(UserWarning, match="split_by image: images of one lesion can land in both"):
        dm.setup("fit")
    assert len(dm._raw_datasets()[1]) == 6
    with pytest.raises(DataFormatError, match="ISIC_2019_Training_Metadata.csv: lesion metadata"):
        ISICClassification(write_isic_diagnosis(tmp_path / "isic19", year=2019), 2019)


def test_isic_bad_inputs(tmp_path: Path) -> None:
    root = write_isic_diagnosis(tmp_path / "isic")
    images = root / "ISIC2018_Task3_Training_Input"
    _jpg(images / "ISIC_9999999.jpg", np.random.default_rng(0))
    with pytest.warns(UserWarning, match="1 images .* have no row"):
        assert ISICClassification(root).ignored == 1
    (images / "ISIC_0024306.jpg").unlink()
    with pytest.raises(DataFormatError, match=r"GroundTruth.csv: 1 rows have no image"):
        ISICClassification(root)
    gt = root / "ISIC2018_Task3_Training_GroundTruth.csv"
    rows = list(csv.reader(gt.open()))
    rows[3][1:3] = ["1.0", "1.0"]
    with gt.open("w", newline="") as f:
        csv.writer(f).writerows(rows)
    with pytest.raises(DataFormatError, match="line 4 .* expected exactly one 1"):
        ISICClassification(root)


def test_isic_segmentation_masks(tmp_path: Path) -> None:
    root = write_isic_segmentation(tmp_path / "task1")
    dm = ISICSegmentationDataModule(str(root), batch_size=2, num_workers=0, crop_size=32,
                                    split_dir=str(tmp_path / "s"))  # fmt: skip
    dm.setup("fit")
    assert dm.official_val and len(dm.build("val")) == 2 and len(dm.train_names()) == 6
    item = ISICSegmentation(root)[0]
    assert set(torch.unique(item["mask"]).tolist()) == {0, 1}
    bad = root / "ISIC2018_Task1_Training_GroundTruth" / "ISIC_0000001_segmentation.png"
    Image.fromarray(np.full((36, 48), 128, np.uint8)).save(bad)
    with pytest.raises(DataFormatError, match="ISIC_0000001_segmentation.png: lesion masks hold"):
        ISICSegmentation(root)[1]
    bad.unlink()
    with pytest.raises(DataFormatError, match=r"no <id>_segmentation.png for \['ISIC_0000001'\]"):
        ISICSegmentation(root)
