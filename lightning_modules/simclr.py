"""SimCLR (Chen et al., ICML 2020): NT-Xent on projected views."""

from __future__ import annotations

from typing import Any

from contraseg.lightning_modules.components.heads import Projector
from contraseg.lightning_modules.embedding_task import EmbeddingTask
from contraseg.lightning_modules.losses import nt_xent_loss
from contraseg.lightning_modules.task import TaskLoss


class SimCLR(EmbeddingTask):
    """SimCLR: encoder -> MLP projector -> NT-Xent over all views of the batch.

    Args:
        temperature: NT-Xent temperature (0.1 on ImageNet at batch 4096, 0.2 for
            solo-learn's CIFAR recipe, 0.5 in GLCNet).
        projector: Projector shape (SimCLR: 2048 -> 128 with BatchNorm; ``hidden_dims: []``:
            linear).
        decoupled: Decoupled NT-Xent (positive removed from the denominator).
        gather_distributed: Contrast against all DDP ranks' embeddings (with gradients).
        **kwargs: :class:`~contraseg.lightning_modules.embedding_task.EmbeddingTask` arguments.
    """

    def __init__(
        self,
        temperature: float = 0.2,
        projector: Projector = Projector((2048,), 128, True),  # noqa: B008
        decoupled: bool = False,
        gather_distributed: bool = True,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)

    def configure_models(self) -> None:  # noqa: D102
        super().configure_models()
        self.projector = self.build_projector()

    def configure_losses(self) -> None:  # noqa: D102
        self.temperature = float(self.hparams.temperature)

    def training_loss(self, batch: dict[str, Any]) -> TaskLoss:
        """NT-Xent of the projected views (views stacked view-major)."""
        views = batch["views"]
        features = self.encoder(self.stack(views))
        loss = nt_xent_loss(
            self.projector(features), temperature=self.temperature,
            decoupled=self.hparams.decoupled, gather_distributed=self.hparams.gather_distributed,
            n_views=len(views),
        )  # fmt: skip
        return TaskLoss(loss, embedding=features[: views[0].shape[0]])
