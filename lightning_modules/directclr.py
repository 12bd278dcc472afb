"""DirectCLR (Jing et al., ICLR 2022): InfoNCE on a sub-vector of the representation."""

from __future__ import annotations

from typing import Any

from jsonargparse.typing import PositiveInt

from contraseg.lightning_modules.embedding_task import EmbeddingTask
from contraseg.lightning_modules.losses import directclr_loss
from contraseg.lightning_modules.task import TaskLoss


class DirectCLR(EmbeddingTask):
    """DirectCLR: no projector; the loss sees only ``r[:, :d0]`` of the representation.

    The online probe and kNN use the full representation ``r``, as in the paper.

    Args:
        d0: Number of leading representation dimensions fed to the loss (360 for a
            2048-d ResNet-50 in the paper).
        temperature: InfoNCE temperature (0.1 in the paper).
        gather_distributed: Use keys from all DDP ranks (with gradients).
        **kwargs: :class:`~contraseg.lightning_modules.embedding_task.EmbeddingTask` arguments.
    """

    def __init__(
        self,
        d0: PositiveInt = 360,
        temperature: float = 0.1,
        gather_distributed: bool = True,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)

    def configure_losses(self) -> None:  # noqa: D102
        if self.hparams.d0 > self.feature_dim:
            raise ValueError(
                f"model.d0={self.hparams.d0} exceeds the encoder's representation size "
                f"{self.feature_dim}"
            )
        self.temperature = float(self.hparams.temperature)

    def training_loss(self, batch: dict[str, Any]) -> TaskLoss:
        """Symmetric InfoNCE on the first ``d0`` dims of the two views' representations."""
        views = batch["views"]
        if len(views) != 2:
            raise ValueError(f"DirectCLR expects 2 views, got {len(views)}")
        r1, r2 = self.encoder(self.stack(views)).chunk(2)
        hp = self.hparams
        loss = directclr_loss(r1, r2, hp.d0, self.temperature, hp.gather_distributed)
        return TaskLoss(loss, embedding=r1)
