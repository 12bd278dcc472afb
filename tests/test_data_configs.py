"""Data sets are configured once: ``experiments/configs/data/<set>.yaml`` holds a data set's
block, method configs list it in ``defaults`` and set only what differs."""

from __future__ import annotations

import itertools
import json
from pathlib import Path
from typing import Any

import yaml

from contraseg.experiments.compose import compose_file

CONFIGS = Path(__file__).resolve().parents[1] / "experiments" / "configs"
DATA = CONFIGS / "data"
FILES = sorted([*CONFIGS.glob("*.yaml"), *DATA.glob("*.yaml")])
# the data sets the project ships a block for (one file each; variants build on them)
SETS = ["potsdam", "potsdam_tiles", "cityscapes", "voc", "textured", "textured_scenes",
        "digits", "digit_scenes", "synthetic", "synthetic_segmentation", "synthetic_medical",
        "btcv", "hippocampus", "mmwhs", "isic", "isic_segmentation", "cifar10",
        "image_folder"]  # fmt: skip


def own_data_entries(path: Path) -> dict[str, str]:
    """The ``data.init_args`` entries written in ``path`` itself (values as JSON)."""
    data = (yaml.safe_load(path.read_text()) or {}).get("data") or {}
    return {k: json.dumps(v, sort_keys=True) for k, v in (data.get("init_args") or {}).items()}


def data_class(path: Path) -> str | None:
    return (compose_file(path).get("data") or {}).get("class_path")


def test_every_shipped_data_set_has_one_block() -> None:
    classes: dict[str, Any] = {}
    for name in SETS:
        path = DATA / f"{name}.yaml"
        assert path.is_file(), f"missing data block {path}"
        tree = yaml.safe_load(path.read_text())
        assert "defaults" not in tree, f"{path.name} is a data set's block, not a variant"
        cls = tree["data"]["class_path"]
        assert cls not in classes, f"{path.name} and {classes[cls]} both describe {cls}"
        classes[cls] = path.name


def test_method_configs_name_their_data_set_instead_of_copying_it() -> None:
    # (a block without a class, e.g. data/graphs.yaml, holds what several data sets share)
    blocks = {cls: p.name for p in DATA.glob("*.yaml")
              if "defaults" not in yaml.safe_load(p.read_text())
              and (cls := yaml.safe_load(p.read_text())["data"].get("class_path"))}
    for path in CONFIGS.glob("*.yaml"):
        data = (yaml.safe_load(path.read_text()) or {}).get("data") or {}
        cls = data.get("class_path")
        assert cls not in blocks, (f"{path.name} writes the {cls} block out; list "
                                   f"data/{blocks[cls]} in its defaults instead")  # fmt: skip


def test_no_two_configs_repeat_a_data_block() -> None:
    """Two files of one data set sharing two or more identical data entries hold a copy."""
    info = {p: (data_class(p), own_data_entries(p)) for p in FILES}
    repeated = []
    for (a, (ca, da)), (b, (cb, db)) in itertools.combinations(info.items(), 2):
        same = sorted(k for k in set(da) & set(db) if da[k] == db[k])
        if ca is not None and ca == cb and len(same) >= 2:
            repeated.append(f"{a.relative_to(CONFIGS)} and {b.relative_to(CONFIGS)}: {same}")
    assert not repeated, "data entries written twice (move them into experiments/configs/" \
                         "data/): " + "; ".join(repeated)


def test_the_check_finds_a_copied_block(tmp_path: Path) -> None:
    a, b = tmp_path / "a.yaml", tmp_path / "b.yaml"
    block = {"data": {"class_path": "x.Y", "init_args": {"root": "r", "crop_size": 8, "k": 1}}}
    a.write_text(yaml.safe_dump(block))
    block["data"]["init_args"]["k"] = 2
    b.write_text(yaml.safe_dump(block))
    da, db = own_data_entries(a), own_data_entries(b)
    assert sorted(k for k in set(da) & set(db) if da[k] == db[k]) == ["crop_size", "root"]
