"""The documentation site builds offline with mkdocs (strict: a broken link or a page missing
from the navigation is an error) and every page of docs/ is in it."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import yaml

from contraseg.experiments.tables import PROVENANCE_PREFIX

REPO = Path(__file__).resolve().parents[1]


def test_docs_build_strict_and_offline(tmp_path: Path) -> None:
    site = tmp_path / "site"
    command = [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(site)]
    proc = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    for page in (REPO / "docs").glob("*.md"):  # the published reports are parts of pages
        html = site / page.with_suffix(".html").name
        assert html.is_file(), f"{page.name} is not in the built site"
    index = (site / "index.html").read_text()
    assert "fonts.googleapis.com" not in index  # no request outside the machine
    assert (site / "search" / "search_index.js").is_file()  # the offline plugin's search


# ---------------------------------------------------------------- results tables
DOCS = REPO / "docs"
RESULTS = DOCS / "results"
INCLUDE = re.compile(r'^--8<-- "results/([^"]+\.md)"\s*$', re.M)
# header words of a results table (metric names; the table files' metrics are added below)
METRIC_WORDS = re.compile(r"\b(miou|kappa|knn|dice|hd95|accuracy|acc|nmi|ari|f1|auroc|"
                          r"effective rank)\b", re.I)  # fmt: skip


MEAN_STD = re.compile(r"\d \u00b1 \d")  # "0.152 ± 0.024"


def markdown_tables(text: str) -> list[list[list[str]]]:
    """The pipe tables of a Markdown text: each a list of rows of stripped cells."""
    tables, current = [], []
    for line in text.splitlines() + [""]:
        stripped = line.strip()
        if stripped.startswith("|") and stripped.endswith("|"):
            current.append([c.strip() for c in stripped.strip("|").split("|")])
        elif current:
            tables.append(current)
            current = []
    return tables


def table_metrics() -> set[str]:
    metrics = set()
    for path in (REPO / "experiments" / "tables").glob("*.yaml"):
        metrics.update(yaml.safe_load(path.read_text()).get("metrics", []))
    return metrics


def is_results_table(table: list[list[str]], metrics: set[str]) -> bool:
    """A table of measured results: a metric column, or a mean ± std cell."""
    header = table[0]
    return (any(h in metrics or METRIC_WORDS.search(h) for h in header)
            or any(MEAN_STD.search(cell) for row in table[2:] for cell in row))  # fmt: skip


def test_every_results_table_in_the_docs_is_a_published_report() -> None:
    """Pages hold no results table of their own; they include reports written by reproduce.py."""
    metrics = table_metrics()
    pages = [p for p in DOCS.rglob("*.md") if RESULTS not in p.parents]
    included: set[str] = set()
    for page in pages:
        text = page.read_text()
        included.update(INCLUDE.findall(text))
        for table in markdown_tables(text):
            assert not is_results_table(table, metrics), (
                f"{page.relative_to(REPO)}: a results table typed into the page (header "
                f"{table[0]}); publish it with reproduce.py --docs docs/results and include it")
    published = sorted(p.name for p in RESULTS.glob("*.md"))
    assert published, "no published report in docs/results"
    unused, missing = sorted(set(published) - included), sorted(included - set(published))
    assert not unused and not missing, f"published, not included: {unused}; missing: {missing}"
    for name in published:
        text = (RESULTS / name).read_text()
        first = text.splitlines()[0]
        match = re.match(re.escape(PROVENANCE_PREFIX) + r"(\w+) --scale (\w+) --seeds \d+", first)
        assert match, f"docs/results/{name} does not start with reproduce.py's provenance"
        table, scale = match.groups()
        assert re.fullmatch(rf"{table}_{scale}(_[A-Za-z0-9-]+)?\.md", name), (
            f"docs/results/{name} holds {table} at {scale}")
        spec = yaml.safe_load((REPO / "experiments" / "tables" / f"{table}.yaml").read_text())
        assert scale in (spec.get("scales") or {}), f"{table} has no scale {scale}"
        assert any(is_results_table(t, metrics) for t in markdown_tables(text)), name


def test_readme_results_table_is_a_copy_of_a_published_report() -> None:
    """The README cannot include a file: its results table must equal a published one."""
    metrics = table_metrics()
    readme = (REPO / "README.md").read_text()
    published = [t for p in RESULTS.glob("*.md") for t in markdown_tables(p.read_text())]
    tables = [t for t in markdown_tables(readme) if is_results_table(t, metrics)]
    assert tables, "the README shows one results table"
    for table in tables:
        assert table in published, f"README table {table[0]} is not a published report's table"
