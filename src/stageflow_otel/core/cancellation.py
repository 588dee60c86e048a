"""Cancellation: tokens, cleanup callbacks, and a task group that always cleans up."""

from __future__ import annotations

import logging
import math
import threading
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Self

import anyio
import anyio.abc

from ._checks import check_callable, check_seconds, describe

__all__ = (
    "CancellationToken",
    "CleanupRegistry",
    "CleanupReport",
    "StructuredTaskGroup",
)

logger = logging.getLogger("stageflow_otel.cancellation")

CancelCallback = Callable[[str], object]
Cleanup = Callable[[], Awaitable[object]] | Callable[[], object]


class CancellationToken:
    """Asks a run (or anything else) to stop.

    ``cancel(reason)`` is idempotent: only the first reason counts and callbacks run once.
    A callback registered after cancellation runs at once. Call ``cancel`` from the thread of
    the event loop that runs the pipeline.
    """

    __slots__ = ("_callbacks", "_lock", "_reason")

    def __init__(self) -> None:
        self._reason: str | None = None
        self._callbacks: list[CancelCallback] = []
        self._lock = threading.Lock()

    @property
    def is_cancelled(self) -> bool:
        """Whether :meth:`cancel` was called."""
        return self._reason is not None

    @property
    def reason(self) -> str | None:
        """The reason given to the first :meth:`cancel`."""
        return self._reason

    def cancel(self, reason: str = "cancelled") -> bool:
        """Cancel; returns False if already cancelled. Callback errors are logged, not raised.

        Raises:
            TypeError: ``reason`` is not a string.
        """
        if not isinstance(reason, str):
            raise TypeError(
                f"CancellationToken.cancel: reason must be a string, got {describe(reason)}"
            )
        with self._lock:
            if self._reason is not None:
                return False
            self._reason = reason
            callbacks, self._callbacks = self._callbacks, []
        for callback in callbacks:
            _call_logged(callback, reason)
        return True

    def on_cancel(self, callback: CancelCallback) -> Callable[[], None]:
        """Call ``callback(reason)`` on cancellation; returns a function that unregisters it.

        Raises:
            TypeError: ``callback`` is not callable.
        """
        check_callable(
            "CancellationToken.on_cancel: callback",
            callback,
            accepted="a callable taking the reason (a string)",
        )
        with self._lock:
            reason = self._reason
            if reason is None:
                self._callbacks.append(callback)
        if reason is not None:
            _call_logged(callback, reason)

        def remove() -> None:
            with self._lock, _suppress_value_error():
                self._callbacks.remove(callback)

        return remove


class _suppress_value_error:
    def __enter__(self) -> None:
        return None

    def __exit__(self, exc_type: type[BaseException] | None, *_: object) -> bool:
        return exc_type is ValueError


def _call_logged(callback: CancelCallback, reason: str) -> None:
    try:
        callback(reason)
    except Exception:
        logger.exception("cancellation callback %r failed", callback)


@dataclass(frozen=True, slots=True)
class CleanupReport:
    """What :meth:`CleanupRegistry.run_all` did.

    Attributes:
        completed: Names of callbacks that finished, in the order they ran.
        failed: ``(name, error)`` for each callback that raised or timed out.
    """

    completed: tuple[str, ...]
    failed: tuple[tuple[str, BaseException], ...]

    @property
    def ok(self) -> bool:
        """True when every callback finished."""
        return not self.failed


class CleanupRegistry:
    """Cleanup callbacks run last-in first-out, each under its own timeout.

    A failing or hanging callback is reported and the rest still run. ``run_all`` runs
    shielded from cancellation, so cleanup happens even when the run is being cancelled.
    """

    __slots__ = ("_callbacks",)

    def __init__(self) -> None:
        self._callbacks: list[tuple[str, Cleanup]] = []

    def register(self, callback: Cleanup, *, name: str | None = None) -> None:
        """Add a sync or async callback.

        Raises:
            TypeError: ``callback`` is not callable, or ``name`` is not a string.
        """
        check_callable(
            "CleanupRegistry.register: callback",
            callback,
            accepted="a callable taking no arguments (sync or async)",
        )
        if name is not None and not isinstance(name, str):
            raise TypeError(
                f"CleanupRegistry.register: name must be a string or None, got {describe(name)}"
            )
        label = name or str(getattr(callback, "__qualname__", None) or repr(callback))
        self._callbacks.append((label, callback))

    def __len__(self) -> int:
        return len(self._callbacks)

    async def run_all(self, *, timeout: float = 10.0) -> CleanupReport:
        """Run every callback once, newest first, and forget them.

        Args:
            timeout: Seconds for all callbacks together, shared equally
                (each gets at least 10 ms); positive, ``math.inf`` for no limit.

        Raises:
            TypeError: ``timeout`` is not a number.
            ValueError: ``timeout`` is zero, negative or NaN.
        """
        check_seconds("CleanupRegistry.run_all: timeout", timeout, allow_inf=True)
        callbacks, self._callbacks = self._callbacks, []
        if not callbacks:
            return CleanupReport((), ())
        per_callback = max(timeout / len(callbacks), 0.01) if math.isfinite(timeout) else math.inf
        completed: list[str] = []
        failed: list[tuple[str, BaseException]] = []
        with anyio.CancelScope(shield=True):
            for name, callback in reversed(callbacks):
                try:
                    with anyio.fail_after(per_callback):
                        result = callback()
                        if isinstance(result, Awaitable):
                            await result
                except TimeoutError as exc:
                    failed.append((name, exc))
                    logger.warning("cleanup %s timed out after %.3gs", name, per_callback)
                except Exception as exc:
                    failed.append((name, exc))
                    logger.warning("cleanup %s failed: %r", name, exc)
                else:
                    completed.append(name)
        return CleanupReport(tuple(completed), tuple(failed))


class StructuredTaskGroup:
    """An anyio task group that cancels siblings when one task fails and always runs cleanup.

    Example::

        async with StructuredTaskGroup(cleanup_timeout=5) as group:
            group.start_soon(worker)
            group.register_cleanup(close_connection)
    """

    def __init__(self, *, cleanup_timeout: float = 10.0) -> None:
        self.cleanup_timeout = check_seconds(
            "StructuredTaskGroup: cleanup_timeout", cleanup_timeout, allow_inf=True
        )
        self.cleanup = CleanupRegistry()
        self._group: anyio.abc.TaskGroup | None = None
        self.cleanup_report: CleanupReport | None = None

    def start_soon(
        self, func: Callable[..., Coroutine[Any, Any, Any]], *args: Any, name: object = None
    ) -> None:
        """Start a task in the group."""
        if self._group is None:
            raise RuntimeError("StructuredTaskGroup is not entered; use `async with`")
        self._group.start_soon(func, *args, name=name)

    def register_cleanup(self, callback: Cleanup, *, name: str | None = None) -> None:
        """Run ``callback`` when the group exits, however it exits."""
        self.cleanup.register(callback, name=name)

    def cancel(self) -> None:
        """Cancel every task of the group."""
        if self._group is not None:
            self._group.cancel_scope.cancel()

    async def __aenter__(self) -> Self:
        self._group = anyio.create_task_group()
        await self._group.__aenter__()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool | None:
        assert self._group is not None
        try:
            return await self._group.__aexit__(exc_type, exc, tb)
        finally:
            self.cleanup_report = await self.cleanup.run_all(timeout=self.cleanup_timeout)
            self._group = None
