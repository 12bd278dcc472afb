"""GLCNet LightningModule: loss on real pretraining batches, switches, gradients, fine-tune init."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import lightning as L
import pytest
import torch

from contraseg.datamodules import SyntheticSegmentationDataModule
from contraseg.datamodules.transforms import ViewAugmentation
from contraseg.lightning_modules import SegmentationFineTune
from contraseg.lightning_modules.components.heads import Projector
from contraseg.lightning_modules.glcnet import GLCNet

SIZE, PATCH = 32, 8


def _datamodule(**kwargs: Any) -> SyntheticSegmentationDataModule:
    views = [
        ViewAugmentation(size=SIZE, crop_scale=(0.4, 1.0), hflip_prob=0.0, jitter_prob=0.0,
                         grayscale_prob=0.0, blur_prob=0.0, mean=[0.5] * 3, std=[0.25] * 3),
        ViewAugmentation(size=SIZE, crop_scale=(0.4, 1.0), vflip_prob=0.5, rot90_prob=0.8,
                         mean=[0.5] * 3, std=[0.25] * 3),
    ]  # fmt: skip
    defaults = {"num_train": 16, "num_val": 4, "image_size": SIZE, "max_objects": 1,
                "batch_size": 8, "num_workers": 0, "pretrain_views": views}  # fmt: skip
    defaults.update(kwargs)
    return SyntheticSegmentationDataModule(**defaults)


@pytest.fixture(scope="module")
def batch() -> dict[str, Any]:
    dm = _datamodule()
    dm.setup("fit")
    return dm.on_after_batch_transfer(next(iter(dm.train_dataloader())))


def _model(**kwargs: Any) -> GLCNet:
    torch.manual_seed(0)
    return GLCNet(encoder="resnet18", patch_size=PATCH, **kwargs)


def test_loss_is_finite_and_logs_parts(batch: dict[str, Any]) -> None:
    assert len(batch["views"]) == 2 and len(batch["index_maps"]) == 2
    assert batch["index_maps"][0].shape == (8, SIZE, SIZE)
    model = _model()
    loss, logs, _ = model.training_loss(batch)
    assert loss.isfinite() and loss.requires_grad
    assert set(logs) == {"loss_global", "loss_local", "valid_patches"}
    assert 0 < float(logs["valid_patches"]) <= 1
    expected = 0.5 * logs["loss_global"] + 0.5 * logs["loss_local"]
    assert torch.allclose(loss.detach(), expected, atol=1e-5)


@pytest.mark.parametrize(
    ("switches", "parts"),
    [
        ({"use_style": False}, {"loss_global", "loss_local"}),
        ({"use_global": False}, {"loss_local"}),
        ({"use_local": False}, {"loss_global"}),
    ],
)
def test_switches_change_the_loss_parts(
    batch: dict[str, Any], switches: dict[str, bool], parts: set[str]
) -> None:
    model = _model(**switches)
    loss, logs, _ = model.training_loss(batch)
    assert loss.isfinite()
    assert {k for k in logs if k.startswith("loss_")} == parts
    assert (model.global_head is None) == (not switches.get("use_global", True))
    assert (model.local_head is None) == (not switches.get("use_local", True))
    if len(parts) == 1:
        assert torch.allclose(loss.detach(), logs[next(iter(parts))])
    if switches.get("use_style") is False:  # GAP input: C instead of 2C features
        assert (
            model.global_head.net[0].in_features
            == model.net.decoder.aspp[0].convs[0][0].out_channels
        )


def test_both_parts_off_is_rejected() -> None:
    with pytest.raises(ValueError, match="use_global or model.use_local"):
        GLCNet(encoder="resnet18", use_global=False, use_local=False)


def test_patch_must_be_smaller_than_views(batch: dict[str, Any]) -> None:
    model = GLCNet(encoder="resnet18", patch_size=SIZE)
    with pytest.raises(ValueError, match="smaller than the views"):
        model.training_loss(batch)


def test_gradients_reach_every_part(batch: dict[str, Any]) -> None:
    model = _model()
    loss, _, _ = model.training_loss(batch)
    loss.backward()
    decoder = model.net.decoder
    parts = {"encoder": model.net.encoder, "aspp": decoder.aspp, "decoder": decoder.block2,
             "decoder.block1": decoder.block1, "global_head": model.global_head,
             "local_head": model.local_head}  # fmt: skip
    for name, part in parts.items():
        grads = [p.grad for p in part.parameters() if p.requires_grad]
        assert grads and all(g is not None for g in grads), name
        assert any(g.abs().sum() > 0 for g in grads), name


@pytest.mark.parametrize("tap", ["official", "block2"])
def test_encode_matches_smp_decoder(batch: dict[str, Any], tap: str) -> None:
    model = _model(local_tap=tap).eval()
    with torch.no_grad():
        images = batch["views"][0]
        _, decoded = model.encode(images)
        reference = model.net.decoder(model.net.encoder(images))
        if tap == "official":  # smp's decoder, then 3x3 conv-BN-ReLU and a linear 1x1 to 64
            reference = model.local_decoder(reference)
            assert decoded.shape[1] == 64 and bool((decoded < 0).any())  # linear, not post-ReLU
        else:
            assert model.local_decoder is None and decoded.shape[1] == 256
        assert torch.allclose(decoded, reference, atol=1e-5)
        assert model.embed(images).shape == (8, model.feature_dim)


def test_official_heads_have_no_batch_norm_and_official_widths() -> None:
    model = _model()
    kinds = {type(m).__name__ for m in model.global_head.modules()}
    assert "BatchNorm1d" not in kinds
    linear = [m for m in model.global_head.modules() if isinstance(m, torch.nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linear] == [(512, 256), (256, 64)]
    linear = [m for m in model.local_head.modules() if isinstance(m, torch.nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linear] == [(64, 64), (64, 64)]
    with_bn = _model(projector=Projector([256], 64, batch_norm=True))
    assert any(isinstance(m, torch.nn.BatchNorm1d) for m in with_bn.global_head.modules())


def test_views_get_their_own_batch_norm_statistics(batch: dict[str, Any]) -> None:
    """Separate passes (official) and one joint pass agree in eval mode, not in training."""
    same = {**batch, "views": [batch["views"][0], batch["views"][0].flip(-1)]}
    losses = {}
    for joint in (False, True):
        for train in (True, False):
            model = _model(joint_forward=joint, use_local=False).train(train)
            torch.manual_seed(1)
            with torch.no_grad():
                losses[joint, train] = float(model.training_loss(same).loss)
    assert losses[False, False] == pytest.approx(losses[True, False], abs=1e-5)
    assert abs(losses[False, True] - losses[True, True]) > 1e-4


def test_fit_then_finetune_init_loads_the_encoder(tmp_path: Path) -> None:
    model = _model()
    trainer = L.Trainer(
        max_steps=2, accelerator="cpu", logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, limit_val_batches=1,
        default_root_dir=tmp_path,
    )  # fmt: skip
    trainer.fit(model, datamodule=_datamodule())
    assert trainer.global_step == 2
    assert trainer.callback_metrics["train/loss"].isfinite()
    for key in ("train/loss_global", "train/loss_local", "train/valid_patches"):
        assert key in trainer.callback_metrics
    ckpt = tmp_path / "glcnet.ckpt"
    trainer.save_checkpoint(ckpt)

    finetune = SegmentationFineTune(num_classes=7, encoder="resnet18", init_checkpoint=str(ckpt))
    report = finetune.init_report
    assert report["prefix"] == ["net.encoder.model."]
    assert not report["missing"] and not report["shape_mismatch"]
    source = model.net.encoder.model.state_dict()
    target = finetune.net.encoder.model.state_dict()
    assert len(report["loaded"]) == len(target)
    for name, value in target.items():
        assert torch.equal(value, source[name]), name
