"""Every `experiments/run.py` command in the bash blocks of the README and of the docs pages
parses as written, and every `experiments/reproduce.py` command runs as a dry run."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest
from config_dumps import resolved

REPO = Path(__file__).resolve().parents[1]
README = (REPO / "README.md").read_text()
TEXTS = [README, *(p.read_text() for p in sorted((REPO / "docs").glob("*.md")))]


def commands(script: str = "experiments/run.py") -> list[list[str]]:
    found = []
    blocks = [b for text in TEXTS for b in re.findall(r"```bash\n(.*?)```", text, flags=re.S)]
    for block in blocks:
        text = block.replace("\\\n", " ")
        for line in text.splitlines():
            line = line.split("#", 1)[0].strip()
            if script in line and "<" not in line:
                words = shlex.split(line)
                args = words[words.index(script) + 1 :]
                if args not in found:
                    found.append(args)
    return found


COMMANDS = commands()
TABLE_COMMANDS = commands("experiments/reproduce.py")


@pytest.mark.parametrize("args", TABLE_COMMANDS, ids=lambda a: " ".join(a)[:60])
def test_readme_table_command_runs_dry(args: list[str], tmp_path: Path, capsys) -> None:
    from contraseg.experiments.reproduce import main

    assert main([*args, "--dry-run", "--out", str(tmp_path)]) == 0
    assert "experiments/run.py fit --config" in capsys.readouterr().out


def test_readme_has_commands() -> None:
    assert len(COMMANDS) >= 6
    assert all(c[0] in ("fit", "validate", "test", "predict") for c in COMMANDS)


@pytest.mark.parametrize("args", COMMANDS, ids=lambda a: " ".join(a)[:60])
def test_readme_command_parses(args: list[str], monkeypatch) -> None:
    monkeypatch.chdir(REPO)
    rest = args[1:]  # every subcommand shares fit's model / data / trainer arguments
    i = rest.index("--config")
    config, extra = rest[i + 1], rest[:i] + rest[i + 2 :]
    config_dict = resolved(REPO / config, extra)
    assert config_dict is not None and "model" in config_dict, args
