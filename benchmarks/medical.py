"""BTCV / NIfTI slice loading: cached volumes vs re-reading the ``.nii.gz``, vs a training step.

What is measured (CPU, warm OS page cache, one process; rounds interleaved so that machine load
affects every variant alike):

* ``re-read .nii.gz per sample``: the naive loader, which opens and decompresses the subject's
  ``img*.nii.gz`` and ``label*.nii.gz`` (nibabel), canonicalises, checks and label-maps them for
  every slice it serves (a fresh :class:`~contraseg.datamodules.volumes.VolumeStore` per sample);
* ``VolumeStore, in-memory cache``: :class:`~contraseg.datamodules.volumes.SliceDataset` over one
  store that decoded every subject once (what each DataLoader worker does; the first pass, which
  decodes, is timed separately as ``first pass``);
* ``VolumeStore, .npy cache_dir``: a fresh store per round whose ``cache_dir`` holds the
  decoded volumes as ``.npy`` (memory-mapped, never decompressed again);
* ``training step``: forward + backward + AdamW step of the U-Net that
  :class:`~contraseg.lightning_modules.segmentation_finetune.SegmentationFineTune` builds
  (``encoder=--encoder``, 1 input channel, 9 classes: the TransUNet 8-organ protocol) on a batch
  of ``--batch`` slices: slices/s = batch / step time.

A loader keeps up when its slices/s >= the training step's.  Data: ``--subjects`` synthetic CT
subjects in the BTCV layout (``RawData/Training/img/img0001.nii.gz``, ``label/label0001.nii.gz``,
int16 HU, gzip), ``--depth`` slices of ``--size`` x ``--size`` each, written to a temporary
folder.

Run::

    python benchmarks/medical.py
    python benchmarks/medical.py --size 512 --depth 96 --subjects 3 --samples 64
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import nibabel as nib
import numpy as np
import torch
import torch.nn.functional as F

from contraseg.datamodules.datasets.medical import BTCV8, btcv_subjects
from contraseg.datamodules.volumes import SliceDataset, VolumeStore


def write_subjects(root: Path, n: int, depth: int, size: int) -> Path:
    """``n`` random BTCV-layout subjects (HU noise, a few labelled boxes) under ``root``."""
    rng = np.random.default_rng(0)
    base = root / "RawData" / "Training"
    (base / "img").mkdir(parents=True)
    (base / "label").mkdir(parents=True)
    affine = np.diag([-0.8, -0.8, 2.5, 1.0])
    for k in range(1, n + 1):
        image = rng.integers(-1000, 1000, (size, size, depth), dtype=np.int16)
        label = np.zeros((size, size, depth), np.uint8)
        for organ in (1, 6, 8):
            x, y = rng.integers(0, size // 2, 2)
            label[x : x + size // 4, y : y + size // 4, depth // 4 : 3 * depth // 4] = organ
        nib.save(nib.Nifti1Image(image, affine), str(base / "img" / f"img{k:04d}.nii.gz"))
        nib.save(nib.Nifti1Image(label, affine), str(base / "label" / f"label{k:04d}.nii.gz"))
    return root


def _slices_per_s(fn: Callable[[int], None], n: int) -> float:
    start = time.perf_counter()
    for i in range(n):
        fn(i)
    return n / (time.perf_counter() - start)


def main() -> None:
    """Print the table (see the module docstring)."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--subjects", type=int, default=4)
    p.add_argument("--depth", type=int, default=48)
    p.add_argument("--size", type=int, default=256)
    p.add_argument("--samples", type=int, default=200, help="slices per cached round")
    p.add_argument("--naive-samples", type=int, default=16)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--encoder", default="resnet18")
    p.add_argument("--threads", type=int, default=None)
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    from contraseg.lightning_modules.segmentation_finetune import SegmentationFineTune

    with tempfile.TemporaryDirectory() as tmp:
        root = write_subjects(Path(tmp) / "btcv", args.subjects, args.depth, args.size)
        subjects = btcv_subjects(root)
        ids = [s.id for s in subjects]
        mem = VolumeStore(BTCV8, subjects)
        data = SliceDataset(mem, ids)
        g = torch.Generator().manual_seed(0)
        order = torch.randint(len(data), (max(args.samples, args.naive_samples),), generator=g)
        start = time.perf_counter()
        for i in range(len(data)):
            data[i]
        first = len(data) / (time.perf_counter() - start)
        cache = Path(tmp) / "cache"
        VolumeStore(BTCV8, subjects, cache_dir=cache).slice_counts(ids)  # write the .npy files

        def naive(i: int) -> None:
            store = VolumeStore(BTCV8, subjects)
            SliceDataset(store, ids, index=[data.index[int(order[i])]])[0]

        def cached(i: int) -> None:
            data[int(order[i])]

        npy_store = {"data": None}

        def npy(i: int) -> None:
            if i == 0:  # a fresh store (a new worker / run) that finds the .npy files
                store = VolumeStore(BTCV8, subjects, cache_dir=cache)
                npy_store["data"] = SliceDataset(store, ids, index=data.index)
            npy_store["data"][int(order[i])]

        model = SegmentationFineTune(architecture="unet", encoder=args.encoder, num_classes=9,
                                     in_channels=1)  # fmt: skip
        opt = torch.optim.AdamW(model.parameters(), 1e-3)
        x = torch.randn(args.batch, 1, args.size, args.size)
        y = torch.randint(0, 9, (args.batch, args.size, args.size))

        def step(_: int) -> None:
            opt.zero_grad()
            F.cross_entropy(model(x), y).backward()
            opt.step()

        step(0)
        results: dict[str, list[float]] = {k: [] for k in ("naive", "cached", "npy", "train")}
        for _ in range(args.rounds):
            results["naive"].append(_slices_per_s(naive, args.naive_samples))
            results["cached"].append(_slices_per_s(cached, args.samples))
            results["npy"].append(_slices_per_s(npy, args.samples))
            results["train"].append(args.batch * _slices_per_s(step, 2) / 1)
    print(f"torch {torch.__version__} | threads {torch.get_num_threads()} | {args.subjects} "
          f"subjects of {args.depth} x {args.size} x {args.size} int16 (gzip) | medians of "
          f"{args.rounds} interleaved rounds\n")  # fmt: skip
    med = {k: statistics.median(v) for k, v in results.items()}
    print("| loader | slices/s | x re-read | keeps up with training |")
    print("|---|---|---|---|")
    rows = [("re-read .nii.gz per sample", med["naive"]),
            ("VolumeStore, in-memory cache", med["cached"]),
            ("VolumeStore, .npy cache_dir (memory-mapped)", med["npy"]),
            ("first pass (decodes each subject once)", first)]  # fmt: skip
    for name, value in rows:
        print(f"| {name} | {value:.1f} | {value / med['naive']:.1f}x | "
              f"{'yes' if value >= med['train'] else 'no'} |")  # fmt: skip
    print(f"| training step ({args.encoder} U-Net, batch {args.batch}) | {med['train']:.1f} | "
          f"- | - |")  # fmt: skip


if __name__ == "__main__":
    main()
