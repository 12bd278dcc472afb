"""A researcher's daily use: W&B runs that hold the config and resume, errors that name the key
first, the run-folder refusal before any logger starts, the table runner's console."""

from __future__ import annotations

import re
import time
from pathlib import Path

import pytest
import yaml
from conftest import quickstart_tiny, write_table
from wandb_files import run_info

from contraseg.experiments import tables
from contraseg.experiments.cli import main
from contraseg.experiments.errors import explain, init_arguments
from contraseg.experiments.reproduce import main as reproduce

CONFIGS = Path(__file__).resolve().parents[1] / "experiments" / "configs"
QUICK = str(CONFIGS / "quickstart.yaml")
# quickstart_tiny without its CSV-only logger: the config's W&B (offline) and CSV loggers
TINY_WANDB = quickstart_tiny(16)[:-3]
RUN = Path("outputs") / "quickstart"


def _wandb_runs(timeout: float = 30.0) -> list[dict]:
    """The offline runs' records, once every run file holds its config record.

    ``wandb.finish()`` hands the records to W&B's service process, which writes the file
    asynchronously: on a loaded machine the config record can land a moment after ``finish``
    returns (seen once in CI), so the files are read again until each has its config or
    ``timeout`` seconds pass (then the caller's assertions report what is missing).
    """
    import wandb

    wandb.finish()  # an in-process run's records reach its file when it finishes
    deadline = time.monotonic() + timeout
    while True:
        runs = [run_info(f) for f in sorted(RUN.glob("wandb/offline-run-*/run-*.wandb"))]
        if all(r["config"] for r in runs) or time.monotonic() > deadline:
            return runs
        time.sleep(0.5)


@pytest.mark.slow
def test_wandb_and_csv_hold_the_resolved_config_and_a_resume_continues_both(
        tmp_path: Path, monkeypatch) -> None:  # fmt: skip
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("WANDB_MODE", "offline")
    main(["fit", "--config", QUICK, *TINY_WANDB, "--trainer.max_epochs", "1"])
    resolved = yaml.safe_load((RUN / "config.yaml").read_text())
    (first,) = _wandb_runs()
    assert first["config"]["config"] == resolved  # the whole tree, not '[None]'
    assert first["config"]["config"]["model"]["init_args"]["temperature"] == 0.2
    hparams = yaml.safe_load((RUN / "csv" / "version_0" / "hparams.yaml").read_text())
    assert hparams["config"] == resolved
    main(["fit", "--config", QUICK, *TINY_WANDB, "--trainer.max_epochs", "2",
          "--ckpt_path", "last"])  # fmt: skip
    runs = _wandb_runs()
    assert len(runs) == 2, runs
    assert runs[1].get("id") == first["id"], [sorted(r) for r in runs]  # the same W&B run
    assert sorted(p.name for p in (RUN / "csv").iterdir()) == ["version_0"]


def test_errors_start_with_the_key_and_a_suggestion(tmp_path: Path, monkeypatch, capsys) -> None:
    monkeypatch.chdir(tmp_path)
    cases = [(["--model.init_args.temprature", "0.1"],
              "error: model.init_args.temprature: SimCLR has no argument 'temprature'; did you "
              "mean 'temperature'"),
             (["--model", "contraseg.lightning_modules.SimCRL"],
              "error: model: no class 'contraseg.lightning_modules.SimCRL'; did you mean "
              "'contraseg.lightning_modules.SimCLR'?"),
             (["--data.init_args.batch_sise", "8"], "error: data.init_args.batch_sise: "
              "SyntheticDataModule has no argument 'batch_sise'; did you mean 'batch_size'?"),
             (["--trainer.max_epoch", "3"],  # no prefix matching: not silently max_epochs
              "error: trainer.max_epoch: no such argument; did you mean 'trainer.max_epochs'")]
    for args, expected in cases:
        with pytest.raises(SystemExit) as exc:
            main(["fit", "--config", QUICK, *args])
        err = capsys.readouterr().err
        assert exc.value.code == 2 and expected in err.splitlines()[0], err[:300]
        assert "usage:" not in err and len(err.splitlines()) < 15
    assert "knn_temperature" in init_arguments(
        __import__("contraseg.lightning_modules", fromlist=["SimCLR"]).SimCLR)
    assert explain("something else went wrong") is None


@pytest.mark.slow
def test_a_reused_run_folder_is_refused_before_any_logger_starts(
        tmp_path: Path, monkeypatch, capsys) -> None:  # fmt: skip
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("WANDB_MODE", "offline")
    main(["fit", "--config", QUICK, *TINY_WANDB, "--trainer.max_epochs", "1"])
    before = sorted(p.name for p in RUN.rglob("*"))
    with pytest.raises(SystemExit) as exc:
        main(["fit", "--config", QUICK, *TINY_WANDB, "--trainer.max_epochs", "1"])
    assert exc.value.code == 2
    assert "already holds checkpoints of another run" in capsys.readouterr().err
    assert sorted(p.name for p in RUN.rglob("*")) == before  # no new W&B run, no CSV version


def test_one_labelled_image_is_a_clear_error(tmp_path: Path) -> None:
    from contraseg.datamodules import SyntheticSegmentationDataModule

    dm = SyntheticSegmentationDataModule(num_train=40, num_val=4, image_size=32, batch_size=4,
                                         num_workers=0, label_fraction=1,
                                         split_dir=str(tmp_path / "splits"))  # fmt: skip
    dm.setup("fit")
    with pytest.raises(ValueError, match=r"holds 1 image \(label_fraction 1\).*BatchNorm"):
        dm.train_dataloader()


TABLE = {
    "name": "tiny", "description": "the main scale's setting",
    "metrics": ["val/miou"],
    "scales": {"smoke": {"all": ["--trainer.enable_progress_bar", "false",
                                 "--data.init_args.num_workers", "0"],
                         "finetune_quickstart": ["--data.init_args.num_train", "200",
                                                 "--data.init_args.num_val", "8",
                                                 "--data.init_args.label_fraction", "4",
                                                 "--data.init_args.batch_size", "4",
                                                 "--trainer.max_epochs", "1"]},
               "quick": {"description": "a shorter setting"}, "full": {}},
    "steps": {"finetune": {"config": "finetune_quickstart.yaml", "seeded": True}},
    "rows": [{"name": "random init", "network": "DeepLabV3+",
              "chain": [{"step": "finetune", "args": ["--model.init_args.init_checkpoint",
                                                      "null"]}]}],
}  # fmt: skip


@pytest.fixture()
def tiny(tmp_path: Path) -> Path:
    return write_table(tmp_path, TABLE)


def test_unknown_rows_are_an_error_listing_the_rows(tiny: Path, tmp_path: Path, capsys) -> None:
    with pytest.raises(SystemExit) as exc:
        reproduce([str(tiny), "--scale", "smoke", "--rows", "random int", "--out",
                   str(tmp_path), "--dry-run"])  # fmt: skip
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "no row 'random int' in table 'tiny'; its rows: 'random init'" in err


def test_descriptions_follow_the_scale(tiny: Path) -> None:
    table = tables.load_table(str(tiny))
    assert tables.describe(table, "full") == "the main scale's setting"
    assert tables.describe(table, "quick") == "a shorter setting"
    assert tables.describe(table, "smoke") == tables.SMOKE_DESCRIPTION


@pytest.mark.slow
def test_one_console_line_per_step_and_runs_grouped_on_wandb(
        tiny: Path, tmp_path: Path, monkeypatch, capfd) -> None:  # fmt: skip
    monkeypatch.setenv("WANDB_MODE", "offline")
    out = tmp_path / "tables"
    assert reproduce([str(tiny), "--scale", "smoke", "--seeds", "2", "--out", str(out),
                      "--no-wandb"]) == 0  # fmt: skip
    console = capfd.readouterr()
    steps = [ln for ln in console.out.splitlines() if ln.startswith("[")]
    assert len(steps) == 2, console.out
    pattern = (r"\[(\d)/2\] random init \(seed \d\) finetune_quickstart-\w+ "
               r"\(finetune_quickstart\.yaml, log .*log\.txt\) \.\.\. done in \d+ s; \d+ s "
               r"elapsed")  # fmt: skip
    assert all(re.match(pattern, ln) for ln in steps), steps
    assert "about" in steps[0] and "left (1 steps)" in steps[0]
    assert not re.search(r"^wandb:", console.out + console.err, re.M)  # in the step's log
    assert "Seed set to" not in console.out + console.err
    runs = [run_info(f) for f in sorted(out.rglob("run-*.wandb"))]  # fit (+ validate) runs
    assert runs
    for info in runs:
        assert info["group"] == "tiny/smoke" and info["job_type"] == "finetune"
        assert info["tags"] == ["tiny", "smoke"]
    assert {i["name"] for i in runs} == {"random init | finetune seed 0",
                                         "random init | finetune seed 1"}


@pytest.mark.slow
def test_predict_on_a_folder_of_own_images_without_the_pretraining_file(
        tmp_path: Path, monkeypatch) -> None:  # fmt: skip
    import numpy as np
    from PIL import Image

    monkeypatch.chdir(tmp_path)
    config = str(CONFIGS / "finetune_quickstart.yaml")
    csv = ["--trainer.logger=lightning.pytorch.loggers.CSVLogger", "--trainer.logger.save_dir",
           "csv", "--trainer.accelerator", "cpu", "--trainer.enable_progress_bar", "false",
           "--data.num_workers", "0"]  # fmt: skip
    from contraseg.callbacks import RunFigures

    fit = main(["fit", "--config", config, "--model.init_checkpoint", "null", *csv,
                "--trainer.max_epochs", "1", "--trainer.check_val_every_n_epoch", "1",
                "--data.num_val", "4"])  # fmt: skip
    figures = next(c for c in fit.trainer.callbacks if isinstance(c, RunFigures))
    assert "val/miou" in figures.history  # logged by the task after the callbacks' epoch end
    assert any("figures_iou" in p for p in figures.written)  # per-class IoU bars
    fitted = next(Path("outputs").rglob("last.ckpt"))
    folder = tmp_path / "my_images"
    (folder / "site_b").mkdir(parents=True)
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (50, 70, 3), np.uint8)).save(folder / "a.png")
    Image.fromarray(rng.integers(0, 255, (33, 45, 3), np.uint8)).save(folder / "site_b" / "b.jpg")
    # the config's init_checkpoint (a pretraining output) does not exist here: not needed
    main(["predict", "--config", config, "--ckpt_path", str(fitted), *csv,
          "--data.predict_dir", str(folder),
          "--trainer.callbacks+=contraseg.callbacks.ColourPredictionWriter",
          "--trainer.callbacks.output_dir", "preds", "--trainer.callbacks.overlays", "true"])
    a = np.array(Image.open("preds/a.png"))
    b = np.array(Image.open("preds/site_b/b.png"))
    assert a.shape == (50, 70) and b.shape == (33, 45)  # any size, sub-folders kept
    assert a.max() < 7 and Image.open("preds/a.png").mode == "P"
    for name in ("overlays/a.png", "overlays/site_b/b.png"):
        assert Image.open(Path("preds") / name).size[0] >= 400  # a figure with its legend


@pytest.mark.slow
def test_every_run_draws_its_learning_curves_and_they_survive_a_resume(
        tmp_path: Path, monkeypatch) -> None:  # fmt: skip
    import torch

    from contraseg.callbacks import RunFigures

    monkeypatch.chdir(tmp_path)
    cli = main(["fit", "--config", QUICK, *quickstart_tiny(16), "--trainer.max_epochs", "2",
                "--trainer.log_every_n_steps", "1"])  # fmt: skip
    figures = next(c for c in cli.trainer.callbacks if isinstance(c, RunFigures))
    assert {"train/loss", "lr", "val/knn_acc"} <= set(figures.history)
    assert [s for s, _ in figures.history["train/loss"]] == [1, 2, 3, 4]
    assert figures.written and all(Path(p).is_file() for p in figures.written)
    saved = torch.load(RUN / "checkpoints" / "last.ckpt", weights_only=True)["callbacks"]
    state = next(v for k, v in saved.items() if k.startswith("RunFigures"))
    restored = RunFigures()
    restored.load_state_dict(state)
    assert restored.history == figures.history


def test_confusion_and_tsne_pictures_name_the_classes(tmp_path: Path, monkeypatch) -> None:
    from types import SimpleNamespace

    import numpy as np
    import torch

    from contraseg.callbacks import confusion
    from contraseg.callbacks.cluster_eval import ClusterEvaluation

    seen = {}
    monkeypatch.setattr(confusion, "confusion_figure",
                        lambda c, names: seen.setdefault("names", names))  # fmt: skip
    monkeypatch.setattr(confusion, "save_and_log_figure", lambda *a, **k: None)
    trainer = SimpleNamespace(sanity_checking=False, is_global_zero=True, log_dir=str(tmp_path),
                              datamodule=SimpleNamespace(classes=("cat", "dog")))  # fmt: skip
    module = SimpleNamespace(last_confusion=torch.eye(2))
    confusion.ConfusionMatrixPlot().on_validation_epoch_end(trainer, module)
    assert seen["names"] == ["cat", "dog"]  # the data module's classes (not indices)
    x = np.random.default_rng(0).normal(size=(40, 4))
    y = np.repeat([0, 1], 20)
    evaluation = ClusterEvaluation(map_samples=40)
    fig = evaluation._map(x, y, y, 0, 1.0, ["cat", "dog"])
    legends = [t.get_text() for ax in fig.axes for t in ax.get_legend().get_texts()]
    assert legends[:2] == ["cat", "dog"] and legends[2:] == ["0", "1"]
