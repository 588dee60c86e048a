"""``Telemetry``: one object that makes pipelines observable."""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from opentelemetry import trace
from prometheus_client import CollectorRegistry

from stageflow_otel._version import package_version
from stageflow_otel.core.events import EventSink
from stageflow_otel.core.interceptors import RunHook

from .config import Settings
from .hook import Redactor, TelemetryHook
from .metrics import MetricsServer, StageflowMetrics, serve_metrics

if TYPE_CHECKING:
    from opentelemetry.metrics import MeterProvider
    from opentelemetry.sdk._logs import LoggerProvider
    from opentelemetry.sdk._logs.export import LogRecordExporter

__all__ = ("TRACER_NAME", "Telemetry")

TRACER_NAME = "stageflow_otel"


class Telemetry:
    """Spans, Prometheus metrics, canonical log lines and OpenTelemetry event export.

    Pass its :attr:`hooks` and :attr:`event_sink` to ``Pipeline.build`` or ``Pipeline.run``::

        telemetry = Telemetry(registry=CollectorRegistry())
        graph = pipeline.build(hooks=telemetry.hooks, event_sink=telemetry.event_sink)

    Args:
        tracer_provider: Where spans go; the global provider by default.
        meter_provider: Accepted for symmetry with OpenTelemetry instrumentors; metrics are
            Prometheus metrics in ``registry`` (exemplars included), never both paths.
        logger_provider: When given, lifecycle events become OpenTelemetry log records emitted
            through it, behind a backpressure queue.
        registry: The ``CollectorRegistry`` for the metrics; a new private one by default
            (never prometheus_client's global ``REGISTRY`` unless you pass it).
        interceptor_spans: One span per interceptor (default from
            ``STAGEFLOW_OTEL_INTERCEPTOR_SPANS``, else on).
        canonical_logs: Write ``stage.wide`` / ``pipeline.wide`` structlog lines (default from
            ``STAGEFLOW_OTEL_CANONICAL_LOGS``, else on).
        metrics: Record Prometheus metrics.
        event_exporter: When given, lifecycle events become OpenTelemetry log records exported
            through this ``LogRecordExporter`` (OTLP, console, in-memory) behind a backpressure
            queue.
        record_output_keys: Output data keys whose values are recorded on stage spans
            (``stageflow.stage.output.data.<key>``); nothing is recorded unless listed.
        record_tool_payloads: Record tool call arguments and results on tool spans.
        redact: ``redact(key, value)`` runs before any opted-in value is recorded.
        max_stage_names: Distinct stage names per pipeline kept as metric labels.
        extra_error_types: More ``error_type`` metric label values to keep.
        sink_options: Keyword arguments for the event export queue
            (``max_queue_size``, ``policy``, ...).
    """

    def __init__(
        self,
        tracer_provider: trace.TracerProvider | None = None,
        meter_provider: MeterProvider | None = None,
        logger_provider: LoggerProvider | None = None,
        registry: CollectorRegistry | None = None,
        *,
        interceptor_spans: bool | None = None,
        canonical_logs: bool | None = None,
        metrics: bool = True,
        event_exporter: LogRecordExporter | None = None,
        record_output_keys: Iterable[str] = (),
        record_tool_payloads: bool = False,
        redact: Redactor | None = None,
        max_stage_names: int | None = None,
        extra_error_types: Iterable[str] = (),
        sink_options: dict[str, Any] | None = None,
    ) -> None:
        settings = Settings.from_env()
        self.settings = settings
        self.tracer_provider = tracer_provider
        self.meter_provider = meter_provider
        self.tracer = trace.get_tracer(TRACER_NAME, package_version(), tracer_provider)
        self.metrics: StageflowMetrics | None = (
            StageflowMetrics(
                registry,
                max_stage_names=max_stage_names or settings.max_stage_names,
                extra_error_types=extra_error_types,
            )
            if metrics
            else None
        )
        self.registry: CollectorRegistry = (
            self.metrics.registry if self.metrics else (registry or CollectorRegistry())
        )
        self.hook = TelemetryHook(
            self.tracer,
            self.metrics,
            interceptor_spans=settings.interceptor_spans
            if interceptor_spans is None
            else interceptor_spans,
            canonical_logs=settings.canonical_logs if canonical_logs is None else canonical_logs,
            record_output_keys=record_output_keys,
            record_tool_payloads=record_tool_payloads,
            redact=redact,
        )
        self.event_sink: EventSink | None = None
        if event_exporter is not None or logger_provider is not None:
            from .sinks import OtelLogEventSink

            self.event_sink = OtelLogEventSink(
                exporter=event_exporter,
                logger_provider=logger_provider,
                metrics=self.metrics,
                **(sink_options or {}),
            )
        self._servers: list[MetricsServer] = []

    @property
    def hooks(self) -> tuple[RunHook, ...]:
        """The run hooks to pass to ``build``/``run``."""
        return (self.hook,)

    def serve_metrics(self, port: int | None = None, addr: str | None = None) -> MetricsServer:
        """Serve this telemetry's registry on ``/metrics`` (127.0.0.1 unless told otherwise)."""
        server = serve_metrics(
            self.settings.metrics_port if port is None else port,
            self.settings.metrics_addr if addr is None else addr,
            registry=self.registry,
        )
        self._servers.append(server)
        return server

    def force_flush(self, timeout: float = 5.0) -> bool:
        """Export queued events now; returns whether everything was exported in time."""
        flush = getattr(self.event_sink, "force_flush", None)
        return bool(flush(timeout=timeout)) if flush is not None else True

    def shutdown(self, timeout: float = 5.0) -> bool:
        """Flush and stop the event export and any ``/metrics`` server started here."""
        ok = True
        shutdown = getattr(self.event_sink, "shutdown", None)
        if shutdown is not None:
            ok = bool(shutdown(timeout=timeout))
        for server in self._servers:
            server.close()
        self._servers.clear()
        return ok
