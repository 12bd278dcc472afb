"""Every YAML in experiments/configs runs `fit` with tiny overrides (torchgeo-style)."""

from __future__ import annotations

import importlib
import inspect
import os
import re
from pathlib import Path

import pytest
import yaml

from contraseg.datamodules import SegmentationDataModule
from contraseg.experiments.cli import main
from contraseg.experiments.compose import compose_file


def import_class(path: str) -> type:
    module, name = path.rsplit(".", 1)
    return getattr(importlib.import_module(module), name)

REPO = Path(__file__).resolve().parents[1]
# the smoke runs' accelerator and precision: CPU and 32-true unless set (benchmarks/gpu_check.sh
# runs them on CUDA with bf16-mixed)
ACCELERATOR = os.environ.get("CONTRASEG_TEST_ACCELERATOR", "cpu")
PRECISION = os.environ.get("CONTRASEG_TEST_PRECISION", "32-true")

CONFIGS = sorted((REPO / "experiments" / "configs").glob("*.yaml"))
PRESETS = sorted((REPO / "experiments" / "configs" / "presets").glob("*.yaml"))


def tiny_overrides(config: Path, out: Path, data_roots: dict[str, Path]) -> list[str]:
    """Generic tiny run: each data module and task contributes its own ``tiny_test_args``."""
    cfg = compose_file(config)  # with its defaults (a config may extend another)
    args = [
        "--trainer.fast_dev_run", "2",
        "--trainer.accelerator", ACCELERATOR,
        "--trainer.precision", PRECISION,
        "--trainer.logger", "lightning.pytorch.loggers.CSVLogger",
        "--trainer.logger.save_dir", str(out),
        "--trainer.default_root_dir", str(out),
        "--data.init_args.num_workers", "0",
    ]  # fmt: skip
    data_cls = import_class(cfg["data"]["class_path"])
    model_cls = import_class(cfg["model"]["class_path"])
    data_args, model_args = cfg["data"].get("init_args", {}), cfg["model"].get("init_args", {})
    args += data_cls.tiny_test_args(data_args) + model_cls.tiny_test_args(model_args)
    params = inspect.signature(data_cls.__init__).parameters
    if "root" in params:
        args += ["--data.init_args.root", str(data_roots[data_cls.__name__])]
    for key in ("source", "target"):  # wrapped data modules (condensation, adaptation)
        inner = data_args.get(key)
        if key in params and isinstance(inner, dict):
            inner_cls = import_class(inner["class_path"])
            if "root" in inspect.signature(inner_cls.__init__).parameters:
                args += [f"--data.init_args.{key}.init_args.root",
                         str(data_roots[inner_cls.__name__])]
    if "split_dir" in params or issubclass(data_cls, SegmentationDataModule):
        args += ["--data.init_args.split_dir", str(out / "splits")]
    return args


STAGE_CHECKPOINT = re.compile(r"outputs/(\w+)/checkpoints/last\.ckpt")


def previous_stage(config: Path, args: list[str], out: Path, data_roots: dict[str, Path]) -> None:
    """A config that keeps the checkpoint of another config's run (PR-SFDA's source model):
    run that config tiny first and save its checkpoint where this one reads it."""
    if "--model.init_args.init_checkpoint" in args:
        return
    wanted = compose_file(config)["model"].get("init_args", {}).get("init_checkpoint") or ""
    match = STAGE_CHECKPOINT.fullmatch(str(wanted))
    if match is None:
        return
    stage = config.parent / f"{match.group(1)}.yaml"
    stage_args = tiny_overrides(stage, out / "stage", data_roots)
    cli = main(["fit", "--config", str(stage), *stage_args])
    (out / wanted).parent.mkdir(parents=True, exist_ok=True)
    cli.trainer.save_checkpoint(out / wanted)


def test_configs_found() -> None:
    assert {c.name for c in CONFIGS} >= {
        "quickstart.yaml", "simclr_cifar10.yaml", "directclr_cifar10.yaml"
    }


@pytest.mark.parametrize("config", CONFIGS, ids=lambda p: p.stem)
def test_config_fit_smoke(
    config: Path, data_roots: dict[str, Path], tmp_path: Path, monkeypatch
) -> None:
    monkeypatch.chdir(tmp_path)
    args = tiny_overrides(config, tmp_path, data_roots)
    previous_stage(config, args, tmp_path, data_roots)
    cli = main(["fit", "--config", str(config), *args])
    assert cli.trainer.state.finished
    assert cli.trainer.global_step == 2
    metrics = cli.trainer.callback_metrics
    assert metrics["train/loss"].isfinite()
    if cli.datamodule.probe_classes or getattr(cli.datamodule, "pretrain_views", None) is None:
        assert any(k.startswith("val/") for k in metrics)  # unlabeled pretraining has none


@pytest.mark.parametrize("stem", ["simclr_textured", "glcnet_textured", "simclr_digits",
                                  "glcnet_digits"])
def test_textured_configs_fit_with_scenes_rendered_on_the_device(
    stem: str, data_roots: dict[str, Path], tmp_path: Path, monkeypatch
) -> None:
    """``--data.init_args.render_on_device true``: the same configs train (SimCLR, GLCNet)."""
    monkeypatch.chdir(tmp_path)
    config = REPO / "experiments" / "configs" / f"{stem}.yaml"
    args = [*tiny_overrides(config, tmp_path, data_roots),
            "--data.init_args.render_on_device", "true"]  # fmt: skip
    cli = main(["fit", "--config", str(config), *args])
    assert cli.trainer.global_step == 2 and cli.datamodule.render_on_device
    assert cli.trainer.callback_metrics["train/loss"].isfinite()


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
