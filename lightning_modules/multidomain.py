r"""Multi-domain segmentation with domain-specific batch norm (Boutillon et al., MICCAI 2021).

One network for several data sets (domains): shared convolutions, **domain-specific batch
norm** (every BN layer of the smp/timm network keeps one set of running statistics and affine
parameters per domain, :mod:`contraseg.lightning_modules.components.domain_bn`), domain-specific
output layers (one segmentation head per domain) and a supervised contrastive regulariser with the
*domain as the label* on the pooled bottleneck (last encoder stage) embeddings :math:`z`:

.. math::

    \mathcal{L} = \mathcal{L}_{seg} + \lambda\, \mathcal{L}^{sup}_{out}(g(z), d)

(:math:`g` a small projector, :math:`d` the domain ids, SupCon of Khosla et al.; it promotes
intra-domain similarity and inter-domain margins, the abstract's wording; where the paper
applies it and its exact form were not retrieved, so this is a documented choice).  Batches
come from :class:`~contraseg.datamodules.multidomain.MultiDomainDataModule` (balanced over domains,
``domain`` per sample; mixed batches are split inside each BN layer).  Ablations:
``shared_bn: true`` (one BN for all domains), ``contrastive_weight: 0``, ``domain_heads: false``
(one shared head) and single-domain training (a data module with one domain).  Evaluation
scores every domain separately (``val/domain<k>/...``) and all together.
"""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch import Tensor, nn

from contraseg.lightning_modules.components.domain_bn import convert_domain_bn, set_domain
from contraseg.lightning_modules.components.heads import Projector
from contraseg.lightning_modules.evaluators.segmentation_metrics import SegmentationMetrics
from contraseg.lightning_modules.evaluators.volume_metrics import VolumeMetrics
from contraseg.lightning_modules.losses import nt_xent_loss
from contraseg.lightning_modules.segmentation_finetune import SegmentationFineTune
from contraseg.lightning_modules.task import TaskLoss

__all__ = ["MultiDomainSegmentation"]


class MultiDomainSegmentation(SegmentationFineTune):
    """Segmentation over several domains (see the module docstring).

    Args:
        num_domains: Domains (must equal the data module's).
        shared_bn: One batch norm for all domains (ablation).
        domain_heads: One output layer per domain (``False``: shared head).
        contrastive_weight: Weight (lambda) of the domain-contrastive regulariser.
        contrastive_temperature: Its SupCon temperature.
        projector: Shape of the domain-contrast projector (256 -> 64, no BatchNorm).
        **kwargs: :class:`~contraseg.lightning_modules.segmentation_finetune.SegmentationFineTune`
            arguments (architecture, encoder, loss, ``init_checkpoint``, ...).
    """

    NON_NEGATIVE = (*SegmentationFineTune.NON_NEGATIVE, "contrastive_weight")

    def __init__(
        self,
        num_domains: int = 2,
        shared_bn: bool = False,
        domain_heads: bool = True,
        contrastive_weight: float = 0.1,
        contrastive_temperature: float = 0.1,
        projector: Projector = Projector((256,), 64, False),  # noqa: B008
        **kwargs: Any,
    ) -> None:
        if num_domains < 1:
            raise ValueError(f"model.num_domains must be >= 1, got {num_domains}")
        super().__init__(**kwargs)
        # after any init_checkpoint load, so every domain starts from the loaded statistics
        if not shared_bn:
            convert_domain_bn(self.net, num_domains)
        self._domain: Tensor | int = 0

    def configure_models(self) -> None:
        """The smp network, per-domain heads (copies of its head) and the projector."""
        super().configure_models()
        hp = self.hparams
        heads = hp.num_domains if hp.domain_heads else 1
        head = self.net.segmentation_head
        self.heads = nn.ModuleList([copy.deepcopy(head) for _ in range(heads)])
        self.net.segmentation_head = nn.Identity()
        self.projector = Projector.of(hp.projector).mlp(self.feature_dim)

    def configure_losses(self) -> None:  # noqa: D102
        super().configure_losses()
        self.contrastive_temperature = float(self.hparams.contrastive_temperature)

    def configure_metrics(self) -> None:
        """Overall metrics (the base's) plus one set per domain."""
        super().configure_metrics()
        n, c, ignore = self.hparams.num_domains, self.hparams.num_classes, self.hparams.ignore_index
        self.domain_pixels = nn.ModuleList([SegmentationMetrics(c, ignore) for _ in range(n)])
        self.domain_volumes = nn.ModuleList([VolumeMetrics(c) for _ in range(n)])

    def setup(self, stage: str) -> None:
        """Check that the data module has as many domains as the model."""
        super().setup(stage)
        datamodule = getattr(self.trainer, "datamodule", None)
        n = getattr(datamodule, "num_domains", None)
        if n is not None and n != self.hparams.num_domains:
            raise ValueError(f"model.num_domains is {self.hparams.num_domains} but the data module "
                             f"has {n} domains")  # fmt: skip

    # ------------------------------------------------------------------ forward
    def _segment(self, images: Tensor) -> tuple[Tensor, Tensor]:
        """Logits and pooled bottleneck features under ``self._domain``."""
        set_domain(self.net, self._domain)
        features = self.net.encoder(self._with_attention(images))
        decoded = self.net.decoder(features)
        pooled = features[-1].mean(dim=(2, 3))
        d = self._domain
        if len(self.heads) == 1:
            return self.heads[0](decoded), pooled
        if isinstance(d, int):
            return self.heads[d](decoded), pooled
        logits = None
        for k in torch.unique(d).tolist():  # one head call per domain present
            rows = d == k
            out = self.heads[int(k)](decoded[rows])
            if logits is None:
                logits = out.new_empty((decoded.shape[0], *out.shape[1:]))
            logits[rows] = out
        return logits, pooled

    def forward(self, images: Tensor) -> Tensor:
        """Logits under the current domain (``self._domain``, set from each batch)."""
        return self._segment(images)[0]

    def _batch_domain(self, batch: dict[str, Any], size: int) -> Tensor | int:
        if "domain" not in batch:
            raise ValueError("multi-domain batches need 'domain' (use MultiDomainDataModule)")
        d = torch.as_tensor(batch["domain"]).long().view(-1)
        if d.numel() == 1:
            return int(d)
        if d.numel() != size:
            raise ValueError(f"{d.numel()} domain ids for a batch of {size}")
        return d.to(self.device)

    def training_loss(self, batch: dict[str, Any]) -> TaskLoss:
        """Segmentation loss plus the weighted domain-contrastive regulariser."""
        images = batch["image"]
        self._domain = self._batch_domain(batch, images.shape[0])
        logits, pooled = self._segment(images)
        seg = self.segmentation_loss(logits, batch["mask"])
        logs = {"seg_loss": seg.detach()}
        weight = float(self.hparams.contrastive_weight)
        if weight == 0:
            return TaskLoss(seg, logs)
        domains = (torch.full((images.shape[0],), self._domain, device=images.device)
                   if isinstance(self._domain, int) else self._domain)  # fmt: skip
        con = nt_xent_loss(self.projector(pooled), labels=domains, gather_distributed=True,
                           temperature=self.contrastive_temperature)  # fmt: skip
        logs["domain_contrast"] = con.detach()
        return TaskLoss(seg + weight * con, logs)

    # --------------------------------------------------------------- evaluation
    def _eval_step(self, batch: dict[str, Any], metrics: SegmentationMetrics) -> dict[str, Tensor]:
        volume = batch["image"].ndim == 5
        self._domain = self._batch_domain(batch, 1 if volume else batch["image"].shape[0])
        out = super()._eval_step(batch, metrics)
        if metrics is not self.val_metrics:
            return out
        if volume:
            spacing = tuple(float(s) for s in batch["spacing"][0])
            self.domain_volumes[int(self._domain)].update(out["pred"], batch["mask"][0], spacing)
            self.domain_pixels[int(self._domain)].update(out["pred"], batch["mask"][0])
        else:
            d = self._domain
            ids = d if isinstance(d, Tensor) else torch.full((out["pred"].shape[0],), d)
            for k in torch.unique(ids).tolist():
                rows = ids.to(out["pred"].device) == k
                self.domain_pixels[int(k)].update(out["pred"][rows], batch["mask"][rows])
        return out

    def predict_step(self, batch: dict[str, Any], batch_idx: int) -> dict[str, Any]:  # noqa: D102
        self._domain = self._batch_domain(batch, batch["image"].shape[0])
        return super().predict_step(batch, batch_idx)

    def on_validation_epoch_end(self) -> None:
        """Overall metrics, then per domain: ``val/domain<k>/miou`` (and ``dice``, ``hd95``)."""
        super().on_validation_epoch_end()
        for k, (pixels, volumes) in enumerate(zip(self.domain_pixels, self.domain_volumes)):
            if pixels.update_count:
                self.log(f"val/domain{k}/miou", pixels.compute()["miou"])
                pixels.reset()
            if volumes.update_count:
                scores = volumes.compute()
                self.log(f"val/domain{k}/dice", scores["mean_dice"].float())
                self.log(f"val/domain{k}/hd95", scores["mean_hd95"].float())
                volumes.reset()
