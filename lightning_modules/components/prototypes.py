r"""Hierarchical prototypes (HCSC, Guo et al. 2022): k-means levels, parents, concentrations.

Level 0 clusters the samples' (momentum-encoder, unit-norm) features into :math:`k_0`
clusters; level :math:`l > 0` clusters the L2-normalised centroids of level
:math:`l - 1` into :math:`k_l` (official ``pretrain.py: run_hkmeans``).  Each level keeps

* ``centroids[l]``: :math:`(k_l, d)`, L2-normalised after training (not spherical
  k-means: the official code normalises once, at the end);
* ``assignments[l]``: :math:`(N,)` cluster of every *sample* at level :math:`l`, composed
  through the parents;
* ``parents[l]`` (:math:`l < L - 1`): :math:`(k_l,)` cluster of level :math:`l + 1` of
  each level-:math:`l` centroid;
* ``phi[l]``: the concentration of PCL (Li et al. 2021, eq. 12) as HCSC computes it,

.. math::

    \phi_c = \frac{\frac{1}{n_c} \sum_{i \in c} \lVert v_i - c \rVert_2}{\log(n_c + 10)},

over the members of :math:`c` (samples at level 0, child centroids above), a cluster with
at most one member taking the largest :math:`\phi` of the level; then clipped to its
10th-90th percentiles and rescaled to mean :math:`T` (:math:`\phi \leftarrow T \phi /
\bar\phi`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor

from contraseg.lightning_modules.components.kmeans import kmeans

__all__ = ["Prototypes", "check_levels", "concentration", "hierarchical_kmeans"]


@dataclass
class Prototypes:
    """The hierarchy of one prototype update (module docstring).

    Attributes:
        centroids: Per level, ``(k_l, d)`` unit-norm centroids.
        assignments: Per level, ``(N,)`` cluster of every sample.
        parents: Per level but the last, ``(k_l,)`` parent cluster at level ``l + 1``.
        phi: Per level, ``(k_l,)`` concentrations (mean ``temperature``).
        counts: Per level, ``(k_l,)`` members per cluster (samples or child centroids).
        reseeded: Per level, empty clusters re-seeded by k-means.
    """

    centroids: list[Tensor]
    assignments: list[Tensor]
    parents: list[Tensor]
    phi: list[Tensor]
    counts: list[Tensor]
    reseeded: list[int] = field(default_factory=list)

    @property
    def num_levels(self) -> int:
        """Number of levels ``L``."""
        return len(self.centroids)

    def state(self) -> dict[str, list[Tensor] | list[int]]:
        """Plain tensors for a checkpoint (``BaseTask.task_state``)."""
        return {"centroids": self.centroids, "assignments": self.assignments,
                "parents": self.parents, "phi": self.phi, "counts": self.counts,
                "reseeded": self.reseeded}  # fmt: skip

    @classmethod
    def from_state(cls, state: dict, device: torch.device | None = None) -> Prototypes:
        """Rebuild from :meth:`state` (tensors moved to ``device``)."""
        move = [(k, [t.to(device) for t in state[k]]) for k in
                ("centroids", "assignments", "parents", "phi", "counts")]  # fmt: skip
        return cls(**dict(move), reseeded=list(state.get("reseeded", [])))

    def to(self, device: torch.device) -> Prototypes:
        """The same hierarchy on ``device``."""
        return Prototypes.from_state(self.state(), device)


def check_levels(num_clusters: Sequence[int], num_samples: int | None = None) -> None:
    """Reject hierarchies k-means cannot build, naming the level.

    Args:
        num_clusters: Clusters per level, e.g. ``[3000, 2000, 1000]``.
        num_samples: Samples of level 0, when known.

    Raises:
        ValueError: On an empty list, ``k < 1``, a level with more clusters than points.
    """
    if not num_clusters:
        raise ValueError("num_clusters: at least one level is needed")
    points, what = num_samples, "training samples"
    for level, k in enumerate(num_clusters):
        if k < 1:
            raise ValueError(f"num_clusters level {level}: k must be >= 1, got {k}")
        if points is not None and k > points:
            raise ValueError(
                f"num_clusters level {level}: {k} clusters need at least {k} points, but the "
                f"level clusters {points} {what}"
            )
        points, what = k, f"centroids of level {level}"


def concentration(sq_dists: Tensor, assignments: Tensor, k: int, temperature: float) -> Tensor:
    """HCSC's per-cluster concentration ``phi`` (module docstring).

    Args:
        sq_dists: ``(n,)`` squared L2 distance of each member to its centroid.
        assignments: ``(n,)`` cluster of each member.
        k: Number of clusters.
        temperature: Target mean ``T``.

    Returns:
        ``(k,)`` float32 concentrations with mean ``temperature``.
    """
    counts = torch.bincount(assignments, minlength=k).float()
    root = torch.zeros(k, device=sq_dists.device).index_add_(0, assignments,
                                                            sq_dists.float().sqrt())  # fmt: skip
    phi = torch.where(counts > 1, root / counts.clamp(min=1) / torch.log(counts + 10), 0.0)
    phi = torch.where(counts > 1, phi, phi.max())
    low, high = torch.quantile(phi.double(), torch.tensor([0.1, 0.9], dtype=torch.float64,
                                                           device=phi.device)).float()  # fmt: skip
    phi = phi.clamp(low, high)
    return temperature * phi / phi.mean()


def hierarchical_kmeans(
    features: Tensor,
    num_clusters: Sequence[int],
    temperature: float,
    niter: int = 20,
    nredo: int = 5,
    seed: int = 0,
    init: str = "k-means++",
    distributed: bool = False,
    progress: bool = False,
) -> Prototypes:
    """Build the prototype hierarchy of ``features`` (module docstring).

    Args:
        features: ``(N, d)`` sample features (every rank passes the same under DDP).
        num_clusters: Clusters per level, bottom up (HCSC: ``[3000, 2000, 1000]``).
        temperature: Mean of the concentrations (the InfoNCE ``T``).
        niter: Lloyd iterations per level (official: 20).
        nredo: k-means restarts per level (official: 5).
        seed: Seed of level 0; level ``l`` uses ``seed + l`` (the official seeds are the
            level indices).
        init: k-means initialisation (``k-means++`` or ``random``; faiss: random).
        distributed: Shard each k-means over DDP ranks.
        progress: Progress bars (rank 0).

    Returns:
        The :class:`Prototypes`.

    Raises:
        ValueError: If a level has more clusters than points (naming the level).
    """
    check_levels(num_clusters, features.shape[0])
    points = features.float()
    out = Prototypes([], [], [], [], [], [])
    for level, k in enumerate(num_clusters):
        res = kmeans(points, int(k), niter=niter, nredo=nredo, seed=seed + level, init=init,
                     distributed=distributed, progress=progress,
                     desc=f"prototypes level {level} (k={k})")  # fmt: skip
        if level == 0:
            samples = res.assignments
        else:
            out.parents.append(res.assignments)
            samples = res.assignments[out.assignments[-1]]
        out.assignments.append(samples)
        out.phi.append(concentration(res.distances, res.assignments, int(k), temperature))
        out.counts.append(res.counts)
        out.reseeded.append(res.reseeded)
        points = F.normalize(res.centroids, dim=1)
        out.centroids.append(points)
    return out
