"""Metrics through the OpenTelemetry metrics API: same names and attributes as /metrics."""

from __future__ import annotations

from typing import Any

import pytest
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import (
    HistogramDataPoint,
    InMemoryMetricReader,
    NumberDataPoint,
)
from prometheus_client import CollectorRegistry

from stageflow_otel import Pipeline
from stageflow_otel.observability import Telemetry
from stageflow_otel.observability.metrics import DURATION_BUCKETS
from stageflow_otel.testing import in_memory_telemetry

from .support import RETRY_ONCE, fails_once, ok_stage, points, raising_stage, run_graph

pytestmark = pytest.mark.anyio


def value(found: dict[str, list[Any]], name: str, **attributes: str) -> Any:
    [point] = [p for p in found[name] if dict(p.attributes) == attributes]
    return point


async def test_the_contracts_metrics_go_through_a_meter_provider_too() -> None:
    reader = InMemoryMetricReader()
    recorded = in_memory_telemetry(
        canonical_logs=False, meter_provider=MeterProvider(metric_readers=[reader])
    )
    graph = (
        Pipeline("orders")
        .with_stage("load", ok_stage)
        .with_stage("charge", fails_once(), dependencies=["load"], interceptors=[RETRY_ONCE])
        .with_stage("notify", raising_stage, dependencies=["charge"])
        .build(hooks=recorded.hooks)
    )
    await run_graph(graph)
    recorded.shutdown()
    found = points(reader)

    runs = value(found, "stageflow_pipeline_runs", pipeline="orders", status="fail")
    assert isinstance(runs, NumberDataPoint)
    assert runs.value == 1
    failed = value(
        found,
        "stageflow_stage_runs",
        pipeline="orders",
        stage="notify",
        status="fail",
        error_type="ValueError",
    )
    assert failed.value == 1
    ok = value(
        found, "stageflow_stage_runs", pipeline="orders", stage="load", status="ok", error_type=""
    )
    assert ok.value == 1
    assert value(found, "stageflow_stage_retries", pipeline="orders", stage="charge").value == 1
    duration = value(
        found, "stageflow_stage_duration_seconds", pipeline="orders", stage="charge", status="ok"
    )
    assert isinstance(duration, HistogramDataPoint)
    assert duration.count == 1
    assert list(duration.explicit_bounds) == list(DURATION_BUCKETS)
    # Up-down counters back at zero once everything ended.
    assert value(found, "stageflow_stages_active", pipeline="orders").value == 0
    assert value(found, "stageflow_pipeline_runs_active", pipeline="orders").value == 0
    assert value(found, "stageflow_interceptor_duration_seconds", interceptor="retry").count == 1
    # The Prometheus metrics are still there, with the same values.
    labels = {"pipeline": "orders", "stage": "notify", "status": "fail", "error_type": "ValueError"}
    assert recorded.sample("stageflow_stage_runs_total", labels) == 1.0


async def test_stage_labels_are_bounded_alike_on_both_paths() -> None:
    reader = InMemoryMetricReader()
    telemetry = Telemetry(
        registry=CollectorRegistry(),
        meter_provider=MeterProvider(metric_readers=[reader]),
        metrics=False,  # OpenTelemetry metrics only
        canonical_logs=False,
        max_stage_names=1,
    )
    graph = (
        Pipeline("p")
        .with_stage("a", ok_stage)
        .with_stage("b", ok_stage, dependencies=["a"])
        .build(hooks=telemetry.hooks)
    )
    await run_graph(graph)
    found = points(reader)

    stages = sorted(p.attributes["stage"] for p in found["stageflow_stage_runs"])
    assert stages == ["_OTHER", "a"]
    assert list(telemetry.registry.collect()) == []  # no Prometheus metrics asked for


async def test_stage_durations_carry_exemplars_of_the_stage_spans() -> None:
    reader = InMemoryMetricReader()
    recorded = in_memory_telemetry(
        canonical_logs=False, meter_provider=MeterProvider(metric_readers=[reader])
    )
    graph = (
        Pipeline("orders")
        .with_stage("load", ok_stage)
        .with_stage("charge", ok_stage, dependencies=["load"])
        .build(hooks=recorded.hooks)
    )
    await run_graph(graph)
    found = points(reader)  # exemplars are those since the last collection: collect first
    recorded.shutdown()
    spans = {
        s.name: s.context
        for s in recorded.exporter.get_finished_spans()
        if s.name.startswith("stage.")
    }
    for stage in ("load", "charge"):
        point = value(
            found, "stageflow_stage_duration_seconds", pipeline="orders", stage=stage,
            status="ok",
        )  # fmt: skip
        [exemplar] = point.exemplars
        assert exemplar.span_id == spans[f"stage.run {stage}"].span_id
        assert exemplar.trace_id == spans[f"stage.run {stage}"].trace_id
