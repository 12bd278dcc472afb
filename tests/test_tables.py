"""The table runner: a tiny table end to end, resume without re-running finished steps,
seed aggregation against hand-computed values, a broken row reported as failed."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import pytest
import torch
import yaml

from experiments import tables
from experiments.reproduce import main as reproduce
from experiments.tables import aggregate, expand_fractions, load_table, resolve_row, run_table

SEG = ["--data.init_args.num_train", "200", "--data.init_args.num_val", "8",
       "--data.init_args.label_fraction", "4", "--data.init_args.batch_size", "4",
       "--trainer.max_epochs", "1", "--trainer.limit_val_batches", "2",
       "--trainer.check_val_every_n_epoch", "1"]  # fmt: skip
TABLE = {
    "name": "tiny",
    "description": "two fine-tuning rows and a broken one",
    "metrics": ["val/miou", "val/overall_accuracy", "val/knn_acc@0"],
    "scales": {
        "smoke": {"all": ["--trainer.enable_progress_bar", "false",
                          "--data.init_args.num_workers", "0"],
                  "quickstart": ["--data.init_args.num_train", "32", "--data.init_args.num_val",
                                 "8", "--data.init_args.batch_size", "8",
                                 "--data.init_args.knn_bank_size", "8",
                                 "--trainer.max_epochs", "1"],
                  "finetune_quickstart": SEG},
        "full": None,
    },
    "steps": {"simclr": {"config": "quickstart.yaml"},
              "finetune": {"config": "finetune_quickstart.yaml"}},
    "rows": [
        {"name": "random init", "network": "DeepLabV3+",
         "chain": [{"step": "finetune", "args": ["--model.init_args.init_checkpoint", "null"]}]},
        {"name": "SimCLR", "network": "DeepLabV3+",
         "chain": [{"step": "simclr"}, {"step": "finetune", "init": {"from": 0}}],
         "paper": {"val/miou": {"value": 0.5, "source": "none (test)", "verified": False}}},
        {"name": "broken", "network": "DeepLabV3+",
         "chain": [{"step": "finetune", "args": ["--model.init_args.no_such_argument", "1"]}]},
    ],
}  # fmt: skip


@pytest.fixture()
def tiny(tmp_path: Path) -> Path:
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(TABLE))
    return path


def test_tiny_table_end_to_end_then_resume(tiny: Path, tmp_path: Path, monkeypatch) -> None:
    out = tmp_path / "tables"
    calls: list[str] = []
    real = tables.run_step

    def interrupted(step, root, dry_run=False, needs=()):  # noqa: ANN001, ANN202
        if len(calls) == 2 and not (step.folder(root) / "result.json").exists():
            raise KeyboardInterrupt  # the table is killed before its third step
        calls.append(step.key)
        return real(step, root, dry_run, needs)

    monkeypatch.setattr(tables, "run_step", interrupted)
    with pytest.raises(KeyboardInterrupt):
        reproduce([str(tiny), "--scale", "smoke", "--seeds", "2", "--out", str(out)])
    first = list(calls)
    assert len(first) == 2
    stamps = {k: (out / "tiny" / "smoke" / "steps" / k / "result.json").stat().st_mtime_ns
              for k in first}  # fmt: skip
    monkeypatch.setattr(tables, "run_step", real)
    rc = reproduce([str(tiny), "--scale", "smoke", "--seeds", "2", "--out", str(out)])
    assert rc == 1  # the broken row failed, the others completed
    for key, stamp in stamps.items():  # finished steps were not run again
        assert (out / "tiny" / "smoke" / "steps" / key / "result.json").stat().st_mtime_ns == stamp
    md = (out / "tiny" / "smoke.md").read_text()
    assert "| random init | DeepLabV3+ | 0." in md and "| SimCLR | DeepLabV3+ | 0." in md
    assert "| broken | DeepLabV3+ | failed (log: " in md and "log.txt" in md
    assert "0.5 (unverified)" in md  # the paper column with its status
    assert (out / "tiny" / "smoke.png").stat().st_size > 0
    rows = (out / "tiny" / "smoke.csv").read_text().splitlines()
    assert rows[0] == "row,network,metric,mean,std,n,paper,failed" and len(rows) == 1 + 3 * 3
    # the mean/std in the csv are those of the per-seed results on disk
    table = load_table(str(tiny))
    seeds = [json.loads((out / "tiny" / "smoke" / "steps" / s[-1].key / "result.json").read_text())
             for s in (resolve_row(table, table.rows[1], "smoke", k) for k in (0, 1))]  # fmt: skip
    values = [r["metrics"]["val/miou"] for r in seeds]
    mean = sum(values) / 2
    std = math.sqrt(sum((v - mean) ** 2 for v in values))  # n - 1 = 1
    simclr = next(r.split(",") for r in rows if r.startswith("SimCLR,DeepLabV3+,val/miou"))
    assert float(simclr[3]) == pytest.approx(mean) and float(simclr[4]) == pytest.approx(std)
    # a metric of chain step 0: the pretraining's kNN accuracy; absent for the random row
    pre = json.loads((out / "tiny" / "smoke" / "steps" /
                      resolve_row(table, table.rows[1], "smoke", 0)[0].key / "result.json"
                      ).read_text())  # fmt: skip
    knn = next(r.split(",") for r in rows if r.startswith("SimCLR,DeepLabV3+,val/knn_acc@0"))
    assert float(knn[3]) == pytest.approx(pre["metrics"]["val/knn_acc"])
    assert knn[5] == "1"  # the pretraining is shared by both seeds: one measurement, no spread
    random_knn = next(r.split(",") for r in rows if r.startswith("random init,DeepLabV3+,val/knn"))
    assert random_knn[5] == "0"
    # a W&B Table of the aggregate (offline here)
    assert list((out / "tiny" / "wandb").glob("offline-run-*/files"))
    # every step logged into its own W&B run (in-process steps do not reuse the first one)
    for folder in (out / "tiny" / "smoke" / "steps").iterdir():
        if (folder / "result.json").exists():
            runs = list((folder / "outputs").glob("*/wandb/offline-run-*"))
            assert runs and all(r.parts[-3] == folder.name for r in runs), folder.name
    # the SimCLR pretraining step is shared by both seeds: one folder
    assert len(list((out / "tiny" / "smoke" / "steps").glob("quickstart-*"))) == 1


def test_aggregate_mean_and_sample_std_by_hand(tiny: Path) -> None:
    table = load_table(str(tiny))
    records = [{"row": "random init", "index": 0, "seed": s, "status": "done", "log": "",
                "metrics": {"val/miou": v, "val/overall_accuracy": 0.5}}
               for s, v in enumerate([0.1, 0.2, 0.6])]  # fmt: skip
    records.append({"row": "SimCLR", "index": 1, "seed": 0, "status": "failed", "metrics": {},
                    "log": "x.txt"})  # fmt: skip
    # a second row of the same name (another network) keeps its own records
    table.rows.append({**table.rows[0], "network": "U-Net"})
    records.append({"row": "random init", "index": 3, "seed": 0, "status": "done", "log": "",
                    "metrics": {"val/miou": 0.9, "val/overall_accuracy": 0.9}})  # fmt: skip
    entries = aggregate(table, records)
    assert [e["row"] for e in entries] == ["random init", "SimCLR", "random init"]  # no "broken"
    assert entries[2]["network"] == "U-Net" and entries[2]["val/miou"]["mean"] == 0.9
    summary = {e["row"]: e for e in entries[:2]}
    miou = summary["random init"]["val/miou"]
    assert miou["mean"] == pytest.approx(0.3) and miou["n"] == 3
    assert miou["std"] == pytest.approx(math.sqrt(((0.2) ** 2 + 0.1**2 + 0.3**2) / 2))
    assert summary["random init"]["val/overall_accuracy"]["std"] == 0.0
    assert summary["SimCLR"]["seeds"] == 0 and summary["SimCLR"]["failed"] == ["x.txt"]


def test_step_keys_follow_the_resolved_config(tiny: Path, tmp_path: Path, monkeypatch) -> None:
    """A step's key is its resolved config: equal runs share it, an edited config changes it."""
    import shutil

    configs = tmp_path / "configs"
    shutil.copytree(tables.CONFIGS, configs)
    monkeypatch.setattr(tables, "CONFIGS", configs)
    table = load_table(str(tiny))

    def key(row: int, *extra: str) -> str:
        tables._resolved_text.cache_clear()
        return resolve_row(table, table.rows[row], "smoke", 0, list(extra))[-1].key

    base = key(0)
    assert resolve_row(table, table.rows[0], "smoke", 0)[0].resolved
    assert not resolve_row(table, table.rows[2], "smoke", 0)[0].resolved  # the broken row
    # spelling out a value the config already has is the same run: the same key
    assert key(0, "--model.init_args.architecture", "deeplabv3plus") == base
    assert key(0, "--model.init_args.lr", "0.002") != base
    # an edit of the config file, or of a file in its defaults, is a new step
    path = configs / "finetune_quickstart.yaml"
    text = path.read_text()
    path.write_text(text.replace("lr: 1.0e-3", "lr: 2.0e-3"))
    assert key(0) == key(0, "--model.init_args.lr", "0.002") != base
    path.write_text(text)
    assert key(0) == base
    trainer = configs / "base" / "trainer.yaml"
    trainer.write_text(trainer.read_text() + "\n# a comment changes nothing\n")
    assert key(0) == base
    trainer.write_text(trainer.read_text().replace("precision: 32-true", "precision: bf16-mixed"))
    assert key(0) != base
    # the fine-tuning step keys its init source: another pretraining config, another key
    simclr = resolve_row(table, table.rows[1], "smoke", 0)
    (configs / "quickstart.yaml").write_text(
        (configs / "quickstart.yaml").read_text().replace("temperature:", "temperature: 0.3 #"))
    tables._resolved_text.cache_clear()
    again = resolve_row(table, table.rows[1], "smoke", 0)
    assert again[0].key != simclr[0].key and again[1].key != simclr[1].key


def test_dry_run_prints_the_fit_commands(tiny: Path, tmp_path: Path, capsys) -> None:
    assert reproduce([str(tiny), "--scale", "smoke", "--seeds", "1", "--out",
                      str(tmp_path), "--dry-run"]) == 0  # fmt: skip
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 4 and all("experiments/run.py fit --config" in ln for ln in lines)
    assert "--model.init_args.init_checkpoint" in lines[2] and "quickstart-" in lines[2]
    assert not list(tmp_path.rglob("result.json"))


def test_table_errors(tiny: Path, tmp_path: Path, capsys) -> None:
    with pytest.raises(SystemExit):
        reproduce(["no_such_table"])
    assert "table 'no_such_table' not found" in capsys.readouterr().err
    table = load_table(str(tiny))
    with pytest.raises(ValueError, match="scale 'full' is not available"):
        resolve_row(table, table.rows[0], "full", 0)
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({**TABLE, "rows": [{"name": "x", "chain": [
        {"config": "quickstart.yaml", "init": {"from": 0}}]}]}))  # fmt: skip
    with pytest.raises(ValueError, match="not an earlier step"):
        load_table(str(bad))
    with pytest.raises(ValueError, match="no scale 'nope'"):
        run_table(table, "nope", [0], tmp_path)
    needy = load_table(str(tiny))
    needy.requires = ["data.init_args.root"]
    with pytest.raises(ValueError, match="needs --set data.init_args.root=<value>"):
        run_table(needy, "smoke", [0], tmp_path, dry_run=True)
    records = run_table(needy, "smoke", [0], tmp_path, dry_run=True, rows=["SimCLR"],
                        extra=["--data.init_args.root", "/data/x"])  # fmt: skip
    assert [r["row"] for r in records] == ["SimCLR"]


@pytest.mark.parametrize("path", sorted(tables.TABLES.glob("*.yaml")), ids=lambda p: p.stem)
def test_shipped_tables_resolve_at_every_scale(path: Path) -> None:
    for scale, preset in load_table(str(path)).scales.items():
        if preset is None:
            continue
        table = tables.expand(load_table(str(path)), scale)
        for row in table.rows:
            chain = resolve_row(table, row, scale, 0)
            assert chain[-1].seed == 0 and all(s.key for s in chain)
            bad = [s.config for s in chain if not s.resolved]
            assert not bad, f"{path.name} {scale} {row['name']}: arguments do not parse: {bad}"


@pytest.mark.slow
def test_paper_tables_run_at_smoke_scale_on_fixtures(seg_roots, cifar10_root, tmp_path) -> None:
    """The shipped Potsdam and CIFAR tables run end to end on fixtures in the real formats."""
    out = tmp_path / "tables"
    rows = ["random init", "SimCLR (encoder)", "GLCNet (encoder + ASPP)", "GLCNet local only"]
    assert reproduce(["glcnet_potsdam", "--scale", "smoke", "--seeds", "1", "--out", str(out),
                      "--no-wandb", "--set", f"data.init_args.root={seg_roots['potsdam']}",
                      "--rows", *rows]) == 0  # fmt: skip
    md = (out / "glcnet_potsdam" / "smoke.md").read_text()
    assert all(f"| {r} | DeepLabV3+ | " in md for r in rows) and "failed" not in md
    assert "| ImageNet" not in md  # left out with --rows (its weights are a download)
    cifar = f"data.init_args.root={cifar10_root}"
    assert reproduce(["simclr_cifar10", "--scale", "smoke", "--seeds", "1", "--out", str(out),
                      "--no-wandb", "--set", cifar]) == 0  # fmt: skip
    md = (out / "simclr_cifar10" / "smoke.md").read_text()
    assert "| SimCLR | ResNet-18 (CIFAR stem) | 0." in md and "0.9074 (unverified)" in md


def test_fraction_rows_expand_with_the_fraction_on_the_marked_steps() -> None:
    table = expand_fractions(load_table("zhao_cityscapes"), "full")
    names = [r["name"] for r in table.rows]
    assert names[:3] == ["random init (1%)", "random init (5%)", "random init (10%)"]
    wanted = "Zhao et al., cross-image (encoder + decoder) (5%)"
    zhao = next(r for r in table.rows if r["name"] == wanted)
    pretrain, finetune = resolve_row(table, zhao, "full", 0)
    assert pretrain.args[-2:] == ["--data.init_args.label_fraction", "0.05"]  # fraction: true
    assert finetune.args[-2:] == ["--data.init_args.label_fraction", "0.05"]
    assert finetune.seed == 0 and pretrain.seed is None
    smoke = expand_fractions(load_table("zhao_cityscapes"), "smoke")  # the scale's fractions
    assert [r["name"] for r in smoke.rows][:2] == ["random init (50%)", "random init (100%)"]


def test_row_args_extend_the_shared_step_args(tmp_path: Path) -> None:
    """A row's ``args`` for a shared step come after the step's own (the row wins on a clash)."""
    spec = {**TABLE, "steps": {**TABLE["steps"], "finetune": {
        "config": "finetune_quickstart.yaml", "args": ["--model.init_args.lr", "0.002",
                                                       "--model.init_args.weight_decay", "0.0"]}}}
    spec["rows"] = [
        {"name": "step args", "chain": [{"step": "finetune"}]},
        {"name": "extended",
         "chain": [{"step": "finetune", "args": ["--model.init_args.lr", "0.003"]}]},
        {"name": "fractions", "fractions": [0.5], "chain": [{"step": "finetune"}]},
    ]  # fmt: skip
    path = tmp_path / "ext.yaml"
    path.write_text(yaml.safe_dump(spec))
    table = expand_fractions(load_table(str(path)), "smoke")
    shared, extended, fraction = (resolve_row(table, r, "smoke", 0)[0] for r in table.rows)
    scale = tables._scale_args(table, "smoke", "finetune_quickstart.yaml")
    assert shared.args == [*scale, "--model.init_args.lr", "0.002",
                           "--model.init_args.weight_decay", "0.0"]  # fmt: skip
    assert extended.args == [*shared.args, "--model.init_args.lr", "0.003"]
    assert fraction.args == [*shared.args, "--data.init_args.label_fraction", "0.5"]  # not twice
    assert len({shared.key, extended.key, fraction.key}) == 3
    resolved = yaml.safe_load(tables._resolved_text(
        ("fit", "--config", str(tables.CONFIGS / "finetune_quickstart.yaml"), *extended.args)))
    assert resolved["model"]["init_args"]["lr"] == 0.003  # the row's value wins
    assert resolved["model"]["init_args"]["weight_decay"] == 0.0  # the step's value stays


def test_scale_last_args_come_after_the_rows(tmp_path: Path) -> None:
    """A scale's ``last`` arguments follow a row's own (so smoke epochs win), before ``--set``."""
    spec = {**TABLE, "rows": [{"name": "long", "chain": [
        {"step": "finetune", "args": ["--trainer.max_epochs", "16"]}]}]}  # fmt: skip
    spec["scales"] = {"smoke": {**TABLE["scales"]["smoke"], "last": ["--trainer.max_epochs", 1]}}
    path = tmp_path / "last.yaml"
    path.write_text(yaml.safe_dump(spec))
    table = load_table(str(path))
    (step,) = resolve_row(table, table.rows[0], "smoke", 0, extra=["--trainer.max_epochs", "2"])
    scale = tables._scale_args(table, "smoke", "finetune_quickstart.yaml")
    assert step.args == [*scale, "--trainer.max_epochs", "16", "--trainer.max_epochs", "1",
                         "--trainer.max_epochs", "2"]  # fmt: skip
    (step,) = resolve_row(table, table.rows[0], "smoke", 0)
    resolved = yaml.safe_load(tables._resolved_text(
        ("fit", "--config", str(tables.CONFIGS / "finetune_quickstart.yaml"), *step.args)))
    assert resolved["trainer"]["max_epochs"] == 1


def test_seed_patched_resolution_equals_a_full_parse() -> None:
    """A seeded step is parsed once with seed 0 and the seed line patched: same text as a parse."""
    config, args = "finetune_quickstart.yaml", ["--trainer.max_epochs", "1"]
    command = ("fit", "--config", str(tables.CONFIGS / config), *args)
    full = tables._resolved_text((*command, "--seed_everything", "3", "--run_name", "step"))
    assert tables._resolved(config, args, 3) == full
    assert full.splitlines()[0] == "seed_everything: 3"
    assert tables._resolved(config, args, 0) != full


@pytest.mark.slow
def test_zhao_tables_run_at_smoke_scale_on_fixtures(seg_roots, tmp_path) -> None:
    out = tmp_path / "tables"
    cases = (("zhao_cityscapes", seg_roots["cityscapes"]), ("zhao_voc", seg_roots["voc"]))
    for name, root in cases:
        rows = ["random init (50%)", "Zhao et al., cross-image (encoder + decoder) (100%)"]
        assert reproduce([name, "--scale", "smoke", "--seeds", "1", "--out", str(out),
                          "--no-wandb", "--set", f"data.init_args.root={root}",
                          "--rows", *rows]) == 0  # fmt: skip
        md = (out / name / "smoke.md").read_text()
        assert all(f"| {r} | DeepLabV3+ | 0." in md for r in rows), md


@pytest.mark.slow
def test_directclr_table_runs_at_smoke_scale(data_roots, tmp_path) -> None:
    root = data_roots["ImageFolderDataModule"]
    assert reproduce(["directclr_imagenet", "--scale", "smoke", "--seeds", "1", "--out",
                      str(tmp_path), "--no-wandb", "--set", f"data.init_args.root={root}",
                      "--set", "data.init_args.val_fraction=0.25"]) == 0  # fmt: skip
    md = (tmp_path / "directclr_imagenet" / "smoke.md").read_text()
    assert "| DirectCLR (d0 = 360) | ResNet-50 | 0." in md and "0.627 (unverified)" in md


@pytest.mark.slow
def test_synthetic_dense_tables_run_at_smoke_scale(tmp_path) -> None:
    """The 96 px benchmark's tables (rows with the new protocol switches) run end to end."""
    out = tmp_path / "tables"
    rows = ["GLCNet (encoder + ASPP)",
            "Lee et al. (the official code's protocol: prior channel, frozen encoder, Dice)",
            "Hu et al., stages 1 + 2 (encoder + decoder)"]  # fmt: skip
    assert reproduce(["synthetic_dense", "--scale", "smoke", "--seeds", "1", "--out", str(out),
                      "--no-wandb", "--rows", *rows]) == 0  # fmt: skip
    md = (out / "synthetic_dense" / "smoke.md").read_text()
    assert all(f"| {r} | " in md for r in rows) and "failed" not in md, md
    assert reproduce(["glcnet_synthetic", "--scale", "smoke", "--seeds", "1", "--out", str(out),
                      "--no-wandb", "--rows", "global only, SimCLR-like"]) == 0  # fmt: skip
    md = (out / "glcnet_synthetic" / "smoke.md").read_text()
    assert "| global only, SimCLR-like | " in md and "failed" not in md, md


def test_medical_and_imbalance_tables_run_at_smoke_scale(data_roots, tmp_path) -> None:
    """hu_mmwhs / lee_btcv on NIfTI fixtures; the synthetic medical and imbalance tables."""
    out = tmp_path / "tables"
    # hu_hippocampus has hu_mmwhs's chains on another reader: its random-init row suffices
    for table, root, rows in (("hu_mmwhs", data_roots["MMWHSDataModule"], []),
                              ("hu_hippocampus", data_roots["HippocampusDataModule"],
                               ["--rows", "random init (50%)"]),
                              ("lee_btcv", data_roots["BTCVDataModule"], [])):  # fmt: skip
        args = ["--no-wandb", "--set", f"data.init_args.root={root}", *rows]
        assert reproduce([table, "--scale", "smoke", "--seeds", "1", "--out", str(out), *args]) == 0
        md = (out / table / "smoke.md").read_text()
        assert "failed" not in md and "| random init (" in md and "| U-Net | " in md, md
    runs = {"hu_synthetic": "random init, 1 labelled subject",
            "supercon_imbalanced": "cross-entropy, end to end (16 ep)",
            "multidomain_synthetic": "shared BN (domain heads, contrast 0.1)"}  # fmt: skip
    for table, row in runs.items():
        assert reproduce([table, "--scale", "smoke", "--seeds", "1", "--out", str(out),
                          "--no-wandb", "--rows", row]) == 0  # fmt: skip
        md = (out / table / "smoke.md").read_text()
        assert f"| {row} | " in md and "failed" not in md, md


@pytest.mark.slow
def test_condensation_tables(tmp_path: Path, capsys) -> None:
    """dcc_small runs at smoke scale (selection, DC, DCC, DSAC); the paper tables resolve."""
    out = tmp_path / "tables"
    rows = ["digits, ipc 1: random", "digits, ipc 1: DC",
            "digits, ipc 1: DCC", "digits, ipc 1: DSAC"]  # fmt: skip
    assert reproduce(["dcc_small", "--scale", "smoke", "--seeds", "1", "--out", str(out),
                      "--no-wandb", "--rows", *rows]) == 0  # fmt: skip
    md = (out / "dcc_small" / "smoke.md").read_text()
    assert "failed" not in md and all(f"| {r} | ConvNet-3 | " in md for r in rows), md
    for name, n_rows in (("dcc_cifar10", 15), ("dcc_svhn", 15), ("dcc_cifar100", 10)):
        table = load_table(name)
        assert len(table.rows) == n_rows and table.requires
        capsys.readouterr()
        root = "data.init_args.source.init_args.root=/data/x"
        assert reproduce([name, "--scale", "full", "--seeds", "1", "--out", str(out), "--dry-run",
                          "--set", root]) == 0  # fmt: skip
        lines = capsys.readouterr().out.strip().splitlines()
        assert len(lines) == n_rows and all("dcc_cifar10.yaml" in line for line in lines)


CURVE = {
    "name": "tiny_curve",
    "metrics": ["val/knn_acc@eval", "rank/effective_rank@eval", "val/miou"],
    "budgets": [0, 2, 4],
    "scales": {"smoke": {**TABLE["scales"]["smoke"], "budgets": [0, 2]}},
    "steps": {
        "simclr": {"config": "quickstart.yaml", "budget": True},
        "eval": {"config": "quickstart.yaml", "command": "validate", "as": "eval",
                 "init": {"from": 0, "arg": "--ckpt_path"},
                 "args": ["--trainer.callbacks+=callbacks.EmbeddingRankMonitor",
                          "--trainer.callbacks.every_n_epochs", "1",
                          "--trainer.callbacks.num_samples", "8"]},
        "finetune": {"config": "finetune_quickstart.yaml"},
    },
    "rows": [
        {"name": "random init",
         "chain": [{"step": "finetune", "args": ["--model.init_args.init_checkpoint", "null"]}]},
        {"name": "SimCLR", "budgets": True,
         "chain": [{"step": "simclr"}, {"step": "eval"},
                   {"step": "finetune", "init": {"from": 0}}]},
    ],
}  # fmt: skip


def test_budget_axis_runs_one_pretraining_and_evaluates_every_snapshot(tmp_path: Path) -> None:
    """One pretraining to the largest budget; each budget's steps start from its snapshot."""
    path = tmp_path / "tiny_curve.yaml"
    path.write_text(yaml.safe_dump(CURVE))
    table = tables.expand(load_table(str(path)), "smoke")  # the scale's budgets win: [0, 2]
    assert [r["name"] for r in table.rows] == ["random init", "SimCLR (0 steps)",
                                               "SimCLR (2 steps)"]  # fmt: skip
    chains = [resolve_row(table, row, "smoke", 0) for row in table.rows[1:]]
    assert chains[0][0].key == chains[1][0].key  # the pretraining is shared
    pre = chains[0][0]
    assert pre.args[pre.args.index("--trainer.max_steps") + 1] == "2"
    assert "--trainer.callbacks+=callbacks.StepSnapshots" in pre.args
    for budget, chain in zip((0, 2), chains, strict=True):
        evaluate = chain[1].command(tmp_path)
        assert evaluate[0] == "validate"
        ckpt = evaluate[evaluate.index("--ckpt_path") + 1]
        assert ckpt.endswith(f"checkpoints/step={budget:06d}.ckpt")
        finetune = chain[2].command(tmp_path)
        init = finetune[finetune.index("--model.init_args.init_checkpoint") + 1]
        assert init.endswith(f"step={budget:06d}.ckpt")
    assert chains[0][2].key != chains[1][2].key
    # a pretraining killed after its step-0 snapshot, before any last.ckpt: it starts clean
    stale = pre.output(tmp_path / "out" / "tiny_curve" / "smoke") / "checkpoints"
    stale.mkdir(parents=True)
    (stale / "step=000000.ckpt").write_bytes(b"killed while writing")
    rc = reproduce([str(path), "--scale", "smoke", "--seeds", "1", "--out",
                    str(tmp_path / "out"), "--no-wandb"])  # fmt: skip
    assert rc == 0
    folder = pre.output(tmp_path / "out" / "tiny_curve" / "smoke") / "checkpoints"
    assert sorted(p.name for p in folder.glob("step=*.ckpt")) == ["step=000000.ckpt",
                                                                  "step=000002.ckpt"]  # fmt: skip
    zero = torch.load(folder / "step=000000.ckpt", map_location="cpu", weights_only=False)
    two = torch.load(folder / "step=000002.ckpt", map_location="cpu", weights_only=False)
    assert zero["global_step"] == 0 and two["global_step"] == 2
    weight = "encoder.model.conv1.weight"
    assert not torch.equal(zero["state_dict"][weight], two["state_dict"][weight])
    rows = (tmp_path / "out" / "tiny_curve" / "smoke.csv").read_text().splitlines()
    knn = [r.split(",") for r in rows if ",val/knn_acc@eval," in r]
    assert [r[0] for r in knn] == ["random init", "SimCLR (0 steps)", "SimCLR (2 steps)"]
    assert knn[0][5] == "0" and knn[1][5] == "1" and knn[2][5] == "1"
    assert (tmp_path / "out" / "tiny_curve" / "smoke_curves.png").stat().st_size > 0


def test_budget_rows_need_one_marked_step(tmp_path: Path) -> None:
    bad = {**CURVE, "rows": [{"name": "x", "budgets": True, "chain": [{"step": "finetune"}]}]}
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(bad))
    with pytest.raises(ValueError, match="budget: true"):
        load_table(str(path))
    bad = {**CURVE, "rows": [{"name": "x", "chain": [{"step": "finetune", "command": "fitt"}]}]}
    path.write_text(yaml.safe_dump(bad))
    with pytest.raises(ValueError, match="command must be one of"):
        load_table(str(path))


@pytest.mark.slow
def test_quickstart_digits_table_runs_at_smoke_scale(tmp_path: Path) -> None:
    """`make quickstart`'s table: one shared pretraining, its kNN, both rows' probes and tunings."""
    out = tmp_path / "tables"
    assert reproduce(["quickstart_digits", "--scale", "smoke", "--seeds", "1", "--out", str(out),
                      "--no-wandb"]) == 0  # fmt: skip
    md = (out / "quickstart_digits" / "smoke.md").read_text()
    assert "| random init | DeepLabV3+ | 0." in md and "| SimCLR (2 steps) | DeepLabV3+ | 0." in md
    assert "failed" not in md
    table = tables.expand(load_table("quickstart_digits"), "smoke")
    chain = resolve_row(table, table.rows[1], "smoke", 1)
    assert chain[0].seed is None and chain[-1].seed == 1  # seeds vary the fine-tuning only


_KILL_AT_RESULT = """
import os, signal, sys
from experiments.reproduce import main
real = os.replace

def replace(src, dst):  # SIGKILL just before the first step's result.json lands
    if str(dst).endswith("result.json"):
        os.kill(os.getpid(), signal.SIGKILL)
    real(src, dst)

os.replace = replace
main(sys.argv[1:])
"""


def test_a_step_killed_before_its_result_or_with_a_corrupt_one_is_scored_again(
        tiny: Path, tmp_path: Path, capsys) -> None:  # fmt: skip
    """A real SIGKILL after a step's final checkpoint but before its ``result.json`` (the
    resume has nothing to train and logs nothing): the checkpoint is validated.  A truncated
    ``result.json`` is named and its step run again.  Finished steps are not touched."""
    import signal
    import subprocess
    import sys

    out = tmp_path / "tables"
    argv = [str(tiny), "--scale", "smoke", "--seeds", "1", "--out", str(out), "--no-wandb",
            "--rows", "random init", "SimCLR"]  # fmt: skip
    killed = subprocess.run([sys.executable, "-c", _KILL_AT_RESULT, *argv], cwd=tables.REPO,
                            capture_output=True, text=True)  # fmt: skip
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    table = load_table(str(tiny))
    root = out / "tiny" / "smoke"
    random_ft = resolve_row(table, table.rows[0], "smoke", 0)[-1]
    pretrain, simclr_ft = resolve_row(table, table.rows[1], "smoke", 0)
    assert (random_ft.output(root) / "checkpoints" / "last.ckpt").is_file()
    assert not (random_ft.folder(root) / "result.json").exists()
    assert reproduce(argv) == 0
    log = (random_ft.folder(root) / "log.txt").read_text()
    assert "validating the final checkpoint" in log
    metrics = json.loads((random_ft.folder(root) / "result.json").read_text())["metrics"]
    assert all(m in metrics for m in ("val/miou", "val/overall_accuracy"))
    md = (root.parent / "smoke.md").read_text()
    assert "failed" not in md and "| random init | DeepLabV3+ | 0." in md
    before = json.loads((simclr_ft.folder(root) / "result.json").read_text())["metrics"]
    stamp = (pretrain.folder(root) / "result.json").stat().st_mtime_ns
    corrupt = simclr_ft.folder(root) / "result.json"
    corrupt.write_text(corrupt.read_text()[:40])  # truncated
    capsys.readouterr()
    assert reproduce(argv) == 0
    assert f"{corrupt}: unreadable" in capsys.readouterr().out
    assert "validating the final checkpoint" in (simclr_ft.folder(root) / "log.txt").read_text()
    after = json.loads(corrupt.read_text())["metrics"]
    # the validation of the final weights gives the fit's last validation metrics
    assert after["val/miou"] == pytest.approx(before["val/miou"], abs=1e-6)
    assert (pretrain.folder(root) / "result.json").stat().st_mtime_ns == stamp


def test_a_second_runner_on_the_same_folder_refuses(tiny: Path, tmp_path: Path, capsys) -> None:
    """Two processes: the holder of ``.lock`` is named; the lock dies with its holder."""
    import subprocess
    import sys

    root = tmp_path / "tables" / "tiny" / "smoke"
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; from pathlib import Path; "
         "from experiments.tables import _exclusive\n"
         f"with _exclusive(Path({str(root)!r})):\n print('held', flush=True); time.sleep(120)"],
        cwd=tables.REPO, stdout=subprocess.PIPE, text=True)  # fmt: skip
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(SystemExit) as exit_info:
            reproduce([str(tiny), "--scale", "smoke", "--seeds", "1", "--out",
                       str(tmp_path / "tables"), "--no-wandb"])  # fmt: skip
        assert exit_info.value.code == 2
        assert f"in use by another reproduce.py (pid {holder.pid})" in capsys.readouterr().err
        assert not (root / "steps").exists()  # nothing ran
    finally:
        holder.kill()
        holder.wait()
    with tables._exclusive(root):  # a killed holder leaves no stale lock behind
        assert (root / ".lock").read_text().strip() == str(os.getpid())
