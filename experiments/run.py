#!/usr/bin/env python
"""Entry point: ``python experiments/run.py fit --config experiments/configs/quickstart.yaml``."""

from __future__ import annotations

import sys
from pathlib import Path

if __package__ in (None, ""):  # executed as a script from a checkout
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from experiments.cli import main  # noqa: E402

if __name__ == "__main__":
    main()
