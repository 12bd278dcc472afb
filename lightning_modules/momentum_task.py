"""Base of momentum-encoder methods (MoCo v2, HCSC): key encoder, key queue, shuffle-BN.

:class:`MomentumTask` adds to :class:`~contraseg.lightning_modules.embedding_task.EmbeddingTask`
an MLP projector, a momentum copy of encoder + projector (no gradient, EMA-updated at
the start of every training step, before the keys are computed, as in MoCo's
``forward``) and a :class:`~contraseg.lightning_modules.components.momentum.KeyQueue` of past keys
with their dataset indices.  All of it lives in the state dict (persistent buffers and
submodules), so ``--ckpt_path last`` restores the queue and the key encoder exactly.

Training batches carry ``views`` (view 0: queries, view 1: keys) and ``sample_index``.
"""

from __future__ import annotations

import copy
from typing import Any

import torch
import torch.nn.functional as F
from lightning.pytorch.utilities import rank_zero_warn
from torch import Tensor

from contraseg.lightning_modules.components import distributed as dist_utils
from contraseg.lightning_modules.components.heads import Projector
from contraseg.lightning_modules.components.momentum import (
    KeyQueue,
    ema_momentum,
    ema_update,
    shuffle_across_ranks,
    shuffle_batch,
    split_batch_norm,
    unshuffle_across_ranks,
)
from contraseg.lightning_modules.embedding_task import EmbeddingTask

__all__ = ["MomentumTask"]


class MomentumTask(EmbeddingTask):
    """Encoder + projector, their momentum copy and a queue of keys.

    Args:
        temperature: InfoNCE temperature (0.2 in MoCo v2 and HCSC).
        queue_size: Keys in the queue (65,536 in MoCo v2, 16,384 in HCSC); any length.
        ema_momentum: Momentum ``m`` of the key encoder (0.999).
        ema_schedule: ``constant`` or ``cosine`` (``m`` rising to ``ema_final`` at the last
            step).
        ema_final: Momentum at the last step of the cosine schedule (1 as BYOL; solo-learn's
            MoCo v2+ recipes: 0.999).
        projector: Projector shape (MoCo v2: 2048 -> 128, no BatchNorm); ``out_dim`` is the
            key width.
        shuffle_bn: MoCo's shuffle-BN of the key batch across DDP ranks (a no-op on one
            process: use the SyncBN preset or several ranks).
        exclude_own_keys: Queue keys of a query's own image (same dataset index, written in an
            earlier epoch) are not its negatives.  A queue longer than an epoch holds such
            keys for every query; the official code keeps them (off by default).
        split_batch_norm: The official one-GPU substitute for shuffle-BN (MoCo's CIFAR demo):
            every BatchNorm2d of both encoders normalises ``S`` sub-batches separately
            (:class:`~contraseg.lightning_modules.components.momentum.SplitBatchNorm2d`) and the key
            batch is permuted before the key encoder (a permutation seeded by the step), so
            a query's sub-batch statistics are not its key's.  1: off (plain BN).  Under DDP
            use ``shuffle_bn`` instead.
        decay_all_parameters: Weight decay on every parameter, biases and norm parameters
            included, as the official MoCo / HCSC optimisers (``False``: those are exempt,
            as SimCLR's LARS recipe).
        optimizer: MoCo's SGD (momentum 0.9).
        lr: MoCo v2's 0.03 at batch 256.
        warmup_epochs: None in MoCo v2.
        **kwargs: :class:`~contraseg.lightning_modules.embedding_task.EmbeddingTask` arguments.
    """

    POSITIVE = (*EmbeddingTask.POSITIVE, "queue_size")
    UNIT = (*EmbeddingTask.UNIT, "ema_momentum", "ema_final")

    def __init__(
        self,
        temperature: float = 0.2,
        queue_size: int = 65536,
        ema_momentum: float = 0.999,
        ema_schedule: str = "constant",
        projector: Projector = Projector((2048,), 128, False),  # noqa: B008
        shuffle_bn: bool = False,
        exclude_own_keys: bool = False,
        ema_final: float = 1.0,
        split_batch_norm: int = 1,
        decay_all_parameters: bool = False,
        optimizer: str = "sgd",
        lr: float = 0.03,
        warmup_epochs: float = 0.0,
        **kwargs: Any,
    ) -> None:
        if split_batch_norm < 1:
            raise ValueError(f"model.split_batch_norm must be >= 1, got {split_batch_norm}")
        super().__init__(optimizer=optimizer, lr=lr, warmup_epochs=warmup_epochs, **kwargs)

    def configure_models(self) -> None:
        """Encoder and probe (parent), projector, then the momentum copies and the queue."""
        super().configure_models()
        hp = self.hparams
        ema_momentum(hp.ema_momentum, 0, 1, hp.ema_schedule)  # validates the schedule name
        if hp.split_batch_norm > 1 and not split_batch_norm(self.encoder, hp.split_batch_norm):
            raise ValueError(f"model.split_batch_norm {hp.split_batch_norm}: encoder "
                             f"{hp.encoder!r} has no BatchNorm2d to split")  # fmt: skip
        self.projector = self.build_projector()
        self.key_encoder = copy.deepcopy(self.encoder).requires_grad_(False)
        self.key_projector = copy.deepcopy(self.projector).requires_grad_(False)
        self.queue = KeyQueue(hp.queue_size, Projector.of(hp.projector).out_dim)

    def configure_losses(self) -> None:  # noqa: D102
        self.temperature = float(self.hparams.temperature)

    def load_checkpoint(self, path: str) -> dict[str, list[str]]:
        """Initialise the encoder from ``path``, then copy it into the key encoder."""
        report = super().load_checkpoint(path)
        self.key_encoder.load_state_dict(self.encoder.state_dict())
        return report

    def current_ema_momentum(self) -> float:
        """The key encoder's momentum at this optimiser step."""
        hp = self.hparams
        if hp.ema_schedule == "constant":
            return float(hp.ema_momentum)
        total = int(self.trainer.estimated_stepping_batches) if self._trainer else 1
        return ema_momentum(hp.ema_momentum, self.global_step, total, hp.ema_schedule,
                            hp.ema_final)  # fmt: skip

    @torch.no_grad()
    def update_key_encoder(self) -> float:
        """EMA step of the key encoder and projector; returns the momentum used."""
        m = self.current_ema_momentum()
        ema_update(self.encoder, self.key_encoder, m)
        ema_update(self.projector, self.key_projector, m)
        return m

    def query(self, images: Tensor) -> tuple[Tensor, Tensor]:
        """``(encoder features, normalised float32 queries)`` of ``images``."""
        features = self.encoder(images)
        return features, F.normalize(self.projector(features).float(), dim=1)

    @torch.no_grad()
    def keys(self, images: Tensor, view: int = 1) -> Tensor:
        """Normalised float32 keys of the momentum encoder (shuffle-BN if configured).

        Args:
            images: The key view.
            view: Which view this is (salts the one-process key shuffle of
                ``split_batch_norm``, so two key views are permuted differently).
        """
        shuffle = self.hparams.shuffle_bn and dist_utils.is_distributed()
        if self.hparams.shuffle_bn and not shuffle and not getattr(self, "_warned_bn", False):
            rank_zero_warn("shuffle_bn has no effect on one process (use several DDP ranks)")
            self._warned_bn = True
        local = self.hparams.split_batch_norm > 1 and not shuffle
        if shuffle:
            images, unshuffle = shuffle_across_ranks(images)
        elif local:
            images, unshuffle = shuffle_batch(images, seed=2 * self.global_step + view)
        keys = self.key_projector(self.key_encoder(images))
        if shuffle:
            keys = unshuffle_across_ranks(keys, unshuffle)
        elif local:
            keys = keys[unshuffle]
        return F.normalize(keys.float(), dim=1)

    def parameter_groups(self) -> list[dict[str, Any]]:
        """As the parent's; with ``decay_all_parameters`` one decayed group for the method."""
        groups = super().parameter_groups()
        if not self.hparams.decay_all_parameters:
            return groups
        method = [*groups[0]["params"], *groups[1]["params"]]
        return [{"params": method}, *groups[2:]]

    @torch.no_grad()
    def prototype_features(self, images: Tensor) -> Tensor:
        """Momentum-encoder embeddings for clustering (HCSC): key projector, normalised."""
        return F.normalize(self.key_projector(self.key_encoder(images)).float(), dim=1)

    def negative_keys(self, index: Tensor, queue: KeyQueue | None = None) -> Tensor | None:
        """``(n, K)`` bool: queue key ``j`` may be a negative of query ``i`` (``None``: all).

        With ``exclude_own_keys``, keys carrying the query's own dataset index are not.

        Args:
            index: Dataset index of each query.
            queue: The queue (default ``self.queue``).
        """
        if not self.hparams.exclude_own_keys:
            return None
        queue = self.queue if queue is None else queue
        return (queue.indices[None, :] != index[:, None]) | (index[:, None] < 0)

    @staticmethod
    def sample_indices(batch: dict[str, Any], n: int, device: torch.device) -> Tensor:
        """Dataset index of each sample (``-1`` when the data module gives none)."""
        index = batch.get("sample_index")
        if index is None:
            return torch.full((n,), -1, dtype=torch.long, device=device)
        return torch.as_tensor(index, device=device).long()
