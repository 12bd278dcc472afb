"""SimCLR (Chen et al., ICML 2020): NT-Xent on projected views."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from jsonargparse.typing import PositiveFloat
from torch import Tensor

from lightning_modules.base import PretrainModule
from lightning_modules.components import MLPHead
from lightning_modules.losses import check_temperature, nt_xent_loss


class SimCLR(PretrainModule):
    """SimCLR: backbone -> MLP projector -> NT-Xent over all views of the batch.

    Args:
        temperature: NT-Xent temperature (0.1 on ImageNet at batch 4096, 0.2 for
            solo-learn's CIFAR recipe, 0.5 in GLCNet).
        projector_hidden_dims: Hidden widths of the projector (``[]``: linear).
        projector_out_dim: Projection dimension.
        projector_batch_norm: Batch-norm in the projector's hidden layers.
        decoupled: Decoupled NT-Xent (positive removed from the denominator).
        gather_distributed: Contrast against all DDP ranks' embeddings (with gradients).
        **kwargs: :class:`~lightning_modules.base.PretrainModule` arguments.
    """

    def __init__(
        self,
        temperature: PositiveFloat = 0.2,
        projector_hidden_dims: Sequence[int] = (2048,),
        projector_out_dim: int = 128,
        projector_batch_norm: bool = True,
        decoupled: bool = False,
        gather_distributed: bool = True,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.save_hyperparameters()
        self._plain_hparams()
        self.temperature = check_temperature(temperature)
        self.decoupled, self.gather_distributed = decoupled, gather_distributed
        self.projector = MLPHead(
            self.feature_dim, list(projector_hidden_dims), projector_out_dim, projector_batch_norm
        )

    def training_loss(self, views: list[Tensor]) -> tuple[Tensor, Tensor, dict[str, Tensor]]:
        """NT-Xent of the projected views (views stacked view-major)."""
        features = self.backbone(self._stack(views))
        z = self.projector(features)
        loss = nt_xent_loss(
            z,
            temperature=self.temperature,
            decoupled=self.decoupled,
            gather_distributed=self.gather_distributed,
            n_views=len(views),
        )
        return loss, features[: views[0].shape[0]], {}
