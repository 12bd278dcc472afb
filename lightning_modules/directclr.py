"""DirectCLR (Jing et al., ICLR 2022): InfoNCE on a sub-vector of the representation."""

from __future__ import annotations

from typing import Any

from jsonargparse.typing import PositiveFloat, PositiveInt
from torch import Tensor

from lightning_modules.base import PretrainModule
from lightning_modules.losses import check_temperature, directclr_loss


class DirectCLR(PretrainModule):
    """DirectCLR: no projector; the loss sees only ``r[:, :d0]`` of the representation.

    The online probe and kNN use the full representation ``r``, as in the paper.

    Args:
        d0: Number of leading representation dimensions fed to the loss (360 for a
            2048-d ResNet-50 in the paper).
        temperature: InfoNCE temperature (0.1 in the paper).
        gather_distributed: Use keys from all DDP ranks (with gradients).
        **kwargs: :class:`~lightning_modules.base.PretrainModule` arguments.
    """

    def __init__(
        self,
        d0: PositiveInt = 360,
        temperature: PositiveFloat = 0.1,
        gather_distributed: bool = True,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.save_hyperparameters()
        self._plain_hparams()
        if d0 > self.feature_dim:
            raise ValueError(
                f"model.d0={d0} exceeds the backbone's representation size {self.feature_dim}"
            )
        self.d0 = int(d0)
        self.temperature = check_temperature(temperature)
        self.gather_distributed = gather_distributed

    def training_loss(self, views: list[Tensor]) -> tuple[Tensor, Tensor, dict[str, Tensor]]:
        """Symmetric InfoNCE on the first ``d0`` dims of the two views' representations."""
        if len(views) != 2:
            raise ValueError(f"DirectCLR expects 2 views, got {len(views)}")
        r = self.backbone(self._stack(views))
        r1, r2 = r.chunk(2)
        loss = directclr_loss(r1, r2, self.d0, self.temperature, self.gather_distributed)
        return loss, r1, {}
