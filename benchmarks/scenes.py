"""Throughput of the segmentation-scale synthetic benchmark against a CPU training step.

Rows: :class:`contraseg.datamodules.datasets.textured_scenes.TexturedScenes` at each ``--sizes`` and
variant (plain; ``clutter=3``; ``num_domains=4``; ``imbalance_ratio=10``), timed as
``dataset[i]`` (what a DataLoader worker does, one scene per call) and as one batched
``render`` of ``--batch`` scenes.  The last column compares with the samples/s of one training
step of a DeepLabV3+ (ResNet-18, smp ``tu-resnet18``, 7 classes) at the same size and batch:
forward, cross-entropy, backward, AdamW.  Rounds are interleaved (generator, step, generator,
...) so machine load hits both alike; the median of ``--rounds`` is reported.  The generator
does not bottleneck training while its scenes/s (one process) exceed the step's samples/s.
With ``--device cuda`` the batched render runs on the GPU (``render(indices, device)``:
random numbers drawn on the CPU, pixels on the device, as ``render_on_device`` training
does) and the training step too.

    .venv/bin/python benchmarks/scenes.py --sizes 96 128 --batch 16 --rounds 3
    .venv/bin/python benchmarks/scenes.py --device cuda --batch 256
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch import Tensor

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from contraseg.datamodules.datasets.textured_scenes import SceneSpec, TexturedScenes  # noqa: E402
from contraseg.lightning_modules.components.networks import build_segmentation_net  # noqa: E402

VARIANTS = {
    "plain": {},
    "clutter=3": {"clutter": 3},
    "num_domains=4": {"num_domains": 4},
    "imbalance_ratio=10": {"imbalance_ratio": 10.0},
}


def _seconds(fn: Callable[..., object], *args: object) -> float:
    start = time.perf_counter()
    fn(*args)
    return time.perf_counter() - start


def _train_step(net: torch.nn.Module, opt: torch.optim.Optimizer, x: Tensor, y: Tensor) -> None:
    opt.zero_grad()
    torch.nn.functional.cross_entropy(net(x), y).backward()
    opt.step()


def _items(ds: TexturedScenes, indices: list[int]) -> list:
    return [ds[i] for i in indices]


def main(argv: list[str] | None = None) -> None:  # noqa: D103
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[96, 128])
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: all)")
    parser.add_argument("--device", default="cpu", help="device of the batched render and step")
    args = parser.parse_args(argv)
    device = torch.device(args.device)

    def synced(fn: Callable[..., object]) -> Callable[..., object]:
        def run(*b: object) -> object:
            out = fn(*b)
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            return out
        return run

    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"torch threads: {torch.get_num_threads()}; batch {args.batch}; median of "
          f"{args.rounds} interleaved rounds; batched render and step on {device}")  # fmt: skip
    print("| size | variant | scenes/s (item) | scenes/s (batched) | train step samples/s "
          "| item / step |")  # fmt: skip
    print("|---|---|---|---|---|---|")
    for size in args.sizes:
        net = build_segmentation_net("deeplabv3plus", "resnet18", 3, classes=7).to(device)
        opt = torch.optim.AdamW(net.parameters(), 1e-3)
        x = torch.randn(args.batch, 3, size, size, device=device)
        y = torch.randint(0, 7, (args.batch, size, size), device=device)

        step = (net, opt, x, y)
        _train_step(*step)  # warm-up
        for name, kwargs in VARIANTS.items():
            ds = TexturedScenes(10_000, SceneSpec(image_size=size, **kwargs))
            item_t, batch_t, step_t = [], [], []
            for r in range(args.rounds):
                indices = list(range(r * args.batch, (r + 1) * args.batch))
                item_t.append(_seconds(_items, ds, indices))
                step_t.append(_seconds(synced(_train_step), *step))
                batch_t.append(_seconds(synced(ds.render), indices, device))
            item = args.batch / statistics.median(item_t)
            batched = args.batch / statistics.median(batch_t)
            train = args.batch / statistics.median(step_t)
            print(f"| {size} | {name} | {item:.0f} | {batched:.0f} | {train:.1f} "
                  f"| {item / train:.0f}x |")  # fmt: skip


if __name__ == "__main__":
    main()
