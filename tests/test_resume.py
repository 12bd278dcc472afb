"""Kill (SIGKILL) and resume equals the uninterrupted run, bitwise, on CPU.

For SimCLR (``quickstart.yaml``), MoCo v2 (its key queue: 20 keys, so it wraps around
several times) and a dense method (``pixelcontrast_quickstart.yaml``),
tiny runs of 3 epochs x 4 steps: an uninterrupted reference, then runs killed

* inside epoch 1 with only the epoch-0 ``last.ckpt`` on disk (an epoch-boundary resume), and
* at step 7 with a step checkpoint of step 6 (``last_every_n_steps: 3``, a mid-epoch resume),
* (the dense method only) at step 11 with ``last_every_n_epochs: 2``: the newest
  ``last.ckpt`` is that of epoch 1 (step 8), not of epoch 2,

each with 0 and 2 DataLoader workers, resumed with ``--ckpt_path last``.  Final weights
and metrics must equal the reference exactly.  The reference runs with 0 workers, so the
equality also shows that the worker count does not change the run.

The reference runs in a fresh interpreter; the killed and the resumed runs are forked from
``resume_run.py --serve`` (one per test process, its imports done once: a fresh interpreter
costs 8-11 s here, about 40 of them made this file a third of the suite's time).  So the
equality is also across interpreters, and every killed run is a real SIGKILL of a process.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
import yaml
from harness_runs import fresh_run, served_run

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "experiments" / "configs"
COMMON = ["--trainer.accelerator", "cpu", "--trainer.max_epochs", "3",
          "--trainer.enable_progress_bar", "false",
          "--trainer.logger=lightning.pytorch.loggers.CSVLogger",
          "--trainer.logger.save_dir", "csv", "--model.init_args.encoder", "resnet18"]  # fmt: skip
SMALL_DOMAINS = [{"class_path": "contraseg.datamodules.SyntheticMedicalDataModule",
                  "init_args": {"num_subjects": 6, "shape": [24, 32, 32], "domain": d,
                                "volume_seed": d, "labelled_subjects": 2, "split_dir": "splits",
                                "batch_size": 8, "num_workers": 0}} for d in (0, 1)]  # fmt: skip
METHODS = {
    "simclr": ("quickstart", ["--data.init_args.num_train", "32", "--data.init_args.num_val",
                              "16", "--data.init_args.batch_size", "8",
                              "--data.init_args.knn_bank_size", "16"]),
    "moco": ("moco_v2_quickstart", ["--data.init_args.num_train", "32", "--data.init_args.num_val",
                                     "16", "--data.init_args.batch_size", "8",
                                     "--data.init_args.knn_bank_size", "16",
                                     "--model.init_args.queue_size", "20"]),
    # HCSC clusters from epoch 1 on, so the mid-epoch kill (epoch 1) leaves prototypes in the
    # checkpoint that the resumed run must reuse, not recompute
    "hcsc": ("hcsc_quickstart", ["--data.init_args.num_train", "32", "--data.init_args.num_val",
                                  "16", "--data.init_args.batch_size", "8",
                                  "--data.init_args.knn_bank_size", "16",
                                  "--model.init_args.queue_size", "20",
                                  "--model.init_args.prototype_clusters", "[8, 4]",
                                  "--model.init_args.prototype_warmup_epochs", "1"]),
    "pixel_contrast": ("pixelcontrast_quickstart",
                       ["--data.init_args.num_train", "64", "--data.init_args.num_val", "4",
                        "--data.init_args.label_fraction", "16",
                        "--data.init_args.batch_size", "4"]),
    # the class-balanced sampler (weighted draws per epoch) and the classifier's class counts
    "classifier": ("classifier_imbalanced",
                   ["--data.init_args.num_train", "32", "--data.init_args.num_val", "16",
                    "--data.init_args.batch_size", "8", "--data.init_args.scene.image_size", "32",
                    "--data.init_args.augment.size", "32", "--data.init_args.class_balanced",
                    "true", "--model.init_args.init_checkpoint", "null",
                    "--model.init_args.loss", "logit_adjusted",
                    "--trainer.check_val_every_n_epoch", "1"]),
    # domain-specific BN statistics and the balanced domain sampler (96 slices, 4 steps)
    # (6 subjects of 24 x 32 x 32 per domain: a quarter of the config's pixels, same steps)
    "multidomain": ("multidomain_medical", ["--data.init_args.batch_size", "24",
                                            "--trainer.check_val_every_n_epoch", "1",
                                            "--data.init_args.domains", json.dumps(SMALL_DOMAINS)]),
    # PR-SFDA: max-squares in epoch 0, pseudo-label rounds from epoch 1 (teacher, thresholds and
    # round counter in the checkpoint: the mid-epoch resume must reuse them, not recompute)
    "pr_sfda": ("pr_sfda_textured", ["--data.init_args.target.init_args.num_train", "16",
                                     "--data.init_args.target.init_args.num_val", "4",
                                     "--data.init_args.target.init_args.scene.image_size", "32",
                                     "--data.init_args.batch_size", "4",
                                     "--trainer.check_val_every_n_epoch", "1"]),
    # ARIEL: a seeded 40-node subgraph per step (its ids from (seed, epoch, step)), the PGD
    # view's Bernoulli draw and RReLU's random slopes from the step's reseeded RNG
    "ariel": ("ariel_csbm", ["--data.init_args.num_nodes", "160", "--data.init_args.num_features",
                             "40", "--data.init_args.subgraph_nodes", "40",
                             "--data.init_args.steps_per_epoch", "4", "--model.init_args.encoder",
                             "gcn", "--model.init_args.activation", "rrelu",
                             "--model.init_args.attack_steps", "2",
                             "--model.init_args.regularizer_weight", "1",
                             "--model.init_args.eval_attacks", "[random]",
                             "--model.init_args.evaluation",
                             '{"repeats": 2, "folds": 1, "c_grid": [1.0]}',
                             "--trainer.check_val_every_n_epoch", "1"]),
}  # fmt: skip
# case -> (kill before global step, RunCheckpoint settings, step of the newest last.ckpt):
# 4 steps per epoch
CASES = {"epoch_boundary": (6, {}, 4), "mid_epoch": (7, {"last_every_n_steps": 3}, 6),
         "every_2_epochs": (11, {"last_every_n_epochs": 2}, 8)}  # fmt: skip
CASE_METHODS = {"every_2_epochs": ("pixel_contrast",)}
# worker counts per method (the 2-worker runs of SimCLR and PixelContrast show the data side)
WORKERS = {"moco": (0,), "hcsc": (0,), "classifier": (0,), "multidomain": (0,), "pr_sfda": (0,),
           "ariel": (0, 2)}
COMBOS = [(m, c, w) for m in sorted(METHODS) for c in sorted(CASES) for w in WORKERS.get(m, (0, 2))
          if m in CASE_METHODS.get(c, METHODS) and (w == 0 or c not in CASE_METHODS)]
_REFERENCES: dict[str, tuple] = {}
RESULTS: dict[str, dict[str, float]] = {}


def _config(tmp: Path, stem: str, case: str | None, method: str) -> Path:
    """A config on top of ``stem`` with the ``RunCheckpoint`` settings of ``case``."""
    over: dict = {"defaults": [str(CONFIGS / f"{stem}.yaml")]}
    # every epoch end unless the case says otherwise (a config may thin them out)
    settings = {"last_every_n_epochs": 1, **(CASES[case][1] if case else {})}
    over["trainer"] = {"callbacks": [{"class_path": "contraseg.callbacks.RunCheckpoint",
                                      "init_args": settings}]}  # fmt: skip
    path = tmp / f"{stem}_{case or 'reference'}.yaml"
    path.write_text(yaml.safe_dump(over))
    return path


def _reference(method: str, factory: pytest.TempPathFactory) -> tuple:
    """The uninterrupted run of ``method`` (once per test process)."""
    if method not in _REFERENCES:
        stem, extra = METHODS[method]
        tmp = factory.mktemp(f"resume_{method}")
        args = ["--config", str(_config(tmp, stem, None, method)), *COMMON, *extra,
                "--run_name", "ref", "--data.init_args.num_workers", "0"]  # fmt: skip
        if "\n    split_dir:" in (CONFIGS / f"{stem}.yaml").read_text():  # a data.init_args key
            args += ["--data.init_args.split_dir", str(tmp / "splits")]
        if method == "pr_sfda":  # its source model: a fine-tuning checkpoint of 7 classes
            from contraseg.lightning_modules import SegmentationFineTune

            torch.manual_seed(0)
            torch.save({"state_dict": SegmentationFineTune(num_classes=7).state_dict()},
                       tmp / "source.ckpt")  # fmt: skip
            args += ["--model.init_args.init_checkpoint", str(tmp / "source.ckpt")]
        proc = fresh_run(tmp, "ref.pt", 0, args)
        assert proc.returncode == 0, proc.stderr[-3000:]
        _REFERENCES[method] = (tmp, args, torch.load(tmp / "ref.pt"))
        shutil.rmtree(tmp / "outputs" / "ref")  # its checkpoints are not needed again
    return _REFERENCES[method]


@pytest.mark.parametrize(("method", "case", "workers"), COMBOS)
def test_killed_and_resumed_run_equals_uninterrupted(
    method: str, case: str, workers: int, tmp_path_factory: pytest.TempPathFactory
) -> None:
    tmp, ref_args, ref = _reference(method, tmp_path_factory)
    name = f"{case}_w{workers}"
    try:
        _check_resume(method, case, workers, tmp, ref_args, ref)
    finally:  # each case's checkpoints (~100 MB) go when it ends: the suite stays small on disk
        shutil.rmtree(tmp / "outputs" / name, ignore_errors=True)
        for path in [*tmp.glob(f"{name}*.pt"), *tmp.glob(f"{name}*.log")]:  # runs and their logs
            path.unlink()


def _check_resume(method: str, case: str, workers: int, tmp: Path, ref_args: list[str],
                  ref: dict) -> None:  # fmt: skip
    kill, _, saved_step = CASES[case]
    stem = METHODS[method][0]
    name = f"{case}_w{workers}"
    args = [a if a != "ref" else name for a in ref_args]
    args[args.index("--config") + 1] = str(_config(tmp, stem, case, method))
    args[args.index("--data.init_args.num_workers") + 1] = str(workers)
    killed = served_run(tmp, f"{name}_killed.pt", kill, args)
    assert killed.returncode == -9, f"rc {killed.returncode}\n{killed.stderr[-2000:]}"
    ckpt = tmp / "outputs" / name / "checkpoints" / "last.ckpt"
    saved = torch.load(ckpt, weights_only=True)
    assert saved["global_step"] == saved_step
    assert not list(ckpt.parent.glob("*.tmp"))
    resumed = served_run(tmp, f"{name}.pt", 0, [*args, "--ckpt_path", "last"])
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    out = torch.load(tmp / f"{name}.pt")
    assert out["step"] == ref["step"] == 12 and out["epoch"] == ref["epoch"] == 3
    diff = max(float((ref["state"][k].double() - v.double()).abs().max())
               for k, v in out["state"].items() if v.is_floating_point())  # fmt: skip
    RESULTS[f"{method}/{name}"] = {"max_abs_weight_diff": diff, **out["metrics"]}
    assert diff == 0.0
    for key, value in out["state"].items():  # integer state too (queue pointer, indices)
        if not value.is_floating_point():
            assert torch.equal(value, ref["state"][key]), key
    assert out["task_state"].keys() == ref["task_state"].keys()
    if method == "hcsc":  # the prototypes of epoch 2 (computed at its start) were compared
        assert ref["task_state"]["prototypes_epoch"] == out["task_state"]["prototypes_epoch"] == 2
    for key, value in ref["task_state"].get("prototypes", {}).items():  # HCSC's hierarchy
        for a, b in zip(value, out["task_state"]["prototypes"][key], strict=True):
            assert torch.equal(torch.as_tensor(a), torch.as_tensor(b)), key
    for key, value in ref["metrics"].items():
        if key.startswith("val/"):
            assert out["metrics"][key] == value, key


def test_zz_print_table() -> None:
    """The comparison table of the closing note (``pytest -s tests/test_resume.py``)."""
    for key, row in sorted(RESULTS.items()):
        vals = ", ".join(f"{k}={v:.4g}" for k, v in row.items() if k.startswith(("max", "val")))
        print(f"{key}: {vals}")
