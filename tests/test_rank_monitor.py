"""Tests for contraseg.callbacks.spectrum and the rank monitor (EmbeddingRankMonitor)."""

from __future__ import annotations

import csv
import math
from pathlib import Path
from types import SimpleNamespace

import lightning.pytorch as pl
import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger, WandbLogger
from matplotlib.figure import Figure
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset

from contraseg.callbacks.rank_monitor import EmbeddingRankMonitor
from contraseg.callbacks.spectrum import collapsed_dimensions, effective_rank, embedding_spectrum

# ----------------------------------------------------------------------------- helpers


def _orthonormal(rows: int, cols: int, seed: int) -> Tensor:
    """(rows, cols) float64 matrix with orthonormal columns (rows >= cols)."""
    g = torch.Generator().manual_seed(seed)
    q, _ = torch.linalg.qr(torch.randn(rows, cols, generator=g, dtype=torch.float64))
    return q


def _subspace_embeddings(n: int, d: int, k: int, seed: int = 0) -> Tensor:
    """Gaussian embeddings confined to a random k-dim subspace of R^d (exact rank k)."""
    g = torch.Generator().manual_seed(seed)
    basis = _orthonormal(d, k, seed + 1).T  # (k, d), orthonormal rows
    return torch.randn(n, k, generator=g, dtype=torch.float64) @ basis


class DictDataset(Dataset):
    def __init__(self, n: int, shape: tuple[int, ...] = (1, 4, 8), seed: int = 0) -> None:
        g = torch.Generator().manual_seed(seed)
        self.images = torch.randn(n, *shape, generator=g)

    def __len__(self) -> int:
        return self.images.shape[0]

    def __getitem__(self, index: int) -> dict:
        return {"image": self.images[index], "label": index % 3}


class _SortStub(nn.Module):
    """Minimal `_collect` target: fixed linear embedding, records its call context."""

    def __init__(self, in_features: int = 32, dim: int = 6) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(123)
        self.proj = nn.Linear(in_features, dim)
        with torch.no_grad():
            self.proj.weight.copy_(torch.randn(dim, in_features, generator=g))
            self.proj.bias.copy_(torch.randn(dim, generator=g))
        self.calls: list[tuple[bool, bool]] = []

    @property
    def device(self) -> torch.device:
        return torch.device("cpu")

    def embed(self, images: Tensor) -> Tensor:
        self.calls.append((self.training, torch.is_grad_enabled()))
        return self.proj(images.flatten(1))

    def all_gather(self, data: Tensor) -> Tensor:
        out = [torch.empty_like(data) for _ in range(dist.get_world_size())]
        dist.all_gather(out, data.contiguous())
        return torch.stack(out)


def _sorted_rows(z: Tensor) -> Tensor:
    return z[torch.argsort(z[:, 0])]


# ----------------------------------------------------------------------------- spectrum


def test_subspace_closed_form() -> None:
    n, d, k = 4000, 64, 8
    z = _subspace_embeddings(n, d, k)
    assert effective_rank(z) == pytest.approx(k, rel=0.1)
    assert collapsed_dimensions(embedding_spectrum(z, normalize=False)) == d - k
    # L2-normalised rows stay in the subspace: the collapse count is unchanged.
    assert collapsed_dimensions(embedding_spectrum(z, normalize=True)) == d - k


def test_isotropic_effective_rank_is_full() -> None:
    n, d = 100, 32
    z = 3.0 * _orthonormal(n, d, seed=5)  # orthogonal columns of equal norm
    assert effective_rank(z) == pytest.approx(d, abs=1e-3)
    assert collapsed_dimensions(embedding_spectrum(z, normalize=False)) == 0


def test_rank_one_effective_rank() -> None:
    g = torch.Generator().manual_seed(0)
    z = torch.randn(200, 1, generator=g) @ torch.randn(1, 16, generator=g)
    assert effective_rank(z) == pytest.approx(1.0, abs=1e-3)
    spectrum = embedding_spectrum(z, normalize=False)
    assert collapsed_dimensions(spectrum) == 15


def test_effective_rank_zero_matrix_and_float32() -> None:
    assert effective_rank(torch.zeros(10, 4)) == 0.0
    z = _subspace_embeddings(500, 16, 4).float()
    assert effective_rank(z) == pytest.approx(effective_rank(z.double()), rel=1e-4)


@pytest.mark.parametrize("normalize", [False, True])
def test_spectrum_matches_numpy_covariance(normalize: bool) -> None:
    g = torch.Generator().manual_seed(7)
    z = torch.randn(50, 6, generator=g, dtype=torch.float64) * torch.arange(1.0, 7.0).double()
    spectrum = embedding_spectrum(z, normalize=normalize)
    assert spectrum.dtype == torch.float64
    assert spectrum.shape == (6,)
    assert torch.all(spectrum[:-1] >= spectrum[1:])
    x = z.numpy()
    if normalize:
        x = x / np.linalg.norm(x, axis=1, keepdims=True)
    expected = np.sort(np.linalg.eigvalsh(np.cov(x, rowvar=False, bias=True)))[::-1]
    np.testing.assert_allclose(spectrum.numpy(), expected, rtol=1e-10, atol=1e-12)


def test_collapsed_dimensions_edge_cases() -> None:
    spectrum = torch.tensor([1.0, 0.5, 1e-3, 1e-6, 0.0])
    assert collapsed_dimensions(spectrum, rel_threshold=1e-5) == 2
    assert collapsed_dimensions(spectrum, rel_threshold=1e-2) == 3
    assert collapsed_dimensions(torch.zeros(4)) == 4
    with pytest.raises(ValueError, match="rel_threshold"):
        collapsed_dimensions(spectrum, rel_threshold=1.0)
    with pytest.raises(ValueError, match="1-D"):
        collapsed_dimensions(torch.ones(2, 2))


def test_spectrum_input_validation() -> None:
    with pytest.raises(ValueError, match="2-D"):
        embedding_spectrum(torch.ones(3))
    with pytest.raises(ValueError, match="2-D"):
        effective_rank(torch.ones(2, 3, 4))
    with pytest.raises(ValueError, match="eps"):
        effective_rank(torch.ones(3, 3), eps=-1.0)


# ----------------------------------------------------------------------------- callback units


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [
        ({"every_n_epochs": 0}, "every_n_epochs"),
        ({"num_samples": 1}, "num_samples"),
        ({"batch_size": 0}, "batch_size"),
        ({"rel_threshold": 0.0}, "rel_threshold"),
        ({"rel_threshold": 1.0}, "rel_threshold"),
        ({"rel_threshold": -0.5}, "rel_threshold"),
    ],
)
def test_constructor_validation(kwargs: dict, name: str) -> None:
    with pytest.raises(ValueError, match=name):
        EmbeddingRankMonitor(**kwargs)


def test_subset_is_fixed() -> None:
    monitor = EmbeddingRankMonitor(num_samples=5, seed=11)
    first = monitor._subset_indices(40)
    again = EmbeddingRankMonitor(num_samples=5, seed=11)._subset_indices(40)
    assert torch.equal(first, again)
    assert torch.equal(monitor._subset_indices(40), first)
    assert len(set(first.tolist())) == 5 and int(first.max()) < 40
    assert len(monitor._subset_indices(3)) == 3  # capped at the dataset size



class _FakeGather(nn.Module):
    """Simulates W ranks in one process: all_gather returns what every rank computed."""

    def __init__(self, world_size: int) -> None:
        super().__init__()
        self.stub, self.world_size, self.shards = _SortStub(), world_size, []

    @property
    def device(self) -> torch.device:
        return torch.device("cpu")

    def embed(self, images: Tensor) -> Tensor:
        return self.stub.embed(images)

    def all_gather(self, data: Tensor) -> Tensor:
        self.local = data  # what this rank embedded
        return torch.stack(self.shards)


@pytest.mark.parametrize(("n", "world_size"), [(21, 2), (5, 8), (12, 3), (7, 4)])
def test_sampler_padding_is_dropped_exactly(n: int, world_size: int) -> None:
    """DistributedSampler pads with the first items; the gathered subset has each once, in order."""
    dataset = DictDataset(40)
    monitor = EmbeddingRankMonitor(num_samples=n, batch_size=3, seed=5)
    reference = monitor._collect(_SortStub(), dataset)
    fake = _FakeGather(world_size)
    for rank in range(world_size):  # what each rank must embed: its sampler's padded shard
        sampler = torch.utils.data.DistributedSampler(
            range(n), num_replicas=world_size, rank=rank, shuffle=False)  # fmt: skip
        idx = monitor._subset_indices(len(dataset))[list(sampler)]
        with torch.no_grad():
            fake.shards.append(fake.stub.proj(dataset.images[idx].flatten(1)))
    for rank in range(world_size):
        gathered = monitor._collect(fake, dataset, rank=rank, world_size=world_size)
        torch.testing.assert_close(fake.local, fake.shards[rank])
        assert gathered.shape == (n, reference.shape[1])
        torch.testing.assert_close(gathered, reference)


def test_collect_single_process_restores_mode() -> None:
    stub = _SortStub().train()
    dataset = DictDataset(30)
    monitor = EmbeddingRankMonitor(num_samples=13, batch_size=4, seed=2)
    z = monitor._collect(stub, dataset)
    assert z.shape == (13, 6) and z.dtype == torch.float32
    assert stub.training  # restored
    assert stub.calls and all(call == (False, False) for call in stub.calls)  # eval, no grad
    idx = monitor._subset_indices(len(dataset))
    with torch.no_grad():
        expected = stub.proj(dataset.images[idx].flatten(1))
    torch.testing.assert_close(z, expected)


class _FakeWandb(WandbLogger):
    def log_image(self, key: str, images: list, step: int | None = None, **kwargs: object) -> None:
        self.calls.append((key, images, step))


class _FakeTensorBoard(TensorBoardLogger):
    @property
    def experiment(self) -> SimpleNamespace:
        return SimpleNamespace(add_figure=lambda *a, **k: self.calls.append((a, k)))


def test_plot_logged_to_image_loggers(tmp_path: Path) -> None:
    wandb_logger = object.__new__(_FakeWandb)  # bypass __init__: no wandb run is started
    wandb_logger.calls = []
    tb_logger = object.__new__(_FakeTensorBoard)
    tb_logger.calls = []
    trainer = SimpleNamespace(
        loggers=[wandb_logger, tb_logger, object()],
        log_dir=str(tmp_path),
        default_root_dir=str(tmp_path / "unused"),
        is_global_zero=True,
        current_epoch=3,
        global_step=7,
    )
    monitor = EmbeddingRankMonitor()
    spectrum = torch.tensor([4.0, 2.0, 1.0, 0.0], dtype=torch.float64)
    monitor._plot_and_log(trainer, spectrum, erank=2.5, collapsed=1)

    png = tmp_path / "spectra" / "epoch_0003.png"
    assert png.is_file() and png.stat().st_size > 0
    assert wandb_logger.calls == [("rank/spectrum", [str(png)], 7)]
    ((args, kwargs),) = tb_logger.calls
    assert args[0] == "rank/spectrum" and isinstance(args[1], Figure)
    assert kwargs["global_step"] == 7


# ----------------------------------------------------------------------------- Trainer run

RANK, DIM, IN_FEATURES = 4, 16, 32


class RankFourModule(pl.LightningModule):
    """Fixed linear embedding R^32 -> R^16 of exact rank 4 (W = U V^T, orthonormal U, V)."""

    def __init__(self) -> None:
        super().__init__()
        self.proj = nn.Linear(IN_FEATURES, DIM, bias=False)
        weight = _orthonormal(DIM, RANK, seed=1) @ _orthonormal(IN_FEATURES, RANK, seed=2).T
        with torch.no_grad():
            self.proj.weight.copy_(weight.float())
        self.proj.requires_grad_(False)
        self.scale = nn.Parameter(torch.ones(()))

    def embed(self, images: Tensor) -> Tensor:
        return self.proj(images.flatten(1))

    def training_step(self, batch: dict, batch_idx: int) -> Tensor:
        return (self.scale * self.proj(batch["image"].flatten(1))).pow(2).mean()

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        self.log("val_norm", self.proj(batch["image"].flatten(1)).norm(dim=1).mean())

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD([self.scale], lr=0.01)


class DictDataModule(pl.LightningDataModule):
    def __init__(self) -> None:
        super().__init__()
        self.train_set = DictDataset(32, seed=0)
        self.val_set = DictDataset(300, seed=1)

    def eval_dataset(self, split: str) -> Dataset:
        assert split == "val"
        return self.val_set

    def train_dataloader(self) -> DataLoader:
        return DataLoader(self.train_set, batch_size=8)

    def val_dataloader(self) -> DataLoader:
        return DataLoader(self.val_set, batch_size=64)


def _fit(tmp_path: Path, monitor: EmbeddingRankMonitor) -> tuple[pl.Trainer, CSVLogger]:
    logger = CSVLogger(tmp_path)
    trainer = pl.Trainer(
        accelerator="cpu",
        devices=1,
        max_epochs=2,
        limit_train_batches=2,
        limit_val_batches=1,
        enable_checkpointing=False,
        enable_model_summary=False,
        logger=logger,
        callbacks=[monitor],
    )
    trainer.fit(RankFourModule(), datamodule=DictDataModule())
    return trainer, logger


def _logged_rows(logger: CSVLogger) -> list[dict[str, str]]:
    with open(Path(logger.log_dir) / "metrics.csv", newline="") as fh:
        return [row for row in csv.DictReader(fh) if row.get("rank/effective_rank")]


def test_callback_in_trainer(tmp_path: Path) -> None:
    monitor = EmbeddingRankMonitor(num_samples=256, batch_size=64)
    trainer, logger = _fit(tmp_path, monitor)

    assert trainer.callback_metrics["rank/effective_rank"].item() == pytest.approx(RANK, abs=0.25)
    assert trainer.callback_metrics["rank/collapsed_dims"].item() == DIM - RANK
    assert trainer.callback_metrics["rank/embedding_dim"].item() == DIM
    assert 0.0 < trainer.callback_metrics["rank/top1_ratio"].item() < 1.0
    assert monitor.last_collapsed == DIM - RANK
    assert monitor.last_effective_rank == pytest.approx(RANK, abs=0.25)
    assert monitor.last_spectrum is not None and monitor.last_spectrum.shape == (DIM,)

    rows = _logged_rows(logger)
    assert len(rows) == 2  # one per epoch, none from the sanity check
    for row in rows:
        assert float(row["rank/effective_rank"]) == pytest.approx(RANK, abs=0.25)
        assert float(row["rank/collapsed_dims"]) == DIM - RANK

    spectra = Path(logger.log_dir) / "spectra"
    assert sorted(p.name for p in spectra.glob("*.png")) == ["epoch_0000.png", "epoch_0001.png"]


def test_callback_every_n_epochs_without_plots(tmp_path: Path) -> None:
    monitor = EmbeddingRankMonitor(every_n_epochs=2, num_samples=64, save_plots=False)
    _, logger = _fit(tmp_path, monitor)
    assert len(_logged_rows(logger)) == 1  # only after epoch index 1
    assert not (Path(logger.log_dir) / "spectra").exists()
    assert monitor.last_collapsed == DIM - RANK


# ----------------------------------------------------------------------------- DDP gather

_DDP_DATASET_SIZE, _DDP_NUM_SAMPLES, _WORLD_SIZE = 37, 21, 2  # 21 is odd: rank 1 is padded


def _ddp_worker(rank: int, world_size: int, store: str, out_dir: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=world_size)
    try:
        monitor = EmbeddingRankMonitor(num_samples=_DDP_NUM_SAMPLES, batch_size=4, seed=3)
        # rank / world_size are taken from torch.distributed here.
        z = monitor._collect(_SortStub(), DictDataset(_DDP_DATASET_SIZE))
        torch.save(z, Path(out_dir) / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def test_ddp_gather_matches_single_process(tmp_path: Path) -> None:
    mp.spawn(
        _ddp_worker,
        args=(_WORLD_SIZE, str(tmp_path / "store"), str(tmp_path)),
        nprocs=_WORLD_SIZE,
        join=True,
    )
    monitor = EmbeddingRankMonitor(num_samples=_DDP_NUM_SAMPLES, batch_size=4, seed=3)
    reference = monitor._collect(_SortStub(), DictDataset(_DDP_DATASET_SIZE))
    assert reference.shape[0] == _DDP_NUM_SAMPLES
    for rank in range(_WORLD_SIZE):
        z = torch.load(tmp_path / f"rank{rank}.pt")
        assert z.shape == reference.shape  # padding duplicates dropped
        assert torch.unique(z, dim=0).shape[0] == _DDP_NUM_SAMPLES
        torch.testing.assert_close(z, reference)  # same rows, same order as one process
    assert math.isfinite(effective_rank(reference))
