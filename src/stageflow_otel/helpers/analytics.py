"""Run and stage analytics: the wide events, exported in batches to files, consoles, warehouses.

An :class:`AnalyticsSink` is an event sink that keeps the events chosen (by default the wide
events ``stage.wide`` and ``pipeline.wide``: one flat row per stage and per run, see
``Pipeline.build(emit_stage_wide_events=True, emit_pipeline_wide_event=True)``) and hands them,
as :class:`AnalyticsRow` objects, to an :class:`AnalyticsExporter`. It is the engine's own
:class:`~stageflow_otel.core.BackpressureAwareEventSink` with a filter in front: the bounded
queue, the overflow policy, the batching, retries, exit drain and statistics are that sink's,
so a slow or failing exporter costs a pipeline at most a counted, dropped row.

Exporters: :class:`JsonLinesExporter` (one JSON object per line, appended to a file),
:class:`ConsoleExporter` (readable lines on a stream), or any object with
``export(rows) -> bool | None`` (a warehouse client: BigQuery, ClickHouse, a database), which
runs on the sink's worker thread and may block.
"""

from __future__ import annotations

import fnmatch
import json
import sys
import threading
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, Protocol, runtime_checkable

from stageflow_otel.core._checks import describe
from stageflow_otel.core.backpressure import (
    BackpressureAwareEventSink,
    QueuedEvent,
    QueueFrontedSink,
    SinkListener,
)
from stageflow_otel.core.events import Event

__all__ = (
    "AnalyticsExporter",
    "AnalyticsRow",
    "AnalyticsSink",
    "ConsoleExporter",
    "JsonLinesExporter",
)

TABLES: Mapping[str, str] = {"stage.wide": "stage_runs", "pipeline.wide": "pipeline_runs"}
"""The table of each wide event's rows; any other event's rows go to ``events``."""


@dataclass(frozen=True, slots=True)
class AnalyticsRow:
    """One row of analytics: an event, flat.

    Attributes:
        table: Where it belongs: ``stage_runs`` (``stage.wide``), ``pipeline_runs``
            (``pipeline.wide``) or ``events`` (any other event).
        type: The event type.
        data: The event's payload (ids, times, status, durations, ...; flat values).
    """

    table: str
    type: str
    data: Mapping[str, Any]

    @classmethod
    def from_event(cls, event: QueuedEvent) -> AnalyticsRow:
        """The row of an event."""
        return cls(TABLES.get(event.type, "events"), event.type, event.data)

    def as_dict(self) -> dict[str, Any]:
        """``{"type": ..., **data}``, the shape of a JSON line."""
        return {"type": self.type, **self.data}


@runtime_checkable
class AnalyticsExporter(Protocol):
    """**Protocol:** writes rows somewhere; runs on the sink's worker thread and may block.

    An exporter may also have ``shutdown()``, called once after the sink's final export.
    """

    def export(self, rows: Sequence[AnalyticsRow], /) -> bool | None:
        """Write ``rows``; return ``False`` (or raise) if it failed and may be retried."""
        ...


class JsonLinesExporter:
    """Appends one JSON object per row to a file (``{"type": ..., **data}``).

    The file is opened on the first export and flushed after each batch; values JSON cannot
    hold are written as their ``str``.

    Args:
        path: The file.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._file: IO[str] | None = None
        self._lock = threading.Lock()

    def export(self, rows: Sequence[AnalyticsRow], /) -> bool:
        """Append the rows and flush."""
        lines = "".join(
            json.dumps(row.as_dict(), default=str, separators=(",", ":")) + "\n" for row in rows
        )
        with self._lock:
            if self._file is None:
                self._file = self.path.open("a", encoding="utf-8")
            self._file.write(lines)
            self._file.flush()
        return True

    def shutdown(self) -> None:
        """Close the file."""
        with self._lock:
            if self._file is not None:
                self._file.close()
                self._file = None

    def __repr__(self) -> str:
        return f"JsonLinesExporter({str(self.path)!r})"


class ConsoleExporter:
    """Writes one readable line per row: ``pipeline_runs pipeline.wide status=ok ...``.

    Args:
        stream: Where to write; standard output (at the time of each export) by default.
        keys: The payload keys to show, in order; all of them by default.
    """

    def __init__(self, stream: IO[str] | None = None, *, keys: Sequence[str] | None = None) -> None:
        self.stream = stream
        self.keys = tuple(keys) if keys is not None else None

    def export(self, rows: Sequence[AnalyticsRow], /) -> bool:
        """Write the rows."""
        stream = self.stream if self.stream is not None else sys.stdout
        for row in rows:
            data = row.data
            keys = self.keys if self.keys is not None else tuple(data)
            fields = " ".join(f"{k}={data[k]}" for k in keys if k in data)
            stream.write(f"{row.table} {row.type} {fields}\n")
        stream.flush()
        return True


class _RowExport:
    """The queue's batch exporter: events to rows, rows to the analytics exporter."""

    def __init__(self, exporter: AnalyticsExporter) -> None:
        self.exporter = exporter

    def export(self, batch: Sequence[QueuedEvent], /) -> bool | None:
        return self.exporter.export([AnalyticsRow.from_event(event) for event in batch])

    def shutdown(self) -> None:
        shutdown = getattr(self.exporter, "shutdown", None)
        if callable(shutdown):
            shutdown()


class AnalyticsSink(QueueFrontedSink):
    """An event sink that exports the chosen events as analytics rows, in batches.

    Args:
        exporter: Where the rows go (:class:`JsonLinesExporter`, :class:`ConsoleExporter`,
            or a warehouse client with ``export(rows)``).
        events: The event types kept (``fnmatch`` patterns: ``"stage.*"``); the wide
            events by default. The others never reach the queue.
        name: The sink's name (thread names, logs, the ``sink`` metric label).
        listener: A :class:`~stageflow_otel.core.SinkListener` told every outcome; one with a
            ``watch(sink)`` method is also shown the queue once made (the listener of
            ``HelperTelemetry.sink_listener`` reports its size and capacity that way).
        **queue_options: Settings of the queue, as for
            :class:`~stageflow_otel.core.BackpressureAwareEventSink` (``max_queue_size``,
            ``max_batch_size``, ``flush_interval``, ``policy``, ``export_timeout``,
            ``max_retries``, ``exit_timeout``, ...).

    Raises:
        TypeError: ``exporter`` has no ``export`` method, or ``events`` is no list of types.
        ValueError: A queue setting is invalid.
    """

    def __init__(
        self,
        exporter: AnalyticsExporter,
        *,
        events: Iterable[str] = ("stage.wide", "pipeline.wide"),
        name: str = "analytics",
        listener: SinkListener | None = None,
        **queue_options: Any,
    ) -> None:
        if not isinstance(exporter, AnalyticsExporter):
            raise TypeError(
                f"AnalyticsSink: {describe(exporter)} is no exporter; give an object with "
                "export(rows) (JsonLinesExporter, ConsoleExporter, or a warehouse client)"
            )
        if isinstance(events, str):
            raise TypeError(f"AnalyticsSink: events must be a list of event types, got {events!r}")
        patterns = tuple(events)
        self.events = patterns
        self._exact = frozenset(p for p in patterns if not any(c in p for c in "*?["))
        self._patterns = tuple(p for p in patterns if p not in self._exact)
        self.exporter = exporter
        self.name = name
        self.queue = BackpressureAwareEventSink(
            _RowExport(exporter), name=name, listener=listener, **queue_options
        )
        watch = getattr(listener, "watch", None)
        if callable(watch):
            watch(self.queue)

    def __repr__(self) -> str:
        return f"AnalyticsSink({self.name!r}, exporter={self.exporter!r}, events={list(self.events)!r})"

    def wants(self, event_type: str) -> bool:
        """Whether events of this type are exported."""
        return event_type in self._exact or any(
            fnmatch.fnmatchcase(event_type, p) for p in self._patterns
        )

    # -- the event sink --------------------------------------------------------------------

    def try_emit_event(self, event: Event) -> None:
        """Queue a typed event if it is wanted; never raises, never blocks."""
        if self.wants(event.type):
            self.queue.try_emit_event(event)

    def try_emit(self, *, type: str, data: Mapping[str, Any]) -> None:
        """Queue an event if it is wanted; never raises, never blocks."""
        if self.wants(type):
            self.queue.try_emit(type=type, data=data)

    async def emit(self, *, type: str, data: Mapping[str, Any]) -> None:
        """Queue an event if it is wanted (waiting for room under a ``Block`` policy)."""
        if self.wants(type):
            await self.queue.emit(type=type, data=data)

    # -- lifecycle -------------------------------------------------------------------------

    def queued_sink(self) -> BackpressureAwareEventSink:
        """The queue this sink feeds (its own): its statistics count rows."""
        return self.queue
