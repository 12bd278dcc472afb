"""`contraseg export` and `contraseg.load_encoder` / `load_network`: round trips from real runs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import timm
import torch
from conftest import quickstart_tiny

import contraseg
from contraseg.experiments.console import main as contraseg_main
from contraseg.experiments.export import load_task
from contraseg.lightning_modules.components.export import plain_timm_state

CONFIGS = Path(__file__).resolve().parents[1] / "experiments" / "configs"


def test_features_only_names_map_to_the_plain_timm_model() -> None:
    torch.manual_seed(0)
    features = timm.create_model("convnext_atto", features_only=True, pretrained=False)
    plain = timm.create_model("convnext_atto", num_classes=0, pretrained=False)
    state = plain_timm_state(features, plain)
    assert "stages.0.blocks.0.conv_dw.weight" in state and not any("stages_" in k for k in state)
    missing, unexpected = plain.load_state_dict(state, strict=False)
    assert not unexpected and sorted(missing) == ["head.norm.bias", "head.norm.weight"]
    x = torch.randn(1, 3, 64, 64)
    assert torch.allclose(plain.eval().forward_intermediates(x, intermediates_only=True)[-1],
                          features.eval()(x)[-1], atol=1e-5)  # fmt: skip
    with pytest.raises(ValueError, match="no counterpart"):
        plain_timm_state(features, timm.create_model("resnet18", num_classes=0))


@pytest.mark.slow
def test_export_of_a_pretraining_run_round_trips(tmp_path: Path, monkeypatch, capsys) -> None:
    monkeypatch.chdir(tmp_path)
    assert contraseg_main(["fit", "--config", str(CONFIGS / "quickstart.yaml"),
                           *quickstart_tiny(16), "--trainer.max_epochs", "1"]) == 0  # fmt: skip
    ckpt = tmp_path / "outputs" / "quickstart" / "checkpoints" / "last.ckpt"
    assert contraseg_main(["export", "--ckpt", str(ckpt), "--out", "exported"]) == 0
    assert "exported contraseg.lightning_modules.SimCLR" in capsys.readouterr().out
    manifest = json.loads((tmp_path / "exported" / "contraseg.json").read_text())
    assert manifest["encoder"]["timm_name"] == "resnet18" and "network" not in manifest
    assert manifest["source"]["global_step"] == 2 and len(manifest["source"]["sha256"]) == 64
    encoder = contraseg.load_encoder(tmp_path / "exported")
    assert type(encoder).__name__ == "ResNet" and encoder.num_classes == 0
    task, _ = load_task(ckpt)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(encoder(x), task.encoder(x))
    # plain files: torch and timm alone rebuild it (what docs/export.md shows)
    state = torch.load(tmp_path / "exported" / "encoder.pth", weights_only=True)
    plain = timm.create_model("resnet18", num_classes=0, in_chans=3)
    plain.load_state_dict(state)
    with torch.no_grad():
        assert torch.equal(plain.eval()(x), task.encoder(x))
    with pytest.raises(ValueError, match="encoder only"):
        contraseg.load_network(tmp_path / "exported")


@pytest.mark.slow
def test_export_of_a_segmentation_run_round_trips(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    contraseg_main(["fit", "--config", str(CONFIGS / "finetune_quickstart.yaml"),
                    "--model.init_checkpoint", "null",
                    "--trainer.logger=lightning.pytorch.loggers.CSVLogger",
                    "--trainer.logger.save_dir", "csv",
                    "--trainer.accelerator", "cpu", "--trainer.max_epochs", "1",
                    "--data.num_val", "4", "--data.num_workers", "0",
                    "--trainer.enable_progress_bar", "false"])  # fmt: skip
    ckpt = next((tmp_path / "outputs").rglob("last.ckpt"))
    assert contraseg_main(["export", "--ckpt", str(ckpt), "--out", "exported"]) == 0
    manifest = json.loads((tmp_path / "exported" / "contraseg.json").read_text())
    network = manifest["network"]
    assert network["architecture"] == "deeplabv3plus" and network["classes"] == 7
    assert network["class_names"] and len(network["class_names"]) == 7
    assert manifest["encoder"]["timm_kwargs"] == {"output_stride": 16}  # DeepLabV3+'s dilation
    task, _ = load_task(ckpt)
    net = contraseg.load_network(tmp_path / "exported")
    encoder = contraseg.load_encoder(tmp_path / "exported")
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(net(x), task.net(x))
        deepest = task.net.encoder(x)[-1]
        assert torch.allclose(encoder.forward_features(x), deepest, atol=1e-6)
    # docs/export.md: the encoder file initialises another smp architecture over tu-resnet18
    import segmentation_models_pytorch as smp

    unet = smp.Unet(encoder_name="tu-resnet18", encoder_weights=None, classes=3)
    unet.encoder.model.load_state_dict(torch.load(tmp_path / "exported" / "encoder.pth",
                                                  weights_only=True))  # fmt: skip


def test_export_errors_name_the_file(tmp_path: Path) -> None:
    with pytest.raises(SystemExit) as exc:
        contraseg_main(["export", "--ckpt", str(tmp_path / "none.ckpt"), "--out", "x"])
    assert exc.value.code == 2
    plain = tmp_path / "plain.ckpt"
    torch.save({"state_dict": {"w": torch.zeros(1)}}, plain)
    with pytest.raises(ValueError, match=r"plain\.ckpt is not a checkpoint of a contraseg run"):
        load_task(plain)
    with pytest.raises(FileNotFoundError, match="contraseg export"):
        contraseg.load_encoder(tmp_path)
