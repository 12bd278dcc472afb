"""The one builder of networks: timm encoders and smp segmentation networks, plus dense helpers.

* :class:`TimmEncoder`: any timm model by name returning pooled representations (image-level
  methods: SimCLR, DirectCLR, Lee et al.), with an optional CIFAR stem;
* :func:`build_segmentation_net`: an smp network (DeepLabV3+, U-Net, FPN) over a ``tu-<timm>``
  encoder, with a segmentation head of ``classes`` outputs or none (dense pretraining);
* helpers every dense method shares: :func:`out_channels`, :func:`resize_labels`.

Every encoder, whichever the builder, keeps its timm model under ``.model``, so checkpoints of
any contraseg task can initialise any other (``components.checkpoint_init``).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import segmentation_models_pytorch as smp
import timm
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = [
    "ARCHITECTURES",
    "ASPP_RATES_OS16",
    "UNET_CHANNELS",
    "TimmEncoder",
    "build_segmentation_net",
    "out_channels",
    "resize_labels",
]

ARCHITECTURES = {"deeplabv3plus": "DeepLabV3Plus", "unet": "Unet", "fpn": "FPN"}
ASPP_RATES_OS16 = (6, 12, 18)
UNET_CHANNELS = (256, 128, 64, 64, 64)


class TimmEncoder(nn.Module):
    """A timm model returning pooled representations ``(B, num_features)``.

    Args:
        name: Any ``timm.list_models()`` name, e.g. ``"resnet18"``, ``"vit_tiny_patch16_224"``.
        pretrained: Load timm's pretrained weights (needs network or a local cache).
        checkpoint_path: Load weights from a local file instead (timm ``state_dict``
            format, ``.pth``/``.bin``/``.safetensors``); implies ``pretrained``.
        in_chans: Number of input channels (e.g. 4 for RGB+IR).
        cifar_stem: Replace a ResNet-style stem (``conv1`` 7x7/2 + ``maxpool``) by a
            3x3/1 convolution without max-pooling, as used for 32x32 images.
        **timm_kwargs: Forwarded to ``timm.create_model`` (``drop_path_rate``, ...).
    """

    def __init__(
        self,
        name: str = "resnet18",
        pretrained: bool = False,
        checkpoint_path: str | None = None,
        in_chans: int = 3,
        cifar_stem: bool = False,
        **timm_kwargs: object,
    ) -> None:
        super().__init__()
        if name not in timm.list_models() and name not in timm.list_models(pretrained=True):
            raise ValueError(
                f"unknown timm encoder {name!r}; expected a name from timm.list_models()"
            )
        kwargs = dict(timm_kwargs)
        if checkpoint_path is not None:
            path = Path(checkpoint_path)
            if not path.is_file():
                raise FileNotFoundError(f"encoder checkpoint_path {str(path)!r} does not exist")
            pretrained = True
            kwargs["pretrained_cfg_overlay"] = {"file": str(path)}
        self.model = timm.create_model(
            name, pretrained=pretrained, in_chans=in_chans, num_classes=0, **kwargs
        )
        self.name = name
        if cifar_stem:
            self._apply_cifar_stem()
        self.num_features: int = int(self.model.num_features)

    def _apply_cifar_stem(self) -> None:
        conv = getattr(self.model, "conv1", None)
        if not isinstance(conv, nn.Conv2d) or not hasattr(self.model, "maxpool"):
            raise ValueError(
                f"cifar_stem needs a ResNet-style model with conv1 and maxpool; {self.name!r} "
                "has none (use a model designed for small inputs instead)"
            )
        self.model.conv1 = nn.Conv2d(
            conv.in_channels, conv.out_channels, kernel_size=3, stride=1, padding=1, bias=False
        )
        self.model.maxpool = nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        """Pooled representation ``(B, num_features)``."""
        return self.model(x)


def build_segmentation_net(
    architecture: str,
    encoder: str,
    in_channels: int,
    classes: int | None = None,
    encoder_weights: str | None = None,
    aspp_rates: Sequence[int] = ASPP_RATES_OS16,
    decoder_channels: Sequence[int] | None = None,
) -> nn.Module:
    """An smp network over a timm encoder (weights under ``encoder.model.*``, ``decoder.*``).

    Args:
        architecture: ``deeplabv3plus``, ``unet`` or ``fpn``.
        encoder: timm model name (smp ``tu-<name>`` encoder).
        in_channels: Input channels.
        classes: Outputs of the segmentation head; ``None`` replaces the head by
            ``nn.Identity`` so the forward returns the decoder features (dense pretraining,
            no unused parameters).
        encoder_weights: ``None`` (random) or ``"imagenet"`` (timm weights, when available).
        aspp_rates: DeepLabV3+ ASPP dilation rates.  At output stride 16 (smp's and the
            official GLCNet's) DeepLab uses 6/12/18; smp's default 12/24/36 is DeepLab's
            output-stride-8 setting, whose rates 24 and 36 read only padding on the 14x14
            ASPP map of a 224 px crop.
        decoder_channels: Decoder widths (DeepLabV3+: one int-like entry, the ASPP and
            decoder width, default 256; U-Net: one per stage, default ``UNET_CHANNELS``,
            whose last stage has 64 channels like Hu et al.'s U-Net, where smp's default
            ends at 16).

    Returns:
        The smp model.

    Raises:
        ValueError: On an unknown architecture.
    """
    if architecture not in ARCHITECTURES:
        raise ValueError(
            f"model.architecture must be one of {list(ARCHITECTURES)}, got {architecture!r}"
        )
    extra: dict[str, object] = {}
    if architecture == "deeplabv3plus":
        if len(aspp_rates) != 3 or min(aspp_rates) < 1:
            raise ValueError(f"model.aspp_rates must be three rates >= 1, got {list(aspp_rates)}")
        extra["decoder_atrous_rates"] = tuple(int(r) for r in aspp_rates)
        if decoder_channels is not None:
            if len(decoder_channels) != 1:
                raise ValueError("DeepLabV3+ model.decoder_channels takes one width, got "
                                 f"{list(decoder_channels)}")  # fmt: skip
            extra["decoder_channels"] = int(decoder_channels[0])
    elif architecture == "unet":
        channels = UNET_CHANNELS if decoder_channels is None else tuple(decoder_channels)
        if len(channels) != 5:
            raise ValueError(f"U-Net model.decoder_channels needs 5 widths, got {list(channels)}")
        extra["decoder_channels"] = tuple(int(c) for c in channels)
    elif decoder_channels is not None:
        extra["decoder_segmentation_channels"] = int(decoder_channels[0])
    net = getattr(smp, ARCHITECTURES[architecture])(
        encoder_name=f"tu-{encoder}",
        encoder_weights=encoder_weights,
        in_channels=in_channels,
        classes=1 if classes is None else classes,
        **extra,
    )
    if classes is None:
        net.segmentation_head = nn.Identity()
    return net


def out_channels(module: nn.Module) -> int:
    """Output channels of the last convolution of ``module``."""
    convs = [m for m in module.modules() if isinstance(m, nn.Conv2d)]
    if not convs:
        raise ValueError(f"{type(module).__name__} has no Conv2d layer")
    return convs[-1].out_channels


def resize_labels(labels: Tensor, size: tuple[int, int]) -> Tensor:
    """Nearest-neighbour resize of integer maps ``(B, H, W)`` to ``size`` (exact for ids)."""
    if tuple(labels.shape[-2:]) == tuple(size):
        return labels
    resized = F.interpolate(labels[:, None].double(), size=size, mode="nearest")
    return resized[:, 0].to(labels.dtype)
