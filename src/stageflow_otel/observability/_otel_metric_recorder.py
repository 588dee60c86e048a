"""The OpenTelemetry metric recorder: the contract's metrics through the OpenTelemetry metrics API.

For backends that speak OTLP rather than scrape ``/metrics``. The instruments carry the
Prometheus metrics' names (without the ``_total`` a Prometheus exporter adds to counters) and
the same attributes, so that an OTLP pipeline ending in Prometheus (the collector's
``prometheus`` exporter, remote write) yields the same series the dashboards query. Durations
are histograms in seconds with the contract's bucket boundaries (as advice to the SDK); the SDK
attaches exemplars to them from the current span where its exemplar filter allows.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from stageflow_otel._version import package_version

from .metrics import (
    DURATION_BUCKETS,
    INTERCEPTOR_DURATION,
    INTERCEPTOR_SHORT_CIRCUITS,
    PIPELINE_ACTIVE,
    PIPELINE_DURATION,
    PIPELINE_RUNS,
    STAGE_DURATION,
    STAGE_QUEUE_WAIT,
    STAGE_RETRIES,
    STAGE_RUNS,
    STAGES_ACTIVE,
    SUBPIPELINE_RUNS,
    TOOL_CALLS,
    TOOL_DURATION,
    LabelGuard,
    MetricSpec,
)
from .recorders import Recorder
from .records import current_run

if TYPE_CHECKING:
    from opentelemetry.metrics import MeterProvider

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

__all__ = ("OtelMetricRecorder", "instrument")


def instrument(
    meter: Any,
    spec: MetricSpec,
    kind: str,
    *,
    unit: str = "s",
    buckets: Sequence[float] = DURATION_BUCKETS,
) -> Any:
    """The OpenTelemetry instrument of a contract metric.

    ``kind`` is ``counter``, ``up_down_counter`` or ``histogram`` (in ``unit``, with
    ``buckets`` as its advised boundaries).
    """
    if kind == "counter":
        return meter.create_counter(spec.name, description=spec.description)
    if kind == "up_down_counter":
        return meter.create_up_down_counter(spec.name, description=spec.description)
    return meter.create_histogram(
        spec.name,
        unit=unit,
        description=spec.description,
        explicit_bucket_boundaries_advisory=list(buckets),
    )


class OtelMetricRecorder(Recorder):
    """Records the contract's run, stage, retry, interceptor, subpipeline and tool metrics.

    Args:
        meter_provider: Where the instruments come from (``Telemetry(meter_provider=...)``).
        labels: The label bounds, shared with the Prometheus metrics when both are on.
    """

    def __init__(self, meter_provider: MeterProvider, labels: LabelGuard) -> None:
        meter = meter_provider.get_meter("stageflow_otel", package_version())
        self.labels = labels

        def counter(spec: MetricSpec) -> Any:
            return instrument(meter, spec, "counter")

        def up_down_counter(spec: MetricSpec) -> Any:
            return instrument(meter, spec, "up_down_counter")

        def histogram(spec: MetricSpec) -> Any:
            return instrument(meter, spec, "histogram")

        self.pipeline_runs = counter(PIPELINE_RUNS)
        self.pipeline_duration = histogram(PIPELINE_DURATION)
        self.pipeline_active = up_down_counter(PIPELINE_ACTIVE)
        self.stage_runs = counter(STAGE_RUNS)
        self.stage_duration = histogram(STAGE_DURATION)
        self.stage_queue_wait = histogram(STAGE_QUEUE_WAIT)
        self.stages_active = up_down_counter(STAGES_ACTIVE)
        self.stage_retries = counter(STAGE_RETRIES)
        self.interceptor_duration = histogram(INTERCEPTOR_DURATION)
        self.interceptor_short_circuits = counter(INTERCEPTOR_SHORT_CIRCUITS)
        self.subpipeline_runs = counter(SUBPIPELINE_RUNS)
        self.tool_calls = counter(TOOL_CALLS)
        self.tool_duration = histogram(TOOL_DURATION)

    def _pipeline(self, run: RunRecord) -> str:
        return self.labels.pipeline_label(run.pipeline)

    def run_started(self, run: RunRecord) -> None:
        """Count the run as active."""
        self.pipeline_active.add(1, {"pipeline": self._pipeline(run)})

    def run_ended(self, run: RunRecord, outcome: RunOutcome) -> None:
        """Count and time the run."""
        pipeline = self._pipeline(run)
        self.pipeline_active.add(-1, {"pipeline": pipeline})
        attributes = {"pipeline": pipeline, "status": outcome.status}
        self.pipeline_runs.add(1, attributes)
        self.pipeline_duration.record(outcome.duration_s, attributes)

    def stage_started(self, stage: StageRecord, call: StageCall) -> None:
        """Count the stage as active; record its queue wait."""
        pipeline = {"pipeline": self._pipeline(stage.run)}
        self.stages_active.add(1, pipeline)
        self.stage_queue_wait.record(call.queue_wait_s, pipeline)

    def stage_ended(self, stage: StageRecord, call: StageCall, outcome: StageOutcome) -> None:
        """Count and time the stage; the SDK takes the duration's exemplar from the stage span."""
        pipeline = self._pipeline(stage.run)
        name = self.labels.stage_label(pipeline, stage.name)
        error_type = self.labels.error_type_label(outcome.error_type)
        self.stage_runs.add(
            1,
            {
                "pipeline": pipeline,
                "stage": name,
                "status": outcome.status,
                "error_type": error_type,
            },
        )
        self.stage_duration.record(
            outcome.duration_s,
            {"pipeline": pipeline, "stage": name, "status": outcome.status},
            context=stage.context,  # the stage span's: the exemplar points at it
        )
        self.stages_active.add(-1, {"pipeline": pipeline})

    def stage_retried(self, stage: StageRecord, event: Event) -> None:
        """Count the retry."""
        pipeline = self._pipeline(stage.run)
        self.stage_retries.add(
            1, {"pipeline": pipeline, "stage": self.labels.stage_label(pipeline, stage.name)}
        )

    def interceptor_ended(self, call: StageCall, outcome: InterceptorOutcome) -> None:
        """Time the interceptor; count its short circuits."""
        self.interceptor_duration.record(outcome.duration_s, {"interceptor": outcome.name})
        if outcome.action == "short_circuit":
            run = current_run.get()
            pipeline = self.labels.pipeline_label(run.pipeline) if run else call.pipeline
            stage = self.labels.stage_label(pipeline, call.stage)
            self.interceptor_short_circuits.add(1, {"interceptor": outcome.name, "stage": stage})

    def subpipeline_ended(self, call: SubpipelineCall, outcome: SubpipelineOutcome) -> None:
        """Count the child run under its parent pipeline."""
        self.subpipeline_runs.add(
            1,
            {
                "parent_pipeline": self.labels.pipeline_label(call.parent_pipeline),
                "pipeline": self.labels.pipeline_label(call.pipeline),
                "status": outcome.status,
            },
        )

    def tool_ended(self, call: ToolCall, outcome: ToolOutcome) -> None:
        """Count and time the tool call."""
        self.tool_calls.add(1, {"tool": call.tool, "status": outcome.status})
        self.tool_duration.record(outcome.duration_s, {"tool": call.tool})
