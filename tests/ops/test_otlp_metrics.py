"""Metrics over OTLP, end to end: app -> collector (prometheus exporter) -> Prometheus.

An in-process application records the contract's metrics through an OpenTelemetry
``MeterProvider`` only (``metrics=False``: no ``/metrics`` of its own) and pushes them over
OTLP/gRPC to the real collector running ``otel-collector.yaml``. A real Prometheus scrapes
the collector's prometheus exporter with ``honor_labels: true``, as ``prometheus.yml`` does.
The series must carry the contract's names and labels, ``job`` must be the application's
``service.name``, and the dashboards' own queries must return data from this path.
"""

from __future__ import annotations

import functools
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
import pytest
from opentelemetry.exporter.otlp.proto.grpc.metric_exporter import OTLPMetricExporter
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import PeriodicExportingMetricReader
from opentelemetry.sdk.resources import Resource
from prometheus_client import CollectorRegistry

from stageflow_otel import Pipeline, StageContext
from stageflow_otel.core import PipelineCancelled, StageExecutionError
from stageflow_otel.observability import Telemetry
from stageflow_otel.observability.metrics import DURATION_BUCKETS
from tests.ops.helpers import Json, contract_series
from tests.ops.test_end_to_end import PanelQuery, panel_queries, substitute
from tests.support.servers import (
    CollectorServer,
    PrometheusServer,
    free_port,
    start_collector,
    start_prometheus,
    wait_until,
)

PIPELINE = "checkout"
FAILING_STAGE = "charge"
SCRAPE_JOB = "otel-collector-metrics"  # replaced by the exposed job: honor_labels
INSTANCE = "checkout-1"
TIMEOUT = 20.0

# Dashboard queries that must return a positive value from this path alone.
DASHBOARD_QUERIES = (
    PanelQuery("stageflow-pipelines.json", 2, "Runs / s", "A"),
    PanelQuery("stageflow-pipelines.json", 3, "Failed runs", "A"),
    PanelQuery("stageflow-stages.json", 4, "Top failures by error type", "A"),
    PanelQuery("stageflow-stages.json", 6, "Stage duration distribution", "A"),
)


@dataclass(frozen=True)
class Stack:
    collector: CollectorServer
    prometheus: PrometheusServer


@pytest.fixture
def stack(tmp_path: Path) -> Iterator[Stack]:
    # No Jaeger: nothing here sends traces, so the traces exporter's target stays unused.
    unused_jaeger = f"127.0.0.1:{free_port()}"
    with (
        start_collector(
            tmp_path / "otelcol",
            jaeger_otlp_grpc_endpoint=unused_jaeger,
            debug_verbosity="basic",
        ) as collector,
        start_prometheus(
            tmp_path / "prometheus",
            [collector.prometheus_endpoint],
            job=SCRAPE_JOB,
            honor_labels=True,
        ) as prometheus,
    ):
        yield Stack(collector, prometheus)


class App:
    """A pipeline application whose metrics leave only over OTLP."""

    def __init__(self, otlp_grpc_endpoint: str, service: str) -> None:
        exporter = OTLPMetricExporter(endpoint=otlp_grpc_endpoint, insecure=True)
        self.provider = MeterProvider(
            resource=Resource.create({"service.name": service, "service.instance.id": INSTANCE}),
            metric_readers=[PeriodicExportingMetricReader(exporter, export_interval_millis=500)],
        )
        self.telemetry = Telemetry(
            registry=CollectorRegistry(),
            meter_provider=self.provider,
            metrics=False,
            canonical_logs=False,
        )
        self.fail = False

    async def load(self, ctx: StageContext) -> dict[str, Any]:
        return {"items": 2}

    async def charge(self, ctx: StageContext) -> dict[str, Any]:
        if self.fail:
            raise ValueError("card declined")
        return {"charged": True}

    def run(self, *, fail: bool = False) -> None:
        self.fail = fail
        graph = (
            Pipeline(PIPELINE)
            .with_stage("load", self.load)
            .with_stage(FAILING_STAGE, self.charge, dependencies=["load"])
            .build(hooks=self.telemetry.hooks)
        )

        async def main() -> None:
            try:
                await graph.run()
            except (StageExecutionError, PipelineCancelled):
                assert fail, "only the failing run may fail"

        anyio.run(main)

    def flush(self) -> None:
        assert self.provider.force_flush(timeout_millis=5_000)

    def shutdown(self) -> None:
        self.provider.shutdown()


def _positive(prometheus: PrometheusServer, promql: str) -> list[Json]:
    """The series of ``promql`` whose value is above 0."""
    return [s for s in prometheus.query(promql) if float(s["value"][1]) > 0]


def _values(result: list[Json], label: str) -> dict[str, float]:
    return {series["metric"][label]: float(series["value"][1]) for series in result}


def _wait_for(
    prometheus: PrometheusServer, promql: str, expected: dict[str, float], label: str
) -> list[Json]:
    """Poll ``promql`` until its values by ``label`` are ``expected``; return the result."""
    last: list[list[Json]] = [[]]

    def check() -> list[Json]:
        last[0] = prometheus.query(promql)
        return last[0] if _values(last[0], label) == expected else []

    try:
        return wait_until(check, TIMEOUT, 0.25, what=f"{promql} == {expected}")
    except TimeoutError as exc:
        raise AssertionError(f"{exc}; last answer: {last[0]}") from None


def test_contract_metrics_reach_prometheus_through_the_collector(stack: Stack) -> None:
    prometheus = stack.prometheus
    service = f"stageflow-otlp-{uuid.uuid4().hex[:8]}"
    job = f'job="{service}"'
    app = App(stack.collector.otlp_grpc_endpoint, service)
    try:
        # Two rounds, each scraped, so that the dashboards' rates see the counters grow.
        for fail in (False, False, True):
            app.run(fail=fail)
        app.flush()
        _wait_for(
            prometheus,
            f"sum by (status) (stageflow_pipeline_runs_total{{{job}}})",
            {"ok": 2, "fail": 1},
            "status",
        )
        for fail in (False, True):
            app.run(fail=fail)
        app.flush()
        runs = _wait_for(
            prometheus,
            f"stageflow_pipeline_runs_total{{{job}}}",
            {"ok": 3, "fail": 2},
            "status",
        )
    finally:
        app.shutdown()

    # job and instance are the application's service.name and service.instance.id
    # (honor_labels), not the scrape job and target; no otel_scope_* labels.
    for series in runs:
        labels = dict(series["metric"])
        assert labels.pop("__name__") == "stageflow_pipeline_runs_total"
        assert labels.pop("job") == service
        assert labels.pop("instance") == INSTANCE  # service.instance.id
        assert labels == {"pipeline": PIPELINE, "status": labels["status"]}

    failed = prometheus.query(f'stageflow_stage_runs_total{{{job}, status="fail"}}')
    assert [
        ({k: v for k, v in s["metric"].items() if k != "instance"}, s["value"][1]) for s in failed
    ] == [
        (
            {
                "__name__": "stageflow_stage_runs_total",
                "job": service,
                "pipeline": PIPELINE,
                "stage": FAILING_STAGE,
                "status": "fail",
                "error_type": "ValueError",
            },
            "2",
        )
    ]
    ok = prometheus.query(f'stageflow_stage_runs_total{{{job}, status="ok"}}')
    assert _values(ok, "stage") == {"load": 5, FAILING_STAGE: 3}
    # error_type="" on success: an empty label value is no label in Prometheus, on both paths.
    assert all("error_type" not in s["metric"] for s in ok)

    # Histograms: the contract's buckets in seconds, one observation per stage run.
    buckets = prometheus.query(
        f'stageflow_stage_duration_seconds_bucket{{{job}, stage="load", status="ok"}}'
    )
    bounds = _values(buckets, "le")
    assert sorted(float(le) for le in bounds) == sorted([*DURATION_BUCKETS, float("inf")])
    assert bounds["+Inf"] == 5
    count = prometheus.query(f'stageflow_stage_duration_seconds_count{{{job}, stage="load"}}')
    assert _values(count, "status") == {"ok": 5}

    # Every stageflow series from this path is a series of the contract (no doubled
    # `_seconds`, no counter without `_total`, no namespace prefix).
    names = {
        s["metric"]["__name__"] for s in prometheus.query(f'{{__name__=~"stageflow_.+", {job}}}')
    }
    assert "stageflow_stage_queue_wait_seconds_bucket" in names
    assert "stageflow_pipeline_runs_active" in names
    assert names - set(contract_series()) == set()

    # The dashboards' own queries, with $job set to the service name.
    variables = {"job": service, "pipeline": PIPELINE, "stage": ".*", "tool": ".*", "sink": ".*"}
    queries = panel_queries()
    deadline = time.monotonic() + TIMEOUT
    for key in DASHBOARD_QUERIES:
        promql = substitute(queries[key], variables)
        result = wait_until(
            functools.partial(_positive, prometheus, promql),
            max(deadline - time.monotonic(), 1.0),
            0.25,
            what=f"{key.dashboard} panel {key.panel_id} {key.title!r}: {promql}",
        )
        if key.title == "Top failures by error type":
            assert [(s["metric"]["stage"], s["metric"]["error_type"]) for s in result] == [
                (FAILING_STAGE, "ValueError")
            ]
