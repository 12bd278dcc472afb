"""Configuration errors fail fast with a message naming the key and what is expected."""

from __future__ import annotations

from pathlib import Path

import pytest

from experiments.cli import main

REPO = Path(__file__).resolve().parents[1]

QUICK = str(REPO / "experiments" / "configs" / "quickstart.yaml")
CIFAR = str(REPO / "experiments" / "configs" / "simclr_cifar10.yaml")
DIRECT = str(REPO / "experiments" / "configs" / "directclr_cifar10.yaml")


def run_error(args: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    with pytest.raises(SystemExit) as exc:
        main(args, run=False)
    assert exc.value.code != 0
    return capsys.readouterr().err


def test_unknown_model_class(capsys, tmp_path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    err = run_error(["--config", QUICK, "--model", "lightning_modules.NoSuchMethod"], capsys)
    assert "NoSuchMethod" in err


@pytest.mark.parametrize("value", ["0", "-0.5"])
def test_non_positive_temperature(value, capsys, tmp_path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    err = run_error(["--config", QUICK, "--model.init_args.temperature", value], capsys)
    assert "temperature" in err


def test_missing_data_root(capsys, tmp_path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    missing = tmp_path / "nowhere"
    err = run_error(["--config", CIFAR, "--data.init_args.root", str(missing),
                     "--trainer.logger", "false"], capsys)  # fmt: skip
    assert "data.root" in err and str(missing) in err


def test_d0_larger_than_representation(capsys, tmp_path, monkeypatch, cifar10_root) -> None:
    monkeypatch.chdir(tmp_path)
    err = run_error(["--config", DIRECT, "--data.init_args.root", str(cifar10_root),
                     "--model.init_args.d0", "4096", "--trainer.logger", "false"],
                    capsys)  # fmt: skip
    assert "d0" in err and "512" in err


def test_override_reaches_model(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    cli = main(["--config", QUICK, "--model.temperature", "0.3", "--trainer.logger", "false"],
               run=False)  # fmt: skip
    assert cli.model.temperature == pytest.approx(0.3)
    assert cli.model.num_classes == cli.datamodule.num_classes == 6
