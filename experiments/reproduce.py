"""Reproduce a paper table: ``python experiments/reproduce.py <table> --scale small --seeds 3``.

Runs the missing steps of every row of ``experiments/tables/<table>.yaml`` in-process through
the same CLI as ``experiments/run.py`` (``--dry-run`` prints those commands), aggregates
mean ± std over seeds and writes ``<out>/<table>/<scale>.{md,csv,png}`` and a W&B Table
(offline without W&B credentials; ``--no-wandb`` to skip).  See
:mod:`contraseg.experiments.tables` for the table format.
"""

from __future__ import annotations

import argparse
import re
from pathlib import Path

from contraseg.experiments.tables import (
    TableInUseError,
    aggregate,
    expand,
    load_table,
    log_wandb_table,
    publish_report,
    run_table,
    write_reports,
)

TAG = re.compile(r"[A-Za-z0-9-]+")


def main(argv: list[str] | None = None) -> int:
    """Run the command line; returns 0, or 1 when a row failed."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("table", help="table name (experiments/tables/<name>.yaml) or a path")
    parser.add_argument("--scale", default="small", help="preset of the table (smoke/small/full)")
    parser.add_argument("--seeds", type=int, default=3, help="seeds 0..N-1 of the seeded steps")
    parser.add_argument("--out", default="outputs/tables", help="output folder")
    parser.add_argument("--dry-run", action="store_true", help="print the commands, run nothing")
    parser.add_argument("--no-wandb", action="store_true", help="no W&B Table of the result")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="argument for every step, e.g. data.init_args.root=/data/potsdam "
                        "(an existing relative path is made absolute)")  # fmt: skip
    parser.add_argument("--rows", nargs="+", help="run only these rows: 'name' or 'name [network]'")
    parser.add_argument("--docs", metavar="DIR", help="also copy the report into the docs as "
                        "DIR/<table>_<scale>.md (+ figures), e.g. docs/results")  # fmt: skip
    parser.add_argument("--docs-tag", metavar="TAG", help="with --docs: publish as "
                        "DIR/<table>_<scale>_<TAG>.md instead, beside the whole table's report "
                        "(e.g. some rows with more seeds: --rows ... --seeds 3 --docs-tag seeds3)")
    args = parser.parse_args(argv)
    if args.docs_tag is not None and (not args.docs or not TAG.fullmatch(args.docs_tag)):
        parser.error("--docs-tag needs --docs and a tag of letters, digits and '-' "
                     f"(got {args.docs_tag!r})")
    if args.seeds < 1:
        parser.error(f"--seeds must be >= 1, got {args.seeds}")
    try:
        table = load_table(args.table)
    except (FileNotFoundError, ValueError) as err:
        parser.error(str(err))
    extra = []
    for item in args.set:
        key, sep, value = item.partition("=")
        if not sep or not key:
            parser.error(f"--set expects KEY=VALUE, got {item!r}")
        value = str(Path(value).resolve()) if Path(value).exists() else value
        extra += [f"--{key.lstrip('-')}", value]
    try:
        records = run_table(table, args.scale, list(range(args.seeds)), Path(args.out),
                            args.dry_run, extra, args.rows)  # fmt: skip
    except (ValueError, TableInUseError) as err:
        parser.error(str(err))
    if args.dry_run:
        return 0
    table = expand(table, args.scale)
    summary = aggregate(table, records)
    paths = write_reports(table, args.scale, summary, Path(args.out), args.seeds, args.rows)
    if not args.no_wandb:
        run_dir = log_wandb_table(table, args.scale, summary, Path(args.out))
        if run_dir is not None:
            paths["wandb"] = run_dir
    print(paths["md"].read_text())
    written = [*paths.values()]
    if args.docs:
        written += publish_report(paths, table, args.scale, Path(args.docs), args.docs_tag)
    print("written:", ", ".join(str(p) for p in written))
    return 1 if any(r["status"] == "failed" for r in records) else 0


if __name__ == "__main__":
    raise SystemExit(main())
