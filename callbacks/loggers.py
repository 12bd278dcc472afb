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

    Args:
        project: W&B project.
        offline: Force offline (``True``) or online (``False``); ``None`` decides as above.
        save_dir: Directory of the local run files.
        **kwargs: Forwarded to :class:`lightning.pytorch.loggers.WandbLogger`.
    """

    def __init__(
        self,
        project: str = "contraseg",
        offline: bool | None = None,
        save_dir: str = "outputs",
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
        super().__init__(project=project, offline=offline, save_dir=save_dir, **kwargs)
