"""Every config resolves to the values it resolved to before the config refactor.

The before-dumps (``tests/data/print_config``) were written by ``tests/config_dumps.py``
from the code before issue 8; only the names in ``RENAMED`` (old dotted key -> new key,
``None``: removed on purpose) and the keys in ``ADDED`` may differ.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml
from config_dumps import CONFIGS, DUMPS, resolved

# key patterns are regular expressions over dotted keys (list items as their index)
RENAMED: dict[str, str | None] = {}
ADDED: list[str] = []


def flatten(tree: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(tree, dict):
        out: dict[str, Any] = {}
        for key, value in tree.items():
            out.update(flatten(value, f"{prefix}{key}."))
        return out
    if isinstance(tree, list) and any(isinstance(v, dict) for v in tree):
        out = {}
        for i, value in enumerate(tree):
            out.update(flatten(value, f"{prefix}{i}."))
        return out
    return {prefix[:-1]: tree}


def renamed(flat: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in flat.items():
        for pattern, new in RENAMED.items():
            if re.fullmatch(pattern, key):
                if new is None:
                    break
                key = re.sub(pattern, new, key)
                out[key] = value
                break
        else:
            out[key] = value
    return out


DUMPED = sorted(DUMPS.glob("*.yaml"))


def test_every_config_has_a_dump() -> None:
    assert {p.stem for p in DUMPED} == {p.stem for p in CONFIGS.glob("*.yaml")}


@pytest.mark.parametrize("dump", DUMPED, ids=lambda p: p.stem)
def test_resolved_config_unchanged(dump: Path) -> None:
    before = renamed(flatten(yaml.safe_load(dump.read_text())))
    after = flatten(resolved(CONFIGS / dump.name))
    extra = {k for k in set(after) - set(before) if not any(re.fullmatch(a, k) for a in ADDED)}
    assert not extra, f"new keys {sorted(extra)}"
    missing = set(before) - set(after)
    assert not missing, f"keys gone {sorted(missing)}"
    changed = {k: (before[k], after[k]) for k in before if before[k] != after[k]}
    assert not changed, f"values changed {changed}"
