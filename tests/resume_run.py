"""Run the contraseg CLI in a subprocess that SIGKILLs itself at a chosen step (resume tests).

``python tests/resume_run.py OUT.pt KILL_STEP fit ARGS...`` runs ``experiments.cli.main``;
with ``KILL_STEP > 0`` the process kills itself with ``SIGKILL`` (no clean shutdown: no
hook, no finally, no checkpoint) at the start of the training batch of that global step.
A run that finishes saves ``{"state": model state dict, "metrics": callback metrics,
"epoch", "step"}`` to ``OUT.pt``.
"""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path
from typing import Any

import lightning as L
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from experiments.cli import main  # noqa: E402


class KillAtStep(L.Callback):
    """SIGKILL this process when training reaches ``step`` (before that step's batch)."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_start(self, trainer: L.Trainer, *args: Any) -> None:  # noqa: D102
        if trainer.global_step == self.step:
            os.kill(os.getpid(), signal.SIGKILL)


def run(out: str, kill_step: int, args: list[str]) -> None:
    """Run the CLI; save the final state to ``out`` unless killed first."""
    if kill_step > 0:
        args = [*args, "--trainer.callbacks+=resume_run.KillAtStep",
                "--trainer.callbacks.step", str(kill_step)]  # fmt: skip
    cli = main(args)
    metrics = {k: float(v) for k, v in cli.trainer.callback_metrics.items()}
    state = {k: v.detach().cpu().clone() for k, v in cli.model.state_dict().items()}
    torch.save({"state": state, "metrics": metrics, "epoch": cli.trainer.current_epoch,
                "step": cli.trainer.global_step, "task_state": cli.model.task_state()},
               out)  # fmt: skip


if __name__ == "__main__":
    run(sys.argv[1], int(sys.argv[2]), sys.argv[3:])
