"""``contraseg export --ckpt run.ckpt --out DIR``: a run's encoder (and network) as plain files.

Reads a contraseg checkpoint (weights only), rebuilds its task from the hyper-parameters the
checkpoint holds (``init_checkpoint`` is not read: the checkpoint has every weight) and
writes ``encoder.pth``, ``network.pth`` (segmentation tasks) and ``contraseg.json``
(:mod:`contraseg.lightning_modules.components.export`).  Load them with
``contraseg.load_encoder(out)`` / ``contraseg.load_network(out)``, or with timm / smp alone
(``docs/export.md``).
"""

from __future__ import annotations

import argparse
import hashlib
import importlib
from pathlib import Path
from typing import Any

from torch import nn

from contraseg.experiments.compose import current_class_path
from contraseg.experiments.errors import init_arguments
from contraseg.lightning_modules.components.checkpoint_init import load_checkpoint_file
from contraseg.lightning_modules.components.export import write_export

__all__ = ["load_task", "main"]


def load_task(path: str | Path) -> tuple[nn.Module, dict[str, Any]]:
    """The task of a contraseg checkpoint with its weights, and the checkpoint's provenance.

    Raises:
        ValueError: The file is no contraseg task checkpoint (no class path or weights), or its
            weights do not fit the task its hyper-parameters describe.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"--ckpt {path}: no such file")
    ckpt = load_checkpoint_file(path)
    hparams = dict(ckpt.get("hyper_parameters") or {})
    class_path = hparams.pop("_class_path", None)
    if not class_path or "state_dict" not in ckpt:
        raise ValueError(f"{path} is not a checkpoint of a contraseg run (it has no "
                         "hyper_parameters._class_path or no state_dict)")  # fmt: skip
    class_path = current_class_path(class_path)  # written before the packages moved?
    hparams.pop("_instantiator", None)
    module, _, name = class_path.rpartition(".")
    cls = getattr(importlib.import_module(module), name)
    # the hyper-parameters the class takes (a CLI-linked one it does not, e.g. the data's
    # num_classes for an image-level task, is recorded too)
    accepted = set(init_arguments(cls))
    kwargs = {k: v for k, v in hparams.items() if k in accepted}
    task = cls(**{**kwargs, "init_checkpoint": None})
    task.on_load_checkpoint(ckpt)  # the task's own state (e.g. the class names in use)
    missing, unexpected = task.load_state_dict(ckpt["state_dict"], strict=False)
    if missing or unexpected:
        raise ValueError(f"{path}: its weights do not fit {class_path} built from its own "
                         f"hyper-parameters (missing {missing[:3]}, unexpected "
                         f"{unexpected[:3]})")  # fmt: skip
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    source = {"checkpoint": str(path.resolve()), "sha256": digest, "class_path": class_path,
              "global_step": ckpt.get("global_step"), "epoch": ckpt.get("epoch")}  # fmt: skip
    return task.eval(), source


def main(argv: list[str] | None = None) -> int:
    """Run ``contraseg export``; returns 0 (errors exit 2 with the message)."""
    parser = argparse.ArgumentParser(prog="contraseg export", description=__doc__.splitlines()[0])
    parser.add_argument("--ckpt", required=True, help="a contraseg checkpoint (.ckpt)")
    parser.add_argument("--out", required=True, help="output folder")
    args = parser.parse_args(argv)
    try:
        task, source = load_task(args.ckpt)
    except (FileNotFoundError, ValueError) as err:
        parser.error(str(err))
    manifest = write_export(task, args.out, source)
    files = [manifest["encoder"]["file"], *(["network.pth"] if "network" in manifest else []),
             "contraseg.json"]  # fmt: skip
    print(f"exported {source['class_path']} (step {source['global_step']}) to {args.out}: "
          + ", ".join(files))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
