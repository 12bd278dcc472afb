"""Hierarchical k-means of HCSC's prototype update: torch (ours) vs faiss-cpu vs scikit-learn.

Features: ``--n`` unit vectors of dimension ``--dim`` drawn around ``--centres`` random unit
centres (a mixture like a trained encoder's, seed 0).  Each backend builds the same hierarchy
(``--levels``, default 3000 2000 1000): level 0 clusters the features, level l the
L2-normalised centroids of its own level l-1; the same Lloyd iterations (``--niter``), one
run per level (nredo 1), random initialisation (faiss's; k-means++ timed separately for
ours), no subsampling (faiss ``max_points_per_centroid`` raised).  Reported per backend and
level: seconds and inertia (sum of squared distances of the level's points to their
centroids, recomputed by the same code for every backend); the last rows give torch /
faiss time ratios.  Threads: ``--threads`` for all three.

    .venv/bin/pip install -c requirements/constraints.txt -e '.[bench]'   # faiss-cpu
    .venv/bin/python benchmarks/kmeans.py --n 100000 --levels 3000 2000 1000
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from contraseg.lightning_modules.components.kmeans import assign, kmeans  # noqa: E402

Fit = Callable[[Tensor, int, int, int], Tensor]  # (points, k, niter, seed) -> centroids


def _torch(init: str) -> Fit:
    def fit(x: Tensor, k: int, niter: int, seed: int) -> Tensor:
        return kmeans(x, k, niter=niter, seed=seed, init=init).centroids
    return fit


def _faiss(x: Tensor, k: int, niter: int, seed: int) -> Tensor:
    import faiss

    km = faiss.Kmeans(x.shape[1], k, niter=niter, nredo=1, seed=seed, verbose=False,
                      max_points_per_centroid=10**9, min_points_per_centroid=1)  # fmt: skip
    km.train(np.ascontiguousarray(x.numpy(), dtype=np.float32))
    return torch.from_numpy(km.centroids)


def _sklearn(x: Tensor, k: int, niter: int, seed: int) -> Tensor:
    from sklearn.cluster import KMeans

    km = KMeans(k, init="random", n_init=1, max_iter=niter, tol=0.0, algorithm="lloyd",
                random_state=seed).fit(x.numpy())  # fmt: skip
    return torch.from_numpy(km.cluster_centers_).float()


def features(n: int, dim: int, centres: int, seed: int = 0) -> Tensor:
    """Unit vectors around random unit centres."""
    g = torch.Generator().manual_seed(seed)
    c = F.normalize(torch.randn(centres, dim, generator=g), dim=1)
    pick = torch.randint(centres, (n,), generator=g)
    return F.normalize(c[pick] + 0.08 * torch.randn(n, dim, generator=g), dim=1)


def hierarchy(fit: Fit, x: Tensor, levels: list[int], niter: int) -> list[tuple[float, float]]:
    """(seconds, inertia) per level."""
    rows, points = [], x
    for level, k in enumerate(levels):
        start = time.perf_counter()
        centroids = fit(points, k, niter, level)
        seconds = time.perf_counter() - start
        _, d = assign(points, centroids)
        rows.append((seconds, float(d.double().sum())))
        points = F.normalize(centroids, dim=1)
    return rows


def main(argv: list[str] | None = None) -> None:  # noqa: D103
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=100_000)
    parser.add_argument("--dim", type=int, default=128)
    parser.add_argument("--centres", type=int, default=4000)
    parser.add_argument("--levels", type=int, nargs="+", default=[3000, 2000, 1000])
    parser.add_argument("--niter", type=int, default=20)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--backends", nargs="+",
                        default=["torch", "faiss", "sklearn", "torch k-means++"])  # fmt: skip
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    try:
        import faiss

        faiss.omp_set_num_threads(args.threads)
    except ImportError:
        faiss = None
    from threadpoolctl import threadpool_limits

    x = features(args.n, args.dim, args.centres)
    fits = {"torch": _torch("random"), "torch k-means++": _torch("k-means++"),
            "faiss": _faiss, "sklearn": _sklearn}  # fmt: skip
    print(f"n={args.n} d={args.dim} levels={args.levels} niter={args.niter} "
          f"threads={args.threads}\n")  # fmt: skip
    header = " | ".join(f"level {i} (k={k}) s / inertia" for i, k in enumerate(args.levels))
    print(f"| backend | {header} | total s |")
    print("|---" * (len(args.levels) + 2) + "|")
    totals: dict[str, float] = {}
    for name in args.backends:
        if name == "faiss" and faiss is None:
            print("| faiss | not installed (pip install faiss-cpu) |")
            continue
        with threadpool_limits(args.threads):
            rows = hierarchy(fits[name], x, args.levels, args.niter)
        totals[name] = sum(s for s, _ in rows)
        cells = " | ".join(f"{s:.1f} / {inertia:.1f}" for s, inertia in rows)
        print(f"| {name} | {cells} | {totals[name]:.1f} |", flush=True)
    if "faiss" in totals:
        for name in ("torch", "torch k-means++"):
            if name in totals:
                print(f"\n{name} / faiss time: {totals[name] / totals['faiss']:.2f}x")


if __name__ == "__main__":
    main()
