"""The span recorder: the spans of the telemetry contract.

``pipeline.run {pipeline}`` encloses ``stage.run {stage}`` spans, which enclose
``interceptor {name}`` spans (outer interceptor outermost); a subpipeline is a
``subpipeline.run {pipeline}`` span under the spawning stage with the child's run inside; a tool
call is an ``execute_tool {tool}`` span. Status stays Unset on success, skip and cancel, and is
Error (with the message) on failure. The span recorder starts each span (the hook makes it
current) and so makes the run and stage records the other recorders receive.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

from opentelemetry import trace
from opentelemetry.trace import Link, SpanContext, SpanKind, Status, StatusCode, TraceFlags
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from stageflow_otel.core.errors import qualified_name
from stageflow_otel.core.model import StageOutput, StageStatus
from stageflow_otel.core.seams import StageCall, SubpipelineCall, ToolCall
from stageflow_otel.core.wide_events import error_type_of

from . import attributes as attr
from ._spans import ContractSpan, SpanStarter
from .recorders import Recorder
from .records import (
    InterceptorOutcome,
    RunOutcome,
    RunRecord,
    StageOutcome,
    StageRecord,
    SubpipelineOutcome,
    ToolOutcome,
    current_run,
    current_stage,
)

if TYPE_CHECKING:
    from stageflow_otel.core.events import Event
    from stageflow_otel.core.seams import RunCall

__all__ = ("Redactor", "SpanRecorder")

logger = logging.getLogger("stageflow_otel.observability")

Redactor = Callable[[str, Any], Any]
"""``redact(key, value) -> value`` runs before an opted-in payload value is recorded."""

_PRIMITIVE = (str, bool, int, float)
_UNRECORDED: Any = object()
_propagator = TraceContextTextMapPropagator()
_UPSTREAM = {attr.LINK_ROLE: "upstream"}
_RESUMED_FROM = {attr.LINK_ROLE: "resumed_from"}


def _safe_value(value: Any) -> Any:
    if isinstance(value, _PRIMITIVE):
        return value
    try:
        return json.dumps(value, default=str, sort_keys=True)
    except (TypeError, ValueError):
        return repr(value)


def _set_attributes(span: trace.Span, attributes: dict[str, Any]) -> None:
    """Set attributes the recorder built (valid values); the cheap way on a ``ContractSpan``."""
    if type(span) is ContractSpan:
        span.set_contract_attributes(attributes)
    else:
        span.set_attributes(attributes)


def _resumed_link(trace_id: str | None, span_id: str | None) -> Link | None:
    """The link to the ``pipeline.run`` span of a resumed run, if its ids are valid hex."""
    if not trace_id or not span_id:
        return None
    try:
        context = SpanContext(
            int(trace_id, 16), int(span_id, 16), is_remote=True, trace_flags=TraceFlags(1)
        )
    except ValueError:
        return None
    return Link(context, _RESUMED_FROM) if context.is_valid else None


def _claim(output: StageOutput) -> bool:
    """Claim a failure or short circuit for the innermost interceptor span that sees it.

    An output names the interceptor by name only, and an outer interceptor of the same name
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


def interceptor_action(name: str, attempt_before: int, call: StageCall, output: StageOutput) -> str:
    """What an interceptor did to a stage: ``proceed``, ``short_circuit``, ``retry``, ``error``."""
    action = "proceed"
    if output.failed_by == name:
        action = "error"
    elif output.short_circuited_by == name:
        action = "short_circuit"
    if action != "proceed" and not _claim(output):
        action = "proceed"  # an inner interceptor of the same name did it
    if action == "proceed" and call.attempt > attempt_before:
        action = "retry"
    return action


class SpanRecorder(Recorder):
    """Starts and ends the contract's spans.

    Args:
        tracer: Where spans go.
        interceptor_spans: One span per interceptor.
        record_output_keys: Output data keys whose values are recorded on stage spans.
        record_tool_payloads: Record tool call arguments and results on tool spans.
        redact: ``redact(key, value)`` runs before any opted-in value is recorded.
    """

    def __init__(
        self,
        tracer: trace.Tracer,
        *,
        interceptor_spans: bool = True,
        record_output_keys: Iterable[str] = (),
        record_tool_payloads: bool = False,
        redact: Redactor | None = None,
    ) -> None:
        self.spans = SpanStarter(tracer)
        self.interceptor_spans = interceptor_spans
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

    def start_run(self, run: RunCall) -> RunRecord:
        """Start the ``pipeline.run`` span; the run's record."""
        parent = _propagator.extract({"traceparent": run.traceparent}) if run.traceparent else None
        attributes: dict[str, Any] = {attr.PIPELINE_NAME: run.pipeline, attr.RUN_ID: run.run_id}
        identity = run.identity
        for field, key in attr.IDENTITY_ATTRIBUTES:
            value = getattr(identity, field)
            if value is not None:
                attributes[key] = value
        base = dict(attributes)
        attributes[attr.RUN_STAGE_COUNT] = len(run.stage_names)
        if run.source is not None:
            attributes[attr.PIPELINE_SOURCE] = run.source
        if run.parent_run_id is not None:
            attributes[attr.PARENT_RUN_ID] = run.parent_run_id
            attributes[attr.PARENT_STAGE_NAME] = run.parent_stage or ""
            attributes[attr.CORRELATION_ID] = run.correlation_id or ""
            attributes[attr.SUBPIPELINE_DEPTH] = run.depth
        links: list[Link] | None = None
        resumed = run.resumed_from
        if resumed is not None:
            attributes[attr.RUN_RESUMED_FROM] = resumed.run_id
            attributes[attr.RUN_RESTORED_STAGES] = len(resumed.outputs)
            link = _resumed_link(resumed.trace_id, resumed.span_id)
            links = [link] if link is not None else None
        span = self.spans.start(
            f"pipeline.run {run.pipeline}",
            attributes,
            context=parent,
            kind=SpanKind.SERVER if run.entry_point else SpanKind.INTERNAL,
            links=links,
        )
        record = RunRecord(span, run.pipeline, run.run_id, len(run.stage_names), run.depth)
        record.base_attributes = base
        return record

    def run_ended(self, run: RunRecord, outcome: RunOutcome) -> None:
        """End the ``pipeline.run`` span with the run's status."""
        span = run.span
        end_attributes: dict[str, Any] = {attr.RUN_STATUS: outcome.status}
        if outcome.failed_stage is not None:
            end_attributes[attr.RUN_FAILED_STAGE] = outcome.failed_stage
            end_attributes[attr.ERROR_TYPE] = outcome.error_type or "_OTHER"
            span.set_status(Status(StatusCode.ERROR, outcome.error))
        try:
            _set_attributes(span, end_attributes)
        finally:
            span.end()

    # -- stages ----------------------------------------------------------------------------

    def start_stage(self, run: RunRecord, call: StageCall) -> StageRecord:
        """Start the ``stage.run`` span, linked to its upstream stage spans; its record."""
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
            links = [Link(upstream[dep], _UPSTREAM) for dep in spec.dependencies if dep in upstream]
        span = self.spans.start(f"stage.run {name}", attributes, links=links)
        record = StageRecord(span, name, run, trace.set_span_in_context(span))
        run.stage_spans[name] = record.span_context
        return record

    def stage_ended(self, stage: StageRecord, call: StageCall, outcome: StageOutcome) -> None:
        """End the ``stage.run`` span with the stage's status (and error, data keys)."""
        span = stage.span
        output = outcome.output
        end_attributes: dict[str, Any] = {}
        status = outcome.status
        if output is None:
            # Cancelled: the exception is on its way up; the span ends here regardless.
            end_attributes[attr.STAGE_CANCEL_REASON] = (
                call.context.cancellation_reason or "cancelled"
            )
        elif status == "fail":
            end_attributes[attr.ERROR_TYPE] = outcome.error_type or "_OTHER"
            if output.exception is not None:
                span.record_exception(output.exception)
            span.set_status(Status(StatusCode.ERROR, output.error))
        elif status == "skip":
            end_attributes[attr.STAGE_SKIP_REASON] = str(output.data.get("reason", ""))
        elif status == "cancel":
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
        end_attributes[attr.STAGE_STATUS] = status
        end_attributes[attr.STAGE_ATTEMPT] = outcome.attempt
        try:
            _set_attributes(span, end_attributes)
        finally:
            span.end()

    def stage_retried(self, stage: StageRecord, event: Event) -> None:
        """Add the ``stageflow.stage.retry`` span event."""
        fields = event.fields
        stage.span.add_event(
            attr.RETRY_EVENT,
            {
                attr.STAGE_ATTEMPT: int(fields.get("attempt", 0)),
                attr.RETRY_DELAY: float(fields.get("delay_s", 0.0)),
                attr.ERROR_TYPE: str(fields.get("error_type") or "_OTHER"),
            },
        )

    # -- interceptors ----------------------------------------------------------------------

    def start_interceptor(self, name: str, call: StageCall) -> trace.Span | None:
        """Start an ``interceptor {name}`` span, unless interceptor spans are off."""
        if not self.interceptor_spans:
            return None
        run = current_run.get()
        attributes = {
            **(run.base_attributes if run is not None else {}),
            attr.INTERCEPTOR_NAME: name,
            attr.STAGE_NAME: call.stage,
        }
        return self.spans.start(f"interceptor {name}", attributes)

    def end_interceptor(self, span: trace.Span, outcome: InterceptorOutcome) -> None:
        """End an interceptor span with what the interceptor did."""
        action = outcome.action
        output = outcome.output
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

    # -- subpipelines ----------------------------------------------------------------------

    def start_subpipeline(self, call: SubpipelineCall) -> trace.Span:
        """Start the ``subpipeline.run`` span under the spawning stage."""
        run = current_run.get()
        attributes = dict(run.base_attributes) if run is not None else {}
        attributes[attr.PARENT_RUN_ID] = call.parent_run_id
        attributes[attr.PARENT_STAGE_NAME] = call.parent_stage
        attributes[attr.CORRELATION_ID] = call.correlation_id
        attributes[attr.SUBPIPELINE_DEPTH] = call.depth
        attributes[attr.SUBPIPELINE_NAME] = call.pipeline
        attributes[attr.SUBPIPELINE_RUN_ID] = call.child_run_id
        return self.spans.start(f"subpipeline.run {call.pipeline}", attributes)

    def end_subpipeline(self, span: trace.Span, outcome: SubpipelineOutcome) -> None:
        """End the ``subpipeline.run`` span with the child's status."""
        end_attributes: dict[str, Any] = {attr.RUN_STATUS: outcome.status}
        if outcome.status == "fail":
            end_attributes[attr.ERROR_TYPE] = outcome.error_type or "_OTHER"
            span.set_status(Status(StatusCode.ERROR, outcome.error))
        try:
            _set_attributes(span, end_attributes)
        finally:
            span.end()

    # -- tools -----------------------------------------------------------------------------

    def start_tool(self, call: ToolCall) -> trace.Span:
        """Start the ``execute_tool {tool}`` span (GenAI conventions)."""
        run = current_run.get()
        attributes = dict(run.base_attributes) if run is not None else {}
        attributes[attr.GEN_AI_OPERATION] = "execute_tool"
        attributes[attr.GEN_AI_TOOL_NAME] = call.tool
        attributes[attr.GEN_AI_TOOL_TYPE] = "function"
        if call.call_id:
            attributes[attr.GEN_AI_TOOL_CALL_ID] = str(call.call_id)
        if call.stage:
            attributes[attr.STAGE_NAME] = call.stage
        if self.record_tool_payloads:
            value = self._redacted(attr.GEN_AI_TOOL_ARGUMENTS, call.arguments)
            if value is not _UNRECORDED:
                attributes[attr.GEN_AI_TOOL_ARGUMENTS] = value
        return self.spans.start(f"execute_tool {call.tool}", attributes)

    def end_tool(self, span: trace.Span, outcome: ToolOutcome) -> None:
        """End the tool span: its error (returned or raised), or its result when opted in."""
        exc = outcome.exception
        result = outcome.result
        if exc is not None and outcome.status == "fail":
            declared = getattr(exc, "error_type", None)
            span.set_attribute(
                attr.ERROR_TYPE, declared if isinstance(declared, str) else qualified_name(exc)
            )
            span.record_exception(exc)
            span.set_status(Status(StatusCode.ERROR, str(exc)))
        elif outcome.status == "fail":
            error = getattr(result, "error", None)
            exception = getattr(result, "exception", None)
            span.set_attribute(
                attr.ERROR_TYPE,
                qualified_name(exception) if isinstance(exception, BaseException) else "_OTHER",
            )
            span.set_status(Status(StatusCode.ERROR, str(error) if error else None))
        elif outcome.status == "ok" and self.record_tool_payloads:
            data = getattr(result, "data", None)
            if data is not None:
                value = self._redacted(attr.GEN_AI_TOOL_RESULT, data)
                if value is not _UNRECORDED:
                    span.set_attribute(attr.GEN_AI_TOOL_RESULT, value)
        span.end()
