"""Speed and peak memory of NT-Xent implementations (forward + backward).

Four implementations of the SimCLR NT-Xent loss of ``2B`` stacked embeddings
(two views of ``B`` images, view-major) are compared for every batch size ``B``:

* ``fused``: :func:`lightning_modules.losses.nt_xent_loss` with ``labels=None``
  (the fused one-positive path with an analytic backward);
* ``generic``: the same function with ``labels=instance_labels(B, 2)``, i.e. the
  generic masked SupCon-style path (the labels are built once, outside the timing);
* ``naive``: the textbook formula written here in plain PyTorch (normalise, full
  ``2B x 2B`` similarity, ``exp``, diagonal removed by multiplying with a mask,
  row sums, ``-log(pos / denominator)``; no log-sum-exp);
* ``lightly``: ``lightly.loss.NTXentLoss`` if the package is importable.

**Correctness.**  Before timing, every implementation's loss and gradient with
respect to the embeddings are compared with a float64 evaluation of the naive
formula (and with lightly's, when installed) on the same random embeddings.

**Time.**  Median wall-clock time of ``loss = f(z); loss.backward()`` over
``--repeats`` runs after ``--warmup`` untimed runs (with ``torch.cuda.synchronize``
around each run on CUDA), where ``z`` is a ``(2B, D)`` leaf tensor.

**Peak memory.**  Every (implementation, ``B``) pair runs in a fresh subprocess, so
that allocator state and lazily loaded kernels of one do not leak into another.
On CUDA the peak is ``torch.cuda.max_memory_allocated()`` during one forward +
backward minus the memory allocated just before it.  On CPU ``tracemalloc`` is
useless (PyTorch's CPU allocator bypasses Python's) and PyTorch keeps no CPU
allocator statistics, so the peak is the rise of the process's resident set:
after the warm-up runs the kernel's high-water mark is reset (``echo 5 >
/proc/self/clear_refs``, Linux >= 4.0), the current ``VmRSS`` is read, one forward +
backward runs and ``VmHWM - VmRSS_before`` is reported.  The subprocesses run with
``MALLOC_MMAP_THRESHOLD_=65536``, which makes glibc serve every tensor larger than
64 KiB with its own ``mmap`` and return it to the OS on free, so the resident set
follows live tensor memory instead of glibc's heap growth.  Both numbers include
the gradient ``z.grad`` (``2B x D`` floats, the same for every implementation) and
everything the autograd graph saves for backward.

Run (defaults: B in 256 512 1024 2048, D=128, tau=0.2, CPU)::

    python benchmarks/losses.py
    python benchmarks/losses.py --batch-sizes 256 512 --repeats 5 --threads 2
    python benchmarks/losses.py --device cuda --batch-sizes 1024 4096 8192
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch import Tensor

from lightning_modules.losses import instance_labels, nt_xent_loss

METHODS = ("fused", "generic", "naive", "lightly")
LossFn = Callable[[Tensor], Tensor]


def _lightly_version() -> str | None:
    """Version of lightly if its NT-Xent loss can be imported, else ``None``."""
    try:
        import lightly
        from lightly.loss import NTXentLoss  # noqa: F401
    except ImportError:
        return None
    return str(lightly.__version__)


def naive_nt_xent(z: Tensor, temperature: float) -> Tensor:
    """Textbook NT-Xent (Chen et al. 2020, eq. 1) without any numerical safeguard.

    Args:
        z: ``(2B, D)`` embeddings, the two views stacked view-major.
        temperature: Softmax temperature.

    Returns:
        Mean loss over the ``2B`` anchors.
    """
    n = z.shape[0]
    zn = z / z.norm(dim=1, keepdim=True)
    sim = zn @ zn.T
    e = torch.exp(sim / temperature)
    mask = 1.0 - torch.eye(n, dtype=z.dtype, device=z.device)
    denominator = (e * mask).sum(dim=1)
    rows = torch.arange(n, device=z.device)
    positive = e[rows, (rows + n // 2) % n]
    return -torch.log(positive / denominator).mean()


def _make_loss(method: str, batch_size: int, temperature: float, device: torch.device) -> LossFn:
    """Closure ``z -> scalar loss`` for one implementation."""
    if method == "fused":
        return lambda z: nt_xent_loss(z, temperature=temperature)
    if method == "generic":
        labels = instance_labels(batch_size, 2, device)
        return lambda z: nt_xent_loss(z, labels=labels, temperature=temperature)
    if method == "naive":
        return lambda z: naive_nt_xent(z, temperature)
    if method == "lightly":
        from lightly.loss import NTXentLoss

        criterion = NTXentLoss(temperature=temperature)
        return lambda z: criterion(z[:batch_size], z[batch_size:])
    raise ValueError(f"unknown method {method!r}")


def _embeddings(batch_size: int, dim: int, device: torch.device, seed: int = 0) -> Tensor:
    """Reproducible ``(2B, D)`` float32 leaf embeddings."""
    g = torch.Generator().manual_seed(seed + batch_size)
    return torch.randn(2 * batch_size, dim, generator=g).to(device).requires_grad_(True)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _step(fn: LossFn, z: Tensor) -> None:
    """One forward + backward; drops the previous gradient first."""
    z.grad = None
    fn(z).backward()


def _proc_status_kib(key: str) -> int:
    """A ``/proc/self/status`` entry in KiB (``VmRSS``, ``VmHWM``)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"{key} not found in /proc/self/status")


def _peak_memory_mb(fn: LossFn, z: Tensor, device: torch.device) -> float:
    """Peak extra memory (MB) of one forward + backward (see module docstring)."""
    z.grad = None
    gc.collect()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device)
        _step(fn, z)
        torch.cuda.synchronize(device)
        return (torch.cuda.max_memory_allocated(device) - before) / 2**20
    Path("/proc/self/clear_refs").write_text("5")  # reset VmHWM to the current VmRSS
    before = _proc_status_kib("VmRSS")
    _step(fn, z)
    return max(0.0, (_proc_status_kib("VmHWM") - before) / 1024)


def _worker(args: argparse.Namespace) -> None:
    """Measure one (method, B) pair and print a JSON line (runs in a subprocess)."""
    device = torch.device(args.device)
    batch_size = args.batch_sizes[0]
    z = _embeddings(batch_size, args.dim, device)
    fn = _make_loss(args.worker, batch_size, args.temperature, device)
    for _ in range(args.warmup):
        _step(fn, z)
    times = []
    for _ in range(args.repeats):
        _sync(device)
        start = time.perf_counter()
        _step(fn, z)
        _sync(device)
        times.append((time.perf_counter() - start) * 1e3)
    peak = _peak_memory_mb(fn, z, device)
    print(json.dumps({"ms": statistics.median(times), "peak_mb": peak}))


def _measure(method: str, batch_size: int, args: argparse.Namespace) -> dict[str, float]:
    """Run :func:`_worker` for one pair in a fresh interpreter."""
    cmd = [
        sys.executable,
        str(Path(__file__).resolve()),
        "--worker",
        method,
        "--batch-sizes",
        str(batch_size),
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
        "--threads",
        str(torch.get_num_threads()),
    ]
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="65536")
    out = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if out.returncode != 0:
        raise RuntimeError(f"{method} at B={batch_size} failed:\n{out.stderr}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def _check(batch_sizes: list[int], dim: int, temperature: float, methods: list[str]) -> list[str]:
    """Compare losses and gradients with a float64 reference (and with lightly).

    Args:
        batch_sizes: Values of ``B`` to check.
        dim: Embedding dimension.
        temperature: Softmax temperature.
        methods: Implementations to check.

    Returns:
        Markdown table rows, one per ``B``.
    """
    rows = []
    for b in batch_sizes:
        z = _embeddings(b, dim, torch.device("cpu"))
        z64 = z.detach().double().requires_grad_(True)
        ref = naive_nt_xent(z64, temperature)
        ref.backward()
        results = {}
        for method in methods:
            z.grad = None
            loss = _make_loss(method, b, temperature, z.device)(z)
            loss.backward()
            results[method] = (loss.detach().double(), z.grad.detach().double().clone())
        cells = [str(b), f"{ref.item():.6f}"]
        for method in methods:
            loss, grad = results[method]
            d_loss = (loss - ref.detach()).abs().item()
            d_grad = (grad - z64.grad).abs().max().item()
            cells.append(f"{d_loss:.1e} / {d_grad:.1e}")
        if "lightly" in results:
            loss_l, grad_l = results["lightly"]
            loss_f, grad_f = results["fused"]
            d_loss = (loss_f - loss_l).abs().item()
            d_grad = (grad_f - grad_l).abs().max().item()
            cells.append(f"{d_loss:.1e} / {d_grad:.1e}")
        rows.append("| " + " | ".join(cells) + " |")
    return rows


def _parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[256, 512, 1024, 2048])
    parser.add_argument("--dim", type=int, default=128)
    parser.add_argument("--temperature", type=float, default=0.2)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads")
    parser.add_argument("--worker", choices=METHODS, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.repeats < 1 or args.warmup < 0:
        parser.error("--repeats must be >= 1 and --warmup >= 0")
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda requested but CUDA is not available")
    if args.device == "cpu" and not Path("/proc/self/clear_refs").exists():
        parser.error("CPU peak memory needs Linux /proc/self/clear_refs")
    return args


def _fmt(value: float | None, spec: str) -> str:
    return "not installed" if value is None else format(value, spec)


def main() -> None:
    """Check agreement, then time and memory-profile every implementation per ``B``."""
    args = _parse_args()
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    if args.worker is not None:
        _worker(args)
        return
    start = time.perf_counter()
    lightly_version = _lightly_version()
    methods = [m for m in METHODS if m != "lightly" or lightly_version is not None]
    device_name = (
        torch.cuda.get_device_name() if args.device == "cuda" else platform.processor() or "cpu"
    )
    print(f"torch {torch.__version__} | threads {torch.get_num_threads()} | device {args.device}")
    print(f"device name: {device_name} | lightly {lightly_version or 'not installed'}")
    print(
        f"D={args.dim} tau={args.temperature} repeats={args.repeats} warmup={args.warmup}; "
        "time = median forward+backward, peak = extra memory of one forward+backward\n"
    )

    print("Agreement (float32 CPU; |loss diff| / max |grad diff|):\n")
    header = ["B", "ref loss (f64)"] + [f"{m} vs f64" for m in methods]
    if lightly_version is not None:
        header.append("fused vs lightly")
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    print("\n".join(_check(args.batch_sizes, args.dim, args.temperature, methods)) + "\n")

    print(f"Speed and peak memory ({args.device}):\n")
    print(
        "| B | ours fused ms | ours generic ms | naive ms | lightly ms | speed-up vs lightly "
        "| fused peak MB | generic peak MB | naive peak MB | lightly peak MB |"
    )
    print("|" + "---|" * 10)
    for b in args.batch_sizes:
        r: dict[str, dict[str, float] | None] = {m: None for m in METHODS}
        for method in methods:
            r[method] = _measure(method, b, args)
        ms = {m: None if v is None else v["ms"] for m, v in r.items()}
        mb = {m: None if v is None else v["peak_mb"] for m, v in r.items()}
        speedup = "n/a" if ms["lightly"] is None else f"{ms['lightly'] / ms['fused']:.2f}x"
        cells = [str(b)] + [_fmt(ms[m], ".2f") for m in METHODS] + [speedup]
        cells += [_fmt(mb[m], ".1f") for m in METHODS]
        print("| " + " | ".join(cells) + " |", flush=True)
    print(f"\ntotal runtime: {time.perf_counter() - start:.1f} s")


if __name__ == "__main__":
    main()
