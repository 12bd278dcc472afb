"""Medical volumes: NIfTI formats, subject lists, bad inputs, splits, caching, per-volume metrics.

Fixtures are written with nibabel in each data set's real layout (BTCV ``RawData/Training``,
MM-WHS ``ct_train_<id>_{image,label}.nii.gz``, MSD ``dataset.json`` + ``imagesTr``/``labelsTr``).
"""

from __future__ import annotations

import gzip
import json
import math
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from conftest import AFFINE, _save, _subject, write_btcv, write_hippocampus, write_mmwhs

from contraseg.datamodules.datasets.io import DataFormatError
from contraseg.datamodules.datasets.medical import BTCV8, MMWHS, btcv_subjects, hippocampus_subjects
from contraseg.datamodules.datasets.nifti import (
    check_pair,
    intensity_stats,
    map_labels,
    normalize_intensity,
    read_nifti,
)
from contraseg.datamodules.datasets.synthetic_volumes import SyntheticVolumes
from contraseg.datamodules.medical import (
    BTCVDataModule,
    HippocampusDataModule,
    MMWHSDataModule,
    NiftiFolderDataModule,
    SyntheticMedicalDataModule,
)
from contraseg.datamodules.volumes import (
    PatchDataset,
    SliceDataset,
    VolumeStore,
    foreground_weighted_index,
)
from contraseg.lightning_modules.evaluators.volume_metrics import VolumeMetrics, volume_scores

# --------------------------------------------------------------------------- NIfTI reader


def test_read_nifti_canonical_orientation_dtype_and_spacing(tmp_path: Path) -> None:
    rng = np.random.default_rng(3)
    image, _ = _subject(rng)
    path = _save(tmp_path / "v.nii.gz", image)
    vol = read_nifti(path)
    ref = nib.as_closest_canonical(nib.load(str(path)))
    assert vol.array.dtype == np.int16
    np.testing.assert_array_equal(vol.array, np.asarray(ref.dataobj).transpose(2, 1, 0))
    np.testing.assert_array_equal(vol.array, image[::-1].transpose(2, 1, 0))  # x un-flipped
    assert vol.spacing == pytest.approx((2.5, 0.8, 0.8))


def test_nan_voxels_are_an_error_naming_the_file(tmp_path: Path) -> None:
    volume = np.ones((6, 6, 4), np.float32)
    volume[2, 3, 1] = np.nan
    volume[0, 0, 0] = np.inf
    path = _save(tmp_path / "la_003.nii.gz", volume)
    with pytest.raises(DataFormatError, match=r"la_003.nii.gz: 2 of 144 voxels are not finite"):
        read_nifti(path)


def test_an_oblique_affine_gets_a_notice_with_its_angle(tmp_path: Path) -> None:
    angle = np.deg2rad(12.0)
    affine = np.eye(4)
    affine[:3, :3] = [[np.cos(angle), -np.sin(angle), 0], [np.sin(angle), np.cos(angle), 0],
                      [0, 0, 2.0]]  # fmt: skip
    path = tmp_path / "oblique.nii.gz"
    nib.save(nib.Nifti1Image(np.zeros((4, 4, 3), np.int16), affine), str(path))
    with pytest.warns(UserWarning, match=r"oblique.nii.gz: the voxel axes are oblique .* by up to "
                      r"12.00 degrees"):  # fmt: skip
        read_nifti(path)
    straight = _save(tmp_path / "straight.nii.gz", np.zeros((4, 4, 3), np.int16))
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        read_nifti(straight)  # the fixtures' axis-aligned affine: no notice


def test_truncated_nifti_names_the_file(tmp_path: Path) -> None:
    path = _save(tmp_path / "full.nii.gz", np.zeros((20, 20, 20), np.int16))
    data = gzip.decompress(path.read_bytes())
    bad = tmp_path / "img0001.nii.gz"
    bad.write_bytes(gzip.compress(data)[: len(gzip.compress(data)) // 2])
    with pytest.raises(DataFormatError, match="img0001.nii.gz.*truncated"):
        read_nifti(bad)
    with pytest.raises(FileNotFoundError, match="missing.nii.gz"):
        read_nifti(tmp_path / "missing.nii.gz")


@pytest.mark.parametrize("defect", ["shape", "spacing", "affine"])
def test_label_off_the_image_grid_is_an_error(tmp_path: Path, defect: str) -> None:
    image = _save(tmp_path / "img.nii.gz", np.zeros((8, 8, 4), np.int16))
    shape = (8, 8, 5) if defect == "shape" else (8, 8, 4)
    affine = AFFINE.copy()
    if defect == "spacing":
        affine[2, 2] = 3.0
    if defect == "affine":
        affine[0, 3] = 10.0
    label = _save(tmp_path / "lab.nii.gz", np.zeros(shape, np.uint8), affine)
    with pytest.raises(DataFormatError, match=f"lab.nii.gz: label {defect}"):
        check_pair(read_nifti(image), read_nifti(label))


def test_label_tables() -> None:
    raw = np.array([[0, 205, 420], [500, 550, 600], [820, 850, 0]])
    np.testing.assert_array_equal(
        map_labels(raw, MMWHS.label_table), [[0, 1, 2], [3, 4, 5], [6, 7, 0]]
    )
    with pytest.raises(DataFormatError, match=r"x.nii.gz: label values \[421\]"):
        map_labels(np.array([0, 421]), MMWHS.label_table, "x.nii.gz")
    btcv = map_labels(np.arange(14), BTCV8.label_table)
    np.testing.assert_array_equal(btcv, [0, 7, 4, 3, 2, 0, 5, 8, 1, 0, 0, 6, 0, 0])


def test_intensity_normalisation() -> None:
    hu = np.array([-1000, -125, 75, 275, 2000], np.int16)
    np.testing.assert_allclose(normalize_intensity(hu, "ct", (-125, 275)), [0, 0, 0.5, 1, 1])
    mr = np.random.default_rng(0).gamma(2.0, 50.0, 10_000).astype(np.float32)
    z = normalize_intensity(mr, "mr", stats=intensity_stats(mr))
    assert abs(z.mean()) < 1e-3 and abs(z.std() - 1) < 1e-3
    with pytest.raises(ValueError, match="modality"):
        normalize_intensity(hu, "pet")


# --------------------------------------------------------------------------- subject lists


def test_btcv_layout_pairs_and_protocol(tmp_path: Path) -> None:
    root = write_btcv(tmp_path / "btcv")
    assert [s.id for s in btcv_subjects(root)] == ["0001", "0002", "0005", "0006", "0008"]
    dm = BTCVDataModule(str(root), batch_size=2, num_workers=0, split_dir=str(tmp_path / "s"))
    train, val = dm.split()
    assert val == ["0001", "0002", "0008"] and train == ["0005", "0006"]  # TransUNet test cases
    label = dm.store.load("0005").label
    assert set(np.unique(label)) == {0, 1}  # aorta -> 1, esophagus (not in the 8) -> 0
    (root / "RawData/Training/label/label0005.nii.gz").unlink()
    with pytest.raises(DataFormatError, match=r"no label file for images \['0005'\]"):
        btcv_subjects(root)


def test_hippocampus_dataset_json(tmp_path: Path) -> None:
    root = write_hippocampus(tmp_path / "Task04_Hippocampus")
    subjects = hippocampus_subjects(root)
    assert [s.id for s in subjects] == [f"hippocampus_{k:03d}" for k in range(4)]
    meta = json.loads((root / "dataset.json").read_text())
    meta["training"].append({"image": "./imagesTr/gone.nii.gz", "label": "./labelsTr/gone.nii.gz"})
    (root / "dataset.json").write_text(json.dumps(meta))
    with pytest.raises(DataFormatError, match="gone.nii.gz does not exist"):
        hippocampus_subjects(root)


def test_mmwhs_and_folder_modules_serve_mapped_slices(tmp_path: Path) -> None:
    root = write_mmwhs(tmp_path / "mmwhs")
    dm = MMWHSDataModule(
        str(root),
        batch_size=2,
        num_workers=0,
        split_dir=str(tmp_path / "s"),
        labelled_subjects=2,
        val_subjects=1,
        crop_size=8,
    )
    dm.setup("fit")
    train, val = dm.split()
    assert len(val) == 1 and not set(train) & set(val)
    assert set(dm.labeled_names()) <= set(train) and len(dm.labeled_names()) == 2
    item = dm.train_dataset()[0]
    assert item["image"].shape == (1, 8, 8) and int(item["mask"].max()) <= 7
    volume = dm.val_dataset()[0]
    assert volume["image"].ndim == 4 and volume["mask"].shape == volume["image"].shape[1:]
    assert set(np.unique(volume["mask"].numpy())) == {0, 1, 7}
    folder = NiftiFolderDataModule(
        str(root),
        classes=("bg", "myo", "pa"),
        image_pattern="ct_train_{id}_image.nii.gz",
        label_pattern="ct_train_{id}_label.nii.gz",
        label_values=(0, 205, 850),
        batch_size=2,
        num_workers=0,
    )
    assert folder.store.ids == ["1001", "1002", "1003", "1004"]
    assert set(np.unique(folder.store.load("1001").label)) == {0, 1, 2}
    bad = NiftiFolderDataModule(
        str(root),
        classes=("bg", "myo"),
        label_values=(0, 205),
        image_pattern="ct_train_{id}_image.nii.gz",
        label_pattern="ct_train_{id}_label.nii.gz",
        batch_size=2,
    )
    with pytest.raises(DataFormatError, match=r"ct_train_1001_label.nii.gz: label values \[850\]"):
        bad.store.load("1001")


def test_orphan_label_is_an_error(tmp_path: Path) -> None:
    root = write_mmwhs(tmp_path / "mmwhs", n=2)
    (root / "ct_train_1001_image.nii.gz").unlink()
    dm = MMWHSDataModule(str(root), batch_size=2, num_workers=0)
    with pytest.raises(DataFormatError, match=r"label files \['1001'\] have no image"):
        _ = dm.store


# --------------------------------------------------------------------------- serving


def test_store_reads_each_subject_once_and_npy_cache(tmp_path: Path) -> None:
    root = write_hippocampus(tmp_path / "hip", n=3)
    dm = HippocampusDataModule(
        str(root), batch_size=2, num_workers=0, cache_dir=str(tmp_path / "c")
    )
    data = SliceDataset(dm.store, dm.store.ids)
    for _ in range(2):
        for i in range(len(data)):
            data[i]
    assert dm.store.reads == 3 and len(data) == 3 * 6
    again = HippocampusDataModule(
        str(root), batch_size=2, num_workers=0, cache_dir=str(tmp_path / "c")
    )
    np.testing.assert_array_equal(
        again.store.load(data.ids[0]).image, dm.store.load(data.ids[0]).image
    )
    assert again.store.reads == 0  # memory-mapped .npy, no decompression
    assert abs(float(data[0]["image"].mean())) < 3  # MR z-scored


def test_two_folders_sharing_one_cache_and_an_edited_label(tmp_path: Path) -> None:
    """Entries are keyed by their source files: never another folder's or a stale volume."""
    cache = str(tmp_path / "c")
    first = write_hippocampus(tmp_path / "a", n=2)
    second = write_hippocampus(tmp_path / "b", n=2)  # same subject ids, other voxels below
    sid = "hippocampus_000"
    image = nib.load(str(second / "imagesTr" / f"{sid}.nii.gz"))
    nib.save(nib.Nifti1Image(np.asarray(image.dataobj) * 2 + 7, image.affine),
             str(second / "imagesTr" / f"{sid}.nii.gz"))  # fmt: skip
    a = HippocampusDataModule(str(first), num_workers=0, cache_dir=cache).store
    b = HippocampusDataModule(str(second), num_workers=0, cache_dir=cache).store
    a_image = np.array(a.load(sid).image)
    with pytest.warns(UserWarning, match=f"holds subject {sid} read from other files"):
        b_image = np.array(b.load(sid).image)  # read from its own file, not a's entry
    assert b.reads == 1 and not np.array_equal(a_image, b_image)
    np.testing.assert_array_equal(b_image, read_nifti(second / "imagesTr" / f"{sid}.nii.gz").array)
    fresh_a = HippocampusDataModule(str(first), num_workers=0, cache_dir=cache).store
    np.testing.assert_array_equal(fresh_a.load(sid).image, a_image)
    assert fresh_a.reads == 0  # both folders' entries live side by side
    # an edited label file: the entry is rebuilt with a warning, the new labels served
    label_path = first / "labelsTr" / f"{sid}.nii.gz"
    label = nib.load(str(label_path))
    edited = np.zeros(label.shape, np.uint8)
    nib.save(nib.Nifti1Image(edited, label.affine), str(label_path))
    store = HippocampusDataModule(str(first), num_workers=0, cache_dir=cache).store
    with pytest.warns(UserWarning, match=f"cache entry of subject {sid} is stale"):
        served = store.load(sid)
    assert store.reads == 1 and int(np.asarray(served.label).max()) == 0
    assert len(list((tmp_path / "c").rglob(f"{sid}_native_*_meta.json"))) == 2  # a's new + b's


def test_context_channels_and_foreground_share() -> None:
    store = VolumeStore(SyntheticVolumes(2).protocol, synthetic=SyntheticVolumes(2))
    data = SliceDataset(store, store.ids, context=1)
    item = data[0]
    assert item["image"].shape[0] == 3
    torch.testing.assert_close(item["image"][0], item["image"][1])  # edge slice repeats
    slices = store.slice_counts(store.ids)
    index = foreground_weighted_index(slices, 0.9, seed=0)
    fg = {(s, z) for s, z, f in slices if f}
    share = sum(k in fg for k in index) / len(index)
    assert len(index) == len(slices) and abs(share - 0.9) < 0.1
    assert share > sum(f for *_, f in slices) / len(slices)


def test_patches_and_synthetic_subjects() -> None:
    volumes = SyntheticVolumes(3, shape=(16, 32, 32), seed=4)
    a, b = volumes.subject(1), volumes.subject(1)
    np.testing.assert_array_equal(a[0].array, b[0].array)
    spacings = {volumes.subject(i)[0].spacing for i in range(3)}
    assert len(spacings) == 3  # spacing varies per subject
    assert set(np.unique(a[1].array)) == set(range(5))
    store = VolumeStore(volumes.protocol, synthetic=volumes)
    patches = PatchDataset(store, store.ids, (8, 16, 16), foreground_prob=1.0)
    item = patches[0]
    assert item["image"].shape == (1, 8, 16, 16) and item["mask"].shape == (8, 16, 16)
    assert (item["mask"][4, 8, 8] > 0) and (item["mask"] != 255).all()


def test_synthetic_module_subject_split() -> None:
    dm = SyntheticMedicalDataModule(
        num_subjects=8, labelled_subjects=3, batch_size=2, num_workers=0
    )
    train, val = dm.split()
    assert len(val) == 2 and not set(train) & set(val) and set(dm.labeled_names()) < set(train)
    names = {n.split(":")[0] for n in dm.train_dataset().dataset.names}
    assert names == set(dm.labeled_names())  # slices come from labelled subjects only


# --------------------------------------------------------------------------- metrics


def test_volume_dice_and_hd95_hand_computed() -> None:
    target = torch.zeros(4, 5, 5, dtype=torch.long)
    pred = torch.zeros_like(target)
    target[1, 2, 1:3] = 1  # two voxels along W
    pred[1, 2, 1:4] = 1  # three voxels: one extra along W
    pred[3, 0, 0] = 2  # class 2 absent from the target: hallucinated
    dice, hd = volume_scores(pred, target, 4, spacing=(3.0, 2.0, 0.5))
    assert dice[0].item() == pytest.approx(2 * 2 / (2 + 3))
    # surface distances pred -> target {0, 0, 0.5 mm} (one voxel along W), target -> pred {0, 0}:
    # the 95th percentile (linear interpolation, as numpy) of the first is 0.9 * 0.5 mm
    assert hd[0].item() == pytest.approx(float(np.percentile([0, 0, 0.5], 95)), abs=1e-6)
    diagonal = math.sqrt((4 * 3.0) ** 2 + (5 * 2.0) ** 2 + (5 * 0.5) ** 2)
    assert dice[1].item() == 0 and hd[1].item() == pytest.approx(diagonal)
    assert math.isnan(dice[2].item()) and math.isnan(hd[2].item())  # both empty: undefined
    dice_h, hd_h = volume_scores(pred.transpose(1, 2), target.transpose(1, 2), 4, (3.0, 0.5, 2.0))
    assert hd_h[0].item() == pytest.approx(0.45, abs=1e-6)  # spacing follows the axes


def test_per_volume_aggregation_equals_direct_3d() -> None:
    from monai.metrics import compute_dice

    g = torch.Generator().manual_seed(0)
    metric = VolumeMetrics(3)
    direct = []
    for _ in range(3):
        target = (torch.rand(6, 8, 8, generator=g) * 3).long()
        pred = torch.where(torch.rand(6, 8, 8, generator=g) < 0.7, target, 0)
        stacked = torch.stack([pred[z] for z in range(6)])  # slice predictions stacked back
        metric.update(stacked, target, (2.0, 1.0, 1.0))
        one = lambda x: torch.nn.functional.one_hot(x, 3).permute(3, 0, 1, 2)[None].float()  # noqa: E731
        direct.append(compute_dice(one(pred), one(target), include_background=False)[0])
    out = metric.compute()
    torch.testing.assert_close(out["dice_per_class"].float(), torch.stack(direct).mean(0))
    assert out["volumes"] == 3


def test_finetune_scores_whole_volumes() -> None:
    from contraseg.lightning_modules.segmentation_finetune import SegmentationFineTune

    model = SegmentationFineTune(
        architecture="unet", encoder="resnet18", num_classes=5, in_channels=1
    ).eval()
    volume = torch.randn(1, 20, 32, 32)
    with torch.no_grad():
        logits = model.infer_volume(volume)
        direct = model(volume.permute(1, 0, 2, 3))
    torch.testing.assert_close(logits, direct)
    model.hparams.sliding_window, model.hparams.sliding_stride = 32, 16
    with torch.no_grad():
        torch.testing.assert_close(model.infer_volume(volume), direct, atol=1e-5, rtol=1e-5)
