"""Per-class cross-entropy gradients of a network: ``torch.func`` (``vmap`` of ``grad``) or a loop.

Gradient matching needs, for every class ``c``, the gradient of the mean CE of that class's
images with respect to the network parameters: from the real batch (no graph) and from the
synthetic images (with the graph, so the distance back-propagates into the images).

* ``mode="vmap"``: one batched call, ``vmap(grad(loss), in_dims=(None, 0, 0))`` over the class
  dimension of ``(C, n, ...)`` images; the result stays differentiable with respect to the
  images by ordinary autograd around ``torch.func`` (the synthetic side).
* ``mode="loop"``: the official code's per-class ``torch.autograd.grad`` loop.

Both return gradients stacked as ``(C, *param.shape)``, in ``net.parameters()`` order; the
tests check them equal.  Which is faster depends on the device and ``n``:
``benchmarks/condensation.py`` measures both (2-core CPU, ConvNet-3 width 32, 64 real images
per class, 10 classes: the DC matching step took 0.81 s with ``vmap`` and 0.34 s with the
loop, so the task's default is the loop; not measured on a GPU).  Networks with BatchNorm
must be in eval mode (statistics frozen, as the official code does from a real batch before
matching): ``vmap`` cannot update running statistics per class.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call, grad, vmap

__all__ = ["MODES", "class_gradients", "mean_gradient"]

MODES = ("vmap", "loop")


def _check_bn(net: nn.Module) -> None:
    for m in net.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.training:
            raise ValueError("per-class gradients with vmap need BatchNorm in eval mode "
                             "(freeze its statistics from a real batch first)")  # fmt: skip


def class_gradients(net: nn.Module, images: Tensor, labels: Tensor, create_graph: bool = False,
                    mode: Literal["vmap", "loop"] = "vmap") -> list[Tensor]:  # fmt: skip
    """Gradients of each class's mean CE, ``[(C, *p.shape) for p in net.parameters()]``.

    Args:
        net: The classifier (its parameters are read, not updated).
        images: ``(C, n, ch, H, W)``: ``n`` images of each class.
        labels: ``(C, n)`` labels.
        create_graph: Keep the graph to ``images`` (the synthetic side).
        mode: ``vmap`` (``torch.func``) or ``loop``.

    Returns:
        One tensor per parameter.
    """
    if mode not in MODES:
        raise ValueError(f"per-class gradient mode must be one of {MODES}, got {mode!r}")
    names = [n for n, _ in net.named_parameters()]
    params = [p for _, p in net.named_parameters()]
    if mode == "loop":
        out: list[list[Tensor]] = [[] for _ in params]
        for x, y in zip(images, labels, strict=True):
            loss = F.cross_entropy(net(x), y)
            for slot, g in zip(out, torch.autograd.grad(loss, params, create_graph=create_graph),
                               strict=True):  # fmt: skip
                slot.append(g if create_graph else g.detach())
        return [torch.stack(g) for g in out]
    _check_bn(net)
    buffers = dict(net.named_buffers())
    detached = {n: p.detach() for n, p in zip(names, params, strict=True)}

    def loss_fn(p: dict[str, Tensor], x: Tensor, y: Tensor) -> Tensor:
        return F.cross_entropy(functional_call(net, (p, buffers), (x,)), y)

    if not create_graph:
        images = images.detach()
    grads = vmap(grad(loss_fn), in_dims=(None, 0, 0))(detached, images, labels)
    return [grads[n] if create_graph else grads[n].detach() for n in names]


def mean_gradient(net: nn.Module, images: Tensor, labels: Tensor,
                  create_graph: bool = False) -> list[Tensor]:  # fmt: skip
    """Gradient of the mean CE over all ``images (N, ch, H, W)`` (DCC's synthetic side).

    With equal images per class this is also the class mean of the per-class gradients (the
    mean of per-class means), which DCC's real side needs: one backward instead of ``C``.
    """
    params = list(net.parameters())
    loss = F.cross_entropy(net(images), labels)
    grads = torch.autograd.grad(loss, params, create_graph=create_graph)
    return list(grads) if create_graph else [g.detach() for g in grads]
