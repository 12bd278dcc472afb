"""2-process gloo test: losses with ``gather_distributed=True`` under DDP equal one
process on the global batch (loss averaged over ranks, DDP-averaged gradients).

The processes are spawned once; every case runs in the same process group and the
children return their results through ``torch.save`` files.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import Tensor, nn

from contraseg.lightning_modules.components.distributed import gather_no_grad, gather_with_grad
from contraseg.lightning_modules.losses.contrastive import nt_xent_loss
from contraseg.lightning_modules.losses.directclr import directclr_loss

WORLD_SIZE, LOCAL_B, IN_DIM, OUT_DIM, TAU = 2, 4, 8, 16, 0.2
GLOBAL_B = WORLD_SIZE * LOCAL_B

# SupCon class labels per image.  Single view: rank 0 has 1 valid anchor (class 0,
# positives on rank 1 only), rank 1 has 2 (its two class-0 images); the rest are
# singletons.  Two views: every anchor is valid, positives across views and ranks.
SINGLE_VIEW_LABELS = torch.tensor([0, 1, 2, 3, 0, 0, 4, 5])
TWO_VIEW_LABELS = torch.tensor([0, 1, 2, 1, 0, 3, 2, 2])
# Decoupled single view: class 7 covers all but one image on rank 0; the anchor of the
# lone class-9 image has no positive (skipped), the others all have negatives.
DECOUPLED_LABELS = torch.tensor([7, 7, 9, 7, 7, 7, 8, 8])


def _data() -> dict[str, Tensor]:
    g = torch.Generator().manual_seed(1234)
    return {
        "x1": torch.randn(GLOBAL_B, IN_DIM, generator=g),
        "x2": torch.randn(GLOBAL_B, IN_DIM, generator=g),
        "x3": torch.randn(GLOBAL_B, IN_DIM, generator=g),
    }


def _model() -> nn.Linear:
    torch.manual_seed(0)  # same initial weights on every rank and in the reference
    return nn.Linear(IN_DIM, OUT_DIM)


def _cases(gather: bool) -> dict[str, tuple[list[str], Callable[[Tensor, Tensor], Tensor]]]:
    """name -> (views fed view-major, loss(embeddings, per-image labels of this process))."""

    def rep(labels: Tensor, n: int) -> Tensor:
        return labels.repeat(n)

    def dclr(z: Tensor, _: Tensor) -> Tensor:
        n = z.shape[0] // 2
        return directclr_loss(z[:n], z[n:], d0=10, temperature=TAU, gather_distributed=gather)

    return {
        "fused": (
            ["x1", "x2"],
            lambda z, _: nt_xent_loss(z, temperature=TAU, gather_distributed=gather),
        ),
        "fused_decoupled": (
            ["x1", "x2"],
            lambda z, _: nt_xent_loss(
                z, temperature=TAU, decoupled=True, gather_distributed=gather
            ),
        ),
        "multicrop": (
            ["x1", "x2", "x3"],
            lambda z, _: nt_xent_loss(z, temperature=TAU, n_views=3, gather_distributed=gather),
        ),
        "supcon_two_view": (
            ["x1", "x2"],
            lambda z, y: nt_xent_loss(z, rep(y, 2), temperature=TAU, gather_distributed=gather),
        ),
        "supcon_two_view_decoupled": (
            ["x1", "x2"],
            lambda z, y: nt_xent_loss(
                z, rep(y, 2), temperature=TAU, decoupled=True, gather_distributed=gather
            ),
        ),
        "supcon_single_view": (
            ["x1"],
            lambda z, y: nt_xent_loss(z, y, temperature=TAU, gather_distributed=gather),
        ),
        "supcon_single_view_decoupled": (
            ["x1"],
            lambda z, y: nt_xent_loss(
                z, y, temperature=TAU, decoupled=True, gather_distributed=gather
            ),
        ),
        "directclr": (["x1", "x2"], dclr),
    }


CASE_LABELS = {
    "supcon_two_view": TWO_VIEW_LABELS,
    "supcon_two_view_decoupled": TWO_VIEW_LABELS,
    "supcon_single_view": SINGLE_VIEW_LABELS,
    "supcon_single_view_decoupled": DECOUPLED_LABELS,
}


def _run_case(
    model: nn.Module, name: str, sl: slice, gather: bool
) -> tuple[Tensor, list[Tensor]]:
    views, loss_fn = _cases(gather)[name]
    data = _data()
    labels = CASE_LABELS.get(name, torch.arange(GLOBAL_B))[sl]
    model.zero_grad(set_to_none=True)
    z = model(torch.cat([data[v][sl] for v in views]))  # one forward, views view-major
    loss = loss_fn(z, labels)
    loss.backward()
    return loss.detach(), [p.grad.detach().clone() for p in model.parameters()]


def _worker(rank: int, world_size: int, store: str, out_dir: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=world_size)
    try:
        torch.set_num_threads(1)
        ddp = nn.parallel.DistributedDataParallel(_model())
        sl = slice(rank * LOCAL_B, (rank + 1) * LOCAL_B)
        results = {name: _run_case(ddp, name, sl, gather=True) for name in _cases(True)}

        # gather_with_grad itself: rank r's slice receives the SUM of all ranks' grads.
        x = torch.full((3, 2), float(rank + 1), requires_grad=True)
        y = gather_with_grad(x)
        weights = torch.arange(y.numel(), dtype=torch.float32).view_as(y) * (rank + 1)
        (y * weights).sum().backward()
        results["gather_forward"] = y.detach()
        results["gather_grad"] = x.grad
        results["gather_no_grad"] = gather_no_grad(torch.tensor([rank, 10 + rank]))
        torch.save(results, Path(out_dir) / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


@pytest.fixture(scope="module")
def ddp_results(tmp_path_factory: pytest.TempPathFactory) -> list[dict]:
    tmp = tmp_path_factory.mktemp("ddp_losses")
    mp.spawn(_worker, args=(WORLD_SIZE, str(tmp / "store"), str(tmp)), nprocs=WORLD_SIZE)
    return [torch.load(tmp / f"rank{r}.pt") for r in range(WORLD_SIZE)]


@pytest.mark.ddp
@pytest.mark.parametrize("name", list(_cases(True)))
def test_ddp_gather_matches_single_process(ddp_results: list[dict], name: str) -> None:
    ref_loss, ref_grads = _run_case(_model(), name, slice(None), gather=False)
    rank_losses = torch.stack([res[name][0] for res in ddp_results])
    torch.testing.assert_close(rank_losses.mean(), ref_loss, rtol=1e-6, atol=1e-6)
    for res in ddp_results:  # DDP already averaged the gradients: identical on all ranks
        for g, rg in zip(res[name][1], ref_grads):
            torch.testing.assert_close(g, rg, rtol=1e-5, atol=1e-6)
    # The case is not trivially rank-independent: the local losses differ.
    assert not torch.allclose(rank_losses[0], rank_losses[1])


@pytest.mark.ddp
def test_ddp_without_gather_differs() -> None:
    """Sanity: without the gather each rank only sees its own negatives, so the mean
    rank loss (what the gather fixes) is not the global one."""
    ref_loss, _ = _run_case(_model(), "fused", slice(None), gather=False)
    local = [_run_case(_model(), "fused", slice(r * LOCAL_B, (r + 1) * LOCAL_B), False)[0]
             for r in range(WORLD_SIZE)]
    assert abs(torch.stack(local).mean().item() - ref_loss.item()) > 1e-3


@pytest.mark.ddp
def test_gather_with_grad_sums_gradients(ddp_results: list[dict]) -> None:
    expected_y = torch.cat([torch.full((3, 2), float(r + 1)) for r in range(WORLD_SIZE)])
    base = torch.arange(expected_y.numel(), dtype=torch.float32).view_as(expected_y)
    total = base * sum(r + 1 for r in range(WORLD_SIZE))  # sum over ranks of their weights
    for rank, res in enumerate(ddp_results):
        torch.testing.assert_close(res["gather_forward"], expected_y)
        torch.testing.assert_close(res["gather_grad"], total[rank * 3 : (rank + 1) * 3])
        assert res["gather_no_grad"].tolist() == [0, 10, 1, 11]
