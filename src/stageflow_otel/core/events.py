"""Event sinks: where a run's lifecycle events go.

An :class:`EventSink` has keyword-only ``await emit(type=..., data=...)`` and a
``try_emit(type=..., data=...)`` that never blocks. The executor only calls ``try_emit``;
a sink that raises is logged once and left out for the rest of the run.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

from ._checks import check_name, describe, sequence_of, sink_problem

__all__ = (
    "CollectedEvent",
    "CollectingEventSink",
    "EventSink",
    "FanOutEventSink",
    "LoggingEventSink",
    "NoOpEventSink",
)

logger = logging.getLogger("stageflow_otel.events")


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
