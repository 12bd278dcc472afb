r"""Lightning callback that monitors dimensional collapse of the learned representation.

At the end of selected validation epochs, :class:`EmbeddingRankMonitor` embeds a fixed
subset of an evaluation split, gathers the embeddings of all DDP ranks and logs

* ``rank/effective_rank``: RankMe :math:`\exp(-\sum_k p_k \log p_k)` with
  :math:`p_k = \sigma_k(Z) / \lVert \sigma(Z) \rVert_1 + \varepsilon`,
* ``rank/collapsed_dims``: number of covariance singular values below
  ``rel_threshold`` times the largest one,
* ``rank/embedding_dim``: :math:`D`,
* ``rank/top1_ratio``: :math:`\sigma_1(C) / \sum_k \sigma_k(C)`,

where :math:`C` is the covariance of the (optionally L2-normalised) embeddings, see
:mod:`contraseg.callbacks.spectrum`. It also plots :math:`\log_{10} \sigma_k(C)` against
:math:`k` (the DirectCLR spectrum plot).

Contract with the rest of the codebase:

* the LightningModule provides ``embed(images: Tensor) -> Tensor`` returning ``(B, D)``
  representations (called here in eval mode under ``torch.no_grad()``);
* the datamodule provides ``eval_dataset(split: str) -> Dataset`` whose items are dicts
  ``{"image": Tensor (C, H, W), "label": int}`` already transformed for evaluation.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Protocol

import lightning.pytorch as pl
import numpy as np
import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from torch import Tensor, nn
from torch.utils.data import Dataset, Subset

from contraseg.callbacks.spectrum import collapsed_dimensions, effective_rank, embedding_spectrum
from contraseg.extraction import extract_features
from contraseg.figures import image_loggers, save_and_log_figure

__all__ = ["EmbeddingRankMonitor"]


class _Embedder(Protocol):
    """What :meth:`EmbeddingRankMonitor._collect` needs from the LightningModule."""

    @property
    def device(self) -> torch.device:
        """Device the inputs are moved to."""
        ...

    def embed(self, images: Tensor) -> Tensor:
        """Map ``(B, C, H, W)`` images to ``(B, D)`` representations."""
        ...

    def all_gather(self, data: Tensor) -> Tensor:
        """Gather ``data`` from all ranks into a ``(world_size, *data.shape)`` tensor."""
        ...


class EmbeddingRankMonitor(pl.Callback):
    """Log the embedding spectrum, RankMe effective rank and collapsed dimensions.

    Runs in ``on_validation_epoch_end`` (never during the sanity check) every
    ``every_n_epochs`` epochs, i.e. when ``(current_epoch + 1) % every_n_epochs == 0``.
    A fixed random subset of ``min(num_samples, len(dataset))`` items of
    ``datamodule.eval_dataset(split)`` is drawn once (seeded), sharded across ranks,
    embedded with ``pl_module.embed`` and gathered with ``pl_module.all_gather``, so all
    metrics are computed on the full subset and are identical on every rank.

    The spectrum figure is saved (rank zero, ``save_plots=True``) to
    ``<trainer.log_dir or trainer.default_root_dir>/spectra/epoch_XXXX.png`` and logged
    to every attached :class:`~lightning.pytorch.loggers.WandbLogger` (``log_image``) and
    :class:`~lightning.pytorch.loggers.TensorBoardLogger` (``add_figure``) under the key
    ``rank/spectrum``; other loggers only receive the scalar metrics.

    Args:
        every_n_epochs: Run every this many epochs (``>= 1``).
        num_samples: Size of the evaluation subset (``>= 2``); capped at the dataset size.
        batch_size: Batch size used for embedding (``>= 1``).
        normalize: L2-normalise embeddings before computing the covariance spectrum.
        rel_threshold: A covariance singular value below ``rel_threshold`` times the
            largest counts as a collapsed dimension; must lie in ``(0, 1)``.
        seed: Seed of the generator that picks the subset.
        save_plots: Save the spectrum plot as PNG under the log directory.
        split: Split passed to ``datamodule.eval_dataset``.
        num_workers: DataLoader workers of the feature extraction.

    Attributes:
        last_spectrum: Covariance singular values of the last run (``float64``, CPU).
        last_effective_rank: RankMe of the last run.
        last_collapsed: Number of collapsed dimensions of the last run.
        last_plot_path: Path of the last saved PNG, if any.
    """

    def __init__(
        self,
        every_n_epochs: int = 1,
        num_samples: int = 512,
        batch_size: int = 256,
        normalize: bool = True,
        rel_threshold: float = 1e-5,
        seed: int = 0,
        save_plots: bool = True,
        split: str = "val",
        num_workers: int = 0,
    ) -> None:
        super().__init__()
        if every_n_epochs < 1:
            raise ValueError(f"every_n_epochs must be >= 1, got {every_n_epochs}")
        if num_samples < 2:
            raise ValueError(f"num_samples must be >= 2, got {num_samples}")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if not 0.0 < rel_threshold < 1.0:
            raise ValueError(f"rel_threshold must be in (0, 1), got {rel_threshold}")
        self.every_n_epochs = every_n_epochs
        self.num_samples = num_samples
        self.batch_size = batch_size
        self.normalize = normalize
        self.rel_threshold = rel_threshold
        self.seed = seed
        self.save_plots = save_plots
        self.split = split
        self.num_workers = num_workers

        self.last_spectrum: Tensor | None = None
        self.last_effective_rank: float | None = None
        self.last_collapsed: int | None = None
        self.last_plot_path: str | None = None
        self._indices: Tensor | None = None
        self._indices_for_len: int | None = None

    # ------------------------------------------------------------------ Lightning hooks

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        """Fail fast if the module or datamodule does not follow the contract.

        Args:
            trainer: The trainer.
            pl_module: The LightningModule; must define ``embed``.
            stage: ``"fit"``, ``"validate"``, ``"test"`` or ``"predict"``.

        Raises:
            TypeError: If ``pl_module.embed`` or ``datamodule.eval_dataset`` is missing.
        """
        if stage not in ("fit", "validate"):
            return
        if not callable(getattr(pl_module, "embed", None)):
            raise TypeError(
                f"EmbeddingRankMonitor needs `{type(pl_module).__name__}.embed(images)`"
            )
        self._check_datamodule(trainer)

    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Embed the subset, compute the spectrum and log metrics and plots.

        Args:
            trainer: The trainer.
            pl_module: The LightningModule being validated.
        """
        if trainer.sanity_checking:
            return
        if (trainer.current_epoch + 1) % self.every_n_epochs != 0:
            return

        dataset = self._check_datamodule(trainer).eval_dataset(self.split)
        precision = trainer.precision_plugin
        with precision.val_step_context():
            z = self._collect(
                pl_module,
                dataset,
                rank=trainer.global_rank,
                world_size=trainer.world_size,
                progress=trainer.is_global_zero and trainer.progress_bar_callback is not None,
                convert_input=precision.convert_input,
            )

        spectrum = embedding_spectrum(z, normalize=self.normalize).cpu()
        erank = effective_rank(z)
        collapsed = collapsed_dimensions(spectrum, self.rel_threshold)
        total = float(spectrum.sum())
        top1 = float(spectrum[0]) / total if total > 0 else math.nan
        self.last_spectrum = spectrum
        self.last_effective_rank = erank
        self.last_collapsed = collapsed

        # Every rank holds the full gathered subset, hence the same numbers: no sync needed.
        metrics = {
            "rank/effective_rank": erank,
            "rank/collapsed_dims": float(collapsed),
            "rank/embedding_dim": float(z.shape[1]),
            "rank/top1_ratio": top1,
        }
        for name, value in metrics.items():
            pl_module.log(name, value, rank_zero_only=False, sync_dist=False)

        self._plot_and_log(trainer, spectrum, erank, collapsed)

    # ------------------------------------------------------------------ internals

    @staticmethod
    def _check_datamodule(trainer: pl.Trainer) -> pl.LightningDataModule:
        """Return the trainer's datamodule after checking it defines ``eval_dataset``."""
        datamodule = getattr(trainer, "datamodule", None)
        if datamodule is None or not callable(getattr(datamodule, "eval_dataset", None)):
            raise TypeError(
                "EmbeddingRankMonitor needs a datamodule with `eval_dataset(split)`, got "
                f"{type(datamodule).__name__}"
            )
        return datamodule

    def _subset_indices(self, dataset_len: int) -> Tensor:
        """Fixed random subset of dataset indices, drawn once per dataset length.

        Args:
            dataset_len: Number of items in the evaluation dataset.

        Returns:
            ``(min(num_samples, dataset_len),)`` int64 tensor of distinct indices.
        """
        if dataset_len < 2:
            raise ValueError(
                f"the '{self.split}' eval dataset needs at least 2 items, got {dataset_len}"
            )
        if self._indices is None or self._indices_for_len != dataset_len:
            generator = torch.Generator().manual_seed(self.seed)
            perm = torch.randperm(dataset_len, generator=generator)
            self._indices = perm[: min(self.num_samples, dataset_len)].clone()
            self._indices_for_len = dataset_len
        return self._indices

    def _collect(
        self,
        pl_module: _Embedder,
        dataset: Dataset,
        rank: int | None = None,
        world_size: int | None = None,
        progress: bool = False,
        convert_input: Callable[[Tensor], Tensor] | None = None,
    ) -> Tensor:
        """Embed this rank's share of the subset and gather the full subset from all ranks.

        The subset goes through a ``DataLoader`` with a ``DistributedSampler`` (no
        shuffling): rank ``r`` embeds positions ``r, r + W, ...`` of the subset padded to a
        multiple of ``W`` with its first items, so after ``all_gather`` the padded
        sequence is ``gathered.transpose(0, 1).flatten(0, 1)`` and its first ``n`` rows are
        the subset, each exactly once, in subset order.

        Args:
            pl_module: Provides ``embed``, ``device`` and ``all_gather`` (the latter is only
                called when ``world_size > 1`` and must return ``(world_size, n, D)``).
            dataset: Evaluation dataset with ``{"image": Tensor, ...}`` items.
            rank: This process' rank; defaults to the ``torch.distributed`` rank (or 0).
            world_size: Number of processes; defaults to the ``torch.distributed`` world
                size (or 1).
            progress: Show a tqdm progress bar.
            convert_input: Optional transform of each image batch (e.g. the precision
                plugin's ``convert_input``).

        Returns:
            ``(n, D)`` float32 CPU embeddings of the whole subset, in subset order and
            identical on every rank.
        """
        indices = self._subset_indices(len(dataset))  # type: ignore[arg-type]
        module = pl_module if isinstance(pl_module, nn.Module) else None
        z, _ = extract_features(
            pl_module.embed, Subset(dataset, indices.tolist()), pl_module.device,
            self.batch_size, self.num_workers, rank, world_size,
            all_gather=pl_module.all_gather, module=module, convert_input=convert_input,
            progress=progress, desc=f"Embedding rank monitor ({self.split})", seed=self.seed,
            with_labels=False,
        )  # fmt: skip
        return z

    def _plot_and_log(
        self, trainer: pl.Trainer, spectrum: Tensor, erank: float, collapsed: int
    ) -> None:
        """Plot the spectrum, save it (rank zero) and log it to image-capable loggers."""
        if not (self.save_plots or image_loggers(trainer)):
            return
        # `trainer.log_dir` broadcasts from rank zero: it must be evaluated on all ranks.
        log_dir = (trainer.log_dir or trainer.default_root_dir) if self.save_plots else None
        if not trainer.is_global_zero:
            return
        fig = self._figure(spectrum, erank, collapsed, trainer.current_epoch)
        path = save_and_log_figure(
            trainer, fig, "rank/spectrum", log_dir, "spectra", "EmbeddingRankMonitor"
        )
        if path is not None:
            self.last_plot_path = path

    def _figure(self, spectrum: Tensor, erank: float, collapsed: int, epoch: int) -> Figure:
        """Agg-backed figure of ``log10`` singular values against their index."""
        values = spectrum.detach().cpu().double().numpy()
        largest = float(values.max()) if values.size else 0.0
        floor = largest * 1e-20 if largest > 0 else np.finfo(np.float64).tiny
        fig = Figure(figsize=(6.0, 4.0))
        FigureCanvasAgg(fig)
        ax = fig.add_subplot(1, 1, 1)
        ax.plot(np.arange(values.size), np.log10(np.clip(values, floor, None)), marker=".")
        if largest > 0:
            ax.axhline(
                math.log10(self.rel_threshold * largest),
                color="tab:red",
                linestyle="--",
                linewidth=1.0,
                label=f"collapse threshold ({collapsed} below)",
            )
            ax.legend(loc="lower left")
        ax.set_xlabel("singular value rank index")
        ax.set_ylabel(r"$\log_{10}\,\sigma_k$")
        ax.set_title(f"Embedding spectrum - epoch {epoch}, effective rank {erank:.2f}")
        ax.grid(True, alpha=0.3)
        fig.tight_layout()
        return fig
