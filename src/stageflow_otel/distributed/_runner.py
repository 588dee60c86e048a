"""``remote_stage``: a stage runner that runs a function on a distributed engine's workers."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import anyio
import anyio.to_thread
from anyio.lowlevel import RunVar

from stageflow_otel.core.context import StageContext

from ._protocol import RemoteExecutor, RemoteProgress
from ._task import snapshot

__all__ = ("TraceContextGetter", "remote_stage", "w3c_trace_context")

TraceContextGetter = Callable[[], Mapping[str, str]]
"""Returns the trace context to ship with a task (``{"traceparent": ..., "tracestate": ...}``)."""

MAX_CONCURRENT_WAITS = 1000
"""Remote stages waiting at once, per event loop (each waits in a worker thread)."""

CANCEL_TIMEOUT_S = 5.0

_waits: RunVar[anyio.CapacityLimiter] = RunVar("stageflow_otel_remote_waits")


def w3c_trace_context() -> dict[str, str]:
    """The W3C trace context of the current span, through OpenTelemetry's global propagator.

    Imports OpenTelemetry on first use only, so the engine-neutral part of
    ``stageflow_otel.distributed`` loads no telemetry library.
    """
    from opentelemetry import propagate

    carrier: dict[str, str] = {}
    propagate.inject(carrier)
    return carrier


def _limiter() -> anyio.CapacityLimiter:
    try:
        return _waits.get()
    except LookupError:
        limiter = anyio.CapacityLimiter(MAX_CONCURRENT_WAITS)
        _waits.set(limiter)
        return limiter


def remote_stage(
    fn: Callable[..., Any],
    executor: RemoteExecutor[Any],
    *,
    trace_context: TraceContextGetter | None = w3c_trace_context,
    poll_interval: float = 0.5,
) -> Callable[[StageContext], Awaitable[Any]]:
    """A stage runner that runs ``fn`` on ``executor``'s workers and awaits its result.

    At each execution it takes a picklable snapshot of what the stage needs (stage name, run
    and pipeline names and ids, attempt, input data, the declared dependencies' outputs,
    identity) and the trace context of the current span, submits it, emits
    ``stage.remote.submitted``, and waits in a worker thread, so the event loop stays free on
    asyncio and trio. What the engine reports (``stage.remote.started``,
    ``stage.remote.worker_lost``, ``stage.remote.resubmitted``) becomes events of the stage.

    ``fn(ctx)`` (``def`` or ``async def``) receives a
    :class:`~stageflow_otel.distributed.RemoteContext` and returns what a stage returns (a
    ``dict``, ``None`` or a ``StageOutput``); what it raises fails the stage. A task whose
    worker dies runs again (at-least-once): side effects must be idempotent. A timeout or a
    cancelled run cancels the task on the engine.

    Args:
        fn: The function to run remotely; it must be serializable by the executor (a
            module-level function of a module the workers can import).
        executor: The engine, e.g. ``DaskExecutor(client)`` or ``LocalExecutor()``.
        trace_context: Returns the trace context to ship (W3C ``traceparent`` through
            OpenTelemetry's global propagator by default); ``None`` ships none.
        poll_interval: Longest time, in seconds, a waiting thread blocks before checking
            again; bounds how long a cancelled wait's thread lingers.

    Returns:
        An ``async def runner(ctx)`` to pass to ``Pipeline.with_stage``.

    Raises:
        TypeError: ``fn`` is not callable, ``executor`` lacks ``submit``, ``wait`` or
            ``cancel``, or ``poll_interval`` is not a number.
        ValueError: ``poll_interval`` is not positive.
    """
    if not callable(fn):
        raise TypeError(f"remote_stage: fn must be a callable fn(ctx), got {fn!r}")
    missing = [m for m in ("submit", "wait", "cancel") if not callable(getattr(executor, m, None))]
    if missing:
        raise TypeError(
            f"remote_stage: executor must implement submit, wait and cancel (RemoteExecutor); "
            f"{type(executor).__qualname__} lacks {', '.join(missing)}"
        )
    if isinstance(poll_interval, bool) or not isinstance(poll_interval, int | float):
        raise TypeError(f"remote_stage: poll_interval must be a number, got {poll_interval!r}")
    if not poll_interval > 0:
        raise ValueError(f"remote_stage: poll_interval must be > 0, got {poll_interval!r}")
    interval = float(poll_interval)

    async def run_remotely(ctx: StageContext) -> Any:
        carrier = trace_context() if trace_context is not None else {}
        task = snapshot(ctx, fn, carrier)
        handle = executor.submit(task)
        ctx.try_emit_event(
            "stage.remote.submitted",
            {"attempt": task.attempt, "executor": type(executor).__name__},
        )
        progress: RemoteProgress
        try:
            while True:
                progress = await anyio.to_thread.run_sync(
                    executor.wait, handle, interval, limiter=_limiter(), abandon_on_cancel=True
                )
                for note in progress.notes:
                    ctx.try_emit_event(f"stage.remote.{note.type}", dict(note.data))
                if progress.done:
                    break
        except BaseException:
            # A timeout or a cancelled run: the engine must not keep running it for nothing.
            with anyio.move_on_after(CANCEL_TIMEOUT_S, shield=True):
                await anyio.to_thread.run_sync(executor.cancel, handle)
            raise
        if progress.error is not None:
            raise progress.error
        return progress.value

    run_remotely.__module__ = getattr(fn, "__module__", None) or run_remotely.__module__
    run_remotely.__qualname__ = getattr(fn, "__qualname__", None) or run_remotely.__qualname__
    run_remotely.__name__ = getattr(fn, "__name__", None) or run_remotely.__name__
    return run_remotely
