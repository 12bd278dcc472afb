"""Domain adaptation: GTA5 / SYNTHIA readers, the source-target data module, PR-SFDA's and the
patch-wise contrast's losses against closed forms and loops, and the two tasks."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import _png, png16, write_gta5, write_synthia

from contraseg.datamodules import (
    GTA5DataModule,
    SourceTargetDataModule,
    SynthiaDataModule,
    TexturedSegmentationDataModule,
)
from contraseg.datamodules.datasets.cityscapes import CITYSCAPES_LABEL_TO_TRAIN_ID
from contraseg.datamodules.datasets.gta5 import GTA5Dataset, read_official_split
from contraseg.datamodules.datasets.io import DataFormatError
from contraseg.datamodules.datasets.synthia import (
    SYNTHIA_13_CLASSES,
    SYNTHIA_16_CLASSES,
    SYNTHIA_TO_TRAIN_ID,
    SynthiaDataset,
)
from contraseg.lightning_modules import (
    PatchContrastAdaptation,
    SegmentationFineTune,
    SourceFreeAdaptation,
)
from contraseg.lightning_modules.losses.patch_contrast import (
    label_disparity,
    match_patches,
    patch_histograms,
    patch_info_nce,
)
from contraseg.lightning_modules.losses.source_free import (
    class_balanced_thresholds,
    complementary_labels,
    confidence_histogram,
    max_squares_loss,
    negative_learning_loss,
    positive_learning_loss,
    pseudo_labels,
)
from contraseg.seeding import SampleKey


# ------------------------------------------------------------------ readers
def test_gta5_maps_label_ids_and_reports_missing_pairs(tmp_path: Path, caplog) -> None:
    root = write_gta5(tmp_path / "gta5", n=5, missing_label=(3,))
    _png(root / "labels" / "00009.png", np.zeros((40, 72), np.uint8), palette=[0] * 768)
    with caplog.at_level("WARNING"):
        ds = GTA5Dataset(root)
    assert ds.names == ["00001", "00002", "00004", "00005"]
    assert ds.missing == {"images_without_label": ["00003"], "labels_without_image": ["00009"]}
    assert "4 complete pairs" in caplog.text and "24,966 vs 24,941" in caplog.text
    from PIL import Image

    item = ds[0]
    ids = np.asarray(Image.open(root / "labels" / "00001.png"))
    expected = CITYSCAPES_LABEL_TO_TRAIN_ID[ids].astype(np.int64)
    assert torch.equal(item["mask"], torch.from_numpy(expected))
    assert set(item["mask"].unique().tolist()) <= {0, 1, 2, 11, 13, 18, 255}
    assert item["image"].shape == (3, 40, 72) and item["image"].dtype == torch.uint8


def test_gta5_refuses_colour_labels_and_size_mismatch(tmp_path: Path) -> None:
    root = write_gta5(tmp_path / "gta5", n=2)
    _png(root / "labels" / "00001.png", np.zeros((40, 72, 3), np.uint8))  # an RGB copy
    with pytest.raises(DataFormatError, match=r"00001\.png.*palette"):
        GTA5Dataset(root)[0]
    _png(root / "labels" / "00002.png", np.zeros((30, 72), np.uint8), palette=[0] * 768)
    with pytest.raises(DataFormatError, match=r"Size mismatch.*00002"):
        GTA5Dataset(root)[1]


def test_gta5_official_split(tmp_path: Path) -> None:
    from scipy.io import savemat

    root = write_gta5(tmp_path / "gta5", n=4)
    ids = {"trainIds": np.array([[1], [2], [3]]), "valIds": np.array([[4]]),
           "testIds": np.array([[5]])}
    savemat(tmp_path / "split.mat", ids)
    split = read_official_split(tmp_path / "split.mat")
    assert split == {"train": ["00001", "00002", "00003"], "val": ["00004"], "test": ["00005"]}
    dm = GTA5DataModule(str(root), split_mat=str(tmp_path / "split.mat"), crop_size=32,
                        split_dir=str(tmp_path / "splits"))  # fmt: skip
    assert dm.train_names() == ["00001", "00002", "00003"]
    assert dm.build("val").names == ["00004"]
    assert len(GTA5DataModule(str(root)).train_names()) == 4
    with pytest.raises(ValueError, match="no validation split without data.split_mat"):
        GTA5DataModule(str(root)).build("val")
    savemat(tmp_path / "bad.mat", {"ids": np.array([1])})
    with pytest.raises(DataFormatError, match=r"bad\.mat holds \['ids'\]"):
        read_official_split(tmp_path / "bad.mat")


def test_synthia_reads_16_bit_class_ids_from_the_first_channel(tmp_path: Path) -> None:
    root = write_synthia(tmp_path / "synthia")
    from torchvision.io import ImageReadMode, decode_png, read_file

    label_file = root / "GT" / "LABELS" / "0000001.png"
    raw = decode_png(read_file(str(label_file)), ImageReadMode.UNCHANGED)
    item = SynthiaDataset(root)[1]
    expected = SYNTHIA_TO_TRAIN_ID[raw[0].numpy().astype(np.int64)]
    assert torch.equal(item["mask"], torch.from_numpy(expected))
    assert SYNTHIA_TO_TRAIN_ID[3] == 0 and SYNTHIA_TO_TRAIN_ID[21] == 3  # road, wall
    assert SYNTHIA_TO_TRAIN_ID[0] == SYNTHIA_TO_TRAIN_ID[22] == 255  # void, lane marking
    assert len(SYNTHIA_16_CLASSES) == 16 and len(SYNTHIA_13_CLASSES) == 13
    assert {"terrain", "truck", "train"}.isdisjoint(SYNTHIA_16_CLASSES)
    assert {"wall", "fence", "pole"}.isdisjoint(SYNTHIA_13_CLASSES)
    # Pillow reads such a file as 8 bits per sample: the ids would be gone (why torchvision)
    from PIL import Image

    ids = raw[0].numpy()
    assert not np.array_equal(np.asarray(Image.open(label_file))[..., 0], ids)


def test_synthia_bad_inputs_name_the_file(tmp_path: Path) -> None:
    root = write_synthia(tmp_path / "synthia", n=3)
    _png(root / "GT" / "LABELS" / "0000000.png", np.zeros((38, 64, 3), np.uint8))  # 8-bit copy
    with pytest.raises(DataFormatError, match=r"0000000\.png has uint8 samples: expected a 16-bit"):
        SynthiaDataset(root)[0]
    png16(root / "GT" / "LABELS" / "0000001.png", np.full((38, 64, 3), 40, np.uint16))
    with pytest.raises(DataFormatError, match=r"0000001\.png holds class ids \[40\]"):
        SynthiaDataset(root)[1]
    (root / "GT" / "LABELS" / "0000002.png").unlink()
    with pytest.raises(FileNotFoundError, match=r"0000002\.png has no label"):
        SynthiaDataset(root)
    assert SynthiaDataModule(str(root)).info.name == "synthia"


# ------------------------------------------------------------------ data module
def _domain(domain: int, seed: int, **kw) -> TexturedSegmentationDataModule:
    return TexturedSegmentationDataModule(num_train=kw.pop("num_train", 12), num_val=4,
                                          scene={"image_size": 32, "num_domains": 3,
                                                 "domain": domain},
                                          data_seed=seed, batch_size=4, num_workers=0,
                                          split_dir=kw.pop("split_dir"), **kw)  # fmt: skip


@pytest.fixture
def domains(tmp_path: Path) -> tuple:
    splits = str(tmp_path / "splits")
    return (_domain(0, 0, split_dir=splits, num_train=12),
            _domain(2, 1, split_dir=splits, num_train=8, label_fraction=4))


def test_streams_pair_samples_per_epoch_and_drop_target_masks(domains) -> None:
    source, target = domains
    dm = SourceTargetDataModule(target, source, streams=["source", "target", "target_labeled"],
                                batch_size=4, num_workers=0)  # fmt: skip
    ds = dm.train_dataset()
    assert len(ds) == 12 and ds.sizes == {"source": 12, "target": 8, "target_labeled": 4}
    item = ds[SampleKey(index=9, epoch=0, seed=5)]
    assert "mask" not in item["target"] and "mask" in item["source"]
    assert "mask" in item["target_labeled"]
    again = ds[SampleKey(index=9, epoch=0, seed=5)]
    assert torch.equal(item["target"]["image"], again["target"]["image"])  # a function of the key
    # every target image once per epoch in its first 8 indices, another pairing next epoch
    order = [ds._order("target", 0, 0)[i % 8] for i in range(8)]
    assert sorted(order) == list(range(8))
    assert ds._order("target", 1, 0) != ds._order("target", 0, 0)
    assert not dm.source_free
    loader = dm.train_dataloader()
    batch = dm.on_after_batch_transfer(next(iter(loader)))
    assert set(batch) == {"source", "target", "target_labeled"}
    assert batch["source"]["image"].dtype == torch.float32  # normalised by the source's hook
    assert "mask" not in batch["target"]


def test_one_stream_gives_plain_batches_and_source_free_data(domains) -> None:
    source, target = domains
    only = SourceTargetDataModule(target, source, streams=["source"], batch_size=4, num_workers=0)
    batch = only.on_after_batch_transfer(next(iter(only.train_dataloader())))
    assert {"image", "mask"} <= set(batch) and batch["image"].shape[0] == 4
    free = SourceTargetDataModule(target, None, streams=["target"], batch_size=4, num_workers=0)
    assert free.source_free and free.name == "sourcefree_to_textured"
    batch = next(iter(free.train_dataloader()))
    assert "mask" not in batch
    images = [b for b in free.target_images()]
    assert sum(b["image"].shape[0] for b in images) == 8 and all("mask" not in b for b in images)


def test_source_target_errors(domains, tmp_path: Path) -> None:
    source, target = domains
    with pytest.raises(ValueError, match="must be distinct names"):
        SourceTargetDataModule(target, source, streams=["source", "tgt"])
    with pytest.raises(ValueError, match="source-free adaptation trains on streams"):
        SourceTargetDataModule(target, None, streams=["source", "target"])
    other = TexturedSegmentationDataModule(num_train=8, scene={"image_size": 32, "num_classes": 4},
                                           split_dir=str(tmp_path / "s"))  # fmt: skip
    with pytest.raises(ValueError, match="must agree"):
        SourceTargetDataModule(target, other)


# ------------------------------------------------------------------ PR-SFDA losses
def test_max_squares_closed_forms() -> None:
    logits = torch.zeros(2, 4, 3, 5)  # uniform: p = 1/4 everywhere
    assert torch.isclose(max_squares_loss(logits), torch.tensor(-(0.25**2) / 2))
    logits = torch.randn(2, 5, 6, 7)
    p = logits.softmax(1)
    assert torch.isclose(max_squares_loss(logits), -(p**2).mean() / 2)
    # image-wise weighting against a loop over images and pixels (MaxSquare's IW)
    total = 0.0
    for b in range(2):
        pred = p[b].argmax(0)
        hist = torch.bincount(pred.flatten(), minlength=5).float()
        w = 1 / torch.clamp(hist**0.2 * hist.sum() ** 0.8, min=1)
        for i in range(6):
            for j in range(7):
                total += float(w[pred[i, j]] * (p[b, :, i, j] ** 2).sum())
    assert math.isclose(float(max_squares_loss(logits, True, 0.2)), -total / (2 * 5), rel_tol=1e-5)


def test_negative_learning_matches_the_naive_form_and_stays_finite() -> None:
    torch.manual_seed(0)
    logits = torch.randn(2, 5, 3, 4, requires_grad=True)
    comp = torch.randint(0, 5, (2, 3, 4))
    comp[0, 0, 0] = 255
    p = logits.softmax(1)
    naive = torch.stack([-torch.log(1 - p[b, comp[b, i, j], i, j])
                         for b in range(2) for i in range(3) for j in range(4)
                         if comp[b, i, j] != 255]).mean()  # fmt: skip
    loss = negative_learning_loss(logits, comp)
    assert torch.isclose(loss, naive, atol=1e-6)
    loss.backward()
    big = torch.zeros(1, 3, 1, 1)
    big[0, 1] = 200.0  # p_1 = 1 - 1e-87: the naive form is log(0)
    value = negative_learning_loss(big, torch.tensor([[[1]]]))
    assert torch.isfinite(value) and math.isclose(float(value), 200 - math.log(2), rel_tol=1e-6)
    assert float(negative_learning_loss(big, torch.full((1, 1, 1), 255))) == 0.0


def test_class_balanced_thresholds_and_pseudo_labels() -> None:
    torch.manual_seed(1)
    conf = torch.rand(1000)
    pred = torch.randint(0, 3, (1000,))
    hist = confidence_histogram(conf[:400], pred[:400], 4) + confidence_histogram(
        conf[400:], pred[400:], 4)  # accumulated over batches
    assert torch.equal(hist, confidence_histogram(conf, pred, 4)) and hist.sum() == 1000
    thr = class_balanced_thresholds(hist, 0.2)
    for c in range(3):
        values = conf[pred == c]
        kept = (values >= thr[c]).sum().item()
        one_bin = ((values >= thr[c]) & (values < thr[c] + 1e-3)).sum().item()
        assert 0.2 * len(values) <= kept <= 0.2 * len(values) + one_bin  # the top 20%
        kth = values.sort(descending=True).values[math.ceil(0.2 * len(values)) - 1]
        assert thr[c] <= kth < thr[c] + 1e-3  # the bin of the last pixel kept
    assert thr[3] == 2.0  # no pixel predicts class 3: above any probability
    probs = torch.tensor([[0.7, 0.2, 0.1], [0.4, 0.35, 0.25]]).T.reshape(1, 3, 1, 2)
    labels = pseudo_labels(probs, torch.tensor([0.5, 0.5, 0.5]))
    assert labels.tolist() == [[[0, 255]]]


def test_complementary_labels_come_from_the_unlikely_ranks() -> None:
    torch.manual_seed(2)
    probs = torch.randn(2, 6, 5, 5).softmax(1)
    g = torch.Generator().manual_seed(0)
    labels = complementary_labels(probs, 3, g)
    ranks = probs.argsort(1, descending=True).argsort(1)  # rank of each class per pixel
    assert (ranks.gather(1, labels[:, None]) >= 3).all()
    assert len(labels.unique()) > 1
    kept = complementary_labels(probs, 3, g, min_confidence=1.0)
    assert (kept == 255).all()
    with pytest.raises(ValueError, match="min_rank"):
        complementary_labels(probs, 6)
    assert float(positive_learning_loss(torch.randn(1, 3, 2, 2), torch.full((1, 2, 2), 255))) == 0


# ------------------------------------------------------------------ patch-wise contrast
def test_patch_histograms_and_disparity_by_hand() -> None:
    # one 4x4 map, grid 2 (2x2-pixel patches), levels 1 and 2, 3 classes
    labels = torch.tensor([[[0, 0, 1, 1],
                            [0, 1, 1, 1],
                            [2, 2, 255, 255],
                            [2, 0, 255, 255]]])  # fmt: skip
    hist, ok = patch_histograms(labels, 3, 2, (1, 2))
    assert ok.tolist() == [True, True, True, False]
    # patch 0 (top left: 0 0 / 0 1): level 1 = [3/4, 1/4, 0]; level 2: each pixel one-hot
    assert torch.allclose(hist[0, :3], torch.tensor([0.75, 0.25, 0.0]))
    assert torch.allclose(hist[0, 3:], torch.tensor([1, 0, 0, 1, 0, 0, 1, 0, 0, 0, 1, 0.0]))
    assert torch.allclose(hist[3], torch.zeros(15))
    # patch 2 (bottom left: 2 2 / 2 0) against patch 0: level 1 TV = 3/4; level 2: all 4 differ
    # except none -> (1 + 1 + 1 + 1) / 4 = 1; mean of levels = (0.75 + 1) / 2
    d = label_disparity(hist[[0]], hist[[2]], 3, (1, 2))
    assert torch.isclose(d[0, 0], torch.tensor(0.875))
    assert torch.isclose(label_disparity(hist[[1]], hist[[1]], 3, (1, 2))[0, 0], torch.tensor(0.0))
    index, matched, negatives = match_patches(torch.tensor([[0.5, 0.1, 0.9], [0.6, 0.7, 0.8]]), 0.3)
    assert index.tolist() == [1, 0] and matched.tolist() == [True, False]
    assert negatives.tolist() == [[True, False, True], [True, True, True]]


def test_patch_info_nce_against_a_loop() -> None:
    torch.manual_seed(3)
    a, b = torch.randn(4, 8), torch.randn(5, 8)
    positive = torch.tensor([1, 0, 4, 2])
    matched = torch.tensor([True, True, False, True])
    negatives = torch.rand(4, 5) > 0.4
    loss = patch_info_nce(a, b, positive, matched, negatives, 0.2)
    u, v = F.normalize(a, dim=1), F.normalize(b, dim=1)
    terms = []
    for i in range(4):
        if not matched[i]:
            continue
        pos = torch.exp(u[i] @ v[positive[i]] / 0.2)
        neg = sum(torch.exp(u[i] @ v[j] / 0.2) for j in range(5)
                  if negatives[i, j] and j != positive[i])  # fmt: skip
        terms.append(-torch.log(pos / (pos + neg)))
    assert torch.isclose(loss, torch.stack(terms).mean(), atol=1e-5)
    none = patch_info_nce(a, b, positive, torch.zeros(4, dtype=torch.bool), negatives)
    assert float(none) == 0.0


# ------------------------------------------------------------------ the tasks
def _source_checkpoint(path: Path, num_classes: int = 7) -> Path:
    torch.manual_seed(0)
    torch.save({"state_dict": SegmentationFineTune(num_classes=num_classes).state_dict()}, path)
    return path


def test_pr_sfda_loads_the_whole_source_model_and_refuses_labels(tmp_path: Path) -> None:
    ckpt = _source_checkpoint(tmp_path / "src.ckpt")
    model = SourceFreeAdaptation(num_classes=7, init_checkpoint=str(ckpt))
    source = torch.load(ckpt)["state_dict"]
    for name, tensor in model.net.state_dict().items():  # encoder, decoder and head
        assert torch.equal(tensor, source[f"net.{name}"]), name
        assert torch.equal(model.teacher.state_dict()[name], tensor)
    with pytest.raises(ValueError, match="init_checkpoint is required"):
        SourceFreeAdaptation(num_classes=7)
    with pytest.raises(ValueError, match="not a source model of this network"):
        SourceFreeAdaptation(num_classes=5, init_checkpoint=str(ckpt))
    with pytest.raises(ValueError, match="unlabeled target images only"):
        model.training_loss({"image": torch.randn(2, 3, 32, 32), "mask": torch.zeros(2, 32, 32)})
    assert [model.round_of(e) for e in range(5)] == [-1, 0, 1, 1, 1]


def test_pr_sfda_phase_two_losses(tmp_path: Path) -> None:
    model = SourceFreeAdaptation(num_classes=7, init_checkpoint=str(_source_checkpoint(
        tmp_path / "s.ckpt")), max_squares_epochs=0)  # fmt: skip
    model.thresholds.fill_(0.0)  # every pixel confident: positive labels everywhere
    model.eval()  # ASPP's dropout would make the two forwards below differ

    images = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        teacher = model.teacher.eval()(images).softmax(1)
    out = model.training_loss({"image": images})
    logits = model(images)
    expected = F.cross_entropy(logits, teacher.argmax(1))
    assert torch.isclose(out.logs["positive"], expected, atol=1e-5)
    assert out.logs["pseudo_labelled"] == 1.0 and out.logs["negative"] > 0


def test_patch_contrast_task_runs_both_modes(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = PatchContrastAdaptation(num_classes=4, grid=2, levels=[1, 2], pseudo_threshold=0.0)
    src = {"image": torch.randn(2, 3, 32, 32), "mask": torch.randint(0, 4, (2, 32, 32))}
    tgt = {"image": torch.randn(2, 3, 32, 32)}
    out = model.training_loss({"source": src, "target": tgt})
    assert torch.isfinite(out.loss) and out.logs["matched_patches"] >= 0
    out.loss.backward()
    assert model.projector.net[0].weight.grad is not None  # the contrast reaches the projector
    semi = PatchContrastAdaptation(num_classes=4, grid=2, levels=[1, 2], target_labels="labeled",
                                   threshold=1.0)  # fmt: skip
    labeled = {"image": torch.randn(2, 3, 32, 32), "mask": src["mask"].flip(0)}
    out = semi.training_loss({"source": src, "target": tgt, "target_labeled": labeled})
    assert "ce_target" in out.logs and out.logs["matched_patches"] == 1.0
    with pytest.raises(ValueError, match="needs source and target batches"):
        model.training_loss(src)


def test_miou_classes_average_only_the_listed_classes() -> None:
    model = SegmentationFineTune(num_classes=3, class_names=["a", "b", "c"],
                                 miou_classes=["a", "c"])
    preds = torch.tensor([[0, 1, 2, 2]])
    target = torch.tensor([[0, 2, 2, 1]])
    model.val_metrics.update(preds, target)
    iou = model.val_metrics.compute()["iou_per_class"]
    logged = {}
    model.log = lambda key, value, **kw: logged.__setitem__(key, float(value))  # type: ignore[method-assign]
    model._log_metrics(model.val_metrics, "val")
    assert math.isclose(logged["val/miou"], float((iou[0] + iou[2]) / 2), rel_tol=1e-6)
    bad = SegmentationFineTune(num_classes=3, class_names=["a", "b", "c"], miou_classes=["x"])
    with pytest.raises(ValueError, match=r"miou_classes \['x'\]"):
        bad.miou_indices()


def test_ade20k_reads_the_release_class_list_and_reduces_label_zero(tmp_path: Path) -> None:
    from conftest import write_ade20k
    from PIL import Image

    from contraseg.datamodules import ADE20KDataModule
    from contraseg.datamodules.datasets.ade20k import ADE20KDataset, read_object_info

    root = write_ade20k(tmp_path / "ADEChallengeData2016")
    names = read_object_info(root / "objectInfo150.txt")
    assert len(names) == 150 and names[:3] == ("wall", "building", "class3")
    ds = ADE20KDataset(root, "validation")
    raw = np.asarray(Image.open(root / "annotations" / "validation" / f"{ds.names[0]}.png"))
    mask = ds[0]["mask"].numpy()
    assert (mask[raw == 0] == 255).all() and (mask[raw > 0] == raw[raw > 0] - 1).all()
    dm = ADE20KDataModule(str(root), split_dir=str(tmp_path / "splits"))
    assert dm.num_classes == 150 and dm.classes[1] == "building" and len(dm.train_names()) == 4
    _png(root / "annotations" / "training" / "ADE_train_00000001.png",
         np.full((40, 56), 200, np.uint8))  # fmt: skip
    with pytest.raises(DataFormatError, match=r"ADE_train_00000001\.png.*classes 0\.\.150"):
        ADE20KDataset(root)[0]
    (root / "objectInfo150.txt").write_text("Idx\tRatio\tTrain\tVal\tName\n1\t0.1\t1\t1\twall\n")
    with pytest.raises(DataFormatError, match="expected Idx 1..150"):
        read_object_info(root / "objectInfo150.txt")
