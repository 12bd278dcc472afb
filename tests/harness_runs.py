"""Runs of ``tests/resume_run.py`` for the kill-and-resume tests: fresh or forked.

:func:`fresh_run` starts a new interpreter per run; :func:`served_run` forks the run from
``resume_run.py --serve``, a server that did the 8-11 s of imports once for this test
process (see that file).  Both return a :class:`subprocess.CompletedProcess` whose
``returncode`` is ``-9`` for a run that SIGKILLed itself and whose ``stderr`` is the run's
output.  The server is started on first use and closed when the test process exits.
"""

from __future__ import annotations

import atexit
import json
import os
import select
import signal
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
HARNESS = Path(__file__).resolve().parent / "resume_run.py"
ENV = {"WANDB_MODE": "offline", "PYTHONPATH": str(REPO)}
_SERVER: list[subprocess.Popen] = []


def fresh_run(tmp: Path, out: str, kill: int, args: list[str],
              timeout: float = 300) -> subprocess.CompletedProcess:  # fmt: skip
    """``fit ARGS`` in a new interpreter with ``tmp`` as working directory."""
    command = [sys.executable, str(HARNESS), str(tmp / out), str(kill), "fit", *args]
    return subprocess.run(command, cwd=tmp, env={**os.environ, **ENV}, capture_output=True,
                          text=True, timeout=timeout)  # fmt: skip


def served_run(tmp: Path, out: str, kill: int, args: list[str],
               timeout: float = 300) -> subprocess.CompletedProcess:  # fmt: skip
    """``fit ARGS`` forked from the fork server (its output also in ``tmp/<out stem>.log``)."""
    if not _SERVER or _SERVER[0].poll() is not None:
        _SERVER[:] = [subprocess.Popen([sys.executable, str(HARNESS), "--serve"], text=True,
                                       stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                       env={**os.environ, **ENV}, start_new_session=True)]
    server = _SERVER[0]
    log = tmp / f"{Path(out).stem}.log"
    request = {"cwd": str(tmp), "env": ENV, "log": str(log), "out": str(tmp / out), "kill": kill,
               "args": ["fit", *args]}  # fmt: skip
    server.stdin.write(json.dumps(request) + "\n")
    server.stdin.flush()
    ready, _, _ = select.select([server.stdout], [], [], timeout)
    answer = server.stdout.readline() if ready else ""
    text = log.read_text() if log.exists() else ""
    if not answer:  # timed out, or the server died
        os.killpg(server.pid, signal.SIGKILL)  # the server and its child
        _SERVER.clear()
        raise AssertionError(f"{out}: no answer within {timeout} s\n{text[-3000:]}")
    return subprocess.CompletedProcess(request["args"], json.loads(answer)["rc"], "", text)


@atexit.register
def _close_server() -> None:
    for server in _SERVER:
        server.stdin.close()
        server.wait(timeout=60)
    _SERVER.clear()
