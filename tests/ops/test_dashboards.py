"""Static checks of the Grafana dashboards and their provisioning."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import jsonschema
import promql_parser
import pytest
import yaml

from tests.ops.helpers import (
    DASHBOARD_DIR,
    DASHBOARD_FILES,
    RATE_INTERVAL_DELTA,
    SCHEMA_DIR,
    Json,
    contract_problems,
    contract_series,
    instant_selectors,
    iter_exprs,
    iter_panels,
    iter_targets,
    load_dashboard,
    parse_promql,
    require_file,
    substitute,
    template_vars_used,
    variables,
    vector_selectors,
    walk,
)
from tests.support.servers import REPO_ROOT, require_binary

EXPECTED_UIDS = {
    "stageflow-pipelines.json": "stageflow-pipelines",
    "stageflow-stages.json": "stageflow-stages",
    "stageflow-sinks.json": "stageflow-sinks",
    "stageflow-tools.json": "stageflow-tools",
}
RANGE_FUNCTIONS = {"rate", "irate", "increase"}

dashboard_paths = pytest.mark.parametrize("path", DASHBOARD_FILES, ids=lambda p: p.name)


@pytest.fixture(scope="module")
def grafana_schema() -> Json:
    path = require_file(
        SCHEMA_DIR / "grafana-dashboard.schema.json", "run scripts/build-schemas.sh"
    )
    schema: Json = json.loads(path.read_text(encoding="utf-8"))
    return schema


def test_the_four_dashboards_exist_with_stable_uids() -> None:
    uids = {path.name: load_dashboard(path).get("uid") for path in DASHBOARD_FILES}
    assert uids == EXPECTED_UIDS


def test_committed_dashboards_match_the_generator() -> None:
    result = subprocess.run(
        [sys.executable, str(REPO_ROOT / "scripts" / "gen-dashboards.py"), "--check"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr


# The fields the Prometheus data source reads from an annotation query. @grafana/schema types
# an annotation's query only as the built-in Grafana source's (its own comment: "this should
# be a regular DataQuery"), so these are checked here and the rest against Grafana's schema.
PROMETHEUS_ANNOTATION = {
    "type": "object",
    "additionalProperties": False,
    "required": ["datasource", "enable", "expr", "name", "titleFormat"],
    "properties": {
        "datasource": {
            "type": "object",
            "additionalProperties": False,
            "required": ["type", "uid"],
            "properties": {"type": {"const": "prometheus"}, "uid": {"const": "${datasource}"}},
        },
        "enable": {"type": "boolean"},
        "hide": {"type": "boolean"},
        "iconColor": {"type": "string"},
        "name": {"type": "string", "minLength": 1},
        "expr": {"type": "string", "minLength": 1},
        "step": {"type": "string", "pattern": "^[0-9]+[smh]$"},
        "tagKeys": {"type": "string"},
        "textFormat": {"type": "string"},
        "titleFormat": {"type": "string"},
        "useValueForTime": {"type": "boolean"},
    },
}
PROMETHEUS_ONLY = frozenset(PROMETHEUS_ANNOTATION["properties"]) - {  # type: ignore[call-overload]
    "datasource", "enable", "hide", "iconColor", "name",
}  # fmt: skip


def _schema_errors(validator: jsonschema.Draft7Validator, document: Json) -> list[str]:
    return [
        f"{'/'.join(map(str, error.absolute_path))}: {error.message}"
        for error in validator.iter_errors(document)
    ]


@dashboard_paths
def test_dashboard_validates_against_grafana_schema(path: Path, grafana_schema: Json) -> None:
    dashboard = load_dashboard(path)
    errors = []
    for annotation in dashboard["annotations"]["list"]:
        if annotation["datasource"]["type"] == "prometheus":
            errors += _schema_errors(jsonschema.Draft7Validator(PROMETHEUS_ANNOTATION), annotation)
            for key in PROMETHEUS_ONLY:
                annotation.pop(key, None)
    errors += _schema_errors(jsonschema.Draft7Validator(grafana_schema), dashboard)
    assert errors == []


def test_the_annotation_schema_rejects_a_misspelt_field() -> None:
    dashboard = load_dashboard(DASHBOARD_FILES[0])
    [annotation] = [
        a for a in dashboard["annotations"]["list"] if a["datasource"]["type"] == "prometheus"
    ]
    annotation["title_format"] = annotation.pop("titleFormat")
    assert not jsonschema.Draft7Validator(PROMETHEUS_ANNOTATION).is_valid(annotation)


def test_grafana_schema_rejects_a_broken_dashboard(grafana_schema: Json) -> None:
    dashboard = load_dashboard(DASHBOARD_FILES[0])
    panel = next(p for p in dashboard["panels"] if p["type"] != "row")
    panel["gridpos"] = panel.pop("gridPos")
    assert not jsonschema.Draft7Validator(grafana_schema).is_valid(dashboard)


@dashboard_paths
def test_panel_ids_are_unique(path: Path) -> None:
    ids = [panel["id"] for panel in iter_panels(load_dashboard(path))]
    assert len(ids) == len(set(ids)), ids


@dashboard_paths
def test_every_panel_has_a_unit(path: Path) -> None:
    missing = [
        panel.get("title")
        for panel in iter_panels(load_dashboard(path))
        if panel["type"] != "row"
        and not panel.get("fieldConfig", {}).get("defaults", {}).get("unit")
    ]
    assert missing == []


@dashboard_paths
def test_every_query_uses_the_datasource_variable(path: Path) -> None:
    dashboard = load_dashboard(path)
    wrong = [
        (panel.get("title"), ref)
        for panel in iter_panels(dashboard)
        if panel["type"] != "row"
        for ref in [panel.get("datasource"), *(t.get("datasource") for t in panel["targets"])]
        if ref != {"type": "prometheus", "uid": "${datasource}"}
    ]
    assert wrong == []


@dashboard_paths
def test_template_variables(path: Path) -> None:
    dashboard = load_dashboard(path)
    defined = variables(dashboard)
    assert defined["datasource"]["type"] == "datasource"
    assert defined["datasource"]["query"] == "prometheus"
    assert defined["job"]["type"] == "query"
    used: set[str] = set()
    for _, expr in iter_exprs(dashboard):
        used |= template_vars_used(expr)
    assert used <= set(defined), f"undefined variables: {used - set(defined)}"
    assert set(defined) - {"datasource"} <= used, "a variable that no query uses"


def test_pipeline_and_stage_variables() -> None:
    by_name = {path.name: variables(load_dashboard(path)) for path in DASHBOARD_FILES}
    assert {"job", "pipeline"} <= set(by_name["stageflow-pipelines.json"])
    assert {"job", "pipeline", "stage"} <= set(by_name["stageflow-stages.json"])
    stage_query = by_name["stageflow-stages.json"]["stage"]["query"]
    assert stage_query.startswith("label_values(stageflow_stage_runs_total")
    assert stage_query.endswith(", stage)")


@dashboard_paths
def test_every_expression_parses_as_promql(path: Path) -> None:
    failures = []
    for where, expr in iter_exprs(load_dashboard(path)):
        try:
            parse_promql(expr)
        except ValueError as exc:
            failures.append(f"{where}: {exc}: {expr}")
    assert failures == []


@dashboard_paths
def test_every_range_uses_rate_interval(path: Path) -> None:
    failures = []
    for where, expr in iter_exprs(load_dashboard(path)):
        for node in walk(parse_promql(expr)):
            if isinstance(node, promql_parser.MatrixSelector) and node.range != RATE_INTERVAL_DELTA:
                failures.append(f"{where}: range {node.range} instead of $__rate_interval")
            if isinstance(node, promql_parser.SubqueryExpr):
                failures.append(f"{where}: subquery")
            if isinstance(node, promql_parser.Call) and node.func.name in RANGE_FUNCTIONS:
                (arg,) = node.args
                if not isinstance(arg, promql_parser.MatrixSelector):
                    failures.append(f"{where}: {node.func.name} over a non-selector")
    assert failures == []


@dashboard_paths
def test_counters_only_under_rate(path: Path) -> None:
    """A raw counter or histogram series plotted without rate() is meaningless."""
    failures: list[str] = []
    for where, expr in iter_exprs(load_dashboard(path)):
        if where.startswith("variable"):
            continue
        failures.extend(
            f"{where}: {selector.name} outside rate()"
            for selector in instant_selectors(parse_promql(expr))
            if selector.name.endswith(("_total", "_bucket", "_sum", "_count"))
        )
    assert failures == []


@dashboard_paths
def test_metric_names_and_labels_are_in_the_contract(path: Path) -> None:
    series = contract_series()
    failures: list[str] = []
    for where, expr in iter_exprs(load_dashboard(path)):
        tree = parse_promql(expr)
        failures += contract_problems(where, tree, series)
        for node in walk(tree):
            if isinstance(node, promql_parser.AggregateExpr) and node.modifier is not None:
                inner = vector_selectors(node.expr)
                for label in node.modifier.labels:
                    for selector in inner:
                        metric = series.get(selector.name)
                        if metric and label not in metric.series_labels(selector.name):
                            failures.append(f"{where}: {selector.name} has no label {label}")
    assert failures == []


def _selects_failures(node: Any) -> bool:
    return any(
        matcher.name == "status" and matcher.value == "fail"
        for selector in vector_selectors(node)
        for matcher in selector.matchers.matchers
    )


def _grouping(node: Any) -> tuple[str, ...] | None:
    """The `by` labels of a sum, () for a plain sum, None for anything else."""
    if not isinstance(node, promql_parser.AggregateExpr) or str(node.op) != "sum":
        return None
    return tuple(node.modifier.labels) if node.modifier is not None else ()


@dashboard_paths
def test_failure_ratios_are_zero_without_failures(path: Path) -> None:
    """`failed / all` falls back to `all * 0`: the fail series only exist after a failure."""
    failures: list[str] = []
    for where, expr in iter_exprs(load_dashboard(path)):
        for node in walk(parse_promql(expr)):
            if not (isinstance(node, promql_parser.BinaryExpr) and str(node.op) == "/"):
                continue
            if not _selects_failures(node.lhs):
                continue
            lhs = node.lhs.expr if isinstance(node.lhs, promql_parser.ParenExpr) else node.lhs
            fallback = getattr(lhs, "rhs", None)
            if not (
                isinstance(lhs, promql_parser.BinaryExpr)
                and str(lhs.op) == "or"
                and isinstance(fallback, promql_parser.BinaryExpr)
                and str(fallback.op) == "*"
                and isinstance(fallback.rhs, promql_parser.NumberLiteral)
                and fallback.rhs.val == 0
                and not _selects_failures(fallback)
                and _grouping(lhs.lhs) is not None
                and _grouping(lhs.lhs) == _grouping(fallback.lhs) == _grouping(node.rhs)
            ):
                failures.append(f"{where}: no `or <all> * 0` fallback with the same grouping")
    assert failures == []


def test_every_contract_metric_is_on_a_dashboard() -> None:
    series = contract_series()
    used = {
        selector.name
        for path in DASHBOARD_FILES
        for _, expr in iter_exprs(load_dashboard(path))
        for selector in vector_selectors(parse_promql(expr))
    }
    unused = {metric.name for metric in series.values()} - {
        series[name].name for name in used if name in series
    }
    assert unused == set()


@dashboard_paths
def test_stage_duration_queries_request_exemplars(path: Path) -> None:
    dashboard = load_dashboard(path)
    missing = [
        panel.get("title")
        for panel, target in iter_targets(dashboard)
        if "stageflow_stage_duration_seconds_bucket" in target["expr"]
        and target.get("exemplar") is not True
    ]
    assert missing == []


def test_expressions_pass_promtool_check_rules(tmp_path: Path) -> None:
    promtool = require_binary("promtool")
    rules: list[dict[str, Any]] = []
    for path in DASHBOARD_FILES:
        for index, (_, expr) in enumerate(iter_exprs(load_dashboard(path))):
            rules.append(
                {
                    "record": f"dashboard:{path.stem.replace('-', '_')}:{index}",
                    "expr": substitute(expr),
                }
            )
    rules_file = tmp_path / "dashboard-rules.yml"
    rules_file.write_text(yaml.safe_dump({"groups": [{"name": "dashboards", "rules": rules}]}))
    result = subprocess.run(
        [str(promtool), "check", "rules", str(rules_file)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(rules)} rules found" in result.stdout


# --------------------------------------------------------------------------- provisioning


def _yaml(path: Path) -> Any:
    return yaml.safe_load(path.read_text(encoding="utf-8"))


def test_datasources_link_exemplars_to_jaeger() -> None:
    config = _yaml(DASHBOARD_DIR / "provisioning" / "datasources" / "datasources.yaml")
    assert config["apiVersion"] == 1
    by_uid = {ds["uid"]: ds for ds in config["datasources"]}
    assert by_uid["prometheus"]["type"] == "prometheus"
    assert by_uid["prometheus"]["url"] == "http://prometheus:9090"
    assert by_uid["jaeger"]["type"] == "jaeger"
    assert by_uid["jaeger"]["url"] == "http://jaeger:16686"
    destinations = by_uid["prometheus"]["jsonData"]["exemplarTraceIdDestinations"]
    assert {(d["name"], d["datasourceUid"]) for d in destinations} == {("trace_id", "jaeger")}


def test_dashboard_provider_reads_the_mounted_dashboards() -> None:
    config = _yaml(DASHBOARD_DIR / "provisioning" / "dashboards" / "dashboards.yaml")
    (provider,) = config["providers"]
    assert provider["type"] == "file"
    compose = _yaml(REPO_ROOT / "docker-compose.yml")
    mounts = {
        target: source
        for source, target, *_ in (v.split(":") for v in compose["services"]["grafana"]["volumes"])
    }
    assert mounts[provider["options"]["path"]] == "./dashboards"
    assert mounts["/etc/grafana/provisioning"] == "./dashboards/provisioning"


def _alert_names() -> set[str]:
    rules = _yaml(REPO_ROOT / "ops" / "prometheus-rules.yml")
    return {
        rule["alert"] for group in rules["groups"] for rule in group["rules"] if "alert" in rule
    }


def _markdown_anchors(path: Path) -> set[str]:
    return {
        line.lstrip("#").strip().lower().replace(" ", "-")
        for line in path.read_text(encoding="utf-8").splitlines()
        if line.startswith("#")
    }


@pytest.mark.parametrize("path", DASHBOARD_FILES, ids=lambda p: p.name)
def test_every_panel_links_to_the_runbook_of_an_alert(path: Path) -> None:
    alerts = {name.lower() for name in _alert_names()}
    anchors = _markdown_anchors(REPO_ROOT / "docs" / "operations.md")
    panels = [p for p in load_dashboard(path)["panels"] if p["type"] != "row"]

    assert panels
    for panel in panels:
        [link] = panel["links"]
        page, _, anchor = link["url"].partition("#")
        assert page.endswith("/docs/operations.md"), panel["title"]
        assert anchor in alerts, panel["title"]
        assert anchor in anchors, panel["title"]
        assert link["title"].lower() == f"runbook: {anchor}"
