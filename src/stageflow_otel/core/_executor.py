"""The DAG executor: runs each stage as soon as its dependencies are done.

Scheduling is O(1) amortised per stage: adjacency lists and in-degree counters, no scan of the
graph per stage. On asyncio each stage is one native task (the cheapest unit the loop has); on
other backends (trio) each stage is one task of an anyio task group. Either way the run never
returns or raises while one of its stages is still running.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import datetime as _dt
import logging
import os
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

import anyio
import sniffio

from .cancellation import CancellationToken, CleanupRegistry
from .context import ContextBag, RunIdentity, StageContext
from .errors import (
    PipelineCancelled,
    StageCancellationRequested,
    StageExecutionError,
    StageReturnTypeError,
    StageTimeoutError,
)
from .events import Event, EventSink, NoOpEventSink
from .extensions import default_extensions
from .model import StageOutput, StageStatus
from .pipeline import PipelineResults
from .seams import (
    CallNext,
    InterceptorChain,
    ResumedRun,
    RunCall,
    RunHook,
    RunProgress,
    RunRecording,
    StageCall,
    around_each_run,
    compose,
)
from .wide_events import error_type_of

if TYPE_CHECKING:
    from .pipeline import StageGraph, StageSpec

__all__ = ("RunState",)

logger = logging.getLogger("stageflow_otel.executor")

_EMPTY_DATA: Mapping[str, Any] = MappingProxyType({})
_OK_EMPTY = StageOutput(StageStatus.OK, _EMPTY_DATA)
_FAIL = StageStatus.FAIL
_CANCEL = StageStatus.CANCEL
_RETRY = StageStatus.RETRY
_SKIP = StageStatus.SKIP
_perf = time.perf_counter
_time_ns = time.time_ns


def _round_ms(ms: float) -> float:
    """Milliseconds to the microsecond, like ``round(ms, 3)`` in half the time.

    Non-negative floats below 10^12 are rounded by integer arithmetic (an exact binary half
    goes up, where ``round`` goes to even); anything else (an ``int`` a stage set, a
    ``Decimal``, a negative value, NaN) is ``round(ms, 3)``, its type kept.
    """
    if type(ms) is float and 0.0 <= ms < 1e12:
        return int(ms * 1000.0 + 0.5) / 1000.0
    return round(ms, 3)


_COMPLETION_EVENT = {
    StageStatus.OK: "stage.completed",
    StageStatus.FAIL: "stage.failed",
    StageStatus.SKIP: "stage.skipped",
    StageStatus.CANCEL: "stage.cancelled",
}


class RunState:
    """The state of one run: outputs, counters, tasks. Internal to the executor."""

    def __init__(
        self,
        graph: StageGraph,
        data: Mapping[str, Any] | None,
        identity: RunIdentity,
        *,
        event_sink: EventSink | None = None,
        hooks: Sequence[RunHook] | None = None,
        cancel_token: CancellationToken | None = None,
        traceparent: str | None = None,
        entry_point: bool = False,
        depth: int = 0,
        parent_run_id: str | None = None,
        parent_stage: str | None = None,
        correlation_id: str | None = None,
        inherited_sinks: Sequence[EventSink] = (),
        max_depth: int | None = None,
        children_tracker: Any = None,
        store: RunRecording | None = None,
        resumed_from: ResumedRun | None = None,
    ) -> None:
        self.graph = graph
        self.resumed_from = resumed_from
        self.restored: Mapping[str, StageOutput] = (
            resumed_from.outputs if resumed_from is not None else _EMPTY_OUTPUTS
        )
        self.name = graph.name
        self.data: Mapping[str, Any] = MappingProxyType(dict(data)) if data else _EMPTY_DATA
        self.identity = identity
        self.run_id = identity.pipeline_run_id
        self.depth = depth
        self.parent_run_id = parent_run_id
        self.parent_stage = parent_stage
        self.correlation_id = correlation_id
        self.traceparent = traceparent
        self.entry_point = entry_point
        self.cancel_token = cancel_token
        self.max_depth = graph.max_depth if max_depth is None else max_depth
        self.children_tracker = children_tracker
        self.bag = ContextBag()
        self.cleanup = CleanupRegistry()
        self.outputs: dict[str, StageOutput] = {}
        self.attempts: dict[str, int] = {}
        self.stop_reason: str | None = None
        self.stop_kind: str | None = None
        self.stop_stage: str | None = None
        self.failed_stage: str | None = None
        self.blocked_by: dict[str, str] = {}
        self.status = "running"

        if hooks is not None:
            chosen_hooks = tuple(hooks)
            extension_sinks: tuple[EventSink, ...] = ()
        elif graph.hooks is not None:
            chosen_hooks = graph.hooks
            extension_sinks = ()
        else:
            chosen_hooks = default_extensions.hooks
            extension_sinks = default_extensions.event_sinks
        if store is None and depth == 0:
            store = _environment_store()
        if store is not None:
            # Innermost: the tracing hooks have set each event's trace context before it.
            chosen_hooks = (*chosen_hooks, store.run_hook(graph))
        self.hooks: tuple[RunHook, ...] = chosen_hooks
        sinks: list[EventSink] = list(inherited_sinks)
        for sink in (graph.event_sink, event_sink, *extension_sinks):
            # A NoOpEventSink receives nothing, so no event is built for it.
            if sink is not None and type(sink) is not NoOpEventSink and sink not in sinks:
                sinks.append(sink)
        self.sinks: list[EventSink] = sinks
        self._deliveries = _deliveries(sinks)  # what ``emit`` calls; rebuilt when one is dropped
        observing = [h for h in chosen_hooks if type(h).overrides("on_event")]
        self.observers = tuple(h.on_event for h in observing)
        observe_all = any(h.observed_events is None for h in observing)
        self.observed_types: frozenset[str] = frozenset(
            t for h in observing if h.observed_events is not None for t in h.observed_events
        )
        # Lifecycle events are built only when someone receives them.
        self.emitting = bool(sinks) or observe_all
        self._wrappers = tuple(
            h.around_interceptor for h in chosen_hooks if type(h).overrides("around_interceptor")
        )
        self._stage_entry: CallNext = compose(
            [h.around_stage for h in chosen_hooks if type(h).overrides("around_stage")],
            self._run_stage_core,
        )
        self._chains: dict[tuple[int, ...], CallNext] = {}

        specs = graph.specs
        self.specs = specs
        self.children = graph.children
        self.remaining = list(graph.in_degree)
        self.ready: deque[int] = deque(graph.roots)
        self.ready_at: list[float] = [0.0] * len(specs)
        self.active = 0
        self.max_concurrency = graph.max_concurrency
        self.fail_fast = graph.failure_mode == "fail_fast"
        self.wide = graph.wide_events
        self._tasks: dict[int, Any] = {}
        self._idle: asyncio.Future[None] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._task_group: Any = None
        self._run_context: contextvars.Context | None = None
        self._perf_start = 0.0
        self._wall_start = _dt.datetime.now(_dt.UTC)

    # -- events -----------------------------------------------------------------------------

    def emit(self, type: str, data: dict[str, Any], flat: bool = False) -> None:
        """Send one event to the run's observers and sinks; a sink that raises is dropped.

        ``data`` becomes the event's fields (with the run id and pipeline name added);
        ``flat`` says the engine built them all as flat attribute values (:attr:`Event.flat`).
        """
        if not self.emitting and type not in self.observed_types:
            return
        data["pipeline_run_id"] = self.run_id
        data["pipeline"] = self.name
        event = Event(type, data, _time_ns(), flat)
        for observe in self.observers:
            try:
                observe(event)
            except Exception:
                logger.exception("run hook %r failed on event %r", observe, type)
        for sink, deliver in self._deliveries:
            try:
                deliver(event)
            except Exception:
                logger.exception(
                    "event sink %r raised on %r; it receives no more events of run %s",
                    sink,
                    type,
                    self.run_id,
                )
                if sink in self.sinks:
                    self.sinks.remove(sink)
                self._deliveries = _deliveries(self.sinks)

    def _wall(self, perf: float) -> _dt.datetime:
        return self._wall_start + _dt.timedelta(seconds=perf - self._perf_start)

    # -- the run ----------------------------------------------------------------------------

    async def start(self) -> PipelineResults:
        """Run, wrapped by every hook's ``around_run``."""
        hooks = [h for h in self.hooks if type(h).overrides("around_run")]
        if not hooks:
            return await self._execute()
        call = RunCall(
            pipeline=self.name,
            identity=self.identity,
            data=self.data,
            stage_names=tuple(spec.name for spec in self.specs),
            depth=self.depth,
            parent_run_id=self.parent_run_id,
            parent_stage=self.parent_stage,
            correlation_id=self.correlation_id,
            traceparent=self.traceparent,
            entry_point=self.entry_point,
            progress=RunProgress(self),
            source=self.graph.source,
            resumed_from=self.resumed_from,
        )

        async def execute(_: RunCall) -> PipelineResults:
            return await self._execute()

        run = compose([around_each_run(hook) for hook in hooks], execute)
        return await run(call)

    async def _execute(self) -> PipelineResults:
        self._perf_start = start = _perf()
        self._wall_start = _dt.datetime.now(_dt.UTC)
        for root in self.ready:
            self.ready_at[root] = start
        if self.emitting or "pipeline.started" in self.observed_types:
            started: dict[str, Any] = {
                "stage_count": len(self.specs),
                "depth": self.depth,
                **_identity_payload(self.identity),
            }
            if self.parent_run_id is not None:
                started["parent_run_id"] = self.parent_run_id
                started["parent_stage"] = self.parent_stage
                started["correlation_id"] = self.correlation_id
            self.emit("pipeline.started", started)
        remove_callback = (
            self.cancel_token.on_cancel(self._on_token_cancelled) if self.cancel_token else None
        )
        try:
            if sniffio.current_async_library() == "asyncio":
                await self._drive_asyncio()
            else:
                await self._drive_task_group()
        except BaseException:
            # Cancelled from outside: every stage task has already been stopped and awaited.
            self.status = "cancel"
            self.stop_kind = self.stop_kind or "cancel"
            self.stop_reason = self.stop_reason or _CALLER_CANCELLED
            # The caller's cancellation is what propagates, not the run's own outcome.
            with (
                anyio.CancelScope(shield=True),
                contextlib.suppress(PipelineCancelled, StageExecutionError),
            ):
                await self._finish_run()
            raise
        finally:
            if remove_callback is not None:
                remove_callback()
        return await self._finish_run()

    async def _finish_run(self) -> PipelineResults:
        if len(self.cleanup):
            report = await self.cleanup.run_all(timeout=self.graph.cleanup_timeout)
            if report.failed:
                self.emit(
                    "pipeline.cleanup_failed",
                    {
                        "failed": [name for name, _ in report.failed],
                        "completed": list(report.completed),
                    },
                )
        duration_ms = (_perf() - self._perf_start) * 1000
        if self.status == "cancel" or self.stop_kind == "cancel":
            status = "cancel"
        elif self.failed_stage is not None:
            status = "fail"
        else:
            status = "ok"
        self.status = status
        results = PipelineResults(
            self.outputs,
            attempts=self.attempts,
            pipeline=self.name,
            run_id=self.run_id,
            status=status,
            duration_ms=duration_ms,
        )
        failed_output = self.outputs.get(self.failed_stage) if self.failed_stage else None
        if self.emitting:
            counts: dict[str, int] = {}
            for out in self.outputs.values():
                counts[out.status._value_] = counts.get(out.status._value_, 0) + 1
            payload: dict[str, Any] = {
                "status": status,
                "duration_ms": round(duration_ms, 3),
                "stage_count": len(self.specs),
                "stage_counts": counts,
            }
            if status == "fail" and failed_output is not None:
                payload["failed_stage"] = self.failed_stage
                payload["error"] = failed_output.error
                payload["error_type"] = error_type_of(failed_output)
            elif status == "cancel":
                payload["stage"] = self.stop_stage
                payload["reason"] = self.stop_reason
            self.emit(f"pipeline.{_RUN_EVENT[status]}", payload)
            if self.wide is not None and self.graph.emit_pipeline_wide_event:
                self.emit(
                    self.wide.pipeline_event_type,
                    self.wide.pipeline_payload(
                        pipeline=self.name,
                        identity=self.identity,
                        status=status,
                        outputs=self.outputs,
                        stage_count=len(self.specs),
                        started_at=self._wall_start,
                        ended_at=self._wall(_perf()),
                        failed_stage=self.failed_stage,
                        error=failed_output.error if failed_output else None,
                    ),
                )
        if status == "cancel":
            if self.stop_kind == "cancel" and self.stop_reason is not None and self.status_is_own():
                raise PipelineCancelled(
                    stage=self.stop_stage, reason=self.stop_reason, results=results
                )
            return results
        if status == "fail" and failed_output is not None:
            assert self.failed_stage is not None
            original = failed_output.exception
            error = StageExecutionError(
                self.failed_stage,
                error=failed_output.error or "failed",
                results=results,
                original=original,
            )
            raise error from original
        return results

    def status_is_own(self) -> bool:
        """Whether the run stopped itself (a stage or token), rather than its caller."""
        return self.stop_reason != _CALLER_CANCELLED

    # -- drivers ----------------------------------------------------------------------------

    async def _drive_asyncio(self) -> None:
        loop = asyncio.get_running_loop()
        self._loop = loop
        self._run_context = contextvars.copy_context()
        idle = self._idle = loop.create_future()
        self._pump()
        if self.active == 0:
            return
        try:
            # Shielded: the caller's cancellation must not cancel ``idle`` itself, or the
            # wait below would end before the stages have.
            await asyncio.shield(idle)
        except BaseException:
            # Stop started stages; stages not started yet see the stop and return at once.
            self._stop(None, _CALLER_CANCELLED, "cancel", None)
            if not idle.done():
                with anyio.CancelScope(shield=True):
                    await idle
            raise

    async def _drive_task_group(self) -> None:
        self._run_context = contextvars.copy_context()
        async with anyio.create_task_group() as task_group:
            self._task_group = task_group
            self._pump()
        self._task_group = None

    def _pump(self) -> None:
        ready = self.ready
        limit = self.max_concurrency
        context = self._run_context
        assert context is not None
        loop = self._loop
        while ready and (limit is None or self.active < limit):
            i = ready.popleft()
            self.active += 1
            if loop is not None:
                loop.create_task(self._stage_task(i), context=context.copy())
            else:
                context.run(self._task_group.start_soon, self._stage_task, i)

    def _stop(self, stage: str | None, reason: str, kind: str, current: int | None) -> None:
        if self.stop_reason is not None:
            return
        self.stop_reason = reason
        self.stop_kind = kind
        self.stop_stage = stage
        self.ready.clear()
        for i, handle in list(self._tasks.items()):
            if i != current:
                handle.cancel()

    def _on_token_cancelled(self, reason: str) -> None:
        self._stop(None, reason, "cancel", None)

    # -- one stage ----------------------------------------------------------------------------

    async def _stage_task(self, i: int) -> None:
        spec = self.specs[i]
        try:
            if self.stop_reason is not None:
                return
            restored = self.restored.get(spec.name) if self.restored else None
            if restored is not None:
                # Completed by the run this one resumes: its output is taken as it is.
                self._complete(i, restored, 1)
                return
            # Stages are stopped through anyio cancel scopes, which respect the shields that
            # stage code (or a worker thread it waits for) relies on. Registered once running:
            # a task cancelled before its first step would never run its ``finally``.
            with anyio.CancelScope() as scope:
                self._tasks[i] = scope
                now = _perf()
                ctx = StageContext(self, spec)
                call = StageCall(spec, ctx, self.name, now - self.ready_at[i], now)
                try:
                    output = await self._stage_entry(call)
                except Exception as exc:
                    # Only a broken hook gets here: stages and interceptors are caught further in.
                    logger.exception("a run hook failed on stage %r", spec.name)
                    output = StageOutput.fail(exc)
                except BaseException:
                    if spec.name not in self.outputs:
                        self.outputs[spec.name] = self._cancelled_output()
                    raise
                self._complete(i, output, ctx.attempt)
        finally:
            self.active -= 1
            self._tasks.pop(i, None)
            if self.ready and self.stop_reason is None:
                self._pump()
            idle = self._idle
            if self.active == 0 and not self.ready and idle is not None and not idle.done():
                idle.set_result(None)

    def _cancelled_output(self) -> StageOutput:
        return StageOutput.cancel(self.stop_reason or "cancelled")

    async def _run_stage_core(self, call: StageCall) -> StageOutput:
        """Inside every hook: events, skip decisions, the interceptor chain, the runner."""
        spec = call.spec
        name = spec.name
        if self.emitting:
            self.emit(
                "stage.started",
                {
                    "stage": name,
                    "kind": spec.kind._value_,
                    "attempt": call.attempt,
                    "queue_wait_ms": _round_ms(call.queue_wait_s * 1000),
                    # Set again by ``emit``; here the dict is made at its final size.
                    "pipeline_run_id": self.run_id,
                    "pipeline": self.name,
                },
                True,
            )
        try:
            blocked = self.blocked_by.get(name) if self.blocked_by else None
            if blocked is not None:
                output = StageOutput.skip(f"upstream stage {blocked!r} failed").with_metadata(
                    blocked_by=blocked
                )
            elif spec.conditional and (reason := self._skip_reason(call)):
                output = StageOutput.skip(reason)
            else:
                output = await self._chain_for(spec)(call)
                if output.status is _RETRY:
                    output = StageOutput.fail(
                        f"stage {name!r} returned RETRY ({output.error}) but no retry policy "
                        "handled it; add a RetryInterceptor to the pipeline or the stage",
                        error_type="stageflow.unhandled_retry",
                    )
        except BaseException:
            output = self._cancelled_output().with_duration((_perf() - call.started_at) * 1000)
            self.outputs[name] = output
            if self.emitting:
                self.emit(
                    "stage.cancelled",
                    {
                        "stage": name,
                        "status": "cancel",
                        "reason": output.data.get("cancel_reason"),
                        "duration_ms": _round_ms((_perf() - call.started_at) * 1000),
                        "attempt": call.attempt,
                    },
                )
            raise
        end = _perf()
        if output.duration_ms is None:
            output = output.with_duration((end - call.started_at) * 1000)
        if self.emitting:
            self._emit_completion(call, output, end)
        return output

    def _emit_completion(self, call: StageCall, output: StageOutput, end: float) -> None:
        name = call.stage
        status = output.status
        duration_ms = _round_ms(output.duration_ms or 0.0)
        payload: dict[str, Any] = {
            "stage": name,
            "status": status._value_,
            "duration_ms": duration_ms,
            "attempt": call.attempt,
            "pipeline_run_id": self.run_id,
            "pipeline": self.name,
        }
        flat = False  # the reasons and errors below are the stage's own values
        if status is _FAIL:
            payload["error"] = output.error
            payload["error_type"] = error_type_of(output)
        elif status is _SKIP:
            payload["reason"] = output.data.get("reason")
        elif status is _CANCEL:
            payload["reason"] = output.data.get("cancel_reason")
        else:
            payload["data_keys"] = sorted(map(str, output.data)) if output.data else []
            # A duration the stage set itself may be of any type.
            flat = type(duration_ms) is float or type(duration_ms) is int
        for event in output.events:
            self.emit(event.type, {**event.data, "stage": name})
        for artifact in output.artifacts:
            self.emit(
                "stage.artifact",
                {"stage": name, "artifact_type": artifact.type, "payload": dict(artifact.payload)},
            )
        self.emit(_COMPLETION_EVENT[status], payload, flat)
        if self.wide is not None and self.graph.emit_stage_wide_events:
            self.emit(
                self.wide.stage_event_type,
                self.wide.stage_payload(
                    pipeline=self.name,
                    identity=self.identity,
                    stage=name,
                    kind=call.kind._value_,
                    output=output,
                    started_at=self._wall(call.started_at),
                    ended_at=self._wall(end),
                    attempt=call.attempt,
                    queue_wait_ms=call.queue_wait_s * 1000,
                ),
            )

    def _skip_reason(self, call: StageCall) -> str | None:
        outputs = self.outputs
        for dep in call.spec.dependencies:
            out = outputs.get(dep)
            if out is not None:
                reason = out.data.get("skip_reason")
                if reason:
                    return str(reason)
        return None

    def _chain_for(self, spec: StageSpec) -> CallNext:
        interceptors = self.graph.interceptors + spec.interceptors
        if not interceptors:
            return self._invoke
        key = tuple(id(i) for i in interceptors)
        chain = self._chains.get(key)
        if chain is None:
            chain = InterceptorChain(interceptors, self._invoke, wrappers=self._wrappers)
            self._chains[key] = chain
        return chain

    async def _invoke(self, call: StageCall) -> StageOutput:
        """The innermost call: run the stage once and turn what it did into a StageOutput."""
        spec = call.spec
        result: object  # runners are typed, but user code may return anything
        try:
            if spec.timeout is None:
                result = await spec.invoke(call.context)
            else:
                with anyio.move_on_after(spec.timeout) as scope:
                    result = await spec.invoke(call.context)
                if scope.cancelled_caught:
                    return StageOutput.fail(
                        StageTimeoutError(spec.name, spec.timeout),
                        metadata={"error_code": "TIMEOUT"},
                        error_type="stageflow.timeout",
                    )
        except StageCancellationRequested as exc:
            return StageOutput.cancel(exc.reason)
        except Exception as exc:
            return StageOutput.fail(exc)
        if result is None:
            return _OK_EMPTY
        if isinstance(result, StageOutput):
            return result
        if isinstance(result, Mapping):
            return StageOutput(StageStatus.OK, result)
        return StageOutput.fail(StageReturnTypeError(spec.name, result))

    def _complete(self, i: int, output: StageOutput, attempts: int) -> None:
        spec = self.specs[i]
        name = spec.name
        self.outputs[name] = output
        if attempts != 1:
            self.attempts[name] = attempts
        status = output.status
        poison: str | None = None
        if status is _FAIL:
            if self.failed_stage is None:
                self.failed_stage = name
            if self.fail_fast:
                self._stop(name, f"stage {name!r} failed", "fail", i)
                return
            poison = name
        elif status is _CANCEL:
            self._stop(name, str(output.data.get("cancel_reason") or "cancelled"), "cancel", i)
            return
        elif self.blocked_by:
            poison = self.blocked_by.get(name)
        if self.stop_reason is not None:
            return
        remaining = self.remaining
        ready = self.ready
        now = 0.0  # read the clock once, and only if a child becomes ready
        specs = self.specs
        for child in self.children[i]:
            if poison is not None:
                self.blocked_by.setdefault(specs[child].name, poison)
            remaining[child] -= 1
            if remaining[child] == 0:
                if not now:
                    now = _perf()
                self.ready_at[child] = now
                ready.append(child)


_CALLER_CANCELLED = "the caller was cancelled"
_EMPTY_OUTPUTS: Mapping[str, StageOutput] = MappingProxyType({})
STORE_VARIABLE = "STAGEFLOW_OTEL_STORE"


def _environment_store() -> RunRecording | None:
    """The run store ``$STAGEFLOW_OTEL_STORE`` names, if it names one."""
    url = os.environ.get(STORE_VARIABLE)
    if not url:
        return None
    # Imported only when asked for: the run stores build on the engine, not the other way.
    from stageflow_otel.runs import store_from_environment

    return store_from_environment(url)


_RUN_EVENT = {"ok": "completed", "fail": "failed", "cancel": "cancelled"}


def _deliveries(
    sinks: Sequence[EventSink],
) -> tuple[tuple[EventSink, Callable[[Event], None]], ...]:
    """How each sink receives an event: typed (``try_emit_event``) or as its payload."""
    calls: list[tuple[EventSink, Callable[[Event], None]]] = []
    for sink in sinks:
        typed = getattr(sink, "try_emit_event", None)
        calls.append((sink, typed if callable(typed) else _payload_delivery(sink)))
    return tuple(calls)


def _payload_delivery(sink: EventSink) -> Callable[[Event], None]:
    try_emit = sink.try_emit

    def deliver(event: Event) -> None:
        try_emit(type=event.type, data=event.data)

    return deliver


def _identity_payload(identity: RunIdentity) -> dict[str, Any]:
    payload: dict[str, Any] = {}
    for key in ("request_id", "session_id", "user_id", "org_id", "interaction_id"):
        value = getattr(identity, key)
        if value is not None:
            payload[key] = value
    return payload
