"""Torch k-means against scikit-learn, known clusters, empty clusters and 2 gloo ranks."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from sklearn.cluster import KMeans
from sklearn.datasets import make_blobs
from sklearn.metrics import adjusted_rand_score, normalized_mutual_info_score

from contraseg.lightning_modules.components import kmeans as km


def _blobs(n: int = 600, centers: int = 5, d: int = 8, std: float = 0.5, seed: int = 0):
    x, y = make_blobs(n, d, centers=centers, cluster_std=std, random_state=seed)
    return torch.from_numpy(x).float(), y


@pytest.mark.parametrize("init", ["k-means++", "random"])
def test_recovers_well_separated_blobs(init: str) -> None:
    x, y = _blobs()
    out = km.kmeans(x, 5, niter=20, nredo=3, seed=0, init=init)
    assert normalized_mutual_info_score(y, out.assignments.numpy()) == pytest.approx(1.0)
    assert adjusted_rand_score(y, out.assignments.numpy()) == pytest.approx(1.0)
    assert int(out.counts.sum()) == 600 and out.reseeded == 0


@pytest.mark.parametrize("k", [7, 40])
def test_same_inertia_as_sklearn_at_the_same_init(k: int) -> None:
    x, _ = _blobs(n=2000, centers=12, d=16, std=3.0, seed=1)  # overlapping: many iterations
    init = km.kmeans_plus_plus(x, k, torch.Generator().manual_seed(3))
    ours = km.kmeans(x, k, niter=15, init=init)
    ref = KMeans(k, init=init.numpy().astype(np.float64), n_init=1, max_iter=15, tol=0.0,
                 algorithm="lloyd").fit(x.numpy().astype(np.float64))  # fmt: skip
    assert ours.inertia == pytest.approx(ref.inertia_, rel=0.01)
    agree = (ours.assignments.numpy() == ref.labels_).mean()
    assert agree > 0.98
    # the reported inertia is the one of the returned assignment
    d = torch.cdist(x.double(), ours.centroids.double()) ** 2
    assert torch.equal(d.argmin(dim=1), ours.assignments)
    assert ours.inertia == pytest.approx(float(d.min(dim=1).values.sum()), rel=1e-5)


def test_chunked_assignment_equals_brute_force(monkeypatch: pytest.MonkeyPatch) -> None:
    g = torch.Generator().manual_seed(0)
    x, c = torch.randn(333, 6, generator=g), torch.randn(50, 6, generator=g)
    monkeypatch.setattr(km, "_chunk", lambda k, budget=0: 17)
    labels, dists = km.assign(x, c)
    d = torch.cdist(x.double(), c.double()) ** 2
    assert torch.equal(labels, d.argmin(dim=1))
    torch.testing.assert_close(dists.double(), d.min(dim=1).values, rtol=1e-4, atol=1e-4)


def test_empty_clusters_are_reseeded() -> None:
    x, _ = _blobs(n=300, centers=3, seed=2)
    init = torch.stack([x[0], x[0], x[1], torch.full_like(x[0], 1e3)])  # a twin and a far one
    out = km.kmeans(x, 4, niter=10, init=init)
    assert out.reseeded >= 2
    assert (out.counts > 0).all()


def test_nredo_keeps_the_lowest_inertia_and_is_seeded() -> None:
    x, _ = _blobs(n=400, centers=8, d=4, std=2.0, seed=3)
    singles = [km.kmeans(x, 8, niter=5, seed=s).inertia for s in range(4)]
    best = km.kmeans(x, 8, niter=5, nredo=4, seed=0)
    assert best.inertia == pytest.approx(min(singles))
    again = km.kmeans(x, 8, niter=5, nredo=4, seed=0)
    assert torch.equal(best.centroids, again.centroids)


def test_spherical_centroids_have_unit_norm() -> None:
    x = torch.nn.functional.normalize(torch.randn(200, 5), dim=1)
    out = km.kmeans(x, 6, niter=5, spherical=True)
    torch.testing.assert_close(out.centroids.norm(dim=1), torch.ones(6))


def test_bad_arguments_name_the_level() -> None:
    x = torch.randn(10, 3)
    with pytest.raises(ValueError, match="level 2: 11 clusters need at least 11 points, got 10"):
        km.kmeans(x, 11, desc="level 2")
    with pytest.raises(ValueError, match="init must be"):
        km.kmeans(x, 2, init="kmeans")
    with pytest.raises(ValueError, match=r"init centroids must be \(2, 3\)"):
        km.kmeans(x, 2, init=torch.zeros(3, 3))
    with pytest.raises(ValueError, match=r"\(n, d\)"):
        km.kmeans(torch.randn(10), 2)


def _worker(rank: int, store: str, out_dir: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=2)
    try:
        torch.set_num_threads(1)
        x, _ = _blobs(n=501, centers=6, d=8, std=2.0, seed=4)  # odd n: a padded shard
        out = km.kmeans(x, 9, niter=8, nredo=2, seed=5, distributed=True)
        torch.save(out, Path(out_dir) / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


@pytest.mark.ddp
def test_distributed_equals_one_process(tmp_path: Path) -> None:
    mp.spawn(_worker, args=(str(tmp_path / "store"), str(tmp_path)), nprocs=2)
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=False) for r in range(2)]
    x, _ = _blobs(n=501, centers=6, d=8, std=2.0, seed=4)
    single = km.kmeans(x, 9, niter=8, nredo=2, seed=5)
    for out in ranks:
        assert torch.equal(out.assignments, single.assignments)
        torch.testing.assert_close(out.centroids, single.centroids, rtol=1e-5, atol=1e-5)
        assert out.inertia == pytest.approx(single.inertia, rel=1e-5)
