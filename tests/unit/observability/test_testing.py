"""The public test helpers of ``stageflow_otel.testing``."""

from __future__ import annotations

import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import NonRecordingSpan, SpanContext, TraceFlags

from stageflow_otel import Pipeline
from stageflow_otel.observability import Telemetry
from stageflow_otel.testing import InMemoryTelemetry, OpenSpanTracker, span_tree

from .support import noop_stage, run_graph


def private_tracer() -> tuple[trace.Tracer, InMemorySpanExporter, OpenSpanTracker]:
    exporter = InMemorySpanExporter()
    tracker = OpenSpanTracker()
    provider = TracerProvider()
    provider.add_span_processor(tracker)
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    return provider.get_tracer("test"), exporter, tracker


def test_span_tree_orders_siblings_by_start_time_then_name() -> None:
    tracer, exporter, _ = private_tracer()
    with tracer.start_as_current_span("root"):
        late = tracer.start_span("b late", start_time=300)
        early = tracer.start_span("z early", start_time=100)
        tied_y = tracer.start_span("y tied", start_time=200)
        tied_x = tracer.start_span("x tied", start_time=200)
        with trace.use_span(early):
            tracer.start_span("child", start_time=150).end()
        for span in (late, early, tied_y, tied_x):
            span.end()

    spans = exporter.get_finished_spans()
    assert span_tree(spans) == [
        "root",
        "  z early",
        "    child",
        "  x tied",
        "  y tied",
        "  b late",
    ]
    assert span_tree(spans, order="name") == [
        "root",
        "  b late",
        "  x tied",
        "  y tied",
        "  z early",
        "    child",
    ]


def test_span_tree_starts_a_tree_at_spans_whose_parent_is_missing() -> None:
    tracer, exporter, _ = private_tracer()
    remote = SpanContext(0x1234, 0x5678, is_remote=True, trace_flags=TraceFlags(1))
    with trace.use_span(NonRecordingSpan(remote)), tracer.start_as_current_span("joined"):
        tracer.start_span("inner").end()
    with tracer.start_as_current_span("second root"):
        pass

    assert span_tree(exporter.get_finished_spans()) == ["joined", "  inner", "second root"]
    assert span_tree([]) == []


def test_open_span_tracker_reports_spans_not_ended() -> None:
    tracer, _, tracker = private_tracer()
    left_open = tracer.start_span("left open")
    tracer.start_span("ended").end()

    assert tracker.open_spans() == ["left open"]
    left_open.end()
    assert (tracker.open_spans(), tracker.started, tracker.ended) == ([], 2, 2)


@pytest.mark.anyio
async def test_in_memory_telemetry_is_private(telemetry: InMemoryTelemetry) -> None:
    assert isinstance(telemetry.telemetry, Telemetry)
    assert telemetry.telemetry.registry is telemetry.registry
    assert telemetry.hooks == telemetry.telemetry.hooks
    assert not isinstance(trace.get_tracer_provider(), TracerProvider)

    await run_graph(Pipeline("p").with_stage("a", noop_stage).build(hooks=telemetry.hooks))

    assert telemetry.tree() == ["pipeline.run p", "  stage.run a"]
    assert telemetry.sample("stageflow_pipeline_runs_total", {"pipeline": "p", "status": "ok"}) == 1
    with pytest.raises(LookupError, match=r"expected one span 'stage.run b', found 0"):
        telemetry.span("stage.run b")
    telemetry.clear()
    assert telemetry.spans() == ()
