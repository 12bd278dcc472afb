"""Label fractions: deterministic, file-backed subsets of the labeled training images.

A subset is chosen once by seed, written to a split file (one image name per line)
and read back on every later run, so that every method is fine-tuned on exactly
the same images.  Official lists (e.g. GLCNet's ``trainR1`` = 1% of Potsdam) can be
used instead by pointing at their file.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch

from datamodules.datasets.io import DataFormatError


def subset_size(n: int, fraction: float | int) -> int:
    """Number of images for a fraction in ``(0, 1]`` or an absolute count ``>= 1``.

    Args:
        n: Size of the full labeled set.
        fraction: Fraction (float ``<= 1``) or number of images (int ``> 1``).

    Returns:
        ``max(1, round(fraction * n))`` for fractions, else the count.
    """
    if isinstance(fraction, bool) or fraction <= 0:
        raise ValueError(f"label fraction must be > 0, got {fraction!r}")
    if isinstance(fraction, float) and fraction <= 1:
        return max(1, int(round(fraction * n)))
    count = int(fraction)
    if count > n:
        raise ValueError(f"asked for {count} labeled images but only {n} exist")
    return count


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


def read_split_file(path: str | Path, known: Sequence[str] | None = None) -> list[str]:
    """Read a split file (one name per line; blank lines and ``#`` comments ignored).

    Args:
        path: Split file.
        known: If given, every listed name must be one of these.

    Returns:
        The names in file order.

    Raises:
        FileNotFoundError: If the file is missing.
        DataFormatError: If it is empty or names unknown images.
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
    return names


def labeled_subset(
    names: Sequence[str],
    fraction: float | int,
    seed: int,
    split_file: str | Path,
) -> list[str]:
    """Return the labeled subset, creating its split file on first use.

    Args:
        names: All labeled training image names.
        fraction: Fraction or count of labeled images.
        seed: Seed of the draw.
        split_file: Where the subset is stored; read if it exists.

    Returns:
        The subset's names.
    """
    path = Path(split_file)
    if path.is_file():
        return read_split_file(path, known=names)
    chosen = choose_subset(names, fraction, seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    header = f"# {len(chosen)} of {len(set(names))} images, fraction={fraction}, seed={seed}"
    path.write_text("\n".join([header, *chosen]) + "\n")
    return chosen
