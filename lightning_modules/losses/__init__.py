"""Pure, typed loss functions (tensors in, scalar out)."""

from lightning_modules.losses.contrastive import (
    check_temperature,
    contrastive_loss,
    instance_labels,
    nt_xent_loss,
)
from lightning_modules.losses.directclr import directclr_loss, info_nce_loss

__all__ = [
    "check_temperature",
    "contrastive_loss",
    "directclr_loss",
    "info_nce_loss",
    "instance_labels",
    "nt_xent_loss",
]
