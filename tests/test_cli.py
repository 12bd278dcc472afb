"""Configuration errors fail fast with a message naming the key and what is expected."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from contraseg.experiments.cli import main

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
    err = run_error(["--config", QUICK, "--model", "contraseg.lightning_modules.NoSuchMethod"],
                    capsys)
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
    assert cli.model.hparams.probe_classes == cli.datamodule.probe_classes == 6
    assert cli.model.hparams.in_channels == cli.datamodule.in_channels == 3


def test_readme_data_switches(tmp_path: Path, monkeypatch) -> None:
    """The README's `--data.class_path` examples instantiate on the CIFAR config."""
    import numpy as np
    import scipy.io
    from PIL import Image

    monkeypatch.chdir(tmp_path)
    svhn = tmp_path / "svhn"
    svhn.mkdir()
    for split in ("train", "test"):
        scipy.io.savemat(svhn / f"{split}_32x32.mat", {
            "X": np.zeros((32, 32, 3, 4), np.uint8), "y": np.array([[1], [2], [10], [3]])})
    folder = tmp_path / "my_images"  # flat: unlabeled
    folder.mkdir(parents=True)
    for i in range(4):
        Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(folder / f"{i}.png")
    for cls, root, n_cls in (("contraseg.datamodules.SVHNDataModule", svhn, 10),
                             ("contraseg.datamodules.ImageFolderDataModule", folder, 0)):
        cli = main(["--config", CIFAR, "--data.class_path", cls, "--data.root", str(root),
                    "--trainer.logger", "false"], run=False)  # fmt: skip
        assert type(cli.datamodule).__name__ == cls.split(".")[-1]
        assert cli.datamodule.probe_classes == n_cls == cli.model.hparams.probe_classes
        assert cli.datamodule.augment.size == 32  # init_args carried over from the config


def test_print_config(capsys, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as exc:
        main(["fit", "--config", QUICK, "--print_config"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    assert "class_path: contraseg.lightning_modules.SimCLR" in out and "temperature: 0.2" in out


def test_knn_accuracy_equals_a_manual_vote(tmp_path: Path, monkeypatch) -> None:
    """val/knn_acc (bank read by the task, not a second val loader) equals a hand-made vote."""
    from contraseg.lightning_modules.evaluators import weighted_knn_predict

    monkeypatch.chdir(tmp_path)
    cli = main(["validate", "--config", QUICK, "--trainer.accelerator", "cpu",
                "--trainer.logger", "false", "--trainer.callbacks", "[]",
                "--data.init_args.num_train", "24", "--data.init_args.num_val", "12",
                "--data.init_args.batch_size", "5", "--data.init_args.num_workers", "0",
                "--data.init_args.knn_bank_size", "16",
                "--model.init_args.knn_k", "3"])  # fmt: skip
    model, dm = cli.model.eval(), cli.datamodule

    def embed(dataset):
        items = [dataset[i] for i in range(len(dataset))]
        with torch.no_grad():
            z = model.embed(torch.stack([x["image"] for x in items]))
        return z, torch.tensor([x["label"] for x in items])

    (bank, bank_labels), (queries, labels) = embed(dm.knn_bank()), embed(dm.eval_dataset("val"))
    preds = weighted_knn_predict(queries, bank, bank_labels, 6, k=3, temperature=0.1)
    expected = (preds == labels).float().mean()
    assert float(cli.trainer.callback_metrics["val/knn_acc"]) == pytest.approx(float(expected))
    assert len(cli.trainer.val_dataloaders.dataset) == 12  # queries only: one metric column
