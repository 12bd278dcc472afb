"""Hyper-parameter checks shared by every task (ranges named by their ``model.`` key)."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterable, MutableMapping
from typing import Any

__all__ = ["check_ranges", "plain_numbers"]


def check_ranges(
    hparams: MutableMapping[str, Any],
    positive: Iterable[str] = (),
    non_negative: Iterable[str] = (),
    unit: Iterable[str] = (),
) -> None:
    """Reject out-of-range or non-finite numbers at configuration time.

    Names absent from ``hparams`` (or not numbers, e.g. ``None``) are skipped, so one
    list of names serves every task.

    Args:
        hparams: The task's hyper-parameters.
        positive: Names that must be ``> 0`` (learning rates, temperatures).
        non_negative: Names that must be ``>= 0``.
        unit: Names that must lie in ``[0, 1]``.

    Raises:
        ValueError: Naming the first offending ``model.<name>`` and its value.
    """
    checks = [(positive, lambda v: v > 0, "> 0"),
              (non_negative, lambda v: v >= 0, ">= 0"),
              (unit, lambda v: 0 <= v <= 1, "in [0, 1]")]  # fmt: skip
    for names, ok, rule in checks:
        for name in names:
            value = hparams.get(name)
            if isinstance(value, bool) or not isinstance(value, int | float):
                continue
            if not (math.isfinite(value) and ok(value)):
                raise ValueError(f"model.{name} must be {rule}, got {value}")


def plain_numbers(*stores: MutableMapping[str, Any]) -> None:
    """Plain values: ``int``/``float`` for number subclasses, dicts for dataclasses.

    Number subclasses are jsonargparse's ``PositiveFloat`` ...; dataclass arguments (e.g.
    ``Projector``) become dicts of their fields.  Checkpoints then hold plain values and
    load with ``torch.load(weights_only=True)``.
    """
    for store in stores:
        for key, value in list(store.items()):
            if dataclasses.is_dataclass(value) and not isinstance(value, type):
                store[key] = {k: list(v) if isinstance(v, tuple) else v
                              for k, v in dataclasses.asdict(value).items()}  # fmt: skip
            elif isinstance(value, float) and type(value) is not float:
                store[key] = float(value)
            elif isinstance(value, int) and type(value) not in (int, bool):
                store[key] = int(value)
