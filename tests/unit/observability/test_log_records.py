"""Log records built directly are what the SDK's constructors build, to every exporter."""

from __future__ import annotations

import dataclasses
import json

import pytest
from opentelemetry._logs import LogRecord, SeverityNumber
from opentelemetry.sdk._logs import LoggerProvider, ReadableLogRecord
from opentelemetry.sdk._logs.export import BatchLogRecordProcessor, InMemoryLogRecordExporter
from opentelemetry.sdk.resources import Resource

from stageflow_otel.core.events import Event
from stageflow_otel.observability import sinks
from stageflow_otel.observability.sinks import OtelLogEventSink


def typed_event() -> Event:
    event = Event("stage.completed", {"stage": "a", "status": "ok", "data_keys": ["x"]}, 5)
    event.trace_id, event.span_id, event.trace_flags = 0x1234, 0x56, 1
    return event


def test_the_installed_sdk_gets_the_direct_factory() -> None:
    assert sinks._make_record is sinks._direct_record


@pytest.mark.parametrize("traced", [True, False])
def test_a_direct_record_exports_exactly_like_a_constructed_one(traced: bool) -> None:
    event = typed_event() if traced else Event("pipeline.started", {"stage_count": 1}, 7)
    trace_of = sinks._typed_trace(event, {})
    resource = Resource.create({"service.name": "t"})
    args = (7, trace_of, SeverityNumber.INFO, "INFO", event.fields, event.fields, event.type, 9)
    direct = sinks._direct_record(*args, resource)
    made = sinks._constructed_record(*args, resource)

    assert isinstance(direct, ReadableLogRecord)
    assert isinstance(direct.log_record, LogRecord)
    assert direct.resource is made.resource is resource
    assert direct.instrumentation_scope == made.instrumentation_scope
    documents = [json.loads(r.to_json()) for r in (direct, made)]
    assert documents[0] == documents[1]
    assert (direct.log_record.trace_id, direct.log_record.span_id) == (
        (0x1234, 0x56) if traced else (0, 0)
    )


def test_a_direct_record_is_one_object_that_equals_only_itself() -> None:
    args = (7, sinks._NO_TRACE, SeverityNumber.INFO, "INFO", {"a": 1}, {"a": 1}, "t", 9)
    record = sinks._direct_record(*args, Resource.get_empty())
    twin = sinks._direct_record(*args, Resource.get_empty())

    itself: object = record.log_record
    assert itself is record
    assert record == itself
    assert record != twin
    assert len({record, twin}) == 2
    assert "'t'" in repr(record)
    record.log_record.attributes = {"b": 2}  # as the SDK's Logger.emit does
    assert record.log_record.attributes == {"b": 2}


def test_another_api_layout_falls_back_to_the_constructors(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(sinks, "_RECORD_FIELDS", (*sinks._RECORD_FIELDS, "severity_code"))

    assert sinks._choose_record_factory() is sinks._constructed_record


def test_another_sdk_layout_falls_back_to_the_constructors(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(sinks, "_READABLE_FIELDS", (*sinks._READABLE_FIELDS, "dropped"))

    assert sinks._choose_record_factory() is sinks._constructed_record


def test_a_flat_event_gives_the_record_its_fields_would_give_when_checked() -> None:
    fields = {"stage": "a", "status": "ok", "attempt": 1, "duration_ms": 0.5, "data_keys": ["x"]}
    flat = Event("stage.completed", dict(fields), 5, flat=True)
    checked = Event("stage.completed", dict(fields), 5)
    made = [sinks._record(e, {}, 9, Resource.get_empty()).log_record for e in (flat, checked)]

    assert made[0].attributes is flat.fields  # used as they are, not copied
    assert dict(made[0].attributes or {}) == dict(made[1].attributes or {}) == fields
    assert made[0].body == made[1].body == fields


def test_replace_makes_another_record_as_for_the_sdks_own() -> None:
    args = (7, sinks._NO_TRACE, SeverityNumber.INFO, "INFO", {"a": 1}, {"a": 1}, "t", 9)
    record = sinks._direct_record(*args, Resource.get_empty())
    other = Resource.create({"service.name": "elsewhere"})

    moved = dataclasses.replace(record, resource=other)

    assert moved is not record
    assert moved.resource is other
    itself: object = moved.log_record
    assert itself is moved
    assert json.loads(moved.to_json())["body"] == {"a": 1}
    assert record.resource is not other  # the original is untouched


def test_api_and_sdk_classes_that_cannot_be_combined_fall_back_to_the_constructors(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(sinks, "_EventLogRecord", None)

    assert sinks._choose_record_factory() is sinks._constructed_record


def test_a_logger_provider_with_a_batch_processor_exports_the_same_records() -> None:
    exporter = InMemoryLogRecordExporter()  # type: ignore[no-untyped-call]
    provider = LoggerProvider(resource=Resource.create({"service.name": "t"}))
    provider.add_log_record_processor(BatchLogRecordProcessor(exporter))
    sink = OtelLogEventSink(logger_provider=provider)
    event = typed_event()
    event.flat = True
    try:
        sink.try_emit_event(event)
        assert sink.queued_sink().force_flush()
        provider.force_flush()
        [exported] = exporter.get_finished_logs()
    finally:
        sink.queued_sink().shutdown()
        provider.shutdown()

    # The processor copies the record and keeps its own resource, as for any LogRecord.
    assert exported.resource.attributes["service.name"] == "t"
    assert exported.log_record.event_name == "stage.completed"
    assert exported.log_record.body == {"stage": "a", "status": "ok", "data_keys": ["x"]}
    assert (exported.log_record.trace_id, exported.log_record.span_id) == (0x1234, 0x56)
