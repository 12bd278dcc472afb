from __future__ import annotations

from pathlib import Path

import pytest

from contraseg.datamodules.datasets.io import DataFormatError
from contraseg.datamodules.label_fractions import (
    choose_subset,
    labeled_subset,
    pool_hash,
    read_provenance,
    read_split_file,
    subset_size,
)

NAMES = [f"img_{i:04d}" for i in range(1000)]


def test_sizes() -> None:
    assert subset_size(1000, 0.01) == 10 and subset_size(1000, 0.05) == 50
    assert subset_size(1000, 1.0) == 1000 and subset_size(1000, 37) == 37
    assert subset_size(50, 0.001) == 1
    assert subset_size(50, 20.0) == 20  # a whole float above 1 is a count (CLI parsing)
    for bad in (0, -0.1, True, 1.5, -3, 0.0, float("nan"), "0.1"):
        with pytest.raises(ValueError, match=r"label_fraction must be a fraction in \(0, 1\]"):
            subset_size(10, bad)
    with pytest.raises(ValueError, match="data.label_fraction asks for 11.*only 10"):
        subset_size(10, 11)


@pytest.mark.parametrize("bad", [1.5, 0, -1, 0.0])
def test_data_module_rejects_bad_fraction_at_configuration(bad: float, tmp_path: Path) -> None:
    from contraseg.datamodules import SyntheticSegmentationDataModule

    with pytest.raises(ValueError, match="data.label_fraction"):
        SyntheticSegmentationDataModule(label_fraction=bad, split_dir=str(tmp_path))


def test_choice_is_seeded_and_order_independent() -> None:
    a = choose_subset(NAMES, 0.01, seed=0)
    assert a == choose_subset(list(reversed(NAMES)), 0.01, seed=0)
    assert a != choose_subset(NAMES, 0.01, seed=1)
    assert len(a) == 10 and set(a) <= set(NAMES)


def test_split_file_written_with_provenance_then_reused(tmp_path: Path) -> None:
    path = tmp_path / "splits" / "toy_1pct_seed0.txt"
    first = labeled_subset(NAMES, 0.01, 0, path)
    assert path.is_file() and read_split_file(path) == first
    header = read_provenance(path)
    assert header == {"pool": "1000", "source_sha1": pool_hash(NAMES), "seed": "0",
                      "fraction": "0.01", "count": "10"}  # fmt: skip
    assert not list(path.parent.glob(".*.tmp"))  # written through a temporary file
    mtime = path.stat().st_mtime_ns
    assert labeled_subset(NAMES, 0.01, 0, path) == first and path.stat().st_mtime_ns == mtime


def test_split_file_of_another_pool_is_drawn_again(tmp_path: Path) -> None:
    path = tmp_path / "s.txt"
    small = labeled_subset(NAMES[:256], 0.01, 0, path)  # 3 of 256
    assert len(small) == 3
    with pytest.warns(UserWarning, match=r"s\.txt: drawn for another setting: pool=256 \(now 2000"):
        big = labeled_subset([f"img_{i:04d}" for i in range(2000)], 0.01, 0, path)
    assert len(big) == 20 and read_provenance(path)["pool"] == "2000"


@pytest.mark.parametrize("content", ["", "img_0001\nimg_0002\n", "# 3 of 256 images\nimg_0001\n"])
def test_leftover_or_headerless_split_file_is_drawn_again(tmp_path: Path, content: str) -> None:
    path = tmp_path / "s.txt"
    path.write_text(content)  # an empty file of a failed run, an old or hand-made list
    with pytest.warns(UserWarning, match="no provenance header"):
        chosen = labeled_subset(NAMES, 0.01, 0, path)
    assert chosen == choose_subset(NAMES, 0.01, 0) and read_split_file(path) == chosen


def test_split_file_with_wrong_count_is_drawn_again(tmp_path: Path) -> None:
    path = tmp_path / "s.txt"
    labeled_subset(NAMES, 0.01, 0, path)
    path.write_text("\n".join(path.read_text().splitlines()[:-1]) + "\n")  # a name lost
    with pytest.warns(UserWarning, match="lists 9 names but its header says count=10"):
        assert len(labeled_subset(NAMES, 0.01, 0, path)) == 10


def test_user_split_file_from_another_pool_is_an_error(tmp_path: Path) -> None:
    path = tmp_path / "mine.txt"
    labeled_subset(NAMES[:256], 0.01, 0, path)
    with pytest.raises(DataFormatError, match=r"mine\.txt was drawn from another pool.*pool=256"):
        read_split_file(path, known=NAMES)
    path.write_text("img_0001\n")  # no header: an official or hand-made list, names checked only
    assert read_split_file(path, known=NAMES) == ["img_0001"]


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
