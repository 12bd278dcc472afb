"""Every default is visible to the CLI: a task built in Python (``cls()``) and one built from
the values ``--print_config`` shows for a config that sets nothing have the same
hyper-parameters (defaults live in signatures, never in ``kwargs.setdefault``)."""

from __future__ import annotations

import dataclasses
import inspect
import re
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml
from conftest import _png, write_segmentation_folder

import contraseg.datamodules as dm
import contraseg.lightning_modules as lm
from contraseg.experiments.cli import main

TASKS = sorted(name for name in lm.__all__ if inspect.isclass(getattr(lm, name))
               and issubclass(getattr(lm, name), lm.BaseTask) and name != "BaseTask")  # fmt: skip
# arguments linked from the data module (absent from a data-less --print_config)
LINKED = {"ImageClassifier": {"num_classes": 2}}


def required_args(name: str, tmp_path: Path) -> dict[str, Any]:
    """Arguments a task cannot run without: PR-SFDA's source model (a fine-tuning checkpoint)."""
    if name != "SourceFreeAdaptation":
        return LINKED.get(name, {})
    import torch

    path = tmp_path / "source.ckpt"
    torch.save({"state_dict": lm.SegmentationFineTune().state_dict()}, path)
    return {"init_checkpoint": str(path)}


def printed_init_args(name: str, capsys: pytest.CaptureFixture[str]) -> dict[str, Any]:
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", "--model", f"contraseg.lightning_modules.{name}", "--print_config"])
    assert exit_info.value.code in (0, None)
    return yaml.safe_load(capsys.readouterr().out)["model"]["init_args"]


def plain(value: Any) -> Any:
    return list(value) if isinstance(value, tuple) else value


@pytest.mark.parametrize("name", TASKS)
def test_python_and_cli_defaults_agree(name: str, capsys: pytest.CaptureFixture[str],
                                       tmp_path: Path) -> None:  # fmt: skip
    cls = getattr(lm, name)
    printed = printed_init_args(name, capsys)
    required = required_args(name, tmp_path)
    from_python = dict(cls(**required).hparams)
    from_cli = dict(cls(**{**printed, **required}).hparams)
    differences = {key: (plain(from_python.get(key)), plain(from_cli.get(key)))
                   for key in set(from_python) | set(from_cli)
                   if plain(from_python.get(key)) != plain(from_cli.get(key))}  # fmt: skip
    assert not differences, f"{name}: Python default != CLI default: {differences}"
    hidden = set(from_python) - set(printed) - {"in_channels", "probe_classes", "num_classes"}
    assert not hidden, f"{name}: hyper-parameters --print_config does not show: {hidden}"


def test_every_exported_task_is_checked() -> None:
    assert len(TASKS) >= 16 and {"SimCLR", "MoCoV2", "HCSC", "DatasetCondensation"} <= set(TASKS)


# ------------------------------------------------------------------ data modules

# not built from the command line alone: a bank of tensors, and wrappers of other data modules
NOT_CLI = {"ClassBank", "CondensationDataModule", "MultiDomainDataModule",
           "SourceTargetDataModule", "GraphDataModule"}  # (and the graph sets' abstract base)
DATA = sorted(name for name in dm.__all__
              if inspect.isclass(getattr(dm, name)) and name not in NOT_CLI)  # fmt: skip


def data_root(name: str, tmp_path: Path) -> str:
    if name == "SegmentationFolderDataModule":
        return str(write_segmentation_folder(tmp_path / "folder"))
    if name == "ADE20KDataModule":  # its class names come from the release's objectInfo150.txt
        from conftest import write_ade20k

        return str(write_ade20k(tmp_path / "ade20k"))
    if name in ("PlanetoidDataModule", "AmazonDataModule", "CoauthorDataModule"):
        from graph_files import write_graph_root

        return str(write_graph_root(tmp_path / "graphs"))
    if name == "ImageFolderDataModule":
        _png(tmp_path / "images" / "a.png", np.zeros((8, 8, 3), dtype=np.uint8))
        return str(tmp_path / "images")
    return str(tmp_path)


def plain_state(module: Any) -> dict[str, Any]:
    """A data module's configuration: its public plain attributes (dataclasses as dicts)."""

    def plain_value(value: Any) -> Any:
        if isinstance(value, (tuple, list)):
            return [plain_value(v) for v in value]
        if dataclasses.is_dataclass(value) and not isinstance(value, type):
            return plain_value(dataclasses.asdict(value))
        if isinstance(value, dict):
            return {k: plain_value(v) for k, v in value.items()}
        return value

    kinds = (int, float, str, bool, type(None), list, tuple, dict, Path)
    return {key: plain_value(value) for key, value in vars(module).items()
            if not key.startswith("_")
            and (isinstance(value, kinds) or dataclasses.is_dataclass(value))}  # fmt: skip


def documented_null(cls: type, key: str) -> bool:
    """Some class of the MRO documents what ``null`` means for ``key`` in its Args."""
    for klass in cls.__mro__:
        for match in re.finditer(rf"^ {{8}}{key}:(.*(?:\n {{12}}.*)*)", klass.__doc__ or "", re.M):
            if "``null``" in match.group(1):
                return True
    return False


@pytest.mark.parametrize("name", DATA)
def test_data_module_python_and_cli_defaults_agree(
    name: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cls = getattr(dm, name)
    required = [p.name for p in inspect.signature(cls).parameters.values()
                if p.default is p.empty and p.kind is p.POSITIONAL_OR_KEYWORD]  # fmt: skip
    root = data_root(name, tmp_path)
    args = ["--model", "contraseg.lightning_modules.SimCLR",
            "--data", f"contraseg.datamodules.{name}", "--trainer.logger", "false"]  # fmt: skip
    for key in required:
        args += [f"--data.init_args.{key}", root]
    with pytest.raises(SystemExit):
        main(["fit", *args, "--print_config"])
    printed = yaml.safe_load(capsys.readouterr().out)["data"]["init_args"]
    from_python = plain_state(cls(**dict.fromkeys(required, root)))
    from_cli = plain_state(main(args, run=False).datamodule)
    differences = {key: (from_python.get(key), from_cli.get(key))
                   for key in set(from_python) | set(from_cli)
                   if from_python.get(key) != from_cli.get(key)}  # fmt: skip
    assert not differences, f"{name}: Python default != CLI default: {differences}"
    undocumented = [key for key, value in printed.items()
                    if value is None and from_cli.get(key) is not None
                    and not documented_null(cls, key)]  # fmt: skip
    assert not undocumented, (f"{name}: --print_config shows null for {undocumented}, which "
                              "run with a value its docstring does not explain (``null``: ...)")
