"""Fine-tuning module: encoder init from contraseg checkpoints, freezing, metrics, windows."""

from __future__ import annotations

from pathlib import Path

import lightning as L
import pytest
import torch

from contraseg.datamodules import SyntheticSegmentationDataModule
from contraseg.lightning_modules import SegmentationFineTune, SimCLR
from contraseg.lightning_modules.components.heads import Projector


def simclr_checkpoint(tmp_path: Path, **kwargs) -> tuple[Path, SimCLR]:
    torch.manual_seed(0)
    model = SimCLR(projector=Projector([32], 8), **kwargs)
    path = tmp_path / "pretrain.ckpt"
    torch.save({"state_dict": model.state_dict()}, path)
    return path, model


def test_encoder_initialised_from_pretraining_checkpoint(tmp_path: Path) -> None:
    path, pre = simclr_checkpoint(tmp_path)
    ft = SegmentationFineTune(num_classes=4, init_checkpoint=str(path))
    report = ft.init_report
    assert len(report["loaded"]) == 120 and not report["shape_mismatch"] and not report["missing"]
    pre_sd = pre.encoder.model.state_dict()
    for name, value in ft.net.encoder.model.state_dict().items():
        assert torch.equal(value, pre_sd[name]), name
    random = SegmentationFineTune(num_classes=4)
    assert not torch.equal(random.net.encoder.model.conv1.weight, pre_sd["conv1.weight"])


def test_mismatched_stem_is_an_error_or_a_reported_partial_load(tmp_path: Path) -> None:
    path, _ = simclr_checkpoint(tmp_path, encoder_kwargs={"cifar_stem": True})
    with pytest.raises(ValueError, match=r"pretrain\.ckpt does not fit.*conv1\.weight"):
        SegmentationFineTune(num_classes=4, init_checkpoint=str(path))
    ft = SegmentationFineTune(num_classes=4, init_checkpoint=str(path), strict_init=False)
    assert ft.init_report["shape_mismatch"] == ["conv1.weight"]
    assert len(ft.init_report["loaded"]) == 119


def test_bad_checkpoints(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="init_checkpoint"):
        SegmentationFineTune(num_classes=4, init_checkpoint=str(tmp_path / "none.ckpt"))
    other = tmp_path / "other.ckpt"
    torch.save({"state_dict": {"foo.weight": torch.zeros(1)}}, other)
    with pytest.raises(ValueError, match="no encoder weights"):
        SegmentationFineTune(num_classes=4, init_checkpoint=str(other))


def test_fit_frozen_encoder_with_sliding_window(tmp_path: Path) -> None:
    dm = SyntheticSegmentationDataModule(num_train=32, num_val=4, image_size=32, batch_size=4,
                                         num_workers=0, label_fraction=8, crop_size=32,
                                         split_dir=str(tmp_path / "splits"))  # fmt: skip
    model = SegmentationFineTune(num_classes=dm.num_classes, freeze_encoder=True,
                                 sliding_window=16, sliding_stride=8)  # fmt: skip
    before = {k: v.clone() for k, v in model.net.encoder.state_dict().items() if "weight" in k}
    trainer = L.Trainer(max_epochs=1, accelerator="cpu", logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False)  # fmt: skip
    trainer.fit(model, dm)
    metrics = trainer.callback_metrics
    for key in ("val/miou", "val/overall_accuracy", "val/kappa", "val/mean_f1"):
        assert 0 <= float(metrics[key]) <= 1 or key == "val/kappa"
    assert "val/iou/background" in metrics  # class names taken from the datamodule
    after = model.net.encoder.state_dict()
    assert all(torch.equal(v, after[k]) for k, v in before.items())
    assert model.net.decoder.parameters().__next__().requires_grad


def test_cli_predict_writes_colour_pngs(tmp_path: Path, monkeypatch) -> None:
    """README: `predict ... --trainer.callbacks+=contraseg.callbacks.ColourPredictionWriter`."""
    import numpy as np
    from PIL import Image

    from contraseg.experiments.cli import main

    monkeypatch.chdir(tmp_path)
    config = Path(__file__).resolve().parents[1] / "experiments/configs/finetune_quickstart.yaml"
    main(["predict", "--config", str(config), "--model.init_checkpoint", "null",
          "--trainer.logger", "false", "--trainer.accelerator", "cpu",
          "--data.num_val", "6", "--data.num_workers", "0",
          "--trainer.callbacks+=contraseg.callbacks.ColourPredictionWriter",
          "--trainer.callbacks.output_dir", str(tmp_path / "preds")])  # fmt: skip
    pngs = sorted((tmp_path / "preds").glob("*.png"))
    assert [p.stem for p in pngs] == [f"{i:06d}" for i in range(6)]
    labels = np.array(Image.open(pngs[0]))
    assert labels.shape == (32, 32) and labels.max() < 7


def test_encoder_from_plain_timm_weights(tmp_path: Path) -> None:
    import timm

    torch.manual_seed(2)
    ref = timm.create_model("resnet18")  # with its classifier, as published weights are
    path = tmp_path / "resnet18_imagenet.pth"
    torch.save(ref.state_dict(), path)
    ft = SegmentationFineTune(num_classes=3, init_checkpoint=str(path))
    assert ft.init_report["prefix"] == [""] and len(ft.init_report["loaded"]) == 120
    assert torch.equal(ft.net.encoder.model.conv1.weight, ref.conv1.weight)


def test_potsdam_unknown_colours_are_reported(tmp_path: Path) -> None:
    import numpy as np
    import tifffile

    from contraseg.datamodules.datasets.potsdam import PotsdamCrops

    for folder in ("train_RGBIR", "train_lbl"):
        (tmp_path / folder).mkdir()
    tifffile.imwrite(tmp_path / "train_RGBIR" / "a.tif", np.zeros((8, 8, 4), np.uint8))
    label = np.full((8, 8, 3), 255, np.uint8)
    label[0, :3] = (12, 34, 56)
    tifffile.imwrite(tmp_path / "train_lbl" / "a.tif", label)
    (tmp_path / "train_RGBIR.txt").write_text("a.tif\n")
    (tmp_path / "train_lbl.txt").write_text("a.tif\n")
    with pytest.warns(UserWarning, match=r"a\.tif: 3 pixels with colours outside"):
        item = PotsdamCrops(tmp_path, "train")[0]
    assert int((item["mask"] == 255).sum()) == 3


def _naive_soft_dice(logits: torch.Tensor, mask: torch.Tensor, classes: int) -> torch.Tensor:
    """1 - mean over classes present (in target or not, as smp) of 2|P∩T| / (|P| + |T|)."""
    p = logits.softmax(1)
    t = torch.nn.functional.one_hot(mask, classes).permute(0, 3, 1, 2).float()
    inter = (p * t).sum((0, 2, 3))
    card = (p + t).sum((0, 2, 3))
    dice = (2 * inter) / card.clamp_min(1e-7)
    present = t.sum((0, 2, 3)) > 0  # smp zeroes the loss of classes absent from the target
    return ((1 - dice) * present).mean()


def test_dice_and_combined_losses_against_a_naive_reference() -> None:
    torch.manual_seed(0)
    logits = torch.randn(2, 4, 8, 8)
    mask = torch.randint(0, 3, (2, 8, 8))  # class 3 absent
    ce = SegmentationFineTune(num_classes=4)
    dice = SegmentationFineTune(num_classes=4, loss="dice")
    both = SegmentationFineTune(num_classes=4, loss="ce+dice")
    expected_ce = torch.nn.functional.cross_entropy(logits, mask)
    expected_dice = _naive_soft_dice(logits, mask, 4)
    assert torch.allclose(ce.segmentation_loss(logits, mask), expected_ce)
    assert torch.allclose(dice.segmentation_loss(logits, mask), expected_dice, atol=1e-5)
    assert torch.allclose(both.segmentation_loss(logits, mask), expected_ce + expected_dice,
                          atol=1e-5)  # fmt: skip
    perfect = torch.nn.functional.one_hot(mask, 4).permute(0, 3, 1, 2).float() * 50
    assert float(dice.segmentation_loss(perfect, mask)) < 1e-4
    with pytest.raises(ValueError, match="model.loss"):
        SegmentationFineTune(num_classes=4, loss="focal")


def test_attention_channel_keeps_the_pretrained_first_convolution(tmp_path: Path) -> None:
    """Lee et al.'s official protocol: the prior/attention channel stays an input."""
    path, pre = simclr_checkpoint(tmp_path, in_channels=4)  # image + attention channel
    kept = SegmentationFineTune(num_classes=4, init_checkpoint=str(path),
                                attention_channel="ones")  # fmt: skip
    conv = kept.net.encoder.model.conv1.weight
    assert conv.shape[1] == 4 and torch.equal(conv, pre.encoder.model.conv1.weight)
    dropped = SegmentationFineTune(num_classes=4, init_checkpoint=str(path))
    assert dropped.net.encoder.model.conv1.weight.shape[1] == 3
    images = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        out = kept.eval()(images)
        manual = kept.net(torch.cat([images, torch.ones(2, 1, 32, 32)], 1))
    assert out.shape == (2, 4, 32, 32) and torch.allclose(out, manual)
    assert kept.embed(images).shape == (2, 512)


def test_aspp_rates_follow_output_stride_16_and_unet_ends_at_64_channels() -> None:
    from contraseg.lightning_modules.components.networks import build_segmentation_net

    def rates(net: torch.nn.Module) -> list[int]:
        return sorted({m.dilation[0] for m in net.decoder.aspp.modules()
                       if isinstance(m, torch.nn.Conv2d) and m.dilation[0] > 1})  # fmt: skip

    assert rates(SegmentationFineTune(num_classes=3).net) == [6, 12, 18]
    assert rates(build_segmentation_net("deeplabv3plus", "resnet18", 3, 2,
                                        aspp_rates=(12, 24, 36))) == [12, 24, 36]  # fmt: skip
    unet = SegmentationFineTune(num_classes=3, architecture="unet").net
    assert unet.decoder.blocks[-1].conv2[0].out_channels == 64
    with pytest.raises(ValueError, match="aspp_rates"):
        build_segmentation_net("deeplabv3plus", "resnet18", 3, 2, aspp_rates=(6, 12))
    with pytest.raises(ValueError, match="5 widths"):
        build_segmentation_net("unet", "resnet18", 3, 2, decoder_channels=(64, 32))
