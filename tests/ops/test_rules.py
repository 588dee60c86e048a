"""ops/prometheus-rules.yml: promtool accepts it, its unit tests pass and cover every alert,
its metrics are the telemetry contract's, and every alert links to its runbook."""

from __future__ import annotations

import re
import subprocess
from collections import defaultdict
from pathlib import Path, PurePosixPath
from typing import Any

import pytest
import yaml

from tests.ops.helpers import (
    DASHBOARD_FILES,
    contract_problems,
    contract_series,
    load_dashboard,
    parse_promql,
)
from tests.support.servers import REPO_ROOT, require_binary

RULES_FILE = REPO_ROOT / "ops" / "prometheus-rules.yml"
RULE_TESTS = sorted((REPO_ROOT / "ops" / "tests").glob("*.yml"))
OPERATIONS_MD = REPO_ROOT / "docs" / "operations.md"
PROMETHEUS_CONFIG = REPO_ROOT / "prometheus.yml"
COMPOSE_FILE = REPO_ROOT / "docker-compose.yml"
COMPOSE_CONFIG_DIR = PurePosixPath("/etc/prometheus")


def _yaml(path: Path) -> Any:
    return yaml.safe_load(path.read_text(encoding="utf-8"))


def _rules() -> list[dict[str, Any]]:
    return [rule for group in _yaml(RULES_FILE)["groups"] for rule in group["rules"]]


def _alerts() -> dict[str, dict[str, Any]]:
    return {rule["alert"]: rule for rule in _rules() if "alert" in rule}


def _promtool(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(require_binary("promtool")), *map(str, args)],
        capture_output=True,
        text=True,
        check=False,
        cwd=REPO_ROOT,
        timeout=120,
    )


def test_promtool_check_rules() -> None:
    result = _promtool("check", "rules", RULES_FILE)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(_rules())} rules found" in result.stdout


def test_promtool_test_rules() -> None:
    assert RULE_TESTS, "no promtool unit tests under ops/tests/"
    result = _promtool("test", "rules", *RULE_TESTS)
    assert result.returncode == 0, result.stdout + result.stderr


def test_promtool_test_rules_fails_when_an_alert_is_missing(tmp_path: Path) -> None:
    """The unit tests do catch a rule that no longer fires."""
    rules = _yaml(RULES_FILE)
    for group in rules["groups"]:
        group["rules"] = [r for r in group["rules"] if r.get("alert") != "StageflowNoRuns"]
    (tmp_path / "prometheus-rules.yml").write_text(yaml.safe_dump(rules))
    tests_dir = tmp_path / "tests"
    tests_dir.mkdir()
    for path in RULE_TESTS:
        (tests_dir / path.name).write_text(path.read_text(encoding="utf-8"))
    result = _promtool("test", "rules", *sorted(tests_dir.glob("*.yml")))
    assert result.returncode != 0
    assert "StageflowNoRuns" in result.stdout + result.stderr


def test_every_alert_is_tested_firing_and_silent() -> None:
    firing: dict[str, int] = defaultdict(int)
    silent: dict[str, int] = defaultdict(int)
    for path in RULE_TESTS:
        document = _yaml(path)
        assert [Path(f).name for f in document["rule_files"]] == [RULES_FILE.name], path.name
        for test in document["tests"]:
            for case in test.get("alert_rule_test", []):
                if case.get("exp_alerts"):
                    firing[case["alertname"]] += 1
                else:
                    silent[case["alertname"]] += 1
    alerts = set(_alerts())
    assert alerts, "no alerts in ops/prometheus-rules.yml"
    assert sorted(alerts - set(firing)) == [], "alerts never tested firing"
    assert sorted(alerts - set(silent)) == [], "alerts never tested silent"
    assert sorted((set(firing) | set(silent)) - alerts) == [], "tests of unknown alerts"


def _anchors(markdown: str) -> set[str]:
    """The ids the docs build gives to headings (the toc extension's default slugs)."""
    anchors = set()
    for match in re.finditer(r"^#{1,6}\s+(.+?)\s*$", markdown, re.MULTILINE):
        text = re.sub(r"[`*]", "", match.group(1))
        slug = re.sub(r"[^\w\s-]", "", text).strip().lower()
        anchors.add(re.sub(r"[-\s]+", "-", slug))
    return anchors


@pytest.mark.parametrize("name", sorted(_alerts()))
def test_alert_has_severity_annotations_and_runbook(name: str) -> None:
    rule = _alerts()[name]
    assert rule["labels"]["severity"] in {"page", "ticket"}
    annotations = rule["annotations"]
    assert set(annotations) >= {"summary", "description", "runbook_url"}
    assert annotations["runbook_url"] == f"docs/operations.md#{name.lower()}"
    assert name.lower() in _anchors(OPERATIONS_MD.read_text(encoding="utf-8"))


def test_rules_use_contract_metrics_and_labels() -> None:
    series = contract_series()
    rules = _rules()
    recorded = {rule["record"] for rule in rules if "record" in rule}
    failures: list[str] = []
    for rule in rules:
        where = rule.get("record") or rule["alert"]
        failures += contract_problems(
            where, parse_promql(rule["expr"]), series, known=frozenset(recorded)
        )
    assert failures == []


def test_recording_rules_follow_the_naming_convention() -> None:
    for rule in _rules():
        if "record" in rule:
            assert re.fullmatch(r"stageflow:[a-z_]+:[a-z0-9_]+", rule["record"]), rule["record"]


def test_the_latency_objective_is_set_in_one_place() -> None:
    rules = {rule["record"]: rule["expr"] for rule in _rules() if "record" in rule}
    assert rules["stageflow:stage_latency_objective:ratio"] == "vector(0.99)"
    threshold = rules["stageflow:stage_latency_threshold:le"]
    assert threshold == 'label_replace(vector(1), "le", "1.0", "", "")'
    for rule in _rules():
        expr = rule["expr"]
        assert "le=" not in expr, f"{rule.get('record') or rule['alert']}: literal le"
        if "alert" in rule and "stageflow:stage_latency_slow" in expr:
            assert "scalar(stageflow:stage_latency_objective:ratio)" in expr


def test_compose_mounts_the_rules_where_prometheus_yml_loads_them() -> None:
    rule_files = _yaml(PROMETHEUS_CONFIG)["rule_files"]
    assert rule_files == ["ops/prometheus-rules.yml"]
    # Relative to the config file: the repository root here, /etc/prometheus in compose.
    assert (PROMETHEUS_CONFIG.parent / rule_files[0]).resolve() == RULES_FILE
    volumes = _yaml(COMPOSE_FILE)["services"]["prometheus"]["volumes"]
    assert f"./ops/prometheus-rules.yml:{COMPOSE_CONFIG_DIR / rule_files[0]}:ro" in volumes


def test_promtool_check_config_loads_the_rules() -> None:
    result = _promtool("check", "config", PROMETHEUS_CONFIG)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(_rules())} rules found" in result.stdout


def _alert_annotations() -> dict[str, str]:
    """The firing-alerts annotation query of each dashboard."""
    found = {}
    for path in DASHBOARD_FILES:
        queries = [
            a["expr"]
            for a in load_dashboard(path)["annotations"]["list"]
            if a["datasource"]["type"] == "prometheus"
        ]
        assert len(queries) == 1, f"{path.name}: one firing-alerts annotation expected"
        found[path.name] = queries[0]
    return found


def _series_text(labels: dict[str, str]) -> str:
    inner = ", ".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
    return f"ALERTS{{{inner}}}"


def test_dashboards_annotate_exactly_their_firing_alerts(tmp_path: Path) -> None:
    """Each dashboard's annotation query, run by promtool on the rule tests' own traffic.

    Where a rule test expects alert X firing (or silent) at time T, the annotation query of a
    dashboard about X returns exactly those firing alerts at T (none when silent); a dashboard
    not about X returns none of them. The pipeline variable narrows to the alert's pipeline.
    """
    annotations = _alert_annotations()
    about = {
        name: set(re.search(r'alertname=~"([^"]+)"', expr)[1].split("|"))  # type: ignore[index]
        for name, expr in annotations.items()
    }
    assert set().union(*about.values()) == set(_alerts()), "an alert no dashboard shows"
    tests = []
    checked = 0
    for path in RULE_TESTS:
        for group in _yaml(path)["tests"]:
            cases = []
            for case in group.get("alert_rule_test", []):
                alert, at = case["alertname"], case["eval_time"]
                firing = [
                    {"alertname": alert, "alertstate": "firing", **e.get("exp_labels", {})}
                    for e in case.get("exp_alerts") or []
                ]
                for dashboard, expr in annotations.items():
                    shown = firing if alert in about[dashboard] else []
                    variants = [(".*", shown)]
                    if "$pipeline" in expr and shown:
                        pipeline = shown[0].get("pipeline", "")
                        variants.append(
                            (
                                pipeline,
                                [a for a in shown if a.get("pipeline", "") in ("", pipeline)],
                            )
                        )
                        variants.append(("none-such", [a for a in shown if "pipeline" not in a]))
                    for value, expected in variants:
                        query = expr.replace("$pipeline", value)
                        cases.append(
                            {
                                "expr": f'({query}) and on(alertname) ALERTS{{alertname="{alert}"}}',
                                "eval_time": at,
                                "exp_samples": [
                                    {"labels": _series_text(a), "value": 1} for a in expected
                                ],
                            }
                        )
                        checked += 1
            if cases:
                tests.append({**group, "alert_rule_test": [], "promql_expr_test": cases})
    assert checked > 50
    generated = tmp_path / "annotations.test.yml"
    generated.write_text(
        yaml.safe_dump(
            {"rule_files": [str(RULES_FILE)], "evaluation_interval": "1m", "tests": tests}
        )
    )
    result = _promtool("test", "rules", generated)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
