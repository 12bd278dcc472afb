"""MoCo v2: queue InfoNCE against references, the key queue, EMA, shuffle-BN, the module."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F
from torch import Tensor, nn

from contraseg.lightning_modules import MoCoV2
from contraseg.lightning_modules.components.heads import Projector
from contraseg.lightning_modules.components.momentum import (
    KeyQueue,
    SplitBatchNorm2d,
    ema_momentum,
    ema_update,
    shuffle_across_ranks,
    shuffle_batch,
    split_batch_norm,
    unshuffle_across_ranks,
)
from contraseg.lightning_modules.losses.moco import queue_info_nce, queue_info_nce_loss


def _reference(q: Tensor, k: Tensor, queue: Tensor, tau: float, keep=None, masked="drop"):
    """Float64 loop over queries: -log e^{pos} / (e^{pos} + sum_j kept e^{neg_j})."""
    q, k, queue = (F.normalize(t.double(), dim=1) for t in (q, k, queue))
    total = 0.0
    for i in range(q.shape[0]):
        pos = float(q[i] @ k[i]) / tau
        terms = [pos]
        for j in range(queue.shape[0]):
            kept = True if keep is None else bool(keep[i, j])
            if kept:
                terms.append(float(q[i] @ queue[j]) / tau)
            elif masked == "zero":
                terms.append(0.0)
        top = max(terms)
        total += top + math.log(sum(math.exp(t - top) for t in terms)) - pos
    return total / q.shape[0]


@pytest.mark.parametrize("tau", [0.2, 0.07, 0.01])
@pytest.mark.parametrize("mode", ["none", "drop", "zero"])
def test_queue_loss_matches_float64_reference(tau: float, mode: str) -> None:
    g = torch.Generator().manual_seed(0)
    q, k, queue = torch.randn(6, 8, generator=g), torch.randn(6, 8, generator=g), torch.randn(
        13, 8, generator=g)  # fmt: skip
    keep = None if mode == "none" else torch.rand(6, 13, generator=g) > 0.4
    loss = queue_info_nce_loss(q, k, queue, tau, keep, "drop" if mode == "none" else mode)
    assert torch.isfinite(loss)
    assert loss.item() == pytest.approx(_reference(q, k, queue, tau, keep, mode), rel=1e-5)


def test_fast_path_equals_mask_path_and_gradients_only_reach_queries() -> None:
    g = torch.Generator().manual_seed(1)
    q = torch.randn(5, 4, generator=g, requires_grad=True)
    k = torch.randn(5, 4, generator=g, requires_grad=True)
    queue = torch.randn(7, 4, generator=g)
    fast = queue_info_nce_loss(q, k, queue, 0.1)
    (grad_fast,) = torch.autograd.grad(fast, q)
    full = queue_info_nce_loss(q, k, queue, 0.1, keep=torch.ones(5, 7, dtype=torch.bool))
    (grad_full,) = torch.autograd.grad(full, q)
    assert fast.item() == pytest.approx(full.item(), rel=1e-6)
    torch.testing.assert_close(grad_fast, grad_full, rtol=1e-5, atol=1e-6)
    queue_info_nce_loss(q, k, queue, 0.1).backward()
    assert k.grad is None


@pytest.mark.parametrize("mode", ["none", "drop", "zero"])
def test_instance_accuracy_matches_a_loop_over_queries(mode: str) -> None:
    """Top-1: the positive beats every negative the loss keeps (a zeroed one scores 0)."""
    g = torch.Generator().manual_seed(3)
    q, k, queue = torch.randn(16, 4, generator=g), torch.randn(16, 4, generator=g), torch.randn(
        5, 4, generator=g)  # fmt: skip
    k[:8] = q[:8] + 0.05 * torch.randn(8, 4, generator=g)  # half the queries win
    keep = None if mode == "none" else torch.rand(16, 5, generator=g) > 0.5
    masked = "drop" if mode == "none" else mode
    loss, accuracy = queue_info_nce(q, k, queue, 0.1, keep, masked)
    assert loss.item() == pytest.approx(queue_info_nce_loss(q, k, queue, 0.1, keep, masked).item())
    qn, kn, qu = (F.normalize(t, dim=1) for t in (q, k, queue))
    wins = 0
    for i in range(16):
        pos = float(qn[i] @ kn[i])
        negs = [float(qn[i] @ qu[j]) if keep is None or keep[i, j] else 0.0
                for j in range(5) if keep is None or keep[i, j] or mode == "zero"]  # fmt: skip
        wins += all(pos > n for n in negs)
    assert 0 < wins < 16
    assert accuracy.item() == pytest.approx(wins / 16)
    assert not accuracy.requires_grad


def test_closed_form_identical_keys() -> None:
    """q = k = every queue key: each of the K + 1 logits equals 1/tau -> log(K + 1)."""
    v = F.normalize(torch.randn(1, 8), dim=1)
    loss = queue_info_nce_loss(v.repeat(3, 1), v.repeat(3, 1), v.repeat(9, 1), 0.01)
    assert loss.item() == pytest.approx(math.log(10), abs=1e-4)  # fp32 logits of 100


def test_fp32_under_autocast_and_matches_lightly() -> None:
    lightly_loss = pytest.importorskip("lightly.loss")
    g = torch.Generator().manual_seed(2)
    q, k, queue = torch.randn(8, 16, generator=g), torch.randn(8, 16, generator=g), torch.randn(
        32, 16, generator=g)  # fmt: skip
    with torch.autocast("cpu", dtype=torch.bfloat16):
        amp = queue_info_nce_loss(q.bfloat16(), k.bfloat16(), queue.bfloat16(), 0.2)
    assert amp.dtype == torch.float32
    ours = queue_info_nce_loss(q, k, queue, 0.2)
    ref = lightly_loss.NTXentLoss(temperature=0.2, memory_bank_size=(32, 16))
    ref.memory_bank.bank = F.normalize(queue, dim=1).clone()
    theirs = ref(q.requires_grad_(), k)
    assert ours.item() == pytest.approx(theirs.item(), rel=1e-5)
    assert amp.item() == pytest.approx(ours.item(), rel=2e-2)


def test_bad_arguments_are_named() -> None:
    q = torch.randn(2, 4)
    with pytest.raises(ValueError, match="temperature"):
        queue_info_nce_loss(q, q, torch.randn(3, 4), 0.0)
    with pytest.raises(ValueError, match="queue must be"):
        queue_info_nce_loss(q, q, torch.randn(3, 5), 0.2)
    with pytest.raises(ValueError, match="masked must be"):
        queue_info_nce_loss(q, q, torch.randn(3, 4), 0.2, torch.ones(2, 3, dtype=bool), "nan")


def test_queue_wraps_around_and_keeps_indices() -> None:
    queue = KeyQueue(size=10, dim=3)
    assert int(queue.filled) == 0 and (queue.indices == -1).all()
    written = []
    for step in range(4):  # 4 keys per step into 10 slots: 0-3, 4-7, 8 9 0 1, 2-5
        keys = F.normalize(torch.randn(4, 3), dim=1)
        queue.enqueue(keys, torch.arange(4) + 4 * step, gather=False)
        written.append(keys)
    keys = torch.cat(written)
    expected_index = torch.tensor([10, 11, 12, 13, 14, 15, 6, 7, 8, 9])
    assert torch.equal(queue.indices, expected_index)
    torch.testing.assert_close(queue.keys, keys[expected_index])
    assert int(queue.ptr) == 6 and int(queue.filled) == 10
    # more keys than slots: the last 10 survive and end at the pointer
    big = F.normalize(torch.randn(13, 3), dim=1)
    queue.enqueue(big, torch.arange(100, 113), gather=False)
    assert int(queue.ptr) == (6 + 13) % 10
    slots = (9 + torch.arange(10)) % 10
    torch.testing.assert_close(queue.keys[slots], big[3:])
    assert torch.equal(queue.indices[slots], torch.arange(103, 113))


def test_queue_state_round_trip() -> None:
    a = KeyQueue(7, 4, seed=0)
    a.enqueue(torch.randn(5, 4), torch.arange(5), gather=False)
    b = KeyQueue(7, 4, seed=1)
    assert set(b.state_dict()) == {"keys", "indices", "ptr", "filled"}
    b.load_state_dict(a.state_dict())
    for name in ("keys", "indices", "ptr", "filled"):
        assert torch.equal(getattr(a, name), getattr(b, name))


def test_ema_update_and_schedule() -> None:
    online, target = nn.Linear(3, 2), nn.Linear(3, 2)
    before = [p.detach().clone() for p in target.parameters()]
    ema_update(online, target, 0.9)
    for b, o, t in zip(before, online.parameters(), target.parameters(), strict=True):
        torch.testing.assert_close(t, 0.9 * b + 0.1 * o.detach())
    assert ema_momentum(0.99, 0, 100, "cosine") == pytest.approx(0.99)
    assert ema_momentum(0.99, 50, 100, "cosine") == pytest.approx(0.995)
    assert ema_momentum(0.99, 100, 100, "cosine") == pytest.approx(1.0)
    assert ema_momentum(0.99, 50, 100) == 0.99
    # solo-learn's MoCo v2+: 0.99 -> 0.999, tau = final - (final - base)(cos(pi k / K) + 1) / 2
    assert ema_momentum(0.99, 0, 100, "cosine", final=0.999) == pytest.approx(0.99)
    assert ema_momentum(0.99, 50, 100, "cosine", final=0.999) == pytest.approx(0.9945)
    assert ema_momentum(0.99, 100, 100, "cosine", final=0.999) == pytest.approx(0.999)
    with pytest.raises(ValueError, match="schedule"):
        ema_momentum(0.99, 0, 1, "linear")
    with pytest.raises(ValueError, match="differ"):
        ema_update(nn.Linear(3, 2), nn.Linear(2, 2), 0.5)


def _module(**kw) -> MoCoV2:
    args = dict(encoder="resnet18", queue_size=12, projector=Projector([32], 8, False),
                probe_classes=3, ema_momentum=0.9)  # fmt: skip
    return MoCoV2(**{**args, **kw})


def test_module_step_matches_pure_loss_and_fills_queue() -> None:
    torch.manual_seed(0)
    model = _module()
    views = [torch.randn(4, 3, 32, 32), torch.randn(4, 3, 32, 32)]
    batch = {"views": views, "label": torch.tensor([0, 1, 2, -1]),
             "sample_index": torch.tensor([5, 6, 7, 8])}  # fmt: skip
    online = [p.detach().clone() for p in model.encoder.parameters()]
    key_before = [p.detach().clone() for p in model.key_encoder.parameters()]
    queue_before = model.queue.keys.clone()
    out = model.training_loss(batch)
    for o, kb, k in zip(online, key_before, model.key_encoder.parameters(), strict=True):
        torch.testing.assert_close(k, 0.9 * kb + 0.1 * o)  # EMA before the keys
    with torch.no_grad():
        q = F.normalize(model.projector(model.encoder(views[0])), dim=1)
        k = F.normalize(model.key_projector(model.key_encoder(views[1])), dim=1)
    expected = _reference(q, k, queue_before, 0.2)
    assert out.loss.item() == pytest.approx(expected, rel=1e-4)
    accuracy = ((q * k).sum(1) > (q @ F.normalize(queue_before, dim=1).T).max(1).values).float()
    assert out.logs["instance_acc"].item() == pytest.approx(accuracy.mean().item())
    torch.testing.assert_close(model.queue.keys[:4], k, rtol=1e-4, atol=1e-5)
    assert torch.equal(model.queue.indices[:4], torch.tensor([5, 6, 7, 8]))
    assert not any(p.requires_grad for p in model.key_encoder.parameters())
    trainable = {id(p) for g in model.parameter_groups() for p in g["params"]}
    assert not trainable & {id(p) for p in model.key_encoder.parameters()}
    fresh = _module()
    fresh.load_state_dict(model.state_dict())
    assert torch.equal(fresh.queue.indices, model.queue.indices)
    assert torch.equal(fresh.queue.keys, model.queue.keys)


def test_exclude_own_keys_removes_the_query_images_older_keys() -> None:
    torch.manual_seed(0)
    model = _module(exclude_own_keys=True)
    views = [torch.randn(4, 3, 32, 32), torch.randn(4, 3, 32, 32)]
    index = torch.tensor([5, 6, 7, 8])
    batch = {"views": views, "label": torch.tensor([0, 1, 2, -1]), "sample_index": index}
    model.queue.indices[:4] = torch.tensor([6, 1, 8, 8])  # own keys of queries 1 and 3
    queue = model.queue.keys.clone()
    out = model.training_loss(batch)
    with torch.no_grad():
        q = F.normalize(model.projector(model.encoder(views[0])), dim=1)
        k = F.normalize(model.key_projector(model.key_encoder(views[1])), dim=1)
    keep = torch.ones(4, 12, dtype=torch.bool)
    keep[1, 0] = keep[3, 2] = keep[3, 3] = False
    assert out.loss.item() == pytest.approx(_reference(q, k, queue, 0.2, keep, "drop"), rel=1e-4)
    assert out.loss.item() != pytest.approx(_reference(q, k, queue, 0.2), rel=1e-4)


def test_init_checkpoint_reaches_the_key_encoder(tmp_path: Path) -> None:
    source = _module()
    torch.save({"state_dict": source.state_dict()}, tmp_path / "src.ckpt")
    model = _module(init_checkpoint=str(tmp_path / "src.ckpt"))
    for a, b in zip(source.encoder.parameters(), model.key_encoder.parameters(), strict=True):
        assert torch.equal(a, b)


def test_hparams_are_checked() -> None:
    with pytest.raises(ValueError, match="model.ema_momentum"):
        _module(ema_momentum=1.5)
    with pytest.raises(ValueError, match="model.queue_size"):
        _module(queue_size=0)


# --------------------------------------------------------------- 2 processes (gloo)
def _ddp_worker(rank: int, store: str, out_dir: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=2)
    try:
        torch.set_num_threads(1)
        g = torch.Generator().manual_seed(0)
        images = torch.randn(8, 5, generator=g)  # global batch: rank r holds rows 4r..4r+3
        local = images[4 * rank : 4 * rank + 4]
        torch.manual_seed(123)  # the step RNG is equal on all ranks (BaseTask reseeds it)
        shuffled, unshuffle = shuffle_across_ranks(local)
        restored = unshuffle_across_ranks(shuffled * 2.0, unshuffle)
        queue = KeyQueue(6, 5)
        queue.enqueue(local, torch.arange(4) + 4 * rank)  # 8 global keys into 6 slots
        linear = nn.Linear(5, 5)
        torch.manual_seed(0)
        nn.init.normal_(linear.weight)
        ddp = nn.parallel.DistributedDataParallel(linear)
        keys = F.normalize(torch.randn(8, 5, generator=g), dim=1)
        negatives = F.normalize(torch.randn(10, 5, generator=g), dim=1)
        loss = queue_info_nce_loss(ddp(local), keys[4 * rank : 4 * rank + 4], negatives, 0.2)
        loss.backward()
        torch.save({"shuffled": shuffled, "restored": restored, "keys": queue.keys,
                    "indices": queue.indices, "ptr": queue.ptr, "loss": loss.detach(),
                    "grad": linear.weight.grad, "images": images, "key_set": keys,
                    "negatives": negatives, "weight": linear.weight.detach(),
                    "bias": linear.bias.detach()},
                   Path(out_dir) / f"rank{rank}.pt")  # fmt: skip
    finally:
        dist.destroy_process_group()


@pytest.fixture(scope="module")
def ddp_out(tmp_path_factory: pytest.TempPathFactory) -> list[dict]:
    tmp = tmp_path_factory.mktemp("moco_ddp")
    mp.spawn(_ddp_worker, args=(str(tmp / "store"), str(tmp)), nprocs=2)
    return [torch.load(tmp / f"rank{r}.pt") for r in range(2)]


@pytest.mark.ddp
def test_ddp_shuffle_bn_partitions_and_restores(ddp_out: list[dict]) -> None:
    images = ddp_out[0]["images"]
    both = torch.cat([r["shuffled"] for r in ddp_out])
    assert sorted(map(tuple, both.tolist())) == sorted(map(tuple, images.tolist()))
    assert not torch.equal(both, images)  # a real permutation of the global batch
    for rank, r in enumerate(ddp_out):
        torch.testing.assert_close(r["restored"], 2.0 * images[4 * rank : 4 * rank + 4])


@pytest.mark.ddp
def test_ddp_enqueue_is_rank_major_and_equal_on_ranks(ddp_out: list[dict]) -> None:
    single = KeyQueue(6, 5)
    single.enqueue(ddp_out[0]["images"], torch.arange(8), gather=False)
    for r in ddp_out:
        torch.testing.assert_close(r["keys"], single.keys)
        assert torch.equal(r["indices"], single.indices) and int(r["ptr"]) == 2
    assert torch.equal(single.indices, torch.tensor([6, 7, 2, 3, 4, 5]))


@pytest.mark.ddp
def test_ddp_loss_gradient_equals_one_process(ddp_out: list[dict]) -> None:
    r0 = ddp_out[0]
    ref = nn.Linear(5, 5)
    with torch.no_grad():
        ref.weight.copy_(r0["weight"])
        ref.bias.copy_(r0["bias"])
    loss = queue_info_nce_loss(ref(r0["images"]), r0["key_set"], r0["negatives"], 0.2)
    loss.backward()
    mean_loss = (ddp_out[0]["loss"] + ddp_out[1]["loss"]) / 2
    assert mean_loss.item() == pytest.approx(loss.item(), rel=1e-6)
    for r in ddp_out:
        torch.testing.assert_close(r["grad"], ref.weight.grad, rtol=1e-5, atol=1e-6)


def test_split_batch_norm_equals_bn_per_sub_batch_and_loads_as_plain_bn() -> None:
    torch.manual_seed(0)
    plain = nn.BatchNorm2d(3)
    with torch.no_grad():
        plain.weight.uniform_(0.5, 1.5)
        plain.bias.uniform_(-1, 1)
    split = SplitBatchNorm2d(3, num_splits=4)
    split.load_state_dict(plain.state_dict())
    x = torch.randn(8, 3, 5, 5) * 2 + 1
    out = split(x)
    # reference: sample i is in sub-batch i mod 4, each normalised by its own statistics
    means, variances = [], []
    for s in range(4):
        part = x[s::4]
        one = nn.BatchNorm2d(3)
        one.load_state_dict(plain.state_dict())
        torch.testing.assert_close(out[s::4], one(part), rtol=1e-5, atol=1e-5)
        means.append(one.running_mean)
        variances.append(one.running_var)
    torch.testing.assert_close(split.running_mean, torch.stack(means).mean(0))
    torch.testing.assert_close(split.running_var, torch.stack(variances).mean(0))
    assert int(split.num_batches_tracked) == 1
    split.eval()
    plain.load_state_dict(split.state_dict())  # same keys as a BatchNorm2d
    plain.eval()
    torch.testing.assert_close(split(x), plain(x))
    with pytest.raises(ValueError, match="divisible"):
        split.train()(torch.randn(6, 3, 2, 2))


def test_split_batch_norm_converts_encoders_and_shuffles_keys() -> None:
    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Sequential(nn.BatchNorm2d(4)))
    assert split_batch_norm(net, 2) == 2
    assert all(type(m) is SplitBatchNorm2d for m in net.modules() if isinstance(m, nn.BatchNorm2d))
    x = torch.arange(10.0)[:, None]
    shuffled, unshuffle = shuffle_batch(x, seed=3)
    assert not torch.equal(shuffled, x) and torch.equal(shuffled[unshuffle], x)
    assert torch.equal(shuffle_batch(x, seed=3)[0], shuffled)  # seeded: a resume redraws it
    torch.manual_seed(0)
    model = _module(split_batch_norm=2)
    assert any(type(m) is SplitBatchNorm2d for m in model.key_encoder.modules())
    views = [torch.randn(4, 3, 32, 32), torch.randn(4, 3, 32, 32)]
    keys = model.keys(views[1])
    # the key batch was permuted before the key encoder, and the keys restored to its order
    images, back = shuffle_batch(views[1], seed=2 * model.global_step + 1)
    with torch.no_grad():
        expected = F.normalize(model.key_projector(model.key_encoder(images)), dim=1)[back]
    torch.testing.assert_close(keys, expected)
    with pytest.raises(ValueError, match="split_batch_norm"):
        _module(split_batch_norm=0)


def test_symmetric_loss_is_the_mean_of_both_directions_with_two_queues() -> None:
    torch.manual_seed(0)
    model = _module(symmetric=True)
    views = [torch.randn(4, 3, 32, 32), torch.randn(4, 3, 32, 32)]
    index = torch.tensor([5, 6, 7, 8])
    batch = {"views": views, "label": torch.tensor([0, 1, 2, -1]), "sample_index": index}
    queue1, queue0 = model.queue.keys.clone(), model.queue_view0.keys.clone()
    assert not torch.equal(queue0, queue1)
    out = model.training_loss(batch)
    with torch.no_grad():
        q0 = F.normalize(model.projector(model.encoder(views[0])), dim=1)
        q1 = F.normalize(model.projector(model.encoder(views[1])), dim=1)
        k0 = F.normalize(model.key_projector(model.key_encoder(views[0])), dim=1)
        k1 = F.normalize(model.key_projector(model.key_encoder(views[1])), dim=1)
    expected = (_reference(q0, k1, queue1, 0.2) + _reference(q1, k0, queue0, 0.2)) / 2
    assert out.loss.item() == pytest.approx(expected, rel=1e-4)
    torch.testing.assert_close(model.queue.keys[:4], k1, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(model.queue_view0.keys[:4], k0, rtol=1e-4, atol=1e-5)
    assert "queue_view0.keys" in model.state_dict()


def test_decay_all_parameters_puts_norms_and_biases_in_the_decayed_group() -> None:
    default, official = _module(), _module(decay_all_parameters=True)
    assert len(default.parameter_groups()[1]["params"]) > 0  # biases / norms exempt
    groups = official.parameter_groups()
    probe = {id(p) for p in official.probe.parameters()}
    decayed = {id(p) for p in groups[0]["params"]}
    assert "weight_decay" not in groups[0]
    trainable = {id(p) for p in official.parameters() if p.requires_grad} - probe
    assert decayed == trainable
    assert {id(p) for p in groups[-1]["params"]} == probe
