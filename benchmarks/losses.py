"""Speed and peak memory of NT-Xent and SupCon implementations (forward + backward).

Four implementations of the SimCLR NT-Xent loss of ``2B`` stacked embeddings
(two views of ``B`` images, view-major) are compared for every batch size ``B``:

* ``fused``: :func:`contraseg.lightning_modules.losses.nt_xent_loss` with ``labels=None``
  (the fused one-positive path with an analytic backward);
* ``generic``: the same function with ``labels=instance_labels(B, 2)``, i.e. the
  generic masked SupCon-style path (the labels are built once, outside the timing);
* ``naive``: the textbook formula written here in plain PyTorch (normalise, full
  ``2B x 2B`` similarity, ``exp``, diagonal removed by multiplying with a mask,
  row sums, ``-log(pos / denominator)``; no log-sum-exp);
* ``plain_ce``: the plain autograd formulation: normalise, full ``2B x 2B`` similarity
  with the diagonal masked to ``-inf`` (mask built once, outside the timing),
  ``F.cross_entropy`` against the positive's column;
* ``lightly``: ``lightly.loss.NTXentLoss`` if the package is importable.

With ``--loss supcon`` the loss is supervised contrast (Khosla et al. 2020, L_out) over
the same ``2B`` embeddings with ``--classes`` image classes (both views of an image share
its class), and the implementations are:

* ``fused``: :func:`contraseg.lightning_modules.losses.nt_xent_loss` with class labels (the
  mask-free fused path of :mod:`contraseg.lightning_modules.losses.supcon`);
* ``generic``: :func:`contraseg.lightning_modules.losses.contrastive_loss` (the masked autograd
  path it replaced);
* ``naive``: the textbook masked formula without log-sum-exp;
* ``pml``: ``pytorch_metric_learning.losses.SupConLoss`` if importable.

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
    python benchmarks/losses.py --loss supcon --batch-sizes 512 1024 2048 --classes 10
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

from contraseg.lightning_modules.losses import contrastive_loss, instance_labels, nt_xent_loss

METHODS = ("fused", "generic", "naive", "plain_ce", "lightly")
SUPCON_METHODS = ("fused", "generic", "naive", "pml")
LossFn = Callable[[Tensor], Tensor]


def _peer_version(loss: str) -> str | None:
    """Version of the peer library (lightly for NT-Xent, pml for SupCon), else ``None``."""
    try:
        if loss == "ntxent":
            import lightly as peer
            from lightly.loss import NTXentLoss  # noqa: F401
        else:
            import pytorch_metric_learning as peer
            from pytorch_metric_learning.losses import SupConLoss  # noqa: F401
    except ImportError:
        return None
    return str(peer.__version__)


def naive_nt_xent(z: Tensor, temperature: float) -> Tensor:
    """Textbook NT-Xent (Chen et al. 2020, eq. 1) without any numerical safeguard.

    Args:
        z: ``(2B, D)`` embeddings, the two views stacked view-major.
        temperature: Softmax temperature.

    Returns:
        Mean loss over the ``2B`` anchors.
    """
    n = z.shape[0]
    rows = torch.arange(n, device=z.device)
    return naive_supcon(z, torch.cat([rows[: n // 2], rows[: n // 2]]), temperature)


def naive_supcon(z: Tensor, labels: Tensor, temperature: float) -> Tensor:
    """Textbook SupCon L_out (Khosla et al. 2020, eq. 2) with masks, no log-sum-exp.

    Args:
        z: ``(N, D)`` embeddings.
        labels: ``(N,)`` labels.
        temperature: Softmax temperature.

    Returns:
        Mean over the anchors with at least one positive.
    """
    n = z.shape[0]
    zn = z / z.norm(dim=1, keepdim=True)
    e = torch.exp(zn @ zn.T / temperature)
    not_self = 1.0 - torch.eye(n, dtype=z.dtype, device=z.device)
    pos = (labels[:, None] == labels[None, :]).to(z.dtype) * not_self
    log_prob = torch.log(e / (e * not_self).sum(dim=1, keepdim=True))
    n_pos = pos.sum(dim=1)
    keep = n_pos > 0
    return (-(log_prob * pos).sum(dim=1)[keep] / n_pos[keep]).mean()


def _labels(loss: str, batch_size: int, classes: int, device: torch.device) -> Tensor:
    """Labels of the ``2B`` rows: instance ids (NT-Xent) or seeded image classes (SupCon)."""
    if loss == "ntxent":
        return instance_labels(batch_size, 2, device)
    g = torch.Generator().manual_seed(batch_size)
    return torch.randint(0, classes, (batch_size,), generator=g).repeat(2).to(device)


def _make_loss(method: str, batch_size: int, args: argparse.Namespace,
               device: torch.device) -> LossFn:  # fmt: skip
    """Closure ``z -> scalar loss`` for one implementation (labels built outside timing)."""
    tau, supcon = args.temperature, args.loss == "supcon"
    labels = _labels(args.loss, batch_size, args.classes, device)
    rows = torch.arange(2 * batch_size, device=device)
    if method == "fused":
        if supcon:
            return lambda z: nt_xent_loss(z, labels=labels, temperature=tau)
        return lambda z: nt_xent_loss(z, temperature=tau)
    if method == "generic":
        return lambda z: contrastive_loss(z, labels, z, labels, rows, tau)
    if method == "naive":
        return lambda z: naive_supcon(z, labels, tau)
    if method == "plain_ce":
        n = 2 * batch_size
        diagonal = torch.eye(n, dtype=torch.bool, device=device)
        target = (rows + batch_size) % n

        def plain_ce(z: Tensor) -> Tensor:
            zn = torch.nn.functional.normalize(z, dim=1)
            logits = (zn @ zn.T / tau).masked_fill(diagonal, float("-inf"))
            return torch.nn.functional.cross_entropy(logits, target)

        return plain_ce
    if method == "lightly":
        from lightly.loss import NTXentLoss

        criterion = NTXentLoss(temperature=tau)
        return lambda z: criterion(z[:batch_size], z[batch_size:])
    if method == "pml":
        from pytorch_metric_learning.losses import SupConLoss

        pml_loss = SupConLoss(temperature=tau)
        return lambda z: pml_loss(z, labels)
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
    fn = _make_loss(args.worker, batch_size, args, device)
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
        "--loss",
        args.loss,
        "--classes",
        str(args.classes),
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


def _check(args: argparse.Namespace, methods: list[str], peer: str | None) -> list[str]:
    """Compare losses and gradients with a float64 reference (and with the peer library).

    Args:
        args: Benchmark arguments (batch sizes, dim, temperature, loss, classes).
        methods: Implementations to check.
        peer: ``lightly`` / ``pml`` if installed, else ``None``.

    Returns:
        Markdown table rows, one per ``B``.
    """
    rows = []
    cpu = torch.device("cpu")
    for b in args.batch_sizes:
        z = _embeddings(b, args.dim, cpu)
        z64 = z.detach().double().requires_grad_(True)
        ref = naive_supcon(z64, _labels(args.loss, b, args.classes, cpu), args.temperature)
        ref.backward()
        results = {}
        for method in methods:
            z.grad = None
            loss = _make_loss(method, b, args, cpu)(z)
            loss.backward()
            results[method] = (loss.detach().double(), z.grad.detach().double().clone())
        cells = [str(b), f"{ref.item():.6f}"]
        for method in methods:
            loss, grad = results[method]
            d_loss = (loss - ref.detach()).abs().item()
            d_grad = (grad - z64.grad).abs().max().item()
            cells.append(f"{d_loss:.1e} / {d_grad:.1e}")
        if peer is not None:
            loss_l, grad_l = results[peer]
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
    parser.add_argument("--loss", choices=("ntxent", "supcon"), default="ntxent")
    parser.add_argument("--classes", type=int, default=10, help="SupCon image classes")
    parser.add_argument("--worker", choices=sorted({*METHODS, *SUPCON_METHODS}), default=None,
                        help=argparse.SUPPRESS)
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
    all_methods = METHODS if args.loss == "ntxent" else SUPCON_METHODS
    peer_name = all_methods[-1]
    peer_version = _peer_version(args.loss)
    peer = peer_name if peer_version is not None else None
    methods = [m for m in all_methods if m != peer_name or peer is not None]
    device_name = (
        torch.cuda.get_device_name() if args.device == "cuda" else platform.processor() or "cpu"
    )
    print(f"torch {torch.__version__} | threads {torch.get_num_threads()} | device {args.device}")
    print(f"device name: {device_name} | {peer_name} {peer_version or 'not installed'}")
    classes = f" classes={args.classes}" if args.loss == "supcon" else ""
    print(
        f"loss={args.loss}{classes} N=2B D={args.dim} tau={args.temperature} "
        f"repeats={args.repeats} warmup={args.warmup}; "
        "time = median forward+backward, peak = extra memory of one forward+backward\n"
    )

    print("Agreement (float32 CPU; |loss diff| / max |grad diff|):\n")
    header = ["B", "ref loss (f64)"] + [f"{m} vs f64" for m in methods]
    if peer is not None:
        header.append(f"fused vs {peer}")
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    print("\n".join(_check(args, methods, peer)) + "\n")

    print(f"Speed and peak memory ({args.device}):\n")
    names = {"fused": "ours fused", "generic": "ours generic"}
    ratio = "plain_ce" in all_methods
    header = (["B"] + [f"{names.get(m, m)} ms" for m in all_methods]
              + [f"speed-up vs {peer_name}"] + (["speed-up vs plain_ce"] if ratio else [])
              + [f"{names.get(m, m)} peak MB" for m in all_methods])  # fmt: skip
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for b in args.batch_sizes:
        r: dict[str, dict[str, float] | None] = {m: None for m in all_methods}
        for method in methods:
            r[method] = _measure(method, b, args)
        ms = {m: None if v is None else v["ms"] for m, v in r.items()}
        mb = {m: None if v is None else v["peak_mb"] for m, v in r.items()}
        speedup = "n/a" if ms[peer_name] is None else f"{ms[peer_name] / ms['fused']:.2f}x"
        cells = [str(b)] + [_fmt(ms[m], ".2f") for m in all_methods] + [speedup]
        if ratio:
            cells.append(f"{ms['plain_ce'] / ms['fused']:.2f}x")  # type: ignore[operator]
        cells += [_fmt(mb[m], ".1f") for m in all_methods]
        print("| " + " | ".join(cells) + " |", flush=True)
    print(f"\ntotal runtime: {time.perf_counter() - start:.1f} s")


if __name__ == "__main__":
    main()
