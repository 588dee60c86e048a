"""Where the observability layer keeps the current run and stage (context variables)."""

from __future__ import annotations

import contextvars
from typing import Any

from opentelemetry import trace


class RunRecord:
    """The telemetry state of one run, visible to all of its stages."""

    __slots__ = (
        "active_series",
        "base_attributes",
        "canonical",
        "metric_pipeline",
        "pipeline",
        "queue_wait_series",
        "run_id",
        "span",
        "stage_spans",
        "trace_hex",
        "trace_id",
    )

    def __init__(self, span: trace.Span, pipeline: str, run_id: str, metric_pipeline: str) -> None:
        self.span = span
        self.pipeline = pipeline
        self.run_id = run_id
        self.metric_pipeline = metric_pipeline
        self.stage_spans: dict[str, trace.SpanContext] = {}
        self.base_attributes: dict[str, Any] = {}
        self.active_series: Any = None  # adds to the stages_active gauge child: (1) or (-1)
        self.queue_wait_series: Any = None
        self.canonical: Any = None  # the run's ``CanonicalLog``, when canonical lines are on
        span_context = span.get_span_context()
        self.trace_id = span_context.trace_id
        self.trace_hex = hex_ids(span_context)[0]

    def hex_ids(self, span_context: trace.SpanContext) -> tuple[str, str]:
        """:func:`hex_ids`, with the run's trace id formatted once per run."""
        if span_context.trace_id != self.trace_id:
            return hex_ids(span_context)
        return self.trace_hex, format(span_context.span_id, "016x")


def hex_ids(span_context: trace.SpanContext) -> tuple[str, str]:
    """``(trace_id, span_id)`` as the hex strings events, exemplars and log lines carry."""
    return format(span_context.trace_id, "032x"), format(span_context.span_id, "016x")


class StageRecord:
    """The telemetry state of one stage execution."""

    __slots__ = (
        "claimed",
        "context",
        "hex_ids",
        "metric_stage",
        "name",
        "run",
        "span",
        "span_context",
    )

    def __init__(
        self, span: trace.Span, name: str, run: RunRecord, metric_stage: str, context: Any
    ) -> None:
        self.span = span
        self.name = name
        self.run = run
        self.metric_stage = metric_stage
        self.context = context  # the OpenTelemetry context that makes ``span`` current
        self.hex_ids: tuple[str, str] | None = None
        self.span_context: trace.SpanContext = trace.INVALID_SPAN_CONTEXT
        # Failures and short circuits an interceptor span has reported (see ``hook._claim``).
        self.claimed: list[object] | None = None


current_run: contextvars.ContextVar[RunRecord | None] = contextvars.ContextVar(
    "stageflow_otel_run", default=None
)
current_stage: contextvars.ContextVar[StageRecord | None] = contextvars.ContextVar(
    "stageflow_otel_stage", default=None
)
