"""Speed and peak memory of the supervised pixel-contrastive loss (forward + backward).

For every pixel count ``N`` (``D``-dim random embeddings, 19 random classes, 5%
of the pixels labelled ``ignore_index``) three implementations are compared:

* ``naive``: :func:`contraseg.lightning_modules.losses.pixel_contrast.pixel_contrastive_loss_naive`
  (full ``N x N`` autograd graph);
* ``chunked-1024`` / ``chunked-4096``:
  :func:`~contraseg.lightning_modules.losses.pixel_contrast.pixel_contrastive_loss` with
  that ``block_size`` (blocked forward, recomputing analytic backward).

``--methods supcon-naive supcon-chunked-4096 ...`` measures the same for Hu et
al.'s SupCon-denominator loss
(:mod:`contraseg.lightning_modules.losses.pixel_supcon`).

**Time.**  Median wall-clock time of ``loss = f(z); loss.backward()`` over
``--repeats`` runs after ``--warmup`` untimed runs (synchronised on CUDA); the
first timed run is also the peak-memory run.

**Peak memory.**  Every (implementation, ``N``) pair runs in a fresh subprocess.
On CUDA: ``max_memory_allocated`` during one forward + backward minus the memory
allocated before it.  On CPU: the rise of the resident set -- the kernel's
high-water mark is reset (``echo 5 > /proc/self/clear_refs``), ``VmRSS`` is read,
one forward + backward runs and ``VmHWM - VmRSS_before`` is reported; the
subprocesses run with ``MALLOC_MMAP_THRESHOLD_=65536`` so freed tensors go back to
the OS.  Both numbers include ``z.grad`` (``N x D`` floats, the same for all).

**Memory guard.**  The naive implementation keeps several ``N x N`` float32
buffers; it is skipped when the estimate ``4 * N^2 * 4`` bytes exceeds
``--max-naive-gb`` (printed as ``skipped (estimated X GB)``), and a subprocess
that dies or raises out of memory is reported as ``OOM``.

Run (defaults: N in 4096 16384 65536, D=128, CPU)::

    python benchmarks/dense.py
    python benchmarks/dense.py --sizes 4096 16384 --repeats 5
    python benchmarks/dense.py --device cuda --max-naive-gb 40
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch
from torch import Tensor

from contraseg.lightning_modules.losses.pixel_contrast import (
    pixel_contrastive_loss,
    pixel_contrastive_loss_naive,
)
from contraseg.lightning_modules.losses.pixel_supcon import (
    pixel_supcon_loss,
    pixel_supcon_loss_naive,
)

METHODS = ("naive", "chunked-1024", "chunked-4096")
SUPCON_METHODS = ("supcon-naive", "supcon-chunked-1024", "supcon-chunked-4096")
N_CLASSES = 19
IGNORE = 255


def _inputs(n: int, dim: int, device: torch.device, seed: int = 0) -> tuple[Tensor, Tensor]:
    """Leaf embeddings ``(n, dim)`` and labels with 19 classes and 5% ignored."""
    g = torch.Generator().manual_seed(seed + n)
    z = torch.randn(n, dim, generator=g)
    labels = torch.randint(0, N_CLASSES, (n,), generator=g)
    labels[torch.rand(n, generator=g) < 0.05] = IGNORE
    return z.to(device).requires_grad_(True), labels.to(device)


def _loss(method: str, z: Tensor, labels: Tensor, temperature: float) -> Tensor:
    supcon = method.startswith("supcon-")
    method = method.removeprefix("supcon-")
    if method == "naive":
        naive = pixel_supcon_loss_naive if supcon else pixel_contrastive_loss_naive
        return naive(z, labels, temperature, IGNORE)
    block = int(method.split("-")[1])
    blocked = pixel_supcon_loss if supcon else pixel_contrastive_loss
    return blocked(z, labels, temperature, IGNORE, block_size=block)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _step(method: str, z: Tensor, labels: Tensor, temperature: float) -> None:
    z.grad = None
    _loss(method, z, labels, temperature).backward()


def _proc_status_kib(key: str) -> int:
    """A ``/proc/self/status`` entry in KiB (``VmRSS``, ``VmHWM``)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"{key} not found in /proc/self/status")


def _worker(args: argparse.Namespace) -> None:
    """Measure one (method, N) pair and print a JSON line (runs in a subprocess)."""
    device = torch.device(args.device)
    n = args.sizes[0]
    z, labels = _inputs(n, args.dim, device)
    method, tau = args.worker, args.temperature
    for _ in range(args.warmup):
        _step(method, z, labels, tau)
    times = []
    for i in range(max(args.repeats, 1)):
        z.grad = None
        gc.collect()
        _sync(device)
        if i == 0 and device.type == "cuda":  # the first timed run also measures memory
            torch.cuda.reset_peak_memory_stats(device)
            before = torch.cuda.memory_allocated(device)
        elif i == 0:
            Path("/proc/self/clear_refs").write_text("5")  # reset VmHWM to VmRSS
            before = _proc_status_kib("VmRSS") * 1024
        start = time.perf_counter()
        _step(method, z, labels, tau)
        _sync(device)
        times.append((time.perf_counter() - start) * 1e3)
        if i == 0 and device.type == "cuda":
            peak = (torch.cuda.max_memory_allocated(device) - before) / 2**20
        elif i == 0:
            peak = max(0.0, (_proc_status_kib("VmHWM") * 1024 - before) / 2**20)
    print(json.dumps({"ms": statistics.median(times), "peak_mb": peak}))


def _measure(method: str, n: int, args: argparse.Namespace) -> dict[str, float] | str:
    """Run :func:`_worker` in a fresh interpreter; a string on failure."""
    if method.endswith("naive"):
        est_gb = 4 * n * n * 4 / 1e9
        if est_gb > args.max_naive_gb:
            return f"skipped (estimated {est_gb:.1f} GB)"
    cmd = [
        sys.executable,
        str(Path(__file__).resolve()),
        "--worker",
        method,
        "--sizes",
        str(n),
        "--dim",
        str(args.dim),
        "--temperature",
        str(args.temperature),
        "--repeats",
        str(args.repeats),
        "--warmup",
        str(args.warmup),
        "--device",
        args.device,
    ]
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="65536")
    out = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if out.returncode != 0:
        err = out.stderr.lower()
        if out.returncode < 0 or "out of memory" in err or "memoryerror" in err:
            return "OOM"
        raise RuntimeError(f"{method} at N={n} failed:\n{out.stderr}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def _parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[4096, 16384, 65536])
    parser.add_argument("--dim", type=int, default=128)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=0)
    parser.add_argument("--temperature", type=float, default=0.07)
    parser.add_argument("--max-naive-gb", type=float, default=8.0)
    choices = METHODS + SUPCON_METHODS
    parser.add_argument("--methods", nargs="+", choices=choices, default=list(METHODS))
    parser.add_argument("--worker", choices=choices, default=None, help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = _parse_args(argv)
    if args.worker is not None:
        _worker(args)
        return
    print(
        f"device={args.device} D={args.dim} tau={args.temperature} classes={N_CLASSES} "
        f"ignore=5% repeats={args.repeats} warmup={args.warmup} "
        f"threads={torch.get_num_threads()} torch={torch.__version__}\n"
    )
    print("| N | method | median fwd+bwd (ms) | peak memory (MB) |")
    print("|---:|---|---:|---:|")
    for n in args.sizes:
        for method in args.methods:
            res = _measure(method, n, args)
            if isinstance(res, str):
                print(f"| {n} | {method} | {res} | {res} |", flush=True)
            else:
                print(f"| {n} | {method} | {res['ms']:.1f} | {res['peak_mb']:.1f} |", flush=True)


if __name__ == "__main__":
    main()
