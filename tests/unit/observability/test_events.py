"""Lifecycle events: trace context, OpenTelemetry log export, span events, failing exporters."""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

import pytest
from opentelemetry._logs import SeverityNumber
from opentelemetry.sdk._logs import LoggerProvider, ReadableLogRecord
from opentelemetry.sdk._logs.export import (
    InMemoryLogRecordExporter,
    LogRecordExporter,
    LogRecordExportResult,
    SimpleLogRecordProcessor,
)
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.sampling import ALWAYS_OFF, ALWAYS_ON
from prometheus_client import CollectorRegistry

from stageflow_otel import CollectingEventSink, FanOutEventSink, Pipeline, StageGraph
from stageflow_otel.core import DropOldest, OverflowPolicy, QueuedEvent
from stageflow_otel.core.events import Event, rfc3339_ns
from stageflow_otel.observability import OtelLogEventSink, Telemetry
from stageflow_otel.observability.sinks import SpanEventSink, event_to_log_record
from stageflow_otel.testing import InMemoryTelemetry, in_memory_telemetry
from tests.support.servers import wait_until

from .support import HANG, hex_ids, ok_stage, raising_stage, run_graph, series

pytestmark = pytest.mark.anyio

RFC3339_UTC = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?Z$")
SINK_RESULTS = ("exported", "dropped_queue_full", "dropped_shutdown", "export_failed")


def checkout(telemetry: InMemoryTelemetry, **build: Any) -> StageGraph:
    """``fetch`` then ``charge`` (which fails), observed by ``telemetry``."""
    return (
        Pipeline("checkout")
        .with_stage("fetch", ok_stage)
        .with_stage("charge", raising_stage, dependencies=["fetch"])
        .build(hooks=telemetry.hooks, **build)
    )


def sink_counts(telemetry: InMemoryTelemetry) -> dict[str, float]:
    found = series(telemetry.registry, "stageflow_sink_events_total")
    return {result: found.get(f"result={result},sink=otel_logs", 0.0) for result in SINK_RESULTS}


def ids_of(payload: Mapping[str, Any]) -> tuple[Any, Any]:
    return payload.get("trace_id"), payload.get("span_id")


async def test_lifecycle_events_carry_the_ids_of_their_span(
    telemetry: InMemoryTelemetry, events: CollectingEventSink
) -> None:
    await run_graph(checkout(telemetry), event_sink=events)

    assert events.types == [
        "pipeline.started",
        "stage.started",
        "stage.completed",
        "stage.started",
        "stage.failed",
        "pipeline.failed",
    ]
    run_ids = hex_ids(telemetry.span("pipeline.run checkout"))
    for event in events.events:
        data = event.data
        expected = (
            run_ids
            if event.type.startswith("pipeline.")
            else hex_ids(telemetry.span(f"stage.run {data['stage']}"))
        )
        assert ids_of(data) == expected, event.type
        assert data["pipeline"] == "checkout"
        assert RFC3339_UTC.match(str(data["timestamp"])), data["timestamp"]
    run_id = telemetry.span("pipeline.run checkout").attributes["stageflow.run.id"]  # type: ignore[index]
    assert {event.data["pipeline_run_id"] for event in events.events} == {run_id}


async def test_events_carry_no_trace_ids_without_tracing(events: CollectingEventSink) -> None:
    graph = Pipeline("p").with_stage("a", ok_stage).build(hooks=[])

    await run_graph(graph, event_sink=events)

    assert events.types == [
        "pipeline.started",
        "stage.started",
        "stage.completed",
        "pipeline.completed",
    ]
    assert [ids_of(event.data) for event in events.events] == [(None, None)] * 4


def new_log_exporter() -> InMemoryLogRecordExporter:
    return InMemoryLogRecordExporter()  # type: ignore[no-untyped-call]  # untyped __init__


@pytest.fixture
def log_exporter() -> InMemoryLogRecordExporter:
    return new_log_exporter()


@pytest.fixture
def exporting(log_exporter: InMemoryLogRecordExporter) -> Iterator[InMemoryTelemetry]:
    recorded = in_memory_telemetry(event_exporter=log_exporter)
    try:
        yield recorded
    finally:
        recorded.shutdown()


async def test_otel_log_event_sink_exports_each_event_as_a_log_record(
    exporting: InMemoryTelemetry,
    log_exporter: InMemoryLogRecordExporter,
    events: CollectingEventSink,
) -> None:
    sink = exporting.telemetry.event_sink
    graph = checkout(exporting, event_sink=sink)

    await run_graph(graph, event_sink=events)
    assert exporting.telemetry.force_flush(timeout=HANG)

    records = [item.log_record for item in log_exporter.get_finished_logs()]
    assert [record.event_name for record in records] == events.types
    for record, event in zip(records, events.events, strict=True):
        # The body is the payload but for its time and trace context: the record's own fields.
        payload = dict(event.data)
        timestamp = payload.pop("timestamp")
        payload.pop("trace_flags")
        assert record.body == {k: v for k, v in payload.items() if k not in ("trace_id", "span_id")}
        assert rfc3339_ns(record.timestamp or 0) == timestamp
        trace_id, span_id = ids_of(event.data)
        assert (format(record.trace_id or 0, "032x"), format(record.span_id or 0, "016x")) == (
            trace_id,
            span_id,
        )
    failed = records[events.types.index("stage.failed")]
    assert failed.severity_number is SeverityNumber.ERROR
    assert dict(failed.attributes or {}) == {
        "stage": "charge",
        "status": "fail",
        "duration_ms": failed.body["duration_ms"],  # type: ignore[index,call-overload]
        "attempt": 1,
        "error": "bad input",
        "error_type": "ValueError",
        "pipeline_run_id": failed.body["pipeline_run_id"],  # type: ignore[index,call-overload]
        "pipeline": "checkout",
    }
    finished = records[-1]
    assert finished.event_name == "pipeline.failed"
    flattened = dict(finished.attributes or {})
    assert (flattened["stage_counts.ok"], flattened["stage_counts.fail"]) == (1, 1)
    assert "stage_counts" not in flattened
    assert "trace_id" not in flattened
    assert "span_id" not in flattened
    assert sink_counts(exporting) == {
        "exported": len(records),
        "dropped_queue_full": 0.0,
        "dropped_shutdown": 0.0,
        "export_failed": 0.0,
    }


async def test_log_records_go_through_a_logger_provider(events: CollectingEventSink) -> None:
    exporter = new_log_exporter()
    provider = LoggerProvider()
    provider.add_log_record_processor(SimpleLogRecordProcessor(exporter))
    recorded = in_memory_telemetry(logger_provider=provider)
    try:
        graph = (
            Pipeline("p")
            .with_stage("a", ok_stage)
            .build(hooks=recorded.hooks, event_sink=recorded.telemetry.event_sink)
        )

        await run_graph(graph, event_sink=events)
        assert recorded.telemetry.force_flush(timeout=HANG)

        received = [item.log_record for item in exporter.get_finished_logs()]
        assert [record.event_name for record in received] == events.types
        stage = recorded.span("stage.run a")
        assert stage.context is not None
        assert received[1].span_id == stage.context.span_id
    finally:
        recorded.shutdown()
        provider.shutdown()


class RaisingExporter(LogRecordExporter):
    """Every export raises."""

    def __init__(self) -> None:
        self.calls = 0

    def export(self, batch: Sequence[ReadableLogRecord]) -> LogRecordExportResult:
        self.calls += 1
        raise ConnectionRefusedError("collector is down")

    def shutdown(self) -> None:
        return None

    def force_flush(self, timeout_millis: int = 30_000) -> bool:
        return True


class StalledExporter(LogRecordExporter):
    """Every export blocks until released."""

    def __init__(self) -> None:
        self.release = threading.Event()
        self.calls = 0

    def export(self, batch: Sequence[ReadableLogRecord]) -> LogRecordExportResult:
        self.calls += 1
        self.release.wait(60)
        return LogRecordExportResult.SUCCESS

    def shutdown(self) -> None:
        return None

    def force_flush(self, timeout_millis: int = 30_000) -> bool:
        return True


async def test_raising_exporter_never_fails_the_pipeline(events: CollectingEventSink) -> None:
    exporter = RaisingExporter()
    recorded = in_memory_telemetry(event_exporter=exporter, sink_options={"max_retries": 0})
    try:
        graph = (
            Pipeline("p")
            .with_stage("a", ok_stage)
            .with_stage("b", ok_stage, dependencies=["a"])
            .build(hooks=recorded.hooks, event_sink=recorded.telemetry.event_sink)
        )

        results = await run_graph(graph, event_sink=events)

        assert {name: out.status.value for name, out in results.items()} == {"a": "ok", "b": "ok"}
        recorded.telemetry.force_flush(timeout=HANG)
        total = len(events.events)
        wait_until(lambda: sum(sink_counts(recorded).values()) == total, HANG)
        assert sink_counts(recorded) == {
            "exported": 0.0,
            "dropped_queue_full": 0.0,
            "dropped_shutdown": 0.0,
            "export_failed": total,
        }
        assert exporter.calls >= 1
    finally:
        recorded.shutdown()


async def test_stalled_exporter_never_hangs_the_pipeline(events: CollectingEventSink) -> None:
    exporter = StalledExporter()
    recorded = in_memory_telemetry(
        event_exporter=exporter,
        sink_options={
            "max_retries": 0,
            "export_timeout": 0.05,
            "max_queue_size": 4,
            "max_batch_size": 2,
        },
    )
    try:
        graph = (
            Pipeline("p")
            .with_stage("a", ok_stage)
            .with_stage("b", ok_stage, dependencies=["a"])
            .with_stage("c", ok_stage, dependencies=["b"])
            .build(hooks=recorded.hooks, event_sink=recorded.telemetry.event_sink)
        )

        results = await run_graph(graph, event_sink=events)  # fails the test if it hangs

        assert [out.status.value for out in results.values()] == ["ok", "ok", "ok"]
        assert not recorded.telemetry.shutdown(timeout=0.2)
        counts = sink_counts(recorded)
        assert counts["exported"] == 0
        # Every event is accounted for, and the queue of 4 could not hold all 8.
        assert sum(counts.values()) == len(events.events) == 8
        assert counts["dropped_queue_full"] + counts["dropped_shutdown"] >= 4
    finally:
        exporter.release.set()
        recorded.shutdown()


class KeepFailures(OverflowPolicy):
    """A full queue evicts its oldest event that is not a failure, else drops the offered one."""

    result = "dropped_not_failure"

    def on_full(self, event: QueuedEvent, queued: Sequence[QueuedEvent]) -> int | None:
        for index, waiting in enumerate(queued):
            if not waiting.type.endswith(".failed"):
                return index
        return None


async def test_a_custom_policy_reports_its_drops_under_its_own_result(
    events: CollectingEventSink,
) -> None:
    exporter = StalledExporter()
    recorded = in_memory_telemetry(
        event_exporter=exporter,
        sink_options={"policy": KeepFailures(), "max_queue_size": 2, "max_batch_size": 1},
    )
    sink = recorded.telemetry.event_sink
    assert isinstance(sink, OtelLogEventSink)
    try:
        counts = series(recorded.registry, "stageflow_sink_events_total")
        assert counts["result=dropped_not_failure,sink=otel_logs"] == 0  # a series from the start
        sink.try_emit(type="plug", data={})
        wait_until(lambda: exporter.calls == 1, HANG, 0.005, what="the export of the plug")

        await run_graph(checkout(recorded, event_sink=sink), event_sink=events)

        assert len(events.events) == 6
        stats = sink.statistics()
        assert (stats.policy, stats.queue_size, stats.dropped_queue_full) == ("KeepFailures", 2, 4)
        exporter.release.set()
        assert sink.force_flush(timeout=HANG)
        counts = series(recorded.registry, "stageflow_sink_events_total")
        assert counts["result=dropped_not_failure,sink=otel_logs"] == 4
        assert counts["result=exported,sink=otel_logs"] == 3  # the plug and the two failures
        assert "result=dropped_queue_full,sink=otel_logs" not in counts
        assert exporter.calls == 3
    finally:
        exporter.release.set()
        recorded.shutdown()


async def test_otel_log_event_sink_queues_only_the_selected_events() -> None:
    exporter = new_log_exporter()
    sink = OtelLogEventSink(
        exporter, events=["stage.failed"], name="failures", max_queue_size=8, policy=DropOldest()
    )
    async with sink:
        sink.try_emit(type="stage.started", data={"stage": "a"})
        sink.try_emit(type="stage.failed", data={"stage": "a"})
        await sink.emit(type="stage.completed", data={"stage": "b"})
        await sink.emit(type="stage.failed", data={"stage": "b"})
        sink.try_emit_event(Event("stage.started", {"stage": "c"}))
        sink.try_emit_event(Event("stage.failed", {"stage": "c"}))
        assert await sink.aflush(timeout=HANG)

    records = [item.log_record for item in exporter.get_finished_logs()]
    assert [(r.event_name, r.attributes["stage"]) for r in records] == [  # type: ignore[index]
        ("stage.failed", "a"),
        ("stage.failed", "b"),
        ("stage.failed", "c"),
    ]
    stats = sink.statistics()
    assert (stats.name, stats.policy, stats.capacity) == ("failures", "drop_oldest", 8)
    assert (stats.emitted, stats.exported, stats.closed) == (3, 3, True)
    assert sink.results == ("exported", "dropped_queue_full", "dropped_shutdown", "export_failed")


async def test_span_event_sink_adds_events_to_the_current_span(
    telemetry: InMemoryTelemetry,
) -> None:
    graph = checkout(telemetry, event_sink=SpanEventSink())

    await run_graph(graph)

    def names(span_name: str) -> list[str]:
        return [event.name for event in telemetry.span(span_name).events]

    assert names("stage.run fetch") == ["stage.started", "stage.completed"]
    assert names("stage.run charge") == ["stage.started", "stage.failed", "exception"]
    assert names("pipeline.run checkout") == ["pipeline.started", "pipeline.failed"]
    completed = next(
        e for e in telemetry.span("stage.run fetch").events if e.name == "stage.completed"
    )
    attributes = dict(completed.attributes or {})
    assert (attributes["stage"], attributes["status"], attributes["data_keys"]) == (
        "fetch",
        "ok",
        ("value",),
    )
    assert "trace_id" not in attributes
    assert "span_id" not in attributes


class SuppressionRecordingExporter(InMemoryLogRecordExporter):
    """Notes whether instrumentation is suppressed while it exports."""

    def __init__(self) -> None:
        super().__init__()  # type: ignore[no-untyped-call]  # untyped __init__
        self.suppressed: list[bool] = []

    def export(self, batch: Sequence[ReadableLogRecord]) -> Any:
        from opentelemetry.context import _SUPPRESS_INSTRUMENTATION_KEY, get_value

        self.suppressed.append(bool(get_value(_SUPPRESS_INSTRUMENTATION_KEY)))
        return super().export(batch)


async def test_exports_run_with_instrumentation_suppressed() -> None:
    exporter = SuppressionRecordingExporter()
    recorded = in_memory_telemetry(event_exporter=exporter)
    try:
        graph = (
            Pipeline("p")
            .with_stage("a", ok_stage)
            .build(hooks=recorded.hooks, event_sink=recorded.telemetry.event_sink)
        )
        await run_graph(graph)
        assert recorded.telemetry.force_flush(timeout=HANG)
        # HTTP or gRPC calls made by an exporter must not be traced themselves.
        assert exporter.suppressed
        assert all(exporter.suppressed)
    finally:
        recorded.shutdown()


def test_event_timestamps_become_the_exact_log_record_time() -> None:
    # In this order: the second after a cached one, a day and a year apart, then back.
    for raw in (
        "2026-11-28T13:00:00.123456Z",
        "2026-11-28T13:00:00.999999Z",
        "2026-11-28T13:00:01.000000Z",
        "2026-12-31T23:59:59.000001Z",
        "1970-01-01T00:00:00.000000Z",
        "2026-11-28T13:00:00.000007Z",
    ):
        record = event_to_log_record("stage.started", {"timestamp": raw})
        assert record.timestamp is not None
        seconds, nanos = divmod(record.timestamp, 1_000_000_000)
        moment = datetime.fromtimestamp(seconds, UTC).replace(microsecond=nanos // 1000)
        assert moment == datetime.fromisoformat(raw), raw
        assert nanos % 1000 == 0


def test_other_timestamps_are_parsed_or_replaced_by_now() -> None:
    offset = event_to_log_record("x", {"timestamp": "2026-11-28T14:00:00.5+01:00"})
    assert offset.timestamp == int(datetime(2026, 11, 28, 13, 0, 0, 500000, UTC).timestamp() * 1e9)
    before = time.time_ns()
    # Garbage, a fraction with a non-ASCII digit, an offset where the seconds should be.
    for bad in (
        "yesterday",
        "2026-11-28T13:00:00.12345xZ",
        "2026-11-28T13:00:00.12345\u00b2Z",
        "2026-11-28T13+01:00.123456Z",
        12,
        None,
    ):
        record = event_to_log_record("x", {"timestamp": bad})
        assert record.timestamp is not None, bad
        assert record.timestamp >= before, bad


@pytest.mark.parametrize("sampled", [True, False], ids=["sampled", "unsampled"])
async def test_log_records_carry_the_sampled_flag_of_their_span(
    sampled: bool, events: CollectingEventSink
) -> None:
    exporter = new_log_exporter()
    provider = TracerProvider(sampler=ALWAYS_ON if sampled else ALWAYS_OFF)
    telemetry = Telemetry(
        tracer_provider=provider,
        registry=CollectorRegistry(),
        event_exporter=exporter,
        canonical_logs=False,
    )
    sink = telemetry.event_sink
    assert sink is not None
    try:
        graph = Pipeline("p").with_stage("a", ok_stage).build(hooks=telemetry.hooks)
        await run_graph(graph, event_sink=FanOutEventSink([events, sink]))
        assert telemetry.force_flush(timeout=HANG)
    finally:
        telemetry.shutdown()

    flags = "01" if sampled else "00"
    assert [e.data["trace_flags"] for e in events.events] == [flags] * 4
    records = [item.log_record for item in exporter.get_finished_logs()]
    assert len(records) == 4
    for record, event in zip(records, events.events, strict=True):
        # The ids are there either way (logs of one request stay correlated) ...
        assert format(record.trace_id or 0, "032x") == event.data["trace_id"]
        assert format(record.span_id or 0, "016x") == event.data["span_id"]
        # ... but only a sampled span's records claim a trace a backend will have.
        assert record.trace_flags is not None
        assert record.trace_flags.sampled is sampled
        assert "trace_flags" not in (record.attributes or {})


@pytest.mark.parametrize("flags", [None, "zz", ["01"], 1])
def test_a_payload_without_usable_trace_flags_counts_as_sampled(flags: Any) -> None:
    data = {"trace_id": "1" * 32, "span_id": "2" * 16}
    if flags is not None:
        data["trace_flags"] = flags
    record = event_to_log_record("custom", data)
    assert (record.trace_id, record.span_id) == (int("1" * 32, 16), int("2" * 16, 16))
    assert record.trace_flags is not None
    assert record.trace_flags.sampled
