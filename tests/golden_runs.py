"""Golden runs: the first training losses of the quickstart configs, recorded once.

The refactor of issue 8 (one task base, composable configs) must not change what any
method computes.  ``python tests/golden_runs.py --record`` ran these configs on the code
*before* the refactor and stored their first ``STEPS`` per-step training losses (the
value ``training_step`` returns, probe loss included) in ``tests/data/golden_losses.json``;
``tests/test_golden_runs.py`` reruns them and compares (the first steps to 1e-5 relative,
the rest loosely: see its docstring for the rounding drift between CPU kernel sets).
Issue 9 changed the random streams on purpose (sample order and augmentations from
``(seed, epoch, index)``, the step's RNG from ``(seed, epoch, batch)``, for exact resume)
and re-recorded them once.
Issue 10 changed the computation on purpose and re-recorded them again: the 32 px scenes'
stripe angle is random (it was the class, so rot90 mapped class c onto c + 3), every
DeepLabV3+ uses ASPP rates 6/12/18, GLCNet uses the official local tap, heads without BN
and one pass per view, Hu et al. the official head and recipe, U-Nets a 64-channel last stage.
Issue 12 re-recorded ``attention_quickstart`` only: its SupCon loss now runs the fused,
mask-free path (same value to float rounding: steps 0-5 agree to 5e-7, the drift grows to
1.8e-4 by step 18 through training), the other five are unchanged.
Issue 22 re-recorded the five pretraining runs: their views' photometric ops moved to the
device half (:mod:`contraseg.datamodules.batch_augment`, float throughout instead of uint8 rounding
between v2 ops, parameters drawn in a new order from the same per-sample streams);
``finetune_quickstart`` is bitwise unchanged (only its scaling and normalisation moved).
The runs are seeded, on CPU, single-threaded (so the result does not depend on the core
count), with in-process data loading and no validation.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "experiments" / "configs"
GOLDEN_FILE = Path(__file__).resolve().parent / "data" / "golden_losses.json"
STEPS = 20

COMMON = ["--trainer.accelerator", "cpu", "--trainer.devices", "1",
          "--trainer.precision", "32-true", "--trainer.logger", "false",
          "--trainer.callbacks", "[]", "--trainer.limit_val_batches", "0",
          "--trainer.num_sanity_val_steps", "0", "--trainer.enable_progress_bar", "false",
          "--trainer.enable_checkpointing", "false", "--trainer.max_steps", str(STEPS),
          "--data.init_args.num_workers", "0", "--seed_everything", "0"]  # fmt: skip
SEG = ["--data.init_args.num_train", "200", "--data.init_args.num_val", "8",
       "--data.init_args.label_fraction", "20"]  # fmt: skip
# config stem -> overrides giving STEPS steps within the max_epochs below
RUNS: dict[str, list[str]] = {
    "quickstart": ["--data.init_args.num_train", "160", "--data.init_args.num_val", "8",
                   "--data.init_args.batch_size", "8", "--data.init_args.knn_bank_size", "8",
                   "--trainer.max_epochs", "1"],
    "finetune_quickstart": [*SEG, "--data.init_args.batch_size", "4",
                            "--model.init_args.init_checkpoint", "null",
                            "--trainer.max_epochs", "4"],
    "glcnet_quickstart": ["--data.init_args.num_train", "80", "--data.init_args.num_val", "8",
                          "--data.init_args.batch_size", "8", "--trainer.max_epochs", "2"],
    "pixelcontrast_quickstart": [*SEG, "--trainer.max_epochs", "10"],
    "localcontrast_quickstart": [*SEG, "--model.init_args.init_checkpoint", "null",
                                 "--trainer.max_epochs", "10"],
    "attention_quickstart": [*SEG, "--trainer.max_epochs", "10"],
}  # fmt: skip


class _LossRecorder(pl.Callback):
    def __init__(self) -> None:
        self.losses: list[float] = []

    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any,
        batch_idx: int,
    ) -> None:
        loss = outputs["loss"] if isinstance(outputs, dict) else outputs
        self.losses.append(float(loss.detach()))


def run(stem: str, workdir: Path) -> list[float]:
    """Per-step training losses of ``STEPS`` steps of ``configs/<stem>.yaml``."""
    from contraseg.experiments.cli import main

    args = ["--config", str(CONFIGS / f"{stem}.yaml"), *COMMON, *RUNS[stem],
            "--trainer.default_root_dir", str(workdir)]  # fmt: skip
    if "split_dir" in (CONFIGS / f"{stem}.yaml").read_text():
        args += ["--data.init_args.split_dir", str(workdir / "splits")]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        cli = main(args, run=False)
        recorder = _LossRecorder()
        cli.trainer.callbacks.append(recorder)
        cli.trainer.fit(cli.model, datamodule=cli.datamodule)
    finally:
        torch.set_num_threads(threads)
    if len(recorder.losses) != STEPS:
        raise RuntimeError(f"{stem}: {len(recorder.losses)} steps, expected {STEPS}")
    return recorder.losses


def main() -> None:
    """Record (``--record``) or print the golden losses."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--record", action="store_true", help=f"write {GOLDEN_FILE}")
    parser.add_argument("--workdir", default="/tmp/contraseg-golden")
    args = parser.parse_args()
    losses = {stem: run(stem, Path(args.workdir) / stem) for stem in RUNS}
    if args.record:
        GOLDEN_FILE.parent.mkdir(parents=True, exist_ok=True)
        GOLDEN_FILE.write_text(json.dumps(losses, indent=1) + "\n")
    json.dump(losses, sys.stdout, indent=1)


if __name__ == "__main__":
    sys.path.insert(0, str(REPO))
    main()
