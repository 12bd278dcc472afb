"""The ``contraseg`` command: the CLI's subcommands plus ``reproduce`` and ``export``.

* ``contraseg fit|validate|test|predict ...``: :func:`contraseg.experiments.cli.main`
  (``experiments/run.py`` is this command too);
* ``contraseg reproduce <table> ...``: ``experiments/reproduce.py``;
* ``contraseg export --ckpt F --out D``: :mod:`contraseg.experiments.export`.

The exit status is 0 only on success: a failure raises (status 1) or exits with the parser's
status (2 for bad arguments); a table with a failed row exits 1.
"""

from __future__ import annotations

import sys

__all__ = ["main"]


def main(argv: list[str] | None = None) -> int:
    """Run a ``contraseg`` command.

    Args:
        argv: Command-line arguments without the program name (``None``: ``sys.argv[1:]``).

    Returns:
        The exit status (0: success).
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["reproduce"]:
        from contraseg.experiments import reproduce

        return reproduce.main(argv[1:])
    if argv[:1] == ["export"]:
        from contraseg.experiments import export

        return export.main(argv[1:])
    from contraseg.experiments.cli import main as cli_main

    cli_main(argv)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
