"""Tasks over a segmentation network: dense pretraining and fine-tuning.

GLCNet, pixel-wise label contrast (Zhao et al.), supervised local contrast (Hu et al.)
and :class:`~contraseg.lightning_modules.segmentation_finetune.SegmentationFineTune` share the
network of :func:`~contraseg.lightning_modules.components.networks.build_segmentation_net`, of any
registered architecture: a timm encoder (``net.encoder.model.*``, the task's ``encoder``)
and a decoder (``net.decoder.*``); pretraining has no segmentation head.  Tasks read only
the network contract (``components/networks.py``), never an architecture's internals;
GLCNet, defined on DeepLabV3+'s ASPP, checks for it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from torch import Tensor, nn

from contraseg.lightning_modules.components.networks import ASPP_RATES_OS16, build_segmentation_net
from contraseg.lightning_modules.task import BaseTask

__all__ = ["DenseTask"]


class DenseTask(BaseTask):
    """Base of tasks over an smp network (see the module docstring).

    Args:
        architecture: A registered architecture: ``deeplabv3plus``, ``unet``, ``fpn`` or
            one added with ``components.networks.register_architecture``
            (``<module>.<name>`` imports the module that registers it).
        encoder: timm encoder name.
        encoder_weights: ``None`` (random) or ``"imagenet"`` (timm weights, when the
            user has them; ``init_checkpoint`` loads a local file instead).
        aspp_rates: DeepLabV3+ ASPP rates (6/12/18: DeepLab's output-stride-16 setting;
            smp's default is 12/24/36, its output-stride-8 one).
        decoder_channels: Decoder widths (``None``: DeepLabV3+ 256; U-Net
            ``(256, 128, 64, 64, 64)``, a 64-channel last stage as in Hu et al.).
        decoder: The architecture's decoder variant: Segmenter's ``mask`` or ``linear``
            (``null``: the architecture's own, the mask transformer for ``segmenter``);
            architectures with one decoder (the smp ones) refuse a value.
        **kwargs: :class:`~contraseg.lightning_modules.task.BaseTask` arguments.
    """

    def __init__(
        self,
        architecture: str = "deeplabv3plus",
        encoder: str = "resnet18",
        encoder_weights: str | None = None,
        aspp_rates: Sequence[int] = ASPP_RATES_OS16,
        decoder_channels: Sequence[int] | None = None,
        decoder: str | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)

    def head_classes(self) -> int | None:
        """Outputs of the segmentation head (``None``: no head, pretraining)."""
        return None

    def configure_models(self) -> None:
        """The smp network; subclasses add their heads after it (fixes the random init)."""
        hp = self.hparams
        self.net = build_segmentation_net(
            hp.architecture,
            hp.encoder,
            self.encoder_in_channels(),
            self.head_classes(),
            hp.encoder_weights,
            aspp_rates=hp.aspp_rates,
            decoder_channels=hp.decoder_channels,
            **({} if hp.get("decoder") is None else {"decoder": hp.decoder}),
        )
        self.feature_dim = self.net.encoder.out_channels[-1]

    @property
    def encoder(self) -> nn.Module:
        """The network's encoder (timm model under ``.model``): what fine-tuning transfers."""
        return self.net.encoder

    def decode(self, images: Tensor) -> Tensor:
        """Decoder features ``(B, C_dec, h, w)`` (1/4 resolution for DeepLabV3+, full for U-Net)."""
        return self.net(images)

    def embed(self, images: Tensor) -> Tensor:
        """Global average pool of the last encoder map (rank monitor, export)."""
        return self.net.encoder(images)[-1].mean(dim=(2, 3))
