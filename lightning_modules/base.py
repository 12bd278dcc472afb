"""Shared plumbing for pretraining methods: backbone, optimiser/schedule, evaluators.

A method subclasses :class:`PretrainModule` and implements :meth:`training_loss`;
everything else (online linear probe, kNN, LR schedule, logging) is composed here
from the components in :mod:`lightning_modules.components` and
:mod:`lightning_modules.evaluators`.

Batches are dictionaries: training batches carry ``views`` (a list of ``(B, C, H,
W)`` tensors) and ``label``; evaluation batches carry ``image`` and ``label``
(``-1`` for unlabeled samples).
"""

from __future__ import annotations

from typing import Any

import lightning as L
import torch
from jsonargparse.typing import PositiveFloat
from torch import Tensor

from lightning_modules.components import Backbone
from lightning_modules.components.optim import OPTIMIZERS, scheduled_optimizer, split_decay_groups
from lightning_modules.evaluators import OnlineLinearProbe, WeightedKNN


class PretrainModule(L.LightningModule):
    """Base class of self-supervised methods.

    Args:
        backbone: timm model name.
        backbone_kwargs: Extra :class:`~lightning_modules.components.Backbone` arguments
            (``cifar_stem``, ``in_chans``, ``pretrained``, ``checkpoint_path``, ...).
        num_classes: Classes of the online linear probe and kNN (0 disables both);
            linked to ``data.num_classes`` by the CLI.
        optimizer: ``lars``, ``sgd``, ``adamw`` or ``adam``.
        lr: Peak learning rate.
        weight_decay: Weight decay of weights (biases and norm layers get none).
        momentum: Momentum for SGD/LARS.
        warmup_epochs: Linear warmup length in epochs (fractions allowed).
        min_lr_ratio: Final LR of the cosine schedule as a fraction of ``lr``.
        probe_lr: Learning rate of the online linear probe (no weight decay, no LARS).
        knn_k: Neighbours of the kNN evaluator.
        knn_temperature: Vote temperature of the kNN evaluator.
        freeze_backbone: Train only the probe on a backbone that receives no gradient
            (the random-init or loaded-checkpoint baseline at equal budget).
    """

    def __init__(
        self,
        backbone: str = "resnet18",
        backbone_kwargs: dict[str, Any] | None = None,
        num_classes: int = 0,
        optimizer: str = "lars",
        lr: PositiveFloat = 0.3,
        weight_decay: float = 1e-4,
        momentum: float = 0.9,
        warmup_epochs: float = 10.0,
        min_lr_ratio: float = 0.0,
        probe_lr: PositiveFloat = 0.1,
        knn_k: int = 200,
        knn_temperature: PositiveFloat = 0.1,
        freeze_backbone: bool = False,
    ) -> None:
        super().__init__()
        if optimizer.lower() not in OPTIMIZERS:
            raise ValueError(f"model.optimizer must be one of {OPTIMIZERS}, got {optimizer!r}")
        if warmup_epochs < 0:
            raise ValueError(f"model.warmup_epochs must be >= 0, got {warmup_epochs}")
        self.backbone = Backbone(backbone, **(backbone_kwargs or {}))
        self.feature_dim = self.backbone.num_features
        self.num_classes = num_classes
        self.probe = OnlineLinearProbe(self.feature_dim, num_classes) if num_classes > 1 else None
        self.knn = WeightedKNN(num_classes, knn_k, knn_temperature) if num_classes > 1 else None
        self.optim_cfg = {
            "name": optimizer,
            "lr": float(lr),
            "weight_decay": weight_decay,
            "momentum": momentum,
        }
        if freeze_backbone and self.probe is None:
            raise ValueError("model.freeze_backbone trains only the probe: needs num_classes > 1")
        self.freeze_backbone = freeze_backbone
        self.warmup_epochs, self.min_lr_ratio = warmup_epochs, min_lr_ratio
        self.probe_lr = float(probe_lr)

    # ----------------------------------------------------------------- methods implement
    def training_loss(self, views: list[Tensor]) -> tuple[Tensor, Tensor, dict[str, Tensor]]:
        """Compute the self-supervised loss of a batch of views.

        Args:
            views: List of ``(B, C, H, W)`` augmented views.

        Returns:
            ``(loss, features, logs)``: the loss, the backbone representation of the
            first view (for the probe) and extra scalars to log.
        """
        raise NotImplementedError

    def batch_loss(self, batch: dict[str, Any]) -> tuple[Tensor, Tensor, dict[str, Tensor]]:
        """:meth:`training_loss` of ``batch["views"]``; methods needing more keys override it."""
        return self.training_loss(batch["views"])

    # ----------------------------------------------------------------- shared behaviour
    def embed(self, images: Tensor) -> Tensor:
        """Representation used by every evaluator (probe, kNN, rank monitor)."""
        return self.backbone(images)

    def forward(self, images: Tensor) -> Tensor:
        """Alias of :meth:`embed`."""
        return self.embed(images)

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> Tensor:
        """Self-supervised loss plus the (detached) online probe loss."""
        if self.freeze_backbone:
            with torch.no_grad():
                loss, features, logs = self.batch_loss(batch)
        else:
            loss, features, logs = self.batch_loss(batch)
        bsz = features.shape[0]
        self.log("train/loss", loss, prog_bar=True, batch_size=bsz, sync_dist=True)
        for key, value in logs.items():
            self.log(f"train/{key}", value, batch_size=bsz, sync_dist=True)
        total = loss if not self.freeze_backbone else torch.zeros_like(loss)
        if self.probe is not None:
            probe_loss = self.probe.loss(features, batch["label"], train=True)
            self.log("train/probe_loss", probe_loss, batch_size=bsz, sync_dist=True)
            self.log("train/probe_acc", self.probe.train_acc, on_step=False, on_epoch=True)
            total = total + probe_loss
        return total

    def validation_step(
        self, batch: dict[str, Any], batch_idx: int, dataloader_idx: int = 0
    ) -> None:
        """Loader 0: probe accuracy and kNN queries; loader 1 (if any): the kNN bank."""
        self._evaluate(batch, dataloader_idx, "val")

    def test_step(self, batch: dict[str, Any], batch_idx: int, dataloader_idx: int = 0) -> None:
        """Same evaluation as :meth:`validation_step`, logged under ``test/``."""
        self._evaluate(batch, dataloader_idx, "test")

    def predict_step(self, batch: dict[str, Any], batch_idx: int) -> dict[str, Tensor]:
        """Representations (and labels) of a batch, e.g. to export embeddings."""
        return {"embedding": self.embed(batch["image"]), "label": batch["label"]}

    def _evaluate(self, batch: dict[str, Any], dataloader_idx: int, stage: str) -> None:
        if self.probe is None:
            return
        features = self.embed(batch["image"])
        labels = batch["label"]
        if dataloader_idx == 0:
            self.probe.loss(features, labels, train=False)
            self.log(
                f"{stage}/probe_acc",
                self.probe.val_acc,
                on_epoch=True,
                prog_bar=True,
                add_dataloader_idx=False,
            )
        if self.knn is not None:
            self.knn.update(features, labels, bank=dataloader_idx == 1)

    def on_validation_epoch_end(self) -> None:
        """Score the kNN evaluator once queries and bank are complete."""
        self._log_knn("val")

    def on_test_epoch_end(self) -> None:  # noqa: D102
        self._log_knn("test")

    def _log_knn(self, stage: str) -> None:
        if self.knn is None:
            return
        accuracy = self.knn.compute()  # collective under DDP: every rank calls it
        if not torch.isnan(accuracy):
            self.log(f"{stage}/knn_acc", accuracy, prog_bar=True)
        self.knn.reset()

    def configure_optimizers(self) -> dict[str, Any]:
        """Optimiser over method parameters (+ probe group) with warmup + cosine per step."""
        probe_params = set(self.probe.parameters()) if self.probe is not None else set()
        decay, no_decay = [], []
        for group, target in zip(split_decay_groups(self), (decay, no_decay)):
            target.extend(p for p in group if p not in probe_params)
        groups = [
            {"params": decay},
            {"params": no_decay, "weight_decay": 0.0, "lars_exclude": True},
        ]
        if probe_params:
            groups.append(
                {
                    "params": list(self.probe.parameters()),
                    "lr": self.probe_lr,
                    "weight_decay": 0.0,
                    "lars_exclude": True,
                }
            )
        return scheduled_optimizer(
            groups, self.trainer, self.warmup_epochs, self.min_lr_ratio, **self.optim_cfg
        )

    def _plain_hparams(self) -> None:
        """Store validated numbers (``PositiveFloat`` ...) as plain ``int``/``float``.

        Keeps checkpoints loadable with ``torch.load(weights_only=True)``.
        """
        for store in (self.hparams, getattr(self, "_hparams_initial", {})):
            for key, value in list(store.items()):
                if isinstance(value, float) and type(value) is not float:
                    store[key] = float(value)
                elif isinstance(value, int) and type(value) not in (int, bool):
                    store[key] = int(value)

    @staticmethod
    def _stack(views: list[Tensor]) -> Tensor:
        return torch.cat(views, dim=0)
