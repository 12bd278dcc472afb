"""Config composition: defaults, merge by class, ${name} and --run_name."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from config_dumps import resolved

from contraseg.experiments.compose import compose_file, expand_configs, merge

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "experiments" / "configs"


def test_merge_semantics() -> None:
    base = {"trainer": {"max_epochs": 3, "callbacks": [
        {"class_path": "A", "init_args": {"x": 1}}, {"class_path": "B"}]}}  # fmt: skip
    over = {"trainer": {"max_epochs": 5, "callbacks": [
        {"class_path": "A", "init_args": {"y": 2}}, {"class_path": "C"},
        {"class_path": "B", "remove": True}]}}  # fmt: skip
    assert merge(base, over) == {"trainer": {"max_epochs": 5, "callbacks": [
        {"class_path": "A", "init_args": {"x": 1, "y": 2}}, {"class_path": "C"}]}}  # fmt: skip
    # another class replaces (its arguments are not the old class's)
    old = {"model": {"class_path": "X", "init_args": {"a": 1}}}
    new = {"model": {"class_path": "Y", "init_args": {"b": 1}}}
    assert merge(old, new) == new
    assert merge({"a": [1, 2]}, {"a": [3]}) == {"a": [3]} and merge({"a": 1}, {"a": None}) == {
        "a": None}  # fmt: skip


def test_defaults_and_name(tmp_path: Path) -> None:
    (tmp_path / "base").mkdir()
    (tmp_path / "base" / "t.yaml").write_text("trainer:\n  default_root_dir: outputs/${name}\n")
    (tmp_path / "m.yaml").write_text("defaults: [base/t.yaml]\nmodel: {x: 1}\n")
    assert compose_file(tmp_path / "m.yaml") == {
        "trainer": {"default_root_dir": "outputs/m"}, "model": {"x": 1}}  # fmt: skip
    named = compose_file(tmp_path / "m.yaml", "run7")
    assert named["trainer"]["default_root_dir"] == "outputs/run7"
    args = expand_configs(["fit", "--config", str(tmp_path / "m.yaml"), "--run_name", "r2"])
    assert args[:2] == ["fit", "--config"] and len(args) == 3
    assert yaml.safe_load(args[2])["trainer"]["default_root_dir"] == "outputs/r2"
    plain = tmp_path / "plain.yaml"
    plain.write_text("data: {y: 2}\n")
    assert expand_configs(["--config", str(plain)]) == ["--config", str(plain)]  # untouched


def test_bad_defaults(tmp_path: Path) -> None:
    (tmp_path / "a.yaml").write_text("defaults: [b.yaml]\n")
    (tmp_path / "b.yaml").write_text("defaults: [a.yaml]\n")
    with pytest.raises(ValueError, match="cycle"):
        compose_file(tmp_path / "a.yaml")
    (tmp_path / "c.yaml").write_text("defaults: [missing.yaml]\n")
    with pytest.raises(FileNotFoundError, match=r"missing\.yaml.*c\.yaml"):
        compose_file(tmp_path / "c.yaml")


def test_run_name_names_every_output(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    default = resolved(CONFIGS / "quickstart.yaml")
    named = resolved(CONFIGS / "quickstart.yaml", ["--run_name", "quickstart-random-init"])
    for config, name in ((default, "quickstart"), (named, "quickstart-random-init")):
        trainer = config["trainer"]
        assert trainer["default_root_dir"] == f"outputs/{name}"
        loggers = {lg["class_path"].rsplit(".", 1)[-1]: lg["init_args"] for lg in trainer["logger"]}
        assert loggers["WandbLogger"]["name"] == name
        assert loggers["CSVLogger"]["save_dir"] == f"outputs/{name}"
        ckpt = [c for c in trainer["callbacks"] if c["class_path"].endswith("RunCheckpoint")]
        assert ckpt[0]["init_args"]["dirpath"] == f"outputs/{name}/checkpoints"
        assert ckpt[0]["init_args"]["monitor"] == "val/knn_acc"  # the method's own setting


def test_method_configs_hold_only_their_own_trainer_settings() -> None:
    for path in sorted(CONFIGS.glob("*.yaml")):
        cfg = yaml.safe_load(path.read_text())
        defaults = cfg["defaults"]
        if "base/trainer.yaml" not in defaults:  # a variant of another method config
            methods = [d for d in defaults if not d.startswith(("base/", "data/"))]
            parents = [yaml.safe_load((CONFIGS / d).read_text()) for d in methods]
            assert methods and all("base/trainer.yaml" in p["defaults"] for p in parents), path
        for base in (d for d in defaults if d.startswith("base/") and d != "base/trainer.yaml"):
            assert set(yaml.safe_load((CONFIGS / base).read_text())) == {"data"}, base  # data only
        for block in (d for d in defaults if d.startswith("data/")):  # data sets: data only
            assert set(yaml.safe_load((CONFIGS / block).read_text())) <= {"data", "defaults"}, block
        trainer = cfg.get("trainer", {})
        assert not {"logger", "default_root_dir", "accelerator", "devices"} & set(trainer), path
        assert "in_channels" not in cfg.get("model", {}).get("init_args", {}), path.name  # linked


def test_yaml_and_indentation_errors_name_the_file_and_key(tmp_path: Path) -> None:
    beside = tmp_path / "beside.yaml"
    beside.write_text("model:\n  class_path: contraseg.lightning_modules.SimCLR\n  init_args:\n"
                      "    temperature: 0.2\n  encoder: resnet18\n")  # fmt: skip
    with pytest.raises(ValueError, match=r"beside.yaml: model.encoder sits beside model "
                       r"class_path; .* model.init_args"):  # fmt: skip
        expand_configs(["fit", "--config", str(beside)])
    listed = tmp_path / "listed.yaml"
    listed.write_text("trainer:\n  callbacks:\n    - class_path: contraseg.callbacks.NaNGuard\n"
                      "      action: skip\n")  # fmt: skip
    with pytest.raises(ValueError, match=r"trainer.callbacks\[0\].action sits beside"):
        expand_configs(["fit", "--config", str(listed)])
    broken = tmp_path / "broken.yaml"
    broken.write_text("defaults: []\ntrainer:\n  max_epochs: 1\n   devices: 1\n")
    with pytest.raises(ValueError, match=r"broken.yaml is not valid YAML: mapping values are not "
                       r"allowed here at line 4, column 11"):  # fmt: skip
        expand_configs(["fit", "--config", str(broken)])
