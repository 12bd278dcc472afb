"""Packaging and the command line's contract: one namespace, exit statuses, an installable wheel.

* ``setup.cfg`` maps the repository's folders under ``contraseg`` and lists every package;
* old class paths (``callbacks.X``) are refused with the new one named;
* ``contraseg``, ``experiments/run.py`` and ``experiments/reproduce.py`` exit 0 on success
  and non-zero on failure (subprocesses, as a shell, SLURM or CI sees them);
* the built wheel, installed into a fresh virtual environment outside the repository, runs
  ``contraseg fit`` and ``contraseg reproduce --dry-run`` from a folder holding its own
  ``callbacks.py`` and ``datamodules.py``.
"""

from __future__ import annotations

import configparser
import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest
from conftest import quickstart_tiny

from contraseg.experiments.cli import main

REPO = Path(__file__).resolve().parents[1]
QUICK = str(REPO / "experiments" / "configs" / "quickstart.yaml")
FOLDERS = ("callbacks", "datamodules", "experiments", "lightning_modules")
BIN = Path(sys.executable).parent
TINY_FIT = ["fit", "--config", QUICK, *quickstart_tiny(16), "--trainer.max_epochs", "1"]


def _setup_cfg() -> configparser.ConfigParser:
    cfg = configparser.ConfigParser()
    cfg.read(REPO / "setup.cfg")
    return cfg


def test_setup_cfg_lists_every_package_under_the_namespace() -> None:
    options = _setup_cfg()["options"]
    mapping = dict(line.split(" = ") for line in options["package_dir"].strip().splitlines())
    assert mapping == {"contraseg": "contraseg", **{f"contraseg.{f}": f for f in FOLDERS}}
    listed = set(options["packages"].split())
    found = {"contraseg"} | {
        "contraseg." + ".".join(p.parent.relative_to(REPO).parts)
        for folder in FOLDERS for p in (REPO / folder).rglob("__init__.py")
    }  # fmt: skip
    assert listed == found
    console = _setup_cfg()["options.entry_points"]["console_scripts"].strip()
    assert console == "contraseg = contraseg.experiments.console:main"


def test_old_class_paths_are_refused_naming_the_new_one(tmp_path: Path, capsys) -> None:
    config = tmp_path / "old.yaml"
    config.write_text("trainer:\n  callbacks:\n    - class_path: callbacks.RunCheckpoint\n")
    with pytest.raises(SystemExit):
        main(["fit", "--config", QUICK, "--config", str(config)], run=False)
    err = capsys.readouterr().err
    assert "'callbacks.RunCheckpoint' is an old class path" in err and str(config) in err
    assert "write 'contraseg.callbacks.RunCheckpoint'" in err
    with pytest.raises(SystemExit):
        main(["fit", "--config", QUICK, "--model", "lightning_modules.SimCLR"], run=False)
    assert "write 'contraseg.lightning_modules.SimCLR'" in capsys.readouterr().err


def _run(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(args, cwd=cwd, capture_output=True, text=True, timeout=600,
                          env={**os.environ, "WANDB_MODE": "offline"})  # fmt: skip


@pytest.mark.slow
def test_exit_status_is_zero_only_on_success(tmp_path: Path) -> None:
    python = sys.executable
    ok = _run([str(BIN / "contraseg"), *TINY_FIT], tmp_path)
    assert ok.returncode == 0, ok.stderr[-2000:]
    assert "ContrasegCLI object" not in ok.stdout + ok.stderr
    bad = _run([python, str(REPO / "experiments" / "run.py"), *TINY_FIT,
                "--trainer.max_epochs", "many"], tmp_path)  # fmt: skip
    assert bad.returncode == 2 and "max_epochs" in bad.stderr
    # a failure while running (not parsing): the data root holds no CIFAR files
    crash = _run([python, str(REPO / "experiments" / "run.py"), "fit", "--config",
                  str(REPO / "experiments" / "configs" / "simclr_cifar10.yaml"),
                  "--data.root", str(tmp_path / "nothing"), "--trainer.logger", "false"],
                 tmp_path)  # fmt: skip
    assert crash.returncode != 0
    table = [python, str(REPO / "experiments" / "reproduce.py")]
    assert _run([*table, "quickstart_digits", "--dry-run", "--out", "t"], tmp_path).returncode == 0
    assert _run([*table, "no_such_table"], tmp_path).returncode == 2
    dry = _run([str(BIN / "contraseg"), "reproduce", "quickstart_digits", "--scale", "smoke",
                "--dry-run", "--out", "t"], tmp_path)  # fmt: skip
    assert dry.returncode == 0 and "run.py fit --config" in dry.stdout


def _fresh_venv_with_wheel(tmp_path: Path) -> Path:
    """A venv outside the repository holding the built wheel (dependencies: this venv's)."""
    src = tmp_path / "src"
    listed = ["git", "ls-files", "--cached", "--others", "--exclude-standard"]  # not ignored
    files = subprocess.run(listed, cwd=REPO, capture_output=True, text=True,
                           check=True).stdout.split()  # fmt: skip
    for name in files:
        if (REPO / name).is_file():
            (src / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / name, src / name)
    wheels = tmp_path / "wheels"
    build = _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
                  "-q", "-w", str(wheels), str(src)], tmp_path)  # fmt: skip
    assert build.returncode == 0, build.stderr[-2000:]
    (wheel,) = wheels.glob("contraseg-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    tops = {n.split("/")[0] for n in names if not n.split("/")[0].endswith(".dist-info")}
    assert tops == {"contraseg"}, tops  # no generic top-level package
    assert "contraseg/experiments/configs/quickstart.yaml" in names
    assert "contraseg/experiments/configs/base/trainer.yaml" in names
    assert "contraseg/experiments/tables/quickstart_digits.yaml" in names
    venv = tmp_path / "venv"
    made = _run([sys.executable, "-m", "venv", "--without-pip", str(venv)], tmp_path)
    assert made.returncode == 0, made.stderr
    python = venv / "bin" / "python"
    purelib = _run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                   tmp_path).stdout.strip()  # fmt: skip
    # the dependencies (torch, lightning, ...) come from this environment's site-packages, added
    # after the fresh one's; a path added by a .pth runs no .pth of its own, so this
    # environment's editable install of contraseg is not visible there
    Path(purelib, "dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    install = _run([sys.executable, "-m", "pip", "--python", str(python), "install", "-q",
                    "--no-deps", "--no-index", str(wheel)], tmp_path)  # fmt: skip
    assert install.returncode == 0, install.stderr[-2000:]
    return venv


@pytest.mark.slow
def test_the_wheel_runs_from_a_folder_with_its_own_callbacks_module(tmp_path: Path) -> None:
    venv = _fresh_venv_with_wheel(tmp_path)
    work = tmp_path / "my_project"
    work.mkdir()
    for name in ("callbacks", "datamodules", "experiments"):  # a user's own modules
        (work / f"{name}.py").write_text(f"raise ImportError('the user\\'s {name}.py')\n")
    where = _run([str(venv / "bin" / "python"), "-c",
                  "import contraseg.experiments as e, pathlib; print(pathlib.Path(e.__file__))"],
                 work)  # fmt: skip
    installed = Path(where.stdout.strip()).parent
    assert str(installed).startswith(str(venv)), where.stderr[-2000:]  # not the checkout
    config = installed / "configs" / "quickstart.yaml"
    fit = _run([str(venv / "bin" / "contraseg"), "fit", "--config", str(config),
                *quickstart_tiny(16), "--trainer.max_epochs", "1"], work)  # fmt: skip
    assert fit.returncode == 0, fit.stderr[-3000:]
    assert (work / "outputs" / "quickstart" / "checkpoints" / "last.ckpt").is_file()
    dry = _run([str(venv / "bin" / "contraseg"), "reproduce", "quickstart_digits", "--scale",
                "smoke", "--dry-run", "--out", "tables"], work)  # fmt: skip
    assert dry.returncode == 0, dry.stderr[-3000:]
    assert str(installed / "run.py") in dry.stdout
