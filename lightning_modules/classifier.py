"""Image classifier over a (pretrained) encoder: SuperCon stage 2 and the CE baseline.

SuperCon (Chen, Zhuang and Chang 2022) trains a SupCon representation
(:class:`~contraseg.lightning_modules.supcon.SupCon`), then fine-tunes a classifier on the frozen
(``freeze_encoder: true``) or unfrozen encoder.  The cross-entropy baseline is the same
module from random init (``init_checkpoint: null``) at the same budget.  Imbalance
handling, as options: ``data.class_balanced`` (sampler), ``loss: weighted_ce`` (Cui et
al.'s effective-number weights), ``loss: focal``, ``loss: logit_adjusted`` (Menon et al.),
all in :mod:`contraseg.lightning_modules.losses.classification`.  The class counts come from the
data module at fit start and are kept in the checkpoint.  Validation reports accuracy,
balanced accuracy, macro and per-class F1 and recall, and macro one-vs-rest AUROC
(:class:`~contraseg.lightning_modules.evaluators.ClassificationMetrics`); ``callbacks.
ConfusionMatrixPlot`` draws the confusion matrix.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from contraseg.lightning_modules.components.heads import MLPHead
from contraseg.lightning_modules.embedding_task import EmbeddingTask
from contraseg.lightning_modules.evaluators.classification_metrics import ClassificationMetrics
from contraseg.lightning_modules.losses.classification import (
    class_balanced_weights,
    focal_loss,
    logit_adjusted_cross_entropy,
)
from contraseg.lightning_modules.task import TaskLoss

__all__ = ["ImageClassifier"]

LOSSES = ("ce", "weighted_ce", "focal", "logit_adjusted")


class ImageClassifier(EmbeddingTask):
    """Encoder -> classification head, with imbalance-aware losses.

    Args:
        num_classes: Classes (linked from ``data.num_classes``; default ``probe_classes``).
        head_hidden_dims: Hidden widths of the head (``[]``: linear).
        loss: ``ce``, ``weighted_ce``, ``focal`` or ``logit_adjusted``.
        class_weight_beta: ``beta`` of the effective-number weights (``weighted_ce``, and
            the per-class ``alpha`` of ``focal`` when ``focal_weighted``).
        focal_gamma: Focusing parameter of ``focal``.
        focal_weighted: Use the class weights in ``focal`` too.
        logit_adjust_tau: ``tau`` of ``logit_adjusted``.
        optimizer: The optimiser (a supervised baseline: AdamW, not the pretraining LARS).
        lr: Peak learning rate.
        warmup_epochs: Linear warm-up epochs.
        **kwargs: :class:`~contraseg.lightning_modules.embedding_task.EmbeddingTask` arguments.
    """

    def __init__(
        self,
        num_classes: int = 0,
        head_hidden_dims: Sequence[int] = (),
        loss: str = "ce",
        class_weight_beta: float = 0.999,
        focal_gamma: float = 2.0,
        focal_weighted: bool = False,
        logit_adjust_tau: float = 1.0,
        optimizer: str = "adamw",
        lr: float = 1e-3,
        warmup_epochs: float = 0.0,
        **kwargs: Any,
    ) -> None:
        if loss not in LOSSES:
            raise ValueError(f"model.loss must be one of {LOSSES}, got {loss!r}")
        super().__init__(optimizer=optimizer, lr=lr, warmup_epochs=warmup_epochs, **kwargs)

    @property
    def classes(self) -> int:
        """Number of classes of the head."""
        return self.hparams.num_classes or self.hparams.probe_classes

    def configure_models(self) -> None:
        """Encoder and head (no online probe: the head is the classifier)."""
        super().configure_models()
        self.probe = None
        if self.classes < 2:
            raise ValueError("ImageClassifier needs data with >= 2 image classes")
        self.head = MLPHead(self.feature_dim, list(self.hparams.head_hidden_dims), self.classes,
                            batch_norm=False)  # fmt: skip
        self.register_buffer("class_counts", torch.zeros(self.classes), persistent=True)

    def configure_metrics(self) -> None:  # noqa: D102
        super().configure_metrics()
        self.knn = None
        self.val_metrics = ClassificationMetrics(self.classes)
        self.test_metrics = ClassificationMetrics(self.classes)
        self.last_confusion: Tensor | None = None

    def on_fit_start(self) -> None:
        """Take the training class counts from the data module (weights and priors)."""
        super().on_fit_start()
        datamodule = getattr(self.trainer, "datamodule", None)
        counts = getattr(datamodule, "class_counts", None)
        if callable(counts):
            self.class_counts.copy_(counts().to(self.class_counts))
        elif self.hparams.loss != "ce" and not bool(self.class_counts.sum()):
            raise ValueError(f"model.loss {self.hparams.loss!r} needs the data's class counts")

    def logits(self, images: Tensor) -> Tensor:
        """``(B, C)`` class logits."""
        return self.head(self.encoder(images))

    def classification_loss(self, logits: Tensor, target: Tensor) -> Tensor:
        """The configured loss (float32)."""
        hp, counts = self.hparams, self.class_counts
        if hp.loss == "ce":
            return F.cross_entropy(logits.float(), target)
        weights = class_balanced_weights(counts, hp.class_weight_beta)
        if hp.loss == "weighted_ce":
            return F.cross_entropy(logits.float(), target, weight=weights.to(logits.device))
        if hp.loss == "focal":
            return focal_loss(logits, target, hp.focal_gamma,
                              weights if hp.focal_weighted else None)  # fmt: skip
        prior = (counts / counts.sum().clamp(min=1)).clamp(min=1e-12)
        return logit_adjusted_cross_entropy(logits, target, prior.log(), hp.logit_adjust_tau)

    def training_loss(self, batch: dict[str, Any]) -> TaskLoss:
        """The loss of the first view's logits on the labelled images."""
        images = batch["views"][0] if "views" in batch else batch["image"]
        target = torch.as_tensor(batch["label"], device=images.device).long()
        keep = target >= 0
        logits = self.logits(images[keep])
        return TaskLoss(self.classification_loss(logits, target[keep]))

    def _evaluate(self, batch: dict[str, Any], stage: str) -> None:
        metrics = self.val_metrics if stage == "val" else self.test_metrics
        logits = self.logits(self.eval_inputs(batch))
        metrics.update(logits, batch["label"])
        self.log(f"{stage}/loss", F.cross_entropy(logits.float(), batch["label"]),
                 batch_size=logits.shape[0], sync_dist=True)  # fmt: skip

    def _log_metrics(self, stage: str) -> None:
        metrics = self.val_metrics if stage == "val" else self.test_metrics
        if not metrics.update_count:
            return
        values = metrics.compute()
        for key in ("accuracy", "balanced_accuracy", "macro_f1", "macro_auroc"):
            self.log(f"{stage}/{key}", values[key], prog_bar=key == "macro_f1")
        for c in range(self.classes):
            self.log(f"{stage}/f1/class_{c}", values["f1_per_class"][c])
            self.log(f"{stage}/recall/class_{c}", values["recall_per_class"][c])
        self.last_confusion = values["confusion"].cpu()
        metrics.reset()

    def on_validation_epoch_end(self) -> None:  # noqa: D102
        self._log_metrics("val")

    def on_test_epoch_end(self) -> None:  # noqa: D102
        self._log_metrics("test")
