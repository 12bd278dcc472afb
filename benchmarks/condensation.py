"""Seconds per outer iteration of dataset condensation: per-class ``torch.func`` vs a loop.

One outer iteration of :class:`~contraseg.lightning_modules.DatasetCondensation` on CIFAR-shaped
random data (10 classes, 3 x 32 x 32, ``ConvNet-3`` of ``--width``) is timed end to end for each
(ipc, method, per-class mode), in interleaved rounds so that the compared variants share the
machine's state (a 2-core machine shared with other jobs varies 2-5x over minutes; ratios
measured side by side are what to read).  The pieces are also timed alone: the DC matching
step (real + synthetic per-class gradients, distance, backward into the images) with
``vmap`` and with the loop, and one network update on the synthetic set.

DCC's real side never needs per-class gradients (the class mean is one backward of the
class-averaged loss), so ``vmap`` vs ``loop`` only matters for DC (and the DC warm-up of DCC).

Run::

    python benchmarks/condensation.py                       # ipc 1 and 10, official loops
    python benchmarks/condensation.py --ipc 1 10 --batch-real 256 --rounds 3 --threads 2
    python benchmarks/condensation.py --device cuda --batch-real 256 --width 128
"""

from __future__ import annotations

import argparse
import statistics
import time
from typing import Any

import torch

from contraseg.datamodules.condensation import ClassBank
from contraseg.lightning_modules.components.class_gradients import class_gradients
from contraseg.lightning_modules.components.convnet import ConvNet
from contraseg.lightning_modules.condensation import DatasetCondensation
from contraseg.lightning_modules.losses.gradient_matching import dc_loss


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class _Task(DatasetCondensation):
    """The task outside a Trainer: manual steps on a given bank."""

    def __init__(self, bank: ClassBank, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.bank = bank
        self._opt = torch.optim.SGD([self.images], lr=0.1, momentum=0.5)

    def optimizers(self, use_pl_optimizer: bool = True) -> Any:  # noqa: D102
        return self._opt

    def manual_backward(self, loss: torch.Tensor, *args: Any, **kwargs: Any) -> None:  # noqa: D102
        loss.backward()

    def log(self, *args: Any, **kwargs: Any) -> None:  # noqa: D102
        return None

    @property
    def current_epoch(self) -> int:  # noqa: D102
        return 0


def outer_iteration(task: _Task, device: torch.device) -> float:
    """Seconds of one outer iteration."""
    _sync(device)
    t = time.perf_counter()
    task.training_step(None, 0)
    _sync(device)
    return time.perf_counter() - t


def matching_step(net: ConvNet, bank: ClassBank, images: torch.Tensor, ipc: int,
                  batch_real: int, mode: str, device: torch.device) -> float:  # fmt: skip
    """Seconds of one DC matching step (gradients, distance, backward)."""
    c = bank.num_classes
    _sync(device)
    t = time.perf_counter()
    real, real_y = bank.per_class(batch_real)
    syn = images.view(c, ipc, *images.shape[1:])
    syn_y = torch.arange(c, device=device).repeat_interleave(ipc).view(c, ipc)
    loss = dc_loss(class_gradients(net, syn, syn_y, True, mode),
                   class_gradients(net, real, real_y, False, mode))  # fmt: skip
    loss.backward()
    _sync(device)
    return time.perf_counter() - t


def main() -> None:  # noqa: D103
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--ipc", type=int, nargs="+", default=[1, 10])
    ap.add_argument("--methods", nargs="+", default=["dc", "dcc"])
    ap.add_argument("--batch-real", type=int, default=256)
    ap.add_argument("--width", type=int, default=128)
    ap.add_argument("--classes", type=int, default=10)
    ap.add_argument("--per-class-images", type=int, default=300, help="real images per class")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--inner", type=int, default=None, help="override the official inner loop")
    ap.add_argument("--net-steps", type=int, default=None, help="override the official T")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    torch.manual_seed(0)
    n = args.classes * args.per_class_images
    bank = ClassBank(torch.randn(n, 3, 32, 32), torch.arange(args.classes).repeat(
        args.per_class_images), args.classes).to(device)  # fmt: skip
    print(f"device {device}, threads {torch.get_num_threads()}, width {args.width}, "
          f"batch_real {args.batch_real}, {args.classes} classes, rounds {args.rounds}")
    loops = {} if args.inner is None else {"inner_loop": args.inner, "net_steps": args.net_steps}
    rows = []
    for ipc in args.ipc:
        variants = {}
        for method in args.methods:
            for mode in ("vmap", "loop"):
                kw = dict(method=method, ipc=ipc, num_classes=args.classes, net_width=args.width,
                          batch_real=args.batch_real, per_class=mode, outer_warmup=0, **loops)
                task = _Task(bank, **kw).to(device)
                task.images.data.copy_(bank.images[: len(task.images)])
                variants[(method, mode)] = task
        times: dict[tuple[str, str], list[float]] = {k: [] for k in variants}
        piece: dict[str, list[float]] = {"vmap": [], "loop": []}
        net = ConvNet(3, args.classes, 32, args.width).to(device)
        syn = bank.images[: args.classes * ipc].clone().requires_grad_(True)
        for r in range(args.rounds + 1):  # round 0 warms up
            for key, task in variants.items():
                torch.manual_seed(r)
                t = outer_iteration(task, device)
                if r:
                    times[key].append(t)
            for mode in piece:
                t = matching_step(net, bank, syn, ipc, args.batch_real, mode, device)
                if r:
                    piece[mode].append(t)
        inner, steps = next(iter(variants.values())).loops
        for (method, mode), ts in times.items():
            rows.append((ipc, f"{method} (after warm-up)" if method == "dcc" else method, mode,
                         inner, steps, statistics.median(ts)))  # fmt: skip
        rows.append((ipc, "DC matching step only", "vmap", 1, 0, statistics.median(piece["vmap"])))
        rows.append((ipc, "DC matching step only", "loop", 1, 0, statistics.median(piece["loop"])))
    print("\n| ipc | what | per-class | inner | net epochs | seconds | loop / vmap |")
    print("|---|---|---|---|---|---|---|")
    by_key = {(r[0], r[1], r[2]): r[5] for r in rows}
    for ipc, what, mode, inner, steps, sec in rows:
        ratio = by_key[(ipc, what, "loop")] / by_key[(ipc, what, "vmap")] if mode == "vmap" else ""
        ratio = f"{ratio:.2f}x" if ratio else ""
        print(f"| {ipc} | {what} | {mode} | {inner} | {steps} | {sec:.3f} | {ratio} |")


if __name__ == "__main__":
    main()
