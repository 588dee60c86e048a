"""What the observability layer knows of a run and a stage while they go, and how they ended.

:class:`RunRecord` and :class:`StageRecord` are made by the span recorder when a run or a stage
starts, kept in context variables (:data:`current_run`, :data:`current_stage`) so that log lines
and events emitted inside find them, and handed to every
:class:`~stageflow_otel.observability.recorders.Recorder`. Each recorder may keep its own state
on them (the slots named after it). The outcome objects say how each unit of work ended; they
are computed once and shared by all recorders.
"""

from __future__ import annotations

import contextvars
from typing import Any

from opentelemetry import trace

from stageflow_otel.core.model import StageOutput

__all__ = (
    "InterceptorOutcome",
    "RunOutcome",
    "RunRecord",
    "StageOutcome",
    "StageRecord",
    "SubpipelineOutcome",
    "ToolOutcome",
    "current_run",
    "current_stage",
    "hex_ids",
)


def hex_ids(span_context: trace.SpanContext) -> tuple[str, str]:
    """``(trace_id, span_id)`` as the hex strings exemplars and log lines carry."""
    return format(span_context.trace_id, "032x"), format(span_context.span_id, "016x")


class RunRecord:
    """One run, as the recorders see it.

    Attributes:
        span: The ``pipeline.run`` span.
        pipeline: The pipeline name.
        run_id: The run id.
        stage_count: Stages in the pipeline.
        depth: Subpipeline depth (0 for a top-level run).
        base_attributes: The span attributes every span of the run carries.
        stage_spans: The span context of each stage started so far (for links).
        metric_pipeline: The bounded ``pipeline`` label (the metric recorder's).
        active_series: Adds to the run's ``stageflow_stages_active`` child (the metric
            recorder's).
        queue_wait_series: Observes in the run's ``stageflow_stage_queue_wait_seconds`` child
            (ditto).
        canonical: Where the run's canonical lines go (the log recorder's).
    """

    __slots__ = (
        "active_series",
        "base_attributes",
        "canonical",
        "depth",
        "metric_pipeline",
        "pipeline",
        "queue_wait_series",
        "run_id",
        "span",
        "stage_count",
        "stage_spans",
        "trace_hex",
        "trace_id",
    )

    def __init__(
        self, span: trace.Span, pipeline: str, run_id: str, stage_count: int, depth: int
    ) -> None:
        self.span = span
        self.pipeline = pipeline
        self.run_id = run_id
        self.stage_count = stage_count
        self.depth = depth
        self.metric_pipeline = pipeline
        self.stage_spans: dict[str, trace.SpanContext] = {}
        self.base_attributes: dict[str, Any] = {}
        self.active_series: Any = None
        self.queue_wait_series: Any = None
        self.canonical: Any = None
        span_context = span.get_span_context()
        self.trace_id = span_context.trace_id
        self.trace_hex = hex_ids(span_context)[0]

    def hex_ids(self, span_context: trace.SpanContext) -> tuple[str, str]:
        """:func:`hex_ids`, with the run's trace id formatted once per run."""
        if span_context.trace_id != self.trace_id:
            return hex_ids(span_context)
        return self.trace_hex, format(span_context.span_id, "016x")


def trace_ids_of(span_context: trace.SpanContext) -> tuple[int, int, int] | None:
    """``(trace_id, span_id, trace_flags)`` of a span context; ``None`` when it is not valid."""
    if not span_context.is_valid:
        return None
    return span_context.trace_id, span_context.span_id, span_context.trace_flags


class StageRecord:
    """One stage execution, as the recorders see it.

    Attributes:
        span: The ``stage.run`` span.
        span_context: Its span context.
        name: The stage name.
        run: The run's record.
        context: The OpenTelemetry context that makes ``span`` current.
        metric_stage: The bounded ``stage`` label (the metric recorder's).
        series: The stage's metric series (the metric recorder's).
        claimed: Failures and short circuits an interceptor span has reported.
    """

    __slots__ = (
        "_hex_ids",
        "_trace_ids",
        "claimed",
        "context",
        "metric_stage",
        "name",
        "run",
        "series",
        "span",
        "span_context",
    )

    def __init__(self, span: trace.Span, name: str, run: RunRecord, context: Any) -> None:
        self.span = span
        self.span_context = span.get_span_context()
        self.name = name
        self.run = run
        self.context = context
        self.metric_stage = name
        self.series: Any = None
        self.claimed: list[object] | None = None
        self._hex_ids: tuple[str, str] | None = None
        self._trace_ids: tuple[int, ...] | None = None  # () once read: not traced

    @property
    def trace_ids(self) -> tuple[int, ...] | None:
        """``(trace_id, span_id, trace_flags)`` of the stage span, read once; ``None`` untraced."""
        ids = self._trace_ids
        if ids is None:
            ids = self._trace_ids = trace_ids_of(self.span_context) or ()
        return ids or None

    @property
    def hex_ids(self) -> tuple[str, str] | None:
        """``(trace_id, span_id)`` of the stage span as hex, formatted once; ``None`` untraced."""
        ids = self._hex_ids
        if ids is None and self.span_context.is_valid:
            ids = self._hex_ids = self.run.hex_ids(self.span_context)
        return ids


class RunOutcome:
    """How a run ended.

    Attributes:
        status: ``ok``, ``fail`` or ``cancel``.
        duration_s: Wall time of the run.
        stages_run: Stages that have an output.
        failed_stage: The first failed stage, when it failed.
        error: Why it failed or was cancelled.
        error_type: The failed stage's ``error.type``.
    """

    __slots__ = ("duration_s", "error", "error_type", "failed_stage", "stages_run", "status")

    def __init__(
        self,
        status: str,
        duration_s: float,
        stages_run: int,
        failed_stage: str | None = None,
        error: str | None = None,
        error_type: str | None = None,
    ) -> None:
        self.status = status
        self.duration_s = duration_s
        self.stages_run = stages_run
        self.failed_stage = failed_stage
        self.error = error
        self.error_type = error_type


class StageOutcome:
    """How a stage execution ended.

    Attributes:
        status: ``ok``, ``skip``, ``cancel`` or ``fail``.
        output: The stage's output; ``None`` when it was cancelled from outside.
        error_type: The ``error.type`` of a failure, else ``None``.
        duration_s: Wall time of all its attempts.
        attempt: Attempts made.
    """

    __slots__ = ("attempt", "duration_s", "error_type", "output", "status")

    def __init__(
        self,
        status: str,
        output: StageOutput | None,
        error_type: str | None,
        duration_s: float,
        attempt: int,
    ) -> None:
        self.status = status
        self.output = output
        self.error_type = error_type
        self.duration_s = duration_s
        self.attempt = attempt


class InterceptorOutcome:
    """How an interceptor's part of a stage ended.

    Attributes:
        name: The interceptor's name.
        action: ``proceed``, ``short_circuit``, ``retry`` or ``error``; ``None`` when the stage
            was cancelled from outside.
        duration_s: Wall time inside the interceptor.
        output: What it returned; ``None`` when cancelled.
    """

    __slots__ = ("action", "duration_s", "name", "output")

    def __init__(
        self, name: str, action: str | None, duration_s: float, output: StageOutput | None
    ) -> None:
        self.name = name
        self.action = action
        self.duration_s = duration_s
        self.output = output


class SubpipelineOutcome:
    """How a child run ended, as its parent saw it.

    Attributes:
        status: ``ok``, ``fail`` or ``cancel``.
        error: Why it failed.
        error_type: The failed child stage's ``error.type``.
    """

    __slots__ = ("error", "error_type", "status")

    def __init__(
        self, status: str, error: str | None = None, error_type: str | None = None
    ) -> None:
        self.status = status
        self.error = error
        self.error_type = error_type


class ToolOutcome:
    """How a tool call ended.

    Attributes:
        status: ``ok``, ``fail`` or ``cancel``.
        duration_s: Wall time of the call.
        result: What the call returned (a ``ToolOutput``), if it returned.
        exception: What it raised, if it raised.
    """

    __slots__ = ("duration_s", "exception", "result", "status")

    def __init__(
        self,
        status: str,
        duration_s: float,
        result: Any = None,
        exception: BaseException | None = None,
    ) -> None:
        self.status = status
        self.duration_s = duration_s
        self.result = result
        self.exception = exception


current_run: contextvars.ContextVar[RunRecord | None] = contextvars.ContextVar(
    "stageflow_otel_run", default=None
)
current_stage: contextvars.ContextVar[StageRecord | None] = contextvars.ContextVar(
    "stageflow_otel_stage", default=None
)
