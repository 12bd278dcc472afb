"""Seconds per training step and per 50-step epoch of GRACE and ARIEL on the embedded CSBM graph.

The configs' recipes (``grace_csbm.yaml``: the whole 2,000-node graph per step;
``ariel_csbm.yaml``: a 500-node subgraph, 5 PGD steps of the dense attack, then GRACE's loss
of three views) are timed step by step outside a Trainer (batch gathering, views, attack,
forward, backward, Adam), in interleaved rounds so that the variants share the machine's
state (a shared 2-core machine varies 2-5x over minutes: read the ratios).  Also timed alone:
ARIEL's attack (``ARIEL.attack``) and one evaluation of the official protocol (20 splits,
5-fold search over 20 values of C) on the whole graph's embeddings.

Run::

    python benchmarks/graphs.py                  # 3 rounds of 10 steps per variant
    python benchmarks/graphs.py --rounds 5 --steps 20 --threads 2
    python benchmarks/graphs.py --device cuda
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from typing import Any

import torch

from contraseg.datamodules.graphs import CSBMDataModule
from contraseg.lightning_modules import ARIEL, GRACE
from contraseg.lightning_modules.evaluators.node_classification import (
    NodeClassificationProtocol,
    node_classification_accuracy,
)
from contraseg.seeding import SampleKey

RECIPE: dict[str, Any] = {  # grace_csbm.yaml / ariel_csbm.yaml (the Cora recipe)
    "hidden_channels": 128, "temperature": 0.4, "drop_edge": (0.2, 0.4),
    "drop_feature": (0.3, 0.4),
    "projector": {"hidden_dims": [128], "out_dim": 128, "batch_norm": False, "activation": "elu"},
}  # fmt: skip


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _stepper(name: str, device: torch.device) -> Callable[[int], None]:
    """One optimiser step of ``name`` on batch ``i`` (as the Trainer would feed it)."""
    subgraph = 500 if name.startswith("ARIEL") else None
    dm = CSBMDataModule(subgraph_nodes=subgraph, sample_isolated=subgraph is None,
                        normalize_features=False)  # fmt: skip
    steps = dm.train_dataloader().dataset
    if name == "GRACE (whole graph)":
        model: GRACE = GRACE(in_channels=dm.in_channels, **RECIPE)
    else:
        weight = 0.0 if "no attack" in name else 0.5
        model = ARIEL(in_channels=dm.in_channels, adversarial_weight=weight, **RECIPE)
    model.to(device).train()
    optimizer = torch.optim.Adam(model.parameters(), lr=5e-4, weight_decay=1e-5)

    def step(i: int) -> None:
        item = steps[SampleKey(0, 0, i)]
        batch = {k: v.to(device) if torch.is_tensor(v) else v for k, v in item.items()}
        batch = dm.on_after_batch_transfer(batch, 0)
        optimizer.zero_grad()
        model.training_loss(batch).loss.backward()
        optimizer.step()

    step.model, step.dm = model, dm  # type: ignore[attr-defined]
    return step


def main() -> None:
    """Print the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=10, help="steps per variant and round")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    names = ["GRACE (whole graph)", "ARIEL, no attack (500-node subgraphs)", "ARIEL"]
    steppers = {n: _stepper(n, device) for n in names}
    times: dict[str, list[float]] = {n: [] for n in names}
    for n in names:  # warm-up
        steppers[n](10_000)
    for r in range(args.rounds):
        for n in names:
            _sync(device)
            start = time.perf_counter()
            for i in range(args.steps):
                steppers[n](r * args.steps + i)
            _sync(device)
            times[n].append((time.perf_counter() - start) / args.steps)
    ariel = steppers["ARIEL"]
    model, dm = ariel.model, ariel.dm  # type: ignore[attr-defined]
    item = dm.on_after_batch_transfer(
        {k: v.to(device) if torch.is_tensor(v) else v
         for k, v in dm.train_dataloader().dataset[SampleKey(0, 0, 1)].items()}, 0)  # fmt: skip
    view1 = model.views(item["x"], item["edge_index"])[0]
    attack = []
    for _ in range(args.rounds):
        _sync(device)
        start = time.perf_counter()
        model.attack(view1, item["x"], item["edge_index"])
        _sync(device)
        attack.append(time.perf_counter() - start)
    graph = dm.val_dataloader().dataset[0]
    whole = dm.on_after_batch_transfer(
        {k: v.to(device) if torch.is_tensor(v) else v for k, v in graph.items()}, 0)
    with torch.no_grad():
        z = model.embed_graph(whole["x"], whole["edge_index"])
    official = NodeClassificationProtocol(repeats=20, folds=5,
                                          c_grid=tuple(2.0**k for k in range(-10, 10)))  # fmt: skip
    start = time.perf_counter()
    accuracy, _ = node_classification_accuracy(z, whole["y"], official)
    evaluation = time.perf_counter() - start
    base = statistics.median(times[names[0]])
    print(f"device {device}, threads {torch.get_num_threads()}, {args.rounds} rounds x "
          f"{args.steps} steps; CSBM 2,000 nodes, 500 features; medians over rounds\n")
    print("| variant | s / step | s / 50-step epoch | x GRACE |")
    print("|---|---|---|---|")
    for n in names:
        med = statistics.median(times[n])
        print(f"| {n} | {med:.4f} | {50 * med:.2f} | {med / base:.2f} |")
    print(f"\nARIEL's attack alone (5 PGD steps, 500 nodes): {statistics.median(attack):.4f} s")
    print(f"one evaluation, official protocol (20 splits x 5 folds x 20 C): {evaluation:.1f} s "
          f"(accuracy {accuracy:.3f} after {args.rounds * args.steps + 1} steps)")


if __name__ == "__main__":
    main()
