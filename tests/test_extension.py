"""The steps of docs/extending.md: a toy method, data set and architecture defined outside
the package (tests/toy_extension.py) run through the CLI."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import yaml
from torch import nn
from toy_extension import StripesDataModule, ToyAlignment, ToyNet, alignment_loss, toy_topdown

from contraseg.experiments.cli import main
from contraseg.lightning_modules.components.networks import (
    ARCHITECTURES,
    TimmEncoder,
    build_segmentation_net,
    register_architecture,
)

REPO = Path(__file__).resolve().parents[1]
BASE = REPO / "experiments" / "configs" / "base" / "trainer.yaml"


def test_toy_loss_closed_form() -> None:
    z = torch.tensor([[1.0, 0.0], [0.0, 2.0]])
    assert float(alignment_loss(z, z)) == 0.0
    assert float(alignment_loss(z, torch.tensor([[0.0, 1.0], [0.0, -1.0]]))) == (2.0 + 4.0) / 2


def _csv(tmp_path: Path) -> list[str]:
    return ["--trainer.logger", "lightning.pytorch.loggers.CSVLogger",
            "--trainer.logger.save_dir", str(tmp_path)]  # fmt: skip


def _config(tmp_path: Path, model: dict, data: dict) -> Path:
    path = tmp_path / "toy_method.yaml"
    path.write_text(yaml.safe_dump({"defaults": [str(BASE)], "trainer": {"max_epochs": 1},
                                    "model": model, "data": data}))  # fmt: skip
    return path


def test_toy_method_runs_through_the_cli(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    config = _config(
        tmp_path,
        {"class_path": "toy_extension.ToyAlignment",
         "init_args": {"encoder": "resnet18", "optimizer": "adamw", "lr": 1e-3}},
        {"class_path": "contraseg.datamodules.SyntheticDataModule",
         "init_args": {"num_train": 16, "num_val": 8, "image_size": 32, "batch_size": 4,
                       "num_workers": 0, "knn_bank_size": 8, "augment": {"size": 32}}},
    )  # fmt: skip
    cli = main(["fit", "--config", str(config), "--trainer.accelerator", "cpu",
                *_csv(tmp_path), "--trainer.limit_train_batches", "2"])  # fmt: skip
    assert isinstance(cli.model, ToyAlignment) and cli.trainer.global_step == 2
    assert cli.model.hparams.probe_classes == 6  # linked from the data module
    metrics = cli.trainer.callback_metrics
    assert metrics["train/loss"].isfinite() and "val/knn_acc" in metrics
    # the base trainer's outputs are named after the config file
    assert (tmp_path / "outputs" / "toy_method" / "checkpoints" / "last.ckpt").is_file()


def test_toy_data_set_fine_tunes_and_pretrains(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    data = {"class_path": "toy_extension.StripesDataModule",
            "init_args": {"batch_size": 4, "num_workers": 0, "label_fraction": 8}}
    model = {"class_path": "contraseg.lightning_modules.SegmentationFineTune",
             "init_args": {"encoder": "resnet18", "lr": 1e-3}}  # fmt: skip
    config = _config(tmp_path, model, data)
    cli = main(["fit", "--config", str(config), "--trainer.accelerator", "cpu",
                *_csv(tmp_path), "--trainer.max_epochs", "2"])  # fmt: skip
    assert isinstance(cli.datamodule, StripesDataModule)
    assert cli.model.hparams.num_classes == 2 and cli.model.class_names == ["background",
                                                                            "stripe"]  # fmt: skip
    assert 0 <= float(cli.trainer.callback_metrics["val/miou"]) <= 1
    assert len(cli.datamodule.labeled_names()) == 8
    # the same data set in the unlabeled multi-view mode, for a dense method
    pre = main(["fit", "--config", str(config), "--trainer.accelerator", "cpu",
                *_csv(tmp_path), "--trainer.limit_train_batches", "2",
                "--model", "contraseg.lightning_modules.PixelContrast",
                "--model.encoder", "resnet18",
                "--data.pretrain_views", '{"size": 32}', "--data.pretrain_subset", "labeled",
                "--trainer.limit_val_batches", "0", "--run_name", "toy_pretrain"])  # fmt: skip
    assert pre.trainer.global_step == 2 and pre.trainer.callback_metrics["train/loss"].isfinite()


def test_toy_architecture_fine_tunes_through_the_cli(tmp_path: Path, monkeypatch) -> None:
    """A registered architecture, selected as ``<module>.<name>``, initialised by name."""
    monkeypatch.chdir(tmp_path)
    state = TimmEncoder("resnet18").state_dict()
    ckpt = tmp_path / "pretrained.ckpt"
    torch.save({"state_dict": {f"encoder.{k}": v for k, v in state.items()}}, ckpt)
    model = {"class_path": "contraseg.lightning_modules.SegmentationFineTune",
             "init_args": {"encoder": "resnet18", "lr": 1e-3,
                           "architecture": "toy_extension.toy_topdown",
                           "decoder_channels": [16], "init_checkpoint": str(ckpt)}}  # fmt: skip
    data = {"class_path": "toy_extension.StripesDataModule",
            "init_args": {"batch_size": 4, "num_workers": 0, "label_fraction": 8}}
    cli = main(["fit", "--config", str(_config(tmp_path, model, data)),
                "--trainer.accelerator", "cpu", *_csv(tmp_path)])  # fmt: skip
    net = cli.model.net
    assert isinstance(net, ToyNet) and net.decoder.proj.out_channels == 16
    report = cli.model.init_report
    assert report is not None and len(report["loaded"]) > 50 and not report["shape_mismatch"]
    assert 0 <= float(cli.trainer.callback_metrics["val/miou"]) <= 1
    # a 40 x 44 image (not a multiple of pad_multiple) is padded and its logits cropped back
    logits = cli.model._infer(torch.zeros(1, 3, 40, 44))
    assert logits.shape == (1, 2, 40, 44)


def test_architecture_registry_errors() -> None:
    with pytest.raises(ValueError, match=r"must be one of \[.*'deeplabv3plus'.*\].*got 'nope'"):
        build_segmentation_net("nope", "resnet18", 3, 2)
    with pytest.raises(ValueError, match="registered already"):
        register_architecture("toy_topdown")(toy_topdown)

    @register_architecture("toy_broken")
    def broken(encoder: str, in_channels: int, classes: int | None = None, **options) -> nn.Module:
        return nn.Conv2d(in_channels, 2, 1)

    try:
        with pytest.raises(TypeError, match=r"'toy_broken' breaks the network contract.*"
                           r"net\.encoder .*net\.decoder.*net\.pad_multiple"):  # fmt: skip
            build_segmentation_net("toy_broken", "resnet18", 3, 2)
    finally:
        ARCHITECTURES.pop("toy_broken")
