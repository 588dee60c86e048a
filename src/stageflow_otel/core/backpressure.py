"""A bounded, batching queue in front of a slow event sink or exporter.

:class:`BackpressureAwareEventSink` is an :class:`~stageflow_otel.core.events.EventSink` whose
``try_emit`` only appends to a bounded in-memory queue; a worker thread exports the queue in
batches to a downstream that may be slow, fail or stall. Whatever the downstream does, a
producer pays for one lock, one comparison and one append, or for a counted drop.

The sink is made of parts, each in a module of its own:

* the **queue** and its **overflow policy** (``_queue``): :class:`DropNewest` (default),
  :class:`DropOldest`, :class:`Block`, or a subclass of :class:`OverflowPolicy` of your own
  decides which event a full queue drops;
* the **worker** (``_batch_worker``): a daemon thread, the model of the OpenTelemetry SDK's
  ``BatchProcessor``, that exports full batches at once and the rest every
  ``flush_interval``, retries with backoff and jitter, abandons an export that outlives
  ``export_timeout`` (a watchdog thread), drains at interpreter exit and starts afresh in a
  forked child;
* the **adapter** for the downstream (``_downstream``), chosen once: a :class:`BatchExporter`
  (an object with a synchronous ``export(batch) -> bool | None``, called once per batch;
  ``False`` or an exception means the export failed) or an
  :class:`~stageflow_otel.core.events.EventSink` (its ``async emit`` is awaited once per
  event, each call bounded by ``emit_timeout``, on an event loop of the worker thread's own);
* one :class:`SinkListener` (``_sink_listener``), told every outcome; one that raises is
  logged once and removed.

Threads rather than an anyio task started by the caller, because nothing the downstream does
(blocking I/O, CPU-heavy encoding, a hung socket) then runs on, or blocks, the event loop that
runs the pipeline; the sink needs no task group (it starts lazily on the first event, from any
thread or backend, and works for code that never enters an async context); and
``force_flush`` and ``shutdown`` can be synchronous and honour their timeouts, as an
OpenTelemetry processor's must at interpreter exit.

Every lost event is counted by reason (``dropped_queue_full``, or the policy's own
:attr:`~OverflowPolicy.result`; ``dropped_shutdown``; ``export_failed``), and a warning is
logged (logger ``stageflow_otel.events.backpressure``) at most once per ``warn_interval``.

Differences from stageflow-core's ``BackpressureAwareEventSink``: export is batched and runs
off the event loop; ``try_emit`` returns ``None`` (read ``statistics()`` instead of a bool);
drops log one warning per interval instead of one per event; ``emit`` waits only under the
``block`` policy and only up to its timeout; exported and failed events are counted; events
emitted after shutdown are counted as dropped instead of restarting the sink.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Protocol, Self, runtime_checkable

import anyio
import anyio.to_thread

from ._batch_worker import DEFAULT_TIMEOUT, EXPORT_FAILED, EXPORTED, BatchWorker
from ._checks import check_callable, check_count, check_name, check_seconds, describe
from ._downstream import downstream_for
from ._queue import (
    DROPPED_SHUTDOWN,
    Block,
    DropNewest,
    DropOldest,
    EventQueue,
    OverflowPolicy,
    PolicyName,
    resolve_policy,
)
from ._sink_listener import ListenerHooks, SinkListener, check_listener
from .events import Event, EventSink

__all__ = (
    "BackpressureAwareEventSink",
    "BackpressureStatistics",
    "BatchExporter",
    "Block",
    "DropNewest",
    "DropOldest",
    "OverflowPolicy",
    "PolicyName",
    "QueueFrontedSink",
    "QueuedEvent",
    "SinkListener",
)

_DEFAULT_BATCH = 512

QueuedEvent = Event
"""One event waiting in, or exported from, the queue: an :class:`~stageflow_otel.core.events.Event`.

A batch exporter reads ``event.type`` and ``event.data`` (the contract payload, made on the
worker thread), or the typed fields. Events are not copied, so producers must not mutate
their payloads after emitting them.
"""


@runtime_checkable
class BatchExporter(Protocol):
    """**Protocol:** exports a batch of events; may block (it runs on the worker thread).

    An exporter may also have a ``shutdown()`` method; the sink calls it once, on the worker
    thread, after the final export of its own ``shutdown``.
    """

    def export(self, batch: Sequence[QueuedEvent], /) -> bool | None:
        """Export ``batch``; return ``False`` (or raise) if it failed and may be retried."""
        ...


@dataclass(frozen=True, slots=True)
class BackpressureStatistics:
    """A snapshot of a :class:`BackpressureAwareEventSink`.

    Every event offered to the sink is, at any time, in exactly one of: the queue
    (``queue_size``), the export running now (``in_flight``), ``exported``, ``export_failed``,
    ``dropped_queue_full`` or ``dropped_shutdown``.

    Attributes:
        name: The sink's name (the ``sink`` label of its metrics).
        policy: The overflow policy's name (``drop_newest``, ``drop_oldest``, ``block``, or a
            policy class's own).
        queue_size: Events waiting in the queue.
        capacity: The queue's capacity (``max_queue_size``).
        in_flight: Events in the export running now.
        emitted: Events accepted into the queue (including any later evicted by the policy or
            dropped at shutdown).
        exported: Events the downstream accepted.
        dropped_queue_full: Events the overflow policy dropped because the queue was full (the
            offered one, or the queued one it evicted), whatever result it reports them as.
        dropped_shutdown: Events emitted after shutdown, or still queued when shutdown timed
            out.
        export_failed: Events whose export failed after every retry, timed out, or was
            abandoned when shutdown timed out.
        export_batches: Exports finished (successfully or not).
        export_retries: Export attempts that were retries.
        last_drop_time: When the last event was dropped (the sink's clock), or ``None``.
        last_export_time: When the last export finished (the sink's clock), or ``None``.
        running: Whether the worker thread is alive.
        closed: Whether ``shutdown`` was called.
    """

    name: str
    policy: str
    queue_size: int
    capacity: int
    in_flight: int
    emitted: int
    exported: int
    dropped_queue_full: int
    dropped_shutdown: int
    export_failed: int
    export_batches: int
    export_retries: int
    last_drop_time: float | None
    last_export_time: float | None
    running: bool
    closed: bool

    @property
    def dropped(self) -> int:
        """Events lost for any reason (queue full, shutdown, failed export)."""
        return self.dropped_queue_full + self.dropped_shutdown + self.export_failed


class _StartedInAsyncWith:
    """``async with sink:`` starts the sink and, on the way out, closes it (:meth:`aclose`)."""

    __slots__ = ()

    def start(self) -> None:
        raise NotImplementedError

    async def aclose(self, timeout: float = DEFAULT_TIMEOUT) -> bool:
        raise NotImplementedError

    async def __aenter__(self) -> Self:
        self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc_val: BaseException | None,
        exc_tb: TracebackType | None,
    ) -> None:
        await self.aclose()


class BackpressureAwareEventSink(_StartedInAsyncWith):
    """An event sink with a bounded queue, batched export on a worker thread, counted drops.

    ``try_emit`` is O(1), never awaits, never raises and never blocks: it appends to the queue
    or lets the overflow policy drop an event, and counts it. A worker thread exports full
    batches at once and everything else every ``flush_interval``; exports are bounded by
    ``export_timeout`` and retried with exponential backoff and jitter. See the module
    documentation for the parts.

    Example::

        sink = BackpressureAwareEventSink(my_exporter, max_queue_size=4096, policy=DropOldest())
        async with sink:
            await graph.run(event_sink=sink)
        print(sink.statistics())

    Args:
        downstream: A :class:`BatchExporter` (``export(batch)``, called on the worker
            thread) or an :class:`EventSink` (its ``async emit`` is awaited per event on the
            worker thread's event loop).
        max_queue_size: Queue capacity, in events.
        max_batch_size: Most events per export; a full batch is exported at once. At most
            ``max_queue_size``; by default 512, or ``max_queue_size`` when that is smaller.
        flush_interval: Seconds between exports of a partial batch.
        policy: What a full queue does: an :class:`OverflowPolicy` (:class:`DropNewest`,
            :class:`DropOldest`, :class:`Block`, or your own), or the name of a built-in,
            ``"drop_newest"``, ``"drop_oldest"`` or ``"block"``.
        block_timeout: Seconds ``await emit()`` waits for room under ``policy="block"``
            (default 1); a policy object carries its own (``Block(timeout=...)``).
        export_timeout: Seconds one ``export`` call of a batch exporter may take; for an
            async sink, seconds delivering one batch may take (events not delivered by then
            count as ``export_failed``).
        emit_timeout: Seconds one ``emit`` of an async sink may take (enforced to within
            10 %).
        max_retries: Retries of a failed export (per batch for a batch exporter, per event
            for an async sink). A timed-out export is not retried.
        retry_base_delay: First backoff delay in seconds; doubled per retry, ±20 % jitter,
            capped at 5 s.
        name: The sink's name, for thread names, logs and the ``sink`` metric label.
        listener: A :class:`SinkListener`, told every outcome (``on_result``), every export
            (``on_export``) and every event dropped before export (``on_drop``). One that
            raises is logged once and removed.
        warn_interval: Least seconds between two warnings about drops (and, separately,
            about failed exports).
        clock: Monotonic clock in seconds, for drop times, warning intervals and export
            durations (waits always use real time).
        backend: Event loop backend (``asyncio`` or ``trio``) of the worker thread for an
            async sink; by default that of the code that starts the sink, else asyncio.
        exit_timeout: Seconds a started sink may take to export its queue at interpreter
            exit; ``None``: no drain at exit (queued events are lost).

    Raises:
        ValueError: For an invalid size, interval, timeout or policy.
        TypeError: If ``downstream`` is neither an event sink nor a batch exporter, or
            ``listener`` is no listener.
    """

    def __init__(
        self,
        downstream: EventSink | BatchExporter,
        *,
        max_queue_size: int = 2048,
        max_batch_size: int | None = None,
        flush_interval: float = 1.0,
        policy: OverflowPolicy | PolicyName = "drop_newest",
        block_timeout: float | None = None,
        export_timeout: float = 10.0,
        emit_timeout: float = 1.0,
        max_retries: int = 3,
        retry_base_delay: float = 0.05,
        name: str = "events",
        listener: SinkListener | None = None,
        warn_interval: float = 10.0,
        clock: Callable[[], float] = time.monotonic,
        backend: str | None = None,
        exit_timeout: float | None = 5.0,
    ) -> None:
        where = "BackpressureAwareEventSink: "
        try:
            max_queue_size = check_count("max_queue_size", max_queue_size)
            batch = check_count("max_batch_size", max_batch_size, allow_none=True)
            for arg, value in (
                ("flush_interval", flush_interval),
                ("export_timeout", export_timeout),
                ("emit_timeout", emit_timeout),
            ):
                check_seconds(arg, value, allow_inf=True)
            check_count("max_retries", max_retries, minimum=0)
            check_seconds("retry_base_delay", retry_base_delay, allow_zero=True)
            check_seconds("warn_interval", warn_interval, allow_zero=True, allow_inf=True)
            check_name("name", name)
            check_callable("clock", clock)
            exit_timeout = check_seconds("exit_timeout", exit_timeout, allow_none=True)
        except (TypeError, ValueError) as exc:
            raise type(exc)(f"{where}{exc}") from None
        overflow = resolve_policy(policy, block_timeout, where=where)
        listener = check_listener(listener, where=where)
        if backend is not None and backend not in ("asyncio", "trio"):
            raise ValueError(
                f"{where}backend must be 'asyncio', 'trio' or None, got {describe(backend)}"
            )
        if batch is None:
            # The default follows the queue: a 10-event queue exports batches of 10.
            batch = min(_DEFAULT_BATCH, max_queue_size)
        elif batch > max_queue_size:
            raise ValueError(
                f"{where}max_batch_size ({batch}) must be at most max_queue_size "
                f"({max_queue_size}); lower max_batch_size, raise max_queue_size, or leave "
                "max_batch_size out to follow it"
            )
        adapter = downstream_for(downstream, name=name, emit_timeout=emit_timeout, backend=backend)
        self.downstream = downstream
        self.name = name
        self.results: tuple[str, ...] = tuple(
            dict.fromkeys((EXPORTED, overflow.result, DROPPED_SHUTDOWN, EXPORT_FAILED))
        )
        """Every result this sink reports to its listener (its policy's drops included)."""
        hooks = ListenerHooks(listener, name)
        self._queue = EventQueue(
            capacity=max_queue_size,
            batch_size=batch,
            policy=overflow,
            name=name,
            warn_interval=warn_interval,
            clock=clock,
            hooks=hooks,
        )
        self._worker = BatchWorker(
            self._queue,
            adapter,
            flush_interval=flush_interval,
            export_timeout=export_timeout,
            max_retries=max_retries,
            retry_base_delay=retry_base_delay,
            warn_interval=warn_interval,
            clock=clock,
            exit_timeout=exit_timeout,
            hooks=hooks,
        )
        # The queue's own bound method: a producer's call goes straight to the append.
        self.try_emit_event = self._queue.put_nowait  # type: ignore[method-assign]

    @property
    def policy(self) -> OverflowPolicy:
        """The overflow policy."""
        return self._queue.policy

    def __repr__(self) -> str:
        queue = self._queue
        return (
            f"BackpressureAwareEventSink({self.name!r}, policy={queue.policy!r}, "
            f"queue={len(queue.events)}/{queue.capacity})"
        )

    # -- producer side ---------------------------------------------------------------------

    def try_emit(self, *, type: str, data: Mapping[str, Any]) -> None:
        """Queue an event without waiting; if the queue is full, the policy drops one.

        Never raises, never blocks the event loop; safe from any thread.
        """
        self.try_emit_event(Event.from_payload(type, data))

    def try_emit_event(self, event: Event) -> None:
        """:meth:`try_emit` for a typed event (what the executor sends): formatted on export."""
        self._queue.put_nowait(event)

    async def emit(self, *, type: str, data: Mapping[str, Any]) -> None:
        """Queue an event; wait for room first if the policy says so (:class:`Block`).

        Under the other policies this is :meth:`try_emit`. Never raises, except for the
        caller's own cancellation while waiting (the event is then not queued).
        """
        await self._queue.put(Event.from_payload(type, data))

    # -- lifecycle -------------------------------------------------------------------------

    def start(self) -> None:
        """Start the worker thread; idempotent, and a no-op after shutdown.

        Emitting starts the sink too, so calling this is optional.
        """
        self._worker.start()

    def force_flush(self, timeout: float = DEFAULT_TIMEOUT) -> bool:
        """Export every event queued before this call, waiting at most ``timeout`` seconds.

        Blocks the calling thread; from async code use :meth:`aflush`.

        Returns:
            True if all those events were exported; False if the timeout passed first, one
            of them was dropped or failed, or the sink is shut down without having exported
            everything.
        """
        return self._worker.force_flush(timeout)

    async def aflush(self, timeout: float = DEFAULT_TIMEOUT) -> bool:
        """:meth:`force_flush` on a worker thread, so the event loop keeps running."""
        return await anyio.to_thread.run_sync(self.force_flush, timeout, abandon_on_cancel=True)

    def shutdown(self, timeout: float = DEFAULT_TIMEOUT) -> bool:
        """Stop accepting events, export what is queued, and stop the worker.

        Waits at most ``timeout`` seconds. Then events still queued are counted as
        ``dropped_shutdown``, and an export still running is abandoned and counted as
        ``export_failed``. A batch exporter's ``shutdown()``, if it has one, is called after
        the final export, within the same timeout. Later events are counted as
        ``dropped_shutdown``. Blocks the calling thread; from async code use :meth:`aclose`.

        Returns:
            True if every accepted event was exported; a second call returns the first
            call's result.
        """
        return self._worker.shutdown(timeout)

    async def aclose(self, timeout: float = DEFAULT_TIMEOUT) -> bool:
        """:meth:`shutdown` on a worker thread, so the event loop keeps running."""
        return await anyio.to_thread.run_sync(self.shutdown, timeout, abandon_on_cancel=True)

    def statistics(self) -> BackpressureStatistics:
        """A snapshot of the queue and its counters."""
        queue, worker = self._queue, self._worker
        with queue.lock:
            current = worker.current
            return BackpressureStatistics(
                name=self.name,
                policy=queue.policy.name,
                queue_size=len(queue.events),
                capacity=queue.capacity,
                in_flight=0 if current is None else current.count,
                emitted=queue.offered,
                exported=worker.exported,
                dropped_queue_full=queue.dropped_queue_full,
                dropped_shutdown=queue.dropped_shutdown,
                export_failed=worker.export_failed,
                export_batches=worker.export_batches,
                export_retries=worker.export_retries,
                last_drop_time=queue.last_drop_time,
                last_export_time=worker.last_export_time,
                running=worker.running,
                closed=queue.closed,
            )


class QueueFrontedSink(_StartedInAsyncWith):
    """The lifecycle of a sink that chooses events for a :class:`BackpressureAwareEventSink`.

    Such a sink (the OpenTelemetry log sink, the analytics sink) decides which events go into
    its queue and how a batch is exported; starting, flushing, shutting down and the
    statistics are the queue's, given by :meth:`queued_sink`.
    """

    __slots__ = ()

    def queued_sink(self) -> BackpressureAwareEventSink:
        """The queue this sink feeds."""
        raise NotImplementedError

    def start(self) -> None:
        """Start the export thread (emitting starts it too)."""
        self.queued_sink().start()

    def force_flush(self, timeout: float = DEFAULT_TIMEOUT) -> bool:
        """Export every event queued before this call, waiting at most ``timeout`` seconds."""
        return self.queued_sink().force_flush(timeout)

    async def aflush(self, timeout: float = DEFAULT_TIMEOUT) -> bool:
        """:meth:`force_flush` on a worker thread, so the event loop keeps running."""
        return await self.queued_sink().aflush(timeout)

    def shutdown(self, timeout: float = DEFAULT_TIMEOUT) -> bool:
        """Export what is queued and stop, within ``timeout`` seconds; shuts the exporter down."""
        return self.queued_sink().shutdown(timeout)

    async def aclose(self, timeout: float = DEFAULT_TIMEOUT) -> bool:
        """:meth:`shutdown` on a worker thread, so the event loop keeps running."""
        return await self.queued_sink().aclose(timeout)

    def statistics(self) -> BackpressureStatistics:
        """A snapshot of the queue and its counters."""
        return self.queued_sink().statistics()
