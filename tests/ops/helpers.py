"""Shared parsing for the ops tests: the telemetry contract, dashboards, PromQL."""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import promql_parser
import pytest

from tests.support.servers import REPO_ROOT, cache_dir, in_ci

DASHBOARD_DIR = REPO_ROOT / "dashboards"
DASHBOARD_FILES = sorted(DASHBOARD_DIR.glob("*.json"))
SCHEMA_DIR = cache_dir() / "schemas"

# $__rate_interval is replaced by this duration before parsing, so the parsed range
# tells whether a selector used it.
RATE_INTERVAL_SENTINEL = "4321s"
RATE_INTERVAL_DELTA = timedelta(seconds=4321)

# Labels Prometheus adds to every scraped series.
TARGET_LABELS = frozenset({"job", "instance"})

Json = dict[str, Any]


def require_file(path: Path, hint: str) -> Path:
    """Return ``path``; fail under CI and skip elsewhere when it does not exist."""
    if path.is_file():
        return path
    message = f"{path} not found ({hint})"
    if in_ci():
        pytest.fail(message, pytrace=False)
    pytest.skip(message)


# --------------------------------------------------------------------------- contract


def telemetry_md_path() -> Path:
    """TELEMETRY.md of the shared directory beside the checkout (``../shared``)."""
    configured = os.environ.get("STAGEFLOW_OTEL_TELEMETRY_MD")
    path = Path(configured) if configured else REPO_ROOT.parent / "shared" / "TELEMETRY.md"
    return require_file(path, "the telemetry contract lives in ../shared beside the checkout")


@dataclass(frozen=True)
class ContractMetric:
    """One metric of the contract's Prometheus table."""

    name: str
    type: str  # counter | gauge | histogram
    labels: frozenset[str]

    def series_names(self) -> frozenset[str]:
        """The names of the series the metric exposes (histograms as three series)."""
        if self.type == "histogram":
            return frozenset(f"{self.name}{suffix}" for suffix in ("_bucket", "_sum", "_count"))
        return frozenset({self.name})

    def series_labels(self, series: str) -> frozenset[str]:
        """The labels a series of this metric carries once scraped."""
        extra = {"le"} if series.endswith("_bucket") and self.type == "histogram" else set()
        return self.labels | TARGET_LABELS | extra


_BACKTICKED = re.compile(r"`([^`]+)`")


def parse_contract_metrics(markdown: str) -> dict[str, ContractMetric]:
    """Parse the ``| metric | type | labels |`` table under "## Prometheus metrics"."""
    section = markdown.split("## Prometheus metrics", 1)[1].split("\n## ", 1)[0]
    metrics: dict[str, ContractMetric] = {}
    for line in section.splitlines():
        if not line.startswith("| `stageflow_"):
            continue
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        # Escaped pipes (\|) inside the labels cell split it further; rejoin them.
        name_cell, type_cell, labels_cell = cells[0], cells[1], "|".join(cells[2:])
        metric_type = type_cell.split()[0].rstrip(",")
        labels = frozenset(
            match.group(1)
            for part in labels_cell.split(",")
            if (match := _BACKTICKED.search(part)) is not None
        )
        for name in _BACKTICKED.findall(name_cell):
            metrics[name] = ContractMetric(name=name, type=metric_type, labels=labels)
    return metrics


def contract_series() -> dict[str, ContractMetric]:
    """Every exposed series name of the contract, mapped to its metric."""
    metrics = parse_contract_metrics(telemetry_md_path().read_text(encoding="utf-8"))
    return {series: m for m in metrics.values() for series in m.series_names()}


# --------------------------------------------------------------------------- dashboards


def load_dashboard(path: Path) -> Json:
    data: Json = json.loads(path.read_text(encoding="utf-8"))
    return data


def iter_panels(dashboard: Json) -> Iterator[Json]:
    """Every panel, rows and the panels nested in collapsed rows included."""
    for panel in dashboard.get("panels", []):
        yield panel
        yield from panel.get("panels", [])


def iter_targets(dashboard: Json) -> Iterator[tuple[Json, Json]]:
    """(panel, target) for every query target."""
    for panel in iter_panels(dashboard):
        for target in panel.get("targets", []):
            yield panel, target


def variables(dashboard: Json) -> dict[str, Json]:
    return {var["name"]: var for var in dashboard.get("templating", {}).get("list", [])}


_LABEL_VALUES = re.compile(r"^label_values\((?P<selector>.+),\s*(?P<label>[a-zA-Z_]\w*)\)$")


def iter_exprs(dashboard: Json) -> Iterator[tuple[str, str]]:
    """(where, PromQL) for every target and every ``label_values`` variable query."""
    for panel, target in iter_targets(dashboard):
        yield f"panel {panel['id']} {panel.get('title')!r} {target['refId']}", target["expr"]
    for name, var in variables(dashboard).items():
        if var.get("type") == "query":
            match = _LABEL_VALUES.match(str(var["query"]))
            assert match, f"variable {name}: expected label_values(selector, label)"
            yield f"variable {name}", match.group("selector")


_TEMPLATE_VAR = re.compile(r"\$(\w+)|\$\{(\w+)(?::\w+)?\}")


def template_vars_used(text: str) -> set[str]:
    """Names of Grafana variables referenced as ``$name`` or ``${name}``."""
    return {a or b for a, b in _TEMPLATE_VAR.findall(text) if not (a or b).startswith("__")}


def substitute(expr: str) -> str:
    """Make a dashboard query plain PromQL: ``$__rate_interval`` -> sentinel duration.

    Template variables only ever appear inside label-matcher strings (``"$job"``),
    where they are valid PromQL as they are.
    """
    return expr.replace("$__rate_interval", RATE_INTERVAL_SENTINEL)


def parse_promql(expr: str) -> Any:
    return promql_parser.parse(substitute(expr))


def walk(node: Any) -> Iterator[Any]:
    """Every node of a parsed expression, depth first."""
    nodes: list[Any] = []
    promql_parser.walk(node, lambda n, *_: nodes.append(n))
    yield from nodes


def vector_selectors(node: Any) -> list[Any]:
    return [n for n in walk(node) if isinstance(n, promql_parser.VectorSelector)]


def instant_selectors(node: Any) -> list[Any]:
    """Vector selectors that are not the inside of a range selector (``m[5m]``)."""
    depth = 0
    found: list[Any] = []

    def enter(n: Any, *_: Any) -> None:
        nonlocal depth
        if isinstance(n, promql_parser.MatrixSelector):
            depth += 1
        elif isinstance(n, promql_parser.VectorSelector) and depth == 0:
            found.append(n)

    def leave(n: Any, *_: Any) -> None:
        nonlocal depth
        if isinstance(n, promql_parser.MatrixSelector):
            depth -= 1

    promql_parser.walk(node, enter, leave)
    return found
