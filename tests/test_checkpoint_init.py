"""Checkpoint init of fine-tuning models: decoder parts and extra pretraining input channels."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import segmentation_models_pytorch as smp
import timm
import torch

from contraseg.lightning_modules import SegmentationFineTune
from contraseg.lightning_modules.components import checkpoint_init
from contraseg.lightning_modules.components.networks import UNET_CHANNELS


def dense_checkpoint(tmp_path: Path, arch: str = "DeepLabV3Plus") -> tuple[Path, dict]:
    """A contraseg dense-model checkpoint (``net.*``) with every tensor randomised."""
    torch.manual_seed(0)
    extra = {"decoder_channels": UNET_CHANNELS} if arch == "Unet" else {}  # the project's U-Net
    net = getattr(smp, arch)(encoder_name="tu-resnet18", encoder_weights=None, classes=2, **extra)
    state = {
        k: torch.rand_like(v) + 0.5 if v.is_floating_point() else v + 7
        for k, v in net.state_dict().items()
    }
    path = tmp_path / f"{arch}.ckpt"
    torch.save({"state_dict": {f"net.{k}": v for k, v in state.items()}}, path)
    return path, state


def backbone_checkpoint(tmp_path: Path, in_chans: int) -> tuple[Path, dict]:
    """A contraseg pretraining checkpoint (``backbone.model.*``) of a timm resnet18."""
    torch.manual_seed(1)
    state = timm.create_model("resnet18", in_chans=in_chans, num_classes=0).state_dict()
    path = tmp_path / f"backbone_{in_chans}ch.ckpt"
    torch.save({"state_dict": {f"backbone.model.{k}": v for k, v in state.items()}}, path)
    return path, state


def finetune(seed: int = 3, **kwargs) -> SegmentationFineTune:
    torch.manual_seed(seed)
    return SegmentationFineTune(num_classes=2, **kwargs)


def test_checkpoint_prefixes() -> None:
    # image-level tasks (``backbone.model.`` in checkpoints written before 0.2), smp tasks, timm
    assert checkpoint_init.CHECKPOINT_PREFIXES == (
        "encoder.model.", "backbone.model.", "net.encoder.model.", ""
    )


def test_aspp_only_from_deeplab_checkpoint(tmp_path: Path) -> None:
    path, ckpt = dense_checkpoint(tmp_path)
    ft, fresh = finetune(init_checkpoint=str(path), init_decoder=["aspp"]), finetune()
    report = ft.init_report
    aspp = [k for k in ft.net.decoder.state_dict() if k.startswith("aspp.")]
    assert report["loaded"][-len(aspp) :] == [f"decoder.{k}" for k in aspp]
    assert report["prefix"] == ["net.encoder.model."] and len(report["loaded"]) == 120 + len(aspp)
    assert not report["shape_mismatch"] and not report["missing"]
    assert not report["sliced_input_channels"]
    ref = fresh.net.decoder.state_dict()
    for name, value in ft.net.decoder.state_dict().items():
        expected = ckpt[f"decoder.{name}"] if name in aspp else ref[name]
        assert torch.equal(value, expected), name
    for name, value in ft.net.segmentation_head.state_dict().items():  # never loaded
        assert torch.equal(value, fresh.net.segmentation_head.state_dict()[name])
        assert not torch.equal(value, ckpt[f"segmentation_head.{name}"])
    assert not any("segmentation_head" in n for names in report.values() for n in names)


def test_whole_unet_decoder(tmp_path: Path) -> None:
    path, ckpt = dense_checkpoint(tmp_path, "Unet")
    ft = finetune(architecture="unet", init_checkpoint=str(path), init_decoder=[""])
    decoder = ft.net.decoder.state_dict()
    assert sum(n.startswith("decoder.") for n in ft.init_report["loaded"]) == len(decoder)
    for name, value in decoder.items():
        assert torch.equal(value, ckpt[f"decoder.{name}"]), name
    conv1 = ft.net.encoder.model.conv1.weight
    assert torch.equal(conv1, ckpt["encoder.model.conv1.weight"])
    assert not torch.equal(ft.net.segmentation_head[0].weight, ckpt["segmentation_head.0.weight"])


def test_glcnet_checkpoint_aspp(tmp_path: Path) -> None:
    from contraseg.lightning_modules import GLCNet

    glc = GLCNet(encoder="resnet18")
    path = tmp_path / "glcnet.ckpt"
    torch.save({"state_dict": glc.state_dict()}, path)
    ft = finetune(init_checkpoint=str(path), init_decoder=["aspp"])
    assert not ft.init_report["shape_mismatch"] and not ft.init_report["missing"]
    assert torch.equal(ft.net.decoder.aspp[2].weight, glc.net.decoder.aspp[2].weight)


@pytest.mark.parametrize("prefixes", [[""], ["aspp"]])
def test_other_architecture_decoder_raises(tmp_path: Path, prefixes: list[str]) -> None:
    path, _ = dense_checkpoint(tmp_path)  # DeepLabV3+ checkpoint into a U-Net
    with pytest.raises(ValueError, match="another smp architecture"):
        finetune(architecture="unet", init_checkpoint=str(path), init_decoder=prefixes)


def test_init_decoder_needs_decoder_tensors(tmp_path: Path) -> None:
    path, _ = backbone_checkpoint(tmp_path, 3)
    with pytest.raises(ValueError, match=re.escape(str(path))):
        finetune(init_checkpoint=str(path), init_decoder=["aspp"])
    with pytest.raises(ValueError, match="needs model.init_checkpoint"):
        finetune(init_decoder=["aspp"])


def test_extra_input_channels_are_sliced(tmp_path: Path) -> None:
    path, ckpt = backbone_checkpoint(tmp_path, 4)
    ft = finetune(in_channels=3, init_checkpoint=str(path))
    report = ft.init_report
    assert report["sliced_input_channels"] == ["conv1.weight"] and not report["shape_mismatch"]
    assert len(report["loaded"]) == 119 and "conv1.weight" not in report["loaded"]
    assert torch.equal(ft.net.encoder.model.conv1.weight, ckpt["conv1.weight"][:, :3])
    assert ft.eval()(torch.rand(1, 3, 32, 32)).shape == (1, 2, 32, 32)  # runs on 3 channels
    with pytest.raises(ValueError, match="1 shape mismatch.*strict_init false"):
        finetune(in_channels=3, init_checkpoint=str(path), slice_input_channels=False)
    off = finetune(in_channels=3, init_checkpoint=str(path), slice_input_channels=False,
                   strict_init=False)
    assert off.init_report["shape_mismatch"] == ["conv1.weight"]
    assert not off.init_report["sliced_input_channels"]


def test_fewer_input_channels_is_a_mismatch(tmp_path: Path) -> None:
    path, _ = backbone_checkpoint(tmp_path, 2)
    with pytest.raises(ValueError, match="1 shape mismatch"):
        finetune(in_channels=3, init_checkpoint=str(path))
    report = finetune(in_channels=3, init_checkpoint=str(path), strict_init=False).init_report
    assert report["shape_mismatch"] == ["conv1.weight"] and not report["sliced_input_channels"]
    assert len(report["loaded"]) == 119
