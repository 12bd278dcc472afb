"""Run the contraseg CLI in a subprocess that SIGKILLs itself at a chosen step (resume tests).

``python tests/resume_run.py OUT.pt KILL_STEP fit ARGS...`` runs ``contraseg.experiments.cli.main``;
with ``KILL_STEP > 0`` the process kills itself with ``SIGKILL`` (no clean shutdown: no
hook, no finally, no checkpoint) at the start of the training batch of that global step.
A run that finishes saves ``{"state": model state dict, "metrics": callback metrics,
"epoch", "step"}`` to ``OUT.pt``.

``python tests/resume_run.py --serve`` is a fork server for the tests: it imports the
libraries once (8-11 s of a fresh interpreter's start on a 2-core CPU, more than most of
these runs train), then reads one JSON request per line from stdin
(``{"cwd", "env", "log", "out", "kill", "args"}``), runs it in a forked child with stdout
and stderr sent to ``log``, and answers ``{"rc": ...}`` (``-9`` for a child that killed
itself).  The server itself runs no tensor operation, so no thread pool exists when it forks,
and every child starts from the same freshly imported state.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import traceback
from pathlib import Path
from typing import Any

import lightning as L
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from contraseg.experiments.cli import main  # noqa: E402


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


def _child(request: dict[str, Any]) -> int:
    """Run one request in this (forked) process; the exit code to leave with."""
    os.chdir(request["cwd"])
    os.environ.update(request["env"])
    log = os.open(request["log"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    os.dup2(log, 1)
    os.dup2(log, 2)
    try:
        run(request["out"], int(request["kill"]), list(request["args"]))
        return 0
    except SystemExit as exit_:  # e.g. an argument error of the CLI; sys.exit() is success
        return 0 if exit_.code is None else exit_.code if isinstance(exit_.code, int) else 1
    except BaseException:  # noqa: BLE001 - reported in the log, the exit code says it failed
        traceback.print_exc()
        return 1
    finally:
        sys.stdout.flush()
        sys.stderr.flush()


def serve() -> None:
    """Answer run requests from stdin, each in a forked child of this pre-imported process."""
    import segmentation_models_pytorch  # noqa: F401 - imported once, here, for every child
    import sklearn.metrics  # noqa: F401
    import timm  # noqa: F401
    from lightning.pytorch import loggers  # noqa: F401

    for line in sys.stdin:
        request = json.loads(line)
        pid = os.fork()
        if pid == 0:  # the child never returns to this loop, whatever happens
            code = 1
            try:
                code = _child(request)
            finally:
                os._exit(code)
        _, status = os.waitpid(pid, 0)
        rc = -os.WTERMSIG(status) if os.WIFSIGNALED(status) else os.WEXITSTATUS(status)
        print(json.dumps({"rc": rc}), flush=True)


if __name__ == "__main__":
    if sys.argv[1:] == ["--serve"]:
        serve()
    else:
        run(sys.argv[1], int(sys.argv[2]), sys.argv[3:])
