"""CLAWS: Otsu / excess green, attention masks, weak labels, the loss, GMM evaluation."""

from __future__ import annotations

import math
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from sklearn.datasets import make_blobs

from contraseg.callbacks.cluster_eval import ClusterEvaluation, gmm_scores
from contraseg.datamodules import SyntheticDataModule
from contraseg.datamodules.attention import AttentionMaskDataset, excess_green_mask, otsu_threshold
from contraseg.datamodules.datasets.textured_scenes import SceneSpec, TexturedScenes
from contraseg.datamodules.transforms import ViewAugmentation
from contraseg.lightning_modules import CLAWS
from contraseg.lightning_modules.components.heads import Projector


def _brute_force_otsu(values: np.ndarray, bins: int = 256) -> float:
    lo, hi = values.min(), values.max()
    edges = lo + np.arange(1, bins) * (hi - lo) / bins
    best, best_t = -1.0, lo
    for t in edges:
        a, b = values[values < t], values[values >= t]
        if len(a) == 0 or len(b) == 0:
            continue
        score = len(a) * len(b) * (a.mean() - b.mean()) ** 2
        if score > best:
            best, best_t = score, t
    return float(best_t)


def test_otsu_matches_brute_force_on_a_bimodal_histogram() -> None:
    rng = np.random.default_rng(0)
    values = np.concatenate([rng.normal(0.2, 0.05, 3000), rng.normal(0.7, 0.1, 1000)])
    ours = otsu_threshold(torch.from_numpy(values).float())
    ref = _brute_force_otsu(values.astype(np.float32))
    step = (values.max() - values.min()) / 256
    assert abs(ours - ref) <= step + 1e-6  # the same split up to one bin (histc binning)
    assert 0.3 < ours < 0.55
    assert otsu_threshold(torch.full((10,), 3.0)) == 3.0


def test_excess_green_mask_finds_the_plant() -> None:
    image = torch.empty(3, 40, 40, dtype=torch.uint8)
    image[0], image[1], image[2] = 120, 90, 60  # brown soil
    noise = torch.randint(0, 15, (3, 40, 40), generator=torch.Generator().manual_seed(0))
    image = (image + noise).to(torch.uint8)
    image[:, 10:25, 5:30] = torch.tensor([40, 150, 50], dtype=torch.uint8)[:, None, None]
    mask = excess_green_mask(image)
    expected = torch.zeros(40, 40, dtype=torch.long)
    expected[10:25, 5:30] = 1
    assert torch.equal(mask, expected)
    with pytest.raises(ValueError, match="C>=3"):
        excess_green_mask(torch.zeros(1, 4, 4))


def test_attention_masks_travel_with_the_views() -> None:
    dm = SyntheticDataModule(num_train=8, num_val=4, image_size=32, batch_size=4, num_workers=0,
                             attention_mask="exg", augment=ViewAugmentation(size=32))  # fmt: skip
    dm.setup("fit")
    raw = dm._raw_datasets()[0]
    wrapped = AttentionMaskDataset(raw)
    item = wrapped[3]
    assert torch.equal(item["mask"], excess_green_mask(raw[3]["image"]))
    ev = dm.eval_dataset("train")[3]  # eval views: no crop at image size, the same mask
    assert torch.equal(ev["mask"], item["mask"])
    batch = next(iter(dm.train_dataloader()))
    assert len(batch["masks"]) == 2 and batch["masks"][0].shape == (4, 32, 32)
    assert set(batch["masks"][0].unique().tolist()) <= {0, 1}
    with pytest.raises(ValueError, match="data.attention_mask"):
        SyntheticDataModule(attention_mask="ndvi")


def _model(**kw) -> CLAWS:
    args = dict(encoder="resnet18", projector=Projector([32], 8),
                probe_classes=3, temperature=0.5)  # fmt: skip
    return CLAWS(**{**args, **kw})


def test_attend_zeroes_background_and_none_is_identity() -> None:
    images = torch.randn(2, 3, 4, 4)
    masks = torch.tensor([[0, 1, 2, 255]] * 4).repeat(2, 1, 1)
    out = _model(background_classes=[0]).attend(images, masks)
    keep = ((masks != 0) & (masks != 255))[:, None].float()
    assert torch.equal(out, images * keep)
    assert torch.equal(_model(attention="none").attend(images, None), images)
    with pytest.raises(ValueError, match="needs masks"):
        _model().attend(images, None)
    with pytest.raises(ValueError, match="model.attention"):
        _model(attention="soft")


def test_weak_labels_fraction_and_determinism() -> None:
    model = _model(weak_label_fraction=0.3, weak_label_seed=1)
    index = torch.arange(4000)
    labels = index % 5
    weak = model.weak_labels(labels, index)
    share = (weak >= 0).float().mean().item()
    assert abs(share - 0.3) < 4 * math.sqrt(0.3 * 0.7 / 4000)
    assert torch.equal(weak[weak >= 0], labels[weak >= 0])
    assert torch.equal(weak, model.weak_labels(labels, index))
    assert (model.weak_labels(torch.full((10,), -1), torch.arange(10)) == -1).all()
    assert (_model(weak_label_fraction=1.0).weak_labels(labels, index) >= 0).all()
    assert (_model(weak_label_fraction=0.0).weak_labels(labels, index) == -1).all()


def test_loss_is_supcon_over_weak_classes_and_instances() -> None:
    torch.manual_seed(0)
    model = _model(weak_label_fraction=0.5, attention="mask")
    g = torch.Generator().manual_seed(1)
    views = [torch.randn(6, 3, 32, 32, generator=g) for _ in range(2)]
    masks = [torch.randint(0, 3, (6, 32, 32), generator=g) for _ in range(2)]
    batch = {"views": views, "masks": masks, "label": torch.tensor([0, 1, 0, 1, 2, 2]),
             "sample_index": torch.arange(10, 16)}  # fmt: skip
    out = model.training_loss(batch)
    weak = model.weak_labels(batch["label"], batch["sample_index"])
    assert 0 < (weak >= 0).sum() < 6
    with torch.no_grad():
        x = torch.cat([model.attend(v, m) for v, m in zip(views, masks, strict=True)])
        z = F.normalize(model.projector(model.encoder(x)).double(), dim=1)
    ids = torch.where(weak >= 0, weak, -(batch["sample_index"] + 1)).repeat(2)
    total, count = 0.0, 0
    for a in range(12):  # naive SupCon loop
        pos = [p for p in range(12) if p != a and ids[p] == ids[a]]
        denom = sum(math.exp(float(z[a] @ z[b]) / 0.5) for b in range(12) if b != a)
        total += -sum(float(z[a] @ z[p]) / 0.5 - math.log(denom) for p in pos) / len(pos)
        count += 1
    assert out.loss.item() == pytest.approx(total / count, rel=1e-4)
    assert 0 < float(out.logs["foreground"]) < 1
    del batch["sample_index"]
    with pytest.raises(ValueError, match="sample_index"):
        model.training_loss(batch)


def test_gmm_scores_on_blobs_ignore_unlabelled() -> None:
    x, y = make_blobs(300, 10, centers=4, cluster_std=0.4, random_state=0)
    y = y.copy()
    y[:20] = -1
    nmi, ari, assignments = gmm_scores(x, y, pca_dims=4)
    assert nmi == pytest.approx(1.0) and ari == pytest.approx(1.0)
    assert assignments.shape == (300,) and len(np.unique(assignments)) == 4
    with pytest.raises(ValueError, match="two labelled"):
        gmm_scores(x[:3], np.full(3, -1))


class _Stub(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.device = torch.device("cpu")
        self.logged: dict[str, float] = {}

    def project(self, images: torch.Tensor) -> torch.Tensor:
        return images.flatten(1)[:, :6]

    def eval_inputs(self, batch: dict) -> torch.Tensor:
        return batch["image"] * 2

    def log(self, name: str, value: float, **_: object) -> None:
        self.logged[name] = value

    def all_gather(self, data: torch.Tensor) -> torch.Tensor:  # pragma: no cover - 1 rank
        return data[None]


class _Blobs(torch.utils.data.Dataset):
    def __init__(self) -> None:
        x, y = make_blobs(120, 12, centers=3, cluster_std=0.3, random_state=1)
        self.x, self.y = torch.from_numpy(x).float().view(120, 3, 2, 2), y

    def __len__(self) -> int:
        return 120

    def __getitem__(self, i: int) -> dict:
        return {"image": self.x[i], "label": int(self.y[i])}


def test_cluster_evaluation_logs_and_plots(tmp_path: Path) -> None:
    callback = ClusterEvaluation(every_n_epochs=1, map_samples=60)
    plugin = SimpleNamespace(val_step_context=torch.no_grad, convert_input=lambda x: x)
    trainer = SimpleNamespace(sanity_checking=False, current_epoch=0, global_step=7,
                              datamodule=SimpleNamespace(eval_dataset=lambda split: _Blobs()),
                              precision_plugin=plugin, global_rank=0, world_size=1,
                              is_global_zero=True, progress_bar_callback=None, loggers=[],
                              log_dir=str(tmp_path))  # fmt: skip
    module = _Stub()
    callback.on_validation_epoch_end(trainer, module)
    assert module.logged["cluster/nmi"] == pytest.approx(1.0)
    assert callback.last_scores["ari"] == pytest.approx(1.0)
    assert (tmp_path / "cluster_maps" / "epoch_0000.png").is_file()
    with pytest.raises(ValueError, match="space"):
        ClusterEvaluation(space="logits")


def test_textured_clutter_changes_background_only() -> None:
    plain = TexturedScenes(6, SceneSpec(image_size=64, clutter=5), seed=3)
    textured = TexturedScenes(6, SceneSpec(image_size=64, clutter=5, clutter_textured=True), seed=3)
    a, b = plain.render(list(range(6))), textured.render(list(range(6)))
    assert torch.equal(a["mask"], b["mask"]) and torch.equal(a["label"], b["label"])
    objects = (a["mask"] > 0)[:, None].expand_as(a["image"])
    assert torch.equal(a["image"][objects], b["image"][objects])
    assert not torch.equal(a["image"][~objects], b["image"][~objects])
