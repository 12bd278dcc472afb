"""Zhao, Hu and Lee LightningModules: losses on real labeled pretraining batches, stages."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import lightning as L
import pytest
import torch
import torch.nn.functional as F

from contraseg.datamodules import SyntheticSegmentationDataModule
from contraseg.datamodules.transforms import ViewAugmentation
from contraseg.lightning_modules import (
    AttentionGuidedContrast,
    PixelContrast,
    SegmentationFineTune,
    SupervisedLocalContrast,
)
from contraseg.lightning_modules.attention_contrast import sample_objects
from contraseg.lightning_modules.components.heads import Projector
from contraseg.lightning_modules.components.networks import resize_labels
from contraseg.lightning_modules.losses import (
    cross_image_pixel_contrastive_loss,
    distortion_pixel_contrastive_loss,
    nt_xent_loss,
    pixel_supcon_loss,
    within_image_pixel_contrastive_loss,
)
from contraseg.lightning_modules.losses.pixel_blocked import stride_sample
from contraseg.lightning_modules.losses.pixel_supcon import tiled_pixel_supcon_loss

SIZE = 32


PROJ = {"projector": Projector([32], 32)}


def _datamodule(tmp_path: Path, **kwargs: Any) -> SyntheticSegmentationDataModule:
    view = ViewAugmentation(size=SIZE, crop_scale=(0.5, 1.0), blur_prob=0.0,
                            mean=[0.5] * 3, std=[0.25] * 3)  # fmt: skip
    defaults = {"num_train": 64, "num_val": 4, "image_size": SIZE, "max_objects": 2,
                "batch_size": 6, "num_workers": 0, "pretrain_views": view,
                "pretrain_subset": "labeled", "label_fraction": 12,
                "split_dir": str(tmp_path / "splits")}  # fmt: skip
    defaults.update(kwargs)
    return SyntheticSegmentationDataModule(**defaults)


@pytest.fixture(scope="module")
def batch(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    dm = _datamodule(tmp_path_factory.mktemp("dm"))
    dm.setup("fit")
    return dm.on_after_batch_transfer(next(iter(dm.train_dataloader())))


def test_labeled_pretraining_subset(tmp_path: Path) -> None:
    dm = _datamodule(tmp_path)
    dm.setup("fit")
    dataset = dm.train_dataloader().dataset
    assert len(dataset) == 12 == len(dm.labeled_names())
    sample = dataset[0]
    assert set(sample) >= {"views", "masks", "index_maps", "source_size"}
    assert sample["source_size"].tolist() == [SIZE, SIZE]
    everything = _datamodule(tmp_path, pretrain_subset="all")
    assert len(everything.unlabeled_dataset(dm.pretrain_views)) == 64
    with pytest.raises(ValueError, match="pretrain_subset"):
        _datamodule(tmp_path, pretrain_subset="some")


def test_resize_labels_is_exact_nearest() -> None:
    labels = torch.arange(16).view(1, 4, 4)
    assert torch.equal(resize_labels(labels, (2, 2)), labels[:, ::2, ::2])
    assert resize_labels(labels, (4, 4)) is labels


# ----------------------------------------------------------------- Zhao et al.
@pytest.mark.parametrize("mode", ["cross_image", "within_image", "distortion"])
def test_pixel_contrast_modes_match_the_pure_losses(batch: dict[str, Any], mode: str) -> None:
    torch.manual_seed(0)
    model = PixelContrast(mode=mode, encoder="resnet18", **PROJ)
    model.eval()  # deterministic BN: the reference recomputes the projections
    torch.manual_seed(1)
    loss, _, _ = model.training_loss(batch)
    assert loss.isfinite() and loss.requires_grad
    with torch.no_grad():
        z1, z2 = model.project(torch.cat(batch["views"])).chunk(2)
    size = tuple(z1.shape[-2:])
    assert size == (SIZE // 4, SIZE // 4)  # DeepLabV3+ decoder resolution
    if mode == "distortion":
        i1, i2 = (resize_labels(m, size) for m in batch["index_maps"])
        expected = distortion_pixel_contrastive_loss(z1, z2, i1, i2, SIZE, 4)
    else:
        l1, l2 = (resize_labels(m, size) for m in batch["masks"])
        if mode == "within_image":
            expected = within_image_pixel_contrastive_loss(
                z1, l1
            ) + within_image_pixel_contrastive_loss(z2, l2)
        else:
            torch.manual_seed(1)
            perm = torch.randperm(l1.shape[0])
            expected = cross_image_pixel_contrastive_loss(z1, z2, l1, l2, perm)
    assert torch.allclose(loss, expected, atol=1e-5)


def test_distortion_accepts_one_source_width_per_image(batch: dict[str, Any]) -> None:
    torch.manual_seed(0)
    z1, z2 = torch.randn(2, 6, 8, 8, 8).unbind(0)
    i1, i2 = (resize_labels(m, (8, 8)) for m in batch["index_maps"])
    widths = torch.full((6,), SIZE)
    assert torch.allclose(
        distortion_pixel_contrastive_loss(z1, z2, i1, i2, widths, 4),
        distortion_pixel_contrastive_loss(z1, z2, i1, i2, SIZE, 4),
    )
    with pytest.raises(ValueError, match="source_width"):
        distortion_pixel_contrastive_loss(z1, z2, i1, i2, torch.full((6,), 0), 4)


def test_pixel_contrast_trains_encoder_and_decoder(batch: dict[str, Any]) -> None:
    model = PixelContrast(encoder="resnet18", loss_size=16, **PROJ)
    loss, _, _ = model.training_loss(batch)
    loss.backward()
    for part in (model.net.encoder, model.net.decoder, model.head):
        assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in part.parameters())
    assert model.project(batch["views"][0]).shape[-2:] == (16, 16)
    with pytest.raises(ValueError, match="masks"):
        model.training_loss({"views": batch["views"]})
    with pytest.raises(ValueError, match="mode"):
        PixelContrast(mode="pixel", encoder="resnet18")


# ----------------------------------------------------------------- Hu et al.
@pytest.mark.parametrize("memory_mode", ["stride", "block"])
def test_local_contrast_matches_pixel_supcon(batch: dict[str, Any], memory_mode: str) -> None:
    torch.manual_seed(0)
    model = SupervisedLocalContrast(encoder="resnet18", memory_mode=memory_mode, stride=2, block=8)
    model.eval()
    loss, logs, _ = model.training_loss(batch)
    assert loss.isfinite() and loss.requires_grad
    with torch.no_grad():
        z = F.normalize(model.head(model.decode(torch.cat(batch["views"]))), dim=1)
    labels = torch.cat(batch["masks"])
    assert z.shape[-2:] == labels.shape[-2:]  # U-Net decoder: full resolution
    anchors = (labels != 0) & (labels != 255)
    assert torch.isclose(logs["anchor_pixels"], anchors.float().mean())
    if memory_mode == "stride":
        emb, lab, _ = stride_sample(z, labels, 2)
        expected = pixel_supcon_loss(emb, lab, anchor_mask=anchors[:, ::2, ::2].reshape(-1))
    else:
        expected = tiled_pixel_supcon_loss(
            z, labels, 8, 0.1, anchor_mask=anchors
        )
    assert torch.allclose(loss, expected, atol=1e-5)


def test_local_contrast_background_is_never_an_anchor(batch: dict[str, Any]) -> None:
    model = SupervisedLocalContrast(encoder="resnet18", stride=4)
    background = {**batch, "masks": [torch.zeros_like(m) for m in batch["masks"]]}
    loss, logs, _ = model.training_loss(background)
    assert float(loss.detach()) == 0.0 and float(logs["anchor_pixels"]) == 0.0
    everyone = SupervisedLocalContrast(encoder="resnet18", stride=4, background_index=None)
    assert float(everyone.training_loss(background)[0].detach()) > 0


def test_three_stage_recipe_loads_every_stage(tmp_path: Path) -> None:
    """Stage 1 SimCLR encoder -> stage 2 local contrast -> stage 3 U-Net fine-tuning."""
    from contraseg.lightning_modules import SimCLR

    stage1 = SimCLR(encoder="resnet18")
    path1 = tmp_path / "stage1.ckpt"
    torch.save({"state_dict": stage1.state_dict()}, path1)
    stage2 = SupervisedLocalContrast(encoder="resnet18", init_checkpoint=str(path1))
    assert stage2.init_report is not None and not stage2.init_report["missing"]
    for name, value in stage1.encoder.model.state_dict().items():
        assert torch.equal(stage2.net.encoder.model.state_dict()[name], value)
    dm = _datamodule(tmp_path, batch_size=4)
    trainer = L.Trainer(max_steps=2, accelerator="cpu", logger=False, enable_checkpointing=False,
                        limit_val_batches=0, enable_progress_bar=False)  # fmt: skip
    trainer.fit(stage2, datamodule=dm)
    path2 = tmp_path / "stage2.ckpt"
    trainer.save_checkpoint(path2)
    stage3 = SegmentationFineTune(num_classes=3, architecture="unet", encoder="resnet18",
                                  init_checkpoint=str(path2), init_decoder=[""])  # fmt: skip
    report = stage3.init_report
    assert report is not None and not report["missing"] and not report["shape_mismatch"]
    for name, value in stage2.net.decoder.state_dict().items():
        assert torch.equal(stage3.net.decoder.state_dict()[name], value)


# ----------------------------------------------------------------- Lee et al.
def _naive_present(masks: list[torch.Tensor], min_pixels: int, exclude: set[int]) -> set:
    pairs = set()
    for b in range(masks[0].shape[0]):
        for k in range(256):
            if k in exclude or k == 255:
                continue
            if all(int((m[b] == k).sum()) >= min_pixels for m in masks):
                pairs.add((b, k))
    return pairs


def test_sample_objects_draws_classes_present_in_every_view(batch: dict[str, Any]) -> None:
    masks = batch["masks"]
    present = _naive_present(masks, 5, {0})
    torch.manual_seed(0)
    index, cls = sample_objects(masks, 10, min_pixels=5, exclude=[0])
    assert set(zip(index.tolist(), cls.tolist())) == present  # all present classes drawn
    index, cls = sample_objects(masks, 1, min_pixels=5, exclude=[0])
    drawn = list(zip(index.tolist(), cls.tolist()))
    assert set(drawn) <= present and len(set(index.tolist())) == len(drawn)
    assert set(index.tolist()) == {b for b, _ in present}  # each image with a class draws one
    with pytest.raises(ValueError):
        sample_objects(masks, 0)


def test_attention_guided_loss_is_supcon_over_highlighted_objects(batch: dict[str, Any]) -> None:
    torch.manual_seed(0)
    model = AttentionGuidedContrast(encoder="resnet18", objects_per_image=2,
                                    min_object_pixels=4, projector=Projector([64], 128))
    model.eval()
    torch.manual_seed(3)
    loss, logs, _ = model.training_loss(batch)
    assert loss.isfinite() and loss.requires_grad
    torch.manual_seed(3)
    index, cls = sample_objects(batch["masks"], 2, 4)
    assert float(logs["objects"]) == index.numel()
    inputs = [torch.cat([v[index], (m[index] == cls.view(-1, 1, 1)).unsqueeze(1).float()], 1)
              for v, m in zip(batch["views"], batch["masks"])]  # fmt: skip
    assert model.encoder.model.conv1.in_channels == 4
    with torch.no_grad():
        z = model.projector(model.encoder(torch.cat(inputs)))
        expected = nt_xent_loss(z, labels=cls.repeat(2), temperature=0.1)
    assert torch.allclose(loss.detach(), expected, atol=1e-5)
    # the attention channel matters: one image, two objects, two embeddings
    x = inputs[0][:1].clone()
    x2 = x.clone()
    x2[:, 3] = 1 - x2[:, 3]
    with torch.no_grad():
        assert not torch.allclose(model.encoder(x), model.encoder(x2))
    assert model.embed(batch["views"][0]).shape == (6, model.feature_dim)


def test_attention_stage_two_drops_the_attention_channel(tmp_path: Path) -> None:
    stage1 = AttentionGuidedContrast(encoder="resnet18", projector=Projector([32], 128))
    path = tmp_path / "lee.ckpt"
    torch.save({"state_dict": stage1.state_dict()}, path)
    model = SegmentationFineTune(num_classes=3, encoder="resnet18", init_checkpoint=str(path))
    report = model.init_report
    assert report is not None and report["sliced_input_channels"] == ["conv1.weight"]
    assert not report["shape_mismatch"] and not report["missing"]
    source = stage1.encoder.model.conv1.weight
    assert torch.equal(model.net.encoder.model.conv1.weight, source[:, :3])


def test_attention_guided_step_without_objects_touches_every_parameter(
    batch: dict[str, Any],
) -> None:
    """No drawable object: zero loss whose graph still reaches every parameter (DDP)."""
    model = AttentionGuidedContrast(encoder="resnet18", projector=Projector([32], 128))
    empty = {**batch, "masks": [torch.full_like(m, 255) for m in batch["masks"]]}
    loss, logs, _ = model.training_loss(empty)
    assert float(loss.detach()) == 0.0 and float(logs["objects"]) == 0.0
    loss.backward()
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)


def test_cli_pretrain_then_finetune_with_decoder(tmp_path: Path, monkeypatch) -> None:
    """The README recipe: pixelcontrast_quickstart.yaml, then finetune with init_decoder."""
    from contraseg.experiments.cli import main

    monkeypatch.chdir(tmp_path)
    configs = Path(__file__).resolve().parents[1] / "experiments" / "configs"
    tiny = ["--trainer.max_steps", "1", "--trainer.accelerator", "cpu",
            "--trainer.logger", "lightning.pytorch.loggers.CSVLogger",
            "--trainer.logger.save_dir", str(tmp_path / "logs"),
            "--data.init_args.num_train", "400", "--data.init_args.num_val", "4",
            "--data.init_args.num_workers", "0", "--data.init_args.batch_size", "4"]  # fmt: skip
    pre = main(["fit", "--config", str(configs / "pixelcontrast_quickstart.yaml"), *tiny,
                "--model.init_args.encoder", "resnet18"])  # fmt: skip
    ckpt = tmp_path / "outputs" / "pixelcontrast_quickstart" / "checkpoints" / "last.ckpt"
    assert pre.trainer.global_step == 1 and ckpt.is_file()
    ft = main(["fit", "--config", str(configs / "finetune_quickstart.yaml"), *tiny,
               "--trainer.limit_val_batches", "1", "--model.init_checkpoint", str(ckpt),
               "--model.init_decoder", '[""]'])  # fmt: skip
    report = ft.model.init_report
    assert report is not None and not report["missing"] and not report["shape_mismatch"]
    assert sum(n.startswith("decoder.") for n in report["loaded"]) == len(
        ft.model.net.decoder.state_dict()
    )
