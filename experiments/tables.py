"""Paper tables as data: rows of chained CLI steps, run once, aggregated over seeds.

A table file ``experiments/tables/<table>.yaml``::

    name: quickstart
    metrics: [val/miou, val/kappa]            # columns (the last logged value of each; of the
                                              # last step, or of chain step k: "val/knn_acc@0")
    scales:                                   # presets: extra CLI arguments per config stem
      smoke: {all: [--trainer.max_epochs, "1"], quickstart: [--data.init_args.num_train, "64"]}
      small: {}
    steps:                                    # named steps, shared by rows (run once)
      simclr: {config: quickstart.yaml}
    rows:
      - name: SimCLR
        network: DeepLabV3+
        chain:
          - {step: simclr}
          - config: finetune_quickstart.yaml
            args: [--model.init_args.freeze_encoder, "false"]
            init: {from: 0, checkpoint: last.ckpt, arg: --model.init_args.init_checkpoint}
        paper: {val/miou: {value: 0.5, source: "Paper, Table 2", verified: false}}

A row with ``fractions: [0.01, 0.1]`` stands for one row per label fraction ("name (1%)"):
``--data.init_args.label_fraction <f>`` is added to its last step and to every step marked
``fraction: true`` (a pretraining step on the labeled subset); a scale may replace the
list (``fractions:`` in the preset, e.g. larger fractions for the few images of a fixture).

A table with ``budgets: [0, 100, 300, 1000]`` (a scale may replace the list) has a budget axis:
a row with ``budgets: true`` stands for one row per budget ("name (300 steps)").  Its chain
entry marked ``budget: true`` (the pretraining) runs once, to the largest budget
(``--trainer.max_steps``), leaving ``step=NNNNNN.ckpt`` at every budget
(:class:`contraseg.callbacks.StepSnapshots`); every later entry that inits from it starts from the
snapshot of its row's budget.  A chain entry may be a ``validate`` run (``command: validate``,
``init: {from: 0, arg: --ckpt_path}``: kNN, effective rank of that checkpoint), and may carry
a label (``as: frozen``) that names its metrics as ``"val/miou@frozen"`` beside
``"val/miou@<position>"``.  Rows without a budget are baselines (the horizontal lines of the
curve plot, ``<scale>_curves.png``).  An ``args`` list may hold nested lists (a YAML alias of
a shared argument list): they are spliced in.

A step is a ``fit`` a user could type: ``--config <config>`` + the scale's arguments for
``all`` and for the config's stem + the step's ``args`` + the scale's ``last`` arguments
(which win over a row's, e.g. ``last: [--trainer.max_epochs, "1"]`` keeps a smoke run short
where a row sets its own epochs) (+ ``--seed_everything <seed>`` for
the seeded step, by default the last of the chain; ``seeded: true`` on a step seeds it
too) + the init checkpoint of an earlier step of the chain.  Its outputs go to
``<out>/<table>/<scale>/steps/<key>/`` where ``key`` hashes the step's resolved configuration
(:func:`contraseg.experiments.cli.resolve_config`: config files with their ``defaults``, overrides
and class defaults, all filled in) and the keys of the steps it starts from.  So a step shared by
rows runs once, a rerun skips finished steps (their ``result.json``), an interrupted table
resumes, and a step whose config file, overrides or class defaults changed runs again.
See :mod:`contraseg.experiments.reproduce` for the command line.
"""

from __future__ import annotations

import contextlib
import csv
import functools
import hashlib
import io
import json
import logging
import math
import os
import re
import shlex
import shutil
import sys
import time
import traceback
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

__all__ = [
    "Step",
    "Table",
    "TableInUseError",
    "aggregate",
    "expand",
    "load_table",
    "log_wandb_table",
    "run_table",
    "write_reports",
]

HERE = Path(__file__).resolve().parent  # contraseg.experiments: a checkout's or an installed one
CONFIGS = HERE / "configs"
TABLES = HERE / "tables"
FRACTION_ARG = "--data.init_args.label_fraction"
SUBCOMMANDS = ("fit", "validate", "test")


@dataclass
class Step:
    """One ``fit`` of a row's chain, resolved for a scale and a seed."""

    config: str
    args: list[str]
    init: dict[str, Any] | None = None
    subcommand: str = "fit"
    seed: int | None = None
    key: str = ""
    depends: list[Step] = field(default_factory=list)
    resolved: bool = False  # its arguments parse (the key hashes the resolved config)

    def command(self, root: Path) -> list[str]:
        """The CLI arguments of this step (``fit`` and everything after it)."""
        args = [self.subcommand, "--config", str(CONFIGS / self.config), *self.args]
        if self.init is not None:
            source = self.depends[self.init["from"]]
            ckpt = source.output(root) / "checkpoints" / self.init.get("checkpoint", "last.ckpt")
            args += [self.init.get("arg", "--model.init_args.init_checkpoint"), str(ckpt)]
        if self.seed is not None:
            args += ["--seed_everything", str(self.seed)]
        return [*args, "--run_name", self.key]

    def folder(self, root: Path) -> Path:
        """Where this step runs (its ``outputs/<key>/`` lives inside)."""
        return root / "steps" / self.key

    def output(self, root: Path) -> Path:
        """The run folder of the step (``checkpoints/``, CSV metrics)."""
        return self.folder(root) / "outputs" / self.key


@dataclass
class Table:
    """A parsed table file."""

    name: str
    metrics: list[str]
    rows: list[dict[str, Any]]
    steps: dict[str, dict[str, Any]]
    scales: dict[str, dict[str, list[str]] | None]
    path: Path
    description: str = ""
    requires: list[str] = field(default_factory=list)
    budgets: list[int] = field(default_factory=list)


def load_table(name_or_path: str) -> Table:
    """Read ``experiments/tables/<name>.yaml`` (or a path), checking its structure.

    Raises:
        FileNotFoundError: No such table.
        ValueError: A row without a chain, a step naming an unknown shared step, a config
            that does not exist, an ``init`` from a later step.
    """
    path = Path(name_or_path)
    if not path.suffix:
        path = TABLES / f"{name_or_path}.yaml"
    if not path.is_file():
        known = sorted(p.stem for p in TABLES.glob("*.yaml"))
        raise FileNotFoundError(f"table {name_or_path!r} not found ({path}); tables: {known}")
    raw = yaml.safe_load(path.read_text()) or {}
    table = Table(name=raw.get("name", path.stem), metrics=list(raw.get("metrics") or []),
                  rows=list(raw.get("rows") or []), steps=dict(raw.get("steps") or {}),
                  scales=dict(raw.get("scales") or {}), path=path,
                  description=raw.get("description", ""),
                  requires=list(raw.get("requires") or []),
                  budgets=[int(b) for b in raw.get("budgets") or []])  # fmt: skip
    if not table.metrics or not table.rows:
        raise ValueError(f"{path}: a table needs 'metrics' and 'rows'")
    for row in table.rows:
        chain = row.get("chain") or []
        if not chain or "name" not in row:
            raise ValueError(f"{path}: every row needs a 'name' and a non-empty 'chain'")
        for k, step in enumerate(chain):
            if "step" in step and step["step"] not in table.steps:
                raise ValueError(f"{path}: row {row['name']!r} names unknown step {step['step']!r}")
            spec = _spec(table, step)
            init = spec.get("init")
            if init is not None and not 0 <= int(init.get("from", -1)) < k:
                raise ValueError(f"{path}: row {row['name']!r} step {k} inits from step "
                                 f"{init.get('from')}, which is not an earlier step")  # fmt: skip
            if spec.get("command", "fit") not in SUBCOMMANDS:
                raise ValueError(f"{path}: row {row['name']!r} step {k}: command must be one of "
                                 f"{SUBCOMMANDS}, got {spec.get('command')!r}")  # fmt: skip
        if row.get("budgets"):
            marked = [k for k, e in enumerate(chain) if _spec(table, e).get("budget")]
            if len(marked) != 1:
                raise ValueError(f"{path}: row {row['name']!r} has budgets but {len(marked)} "
                                 "chain entries marked 'budget: true' (needs exactly one)")
            if row["budgets"] is True and not table.budgets:
                raise ValueError(f"{path}: row {row['name']!r} has 'budgets: true' but the "
                                 "table lists no 'budgets'")
    return table


def expand(table: Table, scale: str) -> Table:
    """The rows the runner runs: fractions, then budgets, expanded."""
    return expand_budgets(expand_fractions(table, scale), scale)


def expand_budgets(table: Table, scale: str) -> Table:
    """A copy of ``table`` with every ``budgets`` row replaced by one row per budget.

    The budget entry of the chain gets ``--trainer.max_steps <largest budget>`` (no epoch
    limit) and a :class:`contraseg.callbacks.StepSnapshots` at every budget, the same arguments for
    every budget (so it runs once); entries that init from it start from ``step=<b>``.
    """
    from contraseg.callbacks.checkpoint import StepSnapshots

    preset = table.scales.get(scale) or {}
    rows = []
    for row in table.rows:
        if not row.get("budgets"):
            rows.append(row)
            continue
        listed = row["budgets"] if isinstance(row["budgets"], list) else table.budgets
        budgets = sorted({int(b) for b in preset.get("budgets", listed)})
        marked = next(k for k, e in enumerate(row["chain"]) if _spec(table, e).get("budget"))
        for b in budgets:
            chain = []
            for k, entry in enumerate(row["chain"]):
                spec = _spec(table, entry)
                if k == marked:
                    args = [*_flat_args(entry.get("args", [])), "--trainer.max_epochs", "-1",
                            "--trainer.max_steps", str(max(budgets)),
                            "--trainer.callbacks+=contraseg.callbacks.StepSnapshots",
                            "--trainer.callbacks.steps", json.dumps(budgets)]
                    entry = {**entry, "args": args}
                init = spec.get("init")
                if init is not None and int(init["from"]) == marked:
                    entry = {**entry, "init": {**init, "checkpoint": StepSnapshots.filename(b)}}
                chain.append(entry)
            one = {k: v for k, v in row.items() if k != "budgets"}
            rows.append({**one, "name": f"{row['name']} ({b} steps)", "chain": chain,
                         "budget": b, "curve": row["name"]})  # fmt: skip
    return Table(**{**table.__dict__, "rows": rows})


def expand_fractions(table: Table, scale: str) -> Table:
    """A copy of ``table`` with every ``fractions`` row replaced by one row per fraction."""
    preset = table.scales.get(scale) or {}
    rows = []
    for row in table.rows:
        fractions = preset.get("fractions", row.get("fractions")) if "fractions" in row else None
        if not fractions:
            rows.append(row)
            continue
        for f in fractions:
            chain = []
            for k, entry in enumerate(row["chain"]):
                spec = _spec(table, entry)
                if spec.get("fraction", k == len(row["chain"]) - 1):
                    # the entry's own args: a shared step's are added by _spec
                    args = [*_flat_args(entry.get("args", [])), FRACTION_ARG, str(f)]
                    entry = {**entry, "args": args}
                chain.append(entry)
            label = f"{float(f) * 100:g}%" if float(f) <= 1 else f"{int(f)} images"
            one = {k: v for k, v in row.items() if k != "fractions"}
            rows.append({**one, "name": f"{row['name']} ({label})", "chain": chain,
                         "label_fraction": f})  # fmt: skip
    return Table(**{**table.__dict__, "rows": rows})


def _flat_args(args: list[Any]) -> list[str]:
    """Arguments as strings; nested lists (a YAML alias of a shared list) are spliced in."""
    out: list[str] = []
    for a in args or []:
        out += _flat_args(a) if isinstance(a, list) else [str(a)]
    return out


def _spec(table: Table, step: dict[str, Any]) -> dict[str, Any]:
    """A chain entry with a shared ``step`` reference expanded.

    The entry's ``args`` extend the shared step's (they come after, so an argument given in
    both takes the row's value); every other local key replaces the step's.
    """
    if "step" not in step:
        return step
    shared = table.steps[step["step"]]
    spec = {**shared, **{k: v for k, v in step.items() if k != "step"}}
    if "args" in step and "args" in shared:
        spec["args"] = [*shared["args"], *step["args"]]
    return spec


def _scale_args(table: Table, scale: str, config: str) -> list[str]:
    if scale not in table.scales:
        raise ValueError(f"{table.path}: no scale {scale!r} (scales: {sorted(table.scales)})")
    preset = table.scales[scale]
    if preset is None:
        raise ValueError(f"{table.path}: scale {scale!r} is not available for this table")
    if not config:
        return []
    return [str(a) for a in (preset.get("all") or []) + (preset.get(Path(config).stem) or [])]


SMOKE_DESCRIPTION = ("Smoke scale: every step runs for seconds on tiny data, to check that the "
                     "table runs end to end; its numbers measure nothing.")


def describe(table: Table, scale: str) -> str:
    """The table's description at ``scale``: the scale's own ``description`` if it has one.

    A table's top-level ``description`` states the setting of its main scale; a scale that
    runs another setting (fewer steps, smaller data) says so in ``scales.<scale>.description``.
    ``smoke``, which only checks that the table runs, says that unless it has its own.
    """
    own = (table.scales.get(scale) or {}).get("description")
    if own:
        return str(own).strip()
    return SMOKE_DESCRIPTION if scale == "smoke" else table.description.strip()


def _last_args(table: Table, scale: str) -> list[str]:
    """The scale's ``last`` arguments: after a step's own, so they win over a row's."""
    return [str(a) for a in ((table.scales.get(scale) or {}).get("last") or [])]


_SEED_LINE = re.compile(r"^seed_everything: 0$", re.MULTILINE)


@functools.lru_cache(maxsize=1024)
def _resolved_text(args: tuple[str, ...]) -> str:
    from contraseg.experiments.cli import resolve_config

    with contextlib.redirect_stderr(io.StringIO()), contextlib.redirect_stdout(io.StringIO()):
        text = resolve_config(list(args))
    return "\n".join(ln for ln in text.splitlines() if not ln.startswith("#"))  # version header


def _resolved(config: str, args: list[str], seed: int | None) -> str | None:
    """The resolved configuration of a step (its key's content), without its init checkpoint.

    ``None`` when the command does not parse: such a step keys by its arguments and the config
    file's text, runs, fails with the parser's message in its log and is reported as failed.
    """
    command = ["fit", "--config", str(CONFIGS / config), *args]
    if seed is not None:  # resolved once for every seed (about 1 s per parse): seed 0, patched
        command += ["--seed_everything", "0"]
    try:
        text = _resolved_text((*command, "--run_name", "step"))
    except (SystemExit, Exception):  # any parse failure: the caller keys by the raw inputs
        return None
    if seed is None or seed == 0:
        return text
    patched, count = _SEED_LINE.subn(f"seed_everything: {seed}", text)
    if count == 1:
        return patched
    command[-1] = str(seed)  # not the single top-level line the dump writes: parse it all
    return _resolved_text((*command, "--run_name", "step"))


def resolve_row(table: Table, row: dict[str, Any], scale: str, seed: int,
                extra: list[str] | None = None) -> list[Step]:  # fmt: skip
    """The chain of ``row`` at ``scale`` for ``seed``, with keys that hash each resolved config.

    ``extra`` (e.g. ``["--data.init_args.root", "/data/potsdam"]``) ends every step's
    arguments, so it wins over the table's.
    """
    chain = row["chain"]
    steps: list[Step] = []
    for k, entry in enumerate(chain):
        spec = _spec(table, entry)
        config = spec["config"]
        if not (CONFIGS / config).is_file():
            raise ValueError(f"{table.path}: row {row['name']!r}: config {config} not found")
        seeded = spec.get("seeded", k == len(chain) - 1)
        args = [*_scale_args(table, scale, config), *_flat_args(spec.get("args", [])),
                *_last_args(table, scale), *(extra or [])]  # fmt: skip
        step = Step(config, args, init=spec.get("init"), seed=seed if seeded else None,
                    depends=list(steps), subcommand=spec.get("command", "fit"))  # fmt: skip
        resolved = _resolved(config, step.args, step.seed)
        step.resolved = resolved is not None
        if resolved is None:
            resolved = json.dumps([step.args, (CONFIGS / config).read_text()])
        identity = {"config": resolved, "seed": step.seed,
                    "init": [step.init, [s.key for s in steps]] if step.init else None}  # fmt: skip
        if step.subcommand != "fit":  # keys of fit steps stay as they were
            identity["subcommand"] = step.subcommand
        digest = hashlib.sha1(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:10]
        step.key = f"{Path(config).stem}-{digest}"
        steps.append(step)
    return steps


def _previous_result(result_file: Path, needs: Sequence[str]) -> dict[str, Any] | None:
    """A finished step's ``result.json`` if it holds every metric in ``needs``, else ``None``.

    A truncated or corrupt file (a kill while it was written by an older version, a full
    disk) and one without a needed metric are named on the console; the step runs again.
    """
    if not result_file.is_file():
        return None
    try:
        result = json.loads(result_file.read_text())
        metrics = result["metrics"]
    except (ValueError, KeyError, TypeError) as err:
        print(f"{result_file}: unreadable ({type(err).__name__}: {err}); running the step "
              "again", flush=True)  # fmt: skip
        return None
    missing = [m for m in needs if m not in metrics]
    if missing:
        print(f"{result_file}: no {missing}; running the step again (a finished checkpoint "
              "is validated)", flush=True)  # fmt: skip
        return None
    return result


def run_step(step: Step, root: Path, dry_run: bool = False, needs: Sequence[str] = (),
             label: str = "", after: Callable[[dict[str, Any]], str] | None = None,
             wandb_run: dict[str, str] | None = None) -> dict[str, Any]:  # fmt: skip
    """Run ``step`` in-process through the CLI unless its ``result.json`` has what is needed.

    The step runs with its folder as working directory (so ``outputs/`` and ``splits/`` of
    the config land there) and its console output and log in ``log.txt``.  A step that was
    interrupted (a ``last.ckpt`` but no ``result.json``) resumes with ``--ckpt_path last``.
    A ``fit`` whose metrics lack one of ``needs`` (killed after its final checkpoint, before
    ``result.json``: the resume has nothing left to train and logs nothing) is then scored
    by a ``validate`` run on its ``last.ckpt``.

    Args:
        step: The step.
        root: The table's output folder at this scale.
        dry_run: Print the command only.
        needs: Metrics the table reads from this step.
        label: Start of the step's console line (``[k/n] row (seed s) ``).
        after: Text ending the console line, given the result (elapsed time, estimate).
        wandb_run: W&B's ``WANDB_*`` variables for the step's run (name, group, job type,
            tags), set while it runs.

    Returns:
        ``{"status": "done" | "failed" | "skipped" | "dry-run", "metrics": {...}, "log": path}``.
    """
    folder = step.folder(root)
    result_file = folder / "result.json"
    command = step.command(root)
    previous = _previous_result(result_file, needs)
    if previous is not None:
        if label:
            print(f"{label}{step.key}: finished before ({result_file})", flush=True)
        return {**previous, "status": "skipped"}
    checkpoints = step.output(root) / "checkpoints"
    resumable = step.subcommand == "fit" and (checkpoints / "last.ckpt").is_file()
    if resumable:
        command += ["--ckpt_path", "last"]  # an interrupted step resumes (exactly)
    if dry_run:
        print(f"(cd {folder} && python {HERE / 'run.py'} {shlex.join(command)})")
        return {"status": "dry-run", "metrics": {}, "log": str(folder / "log.txt")}
    from contraseg.experiments.cli import main

    if step.subcommand == "fit" and not resumable and checkpoints.is_dir():
        # killed before its first resumable checkpoint (only budget snapshots, or none):
        # nothing to resume, and the checkpoint callback refuses a folder holding files of
        # another run, so this step's own folder (keyed by its content) starts clean
        print(f"{step.key}: no last.ckpt to resume; clearing {checkpoints}", flush=True)
        shutil.rmtree(checkpoints)
    folder.mkdir(parents=True, exist_ok=True)
    log = folder / "log.txt"
    cwd = Path.cwd()
    handler = None
    # Lightning's two loggers (the trainer's, and fabric's: "Seed set to 0")
    lightning_logs = [logging.getLogger(n) for n in ("lightning.pytorch", "lightning.fabric")]
    console = [(lg, h) for lg in lightning_logs for h in lg.handlers
               if isinstance(h, logging.StreamHandler)]  # fmt: skip
    started = time.monotonic()
    print(f"{label}{step.key} ({step.config}, log {log}) ...", end="", flush=True)
    saved_env = {k: os.environ.get(k) for k in (wandb_run or {})}
    os.environ.update(wandb_run or {})
    try:
        with log.open("w") as stream, contextlib.redirect_stdout(stream), \
                contextlib.redirect_stderr(stream):  # fmt: skip
            handler = logging.StreamHandler(stream)
            for lg, h in console:  # Lightning's console output goes to the step's log only
                lg.removeHandler(h)
            for lg in lightning_logs:
                lg.addHandler(handler)
            print("command:", shlex.join(command), flush=True)
            os.chdir(folder)
            try:
                cli = main(command)
                metrics = {k: float(v) for k, v in cli.trainer.callback_metrics.items()}
                status = "done" if cli.trainer.state.status.value == "finished" else "failed"
                last = checkpoints / "last.ckpt"
                if (status == "done" and step.subcommand == "fit" and last.is_file()
                        and any(m not in metrics for m in needs)):  # fmt: skip
                    _finish_wandb()
                    check = ["validate", *command[1:command.index("--run_name")],
                             "--ckpt_path", str(last), "--run_name", step.key]  # fmt: skip
                    check = [a for i, a in enumerate(check)  # drop the fit's "--ckpt_path last"
                             if not (a == "--ckpt_path" and check[i + 1] == "last")
                             and not (a == "last" and check[i - 1] == "--ckpt_path")]
                    print("metrics missing after fit; validating the final checkpoint:",
                          shlex.join(check), flush=True)  # fmt: skip
                    cli = main(check)
                    metrics.update({k: float(v) for k, v in cli.trainer.callback_metrics.items()})
            except (Exception, SystemExit) as err:  # a failed row must not stop the table
                traceback.print_exc(file=stream)
                print(f"step failed: {type(err).__name__}: {err}", file=stream)
                metrics, status = {}, "failed"
            finally:
                _finish_wandb()  # its run summary goes to the step's log, not the console
    finally:
        _finish_wandb()  # else the next in-process step's WandbLogger reuses this run
        for k, v in saved_env.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        os.chdir(cwd)
        if handler is not None:
            for lg in lightning_logs:
                lg.removeHandler(handler)
        for lg, h in console:
            lg.addHandler(h)
    seconds = time.monotonic() - started
    result = {"status": status, "metrics": metrics, "log": str(log), "command": command,
              "seconds": seconds}  # fmt: skip
    print(f" {status} in {_duration(seconds)}{after(result) if after else ''}", flush=True)
    if status == "done":
        tmp = result_file.with_name(f".result.{os.getpid()}.tmp")  # unique per writer
        tmp.write_text(json.dumps(result, indent=1))
        os.replace(tmp, result_file)
    return result


class TableInUseError(RuntimeError):
    """Another runner holds the output folder of this table and scale."""


@contextlib.contextmanager
def _exclusive(root: Path) -> Iterator[None]:
    """Hold ``root/.lock`` (an advisory ``flock``, released by the OS if the holder dies).

    Two runners on one output folder would run every step twice in the same folders; the
    second one refuses, naming the holder's pid.

    Raises:
        TableInUseError: The lock is held by another process.
    """
    import fcntl

    root.mkdir(parents=True, exist_ok=True)
    path = root / ".lock"
    with path.open("a+") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            handle.seek(0)
            holder = handle.read().strip() or "unknown"
            raise TableInUseError(f"{root} is in use by another reproduce.py (pid {holder}); "
                                  "wait for it to finish, or use another --out") from None
        handle.seek(0)
        handle.truncate()
        handle.write(f"{os.getpid()}\n")
        handle.flush()
        try:
            yield
        finally:
            handle.seek(0)
            handle.truncate()
            fcntl.flock(handle, fcntl.LOCK_UN)


def _finish_wandb() -> None:
    """Close the W&B run a step opened (one W&B run per step)."""
    wandb = sys.modules.get("wandb")
    if wandb is not None and getattr(wandb, "run", None) is not None:
        wandb.finish()


def run_table(table: Table, scale: str, seeds: list[int], out: Path, dry_run: bool = False,
              extra: list[str] | None = None, rows: list[str] | None = None,
              ) -> list[dict[str, Any]]:  # fmt: skip
    """Run every missing step of every row and seed; return one record per row and seed.

    Args:
        table: The table.
        scale: Its preset.
        seeds: Seeds of the seeded steps.
        out: Output root (``<out>/<table>/<scale>/steps/...``).
        dry_run: Print the commands only.
        extra: Arguments appended to every step (``--set``), e.g. the data root.
        rows: Run only these rows, each given as ``name`` or ``name [network]`` (the others
            are left out of the records); a budget row also answers to its curve's name.

    Raises:
        ValueError: A key of ``requires`` is not set in ``extra``.
    """
    given = {a.lstrip("-") for a in (extra or [])[::2]}
    missing = [k for k in table.requires if k not in given]
    if missing:
        raise ValueError(f"table {table.name!r} needs " + " ".join(
            f"--set {k}=<value>" for k in missing) + " (e.g. the data set folder)")  # fmt: skip
    _scale_args(table, scale, "")  # an unknown or unavailable scale fails the whole table
    table = expand(table, scale)
    if rows is not None:
        valid = {n for row in table.rows for n in _row_names(row)}
        unknown = [r for r in rows if r not in valid]
        if unknown:
            listed = sorted({row.get("curve") or row["name"] for row in table.rows})
            raise ValueError(f"--rows: no row {', '.join(map(repr, unknown))} in table "
                             f"{table.name!r}; its rows: {', '.join(map(repr, listed))} (or "
                             "'name [network]')")  # fmt: skip
    root = out.resolve() / table.name / scale  # steps run in their own folders: absolute paths
    if dry_run:
        return _run_rows(table, scale, seeds, root, True, extra, rows)
    with _exclusive(root):
        return _run_rows(table, scale, seeds, root, False, extra, rows)


def _needs(table: Table, position: int, label: str | None, last: bool) -> list[str]:
    """Metrics the table reads from the step at ``position`` of a chain.

    The last step's unsuffixed metrics and a labelled step's ``metric@label`` ones; the
    positional ``metric@k`` ones are optional (a row may have no such step).
    """
    needs = [m for m in table.metrics if "@" not in m] if last else []
    if label:
        needs += [m[: -len(label) - 1] for m in table.metrics if m.endswith(f"@{label}")]
    return needs


def _row_names(row: dict[str, Any]) -> set[str]:
    """What ``--rows`` may call a row: its name, its curve's, each with ``[network]``."""
    return {n for base in (row["name"], row.get("curve")) if base
            for n in (base, f"{base} [{row.get('network')}]")}  # fmt: skip


class _Progress:
    """One console line per step: ``[k/n] row (seed s) key ... done in 41 s, ...``.

    ``n`` counts the distinct steps of the selected rows and seeds (a step shared by rows
    runs once); the estimate is the mean time of the steps run so far times those left
    (finished steps found on disk take no time and are not counted in the mean).
    """

    def __init__(self, total: int) -> None:
        self.total, self.index, self.ran, self.spent = total, 0, 0, 0.0
        self.started = time.monotonic()

    def label(self, row: str, seed: int) -> str:
        self.index += 1
        return f"[{self.index}/{self.total}] {row} (seed {seed}) "

    def after(self, result: dict[str, Any]) -> str:
        if result["status"] not in ("done", "failed"):
            return ""
        self.ran += 1
        self.spent += float(result.get("seconds", 0.0))
        left = self.total - self.index
        elapsed = time.monotonic() - self.started
        text = f"; {_duration(elapsed)} elapsed"
        if left:
            text += f", about {_duration(self.spent / self.ran * left)} left ({left} steps)"
        return text


def _duration(seconds: float) -> str:
    seconds = int(round(seconds))
    if seconds < 120:
        return f"{seconds} s"
    if seconds < 7200:
        return f"{seconds // 60} min"
    return f"{seconds // 3600} h {seconds % 3600 // 60:02d} min"


def _run_rows(table: Table, scale: str, seeds: list[int], root: Path, dry_run: bool,
              extra: list[str] | None, rows: list[str] | None) -> list[dict[str, Any]]:  # fmt: skip
    records = []
    done: dict[str, dict[str, Any]] = {}
    plan: list[tuple[int, dict[str, Any], int, list[Step] | ValueError]] = []
    for index, row in enumerate(table.rows):
        if rows is not None and not _row_names(row) & set(rows):
            continue
        for seed in seeds:
            try:
                plan.append((index, row, seed, resolve_row(table, row, scale, seed, extra)))
            except ValueError as err:
                plan.append((index, row, seed, err))
    keys = {s.key for *_, chain in plan if not isinstance(chain, ValueError) for s in chain}
    progress = _Progress(len(keys))
    for index, row, seed, chain in plan:
        if isinstance(chain, ValueError):
            records.append({"row": row["name"], "index": index, "seed": seed,
                            "status": "failed", "metrics": {}, "log": str(chain)})  # fmt: skip
            continue
        result: dict[str, Any] = {}
        by_step: dict[str, float] = {}
        sources: dict[str, str] = {}  # metric -> key of the step that logged it
        for position, step in enumerate(chain):
            label = _spec(table, row["chain"][position]).get("as")
            needs = _needs(table, position, label, position == len(chain) - 1)
            if step.key not in done:
                line = "" if dry_run else progress.label(row["name"], seed)
                job = row["chain"][position].get("step") or Path(step.config).stem
                seeded = f" seed {step.seed}" if step.seed is not None else ""
                wandb_run = {"WANDB_NAME": f"{row['name']} | {job}{seeded}",
                             "WANDB_RUN_GROUP": f"{table.name}/{scale}", "WANDB_JOB_TYPE": job,
                             "WANDB_TAGS": f"{table.name},{scale}"}  # fmt: skip
                done[step.key] = run_step(step, root, dry_run, needs, line, progress.after,
                                          wandb_run)  # fmt: skip
            result = done[step.key]
            names = [f"{{}}@{position}", *(["{}@" + label] if label else []),
                     *(["{}"] if position == len(chain) - 1 else [])]
            for k, v in result["metrics"].items():
                for name in names:
                    by_step[name.format(k)] = v
                    sources[name.format(k)] = step.key
            if result["status"] == "failed":
                break
        record = {"row": row["name"], "index": index, "seed": seed, **result}
        record["metrics"], record["sources"] = by_step, sources
        # a step metric ("name@k") may be absent by design (e.g. no pretraining step)
        missing = [m for m in table.metrics if m not in record["metrics"] and "@" not in m]
        if record["status"] in ("done", "skipped") and missing:
            record["status"] = "failed"  # finished, but the table's metrics were not logged
            record["log"] = f"{result.get('log')} (not logged: {missing})"
        records.append(record)
    return records


def aggregate(table: Table, records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Mean and (sample, ``n - 1``) std over seeds per row and metric; failed rows marked.

    Records belong to a row by its position (``index``): two rows may share a name (the
    same method on two networks).
    """
    out = []
    for index, row in enumerate(table.rows):
        mine = [r for r in records if r["index"] == index]
        if not mine:
            continue  # a row left out (``rows``)
        ok = [r for r in mine if r["status"] in ("done", "skipped")]
        failed = [r["log"] for r in mine if r["status"] == "failed"]
        entry: dict[str, Any] = {"row": row["name"], "network": row.get("network", ""),
                                 "seeds": len(ok), "failed": failed,
                                 "budget": row.get("budget"), "curve": row.get("curve")}
        for metric in table.metrics:
            # one value per run: a step shared by the seeds (an unseeded pretraining's kNN)
            # is one measurement, not one per seed
            runs = {r.get("sources", {}).get(metric, f"record {k}"): r["metrics"][metric]
                    for k, r in enumerate(ok) if metric in r["metrics"]}  # fmt: skip
            values = list(runs.values())
            mean = sum(values) / len(values) if values else math.nan
            var = (sum((v - mean) ** 2 for v in values) / (len(values) - 1)
                   if len(values) > 1 else 0.0)  # fmt: skip
            paper = (row.get("paper") or {}).get(metric)
            entry[metric] = {"mean": mean, "std": math.sqrt(var), "n": len(values),
                             "paper": paper}  # fmt: skip
        out.append(entry)
    return out


def _cell(stat: dict[str, Any]) -> str:
    if not stat["n"]:
        return "—"
    return f"{stat['mean']:.3f} ± {stat['std']:.3f}" if stat["n"] > 1 else f"{stat['mean']:.3f}"


def _paper(stat: dict[str, Any]) -> str:
    paper = stat["paper"]
    if not paper:
        return ""
    mark = "" if paper.get("verified", True) else " (unverified)"
    return f"{paper['value']}{mark}"


PROVENANCE_PREFIX = "Generated by `experiments/reproduce.py "


def provenance(table: Table, scale: str, seeds: int | None = None,
               rows: Sequence[str] | None = None) -> str:  # fmt: skip
    """Where a report comes from: the command, the commit, the machine and the date.

    Written under the title of every ``<scale>.md``, so a table copied into the docs says how
    to make it again and what made it (``rows``: the ``--rows`` it was restricted to).
    """
    import platform
    import subprocess

    import torch

    arguments = f"{table.name} --scale {scale}"
    if seeds is not None:
        arguments += f" --seeds {seeds}"
    if rows:
        arguments += " --rows " + " ".join(shlex.quote(r) for r in rows)
    try:
        repo = Path(__file__).resolve().parents[1]
        describe = ["git", "describe", "--always", "--dirty"]
        commit = subprocess.run(describe, cwd=repo, capture_output=True, text=True,
                                timeout=10).stdout.strip()  # fmt: skip
    except (OSError, subprocess.SubprocessError):
        commit = ""
    device = (torch.cuda.get_device_name(0) if torch.cuda.is_available()
              else f"CPU only, {os.cpu_count()} cores")  # fmt: skip
    machine = f"{platform.machine()}, {device}"
    date = time.strftime("%Y-%m-%d", time.gmtime())
    return (f"{PROVENANCE_PREFIX}{arguments}`" + (f" at commit `{commit}`" if commit else "")
            + f" on {machine}, {date}.")


def write_reports(table: Table, scale: str, summary: list[dict[str, Any]], out: Path,
                  seeds: int | None = None,
                  rows: Sequence[str] | None = None) -> dict[str, Path]:  # fmt: skip
    """Write ``<scale>.md``, ``<scale>.csv`` and ``<scale>.png`` (ours vs paper) under ``out``.

    The Markdown starts with the table's :func:`provenance` (command, commit, machine, date).
    A table with a budget axis also gets ``<scale>_curves.png``: each metric against
    optimiser steps per method (mean ± std over seeds), the rows without a budget (random
    init) as horizontal lines.
    """
    folder = out / table.name
    folder.mkdir(parents=True, exist_ok=True)
    has_paper = any(e[m]["paper"] for e in summary for m in table.metrics)
    head = ["row", "network", *table.metrics] + ([f"paper {m}" for m in table.metrics]
                                                 if has_paper else [])  # fmt: skip
    lines = [f"# {table.name} ({scale})", "", provenance(table, scale, seeds, rows), "",
             describe(table, scale), "",
             "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]  # fmt: skip
    for e in summary:
        cells = [e["row"], e["network"]]
        if e["failed"] and not e["seeds"]:
            cells += [f"failed (log: {e['failed'][0]})"] + [""] * (len(table.metrics) - 1)
        else:
            cells += [_cell(e[m]) for m in table.metrics]
        if has_paper:
            cells += [_paper(e[m]) for m in table.metrics]
        lines.append("| " + " | ".join(cells) + " |")
        if e["failed"] and e["seeds"]:
            lines.append(f"| ({len(e['failed'])} seeds failed, e.g. {e['failed'][0]}) |")
    lines += ["", "Mean ± std (n - 1) over seeds of the last logged value of each metric."]
    references = [(e["row"], m, e[m]["paper"]) for e in summary for m in table.metrics
                  if e[m]["paper"]]  # fmt: skip
    if references:
        lines += ["", "Where the reference (\"paper\") column comes from:", ""]
        lines += [f"* {row}, {m}: {ref['value']}, {ref.get('source', 'source not named')}"
                  + ("" if ref.get("verified", True) else " (unverified)")
                  for row, m, ref in references]  # fmt: skip
    lines += crossover_lines(table, summary)
    paths = {"md": folder / f"{scale}.md", "csv": folder / f"{scale}.csv",
             "png": folder / f"{scale}.png"}  # fmt: skip
    paths["md"].write_text("\n".join(lines) + "\n")
    with paths["csv"].open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["row", "network", "metric", "mean", "std", "n", "paper", "failed"])
        for e in summary:
            for m in table.metrics:
                paper = e[m]["paper"]["value"] if e[m]["paper"] else ""
                writer.writerow([e["row"], e["network"], m, e[m]["mean"], e[m]["std"],
                                 e[m]["n"], paper, ";".join(e["failed"])])  # fmt: skip
    _bar_chart(table, scale, summary, paths["png"])
    if any(e.get("budget") is not None for e in summary):
        paths["curves"] = folder / f"{scale}_curves.png"
        _curve_chart(table, scale, summary, paths["curves"])
    return paths


def _budget_curves(summary: list[dict[str, Any]]) -> dict[tuple[str, str], list[dict[str, Any]]]:
    """The summary rows with a budget, grouped by curve and network (in summary order)."""
    curves: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for e in summary:
        if e.get("budget") is not None:
            curves.setdefault((e["curve"], e["network"]), []).append(e)
    return curves


def crossover_lines(table: Table, summary: list[dict[str, Any]]) -> list[str]:
    """Where each curve crosses its baseline (random init): a Markdown section, or nothing.

    For a table with a budget axis and a baseline row (a row without budget, first of its
    network), each curve's cell of a metric the baseline reports is the first positive budget
    whose mean exceeds the baseline's by more than the larger of the two standard deviations
    (with one seed: by any amount), and the difference at the curve's largest budget.
    """
    curves = _budget_curves(summary)
    baselines = [e for e in summary if e.get("budget") is None]
    if not curves or not baselines:
        return []
    metrics = [m for m in table.metrics if any(b[m]["n"] for b in baselines)]
    if not metrics:
        return []
    lines = ["", f"Crossing the baseline ({baselines[0]['row']}): the first budget at which a "
             "curve's mean is above the baseline's by more than the larger standard deviation "
             "(one seed: by any amount), and the difference at the curve's largest budget.", "",
             "| curve | network | " + " | ".join(metrics) + " |",
             "|" + "---|" * (len(metrics) + 2)]  # fmt: skip
    for (curve, network), entries in curves.items():
        base = next((b for b in baselines if b["network"] == network), baselines[0])
        cells = []
        for m in metrics:
            points = sorted((e for e in entries if e[m]["n"] and e["budget"] > 0),
                            key=lambda e: e["budget"])  # fmt: skip
            if not points or not base[m]["n"]:
                cells.append("—")
                continue
            ref, ref_std = base[m]["mean"], base[m]["std"] or 0.0
            above = [e["budget"] for e in points
                     if e[m]["mean"] - ref > max(e[m]["std"] or 0.0, ref_std)]  # fmt: skip
            first = above[0] if above else None
            last = points[-1]
            delta = f"{last[m]['mean'] - ref:+.3f} at {last['budget']}"
            cells.append(f"{first} ({delta})" if first is not None else f"never ({delta})")
        lines.append(f"| {curve} | {network} | " + " | ".join(cells) + " |")
    return lines


def publish_report(paths: dict[str, Path], table: Table, scale: str, docs: Path,
                   tag: str | None = None) -> list[Path]:  # fmt: skip
    """Copy a report into the documentation: ``docs/<table>_<scale>.md`` and its figures.

    ``tag`` publishes it as ``docs/<table>_<scale>_<tag>.md`` instead, so a report of some rows
    with more seeds stands beside the whole table's report rather than replacing it.

    The Markdown loses its ``# title`` line (the page that includes it has its own
    heading) and so starts with the provenance line; the bar chart and the curve plot keep
    their names with the same prefix.  Docs pages include the file with
    ``--8<-- "results/<table>_<scale>.md"``; ``tests/test_docs.py`` checks that every
    results table in the docs comes from such a file.
    """
    docs.mkdir(parents=True, exist_ok=True)
    stem = f"{table.name}_{scale}" + (f"_{tag}" if tag else "")
    text = paths["md"].read_text().split("\n")
    if text and text[0].startswith("# "):
        text = text[1:]
    while text and not text[0].strip():
        text = text[1:]
    written = [docs / f"{stem}.md"]
    written[0].write_text("\n".join(text))
    for key, suffix in (("png", ".png"), ("curves", "_curves.png")):
        if key in paths:
            written.append(docs / f"{stem}{suffix}")
            shutil.copyfile(paths[key], written[-1])
    return written


def log_wandb_table(table: Table, scale: str, summary: list[dict[str, Any]], out: Path,
                    project: str = "contraseg") -> Path | None:  # fmt: skip
    """Log the aggregate as a W&B Table (and the bar chart) in a run of its own.

    Offline, under ``out/<table>/wandb``, unless W&B credentials are configured (as the
    training loggers, :class:`contraseg.callbacks.WandbLogger`); ``WANDB_MODE=disabled`` skips it.

    Returns:
        The run's local folder, or ``None`` when W&B is disabled.
    """
    if os.environ.get("WANDB_MODE", "").lower() == "disabled":
        return None
    import wandb

    from contraseg.callbacks.loggers import wandb_credentials_available

    folder = out / table.name
    offline = os.environ.get("WANDB_MODE", "").lower() in ("offline", "dryrun") or (
        not wandb_credentials_available())  # fmt: skip
    metrics = table.metrics
    columns = ["row", "network", "seeds", *[f"{m} {kind}" for kind in ("mean", "std", "paper")
                                            for m in metrics]]  # fmt: skip
    data = [[e["row"], e["network"], e["seeds"], *[e[m]["mean"] for m in metrics],
             *[e[m]["std"] for m in metrics],
             *[(e[m]["paper"] or {}).get("value") for m in metrics]] for e in summary]  # fmt: skip
    run = wandb.init(project=project, name=f"table-{table.name}-{scale}", dir=str(folder),
                     mode="offline" if offline else "online", job_type="table",
                     reinit="finish_previous")  # fmt: skip
    try:
        chart = wandb.Image(str(folder / f"{scale}.png"))
        run.log({f"tables/{table.name}/{scale}": wandb.Table(columns=columns, data=data),
                 f"tables/{table.name}/{scale}_chart": chart})  # fmt: skip
        return Path(run.dir)
    finally:
        run.finish()


def _bar_chart(table: Table, scale: str, summary: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = [f"{e['row']}\n{e['network']}".strip() for e in summary]
    # the row labels once, on the first panel: their width (about 0.055 in per character at
    # font size 7) plus 3.2 in per metric panel; 0.45 in per row
    label_width = 0.055 * max(len(line) for label in labels for line in label.split("\n"))
    fig, axes = plt.subplots(1, len(table.metrics), sharey=True, squeeze=False,
                             figsize=(label_width + 3.2 * len(table.metrics),
                                      max(3.5, 0.45 * len(summary) + 1.2)))  # fmt: skip
    for ax, metric in zip(axes[0], table.metrics, strict=True):
        ours = [e[metric]["mean"] for e in summary]
        err = [0.0 if math.isnan(s) else s for s in (e[metric]["std"] for e in summary)]
        # error bars stop at zero for a non-negative mean (a score cannot go below it)
        lower = [min(s, m) if m >= 0 else s for s, m in zip(err, ours)]
        y = range(len(summary))
        paper = [e[metric]["paper"]["value"] if e[metric]["paper"] else math.nan for e in summary]
        has_paper = any(not math.isnan(p) for p in paper)
        shift, width = (0.2, 0.4) if has_paper else (0.0, 0.6)
        ax.barh([i + shift for i in y], ours, width, xerr=[lower, err], label="ours")
        for i, (m, s) in enumerate(zip(ours, err)):  # the value, past its error bar
            if not math.isnan(m):
                ax.annotate(f"{m:.3f}", (max(m + s, 0.0), i + shift), xytext=(3, 0),
                            textcoords="offset points", va="center", fontsize=6)  # fmt: skip
        if has_paper:
            ax.barh([i - 0.2 for i in y], paper, 0.4, label="paper")
        if ax is axes[0][0]:  # shared y: set (and invert) once, label the first panel only
            ax.set_yticks(list(y), labels, fontsize=7)
            ax.invert_yaxis()
        else:
            ax.tick_params(labelleft=False)
        ax.set_title(metric)
        ax.margins(x=0.15)  # room for the value labels
        if has_paper:
            ax.legend(fontsize=7)
    fig.suptitle(f"{table.name} ({scale})")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _curve_chart(table: Table, scale: str, summary: list[dict[str, Any]], path: Path) -> None:
    """Metric against optimiser steps per curve; baseline rows as horizontal lines."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    curves = {f"{curve} [{network}]" if network else curve: entries
              for (curve, network), entries in _budget_curves(summary).items()}  # fmt: skip
    # one colour per curve in every panel (a curve without a metric must not shift the cycle)
    colours = {name: f"C{k % 10}" for k, name in enumerate(curves)}
    baselines = [e for e in summary if e.get("budget") is None]
    steps = sorted({e["budget"] for e in summary if e.get("budget") is not None})
    positive = [s for s in steps if s > 0]
    # step 0 sits at a third of the first positive budget on the log axis, labelled 0
    zero_at = positive[0] / 3 if positive else 1.0
    cols = min(3, len(table.metrics))  # three panels a row: readable at page width
    nrows = math.ceil(len(table.metrics) / cols)
    fig, grid = plt.subplots(nrows, cols, figsize=(4.5 * cols, 3.6 * nrows + 0.6), squeeze=False)
    axes = list(grid.flat)
    for ax in axes[len(table.metrics):]:
        ax.set_visible(False)
    for ax, metric in zip(axes, table.metrics, strict=False):
        for name, entries in curves.items():
            entries = sorted((e for e in entries if e[metric]["n"]), key=lambda e: e["budget"])
            if not entries:
                continue
            x = [e["budget"] or zero_at for e in entries]
            y = [e[metric]["mean"] for e in entries]
            err = [e[metric]["std"] for e in entries]
            ax.errorbar(x, y, yerr=err, marker="o", ms=3, capsize=2, label=name,
                        color=colours[name])  # fmt: skip
        for k, e in enumerate(baselines):
            if e[metric]["n"]:
                mean, std = e[metric]["mean"], e[metric]["std"]
                ax.axhline(mean, color="k", ls=("--", ":", "-.")[k % 3], lw=1,
                           label=f"{e['row']} (baseline)")
                if std:
                    ax.axhspan(mean - std, mean + std, color="k", alpha=0.08)
        if positive:
            ax.set_xscale("log")
            ticks = ([zero_at] if 0 in steps else []) + positive
            ax.set_xticks(ticks, [("0" if t == zero_at else f"{t:g}") for t in ticks],
                          fontsize=7)
            ax.minorticks_off()
        ax.set_xlabel("pretraining optimiser steps")
        ax.set_title(metric, fontsize=9)
        ax.grid(alpha=0.3)
    handles, labels = axes[0].get_legend_handles_labels()
    for ax in axes[1 : len(table.metrics)]:  # the union of the panels' entries
        for h, lab in zip(*ax.get_legend_handles_labels(), strict=True):
            if lab not in labels:
                handles.append(h)
                labels.append(lab)
    fig.legend(handles, labels, loc="lower center", ncol=min(4, len(labels)), fontsize=7)
    fig.suptitle(f"{table.name} ({scale}): metric against pretraining budget")
    legend_rows = math.ceil(len(labels) / 4)
    fig.tight_layout(rect=(0, (0.3 + 0.16 * legend_rows) / fig.get_figheight(), 1, 1))
    fig.savefig(path, dpi=120)
    plt.close(fig)
