"""The one builder of networks: timm encoders, and segmentation architectures by registry.

* :class:`TimmEncoder`: any timm model by name returning pooled representations (image-level
  methods: SimCLR, DirectCLR, Lee et al.), with an optional CIFAR stem;
* :func:`build_segmentation_net`: a segmentation network of a registered architecture
  (:func:`register_architecture`; smp's DeepLabV3+, U-Net and FPN over a ``tu-<timm>``
  encoder are registered here), with a segmentation head of ``classes`` outputs or none
  (dense pretraining);
* helpers every dense method shares: :func:`out_channels`, :func:`resize_labels`.

**The network contract.**  A builder registered under a name is called as
``build(encoder=..., in_channels=..., classes=..., encoder_weights=..., aspp_rates=...,
decoder_channels=...)`` (``encoder``: a timm model name; the last two are architecture
options, which a builder without those parts ignores), plus ``decoder=...`` when the task
names a decoder variant (a builder with one decoder refuses it), and returns an
``nn.Module`` ``net``:

* ``net.encoder``: ``net.encoder(x)`` is a list of feature maps, deepest last;
  ``net.encoder.out_channels`` their channel counts (the last is the task's
  ``feature_dim``, pooled by ``DenseTask.embed``); ``net.encoder.model`` the timm model, so
  its weights are ``net.encoder.model.*`` in checkpoints (``components.checkpoint_init``
  initialises them from any contraseg checkpoint or a timm state dict; export reads them);
* ``net.decoder``: the decoder (its ``net.decoder.*`` weights load between checkpoints of
  the same architecture, ``init_decoder``);
* ``net.segmentation_head``: decoder features to ``classes`` logits at the input
  resolution; ``nn.Identity`` when ``classes`` is ``None``, so that ``net(x)`` returns the
  decoder features (dense pretraining; multi-domain training swaps the head likewise);
* ``net(x)``: ``segmentation_head(decoder(encoder(x)))`` for inputs whose height and width
  are multiples of ``net.pad_multiple`` (an int: smp's is 32, its deepest stride; a ViT's
  would be its patch size); fine-tuning pads other sizes to it and crops the logits back.

:func:`check_network` verifies the contract on every built network, naming the
architecture and what is missing.  Every encoder, whichever the builder, keeps its timm
model under ``.model``, so checkpoints of any contraseg task can initialise any other.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import segmentation_models_pytorch as smp
import timm
import torch.nn.functional as F
from torch import Tensor, nn

from contraseg.lightning_modules.components.segmenter import build_segmenter

__all__ = [
    "ARCHITECTURES",
    "ASPP_RATES_OS16",
    "UNET_CHANNELS",
    "Architecture",
    "TimmEncoder",
    "apply_cifar_stem",
    "build_segmentation_net",
    "check_network",
    "get_architecture",
    "out_channels",
    "register_architecture",
    "resize_labels",
]

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
            apply_cifar_stem(self.model, name)
        self.num_features: int = int(self.model.num_features)

    def forward(self, x: Tensor) -> Tensor:
        """Pooled representation ``(B, num_features)``."""
        return self.model(x)


def apply_cifar_stem(model: nn.Module, name: str) -> None:
    """Replace a ResNet-style stem (``conv1`` 7x7/2 + ``maxpool``) by a 3x3/1 conv, no pooling.

    The stem used for 32x32 images (SimCLR's CIFAR variant); ``name`` names the model in errors.
    """
    conv = getattr(model, "conv1", None)
    if not isinstance(conv, nn.Conv2d) or not hasattr(model, "maxpool"):
        raise ValueError(
            f"cifar_stem needs a ResNet-style model with conv1 and maxpool; {name!r} "
            "has none (use a model designed for small inputs instead)"
        )
    model.conv1 = nn.Conv2d(
        conv.in_channels, conv.out_channels, kernel_size=3, stride=1, padding=1, bias=False
    )
    model.maxpool = nn.Identity()


@dataclass(frozen=True)
class Architecture:
    """A registered segmentation architecture.

    Attributes:
        name: Its ``model.architecture`` name.
        build: The builder (the module docstring's contract).
        description: One line for error messages and docs.
    """

    name: str
    build: Callable[..., nn.Module]
    description: str = ""


ARCHITECTURES: dict[str, Architecture] = {}


def register_architecture(
    name: str, description: str = ""
) -> Callable[[Callable[..., nn.Module]], Callable[..., nn.Module]]:
    """Register a builder under ``name`` (a decorator); a taken name is an error.

    A builder registered in a user's module ``my_pkg.nets`` is selected from a config as
    ``architecture: my_pkg.nets.<name>`` (the module is imported, which registers it).
    """

    def register(build: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        if name in ARCHITECTURES:
            raise ValueError(f"architecture {name!r} is registered already "
                             f"({ARCHITECTURES[name].build.__module__})")  # fmt: skip
        ARCHITECTURES[name] = Architecture(name, build, description)
        return build

    return register


def get_architecture(name: str) -> Architecture:
    """The architecture registered as ``name``, or as ``<module>.<name>`` after importing it.

    Raises:
        ValueError: Naming the registered architectures when ``name`` is none of them.
    """
    if name not in ARCHITECTURES and "." in name:
        module, short = name.rsplit(".", 1)
        try:
            importlib.import_module(module)
        except ImportError as err:
            raise ValueError(f"model.architecture {name!r}: cannot import {module!r} ({err})") \
                from err  # fmt: skip
        if short in ARCHITECTURES:
            return ARCHITECTURES[short]
    if name not in ARCHITECTURES:
        raise ValueError(f"model.architecture must be one of {sorted(ARCHITECTURES)} or "
                         "<module>.<name> of one registered in that module, "
                         f"got {name!r}")  # fmt: skip
    return ARCHITECTURES[name]


def check_network(net: nn.Module, name: str) -> None:
    """Raise unless ``net`` has what the network contract (module docstring) asks for."""
    problems = []
    encoder = getattr(net, "encoder", None)
    if not isinstance(encoder, nn.Module):
        problems.append("net.encoder (an nn.Module)")
    else:
        if not isinstance(getattr(encoder, "model", None), nn.Module):
            problems.append("net.encoder.model (the timm model)")
        channels = getattr(encoder, "out_channels", None)
        if not isinstance(channels, Sequence) or not channels or \
                not all(isinstance(c, int) and c >= 0 for c in channels):  # fmt: skip
            problems.append("net.encoder.out_channels (channels per feature map, deepest last)")
    for part in ("decoder", "segmentation_head"):
        if not isinstance(getattr(net, part, None), nn.Module):
            problems.append(f"net.{part} (an nn.Module)")
    pad = getattr(net, "pad_multiple", None)
    if not isinstance(pad, int) or isinstance(pad, bool) or pad < 1:
        problems.append("net.pad_multiple (an int >= 1)")
    if problems:
        raise TypeError(f"architecture {name!r} breaks the network contract "
                        f"(lightning_modules/components/networks.py): missing "
                        f"{'; '.join(problems)}")  # fmt: skip


def build_segmentation_net(
    architecture: str,
    encoder: str,
    in_channels: int,
    classes: int | None = None,
    encoder_weights: str | None = None,
    **options: Any,
) -> nn.Module:
    """A network of a registered architecture, checked against the contract.

    Args:
        architecture: A registered name (``deeplabv3plus``, ``unet``, ``fpn``, ...) or
            ``<module>.<name>`` (see :func:`get_architecture`).
        encoder: timm model name.
        in_channels: Input channels.
        classes: Outputs of the segmentation head; ``None``: no head (``nn.Identity``), the
            forward returns the decoder features (dense pretraining, no unused parameters).
        encoder_weights: ``None`` (random) or ``"imagenet"`` (timm weights, when available).
        **options: Architecture options, passed to the builder as keywords (the smp ones:
            ``aspp_rates``, ``decoder_channels``; ``DenseTask`` passes both).

    Returns:
        The network.

    Raises:
        ValueError: On an unknown architecture or bad options.
        TypeError: The builder's network breaks the contract.
    """
    arch = get_architecture(architecture)
    net = arch.build(encoder=encoder, in_channels=in_channels, classes=classes,
                     encoder_weights=encoder_weights, **options)  # fmt: skip
    check_network(net, arch.name)
    return net


def _smp_builder(
    smp_class: str,
) -> Callable[..., nn.Module]:
    """A builder of an smp architecture over a ``tu-<timm>`` encoder."""

    def build(
        encoder: str,
        in_channels: int,
        classes: int | None = None,
        encoder_weights: str | None = None,
        aspp_rates: Sequence[int] = ASPP_RATES_OS16,
        decoder_channels: Sequence[int] | None = None,
        decoder: str | None = None,
    ) -> nn.Module:
        if decoder is not None:
            raise ValueError(f"model.decoder {decoder!r}: smp's {smp_class} has one decoder "
                             "(leave model.decoder null)")  # fmt: skip
        extra: dict[str, object] = {}
        if smp_class == "DeepLabV3Plus":
            if len(aspp_rates) != 3 or min(aspp_rates) < 1:
                raise ValueError(f"model.aspp_rates must be three rates >= 1, got "
                                 f"{list(aspp_rates)}")  # fmt: skip
            extra["decoder_atrous_rates"] = tuple(int(r) for r in aspp_rates)
            if decoder_channels is not None:
                if len(decoder_channels) != 1:
                    raise ValueError("DeepLabV3+ model.decoder_channels takes one width, got "
                                     f"{list(decoder_channels)}")  # fmt: skip
                extra["decoder_channels"] = int(decoder_channels[0])
        elif smp_class == "Unet":
            channels = UNET_CHANNELS if decoder_channels is None else tuple(decoder_channels)
            if len(channels) != 5:
                raise ValueError(f"U-Net model.decoder_channels needs 5 widths, got "
                                 f"{list(channels)}")  # fmt: skip
            extra["decoder_channels"] = tuple(int(c) for c in channels)
        elif decoder_channels is not None:
            extra["decoder_segmentation_channels"] = int(decoder_channels[0])
        net = getattr(smp, smp_class)(
            encoder_name=f"tu-{encoder}",
            encoder_weights=encoder_weights,
            in_channels=in_channels,
            classes=1 if classes is None else classes,
            **extra,
        )
        if classes is None:
            net.segmentation_head = nn.Identity()
        net.pad_multiple = 32  # the deepest encoder stage's stride
        return net

    build.__doc__ = f"smp ``{smp_class}`` over a ``tu-<timm>`` encoder (the network contract)."
    return build


# aspp_rates: at output stride 16 (smp's and the official GLCNet's) DeepLab uses 6/12/18;
# smp's default 12/24/36 is DeepLab's output-stride-8 setting, whose rates 24 and 36 read only
# padding on the 14x14 ASPP map of a 224 px crop.  decoder_channels: DeepLabV3+ one width
# (default 256); U-Net one per stage (default UNET_CHANNELS, whose last stage has 64 channels
# like Hu et al.'s U-Net, where smp's default ends at 16); FPN its segmentation width.
register_architecture("deeplabv3plus", "smp DeepLabV3+ (ASPP 6/12/18, output stride 16)")(
    _smp_builder("DeepLabV3Plus"))
register_architecture("unet", "smp U-Net (decoder 256-128-64-64-64)")(_smp_builder("Unet"))
register_architecture("fpn", "smp FPN")(_smp_builder("FPN"))


@register_architecture("segmenter", "Segmenter: timm ViT + mask transformer (decoder: mask) "
                       "or linear decoder (decoder: linear) (Strudel et al.)")
def _segmenter_mask(decoder: str | None = None, **kwargs: Any) -> nn.Module:
    """Segmenter with the mask transformer, or the ``decoder`` named (:mod:`.segmenter`)."""
    return build_segmenter(decoder or "mask", **kwargs)


@register_architecture("segmenter_linear", "Segmenter with its linear decoder (an alias of "
                       "segmenter with decoder: linear)")
def _segmenter_linear(decoder: str | None = None, **kwargs: Any) -> nn.Module:
    """Segmenter with its linear decoder (:mod:`.segmenter`)."""
    if decoder not in (None, "linear"):
        raise ValueError(f"segmenter_linear has the linear decoder, got model.decoder {decoder!r}")
    return build_segmenter("linear", **kwargs)


def out_channels(module: nn.Module) -> int:
    """Output channels of ``module``: its declared ``out_channels``, else its last convolution's.

    An int ``out_channels`` attribute (a Segmenter pretraining network's token map) wins;
    smp decoders are sized by their last ``Conv2d``.
    """
    declared = getattr(module, "out_channels", None)
    if isinstance(declared, int):
        return declared
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
