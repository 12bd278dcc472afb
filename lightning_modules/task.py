"""The one task base of every contraseg LightningModule (torchgeo ``BaseTask`` shape).

A task declares only its own constructor arguments and forwards the rest with
``**kwargs``; jsonargparse follows the ``super().__init__(**kwargs)`` chain, so the CLI
and ``--print_config`` show every argument.  :class:`BaseTask` stores the whole chain's
arguments as ``self.hparams`` (plain numbers), calls :meth:`configure_models`,
:meth:`configure_losses` and :meth:`configure_metrics` in that order, initialises and
freezes the encoder (``init_checkpoint``, ``freeze_encoder``), owns the optimiser with
per-step warmup + cosine, logs the loss dictionary, exports embeddings in ``predict``, and
reseeds torch's RNG at every training batch from ``(run seed, epoch, batch index)`` so a
resume restores the step's own randomness (the data side: :mod:`contraseg.seeding`).

**State beyond weights** (queues, prototypes, EMA encoders, counters) must survive a
restart.  A method declares it in one of two ways: tensors as *persistent buffers*
(``self.register_buffer("queue", ..., persistent=True)``; ``nn.Module`` submodules such
as EMA encoders are in the state dict anyway), or anything else (auxiliary optimisers,
Python counters, RNG generators) by overriding :meth:`BaseTask.task_state` and
:meth:`BaseTask.load_task_state`, which are stored under ``checkpoint["task_state"]``.

A method implements :meth:`training_loss` (the one contract): batch in, a
:class:`TaskLoss` out.  ``self.encoder`` is the part whose weights transfer: its timm
model lives under ``.model`` for every task (``components.checkpoint_init``).
"""

from __future__ import annotations

from typing import Any, Literal, NamedTuple

import lightning as L
import torch
from lightning.pytorch.utilities import rank_zero_info
from torch import Tensor

from contraseg.lightning_modules.components.checkpoint_init import (
    check_init_report,
    load_encoder_from_checkpoint,
    summarize,
)
from contraseg.lightning_modules.components.hparams import check_ranges, plain_numbers
from contraseg.lightning_modules.components.optim import (
    OPTIMIZERS,
    param_groups,
    scheduled_optimizer,
)
from contraseg.seeding import loader_state, mix_seed, realign_train_loader, run_seed

__all__ = ["BaseTask", "TaskLoss"]


class TaskLoss(NamedTuple):
    """What :meth:`BaseTask.training_loss` returns.

    Attributes:
        loss: Scalar loss to minimise (logged as ``train/loss``).
        logs: Extra scalars, logged as ``train/<key>``.
        embedding: Encoder representation of the labeled rows of the batch (first view),
            for tasks with online evaluators (see ``EmbeddingTask``).
    """

    loss: Tensor
    logs: dict[str, Tensor] | None = None
    embedding: Tensor | None = None


def batch_size_of(batch: dict[str, Any]) -> int:
    """Images of a training batch: ``views[0]``, ``image``, or the first stream's.

    Domain-adaptation batches are ``{stream: batch}``; a graph batch counts its nodes.
    """
    if "num_nodes" in batch:
        return int(batch["num_nodes"])
    if "views" in batch:
        return batch["views"][0].shape[0]
    if "image" in batch:
        return batch["image"].shape[0]
    return batch_size_of(next(v for v in batch.values() if isinstance(v, dict)))


class BaseTask(L.LightningModule):
    """Base of every task: optimisation, logging, export, freezing, checkpoint init.

    Args:
        in_channels: Input channels of the network (linked from ``data.in_channels``).
        init_checkpoint: Checkpoint initialising the encoder by name: any contraseg
            checkpoint or a plain timm state dict (e.g. ImageNet weights).
        freeze_encoder: The encoder gets no gradient (frozen-feature baselines and probes).
        strict_init: ``init_checkpoint`` must provide every encoder tensor with its shape
            (``False``: load what matches and report the rest, a partial load).
        optimizer: ``sgd``, ``adamw``, ``adam`` or ``lars``.
        lr: Peak learning rate.
        weight_decay: Weight decay of weights (biases and norm parameters get none).
        momentum: Momentum of SGD / LARS.
        warmup_epochs: Linear warmup length in epochs (fractions allowed) before the cosine.
        min_lr_ratio: Final LR of the schedule as a fraction of ``lr``.
        schedule: After the warmup, ``cosine`` decay or ``poly`` (``(1 - t/T) ** poly_power``,
            Segmenter's and DeepLab's recipe), both per optimiser step down to ``min_lr_ratio``.
        poly_power: Power of the ``poly`` schedule.
        channels_last: Keep 4-D weights (convolutions) in channels-last memory format, so
            convolutions run NHWC (tensor-core friendly on GPUs).  ``None`` (default): when
            fitting on CUDA; CPU runs stay in the default format, so their numbers do not
            move (channels-last changes float rounding, which BatchNorm over tiny batches
            amplifies; a ResNet-18 step measured only ~6% faster on this project's 2-core CPU).
        compile: ``torch.compile`` the encoder and the trainable heads at the start of
            fitting (``nn.Module.compile``: in place, the state-dict keys are unchanged).

    Raises:
        ValueError: On an unknown optimiser or an out-of-range hyper-parameter (the
            message names the ``model.`` key).
    """

    def __init__(
        self,
        in_channels: int = 3,
        init_checkpoint: str | None = None,
        freeze_encoder: bool = False,
        strict_init: bool = True,
        optimizer: str = "adamw",
        lr: float = 1e-3,
        weight_decay: float = 1e-4,
        momentum: float = 0.9,
        warmup_epochs: float = 0.0,
        min_lr_ratio: float = 0.0,
        schedule: Literal["cosine", "poly"] = "cosine",
        poly_power: float = 0.9,
        channels_last: bool | None = None,
        compile: bool = False,  # noqa: A002 (the CLI key users know from torch.compile)
    ) -> None:
        super().__init__()
        if optimizer.lower() not in OPTIMIZERS:
            raise ValueError(f"model.optimizer must be one of {OPTIMIZERS}, got {optimizer!r}")
        self.save_hyperparameters()
        check_ranges(self.hparams, self.POSITIVE, self.NON_NEGATIVE, self.UNIT)
        plain_numbers(self.hparams, getattr(self, "_hparams_initial", {}))
        self.configure_models()
        self.configure_losses()
        self.configure_metrics()
        self.init_report: dict[str, list[str]] | None = None
        if init_checkpoint is not None:
            self.init_report = self.load_checkpoint(init_checkpoint)
            rank_zero_info(f"init from {init_checkpoint}: {summarize(self.init_report)}")
            check_init_report(self.init_report, init_checkpoint, strict_init)
        if freeze_encoder:
            self.encoder.requires_grad_(False)
        self._compiled = False

    # ----------------------------------------------------------------- tasks implement
    def configure_models(self) -> None:
        """Build ``self.encoder`` and the task's other modules (from ``self.hparams``)."""
        raise NotImplementedError

    # checked at construction (``check_ranges``); a task extends them (e.g. ``queue_size``)
    POSITIVE: tuple[str, ...] = ("lr", "probe_lr", "temperature", "knn_temperature",
                                 "base_temperature", "contrastive_temperature", "poly_power")
    NON_NEGATIVE: tuple[str, ...] = ("weight_decay", "warmup_epochs", "momentum")
    UNIT: tuple[str, ...] = ("min_lr_ratio", "momentum")

    def configure_losses(self) -> None:
        """Validate and store loss settings (temperatures, ...); nothing by default."""

    def configure_metrics(self) -> None:
        """Create the task's metrics and evaluators; nothing by default."""

    def training_loss(self, batch: dict[str, Any]) -> TaskLoss:
        """The task's loss of one training batch."""
        raise NotImplementedError

    def encoder_in_channels(self) -> int:
        """Input channels of the encoder: the data's (a task with extra inputs adds them)."""
        return self.hparams.in_channels

    def embed(self, images: Tensor) -> Tensor:
        """Representation ``(B, D)`` used by evaluators, the rank monitor and ``predict``."""
        return self.encoder(images)

    @classmethod
    def tiny_test_args(cls, init_args: dict[str, Any]) -> list[str]:
        """CLI overrides that make a config with these ``model.init_args`` run in seconds.

        Used by the config smoke tests; a new task overrides this (calling ``super()``)
        instead of adding a branch to the tests.
        """
        args = ["--model.init_args.encoder", "resnet18"]
        if init_args.get("init_checkpoint"):  # an earlier stage's output
            args += ["--model.init_args.init_checkpoint", "null"]
        return args

    def task_state(self) -> dict[str, Any]:
        """State beyond the state dict to checkpoint (auxiliary optimisers, counters)."""
        return {}

    def load_task_state(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`task_state` returned."""

    # ----------------------------------------------------------------- shared behaviour
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:  # noqa: D102
        state = self.task_state()
        if state:
            checkpoint["task_state"] = state
        if self._trainer is not None and self.trainer.state.fn == "fit":
            checkpoint["train_loader"] = loader_state(self.trainer)  # checked on resume

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:  # noqa: D102
        if "task_state" in checkpoint:
            self.load_task_state(checkpoint["task_state"])
        self._saved_loader = checkpoint.get("train_loader")

    def on_train_start(self) -> None:
        """A resumed fit continues the restored epoch's order (``realign_train_loader``).

        A resume with other data, sampling, process count or seed than the checkpoint's, or
        a mid-epoch one with another batch size, is an error (the order would not continue).
        """
        realign_train_loader(self.trainer, getattr(self, "_saved_loader", None))

    def compile_targets(self) -> list[torch.nn.Module]:
        """What ``compile=True`` compiles: the encoder and the trainable head modules.

        Every direct submodule with trainable parameters except metrics and evaluators
        (their update code is data-dependent Python); tasks may override.
        """
        from torchmetrics import Metric

        skip = ("probe", "knn", "evaluator", "metric")
        return [m for name, m in self.named_children()
                if not isinstance(m, Metric) and not any(k in name for k in skip)
                and any(p.requires_grad for p in m.parameters())]  # fmt: skip

    def setup(self, stage: str) -> None:
        """``channels_last`` (``None``: on a CUDA device), before the model moves to it."""
        wanted = self.hparams.get("channels_last")
        if wanted is None:
            trainer = getattr(self, "_trainer", None)
            wanted = trainer is not None and trainer.strategy.root_device.type == "cuda"
        if wanted:
            self.to(memory_format=torch.channels_last)

    def on_fit_start(self) -> None:
        """``compile=True``: compile :meth:`compile_targets` in place (once)."""
        if self.hparams.get("compile") and not self._compiled:
            for module in self.compile_targets():
                module.compile()
            self._compiled = True

    def on_train_batch_start(self, batch: Any, batch_idx: int) -> None:
        """Reseed torch's RNG from ``(run seed, epoch, batch_idx)`` (exact resume)."""
        torch.manual_seed(mix_seed(run_seed(), self.current_epoch, batch_idx))

    def load_checkpoint(self, path: str) -> dict[str, list[str]]:
        """Initialise the encoder from ``path`` by name; returns the load report."""
        return load_encoder_from_checkpoint(self.encoder, path)

    def forward(self, images: Tensor) -> Tensor:
        """Alias of :meth:`embed`."""
        return self.embed(images)

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> Tensor:
        """:meth:`training_loss` of the batch; logs ``train/loss`` and ``train/<key>``."""
        out = self.training_loss(batch)
        self.log_losses(out, batch)
        return out.loss

    def log_losses(self, out: TaskLoss, batch: dict[str, Any]) -> None:
        """Log the loss and its extra scalars, averaged per image over the epoch and ranks.

        The terms are also kept (detached) as ``self.last_loss_terms``, which the NaN
        guard reads to name a non-finite term.
        """
        self.last_loss_terms = {"loss": out.loss.detach(),
                                **{k: v.detach() for k, v in (out.logs or {}).items()}}  # fmt: skip
        size = batch_size_of(batch)
        self.log("train/loss", out.loss, prog_bar=True, batch_size=size, sync_dist=True)
        for key, value in (out.logs or {}).items():
            self.log(f"train/{key}", value, batch_size=size, sync_dist=True)

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> Any:
        """Nothing to score by default: the loop only drives callbacks (rank monitor)."""
        return None

    def predict_step(self, batch: dict[str, Any], batch_idx: int) -> dict[str, Any]:
        """Representations (and labels) of a batch, to export embeddings."""
        return {"embedding": self.embed(batch["image"]), "label": batch.get("label")}

    def parameter_groups(self) -> list[dict[str, Any]]:
        """Optimiser groups: weights with decay; biases and norms without (and without LARS)."""
        return param_groups(self)

    def configure_optimizers(self) -> dict[str, Any]:
        """Optimiser over :meth:`parameter_groups` with per-step warmup + cosine (or poly)."""
        hp = self.hparams
        groups = self.parameter_groups()
        if not any(g["params"] for g in groups):
            raise ValueError("nothing to train: every parameter is frozen")
        return scheduled_optimizer(
            groups, self.trainer, hp.warmup_epochs, hp.min_lr_ratio, name=hp.optimizer,
            lr=hp.lr, weight_decay=hp.weight_decay, momentum=hp.momentum,
            schedule=hp.schedule, poly_power=hp.poly_power,
        )  # fmt: skip

    @staticmethod
    def stack(views: list[Tensor]) -> Tensor:
        """Concatenate views along the batch (view-major)."""
        return torch.cat(views, dim=0)
