"""MoCo v2 (Chen, Fan, Girshick, He 2020): queries against momentum keys and a key queue.

With ``symmetric`` it is MoCo v2+ as solo-learn trains it (``solo/methods/mocov2plus.py``):
each view is a query once, against the other view's keys and a queue of past keys of that
other view (two queues), and the loss is the mean of the two InfoNCE terms.
"""

from __future__ import annotations

from typing import Any

from contraseg.lightning_modules.components.momentum import KeyQueue
from contraseg.lightning_modules.losses.moco import queue_info_nce
from contraseg.lightning_modules.momentum_task import MomentumTask
from contraseg.lightning_modules.task import TaskLoss

__all__ = ["MoCoV2"]


class MoCoV2(MomentumTask):
    """MoCo v2: InfoNCE of view-0 queries against view-1 keys and the queue.

    Per step (official ``moco/builder.py`` order): EMA update of the key encoder, queries
    and keys, the loss against the queue *before* this batch's keys enter it, then the
    (all-gathered) keys are enqueued with their dataset indices.

    Args:
        symmetric: MoCo v2+ (module docstring): both views are queries, a second queue holds
            view-0 keys.  ``False``: the official asymmetric loss (view-0 queries only).
        **kwargs: :class:`~contraseg.lightning_modules.momentum_task.MomentumTask` arguments
            (``temperature``, ``queue_size``, ``ema_momentum``, ``shuffle_bn``, ...).
    """

    def __init__(self, symmetric: bool = False, **kwargs: Any) -> None:
        super().__init__(**kwargs)

    def configure_models(self) -> None:
        """The parent's modules, plus the queue of view-0 keys when ``symmetric``."""
        super().configure_models()
        if self.hparams.symmetric:  # another seed: its random initial keys differ from queue's
            self.queue_view0 = KeyQueue(self.hparams.queue_size, self.queue.keys.shape[1],
                                        seed=1)  # fmt: skip

    def training_loss(self, batch: dict[str, Any]) -> TaskLoss:
        """InfoNCE of the batch; logs the EMA momentum and the instance accuracy."""
        views = batch["views"]
        momentum = self.update_key_encoder()
        features, q = self.query(views[0])
        k = self.keys(views[1])
        index = self.sample_indices(batch, k.shape[0], k.device)
        keep = self.negative_keys(index)
        loss, accuracy = queue_info_nce(q, k, self.queue.keys, self.temperature, keep)
        if self.hparams.symmetric:
            _, q1 = self.query(views[1])
            k0 = self.keys(views[0], view=0)
            keep0 = self.negative_keys(index, self.queue_view0)
            loss1, accuracy1 = queue_info_nce(q1, k0, self.queue_view0.keys, self.temperature,
                                              keep0)  # fmt: skip
            loss, accuracy = (loss + loss1) / 2, (accuracy + accuracy1) / 2
            self.queue_view0.enqueue(k0, index)
        self.queue.enqueue(k, index)
        logs = {"ema_momentum": q.new_tensor(momentum), "instance_acc": accuracy}
        return TaskLoss(loss, logs, embedding=features)
