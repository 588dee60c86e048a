"""What a queued event sink tells its listener, and a listener that cannot break the sink.

A :class:`SinkListener` observes a :class:`~stageflow_otel.core.backpressure.BackpressureAwareEventSink`:
the outcome of every event (exported, dropped, failed), each export's duration, each event
dropped before export. :class:`ListenerHooks` calls it the way trio calls an ``Instrument``:
only the hooks the listener overrides, and a listener that raises is logged once and removed,
so neither a producer nor the worker thread ever sees its error.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Any

from ._checks import describe
from .events import Event

__all__ = ("ListenerHooks", "SinkListener")

logger = logging.getLogger("stageflow_otel.events.backpressure")

_HOOKS = ("on_result", "on_export", "on_drop")


class SinkListener:
    """**Base class:** observes a sink's queue; override the hooks you need.

    The sink calls only the hooks a listener overrides (or, for an object that does not
    subclass this class, has). Hooks run on the thread where the outcome happens (the
    producer's for drops, the worker or watchdog thread's for exports), so they must be cheap
    and thread-safe: a counter increment, a histogram observation. A hook that raises is
    logged once and the whole listener is removed; the sink goes on without it.

    The counts a listener receives add up to the sink's ``statistics()``: the ``count`` of
    every ``on_result("exported", count)`` to ``exported``, and so on.
    """

    def on_result(self, result: str, count: int) -> None:
        """``count`` events reached an outcome.

        Args:
            result: ``exported``, ``export_failed``, ``dropped_shutdown``, or the overflow
                policy's :attr:`~stageflow_otel.core.OverflowPolicy.result` for events it
                dropped (``dropped_queue_full`` for the built-in policies). A sink's
                ``results`` lists every result it can report.
            count: How many events.
        """

    def on_export(self, duration_s: float, count: int, ok: bool) -> None:
        """An export of ``count`` events ended after ``duration_s`` seconds.

        Args:
            duration_s: From taking the batch off the queue to the end of its last attempt.
            count: Events in the batch.
            ok: Whether every one of them was exported.
        """

    def on_drop(self, event: Event) -> None:
        """``event`` was dropped before export: the queue was full, or the sink shut down."""


def _hook(listener: object, name: str) -> Callable[..., None] | None:
    """The listener's hook ``name``, or ``None`` if it does not override the no-op."""
    method = getattr(listener, name, None)
    if not callable(method):
        return None
    if getattr(type(listener), name, None) is getattr(SinkListener, name):
        return None
    return method  # type: ignore[no-any-return]


def check_listener(value: object, *, where: str) -> SinkListener | None:
    """A listener or ``None``.

    Raises:
        TypeError: ``value`` has none of the hooks.
    """
    if value is None or isinstance(value, SinkListener):
        return value
    if any(callable(getattr(value, name, None)) for name in _HOOKS):
        return value  # type: ignore[return-value]  # duck-typed: called like a subclass
    hint = ""
    if callable(value):
        hint = (
            "; a function is no listener any more: subclass SinkListener and override "
            "on_result(result, count), on_export(duration_s, count, ok) or on_drop(event)"
        )
    raise TypeError(
        f"{where}listener must be a SinkListener (an object with on_result, on_export or "
        f"on_drop methods) or None, got {describe(value)}{hint}"
    )


class ListenerHooks:
    """A sink's listener, as the hooks it overrides; removed for good once one raises.

    Each attribute ``on_result``, ``on_export``, ``on_drop`` is the listener's bound method, or
    ``None``: test for ``None`` before building what a hook would receive. Call through
    :meth:`result`, :meth:`export` and :meth:`drop`, which catch what the listener raises.
    """

    __slots__ = ("_lock", "_name", "listener", "on_drop", "on_export", "on_result")

    def __init__(self, listener: SinkListener | None, name: str) -> None:
        self.listener = listener
        self._name = name
        self._lock = threading.Lock()
        self.on_result = _hook(listener, "on_result")
        self.on_export = _hook(listener, "on_export")
        self.on_drop = _hook(listener, "on_drop")

    def result(self, result: str, count: int) -> None:
        """Tell the listener that ``count`` events reached ``result``."""
        hook = self.on_result
        if hook is not None:
            self._call(hook, result, count)

    def export(self, duration_s: float, count: int, ok: bool) -> None:
        """Tell the listener that an export ended."""
        hook = self.on_export
        if hook is not None:
            self._call(hook, duration_s, count, ok)

    def drop(self, events: tuple[Event, ...] | list[Event]) -> None:
        """Tell the listener about each event dropped before export."""
        hook = self.on_drop
        if hook is not None:
            for event in events:
                if not self._call(hook, event):
                    return

    def _call(self, hook: Callable[..., None], *args: Any) -> bool:
        try:
            hook(*args)
        except Exception as exc:
            self._remove(hook, exc)
            return False
        return True

    def _remove(self, hook: Callable[..., None], error: Exception) -> None:
        with self._lock:  # two threads may see it raise at once; one removes and logs
            if self.listener is None:
                return
            listener, self.listener = self.listener, None
            self.on_result = self.on_export = self.on_drop = None
        logger.error(
            "listener %r of event sink %r raised in %s; it is removed and the sink goes on",
            listener,
            self._name,
            getattr(hook, "__name__", "a hook"),
            exc_info=error,
        )
