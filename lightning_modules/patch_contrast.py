"""Patch-wise contrastive domain adaptation (Liu et al., arXiv 2104.11056): contraseg's reading.

The paper aligns source and target features with contrastive learning between patches
that are "structurally similar in label space", measured at several resolutions; only its
abstract and introduction are public, so the sizes, disparity, threshold and temperature
are this project's design, each an argument (formulas:
:mod:`contraseg.lightning_modules.losses.patch_contrast`).

Training batches come from :class:`~contraseg.datamodules.SourceTargetDataModule`
(``streams: [source, target]``, or with ``target_labeled`` for the semi-supervised mode).
Per step:

* cross-entropy on the labeled source crops (and on the labeled target crops when the
  ``target_labeled`` stream is there);
* label maps: the source ground truth; on the target, the network's own detached
  predictions where their confidence reaches ``pseudo_threshold`` (unsupervised mode,
  ``target_labels: pseudo``) or the few target labels (``target_labels: labeled``);
* both label maps cut into ``grid x grid`` patches with class histograms at ``levels``;
  each source patch's positive is the target patch of smallest disparity below
  ``threshold``;
* patch features: the encoder stage ``feature_level`` through a 1x1-convolution projector,
  average-pooled per patch; InfoNCE (temperature ``temperature``) weighted by
  ``contrast_weight`` and added to the cross-entropy.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor

from contraseg.lightning_modules.components.heads import Projector
from contraseg.lightning_modules.losses.patch_contrast import (
    label_disparity,
    match_patches,
    patch_histograms,
    patch_info_nce,
)
from contraseg.lightning_modules.segmentation_finetune import SegmentationFineTune
from contraseg.lightning_modules.task import TaskLoss

__all__ = ["PatchContrastAdaptation"]


class PatchContrastAdaptation(SegmentationFineTune):
    """Source cross-entropy plus cross-domain patch contrast (see the module docstring).

    Args:
        contrast_weight: Weight of the patch InfoNCE.
        temperature: Its temperature.
        grid: Patches per side of each crop.
        levels: Sub-patches per side at each pyramid level of the label histograms.
        threshold: Largest disparity (in ``[0, 1]``) of a positive pair; target patches at
            or above it are negatives.
        feature_level: Encoder stage whose features are contrasted (``-1``: the deepest).
        projector: The 1x1-convolution projector of the patch features.
        target_labels: ``pseudo`` (unsupervised) or ``labeled`` (semi-supervised: the
            ``target_labeled`` stream's masks) label maps on the target side.
        pseudo_threshold: Confidence a target pixel's prediction needs to count as its
            pseudo label.
        **kwargs: :class:`~contraseg.lightning_modules.segmentation_finetune.SegmentationFineTune`
            arguments (``init_checkpoint``: e.g. the source-only model).
    """

    NON_NEGATIVE = (*SegmentationFineTune.NON_NEGATIVE, "contrast_weight")
    UNIT = (*SegmentationFineTune.UNIT, "threshold", "pseudo_threshold")

    def __init__(
        self,
        contrast_weight: float = 0.1,
        temperature: float = 0.1,
        grid: int = 4,
        levels: Sequence[int] = (1, 2, 4),
        threshold: float = 0.3,
        feature_level: int = -1,
        projector: Projector = Projector((256,), 128, True),  # noqa: B008
        target_labels: Literal["pseudo", "labeled"] = "pseudo",
        pseudo_threshold: float = 0.8,
        **kwargs: Any,
    ) -> None:
        if target_labels not in ("pseudo", "labeled"):
            raise ValueError(f"model.target_labels must be 'pseudo' or 'labeled', got "
                             f"{target_labels!r}")  # fmt: skip
        if grid < 1 or not levels or min(levels) < 1:
            raise ValueError(f"model.grid ({grid}) and model.levels ({list(levels)}) must be >= 1")
        super().__init__(**kwargs)

    def configure_models(self) -> None:
        """The segmentation network and the patch projector on the chosen encoder stage."""
        super().configure_models()
        hp = self.hparams
        channels = self.net.encoder.out_channels[hp.feature_level]
        self.projector = Projector.of(hp.projector).conv(channels)

    def _logits_and_features(self, images: Tensor) -> tuple[Tensor, Tensor]:
        """Logits and the ``feature_level`` encoder map of one forward (an encoder hook)."""
        captured: list[Any] = []
        handle = self.net.encoder.register_forward_hook(lambda m, i, o: captured.append(o))
        try:
            logits = self(images)
        finally:
            handle.remove()
        return logits, captured[0][self.hparams.feature_level]

    def _patches(self, features: Tensor) -> Tensor:
        """``(B * grid**2, D)`` projected features pooled per patch (patch-major)."""
        grid = self.hparams.grid
        pooled = F.adaptive_avg_pool2d(self.projector(features), grid)  # (B, D, G, G)
        return pooled.permute(0, 2, 3, 1).reshape(-1, pooled.shape[1])

    def _histograms(self, labels: Tensor) -> tuple[Tensor, Tensor]:
        hp = self.hparams
        finest = hp.grid * max(hp.levels)
        h, w = labels.shape[-2:]
        if h % finest or w % finest:  # nearest resize to a divisible size (labels only)
            size = (max(finest, h // finest * finest), max(finest, w // finest * finest))
            labels = F.interpolate(labels[:, None].float(), size=size, mode="nearest")
            labels = labels[:, 0].long()
        return patch_histograms(labels, hp.num_classes, hp.grid, hp.levels, self.ignore_index)

    def training_loss(self, batch: dict[str, Any]) -> TaskLoss:
        """Cross-entropy on labeled crops plus ``contrast_weight`` times the patch InfoNCE."""
        hp = self.hparams
        if not ("source" in batch and ("target" in batch or "target_labeled" in batch)):
            raise ValueError("patch-wise adaptation needs source and target batches: "
                             "SourceTargetDataModule with streams [source, target] (and "
                             f"target_labeled for the semi-supervised mode); got {sorted(batch)}")
        src = batch["source"]
        src_logits, src_feat = self._logits_and_features(src["image"])
        ce = self.segmentation_loss(src_logits, src["mask"])
        logs = {"ce_source": ce.detach()}
        if hp.target_labels == "labeled":
            if "target_labeled" not in batch:
                raise ValueError("model.target_labels 'labeled' needs the target_labeled stream")
            tgt = batch["target_labeled"]
            tgt_logits, tgt_feat = self._logits_and_features(tgt["image"])
            tgt_labels = tgt["mask"]
        else:
            tgt = batch["target"]
            tgt_logits, tgt_feat = self._logits_and_features(tgt["image"])
            conf, pred = tgt_logits.detach().float().softmax(1).max(1)
            tgt_labels = torch.where(conf >= hp.pseudo_threshold, pred,
                                     torch.full_like(pred, self.ignore_index))  # fmt: skip
        if "target_labeled" in batch:  # the few target labels train the network too
            labeled = batch["target_labeled"]
            lab_logits = tgt_logits if hp.target_labels == "labeled" else self(labeled["image"])
            ce_t = self.segmentation_loss(lab_logits, labeled["mask"])
            ce = ce + ce_t
            logs["ce_target"] = ce_t.detach()
        src_hist, src_ok = self._histograms(src["mask"])
        tgt_hist, tgt_ok = self._histograms(tgt_labels)
        disparity = label_disparity(src_hist[src_ok], tgt_hist[tgt_ok], hp.num_classes, hp.levels)
        anchors = self._patches(src_feat)[src_ok]
        candidates = self._patches(tgt_feat)[tgt_ok]
        if disparity.numel() == 0:
            contrast = (anchors.sum() + candidates.sum()) * 0.0
            matched_share = ce.new_zeros(())
        else:
            positive, matched, negatives = match_patches(disparity, hp.threshold)
            contrast = patch_info_nce(anchors, candidates, positive, matched, negatives,
                                      hp.temperature)  # fmt: skip
            matched_share = matched.float().mean()
        logs.update(contrast=contrast.detach(), matched_patches=matched_share)
        return TaskLoss(ce + hp.contrast_weight * contrast, logs)
