"""Smoke tests of the real components: span -> collector -> Jaeger, Prometheus, Redis."""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

import pytest
from opentelemetry._logs import LogRecord, SeverityNumber
from opentelemetry.exporter.otlp.proto.grpc._log_exporter import OTLPLogExporter
from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk._logs import LoggerProvider
from opentelemetry.sdk._logs.export import SimpleLogRecordProcessor
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor

from tests.support.servers import (
    CollectorServer,
    JaegerServer,
    get_json,
    start_postgres,
    start_prometheus,
    start_redis,
    wait_until,
)

pytestmark = pytest.mark.components


def _tags(span: dict[str, Any]) -> dict[str, Any]:
    return {tag["key"]: tag["value"] for tag in span.get("tags", [])}


def test_span_reaches_jaeger_through_the_collector(
    jaeger: JaegerServer, collector: CollectorServer
) -> None:
    service = f"stageflow-ops-smoke-{uuid.uuid4().hex[:8]}"
    provider = TracerProvider(resource=Resource.create({"service.name": service}))
    exporter = OTLPSpanExporter(endpoint=f"http://{collector.otlp_grpc_endpoint}", insecure=True)
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracer = provider.get_tracer("stageflow_otel.tests")
    with tracer.start_as_current_span("stage.run extract") as span:
        span.set_attribute("stageflow.stage.name", "extract")
        trace_id = format(span.get_span_context().trace_id, "032x")
    provider.shutdown()

    wait_until(lambda: service in jaeger.services(), 30.0, 0.2, what=f"service {service}")
    traces = jaeger.wait_for_traces(service)

    assert [trace["traceID"] for trace in traces] == [trace_id]
    (only_span,) = traces[0]["spans"]
    assert only_span["operationName"] == "stage.run extract"
    assert _tags(only_span)["stageflow.stage.name"] == "extract"
    process = traces[0]["processes"][only_span["processID"]]
    assert process["serviceName"] == service


def test_log_record_reaches_the_collector_debug_exporter(collector: CollectorServer) -> None:
    marker = f"run-{uuid.uuid4().hex}"
    provider = LoggerProvider(resource=Resource.create({"service.name": "stageflow-ops-smoke"}))
    exporter = OTLPLogExporter(endpoint=f"http://{collector.otlp_grpc_endpoint}", insecure=True)
    provider.add_log_record_processor(SimpleLogRecordProcessor(exporter))
    provider.get_logger("stageflow_otel.tests").emit(
        LogRecord(
            event_name="stage.completed",
            body={"pipeline": "checkout", "stage": "extract", "pipeline_run_id": marker},
            attributes={"stageflow.run.id": marker},
            severity_number=SeverityNumber.INFO,
        )
    )
    provider.shutdown()

    def record_logged() -> str | None:
        log = collector.log_text()
        return log if marker in log else None

    log = wait_until(record_logged, 15.0, 0.1, what="log record in the collector's debug output")
    assert log is not None
    assert "EventName: stage.completed" in log


def test_prometheus_scrapes_the_collector_telemetry(
    tmp_path: Path, collector: CollectorServer
) -> None:
    target = collector.telemetry_url.removeprefix("http://").removesuffix("/metrics")
    with start_prometheus(tmp_path / "prometheus", [target], job="otel-collector") as prom:
        up = prom.wait_for_series('up{job="otel-collector"} == 1')
        assert up[0]["metric"]["instance"] == target
        series = prom.wait_for_series('count({job="otel-collector", __name__=~"otelcol_.+"})')
        assert float(series[0]["value"][1]) > 0
        flags = get_json(f"{prom.url}/api/v1/status/flags")["data"]
        assert flags["enable-feature"] == "exemplar-storage"


def test_redis_server_starts_on_loopback(tmp_path: Path) -> None:
    with start_redis(tmp_path / "redis") as redis:
        assert redis.ping()
        assert redis.url == f"redis://127.0.0.1:{redis.port}/0"
        pid = redis.managed.pid
    assert redis.managed.process.poll() is not None, f"redis-server {pid} still running"


def test_postgres_starts_on_loopback_and_stops(tmp_path: Path) -> None:
    with start_postgres(tmp_path / "postgres") as postgres:
        assert postgres.accepts_connections()
        assert postgres.url == f"postgresql://stageflow@127.0.0.1:{postgres.port}/postgres"
        pid = postgres.managed.pid
    assert postgres.managed.process.poll() is not None, f"postgres {pid} still running"
