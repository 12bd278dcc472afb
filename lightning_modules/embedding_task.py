"""Image-level pretraining over a timm encoder, scored online by a linear probe and kNN.

SimCLR, DirectCLR and Lee et al.'s attention-guided contrast derive from
:class:`EmbeddingTask`: it builds ``self.encoder`` (a
:class:`~contraseg.lightning_modules.components.networks.TimmEncoder`) and, when the data has
image-level classes (``probe_classes``, linked from the data module), the online
evaluators of :mod:`contraseg.lightning_modules.evaluators`.  Training batches carry ``views``
and ``label`` (``-1``: unlabeled); evaluation batches ``image`` and ``label``.
"""

from __future__ import annotations

from typing import Any

import torch
from jsonargparse.typing import PositiveFloat
from torch import Tensor
from torch.utils.data import DataLoader, DistributedSampler

from contraseg.lightning_modules.components.heads import MLPHead, Projector
from contraseg.lightning_modules.components.networks import TimmEncoder
from contraseg.lightning_modules.components.optim import split_decay_groups
from contraseg.lightning_modules.evaluators import OnlineLinearProbe, WeightedKNN
from contraseg.lightning_modules.task import BaseTask

__all__ = ["EmbeddingTask"]


class EmbeddingTask(BaseTask):
    """Base of image-level methods: encoder, online linear probe and weighted kNN.

    Args:
        encoder: timm model name.
        encoder_kwargs: Extra :class:`~contraseg.lightning_modules.components.networks.TimmEncoder`
            arguments (``cifar_stem``, ``pretrained``, ``checkpoint_path``, ...).
        probe_classes: Image-level classes of the online probe and kNN (0 disables
            both); linked from ``data.probe_classes`` by the CLI.
        probe_lr: Learning rate of the online linear probe (no weight decay, no LARS).
        knn_k: Neighbours of the kNN evaluator.
        knn_temperature: Vote temperature of the kNN evaluator.
        optimizer: As :class:`~contraseg.lightning_modules.task.BaseTask`; SimCLR's LARS here.
        lr: Peak learning rate (SimCLR's 0.3 x batch / 256 at batch 256).
        warmup_epochs: Linear warm-up epochs (SimCLR: 10).
        **kwargs: :class:`~contraseg.lightning_modules.task.BaseTask` arguments (optimiser,
            ``in_channels``, ``init_checkpoint``, ``freeze_encoder``, ...).
    """

    def __init__(
        self,
        encoder: str = "resnet18",
        encoder_kwargs: dict[str, Any] | None = None,
        probe_classes: int = 0,
        probe_lr: PositiveFloat = 0.1,
        knn_k: int = 200,
        knn_temperature: float = 0.1,
        optimizer: str = "lars",
        lr: float = 0.3,
        warmup_epochs: float = 10.0,
        **kwargs: Any,
    ) -> None:
        super().__init__(optimizer=optimizer, lr=lr, warmup_epochs=warmup_epochs, **kwargs)

    def configure_models(self) -> None:
        """The timm encoder, then the online probe (the order fixes the random init)."""
        hp = self.hparams
        self.encoder = TimmEncoder(
            hp.encoder, **{"in_chans": self.encoder_in_channels(), **(hp.encoder_kwargs or {})}
        )
        self.feature_dim = self.encoder.num_features
        n = hp.probe_classes
        self.probe = OnlineLinearProbe(self.feature_dim, n) if n > 1 else None

    def build_projector(self) -> MLPHead:
        """The MLP projector of the task's ``projector`` argument."""
        return Projector.of(self.hparams.projector).mlp(self.feature_dim)

    def configure_metrics(self) -> None:
        """The weighted kNN evaluator (queries: loader 0, bank: loader 1)."""
        hp = self.hparams
        n = hp.probe_classes
        self.knn = WeightedKNN(n, hp.knn_k, hp.knn_temperature) if n > 1 else None
        self._bank_loader: tuple[Any, DataLoader | None] | None = None  # (datamodule, loader)

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> Tensor:
        """Method loss plus the (detached) online probe loss on ``TaskLoss.embedding``."""
        out = self.training_loss(batch)
        self.log_losses(out, batch)
        total = out.loss
        if self.probe is not None and out.embedding is not None:
            size = out.embedding.shape[0]
            probe_loss = self.probe.loss(out.embedding, batch["label"][:size], train=True)
            self.log("train/probe_loss", probe_loss, batch_size=size, sync_dist=True)
            self.last_loss_terms["probe_loss"] = probe_loss.detach()
            self.log("train/probe_acc", self.probe.train_acc, on_step=False, on_epoch=True)
            total = total + probe_loss
        return total

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        """Probe accuracy and kNN queries on the held-out split."""
        self._evaluate(batch, "val")

    def test_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        """Same evaluation as :meth:`validation_step`, logged under ``test/``."""
        self._evaluate(batch, "test")

    @torch.no_grad()
    def project(self, images: Tensor) -> Tensor:
        """Unit-norm projector embeddings (the encoder's if the task has no ``projector``)."""
        z = self.encoder(images)
        projector = getattr(self, "projector", None)
        return torch.nn.functional.normalize((z if projector is None else projector(z)).float(),
                                             dim=1)  # fmt: skip

    def eval_inputs(self, batch: dict[str, Any]) -> Tensor:
        """The encoder input of an evaluation batch (a task may mask it, as CLAWS does)."""
        return batch["image"]

    def _evaluate(self, batch: dict[str, Any], stage: str) -> None:
        if self.probe is None:
            return
        features = self.embed(self.eval_inputs(batch))
        self.probe.loss(features, batch["label"], train=False)
        self.log(f"{stage}/probe_acc", self.probe.val_acc, on_epoch=True, prog_bar=True)
        if self.knn is not None:
            self.knn.update(features, batch["label"], bank=False)

    def on_validation_epoch_end(self) -> None:
        """Embed the kNN bank, then score the kNN evaluator."""
        self._read_bank()
        self._log_knn("val")

    def on_test_epoch_end(self) -> None:  # noqa: D102
        self._read_bank()
        self._log_knn("test")

    def _read_bank(self) -> None:
        """Embed the data module's kNN bank (this rank's shard) into the kNN evaluator.

        The loader is built once and kept (persistent workers), as Lightning keeps its
        validation loaders; the evaluation loop has put the module in eval mode without
        gradients, and the precision plugin's context gives the same autocast.
        """
        if self.knn is None:
            return
        trainer = self.trainer
        datamodule = getattr(trainer, "datamodule", None)
        if getattr(datamodule, "knn_bank_loader", None) is None:
            return
        if self._bank_loader is None or self._bank_loader[0] is not datamodule:
            sampler = (DistributedSampler(datamodule.knn_bank(), num_replicas=trainer.world_size,
                                          rank=trainer.global_rank, shuffle=False)
                       if trainer.world_size > 1 else None)  # fmt: skip
            self._bank_loader = (datamodule, datamodule.knn_bank_loader(sampler))
        loader = self._bank_loader[1]
        if loader is None:
            return
        with trainer.precision_plugin.val_step_context():
            for batch in loader:
                batch = {k: v.to(self.device, non_blocking=True) if isinstance(v, Tensor) else v
                         for k, v in batch.items()}  # fmt: skip
                self.knn.update(self.embed(self.eval_inputs(batch)), batch["label"], bank=True)

    def _log_knn(self, stage: str) -> None:
        if self.knn is None:
            return
        accuracy = self.knn.compute()  # collective under DDP: every rank calls it
        if not torch.isnan(accuracy):
            self.log(f"{stage}/knn_acc", accuracy, prog_bar=True)
        self.knn.reset()

    def parameter_groups(self) -> list[dict[str, Any]]:
        """Method parameters (decay / no decay) plus the probe with its own LR."""
        probe = list(self.probe.parameters()) if self.probe is not None else []
        ids = {id(p) for p in probe}
        decay, no_decay = ([p for p in g if id(p) not in ids] for g in split_decay_groups(self))
        groups: list[dict[str, Any]] = [
            {"params": decay},
            {"params": no_decay, "weight_decay": 0.0, "lars_exclude": True},
        ]
        if probe:
            groups.append({"params": probe, "lr": float(self.hparams.probe_lr),
                           "weight_decay": 0.0, "lars_exclude": True})  # fmt: skip
        return groups
