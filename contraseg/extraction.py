"""Feature extraction over a dataset, sharded over DDP ranks and gathered in dataset order.

Used by the rank monitor (a fixed subset of an evaluation split) and the prototype update
(the whole training set under the evaluation transform).  The dataset goes through a
``DataLoader`` with a ``DistributedSampler`` (no shuffling): rank ``r`` embeds positions
``r, r + W, ...`` of the dataset padded to a multiple of ``W`` with its first items, so
after ``all_gather`` the padded sequence is ``gathered.transpose(0, 1).flatten(0, 1)`` and
its first ``n`` rows are the dataset, each item exactly once, in order (no norm-halving
trick as in PCL/HCSC, where padded duplicates were summed twice).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset, DistributedSampler
from tqdm.auto import tqdm

__all__ = ["extract_features"]


def _collate(items: list[dict[str, Any]]) -> dict[str, Tensor]:
    """Images, image labels (``-1`` where an item has none) and masks (if all have one)."""
    batch = {"image": torch.stack([torch.as_tensor(item["image"]) for item in items]),
             "label": torch.tensor([int(item.get("label", -1)) for item in items])}  # fmt: skip
    if all("mask" in item for item in items):
        batch["mask"] = torch.stack([torch.as_tensor(item["mask"]) for item in items])
    return batch


def _world(rank: int | None, world_size: int | None) -> tuple[int, int]:
    initialized = torch.distributed.is_available() and torch.distributed.is_initialized()
    if world_size is None:
        world_size = torch.distributed.get_world_size() if initialized else 1
    if rank is None:
        rank = torch.distributed.get_rank() if initialized else 0
    if not 0 <= rank < world_size:
        raise ValueError(f"rank must be in [0, {world_size}), got {rank}")
    return rank, world_size


def _ordered(gathered: Tensor, n: int, world_size: int, what: str) -> Tensor:
    if gathered.shape[0] != world_size:
        raise RuntimeError(f"all_gather of the {what} returned shape {tuple(gathered.shape)}, "
                           f"expected ({world_size}, ...)")  # fmt: skip
    return gathered.detach().cpu().transpose(0, 1).flatten(0, 1)[:n]


@torch.no_grad()
def extract_features(
    embed: Callable[[Tensor], Tensor],
    dataset: Dataset,
    device: torch.device,
    batch_size: int = 256,
    num_workers: int = 0,
    rank: int | None = None,
    world_size: int | None = None,
    all_gather: Callable[[Tensor], Tensor] | None = None,
    module: nn.Module | None = None,
    convert_input: Callable[[Tensor], Tensor] | None = None,
    progress: bool = False,
    desc: str = "Extracting features",
    seed: int = 0,
    with_labels: bool = True,
    inputs: Callable[[dict[str, Tensor]], Tensor] | None = None,
) -> tuple[Tensor, Tensor | None]:
    """Embed every item of ``dataset`` (module docstring), identical result on every rank.

    Args:
        embed: ``(B, C, H, W) -> (B, D)`` (called without gradients).
        dataset: Items ``{"image": Tensor, "label": int (optional), ...}``.
        device: Device the images are moved to.
        batch_size: Images per batch and rank.
        num_workers: DataLoader workers.
        rank: This rank (default: ``torch.distributed``'s, or 0).
        world_size: Number of ranks (default: ``torch.distributed``'s, or 1).
        all_gather: ``(n, ...) -> (world_size, n, ...)`` (e.g. ``LightningModule.all_gather``),
            required when ``world_size > 1``.
        module: Put in eval mode while embedding, its mode restored afterwards.
        convert_input: Transform of each image batch (the precision plugin's).
        progress: Show a tqdm bar.
        desc: Label of the bar.
        seed: Seed of the loader's private generator (the global RNG is not touched).
        with_labels: Also gather the items' labels.
        inputs: Batch (``image``, ``label``, ``mask``) -> encoder input (default: the
            images), e.g. a task's ``eval_inputs`` that applies an attention mask.

    Returns:
        ``(features (n, D) float32 CPU, labels (n,) long CPU or None)`` in dataset order.

    Raises:
        ValueError: If ``embed`` does not return ``(B, D)`` or ``all_gather`` is missing.
    """
    rank, world_size = _world(rank, world_size)
    if world_size > 1 and all_gather is None:
        raise ValueError("extract_features: all_gather is required with world_size > 1")
    sampler = DistributedSampler(dataset, num_replicas=world_size, rank=rank, shuffle=False)
    loader = DataLoader(dataset, batch_size=batch_size, sampler=sampler, collate_fn=_collate,
                        num_workers=num_workers,
                        generator=torch.Generator().manual_seed(seed))  # fmt: skip
    was_training = module.training if module is not None else False
    chunks, label_chunks = [], []
    try:
        if module is not None:
            module.eval()
        for batch in tqdm(loader, desc=desc, disable=not progress, leave=False,
                          dynamic_ncols=True, unit="batch"):  # fmt: skip
            labels = batch["label"]
            batch = {k: v.to(device, non_blocking=True) for k, v in batch.items()}
            images = batch["image"] if inputs is None else inputs(batch)
            if convert_input is not None:
                images = convert_input(images)
            out = embed(images)
            if out.ndim != 2 or out.shape[0] != images.shape[0]:
                raise ValueError(f"embed() must return a (B, D) tensor with B={images.shape[0]}, "
                                 f"got shape {tuple(out.shape)}")  # fmt: skip
            chunks.append(out.detach().float())
            label_chunks.append(labels.to(out.device))
    finally:
        if module is not None:
            module.train(was_training)
    features, labels = torch.cat(chunks), torch.cat(label_chunks)
    n = len(dataset)  # type: ignore[arg-type]
    if world_size == 1:
        return features.cpu(), labels.cpu() if with_labels else None
    assert all_gather is not None
    features = _ordered(all_gather(features), n, world_size, "features")
    if not with_labels:
        return features, None
    return features, _ordered(all_gather(labels), n, world_size, "labels")
