"""Potsdam tile loading: memory-mapped windows vs whole-tile decoding, vs a CPU training step.

What is measured (all on CPU, warm OS page cache):

* ``PotsdamTiles (memmap), 1 process``:
  :class:`contraseg.datamodules.datasets.potsdam.PotsdamTiles` in ``mode="random"`` drawing
  ``--samples`` windows of ``--crop`` pixels from one synthetic 6000x6000 tile; each item slices
  the image and the colour label from ``tifffile.memmap`` views and decodes only the window's
  label colours (what ``PotsdamTilesDataModule`` trains on).
* ``PotsdamTiles (memmap), DataLoader``: the same dataset through
  ``torch.utils.data.DataLoader(batch_size=8, num_workers=--workers)``; the time includes
  starting the (non-persistent) workers, i.e. one short "epoch".
* ``naive full-tile imread``: the baseline that decodes the whole image tile and the whole label
  tile with ``tifffile.imread`` for every sample, then crops the same window and decodes its
  label colours with :func:`contraseg.datamodules.datasets.potsdam.decode_potsdam_label`. It is run
  for ``--naive-samples`` samples (it is slow).
* ``training step``: what the trainer consumes. One step of the model that
  :class:`contraseg.lightning_modules.segmentation_finetune.SegmentationFineTune` builds
  (``num_classes=6, in_channels=4, encoder=--encoder``: smp DeepLabV3Plus over ``tu-<encoder>``),
  done manually on its ``net``: forward, cross-entropy (ignore index 255), backward and an
  ``AdamW`` step on a batch of 8 random ``--crop`` x ``--crop`` crops. One warm-up step is not
  timed; ``--train-steps`` steps are.

The loaders "keep up" when their samples/s are >= the training samples/s. Note that the loader
and the training step are timed separately; in a real run on a small machine they share the same
CPU cores.

Data: a synthetic uncompressed 6000x6000 4-band uint8 RGBIR tile (random noise) and an RGB
colour label made of random blocks of the 6 ISPRS Potsdam class colours with black (boundary)
block edges, written blockwise (plain file writes after an empty-TIFF header, so the writer never
holds a whole tile) with the official names for tile ``--tile`` (default ``2_10``)::

    root/4_Ortho_RGBIR/top_potsdam_2_10_RGBIR.tif
    root/5_Labels_all/top_potsdam_2_10_label.tif

``root`` is a temporary directory removed at the end, or ``--root`` (files are reused when they
already exist with the right size; ``--keep`` keeps a temporary root). Because the files were
just written they are in the OS page cache, so neither path pays for cold disk reads.

Memory: the script prints the tile sizes on disk and the process' peak RSS
(``resource.getrusage``) after each phase, plus the current anonymous / file-backed RSS from
``/proc/self/status`` on Linux. Memory-mapped pages that a window touches are file-backed, shared
and reclaimable page cache (they show up as ``RssFile``), whereas the naive path allocates the
whole decoded tile (~250 MB for image + label) privately for each sample. Phases run in the
order memmap, DataLoader, naive, training so that the peak after the memmap phase is not
inflated by the later ones; DataLoader workers are reported via ``RUSAGE_CHILDREN``.

Run::

    python benchmarks/data.py
    python benchmarks/data.py --crop 512 --samples 64 --workers 2 --encoder resnet18
    python benchmarks/data.py --root /tmp/potsdam_synth --keep   # reuse the synthetic tile
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import tifffile
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from contraseg.datamodules.datasets.potsdam import (  # noqa: E402
    BOUNDARY_COLOUR,
    IGNORE_INDEX,
    POTSDAM_PALETTE,
    PotsdamTiles,
    decode_potsdam_label,
)

TILE_SIZE = 6000
BATCH_SIZE = 8
_ROWS_PER_BLOCK = 500


def _tile_paths(root: Path, tile: str) -> tuple[Path, Path]:
    """Official file names of the RGBIR tile and its full colour label."""
    image = root / "4_Ortho_RGBIR" / f"top_potsdam_{tile}_RGBIR.tif"
    label = root / "5_Labels_all" / f"top_potsdam_{tile}_label.tif"
    return image, label


def _write_blockwise(
    path: Path,
    bands: int,
    make_rows: Callable[[int, np.random.Generator], np.ndarray],
    rng: np.random.Generator,
) -> None:
    """Writes an uncompressed ``TILE_SIZE`` square uint8 RGB(+extra) TIFF row block by block.

    ``tifffile.imwrite`` with ``shape`` and no data writes the header and reserves one contiguous
    strip; the pixel rows are then written with plain ``seek``/``write`` calls.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    shape = (TILE_SIZE, TILE_SIZE, bands)
    tifffile.imwrite(path, shape=shape, dtype=np.uint8, photometric="rgb", planarconfig="contig")
    with tifffile.TiffFile(path) as tif:
        page = tif.pages[0]
        offset = page.dataoffsets[0]
        if not page.is_contiguous or page.compression != 1:
            raise RuntimeError(f"{path} was not written as one uncompressed contiguous strip")
    with open(path, "r+b") as f:
        for y in range(0, TILE_SIZE, _ROWS_PER_BLOCK):
            rows = min(_ROWS_PER_BLOCK, TILE_SIZE - y)
            block = make_rows(rows, rng)
            assert block.shape == (rows, TILE_SIZE, bands) and block.dtype == np.uint8
            f.seek(offset + y * TILE_SIZE * bands)
            f.write(block.tobytes())


def _image_rows(rows: int, rng: np.random.Generator) -> np.ndarray:
    return rng.integers(0, 256, size=(rows, TILE_SIZE, 4), dtype=np.uint8)


def _label_rows(rows: int, rng: np.random.Generator, block: int = 100, edge: int = 3) -> np.ndarray:
    """Random ``block``-pixel squares of the 6 class colours with black ``edge``-pixel borders."""
    colours = np.array(POTSDAM_PALETTE, dtype=np.uint8)
    n_blocks = -(-TILE_SIZE // block)
    out = np.empty((rows, TILE_SIZE, 3), dtype=np.uint8)
    for y in range(0, rows, block):
        h = min(block, rows - y)
        classes = rng.integers(0, len(colours), size=n_blocks)
        strip = np.repeat(colours[classes], block, axis=0)[:TILE_SIZE]  # (W, 3)
        out[y : y + h] = strip[None]
        out[y : y + edge] = BOUNDARY_COLOUR
        out[y : y + h, np.arange(TILE_SIZE) % block < edge] = BOUNDARY_COLOUR
    return out


def _ensure_tile(root: Path, tile: str, seed: int = 0) -> tuple[Path, Path, bool]:
    """Writes the synthetic tile and label unless valid files already exist; returns paths."""
    image_path, label_path = _tile_paths(root, tile)
    expected = {image_path: 4, label_path: 3}
    reuse = True
    for path, bands in expected.items():
        try:
            with tifffile.TiffFile(path) as tif:
                ok = tif.pages[0].shape == (TILE_SIZE, TILE_SIZE, bands)
        except Exception:
            ok = False
        reuse = reuse and ok
    if not reuse:
        rng = np.random.default_rng(seed)
        _write_blockwise(image_path, 4, _image_rows, rng)
        _write_blockwise(label_path, 3, _label_rows, rng)
    return image_path, label_path, reuse


def _peak_rss_mb(who: int = resource.RUSAGE_SELF) -> float:
    """Peak resident set size in MB (``ru_maxrss`` is KiB on Linux, bytes on macOS)."""
    peak = resource.getrusage(who).ru_maxrss
    return peak / 1024**2 if sys.platform == "darwin" else peak / 1024


def _current_rss() -> str:
    """Current ``RssAnon`` / ``RssFile`` from ``/proc/self/status`` (Linux), else ``n/a``."""
    try:
        fields = dict(
            line.split(":", 1) for line in Path("/proc/self/status").read_text().splitlines()
        )
    except OSError:
        return "n/a"
    anon = int(fields.get("RssAnon", "0 kB").split()[0]) / 1024
    file = int(fields.get("RssFile", "0 kB").split()[0]) / 1024
    return f"anon {anon:.0f} MB, file-backed {file:.0f} MB"


def _memory_line(phase: str) -> None:
    print(f"  [{phase}] peak RSS {_peak_rss_mb():.0f} MB; now {_current_rss()}", flush=True)


def _make_dataset(root: Path, tile: str, crop: int, samples: int) -> PotsdamTiles:
    return PotsdamTiles(
        root, tile_ids=[tile], mode="random", crop_size=crop, samples_per_epoch=samples
    )


def _time_single(dataset: PotsdamTiles) -> float:
    """Seconds to read every item of ``dataset`` in the current process."""
    start = time.perf_counter()
    for i in range(len(dataset)):
        dataset[i]
    return time.perf_counter() - start


def _time_loader(dataset: PotsdamTiles, workers: int) -> float:
    """Seconds for one pass of a batch-8 DataLoader over ``dataset`` (worker start included)."""
    loader = DataLoader(dataset, batch_size=BATCH_SIZE, num_workers=workers, shuffle=True)
    start = time.perf_counter()
    for _ in loader:
        pass
    return time.perf_counter() - start


def _time_naive(dataset: PotsdamTiles, samples: int) -> float:
    """Seconds to produce ``samples`` windows by decoding both whole tiles for each one."""
    image_path, label_path = dataset.image_paths[0], dataset.label_paths[0]
    s = dataset.crop_size
    start = time.perf_counter()
    for i in range(samples):
        _, y, x = dataset.window(i)
        image = tifffile.imread(image_path)
        label = tifffile.imread(label_path)
        crop = np.ascontiguousarray(image[y : y + s, x : x + s].transpose(2, 0, 1))
        mask, _ = decode_potsdam_label(label[y : y + s, x : x + s])
        torch.from_numpy(crop), torch.from_numpy(mask)
        if i == 0:  # one /proc read (~0.1 ms) while both decoded tiles are alive
            print(f"  [naive, holding decoded tiles] now {_current_rss()}", flush=True)
        del image, label
    return time.perf_counter() - start


def _time_training(encoder: str, crop: int, steps: int) -> float:
    """Seconds per training step (batch 8) of the ``SegmentationFineTune`` network on CPU."""
    from contraseg.lightning_modules.segmentation_finetune import SegmentationFineTune

    torch.manual_seed(0)
    module = SegmentationFineTune(num_classes=6, in_channels=4, encoder=encoder)
    net = module.net.train()
    optimizer = torch.optim.AdamW(net.parameters(), lr=1e-3, weight_decay=1e-4)
    images = torch.randn(BATCH_SIZE, 4, crop, crop)
    masks = torch.randint(0, 6, (BATCH_SIZE, crop, crop))
    masks[:, :, :4] = IGNORE_INDEX

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        loss = F.cross_entropy(net(images), masks, ignore_index=IGNORE_INDEX)
        loss.backward()
        optimizer.step()

    step()  # warm-up: allocator, oneDNN primitive creation
    start = time.perf_counter()
    for _ in range(steps):
        step()
    return (time.perf_counter() - start) / steps


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=Path, default=None, help="dataset root (default: temp dir)")
    parser.add_argument("--keep", action="store_true", help="keep a temporary root")
    parser.add_argument("--tile", default="2_10", help="tile id used for the file names")
    parser.add_argument("--crop", type=int, default=512)
    parser.add_argument("--samples", type=int, default=64, help="windows for the memmap loaders")
    parser.add_argument("--naive-samples", type=int, default=8, help="samples for the baseline")
    parser.add_argument("--workers", type=int, default=2, help="DataLoader num_workers")
    parser.add_argument("--encoder", default="resnet18", help="timm encoder (smp tu-<name>)")
    parser.add_argument("--train-steps", type=int, default=2, help="timed training steps")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    """Builds (or reuses) the synthetic tile, runs the four measurements and prints the table."""
    args = _parse_args(argv)
    t0 = time.perf_counter()
    temp = args.root is None
    root = Path(tempfile.mkdtemp(prefix="potsdam_bench_")) if temp else args.root
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {os.cpu_count()} CPUs")
    _memory_line("after imports")
    try:
        t = time.perf_counter()
        image_path, label_path, reused = _ensure_tile(root, args.tile)
        what = "reused" if reused else f"written in {time.perf_counter() - t:.1f} s"
        print(f"synthetic tile {args.tile} under {root} ({what}):")
        for path in (image_path, label_path):
            print(f"  {path.relative_to(root)}: {path.stat().st_size / 1e6:.1f} MB on disk")
        _memory_line("after writing")

        dataset = _make_dataset(root, args.tile, args.crop, args.samples)
        rows: list[tuple[str, float]] = []
        seconds = _time_single(dataset)
        rows.append(("PotsdamTiles (memmap), 1 process", args.samples / seconds))
        _memory_line("after memmap, 1 process")
        del dataset

        dataset = _make_dataset(root, args.tile, args.crop, args.samples)
        seconds = _time_loader(dataset, args.workers)
        label = f"PotsdamTiles (memmap), DataLoader({args.workers} workers, batch {BATCH_SIZE})"
        rows.append((label, args.samples / seconds))
        if args.workers:
            peak = _peak_rss_mb(resource.RUSAGE_CHILDREN)
            print(f"  [after DataLoader] peak RSS of a worker {peak:.0f} MB", flush=True)

        seconds = _time_naive(dataset, args.naive_samples)
        rows.append(("naive full-tile tifffile.imread + crop", args.naive_samples / seconds))
        _memory_line("after naive imread")
        del dataset

        step_s = _time_training(args.encoder, args.crop, args.train_steps)
        train_rate = BATCH_SIZE / step_s
        rows.append(
            (f"training step (DeepLabV3Plus tu-{args.encoder}, batch {BATCH_SIZE})", train_rate)
        )
        _memory_line("after training")

        print()
        print(
            f"crop {args.crop}, memmap samples {args.samples}, naive samples "
            f"{args.naive_samples}, training steps {args.train_steps} (+1 warm-up)"
        )
        print()
        print("| loader | samples/s | ms/sample |")
        print("|---|---:|---:|")
        for name, rate in rows:
            print(f"| {name} | {rate:.2f} | {1000 / rate:.1f} |")
        print()
        for name, rate in rows[:-1]:
            keeps = "yes" if rate >= train_rate else "no"
            print(
                f"keeps up with training: {keeps} ({name}: {rate:.2f} "
                f"{'>=' if rate >= train_rate else '<'} {train_rate:.2f} samples/s)"
            )
    finally:
        if temp and not args.keep:
            shutil.rmtree(root, ignore_errors=True)
        elif temp:
            print(f"kept {root}")
    print(f"total runtime {time.perf_counter() - t0:.1f} s")


if __name__ == "__main__":
    main()
