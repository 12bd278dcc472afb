"""RunCheckpoint: a true last.ckpt, a separate best.ckpt, one run per folder, atomic writes;
``--ckpt_path`` and ``init_checkpoint`` validated by the CLI."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import lightning as L
import pytest
import torch
from conftest import quickstart_tiny

from contraseg.callbacks import RunCheckpoint, StepSnapshots
from contraseg.callbacks.checkpoint import CheckpointFolderInUseError
from contraseg.experiments.cli import main

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


def test_a_second_run_refuses_the_folder_unless_overwrite(tmp_path: Path, monkeypatch,
                                                         capsys) -> None:  # fmt: skip
    monkeypatch.chdir(tmp_path)
    _fit("--trainer.max_epochs", "1")
    # refused by the command line before anything is built (tests/test_daily_use.py) ...
    with pytest.raises(SystemExit) as exc:
        _fit("--trainer.max_epochs", "1")
    assert exc.value.code == 2
    assert re.search(r"quickstart/checkpoints already holds.*--ckpt_path last.*--run_name",
                     capsys.readouterr().err)  # fmt: skip
    # ... and by the callback itself when a fit starts (a trainer built in Python)
    cli = main(["--config", QUICK, *TINY, "--trainer.max_epochs", "1"], run=False)
    with pytest.raises(CheckpointFolderInUseError, match=r"quickstart/checkpoints already holds"):
        cli.trainer.fit(cli.model, datamodule=cli.datamodule)
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
    _fit("--trainer.max_epochs", "4", "--trainer.callbacks+=contraseg.callbacks.RunCheckpoint",
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
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.ckpt"]  # the torn file went


def test_checkpoints_are_not_staged_in_the_system_temp_folder(tmp_path: Path,
                                                             monkeypatch) -> None:  # fmt: skip
    import tempfile

    def no_staging(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        raise AssertionError("a checkpoint went through the system temp folder")

    monkeypatch.setattr(tempfile, "mkstemp", no_staging)
    trainer = _tiny_trainer(tmp_path, RunCheckpoint(dirpath=str(tmp_path / "c")), max_epochs=2)
    trainer.fit(_Tiny())
    assert sorted(p.name for p in (tmp_path / "c").iterdir()) == ["last.ckpt"]
    assert type(trainer.strategy.checkpoint_io).__name__ == "TorchCheckpointIO"  # restored


_KILLED_WRITER = """
import sys, time
from pathlib import Path
import lightning as L, torch
sys.path.insert(0, {tests!r})
from test_run_checkpoint import _Tiny
from contraseg.callbacks import RunCheckpoint

folder = Path({folder!r})
trainer = L.Trainer(max_epochs=1, callbacks=[RunCheckpoint(dirpath=str(folder))], logger=False,
                    enable_progress_bar=False, default_root_dir=str(folder.parent))
trainer.fit(_Tiny())  # a whole last.ckpt

def slow_save(obj, f, *args, **kwargs):
    f.write(b"half a checkpoint")
    f.flush()
    print("writing", flush=True)
    time.sleep(120)  # SIGKILLed here

torch.save = slow_save
trainer.checkpoint_callback._save_checkpoint(trainer, str(folder / "last.ckpt"))
"""


def test_a_sigkill_during_a_save_leaves_the_old_file_and_nothing_in_tmp(tmp_path: Path) -> None:
    """A real SIGKILL mid-write: ``last.ckpt`` is the previous one, the system temp folder is
    empty, and the writer's temporary file is removed when the next run starts."""
    import os
    import signal
    import subprocess
    import sys

    folder, system_tmp = tmp_path / "run" / "checkpoints", tmp_path / "system_tmp"
    system_tmp.mkdir()
    script = _KILLED_WRITER.format(tests=str(Path(__file__).parent), folder=str(folder))
    env = {**os.environ, "TMPDIR": str(system_tmp)}
    writer = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True,
                              env=env, cwd=Path(__file__).resolve().parents[1])  # fmt: skip
    try:
        assert writer.stdout.readline().strip() == "writing"
        good = (folder / "last.ckpt").read_bytes()
    finally:
        writer.send_signal(signal.SIGKILL)
        writer.wait()
    assert writer.returncode == -signal.SIGKILL
    orphan = folder / f".last.ckpt.{writer.pid}.tmp"
    assert orphan.read_bytes() == b"half a checkpoint"
    # no file outside the run (imported libraries leave empty folders there, e.g. W&B's)
    assert [p for p in system_tmp.rglob("*") if p.is_file()] == []
    assert (folder / "last.ckpt").read_bytes() == good
    live = folder / f".last.ckpt.{os.getppid()}.tmp"  # a writer still running: kept
    live.write_bytes(b"x")
    (folder / "last.ckpt.tmp").write_bytes(b"y")  # an earlier version's name
    trainer = _tiny_trainer(tmp_path / "run", RunCheckpoint(dirpath=str(folder)), max_epochs=2)
    trainer.fit(_Tiny(), ckpt_path=str(folder / "last.ckpt"))
    assert sorted(p.name for p in folder.iterdir()) == [live.name, "last.ckpt"]


def _writes(monkeypatch, callback: RunCheckpoint) -> list[tuple[str, int, int]]:
    """Record (file, epoch, global step) of every checkpoint the callback writes."""
    log: list[tuple[str, int, int]] = []
    write = callback._save_checkpoint

    def recording(trainer: L.Trainer, filepath: str) -> None:
        log.append((Path(filepath).name, trainer.current_epoch, trainer.global_step))
        write(trainer, filepath)

    monkeypatch.setattr(callback, "_save_checkpoint", recording)
    return log


def _tiny_trainer(tmp_path: Path, callback: RunCheckpoint, **kwargs) -> L.Trainer:  # noqa: ANN003
    return L.Trainer(callbacks=[callback], logger=False, enable_progress_bar=False,
                     enable_model_summary=False, default_root_dir=str(tmp_path),
                     **kwargs)  # fmt: skip


def test_last_every_n_epochs_writes_every_nth_and_the_final_epoch(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:  # fmt: skip
    callback = RunCheckpoint(dirpath=str(tmp_path / "a"), last_every_n_epochs=3)
    log = _writes(monkeypatch, callback)
    trainer = _tiny_trainer(tmp_path, callback, max_epochs=7)
    model = _Tiny()
    trainer.fit(model)
    assert log == [("last.ckpt", 2, 6), ("last.ckpt", 5, 12), ("last.ckpt", 6, 14)]
    last = torch.load(tmp_path / "a" / "last.ckpt", weights_only=True)
    assert last["global_step"] == 14
    assert torch.equal(last["state_dict"]["layer.weight"], model.layer.weight.detach())
    # max_steps ends training mid-epoch: the final state is written once, at the stop
    callback = RunCheckpoint(dirpath=str(tmp_path / "b"), last_every_n_epochs=4)
    log = _writes(monkeypatch, callback)
    _tiny_trainer(tmp_path, callback, max_epochs=10, max_steps=5).fit(_Tiny())
    assert [step for _, _, step in log][-1] == 5 and len({s for _, _, s in log}) == len(log)
    with pytest.raises(ValueError, match="last_every_n_epochs must be >= 1"):
        RunCheckpoint(last_every_n_epochs=0)


def test_last_is_the_final_state_when_the_last_epoch_has_no_validation(tmp_path: Path,
                                                                         monkeypatch) -> None:  # noqa: ANN001  # fmt: skip
    """check_val_every_n_epoch 2, 3 epochs: epoch-end writes follow validation (epoch 1),
    and the end of training writes the final state (epoch 2 had no validation)."""

    class Validated(_Tiny):
        def validation_step(self, batch, batch_idx):  # noqa: ANN001, ANN201, D102
            self.log("val/x", self.layer(batch[0]).sum())

        def val_dataloader(self):  # noqa: ANN201, D102
            return self.train_dataloader()

    callback = RunCheckpoint(dirpath=str(tmp_path))
    log = _writes(monkeypatch, callback)
    _tiny_trainer(tmp_path, callback, max_epochs=3, check_val_every_n_epoch=2,
                  num_sanity_val_steps=0).fit(Validated())  # fmt: skip
    assert [step for _, _, step in log] == [4, 6]
    assert torch.load(tmp_path / "last.ckpt", weights_only=True)["global_step"] == 6


def test_a_run_killed_between_every_n_epochs_checkpoints_resumes_the_remaining_steps(
        tmp_path: Path) -> None:  # fmt: skip
    """Killed after epoch 4 of 6 with N = 3: resumes from epoch 3 and redoes epochs 3-5.

    Bitwise equality of a killed-and-resumed run (RNG, data order) with this setting is in
    ``tests/test_resume.py`` (case ``every_2_epochs``); here the loop bookkeeping.
    """

    class Kill(L.Callback):
        def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
            if trainer.current_epoch == 4:
                raise RuntimeError("killed")

    reference = _Tiny()
    start = {k: v.clone() for k, v in reference.state_dict().items()}
    _tiny_trainer(tmp_path / "ref", RunCheckpoint(dirpath=str(tmp_path / "ref"),
                                                  last_every_n_epochs=3),
                  max_epochs=6).fit(reference)  # fmt: skip
    killed = _Tiny()
    killed.load_state_dict(start)
    folder = tmp_path / "run"
    trainer = _tiny_trainer(folder, RunCheckpoint(dirpath=str(folder), last_every_n_epochs=3),
                            max_epochs=6)  # fmt: skip
    trainer.callbacks.append(Kill())
    with pytest.raises(RuntimeError, match="killed"):
        trainer.fit(killed)
    saved = torch.load(folder / "last.ckpt", weights_only=True)
    assert (saved["epoch"], saved["global_step"]) == (2, 6)  # not epoch 4's state
    resumed = _Tiny()
    trainer = _tiny_trainer(folder, RunCheckpoint(dirpath=str(folder), last_every_n_epochs=3),
                            max_epochs=6)  # fmt: skip
    trainer.fit(resumed, ckpt_path=str(folder / "last.ckpt"))
    assert trainer.global_step == 12
    assert torch.equal(resumed.layer.weight, reference.layer.weight)
    assert torch.equal(resumed.layer.bias, reference.layer.bias)


def test_ckpt_path_of_another_model_class_is_an_error(tmp_path: Path, monkeypatch, capsys) -> None:
    monkeypatch.chdir(tmp_path)
    _fit("--trainer.max_epochs", "1")
    finetune = str(CONFIGS / "finetune_quickstart.yaml")
    with pytest.raises(SystemExit):
        main(["fit", "--config", finetune, "--ckpt_path", str(CKPTS / "last.ckpt")])
    err = capsys.readouterr().err
    assert "is a checkpoint of contraseg.lightning_modules.SimCLR" in err
    assert "the config's model is contraseg.lightning_modules.SegmentationFineTune" in err


def test_ckpt_path_last_gets_the_class_check(tmp_path: Path, monkeypatch, capsys) -> None:
    """``--ckpt_path last`` of a folder holding another model's checkpoint: the same error."""
    monkeypatch.chdir(tmp_path)
    _fit("--trainer.max_epochs", "1")
    ckpt = torch.load(CKPTS / "last.ckpt", weights_only=True)
    # a MoCo run's file, written before the packages moved under contraseg (old class path)
    ckpt["hyper_parameters"]["_class_path"] = "lightning_modules.MoCoV2"
    torch.save(ckpt, CKPTS / "last.ckpt")
    with pytest.raises(SystemExit):
        _fit("--trainer.max_epochs", "2", "--ckpt_path", "last")
    err = capsys.readouterr().err
    assert f"--ckpt_path {(CKPTS / 'last.ckpt').resolve()} is a checkpoint of " in err
    assert ("contraseg.lightning_modules.MoCoV2, but the config's model is "
            "contraseg.lightning_modules.SimCLR") in err


class _Payload:
    """A pickle that runs code when loaded with ``weights_only=False`` (here: a marker file)."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):  # noqa: ANN204
        return (Path.touch, (self.marker,))


def test_a_pickle_with_code_is_refused_even_with_weights_only_false(
        tmp_path: Path, monkeypatch, capsys) -> None:  # fmt: skip
    """The weights-only policy: refused as an explicit path and as ``last``, whatever
    ``--weights_only`` or ``TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD`` say; nothing runs.  With
    ``CONTRASEG_TRUST_CHECKPOINTS=1`` the user's choice stands (and the code does run)."""
    monkeypatch.chdir(tmp_path)
    _fit("--trainer.max_epochs", "1")
    marker = tmp_path / "code-ran"
    evil = tmp_path / "evil.ckpt"
    torch.save({"state_dict": {}, "payload": _Payload(marker)}, evil)
    for extra, env in ((["--weights_only", "false"], {}),
                       ([], {"TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD": "1"})):  # fmt: skip
        for key, value in env.items():
            monkeypatch.setenv(key, value)
        with pytest.raises(SystemExit):
            _fit("--trainer.max_epochs", "2", "--ckpt_path", str(evil), *extra)
        err = capsys.readouterr().err
        assert f"cannot read checkpoint {evil}" in err and "runs any code" in err
        assert "CONTRASEG_TRUST_CHECKPOINTS=1" in err
        assert not marker.exists()
    monkeypatch.delenv("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD")
    (CKPTS / "last.ckpt").write_bytes(evil.read_bytes())  # the same file as a run's last.ckpt
    with pytest.raises(SystemExit):
        _fit("--trainer.max_epochs", "2", "--ckpt_path", "last", "--weights_only", "false")
    assert "runs any code" in capsys.readouterr().err and not marker.exists()
    monkeypatch.setenv("CONTRASEG_TRUST_CHECKPOINTS", "1")
    with pytest.warns(UserWarning, match="runs any code"), pytest.raises(Exception):  # noqa: B017
        _fit("--trainer.max_epochs", "2", "--ckpt_path", str(evil), "--weights_only", "false")
    assert marker.exists()  # the user insisted: Lightning unpickled it (then found no weights)


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
    from contraseg.lightning_modules.embedding_task import EmbeddingTask

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


def test_step_snapshots_of_a_killed_and_resumed_run_equal_the_uninterrupted_ones(
        tmp_path: Path, monkeypatch) -> None:  # fmt: skip
    """Snapshots at steps 0, 3 and 5 (2 steps per epoch, ``max_steps`` 5): a run killed at
    step 3 and resumed from the epoch-end ``last.ckpt`` of step 2 writes bitwise the
    uninterrupted run's step 3 and 5 files (Lightning alone would resume this ``max_steps``
    run one epoch ahead: see ``RunCheckpoint.setup``)."""
    snap = ["--trainer.callbacks+=contraseg.callbacks.StepSnapshots", "--trainer.callbacks.steps",
            "[0, 3, 5]", "--trainer.max_epochs", "-1", "--trainer.max_steps", "5"]  # fmt: skip
    (tmp_path / "whole").mkdir()
    monkeypatch.chdir(tmp_path / "whole")
    _fit(*snap)
    whole = {p.name: torch.load(p, weights_only=False)["state_dict"] for p in CKPTS.glob("step=*")}
    assert sorted(whole) == ["step=000000.ckpt", "step=000003.ckpt", "step=000005.ckpt"]
    (tmp_path / "killed").mkdir()
    monkeypatch.chdir(tmp_path / "killed")
    real = StepSnapshots._maybe_save

    def killed_at_step_3(self: StepSnapshots, trainer: L.Trainer) -> None:
        if trainer.global_step == 3:
            raise RuntimeError("killed")  # after epoch 1's last.ckpt (step 2), before step 3's
        real(self, trainer)

    monkeypatch.setattr(StepSnapshots, "_maybe_save", killed_at_step_3)
    with pytest.raises(RuntimeError, match="killed"):
        _fit(*snap)
    assert sorted(p.name for p in CKPTS.glob("step=*")) == ["step=000000.ckpt"]
    assert torch.load(CKPTS / "last.ckpt", weights_only=False)["global_step"] == 2
    monkeypatch.setattr(StepSnapshots, "_maybe_save", real)
    _fit(*snap, "--ckpt_path", str(CKPTS / "last.ckpt"))
    for name, state in whole.items():
        resumed = torch.load(CKPTS / name, weights_only=False)["state_dict"]
        bad = [k for k in state if not torch.equal(state[k], resumed[k])]
        assert not bad, (name, bad[:5])
    with pytest.raises(ValueError, match="steps"):
        StepSnapshots([])


def test_an_epoch_without_a_batch_is_an_error(tmp_path: Path, monkeypatch) -> None:
    """batch_size > num_train with the last batch dropped: no silent zero-step 'success'."""
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ValueError, match=r"an epoch yields no batch: 16 training samples and "
                       r"data.batch_size 32"):  # fmt: skip
        _fit("--trainer.max_epochs", "1", "--data.init_args.batch_size", "32")


class _KillAfterStep(L.Callback):
    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_end(self, trainer: L.Trainer, *args: Any) -> None:
        if trainer.global_step == self.step:
            raise RuntimeError("killed")  # right after the mid-epoch last.ckpt


def test_a_resume_must_continue_the_checkpoint_order(tmp_path: Path, monkeypatch) -> None:
    """Mid-epoch with another batch size, or with other data: an error naming the setting;
    from an epoch end another batch size only warns (the order is unaffected)."""
    monkeypatch.chdir(tmp_path)
    cli = main(["--config", QUICK, *TINY, "--trainer.max_epochs", "2"], run=False)
    next(c for c in cli.trainer.callbacks if isinstance(c, RunCheckpoint)).last_every_n_steps = 1
    cli.trainer.callbacks.append(_KillAfterStep(1))
    with pytest.raises(RuntimeError, match="killed"):
        cli.trainer.fit(cli.model, datamodule=cli.datamodule)
    saved = torch.load(CKPTS / "last.ckpt", weights_only=True)
    assert saved["global_step"] == 1 and saved["train_loader"] == [
        {"batch_size": 8, "dataset_size": 16, "shuffle": True, "weighted": False,
         "num_replicas": 1, "seed": 0}]  # fmt: skip
    with pytest.raises(ValueError, match=r"written with batch size 8, this run uses 4; it "
                       r"stopped inside an epoch"):  # fmt: skip
        _fit("--trainer.max_epochs", "2", "--ckpt_path", "last",
             "--data.init_args.batch_size", "4")  # fmt: skip
    with pytest.raises(ValueError, match=r"used training samples .* = 16, this run 24"):
        _fit("--trainer.max_epochs", "2", "--ckpt_path", "last",
             "--data.init_args.num_train", "24")  # fmt: skip
    resumed = _fit("--trainer.max_epochs", "1", "--ckpt_path", "last")  # the same settings
    assert resumed.trainer.global_step == 2
    with pytest.warns(UserWarning, match=r"batch size 8, this run uses 4 \(from an epoch end"):
        again = _fit("--trainer.max_epochs", "2", "--ckpt_path", "last",
                     "--data.init_args.batch_size", "4")  # fmt: skip
    assert again.trainer.global_step == 2 + 4
