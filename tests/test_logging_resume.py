"""W&B offline fallback, logged spectra, and resuming a run from its last checkpoint."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from contraseg.callbacks.loggers import WandbLogger, wandb_credentials_available
from contraseg.experiments.cli import main

QUICK = str(Path(__file__).resolve().parents[1] / "experiments" / "configs" / "quickstart.yaml")
TINY = ["--trainer.accelerator", "cpu", "--data.init_args.num_train", "16",
        "--data.init_args.num_val", "8", "--data.init_args.batch_size", "4",
        "--data.init_args.num_workers", "0", "--data.init_args.knn_bank_size", "8",
        "--trainer.limit_train_batches", "2", "--trainer.enable_progress_bar", "false"]  # fmt: skip


def test_wandb_offline_without_credentials(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.setenv("NETRC", str(tmp_path / "netrc"))
    assert not wandb_credentials_available()
    assert WandbLogger(save_dir=str(tmp_path))._offline
    (tmp_path / "netrc").write_text("machine api.wandb.ai\n  login user\n  password x\n")
    assert wandb_credentials_available()
    monkeypatch.setenv("WANDB_MODE", "offline")
    assert WandbLogger(save_dir=str(tmp_path))._offline
    monkeypatch.delenv("WANDB_MODE")
    assert not WandbLogger(save_dir=str(tmp_path), offline=False)._offline


@pytest.mark.slow
def test_quickstart_logs_to_wandb_and_resumes(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("WANDB_MODE", "offline")
    args = ["fit", "--config", QUICK, *TINY, "--trainer.max_epochs", "1",
            "--trainer.callbacks+=contraseg.callbacks.EmbeddingRankMonitor",
            "--trainer.callbacks.every_n_epochs", "1",
            "--trainer.callbacks.num_samples", "8"]  # fmt: skip
    cli = main(args)
    assert cli.trainer.global_step == 2
    metrics = cli.trainer.callback_metrics
    assert {"val/knn_acc", "val/probe_acc", "rank/effective_rank"} <= set(metrics)
    out = tmp_path / "outputs" / "quickstart"
    assert list(out.glob("wandb/offline-run-*"))
    assert list(out.glob("**/spectra/epoch_0000.png"))
    assert (out / "checkpoints" / "last.ckpt").is_file()
    assert list(out.glob("csv/version_0/metrics.csv"))
    first = {k: v.clone() for k, v in cli.model.state_dict().items()}
    resumed = main(["fit", "--config", QUICK, *TINY, "--trainer.max_epochs", "2",
                    "--ckpt_path", "last"])  # fmt: skip
    assert resumed.trainer.current_epoch == 2 and resumed.trainer.global_step == 4
    assert not torch.equal(first["encoder.model.conv1.weight"],
                           resumed.model.state_dict()["encoder.model.conv1.weight"])  # fmt: skip
