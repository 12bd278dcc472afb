"""MoCo v2 (Chen, Fan, Girshick, He 2020): queries against momentum keys and a key queue."""

from __future__ import annotations

from typing import Any

from lightning_modules.losses.moco import queue_info_nce
from lightning_modules.momentum_task import MomentumTask
from lightning_modules.task import TaskLoss

__all__ = ["MoCoV2"]


class MoCoV2(MomentumTask):
    """MoCo v2: InfoNCE of view-0 queries against view-1 keys and the queue.

    Per step (official ``moco/builder.py`` order): EMA update of the key encoder, queries
    and keys, the loss against the queue *before* this batch's keys enter it, then the
    (all-gathered) keys are enqueued with their dataset indices.

    Args:
        **kwargs: :class:`~lightning_modules.momentum_task.MomentumTask` arguments
            (``temperature``, ``queue_size``, ``ema_momentum``, ``shuffle_bn``, ...).
    """

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)

    def training_loss(self, batch: dict[str, Any]) -> TaskLoss:
        """InfoNCE of the batch; logs the EMA momentum and the instance accuracy."""
        views = batch["views"]
        momentum = self.update_key_encoder()
        features, q = self.query(views[0])
        k = self.keys(views[1])
        index = self.sample_indices(batch, k.shape[0], k.device)
        keep = self.negative_keys(index)
        loss, accuracy = queue_info_nce(q, k, self.queue.keys, self.temperature, keep)
        self.queue.enqueue(k, index)
        logs = {"ema_momentum": q.new_tensor(momentum), "instance_acc": accuracy}
        return TaskLoss(loss, logs, embedding=features)
