"""Log records built directly are what the SDK's constructors build, to every exporter."""

from __future__ import annotations

import json

import pytest
from opentelemetry._logs import LogRecord, SeverityNumber
from opentelemetry.sdk._logs import ReadableLogRecord
from opentelemetry.sdk.resources import Resource

from stageflow_otel.core.events import Event
from stageflow_otel.observability import sinks


def typed_event() -> Event:
    event = Event("stage.completed", {"stage": "a", "status": "ok", "data_keys": ["x"]}, 5)
    event.trace_id, event.span_id, event.trace_flags = 0x1234, 0x56, 1
    return event


def test_the_installed_sdk_gets_the_direct_factories() -> None:
    assert sinks._make_log_record is sinks._direct_log_record
    assert sinks._make_readable is sinks._direct_readable


@pytest.mark.parametrize("traced", [True, False])
def test_a_direct_record_exports_exactly_like_a_constructed_one(traced: bool) -> None:
    event = typed_event() if traced else Event("pipeline.started", {"stage_count": 1}, 7)
    trace_of = sinks._typed_trace(event, {})
    resource = Resource.create({"service.name": "t"})
    args = (7, trace_of, SeverityNumber.INFO, "INFO", event.fields, event.fields, event.type, 9)
    direct = sinks._direct_readable(sinks._direct_log_record(*args), resource)
    made = sinks._constructed_readable(sinks._constructed_log_record(*args), resource)

    assert isinstance(direct, ReadableLogRecord)
    assert isinstance(direct.log_record, LogRecord)
    documents = [json.loads(r.to_json()) for r in (direct, made)]
    assert documents[0] == documents[1]
    assert (direct.log_record.trace_id, direct.log_record.span_id) == (
        (0x1234, 0x56) if traced else (0, 0)
    )


def test_another_api_layout_falls_back_to_the_constructors(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(sinks, "_RECORD_FIELDS", (*sinks._RECORD_FIELDS, "severity_code"))

    assert sinks._choose_record_factories() == (
        sinks._constructed_log_record,
        sinks._constructed_readable,
    )


def test_a_flat_event_gives_the_record_its_fields_would_give_when_checked() -> None:
    fields = {"stage": "a", "status": "ok", "attempt": 1, "duration_ms": 0.5, "data_keys": ["x"]}
    flat = Event("stage.completed", dict(fields), 5, flat=True)
    checked = Event("stage.completed", dict(fields), 5)
    made = [sinks._log_record(event, {}, 9) for event in (flat, checked)]

    assert made[0].attributes is flat.fields  # used as they are, not copied
    assert dict(made[0].attributes or {}) == dict(made[1].attributes or {}) == fields
    assert made[0].body == made[1].body == fields
