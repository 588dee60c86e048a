"""The worker of a queued event sink: batches, retries, deadlines, flushes and shutdown.

A :class:`BatchWorker` takes batches off an ``EventQueue`` on a daemon thread, the model of the
OpenTelemetry SDK's ``BatchProcessor`` (a full batch at once, the rest every flush interval),
and hands them to its ``Downstream`` adapter. A mostly idle watchdog thread abandons an export
that outlives ``export_timeout`` (a call cannot be interrupted: it is counted as failed, never
retried, and its late result is ignored). A started worker drains at interpreter exit, its
``atexit`` handler registered after the OpenTelemetry providers the downstream may write to,
so it runs before they flush; a forked child starts with an empty queue and no threads.
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
from collections.abc import Callable
from itertools import repeat, starmap
from typing import TYPE_CHECKING, Literal

from ._queue import DROPPED_SHUTDOWN, EventQueue, FlushRequest
from ._sink_listener import ListenerHooks
from .events import Event

if TYPE_CHECKING:
    from ._downstream import Downstream

__all__ = ("DEFAULT_TIMEOUT", "EXPORTED", "EXPORT_FAILED", "BatchWorker", "Export")

logger = logging.getLogger("stageflow_otel.events.backpressure")

EXPORTED = "exported"
EXPORT_FAILED = "export_failed"
DEFAULT_TIMEOUT = 30.0
_MAX_BACKOFF = 5.0
_JITTER = 0.2


class Export:
    """The batch being exported; the watchdog or a timed-out shutdown may abandon it."""

    __slots__ = ("abandoned", "batch", "count", "deadline", "first", "settled", "started")

    def __init__(self, batch: tuple[Event, ...], first: int, started: float) -> None:
        self.batch = batch
        self.first = first  # the sequence number of its first event
        self.count = len(batch)
        self.started = started
        self.deadline = math.inf  # of the running attempt, for the watchdog
        self.abandoned = False
        # Whoever settles the export (the worker when it ends, or whoever abandons it)
        # counts its events; the other one then leaves them alone.
        self.settled = False


class BatchWorker:
    """Exports the events of ``queue`` through ``downstream`` on a worker thread.

    The sink's settings are checked by the sink; see
    :class:`~stageflow_otel.core.backpressure.BackpressureAwareEventSink`.
    """

    def __init__(
        self,
        queue: EventQueue,
        downstream: Downstream,
        *,
        flush_interval: float,
        export_timeout: float,
        max_retries: int,
        retry_base_delay: float,
        warn_interval: float,
        clock: Callable[[], float],
        exit_timeout: float | None,
        hooks: ListenerHooks,
    ) -> None:
        self.name = queue.name
        self.export_timeout = export_timeout
        self.max_retries = max_retries
        self._queue = queue
        self._downstream = downstream
        self._flush_interval = flush_interval
        self._retry_base_delay = retry_base_delay
        self._warn_interval = warn_interval
        self._clock = clock
        self._exit_timeout = exit_timeout
        self._hooks = hooks
        self._exit_handler: Callable[[], None] | None = None
        self._init_state()
        _register_fork_handler(self)

    def _init_state(self) -> None:
        queue = self._queue
        queue.on_first_event = None if queue.closed else self.start
        self._lock = queue.lock
        self._done_cond = threading.Condition(self._lock)  # flushes wait for exports
        self._watch_cond = threading.Condition(self._lock)  # the watchdog waits for a deadline
        self._aborted = threading.Event()
        self._thread: threading.Thread | None = None
        self._thread_done = False
        self._watchdog: threading.Thread | None = None
        self._watchdog_idle = False
        self.current: Export | None = None
        self._flush_pending = False
        self._drain_all = False
        self._next_flush = 0.0
        self._shutdown_result: bool | None = None
        self.exported = 0
        self.export_failed = 0
        self.export_batches = 0
        self.export_retries = 0
        self.last_export_time: float | None = None
        self._last_failure_warning = -math.inf

    @property
    def running(self) -> bool:
        """Whether the worker thread is alive."""
        thread = self._thread
        return thread is not None and thread.is_alive()

    # -- lifecycle -------------------------------------------------------------------------

    def start(self) -> None:
        """Start the worker thread; idempotent, and a no-op after shutdown."""
        with self._lock:
            if self._thread is None and not self._queue.closed:
                self._start_locked()

    def _start_locked(self) -> None:
        self._queue.on_first_event = None
        self._downstream.prepare()
        self._next_flush = time.monotonic() + self._flush_interval
        self._thread = self._spawn(self._work, "")
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

    def force_flush(self, timeout: float) -> bool:
        """Wait until every event queued before the call is done with; see the sink."""
        deadline = time.monotonic() + max(timeout, 0.0)
        queue = self._queue
        with self._lock:
            if queue.closed:
                return bool(self._shutdown_result)
            target = queue.accepted
            if self._done_upto(target):
                return True
            if self._thread is None:
                self._start_locked()
            self._flush_pending = True
            done, ok = self._flush_locked(target, deadline, wait=True)
            return done and ok

    def shutdown(self, timeout: float) -> bool:
        """Close the queue, export what it holds, stop the threads; see the sink."""
        deadline = time.monotonic() + max(timeout, 0.0)
        cleared: list[Event] = []
        abandoned: Export | None = None
        handler, self._exit_handler = self._exit_handler, None
        if handler is not None:
            atexit.unregister(handler)
        queue = self._queue
        with self._lock:
            if queue.closed:
                return bool(self._shutdown_result)
            queue.close_locked()
            thread = self._thread
            alive = thread is not None and thread.is_alive()
            done, ok = self._flush_locked(queue.accepted, deadline, wait=alive)
            if not done:
                cleared = queue.clear_locked()
                abandoned = self._abandon_locked()
                self._aborted.set()
                queue.batch_ready.notify_all()
                self._watch_cond.notify_all()
            result = self._shutdown_result = done and ok
        if cleared:
            logger.warning(
                "event sink %r did not export its queue within %.3g s of shutdown; %d queued "
                "events are dropped",
                self.name,
                timeout,
                len(cleared),
            )
            self._hooks.result(DROPPED_SHUTDOWN, len(cleared))
            self._hooks.drop(cleared)
        if abandoned is not None:
            self._finish(abandoned, 0, f"abandoned by shutdown after {timeout:.3g} s")
        if thread is not None and thread.is_alive() and thread is not threading.current_thread():
            thread.join(max(0.0, deadline - time.monotonic()))
        return result

    def _flush_locked(self, target: int, deadline: float, *, wait: bool) -> tuple[bool, bool]:
        """Wake the worker for the events numbered below ``target``: (all done, none lost)."""
        queue = self._queue
        request = FlushRequest(target)
        queue.flushes.append(request)
        queue.batch_ready.notify()
        try:
            done = self._wait_done(target, deadline) if wait else self._done_upto(target)
        finally:
            queue.flushes.remove(request)
        return done, request.ok

    def _done_upto(self, target: int) -> bool:
        """Whether every event numbered below ``target`` is done with."""
        current = self.current
        return self._queue.removed >= target and (current is None or current.first >= target)

    def _wait_done(self, target: int, deadline: float) -> bool:
        while not self._done_upto(target):
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return False
            self._done_cond.wait(remaining)
        return True

    # -- the worker thread -----------------------------------------------------------------

    def _work(self) -> None:
        try:
            self._downstream.run(self)
            if not self._aborted.is_set():
                self._downstream.close()
        except BaseException:  # the thread's last resort: log, never die loudly
            logger.exception("worker of event sink %r failed; queued events stay queued", self.name)
        finally:
            with self._lock:
                self._thread_done = True
                self._watch_cond.notify_all()

    def next_export(self, wait: bool) -> Export | Literal[False] | None:
        """The next batch to export; ``None`` to stop; ``False`` if none yet and not ``wait``."""
        interval = self._flush_interval
        queue = self._queue
        with self._lock:
            events = queue.events
            while True:
                if self._aborted.is_set():
                    return None
                size = len(events)
                if self._drain_all:
                    if size:
                        return self._take_locked(size)
                    self._drain_all = False
                    self._next_flush = time.monotonic() + interval
                elif size >= queue.batch_size:
                    return self._take_locked(size)
                if self._flush_pending or queue.closed:
                    if queue.closed and not events:
                        return None
                    self._flush_pending = False
                    self._drain_all = True
                    continue
                now = time.monotonic()
                if now >= self._next_flush:
                    self._next_flush = now + interval
                    if events:
                        self._drain_all = True
                        continue
                if not wait:
                    return False
                queue.consumer_idle = True
                queue.batch_ready.wait(max(self._next_flush - now, 0.0))
                queue.consumer_idle = False

    def _take_locked(self, size: int) -> Export:
        queue = self._queue
        take = min(size, queue.batch_size)
        # popleft ``take`` times, in C: no Python step per event, nothing else copied.
        batch = tuple(starmap(queue.events.popleft, repeat((), take)))
        job = self.current = Export(batch, queue.removed, self._clock())
        queue.removed += take
        return job

    def arm(self, job: Export, timeout: float) -> bool:
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

    def backoff(self, attempt: int) -> float:
        """Seconds before retry ``attempt`` (1, 2, ...): doubling, capped, ±20 % jitter."""
        base = min(self._retry_base_delay * 2.0 ** (attempt - 1), _MAX_BACKOFF)
        return base * random.uniform(1 - _JITTER, 1 + _JITTER)

    def count_retry(self) -> None:
        """Count one export attempt that is a retry."""
        with self._lock:
            self.export_retries += 1

    def pause_before_retry(self, attempt: int) -> bool:
        """Wait the backoff of retry ``attempt`` and count it; False if stopped meanwhile."""
        if self._aborted.wait(self.backoff(attempt)):
            return False
        self.count_retry()
        return True

    def disarm(self, job: Export) -> bool:
        """End the running attempt's deadline; False if the export was abandoned meanwhile."""
        with self._lock:
            job.deadline = math.inf
            return not job.abandoned

    def complete(self, job: Export, exported: int) -> None:
        """Count an export that delivered ``exported`` events, unless it was abandoned."""
        with self._lock:
            if job.settled:
                return
            job.settled = True
            job.deadline = math.inf
        self._finish(job, exported)

    def _finish(self, job: Export, exported: int, why: str = "") -> None:
        """Count a settled export; the listener first, so a flush that returns saw it.

        ``why`` explains an abandoned export in the warning.
        """
        ended = self._clock()
        failed = job.count - exported
        hooks = self._hooks
        if exported:
            hooks.result(EXPORTED, exported)
        if failed:
            hooks.result(EXPORT_FAILED, failed)
        hooks.export(max(0.0, ended - job.started), job.count, not failed)
        warn = False
        with self._lock:
            self.exported += exported
            self.export_failed += failed
            self.export_batches += 1
            self.last_export_time = ended
            total_failed = self.export_failed
            if failed:
                self._queue.lost_locked(job.first)
                if ended - self._last_failure_warning >= self._warn_interval:
                    warn = True
                    self._last_failure_warning = ended
            if self.current is job:
                self.current = None
            self._done_cond.notify_all()
        if warn:
            logger.warning(
                "event sink %r could not export %d of %d events (%s); %d events failed so far",
                self.name,
                failed,
                job.count,
                why or f"{self.max_retries} retries",
                total_failed,
            )

    def _abandon_locked(self) -> Export | None:
        """Give up on the running export (its late result is ignored); count it with _finish."""
        job = self.current
        if job is None or job.settled:
            return None
        job.abandoned = job.settled = True
        return job

    def _watch(self) -> None:
        """The watchdog: abandons an export that outlives its deadline."""
        while True:
            with self._lock:
                job = self.current
                if self._aborted.is_set() or self._thread_done:
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
                why = f"did not return within {self.export_timeout:.3g} s"
                self._finish(abandoned, 0, why)

    # -- fork ------------------------------------------------------------------------------

    def _reinit_after_fork(self) -> None:
        """In a forked child: fresh lock, empty queue, zero counters, no threads."""
        self._queue.reset(closed=self._queue.closed)
        self._init_state()


def _register_fork_handler(worker: BatchWorker) -> None:
    if not hasattr(os, "register_at_fork"):  # pragma: no cover - Windows
        return
    ref = weakref.WeakMethod(worker._reinit_after_fork)

    def reinit() -> None:
        method = ref()
        if method is not None:
            method()

    os.register_at_fork(after_in_child=reinit)


def _drain_at_exit(ref: weakref.ReferenceType[BatchWorker]) -> None:
    """The ``atexit`` handler of a started worker: export what is queued, within its timeout."""
    worker = ref()
    if worker is None or worker._exit_timeout is None:
        return
    try:
        worker.shutdown(worker._exit_timeout)
    except Exception:  # exit goes on whatever the downstream does
        logger.exception("event sink %r failed to drain at exit", worker.name)
