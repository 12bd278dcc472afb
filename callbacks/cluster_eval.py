"""ClusterEvaluation: Gaussian-mixture clustering of embeddings, NMI / ARI, 2-D maps.

CLAWS (Herrera-Gerena et al. 2021) reports NMI of a Gaussian mixture fitted to
low-dimensional embeddings.  At the end of selected validation epochs this callback embeds
an evaluation split (every image once, sharded over DDP ranks, :mod:`contraseg.extraction`;
through the task's ``eval_inputs`` so attention masks apply), optionally reduces it with
PCA, fits scikit-learn's ``GaussianMixture`` with one component per class, and logs

* ``cluster/nmi`` and ``cluster/ari`` of the mixture's assignments against the labels,
* a PNG (and W&B image) of a 2-D t-SNE map coloured by class and by cluster.

Every rank holds the gathered embeddings and fits the same seeded mixture, so the logged
numbers need no synchronisation.
"""

from __future__ import annotations

import lightning.pytorch as pl
import numpy as np
from matplotlib.figure import Figure
from sklearn.decomposition import PCA
from sklearn.manifold import TSNE
from sklearn.metrics import adjusted_rand_score, normalized_mutual_info_score
from sklearn.mixture import GaussianMixture

from contraseg.extraction import extract_features
from contraseg.figures import save_and_log_figure

__all__ = ["ClusterEvaluation", "gmm_scores"]

SPACES = ("projector", "encoder")


def gmm_scores(
    features: np.ndarray,
    labels: np.ndarray,
    num_clusters: int | None = None,
    pca_dims: int | None = None,
    covariance_type: str = "full",
    seed: int = 0,
) -> tuple[float, float, np.ndarray]:
    """NMI and ARI of a Gaussian mixture's clusters against ``labels``.

    Args:
        features: ``(n, d)`` embeddings.
        labels: ``(n,)`` class labels (``-1``: unknown, ignored in the scores).
        num_clusters: Mixture components (default: the number of label classes).
        pca_dims: Reduce to this many PCA dimensions first (``None``: no reduction).
        covariance_type: scikit-learn's ``full``, ``diag``, ``tied`` or ``spherical``.
        seed: Seed of PCA and the mixture.

    Returns:
        ``(nmi, ari, assignments)``.

    Raises:
        ValueError: Without at least two labelled samples.
    """
    known = labels >= 0
    if known.sum() < 2:
        raise ValueError("cluster evaluation needs at least two labelled samples")
    k = min(num_clusters or len(np.unique(labels[known])), features.shape[0])
    x = features.astype(np.float64)
    if pca_dims is not None and pca_dims < x.shape[1]:  # at most n dimensions (tiny splits)
        x = PCA(min(pca_dims, x.shape[0]), random_state=seed).fit_transform(x)
    gmm = GaussianMixture(k, covariance_type=covariance_type, reg_covar=1e-4, random_state=seed)
    assignments = gmm.fit(x).predict(x)
    nmi = normalized_mutual_info_score(labels[known], assignments[known])
    ari = adjusted_rand_score(labels[known], assignments[known])
    return float(nmi), float(ari), assignments


class ClusterEvaluation(pl.Callback):
    """GMM NMI / ARI of an evaluation split's embeddings (module docstring).

    Args:
        every_n_epochs: Run when ``(epoch + 1) % every_n_epochs == 0``.
        split: Evaluation split of ``datamodule.eval_dataset``.
        space: ``projector`` (the task's ``project``: CLAWS's low-dimensional embeddings) or
            ``encoder`` (``embed``).
        pca_dims: PCA dimensions before the mixture (``None``: none).
        num_clusters: Mixture components (default: the number of classes).
        covariance_type: Mixture covariance type.
        map_samples: Points of the t-SNE map (a seeded subset; 0: no map).
        batch_size: Images per extraction batch and rank.
        num_workers: Extraction workers.
        seed: Seed of the mixture, PCA, the map subset and t-SNE.
        save_plots: Write / log the map.

    Attributes:
        last_scores: ``{"nmi": ..., "ari": ...}`` of the last run.
    """

    def __init__(
        self,
        every_n_epochs: int = 1,
        split: str = "val",
        space: str = "projector",
        pca_dims: int | None = None,
        num_clusters: int | None = None,
        covariance_type: str = "full",
        map_samples: int = 1000,
        batch_size: int = 256,
        num_workers: int = 0,
        seed: int = 0,
        save_plots: bool = True,
    ) -> None:
        super().__init__()
        if space not in SPACES:
            raise ValueError(f"ClusterEvaluation: space must be one of {SPACES}, got {space!r}")
        if every_n_epochs < 1:
            raise ValueError(f"ClusterEvaluation: every_n_epochs must be >= 1, got "
                             f"{every_n_epochs}")  # fmt: skip
        self.every_n_epochs, self.split, self.space = every_n_epochs, split, space
        self.pca_dims, self.num_clusters = pca_dims, num_clusters
        self.covariance_type = covariance_type
        self.map_samples, self.batch_size, self.num_workers = map_samples, batch_size, num_workers
        self.seed, self.save_plots = seed, save_plots
        self.last_scores: dict[str, float] = {}

    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Embed, cluster, score, log and plot."""
        if trainer.sanity_checking or (trainer.current_epoch + 1) % self.every_n_epochs:
            return
        name = "project" if self.space == "projector" else "embed"
        embed = getattr(pl_module, name, None)
        if not callable(embed):
            raise TypeError(f"ClusterEvaluation(space={self.space!r}) needs "
                            f"`{type(pl_module).__name__}.{name}`")  # fmt: skip
        dataset = trainer.datamodule.eval_dataset(self.split)
        precision = trainer.precision_plugin
        with precision.val_step_context():
            features, labels = extract_features(
                embed, dataset, pl_module.device, self.batch_size, self.num_workers,
                trainer.global_rank, trainer.world_size, all_gather=pl_module.all_gather,
                module=pl_module, convert_input=precision.convert_input,
                progress=trainer.is_global_zero and trainer.progress_bar_callback is not None,
                desc=f"Cluster evaluation ({self.split})", seed=self.seed,
                inputs=getattr(pl_module, "eval_inputs", None),
            )  # fmt: skip
        x, y = features.numpy(), labels.numpy()
        nmi, ari, assignments = gmm_scores(x, y, self.num_clusters, self.pca_dims,
                                           self.covariance_type, self.seed)  # fmt: skip
        self.last_scores = {"nmi": nmi, "ari": ari}
        pl_module.log("cluster/nmi", nmi, rank_zero_only=False, sync_dist=False)
        pl_module.log("cluster/ari", ari, rank_zero_only=False, sync_dist=False)
        if self.save_plots and self.map_samples and trainer.is_global_zero:
            names = list(getattr(getattr(trainer, "datamodule", None), "classes", None) or [])
            fig = self._map(x, y, assignments, trainer.current_epoch, nmi, names)
            save_and_log_figure(trainer, fig, "cluster/map", trainer.log_dir, "cluster_maps",
                                "ClusterEvaluation")  # fmt: skip

    def _map(self, x: np.ndarray, y: np.ndarray, clusters: np.ndarray, epoch: int,
             nmi: float, class_names: list[str] | None = None) -> Figure:  # fmt: skip
        rng = np.random.default_rng(self.seed)
        pick = rng.permutation(len(x))[: self.map_samples]
        perplexity = float(min(30, max(2, len(pick) - 1) / 3))
        xy = TSNE(2, perplexity=perplexity, init="pca", random_state=self.seed).fit_transform(
            x[pick].astype(np.float64))  # fmt: skip
        fig = Figure(figsize=(11, 5), layout="constrained")
        for ax, colour, title in zip(fig.subplots(1, 2), (y[pick], clusters[pick]),
                                     ("class", "GMM cluster"), strict=True):  # fmt: skip
            for value in np.unique(colour):
                sel = colour == value
                label = ("unlabelled" if value < 0 else class_names[int(value)]
                         if title == "class" and class_names and value < len(class_names)
                         else str(int(value)))  # fmt: skip
                ax.scatter(xy[sel, 0], xy[sel, 1], s=6, label=label)
            ax.set(title=f"t-SNE coloured by {title}", xticks=[], yticks=[])
            ax.legend(markerscale=2, fontsize="small", title=title, loc="best")
        fig.suptitle(f"epoch {epoch}: GMM NMI {nmi:.3f} ({self.space} space)")
        return fig
