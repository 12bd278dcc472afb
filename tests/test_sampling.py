"""Seeded training order and per-sample augmentation seeds (the data side of exact resume)."""

from __future__ import annotations

import torch

import contraseg.seeding as sampling
from contraseg.datamodules.base import TransformedDataset
from contraseg.datamodules.sampling import train_loader
from contraseg.seeding import SampleKey, SeededSampler, mix_seed


class _Noise:
    """A 'transform' that is pure torch randomness: the output is the RNG stream."""

    def __call__(self, item: int) -> dict:
        return {"x": torch.rand(3), "index": item}


def test_order_is_a_function_of_seed_and_epoch() -> None:
    data = list(range(10))
    a, b = SeededSampler(data, seed=3), SeededSampler(data, seed=3, epoch=2)
    first = [k.index for k in a]
    assert first == torch.randperm(10, generator=torch.Generator().manual_seed(3)).tolist()
    a.set_epoch(2)
    assert [k.index for k in a] == [k.index for k in b] != first
    keys = list(b)
    assert all(k.epoch == 2 and k.seed == mix_seed(3, 2, k.index) for k in keys)
    assert len({k.seed for k in keys}) == 10  # unrelated streams per sample
    skipping = SeededSampler(data, seed=3, epoch=2, skip=4)
    assert list(skipping) == keys[4:] and list(skipping) == keys  # skip applies once


def test_two_ranks_see_the_global_batch_of_one_process(monkeypatch) -> None:
    data, b = list(range(16)), 2
    single = [k.index for k in SeededSampler(data, seed=0)]
    shards = []
    for rank in (0, 1):
        monkeypatch.setattr(sampling.dist, "is_initialized", lambda: True)
        monkeypatch.setattr(sampling.dist, "get_world_size", lambda: 2)
        monkeypatch.setattr(sampling.dist, "get_rank", lambda r=rank: r)
        shards.append([k.index for k in SeededSampler(data, seed=0)])
    for t in range(len(data) // (2 * b)):  # global batch t = both ranks' batch t
        ranks = set(shards[0][t * b : (t + 1) * b]) | set(shards[1][t * b : (t + 1) * b])
        assert ranks == set(single[2 * b * t : 2 * b * (t + 1)])


def test_augmentation_depends_on_the_key_not_the_worker_or_caller_rng() -> None:
    dataset = TransformedDataset(list(range(8)), _Noise())
    key = SampleKey(5, 1, mix_seed(0, 1, 5))
    torch.manual_seed(123)
    first = dataset[key]["x"]
    state = torch.get_rng_state()
    torch.manual_seed(999)
    assert torch.equal(dataset[key]["x"], first)
    torch.manual_seed(123)
    dataset[key]
    assert torch.equal(torch.get_rng_state(), state)  # the caller's stream is untouched
    batches = {}
    for workers in (0, 2):
        loader = train_loader(dataset, batch_size=4, num_workers=workers)
        batches[workers] = [b["x"] for b in loader]
    assert all(torch.equal(a, c) for a, c in zip(batches[0], batches[2], strict=True))
