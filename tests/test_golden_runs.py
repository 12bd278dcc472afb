"""The quickstart configs reproduce the losses recorded before the refactor (to 1e-6)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from golden_runs import GOLDEN_FILE, RUNS, STEPS, run


@pytest.mark.slow
@pytest.mark.parametrize("stem", sorted(RUNS))
def test_golden_losses(stem: str, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    expected = json.loads(GOLDEN_FILE.read_text())[stem]
    assert len(expected) == STEPS
    losses = run(stem, tmp_path)
    diffs = [abs(a - b) for a, b in zip(losses, expected)]
    assert max(diffs) <= 1e-6, f"{stem}: step {diffs.index(max(diffs))} differs by {max(diffs)}"
