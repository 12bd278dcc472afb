"""Resolved ``--print_config`` of every config, recorded before the config refactor.

``python tests/config_dumps.py --record`` stored, for every YAML under
``experiments/configs`` (top level), the configuration LightningCLI resolves from it
(``fit --config <file> --print_config``) in ``tests/data/print_config/<stem>.yaml``.
``tests/test_config_dumps.py`` resolves the configs of today and checks that they
differ from those dumps only in the names renamed on purpose (``RENAMED`` there).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import sys
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "experiments" / "configs"
DUMPS = Path(__file__).resolve().parent / "data" / "print_config"


def resolved(config: Path, extra: list[str] | None = None) -> dict[str, Any]:
    """The configuration ``fit --config config --print_config`` prints, as a dict."""
    from contraseg.experiments.cli import main

    out = io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.suppress(SystemExit):
        main(["fit", "--config", str(config), *(extra or []), "--print_config"])
    return yaml.safe_load(out.getvalue())


def main() -> None:
    """Record (``--record``) the dumps of every top-level config."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--record", action="store_true", help=f"write {DUMPS}/<stem>.yaml")
    args = parser.parse_args()
    for config in sorted(CONFIGS.glob("*.yaml")):
        dump = resolved(config)
        if args.record:
            DUMPS.mkdir(parents=True, exist_ok=True)
            (DUMPS / f"{config.stem}.yaml").write_text(yaml.safe_dump(dump, sort_keys=True))
        print(config.stem, len(yaml.safe_dump(dump).splitlines()), "lines")


if __name__ == "__main__":
    sys.path.insert(0, str(REPO))
    main()
