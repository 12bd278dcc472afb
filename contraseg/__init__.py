"""contraseg: contrastive and self-supervised pretraining for label-efficient segmentation.

One namespace (``setup.cfg`` maps the repository's folders under it):

* :mod:`contraseg.lightning_modules`: the methods (LightningModules), losses, components;
* :mod:`contraseg.datamodules`: the data sets (LightningDataModules and readers);
* :mod:`contraseg.callbacks`: cross-cutting behaviour (checkpoints, monitors, pictures);
* :mod:`contraseg.experiments`: the command line, configs and the table runner;
* the neutral layer every package may import, which imports none of them: seeding and
  exact resume (:mod:`contraseg.seeding`), figures (:mod:`contraseg.figures`), sharded
  feature extraction (:mod:`contraseg.extraction`).

Trained weights out of a run (``contraseg export --ckpt F --out D``):
``contraseg.load_encoder(D)`` returns the timm encoder, ``contraseg.load_network(D)`` the
segmentation network (imported on first use, so importing the neutral layer stays light).
"""

from __future__ import annotations

from typing import Any

__version__ = "0.2.0"
__all__ = ["load_encoder", "load_network"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        from contraseg.lightning_modules.components import export

        return getattr(export, name)
    raise AttributeError(f"module 'contraseg' has no attribute {name!r}")
