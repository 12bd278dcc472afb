"""The documentation site builds offline with mkdocs (strict: a broken link or a page missing
from the navigation is an error) and every page of docs/ is in it."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_docs_build_strict_and_offline(tmp_path: Path) -> None:
    site = tmp_path / "site"
    command = [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(site)]
    proc = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    for page in (REPO / "docs").glob("*.md"):
        html = site / page.with_suffix(".html").name
        assert html.is_file(), f"{page.name} is not in the built site"
    index = (site / "index.html").read_text()
    assert "fonts.googleapis.com" not in index  # no request outside the machine
    assert (site / "search" / "search_index.js").is_file()  # the offline plugin's search
