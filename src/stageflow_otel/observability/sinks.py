"""Event sinks that are OpenTelemetry exporters.

:class:`OtelLogEventSink` turns each lifecycle event into an OpenTelemetry log record
(``event_name`` = the event type, body = the payload, attributes flattened, trace context from
the payload's ``trace_id``/``span_id``/``trace_flags``) and exports it through any ``LogRecordExporter`` (OTLP,
console, in-memory), or emits it through a ``LoggerProvider``, behind the bounded, batching
queue of :class:`~stageflow_otel.core.backpressure.BackpressureAwareEventSink`. The record is
built on the export thread, so the pipeline pays only for an enqueue.

:class:`SpanEventSink` adds each event to the span that is current where it is emitted (the
stage span for stage events).
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import json
import logging
import time
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from opentelemetry import trace
from opentelemetry._logs import LogRecord, SeverityNumber
from opentelemetry.context import (
    _SUPPRESS_INSTRUMENTATION_KEY,
    Context,
    attach,
    detach,
    set_value,
)
from opentelemetry.sdk._logs import ReadableLogRecord
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.util.instrumentation import InstrumentationScope
from opentelemetry.trace import NonRecordingSpan, SpanContext, TraceFlags

from stageflow_otel._version import package_version
from stageflow_otel.core.backpressure import (
    BackpressureAwareEventSink,
    OverflowPolicy,
    PolicyName,
    QueuedEvent,
    QueueFrontedSink,
    SinkListener,
)
from stageflow_otel.core.events import Event

from .config import ERROR_EVENTS, EventSelection

if TYPE_CHECKING:
    from opentelemetry.sdk._logs import LoggerProvider
    from opentelemetry.sdk._logs.export import LogRecordExporter

    from .metrics import StageflowMetrics

__all__ = ("OtelLogEventSink", "SpanEventSink", "event_to_log_record", "flatten_attributes")

logger = logging.getLogger("stageflow_otel.observability.sinks")

_SCOPE = InstrumentationScope("stageflow_otel", package_version())
_ERROR_EVENTS = frozenset(
    {"stage.failed", "pipeline.failed", "tool.failed", "pipeline.child_failed"}
)
_WARN_EVENTS = frozenset({"stage.cancelled", "pipeline.cancelled", "tool.denied"})
assert _ERROR_EVENTS | _WARN_EVENTS <= ERROR_EVENTS  # events="errors" keeps every non-INFO event
_PRIMITIVE = (str, bool, int, float)


def flatten_attributes(data: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Flatten a payload into OpenTelemetry attributes.

    Nested keys are dotted, string lists kept (an empty one too: an empty array attribute),
    everything else JSON-encoded; ``None`` is left out.
    """
    out: dict[str, Any] = {}
    for key, value in data.items():
        if value is None:
            continue
        if isinstance(value, _PRIMITIVE):
            out[f"{prefix}{key}" if prefix else key] = value
            continue
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            out.update(flatten_attributes(value, f"{name}."))
        elif isinstance(value, list | tuple):
            if all(isinstance(v, str) for v in value):
                out[name] = list(value)
            else:
                out[name] = json.dumps(value, default=str, sort_keys=True)
        else:
            out[name] = json.dumps(value, default=str, sort_keys=True)
    return out


def _json_safe(value: Any) -> Any:
    if value is None or isinstance(value, _PRIMITIVE):
        return value
    if isinstance(value, Mapping):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_json_safe(v) for v in value]
    return str(value)


def _body(data: Mapping[str, Any]) -> dict[str, Any]:
    body = dict(data)
    for key, value in body.items():
        if value is not None and not isinstance(value, _PRIMITIVE):
            body[key] = _json_safe(value)
    return body


# Payload timestamps are ``iso_timestamp()`` text: ``YYYY-MM-DDTHH:MM:SS.ffffffZ``. Parsing
# the date and time of a second once (one tuple, replaced whole) makes the common case cheap.
_second_ns: list[tuple[str, int]] = [("", 0)]


def _timestamp_ns(raw: Any) -> int:
    """Nanoseconds since the epoch of a payload's ``timestamp``; now when it has none."""
    if not isinstance(raw, str):
        return time.time_ns()
    micros = raw[20:26]
    if (
        len(raw) == 27
        and raw[19] == "."
        and raw[26] == "Z"
        and micros.isascii()
        and micros.isdigit()
    ):
        second, base = _second_ns[0]
        if raw[:19] != second:
            try:
                moment = _dt.datetime.strptime(raw[:19], "%Y-%m-%dT%H:%M:%S")
            except ValueError:
                moment = None
            if moment is not None:
                second = raw[:19]
                base = int(moment.replace(tzinfo=_dt.UTC).timestamp()) * 1_000_000_000
                _second_ns[0] = (second, base)
        if raw[:19] == second:
            return base + int(micros) * 1000
    try:
        moment = _dt.datetime.fromisoformat(raw)
    except ValueError:
        return time.time_ns()
    return int(moment.timestamp() * 1_000_000_000)


_SAMPLED = TraceFlags(TraceFlags.SAMPLED)
_FLAGS = {"01": _SAMPLED, "00": TraceFlags(TraceFlags.DEFAULT)}


def _context_of(data: Mapping[str, Any], cache: dict[Any, Any]) -> Any:
    """The trace context of a payload's ``trace_id``/``span_id``/``trace_flags``.

    ``None`` without ids; without ``trace_flags`` the context counts as sampled. ``cache``
    maps id triples to contexts already built: a stage's events share one.
    """
    trace_id, span_id = data.get("trace_id"), data.get("span_id")
    if not (isinstance(trace_id, str) and isinstance(span_id, str)):
        return None
    flags = data.get("trace_flags")
    if not isinstance(flags, str) or flags not in _FLAGS:
        flags = "01"
    key = (trace_id, span_id, flags)
    context = cache.get(key)
    if context is None:
        try:
            span_context = SpanContext(
                int(trace_id, 16), int(span_id, 16), is_remote=False, trace_flags=_FLAGS[flags]
            )
        except ValueError:
            return None
        context = cache[key] = trace.set_span_in_context(NonRecordingSpan(span_context))
    return context


_TRACE_KEYS = frozenset({"trace_id", "span_id", "trace_flags"})
_INFO = (SeverityNumber.INFO, "INFO")
_SEVERITY = {
    **dict.fromkeys(_ERROR_EVENTS, (SeverityNumber.ERROR, "ERROR")),
    **dict.fromkeys(_WARN_EVENTS, (SeverityNumber.WARN, "WARN")),
}


def event_to_log_record(type: str, data: Mapping[str, Any]) -> LogRecord:
    """The OpenTelemetry log record of one event given as its contract payload."""
    return _record(Event.from_payload(type, data), {}, time.time_ns(), _NO_RESOURCE).log_record


_PLAIN = frozenset({str, bool, int, float})


def _attributes_and_body(fields: Mapping[str, Any]) -> tuple[Mapping[str, Any], Any]:
    """The record's attributes (flattened, no ``None``, no trace keys) and its body."""
    # Flat, as most lifecycle events are: no copy (both checks loop in C, not in Python).
    if _PLAIN.issuperset(map(type, fields.values())) and _TRACE_KEYS.isdisjoint(fields):
        return fields, fields
    # Lifecycle payloads hold at most string lists besides primitives: one pass, unless not.
    attributes: dict[str, Any] = {}
    for key, value in fields.items():
        if isinstance(value, _PRIMITIVE):
            if key not in _TRACE_KEYS:
                attributes[key] = value
        elif isinstance(value, list) and all(isinstance(v, str) for v in value):
            attributes[key] = value
        elif value is not None:
            break
    else:
        return attributes, fields
    attributes = flatten_attributes(fields)
    for key in _TRACE_KEYS:
        attributes.pop(key, None)
    return attributes, _body(fields)


_NO_CONTEXT = Context()
_NOT_SAMPLED = TraceFlags(TraceFlags.DEFAULT)

TraceOf = tuple[Any, int, int, TraceFlags]
"""A record's trace context: ``(context, trace_id, span_id, trace_flags)``."""

_NO_TRACE: TraceOf = (_NO_CONTEXT, 0, 0, _NOT_SAMPLED)


def _typed_trace(event: Event, cache: dict[Any, Any]) -> TraceOf:
    """The trace context of a typed event; one per span and batch."""
    if not event.trace_id:
        return _NO_TRACE
    context = event.trace_context
    if isinstance(context, Context):  # the context the event was emitted in, as it was
        # A stage's events share one context object, alive for the whole batch: its id is a
        # cheap, unique key, and the stage's events share one tuple.
        found_by_id: TraceOf | None = cache.get(id(context))
        if found_by_id is None:
            flags = _SAMPLED if event.trace_flags & 1 else _NOT_SAMPLED
            found_by_id = cache[id(context)] = (context, event.trace_id, event.span_id, flags)
        return found_by_id
    key = (event.trace_id, event.span_id, event.trace_flags)
    found: TraceOf | None = cache.get(key)
    if found is None:
        flags = _SAMPLED if event.trace_flags & 1 else _NOT_SAMPLED
        span_context = SpanContext(
            event.trace_id, event.span_id, is_remote=False, trace_flags=flags
        )
        context = trace.set_span_in_context(NonRecordingSpan(span_context))
        found = cache[key] = (context, event.trace_id, event.span_id, flags)
    return found


def _payload_trace(data: Mapping[str, Any], cache: dict[Any, Any]) -> TraceOf:
    """The trace context of a payload's ``trace_id``/``span_id``/``trace_flags`` text."""
    context = _context_of(data, cache)
    if context is None:
        return _NO_TRACE
    span_context = trace.get_current_span(context).get_span_context()
    return context, span_context.trace_id, span_context.span_id, span_context.trace_flags


_RECORD_FIELDS = (
    "timestamp",
    "observed_timestamp",
    "context",
    "trace_id",
    "span_id",
    "trace_flags",
    "severity_text",
    "severity_number",
    "body",
    "attributes",
    "event_name",
    "exception",
)
_READABLE_FIELDS = ("log_record", "resource", "instrumentation_scope", "limits")


try:

    class _EventLogRecord(ReadableLogRecord, LogRecord):
        """One exported event: a ``ReadableLogRecord`` that is its own ``LogRecord``.

        One slotted object per record instead of two, with its fields set directly: exporters
        read ``record.log_record.body``, ``record.resource``, ``record.to_json()`` as usual
        (``log_record`` is the record itself), and ``dataclasses.replace(record, ...)`` makes
        another one. Made by :func:`_direct_record` only when the installed API's ``LogRecord``
        and SDK's ``ReadableLogRecord`` have exactly these fields (checked at import). Unlike
        the SDK's frozen ``ReadableLogRecord``, its fields can be set (the SDK's ``Logger.emit``
        sets a ``LogRecord``'s attributes); it equals only itself.
        """

        __slots__ = (*_RECORD_FIELDS, *_READABLE_FIELDS[1:])

        # The generic attribute access of ``object``, not the frozen dataclass's: set directly.
        __setattr__ = object.__setattr__
        __delattr__ = object.__delattr__
        __eq__ = object.__eq__
        __hash__ = object.__hash__

        def __init__(
            self,
            log_record: LogRecord,
            resource: Resource,
            instrumentation_scope: InstrumentationScope | None = None,
            limits: Any = None,
        ) -> None:
            # What ``dataclasses.replace`` calls: a copy of ``log_record`` with these.
            record: Any = self  # its own setters, not the frozen dataclass's read-only view
            for name in _RECORD_FIELDS:
                setattr(record, name, getattr(log_record, name))
            record.resource = resource
            record.instrumentation_scope = instrumentation_scope
            record.limits = limits

        @property
        def log_record(self) -> LogRecord:
            """The record itself."""
            return self

        def __repr__(self) -> str:
            return f"<log record {self.event_name!r} at {self.timestamp}>"

except TypeError:  # another API or SDK whose classes cannot be combined: the constructors
    _EventLogRecord = None  # type: ignore[assignment,misc]


def _direct_record(
    timestamp: int,
    trace_of: TraceOf,
    severity: SeverityNumber,
    text: str,
    body: Any,
    attributes: Mapping[str, Any],
    type: str,
    observed: int,
    resource: Resource,
) -> ReadableLogRecord:
    """What :func:`_constructed_record` makes, as one object with its fields set directly."""
    record = _new_object(_EventLogRecord)
    record.context, record.trace_id, record.span_id, record.trace_flags = trace_of
    record.timestamp = timestamp
    record.observed_timestamp = observed
    record.severity_text = text
    record.severity_number = severity
    record.body = body
    record.attributes = attributes
    record.event_name = type
    record.exception = None
    record.resource = resource
    record.instrumentation_scope = _SCOPE
    record.limits = None
    return record  # type: ignore[no-any-return]


def _constructed_record(
    timestamp: int,
    trace_of: TraceOf,
    severity: SeverityNumber,
    text: str,
    body: Any,
    attributes: Mapping[str, Any],
    type: str,
    observed: int,
    resource: Resource,
) -> ReadableLogRecord:
    """The record as the API's and SDK's constructors make it."""
    log_record = LogRecord(
        timestamp=timestamp,
        observed_timestamp=observed,
        context=trace_of[0],
        severity_number=severity,
        severity_text=text,
        body=body,
        attributes=attributes,
        event_name=type,
    )
    return ReadableLogRecord(log_record=log_record, resource=resource, instrumentation_scope=_SCOPE)


def _same_record(made: ReadableLogRecord, direct: ReadableLogRecord) -> bool:
    """Whether ``direct`` has every field ``made`` has, with the same values."""
    if type(made) is not ReadableLogRecord or type(made.log_record) is not LogRecord:
        return False
    if set(vars(made.log_record)) != set(_RECORD_FIELDS):
        return False
    if tuple(field.name for field in dataclasses.fields(made)) != _READABLE_FIELDS:
        return False
    return (
        all(getattr(made.log_record, f) == getattr(direct.log_record, f) for f in _RECORD_FIELDS)
        and all(getattr(made, f) == getattr(direct, f) for f in _READABLE_FIELDS[1:])
        and made.to_json() == direct.to_json()
    )


def _choose_record_factory() -> Any:
    """:func:`_direct_record`, if it makes what the installed API's and SDK's constructors make.

    Otherwise (another API or SDK version, a surprise of any kind) :func:`_constructed_record`.
    """
    probe = Event("probe", {})
    probe.trace_id, probe.span_id, probe.trace_flags = 1, 2, 1
    resource = Resource.create({})
    combined: Any = _EventLogRecord
    if combined is None:
        return _constructed_record
    try:
        for trace_of in (_typed_trace(probe, {}), _NO_TRACE):
            args = (3, trace_of, SeverityNumber.INFO, "INFO", {"a": 1}, {"a": 1}, "p", 4, resource)
            if not _same_record(_constructed_record(*args), _direct_record(*args)):
                return _constructed_record
    except Exception:  # any surprise: the constructors it is
        return _constructed_record
    return _direct_record


_new_object: Any = object.__new__
_make_record = _choose_record_factory()
_NO_RESOURCE = Resource.get_empty()


def _record(
    event: Event, contexts: dict[Any, Any], observed: int, resource: Resource
) -> ReadableLogRecord:
    """The log record of an event, with ``resource``.

    A typed event gives its time and trace context as they are; an event made from a payload
    (``try_emit(type=..., data=...)``) has them parsed from the payload's text. Either way the
    attributes leave out the trace context, which is the record's own.
    """
    type = event.type
    severity, text = _SEVERITY.get(type, _INFO)
    fields: Mapping[str, Any]
    if event.time_ns is not None:
        timestamp = event.time_ns
        trace_of = _typed_trace(event, contexts)
        fields = event.fields
    else:
        fields = event.data
        timestamp = _timestamp_ns(fields.get("timestamp"))
        trace_of = _payload_trace(fields, contexts)
    if event.flat:  # the engine's own flat fields: attributes and body as they are
        attributes = body = fields
    else:
        attributes, body = _attributes_and_body(fields)
    return _make_record(  # type: ignore[no-any-return]
        timestamp, trace_of, severity, text, body, attributes, type, observed, resource
    )


class _LogRecordExport:
    """Batch exporter: events → log records → a ``LogRecordExporter`` or a ``LoggerProvider``."""

    def __init__(
        self,
        exporter: LogRecordExporter | None,
        logger_provider: LoggerProvider | None,
        resource: Resource | None,
    ) -> None:
        self.exporter = exporter
        self.logger = (
            logger_provider.get_logger("stageflow_otel", package_version())
            if logger_provider is not None
            else None
        )
        if resource is None:
            resource = getattr(logger_provider, "resource", None) or Resource.create({})
        self.resource = resource

    def export(self, batch: Sequence[QueuedEvent], /) -> bool:
        # Exporters' own HTTP/gRPC calls must not be traced (they would feed more exports).
        token = attach(set_value(_SUPPRESS_INSTRUMENTATION_KEY, True))
        try:
            contexts: dict[Any, Any] = {}
            observed = time.time_ns()  # the batch is observed at once
            resource = self.resource
            records = [_record(event, contexts, observed, resource) for event in batch]
            if self.logger is not None:
                for record in records:
                    self.logger.emit(record.log_record)
            if self.exporter is not None:
                result = self.exporter.export(records)
                return getattr(result, "name", "SUCCESS") == "SUCCESS"
            return True
        finally:
            detach(token)

    def shutdown(self) -> None:
        if self.exporter is not None:
            self.exporter.shutdown()  # type: ignore[no-untyped-call]


class _SinkMetrics(SinkListener):
    """The ``stageflow_sink_*`` metrics of one sink, fed as its listener."""

    def __init__(self, metrics: StageflowMetrics, name: str) -> None:
        self._metrics = metrics
        self._name = name
        self._counts: dict[str, Any] = {}
        self._duration = metrics.sink_export_duration.labels(name)

    def watch(self, sink: BackpressureAwareEventSink) -> None:
        """Report ``sink``'s queue: its results (each series from 0), capacity and size."""
        metrics, name = self._metrics, self._name
        for result in sink.results:
            self._counts[result] = metrics.sink_events.labels(name, result)
        metrics.sink_queue_capacity.labels(name).set(sink.statistics().capacity)
        metrics.sink_queue_size.labels(name).set_function(
            lambda: float(sink.statistics().queue_size)
        )

    def on_result(self, result: str, count: int) -> None:
        """Count ``count`` events under ``result``."""
        counter = self._counts.get(result)
        if counter is None:
            counter = self._counts[result] = self._metrics.sink_events.labels(self._name, result)
        counter.inc(count)

    def on_export(self, duration_s: float, count: int, ok: bool) -> None:
        """Observe the export's duration."""
        self._duration.observe(duration_s)


class OtelLogEventSink(QueueFrontedSink):
    """Lifecycle events as OpenTelemetry log records, behind a backpressure queue.

    The queue is a :class:`~stageflow_otel.core.backpressure.BackpressureAwareEventSink` of
    its own, whose downstream turns each batch of events into log records on the worker
    thread; this sink selects the events that go in and feeds its metrics.

    Args:
        exporter: A ``LogRecordExporter`` (``OTLPLogExporter``, ``ConsoleLogRecordExporter``,
            ``InMemoryLogRecordExporter``, ...).
        logger_provider: Alternatively (or also), a ``LoggerProvider`` to emit records into.
        resource: The resource of exported records (default: the provider's, else empty).
        metrics: Feed ``stageflow_sink_*`` metrics (label ``sink=name``).
        name: The sink's name.
        events: Which events to export (an :class:`~stageflow_otel.observability.config.EventSelection`,
            or ``"all"``, ``"errors"``, ``"none"`` or event types); the others are ignored
            before they reach the queue.
        max_queue_size: Queue capacity, in events.
        max_batch_size: Most records per export (default 512, or ``max_queue_size`` when
            that is smaller).
        flush_interval: Seconds between exports of a partial batch.
        policy: What a full queue does: an :class:`~stageflow_otel.core.OverflowPolicy`
            (``DropNewest()``, ``DropOldest()``, ``Block(timeout=...)``, your own) or the name
            of a built-in.
        block_timeout: Seconds ``await emit()`` waits for room under ``policy="block"``.
        export_timeout: Seconds one export may take.
        max_retries: Retries of a failed export.
        retry_base_delay: First backoff delay in seconds.
        warn_interval: Least seconds between two warnings about drops or failed exports.
        exit_timeout: Seconds the queue may take to export at interpreter exit; ``None``: no
            drain at exit.

    The queue settings mean what they mean for
    :class:`~stageflow_otel.core.backpressure.BackpressureAwareEventSink`.
    """

    def __init__(
        self,
        exporter: LogRecordExporter | None = None,
        *,
        logger_provider: LoggerProvider | None = None,
        resource: Resource | None = None,
        metrics: StageflowMetrics | None = None,
        name: str = "otel_logs",
        events: EventSelection | str | Sequence[str] = "all",
        max_queue_size: int = 2048,
        max_batch_size: int | None = None,
        flush_interval: float = 1.0,
        policy: OverflowPolicy | PolicyName = "drop_newest",
        block_timeout: float | None = None,
        export_timeout: float = 10.0,
        max_retries: int = 3,
        retry_base_delay: float = 0.05,
        warn_interval: float = 10.0,
        exit_timeout: float | None = 5.0,
    ) -> None:
        if exporter is None and logger_provider is None:
            raise ValueError("OtelLogEventSink needs an exporter or a logger_provider")
        self.events = events if isinstance(events, EventSelection) else EventSelection.parse(events)
        self.name = name
        listener = None if metrics is None else _SinkMetrics(metrics, name)
        self._sink = BackpressureAwareEventSink(
            _LogRecordExport(exporter, logger_provider, resource),
            max_queue_size=max_queue_size,
            max_batch_size=max_batch_size,
            flush_interval=flush_interval,
            policy=policy,
            block_timeout=block_timeout,
            export_timeout=export_timeout,
            max_retries=max_retries,
            retry_base_delay=retry_base_delay,
            name=name,
            listener=listener,
            warn_interval=warn_interval,
            exit_timeout=exit_timeout,
        )
        # With every event selected, a producer calls the queue itself: no extra call.
        self.try_emit_event = (  # type: ignore[method-assign]
            self._sink.try_emit_event if self.events.everything else self._try_emit_selected
        )
        if listener is not None:
            listener.watch(self._sink)

    def __repr__(self) -> str:
        return f"OtelLogEventSink({self.name!r}, events={self.events!r})"

    @property
    def results(self) -> tuple[str, ...]:
        """Every result the queue reports (the ``result`` label of its metrics)."""
        return self._sink.results

    def try_emit(self, *, type: str, data: Mapping[str, Any]) -> None:
        """Queue the event if it is one of :attr:`events`; never waits, never raises."""
        self.try_emit_event(Event.from_payload(type, data))

    def try_emit_event(self, event: Event) -> None:
        """:meth:`try_emit` for a typed event (what the executor sends)."""
        self._try_emit_selected(event)

    def _try_emit_selected(self, event: Event) -> None:
        if event.type in self.events:
            self._sink.try_emit_event(event)

    async def emit(self, *, type: str, data: Mapping[str, Any]) -> None:
        """Queue the event if it is one of :attr:`events`, waiting for room if the policy says."""
        if type in self.events:
            await self._sink.emit(type=type, data=data)

    def queued_sink(self) -> BackpressureAwareEventSink:
        """The queue this sink feeds (its own)."""
        return self._sink


class SpanEventSink:
    """Adds each event to the span current where it is emitted, as a span event.

    For stage events that is the stage span; the span event is named after the event type and
    carries the flattened payload.
    """

    __slots__ = ()

    async def emit(self, *, type: str, data: Mapping[str, Any]) -> None:
        """Add the event to the current span."""
        self.try_emit(type=type, data=data)

    def try_emit(self, *, type: str, data: Mapping[str, Any]) -> None:
        """Add the event to the current span (nothing when no span is recording)."""
        span = trace.get_current_span()
        if span.is_recording():
            attributes = flatten_attributes(data)
            for key in _TRACE_KEYS:
                attributes.pop(key, None)
            span.add_event(type, attributes)
