"""Stop (or skip) on a non-finite loss or gradient before it reaches the weights.

One NaN pixel makes every later loss NaN, and without a guard the trainer still reaches
FINISHED with NaN weights and normal-looking metrics.  :class:`NaNGuard` checks, before
every optimiser step, the loss terms of the step (``BaseTask.last_loss_terms``) and the
gradients:

* ``action="stop"`` (default): raise :class:`NonFiniteError` naming the global step, the
  batch index and the non-finite loss terms (or the first parameters with non-finite
  gradients);
* ``action="skip"``: drop the step's gradients (the optimiser skips parameters without
  gradient, so neither the update nor weight decay nor momentum touches the weights) and
  restore the buffers the forward pass changed (BatchNorm running statistics would
  otherwise hold the NaN), log the running count as ``train/skipped_batches``, and stop
  once more than ``max_skips`` batches were skipped.

Before every training, validation and test batch the floating-point *inputs* are checked as
well (``check_inputs``): a NaN or inf pixel or voxel is a data defect, not a numerical blow-up,
so it stops the run in any ``action`` mode, naming the stage, the batch and the samples
(their ``name``/``path`` entries: the files).  Validation batches matter most here: a NaN
voxel in a validation volume otherwise gives plausible-looking Dice scores and exit code 0.

Under fp16 mixed precision inf/NaN gradients are the loss scaler's normal overflow signal
(it skips those steps itself), so only the loss terms are checked there.  Checkpoints are
protected separately: :class:`~contraseg.callbacks.checkpoint.RunCheckpoint` never writes
non-finite weights.
"""

from __future__ import annotations

from typing import Any, Literal

import lightning as L
import torch
from lightning.pytorch.utilities import rank_zero_warn

__all__ = ["NaNGuard", "NonFiniteError", "non_finite_inputs"]


class NonFiniteError(RuntimeError):
    """A training step produced a non-finite loss or gradient."""


def _non_finite_terms(terms: dict[str, torch.Tensor]) -> list[str]:
    return [k for k, v in terms.items() if not bool(torch.isfinite(v.float()).all())]


def _non_finite_grads(module: torch.nn.Module) -> list[str]:
    named = [(n, p.grad) for n, p in module.named_parameters() if p.grad is not None]
    if not named:
        return []
    norms = torch._foreach_norm([g.detach().float() for _, g in named])
    finite = torch.isfinite(torch.stack(norms))
    if bool(finite.all()):
        return []
    return [n for (n, _), ok in zip(named, finite.tolist(), strict=True) if not ok]


_NAME_KEYS = ("path", "file", "name", "subject")


def _float_inputs(batch: Any, prefix: str = "") -> list[tuple[str, torch.Tensor]]:
    """``(key, tensor)`` of every floating-point tensor in a batch (dicts, lists, tuples)."""
    if isinstance(batch, torch.Tensor):
        return [(prefix or "batch", batch)] if batch.is_floating_point() else []
    if isinstance(batch, dict):
        items = batch.items()
    elif isinstance(batch, list | tuple):
        items = ((str(i), v) for i, v in enumerate(batch))
    else:
        return []
    out = []
    for key, value in items:
        out += _float_inputs(value, f"{prefix}.{key}" if prefix else str(key))
    return out


def non_finite_inputs(batch: Any) -> list[str]:
    """One line per input tensor with NaN or inf: its key and the samples' names (files)."""
    tensors = [(k, t) for k, t in _float_inputs(batch) if t.numel()]
    if not tensors:
        return []
    try:  # one device sync per batch for the common case: everything finite
        flags = torch.stack([torch.isfinite(t).all() for _, t in tensors])
        if bool(flags.all()):
            return []
    except RuntimeError:  # tensors on several devices: checked one by one below
        pass
    names = next((batch[k] for k in _NAME_KEYS if isinstance(batch, dict) and k in batch), None)
    lines = []
    for key, tensor in tensors:
        if bool(torch.isfinite(tensor).all()):
            continue
        if tensor.ndim > 1:
            bad = (~torch.isfinite(tensor.detach().flatten(1)).all(1)).nonzero().flatten()
            rows = bad.tolist()
        else:
            rows = []
        if names is not None and rows and len(names) == len(tensor):
            which = [str(names[i]) for i in rows]
        else:
            which = [f"sample {i}" for i in rows] or ["(a batch-level tensor)"]
        lines.append(f"{key}: {len(rows) or 'some'} non-finite sample(s): {which[:5]}")
    return lines


class NaNGuard(L.Callback):
    """Check inputs, loss terms and gradients (see the module docstring).

    Args:
        action: ``stop`` the run, or ``skip`` the batch (non-finite loss or gradients).
        max_skips: With ``skip``: stop once more than this many batches were skipped.
        check_gradients: Also check gradients (not only the loss terms).
        check_inputs: Check every training, validation and test batch's floating-point
            inputs; a non-finite one stops the run naming the samples.
    """

    def __init__(self, action: Literal["stop", "skip"] = "stop", max_skips: int = 10,
                 check_gradients: bool = True, check_inputs: bool = True) -> None:  # fmt: skip
        if action not in ("stop", "skip"):
            raise ValueError(f"NaNGuard.action must be 'stop' or 'skip', got {action!r}")
        if max_skips < 0:
            raise ValueError(f"NaNGuard.max_skips must be >= 0, got {max_skips}")
        self.action, self.max_skips, self.check_gradients = action, max_skips, check_gradients
        self.check_inputs = check_inputs
        self.skipped = 0
        self._batch_idx = -1

    def _check_inputs(self, trainer: L.Trainer, stage: str, batch: Any, batch_idx: int) -> None:
        if not self.check_inputs:
            return
        lines = non_finite_inputs(batch)
        if lines:
            raise NonFiniteError(
                f"NaNGuard: non-finite input in {stage} batch {batch_idx} (epoch "
                f"{trainer.current_epoch}, global step {trainer.global_step}): "
                + "; ".join(lines) + ". Fix or drop these samples: a NaN input makes every "
                "loss and score computed from it meaningless."
            )

    def on_validation_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule,
                                  batch: Any, batch_idx: int,
                                  dataloader_idx: int = 0) -> None:  # fmt: skip
        """Check the validation batch's inputs."""
        self._check_inputs(trainer, "validation", batch, batch_idx)

    def on_test_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule,
                            batch: Any, batch_idx: int,
                            dataloader_idx: int = 0) -> None:  # fmt: skip
        """Check the test batch's inputs."""
        self._check_inputs(trainer, "test", batch, batch_idx)

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule,
                             batch: Any, batch_idx: int) -> None:  # fmt: skip
        """Check the inputs; remember the batch index for the step's message."""
        self._check_inputs(trainer, "training", batch, batch_idx)
        self._batch_idx = batch_idx
        pl_module.last_loss_terms = {}
        if self.action == "skip":  # the forward pass may write NaN into running statistics
            self._buffers = [(b, b.detach().clone()) for b in pl_module.buffers()]

    def on_before_optimizer_step(self, trainer: L.Trainer, pl_module: L.LightningModule,
                                 optimizer: torch.optim.Optimizer) -> None:  # fmt: skip
        """Find non-finite loss terms or gradients; stop or drop the gradients."""
        terms = _non_finite_terms(getattr(pl_module, "last_loss_terms", {}) or {})
        fp16 = str(trainer.precision).startswith("16")
        grads = _non_finite_grads(pl_module) if self.check_gradients and not fp16 else []
        if not terms and not grads:
            return
        where = (f"global step {trainer.global_step} (epoch {trainer.current_epoch}, "
                 f"batch index {self._batch_idx})")  # fmt: skip
        what = (f"non-finite loss term(s) {terms}" if terms else
                f"non-finite gradients in {len(grads)} parameters (e.g. {grads[:3]})")  # fmt: skip
        if self.action == "stop" or self.skipped >= self.max_skips:
            limit = (f" after {self.skipped} skipped batches (max_skips={self.max_skips})"
                     if self.action == "skip" else "")  # fmt: skip
            raise NonFiniteError(
                f"NaNGuard: {what} at {where}{limit}; the run is stopped before the weights are "
                "updated (the last checkpoint holds the last good state). Check the input batch "
                "(NaN pixels?), lower the learning rate, or use NaNGuard(action='skip')."
            )
        self.skipped += 1
        for group in optimizer.param_groups:
            for p in group["params"]:
                p.grad = None
        with torch.no_grad():
            for buffer, saved in getattr(self, "_buffers", []):
                buffer.copy_(saved)
        rank_zero_warn(f"NaNGuard: skipped {where}: {what} ({self.skipped} skipped so far)")
        pl_module.log("train/skipped_batches", float(self.skipped), on_step=True, on_epoch=False)

    def state_dict(self) -> dict[str, Any]:  # noqa: D102
        return {"skipped": self.skipped}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:  # noqa: D102
        self.skipped = int(state_dict.get("skipped", 0))
