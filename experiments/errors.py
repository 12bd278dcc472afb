"""Configuration errors that say first what is wrong and what was probably meant.

jsonargparse reports a misspelt argument inside a nested union report, after the whole usage
(about 50 lines for ``fit``).  :func:`explain` reads its message and states the offending key
first, with a "did you mean" from the names that exist there: the arguments of the class
the key belongs to (its ``__init__`` and those of its bases, which receive ``**kwargs``), or
the classes of the package a misspelt class path names.  :class:`ContrasegParser` prints
that line, then jsonargparse's message, then a one-line pointer to ``--help`` instead of
the usage.
"""

from __future__ import annotations

import difflib
import importlib
import inspect
import re
import sys
from typing import Any, NoReturn

from lightning.pytorch.cli import LightningArgumentParser

__all__ = ["ContrasegParser", "close_matches", "explain", "init_arguments"]

_OPTION = re.compile(r"Parser key \"(\w+)\".*?Problem with given class_path '([\w.]+)':\s*"
                     r"Option '(\w+)' is not accepted", re.S)  # fmt: skip
_NO_CLASS = re.compile(r"Parser key \"(\w+)\".*?Problem with given class_path '([\w.]+)':\s*"
                       r"module '([\w.]+)' has no attribute '(\w+)'", re.S)  # fmt: skip
_KEY = re.compile(r"Key \"([\w.]+)\" is not expected|unrecognized arguments: --([\w.]+)"
                  r"|does not accept option '([\w.]+)'", re.I)  # fmt: skip


def init_arguments(cls: type) -> list[str]:
    """Every keyword ``cls(...)`` accepts.

    Its ``__init__``'s and, through ``**kwargs``, its bases' (how jsonargparse reads a class).
    """
    names: list[str] = []
    for klass in cls.__mro__:
        init = klass.__dict__.get("__init__")
        if init is None:
            continue
        params = inspect.signature(init).parameters.values()
        names += [p.name for p in params if p.name != "self"
                  and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)]  # fmt: skip
        if not any(p.kind is p.VAR_KEYWORD for p in params):
            break
    return list(dict.fromkeys(names))


def close_matches(word: str, candidates: list[str]) -> list[str]:
    """Up to three candidates close to ``word`` (difflib ratio 0.6, case-insensitive)."""
    lower = {c.lower(): c for c in candidates}
    return [lower[m] for m in difflib.get_close_matches(word.lower(), list(lower), 3, 0.6)]


def _did_you_mean(matches: list[str]) -> str:
    return f"; did you mean {' or '.join(repr(m) for m in matches)}?" if matches else ""


def explain(message: str, options: list[str] | None = None) -> str | None:
    """The offending key of a jsonargparse error and what was probably meant (or ``None``).

    Args:
        message: jsonargparse's error message.
        options: The parser's own keys (``trainer.max_epochs``, ...), for a misspelt one.
    """
    found = _OPTION.search(message)
    if found:
        group, class_path, option = found.groups()
        module, _, name = class_path.rpartition(".")
        try:
            known = init_arguments(getattr(importlib.import_module(module), name))
        except (ImportError, AttributeError, ValueError):
            known = []
        return (f"{group}.init_args.{option}: {name} has no argument {option!r}"
                + _did_you_mean(close_matches(option, known)))
    found = _NO_CLASS.search(message)
    if found:
        group, class_path, module, name = found.groups()
        try:
            package = importlib.import_module(module)
            known = [n for n in getattr(package, "__all__", dir(package)) if n[:1].isupper()]
        except ImportError:
            known = []
        matches = [f"{module}.{m}" for m in close_matches(name, known)]
        return f"{group}: no class {class_path!r}" + _did_you_mean(matches)
    found = _KEY.search(message)
    if found:
        key = next(g for g in found.groups() if g)
        return f"{key}: no such argument" + _did_you_mean(close_matches(key, options or []))
    return None


class ContrasegParser(LightningArgumentParser):
    """A parser whose errors start with the offending key (and a "did you mean")."""

    def error(self, message: str, ex: Exception | None = None) -> NoReturn:  # noqa: D102
        if not self.exit_on_error:
            super().error(message, ex)
        parser = getattr(ex, "subcommand_parser", None) or self
        options = [o.lstrip("-") for a in parser._actions for o in a.option_strings
                   if o.startswith("--")]  # fmt: skip
        headline = explain(message, options)
        if headline:
            sys.stderr.write(f"error: {headline}\n")
        sys.stderr.write(f"{'details' if headline else 'error'}: {message}\n")
        prog = parser.prog.replace(" [options]", "")
        sys.stderr.write(f"(every argument: {prog} --help)\n")
        self.exit(2)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        # no prefix matching: a misspelt --trainer.max_epoch is an error, not max_epochs
        super().__init__(*args, **{"allow_abbrev": False, **kwargs})
