"""HCSC (Guo et al., CVPR 2022): MoCo v2 with hierarchical prototypes and selected negatives."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import lightning as L
import torch
from torch import Tensor

from contraseg.lightning_modules.components.prototype_update import PrototypeUpdate
from contraseg.lightning_modules.components.prototypes import Prototypes, check_levels
from contraseg.lightning_modules.losses.hcsc import (
    bernoulli_keep,
    instance_keep_probability,
    prototype_keep_probability,
    prototype_nce_loss,
    prototype_negatives,
)
from contraseg.lightning_modules.losses.moco import MASKED_MODES, queue_info_nce_loss
from contraseg.lightning_modules.momentum_task import MomentumTask
from contraseg.lightning_modules.task import TaskLoss

__all__ = ["HCSC"]


class HCSC(MomentumTask):
    """Hierarchical contrastive selective coding over a MoCo v2 network.

    The prototypes come from
    :class:`~contraseg.lightning_modules.components.prototype_update.PrototypeUpdate` (k-means of
    the momentum features of the training set at every epoch start after its warm-up), which
    the task supplies itself (``configure_callbacks``, from the ``prototype_*`` arguments);
    until then the loss is MoCo v2's.  Afterwards (equations in
    :mod:`contraseg.lightning_modules.losses.hcsc`): instance InfoNCE per level with selected queue
    negatives (summed over levels), plus ProtoNCE per level with selected negative
    prototypes (averaged over levels).  Views beyond the first two are multi-crop queries
    against the key and the queue (official ``compute_local_logits`` /
    ``compute_local_proto_logits``).  The prototypes are part of the checkpoint
    (``task_state``), so a resumed run continues with the same ones.

    Args:
        instance_selection: Select queue negatives by prototype (off: one plain InfoNCE).
        prototype_selection: Select negative prototypes below the top level.
        masked_negatives: ``zero`` (official: a dropped logit becomes 0 and ``exp(0)`` stays
            in the denominator) or ``drop`` (removed).
        selection_on_local: Multi-crop queries use the instance selection masks too.
        queue_size: Keys in the queue (HCSC's official 16,384).
        prototype_clusters: Clusters per level, bottom up (HCSC ImageNet: 3000, 2000, 1000).
        prototype_warmup_epochs: Epochs of plain MoCo before the first prototypes (HCSC: 20
            of 200).
        prototype_niter: Lloyd iterations per level (official: 20).
        prototype_nredo: k-means restarts per level (official: 5).
        prototype_init: ``random`` (faiss's, as the official code) or ``k-means++``.
        prototype_distributed: Share each k-means over the DDP ranks (otherwise rank 0
            clusters and broadcasts).
        prototype_batch_size: Images per feature-extraction batch and rank.
        prototype_num_workers: Feature-extraction DataLoader workers.
        prototype_seed: Seed of level 0 of the k-means (level ``l``: ``seed + l``).
        prototype_plots: Write and log the cluster-size and concentration histograms.
        **kwargs: :class:`~contraseg.lightning_modules.momentum_task.MomentumTask` arguments.
    """

    def __init__(
        self,
        instance_selection: bool = True,
        prototype_selection: bool = True,
        masked_negatives: str = "zero",
        selection_on_local: bool = True,
        queue_size: int = 16384,
        prototype_clusters: Sequence[int] = (3000, 2000, 1000),
        prototype_warmup_epochs: int = 20,
        prototype_niter: int = 20,
        prototype_nredo: int = 5,
        prototype_init: str = "random",
        prototype_distributed: bool = False,
        prototype_batch_size: int = 256,
        prototype_num_workers: int = 0,
        prototype_seed: int = 0,
        prototype_plots: bool = True,
        **kwargs: Any,
    ) -> None:
        if masked_negatives not in MASKED_MODES:
            raise ValueError(f"model.masked_negatives must be one of {MASKED_MODES}, "
                             f"got {masked_negatives!r}")  # fmt: skip
        check_levels(list(prototype_clusters))
        if prototype_warmup_epochs < 0:
            raise ValueError("model.prototype_warmup_epochs must be >= 0, "
                             f"got {prototype_warmup_epochs}")  # fmt: skip
        super().__init__(queue_size=queue_size, **kwargs)
        self.prototypes: Prototypes | None = None
        self.prototypes_epoch = -1

    # ------------------------------------------------------------- prototype state
    def set_prototypes(self, prototypes: Prototypes, epoch: int) -> None:
        """Install the hierarchy computed at the start of ``epoch`` (by the callback)."""
        self.prototypes = prototypes.to(self.device)
        self.prototypes_epoch = int(epoch)

    def task_state(self) -> dict[str, Any]:  # noqa: D102
        if self.prototypes is None:
            return {}
        cpu = self.prototypes.to(torch.device("cpu"))
        return {"prototypes": cpu.state(), "prototypes_epoch": self.prototypes_epoch}

    def load_task_state(self, state: dict[str, Any]) -> None:  # noqa: D102
        if "prototypes" in state:
            self.prototypes = Prototypes.from_state(state["prototypes"], self.device)
            self.prototypes_epoch = int(state["prototypes_epoch"])

    def configure_callbacks(self) -> list[L.Callback]:
        """The prototype update (the task's own callback: no config has to list it)."""
        hp = self.hparams
        return [PrototypeUpdate(
            num_clusters=list(hp.prototype_clusters), warmup_epochs=hp.prototype_warmup_epochs,
            niter=hp.prototype_niter, nredo=hp.prototype_nredo, init=hp.prototype_init,
            distributed=hp.prototype_distributed, batch_size=hp.prototype_batch_size,
            num_workers=hp.prototype_num_workers, seed=hp.prototype_seed,
            save_plots=hp.prototype_plots)]  # fmt: skip

    def on_fit_start(self) -> None:
        """The restored prototypes (if any) on the module's device."""
        super().on_fit_start()
        if self.prototypes is not None:
            self.prototypes = self.prototypes.to(self.device)

    # ------------------------------------------------------------------- the loss
    def _instance_terms(
        self, queries: list[Tensor], k: Tensor, masks: list[Tensor] | None, local_masks: bool,
        own: Tensor | None,
    ) -> tuple[Tensor, Tensor]:  # fmt: skip
        """(global, multi-crop) instance losses.

        ``own`` is ``negative_keys``; with selection, an excluded own key is masked as
        ``masked_negatives`` says, like a dropped key.
        """
        queue, tau, masked = self.queue.keys, self.temperature, self.hparams.masked_negatives
        if masks is None:
            terms = [queue_info_nce_loss(q, k, queue, tau, own, "drop") for q in queries]
            return terms[0], sum(terms[1:], k.new_zeros(()))
        if own is not None:  # the own keys are removed whatever the selection drew
            masks = [m & own for m in masks]
        glob = sum(queue_info_nce_loss(queries[0], k, queue, tau, m, masked) for m in masks)
        local = k.new_zeros(())
        for q in queries[1:]:
            for m in masks if local_masks else [own]:
                local = local + queue_info_nce_loss(q, k, queue, tau, m, masked)
        return glob, local

    def _prototype_plan(self, clusters: list[Tensor]) -> list[tuple[Tensor, Tensor | None]]:
        """Per level: the negative prototype ids and their selection probabilities.

        Both depend on the batch's clusters only, not on the query view, so they are built
        once per step and shared by every view (each view still draws its own mask).
        """
        protos, hp = self.prototypes, self.hparams
        assert protos is not None
        plan: list[tuple[Tensor, Tensor | None]] = []
        for level in range(protos.num_levels):
            positives = clusters[level]
            negatives = prototype_negatives(protos.centroids[level].shape[0], positives)
            probability = None
            if hp.prototype_selection and level < protos.num_levels - 1:
                probability = prototype_keep_probability(
                    protos.centroids[level], protos.centroids[level + 1], protos.phi[level + 1],
                    protos.parents[level][positives], negatives)  # fmt: skip
            plan.append((negatives, probability))
        return plan

    def _prototype_term(self, q: Tensor, clusters: list[Tensor],
                        plan: list[tuple[Tensor, Tensor | None]]) -> Tensor:  # fmt: skip
        """Mean over levels of the ProtoNCE of ``q`` (fresh selection draws per call)."""
        protos = self.prototypes
        assert protos is not None
        total = q.new_zeros(())
        for level, (negatives, probability) in enumerate(plan):
            keep = None if probability is None else bernoulli_keep(probability)
            total = total + prototype_nce_loss(q, protos.centroids[level], protos.phi[level],
                                               clusters[level], negatives, keep,
                                               self.hparams.masked_negatives)  # fmt: skip
        return total / protos.num_levels

    def training_loss(self, batch: dict[str, Any]) -> TaskLoss:
        """Instance (+ multi-crop) and prototype terms; MoCo v2 before the first prototypes."""
        views, hp = batch["views"], self.hparams
        momentum = self.update_key_encoder()
        features, q = self.query(views[0])
        queries = [q, *(self.query(v)[1] for v in views[2:])]
        k = self.keys(views[1])
        index = self.sample_indices(batch, k.shape[0], k.device)
        own = self.negative_keys(index)
        logs: dict[str, Tensor] = {"ema_momentum": q.new_tensor(momentum)}
        protos = self.prototypes
        if protos is None:
            inst, local = self._instance_terms(queries, k, None, False, own)
            proto = q.new_zeros(())
        else:
            if bool((index < 0).any()):
                raise ValueError("HCSC needs batch['sample_index'] (the dataset index of each "
                                 "image) to look up its prototypes")  # fmt: skip
            clusters = [a[index] for a in protos.assignments]
            masks = None
            if hp.instance_selection:
                masks = [bernoulli_keep(instance_keep_probability(self.queue.keys, c, phi, cl))
                         for c, phi, cl in zip(protos.centroids, protos.phi, clusters,
                                               strict=True)]  # fmt: skip
                logs["instance_keep"] = torch.stack([m.float().mean() for m in masks]).mean()
            inst, local = self._instance_terms(queries, k, masks, hp.selection_on_local, own)
            plan = self._prototype_plan(clusters)
            proto = sum((self._prototype_term(x, clusters, plan) for x in queries),
                        q.new_zeros(()))  # fmt: skip
        logs.update(instance_loss=inst.detach(), prototype_loss=proto.detach())
        if len(queries) > 1:
            logs["local_instance_loss"] = local.detach()
        self.queue.enqueue(k, index)
        return TaskLoss(inst + local + proto, logs, embedding=features)
