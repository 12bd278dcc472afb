from __future__ import annotations

from pathlib import Path

import pytest

from datamodules.datasets.io import DataFormatError
from datamodules.label_fractions import (
    choose_subset,
    labeled_subset,
    read_split_file,
    subset_size,
)

NAMES = [f"img_{i:04d}" for i in range(1000)]


def test_sizes() -> None:
    assert subset_size(1000, 0.01) == 10 and subset_size(1000, 0.05) == 50
    assert subset_size(1000, 1.0) == 1000 and subset_size(1000, 37) == 37
    assert subset_size(50, 0.001) == 1
    for bad in (0, -0.1, True):
        with pytest.raises(ValueError):
            subset_size(10, bad)
    with pytest.raises(ValueError, match="only 10"):
        subset_size(10, 11)


def test_choice_is_seeded_and_order_independent() -> None:
    a = choose_subset(NAMES, 0.01, seed=0)
    assert a == choose_subset(list(reversed(NAMES)), 0.01, seed=0)
    assert a != choose_subset(NAMES, 0.01, seed=1)
    assert len(a) == 10 and set(a) <= set(NAMES)


def test_split_file_written_then_reused(tmp_path: Path) -> None:
    path = tmp_path / "splits" / "toy_1pct_seed0.txt"
    first = labeled_subset(NAMES, 0.01, 0, path)
    assert path.is_file() and read_split_file(path) == first
    path.write_text("# edited by hand\nimg_0001\nimg_0002\n")
    assert labeled_subset(NAMES, 0.01, 0, path) == ["img_0001", "img_0002"]


def test_split_file_errors(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="nope.txt"):
        read_split_file(tmp_path / "nope.txt")
    empty = tmp_path / "empty.txt"
    empty.write_text("\n# nothing\n")
    with pytest.raises(DataFormatError, match="empty.txt"):
        read_split_file(empty)
    bad = tmp_path / "bad.txt"
    bad.write_text("img_0001\nghost\n")
    with pytest.raises(DataFormatError, match="bad.txt.*not in the data set"):
        read_split_file(bad, known=NAMES)
