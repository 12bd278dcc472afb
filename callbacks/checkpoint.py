"""Checkpoints a preempted run can trust: a true ``last.ckpt``, a separate ``best.ckpt``.

Lightning's ``ModelCheckpoint(monitor=..., save_last=True)`` rewrites ``last.ckpt`` only
when a new best is saved, versions files of a rerun (``last-v1.ckpt``) next to the old
run's, writes in place, and saves ``last.ckpt`` even under ``fast_dev_run``.
:class:`RunCheckpoint` instead

* rewrites ``last.ckpt`` at the end of every epoch (after its validation; with
  ``last_every_n_epochs`` every N epochs, and always at the end of training) and, with
  ``last_every_n_steps``, every N optimiser steps (mid-epoch resume points);
* keeps ``best.ckpt`` by ``monitor`` (if given) and ``epoch=NNN.ckpt`` snapshots every
  ``every_n_epochs`` epochs, all separate files;
* writes every file atomically (a temporary file beside it, renamed over the old one), so a
  kill during the write leaves the previous checkpoint intact and nothing in ``/tmp``; the
  temporary file of a failed write is removed, that of a killed writer at the next start;
* never writes a checkpoint whose weights are not finite (the previous one is kept);
* refuses to start a fresh run in a folder that already holds checkpoints (another
  run's), unless resuming (``--ckpt_path``) or ``overwrite=True``;
* writes nothing under ``fast_dev_run``.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.trainer.states import TrainerFn
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn

__all__ = ["CheckpointFolderInUseError", "RunCheckpoint", "StepSnapshots", "check_run_folder",
           "non_finite_tensors", "remove_stale_temporaries", "save_atomically"]


class CheckpointFolderInUseError(RuntimeError):
    """A fresh run was pointed at a folder holding another run's checkpoints."""


def check_run_folder(dirpath: str | Path, overwrite: bool = False) -> list[Path]:
    """The checkpoints a fresh run would find in ``dirpath``; an error unless ``overwrite``.

    Called by :class:`RunCheckpoint` when a fit starts and by the command line before it
    builds anything (no logger, no W&B run is started for a run that is then refused).

    Raises:
        CheckpointFolderInUseError: ``dirpath`` holds checkpoints and ``overwrite`` is off.
    """
    existing = sorted(Path(dirpath).glob("*.ckpt"))
    if existing and not overwrite:
        raise CheckpointFolderInUseError(
            f"{dirpath} already holds checkpoints of another run "
            f"({', '.join(p.name for p in existing[:4])}): resume it with --ckpt_path last, "
            "pick another folder with --run_name <name>, or delete the folder"
        )
    return existing


def _plain_version(version: Any) -> str | int | None:
    return version if version is None or isinstance(version, int | str) else str(version)


def non_finite_tensors(module: torch.nn.Module) -> list[str]:
    """Names of the floating-point parameters and buffers of ``module`` with NaN or inf."""
    return [name for name, t in module.state_dict().items()
            if t.is_floating_point() and not bool(torch.isfinite(t).all())]  # fmt: skip


def save_atomically(trainer: L.Trainer, filepath: str, weights_only: bool = False) -> bool:
    """Write ``filepath`` through a temporary file renamed over it, only with finite weights.

    Returns:
        Whether the file was written (``False``: a non-finite tensor, the old file is kept).
    """
    bad = non_finite_tensors(trainer.lightning_module)
    if bad:
        rank_zero_warn(f"not writing {filepath} at step {trainer.global_step}: {len(bad)} tensors "
                       f"are not finite (e.g. {bad[:3]}); the previous checkpoint is kept")
        return False
    target = Path(filepath)
    tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")  # unique to this writer
    strategy = trainer.strategy
    original = strategy.checkpoint_io
    default_io = type(original) is TorchCheckpointIO
    if default_io:  # Lightning's own save stages the whole file in the system temp folder
        strategy.checkpoint_io = _DirectCheckpointIO()
    try:
        trainer.save_checkpoint(tmp, weights_only)
    except BaseException:
        tmp.unlink(missing_ok=True)  # a full disk or an error leaves no partial file behind
        raise
    finally:
        if default_io:
            strategy.checkpoint_io = original
    if trainer.is_global_zero:
        os.replace(tmp, target)
    strategy.barrier("save_atomically.rename")
    return True


class _DirectCheckpointIO(TorchCheckpointIO):
    """``torch.save`` straight into the given (temporary) path.

    Lightning's :class:`TorchCheckpointIO` saves through an ``fsspec`` transaction, which
    stages the file with ``mkstemp`` in the *system* temp folder: a kill during the write
    left a checkpoint-sized orphan in ``/tmp`` (35-61 MB seen).  :func:`save_atomically`
    already writes to a temporary name beside the target and renames it, so the staging
    adds nothing but the orphan.
    """

    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any,
                        storage_options: Any | None = None) -> None:  # fmt: skip
        if storage_options is not None:
            raise TypeError("contraseg's checkpoint writer takes no storage_options")
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("wb") as handle:
            torch.save(checkpoint, handle)
            handle.flush()
            os.fsync(handle.fileno())


_TMP_NAME = re.compile(r"^\.(?P<name>.+)\.(?P<pid>\d+)\.tmp$")


def remove_stale_temporaries(folder: str | Path) -> list[Path]:
    """Delete the temporary files a killed writer left in ``folder``; return them.

    Files named ``.<name>.<pid>.tmp`` whose writer process is gone, and ``*.ckpt.tmp``
    (the names of earlier versions).
    """
    removed = []
    for path in Path(folder).glob("*.tmp"):
        match = _TMP_NAME.match(path.name)
        if match and _alive(int(match["pid"])):
            continue
        if match or path.name.endswith(".ckpt.tmp"):
            path.unlink(missing_ok=True)
            removed.append(path)
    return removed


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's live process
        return True
    return True


class RunCheckpoint(ModelCheckpoint):
    """``last.ckpt`` every epoch (and every N steps), ``best.ckpt`` by monitor, atomically.

    Args:
        dirpath: Checkpoint folder (default: ``<default_root_dir>/checkpoints``).
        monitor: Metric of ``best.ckpt`` (``None``: no best file).
        mode: ``max`` or ``min`` of ``monitor``.
        every_n_epochs: Also keep ``epoch=NNN.ckpt`` every N epochs (``None`` / 0: none).
        last_every_n_steps: Also rewrite ``last.ckpt`` every N optimiser steps, for long
            epochs (0: only at epoch ends).
        last_every_n_epochs: Rewrite ``last.ckpt`` at every N-th epoch end only (and at the
            end of training, whatever N), for runs of many tiny epochs: writing a 143 MB
            DeepLabV3+ checkpoint takes 0.15-0.35 s on a 2-core CPU, a third of a 2-step
            epoch of the quickstart's 300-epoch pretrainings.  A kill then loses at most
            N - 1 epochs; the resumed run still equals the uninterrupted one.
        overwrite: Delete the folder's checkpoints at the start of a fresh run instead of
            refusing to start.
    """

    def __init__(
        self,
        dirpath: str | None = None,
        monitor: str | None = None,
        mode: str = "min",
        every_n_epochs: int | None = None,
        last_every_n_steps: int = 0,
        overwrite: bool = False,
        last_every_n_epochs: int = 1,
    ) -> None:
        every_n_epochs = every_n_epochs or 0
        if every_n_epochs < 0 or last_every_n_steps < 0:
            raise ValueError("RunCheckpoint: every_n_epochs and last_every_n_steps must be >= 0")
        if last_every_n_epochs < 1:
            raise ValueError(f"RunCheckpoint: last_every_n_epochs must be >= 1, got "
                             f"{last_every_n_epochs}")  # fmt: skip
        super().__init__(dirpath=dirpath, filename="best", monitor=monitor, mode=mode,
                         save_last=True, save_top_k=1 if monitor else 0,
                         enable_version_counter=False)  # fmt: skip
        self.snapshot_every, self.last_every_n_steps = every_n_epochs, last_every_n_steps
        self.overwrite = overwrite
        self.last_every_n_epochs = last_every_n_epochs
        self._last_written_step = -1  # global step of the newest last.ckpt of this process

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        """Resume a ``max_steps`` run as the epoch-structured run it is.

        Lightning (2.6) treats every run with ``max_steps`` as iteration-based and then
        restarts an *epoch-end* checkpoint as if inside the finished epoch: the resumed run
        counts that epoch twice and trains on the next epoch's samples one epoch early (a
        killed learning-curve run resumed with other data than the uninterrupted one).  The
        runs here are epochs with a step limit, so they restart as epoch-based runs do,
        which ``tests/test_resume.py`` and ``tests/test_run_checkpoint.py`` check bitwise
        for epoch-end and mid-epoch checkpoints.
        """
        super().setup(trainer, pl_module, stage)
        trainer.fit_loop._iteration_based_training = lambda: False  # type: ignore[method-assign]

    # ------------------------------------------------------------------ run folder
    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Refuse (or, with ``overwrite``, clear) a folder with another run's checkpoints.

        Temporary files of a writer killed mid-save are removed first (with a notice).
        """
        if self.dirpath and trainer.is_global_zero and not trainer.fast_dev_run:
            for path in remove_stale_temporaries(self.dirpath):
                rank_zero_info(f"RunCheckpoint: removed {path}, left by a run killed while "
                               "writing a checkpoint")  # fmt: skip
        if trainer.fast_dev_run or trainer.ckpt_path is not None or not self.dirpath:
            return
        existing = check_run_folder(self.dirpath, self.overwrite)
        if not existing:
            return
        if trainer.is_global_zero:
            for path in existing:
                path.unlink()
            rank_zero_info(f"RunCheckpoint(overwrite=True): removed {len(existing)} checkpoints")
        trainer.strategy.barrier("RunCheckpoint.overwrite")

    def on_save_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule,
                           checkpoint: dict[str, Any]) -> None:  # fmt: skip
        """Record the loggers' runs (W&B id, CSV version): a resumed fit continues them."""
        super().on_save_checkpoint(trainer, pl_module, checkpoint)
        checkpoint["loggers"] = [{"class": type(logger).__name__,
                                  "version": _plain_version(logger.version)}
                                 for logger in trainer.loggers]  # fmt: skip

    # ------------------------------------------------------------------ triggers
    def _skip(self, trainer: L.Trainer) -> bool:
        return (bool(trainer.fast_dev_run) or trainer.state.fn != TrainerFn.FITTING
                or trainer.sanity_checking)  # fmt: skip

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule,
                           outputs: Any, batch: Any, batch_idx: int) -> None:  # fmt: skip
        """Rewrite ``last.ckpt`` every ``last_every_n_steps`` steps (mid-epoch resume)."""
        n = self.last_every_n_steps
        if n and not self._skip(trainer) and trainer.global_step % n == 0:
            if self._last_global_step_saved != trainer.global_step:
                self._save_last_checkpoint(trainer, self._monitor_candidates(trainer))

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Epoch-end checkpoints when no validation follows this epoch's training."""
        if self._should_save_on_train_epoch_end(trainer):
            self._epoch_end(trainer)

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Epoch-end checkpoints after validation (the monitored metric exists now)."""
        if not self._should_save_on_train_epoch_end(trainer):
            self._epoch_end(trainer)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Write ``last.ckpt`` if training stopped after the last write (``max_time``, ...)."""
        if not self._skip(trainer) and self._last_written_step != trainer.global_step:
            self._save_last_checkpoint(trainer, self._monitor_candidates(trainer))

    def on_exception(self, trainer: L.Trainer, pl_module: L.LightningModule,
                     exception: BaseException) -> None:  # fmt: skip
        """Nothing: the state at an exception is suspect (the last good file stays)."""

    def _epoch_end(self, trainer: L.Trainer) -> None:
        if self._skip(trainer):
            return
        candidates = self._monitor_candidates(trainer)
        if self.monitor is not None:
            if self.monitor in candidates:
                self._save_topk_checkpoint(trainer, candidates)
            else:
                logged = sorted(candidates)
                rank_zero_warn(f"RunCheckpoint: monitor {self.monitor!r} was not logged this "
                               f"epoch (logged: {logged}); best.ckpt not updated")  # fmt: skip
        epoch = trainer.current_epoch + 1
        if self.snapshot_every and epoch % self.snapshot_every == 0:
            self._save_checkpoint(
                trainer, os.path.join(self.dirpath, f"epoch={epoch - 1:03d}.ckpt")
            )
        if epoch % self.last_every_n_epochs == 0 or self._final_epoch(trainer):
            self._save_last_checkpoint(trainer, candidates)

    @staticmethod
    def _final_epoch(trainer: L.Trainer) -> bool:
        """Whether training ends after this epoch (max_epochs, max_steps or a stop request)."""
        max_epochs, max_steps = trainer.max_epochs, trainer.max_steps
        return (bool(trainer.should_stop)
                or (max_epochs is not None and max_epochs >= 0
                    and trainer.current_epoch + 1 >= max_epochs)
                or (max_steps is not None and max_steps >= 0
                    and trainer.global_step >= max_steps))  # fmt: skip

    # ------------------------------------------------------------------ writing
    def _save_checkpoint(self, trainer: L.Trainer, filepath: str) -> None:
        """Write ``filepath`` atomically, and only with finite weights."""
        if not save_atomically(trainer, filepath, self.save_weights_only):
            return
        self._last_global_step_saved = trainer.global_step
        self._last_checkpoint_saved = filepath
        if Path(filepath).stem == self.CHECKPOINT_NAME_LAST:
            self._last_written_step = trainer.global_step
        if trainer.is_global_zero:
            for logger in trainer.loggers:
                logger.after_save_checkpoint(self)


class StepSnapshots(L.Callback):
    """Checkpoints at listed optimiser steps: ``step=NNNNNN.ckpt``, for learning curves.

    One run to the largest budget leaves a checkpoint at every budget of a curve (the table
    runner's ``budgets`` axis evaluates each).  Step 0 is written before the first
    optimiser step: the run's own initialisation.  A checkpoint at step ``b`` of a run of
    ``B`` steps is not a run of ``b`` steps: the learning-rate schedule spans ``B``.  A
    resumed run writes the snapshots it has not reached yet (bitwise the uninterrupted
    run's); files are written atomically (:func:`save_atomically`).

    Args:
        steps: Optimiser steps (``global_step`` after the step) to snapshot, e.g.
            ``[0, 100, 300, 1000]``.
        dirpath: Folder (default: the run's :class:`RunCheckpoint` folder, else
            ``<default_root_dir>/checkpoints``).
    """

    def __init__(self, steps: list[int], dirpath: str | None = None) -> None:
        if not steps or any(int(s) < 0 for s in steps):
            raise ValueError(f"StepSnapshots: steps must be a non-empty list of steps >= 0, "
                             f"got {steps}")
        self.steps = sorted({int(s) for s in steps})
        self.dirpath = dirpath
        self._written: set[int] = set()

    @staticmethod
    def filename(step: int) -> str:
        """The file name of the snapshot at ``step``."""
        return f"step={int(step):06d}.ckpt"

    def _folder(self, trainer: L.Trainer) -> Path:
        if self.dirpath:
            return Path(self.dirpath)
        run = trainer.checkpoint_callback
        if run is not None and getattr(run, "dirpath", None):
            return Path(run.dirpath)
        return Path(trainer.default_root_dir) / "checkpoints"

    def _maybe_save(self, trainer: L.Trainer) -> None:
        step = trainer.global_step
        if (trainer.fast_dev_run or trainer.sanity_checking or step not in self.steps
                or step in self._written):
            return
        folder = self._folder(trainer)
        folder.mkdir(parents=True, exist_ok=True)
        if save_atomically(trainer, str(folder / self.filename(step))):
            self._written.add(step)

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Step 0: the initial weights (only in a fresh run)."""
        self._maybe_save(trainer)

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule,
                           outputs: Any, batch: Any, batch_idx: int) -> None:  # fmt: skip
        """A listed step has just been taken (with accumulation: once per step)."""
        self._maybe_save(trainer)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Warn when the run ended before a listed step (its checkpoint does not exist)."""
        missing = [s for s in self.steps if s > trainer.global_step]
        if missing:
            rank_zero_warn(f"StepSnapshots: training ended at step {trainer.global_step}, "
                           f"before steps {missing} (no checkpoint for them)")
