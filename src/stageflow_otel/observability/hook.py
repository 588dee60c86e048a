"""The run hook that makes runs observable: spans, Prometheus metrics, canonical log lines.

One hook does all three in one pass per stage, so an instrumented stage pays for one wrapper.
Spans follow TELEMETRY.md: ``pipeline.run {pipeline}`` encloses ``stage.run {stage}`` spans,
which enclose ``interceptor {name}`` spans (outer interceptor outermost); a subpipeline is a
``subpipeline.run {pipeline}`` span under the spawning stage with the child's run inside.
Status stays Unset on success, skip and cancel, and is Error (with the message) on failure.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.trace import Link, SpanKind, Status, StatusCode
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from stageflow_otel.core.errors import (
    PipelineCancelled,
    StageCancellationRequested,
    StageExecutionError,
)
from stageflow_otel.core.events import Event
from stageflow_otel.core.model import StageOutput, StageStatus
from stageflow_otel.core.seams import (
    CallNext,
    Interceptor,
    RunCall,
    RunHook,
    StageCall,
    qualified_name,
)
from stageflow_otel.core.wide_events import error_type_of

from . import attributes as attr
from ._context import (
    RunRecord,
    StageRecord,
    current_run,
    current_stage,
    hex_ids,
)
from ._spans import ContractSpan, SpanStarter
from .logging import CanonicalLog
from .metrics import StageflowMetrics, StageSeries, adder, observe, observe_with_trace

__all__ = ("Redactor", "TelemetryHook")

logger = logging.getLogger("stageflow_otel.observability")

Redactor = Callable[[str, Any], Any]
"""``redact(key, value) -> value`` runs before an opted-in payload value is recorded."""

_PRIMITIVE = (str, bool, int, float)
_UNRECORDED: Any = object()
_propagator = TraceContextTextMapPropagator()
_perf = time.perf_counter


def _trace_fields(span_context: trace.SpanContext) -> dict[str, str]:
    """``trace_id``/``span_id`` for a log line; nothing when tracing is off."""
    if not span_context.is_valid:
        return {}
    trace_id, span_id = hex_ids(span_context)
    return {"trace_id": trace_id, "span_id": span_id}


def _set_attributes(span: trace.Span, attributes: dict[str, Any]) -> None:
    """Set attributes the hook built (valid values); the cheap way on a ``ContractSpan``."""
    if type(span) is ContractSpan:
        span.set_contract_attributes(attributes)
    else:
        span.set_attributes(attributes)


def _claim(output: StageOutput) -> bool:
    """Claim a failure or short circuit for the innermost interceptor span that sees it.

    Metadata names the interceptor by name only, and an outer interceptor of the same name
    (a pipeline-wide ``TimeoutInterceptor`` around a stage's own) sees the same failure pass
    through, or re-wrapped by a retry with the same exception. The first (innermost) span to
    claim it is the one that reports it.
    """
    stage = current_stage.get()
    if stage is None:
        return True
    cause: object = output.exception if output.exception is not None else output
    claimed = stage.claimed
    if claimed is None:
        stage.claimed = [cause]
        return True
    if any(seen is cause for seen in claimed):
        return False
    claimed.append(cause)
    return True


def _safe_value(value: Any) -> Any:
    if isinstance(value, _PRIMITIVE):
        return value
    try:
        return json.dumps(value, default=str, sort_keys=True)
    except (TypeError, ValueError):
        return repr(value)


class TelemetryHook(RunHook):
    """Spans, metrics and canonical log lines for every run, stage, interceptor and subpipeline.

    Usually made by :class:`~stageflow_otel.observability.Telemetry`; see it for the options.
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
    ) -> None:
        self.tracer = tracer
        self.spans = SpanStarter(tracer)
        self.metrics = metrics
        self.interceptor_spans = interceptor_spans
        self.canonical_logs = canonical_logs
        self.record_output_keys = tuple(record_output_keys)
        self.record_tool_payloads = record_tool_payloads
        self.redact = redact

    def _redacted(self, key: str, value: Any) -> Any:
        """``value`` as an attribute, after the redaction hook; never raises."""
        try:
            if self.redact is not None:
                value = self.redact(key, value)
            return _safe_value(value)
        except Exception:
            logger.exception("redacting %r failed; the value is not recorded", key)
            return _UNRECORDED

    # -- runs ------------------------------------------------------------------------------

    async def around_run(self, run: RunCall, proceed: Callable[[], Awaitable[Any]]) -> Any:
        """Wrap the run in a ``pipeline.run`` span; count and time it."""
        parent = _propagator.extract({"traceparent": run.traceparent}) if run.traceparent else None
        attributes: dict[str, Any] = {attr.PIPELINE_NAME: run.pipeline, attr.RUN_ID: run.run_id}
        identity = run.identity
        for field, key in attr.IDENTITY_ATTRIBUTES:
            value = getattr(identity, field)
            if value is not None:
                attributes[key] = value
        base = dict(attributes)
        attributes[attr.RUN_STAGE_COUNT] = len(run.stage_names)
        if run.parent_run_id is not None:
            attributes[attr.PARENT_RUN_ID] = run.parent_run_id
            attributes[attr.PARENT_STAGE_NAME] = run.parent_stage or ""
            attributes[attr.CORRELATION_ID] = run.correlation_id or ""
            attributes[attr.SUBPIPELINE_DEPTH] = run.depth
        span = self.spans.start(
            f"pipeline.run {run.pipeline}",
            attributes,
            context=parent,
            kind=SpanKind.SERVER if run.entry_point else SpanKind.INTERNAL,
        )
        metrics = self.metrics
        metric_pipeline = metrics.pipeline_label(run.pipeline) if metrics else run.pipeline
        record = RunRecord(span, run.pipeline, run.run_id, metric_pipeline)
        record.base_attributes = base
        canonical = record.canonical = CanonicalLog() if self.canonical_logs else None
        token = otel_context.attach(trace.set_span_in_context(span))
        run_token = current_run.set(record)
        if metrics:
            metrics.pipeline_active.labels(metric_pipeline).inc()
            record.active_series = adder(metrics.stages_active.labels(metric_pipeline))
            record.queue_wait_series = metrics.stage_queue_wait.labels(metric_pipeline)
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
            duration = _perf() - started
            try:
                end_attributes: dict[str, Any] = {attr.RUN_STATUS: status}
                if failed_stage is not None:
                    end_attributes[attr.RUN_FAILED_STAGE] = failed_stage
                    end_attributes[attr.ERROR_TYPE] = error_type or "_OTHER"
                    span.set_status(Status(StatusCode.ERROR, error))
                _set_attributes(span, end_attributes)
                span.end()
                if metrics:
                    metrics.pipeline_active.labels(metric_pipeline).dec()
                    metrics.pipeline_runs.labels(metric_pipeline, status).inc()
                    metrics.pipeline_duration.labels(metric_pipeline, status).observe(duration)
                if canonical is not None and canonical.enabled(status == "fail"):
                    canonical.write(
                        "pipeline.wide",
                        {
                            "pipeline": run.pipeline,
                            "pipeline_run_id": run.run_id,
                            "status": status,
                            "duration_ms": round(duration * 1000, 3),
                            "stage_count": len(run.stage_names),
                            "stages_run": len(run.progress.outputs),
                            "failed_stage": failed_stage,
                            "error": error,
                            "error_type": error_type,
                            "depth": run.depth,
                            **_trace_fields(span.get_span_context()),
                        },
                        error=status == "fail",
                    )
            except Exception:
                logger.exception("recording telemetry for run %s failed", run.run_id)
            finally:
                current_run.reset(run_token)
                otel_context.detach(token)

    # -- stages ----------------------------------------------------------------------------

    async def around_stage(self, call: StageCall, proceed: CallNext) -> StageOutput:
        """Wrap the stage in a ``stage.run`` span linked to its upstream stage spans."""
        run = current_run.get()
        if run is None:  # a run not started through this hook (hooks changed mid-run)
            return await proceed(call)
        spec = call.spec
        name = call.stage
        attributes = {
            **run.base_attributes,
            attr.STAGE_NAME: name,
            attr.STAGE_KIND: call.kind._value_,
            attr.STAGE_QUEUE_WAIT: call.queue_wait_s,
            attr.CODE_FUNCTION: spec.function_name,
        }
        links: list[Link] | None = None
        if spec.dependencies:
            attributes[attr.STAGE_DEPENDENCIES] = list(spec.dependencies)
            upstream = run.stage_spans
            links = [
                Link(upstream[dep], {attr.LINK_ROLE: "upstream"})
                for dep in spec.dependencies
                if dep in upstream
            ]
        span = self.spans.start(f"stage.run {name}", attributes, links=links)
        span_context = span.get_span_context()
        run.stage_spans[name] = span_context
        metrics = self.metrics
        series = metrics.stage_series(run.metric_pipeline, name) if metrics else None
        context = trace.set_span_in_context(span)
        token = otel_context.attach(context)
        record = StageRecord(span, name, run, series.label if series else name, context)
        record.span_context = span_context
        if span_context.is_valid:
            record.hex_ids = run.hex_ids(span_context)
        stage_token = current_stage.set(record)
        if metrics:
            run.active_series(1)
            observe(run.queue_wait_series, call.queue_wait_s)
        output: StageOutput | None = None
        try:
            output = await proceed(call)
            return output
        finally:
            try:
                self._finish_stage(call, record, series, output)
            except Exception:
                logger.exception("recording telemetry for stage %r failed", name)
            finally:
                current_stage.reset(stage_token)
                otel_context.detach(token)

    def _finish_stage(
        self,
        call: StageCall,
        record: StageRecord,
        series: StageSeries | None,
        output: StageOutput | None,
    ) -> None:
        duration = _perf() - call.started_at
        span = record.span
        error_type: str | None = None
        end_attributes: dict[str, Any] = {}
        if output is None:
            # Cancelled: the exception is on its way up; the span ends here regardless.
            status = StageStatus.CANCEL
            end_attributes[attr.STAGE_CANCEL_REASON] = (
                call.context.cancellation_reason or "cancelled"
            )
        else:
            status = output.status
            if status is StageStatus.FAIL:
                error_type = error_type_of(output)
                end_attributes[attr.ERROR_TYPE] = error_type or "_OTHER"
                if output.exception is not None:
                    span.record_exception(output.exception)
                span.set_status(Status(StatusCode.ERROR, output.error))
            elif status is StageStatus.SKIP:
                end_attributes[attr.STAGE_SKIP_REASON] = str(output.data.get("reason", ""))
            elif status is StageStatus.CANCEL:
                end_attributes[attr.STAGE_CANCEL_REASON] = str(output.data.get("cancel_reason", ""))
            else:
                data = output.data
                if data:
                    end_attributes[attr.STAGE_OUTPUT_KEYS] = [str(k) for k in data]
                    for key in self.record_output_keys:
                        if key in data:
                            value = self._redacted(key, data[key])
                            if value is not _UNRECORDED:
                                end_attributes[attr.STAGE_OUTPUT_PREFIX + key] = value
        end_attributes[attr.STAGE_STATUS] = status._value_
        end_attributes[attr.STAGE_ATTEMPT] = call.attempt
        try:
            _set_attributes(span, end_attributes)
        finally:
            span.end()
        run = record.run
        if series is not None:
            metrics = self.metrics
            assert metrics is not None
            label_error = "" if error_type is None else metrics.error_type_label(error_type)
            add_run, durations = series.outcome(status._value_, label_error)
            add_run(1)
            ids = record.hex_ids
            if ids is not None:
                observe_with_trace(durations, duration, *ids)
            else:
                durations.observe(duration)
            run.active_series(-1)
        canonical = run.canonical
        if canonical is not None and canonical.enabled(status is StageStatus.FAIL):
            canonical.write(
                "stage.wide",
                {
                    "pipeline": run.pipeline,
                    "pipeline_run_id": run.run_id,
                    "stage": call.stage,
                    "kind": call.kind._value_,
                    "status": status._value_,
                    "attempt": call.attempt,
                    "duration_ms": round(duration * 1000, 3),
                    "queue_wait_ms": round(call.queue_wait_s * 1000, 3),
                    "error": output.error if output is not None else None,
                    "error_type": error_type,
                    "data_keys": sorted(str(k) for k in output.data) if output is not None else [],
                    **_trace_fields(span.get_span_context()),
                },
                error=status is StageStatus.FAIL,
            )

    # -- interceptors ----------------------------------------------------------------------

    async def around_interceptor(
        self, interceptor: Interceptor, call: StageCall, proceed: CallNext
    ) -> StageOutput:
        """Wrap one interceptor in an ``interceptor {name}`` span and time it."""
        name = interceptor.name
        metrics = self.metrics
        started = _perf()
        attempt_before = call.attempt
        span = None
        token = None
        if self.interceptor_spans:
            run = current_run.get()
            attributes = {
                **(run.base_attributes if run is not None else {}),
                attr.INTERCEPTOR_NAME: name,
                attr.STAGE_NAME: call.stage,
            }
            span = self.spans.start(f"interceptor {name}", attributes)
            token = otel_context.attach(trace.set_span_in_context(span))
        output: StageOutput | None = None
        try:
            output = await proceed(call)
            return output
        finally:
            try:
                action: str | None = "proceed"
                if output is None:
                    action = None  # cancelled: the stage span says so
                else:
                    meta = output.metadata
                    if meta:
                        if meta.get("interceptor") == name:
                            action = "error"
                        elif meta.get("short_circuited_by") == name:
                            action = "short_circuit"
                        if action != "proceed" and not _claim(output):
                            action = "proceed"  # an inner interceptor of the same name did it
                    if action == "proceed" and call.attempt > attempt_before:
                        action = "retry"
                if metrics:
                    metrics.interceptor_series(name).observe(_perf() - started)
                    if action == "short_circuit":
                        run = current_run.get()
                        stage = (
                            metrics.stage_label(run.metric_pipeline, call.stage)
                            if run
                            else call.stage
                        )
                        metrics.interceptor_short_circuits.labels(name, stage).inc()
                if span is not None:
                    if action is not None:
                        end_attributes: dict[str, Any] = {attr.INTERCEPTOR_ACTION: action}
                        if (
                            output is not None
                            and output.status is StageStatus.FAIL
                            and action in ("error", "short_circuit")
                        ):
                            end_attributes[attr.ERROR_TYPE] = error_type_of(output) or "_OTHER"
                            if action == "error":
                                span.set_status(Status(StatusCode.ERROR, output.error))
                        _set_attributes(span, end_attributes)
                    span.end()
            except Exception:
                logger.exception("recording telemetry for interceptor %r failed", name)
            finally:
                if token is not None:
                    otel_context.detach(token)

    # -- subpipelines ----------------------------------------------------------------------

    async def around_subpipeline(self, call: Any, proceed: Callable[[], Awaitable[Any]]) -> Any:
        """Wrap a child run in a ``subpipeline.run`` span under the spawning stage."""
        run = current_run.get()
        attributes = dict(run.base_attributes) if run is not None else {}
        attributes.update(
            {
                attr.PARENT_RUN_ID: call.parent_run_id,
                attr.PARENT_STAGE_NAME: call.parent_stage,
                attr.CORRELATION_ID: call.correlation_id,
                attr.SUBPIPELINE_DEPTH: call.depth,
                "stageflow.subpipeline.name": call.pipeline,
                "stageflow.subpipeline.run.id": call.child_run_id,
            }
        )
        span = self.spans.start(f"subpipeline.run {call.pipeline}", attributes)
        token = otel_context.attach(trace.set_span_in_context(span))
        status = "cancel"
        try:
            results = await proceed()
            status = "ok"
            return results
        except StageExecutionError as exc:
            status = "fail"
            failed = exc.results.get(exc.stage)
            span.set_attribute(
                attr.ERROR_TYPE, (error_type_of(failed) if failed is not None else None) or "_OTHER"
            )
            span.set_status(Status(StatusCode.ERROR, exc.message))
            raise
        except PipelineCancelled:
            raise
        finally:
            try:
                span.set_attribute(attr.RUN_STATUS, status)
                span.end()
                if self.metrics:
                    m = self.metrics
                    m.subpipeline_runs.labels(
                        m.pipeline_label(call.parent_pipeline),
                        m.pipeline_label(call.pipeline),
                        status,
                    ).inc()
            except Exception:
                logger.exception("recording telemetry for subpipeline %r failed", call.pipeline)
            finally:
                otel_context.detach(token)

    # -- tools -----------------------------------------------------------------------------

    async def around_tool(self, call: Any, proceed: Callable[[Any], Awaitable[Any]]) -> Any:
        """Wrap a tool call in an ``execute_tool {tool}`` span (GenAI conventions)."""
        tool = str(getattr(call, "tool_name", None) or getattr(call, "tool", "tool"))
        run = current_run.get()
        attributes = dict(run.base_attributes) if run is not None else {}
        attributes[attr.GEN_AI_OPERATION] = "execute_tool"
        attributes[attr.GEN_AI_TOOL_NAME] = tool
        attributes[attr.GEN_AI_TOOL_TYPE] = "function"
        call_id = getattr(call, "call_id", None)
        if call_id:
            attributes[attr.GEN_AI_TOOL_CALL_ID] = str(call_id)
        stage = getattr(call, "stage", None)
        if stage:
            attributes[attr.STAGE_NAME] = str(stage)
        if self.record_tool_payloads:
            arguments = getattr(call, "arguments", None)
            if arguments is not None:
                value = self._redacted(attr.GEN_AI_TOOL_ARGUMENTS, arguments)
                if value is not _UNRECORDED:
                    attributes[attr.GEN_AI_TOOL_ARGUMENTS] = value
        span = self.spans.start(f"execute_tool {tool}", attributes)
        token = otel_context.attach(trace.set_span_in_context(span))
        started = _perf()
        status = "cancel"
        try:
            result = await proceed(call)
            ok = bool(getattr(result, "success", getattr(result, "ok", True)))
            status = "ok" if ok else "fail"
            if not ok:
                error = getattr(result, "error", None)
                exception = getattr(result, "exception", None)
                span.set_attribute(
                    attr.ERROR_TYPE,
                    qualified_name(exception) if isinstance(exception, BaseException) else "_OTHER",
                )
                span.set_status(Status(StatusCode.ERROR, str(error) if error else None))
            elif self.record_tool_payloads:
                data = getattr(result, "data", None)
                if data is not None:
                    value = self._redacted(attr.GEN_AI_TOOL_RESULT, data)
                    if value is not _UNRECORDED:
                        span.set_attribute(attr.GEN_AI_TOOL_RESULT, value)
            return result
        except StageCancellationRequested:
            raise  # a cancellation: status stays Unset, counted as cancel
        except Exception as exc:
            status = "fail"
            declared = getattr(exc, "error_type", None)
            span.set_attribute(
                attr.ERROR_TYPE, declared if isinstance(declared, str) else qualified_name(exc)
            )
            span.record_exception(exc)
            span.set_status(Status(StatusCode.ERROR, str(exc)))
            raise
        finally:
            try:
                span.end()
                if self.metrics:
                    self.metrics.tool_calls.labels(tool, status).inc()
                    self.metrics.tool_duration.labels(tool).observe(_perf() - started)
            except Exception:
                logger.exception("recording telemetry for tool %r failed", tool)
            finally:
                otel_context.detach(token)

    # -- events ----------------------------------------------------------------------------

    def on_event(self, event: Event) -> None:
        """Give every event its trace context; make ``stage.retrying`` a span event and a count.

        The context is that of the span current where the event is emitted, as integers (the
        sink that needs text formats it).
        """
        stage = current_stage.get()
        context = otel_context.get_current()
        if stage is not None and context is stage.context:
            span_context = stage.span_context
        else:
            span_context = trace.get_current_span(context).get_span_context()
        if span_context.is_valid:
            event.trace_id = span_context.trace_id
            event.span_id = span_context.span_id
            event.trace_flags = span_context.trace_flags
            event.trace_context = context  # what a log record's ``context`` is
        if event.type == "stage.retrying" and stage is not None:
            fields = event.fields
            stage.span.add_event(
                attr.RETRY_EVENT,
                {
                    attr.STAGE_ATTEMPT: int(fields.get("attempt", 0)),
                    attr.RETRY_DELAY: float(fields.get("delay_s", 0.0)),
                    attr.ERROR_TYPE: str(fields.get("error_type") or "_OTHER"),
                },
            )
            if self.metrics:
                self.metrics.stage_retries.labels(
                    stage.run.metric_pipeline, stage.metric_stage
                ).inc()
