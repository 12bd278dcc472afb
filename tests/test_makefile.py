"""The Makefile's install stamp follows TORCH_PAIR: another pair reinstalls."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.skipif(shutil.which("make") is None, reason="no make")
def test_another_torch_pair_reinstalls(tmp_path: Path) -> None:
    venv = tmp_path / "venv"
    pair = "torch==9.9.9 torchvision==9.9.9"
    dry = subprocess.run(["make", "-n", "install", f"VENV={venv}", f"TORCH_PAIR={pair}"],
                         cwd=REPO, capture_output=True, text=True, check=True).stdout  # fmt: skip
    assert f"pip install --quiet {pair}" in dry
    stamp = venv / ".installed-torch-9.9.9_torchvision-9.9.9"
    assert f"touch {stamp}" in dry
    venv.mkdir()
    stamp.touch()  # installed with that pair: nothing to do
    again = subprocess.run(["make", "-n", "install", f"VENV={venv}", f"TORCH_PAIR={pair}"],
                           cwd=REPO, capture_output=True, text=True, check=True).stdout  # fmt: skip
    assert "pip install" not in again
    other = subprocess.run(["make", "-n", "install", f"VENV={venv}"], cwd=REPO,
                           capture_output=True, text=True, check=True).stdout  # fmt: skip
    assert "torch==2.14.1" in other  # the default pair is not installed in that venv
