"""Pure, typed loss functions (tensors in, scalar out)."""

from contraseg.lightning_modules.losses.contrastive import (
    check_temperature,
    contrastive_loss,
    instance_labels,
    nt_xent_loss,
)
from contraseg.lightning_modules.losses.directclr import directclr_loss, info_nce_loss
from contraseg.lightning_modules.losses.glcnet import (
    glcnet_loss,
    local_matching_embeddings,
    sample_corresponding_patches,
    style_features,
)
from contraseg.lightning_modules.losses.moco import queue_info_nce_loss
from contraseg.lightning_modules.losses.pixel_contrast import (
    cross_image_pixel_contrastive_loss,
    distortion_pixel_contrastive_loss,
    pixel_contrastive_loss,
    tiled_pixel_contrastive_loss,
    within_image_pixel_contrastive_loss,
)
from contraseg.lightning_modules.losses.pixel_supcon import (
    pixel_supcon_loss,
    tiled_pixel_supcon_loss,
)

__all__ = [
    "check_temperature",
    "contrastive_loss",
    "cross_image_pixel_contrastive_loss",
    "directclr_loss",
    "distortion_pixel_contrastive_loss",
    "glcnet_loss",
    "info_nce_loss",
    "instance_labels",
    "local_matching_embeddings",
    "nt_xent_loss",
    "pixel_contrastive_loss",
    "pixel_supcon_loss",
    "queue_info_nce_loss",
    "sample_corresponding_patches",
    "style_features",
    "tiled_pixel_contrastive_loss",
    "tiled_pixel_supcon_loss",
    "within_image_pixel_contrastive_loss",
]
