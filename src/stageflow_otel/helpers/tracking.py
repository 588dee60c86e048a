"""Opt-in memory measurement of stages, with :mod:`tracemalloc`.

Put a :class:`MemoryTrackingInterceptor` on the stages to measure (``interceptors=[...]`` of a
stage, or of the whole pipeline). Around each stage it reads Python's traced memory and sends
a ``stage.memory`` event with the peak the stage reached above where it started and what it
left allocated; ``HelperTelemetry`` puts both on the stage span and observes the peak in a
histogram.

tracemalloc traces the whole process and slows Python down noticeably, so this is for
finding where memory goes, not for every production run. Stages that run at the same time
share the process's allocations: the peak of a measured stage is then an upper bound (it may
include a sibling's); measure one stage alone for exact numbers.
"""

from __future__ import annotations

import threading
import tracemalloc

from stageflow_otel.core.model import StageOutput
from stageflow_otel.core.seams import CallNext, StageCall

__all__ = ("MemoryTrackingInterceptor",)

MEMORY_EVENT = "stage.memory"


class MemoryTrackingInterceptor:
    """Measures the Python memory a stage allocates (peak and left over), with tracemalloc.

    Args:
        start_tracing: Start tracemalloc on the first stage if it is not running (and stop it
            on :meth:`close`); with ``False``, stages are measured only while something else
            has it running.
    """

    name = "memory_tracking"

    def __init__(self, *, start_tracing: bool = True) -> None:
        self.start_tracing = start_tracing
        self._started = False
        self._lock = threading.Lock()
        self._measuring = 0

    def _begin(self) -> int | None:
        with self._lock:
            if not tracemalloc.is_tracing():
                if not self.start_tracing:
                    return None
                tracemalloc.start()
                self._started = True
            if self._measuring == 0:
                # Only with no other stage measured: resetting would cut a sibling's peak.
                tracemalloc.reset_peak()
            self._measuring += 1
            return tracemalloc.get_traced_memory()[0]

    async def intercept(self, call: StageCall, call_next: CallNext) -> StageOutput:
        """Run the stage between two readings of the traced memory; report them."""
        before = self._begin()
        if before is None:
            return await call_next(call)
        try:
            return await call_next(call)
        finally:
            with self._lock:
                self._measuring -= 1
                tracing = tracemalloc.is_tracing()
                current, peak = tracemalloc.get_traced_memory() if tracing else (before, before)
            if tracing:
                call.emit(
                    MEMORY_EVENT,
                    {
                        "peak_bytes": max(0, peak - before),
                        "allocated_bytes": current - before,
                    },
                )

    def close(self) -> None:
        """Stop tracemalloc if this interceptor started it."""
        with self._lock:
            if self._started and self._measuring == 0:
                tracemalloc.stop()
                self._started = False

    def __repr__(self) -> str:
        return f"MemoryTrackingInterceptor(start_tracing={self.start_tracing})"
