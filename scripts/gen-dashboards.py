#!/usr/bin/env python3
"""Generate the Grafana dashboards in dashboards/*.json (classic JSON model).

The JSON files are committed; this script is their source. Run it after changing a
panel, and `--check` in tests to prove the committed files are up to date:

    python scripts/gen-dashboards.py          # rewrite dashboards/*.json
    python scripts/gen-dashboards.py --check  # exit 1 if a file differs

Metric names are the ones of the telemetry contract (TELEMETRY.md); every rate uses
$__rate_interval; every panel has a unit; panel ids are unique per dashboard.
Standard library only.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
OUT_DIR = ROOT / "dashboards"

SCHEMA_VERSION = 42  # Grafana 13.2 (@grafana/schema 13.2.3)
DATASOURCE = {"type": "prometheus", "uid": "${datasource}"}
RATE = "$__rate_interval"
TAG = "stageflow-otel"

Json = dict[str, Any]


# --------------------------------------------------------------------------- queries


def sel(metric: str, *matchers: str) -> str:
    """A vector selector with the dashboard's template filters."""
    return f"{metric}{{{', '.join(matchers)}}}"


def rate(selector: str) -> str:
    return f"rate({selector}[{RATE}])"


def quantile(q: float, metric: str, by: str, *matchers: str) -> str:
    inner = rate(sel(f"{metric}_bucket", *matchers))
    return f"histogram_quantile({q}, sum by (le, {by}) ({inner}))"


def failure_ratio(metric: str, by: str, *matchers: str) -> str:
    """Failed / all finished, per `by` (no grouping if empty): 0, not "no data", without failures.

    The `status="fail"` series only exist once something failed; `or` falls back to the total
    rate times zero, grouped by the same labels, so a healthy series with traffic shows 0.
    """
    grouping = f"sum by ({by}) " if by else "sum"
    failed = f"{grouping}({rate(sel(metric, *matchers, FAILED))})"
    total = f"{grouping}({rate(sel(metric, *matchers))})"
    return f"({failed} or {total} * 0) / {total}"


@dataclass
class Target:
    expr: str
    legend: str
    exemplar: bool = False
    heatmap: bool = False

    def to_json(self, ref_id: str) -> Json:
        target: Json = {
            "datasource": DATASOURCE,
            "editorMode": "code",
            "expr": self.expr,
            "legendFormat": self.legend,
            "range": True,
            "refId": ref_id,
        }
        if self.exemplar:
            target["exemplar"] = True
        if self.heatmap:
            target["format"] = "heatmap"
        return target


# --------------------------------------------------------------------------- panels


LATENCY_ALERTS = (
    "StageflowStageLatencyBudgetBurnFast",
    "StageflowStageLatencyBudgetBurnSlow",
    "StageflowStageLatencyBudgetBurnTicket",
)
"""The multi-window, multi-burn-rate alerts on the stage latency objective."""

RUNBOOK = "https://github.com/stageflow-otel/stageflow-otel/blob/main/docs/operations.md"
"""docs/operations.md as a browser opens it; each alert has a section (the alert, lower case)."""


@dataclass
class Layout:
    """Places panels left to right on the 24-column grid, wrapping into new rows.

    Every panel links to the runbook of the alert it helps investigate: the first alert whose
    keyword its title contains, else the dashboard's own alert (``runbook``).
    """

    runbook: str = "StageflowPipelineFailureRatioHigh"
    runbooks: tuple[tuple[str, str], ...] = ()
    next_id: int = 1
    x: int = 0
    y: int = 0
    row_height: int = 0
    panels: list[Json] = field(default_factory=list)

    def take_id(self) -> int:
        panel_id = self.next_id
        self.next_id += 1
        return panel_id

    def place(self, w: int, h: int) -> Json:
        if self.x + w > 24:
            self.x, self.y, self.row_height = 0, self.y + self.row_height, 0
        pos = {"h": h, "w": w, "x": self.x, "y": self.y}
        self.x += w
        self.row_height = max(self.row_height, h)
        return pos

    def row(self, title: str) -> None:
        if self.x:
            self.x, self.y, self.row_height = 0, self.y + self.row_height, 0
        self.panels.append(
            {
                "collapsed": False,
                "gridPos": {"h": 1, "w": 24, "x": 0, "y": self.y},
                "id": self.take_id(),
                "panels": [],
                "title": title,
                "type": "row",
            }
        )
        self.y += 1

    def add(self, panel: Json, w: int, h: int) -> None:
        panel["id"] = self.take_id()
        panel["gridPos"] = self.place(w, h)
        title = str(panel["title"]).lower()
        alert = next((a for keyword, a in self.runbooks if keyword in title), self.runbook)
        panel["links"] = [
            {
                "asDropdown": False,
                "icon": "doc",
                "includeVars": False,
                "keepTime": False,
                "tags": [],
                "targetBlank": True,
                "title": f"Runbook: {alert}",
                "tooltip": f"What to do when {alert} fires",
                "type": "link",
                "url": f"{RUNBOOK}#{alert.lower()}",
            }
        ]
        self.panels.append(panel)


def _targets(targets: list[Target]) -> list[Json]:
    return [t.to_json(chr(ord("A") + i)) for i, t in enumerate(targets)]


def timeseries(
    title: str,
    description: str,
    unit: str,
    targets: list[Target],
    *,
    min_value: float | None = 0,
    max_value: float | None = None,
    stack: bool = False,
) -> Json:
    defaults: Json = {
        "color": {"mode": "palette-classic"},
        "custom": {
            "drawStyle": "line",
            "fillOpacity": 15 if stack else 5,
            "lineWidth": 1,
            "showPoints": "never",
            "spanNulls": False,
            "stacking": {"group": "A", "mode": "normal" if stack else "none"},
        },
        "unit": unit,
    }
    if min_value is not None:
        defaults["min"] = min_value
    if max_value is not None:
        defaults["max"] = max_value
    return {
        "type": "timeseries",
        "title": title,
        "description": description,
        "datasource": DATASOURCE,
        "fieldConfig": {"defaults": defaults, "overrides": []},
        "options": {
            "legend": {
                "calcs": ["mean", "max", "lastNotNull"],
                "displayMode": "table",
                "placement": "bottom",
                "showLegend": True,
            },
            "tooltip": {"mode": "multi", "sort": "desc"},
        },
        "targets": _targets(targets),
    }


def stat(
    title: str,
    description: str,
    unit: str,
    target: Target,
    *,
    thresholds: list[tuple[float | None, str]] | None = None,
) -> Json:
    steps = thresholds or [(None, "green")]
    return {
        "type": "stat",
        "title": title,
        "description": description,
        "datasource": DATASOURCE,
        "fieldConfig": {
            "defaults": {
                "color": {"mode": "thresholds"},
                "thresholds": {
                    "mode": "absolute",
                    "steps": [{"color": color, "value": value} for value, color in steps],
                },
                "unit": unit,
            },
            "overrides": [],
        },
        "options": {
            "colorMode": "value",
            "graphMode": "area",
            "justifyMode": "auto",
            "orientation": "auto",
            "reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False},
            "textMode": "auto",
        },
        "targets": _targets([target]),
    }


def heatmap(title: str, description: str, target: Target) -> Json:
    return {
        "type": "heatmap",
        "title": title,
        "description": description,
        "datasource": DATASOURCE,
        "fieldConfig": {"defaults": {"unit": "s"}, "overrides": []},
        "options": {
            "calculate": False,
            "cellGap": 1,
            "color": {
                "mode": "scheme",
                "scheme": "Oranges",
                "scale": "exponential",
                "exponent": 0.5,
                "steps": 64,
            },
            "exemplars": {"color": "rgba(255,0,255,0.7)"},
            "filterValues": {"le": 1e-9},
            "legend": {"show": True},
            "rowsFrame": {"layout": "auto"},
            "tooltip": {"mode": "single", "yHistogram": True},
            "yAxis": {"axisPlacement": "left", "unit": "s"},
        },
        "targets": _targets([target]),
    }


def quantile_targets(
    metric: str, by: str, matchers: tuple[str, ...], *, exemplar: bool = False
) -> list[Target]:
    return [
        Target(
            quantile(q, metric, by, *matchers), f"{{{{{by}}}}} p{int(q * 100)}", exemplar=exemplar
        )
        for q in (0.5, 0.95, 0.99)
    ]


# --------------------------------------------------------------------------- variables


def datasource_variable() -> Json:
    return {
        "current": {"text": "Prometheus", "value": "prometheus"},
        "label": "Data source",
        "name": "datasource",
        "query": "prometheus",
        "refresh": 1,
        "type": "datasource",
    }


def query_variable(name: str, label: str, query: str) -> Json:
    return {
        "allValue": ".*",
        "datasource": DATASOURCE,
        "includeAll": True,
        "label": label,
        "multi": True,
        "name": name,
        "query": query,
        "refresh": 2,
        "sort": 1,
        "type": "query",
    }


JOB_VAR = query_variable("job", "Job", "label_values(stageflow_build_info, job)")
PIPELINE_VAR = query_variable(
    "pipeline", "Pipeline", 'label_values(stageflow_pipeline_runs_total{job=~"$job"}, pipeline)'
)
STAGE_VAR = query_variable(
    "stage",
    "Stage",
    'label_values(stageflow_stage_runs_total{job=~"$job", pipeline=~"$pipeline"}, stage)',
)
SINK_VAR = query_variable(
    "sink", "Sink", 'label_values(stageflow_sink_queue_capacity{job=~"$job"}, sink)'
)
TOOL_VAR = query_variable(
    "tool", "Tool", 'label_values(stageflow_tool_calls_total{job=~"$job"}, tool)'
)


def firing_alerts(alerts: tuple[str, ...], by_pipeline: bool) -> Json:
    """An annotation per firing alert of ``ops/prometheus-rules.yml`` the dashboard is about.

    Prometheus's ``ALERTS`` series, as the Prometheus data source reads an annotation query.
    With a pipeline variable, alerts of other pipelines are left out (alerts without a
    ``pipeline`` label, such as a sink's, are kept).
    """
    pipeline = ', pipeline=~"$pipeline|"' if by_pipeline else ""
    return {
        "datasource": {"type": "prometheus", "uid": "${datasource}"},
        "enable": True,
        "expr": f'ALERTS{{alertstate="firing", alertname=~"{"|".join(alerts)}"{pipeline}}}',
        "hide": False,
        "iconColor": "red",
        "name": "Firing alerts",
        "step": "1m",
        "tagKeys": "severity,pipeline,stage,sink,tool",
        "textFormat": "{{alertname}} ({{severity}})",
        "titleFormat": "{{alertname}}",
        "useValueForTime": False,
    }


def dashboard(
    uid: str,
    title: str,
    description: str,
    variables: list[Json],
    layout: Layout,
    alerts: tuple[str, ...],
) -> Json:
    return {
        "annotations": {
            "list": [
                {
                    "builtIn": 1,
                    "datasource": {"type": "grafana", "uid": "-- Grafana --"},
                    "enable": True,
                    "hide": True,
                    "iconColor": "rgba(0, 211, 255, 1)",
                    "name": "Annotations & Alerts",
                    "type": "dashboard",
                },
                firing_alerts(alerts, PIPELINE_VAR in variables),
            ]
        },
        "description": description,
        "editable": True,
        "fiscalYearStartMonth": 0,
        "graphTooltip": 1,
        "links": [
            {
                "asDropdown": True,
                "icon": "external link",
                "includeVars": True,
                "keepTime": True,
                "tags": [TAG],
                "targetBlank": False,
                "title": "stageflow-otel",
                "tooltip": "Other stageflow-otel dashboards",
                "type": "dashboards",
            }
        ],
        "panels": layout.panels,
        "refresh": "10s",
        "schemaVersion": SCHEMA_VERSION,
        "tags": [TAG],
        "templating": {"list": [datasource_variable(), *variables]},
        "time": {"from": "now-30m", "to": "now"},
        "timepicker": {},
        "timezone": "browser",
        "title": title,
        "uid": uid,
        "version": 1,
    }


# --------------------------------------------------------------------------- dashboards

JOB = 'job=~"$job"'
PIPELINE = 'pipeline=~"$pipeline"'
STAGE = 'stage=~"$stage"'
SINK = 'sink=~"$sink"'
TOOL = 'tool=~"$tool"'
PARENT = 'parent_pipeline=~"$pipeline"'
FAILED = 'status="fail"'
EXPORT_FAILED = 'result="export_failed"'


def pipelines_overview() -> Json:
    runs = "stageflow_pipeline_runs_total"
    run_duration = "stageflow_pipeline_run_duration_seconds"
    base = (JOB, PIPELINE)
    all_runs = f"sum({rate(sel(runs, *base))})"
    lay = Layout(
        runbook="StageflowPipelineFailureRatioHigh",
        runbooks=(
            ("runs / s", "StageflowNoRuns"),
            ("duration", "StageflowStageLatencyBudgetBurnFast"),
        ),
    )
    lay.row("Now")
    lay.add(
        stat(
            "Runs / s",
            "Pipeline runs finished per second (all statuses).",
            "ops",
            Target(all_runs, "runs/s"),
        ),
        6,
        4,
    )
    lay.add(
        stat(
            "Failed runs",
            "Share of finished runs with status fail.",
            "percentunit",
            Target(failure_ratio(runs, "", *base), "error ratio"),
            thresholds=[(None, "green"), (0.01, "orange"), (0.05, "red")],
        ),
        6,
        4,
    )
    lay.add(
        stat(
            "p95 run duration",
            "95th percentile of pipeline run duration.",
            "s",
            Target(
                "histogram_quantile(0.95, sum by (le) "
                f"({rate(sel('stageflow_pipeline_run_duration_seconds_bucket', *base))}))",
                "p95",
            ),
        ),
        6,
        4,
    )
    lay.add(
        stat(
            "Active runs",
            "Pipeline runs in progress now.",
            "short",
            Target(f"sum({sel('stageflow_pipeline_runs_active', *base)})", "active"),
        ),
        6,
        4,
    )
    lay.row("Throughput and errors")
    lay.add(
        timeseries(
            "Runs / s by status",
            "Finished pipeline runs per second, by pipeline and status (ok, fail, cancel).",
            "ops",
            [
                Target(
                    f"sum by (pipeline, status) ({rate(sel(runs, *base))})",
                    "{{pipeline}} {{status}}",
                )
            ],
            stack=True,
        ),
        12,
        8,
    )
    lay.add(
        timeseries(
            "Error ratio by pipeline",
            "Failed runs divided by all finished runs, per pipeline.",
            "percentunit",
            [Target(failure_ratio(runs, "pipeline", *base), "{{pipeline}}")],
            max_value=1,
        ),
        12,
        8,
    )
    lay.row("Duration and concurrency")
    lay.add(
        timeseries(
            "Run duration p50 / p95 / p99",
            "Quantiles of pipeline run duration, per pipeline, from the histogram buckets.",
            "s",
            quantile_targets("stageflow_pipeline_run_duration_seconds", "pipeline", base),
        ),
        12,
        8,
    )
    lay.add(
        timeseries(
            "Mean run duration by status",
            "Average run duration (histogram sum / count), per pipeline and status.",
            "s",
            [
                Target(
                    f"sum by (pipeline, status) ({rate(sel(f'{run_duration}_sum', *base))})"
                    f" / sum by (pipeline, status) ({rate(sel(f'{run_duration}_count', *base))})",
                    "{{pipeline}} {{status}}",
                )
            ],
        ),
        12,
        8,
    )
    lay.add(
        timeseries(
            "Active runs",
            "Pipeline runs in progress, per pipeline.",
            "short",
            [
                Target(
                    f"sum by (pipeline) ({sel('stageflow_pipeline_runs_active', *base)})",
                    "{{pipeline}}",
                )
            ],
        ),
        12,
        8,
    )
    lay.add(
        timeseries(
            "Concurrent stage executions",
            "Stages executing at the same time, per pipeline.",
            "short",
            [
                Target(
                    f"sum by (pipeline) ({sel('stageflow_stages_active', *base)})", "{{pipeline}}"
                )
            ],
        ),
        12,
        8,
    )
    return dashboard(
        "stageflow-pipelines",
        "stageflow-otel / Pipelines overview",
        "Pipeline runs: throughput by status, error ratio, duration quantiles, active runs.",
        [JOB_VAR, PIPELINE_VAR],
        lay,
        (
            "StageflowPipelineFailureRatioHigh",
            "StageflowNoRuns",
            *LATENCY_ALERTS,
        ),
    )


def stages() -> Json:
    runs = "stageflow_stage_runs_total"
    base = (JOB, PIPELINE, STAGE)
    lay = Layout(
        runbook="StageflowStageLatencyBudgetBurnFast",
        runbooks=(
            ("error", "StageflowPipelineFailureRatioHigh"),
            ("failures", "StageflowPipelineFailureRatioHigh"),
            ("short-circuit", "StageflowCircuitBreakerOpen"),
            ("remote stage runs", "StageflowPipelineFailureRatioHigh"),
        ),
    )
    lay.row("Throughput and errors")
    lay.add(
        timeseries(
            "Stage runs / s by status",
            "Finished stage executions per second, by stage and status"
            " (ok, skip, cancel, fail, retry).",
            "ops",
            [Target(f"sum by (stage, status) ({rate(sel(runs, *base))})", "{{stage}} {{status}}")],
            stack=True,
        ),
        12,
        8,
    )
    lay.add(
        timeseries(
            "Stage error ratio",
            "Failed stage executions divided by all finished ones, per stage.",
            "percentunit",
            [Target(failure_ratio(runs, "stage", *base), "{{stage}}")],
            max_value=1,
        ),
        12,
        8,
    )
    lay.add(
        timeseries(
            "Top failures by error type",
            "The ten most frequent (stage, error_type) pairs among failed stage executions.",
            "ops",
            [
                Target(
                    f"topk(10, sum by (stage, error_type) ({rate(sel(runs, *base, FAILED))}))",
                    "{{stage}} {{error_type}}",
                )
            ],
        ),
        24,
        8,
    )
    lay.row("Duration")
    lay.add(
        heatmap(
            "Stage duration distribution",
            "Histogram buckets of stage duration over time;"
            " exemplars link to the stage span in Jaeger.",
            Target(
                f"sum by (le) ({rate(sel('stageflow_stage_duration_seconds_bucket', *base))})",
                "{{le}}",
                exemplar=True,
                heatmap=True,
            ),
        ),
        12,
        9,
    )
    lay.add(
        timeseries(
            "Stage duration p50 / p95 / p99",
            "Quantiles of stage duration per stage;"
            " exemplar dots open the trace of a slow stage in Jaeger.",
            "s",
            quantile_targets("stageflow_stage_duration_seconds", "stage", base, exemplar=True),
        ),
        12,
        9,
    )
    lay.row("Retries, short-circuits, queueing, concurrency")
    lay.add(
        timeseries(
            "Retries / s",
            "Stage retries per second, per stage.",
            "ops",
            [
                Target(
                    f"sum by (stage) ({rate(sel('stageflow_stage_retries_total', *base))})",
                    "{{stage}}",
                )
            ],
        ),
        12,
        8,
    )
    lay.add(
        timeseries(
            "Interceptor short-circuits / s",
            "Stages answered by an interceptor without running, per interceptor and stage.",
            "ops",
            [
                Target(
                    "sum by (interceptor, stage) "
                    f"({rate(sel('stageflow_interceptor_short_circuits_total', JOB, STAGE))})",
                    "{{interceptor}} {{stage}}",
                )
            ],
        ),
        12,
        8,
    )
    lay.add(
        timeseries(
            "Queue wait p50 / p95 / p99",
            "Time between a stage's dependencies completing and the stage starting, per pipeline.",
            "s",
            quantile_targets("stageflow_stage_queue_wait_seconds", "pipeline", (JOB, PIPELINE)),
        ),
        12,
        8,
    )
    lay.add(
        timeseries(
            "Concurrent stage executions",
            "Stages executing at the same time, per pipeline.",
            "short",
            [
                Target(
                    f"sum by (pipeline) ({sel('stageflow_stages_active', JOB, PIPELINE)})",
                    "{{pipeline}}",
                )
            ],
        ),
        12,
        8,
    )
    lay.add(
        timeseries(
            "Interceptor duration p95",
            "95th percentile of the time spent in each interceptor.",
            "s",
            [
                Target(
                    quantile(0.95, "stageflow_interceptor_duration_seconds", "interceptor", JOB),
                    "{{interceptor}}",
                )
            ],
        ),
        24,
        8,
    )
    remote_stages(lay)
    return dashboard(
        "stageflow-stages",
        "stageflow-otel / Stages",
        "Per-stage rate, errors, duration (with exemplars to Jaeger), retries, short-circuits, "
        "queue wait and concurrency.",
        [JOB_VAR, PIPELINE_VAR, STAGE_VAR],
        lay,
        (*LATENCY_ALERTS, "StageflowCircuitBreakerOpen", "StageflowPipelineFailureRatioHigh"),
    )


def sinks() -> Json:
    events = "stageflow_sink_events_total"
    export_duration = "stageflow_sink_export_duration_seconds"
    base = (JOB, SINK)
    dropped = 'result=~"dropped_queue_full|dropped_shutdown"'
    lay = Layout(runbook="StageflowEventSinkDropping")
    lay.row("Queue")
    lay.add(
        timeseries(
            "Queue size vs capacity",
            "Events waiting in each sink's bounded queue, against the queue capacity.",
            "short",
            [
                Target(
                    f"sum by (sink) ({sel('stageflow_sink_queue_size', *base)})", "{{sink}} size"
                ),
                Target(
                    f"max by (sink) ({sel('stageflow_sink_queue_capacity', *base)})",
                    "{{sink}} capacity",
                ),
            ],
        ),
        12,
        8,
    )
    lay.add(
        timeseries(
            "Queue fill ratio",
            "Queue size divided by capacity;"
            " at 100 % new events are dropped (or block, per policy).",
            "percentunit",
            [
                Target(
                    f"max by (sink) ({sel('stageflow_sink_queue_size', *base)}"
                    f" / {sel('stageflow_sink_queue_capacity', *base)})",
                    "{{sink}}",
                )
            ],
            max_value=1,
        ),
        12,
        8,
    )
    lay.row("Events")
    lay.add(
        timeseries(
            "Events / s by result",
            "Events handled per second, by sink and result "
            "(exported, dropped_queue_full, dropped_shutdown, export_failed).",
            "ops",
            [Target(f"sum by (sink, result) ({rate(sel(events, *base))})", "{{sink}} {{result}}")],
            stack=True,
        ),
        12,
        8,
    )
    lay.add(
        timeseries(
            "Dropped events / s",
            "Events dropped because the queue was full or the sink was shut down.",
            "ops",
            [
                Target(
                    f"sum by (sink, result) ({rate(sel(events, *base, dropped))})",
                    "{{sink}} {{result}}",
                )
            ],
        ),
        12,
        8,
    )
    lay.add(
        timeseries(
            "Drop ratio",
            "Dropped events divided by all events, per sink.",
            "percentunit",
            [
                Target(
                    f"sum by (sink) ({rate(sel(events, *base, dropped))})"
                    f" / sum by (sink) ({rate(sel(events, *base))})",
                    "{{sink}}",
                )
            ],
            max_value=1,
        ),
        12,
        8,
    )
    lay.add(
        timeseries(
            "Export failures / s",
            "Events whose export failed after the bounded retries, per sink.",
            "ops",
            [
                Target(
                    f"sum by (sink) ({rate(sel(events, *base, EXPORT_FAILED))})",
                    "{{sink}}",
                )
            ],
        ),
        12,
        8,
    )
    lay.row("Export")
    lay.add(
        timeseries(
            "Export latency p50 / p95 / p99",
            "Duration of one batch export, per sink.",
            "s",
            quantile_targets("stageflow_sink_export_duration_seconds", "sink", base),
        ),
        12,
        8,
    )
    lay.add(
        timeseries(
            "Exports / s",
            "Batch exports per second, per sink.",
            "ops",
            [
                Target(
                    f"sum by (sink) ({rate(sel(f'{export_duration}_count', *base))})",
                    "{{sink}}",
                )
            ],
        ),
        12,
        8,
    )
    store_writes = "stageflow_store_writes_total"
    lay.row("Run store")
    lay.add(
        timeseries(
            "Run store records / s by result",
            "Records the run store's writer handled per second (runs, stages, checkpoints), by"
            " result: written, failed (after the retries), dropped_queue_full, dropped_shutdown."
            " A failing store never fails a run.",
            "ops",
            [
                Target(
                    f"sum by (store, result) ({rate(sel(store_writes, JOB))})",
                    "{{store}} {{result}}",
                )
            ],
        ),
        8,
        8,
    )
    lay.add(
        timeseries(
            "Run store write latency p50 / p95 / p99",
            "Duration of one batch write (one transaction, retries included), per store.",
            "s",
            quantile_targets("stageflow_store_write_duration_seconds", "store", (JOB,)),
        ),
        8,
        8,
    )
    lay.add(
        timeseries(
            "Run store bytes / s",
            "Bytes of the values the run store wrote per second (checkpoints are deltas).",
            "Bps",
            [
                Target(
                    f"sum by (store) ({rate(sel('stageflow_store_bytes_total', JOB))})",
                    "{{store}}",
                )
            ],
        ),
        8,
        8,
    )
    return dashboard(
        "stageflow-sinks",
        "stageflow-otel / Event sinks & backpressure",
        "Event-sink queues against capacity, events by result including drops,"
        " export latency and failures; the run store's writes.",
        [JOB_VAR, SINK_VAR],
        lay,
        ("StageflowEventSinkDropping",),
    )


def tools() -> Json:
    calls = "stageflow_tool_calls_total"
    subs = "stageflow_subpipeline_runs_total"
    lay = Layout(
        runbook="StageflowToolFailureRatioHigh",
        runbooks=(("subpipeline", "StageflowPipelineFailureRatioHigh"),),
    )
    lay.row("Tools")
    lay.add(
        timeseries(
            "Tool calls / s by status",
            "Tool calls per second, by tool and status.",
            "ops",
            [
                Target(
                    f"sum by (tool, status) ({rate(sel(calls, JOB, TOOL))})", "{{tool}} {{status}}"
                )
            ],
            stack=True,
        ),
        12,
        8,
    )
    lay.add(
        timeseries(
            "Tool error ratio",
            "Failed tool calls divided by all tool calls, per tool.",
            "percentunit",
            [Target(failure_ratio(calls, "tool", JOB, TOOL), "{{tool}}")],
            max_value=1,
        ),
        12,
        8,
    )
    lay.add(
        timeseries(
            "Tool duration p50 / p95 / p99",
            "Quantiles of tool call duration, per tool.",
            "s",
            quantile_targets("stageflow_tool_duration_seconds", "tool", (JOB, TOOL)),
        ),
        24,
        8,
    )
    lay.row("Subpipelines")
    lay.add(
        timeseries(
            "Subpipeline runs / s",
            "Child pipeline runs per second, by parent pipeline, child pipeline and status.",
            "ops",
            [
                Target(
                    f"sum by (parent_pipeline, pipeline, status) ({rate(sel(subs, JOB, PARENT))})",
                    "{{parent_pipeline}} → {{pipeline}} {{status}}",
                )
            ],
            stack=True,
        ),
        12,
        8,
    )
    lay.add(
        timeseries(
            "Subpipeline failure ratio",
            "Failed child runs divided by all child runs, per parent pipeline.",
            "percentunit",
            [Target(failure_ratio(subs, "parent_pipeline", JOB, PARENT), "{{parent_pipeline}}")],
            max_value=1,
        ),
        12,
        8,
    )
    return dashboard(
        "stageflow-tools",
        "stageflow-otel / Tools & subpipelines",
        "Tool calls (rate, errors, duration) and subpipeline runs spawned by each parent pipeline.",
        [JOB_VAR, PIPELINE_VAR, TOOL_VAR],
        lay,
        ("StageflowToolFailureRatioHigh", "StageflowPipelineFailureRatioHigh"),
    )


def remote_stages(lay: Layout) -> None:
    """The "Remote stages" row: stage functions run on the workers of a cluster.

    The workers' own /metrics; no stage filter, since the remote stages are usually a few of
    the pipeline's (the worker targets belong to the application's job, or pick All).
    """
    remote = "stageflow_remote_stages_total"
    base = (JOB, PIPELINE)
    lay.row("Remote stages")
    lay.add(
        timeseries(
            "Remote stage runs / s by status",
            "Stage functions finished per second on the cluster's workers, by stage and status;"
            " a task rerun after a lost worker counts once per run.",
            "ops",
            [
                Target(
                    f"sum by (stage, status) ({rate(sel(remote, *base))})", "{{stage}} {{status}}"
                )
            ],
            stack=True,
        ),
        8,
        8,
    )
    lay.add(
        timeseries(
            "Remote stage duration p50 / p95 / p99",
            "Quantiles of the time a stage function ran on a worker (without the queueing and"
            " the round trip that stage.run spans include).",
            "s",
            quantile_targets("stageflow_remote_stage_duration_seconds", "stage", base),
        ),
        8,
        8,
    )
    lay.add(
        timeseries(
            "Remote stage runs / s by worker",
            "Stage functions finished per second on each worker (its scrape target): an uneven"
            " spread or a worker that stops shows here.",
            "ops",
            [Target(f"sum by (instance) ({rate(sel(remote, *base))})", "{{instance}}")],
            stack=True,
        ),
        8,
        8,
    )


DASHBOARDS = {
    "stageflow-pipelines.json": pipelines_overview,
    "stageflow-stages.json": stages,
    "stageflow-sinks.json": sinks,
    "stageflow-tools.json": tools,
}


def render(build: Any) -> str:
    return json.dumps(build(), indent=2, ensure_ascii=False) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--check", action="store_true", help="fail if a committed file is stale")
    parser.add_argument("--out", type=Path, default=OUT_DIR, help="output directory")
    args = parser.parse_args(argv)
    stale = []
    for name, build in DASHBOARDS.items():
        path = args.out / name
        text = render(build)
        if args.check:
            if not path.exists() or path.read_text(encoding="utf-8") != text:
                stale.append(name)
        else:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text, encoding="utf-8")
    if stale:
        print(
            f"stale dashboards (run scripts/gen-dashboards.py): {', '.join(stale)}", file=sys.stderr
        )
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
