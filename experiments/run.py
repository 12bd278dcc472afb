#!/usr/bin/env python
"""Entry point: ``python experiments/run.py fit --config experiments/configs/quickstart.yaml``."""

from __future__ import annotations

from contraseg.experiments.console import main

if __name__ == "__main__":
    raise SystemExit(main())
