"""Shared parsing for the ops tests: dashboards, PromQL, and the telemetry contract
(``docs/telemetry.md``, read by :mod:`tests.support.contract`)."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import promql_parser
import pytest

from tests.support import contract
from tests.support.servers import REPO_ROOT, cache_dir, in_ci

DASHBOARD_DIR = REPO_ROOT / "dashboards"
DASHBOARD_FILES = sorted(DASHBOARD_DIR.glob("*.json"))
SCHEMA_DIR = cache_dir() / "schemas"

# $__rate_interval is replaced by this duration before parsing, so the parsed range
# tells whether a selector used it.
RATE_INTERVAL_SENTINEL = "4321s"
RATE_INTERVAL_DELTA = timedelta(seconds=4321)

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


def contract_series() -> dict[str, contract.ContractMetric]:
    """Every exposed series name of the contract (``docs/telemetry.md``), mapped to its metric."""
    return contract.contract_series()


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


def contract_problems(
    where: str,
    tree: Any,
    series: dict[str, contract.ContractMetric],
    *,
    known: frozenset[str] = frozenset(),
) -> list[str]:
    """What in a parsed expression is not in the telemetry contract: metrics, then labels.

    ``known`` names series that are not contract metrics but fine to select (recording rules).
    """
    problems: list[str] = []
    for selector in vector_selectors(tree):
        if selector.name in known:
            continue
        metric = series.get(selector.name)
        if metric is None:
            problems.append(f"{where}: unknown metric {selector.name}")
            continue
        allowed = metric.series_labels(selector.name)
        problems.extend(
            f"{where}: {selector.name} has no label {matcher.name}"
            for matcher in selector.matchers.matchers
            if matcher.name not in allowed
        )
    return problems
