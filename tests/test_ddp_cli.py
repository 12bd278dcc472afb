"""The CLI trains with the DDP preset on 2 CPU processes (gloo) with gathered losses."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "WANDB_MODE": "offline", "PL_DISABLE_FORK": "1"}


def ddp_quickstart(precision: str) -> list[str]:
    """The quickstart on 2 CPU processes (gloo) with the DDP preset, on 32 tiny scenes."""
    return [
        sys.executable, str(REPO / "experiments" / "run.py"), "fit",
        "--config", str(REPO / "experiments" / "configs" / "quickstart.yaml"),
        "--config", str(REPO / "experiments" / "configs" / "presets" / "ddp_bf16.yaml"),
        "--trainer.accelerator", "cpu", "--trainer.devices", "2",
        "--trainer.sync_batchnorm", "false",  # torch SyncBatchNorm needs CUDA
        "--trainer.precision", precision, "--trainer.enable_progress_bar", "false",
        "--data.init_args.num_train", "32", "--data.init_args.num_val", "16",
        "--data.init_args.batch_size", "4", "--data.init_args.num_workers", "0",
        "--data.init_args.knn_bank_size", "16",
    ]  # fmt: skip


@pytest.mark.ddp
@pytest.mark.slow
def test_fit_ddp_two_cpu_processes(tmp_path: Path) -> None:
    cmd = [*ddp_quickstart("bf16-mixed"), "--trainer.max_epochs", "1",
           "--trainer.limit_train_batches", "2", "--trainer.limit_val_batches", "2",
           "--trainer.logger", "lightning.pytorch.loggers.CSVLogger",
           "--trainer.logger.save_dir", str(tmp_path),
           "--trainer.log_every_n_steps", "1"]  # fmt: skip
    proc = subprocess.run(cmd, cwd=tmp_path, env=ENV, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert "distributed_backend=gloo" in proc.stderr + proc.stdout
    metrics = (tmp_path / "lightning_logs" / "version_0" / "metrics.csv").read_text()
    assert "train/loss" in metrics and "val/knn_acc" in metrics


@pytest.mark.ddp
@pytest.mark.slow
def test_ddp_resume_equals_uninterrupted(tmp_path: Path) -> None:
    """2 gloo processes: 2 epochs straight = 1 epoch + ``--ckpt_path last`` (bitwise on CPU)."""
    base = [*ddp_quickstart("32-true"), "--model.init_args.encoder", "resnet18",
            "--trainer.logger=lightning.pytorch.loggers.CSVLogger",
            "--trainer.logger.save_dir", "csv"]  # fmt: skip
    epochs = "--trainer.max_epochs"
    runs = [[epochs, "2", "--run_name", "straight"], [epochs, "1", "--run_name", "split"],
            [epochs, "2", "--run_name", "split", "--ckpt_path", "last"]]  # fmt: skip
    for extra in runs:
        proc = subprocess.run([*base, *extra], cwd=tmp_path, env=ENV, capture_output=True,
                              text=True, timeout=300)  # fmt: skip
        assert proc.returncode == 0, proc.stderr[-4000:]
    import torch

    def weights(name: str) -> dict:
        path = tmp_path / "outputs" / name / "checkpoints" / "last.ckpt"
        return torch.load(path, weights_only=True)

    a, b = weights("straight"), weights("split")
    assert a["global_step"] == b["global_step"] == 8  # 32 images / (2 ranks x 4) x 2 epochs
    assert all(torch.equal(v, b["state_dict"][k]) for k, v in a["state_dict"].items())
