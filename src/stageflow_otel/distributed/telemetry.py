"""Worker-side telemetry of remote stages: the ``stage.remote`` span and the worker metrics.

A :class:`WorkerTelemetry` runs each task inside a ``stage.remote {stage}`` span whose parent
is the trace context the task carries (the span current where the stage submitted, in
another process), and records ``stageflow_remote_stage_duration_seconds`` and
``stageflow_remote_stages_total`` in its own registry, which :meth:`WorkerTelemetry.serve_metrics`
serves on the worker's own ``/metrics``.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping
from typing import Any

from opentelemetry import context as otel_context
from opentelemetry import propagate, trace
from opentelemetry.trace import Status, StatusCode
from prometheus_client import CollectorRegistry, Counter, Histogram

from stageflow_otel._version import package_version
from stageflow_otel.core.errors import qualified_name
from stageflow_otel.core.model import StageOutput
from stageflow_otel.observability import attributes as attr
from stageflow_otel.observability.metrics import (
    DURATION_BUCKETS,
    LabelGuard,
    MetricSpec,
    MetricsServer,
    serve_metrics,
)

from ._task import RemoteTask, run_task

__all__ = (
    "REMOTE_STAGES",
    "REMOTE_STAGE_DURATION",
    "RemoteStageMetrics",
    "WorkerTelemetry",
)

TRACER_NAME = "stageflow_otel.distributed"

WORKER: str = "stageflow.remote.worker"
QUEUE_WAIT: str = "stageflow.remote.queue_wait_s"

REMOTE_STAGE_DURATION = MetricSpec(
    "stageflow_remote_stage_duration_seconds",
    "Wall time of remote stage functions on this worker.",
    ("pipeline", "stage", "status"),
)
REMOTE_STAGES = MetricSpec(
    "stageflow_remote_stages",
    "Remote stage functions run on this worker, by status and error type.",
    ("pipeline", "stage", "status", "error_type"),
)


class RemoteStageMetrics(LabelGuard):
    """The worker metrics of remote stages, registered in ``registry``.

    Args:
        registry: Where the metrics live; a new private registry by default.
        max_stage_names: Distinct stage names per pipeline before ``_OTHER``.
        extra_error_types: More ``error_type`` values to keep as labels.
    """

    def __init__(
        self,
        registry: CollectorRegistry | None = None,
        *,
        max_stage_names: int = 1000,
        extra_error_types: Iterable[str] = (),
    ) -> None:
        super().__init__(max_stage_names=max_stage_names, extra_error_types=extra_error_types)
        self.registry = registry if registry is not None else CollectorRegistry()
        self.duration = Histogram(
            REMOTE_STAGE_DURATION.name,
            REMOTE_STAGE_DURATION.description,
            REMOTE_STAGE_DURATION.labels,
            buckets=DURATION_BUCKETS,
            registry=self.registry,
        )
        self.runs = Counter(
            REMOTE_STAGES.name,
            REMOTE_STAGES.description,
            REMOTE_STAGES.labels,
            registry=self.registry,
        )

    def record(
        self, pipeline: str, stage: str, status: str, error_type: str, duration_s: float
    ) -> None:
        """Count one run of a remote stage function and observe its duration."""
        pipeline_label = self.pipeline_label(pipeline)
        stage_label = self.stage_label(pipeline_label, stage)
        self.duration.labels(pipeline_label, stage_label, status).observe(duration_s)
        self.runs.labels(
            pipeline_label, stage_label, status, self.error_type_label(error_type)
        ).inc()


class WorkerTelemetry:
    """Spans and metrics of the remote stages a worker runs.

    Args:
        tracer_provider: Where ``stage.remote`` spans go; the global provider by default.
        registry: The ``CollectorRegistry`` of the worker metrics; a private one by default.
        metrics: Record the worker metrics.
        extra_error_types: More ``error_type`` label values to keep.
    """

    def __init__(
        self,
        tracer_provider: trace.TracerProvider | None = None,
        *,
        registry: CollectorRegistry | None = None,
        metrics: bool = True,
        extra_error_types: Iterable[str] = (),
    ) -> None:
        self.tracer = trace.get_tracer(TRACER_NAME, package_version(), tracer_provider)
        self.metrics = (
            RemoteStageMetrics(registry, extra_error_types=extra_error_types) if metrics else None
        )
        self.registry = self.metrics.registry if self.metrics else registry or CollectorRegistry()
        self._servers: list[MetricsServer] = []

    def run(self, task: RemoteTask, *, worker: str | None = None) -> Any:
        """Run ``task`` inside its ``stage.remote`` span; record the metrics; return its result.

        What the function raises is recorded on the span and raised again.
        """
        parent = propagate.extract(dict(task.trace_context)) if task.trace_context else None
        started = time.time()
        attributes: dict[str, Any] = {
            attr.PIPELINE_NAME: task.pipeline,
            attr.RUN_ID: task.run_id,
            attr.STAGE_NAME: task.stage,
            attr.STAGE_ATTEMPT: task.attempt,
            attr.CODE_FUNCTION: _function_name(task.fn),
        }
        if worker is not None:
            attributes[WORKER] = worker
        if task.submitted_at:
            attributes[QUEUE_WAIT] = round(max(0.0, started - task.submitted_at), 6)
        token = otel_context.attach(parent) if parent is not None else None
        try:
            with self.tracer.start_as_current_span(
                f"stage.remote {task.stage}",
                attributes=attributes,
                record_exception=False,
                set_status_on_exception=False,
            ) as span:
                begin = time.perf_counter()
                try:
                    result = run_task(task, worker=worker)
                except Exception as exc:
                    error_type = qualified_name(exc)
                    span.record_exception(exc)
                    span.set_status(Status(StatusCode.ERROR, str(exc) or type(exc).__name__))
                    span.set_attribute(attr.ERROR_TYPE, error_type)
                    span.set_attribute(attr.STAGE_STATUS, "fail")
                    self._record(task, "fail", error_type, time.perf_counter() - begin)
                    raise
                status, error_type = _outcome(result)
                span.set_attribute(attr.STAGE_STATUS, status)
                if status == "fail":
                    span.set_status(Status(StatusCode.ERROR, str(result.error)))
                    span.set_attribute(attr.ERROR_TYPE, error_type)
                self._record(task, status, error_type, time.perf_counter() - begin)
                return result
        finally:
            if token is not None:
                otel_context.detach(token)

    def _record(self, task: RemoteTask, status: str, error_type: str, duration_s: float) -> None:
        if self.metrics is not None:
            self.metrics.record(task.pipeline, task.stage, status, error_type, duration_s)

    def serve_metrics(self, port: int = 0, addr: str = "127.0.0.1") -> MetricsServer:
        """Serve the worker metrics on ``http://addr:port/metrics`` (0: any free port)."""
        server = serve_metrics(port, addr, registry=self.registry)
        self._servers.append(server)
        return server

    def shutdown(self) -> None:
        """Stop the ``/metrics`` servers started here."""
        for server in self._servers:
            server.close()
        self._servers.clear()


def _outcome(result: object) -> tuple[str, str]:
    """``(status, error_type)`` of what a stage function returned."""
    if isinstance(result, StageOutput):
        status = result.status.value
        if status == "fail":
            exc = result.exception
            return "fail", result.error_type or (qualified_name(exc) if exc else "_OTHER")
        return status, ""
    if result is None or isinstance(result, Mapping):
        return "ok", ""
    return "fail", "stageflow_otel.core.errors.StageReturnTypeError"


def _function_name(fn: object) -> str:
    module = getattr(fn, "__module__", None) or ""
    qualname = getattr(fn, "__qualname__", None) or type(fn).__qualname__
    return f"{module}.{qualname}" if module else qualname
