"""Training throughput of SimCLR: Lightning ``Trainer.fit`` vs a plain PyTorch loop.

Both settings train the same :class:`contraseg.lightning_modules.SimCLR` (timm encoder,
default projector, online linear probe, SGD with the module's own parameter
groups and per-step warmup + cosine schedule) on the same batches, and differ only
in what drives the step:

* ``lightning``: ``L.Trainer(max_steps=...).fit(model, loader)`` with logging,
  checkpointing, progress bar, model summary and validation disabled, so the
  measured difference is the Trainer's per-step overhead (hooks, ``self.log``
  bookkeeping, closure-based optimisation, precision plugin);
* ``plain``: ``loss, _, feats = model.training_loss(batch)`` plus
  ``model.probe.loss(feats, label)`` (exactly what ``EmbeddingTask.training_step``
  computes, without ``self.log``), ``zero_grad`` / ``backward`` / ``step`` and
  ``scheduler.step()``, under the same ``torch.autocast`` (and ``GradScaler`` for
  ``16-mixed``) that Lightning's precision plugin uses.

The optimiser and scheduler of the plain loop come from the module's own
``configure_optimizers`` (given a minimal stand-in for the trainer attributes it
reads), so parameter groups, learning rates and schedule are identical.

Data: ``warmup + steps + 1`` random batches ``{"views": [v1, v2], "label": y}``
are generated once, on the target device, and served by the same
``DataLoader(batches, batch_size=None)`` in both settings, so there is no decoding,
augmentation or host-to-device copy to time.

Timing: a timestamp (after ``torch.cuda.synchronize`` on CUDA) is taken when the
batch of step ``warmup`` starts and when the batch of step ``warmup + steps``
starts (Lightning: ``on_train_batch_start``; plain loop: right after the batch is
fetched), so exactly ``steps`` complete loop iterations are timed, including the
fetch of the next batch and all end-of-step work, and warm-up steps are excluded.
Each round builds a fresh model (same seed) for each setting; rounds alternate
which setting runs first, and the table reports medians over rounds.
``images/s`` counts images (each image is two views).

Run::

    python benchmarks/throughput.py
    python benchmarks/throughput.py --steps 5 --warmup 2 --rounds 1 --batch-size 32
    python benchmarks/throughput.py --device cuda --precision bf16-mixed --batch-size 256
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import statistics
import time
import warnings
from collections.abc import Iterator
from types import SimpleNamespace
from typing import Any

import lightning as L
import torch
from torch import Tensor
from torch.utils.data import DataLoader

from contraseg.lightning_modules import SimCLR

Batch = dict[str, Any]
SETTINGS = ("lightning", "plain")


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _make_batches(args: argparse.Namespace, device: torch.device) -> list[Batch]:
    """``warmup + steps + 1`` fixed random batches on ``device``."""
    g = torch.Generator().manual_seed(0)
    shape = (args.batch_size, 3, args.size, args.size)
    batches = []
    for _ in range(args.warmup + args.steps + 1):
        views = [torch.randn(shape, generator=g).to(device) for _ in range(2)]
        label = torch.randint(0, args.num_classes, (args.batch_size,), generator=g).to(device)
        batches.append({"views": views, "label": label})
    return batches


def _make_model(args: argparse.Namespace) -> SimCLR:
    """A freshly initialised SimCLR (same seed every call) trained with SGD."""
    torch.manual_seed(0)
    return SimCLR(
        encoder=args.encoder,
        probe_classes=args.num_classes,
        optimizer="sgd",
        lr=0.1,
        warmup_epochs=0.1,
    )


class StepTimer(L.Callback):
    """Record ``perf_counter`` at the start of the given training batches.

    Args:
        device: Device to synchronise before reading the clock.
        marks: Batch indices to time-stamp.
    """

    def __init__(self, device: torch.device, marks: tuple[int, ...]) -> None:
        self.device, self.marks = device, marks
        self.times: dict[int, float] = {}

    def on_train_batch_start(  # noqa: D102
        self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Batch, batch_idx: int
    ) -> None:
        if batch_idx in self.marks:
            _sync(self.device)
            self.times[batch_idx] = time.perf_counter()


def _run_lightning(args: argparse.Namespace, loader: DataLoader, device: torch.device) -> float:
    """Seconds for ``steps`` post-warm-up steps of ``Trainer.fit``."""
    model = _make_model(args)
    first, last = args.warmup, args.warmup + args.steps
    timer = StepTimer(device, (first, last))
    trainer = L.Trainer(
        max_steps=last + 1,
        max_epochs=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        limit_val_batches=0,
        accelerator=args.device,
        devices=1,
        precision=args.precision,
        callbacks=[timer],
    )
    trainer.fit(model, train_dataloaders=loader)
    return timer.times[last] - timer.times[first]


def _autocast(args: argparse.Namespace) -> contextlib.AbstractContextManager:
    """The autocast context of Lightning's precision plugin for ``args.precision``."""
    if args.precision == "32-true":
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if args.precision == "bf16-mixed" else torch.float16
    return torch.autocast(args.device, dtype=dtype)


def _run_plain(args: argparse.Namespace, loader: DataLoader, device: torch.device) -> float:
    """Seconds for ``steps`` post-warm-up steps of a hand-written loop."""
    model = _make_model(args).to(device)
    model.train()
    first, last = args.warmup, args.warmup + args.steps
    # configure_optimizers reads these two trainer attributes; the stand-in gives them the
    # values the Trainer above has (max_steps=last + 1 batches in one epoch).
    model.trainer = SimpleNamespace(estimated_stepping_batches=last + 1, max_epochs=1)
    config = model.configure_optimizers()
    model.trainer = None
    optimizer, scheduler = config["optimizer"], config["lr_scheduler"]["scheduler"]
    scaler = torch.amp.GradScaler(args.device) if args.precision == "16-mixed" else None
    times: dict[int, float] = {}
    batches: Iterator[Batch] = iter(loader)
    for i, batch in enumerate(batches):
        if i in (first, last):
            _sync(device)
            times[i] = time.perf_counter()
        if i == last:
            break
        with _autocast(args):
            loss, _, features = model.training_loss(batch)
            total: Tensor = loss + model.probe.loss(features, batch["label"], train=True)
        optimizer.zero_grad(set_to_none=True)
        if scaler is None:
            total.backward()
            optimizer.step()
        else:
            scaler.scale(total).backward()
            scaler.step(optimizer)
            scaler.update()
        scheduler.step()
    return times[last] - times[first]


def _parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument(
        "--precision", choices=("32-true", "bf16-mixed", "16-mixed"), default="32-true"
    )
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--size", type=int, default=32, help="view height and width")
    parser.add_argument("--encoder", default="resnet18")
    parser.add_argument("--num-classes", type=int, default=10, help="online probe classes")
    parser.add_argument("--steps", type=int, default=30, help="timed steps per run")
    parser.add_argument("--warmup", type=int, default=5, help="untimed steps per run")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved runs per setting")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads")
    args = parser.parse_args()
    if min(args.batch_size, args.size, args.steps, args.rounds) < 1 or args.warmup < 0:
        parser.error("sizes, --steps and --rounds must be >= 1, --warmup >= 0")
    if args.num_classes < 2:
        parser.error("--num-classes must be >= 2 (the probe is part of the step)")
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda requested but CUDA is not available")
    if args.device == "cpu" and args.precision == "16-mixed":
        print("note: Lightning runs 16-mixed as bf16-mixed on CPU; using bf16-mixed for both")
        args.precision = "bf16-mixed"
    return args


def main() -> None:
    """Time both settings in interleaved rounds and print a markdown table."""
    start = time.perf_counter()
    args = _parse_args()
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", message=".*does not have many workers.*")
    warnings.filterwarnings("ignore", message=".*GPU available but not used.*")
    warnings.filterwarnings("ignore", message=".*but have no `val_dataloader`.*")
    warnings.filterwarnings("ignore", message=".*LeafSpec.*")
    device = torch.device(args.device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    print(
        f"torch {torch.__version__} | lightning {L.__version__} | threads "
        f"{torch.get_num_threads()} | device {args.device} ({name}) | precision {args.precision}"
    )
    print(
        f"SimCLR {args.encoder}, batch {args.batch_size} x 2 views of {args.size}x{args.size}, "
        f"SGD, {args.warmup} warm-up + {args.steps} timed steps, {args.rounds} rounds\n"
    )
    loader = DataLoader(_make_batches(args, device), batch_size=None, shuffle=False)
    runners = {"lightning": _run_lightning, "plain": _run_plain}
    seconds: dict[str, list[float]] = {s: [] for s in SETTINGS}
    for r in range(args.rounds):
        order = SETTINGS if r % 2 == 0 else SETTINGS[::-1]
        for setting in order:
            seconds[setting].append(runners[setting](args, loader, device))
        rates = {s: args.batch_size * args.steps / seconds[s][-1] for s in SETTINGS}
        print(f"round {r + 1}: " + ", ".join(f"{s} {v:.1f} img/s" for s, v in rates.items()))
    print("\n| setting | images/s | ms/step | images/s per round |")
    print("|---|---|---|---|")
    median_rate = {}
    for setting in SETTINGS:
        rates = [args.batch_size * args.steps / t for t in seconds[setting]]
        median_rate[setting] = statistics.median(rates)
        ms = statistics.median(seconds[setting]) / args.steps * 1e3
        per_round = ", ".join(f"{v:.1f}" for v in rates)
        print(f"| {setting} | {median_rate[setting]:.1f} | {ms:.1f} | {per_round} |")
    overhead = (median_rate["plain"] - median_rate["lightning"]) / median_rate["plain"]
    print(f"\nLightning overhead: {100 * overhead:.2f}% ((plain - lightning) / plain, images/s)")
    print(f"total runtime: {time.perf_counter() - start:.1f} s")


if __name__ == "__main__":
    main()
