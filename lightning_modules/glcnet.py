"""GLCNet pretraining (Li et al., TGRS 2022): global style + local matching contrast.

A DeepLabV3+ (smp, timm ``tu-`` encoder) is pretrained on two views of each
unlabeled image:

* the **global style** branch summarises the ASPP output of each view by its
  channel-wise mean and variance (:func:`~contraseg.lightning_modules.losses.glcnet.style_features`)
  and projects it with an MLP ``2C -> 256 -> 64``;
* the **local matching** branch samples up to ``num_patches`` matched
  ``patch_size`` windows from the views' pixel-index maps
  (:func:`~contraseg.lightning_modules.losses.glcnet.sample_corresponding_patches`), average-pools
  the local features (upsampled to the view size) over each window and projects them
  with an MLP ``64 -> 64 -> 64``.  The local features are, as in the official
  ``GLCNet.py``, the decoder's final *linear* 1x1 convolution to 64 channels after two
  3x3 conv-BN-ReLU: smp's decoder has one (``block2``), so ``local_tap="official"`` adds
  the second 3x3 conv-BN-ReLU and the 1x1 conv (owned by this module, not transferred);
  ``local_tap="block2"`` reads smp's post-ReLU ``block2`` output (the earlier behaviour);
* heads are Linear-ReLU-Linear without BatchNorm as in the official code
  (``projector.batch_norm`` adds BN); the two views run in separate forward passes, so
  BatchNorm sees per-view statistics as in the official code (``joint_forward`` runs
  one pass over both views, faster);
* the loss is :func:`~contraseg.lightning_modules.losses.glcnet.glcnet_loss`
  (``weight * L_global + (1 - weight) * L_local``, decoupled NT-Xent).

The encoder weights live under ``net.encoder.model.*``, the layout
:class:`~contraseg.lightning_modules.segmentation_finetune.SegmentationFineTune` loads with
``init_checkpoint``.  Training batches come from a segmentation data module in
``pretrain_views`` mode (``views`` and ``index_maps``).
"""

from __future__ import annotations

from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from contraseg.lightning_modules.components import MLPHead, Projector
from contraseg.lightning_modules.components.networks import out_channels
from contraseg.lightning_modules.dense_task import DenseTask
from contraseg.lightning_modules.losses.glcnet import (
    glcnet_loss,
    local_matching_embeddings,
    sample_corresponding_patches,
    style_features,
)
from contraseg.lightning_modules.task import TaskLoss

__all__ = ["GLCNet"]


class GLCNet(DenseTask):
    """GLCNet: DeepLabV3+ pretrained with global style and local matching contrast.

    The paper: ResNet-50 encoder, Adam at lr 1e-3, 4-band Potsdam input.

    Args:
        num_patches: Matched patches per image for the local branch (paper: 4).
        patch_size: Patch side in view pixels (paper: 48 at 224); must be smaller
            than the views.
        temperature: NT-Xent temperature (paper: 0.5).
        weight: Weight ``lambda`` of the global part (paper: 0.5).
        use_style: Global branch on the style vector ``[mean, var]`` of the ASPP
            output; ``False`` uses global average pooling (the "no style" ablation).
        use_global: Include the global contrast.
        use_local: Include the local matching contrast.
        projector: Projectors (paper: global 256 -> 64; the local projector's hidden width
            is the decoder's; official: no BatchNorm).
        upsample_decoder: Upsample the decoder output to the view size before pooling
            the patches (as in the paper); ``False`` pools the stride-4 map directly
            (bilinear RoIAlign approximation, much less memory at 224 px).
        gather_distributed: Contrast the global embeddings across DDP ranks.
        local_tap: ``"official"`` (64-channel linear features after a second 3x3
            conv-BN-ReLU) or ``"block2"`` (smp's 256-channel post-ReLU decoder output).
        local_channels: Channels of the official local features (64).
        joint_forward: One forward pass over both views (BN statistics over both);
            ``False`` runs one pass per view as the official code.
        **kwargs: :class:`~contraseg.lightning_modules.dense_task.DenseTask` arguments
            (``architecture`` must be ``deeplabv3plus``).

    Raises:
        ValueError: On invalid sizes, weights, switches or architecture.
    """

    def __init__(
        self,
        num_patches: int = 4,
        patch_size: int = 48,
        temperature: float = 0.5,
        weight: float = 0.5,
        use_style: bool = True,
        use_global: bool = True,
        use_local: bool = True,
        projector: Projector = Projector((256,), 64, False),  # noqa: B008
        upsample_decoder: bool = True,
        gather_distributed: bool = False,
        local_tap: Literal["official", "block2"] = "official",
        local_channels: int = 64,
        joint_forward: bool = False,
        **kwargs: Any,
    ) -> None:
        if local_tap not in ("official", "block2"):
            raise ValueError(f"model.local_tap must be 'official' or 'block2', got {local_tap!r}")
        super().__init__(**kwargs)

    @classmethod
    def tiny_test_args(cls, init_args: dict[str, Any]) -> list[str]:  # noqa: D102
        return [*super().tiny_test_args(init_args), "--model.init_args.patch_size",
                str(min(16, init_args.get("patch_size", 48)))]  # fmt: skip

    def configure_models(self) -> None:
        """DeepLabV3+, then the global and local projectors."""
        hp = self.hparams
        if hp.architecture != "deeplabv3plus":
            raise ValueError(f"GLCNet needs model.architecture deeplabv3plus (its ASPP), got "
                             f"{hp.architecture!r}")  # fmt: skip
        if not (hp.use_global or hp.use_local):
            raise ValueError("GLCNet needs model.use_global or model.use_local (both are off)")
        super().configure_models()
        decoder = self.net.decoder
        aspp_channels = out_channels(decoder.aspp)
        width = out_channels(decoder.block2)
        self.local_decoder: nn.Module | None = None
        if hp.use_local and hp.local_tap == "official":
            self.local_decoder = nn.Sequential(
                nn.Conv2d(width, width, 3, padding=1, bias=False),
                nn.BatchNorm2d(width),
                nn.ReLU(inplace=True),
                nn.Conv2d(width, hp.local_channels, 1),
            )
            width = hp.local_channels
        self.decoder_channels = width
        spec = Projector.of(hp.projector)
        hidden, bn = [int(w) for w in spec.hidden_dims], spec.batch_norm
        style = 2 if hp.use_style else 1
        self.global_head = (
            MLPHead(aspp_channels * style, hidden, spec.out_dim, batch_norm=bn)
            if hp.use_global else None
        )  # fmt: skip
        self.local_head = (
            MLPHead(width, [width], spec.out_dim, batch_norm=bn) if hp.use_local else None
        )
        if not hp.use_local:  # the decoder after the ASPP gets no gradient without the local part
            for part in (decoder.up, decoder.block1, decoder.block2):
                part.requires_grad_(False)

    def configure_losses(self) -> None:
        """Validate the patch sampling and loss weights."""
        hp = self.hparams
        if hp.num_patches < 1 or hp.patch_size < 1:
            raise ValueError(
                f"model.num_patches and model.patch_size must be >= 1, got {hp.num_patches}, "
                f"{hp.patch_size}"
            )
        if not 0.0 <= hp.weight <= 1.0:
            raise ValueError(f"model.weight must be in [0, 1], got {hp.weight}")
        self.temperature = float(hp.temperature)
        self.num_patches, self.patch_size = hp.num_patches, hp.patch_size
        self.weight, self.use_style = hp.weight, hp.use_style
        self.use_global, self.use_local = hp.use_global, hp.use_local
        self.upsample_decoder, self.gather_distributed = hp.upsample_decoder, hp.gather_distributed

    # ----------------------------------------------------------------- network parts
    def encode(self, images: Tensor) -> tuple[Tensor, Tensor | None]:
        """ASPP output and (if the local part is on) decoder output of a batch.

        Args:
            images: ``(B, C, H, W)`` views.

        Returns:
            ``(aspp, local)``: the ASPP output ``(B, C_aspp, H/16, W/16)`` and the local
            features ``(B, C_loc, H/4, W/4)`` (``None`` without the local part): the
            DeepLabV3+ decoder composed exactly as ``DeepLabV3PlusDecoder.forward``, then
            the official tap's extra layers (``local_tap="official"``).
        """
        features = self.net.encoder(images)
        decoder = self.net.decoder
        aspp = decoder.aspp(features[-1])
        if not self.use_local:
            return aspp, None
        high_res = decoder.block1(features[2])
        decoded = decoder.block2(torch.cat([decoder.up(aspp), high_res], dim=1))
        if self.local_decoder is not None:
            decoded = self.local_decoder(decoded)
        return aspp, decoded

    # ----------------------------------------------------------------- loss
    def training_loss(self, batch: dict[str, Any]) -> TaskLoss:
        """GLCNet loss of two views and their pixel-index maps.

        Args:
            batch: ``pretrain_views`` batch: ``views`` (two ``(B, C, H, W)`` views; more
                are ignored) and their ``index_maps`` (``(B, H, W)`` source-pixel ids).

        Returns:
            The loss; logs hold ``loss_global`` / ``loss_local`` (parts switched on)
            and ``valid_patches`` (fraction of the ``B * num_patches`` patches matched).

        Raises:
            ValueError: With fewer than two views or index maps, or views not larger
                than ``patch_size``.
        """
        views, index_maps = batch["views"], batch.get("index_maps", [])
        if len(views) < 2 or len(index_maps) < 2:
            raise ValueError(
                f"GLCNet needs two views with index maps, got {len(views)} views and "
                f"{len(index_maps)} index maps (use the data module's pretrain_views mode)"
            )
        v1, v2 = views[0], views[1]
        if self.use_local and min(*v1.shape[-2:], *v2.shape[-2:]) <= self.patch_size:
            raise ValueError(
                f"model.patch_size ({self.patch_size}) must be smaller than the views "
                f"({tuple(v1.shape[-2:])}, {tuple(v2.shape[-2:])})"
            )
        b = v1.shape[0]
        if self.hparams.joint_forward and v1.shape == v2.shape:  # one pass over both views
            aspp, decoded = self.encode(torch.cat([v1, v2]))
            aspp_1, aspp_2 = aspp[:b], aspp[b:]
            dec_1, dec_2 = (decoded[:b], decoded[b:]) if decoded is not None else (None, None)
        else:
            aspp_1, dec_1 = self.encode(v1)
            aspp_2, dec_2 = self.encode(v2)

        logs: dict[str, Tensor] = {}
        g1 = g2 = l1 = l2 = None
        if self.global_head is not None:
            if self.use_style:
                s = style_features(torch.cat([aspp_1, aspp_2]))
            else:
                s = torch.cat([aspp_1, aspp_2]).float().mean(dim=(2, 3))
            g = self.global_head(s)  # autocast casts the float32 statistics itself
            g1, g2 = g[:b], g[b:]
        if self.local_head is not None and dec_1 is not None and dec_2 is not None:
            c1, c2, valid = sample_corresponding_patches(
                index_maps[0], index_maps[1], self.num_patches, self.patch_size
            )
            logs["valid_patches"] = valid.float().mean()
            if self.upsample_decoder:
                dec_1 = F.interpolate(
                    dec_1, size=v1.shape[-2:], mode="bilinear", align_corners=False
                )
                dec_2 = F.interpolate(
                    dec_2, size=v2.shape[-2:], mode="bilinear", align_corners=False
                )
            # centres of view 2 refer to view 2's pixels: pool each view at its own scale
            r1, _ = local_matching_embeddings(
                dec_1, dec_1, c1, c1, valid, self.patch_size, tuple(v1.shape[-2:])
            )
            r2, _ = local_matching_embeddings(
                dec_2, dec_2, c2, c2, valid, self.patch_size, tuple(v2.shape[-2:])
            )
            k = r1.shape[0]
            if k >= 2:  # NT-Xent (and a projector's BN) need at least two pairs
                z = self.local_head(torch.cat([r1, r2]))
                l1, l2 = z[:k], z[k:]
            else:  # no usable match: an empty pair, zero loss kept on the graph
                zero = (r1.sum() + r2.sum()) * 0.0
                l1 = l2 = r1.new_zeros(0, Projector.of(self.hparams.projector).out_dim) + zero
        loss, parts = glcnet_loss(
            g1,
            g2,
            l1,
            l2,
            temperature=self.temperature,
            weight=self.weight,
            use_global=self.use_global,
            use_local=self.use_local,
            gather_distributed=self.gather_distributed,
        )
        logs.update(parts)
        return TaskLoss(loss, logs)
