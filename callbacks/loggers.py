"""Loggers: W&B that falls back to offline mode when no API key is configured."""

from __future__ import annotations

import netrc
import os
from pathlib import Path
from typing import Any

from lightning.pytorch.loggers import WandbLogger as _LightningWandbLogger


def wandb_credentials_available() -> bool:
    """Return whether W&B can authenticate (``WANDB_API_KEY`` or a ``~/.netrc`` entry)."""
    if os.environ.get("WANDB_API_KEY"):
        return True
    path = Path(os.environ.get("NETRC", Path.home() / ".netrc"))
    try:
        return path.is_file() and any("wandb" in host for host in netrc.netrc(path).hosts)
    except (netrc.NetrcParseError, OSError):
        return False


class WandbLogger(_LightningWandbLogger):
    """Lightning's ``WandbLogger`` that runs offline unless it can really sync.

    Offline mode is chosen when ``offline`` is ``None`` and either
    ``WANDB_MODE=offline`` (or ``disabled``/``dryrun``) is set or no credentials are
    found; offline runs can be uploaded later with ``wandb sync``.

    W&B's own environment variables ``WANDB_NAME``, ``WANDB_RUN_GROUP``, ``WANDB_JOB_TYPE``
    and ``WANDB_TAGS`` (comma-separated) take precedence over the config's ``name``,
    ``group``, ``job_type`` and ``tags``: the table runner sets them per step (the row as
    the name, ``<table>/<scale>`` as the group, the step as the job type).  A fit resumed with
    ``--ckpt_path`` continues the W&B run of its checkpoint (``id`` and ``resume="allow"``,
    set by the command line from the checkpoint's record).

    Args:
        project: W&B project.
        offline: Force offline (``True``) or online (``False``); ``None`` decides as above.
        save_dir: Directory of the local run files.
        name: Run name (the configs use the run name, ``${name}``).
        group: Run group (e.g. the runs of one table).
        job_type: Kind of run (e.g. ``pretrain``, ``finetune``).
        tags: Run tags.
        **kwargs: Forwarded to :class:`lightning.pytorch.loggers.WandbLogger` (``id``,
            ``resume``, ...).
    """

    def __init__(
        self,
        project: str = "contraseg",
        offline: bool | None = None,
        save_dir: str = "outputs",
        name: str | None = None,
        group: str | None = None,
        job_type: str | None = None,
        tags: list[str] | None = None,
        **kwargs: Any,
    ) -> None:
        if offline is None:
            mode = os.environ.get("WANDB_MODE", "").lower()
            offline = mode in ("offline", "disabled", "dryrun") or not wandb_credentials_available()
        # absolute: W&B's service process resolves relative paths against its own working
        # directory (the first run's), so in-process runs in other folders (the table runner's
        # steps) would write into the first one's
        save_dir = str(Path(save_dir).resolve())
        Path(save_dir).mkdir(parents=True, exist_ok=True)
        env_tags = [t.strip() for t in os.environ.get("WANDB_TAGS", "").split(",") if t.strip()]
        run = {"name": os.environ.get("WANDB_NAME") or name,
               "group": os.environ.get("WANDB_RUN_GROUP") or group,
               "job_type": os.environ.get("WANDB_JOB_TYPE") or job_type,
               "tags": env_tags or (list(tags) if tags else None)}  # fmt: skip
        run = {k: v for k, v in run.items() if v is not None}
        super().__init__(project=project, offline=offline, save_dir=save_dir, **run, **kwargs)
