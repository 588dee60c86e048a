"""A bounded, batching queue in front of a slow event sink or exporter.

:class:`BackpressureAwareEventSink` is an :class:`~stageflow_otel.core.events.EventSink` whose
``try_emit`` only appends to a bounded in-memory queue; a worker thread exports the queue in
batches to a downstream that may be slow, fail or stall. Whatever the downstream does, a
producer pays for one lock, one comparison and one append, or for a counted drop.

The downstream is either

* a :class:`BatchExporter`: an object with a synchronous ``export(batch) -> bool | None``,
  called once per batch (``False`` or an exception means the export failed). Any object with
  an ``export`` method is treated as a batch exporter; or
* an :class:`~stageflow_otel.core.events.EventSink`: its ``async emit`` is awaited once per
  event, each call bounded by ``emit_timeout``.

Worker model:
    Each sink owns one daemon **worker thread**, the model of the OpenTelemetry SDK's
    ``BatchProcessor``: it waits for a full batch, the flush interval, a flush or shutdown,
    then calls the downstream itself. For an async sink the worker thread runs its own event
    loop (anyio, asyncio or trio) and waits for work through ``anyio.to_thread`` only when the
    queue has nothing to export, so that loop never blocks. A second, mostly idle daemon
    **watchdog thread** enforces ``export_timeout``: an export that has not returned by its
    deadline is counted as ``export_failed`` and abandoned (a call cannot be interrupted; it
    is never retried, since it may still complete, and its late result is ignored).

    Threads rather than an anyio task started by the caller, because:

    - nothing the downstream does (blocking I/O, CPU-heavy encoding, a hung socket) runs on,
      or blocks, the event loop that runs the pipeline;
    - the sink needs no task group: it starts lazily on the first event, from any thread or
      backend, and works for code that never enters an async context;
    - ``force_flush`` and ``shutdown`` can be synchronous and honour their timeouts, as an
      OpenTelemetry processor's must at interpreter exit.

    The worker calls the downstream directly, not through another thread: each thread hand-off
    costs a GIL switch (up to ``sys.getswitchinterval()``, 5 ms) while the pipeline keeps the
    GIL busy, which would throttle export and make a healthy downstream drop events.

    The price of a thread: an async downstream runs on the worker's event loop, not on the
    caller's, so it must not use objects bound to the caller's loop (an ``asyncio.Queue``
    created there, for example). The worker's loop uses the backend of the code that started
    the sink (asyncio unless started from trio), or the one given as ``backend``.

Overflow policies:
    ``drop_newest`` (default) drops the incoming event when the queue is full; ``drop_oldest``
    evicts the oldest queued event to make room; ``block`` makes ``await emit()`` wait up to
    ``block_timeout`` for room (cancellably; it polls, so the event loop never blocks) while
    ``try_emit`` behaves like ``drop_newest``. Every lost event is counted by reason
    (``dropped_queue_full``, ``dropped_shutdown``, ``export_failed``), and a warning is logged
    (logger ``stageflow_otel.events.backpressure``) at most once per ``warn_interval``.

Differences from stageflow-core's ``BackpressureAwareEventSink``: export is batched and runs
off the event loop; ``try_emit`` returns ``None`` (read ``statistics()`` instead of a bool);
drops log one warning per interval instead of one per event; ``emit`` waits only under the
``block`` policy and only up to ``block_timeout``; exported and failed events are counted;
events emitted after shutdown are counted as dropped instead of restarting the sink.

At interpreter exit:
    A started sink drains at exit: an ``atexit`` handler, registered when the worker starts,
    calls :meth:`BackpressureAwareEventSink.shutdown` with ``exit_timeout``, so a short
    script's last events are exported, and a dead downstream delays exit by at most that
    long. The handler is registered after the OpenTelemetry providers the downstream may
    write to, so it runs before their own exit handlers flush them.
"""

from __future__ import annotations

import atexit
import functools
import logging
import math
import os
import random
import threading
import time
import weakref
from collections import deque
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Literal, Protocol, Self, runtime_checkable

import anyio
import anyio.to_thread
import sniffio

from ._checks import check_callable, check_count, check_name, check_seconds, describe
from .events import Event, EventSink

__all__ = (
    "BackpressureAwareEventSink",
    "BackpressureStatistics",
    "BatchExporter",
    "ExportListener",
    "OverflowPolicy",
    "QueuedEvent",
)

logger = logging.getLogger("stageflow_otel.events.backpressure")

OverflowPolicy = Literal["drop_newest", "drop_oldest", "block"]
"""What a full queue does with a new event."""

ExportListener = Callable[[str, int], None]
"""Called with ``(result, count)``; result is ``exported``, ``dropped_queue_full``,
``dropped_shutdown`` or ``export_failed``."""

_POLICIES: tuple[OverflowPolicy, ...] = ("drop_newest", "drop_oldest", "block")
_DEFAULT_TIMEOUT = 30.0
_MAX_BACKOFF = 5.0
_JITTER = 0.2
# An async batch ends itself at ``export_timeout``; the watchdog steps in this much later,
# which only a downstream that blocks the worker's event loop ever needs.
_ASYNC_GRACE = 1.0
# ``emit`` under the ``block`` policy polls for room: anyio has no non-blocking way for the
# worker thread to wake a task on another thread's loop, and this is the slow path anyway.
_BLOCK_POLL_FIRST = 0.0005
_BLOCK_POLL_MAX = 0.02


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
        policy: The overflow policy.
        queue_size: Events waiting in the queue.
        capacity: The queue's capacity (``max_queue_size``).
        in_flight: Events in the export running now.
        emitted: Events accepted into the queue (including any later evicted by
            ``drop_oldest`` or dropped at shutdown).
        exported: Events the downstream accepted.
        dropped_queue_full: Events dropped because the queue was full (the incoming one, or
            the evicted oldest one under ``drop_oldest``).
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
    policy: OverflowPolicy
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


class _FlushRequest:
    """A pending ``force_flush``/``shutdown``: events before ``target`` must be done."""

    __slots__ = ("ok", "target")

    def __init__(self, target: int) -> None:
        self.target = target
        self.ok = True


class _Export:
    """The batch being exported; the watchdog or a timed-out shutdown may abandon it."""

    __slots__ = ("abandoned", "count", "deadline", "first_seq", "settled", "started")

    def __init__(self, first_seq: int, count: int, started: float) -> None:
        self.first_seq = first_seq
        self.count = count
        self.started = started
        self.deadline = math.inf  # of the running attempt, for the watchdog
        self.abandoned = False
        # Whoever settles the export (the worker when it ends, or whoever abandons it)
        # counts its events; the other one then leaves them alone.
        self.settled = False


_DEFAULT_BATCH = 512


def _check_arguments(
    *,
    max_queue_size: object,
    max_batch_size: object,
    flush_interval: object,
    policy: object,
    block_timeout: object,
    export_timeout: object,
    emit_timeout: object,
    max_retries: object,
    retry_base_delay: object,
    name: object,
    on_drop: object,
    listener: object,
    on_export: object,
    warn_interval: object,
    clock: object,
    backend: object,
) -> tuple[int, int]:
    """Check the constructor's arguments; returns the queue size and the batch size."""
    where = "BackpressureAwareEventSink: "
    try:
        queue = check_count("max_queue_size", max_queue_size)
        batch = check_count("max_batch_size", max_batch_size, allow_none=True)
        for arg, value in (
            ("flush_interval", flush_interval),
            ("block_timeout", block_timeout),
            ("export_timeout", export_timeout),
            ("emit_timeout", emit_timeout),
        ):
            check_seconds(arg, value, allow_inf=True)
        check_count("max_retries", max_retries, minimum=0)
        check_seconds("retry_base_delay", retry_base_delay, allow_zero=True)
        check_seconds("warn_interval", warn_interval, allow_zero=True, allow_inf=True)
        check_name("name", name)
        for arg, value in (("on_drop", on_drop), ("listener", listener), ("on_export", on_export)):
            check_callable(arg, value, allow_none=True)
        check_callable("clock", clock)
    except (TypeError, ValueError) as exc:
        raise type(exc)(f"{where}{exc}") from None
    if not (isinstance(policy, str) and policy in _POLICIES):
        raise ValueError(
            f"{where}policy must be one of {', '.join(map(repr, _POLICIES))}, got "
            f"{describe(policy)}"
        )
    if backend is not None and backend not in ("asyncio", "trio"):
        raise ValueError(
            f"{where}backend must be 'asyncio', 'trio' or None, got {describe(backend)}"
        )
    if batch is None:
        # The default follows the queue: a 10-event queue exports batches of 10.
        return queue, min(_DEFAULT_BATCH, queue)
    if batch > queue:
        raise ValueError(
            f"{where}max_batch_size ({batch}) must be at most max_queue_size ({queue}); lower "
            "max_batch_size, raise max_queue_size, or leave max_batch_size out to follow it"
        )
    return queue, batch


class BackpressureAwareEventSink:
    """An event sink with a bounded queue, batched export on a worker thread, counted drops.

    ``try_emit`` is O(1), never awaits, never raises and never blocks: it appends to the queue
    or counts a drop. A worker thread exports full batches at once and everything else every
    ``flush_interval``; exports are bounded by ``export_timeout`` and retried with exponential
    backoff and jitter. See the module documentation for the worker model.

    Example::

        sink = BackpressureAwareEventSink(my_exporter, max_queue_size=4096, name="audit")
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
        policy: ``drop_newest``, ``drop_oldest`` or ``block`` (see the module documentation).
        block_timeout: Seconds ``await emit()`` waits for room under ``block``.
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
        on_drop: Called with ``(type, data)`` of each event dropped before export (queue full
            or shut down), on the thread that dropped it.
        listener: Called with ``(result, count)`` for every outcome: ``exported`` and
            ``export_failed`` from the worker (or watchdog) thread, ``dropped_queue_full`` and
            ``dropped_shutdown`` from the thread that dropped. Must be cheap and thread-safe
            (a counter increment).
        on_export: Called after each export with ``(duration_s, count, ok)``, from the worker
            (or watchdog) thread.
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
        TypeError: If ``downstream`` is neither an event sink nor a batch exporter.

    A callback (``on_drop``, ``listener``, ``on_export``) that raises is logged once and not
    called again.
    """

    def __init__(
        self,
        downstream: EventSink | BatchExporter,
        *,
        max_queue_size: int = 2048,
        max_batch_size: int | None = None,
        flush_interval: float = 1.0,
        policy: OverflowPolicy = "drop_newest",
        block_timeout: float = 1.0,
        export_timeout: float = 10.0,
        emit_timeout: float = 1.0,
        max_retries: int = 3,
        retry_base_delay: float = 0.05,
        name: str = "events",
        on_drop: Callable[[str, Mapping[str, Any]], None] | None = None,
        listener: ExportListener | None = None,
        on_export: Callable[[float, int, bool], None] | None = None,
        warn_interval: float = 10.0,
        clock: Callable[[], float] = time.monotonic,
        backend: str | None = None,
        exit_timeout: float | None = 5.0,
    ) -> None:
        max_queue_size, max_batch_size = _check_arguments(
            max_queue_size=max_queue_size,
            max_batch_size=max_batch_size,
            flush_interval=flush_interval,
            policy=policy,
            block_timeout=block_timeout,
            export_timeout=export_timeout,
            emit_timeout=emit_timeout,
            max_retries=max_retries,
            retry_base_delay=retry_base_delay,
            name=name,
            on_drop=on_drop,
            listener=listener,
            on_export=on_export,
            warn_interval=warn_interval,
            clock=clock,
            backend=backend,
        )
        export = getattr(downstream, "export", None)
        emit = getattr(downstream, "emit", None)
        self._export: Callable[[Sequence[QueuedEvent]], bool | None] | None = None
        self._emit: Callable[..., Awaitable[None]] | None = None
        if callable(export):
            self._export = export
        elif callable(emit):
            self._emit = emit
        else:
            raise TypeError(
                f"downstream must be an EventSink (async emit) or a batch exporter "
                f"(export(batch)), got {type(downstream).__qualname__}"
            )
        self.downstream = downstream
        self.name = name
        self.policy: OverflowPolicy = policy
        self._evict = policy == "drop_oldest"
        self._capacity = max_queue_size
        self._max_batch = max_batch_size
        self._flush_interval = flush_interval
        self._block_timeout = block_timeout
        self._export_timeout = export_timeout
        self._emit_timeout = emit_timeout
        self._max_retries = max_retries
        self._retry_base_delay = retry_base_delay
        self._warn_interval = warn_interval
        self._clock = clock
        self._backend = backend
        self._on_drop = on_drop
        self._listener = listener
        self._on_export = on_export
        try:
            self._exit_timeout = check_seconds("exit_timeout", exit_timeout, allow_none=True)
        except (TypeError, ValueError) as exc:
            raise type(exc)(f"BackpressureAwareEventSink: {exc}") from None
        self._exit_handler: Callable[[], None] | None = None
        self._init_state(closing=False)
        _register_fork_handler(self)

    def _init_state(self, *, closing: bool) -> None:
        self._lock = threading.Lock()
        self._work_cond = threading.Condition(self._lock)  # the worker waits for work
        self._done_cond = threading.Condition(self._lock)  # flushes wait for exports
        self._watch_cond = threading.Condition(self._lock)  # the watchdog waits for a deadline
        self._queue: deque[QueuedEvent] = deque()
        # ``try_emit`` appends while ``len(queue) < _limit``: 0 once closed, so the fast
        # path needs a single comparison.
        self._limit = 0 if closing else self._capacity
        self._closing = closing
        self._aborted = threading.Event()
        self._worker: threading.Thread | None = None
        self._worker_idle = False
        self._worker_done = False
        self._watchdog: threading.Thread | None = None
        self._watchdog_idle = False
        self._current: _Export | None = None
        self._flush_pending = False
        self._drain_all = False
        self._next_flush = 0.0
        self._flush_requests: list[_FlushRequest] = []
        self._shutdown_result: bool | None = None
        # Sequence numbers: event ``i`` is the i-th accepted; ``_removed`` events have left
        # the queue, so it holds events ``_removed .. _emitted - 1``.
        self._emitted = 0
        self._removed = 0
        self._exported = 0
        self._dropped_queue_full = 0
        self._dropped_shutdown = 0
        self._export_failed = 0
        self._export_batches = 0
        self._export_retries = 0
        self._last_drop_time: float | None = None
        self._last_export_time: float | None = None
        self._last_drop_warning = -math.inf
        self._last_failure_warning = -math.inf

    def __repr__(self) -> str:
        return (
            f"BackpressureAwareEventSink({self.name!r}, policy={self.policy!r}, "
            f"queue={len(self._queue)}/{self._capacity})"
        )

    # -- producer side ---------------------------------------------------------------------

    def try_emit(self, *, type: str, data: Mapping[str, Any]) -> None:
        """Queue an event without waiting; if the queue is full, drop one and count it.

        Never raises, never blocks the event loop; safe from any thread.
        """
        self.try_emit_event(Event.from_payload(type, data))

    def try_emit_event(self, event: Event) -> None:
        """:meth:`try_emit` for a typed event (what the executor sends): formatted on export."""
        if self._worker is None:
            self.start()
        with self._lock:
            queue = self._queue
            if len(queue) < self._limit:
                queue.append(event)
                self._emitted += 1
                if self._worker_idle and len(queue) >= self._max_batch:
                    self._worker_idle = False
                    self._work_cond.notify()
                return
            drop = self._drop_locked(event, self._evict)
        if drop is not None:
            self._report_drop(*drop)

    async def emit(self, *, type: str, data: Mapping[str, Any]) -> None:
        """Queue an event; under the ``block`` policy wait up to ``block_timeout`` for room.

        Under the other policies this is :meth:`try_emit`. Never raises, except for the
        caller's own cancellation while waiting (the event is then not queued).
        """
        event = Event.from_payload(type, data)
        if self.policy != "block":
            self.try_emit_event(event)
            return
        if self._worker is None:
            self.start()
        deadline = anyio.current_time() + self._block_timeout
        delay = _BLOCK_POLL_FIRST
        while True:
            with self._lock:
                queue = self._queue
                if len(queue) < self._limit:
                    queue.append(event)
                    self._emitted += 1
                    if self._worker_idle and len(queue) >= self._max_batch:
                        self._worker_idle = False
                        self._work_cond.notify()
                    return
                remaining = deadline - anyio.current_time()
                if self._closing or remaining <= 0:
                    drop = self._drop_locked(event, False)
                    break
            await anyio.sleep(min(delay, remaining))
            delay = min(delay * 2, _BLOCK_POLL_MAX)
        if drop is not None:
            self._report_drop(*drop)

    def _drop_locked(self, event: Event, evict: bool) -> tuple[str, Event, bool] | None:
        """Count a drop (the queue is full, or closed); evict the oldest event if asked.

        Returns what :meth:`_report_drop` needs, or ``None`` when there is nothing to report.
        """
        now = self._last_drop_time = self._clock()
        if self._closing:
            result = "dropped_shutdown"
            self._dropped_shutdown += 1
        else:
            result = "dropped_queue_full"
            self._dropped_queue_full += 1
            if evict:
                queue = self._queue
                evicted = queue.popleft()
                queue.append(event)
                event = evicted  # report the evicted event, not the new one
                if self._flush_requests:
                    self._lost(self._removed)
                self._removed += 1
                self._emitted += 1
        warn = now - self._last_drop_warning >= self._warn_interval
        if warn:
            self._last_drop_warning = now
        elif self._listener is None and self._on_drop is None:
            return None
        return result, event, warn

    def _report_drop(self, result: str, event: Event, warn: bool) -> None:
        """Warn (at most once per interval) and tell the callbacks, outside the lock."""
        try:
            if warn:
                full, closed = self._dropped_queue_full, self._dropped_shutdown
                logger.warning(
                    "event sink %r is dropping events: %d dropped so far (%d with the queue "
                    "full, %d after shutdown; capacity %d, policy %s); is the downstream slow "
                    "or stalled?",
                    self.name,
                    full + closed,
                    full,
                    closed,
                    self._capacity,
                    self.policy,
                )
            if self._listener is not None:
                self._notify(result, 1)
            if self._on_drop is not None:
                self._call_on_drop((event,))
        except Exception:  # try_emit never raises; a broken log handler must not make it
            logger.debug("event sink %r failed to report a drop", self.name, exc_info=True)

    def _lost(self, first_seq: int) -> None:
        """Events from ``first_seq`` on were lost: fail the flushes waiting for them."""
        for request in self._flush_requests:
            if first_seq < request.target:
                request.ok = False

    # -- lifecycle -------------------------------------------------------------------------

    def start(self) -> None:
        """Start the worker thread; idempotent, and a no-op after shutdown.

        Emitting starts the sink too, so calling this is optional.
        """
        with self._lock:
            if self._worker is None and not self._closing:
                self._start_locked()

    def _start_locked(self) -> None:
        if self._backend is None and self._export is None:
            try:
                self._backend = sniffio.current_async_library()
            except sniffio.AsyncLibraryNotFoundError:
                self._backend = "asyncio"
        self._next_flush = time.monotonic() + self._flush_interval
        self._worker = self._spawn(self._work, "")
        if self._exit_timeout is not None and self._exit_handler is None:
            self._exit_handler = functools.partial(_drain_at_exit, weakref.ref(self))
            atexit.register(self._exit_handler)

    def _spawn(self, target: Callable[[], None], role: str) -> threading.Thread:
        thread = threading.Thread(
            target=target, name=f"stageflow-sink-{self.name}{role}", daemon=True
        )
        try:
            thread.start()
        except RuntimeError:  # no thread can be started (interpreter exiting, limits)
            logger.exception("event sink %r could not start a thread", self.name)
        return thread

    def force_flush(self, timeout: float = _DEFAULT_TIMEOUT) -> bool:
        """Export every event queued before this call, waiting at most ``timeout`` seconds.

        Blocks the calling thread; from async code use :meth:`aflush`.

        Returns:
            True if all those events were exported; False if the timeout passed first, one
            of them was dropped or failed, or the sink is shut down without having exported
            everything.
        """
        deadline = time.monotonic() + max(timeout, 0.0)
        with self._lock:
            if self._closing:
                return bool(self._shutdown_result)
            target = self._emitted
            if self._done_upto(target):
                return True
            if self._worker is None:
                self._start_locked()
            request = _FlushRequest(target)
            self._flush_requests.append(request)
            self._flush_pending = True
            self._work_cond.notify()
            try:
                done = self._wait_done(target, deadline)
            finally:
                self._flush_requests.remove(request)
            return done and request.ok

    async def aflush(self, timeout: float = _DEFAULT_TIMEOUT) -> bool:
        """:meth:`force_flush` on a worker thread, so the event loop keeps running."""
        return await anyio.to_thread.run_sync(self.force_flush, timeout, abandon_on_cancel=True)

    def shutdown(self, timeout: float = _DEFAULT_TIMEOUT) -> bool:
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
        deadline = time.monotonic() + max(timeout, 0.0)
        cleared: list[QueuedEvent] = []
        abandoned: _Export | None = None
        handler, self._exit_handler = self._exit_handler, None
        if handler is not None:
            atexit.unregister(handler)
        with self._lock:
            if self._closing:
                return bool(self._shutdown_result)
            self._closing = True
            self._limit = 0
            worker = self._worker
            target = self._emitted
            request = _FlushRequest(target)
            self._flush_requests.append(request)
            self._work_cond.notify()
            try:
                if worker is None or not worker.is_alive():
                    done = self._done_upto(target)
                else:
                    done = self._wait_done(target, deadline)
            finally:
                self._flush_requests.remove(request)
            if not done:
                cleared = list(self._queue)
                self._queue.clear()
                self._removed += len(cleared)
                self._dropped_shutdown += len(cleared)
                if cleared:
                    self._last_drop_time = self._clock()
                abandoned = self._abandon_locked()
                self._aborted.set()
                self._work_cond.notify_all()
                self._watch_cond.notify_all()
            result = done and request.ok
            self._shutdown_result = result
        if cleared:
            logger.warning(
                "event sink %r did not export its queue within %.3g s of shutdown; %d queued "
                "events are dropped",
                self.name,
                timeout,
                len(cleared),
            )
            self._notify("dropped_shutdown", len(cleared))
            self._call_on_drop(cleared)
        if abandoned is not None:
            self._finish(abandoned, 0, f"abandoned by shutdown after {timeout:.3g} s")
        if worker is not None and worker.is_alive() and worker is not threading.current_thread():
            worker.join(max(0.0, deadline - time.monotonic()))
        return result

    async def aclose(self, timeout: float = _DEFAULT_TIMEOUT) -> bool:
        """:meth:`shutdown` on a worker thread, so the event loop keeps running."""
        return await anyio.to_thread.run_sync(self.shutdown, timeout, abandon_on_cancel=True)

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

    def statistics(self) -> BackpressureStatistics:
        """A snapshot of the queue and its counters."""
        with self._lock:
            worker = self._worker
            current = self._current
            return BackpressureStatistics(
                name=self.name,
                policy=self.policy,
                queue_size=len(self._queue),
                capacity=self._capacity,
                in_flight=0 if current is None else current.count,
                emitted=self._emitted,
                exported=self._exported,
                dropped_queue_full=self._dropped_queue_full,
                dropped_shutdown=self._dropped_shutdown,
                export_failed=self._export_failed,
                export_batches=self._export_batches,
                export_retries=self._export_retries,
                last_drop_time=self._last_drop_time,
                last_export_time=self._last_export_time,
                running=worker is not None and worker.is_alive(),
                closed=self._closing,
            )

    def _done_upto(self, target: int) -> bool:
        """Whether every event accepted before sequence number ``target`` is done with."""
        current = self._current
        return self._removed >= target and (current is None or current.first_seq >= target)

    def _wait_done(self, target: int, deadline: float) -> bool:
        while not self._done_upto(target):
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return False
            self._done_cond.wait(remaining)
        return True

    # -- worker side -----------------------------------------------------------------------

    def _work(self) -> None:
        try:
            if self._export is not None:
                self._work_sync(self._export)
            else:
                anyio.run(self._work_async, backend=self._backend or "asyncio")
        except BaseException:  # the thread's last resort: log, never die loudly
            logger.exception("worker of event sink %r failed; queued events stay queued", self)
        finally:
            with self._lock:
                self._worker_done = True
                self._watch_cond.notify_all()

    def _take_work(self, wait: bool) -> tuple[QueuedEvent, ...] | None:
        """The next batch to export; ``None`` to stop; ``()`` if none yet and not ``wait``."""
        interval = self._flush_interval
        with self._lock:
            queue = self._queue
            while True:
                if self._aborted.is_set():
                    return None
                size = len(queue)
                if self._drain_all:
                    if size:
                        return self._pop_batch_locked(size)
                    self._drain_all = False
                    self._next_flush = time.monotonic() + interval
                elif size >= self._max_batch:
                    return self._pop_batch_locked(size)
                if self._flush_pending or self._closing:
                    if self._closing and not queue:
                        return None
                    self._flush_pending = False
                    self._drain_all = True
                    continue
                now = time.monotonic()
                if now >= self._next_flush:
                    self._next_flush = now + interval
                    if queue:
                        self._drain_all = True
                        continue
                if not wait:
                    return ()
                self._worker_idle = True
                self._work_cond.wait(max(self._next_flush - now, 0.0))
                self._worker_idle = False

    def _pop_batch_locked(self, size: int) -> tuple[QueuedEvent, ...]:
        take = min(size, self._max_batch)
        popleft = self._queue.popleft
        batch = tuple(popleft() for _ in range(take))
        self._current = _Export(self._removed, take, self._clock())
        self._removed += take
        return batch

    def _work_sync(self, export: Callable[[Sequence[QueuedEvent]], bool | None]) -> None:
        while (batch := self._take_work(True)) is not None:
            job = self._current
            assert job is not None
            exported = self._export_with_retries(batch, export, job)
            if exported is not None:
                self._finish(job, exported)
        if not self._aborted.is_set():
            self._shutdown_exporter()

    def _export_with_retries(
        self,
        batch: tuple[QueuedEvent, ...],
        export: Callable[[Sequence[QueuedEvent]], bool | None],
        job: _Export,
    ) -> int | None:
        """Events exported (all or none); ``None`` if the batch was abandoned meanwhile."""
        for attempt in range(self._max_retries + 1):
            if attempt:
                if self._aborted.wait(self._backoff(attempt)):
                    return None
                with self._lock:
                    self._export_retries += 1
            if not self._arm(job, self._export_timeout):
                return None
            try:
                ok = export(batch) is not False
            except Exception:
                logger.debug(
                    "event sink %r: export of %d events raised",
                    self.name,
                    len(batch),
                    exc_info=True,
                )
                ok = False
            with self._lock:
                job.deadline = math.inf
                if job.abandoned:
                    return None
            if ok:
                return len(batch) if self._settle(job) else None
            logger.debug("event sink %r: export of %d events failed", self.name, len(batch))
        return 0 if self._settle(job) else None

    async def _work_async(self) -> None:
        while True:
            batch = self._take_work(False)
            if batch is not None and not batch:
                # Nothing to export: wait on a helper thread so this loop stays responsive.
                batch = await anyio.to_thread.run_sync(self._take_work, True)
            if batch is None:
                return
            job = self._current
            assert job is not None
            if not self._arm(job, self._export_timeout + _ASYNC_GRACE):
                continue
            delivered = await self._emit_batch(batch, job)
            if self._settle(job):
                self._finish(job, delivered)

    async def _emit_batch(self, batch: tuple[QueuedEvent, ...], job: _Export) -> int:
        """Await ``emit`` for each event in order; returns how many were delivered.

        Each event may take between 0.9 and 1 times ``emit_timeout``: one cancel scope covers
        a run of events and its deadline moves forward only every tenth of the timeout (a
        scope per event would cost more than most emits).
        """
        emit = self._emit
        assert emit is not None
        now = anyio.current_time
        timeout = self._emit_timeout
        refresh = 0.9 * timeout
        batch_deadline = now() + self._export_timeout
        delivered = index = failures = 0
        while index < len(batch) and not job.abandoned:
            if failures:
                with self._lock:
                    self._export_retries += 1
                pause = min(self._backoff(failures), batch_deadline - now())
                await anyio.sleep(max(pause, 0.0))
            if now() >= batch_deadline:
                break
            with anyio.CancelScope(deadline=min(now() + timeout, batch_deadline)) as scope:
                try:
                    while index < len(batch) and not job.abandoned:
                        started = now()
                        if scope.deadline - started < refresh:
                            scope.deadline = min(started + timeout, batch_deadline)
                        event = batch[index]
                        await emit(type=event.type, data=event.data)
                        delivered += 1
                        index += 1
                        failures = 0
                except Exception:  # cancellation is a BaseException and passes through
                    logger.debug(
                        "event sink %r: downstream emit of %r failed",
                        self.name,
                        batch[index].type,
                        exc_info=True,
                    )
            if index < len(batch):  # batch[index] raised or timed out
                failures += 1
                if failures > self._max_retries:
                    index += 1
                    failures = 0
        return delivered

    def _arm(self, job: _Export, timeout: float) -> bool:
        """Give the running export a deadline for the watchdog; False if it was abandoned."""
        with self._lock:
            if job.abandoned:
                return False
            job.deadline = time.monotonic() + timeout
            if self._watchdog is None:
                self._watchdog = self._spawn(self._watch, "-watchdog")
            elif self._watchdog_idle:
                self._watchdog_idle = False
                self._watch_cond.notify()
        return True

    def _settle(self, job: _Export) -> bool:
        """Claim the accounting of a finished export; False if it was abandoned."""
        with self._lock:
            if job.settled:
                return False
            job.settled = True
            job.deadline = math.inf
            return True

    def _finish(self, job: _Export, exported: int, why: str = "") -> None:
        """Count a settled export; callbacks first, so a flush that returns saw them.

        ``why`` explains an abandoned export in the warning.
        """
        ended = self._clock()
        self._report_export(job.count, exported, job.started, ended)
        failed = job.count - exported
        warn = False
        with self._lock:
            self._exported += exported
            self._export_failed += failed
            self._export_batches += 1
            self._last_export_time = ended
            total_failed = self._export_failed
            if failed:
                self._lost(job.first_seq)
                if ended - self._last_failure_warning >= self._warn_interval:
                    warn = True
                    self._last_failure_warning = ended
            if self._current is job:
                self._current = None
            self._done_cond.notify_all()
        if warn:
            logger.warning(
                "event sink %r could not export %d of %d events (%s); %d events failed so far",
                self.name,
                failed,
                job.count,
                why or f"{self._max_retries} retries",
                total_failed,
            )

    def _abandon_locked(self) -> _Export | None:
        """Give up on the running export, whose late result will be ignored.

        The caller then counts it with ``_finish(job, 0)``, outside the lock.
        """
        job = self._current
        if job is None or job.settled:
            return None
        job.abandoned = job.settled = True
        return job

    def _report_export(self, count: int, exported: int, started: float, ended: float) -> None:
        if exported:
            self._notify("exported", exported)
        if count - exported:
            self._notify("export_failed", count - exported)
        on_export = self._on_export
        if on_export is not None:
            try:
                on_export(max(0.0, ended - started), count, exported == count)
            except Exception:
                self._on_export = None
                logger.exception("on_export of event sink %r raised; it is disabled", self.name)

    def _watch(self) -> None:
        """The watchdog: abandons an export that outlives its deadline."""
        while True:
            with self._lock:
                job = self._current
                if self._aborted.is_set() or self._worker_done:
                    return
                if job is None or job.deadline == math.inf:
                    self._watchdog_idle = True
                    self._watch_cond.wait()
                    continue
                remaining = job.deadline - time.monotonic()
                if remaining > 0:
                    self._watch_cond.wait(remaining)
                    continue
                abandoned = self._abandon_locked()
            if abandoned is not None:
                why = f"did not return within {self._export_timeout:.3g} s"
                self._finish(abandoned, 0, why)

    def _backoff(self, attempt: int) -> float:
        base = min(self._retry_base_delay * 2.0 ** (attempt - 1), _MAX_BACKOFF)
        return base * random.uniform(1 - _JITTER, 1 + _JITTER)

    def _shutdown_exporter(self) -> None:
        shutdown = getattr(self.downstream, "shutdown", None)
        if self._export is None or not callable(shutdown):
            return
        try:
            shutdown()
        except Exception:
            logger.warning("exporter of event sink %r failed to shut down", self, exc_info=True)

    # -- callbacks -------------------------------------------------------------------------

    def _notify(self, result: str, count: int) -> None:
        listener = self._listener
        if listener is None:
            return
        try:
            listener(result, count)
        except Exception:
            self._listener = None
            logger.exception("listener of event sink %r raised; it is disabled", self.name)

    def _call_on_drop(self, events: Sequence[Event]) -> None:
        on_drop = self._on_drop
        if on_drop is None:
            return
        try:
            for event in events:
                on_drop(event.type, event.data)
        except Exception:
            self._on_drop = None
            logger.exception("on_drop of event sink %r raised; it is disabled", self.name)

    # -- fork ------------------------------------------------------------------------------

    def _reinit_after_fork(self) -> None:
        """In a forked child: fresh lock, empty queue, zero counters, no threads.

        The parent exports its own queue; the child starts a worker on its first event.
        """
        self._init_state(closing=self._closing)


def _register_fork_handler(sink: BackpressureAwareEventSink) -> None:
    if not hasattr(os, "register_at_fork"):  # pragma: no cover - Windows
        return
    ref = weakref.WeakMethod(sink._reinit_after_fork)

    def reinit() -> None:
        method = ref()
        if method is not None:
            method()

    os.register_at_fork(after_in_child=reinit)


def _drain_at_exit(ref: weakref.ReferenceType[BackpressureAwareEventSink]) -> None:
    """The ``atexit`` handler of a started sink: export what is queued, within its timeout."""
    sink = ref()
    if sink is None or sink._exit_timeout is None:
        return
    try:
        sink.shutdown(timeout=sink._exit_timeout)
    except Exception:  # exit goes on whatever the downstream does
        logger.exception("event sink %r failed to drain at exit", sink.name)
