"""Out-of-range hyper-parameters fail at configuration time in every module, naming the key;
init checkpoints of another encoder are an error unless a partial load is asked for."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import contraseg.lightning_modules as lm
from contraseg.experiments.cli import main
from contraseg.lightning_modules.components.networks import TimmEncoder

MODULES = ["SimCLR", "DirectCLR", "AttentionGuidedContrast", "GLCNet", "PixelContrast",
           "SupervisedLocalContrast", "SegmentationFineTune"]  # fmt: skip
BAD = [("lr", 0.0, "> 0"), ("lr", -1e-3, "> 0"), ("weight_decay", -1.0, ">= 0"),
       ("warmup_epochs", -1.0, ">= 0"), ("min_lr_ratio", 1.5, r"in \[0, 1\]"),
       ("momentum", 1.5, r"in \[0, 1\]"), ("lr", float("nan"), "> 0")]  # fmt: skip


@pytest.mark.parametrize("name", MODULES)
@pytest.mark.parametrize(("key", "value", "rule"), BAD)
def test_bad_hyper_parameter_is_rejected_naming_the_key(name: str, key: str, value: float,
                                                        rule: str) -> None:  # fmt: skip
    cls = getattr(lm, name)
    kwargs = {"num_classes": 3} if name == "SegmentationFineTune" else {}
    with pytest.raises(ValueError, match=rf"model\.{key} must be {rule}, got"):
        cls(**kwargs, **{key: value})


def test_bad_temperature_and_probe_lr() -> None:
    with pytest.raises(ValueError, match=r"model\.temperature must be > 0"):
        lm.PixelContrast(temperature=0.0)
    with pytest.raises(ValueError, match=r"model\.probe_lr must be > 0"):
        lm.SimCLR(probe_lr=-0.1)


def test_cli_reports_bad_lr_before_training(tmp_path: Path, monkeypatch, capsys) -> None:
    monkeypatch.chdir(tmp_path)
    config = Path(__file__).resolve().parents[1] / "experiments/configs/finetune_quickstart.yaml"
    with pytest.raises(SystemExit):
        main(["fit", "--config", str(config), "--model.init_args.lr", "-0.01",
              "--model.init_args.init_checkpoint", "null"])  # fmt: skip
    assert "model.lr must be > 0, got -0.01" in capsys.readouterr().err


def test_init_checkpoint_of_another_encoder_is_an_error(tmp_path: Path) -> None:
    path = tmp_path / "resnet50.ckpt"
    state = TimmEncoder("resnet50").state_dict()
    torch.save({"state_dict": {f"encoder.{k}": v for k, v in state.items()}}, path)
    with pytest.raises(ValueError, match=r"resnet50\.ckpt does not fit the model: \d+ shape "
                       r"mismatch .*strict_init false"):  # fmt: skip
        lm.SegmentationFineTune(num_classes=3, encoder="resnet18", init_checkpoint=str(path))
    partial = lm.SegmentationFineTune(num_classes=3, encoder="resnet18",
                                      init_checkpoint=str(path), strict_init=False)  # fmt: skip
    report = partial.init_report
    assert report["loaded"] and report["shape_mismatch"]
    assert len(report["loaded"]) + len(report["shape_mismatch"]) + len(report["missing"]) == len(
        partial.net.encoder.model.state_dict())  # fmt: skip
