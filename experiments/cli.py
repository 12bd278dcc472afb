"""The contraseg command line: ``python experiments/run.py {fit,validate,test,predict} ...``.

A thin :class:`lightning.pytorch.cli.LightningCLI` in subclass mode: any
LightningModule, LightningDataModule, callback or logger class can be chosen with
``class_path`` in YAML and every argument overridden on the command line
(``--model.temperature 0.1``).  Config files compose (``defaults``, ``${name}`` and
``--run_name``: :mod:`contraseg.experiments.compose`).  The data module's ``in_channels``,
``num_classes`` (segmentation classes) and ``probe_classes`` (image-level classes of the online
evaluators) are linked into the model arguments of the same name, where the model has one.
"""

from __future__ import annotations

import functools
import os
import sys
import warnings
from pathlib import Path
from typing import Any

import yaml
from lightning.pytorch import LightningDataModule, LightningModule, Trainer
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI, SaveConfigCallback

from contraseg.callbacks.checkpoint import (
    CheckpointFolderInUseError,
    RunCheckpoint,
    check_run_folder,
)
from contraseg.experiments.compose import current_class_path, expand_configs
from contraseg.experiments.errors import ContrasegParser
from contraseg.lightning_modules.components.checkpoint_init import load_checkpoint_file

LINKED = ("in_channels", "num_classes", "probe_classes")
TRUST_ENV = "CONTRASEG_TRUST_CHECKPOINTS"


def _unsafe_load_requested(config: Any) -> bool:
    """Whether the run asks torch to unpickle checkpoints fully (``weights_only=False``)."""
    forced = os.environ.get("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "").lower() in ("1", "y", "yes",
                                                                               "true")  # fmt: skip
    return forced or config.get("weights_only") is False


class LoggerSaveConfigCallback(SaveConfigCallback):
    """Save the resolved config next to the run and send it to every logger (e.g. W&B)."""

    def save_config(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        """Log the resolved configuration (``config.yaml``'s content) to every logger.

        Under one ``config`` key, nested as in the file: W&B shows ``config.model.init_args.lr``
        and the CSV logger's ``hparams.yaml`` holds the same tree (the task's own
        hyper-parameters, which Lightning logs at fit start, sit beside it).
        """
        resolved = yaml.safe_load(self.parser.dump(self.config, skip_none=False, format="yaml"))
        for logger in trainer.loggers:
            logger.log_hyperparams({"config": resolved})


class ContrasegCLI(LightningCLI):
    """LightningCLI with contraseg's defaults and fail-fast configuration errors."""

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        """Link the data set's channels and class counts into the model."""
        for name in LINKED:
            parser.link_arguments(f"data.{name}", f"model.init_args.{name}",
                                  apply_on="instantiate")  # fmt: skip

    def parse_arguments(self, parser: LightningArgumentParser, args: Any) -> None:
        """Parse ``args`` (``None``: ``sys.argv``) after composing config files' ``defaults``."""
        if isinstance(args, dict):
            return super().parse_arguments(parser, args)
        argv = list(sys.argv[1:] if args is None else args)
        try:
            argv = expand_configs(argv)
        except (ValueError, FileNotFoundError) as err:
            parser.error(str(err))
        self.config = parser.parse_args(argv)
        return None

    def _parse_ckpt_path(self) -> None:
        """Check ``--ckpt_path``: readable as weights only, and written by the config's model.

        An unreadable file, or a checkpoint of another model class than the config's (which
        Lightning would silently switch to), is a parser error naming the file and classes.
        ``last`` (and ``best``) are checked the same way once the trainer knows its checkpoint
        folder (:meth:`_run_subcommand`).
        """
        sub = self.config.get("subcommand")
        path = self.config[sub].get("ckpt_path") if sub else None
        if path and path not in ("last", "best", "hpc"):
            if not Path(path).is_file():
                self.parser.error(f"--ckpt_path {path}: no such file")
            self._check_checkpoint(str(path), sub)
        # Lightning would now overwrite the config's model arguments with the checkpoint's
        # hyper-parameters; the config stays the one source of truth here (same class checked)
        if path and sub in ("validate", "test", "predict"):
            # the fitted checkpoint holds every weight: the pretraining file the encoder was
            # initialised from (model.init_checkpoint) is neither read nor required
            init_args = (self.config[sub].get("model") or {}).get("init_args") or {}
            if init_args.get("init_checkpoint"):
                init_args["init_checkpoint"] = None

    def _check_checkpoint(self, path: str, sub: str) -> None:
        """The class check and the weights-only policy (``docs/checkpoints.md``) for ``path``.

        contraseg writes checkpoints of tensors and plain data: they load with
        ``weights_only=True``, which cannot run code.  A file that does not (a pickle with
        objects, a file of unknown origin) is refused, also when the user asked for
        ``weights_only=False`` (``--weights_only false`` or ``TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD``),
        because unpickling it runs any code it holds, unless ``CONTRASEG_TRUST_CHECKPOINTS=1``
        says the user trusts it.
        """
        try:
            hparams = load_checkpoint_file(path).get("hyper_parameters") or {}
        except ValueError as err:
            if _unsafe_load_requested(self.config[sub]) and os.environ.get(TRUST_ENV) == "1":
                warnings.warn(f"--ckpt_path {path} is not a weights-only checkpoint; loading it "
                              f"with weights_only=False ({TRUST_ENV}=1) runs any code the file "
                              "holds", stacklevel=2)  # fmt: skip
                return
            self.parser.error(
                f"--ckpt_path: {err}. contraseg loads checkpoints as weights only: unpickling "
                "anything else (weights_only=False) runs any code the file holds. For a file you "
                f"trust, set {TRUST_ENV}=1 and pass --weights_only false"
            )
        theirs = hparams.get("_class_path")
        if isinstance(theirs, str):
            theirs = current_class_path(theirs)  # written before the packages moved?
        ours = (self.config[sub].get("model") or {}).get("class_path")
        if theirs and ours and theirs != ours:
            self.parser.error(
                f"--ckpt_path {path} is a checkpoint of {theirs}, but the config's model is "
                f"{ours}: resume with the config that wrote it, or initialise this model's "
                f"encoder with --model.init_args.init_checkpoint {path}"
            )

    def _run_subcommand(self, subcommand: str) -> None:
        """Check ``--ckpt_path last`` / ``best`` as an explicit path, then run."""
        name = self.config_init[subcommand].get("ckpt_path")
        callback = self.trainer.checkpoint_callback
        if name in ("last", "best") and callback is not None and callback.dirpath:
            path = Path(callback.dirpath) / f"{name}.ckpt"
            if path.is_file():
                self._check_checkpoint(str(path), subcommand)
        super()._run_subcommand(subcommand)

    def before_instantiate_classes(self) -> None:
        """Refuse a fresh fit into a folder holding another run's checkpoints, early.

        Before any class (logger, W&B run, data) is built; ``RunCheckpoint`` checks again
        when the fit starts (a folder it finds by default).
        """
        sub = self.config.get("subcommand")
        if sub != "fit":
            return
        trainer = self.config[sub].get("trainer") or {}
        if self.config[sub].get("ckpt_path"):
            self._continue_logger_runs(trainer, self.config[sub]["ckpt_path"])
            return
        if trainer.get("fast_dev_run"):
            return
        for init_args in _entries(trainer.get("callbacks"), RunCheckpoint.__name__):
            if init_args.get("dirpath"):
                try:
                    check_run_folder(init_args["dirpath"], bool(init_args.get("overwrite")))
                except CheckpointFolderInUseError as err:
                    self.parser.error(str(err))

    def _continue_logger_runs(self, trainer: Any, ckpt_path: str) -> None:
        """A resumed fit logs into the runs it started: the same W&B run id, CSV version.

        ``RunCheckpoint`` records the loggers' versions in every checkpoint; a logger of the
        config without its own ``id`` / ``version`` takes the recorded one (W&B with
        ``resume="allow"``).
        """
        path = Path(ckpt_path)
        if ckpt_path in ("last", "best"):
            folders = [a.get("dirpath") for a in _entries(trainer.get("callbacks"),
                                                          RunCheckpoint.__name__)]  # fmt: skip
            path = Path(next((f for f in folders if f), ".")) / f"{ckpt_path}.ckpt"
        if not path.is_file():
            return
        try:
            recorded = load_checkpoint_file(path).get("loggers") or []
        except ValueError:
            return  # refused or reported by _check_checkpoint
        for name, key, extra in (("WandbLogger", "id", {"resume": "allow"}),
                                 ("CSVLogger", "version", {})):  # fmt: skip
            versions = [r["version"] for r in recorded if r.get("class") == name]
            for init_args, version in zip(_entries(trainer.get("logger"), name), versions):
                if init_args.get(key) is None and version is not None:
                    init_args[key] = version
                    for k, v in extra.items():
                        init_args[k] = v

    def instantiate_classes(self) -> None:
        """Instantiate, turning constructor validation errors into parser errors."""
        try:
            super().instantiate_classes()
        except (ValueError, FileNotFoundError, NotADirectoryError) as err:
            self.parser.error(f"invalid configuration: {err}")


def _entries(value: Any, class_name: str) -> list[Any]:
    """The ``init_args`` of the config entries (one or a list) of the class named so."""
    entries = value if isinstance(value, list) else [value] if value else []
    out = []
    for entry in entries:
        if hasattr(entry, "get") and str(entry.get("class_path", "")).rpartition(".")[2] == \
                class_name:  # fmt: skip
            if entry.get("init_args") is None:
                entry["init_args"] = {}
            out.append(entry["init_args"])
    return out


# the CLI's construction, shared by main() and the resolving parser (one source of truth)
_CLI_KWARGS: dict[str, Any] = {
    "model_class": LightningModule,
    "datamodule_class": LightningDataModule,
    "subclass_mode_model": True,
    "subclass_mode_data": True,
    "save_config_callback": LoggerSaveConfigCallback,
    "save_config_kwargs": {"overwrite": True},
    "seed_everything_default": 0,
    "auto_configure_optimizers": False,
    "parser_class": ContrasegParser,
}


class _ResolvingCLI(ContrasegCLI):
    """Builds the ``fit`` parser only: no parsing, seeding, instantiating or running."""

    def parse_arguments(self, parser: LightningArgumentParser, args: Any) -> None:  # noqa: D102
        self.config = {}

    def _set_seed(self) -> None:  # noqa: D102 - the global RNG stays untouched
        pass

    def instantiate_classes(self) -> None:  # noqa: D102
        pass


@functools.lru_cache(maxsize=1)
def _fit_parser() -> LightningArgumentParser:
    """The parser of ``fit`` (built once per process: building it costs ~0.3 s)."""
    return _ResolvingCLI(**{**_CLI_KWARGS, "save_config_callback": None}, run=False).parser


def resolve_config(args: list[str]) -> str:
    """The complete configuration of a ``fit`` command, as YAML, without running it.

    Every argument is filled in: the config files (their ``defaults`` composed), the
    command-line overrides and the classes' own default values, so two commands give the same
    text exactly when they configure the same run, and editing a config file, one of its
    ``defaults`` or a class default changes the text.  The table runner keys its steps by it.

    Args:
        args: Command-line arguments of ``fit``, e.g. ``["fit", "--config", "cfg.yaml"]``
            (``--ckpt_path`` is not an argument here).

    Returns:
        The resolved configuration (YAML).

    Raises:
        SystemExit: The arguments do not parse (the parser's message on stderr).
    """
    args = list(args[1:] if args[:1] == ["fit"] else args)
    parser = _fit_parser()
    return parser.dump(parser.parse_args(expand_configs(args)), format="yaml")


def main(args: list[str] | None = None, run: bool = True) -> ContrasegCLI:
    """Run the CLI.

    Args:
        args: Command-line arguments, e.g. ``["fit", "--config", "cfg.yaml"]``;
            ``None`` reads ``sys.argv`` (the console script and ``run.py``).
        run: Execute the subcommand (``False``: only instantiate).

    Returns:
        The CLI object (``cli.trainer``, ``cli.model``, ``cli.datamodule``).
    """
    return ContrasegCLI(**_CLI_KWARGS, args=args, run=run)

