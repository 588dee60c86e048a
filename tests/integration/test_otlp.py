"""The real OTLP/HTTP exporters, from an instrumented run to an OTLP receiver."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import anyio
import pytest
from opentelemetry.exporter.otlp.proto.http._log_exporter import OTLPLogExporter
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from opentelemetry.test._otlp_test_server import OtlpProtoTestServer
from prometheus_client import CollectorRegistry

from stageflow_otel import (
    CollectingEventSink,
    Pipeline,
    RunIdentity,
    StageContext,
    StageExecutionError,
)
from stageflow_otel._version import package_version
from stageflow_otel.observability import Telemetry

pytestmark = pytest.mark.anyio

HANG = 10.0


async def fetch(ctx: StageContext) -> dict[str, Any]:
    return {"rows": 2}


async def fail(ctx: StageContext) -> None:
    raise ValueError("bad row")


def any_value(value: Any) -> Any:
    """A Python value of an OTLP ``AnyValue``."""
    kind = value.WhichOneof("value")
    if kind == "array_value":
        return [any_value(item) for item in value.array_value.values]
    if kind == "kvlist_value":
        return key_values(value.kvlist_value.values)
    return getattr(value, kind) if kind else None


def key_values(items: Iterable[Any]) -> dict[str, Any]:
    return {item.key: any_value(item.value) for item in items}


async def test_spans_and_log_records_reach_an_otlp_receiver(
    otlp_server: OtlpProtoTestServer, events: CollectingEventSink
) -> None:
    provider = TracerProvider(resource=Resource.create({"service.name": "stageflow-it"}))
    provider.add_span_processor(
        BatchSpanProcessor(OTLPSpanExporter(endpoint=otlp_server.traces_endpoint, timeout=5))
    )
    telemetry = Telemetry(
        tracer_provider=provider,
        registry=CollectorRegistry(),
        event_exporter=OTLPLogExporter(endpoint=otlp_server.logs_endpoint, timeout=5),
    )
    try:
        graph = (
            Pipeline("ingest")
            .with_stage("fetch", fetch)
            .with_stage("store", fail, dependencies=["fetch"])
            .build(hooks=telemetry.hooks, event_sink=telemetry.event_sink)
        )
        with anyio.fail_after(HANG), pytest.raises(StageExecutionError):
            await graph.run(event_sink=events, identity=RunIdentity(request_id="req-7"))

        assert provider.force_flush(5_000)
        assert telemetry.force_flush(timeout=5.0)
        received = otlp_server.get_spans(count=3, timeout=5.0)
        records = otlp_server.get_log_records(count=len(events.events), timeout=5.0)
    finally:
        telemetry.shutdown(timeout=5.0)
        provider.shutdown()

    spans = {recorded.span.name: recorded for recorded in received}
    assert sorted(spans) == ["pipeline.run ingest", "stage.run fetch", "stage.run store"]
    run = spans["pipeline.run ingest"].span
    assert run.parent_span_id == b""
    assert key_values(spans["pipeline.run ingest"].resource.attributes)["service.name"] == (
        "stageflow-it"
    )
    scope = spans["pipeline.run ingest"].scope
    assert (scope.name, scope.version) == ("stageflow_otel", package_version())
    for name in ("stage.run fetch", "stage.run store"):
        span = spans[name].span
        assert (span.trace_id, span.parent_span_id) == (run.trace_id, run.span_id)
    store = spans["stage.run store"].span
    stored = key_values(store.attributes)
    assert {key: stored[key] for key in ("stageflow.stage.status", "error.type")} == {
        "stageflow.stage.status": "fail",
        "error.type": "ValueError",
    }
    assert stored["stageflow.request.id"] == "req-7"
    assert stored["stageflow.stage.dependencies"] == ["fetch"]
    assert store.status.message == "bad row"
    assert [event.name for event in store.events] == ["exception"]
    assert [link.span_id for link in store.links] == [spans["stage.run fetch"].span.span_id]
    assert key_values(run.attributes)["stageflow.run.status"] == "fail"

    assert [record.log_record.event_name for record in records] == events.types
    span_ids = {
        "pipeline": run.span_id,
        "fetch": spans["stage.run fetch"].span.span_id,
        "store": store.span_id,
    }
    for record, event in zip(records, events.events, strict=True):
        log = record.log_record
        owner = "pipeline" if event.type.startswith("pipeline.") else str(event.data["stage"])
        assert (log.trace_id, log.span_id) == (run.trace_id, span_ids[owner]), event.type
        assert key_values(log.attributes)["pipeline"] == "ingest"
        assert (
            key_values([*log.body.kvlist_value.values])["pipeline_run_id"]
            == (event.data["pipeline_run_id"])
        )
