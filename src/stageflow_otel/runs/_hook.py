"""The run hook that records runs in a store: what happened goes on the store's queue."""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from stageflow_otel.core import (
    PipelineCancelled,
    RunHook,
    StageExecutionError,
    StageOutput,
    StageStatus,
)
from stageflow_otel.core.wide_events import error_type_of

from ._model import CheckpointRecord, RunEnded, RunStarted, StageEnded, definitions_of

if TYPE_CHECKING:
    from stageflow_otel.core import CallNext, PipelineResults, RunCall, StageCall, StageGraph
    from stageflow_otel.core.events import Event

    from .store import RecordingStore

__all__ = ("RecordingHook",)

_CHECKPOINTED = (StageStatus.OK, StageStatus.SKIP)
_ERROR_LIMIT = 2000
_HOST = socket.gethostname()


class _Run:
    """One run being recorded."""

    __slots__ = ("call", "seq", "started", "started_at")

    def __init__(self, call: RunCall) -> None:
        self.call = call
        self.started_at = round(time.time(), 6)  # what a datetime keeps
        self.started = False
        self.seq = 0


class RecordingHook(RunHook):
    """Records the top-level runs of one graph in a store (innermost of the run's hooks).

    Subpipeline runs are part of the stage that spawns them and are not recorded on their own.
    """

    observed_events: frozenset[str] | None = frozenset({"pipeline.started"})

    def __init__(self, store: RecordingStore, graph: StageGraph) -> None:
        self.store = store
        self.graph = graph
        self._runs: dict[str, _Run] = {}

    async def around_run(
        self, run: RunCall, proceed: Callable[[], Awaitable[PipelineResults]]
    ) -> PipelineResults:
        """Record the run's start (with its trace, once known) and its end."""
        if run.depth:
            return await proceed()
        state = self._runs[run.run_id] = _Run(run)
        started = time.perf_counter()
        ended = RunEnded(run.run_id, "cancel", 0.0, error="the run was cancelled")
        try:
            results = await proceed()
            ended = RunEnded(run.run_id, results.status, results.duration_ms)
            return results
        except StageExecutionError as exc:
            failed = exc.results.get(exc.stage)
            ended = RunEnded(
                run.run_id,
                "fail",
                _duration_of(exc.results),
                exc.stage,
                error_type_of(failed) if failed is not None else None,
                _bounded(exc.message),
            )
            raise
        except PipelineCancelled as exc:
            ended = RunEnded(
                run.run_id, "cancel", _duration_of(exc.results), error=_bounded(exc.reason)
            )
            raise
        finally:
            del self._runs[run.run_id]
            if not state.started:  # it ended before it began (an argument error, say)
                self._start(state, None)
            if not ended.duration_ms:
                ended = RunEnded(
                    ended.run_id,
                    ended.status,
                    (time.perf_counter() - started) * 1000,
                    ended.failed_stage,
                    ended.error_type,
                    ended.error,
                )
            self.store.record(ended)

    def on_event(self, event: Event) -> None:
        """On ``pipeline.started``: record the run's start, with its trace context."""
        if event.type != "pipeline.started":
            return
        state = self._runs.get(event.fields.get("pipeline_run_id", ""))
        if state is not None and not state.started:
            self._start(state, event)

    def _start(self, state: _Run, event: Event | None) -> None:
        state.started = True
        call = state.call
        store = self.store
        identity = {
            key: value
            for key in ("request_id", "session_id", "user_id", "org_id", "interaction_id")
            if (value := getattr(call.identity, key)) is not None
        }
        trace_id = span_id = None
        if event is not None and event.trace_id:
            trace_id = f"{event.trace_id:032x}"
            span_id = f"{event.span_id:016x}"
        resumed = call.resumed_from
        store.record(
            RunStarted(
                call.run_id,
                call.pipeline,
                state.started_at,
                trace_id,
                span_id,
                identity,
                definitions_of(self.graph),
                store.as_json(call.data) if store.checkpoints else None,
                resumed.run_id if resumed is not None else None,
                store.source,
                _HOST,
                os.getpid(),
                store.checkpoints,
            )
        )
        if resumed is not None:
            for name, output in resumed.outputs.items():
                self._ended(state, name, output, 0, None, restored=True)

    async def around_stage(self, call: StageCall, proceed: CallNext) -> StageOutput:
        """Record how the stage ended and, when checkpointing, its output."""
        state = self._runs.get(call.run_id)
        if state is None:
            return await proceed(call)
        output: StageOutput | None = None
        try:
            output = await proceed(call)
            return output
        finally:
            duration = (time.perf_counter() - call.started_at) * 1000
            self._ended(state, call.stage, output, call.attempt, duration)

    def _ended(
        self,
        state: _Run,
        stage: str,
        output: StageOutput | None,
        attempts: int,
        duration_ms: float | None,
        *,
        restored: bool = False,
    ) -> None:
        if output is None:
            self.store.record(StageEnded(state.call.run_id, stage, "cancel", attempts, duration_ms))
            return
        status = output.status
        checkpoint: CheckpointRecord | None = None
        data: Any = None
        if self.store.checkpoints and status in _CHECKPOINTED:
            state.seq += 1
            # The writer thread encodes it; this placeholder carries its place and status.
            checkpoint = CheckpointRecord(
                state.call.run_id, state.seq, stage, status.value, None, "", 0, 0
            )
            data = output.data
        failed = status is StageStatus.FAIL
        self.store.record(
            StageEnded(
                state.call.run_id,
                stage,
                status.value,
                attempts,
                output.duration_ms if output.duration_ms is not None else duration_ms,
                error_type_of(output) if failed else None,
                _bounded(output.error) if failed else None,
                restored,
                checkpoint,
            ),
            data=data,
        )


def _bounded(message: str | None) -> str | None:
    if message is None or len(message) <= _ERROR_LIMIT:
        return message
    return message[: _ERROR_LIMIT - 1] + "…"


def _duration_of(results: object) -> float:
    return float(getattr(results, "duration_ms", 0.0))
