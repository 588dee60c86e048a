"""Events and event sinks: what a run tells, and where it goes.

The engine makes each lifecycle event as an :class:`Event`: its type, its own fields, the time
as integer nanoseconds and the trace context as integers. Text (the RFC 3339 timestamp, hex
ids) is made only at the edge that needs it, :attr:`Event.data`, the payload of the telemetry
contract.

An :class:`EventSink` has keyword-only ``await emit(type=..., data=...)`` and a
``try_emit(type=..., data=...)`` that never blocks; it receives ``event.data``. A sink that
also has ``try_emit_event(event)`` receives the typed :class:`Event` instead, and formats only
what it needs. The executor only calls ``try_emit`` / ``try_emit_event``; a sink that raises
is logged once and left out for the rest of the run.
"""

from __future__ import annotations

import datetime as _dt
import logging
import threading
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

from ._checks import check_name, describe, sequence_of, sink_problem

__all__ = (
    "CollectedEvent",
    "CollectingEventSink",
    "Event",
    "EventSink",
    "FanOutEventSink",
    "LoggingEventSink",
    "NoOpEventSink",
    "rfc3339_ns",
)

logger = logging.getLogger("stageflow_otel.events")

# (second, its formatted date and time): one tuple, replaced whole, so that threads never
# pair a second with another second's text.
_second_text: list[tuple[int, str]] = [(-1, "")]


def rfc3339_ns(time_ns: int) -> str:
    """An RFC 3339 UTC timestamp with microseconds and a ``Z`` suffix, from nanoseconds."""
    second, nanos = divmod(time_ns, 1_000_000_000)
    cached, prefix = _second_text[0]
    if cached != second:
        prefix = _dt.datetime.fromtimestamp(second, _dt.UTC).strftime("%Y-%m-%dT%H:%M:%S")
        _second_text[0] = (second, prefix)
    return f"{prefix}.{nanos // 1000:06d}Z"


class Event:
    """One event of a run, typed; the contract's text payload is made on demand.

    Attributes:
        type: The event type (``stage.completed``, ...).
        fields: The event's own fields, with ``pipeline_run_id`` and ``pipeline``; flat values
            as the engine builds them. Not copied: nobody mutates them after the emit.
        time_ns: When it happened, in nanoseconds since the epoch; ``None`` for an event made
            from a payload (:meth:`from_payload`), whose time is in its ``timestamp`` text.
        trace_id: The trace of the span current where it was emitted; 0 without tracing.
        span_id: That span; 0 without tracing.
        trace_flags: That span's W3C trace flags (bit 0: sampled).
        trace_context: What the run hook that set the trace context keeps with it (the
            tracing library's own context object); opaque to the engine, ``None`` without one.
        flat: True when every field is already a flat attribute value (``str``, ``bool``,
            ``int``, ``float``, or a list of ``str``; never ``None``) and none is named
            ``trace_id``, ``span_id`` or ``trace_flags``, as the engine builds its own
            lifecycle events: a sink may then use :attr:`fields` as attributes unchanged.
            False (the default) means nothing; the sink checks.
    """

    __slots__ = (
        "_data",
        "fields",
        "flat",
        "span_id",
        "time_ns",
        "trace_context",
        "trace_flags",
        "trace_id",
        "type",
    )

    def __init__(
        self, type: str, fields: dict[str, Any], time_ns: int | None = None, flat: bool = False
    ) -> None:
        self.type = type
        self.fields = fields
        self.flat = flat
        self.time_ns: int | None = time.time_ns() if time_ns is None else time_ns
        self.trace_id = 0
        self.span_id = 0
        self.trace_flags = 0
        self.trace_context: object = None
        self._data: Mapping[str, Any] | None = None

    @classmethod
    def from_payload(cls, type: str, data: Mapping[str, Any]) -> Event:
        """An event given as a type and a finished payload (``try_emit(type=..., data=...)``)."""
        event = cls.__new__(cls)
        event.type = type
        event.fields = data  # type: ignore[assignment]
        event.flat = False
        event.time_ns = None
        event.trace_id = event.span_id = event.trace_flags = 0
        event.trace_context = None
        event._data = data
        return event

    @property
    def data(self) -> Mapping[str, Any]:
        """The payload of the telemetry contract, made on first use.

        The fields, plus ``timestamp`` (RFC 3339, UTC) and, when the event was emitted inside
        a span, ``trace_id``, ``span_id`` (hex) and ``trace_flags`` (``01`` sampled, ``00``
        not).
        """
        data = self._data
        if data is None:
            payload = dict(self.fields)
            payload["timestamp"] = rfc3339_ns(self.time_ns or 0)
            if self.trace_id:
                payload["trace_id"] = format(self.trace_id, "032x")
                payload["span_id"] = format(self.span_id, "016x")
                payload["trace_flags"] = "01" if self.trace_flags & 1 else "00"
            data = self._data = payload
        return data

    def __repr__(self) -> str:
        return f"Event({self.type!r}, {dict(self.fields)!r})"


@runtime_checkable
class EventSink(Protocol):
    """**Protocol:** receives events.

    ``try_emit`` must be cheap and must not block: sinks that do I/O put a bounded queue in
    front of it (see ``BackpressureAwareEventSink``).
    """

    async def emit(self, *, type: str, data: Mapping[str, Any]) -> None:
        """Deliver an event, waiting if the sink applies backpressure."""
        ...

    def try_emit(self, *, type: str, data: Mapping[str, Any]) -> None:
        """Deliver an event without waiting (it may be dropped and counted)."""
        ...


class NoOpEventSink:
    """Discards every event."""

    __slots__ = ()

    async def emit(self, *, type: str, data: Mapping[str, Any]) -> None:
        """Discard."""

    def try_emit(self, *, type: str, data: Mapping[str, Any]) -> None:
        """Discard."""


@dataclass(frozen=True, slots=True)
class CollectedEvent:
    """An event kept by :class:`CollectingEventSink`."""

    type: str
    data: Mapping[str, Any]


class CollectingEventSink:
    """Keeps every event in memory, in order; for tests and the CLI."""

    def __init__(self) -> None:
        self.events: list[CollectedEvent] = []
        self._lock = threading.Lock()

    async def emit(self, *, type: str, data: Mapping[str, Any]) -> None:
        """Keep the event."""
        self.try_emit(type=type, data=data)

    def try_emit(self, *, type: str, data: Mapping[str, Any]) -> None:
        """Keep the event."""
        with self._lock:
            self.events.append(CollectedEvent(type, data))

    @property
    def types(self) -> list[str]:
        """The event types, in order."""
        return [e.type for e in self.events]

    def of_type(self, type: str) -> list[Mapping[str, Any]]:
        """The payloads of one event type, in order."""
        return [e.data for e in self.events if e.type == type]

    def clear(self) -> None:
        """Forget everything."""
        with self._lock:
            self.events.clear()


class FanOutEventSink:
    """Sends each event to several sinks; one failing sink does not stop the others.

    Raises:
        TypeError: ``sinks`` is not a list of event sinks.
    """

    def __init__(self, sinks: Iterable[EventSink]) -> None:
        where = "FanOutEventSink: "
        try:
            checked = sequence_of("sinks", sinks, item="event sinks")
        except TypeError as exc:
            raise TypeError(f"{where}{exc}") from None
        for index, sink in enumerate(checked):
            problem = sink_problem(sink)
            if problem is not None:
                raise TypeError(f"{where}sinks[{index}] {problem}")
        self.sinks: Sequence[EventSink] = checked

    async def emit(self, *, type: str, data: Mapping[str, Any]) -> None:
        """Emit to every sink in turn."""
        for sink in self.sinks:
            try:
                await sink.emit(type=type, data=data)
            except Exception:
                logger.exception("event sink %r failed on %s", sink, type)

    def try_emit(self, *, type: str, data: Mapping[str, Any]) -> None:
        """Emit to every sink without waiting."""
        for sink in self.sinks:
            try:
                sink.try_emit(type=type, data=data)
            except Exception:
                logger.exception("event sink %r failed on %s", sink, type)


class LoggingEventSink:
    """Writes each event to a stdlib logger (``stageflow_otel.events`` by default).

    Args:
        level: The records' level: a number (``logging.INFO``) or a level name (``"INFO"``).
        logger_name: The logger to write to.

    Raises:
        TypeError: ``level`` is neither a number nor a string, or ``logger_name`` is not a
            string.
        ValueError: ``level`` is an unknown level name, or ``logger_name`` is empty.
    """

    def __init__(
        self, *, level: int | str = logging.INFO, logger_name: str = "stageflow_otel.events"
    ) -> None:
        self.level = _check_level(level)
        try:
            check_name("logger_name", logger_name)
        except (TypeError, ValueError) as exc:
            raise type(exc)(f"LoggingEventSink: {exc}") from None
        self._logger = logging.getLogger(logger_name)

    async def emit(self, *, type: str, data: Mapping[str, Any] | None) -> None:
        """Log the event."""
        self.try_emit(type=type, data=data)

    def try_emit(self, *, type: str, data: Mapping[str, Any] | None) -> None:
        """Log the event (as ``extra={"event_type": ..., "event_data": ...}``).

        ``data=None`` is logged as an empty payload, as stageflow-core's sinks accept it.
        """
        if self._logger.isEnabledFor(self.level):
            payload: Mapping[str, Any] = {} if data is None else data
            self._logger.log(
                self.level,
                "%s %s",
                type,
                dict(payload),
                extra={"event_type": type, "event_data": payload},
            )


def _check_level(level: object) -> int:
    names = logging.getLevelNamesMapping()
    if isinstance(level, str):
        if level.upper() not in names:
            raise ValueError(
                f"LoggingEventSink: level must be a logging level or one of its names "
                f"({', '.join(sorted(names))}), got {describe(level)}"
            )
        return names[level.upper()]
    if isinstance(level, bool) or not isinstance(level, int):
        raise TypeError(
            f"LoggingEventSink: level must be a logging level (e.g. logging.INFO) or its name, "
            f"got {describe(level)}"
        )
    return level
