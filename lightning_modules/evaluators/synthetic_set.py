"""Evaluation protocol of a condensed (or selected) set: train fresh nets, test on real data.

As the official code (``evaluate_synset`` / ``epoch`` in VICO-UoE DatasetCondensation and
Saehyung-Lee/DCC): SGD lr 0.01, momentum 0.9, weight decay 5e-4, batch 256, ``E + 1`` epochs
with the learning rate divided by 10 (a new optimiser, so the momentum restarts) after
epoch ``E // 2 + 1``; ``E = 1000`` when training with DSA augmentation, else 300.  Each net
starts from a fresh random init; accuracy is the real test split's.  Kernel velocity
(:mod:`contraseg.lightning_modules.evaluators.kernel_velocity`) can be recorded on the first net.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm.auto import tqdm

from contraseg.lightning_modules.evaluators.kernel_velocity import empirical_ntk, kernel_velocity

__all__ = ["SyntheticSetEvaluator", "test_accuracy", "train_on_set"]


def train_on_set(net: nn.Module, images: Tensor, labels: Tensor, epochs: int, lr: float = 0.01,
                 momentum: float = 0.9, weight_decay: float = 5e-4, batch_size: int = 256,
                 augment: Callable[[Tensor], Tensor] | None = None,
                 probe: Tensor | None = None,
                 velocity_every: int = 0) -> dict[str, Any]:  # fmt: skip
    """Train ``net`` on ``(images, labels)`` with the official schedule (shuffled with torch's RNG).

    Args:
        net: A freshly initialised network (trained in place).
        images: Training images ``(M, ch, H, W)`` on the net's device.
        labels: ``(M,)`` labels.
        epochs: ``E`` (``E + 1`` epochs are run, as the official loop).
        lr: Initial learning rate.
        momentum: SGD momentum.
        weight_decay: SGD weight decay.
        batch_size: Batch size.
        augment: Training augmentation of a batch (DSA), or ``None``.
        probe: Images of the kernel-velocity probe (``velocity_every > 0``).
        velocity_every: Epochs between kernel measurements (0: none).

    Returns:
        ``train_loss`` and ``train_acc`` of the last epoch, ``velocity``: ``[(epoch, v), ...]``.
    """
    images, labels = images.detach(), labels.detach()
    opt = torch.optim.SGD(net.parameters(), lr=lr, momentum=momentum, weight_decay=weight_decay)
    decay_at = epochs // 2 + 1
    velocity: list[tuple[int, float]] = []
    kernel = _kernel(net, probe) if velocity_every and probe is not None else None
    loss_sum = correct = 0.0
    for ep in range(epochs + 1):
        net.train()
        loss_sum = correct = 0.0
        for idx in torch.randperm(len(images), device=images.device).split(batch_size):
            x = images[idx] if augment is None else augment(images[idx])
            out = net(x)
            loss = F.cross_entropy(out, labels[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            loss_sum += float(loss.detach()) * len(idx)
            correct += float((out.argmax(1) == labels[idx]).sum())
        if ep == decay_at:
            lr *= 0.1
            opt = torch.optim.SGD(net.parameters(), lr=lr, momentum=momentum,
                                  weight_decay=weight_decay)  # fmt: skip
        if kernel is not None and (ep + 1) % velocity_every == 0:
            new = _kernel(net, probe)
            velocity.append((ep + 1, kernel_velocity(kernel, new, velocity_every)))
            kernel = new
    return {"train_loss": loss_sum / len(images), "train_acc": correct / len(images),
            "velocity": velocity}  # fmt: skip


def _kernel(net: nn.Module, probe: Tensor) -> Tensor:
    was = net.training
    net.eval()
    k = empirical_ntk(net, probe)
    net.train(was)
    return k


@torch.no_grad()
def test_accuracy(nets: list[nn.Module], loader: Iterable[dict[str, Any]],
                  device: torch.device) -> list[float]:  # fmt: skip
    """Accuracy of every net on the batches of ``loader`` (one pass for all nets)."""
    for net in nets:
        net.eval()
    correct = torch.zeros(len(nets), dtype=torch.float64)
    total = 0
    for batch in loader:
        x, y = batch["image"].to(device), batch["label"].to(device)
        for i, net in enumerate(nets):
            correct[i] += float((net(x).argmax(1) == y).sum())
        total += len(y)
    if total == 0:
        raise ValueError("the test loader of the condensation evaluation is empty")
    return (correct / total).tolist()


@dataclass
class SyntheticSetEvaluator:
    """Train ``n_nets`` fresh networks on a set and test them (mean and std of accuracy).

    Attributes:
        n_nets: Networks per evaluation (the paper: 20 per experiment; 5 experiments are 5
            condensation seeds).
        epochs: ``E`` (``None``: 1000 with augmentation, 300 without, as the official code).
        lr: Learning rate.
        momentum: Momentum.
        weight_decay: Weight decay.
        batch_size: Batch size.
        velocity_every: Epochs between kernel measurements on the first net (0: none).
        progress: Show a progress bar over the nets.
    """

    n_nets: int = 20
    epochs: int | None = None
    lr: float = 0.01
    momentum: float = 0.9
    weight_decay: float = 5e-4
    batch_size: int = 256
    velocity_every: int = 0
    progress: bool = True
    last: dict[str, Any] = field(default_factory=dict)

    def evaluate(self, make_net: Callable[[], nn.Module], images: Tensor, labels: Tensor,
                 test_loader: Iterable[dict[str, Any]],
                 augment: Callable[[Tensor], Tensor] | None = None,
                 probe: Tensor | None = None,
                 desc: str = "evaluation") -> dict[str, Any]:  # fmt: skip
        """Train and test ``n_nets`` networks from ``make_net`` on ``(images, labels)``.

        Returns:
            ``accuracy`` (mean), ``accuracy_std`` (population std, as the official log),
            ``accuracies``, ``train_acc`` (mean), ``velocity`` (first net's curve).
        """
        epochs = self.epochs if self.epochs is not None else (1000 if augment else 300)
        nets, train_acc, velocity = [], [], []
        for i in tqdm(range(self.n_nets), desc=desc, disable=not self.progress, leave=False):
            net = make_net()
            out = train_on_set(net, images, labels, epochs, self.lr, self.momentum,
                               self.weight_decay, self.batch_size, augment,
                               probe if i == 0 else None, self.velocity_every if i == 0 else 0)
            nets.append(net)
            train_acc.append(out["train_acc"])
            velocity = velocity or out["velocity"]
        accs = test_accuracy(nets, test_loader, images.device)
        acc = torch.tensor(accs, dtype=torch.float64)
        self.last = {"accuracy": float(acc.mean()), "accuracy_std": float(acc.std(unbiased=False)),
                     "accuracies": accs, "train_acc": sum(train_acc) / len(train_acc),
                     "velocity": velocity, "epochs": epochs}  # fmt: skip
        return self.last
