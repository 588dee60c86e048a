"""``demo --otlp-endpoint``: spans reach Jaeger and events reach the collector, over OTLP."""

from __future__ import annotations

import re
import uuid
from pathlib import Path

import pytest

from stageflow_otel.demo import PIPELINE_NAME, example_stage_names
from tests.cli.support import run_cli
from tests.support.servers import (
    CollectorServer,
    JaegerServer,
    wait_until,
)

pytestmark = pytest.mark.components


@pytest.mark.parametrize(
    ("protocol", "endpoint_of"),
    [
        ("grpc", lambda c: c.otlp_grpc_endpoint),
        ("http/protobuf", lambda c: c.otlp_http_endpoint),
    ],
    ids=["grpc", "http"],
)
def test_demo_exports_spans_and_events_over_otlp(
    tmp_path: Path,
    jaeger: JaegerServer,
    collector: CollectorServer,
    protocol: str,
    endpoint_of: object,
) -> None:
    assert callable(endpoint_of)
    service = f"stageflow-otel-demo-{uuid.uuid4().hex[:8]}"
    result = run_cli(
        "demo",
        "--runs",
        "1",
        "--metrics-port",
        "0",
        "--out",
        str(tmp_path / "out"),
        "--otlp-endpoint",
        f"http://{endpoint_of(collector)}",
        "--otlp-protocol",
        protocol,
        env={"OTEL_SERVICE_NAME": service},
    )
    assert result.returncode == 0, result.stderr
    assert f"service.name={service}" in result.stdout
    match = re.search(r"trace of run 1/1\s+([0-9a-f]{32})", result.stdout)
    assert match is not None
    trace_id = match.group(1)

    traces = jaeger.wait_for_traces(
        service, lambda found: any(t["traceID"] == trace_id for t in found)
    )
    (trace,) = [t for t in traces if t["traceID"] == trace_id]
    names = {span["operationName"] for span in trace["spans"]}
    assert f"pipeline.run {PIPELINE_NAME}" in names
    assert {f"stage.run {name}" for name in example_stage_names()} <= names
    assert "chat mock-writer" in names  # the mock model's GenAI span: the CLI records helpers
    assert len(trace["spans"]) == 22

    def events_logged() -> str | None:
        log = collector.log_text()
        return log if "EventName: pipeline.completed" in log else None

    log = wait_until(events_logged, 15.0, 0.1, what="the run's events in the collector's output")
    assert log is not None
    assert "EventName: tool.completed" in log
    assert trace_id in log  # the event records carry the run's trace context
