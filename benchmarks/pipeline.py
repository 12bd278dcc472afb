r"""The input pipeline end to end: decoders, worker cost, device cost, fit vs device-resident.

What is measured, in one run, interleaved over ``--rounds`` (medians reported):

* **decode**: one 320x256 JPEG to a ``(3, H, W)`` uint8 tensor, PIL (``Image.open`` +
  ``convert("RGB")`` + numpy) against ``torchvision.io.decode_jpeg`` (what
  ``contraseg.datamodules.datasets.io.read_image_rgb`` uses for JPEGs), one thread;
* **worker part per sample, one core** (two views of ``--size`` px from the JPEG folder):
  *before* = PIL decode + the whole torchvision v2 view pipeline per sample (crop, flip,
  ``ColorJitter`` with hue, grey, ``GaussianBlur``, ``ScaleByDtype``, ``Normalize``: the
  pipeline contraseg ran before the split), *after* = ``read_image_rgb`` + the per-sample
  half (:class:`contraseg.datamodules.transforms.MultiViewTransform`: crop and flip in uint8, the
  photometric parameters drawn);
* **device part per sample**: :class:`contraseg.datamodules.batch_augment.BatchPhotometric` on
  batches of ``--batch-size`` uint8 views on ``--device`` (both views), including the index plans'
  transfer;
* **fit, images/s**: SimCLR (``--encoder``) trained by ``Trainer.fit`` for ``--steps``
  timed steps through :class:`contraseg.datamodules.ImageFolderDataModule` on the JPEG folder with
  ``--workers`` workers (*end to end*), against the same model and trainer on batches that
  are already on the device (*device-resident*, no decoding, augmentation or copy).  The
  ratio is the share of the device's training speed that the input pipeline delivers;
  *decoded on the device* is the same fit with ``decode_on_device: true`` (workers read
  bytes; ``decode_jpeg`` on ``--device``, views cropped there);
* **synthetic scenes, images/s**: the same SimCLR on
  :class:`contraseg.datamodules.TexturedScenesDataModule` (``--scene-size`` px scenes and views)
  with the scenes rendered in ``--workers`` workers against ``render_on_device: true`` (workers
  draw random numbers only) and against device-resident batches of that size.

The JPEG folder (``--images`` files, 320x256, smooth colour fields plus noise, quality 90)
is written to a temporary directory and removed at the end.

Run::

    python benchmarks/pipeline.py                      # CPU, ResNet-18 at 96 px
    python benchmarks/pipeline.py --rounds 1 --steps 2 --images 48 --batch-size 8
    python benchmarks/pipeline.py --device cuda --precision bf16-mixed --encoder resnet50 \\
        --size 224 --batch-size 256 --workers 15 --images 4096
"""

from __future__ import annotations

import argparse
import logging
import statistics
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader
from torchvision import tv_tensors
from torchvision.io import ImageReadMode, decode_jpeg
from torchvision.transforms import v2

from contraseg.datamodules import ImageFolderDataModule, TexturedScenesDataModule
from contraseg.datamodules.batch_augment import BatchPhotometric, collate_plans
from contraseg.datamodules.datasets.io import read_image_rgb
from contraseg.datamodules.transforms import MultiViewTransform, ScaleByDtype, ViewAugmentation
from contraseg.lightning_modules import SimCLR


def write_jpegs(folder: Path, n: int, seed: int = 0) -> list[Path]:
    """``n`` 320x256 RGB JPEGs (smooth colour fields plus noise, quality 90)."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:256, 0:320].astype(np.float32)
    paths = []
    for i in range(n):
        a, b, c = rng.uniform(0.01, 0.08, 3)
        img = np.stack([128 + 100 * np.sin(a * x + i), 128 + 100 * np.cos(b * y + 2 * i),
                        128 + 100 * np.sin(c * (x + y))], -1)  # fmt: skip
        img = np.clip(img + rng.normal(0, 10, img.shape), 0, 255).astype(np.uint8)
        path = folder / f"{i:05d}.jpg"
        Image.fromarray(img).save(path, quality=90)
        paths.append(path)
    return paths


def decode_pil(path: Path) -> torch.Tensor:
    """The PIL decode (``read_image_rgb``'s path for non-JPEG formats)."""
    with Image.open(path) as img:
        array = np.asarray(img.convert("RGB"))
    return torch.from_numpy(array.copy()).permute(2, 0, 1).contiguous()


def decode_tv(path: Path) -> torch.Tensor:
    """``torchvision.io.decode_jpeg`` from the file's bytes."""
    data = torch.frombuffer(bytearray(path.read_bytes()), dtype=torch.uint8)
    return decode_jpeg(data, mode=ImageReadMode.RGB)


def before_pipeline(cfg: ViewAugmentation) -> v2.Compose:
    """The per-sample v2 view pipeline of RGB images before the split (for comparison)."""
    kernel = max(3, int(0.1 * cfg.size) // 2 * 2 + 1)
    return v2.Compose([
        v2.RandomResizedCrop(cfg.size, scale=tuple(cfg.crop_scale), ratio=tuple(cfg.crop_ratio)),
        v2.RandomHorizontalFlip(cfg.hflip_prob),
        v2.RandomApply([v2.ColorJitter(cfg.brightness, cfg.contrast, cfg.saturation, cfg.hue)],
                       p=cfg.jitter_prob),
        v2.RandomGrayscale(cfg.grayscale_prob),
        v2.RandomApply([v2.GaussianBlur(kernel, sigma=(0.1, 2.0))], p=cfg.blur_prob),
        ScaleByDtype(),
        v2.Normalize(list(cfg.mean), list(cfg.std)),
    ])  # fmt: skip


def per_second(fn: Any, items: list[Any]) -> float:
    """Items per second of ``fn`` over ``items``."""
    start = time.perf_counter()
    for item in items:
        fn(item)
    return len(items) / (time.perf_counter() - start)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class _Timer(L.Callback):
    def __init__(self, device: torch.device, first: int, last: int) -> None:
        self.device, self.marks, self.times = device, (first, last), {}

    def on_train_batch_start(self, trainer: Any, pl_module: Any, batch: Any,
                             batch_idx: int) -> None:  # fmt: skip
        if batch_idx in self.marks:
            _sync(self.device)
            self.times[batch_idx] = time.perf_counter()


def resident_loader(args: argparse.Namespace, size: int) -> DataLoader:
    """Random normalised two-view batches already on the device (no input pipeline)."""
    g = torch.Generator().manual_seed(0)
    shape = (args.batch_size, 3, size, size)
    batches = [{"views": [torch.randn(shape, generator=g).to(args.device) for _ in range(2)],
                "label": torch.full((args.batch_size,), -1, device=args.device)}
               for _ in range(args.steps + args.warmup + 2)]  # fmt: skip
    return DataLoader(batches, batch_size=None)


def fit_images_per_second(args: argparse.Namespace, datamodule: Any = None,
                          loader: Any = None) -> float:  # fmt: skip
    """Images/s of ``--steps`` timed SimCLR steps of ``Trainer.fit`` (after ``--warmup``)."""
    torch.manual_seed(0)
    model = SimCLR(encoder=args.encoder, probe_classes=0, optimizer="sgd", lr=0.1)
    first, last = args.warmup, args.warmup + args.steps
    timer = _Timer(torch.device(args.device), first, last)
    trainer = L.Trainer(max_steps=last + 1, max_epochs=1000, logger=False,
                        enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, num_sanity_val_steps=0,
                        limit_val_batches=0, accelerator=args.device, devices=1,
                        precision=args.precision, callbacks=[timer])  # fmt: skip
    if datamodule is not None:
        trainer.fit(model, datamodule=datamodule)
    else:
        trainer.fit(model, train_dataloaders=loader)
    return args.steps * args.batch_size / (timer.times[last] - timer.times[first])


def _parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--precision", default="32-true")
    parser.add_argument("--encoder", default="resnet18")
    parser.add_argument("--size", type=int, default=96, help="view size (px)")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--workers", type=int, default=1, help="loader workers of the fit")
    parser.add_argument("--images", type=int, default=256, help="JPEGs written")
    parser.add_argument("--samples", type=int, default=64, help="samples per worker-cost round")
    parser.add_argument("--steps", type=int, default=6, help="timed fit steps")
    parser.add_argument("--warmup", type=int, default=2, help="untimed fit steps")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--scene-size", type=int, default=96,
                        help="textured scenes' size (px) for the synthetic rows; 0: skip them")
    args = parser.parse_args()
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA device")
    if args.images < args.batch_size * (args.steps + args.warmup + 1) // 4:
        parser.error("--images is too small for the fit steps (a few epochs at most)")
    return args


def main() -> None:  # noqa: D103
    args = _parse_args()
    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore")
    device = torch.device(args.device)
    cfg = ViewAugmentation(size=args.size)
    rows: dict[str, list[float]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "jpegs"
        folder.mkdir()
        paths = write_jpegs(folder, args.images)
        sample_paths = paths[: args.samples]
        old, new = before_pipeline(cfg), MultiViewTransform(cfg, n_views=2)
        aug = BatchPhotometric(cfg)
        threads = torch.get_num_threads()
        for r in range(args.rounds):
            torch.set_num_threads(1)
            torch.manual_seed(r)
            rows.setdefault("decode PIL", []).append(per_second(decode_pil, sample_paths))
            rows.setdefault("decode torchvision.io", []).append(
                per_second(decode_tv, sample_paths))

            def before(p: Path) -> None:
                image = tv_tensors.Image(decode_pil(p))
                old(image), old(image)  # two views

            def after(p: Path) -> None:
                new({"image": tv_tensors.Image(read_image_rgb(p)), "label": -1})

            order = [("worker before (PIL + v2 per sample)", before),
                     ("worker after (per-sample half)", after)]  # fmt: skip
            for name, fn in order if r % 2 == 0 else order[::-1]:
                rows.setdefault(name, []).append(per_second(fn, sample_paths))
            torch.set_num_threads(threads)
            samples = [new({"image": tv_tensors.Image(read_image_rgb(p)), "label": -1})
                       for p in paths[: args.batch_size]]  # fmt: skip
            batch = collate_plans(samples)
            views = [v.to(device) for v in batch["views"]]
            for _ in range(2):  # warm-up
                [aug(v, p) for v, p in zip(views, batch["photometric"])]
            _sync(device)
            start = time.perf_counter()
            reps = 5
            for _ in range(reps):
                [aug(v, p) for v, p in zip(views, batch["photometric"])]
            _sync(device)
            rows.setdefault("device part (batched photometrics)", []).append(
                reps * args.batch_size / (time.perf_counter() - start))
            dm = ImageFolderDataModule(str(folder), batch_size=args.batch_size,
                                       num_workers=args.workers, augment=cfg,
                                       labeled=False, knn_bank_size=0)  # fmt: skip
            e2e = fit_images_per_second(args, datamodule=dm)
            res = fit_images_per_second(args, loader=resident_loader(args, args.size))
            dm = ImageFolderDataModule(str(folder), batch_size=args.batch_size,
                                       num_workers=args.workers, augment=cfg, labeled=False,
                                       knn_bank_size=0, decode_on_device=True)  # fmt: skip
            dev = fit_images_per_second(args, datamodule=dm)
            rows.setdefault("fit end to end (DataModule, images/s)", []).append(e2e)
            rows.setdefault("fit end to end, JPEGs decoded on the device (images/s)",
                            []).append(dev)  # fmt: skip
            rows.setdefault("fit device-resident (images/s)", []).append(res)
            rows.setdefault("end to end / device-resident", []).append(e2e / res)
            rows.setdefault("end to end (decoded on the device) / device-resident",
                            []).append(dev / res)  # fmt: skip
            if args.scene_size:
                scene_cfg = ViewAugmentation(size=args.scene_size)
                fits = {}
                for on_device in (False, True):
                    dm = TexturedScenesDataModule(
                        num_train=args.batch_size * (args.steps + args.warmup + 2),
                        num_val=8, scene={"image_size": args.scene_size},
                        batch_size=args.batch_size,
                        num_workers=args.workers, augment=scene_cfg, knn_bank_size=0,
                        render_on_device=on_device)  # fmt: skip
                    fits[on_device] = fit_images_per_second(args, datamodule=dm)
                res = fit_images_per_second(args, loader=resident_loader(args, args.scene_size))
                rows.setdefault("scenes fit, rendered in workers (images/s)", []).append(fits[0])
                rows.setdefault("scenes fit, rendered on the device (images/s)",
                                []).append(fits[1])  # fmt: skip
                rows.setdefault("scenes fit device-resident (images/s)", []).append(res)
                rows.setdefault("end to end / device-resident, scenes in workers",
                                []).append(fits[0] / res)  # fmt: skip
                rows.setdefault("end to end / device-resident, scenes on the device",
                                []).append(fits[1] / res)  # fmt: skip
    print(f"\ndevice {args.device}, {args.precision}, SimCLR {args.encoder}, {args.size} px, "
          f"batch {args.batch_size}, {args.workers} workers, {torch.get_num_threads()} threads, "
          f"{args.rounds} rounds (medians)\n")  # fmt: skip
    print("| measure | per second (median) | rounds |")
    print("|---|---|---|")
    for name, values in rows.items():
        ratio = name.startswith("end to end")
        text = f"{statistics.median(values):.2f}" if ratio else f"{statistics.median(values):,.1f}"
        print(f"| {name} | {text} | {', '.join(f'{v:,.2f}' for v in values)} |")
    b, a = rows["worker before (PIL + v2 per sample)"], rows["worker after (per-sample half)"]
    print(f"\nworker part speed-up (after / before, median of per-round ratios): "
          f"{statistics.median(x / y for x, y in zip(a, b)):.2f}x")  # fmt: skip


if __name__ == "__main__":
    main()
