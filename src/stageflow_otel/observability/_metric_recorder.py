"""The metric recorder: the Prometheus metrics of the telemetry contract."""

from __future__ import annotations

from typing import TYPE_CHECKING

from .metrics import StageflowMetrics, adder, observer
from .recorders import Recorder
from .records import current_run

if TYPE_CHECKING:
    from stageflow_otel.core.events import Event
    from stageflow_otel.core.seams import StageCall, SubpipelineCall, ToolCall

    from .records import (
        InterceptorOutcome,
        RunOutcome,
        RunRecord,
        StageOutcome,
        StageRecord,
        SubpipelineOutcome,
        ToolOutcome,
    )

__all__ = ("MetricRecorder",)


class MetricRecorder(Recorder):
    """Counts and times runs, stages, retries, interceptors, subpipelines and tool calls.

    Every series is resolved once per pipeline, stage or interceptor; stage durations carry an
    exemplar with the stage span's ids.
    """

    def __init__(self, metrics: StageflowMetrics) -> None:
        self.metrics = metrics

    def run_started(self, run: RunRecord) -> None:
        """Count the run as active; resolve the run's series."""
        metrics = self.metrics
        label = run.metric_pipeline = metrics.pipeline_label(run.pipeline)
        metrics.pipeline_active.labels(label).inc()
        run.active_series = adder(metrics.stages_active.labels(label))
        run.queue_wait_series = observer(metrics.stage_queue_wait.labels(label))

    def run_ended(self, run: RunRecord, outcome: RunOutcome) -> None:
        """Count and time the run."""
        metrics = self.metrics
        label = run.metric_pipeline
        metrics.pipeline_active.labels(label).dec()
        metrics.pipeline_runs.labels(label, outcome.status).inc()
        metrics.pipeline_duration.labels(label, outcome.status).observe(outcome.duration_s)

    def stage_started(self, stage: StageRecord, call: StageCall) -> None:
        """Count the stage as active; observe its queue wait."""
        run = stage.run
        series = stage.series = self.metrics.stage_series(run.metric_pipeline, stage.name)
        stage.metric_stage = series.label
        run.active_series(1)
        run.queue_wait_series(call.queue_wait_s)

    def stage_ended(self, stage: StageRecord, call: StageCall, outcome: StageOutcome) -> None:
        """Count and time the stage, with an exemplar of its span."""
        error_type = outcome.error_type
        label_error = "" if error_type is None else self.metrics.error_type_label(error_type)
        add_run, observe_duration = stage.series.outcome(outcome.status, label_error)
        add_run(1)
        span_context = stage.span_context
        observe_duration(outcome.duration_s, span_context if span_context.is_valid else None)
        stage.run.active_series(-1)

    def stage_retried(self, stage: StageRecord, event: Event) -> None:
        """Count the retry."""
        self.metrics.stage_retries.labels(stage.run.metric_pipeline, stage.metric_stage).inc()

    def interceptor_ended(self, call: StageCall, outcome: InterceptorOutcome) -> None:
        """Time the interceptor; count its short circuits."""
        metrics = self.metrics
        metrics.interceptor_series(outcome.name).observe(outcome.duration_s)
        if outcome.action == "short_circuit":
            run = current_run.get()
            stage = metrics.stage_label(run.metric_pipeline, call.stage) if run else call.stage
            metrics.interceptor_short_circuits.labels(outcome.name, stage).inc()

    def subpipeline_ended(self, call: SubpipelineCall, outcome: SubpipelineOutcome) -> None:
        """Count the child run under its parent pipeline."""
        metrics = self.metrics
        metrics.subpipeline_runs.labels(
            metrics.pipeline_label(call.parent_pipeline),
            metrics.pipeline_label(call.pipeline),
            outcome.status,
        ).inc()

    def tool_ended(self, call: ToolCall, outcome: ToolOutcome) -> None:
        """Count and time the tool call."""
        self.metrics.tool_calls.labels(call.tool, outcome.status).inc()
        self.metrics.tool_duration.labels(call.tool).observe(outcome.duration_s)
