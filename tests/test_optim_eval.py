"""Tests for LARS / build_optimizer / warmup_cosine_schedule and the kNN and linear-probe
evaluators."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from contraseg.lightning_modules.components.optim import (
    LARS,
    build_optimizer,
    split_decay_groups,
    warmup_cosine_schedule,
)
from contraseg.lightning_modules.evaluators.knn import WeightedKNN, weighted_knn_predict
from contraseg.lightning_modules.evaluators.linear_probe import OnlineLinearProbe

# ----------------------------------------------------------------------------- LARS


def test_lars_two_steps_match_hand_computation() -> None:
    lr, mom, wd, eta = 0.5, 0.9, 0.1, 0.02
    w = nn.Parameter(torch.tensor([3.0, 4.0], dtype=torch.float64))  # ||w|| = 5
    opt = LARS([w], lr=lr, momentum=mom, weight_decay=wd, eta=eta)

    # Step 1: g = (0.6, 0.8), ||g|| = 1; trust = 0.02 * 5 / (1 + 0.1 * 5) = 1 / 15.
    w.grad = torch.tensor([0.6, 0.8], dtype=torch.float64)
    opt.step()
    trust1 = eta * 5.0 / (1.0 + wd * 5.0)
    assert trust1 == pytest.approx(1 / 15)
    buf = [(0.6 + wd * 3.0) * trust1, (0.8 + wd * 4.0) * trust1]  # = (0.06, 0.08)
    w1 = [3.0 - lr * buf[0], 4.0 - lr * buf[1]]  # = (2.97, 3.96)
    assert w.tolist() == pytest.approx(w1, rel=1e-12)
    assert w1 == pytest.approx([2.97, 3.96])

    # Step 2: g = (1, 0); momentum buffer buf <- 0.9 buf + d_p.
    w.grad = torch.tensor([1.0, 0.0], dtype=torch.float64)
    opt.step()
    w1_norm = math.hypot(*w1)
    trust2 = eta * w1_norm / (1.0 + wd * w1_norm)
    d_p = [(1.0 + wd * w1[0]) * trust2, (0.0 + wd * w1[1]) * trust2]
    buf = [mom * buf[0] + d_p[0], mom * buf[1] + d_p[1]]
    w2 = [w1[0] - lr * buf[0], w1[1] - lr * buf[1]]
    assert w.tolist() == pytest.approx(w2, rel=1e-12)


def test_lars_zero_norms_fall_back_to_trust_one() -> None:
    zero_w = nn.Parameter(torch.zeros(3))
    zero_g = nn.Parameter(torch.ones(3))
    opt = LARS([zero_w, zero_g], lr=0.1, momentum=0.0, weight_decay=0.0, eta=0.02)
    zero_w.grad = torch.tensor([1.0, -2.0, 3.0])
    zero_g.grad = torch.zeros(3)
    opt.step()
    torch.testing.assert_close(zero_w.detach(), torch.tensor([-0.1, 0.2, -0.3]))
    torch.testing.assert_close(zero_g.detach(), torch.ones(3))


@pytest.mark.parametrize("nesterov", [False, True])
def test_lars_excluded_group_is_sgd_with_momentum(nesterov: bool) -> None:
    torch.manual_seed(0)
    w_lars = nn.Parameter(torch.randn(5, 3))
    b_lars = nn.Parameter(torch.randn(3))
    b_sgd = nn.Parameter(b_lars.detach().clone())
    w_start = w_lars.detach().clone()
    lars = LARS(
        [
            {"params": [w_lars]},
            {"params": [b_lars], "lars_exclude": True, "weight_decay": 0.05},
        ],
        lr=0.2,
        momentum=0.9,
        weight_decay=1e-3,
        eta=0.02,
        nesterov=nesterov,
    )
    sgd = torch.optim.SGD([b_sgd], lr=0.2, momentum=0.9, weight_decay=0.05, nesterov=nesterov)
    for _ in range(4):
        g = torch.randn(3)
        b_lars.grad, b_sgd.grad = g.clone(), g.clone()
        w_lars.grad = torch.randn(5, 3)
        lars.step()
        sgd.step()
        torch.testing.assert_close(b_lars.detach(), b_sgd.detach(), rtol=1e-6, atol=1e-7)
    # The non-excluded weight got trust-scaled updates: far smaller than plain SGD's.
    assert (w_lars.detach() - w_start).norm() < 0.2


def _lars_loop_step(params: list[nn.Parameter], state: dict, lr: float, mom: float, wd: float,
                    eta: float, exclude: bool, nesterov: bool) -> None:  # fmt: skip
    """The textbook per-tensor LARS update (the reference of the ``_foreach`` one)."""
    with torch.no_grad():
        for p in params:
            d_p = p.grad.add(p, alpha=wd) if wd != 0 else p.grad
            if not exclude:
                w_norm, g_norm = torch.linalg.vector_norm(p), torch.linalg.vector_norm(p.grad)
                denom = g_norm + wd * w_norm
                trust = torch.where((w_norm > 0) & (denom > 0), eta * w_norm / denom,
                                    torch.ones_like(w_norm))  # fmt: skip
                d_p = d_p.mul(trust)
            buf = state.get(p)
            if buf is None:
                buf = state[p] = d_p.clone()
            else:
                buf.mul_(mom).add_(d_p)
            d_p = d_p.add(buf, alpha=mom) if nesterov else buf
            p.add_(d_p, alpha=-lr)


@pytest.mark.parametrize("nesterov", [False, True])
def test_foreach_lars_equals_the_per_tensor_loop_bitwise(nesterov: bool) -> None:
    torch.manual_seed(0)
    shapes = [(8, 4, 3, 3), (8,), (16, 8), (3,)]
    ours = [nn.Parameter(torch.randn(s)) for s in shapes]
    ref = [nn.Parameter(p.detach().clone()) for p in ours]
    opt = LARS([{"params": ours[:3:2]}, {"params": ours[1::2], "lars_exclude": True,
                                         "weight_decay": 0.0}],
               lr=0.3, momentum=0.9, weight_decay=1e-4, eta=0.02, nesterov=nesterov)  # fmt: skip
    state: dict = {}
    for step in range(4):
        for a, b in zip(ours, ref):
            g = torch.randn_like(a)
            a.grad, b.grad = g.clone(), g.clone()
        ours[3].grad = None if step == 1 else ours[3].grad  # a parameter without a gradient
        ref[3].grad = None if step == 1 else ref[3].grad
        opt.step()
        _lars_loop_step([ref[0], ref[2]], state, 0.3, 0.9, 1e-4, 0.02, False, nesterov)
        _lars_loop_step([p for p in (ref[1], ref[3]) if p.grad is not None], state, 0.3, 0.9,
                        0.0, 0.02, True, nesterov)  # fmt: skip
        for a, b in zip(ours, ref):
            assert torch.equal(a, b), step


@pytest.mark.parametrize("name", ["sgd", "adamw", "adam"])
def test_fused_optimisers_equal_the_default_path(name: str) -> None:
    """``fused=True`` (PyTorch's one-kernel update; automatic on CUDA) to float tolerance."""
    torch.manual_seed(0)
    a = [nn.Parameter(torch.randn(6, 5)), nn.Parameter(torch.randn(5))]
    b = [nn.Parameter(p.detach().clone()) for p in a]
    groups = lambda ps: [{"params": ps[:1]}, {"params": ps[1:], "weight_decay": 0.0,  # noqa: E731
                                                "lars_exclude": True}]  # fmt: skip
    fused = build_optimizer(groups(a), name=name, lr=0.05, fused=True)
    plain = build_optimizer(groups(b), name=name, lr=0.05)
    assert fused.defaults["fused"] and not plain.defaults.get("fused")
    for _ in range(5):
        for p, q in zip(a, b):
            g = torch.randn_like(p)
            p.grad, q.grad = g.clone(), g.clone()
        fused.step()
        plain.step()
    for p, q in zip(a, b):
        torch.testing.assert_close(p, q, rtol=1e-6, atol=1e-6)


def test_lars_rejects_bad_lr() -> None:
    with pytest.raises(ValueError, match="lr"):
        LARS([nn.Parameter(torch.ones(1))], lr=0.0)


@pytest.mark.parametrize(
    ("name", "cls"),
    [
        ("sgd", torch.optim.SGD),
        ("adamw", torch.optim.AdamW),
        ("adam", torch.optim.Adam),
        ("lars", LARS),
        ("LARS", LARS),
    ],
)
def test_build_optimizer_names(name: str, cls: type) -> None:
    # Tanh between Linear and BatchNorm: otherwise the first bias gets an exactly-zero grad.
    model = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.BatchNorm1d(8), nn.Linear(8, 2))
    decay, no_decay = split_decay_groups(model)
    groups = [
        {"params": decay},
        {"params": no_decay, "weight_decay": 0.0, "lars_exclude": True},
    ]
    opt = build_optimizer(groups, name=name, lr=0.01, weight_decay=1e-4)
    assert isinstance(opt, cls)
    assert [g["weight_decay"] for g in opt.param_groups] == [1e-4, 0.0]
    assert all(g["lr"] == 0.01 for g in opt.param_groups)
    if cls is LARS:
        assert [g["lars_exclude"] for g in opt.param_groups] == [False, True]
    loss = model(torch.randn(6, 4)).square().mean()
    loss.backward()
    before = [p.detach().clone() for p in model.parameters()]
    opt.step()
    assert all(not torch.equal(b, p) for b, p in zip(before, model.parameters()))


def test_build_optimizer_unknown_name() -> None:
    with pytest.raises(ValueError, match="rmsprop") as info:
        build_optimizer([{"params": [nn.Parameter(torch.ones(1))]}], name="rmsprop")
    for option in ("sgd", "adamw", "adam", "lars"):
        assert option in str(info.value)


def test_split_decay_groups() -> None:
    model = nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8), nn.Linear(8, 2))
    model[2].bias.requires_grad_(False)
    decay, no_decay = split_decay_groups(model)
    assert {id(p) for p in decay} == {id(model[0].weight), id(model[2].weight)}
    assert {id(p) for p in no_decay} == {id(model[0].bias), id(model[1].weight), id(model[1].bias)}


# ----------------------------------------------------------------------------- schedule


def _lrs(warmup: int, total: int, min_ratio: float, steps: int, base: float = 2.0) -> list:
    p = nn.Parameter(torch.ones(1))
    q = nn.Parameter(torch.ones(1))
    opt = torch.optim.SGD([{"params": [p]}, {"params": [q], "lr": 4 * base}], lr=base)
    sched = warmup_cosine_schedule(opt, warmup, total, min_ratio)
    out = []
    for _ in range(steps):
        out.append([g["lr"] for g in opt.param_groups])
        opt.step()
        sched.step()
    return out


def test_warmup_cosine_closed_forms() -> None:
    base, warmup, total, min_ratio = 2.0, 10, 110, 0.1
    lrs = _lrs(warmup, total, min_ratio, total + 20, base)
    first = [lr[0] for lr in lrs]
    assert first[0] == pytest.approx(base / warmup)  # step 0: (0 + 1) / warmup
    assert first[warmup - 1] == pytest.approx(base)  # end of warmup: peak
    assert first[warmup] == pytest.approx(base)  # cosine starts at the peak
    assert first[warmup + (total - warmup) // 2] == pytest.approx(base * (min_ratio + 0.45))
    assert first[total] == pytest.approx(base * min_ratio)  # end: min_lr_ratio
    assert first[-1] == pytest.approx(base * min_ratio)  # stays there
    for step, lr in enumerate(first):
        if step < warmup:
            expected = (step + 1) / warmup
        else:
            progress = min(1.0, (step - warmup) / (total - warmup))
            expected = min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))
        assert lr == pytest.approx(base * expected)
    assert all(b == pytest.approx(4 * a) for a, b in lrs)  # every group scaled alike
    assert all(x <= y + 1e-12 for x, y in zip(first[:warmup], first[1:warmup]))  # monotone
    assert all(x >= y - 1e-12 for x, y in zip(first[warmup:], first[warmup + 1 :]))


def test_warmup_cosine_without_warmup() -> None:
    first = [lr[0] for lr in _lrs(0, 100, 0.0, 101, base=1.0)]
    assert first[0] == pytest.approx(1.0)
    assert first[50] == pytest.approx(0.5)
    assert first[100] == pytest.approx(0.0, abs=1e-12)


# ----------------------------------------------------------------------------- kNN


def _knn_reference(queries, bank, bank_labels, num_classes, k, temperature):
    """Brute force in float64: returns predictions and whether each one is a near tie."""
    q = queries / np.linalg.norm(queries, axis=1, keepdims=True)
    b = bank / np.linalg.norm(bank, axis=1, keepdims=True)
    k = min(k, len(b))
    preds, fragile = [], []
    for row in q @ b.T:
        order = np.argsort(-row)
        votes = np.zeros(num_classes)
        for j in order[:k]:
            votes[bank_labels[j]] += np.exp(row[j] / temperature)
        top2 = np.sort(votes)[-2:]
        boundary = k < len(b) and row[order[k - 1]] - row[order[k]] < 1e-5
        fragile.append(top2[1] - top2[0] < 1e-5 * top2[1] or boundary)
        preds.append(int(np.argmax(votes)))
    return np.array(preds), np.array(fragile)


@pytest.mark.parametrize(
    ("k", "temperature", "chunk_size", "seed"),
    [(1, 0.1, 1024, 0), (5, 0.07, 7, 1), (20, 0.5, 16, 2), (500, 0.1, 33, 3), (7, 1.0, 1, 4)],
)
def test_weighted_knn_matches_bruteforce(
    k: int, temperature: float, chunk_size: int, seed: int
) -> None:
    rng = np.random.default_rng(seed)
    num_classes, dim = 6, 12
    bank = rng.standard_normal((200, dim))
    bank_labels = rng.integers(0, num_classes, 200)
    queries = rng.standard_normal((90, dim))
    expected, fragile = _knn_reference(queries, bank, bank_labels, num_classes, k, temperature)
    preds = weighted_knn_predict(
        torch.from_numpy(queries).float(),
        torch.from_numpy(bank).float(),
        torch.from_numpy(bank_labels),
        num_classes,
        k=k,
        temperature=temperature,
        chunk_size=chunk_size,
    )
    assert preds.shape == (90,) and preds.dtype == torch.long
    assert fragile.mean() < 0.05
    np.testing.assert_array_equal(preds.numpy()[~fragile], expected[~fragile])


def test_weighted_knn_vote_is_weighted_not_majority() -> None:
    # Query (1, 0): one very close class-0 neighbour beats two far class-1 neighbours.
    bank = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.0, 1.0]])
    labels = torch.tensor([0, 1, 1])
    query = torch.tensor([[1.0, 0.05]])
    assert weighted_knn_predict(query, bank, labels, 2, k=3, temperature=0.1).item() == 0
    # With a huge temperature the weights are ~uniform: majority vote wins.
    assert weighted_knn_predict(query, bank, labels, 2, k=3, temperature=1e4).item() == 1


def test_weighted_knn_rejects_bad_temperature() -> None:
    with pytest.raises(ValueError, match="temperature"):
        weighted_knn_predict(torch.ones(1, 2), torch.ones(1, 2), torch.zeros(1).long(), 2, 1, 0)
    with pytest.raises(ValueError, match="k"):
        WeightedKNN(3, k=0)


def _clusters(n_per_class: int, num_classes: int, dim: int, seed: int):
    g = torch.Generator().manual_seed(seed)
    centers = 10 * torch.eye(num_classes, dim)
    labels = torch.arange(num_classes).repeat_interleave(n_per_class)
    feats = centers[labels] + 0.5 * torch.randn(len(labels), dim, generator=g)
    return feats, labels


def test_weighted_knn_metric_separated_clusters() -> None:
    metric = WeightedKNN(num_classes=4, k=10, temperature=0.1)
    bank, bank_labels = _clusters(30, 4, 16, seed=0)
    queries, query_labels = _clusters(10, 4, 16, seed=1)
    for chunk in range(3):  # several updates accumulate
        metric.update(bank[chunk::3], bank_labels[chunk::3], bank=True)
    metric.update(queries, query_labels, bank=False)
    assert metric.compute().item() == 1.0
    # Wrong query labels for half of the queries: accuracy drops to exactly 1/2.
    metric.reset()
    metric.update(bank, bank_labels, bank=True)
    wrong = query_labels.clone()
    wrong[::2] = (wrong[::2] + 1) % 4
    metric.update(queries, wrong, bank=False)
    assert metric.compute().item() == pytest.approx(0.5)


def test_weighted_knn_metric_ignores_unlabeled() -> None:
    metric = WeightedKNN(num_classes=3, k=5, temperature=0.1)
    bank, bank_labels = _clusters(10, 3, 8, seed=2)
    queries, query_labels = _clusters(4, 3, 8, seed=3)
    # Unlabeled bank entries (label -1) right on top of the queries: if they were kept the
    # -1 label could not even be scattered into the votes.
    metric.update(torch.cat([bank, queries]), torch.cat([bank_labels, torch.full((12,), -1)]),
                  bank=True)
    # Unlabeled queries: would count as wrong predictions if kept.
    metric.update(torch.cat([queries, -queries]),
                  torch.cat([query_labels, torch.full((12,), -1)]), bank=False)
    assert metric.compute().item() == 1.0


@pytest.mark.filterwarnings("ignore:.*compute.*before.*update.*")
def test_weighted_knn_metric_empty_is_nan() -> None:
    metric = WeightedKNN(num_classes=3)
    assert math.isnan(metric.compute().item())
    feats, labels = _clusters(2, 3, 4, seed=4)
    metric.update(feats, labels, bank=False)  # queries but no bank
    assert math.isnan(metric.compute().item())
    metric.reset()
    metric.update(feats, labels, bank=True)  # bank but no queries
    assert math.isnan(metric.compute().item())
    metric.reset()
    metric.update(feats, torch.full_like(labels, -1), bank=True)  # bank entirely unlabeled
    metric.update(feats, labels, bank=False)
    assert math.isnan(metric.compute().item())
    metric.reset()
    metric.update(feats, labels, bank=True)
    metric.update(feats, torch.full_like(labels, -1), bank=False)  # queries all unlabeled
    assert math.isnan(metric.compute().item())


# ----------------------------------------------------------------------------- linear probe


def test_linear_probe_does_not_backprop_into_features() -> None:
    torch.manual_seed(0)
    encoder = nn.Linear(10, 16)
    probe = OnlineLinearProbe(16, 5)
    x = torch.randn(8, 10)
    features = encoder(x)
    features.retain_grad()
    labels = torch.tensor([0, 1, -1, 3, 4, -1, 2, 0])
    loss = probe.loss(features, labels)
    loss.backward()
    assert features.grad is None
    assert encoder.weight.grad is None and encoder.bias.grad is None
    assert probe.linear.weight.grad is not None and probe.linear.weight.grad.abs().sum() > 0

    leaf = torch.randn(8, 16, requires_grad=True)
    probe.loss(leaf, labels).backward()
    assert leaf.grad is None


def test_linear_probe_ignores_unlabeled() -> None:
    torch.manual_seed(1)
    probe = OnlineLinearProbe(6, 3)
    feats = torch.randn(10, 6)
    labels = torch.tensor([0, -1, 1, 2, -1, 2, 0, -1, 1, 1])
    keep = labels >= 0
    loss = probe.loss(feats, labels, train=True)
    expected = F.cross_entropy(probe.linear(feats[keep]), labels[keep])
    torch.testing.assert_close(loss, expected)
    preds = probe(feats[keep]).argmax(dim=1)
    acc = (preds == labels[keep]).float().mean()
    torch.testing.assert_close(probe.train_acc.compute(), acc)

    probe.loss(feats, labels, train=False)
    torch.testing.assert_close(probe.val_acc.compute(), acc)


def test_linear_probe_all_unlabeled_gives_zero_loss() -> None:
    probe = OnlineLinearProbe(6, 3)
    feats = torch.randn(4, 6, requires_grad=True)
    loss = probe.loss(feats, torch.full((4,), -1))
    assert loss.item() == 0.0 and loss.requires_grad
    loss.backward()
    assert feats.grad is None
    assert probe.linear.weight.grad is not None
    assert probe.linear.weight.grad.abs().sum().item() == 0.0


def test_linear_probe_rejects_single_class() -> None:
    with pytest.raises(ValueError, match="num_classes"):
        OnlineLinearProbe(4, 1)


def test_warmup_epochs_count_the_loaders_steps_when_max_steps_limits_the_run() -> None:
    """``max_epochs: -1`` + ``max_steps`` (the budget curves): an epoch is the loader's steps."""
    from types import SimpleNamespace

    from contraseg.lightning_modules.components.optim import steps_per_epoch

    run = SimpleNamespace(num_training_batches=7, accumulate_grad_batches=2, max_epochs=-1)
    assert steps_per_epoch(run, total=1000) == 4.0  # ceil(7 / 2), not 1000 / 1
    unsized = SimpleNamespace(num_training_batches=float("inf"), accumulate_grad_batches=1,
                              max_epochs=4)  # fmt: skip
    assert steps_per_epoch(unsized, total=100) == 25.0


def test_timm_lars_equals_ours_on_simclr_groups_but_adapts_decayed_excluded_ones() -> None:
    """The reason LARS is not timm's (its docstring): same updates on SimCLR's groups (no decay
    on the excluded biases and norms), trust-scaled excluded groups once they are decayed."""
    import timm.optim

    from contraseg.lightning_modules.components.optim import param_groups

    def run(excluded_decay: float, use_timm: bool) -> list[torch.Tensor]:
        torch.manual_seed(0)
        net = nn.Sequential(nn.Linear(6, 5), nn.BatchNorm1d(5), nn.Linear(5, 3))
        groups = param_groups(net)
        groups[1]["weight_decay"] = excluded_decay
        if use_timm:
            groups = [{**{k: v for k, v in g.items() if k != "lars_exclude"},
                       "always_adapt": not g.get("lars_exclude", False)} for g in groups]
            opt = timm.optim.Lars(groups, lr=0.5, momentum=0.9, weight_decay=1e-5,
                                  trust_coeff=0.02, eps=0.0)
        else:
            opt = LARS(groups, lr=0.5, momentum=0.9, weight_decay=1e-5, eta=0.02)
        x, y = torch.randn(16, 6), torch.randint(0, 3, (16,))
        for _ in range(3):
            opt.zero_grad()
            nn.functional.cross_entropy(net(x), y).backward()
            opt.step()
        return [p.detach().clone() for p in net.parameters()]

    for ours, theirs in zip(run(0.0, False), run(0.0, True)):
        assert torch.equal(ours, theirs)
    differ = [not torch.equal(a, b) for a, b in zip(run(1e-4, False), run(1e-4, True))]
    assert any(differ)


def test_poly_schedule_closed_form() -> None:
    """Segmenter's schedule: lr * (m + (1 - m) (1 - t) ** 0.9) after a linear warmup."""
    from contraseg.lightning_modules.components.optim import warmup_cosine_schedule

    w = nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([w], lr=0.01)
    sched = warmup_cosine_schedule(opt, 2, 12, 0.001, schedule="poly", poly_power=0.9)
    seen = []
    for _ in range(13):
        seen.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    expected = [0.01 * 0.5, 0.01] + [0.01 * (0.001 + 0.999 * (1 - (s - 2) / 10) ** 0.9)
                                     for s in range(2, 13)]  # fmt: skip
    assert seen == pytest.approx(expected, rel=1e-12)
    assert seen[-1] == pytest.approx(0.01 * 0.001)  # the floor, min_lr_ratio
