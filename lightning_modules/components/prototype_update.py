"""PrototypeUpdate: HCSC's hierarchical prototypes, recomputed at every epoch start.

The callback HCSC supplies itself (``HCSC.configure_callbacks``, from its ``prototype_*``
arguments); it lives beside the task's components so that the task can build it.

After ``warmup_epochs``, at the start of every training epoch, the callback

1. embeds the whole training set under the evaluation transform
   (``datamodule.eval_dataset("train")``) with the module's momentum encoder
   (``prototype_features``), sharded by a ``DistributedSampler`` and gathered in dataset
   order with the sampler's padding removed exactly (:mod:`contraseg.extraction`);
2. builds the hierarchy
   (:func:`~contraseg.lightning_modules.components.prototypes.hierarchical_kmeans`) on rank 0 and
   broadcasts it, or with every rank sharing the k-means work (``distributed: true``);
3. installs it with ``set_prototypes``; the module keeps it in its checkpoint state, so a
   run resumed inside this epoch continues with the same prototypes instead of
   recomputing them (the official code recomputes);
4. logs per level the empty-cluster and re-seeded counts, the concentration spread and,
   where the data has image labels, NMI and ARI of the level's assignments against them
   (scikit-learn), plus a PNG of cluster-size and concentration histograms.

A level with more clusters than points is a configuration error naming the level, raised
before training (faiss crashes there instead: mmselfsup #704).  Under ``fast_dev_run`` the
callback is off, as Lightning's own checkpointing and logging are.
"""

from __future__ import annotations

from collections.abc import Sequence

import lightning.pytorch as pl
import numpy as np
import torch
from lightning.pytorch.utilities import rank_zero_info
from matplotlib.figure import Figure
from sklearn.metrics import adjusted_rand_score, normalized_mutual_info_score

from contraseg.extraction import extract_features
from contraseg.figures import save_and_log_figure
from contraseg.lightning_modules.components.prototypes import (
    Prototypes,
    check_levels,
    hierarchical_kmeans,
)

__all__ = ["PrototypeUpdate"]


class PrototypeUpdate(pl.Callback):
    """Hierarchical k-means of momentum features at epoch starts (module docstring).

    Args:
        num_clusters: Clusters per level, bottom up (HCSC ImageNet: ``[3000, 2000, 1000]``).
        warmup_epochs: Epochs of plain MoCo before the first prototypes (HCSC: 20 of 200).
        niter: Lloyd iterations per level (official: 20).
        nredo: k-means restarts per level (official: 5).
        init: ``random`` (faiss's, as the official code) or ``k-means++`` (better seeds,
            sequential: ~6x the cost of the Lloyd iterations at k = 3000, see
            ``benchmarks/kmeans.py``).
        distributed: Share each k-means over the DDP ranks (all-reduced sums and counts);
            otherwise rank 0 clusters and broadcasts.
        batch_size: Images per extraction batch and rank.
        num_workers: Extraction DataLoader workers.
        seed: Seed of level 0 (level ``l``: ``seed + l``).
        temperature: Mean concentration (default: the module's ``temperature``).
        save_plots: Write and log the histogram figure.

    Attributes:
        last_metrics: The metrics of the last update (also logged).
    """

    def __init__(
        self,
        num_clusters: Sequence[int] = (3000, 2000, 1000),
        warmup_epochs: int = 20,
        niter: int = 20,
        nredo: int = 5,
        init: str = "random",
        distributed: bool = False,
        batch_size: int = 256,
        num_workers: int = 0,
        seed: int = 0,
        temperature: float | None = None,
        save_plots: bool = True,
    ) -> None:
        super().__init__()
        check_levels(list(num_clusters))
        if warmup_epochs < 0:
            raise ValueError(f"PrototypeUpdate: warmup_epochs must be >= 0, got {warmup_epochs}")
        self.num_clusters = [int(k) for k in num_clusters]
        self.warmup_epochs, self.niter, self.nredo, self.init = warmup_epochs, niter, nredo, init
        self.distributed, self.batch_size, self.num_workers = distributed, batch_size, num_workers
        self.seed, self.temperature, self.save_plots = seed, temperature, save_plots
        self.last_metrics: dict[str, float] = {}

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        """Check the module's contract and every level's size against the training set."""
        if stage != "fit" or trainer.fast_dev_run:
            return
        for name in ("prototype_features", "set_prototypes"):
            if not callable(getattr(pl_module, name, None)):
                raise TypeError(f"PrototypeUpdate needs `{type(pl_module).__name__}.{name}`")
        datamodule = trainer.datamodule
        if datamodule is None or not callable(getattr(datamodule, "eval_dataset", None)):
            raise TypeError("PrototypeUpdate needs a datamodule with `eval_dataset(split)`")
        datamodule.setup("fit")
        check_levels(self.num_clusters, len(datamodule.eval_dataset("train")))

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Recompute the prototypes, unless the checkpoint restored this epoch's."""
        epoch = trainer.current_epoch
        if epoch < self.warmup_epochs or trainer.fast_dev_run:
            return
        if getattr(pl_module, "prototypes", None) is not None and \
                getattr(pl_module, "prototypes_epoch", -1) == epoch:  # fmt: skip
            rank_zero_info(f"PrototypeUpdate: epoch {epoch} prototypes restored from checkpoint")
            return
        protos, labels = self.compute(trainer, pl_module)
        pl_module.set_prototypes(protos, epoch)
        if trainer.is_global_zero:
            self._report(trainer, protos, labels)

    def compute(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule
    ) -> tuple[Prototypes, torch.Tensor]:
        """Extract the features and cluster them; the same result on every rank."""
        dataset = trainer.datamodule.eval_dataset("train")
        precision = trainer.precision_plugin
        with precision.val_step_context():
            features, labels = extract_features(
                pl_module.prototype_features, dataset, pl_module.device, self.batch_size,
                self.num_workers, trainer.global_rank, trainer.world_size,
                all_gather=pl_module.all_gather, module=pl_module,
                convert_input=precision.convert_input,
                progress=trainer.is_global_zero and trainer.progress_bar_callback is not None,
                desc="Prototype features", seed=self.seed,
            )  # fmt: skip
        temperature = self.temperature or float(pl_module.hparams.temperature)
        everyone = self.distributed or trainer.world_size == 1
        protos = None
        if everyone or trainer.is_global_zero:
            protos = hierarchical_kmeans(
                features.to(pl_module.device), self.num_clusters, temperature, self.niter,
                self.nredo, self.seed, self.init, distributed=self.distributed,
                progress=trainer.is_global_zero,
            ).to(torch.device("cpu"))  # fmt: skip
        if not everyone:
            protos = trainer.strategy.broadcast(protos, src=0)
        assert protos is not None
        return protos, labels

    def _report(self, trainer: pl.Trainer, protos: Prototypes, labels: torch.Tensor) -> None:
        metrics: dict[str, float] = {}
        known = labels >= 0
        for level in range(protos.num_levels):
            key = f"prototypes/level{level}"
            counts, phi = protos.counts[level], protos.phi[level]
            metrics[f"{key}/empty"] = float((counts == 0).sum())
            metrics[f"{key}/reseeded"] = float(protos.reseeded[level])
            metrics[f"{key}/phi_min"] = float(phi.min())
            metrics[f"{key}/phi_max"] = float(phi.max())
            if int(known.sum()) > 1:
                y = labels[known].numpy()
                a = protos.assignments[level][known].numpy()
                metrics[f"{key}/nmi"] = float(normalized_mutual_info_score(y, a))
                metrics[f"{key}/ari"] = float(adjusted_rand_score(y, a))
        self.last_metrics = metrics
        for logger in trainer.loggers:
            logger.log_metrics(metrics, step=trainer.global_step)
        if self.save_plots:
            save_and_log_figure(trainer, self._figure(protos, trainer.current_epoch),
                                "prototypes/histograms", trainer.log_dir, "prototypes",
                                "PrototypeUpdate")  # fmt: skip

    @staticmethod
    def _figure(protos: Prototypes, epoch: int) -> Figure:
        levels = protos.num_levels
        fig = Figure(figsize=(4 * levels, 6), layout="constrained")
        axes = fig.subplots(2, levels, squeeze=False)
        for level in range(levels):
            counts = protos.counts[level].numpy()
            axes[0, level].hist(counts, bins=min(50, max(5, len(np.unique(counts)))))
            axes[0, level].set(title=f"level {level}: {len(counts)} clusters",
                               xlabel="members per cluster", ylabel="clusters")  # fmt: skip
            axes[1, level].hist(protos.phi[level].numpy(), bins=30, color="tab:orange")
            axes[1, level].set(xlabel="concentration phi", ylabel="clusters")
        fig.suptitle(f"HCSC prototypes, epoch {epoch}")
        return fig
