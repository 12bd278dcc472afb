"""No import cycle anywhere in the package, and every module imports in a fresh interpreter."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("contraseg", "lightning_modules", "datamodules", "callbacks", "experiments")
# folder -> installed name: the folders are mapped under the contraseg namespace (setup.cfg)
DOTTED = {p: p if p == "contraseg" else f"contraseg.{p}" for p in PACKAGES}
# what each package may import: the neutral layer nothing, data and models only it, callbacks
# the layers below them; models never import callbacks, data modules never import models
ALLOWED = {
    "contraseg": set(),
    "datamodules": {"contraseg"},
    "lightning_modules": {"contraseg"},
    "callbacks": {"contraseg", "datamodules", "lightning_modules"},
    "experiments": set(PACKAGES),
    # the package's __init__: the public facade (contraseg.load_encoder), imported lazily
    "facade": set(PACKAGES),
}


def modules() -> dict[str, Path]:
    names = {}
    for package in PACKAGES:
        for path in sorted((REPO / package).rglob("*.py")):
            parts = path.relative_to(REPO / package).with_suffix("").parts
            parts = parts[:-1] if parts[-1] == "__init__" else parts
            names[".".join((DOTTED[package], *parts))] = path
    return names


def import_graph() -> dict[str, set[str]]:
    """Module -> package modules it imports, anywhere in the file (lazy imports included)."""
    names = modules()
    graph: dict[str, set[str]] = {}
    for name, path in names.items():
        deps: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text())):
            targets = []
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                targets = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
            deps |= {t for t in targets if t in names and t != name}
        graph[name] = deps
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for dep in sorted(graph[node]):
            # a package's __init__ importing its own submodules is not a cycle of ours
            if node.startswith(dep + ".") or dep.startswith(node + "."):
                continue
            if state.get(dep) == 1:
                return stack[stack.index(dep):] + [dep]
            if dep not in state and (cycle := visit(dep)):
                return cycle
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def test_cycle_finder_finds_a_cycle() -> None:
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_no_import_cycle() -> None:
    graph = import_graph()
    assert "contraseg.lightning_modules.losses.pixel_blocked" in graph
    assert find_cycle(graph) is None, find_cycle(graph)


def test_every_module_imports_in_a_fresh_interpreter() -> None:
    names = sorted(modules(), reverse=True)  # leaves before their packages' __init__
    script = "import importlib, sys\nfor n in sys.argv[1:]:\n    importlib.import_module(n)\n"
    proc = subprocess.run([sys.executable, "-c", script, *names], cwd=REPO,
                          capture_output=True, text=True, timeout=300)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]


def test_no_method_module_imports_another_method() -> None:
    # segmentation_finetune is the supervised segmentation task the multi-domain task extends
    bases = {"__init__", "task", "embedding_task", "dense_task", "momentum_task",
             "segmentation_finetune", "graph_task"}  # fmt: skip
    methods = {p.stem for p in (REPO / "lightning_modules").glob("*.py")} - bases
    graph = import_graph()
    for stem in methods:
        deps = {d for d in graph[f"contraseg.lightning_modules.{stem}"]}
        others = {f"contraseg.lightning_modules.{m}" for m in methods - {stem}}
        assert not deps & others, (stem, deps & others)


def layer(name: str) -> str:
    """The package folder of a module (``contraseg.callbacks.x`` -> ``callbacks``)."""
    parts = name.split(".")
    if name == "contraseg":
        return "facade"
    return parts[1] if len(parts) > 1 and parts[1] in PACKAGES else "contraseg"


def test_layers_import_only_downwards() -> None:
    wrong = []
    for name, deps in import_graph().items():
        package = layer(name)
        for dep in deps:
            other = layer(dep)
            if other != package and other not in ALLOWED[package]:
                wrong.append(f"{name} -> {dep}")
    assert not wrong, "imports against the layering: " + ", ".join(sorted(wrong))
