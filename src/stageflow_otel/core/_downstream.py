"""How a sink's worker reaches its downstream: a batch exporter, or an async event sink.

The sink chooses one adapter when it is made; the worker then only calls ``run`` on its thread.
Each adapter delivers a batch its own way, with the worker's backoff (retries), deadlines (the
watchdog) and accounting (``complete``).

* :class:`ExporterDownstream`: a synchronous ``export(batch) -> bool | None``, called once per
  batch (``False`` or an exception means the export failed); a failed batch is retried.
* :class:`EventSinkDownstream`: an async ``emit(type=, data=)``, awaited once per event on an
  event loop the worker thread runs itself, so nothing the downstream does blocks the loop
  that runs the pipeline. The loop waits for work through ``anyio.to_thread`` only when the
  queue has nothing to export, so it never blocks either. The worker calls the downstream
  directly, not through another thread: each hand-off costs a GIL switch (up to
  ``sys.getswitchinterval()``, 5 ms) while the pipeline keeps the GIL busy, which would
  throttle export and make a healthy downstream drop events.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, Protocol

import anyio
import anyio.to_thread
import sniffio

from .events import Event

if TYPE_CHECKING:  # the worker calls the adapters, which call back into it
    from ._batch_worker import BatchWorker, Export

__all__ = ("Downstream", "EventSinkDownstream", "ExporterDownstream", "downstream_for")

logger = logging.getLogger("stageflow_otel.events.backpressure")

# An async batch ends itself at ``export_timeout``; the watchdog steps in this much later,
# which only a downstream that blocks the worker's event loop ever needs.
_ASYNC_GRACE = 1.0


class Downstream(Protocol):
    """**Protocol:** how the worker reaches the downstream."""

    def prepare(self) -> None:
        """Called where the worker starts, with the queue's lock held."""
        ...

    def run(self, worker: BatchWorker) -> None:
        """Export batches until the worker has none left; runs on the worker thread."""
        ...

    def close(self) -> None:
        """After the last export of a shutdown that did not time out; on the worker thread."""
        ...


def downstream_for(
    downstream: object, *, name: str, emit_timeout: float, backend: str | None
) -> Downstream:
    """The adapter for ``downstream``: an object with ``export`` is a batch exporter.

    Raises:
        TypeError: ``downstream`` has neither ``export`` nor ``emit``.
    """
    if callable(getattr(downstream, "export", None)):
        return ExporterDownstream(downstream, name=name)
    emit = getattr(downstream, "emit", None)
    if callable(emit):
        return EventSinkDownstream(emit, emit_timeout=emit_timeout, backend=backend)
    raise TypeError(
        f"downstream must be an EventSink (async emit) or a batch exporter "
        f"(export(batch)), got {type(downstream).__qualname__}"
    )


class ExporterDownstream:
    """A batch exporter: ``export(batch)`` once per batch, on the worker thread."""

    def __init__(self, exporter: Any, *, name: str) -> None:
        self._exporter = exporter
        self._export: Callable[[tuple[Event, ...]], bool | None] = exporter.export
        self._name = name

    def prepare(self) -> None:
        """Nothing to prepare: the exporter is called on the worker thread as it is."""

    def run(self, worker: BatchWorker) -> None:
        """Export every batch, blocking the worker thread in ``export``."""
        while job := worker.next_export(wait=True):
            self._deliver(worker, job)

    def _deliver(self, worker: BatchWorker, job: Export) -> None:
        """Export the batch; retry a failure (``False`` or an exception) with backoff.

        Each attempt is bounded by the watchdog; an abandoned export is counted already.
        """
        export, batch = self._export, job.batch
        for attempt in range(worker.max_retries + 1):
            if attempt and not worker.pause_before_retry(attempt):
                return
            if not worker.arm(job, worker.export_timeout):
                return
            error: Exception | None = None
            try:
                ok = export(batch) is not False
            except Exception as exc:
                ok, error = False, exc
            if not worker.disarm(job):
                return
            if ok:
                worker.complete(job, len(batch))
                return
            logger.debug(
                "event sink %r: export of %d failed", self._name, len(batch), exc_info=error
            )
        worker.complete(job, 0)

    def close(self) -> None:
        """Call the exporter's ``shutdown()``, if it has one."""
        shutdown = getattr(self._exporter, "shutdown", None)
        if not callable(shutdown):
            return
        try:
            shutdown()
        except Exception:
            logger.warning(
                "exporter of event sink %r failed to shut down", self._name, exc_info=True
            )


class EventSinkDownstream:
    """An async event sink: ``await emit(type=, data=)`` per event, on the worker's own loop.

    The loop uses the backend of the code that starts the sink (asyncio unless started from
    trio), or ``backend``. The downstream must not use objects bound to the caller's loop (an
    ``asyncio.Queue`` created there, for example).
    """

    def __init__(
        self,
        emit: Callable[..., Awaitable[None]],
        *,
        emit_timeout: float,
        backend: str | None,
    ) -> None:
        self._emit = emit
        self._emit_timeout = emit_timeout
        self.backend = backend

    def prepare(self) -> None:
        """Take the backend of the code that starts the worker, unless one was given."""
        if self.backend is None:
            try:
                self.backend = sniffio.current_async_library()
            except sniffio.AsyncLibraryNotFoundError:
                self.backend = "asyncio"

    def run(self, worker: BatchWorker) -> None:
        """Run an event loop on the worker thread and deliver every batch on it."""
        anyio.run(self._deliver_all, worker, backend=self.backend or "asyncio")

    def close(self) -> None:
        """Nothing to close: the sink is the caller's."""

    async def _deliver_all(self, worker: BatchWorker) -> None:
        while True:
            job = worker.next_export(wait=False)
            if job is False:
                # Nothing to export: wait on a helper thread so this loop stays responsive.
                job = await anyio.to_thread.run_sync(worker.next_export, True)
            if not job:  # None: stop
                return
            if not worker.arm(job, worker.export_timeout + _ASYNC_GRACE):
                continue
            worker.complete(job, await self._deliver(worker, job))

    async def _deliver(self, worker: BatchWorker, job: Export) -> int:
        """Await ``emit`` for each event in order; returns how many were delivered.

        Each event may take between 0.9 and 1 times ``emit_timeout``: one cancel scope covers
        a run of events and its deadline moves forward only every tenth of the timeout (a
        scope per event would cost more than most emits). A failed event is retried up to
        ``max_retries`` times with the worker's backoff, then skipped; the whole batch is
        bounded by ``export_timeout``.
        """
        emit = self._emit
        batch = job.batch
        now = anyio.current_time
        timeout = self._emit_timeout
        refresh = 0.9 * timeout
        batch_deadline = now() + worker.export_timeout
        delivered = index = failures = 0
        while index < len(batch) and not job.abandoned:
            if failures:
                worker.count_retry()
                pause = min(worker.backoff(failures), batch_deadline - now())
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
                        worker.name,
                        batch[index].type,
                        exc_info=True,
                    )
            if index < len(batch):  # batch[index] raised or timed out
                failures += 1
                if failures > worker.max_retries:
                    index += 1
                    failures = 0
        return delivered
