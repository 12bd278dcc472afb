r"""Segmenter (Strudel, Garcia, Laptev and Schmid, ICCV 2021): a ViT and a mask transformer.

Registered as the architectures ``segmenter`` (mask-transformer decoder) and
``segmenter_linear`` (a linear decoder per patch token) of the network contract
(:mod:`contraseg.lightning_modules.components.networks`):

* ``net.encoder``: :class:`ViTMapEncoder`, a timm ViT (``dynamic_img_size``: any input whose
  sides are multiples of the patch, the position embedding resampled to its grid by timm)
  under ``.model``; its forward returns ``[map]``, the patch tokens (prefix tokens dropped)
  as a ``(B, D, H/p, W/p)`` map, and ``out_channels == [D]``;
* ``net.decoder``: :class:`MaskTransformer` or :class:`LinearDecoder`, class scores at
  ``H/p x W/p`` (``None`` classes: the decoder is the identity on the token map, for
  dense pretraining);
* ``net.segmentation_head``: bilinear upsampling by the patch size to the input resolution;
* ``net.pad_multiple``: the patch size (fine-tuning pads to it and crops back, as the
  official ``padding`` / ``unpadding``).

The mask transformer (the official ``MaskTransformer``, segm/model/decoder.py, read at
rstrudel/segmenter 20d1bfa; written here, not copied): patch tokens projected to the
decoder width, ``K`` learnable class embeddings appended, ``n_layers`` pre-norm transformer
blocks (timm's ``Block``), a LayerNorm; patch and class outputs projected by bias-free
matrices and L2-normalised; the masks are their dot products ``(N x K)``, normalised over
the classes by a LayerNorm (``mask_norm``):

.. math::
    m_{n,k} = \mathrm{LN}_k\Big(\frac{W_p z_n}{\lVert W_p z_n\rVert}\cdot
              \frac{W_c c_k}{\lVert W_c c_k\rVert}\Big)
"""

from __future__ import annotations

from typing import Any

import timm
import torch
import torch.nn.functional as F
from timm.models.vision_transformer import Block
from torch import Tensor, nn

__all__ = ["LinearDecoder", "MaskTransformer", "Segmenter", "ViTMapEncoder", "build_segmenter"]


class ViTMapEncoder(nn.Module):
    """A timm ViT whose patch tokens come back as one feature map.

    Args:
        name: A timm ViT name (``vit_tiny_patch16_224``, ...).
        in_channels: Input channels.
        pretrained: timm's pretrained weights (needs them locally).
        **timm_kwargs: ``timm.create_model`` arguments (``depth``, ``drop_path_rate``, ...).
    """

    def __init__(self, name: str, in_channels: int = 3, pretrained: bool = False,
                 **timm_kwargs: Any) -> None:  # fmt: skip
        super().__init__()
        try:
            self.model = timm.create_model(name, pretrained=pretrained, num_classes=0,
                                           in_chans=in_channels, dynamic_img_size=True,
                                           **timm_kwargs)  # fmt: skip
        except TypeError as err:  # a model without dynamic_img_size: not a ViT
            raise ValueError(f"segmenter needs a timm ViT; {name!r} is not one ({err})") from err
        if not hasattr(self.model, "patch_embed") or not hasattr(self.model, "num_prefix_tokens"):
            raise ValueError(f"segmenter needs a timm ViT (patch_embed, prefix tokens); {name!r} "
                             "is not one")  # fmt: skip
        patch = self.model.patch_embed.patch_size
        self.patch_size = int(patch[0] if isinstance(patch, tuple | list) else patch)
        self.out_channels = [int(self.model.embed_dim)]

    def forward(self, x: Tensor) -> list[Tensor]:
        """``[(B, D, H / p, W / p)]``: the final-norm patch tokens, prefix tokens dropped."""
        h, w = x.shape[-2] // self.patch_size, x.shape[-1] // self.patch_size
        tokens = self.model.forward_features(x)[:, self.model.num_prefix_tokens:]
        return [tokens.transpose(1, 2).reshape(x.shape[0], -1, h, w)]


class LinearDecoder(nn.Module):
    """Segmenter's linear decoder: one linear layer from each patch token to the classes."""

    def __init__(self, dim: int, classes: int) -> None:
        super().__init__()
        self.head = nn.Conv2d(dim, classes, kernel_size=1)  # a Linear per token

    def forward(self, *features: Tensor) -> Tensor:  # noqa: D102
        return self.head(features[-1])


class MaskTransformer(nn.Module):
    """Segmenter's mask transformer (module docstring).

    Args:
        dim: Encoder width ``D``.
        classes: Number of classes ``K``.
        n_layers: Transformer blocks (official: 2).
        d_model: Decoder width (official: ``D``).
        heads: Attention heads (official: ``d_model // 64``).
        mlp_ratio: MLP width over ``d_model`` (official: 4).
        dropout: Dropout in the blocks (official: 0.1; mmsegmentation: 0).
        drop_path: Stochastic depth in the blocks (official: 0).
    """

    def __init__(self, dim: int, classes: int, n_layers: int = 2, d_model: int | None = None,
                 heads: int | None = None, mlp_ratio: float = 4.0, dropout: float = 0.1,
                 drop_path: float = 0.0) -> None:  # fmt: skip
        super().__init__()
        d_model = d_model or dim
        heads = heads or max(1, d_model // 64)
        self.classes = classes
        self.proj_dec = nn.Linear(dim, d_model)
        self.cls_emb = nn.Parameter(torch.empty(1, classes, d_model))
        self.blocks = nn.ModuleList(
            Block(d_model, heads, mlp_ratio=mlp_ratio, qkv_bias=True, proj_drop=dropout,
                  attn_drop=dropout, drop_path=drop_path) for _ in range(n_layers))  # fmt: skip
        self.decoder_norm = nn.LayerNorm(d_model)
        scale = d_model**-0.5
        self.proj_patch = nn.Parameter(scale * torch.randn(d_model, d_model))
        self.proj_classes = nn.Parameter(scale * torch.randn(d_model, d_model))
        self.mask_norm = nn.LayerNorm(classes)
        nn.init.trunc_normal_(self.cls_emb, std=0.02)
        for module in self.modules():  # the official init of every linear and norm layer
            if isinstance(module, nn.Linear):
                nn.init.trunc_normal_(module.weight, std=0.02)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
            elif isinstance(module, nn.LayerNorm):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)

    def masks(self, tokens: Tensor) -> Tensor:
        """Class masks ``(B, N, K)`` of patch tokens ``(B, N, D)``."""
        x = self.proj_dec(tokens)
        x = torch.cat([x, self.cls_emb.expand(x.shape[0], -1, -1)], dim=1)
        for block in self.blocks:
            x = block(x)
        x = self.decoder_norm(x)
        patches = F.normalize(x[:, : -self.classes] @ self.proj_patch, dim=-1)
        classes = F.normalize(x[:, -self.classes :] @ self.proj_classes, dim=-1)
        return self.mask_norm(patches @ classes.transpose(1, 2))

    def forward(self, *features: Tensor) -> Tensor:
        """``(B, K, h, w)`` class scores of the token map ``(B, D, h, w)``."""
        fmap = features[-1]
        b, _, h, w = fmap.shape
        masks = self.masks(fmap.flatten(2).transpose(1, 2))
        return masks.transpose(1, 2).reshape(b, self.classes, h, w)


class _TokenMap(nn.Module):
    """The decoder of a pretraining network: the encoder's token map itself (``dim`` wide)."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.out_channels = dim  # what dense methods size their heads by (``out_channels``)

    def forward(self, *features: Tensor) -> Tensor:
        return features[-1]


class _Upsample(nn.Module):
    def __init__(self, factor: int) -> None:
        super().__init__()
        self.factor = factor

    def forward(self, x: Tensor) -> Tensor:
        return F.interpolate(x, scale_factor=self.factor, mode="bilinear", align_corners=False)


class Segmenter(nn.Module):
    """Encoder, decoder and upsampling head under the network contract (module docstring)."""

    def __init__(self, encoder: ViTMapEncoder, decoder: nn.Module, classes: int | None) -> None:
        super().__init__()
        self.encoder, self.decoder = encoder, decoder
        self.segmentation_head = (nn.Identity() if classes is None
                                  else _Upsample(encoder.patch_size))  # fmt: skip
        self.pad_multiple = encoder.patch_size

    def forward(self, x: Tensor) -> Tensor:
        """Logits ``(B, K, H, W)`` (``H``, ``W`` multiples of the patch size)."""
        return self.segmentation_head(self.decoder(*self.encoder(x)))


def build_segmenter(decoder: str, encoder: str, in_channels: int, classes: int | None = None,
                    encoder_weights: str | None = None, **options: Any) -> Segmenter:  # fmt: skip
    """A Segmenter network (the registry's builder; smp's options are ignored).

    Args:
        decoder: ``mask`` or ``linear``.
        encoder: A timm ViT name; ``vit_tiny_patch16_224`` with ``depth`` 2-4 for CPU tests.
        in_channels: Input channels.
        classes: Classes (``None``: pretraining, the token map is returned).
        encoder_weights: ``None`` or ``"imagenet"`` (timm's pretrained weights).
        **options: ``aspp_rates`` / ``decoder_channels`` of the smp architectures (ignored).

    Raises:
        ValueError: Another decoder, or an encoder that is not a timm ViT.
    """
    del options
    vit = ViTMapEncoder(encoder, in_channels, pretrained=encoder_weights is not None)
    dim = vit.out_channels[-1]
    if classes is None:
        head: nn.Module = _TokenMap(dim)
    elif decoder == "mask":
        head = MaskTransformer(dim, classes)
    elif decoder == "linear":
        head = LinearDecoder(dim, classes)
    else:
        raise ValueError(f"segmenter decoder must be 'mask' or 'linear', got {decoder!r}")
    return Segmenter(vit, head, classes)
