"""HCSC: concentrations, hierarchy, selection probabilities, losses, module and callback."""

from __future__ import annotations

import math
from contextlib import nullcontext
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F
from torch import Tensor

import contraseg.lightning_modules.hcsc as hcsc_module
from contraseg.lightning_modules import HCSC
from contraseg.lightning_modules.components.heads import Projector
from contraseg.lightning_modules.components.prototype_update import PrototypeUpdate
from contraseg.lightning_modules.components.prototypes import (
    Prototypes,
    check_levels,
    concentration,
    hierarchical_kmeans,
)
from contraseg.lightning_modules.losses.hcsc import (
    instance_keep_probability,
    prototype_keep_probability,
    prototype_nce_loss,
    prototype_negatives,
)
from contraseg.lightning_modules.losses.moco import queue_info_nce_loss


def _official_density(sq_dists: np.ndarray, labels: np.ndarray, k: int, t: float) -> np.ndarray:
    """The loop of the official run_hkmeans (pretrain.py), in numpy."""
    members = [[] for _ in range(k)]
    for i, c in enumerate(labels):
        members[c].append(sq_dists[i])
    density = np.zeros(k)
    for c, d in enumerate(members):
        if len(d) > 1:
            density[c] = (np.asarray(d) ** 0.5).mean() / np.log(len(d) + 10)
    dmax = density.max()
    for c, d in enumerate(members):
        if len(d) <= 1:
            density[c] = dmax
    density = density.clip(np.percentile(density, 10), np.percentile(density, 90))
    return t * density / density.mean()


def test_concentration_matches_the_official_loop() -> None:
    g = torch.Generator().manual_seed(0)
    labels = torch.randint(0, 12, (200,), generator=g)
    labels[labels == 3] = 4  # an empty cluster
    labels[0] = 11
    labels[labels == 11] = 10
    labels[0] = 11  # a singleton
    d = torch.rand(200, generator=g) * 2
    ours = concentration(d, labels, 12, 0.2)
    ref = _official_density(d.numpy().astype(np.float64), labels.numpy(), 12, 0.2)
    np.testing.assert_allclose(ours.numpy(), ref, rtol=1e-5)
    assert ours.mean().item() == pytest.approx(0.2, rel=1e-6)


def test_hierarchy_composes_parents_and_normalises() -> None:
    x = F.normalize(torch.randn(300, 16, generator=torch.Generator().manual_seed(1)), dim=1)
    protos = hierarchical_kmeans(x, [24, 10, 4], temperature=0.2, niter=5, nredo=2)
    assert protos.num_levels == 3 and len(protos.parents) == 2
    for level in (1, 2):
        composed = protos.parents[level - 1][protos.assignments[level - 1]]
        assert torch.equal(protos.assignments[level], composed)
        assert protos.parents[level - 1].shape == (protos.centroids[level - 1].shape[0],)
    for level, k in enumerate([24, 10, 4]):
        assert protos.centroids[level].shape == (k, 16)
        torch.testing.assert_close(protos.centroids[level].norm(dim=1), torch.ones(k))
        assert protos.phi[level].mean().item() == pytest.approx(0.2, rel=1e-5)
    assert int(protos.counts[0].sum()) == 300 and int(protos.counts[1].sum()) == 24
    again = Prototypes.from_state(protos.state())
    assert all(torch.equal(a, b) for a, b in zip(again.assignments, protos.assignments))


def test_levels_larger_than_their_points_name_the_level() -> None:
    with pytest.raises(ValueError, match="level 0: 50 clusters need at least 50 points, but the "
                                         "level clusters 40 training samples"):  # fmt: skip
        check_levels([50, 10], 40)
    with pytest.raises(ValueError, match="level 1: 30 clusters .* 20 centroids of level 0"):
        check_levels([20, 30])
    with pytest.raises(ValueError, match="level 1"):
        PrototypeUpdate(num_clusters=[10, 20])


def test_instance_keep_probability_hand_built() -> None:
    centroids = torch.eye(3)
    phi = torch.full((3,), 0.5)
    queue = torch.tensor([[1.0, 0, 0], [0, 1.0, 0], [0, 0, 1.0], [0.6, 0.8, 0]])
    clusters = torch.tensor([0, 2])
    p = instance_keep_probability(queue, centroids, phi, clusters)
    e2 = math.exp(2.0)
    # key 0 sits on centroid 0: softmax (e^2, 1, 1) / (e^2 + 2)
    assert p[0, 0].item() == pytest.approx(1 - e2 / (e2 + 2), rel=1e-5)
    assert p[1, 0].item() == pytest.approx(1 - 1 / (e2 + 2), rel=1e-5)
    soft = torch.softmax(torch.tensor([1.2, 1.6, 0.0]), dim=0)
    assert p[0, 3].item() == pytest.approx(1 - soft[0].item(), rel=1e-5)
    assert p[1, 3].item() == pytest.approx(1 - soft[2].item(), rel=1e-5)
    # very concentrated prototypes: the key of the query's own cluster is never kept
    sharp = instance_keep_probability(queue, centroids, torch.full((3,), 1e-3), clusters)
    assert sharp[0, 0].item() == 0.0 and sharp[0, 1].item() == pytest.approx(0.999)


def test_prototype_keep_probability_against_a_loop() -> None:
    g = torch.Generator().manual_seed(2)
    lower = F.normalize(torch.randn(9, 5, generator=g), dim=1)
    upper = F.normalize(torch.randn(3, 5, generator=g), dim=1)
    upper_phi = torch.rand(3, generator=g) + 0.1
    parents, negatives = torch.tensor([0, 2, 2, 1]), torch.tensor([1, 4, 5, 8])
    p = prototype_keep_probability(lower, upper, upper_phi, parents, negatives)
    for i, par in enumerate(parents.tolist()):
        for j, neg in enumerate(negatives.tolist()):
            logits = torch.tensor([float(lower[neg] @ upper[u]) / float(upper_phi[u])
                                   for u in range(3)])  # fmt: skip
            expected = 1 - torch.softmax(logits.double(), 0)[par].item()
            assert p[i, j].item() == pytest.approx(min(max(expected, 1e-4), 0.999), rel=1e-5)


def test_negatives_are_every_non_positive_including_the_top_id() -> None:
    negatives = prototype_negatives(6, torch.tensor([1, 3, 1]))
    assert negatives.tolist() == [0, 2, 4, 5]  # the official range(max) would drop 5


@pytest.mark.parametrize("masked", ["drop", "zero"])
def test_prototype_loss_against_float64_loop(masked: str) -> None:
    g = torch.Generator().manual_seed(3)
    q = torch.randn(5, 6, generator=g)
    c = F.normalize(torch.randn(8, 6, generator=g), dim=1)
    phi = torch.rand(8, generator=g) * 0.3 + 0.05
    positives = torch.tensor([0, 2, 2, 5, 7])
    negatives = prototype_negatives(8, positives)
    keep = torch.rand(5, negatives.shape[0], generator=g) > 0.3
    loss = prototype_nce_loss(q, c, phi, positives, negatives, keep, masked)
    qn = F.normalize(q.double(), dim=1)
    total = 0.0
    for i in range(5):
        pos = float(qn[i] @ c[positives[i]].double()) / float(phi[positives[i]])
        terms = [pos]
        for j, n in enumerate(negatives.tolist()):
            if keep[i, j]:
                terms.append(float(qn[i] @ c[n].double()) / float(phi[n]))
            elif masked == "zero":
                terms.append(0.0)
        total += math.log(sum(math.exp(t) for t in terms)) - pos
    assert loss.item() == pytest.approx(total / 5, rel=1e-5)
    unmasked = prototype_nce_loss(q, c, phi, positives, negatives)
    assert unmasked.item() > loss.item() if masked == "drop" else True


def _model(**kw) -> HCSC:
    args = dict(encoder="resnet18", queue_size=16, projector=Projector([32], 8, False),
                probe_classes=3, ema_momentum=0.9)  # fmt: skip
    return HCSC(**{**args, **kw})


def _batch(n: int = 4, views: int = 2, size: int = 32) -> dict:
    g = torch.Generator().manual_seed(4)
    sizes = [size, size] + [16] * (views - 2)
    return {"views": [torch.randn(n, 3, s, s, generator=g) for s in sizes],
            "label": torch.tensor([0, 1, 2, -1][:n]), "sample_index": torch.tensor([0, 3, 5, 9])}


def _prototypes(dim: int = 8) -> Prototypes:
    x = F.normalize(torch.randn(12, dim, generator=torch.Generator().manual_seed(5)), dim=1)
    return hierarchical_kmeans(x, [6, 3], temperature=0.2, niter=3, nredo=1)


def test_before_prototypes_hcsc_is_moco() -> None:
    torch.manual_seed(0)
    model = _model()
    queue = model.queue.keys.clone()
    out = model.training_loss(_batch())
    with torch.no_grad():
        q = model.projector(model.encoder(_batch()["views"][0]))
        k = F.normalize(model.key_projector(model.key_encoder(_batch()["views"][1])), dim=1)
    assert out.loss.item() == pytest.approx(queue_info_nce_loss(q, k, queue, 0.2).item(), rel=1e-5)
    assert float(out.logs["prototype_loss"]) == 0.0


@pytest.mark.parametrize("views", [2, 4])
def test_hcsc_loss_equals_its_terms(monkeypatch: pytest.MonkeyPatch, views: int) -> None:
    """The module's loss from recorded selection masks equals the terms recomputed by hand."""
    drawn: list[Tensor] = []
    real = hcsc_module.bernoulli_keep

    def record(p: Tensor) -> Tensor:
        drawn.append(real(p))
        return drawn[-1]

    monkeypatch.setattr(hcsc_module, "bernoulli_keep", record)
    torch.manual_seed(0)
    model = _model()
    protos = _prototypes()
    model.set_prototypes(protos, epoch=0)
    batch = _batch(views=views)
    queue = model.queue.keys.clone()
    out = model.training_loss(batch)
    with torch.no_grad():
        qs = [F.normalize(model.projector(model.encoder(v)), dim=1)
              for v in [batch["views"][0], *batch["views"][2:]]]  # fmt: skip
        k = F.normalize(model.key_projector(model.key_encoder(batch["views"][1])), dim=1)
    idx = batch["sample_index"]
    clusters = [a[idx] for a in protos.assignments]
    inst_masks, rest = drawn[:2], drawn[2:]
    inst = sum(queue_info_nce_loss(qs[0], k, queue, 0.2, m, "zero") for m in inst_masks)
    local = sum(queue_info_nce_loss(q, k, queue, 0.2, m, "zero")
                for q in qs[1:] for m in inst_masks)  # fmt: skip
    proto = 0.0
    for q in qs:  # per query view: level 0 with its drawn mask, level 1 (top) unmasked
        neg0 = prototype_negatives(6, clusters[0])
        neg1 = prototype_negatives(3, clusters[1])
        mask0 = rest.pop(0)
        assert mask0.shape == (4, neg0.shape[0])
        proto += (prototype_nce_loss(q, protos.centroids[0], protos.phi[0], clusters[0], neg0,
                                     mask0, "zero")
                  + prototype_nce_loss(q, protos.centroids[1], protos.phi[1], clusters[1],
                                       neg1)) / 2  # fmt: skip
    assert not rest
    expected = inst + local + proto
    assert out.loss.item() == pytest.approx(float(expected), rel=1e-4)
    assert torch.equal(model.queue.indices[:4], idx)


def test_selection_switches_and_missing_index() -> None:
    torch.manual_seed(0)
    model = _model(instance_selection=False, prototype_selection=False, masked_negatives="drop")
    model.set_prototypes(_prototypes(), epoch=0)
    batch = _batch()
    queue = model.queue.keys.clone()
    out = model.training_loss(batch)
    with torch.no_grad():
        q = F.normalize(model.projector(model.encoder(batch["views"][0])), dim=1)
        k = F.normalize(model.key_projector(model.key_encoder(batch["views"][1])), dim=1)
    protos = model.prototypes
    clusters = [a[batch["sample_index"]] for a in protos.assignments]
    proto = sum(prototype_nce_loss(q, protos.centroids[lv], protos.phi[lv], clusters[lv],
                                   prototype_negatives(protos.centroids[lv].shape[0],
                                                       clusters[lv])) for lv in (0, 1)) / 2
    expected = queue_info_nce_loss(q, k, queue, 0.2) + proto
    assert out.loss.item() == pytest.approx(float(expected), rel=1e-4)
    del batch["sample_index"]
    with pytest.raises(ValueError, match="sample_index"):
        model.training_loss(batch)
    with pytest.raises(ValueError, match="masked_negatives"):
        _model(masked_negatives="nan")


def test_task_state_round_trip() -> None:
    model = _model()
    assert model.task_state() == {}
    model.set_prototypes(_prototypes(), epoch=3)
    state = model.task_state()
    path_state = {"task_state": state}
    fresh = _model()
    fresh.on_load_checkpoint(path_state)
    assert fresh.prototypes_epoch == 3
    for a, b in zip(fresh.prototypes.centroids, model.prototypes.centroids, strict=True):
        assert torch.equal(a, b)


# --------------------------------------------------------- the callback, 2 gloo ranks
class _Items(torch.utils.data.Dataset):
    def __init__(self, n: int = 37) -> None:
        g = torch.Generator().manual_seed(6)
        centres = torch.randn(4, 3, 4, 4, generator=g) * 3
        self.labels = torch.arange(n) % 4
        self.images = centres[self.labels] + 0.3 * torch.randn(n, 3, 4, 4, generator=g)

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> dict:
        return {"image": self.images[i], "label": int(self.labels[i])}


class _Module(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.proj = torch.nn.Linear(48, 8)
        g = torch.Generator().manual_seed(7)
        torch.nn.init.normal_(self.proj.weight, generator=g)
        torch.nn.init.normal_(self.proj.bias, generator=g)
        self.hparams = SimpleNamespace(temperature=0.2)
        self.device = torch.device("cpu")

    def prototype_features(self, images: Tensor) -> Tensor:
        return F.normalize(self.proj(images.flatten(1)), dim=1)

    def all_gather(self, data: Tensor) -> Tensor:
        out = [torch.empty_like(data) for _ in range(dist.get_world_size())]
        dist.all_gather(out, data.contiguous())
        return torch.stack(out)


def _trainer(rank: int, world: int) -> SimpleNamespace:
    def broadcast(obj, src=0):
        box = [obj]
        dist.broadcast_object_list(box, src=src)
        return box[0]

    plugin = SimpleNamespace(val_step_context=nullcontext, convert_input=lambda x: x)
    return SimpleNamespace(datamodule=SimpleNamespace(eval_dataset=lambda split: _Items()),
                           precision_plugin=plugin, global_rank=rank, world_size=world,
                           is_global_zero=rank == 0, progress_bar_callback=None,
                           strategy=SimpleNamespace(broadcast=broadcast))  # fmt: skip


def _callback(distributed: bool) -> PrototypeUpdate:
    return PrototypeUpdate(num_clusters=[8, 4], niter=5, nredo=2, batch_size=5,
                           distributed=distributed)  # fmt: skip


def _worker(rank: int, store: str, out_dir: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=2)
    try:
        torch.set_num_threads(1)
        out = {}
        for distributed in (False, True):
            protos, labels = _callback(distributed).compute(_trainer(rank, 2), _Module())
            out[distributed] = (protos.state(), labels)
        torch.save(out, Path(out_dir) / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


@pytest.mark.ddp
def test_callback_on_two_ranks_equals_one_process(tmp_path: Path) -> None:
    mp.spawn(_worker, args=(str(tmp_path / "store"), str(tmp_path)), nprocs=2)
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=False) for r in range(2)]
    single, labels = _callback(False).compute(_trainer(0, 1), _Module())
    assert torch.equal(labels, _Items().labels)
    for out in ranks:
        for distributed in (False, True):
            state, rank_labels = out[distributed]
            assert torch.equal(rank_labels, labels)  # dataset order, padding dropped
            for a, b in zip(state["assignments"], single.assignments, strict=True):
                assert torch.equal(a, b)
            for a, b in zip(state["centroids"], single.centroids, strict=True):
                torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
            for a, b in zip(state["phi"], single.phi, strict=True):
                torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
