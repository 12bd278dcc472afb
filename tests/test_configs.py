"""Every YAML in experiments/configs runs `fit` with tiny overrides (torchgeo-style)."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from experiments.cli import main

REPO = Path(__file__).resolve().parents[1]

CONFIGS = sorted((REPO / "experiments" / "configs").glob("*.yaml"))
PRESETS = sorted((REPO / "experiments" / "configs" / "presets").glob("*.yaml"))


def tiny_overrides(config: Path, data_root: Path, out: Path) -> list[str]:
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
    data_cls = cfg["data"]["class_path"]
    if "SyntheticSegmentation" in data_cls:
        args += ["--data.init_args.num_train", "200", "--data.init_args.num_val", "8",
                 "--data.init_args.split_dir", str(out / "splits"),
                 "--data.init_args.label_fraction", "8",
                 "--model.init_args.init_checkpoint", "null"]  # fmt: skip
    elif "Synthetic" in data_cls:
        args += ["--data.init_args.num_train", "16", "--data.init_args.num_val", "8"]
    elif "CIFAR10" in data_cls:
        args += ["--data.init_args.root", str(data_root)]
    else:
        pytest.fail(f"no tiny overrides for {data_cls} in {config.name}")
    return args


def test_configs_found() -> None:
    assert {c.name for c in CONFIGS} >= {
        "quickstart.yaml", "simclr_cifar10.yaml", "directclr_cifar10.yaml"
    }


@pytest.mark.parametrize("config", CONFIGS, ids=lambda p: p.stem)
def test_config_fit_smoke(config: Path, cifar10_root: Path, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    cli = main(["fit", "--config", str(config), *tiny_overrides(config, cifar10_root, tmp_path)])
    assert cli.trainer.state.finished
    assert cli.trainer.global_step == 2
    metrics = cli.trainer.callback_metrics
    assert metrics["train/loss"].isfinite()
    assert any(k.startswith("val/") for k in metrics)


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
