"""Label fractions: deterministic, file-backed subsets of the labeled training images.

A subset is chosen once by seed, written to a split file (one image name per line)
and read back on every later run, so that every method is fine-tuned on exactly
the same images.  Official lists (e.g. GLCNet's ``trainR1`` = 1% of Potsdam) can be
used instead by pointing at their file.

A generated split file starts with its provenance::

    # contraseg split: pool=2048 source_sha1=1f0c... seed=0 fraction=0.01 count=20

(``source_sha1`` hashes the sorted pool of names it was drawn from).  On every read the
header is compared with the current pool, seed and fraction: a generated file that does
not match (another pool size, another list, an empty or headerless leftover of a failed
run) is drawn again with a notice; a file the user supplied (``split_file``) that carries
a mismatching header is an error.  Files are written atomically (temporary file + rename).
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch.utilities import rank_zero_warn

from contraseg.datamodules.datasets.io import DataFormatError

HEADER = "# contraseg split:"


def check_fraction(fraction: Any, key: str = "data.label_fraction") -> float | int:
    """A fraction in ``(0, 1]`` or a whole count ``>= 1``, returned as float or int.

    A whole float above 1 (``20.0``, how a command line may parse ``20``) is a count.

    Raises:
        ValueError: Naming ``key``, for anything else (``1.5``, ``0``, ``-1``, ``True``).
    """
    if isinstance(fraction, float) and 0 < fraction <= 1:
        return fraction
    if isinstance(fraction, float) and fraction > 1 and fraction.is_integer():
        return int(fraction)
    if not (isinstance(fraction, int) and not isinstance(fraction, bool) and fraction >= 1):
        raise ValueError(
            f"{key} must be a fraction in (0, 1] (e.g. 0.01 for 1%) or an integer count of "
            f"images >= 1, got {fraction!r}"
        )
    return fraction


def subset_size(n: int, fraction: float | int) -> int:
    """Number of images for a fraction in ``(0, 1]`` or an absolute count ``>= 1``.

    Args:
        n: Size of the full labeled set.
        fraction: Fraction (float in ``(0, 1]``) or number of images (int ``>= 1``).

    Returns:
        ``max(1, round(fraction * n))`` for fractions, else the count.

    Raises:
        ValueError: For any other value, or a count above ``n``.
    """
    fraction = check_fraction(fraction)
    if isinstance(fraction, float):
        return max(1, int(round(fraction * n)))
    if fraction > n:
        raise ValueError(f"data.label_fraction asks for {fraction} labeled images but the "
                         f"pool has only {n}")  # fmt: skip
    return int(fraction)


def choose_subset(names: Sequence[str], fraction: float | int, seed: int) -> list[str]:
    """Seeded random subset of ``names`` (independent of their input order).

    Args:
        names: All labeled image names.
        fraction: Fraction or count (see :func:`subset_size`).
        seed: Seed of the draw.

    Returns:
        The chosen names, sorted.
    """
    pool = sorted(set(names))
    k = subset_size(len(pool), fraction)
    order = torch.randperm(len(pool), generator=torch.Generator().manual_seed(seed))
    return sorted(pool[i] for i in order[:k].tolist())


def pool_hash(names: Sequence[str]) -> str:
    """SHA-1 (first 16 hex digits) of the sorted, de-duplicated pool of names."""
    return hashlib.sha1("\n".join(sorted(set(names))).encode()).hexdigest()[:16]


def provenance(
    names: Sequence[str], fraction: float | int, seed: int, count: int
) -> dict[str, str]:
    """The header fields of a split drawn from ``names``."""
    return {"pool": str(len(set(names))), "source_sha1": pool_hash(names), "seed": str(seed),
            "fraction": repr(fraction), "count": str(count)}  # fmt: skip


def read_provenance(path: str | Path) -> dict[str, str] | None:
    """The provenance fields of a split file's header, or ``None`` without one."""
    for line in Path(path).read_text().splitlines():
        if line.startswith(HEADER):
            fields = dict(f.split("=", 1) for f in line[len(HEADER) :].split() if "=" in f)
            return fields
        if line.strip() and not line.startswith("#"):
            break
    return None


def read_split_file(path: str | Path, known: Sequence[str] | None = None) -> list[str]:
    """Read a split file (one name per line; blank lines and ``#`` comments ignored).

    Args:
        path: Split file.
        known: If given, every listed name must be one of these, and a provenance
            header must match them (its pool hash).

    Returns:
        The names in file order.

    Raises:
        FileNotFoundError: If the file is missing.
        DataFormatError: If it is empty, names unknown images, or was drawn from another pool.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"split file not found: {path}")
    names = [ln.strip() for ln in path.read_text().splitlines()]
    names = [n for n in names if n and not n.startswith("#")]
    if not names:
        raise DataFormatError(f"split file {path} lists no image names")
    if known is not None:
        unknown = sorted(set(names) - set(known))
        if unknown:
            raise DataFormatError(
                f"split file {path} names {len(unknown)} images that are not in the data set, "
                f"e.g. {unknown[:3]}"
            )
        header = read_provenance(path)
        if header is not None and header.get("source_sha1") != pool_hash(known):
            raise DataFormatError(
                f"split file {path} was drawn from another pool of images (its header: "
                f"pool={header.get('pool')}, source_sha1={header.get('source_sha1')}; this data "
                f"set: pool={len(set(known))}, source_sha1={pool_hash(known)})"
            )
    return names


def _stale_reason(path: Path, expected: dict[str, str]) -> str | None:
    """Why the generated split file at ``path`` cannot be reused (``None``: it can)."""
    try:
        header = read_provenance(path)
        listed = [n for n in (ln.strip() for ln in path.read_text().splitlines())
                  if n and not n.startswith("#")]  # fmt: skip
    except (OSError, UnicodeDecodeError) as err:
        return f"unreadable ({err})"
    if header is None:
        return "no provenance header (empty, or written by a failed or older run)"
    diff = [f"{k}={header.get(k)} (now {v})" for k, v in expected.items() if header.get(k) != v]
    if diff:
        return "drawn for another setting: " + ", ".join(diff)
    if len(listed) != int(expected["count"]):
        return f"lists {len(listed)} names but its header says count={expected['count']}"
    return None


def write_atomic(path: str | Path, text: str) -> None:
    """Write ``text`` to ``path`` through a temporary file and a rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def labeled_subset(
    names: Sequence[str],
    fraction: float | int,
    seed: int,
    split_file: str | Path,
) -> list[str]:
    """Return the labeled subset, (re)creating its split file when it does not match.

    Args:
        names: All labeled training image names.
        fraction: Fraction or count of labeled images.
        seed: Seed of the draw.
        split_file: Where the subset is stored; reused if its provenance matches.

    Returns:
        The subset's names.
    """
    path = Path(split_file)
    fraction = check_fraction(fraction)
    chosen = choose_subset(names, fraction, seed)
    expected = provenance(names, fraction, seed, len(chosen))
    if path.is_file():
        reason = _stale_reason(path, expected)
        if reason is None:
            return read_split_file(path, known=names)
        rank_zero_warn(f"split file {path}: {reason}; drawing it again")
    header = HEADER + " " + " ".join(f"{k}={v}" for k, v in expected.items())
    write_atomic(path, "\n".join([header, *chosen]) + "\n")
    return chosen
