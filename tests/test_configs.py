"""Every YAML in experiments/configs runs `fit` with tiny overrides (torchgeo-style)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from experiments.cli import main

REPO = Path(__file__).resolve().parents[1]

CONFIGS = sorted((REPO / "experiments" / "configs").glob("*.yaml"))
PRESETS = sorted((REPO / "experiments" / "configs" / "presets").glob("*.yaml"))


SEG_TINY = {
    "CityscapesDataModule": ("cityscapes", ["--data.init_args.crop_size", "64",
                                            "--data.init_args.resize_range", "null",
                                            "--data.init_args.label_fraction", "4"]),
    "VOCDataModule": ("voc", ["--data.init_args.crop_size", "32",
                              "--data.init_args.resize_range", "null",
                              "--data.init_args.label_fraction", "4"]),
    "PotsdamDataModule": ("potsdam", ["--data.init_args.crop_size", "64"]),
    "PotsdamTilesDataModule": ("potsdam_tiles", ["--data.init_args.crop_size", "64",
                                                 "--data.init_args.samples_per_epoch", "8"]),
}  # fmt: skip
# dense pretraining modules whose encoder is set by ``encoder`` (not ``backbone``)
DENSE = {"PixelContrast", "SupervisedLocalContrast"}


def tiny_overrides(
    config: Path, data_root: Path, out: Path, seg_roots: dict[str, Path]
) -> list[str]:
    cfg = yaml.safe_load(config.read_text())
    args = [
        "--trainer.fast_dev_run", "2",
        "--trainer.accelerator", "cpu",
        "--trainer.precision", "32-true",
        "--trainer.logger", "lightning.pytorch.loggers.CSVLogger",
        "--trainer.logger.save_dir", str(out),
        "--trainer.default_root_dir", str(out),
        "--data.init_args.batch_size", "4",
        "--data.init_args.num_workers", "0",
    ]  # fmt: skip
    data_cls, model_cls = cfg["data"]["class_path"], cfg["model"]["class_path"]
    seg = SEG_TINY.get(data_cls.rsplit(".", 1)[-1])
    if seg is not None:
        root = seg_roots[seg[0]]
        args += ["--data.init_args.root", str(root), *seg[1], "--data.init_args.batch_size", "2",
                 "--data.init_args.split_dir", str(out / "splits")]  # fmt: skip
        views = cfg["data"]["init_args"].get("pretrain_views")
        if views is not None:  # pretraining on the unlabeled crops
            small = {**views, "size": 64} if isinstance(views, dict) else [
                {**v, "size": 64} for v in views
            ]
            args += ["--data.init_args.pretrain_views", json.dumps(small)]
            if "GLCNet" in model_cls:
                args += ["--model.init_args.encoder", "resnet18",
                         "--model.init_args.patch_size", "16"]  # fmt: skip
            elif model_cls.rsplit(".", 1)[-1] in DENSE:
                args += ["--model.init_args.encoder", "resnet18"]
                if "PixelContrast" in model_cls:  # decoder resolution: 16 x 16 at 64 px
                    args += ["--model.init_args.loss_size", "null"]
            else:
                args += ["--model.init_args.encoder", "resnet18"]
        else:
            args += ["--model.init_args.encoder", "resnet18",
                     "--model.init_args.sliding_window", "32",
                     "--model.init_args.sliding_stride", "16"]  # fmt: skip
        if "val_batch_size" in cfg["data"]["init_args"]:
            args += ["--data.init_args.val_batch_size", "1"]
    elif "SyntheticSegmentation" in data_cls:
        args += ["--data.init_args.num_train", "200", "--data.init_args.num_val", "8",
                 "--data.init_args.split_dir", str(out / "splits"),
                 "--data.init_args.label_fraction", "8"]  # fmt: skip
    elif "Synthetic" in data_cls:
        args += ["--data.init_args.num_train", "16", "--data.init_args.num_val", "8"]
    elif "CIFAR10" in data_cls:
        args += ["--data.init_args.root", str(data_root)]
    else:
        pytest.fail(f"no tiny overrides for {data_cls} in {config.name}")
    if cfg["model"].get("init_args", {}).get("init_checkpoint"):  # earlier stage's output
        args += ["--model.init_args.init_checkpoint", "null"]
    return args


def test_configs_found() -> None:
    assert {c.name for c in CONFIGS} >= {
        "quickstart.yaml", "simclr_cifar10.yaml", "directclr_cifar10.yaml"
    }


@pytest.mark.parametrize("config", CONFIGS, ids=lambda p: p.stem)
def test_config_fit_smoke(
    config: Path, cifar10_root: Path, seg_roots: dict[str, Path], tmp_path: Path, monkeypatch
) -> None:
    monkeypatch.chdir(tmp_path)
    args = tiny_overrides(config, cifar10_root, tmp_path, seg_roots)
    cli = main(["fit", "--config", str(config), *args])
    assert cli.trainer.state.finished
    assert cli.trainer.global_step == 2
    metrics = cli.trainer.callback_metrics
    assert metrics["train/loss"].isfinite()
    if cli.datamodule.probe_classes or getattr(cli.datamodule, "pretrain_views", None) is None:
        assert any(k.startswith("val/") for k in metrics)  # unlabeled pretraining has none


@pytest.mark.parametrize("preset", PRESETS, ids=lambda p: p.stem)
def test_presets_compose(preset: Path, cifar10_root: Path, tmp_path: Path, monkeypatch) -> None:
    """Presets parse on top of a method config; the CPU variant instantiates."""
    monkeypatch.chdir(tmp_path)
    base = REPO / "experiments" / "configs" / "simclr_cifar10.yaml"
    args = ["--config", str(base), "--config", str(preset),
            "--trainer.accelerator", "cpu", "--trainer.devices", "1", "--trainer.strategy", "auto",
            "--trainer.precision", "bf16-mixed", "--trainer.logger", "false",
            "--data.init_args.root", str(cifar10_root)]  # fmt: skip
    cli = main(args, run=False)
    assert cli.config["trainer"]["sync_batchnorm"] is True
    assert cli.trainer.precision == "bf16-mixed"
    assert yaml.safe_load(preset.read_text())["trainer"]["strategy"] == "ddp"


@pytest.mark.parametrize("subcommand", ["validate", "test", "predict"])
def test_other_subcommands(subcommand: str, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    config = REPO / "experiments" / "configs" / "quickstart.yaml"
    args = [subcommand, "--config", str(config), "--trainer.accelerator", "cpu",
            "--trainer.logger", "false", "--trainer.callbacks", "[]",
            "--data.init_args.num_train", "16", "--data.init_args.num_val", "8",
            "--data.init_args.batch_size", "4", "--data.init_args.num_workers", "0",
            "--data.init_args.knn_bank_size", "8"]  # fmt: skip
    cli = main(args)
    if subcommand == "predict":
        outputs = cli.trainer.predict_loop.predictions
        assert outputs[0]["embedding"].shape == (4, 512)
    else:
        metrics = cli.trainer.callback_metrics
        stage = "val" if subcommand == "validate" else "test"
        assert 0 <= float(metrics[f"{stage}/knn_acc"]) <= 1
        assert f"{stage}/probe_acc" in metrics
