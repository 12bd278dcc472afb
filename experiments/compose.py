"""Config files that compose: ``defaults`` lists and the ``${name}`` of a run.

A config file may start with ``defaults: [base/trainer.yaml, ...]`` (paths relative to
the file).  The defaults are merged first, in order, then the file itself:

* mappings merge key by key (the later file wins on plain values);
* lists of ``class_path`` entries (``trainer.callbacks``, ``trainer.logger``) merge by
  ``class_path``: an entry naming a class already present updates that entry's
  ``init_args``; a new class is appended; ``{class_path: X, remove: true}`` drops ``X``;
* any other list, and ``null``, replace.

Every ``${name}`` in a string is then replaced by the run name: ``--run_name <name>`` on
the command line, else the file name of the config without ``.yaml``
(``experiments/configs/quickstart.yaml`` -> ``quickstart``), so the W&B run, the output
folder and the checkpoint folder follow the file name unless set.  Files without
``defaults`` or ``${name}`` are passed to LightningCLI unchanged.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml

__all__ = ["check_moved", "compose_file", "current_class_path", "expand_configs", "merge"]

PLACEHOLDER = "${name}"


def _is_class_list(value: Any) -> bool:
    return isinstance(value, list) and all(isinstance(v, dict) and "class_path" in v for v in value)


def _merge_class_lists(base: list[dict], over: list[dict]) -> list[dict]:
    out = [dict(v) for v in base]
    for entry in over:
        index = next((i for i, v in enumerate(out) if v["class_path"] == entry["class_path"]), None)
        if entry.get("remove"):
            if index is not None:
                out.pop(index)
        elif index is None:
            out.append(entry)
        else:
            out[index] = merge(out[index], entry)
    return out


def merge(base: Any, over: Any) -> Any:
    """``over`` merged onto ``base`` (see the module docstring)."""
    if isinstance(base, dict) and isinstance(over, dict):
        classes = {base.get("class_path"), over.get("class_path")} - {None}
        if len(classes) > 1:
            return over  # another class: its arguments do not merge with the old ones
        out = dict(base)
        for key, value in over.items():
            out[key] = merge(base[key], value) if key in base else value
        return out
    if _is_class_list(base) and isinstance(over, dict) and "class_path" in over:
        over = [over]
    if _is_class_list(base) and _is_class_list(over) and over:
        return _merge_class_lists(base, over)
    return over


def _substitute(tree: Any, name: str) -> Any:
    if isinstance(tree, dict):
        return {k: _substitute(v, name) for k, v in tree.items()}
    if isinstance(tree, list):
        return [_substitute(v, name) for v in tree]
    if isinstance(tree, str):
        return tree.replace(PLACEHOLDER, name)
    return tree


_CLASS_KEYS = {"class_path", "init_args", "dict_kwargs"}
MOVED = ("callbacks", "datamodules", "experiments", "lightning_modules")
_MOVED = re.compile(rf"^({'|'.join(MOVED)})[.][A-Za-z_]")


def current_class_path(value: str) -> str:
    """A class path as it is now.

    An old one (``lightning_modules.X``, in checkpoints written before the packages moved
    under the namespace) gets its ``contraseg.`` prefix.
    """
    return f"contraseg.{value}" if value.split(".")[0] in MOVED else value


def check_moved(value: Any, where: str) -> None:
    """Refuse a class path of the old top-level packages, naming the new one.

    contraseg's packages are installed under its namespace since 0.2 (``callbacks.X`` is now
    ``contraseg.callbacks.X``); the old name would otherwise fail deep inside jsonargparse, or
    import a user's own ``callbacks.py`` from the working directory.

    Raises:
        ValueError: ``value`` is a string starting with an old package name.
    """
    if isinstance(value, str) and _MOVED.match(value):
        raise ValueError(f"{where}: {value!r} is an old class path; contraseg's packages live "
                         f"under its namespace now: write 'contraseg.{value}'")  # fmt: skip


def _check_class_entries(tree: Any, path: Path, where: str = "") -> None:
    """A key beside ``class_path`` is an argument at the wrong indentation: name it.

    (jsonargparse rejects it too, but only by printing the whole entry as "given value".)
    """
    if isinstance(tree, list):
        for k, item in enumerate(tree):
            _check_class_entries(item, path, f"{where}[{k}]")
        return
    if not isinstance(tree, dict):
        return
    if "class_path" in tree:
        check_moved(tree["class_path"], f"config file {path}, {where or 'class_path'}")
        stray = [k for k in tree if k not in _CLASS_KEYS]
        if stray:
            key = f"{where}.{stray[0]}" if where else stray[0]
            raise ValueError(
                f"config file {path}: {key} sits beside {where or 'the'} class_path; a class's "
                f"arguments go under {where + '.' if where else ''}init_args (indent {stray[0]!r} "
                "one level deeper)"
            )
    for key, value in tree.items():
        _check_class_entries(value, path, f"{where}.{key}" if where else str(key))


def _load(path: Path, chain: tuple[Path, ...] = ()) -> dict[str, Any]:
    if path in chain:
        raise ValueError(f"config defaults form a cycle: {' -> '.join(map(str, (*chain, path)))}")
    if not path.is_file():
        where = f" (listed in the defaults of {chain[-1]})" if chain else ""
        raise FileNotFoundError(f"config file {path} does not exist{where}")
    try:
        config = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(err, "problem", None) or str(err).splitlines()[0]
        raise ValueError(f"config file {path} is not valid YAML: {problem}{where} (a key "
                         "indented differently from its siblings?)") from err  # fmt: skip
    if not isinstance(config, dict):
        raise ValueError(f"config file {path} must hold a mapping, got {type(config).__name__}")
    _check_class_entries(config, path)
    defaults = config.pop("defaults", None) or []
    if isinstance(defaults, str):
        defaults = [defaults]
    merged: dict[str, Any] = {}
    for entry in defaults:
        merged = merge(merged, _load((path.parent / entry).resolve(), (*chain, path)))
    return merge(merged, config)


def compose_file(path: str | Path, name: str | None = None) -> dict[str, Any]:
    """The configuration of ``path`` with its defaults merged and ``${name}`` substituted.

    Args:
        path: Config file.
        name: Run name (default: the file name without its suffix).

    Returns:
        The composed configuration.

    Raises:
        FileNotFoundError: A config or one of its defaults does not exist.
        ValueError: The defaults form a cycle or a file is not a mapping.
    """
    path = Path(path).resolve()
    return _substitute(_load(path), name or path.stem)


def _needs_compose(path: Path) -> bool:
    text = path.read_text()
    return PLACEHOLDER in text or any(line.startswith("defaults:") for line in text.splitlines())


def expand_configs(argv: list[str]) -> list[str]:
    """Command-line arguments with composing ``--config`` files replaced by their YAML.

    ``--run_name <name>`` is consumed here (default: each config's own file name).
    """
    argv, name = list(argv), None
    while any(a == "--run_name" or a.startswith("--run_name=") for a in argv):
        i = next(i for i, a in enumerate(argv) if a == "--run_name" or a.startswith("--run_name="))
        if "=" in argv[i]:
            name = argv.pop(i).split("=", 1)[1]
        elif i + 1 < len(argv):
            name = argv[i + 1]
            del argv[i : i + 2]
        else:
            raise ValueError("--run_name needs a value")
    out: list[str] = []
    i = 0
    while i < len(argv):
        arg = argv[i]
        value = None
        if arg in ("--config", "-c") and i + 1 < len(argv):
            value, i = argv[i + 1], i + 2
        elif arg.startswith("--config="):
            value, i = arg.split("=", 1)[1], i + 1
        else:
            check_moved(arg.split("=", 1)[-1] if arg.startswith("--") else arg,
                        f"command-line argument {arg!r}")  # fmt: skip
            out.append(arg)
            i += 1
            continue
        path = Path(value)
        if path.is_file() and path.suffix in (".yaml", ".yml"):
            if _needs_compose(path):
                value = yaml.safe_dump(compose_file(path, name), sort_keys=False)
            else:
                _load(path.resolve())  # the same YAML and indentation checks
        out += ["--config", value]
    return out
