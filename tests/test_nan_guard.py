"""NaNGuard: a non-finite loss or gradient stops the run (or skips the batch), named precisely;
RunCheckpoint never writes non-finite weights."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import lightning as L
import pytest
import torch
from conftest import quickstart_tiny

from contraseg.callbacks import NaNGuard, RunCheckpoint
from contraseg.callbacks.nan_guard import NonFiniteError
from contraseg.experiments.cli import main

QUICK = str(Path(__file__).resolve().parents[1] / "experiments" / "configs" / "quickstart.yaml")
TINY = quickstart_tiny(32)


class PoisonPixel(L.Callback):
    """One NaN pixel in the first view of the batch at global step ``step``."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: Any, batch: Any,
                             batch_idx: int) -> None:  # fmt: skip
        if trainer.global_step == self.step:
            batch["views"][0][0, 0, 0, 0] = float("nan")


def _cli(tmp_path: Path, monkeypatch, epochs: int, *extra: str, run: bool = False):
    monkeypatch.chdir(tmp_path)
    return main([*(["fit"] if run else []), "--config", QUICK, *TINY,
                 "--trainer.max_epochs", str(epochs), *extra], run=run)  # fmt: skip


def _fit(cli) -> None:
    cli.trainer.fit(cli.model, datamodule=cli.datamodule)


def test_nan_pixel_stops_the_run_naming_step_batch_and_term(tmp_path: Path, monkeypatch) -> None:
    cli = _cli(tmp_path, monkeypatch, 3)
    cli.trainer.callbacks.append(PoisonPixel(5))  # epoch 1, batch index 1
    with pytest.raises(NonFiniteError) as info:
        _fit(cli)
    message = str(info.value)
    print(message)  # the message of the closing note
    assert "global step 5 (epoch 1, batch index 1)" in message
    assert "non-finite loss term(s) ['loss'" in message
    ckpt = torch.load(tmp_path / "outputs" / "quickstart" / "checkpoints" / "last.ckpt",
                      weights_only=True)  # fmt: skip
    assert ckpt["global_step"] == 4  # the last good state (end of epoch 0), not overwritten
    assert all(torch.isfinite(v).all() for v in ckpt["state_dict"].values()
               if v.is_floating_point())  # fmt: skip
    assert all(torch.isfinite(p).all() for p in cli.model.parameters())  # never updated


def test_skip_mode_skips_and_counts_then_stops_after_max_skips(tmp_path: Path, monkeypatch) -> None:
    cli = _cli(tmp_path, monkeypatch, 2)
    guard = next(c for c in cli.trainer.callbacks if isinstance(c, NaNGuard))
    guard.action, guard.max_skips = "skip", 1
    cli.trainer.callbacks.append(PoisonPixel(2))
    before = {k: v.clone() for k, v in cli.model.state_dict().items()}
    with pytest.warns(UserWarning, match=r"skipped global step 2 .*batch index 2"):
        _fit(cli)
    assert guard.skipped == 1 and cli.trainer.global_step == 8
    assert all(torch.isfinite(p).all() for p in cli.model.parameters())
    assert any(not torch.equal(before[k], v) for k, v in cli.model.state_dict().items())
    ckpt = torch.load(tmp_path / "outputs" / "quickstart" / "checkpoints" / "last.ckpt",
                      weights_only=True)  # fmt: skip
    assert ckpt["callbacks"]["NaNGuard"]["skipped"] == 1  # the count survives a restart
    # one more bad batch than max_skips allows: stop
    cli = _cli(tmp_path, monkeypatch, 1, "--run_name", "again")
    guard = next(c for c in cli.trainer.callbacks if isinstance(c, NaNGuard))
    guard.action, guard.max_skips = "skip", 0
    cli.trainer.callbacks.append(PoisonPixel(1))
    with pytest.raises(NonFiniteError, match="after 0 skipped batches"):
        _fit(cli)


class _SqrtAtZero(L.LightningModule):
    """Finite loss, NaN gradient: d sqrt(w)/dw at w = 0 times 0."""

    def __init__(self) -> None:
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(3))

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        loss = (self.w.sqrt() * 0).sum() + batch[0].sum() * 0
        self.last_loss_terms = {"loss": loss.detach()}
        return loss

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.1)

    def train_dataloader(self) -> torch.utils.data.DataLoader:
        return torch.utils.data.DataLoader(torch.utils.data.TensorDataset(torch.ones(4, 1)))


def test_non_finite_gradient_with_finite_loss_is_named(tmp_path: Path) -> None:
    trainer = L.Trainer(max_epochs=1, callbacks=[NaNGuard()], logger=False,
                        enable_checkpointing=False, enable_progress_bar=False,
                        default_root_dir=str(tmp_path))  # fmt: skip
    with pytest.raises(NonFiniteError, match=r"non-finite gradients in 1 parameters .*'w'"):
        trainer.fit(_SqrtAtZero())


def test_checkpoint_with_non_finite_weights_is_not_written(tmp_path: Path) -> None:
    model = _SqrtAtZero()
    callback = RunCheckpoint(dirpath=str(tmp_path))
    trainer = L.Trainer(max_epochs=1, callbacks=[callback], logger=False,
                        enable_progress_bar=False, default_root_dir=str(tmp_path))  # fmt: skip
    trainer.fit(model)  # no NaNGuard: SGD writes NaN into w
    assert not bool(torch.isfinite(model.w).all())
    assert not (tmp_path / "last.ckpt").exists()


def test_guard_arguments_are_validated() -> None:
    with pytest.raises(ValueError, match="NaNGuard.action"):
        NaNGuard(action="ignore")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="max_skips"):
        NaNGuard(max_skips=-1)


class _Named(L.LightningModule):
    """Training and validation batches of named samples; one validation sample has a NaN."""

    def __init__(self, bad_split: str) -> None:
        super().__init__()
        self.bad_split = bad_split
        self.layer = torch.nn.Linear(4, 1)

    def _loader(self, split: str) -> torch.utils.data.DataLoader:
        images = torch.ones(4, 4)
        if split == self.bad_split:
            images[3, 2] = float("nan")
        items = [{"image": images[i], "name": f"{split}/case_{i}.nii.gz:7"} for i in range(4)]
        return torch.utils.data.DataLoader(items, batch_size=2)

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        return self.layer(batch["image"]).sum()

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        self.log("val/x", self.layer(batch["image"]).sum())

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.1)

    def train_dataloader(self) -> torch.utils.data.DataLoader:
        return self._loader("train")

    def val_dataloader(self) -> torch.utils.data.DataLoader:
        return self._loader("val")


@pytest.mark.parametrize("split, stage", [("val", "validation"), ("train", "training")])
def test_non_finite_inputs_are_named_in_every_stage(tmp_path: Path, split: str,
                                                    stage: str) -> None:  # fmt: skip
    """A NaN voxel in a validation sample stops the run (it would give plausible scores and
    exit 0), naming the sample's file; the same for training, before any step."""
    trainer = L.Trainer(max_epochs=1, callbacks=[NaNGuard()], logger=False,
                        enable_checkpointing=False, enable_progress_bar=False,
                        num_sanity_val_steps=0, default_root_dir=str(tmp_path))  # fmt: skip
    with pytest.raises(NonFiniteError) as info:
        trainer.fit(_Named(split))
    message = str(info.value)
    assert f"non-finite input in {stage} batch 1" in message
    assert f"image: 1 non-finite sample(s): ['{split}/case_3.nii.gz:7']" in message
    guard = NaNGuard(check_inputs=False, check_gradients=False)
    trainer = L.Trainer(max_epochs=1, callbacks=[guard], logger=False,
                        enable_checkpointing=False, enable_progress_bar=False,
                        num_sanity_val_steps=0, default_root_dir=str(tmp_path))  # fmt: skip
    trainer.fit(_Named(split))  # switched off: the run goes through, NaN and all


def test_non_finite_inputs_walks_nested_batches() -> None:
    from contraseg.callbacks.nan_guard import non_finite_inputs

    views = [torch.zeros(3, 2, 2), torch.zeros(3, 2, 2)]
    views[1][2, 0, 0] = float("inf")
    batch = {"views": views, "label": torch.tensor([0, 1, 2]), "path": ["a.png", "b.png", "c.png"]}
    assert non_finite_inputs(batch) == ["views.1: 1 non-finite sample(s): ['c.png']"]
    assert non_finite_inputs({"views": [torch.zeros(2, 3)]}) == []
