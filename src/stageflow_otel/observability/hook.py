"""The run hook that makes runs observable, through its recorders.

One hook wraps each run, stage, interceptor, subpipeline and tool call once, so an instrumented
stage pays for one wrapper. Around each, it starts the span (the span recorder) and makes it
current, works out once how the unit of work ended, and tells every recorder: spans, Prometheus
metrics, canonical log lines, and any recorder the application adds (see
:mod:`stageflow_otel.observability.recorders`).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable, Iterable, Sequence
from typing import Any

from opentelemetry import context as otel_context
from opentelemetry import trace

from stageflow_otel.core.errors import (
    PipelineCancelled,
    StageCancellationRequested,
    StageExecutionError,
)
from stageflow_otel.core.events import Event
from stageflow_otel.core.model import StageOutput
from stageflow_otel.core.seams import (
    CallNext,
    Interceptor,
    RunCall,
    RunHook,
    StageCall,
    SubpipelineCall,
    ToolCall,
)
from stageflow_otel.core.wide_events import error_type_of

from ._log_recorder import LogRecorder
from ._metric_recorder import MetricRecorder
from ._span_recorder import Redactor, SpanRecorder, interceptor_action
from .metrics import StageflowMetrics
from .recorders import Recorder
from .records import (
    InterceptorOutcome,
    RunOutcome,
    StageOutcome,
    SubpipelineOutcome,
    ToolOutcome,
    current_run,
    current_stage,
    trace_ids_of,
)

__all__ = ("Redactor", "TelemetryHook")

logger = logging.getLogger("stageflow_otel.observability")

_perf = time.perf_counter
_METHODS = (
    "run_started",
    "run_ended",
    "stage_started",
    "stage_ended",
    "stage_retried",
    "interceptor_ended",
    "subpipeline_ended",
    "tool_ended",
)


class TelemetryHook(RunHook):
    """Spans, metrics and canonical log lines for every run, stage, interceptor and subpipeline.

    Usually made by :class:`~stageflow_otel.observability.Telemetry`; see it for the options.

    Args:
        tracer: Where spans go.
        metrics: The Prometheus metrics to record (``None``: none).
        interceptor_spans: One span per interceptor.
        canonical_logs: Write the canonical ``stage.wide`` / ``pipeline.wide`` lines.
        record_output_keys: Output data keys whose values are recorded on stage spans.
        record_tool_payloads: Record tool call arguments and results on tool spans.
        redact: ``redact(key, value)`` runs before any opted-in value is recorded.
        recorders: More recorders, told after the built-in ones.
    """

    # Without an event sink, only retries need an event (for the span event and the counter).
    observed_events: frozenset[str] | None = frozenset({"stage.retrying"})

    def __init__(
        self,
        tracer: trace.Tracer,
        metrics: StageflowMetrics | None,
        *,
        interceptor_spans: bool = True,
        canonical_logs: bool = True,
        record_output_keys: Iterable[str] = (),
        record_tool_payloads: bool = False,
        redact: Redactor | None = None,
        recorders: Sequence[Recorder] = (),
    ) -> None:
        self.tracer = tracer
        self.metrics = metrics
        self.spans = SpanRecorder(
            tracer,
            interceptor_spans=interceptor_spans,
            record_output_keys=record_output_keys,
            record_tool_payloads=record_tool_payloads,
            redact=redact,
        )
        built_in: list[Recorder] = []
        if metrics is not None:
            built_in.append(MetricRecorder(metrics))
        if canonical_logs:
            built_in.append(LogRecorder())
        self.recorders: tuple[Recorder, ...] = (*built_in, *recorders)
        self._resolve()

    @property
    def interceptor_spans(self) -> bool:
        """Whether each interceptor gets a span."""
        return self.spans.interceptor_spans

    @property
    def canonical_logs(self) -> bool:
        """Whether canonical lines are written."""
        return any(type(r) is LogRecorder for r in self.recorders)

    def _resolve(self) -> None:
        """Per method, the bound methods of the recorders that override it."""
        for method in _METHODS:
            setattr(
                self,
                f"_{method}",
                tuple(getattr(r, method) for r in self.recorders if type(r).overrides(method)),
            )

    def _tell(self, method: str, calls: tuple[Callable[..., None], ...], *args: Any) -> None:
        """Call each recorder's ``method``; one that raises is logged and left out for good."""
        for call in calls:
            try:
                call(*args)
            except Exception as error:
                self._drop(call, method, error)

    def _drop(self, call: Callable[..., None], method: str, error: Exception) -> None:
        """Leave out the recorder whose ``call`` raised ``error``, for good, and say so once."""
        recorder = getattr(call, "__self__", call)
        logger.error(
            "telemetry recorder %r raised in %s; it records nothing more",
            recorder,
            method,
            exc_info=error,
        )
        self.recorders = tuple(r for r in self.recorders if r is not recorder)
        self._resolve()

    # -- runs ------------------------------------------------------------------------------

    async def around_run(self, run: RunCall, proceed: Callable[[], Awaitable[Any]]) -> Any:
        """Wrap the run in a ``pipeline.run`` span; tell the recorders how it went."""
        record = self.spans.start_run(run)
        token = otel_context.attach(trace.set_span_in_context(record.span))
        run_token = current_run.set(record)
        self._tell("run_started", self._run_started, record)
        started = _perf()
        status = "cancel"
        failed_stage: str | None = None
        error: str | None = None
        error_type: str | None = None
        try:
            results = await proceed()
            status = "ok"
            return results
        except StageExecutionError as exc:
            status = "fail"
            failed_stage = exc.stage
            error = exc.message
            failed = exc.results.get(exc.stage)
            error_type = error_type_of(failed) if failed is not None else "_OTHER"
            raise
        except PipelineCancelled as exc:
            error = exc.reason
            raise
        finally:
            outcome = RunOutcome(
                status,
                _perf() - started,
                len(run.progress.outputs),
                failed_stage,
                error,
                error_type,
            )
            try:
                self.spans.run_ended(record, outcome)
            except Exception:
                logger.exception("recording the span of run %s failed", run.run_id)
            finally:
                self._tell("run_ended", self._run_ended, record, outcome)
                current_run.reset(run_token)
                otel_context.detach(token)

    # -- stages ----------------------------------------------------------------------------

    async def around_stage(self, call: StageCall, proceed: CallNext) -> StageOutput:
        """Wrap the stage in a ``stage.run`` span linked to its upstream stage spans."""
        run = current_run.get()
        if run is None:  # a run not started through this hook (hooks changed mid-run)
            return await proceed(call)
        record = self.spans.start_stage(run, call)
        token = otel_context.attach(record.context)
        stage_token = current_stage.set(record)
        for notify in self._stage_started:  # inline, not _tell: this runs for every stage
            try:
                notify(record, call)
            except Exception as error:
                self._drop(notify, "stage_started", error)
        output: StageOutput | None = None
        try:
            output = await proceed(call)
            return output
        finally:
            duration = _perf() - call.started_at
            if output is None:
                outcome = StageOutcome("cancel", None, None, duration, call.attempt)
            else:
                status = output.status._value_
                error_type = error_type_of(output) if status == "fail" else None
                outcome = StageOutcome(status, output, error_type, duration, call.attempt)
            try:
                self.spans.stage_ended(record, call, outcome)
            except Exception:
                logger.exception("recording the span of stage %r failed", call.stage)
            finally:
                for notify in self._stage_ended:
                    try:
                        notify(record, call, outcome)
                    except Exception as error:
                        self._drop(notify, "stage_ended", error)
                current_stage.reset(stage_token)
                otel_context.detach(token)

    # -- interceptors ----------------------------------------------------------------------

    async def around_interceptor(
        self, interceptor: Interceptor, call: StageCall, proceed: CallNext
    ) -> StageOutput:
        """Wrap one interceptor in an ``interceptor {name}`` span and time it."""
        name = interceptor.name
        started = _perf()
        attempt_before = call.attempt
        span = self.spans.start_interceptor(name, call)
        token = otel_context.attach(trace.set_span_in_context(span)) if span is not None else None
        output: StageOutput | None = None
        try:
            output = await proceed(call)
            return output
        finally:
            try:
                action = (
                    None  # cancelled: the stage span says so
                    if output is None
                    else interceptor_action(name, attempt_before, call, output)
                )
                outcome = InterceptorOutcome(name, action, _perf() - started, output)
                if span is not None:
                    self.spans.end_interceptor(span, outcome)
                self._tell("interceptor_ended", self._interceptor_ended, call, outcome)
            except Exception:
                logger.exception("recording telemetry for interceptor %r failed", name)
            finally:
                if token is not None:
                    otel_context.detach(token)

    # -- subpipelines ----------------------------------------------------------------------

    async def around_subpipeline(
        self, call: SubpipelineCall, proceed: Callable[[], Awaitable[Any]]
    ) -> Any:
        """Wrap a child run in a ``subpipeline.run`` span under the spawning stage."""
        span = self.spans.start_subpipeline(call)
        token = otel_context.attach(trace.set_span_in_context(span))
        outcome = SubpipelineOutcome("cancel")
        try:
            results = await proceed()
            outcome = SubpipelineOutcome("ok")
            return results
        except StageExecutionError as exc:
            failed = exc.results.get(exc.stage)
            error_type = error_type_of(failed) if failed is not None else None
            outcome = SubpipelineOutcome("fail", exc.message, error_type)
            raise
        finally:
            try:
                self.spans.end_subpipeline(span, outcome)
                self._tell("subpipeline_ended", self._subpipeline_ended, call, outcome)
            except Exception:
                logger.exception("recording telemetry for subpipeline %r failed", call.pipeline)
            finally:
                otel_context.detach(token)

    # -- tools -----------------------------------------------------------------------------

    async def around_tool(
        self, call: ToolCall, proceed: Callable[[ToolCall], Awaitable[Any]]
    ) -> Any:
        """Wrap a tool call in an ``execute_tool {tool}`` span (GenAI conventions)."""
        span = self.spans.start_tool(call)
        token = otel_context.attach(trace.set_span_in_context(span))
        started = _perf()
        result: Any = None
        raised: BaseException | None = None
        status = "cancel"
        try:
            result = await proceed(call)
            ok = bool(getattr(result, "success", getattr(result, "ok", True)))
            status = "ok" if ok else "fail"
            return result
        except StageCancellationRequested:
            raise  # a cancellation: status stays Unset, counted as cancel
        except Exception as exc:
            status = "fail"
            raised = exc
            raise
        finally:
            try:
                outcome = ToolOutcome(status, _perf() - started, result, raised)
                self.spans.end_tool(span, outcome)
                self._tell("tool_ended", self._tool_ended, call, outcome)
            except Exception:
                logger.exception("recording telemetry for tool %r failed", call.tool)
            finally:
                otel_context.detach(token)

    # -- events ----------------------------------------------------------------------------

    def on_event(self, event: Event) -> None:
        """Give every event its trace context; tell the recorders of a ``stage.retrying``.

        The context is that of the span current where the event is emitted, as integers (the
        sink that needs text formats it) and as the context object itself.
        """
        stage = current_stage.get()
        context = otel_context.get_current()
        if stage is not None and context is stage.context:
            ids = stage.trace_ids
        else:
            ids = trace_ids_of(trace.get_current_span(context).get_span_context())
        if ids is not None:
            event.trace_id, event.span_id, event.trace_flags = ids
            event.trace_context = context  # what a log record's ``context`` is
        if event.type == "stage.retrying" and stage is not None:
            self.spans.stage_retried(stage, event)
            self._tell("stage_retried", self._stage_retried, stage, event)

    # Bound recorder methods per hook point, set by ``_resolve``.
    _run_started: tuple[Callable[..., None], ...]
    _run_ended: tuple[Callable[..., None], ...]
    _stage_started: tuple[Callable[..., None], ...]
    _stage_ended: tuple[Callable[..., None], ...]
    _stage_retried: tuple[Callable[..., None], ...]
    _interceptor_ended: tuple[Callable[..., None], ...]
    _subpipeline_ended: tuple[Callable[..., None], ...]
    _tool_ended: tuple[Callable[..., None], ...]
