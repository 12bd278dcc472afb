"""Edge-flip and feature attacks on graphs: ARIEL's adversarial view and evaluation attacks.

* :func:`project_edge_budget`: Euclidean projection of flip probabilities onto
  ``{0 <= s <= 1, sum(s) <= budget}`` by bisection (Xu et al., IJCAI 2019, eq. 9; ARIEL
  ``attack.py:5-24``);
* :func:`adversarial_view`: ARIEL's view (``attack.py:27-73``): projected gradient ascent
  on the flip probabilities of the upper triangle and sign steps on a feature perturbation
  inside an L-infinity ball, maximising a loss of the perturbed graph's embedding, then one
  Bernoulli draw of the flips;
* :func:`random_edge_flips` and :func:`surrogate_edge_attack`: attacks of a graph at
  evaluation time, the first uniform, the second Xu et al.'s PGD topology attack against a
  linearised two-layer GCN surrogate (SGC, as Metattack's) trained on a labelled split.
  Neither depends on the encoder under test, so every method is scored on the same graph.

Everything dense is ``O(n^2)``: ARIEL attacks only its sampled subgraphs (500 nodes), and
the evaluation attacks refuse graphs above ``max_nodes``.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor
from torch_geometric.utils import coalesce, dense_to_sparse, to_dense_adj

from contraseg.lightning_modules.components.graph_encoders import gcn_normalize_dense

__all__ = [
    "adversarial_view",
    "dense_adjacency",
    "flip",
    "pgd_perturbation",
    "project_edge_budget",
    "random_edge_flips",
    "surrogate_edge_attack",
]


def dense_adjacency(edge_index: Tensor, num_nodes: int) -> Tensor:
    """The 0/1 ``(n, n)`` float adjacency of ``edge_index`` (duplicates counted once)."""
    adj = to_dense_adj(edge_index, max_num_nodes=num_nodes)[0] if edge_index.numel() else \
        torch.zeros(num_nodes, num_nodes, device=edge_index.device)  # fmt: skip
    return (adj > 0).float()


def flip(adj: Tensor, upper: Tensor, values: Tensor) -> Tensor:
    """``A + S * (1 - 2A - I)``: ``A`` with the symmetric (fractional) flips ``S``.

    ``values`` are the flips of the strict upper triangle at ``upper`` (``triu_indices``);
    a flip of 1 removes an edge that is there and adds one that is not.
    """
    n = adj.shape[0]
    s = torch.zeros(n, n, dtype=values.dtype, device=values.device)
    s = s.index_put((upper[0], upper[1]), values)
    s = s + s.T
    complement = 1 - 2 * adj - torch.eye(n, device=adj.device)
    return adj + s * complement


def project_edge_budget(values: Tensor, budget: float, tol: float = 1e-3) -> Tensor:
    r"""Projection onto ``{0 <= s <= 1, sum(s) <= budget}``.

    ``clip(a, 0, 1)`` if it fits; else ``clip(a - mu, 0, 1)`` with ``mu`` the root of
    ``sum(clip(a - mu, 0, 1)) = budget``, found by bisection on ``[min(a) - 1, max(a)]`` to
    ``tol`` (ARIEL's ``xi = 1e-3``; the number of halvings is fixed in advance, so the loop
    does not synchronise with the device at every step).
    """
    clipped = values.clamp(0, 1)
    if float(clipped.sum()) <= budget:
        return clipped
    lo, hi = values.min() - 1, values.max()
    halvings = max(1, math.ceil(math.log2(max(float(hi - lo), tol) / tol)))
    for _ in range(halvings):
        mid = (lo + hi) / 2
        over = (values - mid).clamp(0, 1).sum() > budget
        lo = torch.where(over, mid, lo)
        hi = torch.where(over, hi, mid)
    return (values - hi).clamp(0, 1)  # hi: the feasible end of the bracket


def pgd_perturbation(
    embed_dense: Callable[[Tensor, Tensor], Tensor],
    loss: Callable[[Tensor], Tensor],
    x: Tensor,
    adj: Tensor,
    budget: float,
    steps: int = 5,
    edge_step: float = 200.0,
    feature_step: float = 0.01,
    feature_budget: float = 0.04,
) -> tuple[Tensor, Tensor]:
    r"""The continuous PGD of :func:`adversarial_view`: flip probabilities and feature shift.

    Each of ``steps`` iterations ``t = 0, 1, ...`` does

    .. math::

        s \leftarrow \Pi_{B}\big(s + \tfrac{\alpha}{\sqrt{t + 1}} \nabla_s L\big), \qquad
        \delta \leftarrow \mathrm{clip}_{[-\epsilon_x, \epsilon_x]}
            \big(\delta + \beta\,\mathrm{sign}(\nabla_\delta L)\big)

    with ``L = loss(embed_dense(x + delta, flip(adj, upper, s)))`` and ``B`` the budget set
    of :func:`project_edge_budget`, from ``s = 0``, ``delta = 0``.

    Returns:
        ``(s, delta)``: ``s`` over the strict upper triangle (``torch.triu_indices(n, n, 1)``
        order), both detached.
    """
    n = x.shape[0]
    upper = torch.triu_indices(n, n, 1, device=x.device)
    s = torch.zeros(upper.shape[1], device=x.device)
    delta = torch.zeros_like(x)
    for t in range(steps):
        s.requires_grad_(True)
        delta.requires_grad_(True)
        value = loss(embed_dense(x + delta, flip(adj, upper, s)))
        grad_s, grad_delta = torch.autograd.grad(value, [s, delta])
        with torch.no_grad():
            s = project_edge_budget(s + edge_step / math.sqrt(t + 1) * grad_s, budget)
            delta = (delta + feature_step * grad_delta.sign()).clamp(-feature_budget,
                                                                      feature_budget)  # fmt: skip
    return s.detach(), delta.detach()


def adversarial_view(
    embed_dense: Callable[[Tensor, Tensor], Tensor],
    loss: Callable[[Tensor], Tensor],
    x: Tensor,
    edge_index: Tensor,
    steps: int = 5,
    edge_budget: float = 0.2,
    edge_step: float = 200.0,
    feature_step: float = 0.01,
    feature_budget: float = 0.04,
    generator: torch.Generator | None = None,
) -> tuple[Tensor, Tensor]:
    r"""ARIEL's adversarial view of ``(x, edge_index)``: PGD on edge flips and features.

    :func:`pgd_perturbation` on the dense adjacency ``A`` with
    ``budget = edge_budget * |E| / 2`` (``edge_index`` holds both directions: a fraction
    ``edge_budget`` of the undirected edges), then one draw of the flips,
    ``1[s > U(0, 1)]``.  Gradients flow to ``s`` and ``delta`` only; the caller puts the
    encoder in eval mode (ARIEL freezes it and calls ``model.eval()``).

    Args:
        embed_dense: ``(x, adj) -> z`` on a dense adjacency without self-loops.
        loss: ``z -> scalar`` to maximise (ARIEL: GRACE's loss against the fixed view 1).
        x: ``(n, f)`` node features.
        edge_index: ``(2, E)`` edges, both directions.
        steps: PGD iterations (official: 5).
        edge_budget: Flipped fraction of the undirected edges (official ``node_ratio`` 0.2).
        edge_step: ``alpha`` (official ``alpha``, 50-200 per data set).
        feature_step: ``beta`` (official ``beta``, 0.01 or 0.001).
        feature_budget: L-infinity radius of ``delta`` (hard-coded 0.04 in the official code).
        generator: Generator of the Bernoulli draw (``None``: torch's global RNG).

    Returns:
        ``(x + delta, adj)``: the perturbed features and the dense 0/1 adjacency (no
        self-loops), both detached.
    """
    n = x.shape[0]
    adj = dense_adjacency(edge_index, n)
    budget = edge_index.shape[1] * edge_budget / 2
    s, delta = pgd_perturbation(embed_dense, loss, x, adj, budget, steps, edge_step,
                                feature_step, feature_budget)  # fmt: skip
    upper = torch.triu_indices(n, n, 1, device=x.device)
    where = generator.device if generator is not None else s.device
    draw = torch.rand(s.shape, generator=generator, device=where).to(s.device)
    return x + delta, flip(adj, upper, (s > draw).float())


def random_edge_flips(edge_index: Tensor, num_nodes: int, ratio: float, seed: int = 0) -> Tensor:
    """Flip ``round(ratio * |E_undirected|)`` uniformly drawn node pairs (present: removed).

    On a sparse graph nearly every flip adds an edge.  Returns the flipped graph's
    ``edge_index`` (both directions, coalesced).
    """
    g = torch.Generator().manual_seed(seed)
    edges = edge_index.cpu()
    count = round(ratio * edges.shape[1] / 2)
    a = torch.randint(num_nodes, (count,), generator=g)
    b = torch.randint(num_nodes - 1, (count,), generator=g)
    b = b + (b >= a).long()  # b != a
    pairs = torch.stack([torch.minimum(a, b), torch.maximum(a, b)])
    pairs = coalesce(pairs, num_nodes=num_nodes)  # a pair drawn twice flips once
    existing = set(map(tuple, edges[:, edges[0] < edges[1]].T.tolist()))
    drawn = set(map(tuple, pairs.T.tolist()))
    kept = sorted((existing - drawn) | (drawn - existing))
    if not kept:
        return torch.empty(2, 0, dtype=torch.long, device=edge_index.device)
    upper = torch.tensor(kept, dtype=torch.long).T
    both = torch.cat([upper, upper.flip(0)], 1)
    return coalesce(both, num_nodes=num_nodes).to(edge_index.device)


def surrogate_edge_attack(
    x: Tensor,
    edge_index: Tensor,
    y: Tensor,
    ratio: float,
    seed: int = 0,
    labelled_fraction: float = 0.1,
    steps: int = 100,
    step_size: float = 200.0,
    samples: int = 20,
    max_nodes: int = 10000,
) -> Tensor:
    r"""Xu et al.'s PGD topology attack against an SGC surrogate; the flipped ``edge_index``.

    1. A surrogate ``softmax(Â² X W)`` (Wu et al. 2019's SGC, Metattack's linearised
       two-layer GCN) is trained on a seeded ``labelled_fraction`` of the nodes (Adam, 200
       steps, lr 0.01, weight decay 5e-4);
    2. its cross-entropy on every node is maximised over flip probabilities ``s`` of the
       upper triangle, ``s <- P(s + step_size / sqrt(t + 1) * grad)`` for ``steps`` steps
       (:func:`project_edge_budget`, budget ``ratio * |E_undirected|``), with the true labels
       on the labelled nodes and the surrogate's own predictions elsewhere (Metattack's
       self-training labels: the attacker does not see the test labels);
    3. ``samples`` Bernoulli draws of the flips; the draw within the budget with the largest
       surrogate loss is applied.

    Raises:
        ValueError: A graph of more than ``max_nodes`` nodes (the attack is dense).
    """
    n = x.shape[0]
    if n > max_nodes:
        raise ValueError(f"the surrogate attack is dense (n^2); {n} nodes > max_nodes {max_nodes}")
    g = torch.Generator().manual_seed(seed)
    device = x.device
    labelled = torch.randperm(n, generator=g)[: max(1, round(labelled_fraction * n))].to(device)
    adj = dense_adjacency(edge_index, n)
    num_classes = int(y.max()) + 1
    with torch.no_grad():
        propagate = gcn_normalize_dense(adj)
        smoothed = propagate @ (propagate @ x)
    torch_state = torch.get_rng_state()
    torch.manual_seed(seed)
    weight = torch.nn.Linear(x.shape[1], num_classes).to(device)
    torch.set_rng_state(torch_state)
    optimizer = torch.optim.Adam(weight.parameters(), lr=0.01, weight_decay=5e-4)
    for _ in range(200):
        optimizer.zero_grad()
        F.cross_entropy(weight(smoothed[labelled]), y[labelled]).backward()
        optimizer.step()
    weight.requires_grad_(False)
    with torch.no_grad():
        targets = weight(smoothed).argmax(1)
        targets[labelled] = y[labelled]
        xw = weight(x) - weight.bias  # linear: W(Â² X) + b = Â² (X W) + b

    def logits(v: Tensor, a: Tensor) -> Tensor:
        p = gcn_normalize_dense(a)
        return p @ (p @ v) + weight.bias

    def surrogate_loss(a: Tensor) -> Tensor:
        return F.cross_entropy(logits(xw, a), targets)

    upper = torch.triu_indices(n, n, 1, device=device)
    budget = ratio * edge_index.shape[1] / 2
    # the edges-only case of ARIEL's PGD (no feature step)
    s, _ = pgd_perturbation(logits, lambda z: F.cross_entropy(z, targets), xw, adj, budget,
                            steps, step_size, feature_step=0.0, feature_budget=0.0)  # fmt: skip
    best, best_loss = None, -math.inf
    with torch.no_grad():
        for _ in range(samples):
            flips = (s > torch.rand(s.shape, generator=g).to(device)).float()
            if float(flips.sum()) > budget:
                continue
            candidate = flip(adj, upper, flips)
            value = float(surrogate_loss(candidate))
            if value > best_loss:
                best, best_loss = candidate, value
    if best is None:  # every draw over the budget: the most probable flips within it
        keep = s.topk(int(budget)).indices
        flips = torch.zeros_like(s)
        flips[keep] = 1.0
        best = flip(adj, upper, flips)
    return dense_to_sparse(best)[0]
