"""Backbones: any timm model by name, with an optional CIFAR stem and dense features."""

from __future__ import annotations

from pathlib import Path

import timm
from torch import Tensor, nn


class Backbone(nn.Module):
    """A timm model returning pooled representations (and dense feature maps on request).

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
                f"unknown timm backbone {name!r}; expected a name from timm.list_models()"
            )
        kwargs = dict(timm_kwargs)
        if checkpoint_path is not None:
            path = Path(checkpoint_path)
            if not path.is_file():
                raise FileNotFoundError(f"backbone checkpoint_path {str(path)!r} does not exist")
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

    def forward_dense(self, x: Tensor) -> list[Tensor]:
        """Intermediate feature maps (one per stage), for dense heads.

        Args:
            x: Input images ``(B, C, H, W)``.

        Returns:
            List of ``(B, C_i, H_i, W_i)`` feature maps, shallow to deep.
        """
        if not hasattr(self.model, "forward_intermediates"):
            raise NotImplementedError(f"{self.name!r} does not expose forward_intermediates")
        return self.model.forward_intermediates(x, intermediates_only=True)
