"""RunCheckpoint: a true last.ckpt, a separate best.ckpt, one run per folder, atomic writes;
``--ckpt_path`` and ``init_checkpoint`` validated by the CLI."""

from __future__ import annotations

from pathlib import Path

import lightning as L
import pytest
import torch
from conftest import quickstart_tiny

from callbacks import RunCheckpoint
from callbacks.checkpoint import CheckpointFolderInUseError
from experiments.cli import main

CONFIGS = Path(__file__).resolve().parents[1] / "experiments" / "configs"
QUICK = str(CONFIGS / "quickstart.yaml")
TINY = quickstart_tiny(16)
CKPTS = Path("outputs") / "quickstart" / "checkpoints"


def _fit(*extra: str) -> object:
    return main(["fit", "--config", QUICK, *TINY, *extra])


def _epoch(path: Path) -> int:
    return torch.load(path, weights_only=True)["epoch"]


def test_last_is_the_last_epoch_and_best_is_separate(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    cli = _fit("--trainer.max_epochs", "3")
    files = sorted(p.name for p in CKPTS.iterdir())
    assert files == ["best.ckpt", "last.ckpt"]  # no last-v1, no temporary file left
    assert _epoch(CKPTS / "last.ckpt") == 2  # whatever epoch scored best
    callback = next(c for c in cli.trainer.callbacks if isinstance(c, RunCheckpoint))
    assert Path(callback.best_model_path).name == "best.ckpt" and callback.monitor == "val/knn_acc"
    assert 0 <= _epoch(CKPTS / "best.ckpt") <= 2
    final = {k: v for k, v in cli.model.state_dict().items()}
    last = torch.load(CKPTS / "last.ckpt", weights_only=True)["state_dict"]
    assert all(torch.equal(final[k], v) for k, v in last.items())  # the final weights
    # the README's resume of a finished run continues after its last epoch
    resumed = _fit("--trainer.max_epochs", "4", "--ckpt_path", "last")
    assert resumed.trainer.global_step == 8 and _epoch(CKPTS / "last.ckpt") == 3


def test_a_second_run_refuses_the_folder_unless_overwrite(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    _fit("--trainer.max_epochs", "1")
    with pytest.raises(CheckpointFolderInUseError, match=r"quickstart/checkpoints already holds"
                       r".*--ckpt_path last.*--run_name"):  # fmt: skip
        _fit("--trainer.max_epochs", "1")
    cli = main(["--config", QUICK, *TINY, "--trainer.max_epochs", "1"], run=False)
    callback = next(c for c in cli.trainer.callbacks if isinstance(c, RunCheckpoint))
    callback.overwrite = True
    stamp = (CKPTS / "last.ckpt").stat().st_mtime_ns
    cli.trainer.fit(cli.model, datamodule=cli.datamodule)
    assert (CKPTS / "last.ckpt").stat().st_mtime_ns != stamp


def test_fast_dev_run_writes_no_checkpoint(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    _fit("--trainer.fast_dev_run", "true")
    assert not list(Path("outputs").rglob("*.ckpt"))


def test_snapshots_every_n_epochs(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    _fit("--trainer.max_epochs", "4", "--trainer.callbacks+=callbacks.RunCheckpoint",
         "--trainer.callbacks.dirpath", "snap", "--trainer.callbacks.every_n_epochs", "2")
    assert sorted(p.name for p in Path("snap").iterdir()) == [
        "epoch=001.ckpt", "epoch=003.ckpt", "last.ckpt"]  # fmt: skip


class _Tiny(L.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.layer = torch.nn.Linear(1, 1)

    def training_step(self, batch, batch_idx):  # noqa: ANN001, ANN201, D102
        return self.layer(batch[0]).sum()

    def configure_optimizers(self):  # noqa: ANN201, D102
        return torch.optim.SGD(self.parameters(), lr=0.1)

    def train_dataloader(self):  # noqa: ANN201, D102
        return torch.utils.data.DataLoader(torch.utils.data.TensorDataset(torch.ones(2, 1)))


def test_a_kill_during_the_write_keeps_the_previous_file(tmp_path: Path, monkeypatch) -> None:
    callback = RunCheckpoint(dirpath=str(tmp_path))
    trainer = L.Trainer(max_epochs=1, callbacks=[callback], logger=False,
                        enable_progress_bar=False, default_root_dir=str(tmp_path))  # fmt: skip
    trainer.fit(_Tiny())
    good = (tmp_path / "last.ckpt").read_bytes()

    def torn_write(filepath: str, weights_only: bool = False) -> None:
        Path(filepath).write_bytes(good[: len(good) // 3])  # the process dies mid-write
        raise KeyboardInterrupt

    monkeypatch.setattr(trainer, "save_checkpoint", torn_write)
    with pytest.raises(KeyboardInterrupt):
        callback._save_checkpoint(trainer, str(tmp_path / "last.ckpt"))
    assert (tmp_path / "last.ckpt").read_bytes() == good
    torch.load(tmp_path / "last.ckpt", weights_only=True)  # still a whole checkpoint


def test_ckpt_path_of_another_model_class_is_an_error(tmp_path: Path, monkeypatch, capsys) -> None:
    monkeypatch.chdir(tmp_path)
    _fit("--trainer.max_epochs", "1")
    finetune = str(CONFIGS / "finetune_quickstart.yaml")
    with pytest.raises(SystemExit):
        main(["fit", "--config", finetune, "--ckpt_path", str(CKPTS / "last.ckpt")])
    err = capsys.readouterr().err
    assert "is a checkpoint of lightning_modules.SimCLR" in err
    assert "the config's model is lightning_modules.SegmentationFineTune" in err


def test_unreadable_checkpoints_are_named(tmp_path: Path, monkeypatch, capsys) -> None:
    monkeypatch.chdir(tmp_path)
    text = tmp_path / "notes.ckpt"
    text.write_text("not a checkpoint\n")
    with pytest.raises(SystemExit):
        _fit("--ckpt_path", str(text))
    assert f"cannot read checkpoint {text}" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        _fit("--model.init_args.init_checkpoint", str(text))
    err = capsys.readouterr().err
    assert f"cannot read checkpoint {text}" in err and "a checkpoint should be" in err


def test_task_state_and_persistent_buffers_survive_a_checkpoint(tmp_path: Path) -> None:
    """How a method declares state beyond weights (``BaseTask`` docstring), round-tripped."""
    from lightning_modules.embedding_task import EmbeddingTask

    class Queued(EmbeddingTask):
        def configure_models(self) -> None:
            super().configure_models()
            self.register_buffer("queue", torch.zeros(4, 2), persistent=True)
            self.seen = 0

        def task_state(self) -> dict:
            return {"seen": self.seen}

        def load_task_state(self, state: dict) -> None:
            self.seen = state["seen"]

    model = Queued(encoder="resnet18")
    model.queue.fill_(3.0)
    model.seen = 7
    checkpoint = {"state_dict": model.state_dict()}
    model.on_save_checkpoint(checkpoint)
    torch.save(checkpoint, tmp_path / "q.ckpt")
    loaded = torch.load(tmp_path / "q.ckpt", weights_only=True)
    fresh = Queued(encoder="resnet18")
    fresh.load_state_dict(loaded["state_dict"])
    fresh.on_load_checkpoint(loaded)
    assert fresh.seen == 7 and torch.equal(fresh.queue, torch.full((4, 2), 3.0))
