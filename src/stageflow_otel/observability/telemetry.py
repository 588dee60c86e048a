"""``Telemetry``: one object that makes pipelines observable."""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from opentelemetry import trace
from prometheus_client import CollectorRegistry

from stageflow_otel._version import package_version
from stageflow_otel.core.events import EventSink
from stageflow_otel.core.seams import RunHook

from .config import METRICS_PORT, EventSelection, Settings
from .hook import Redactor, TelemetryHook
from .metrics import LabelGuard, MetricsServeError, MetricsServer, StageflowMetrics, serve_metrics
from .recorders import Recorder

if TYPE_CHECKING:
    from opentelemetry.metrics import MeterProvider
    from opentelemetry.sdk._logs import LoggerProvider
    from opentelemetry.sdk._logs.export import LogRecordExporter

    from .store_metrics import StoreMetrics

__all__ = ("TRACER_NAME", "Telemetry")

TRACER_NAME = "stageflow_otel"


class Telemetry:
    """Spans, Prometheus metrics, canonical log lines and OpenTelemetry event export.

    Pass its :attr:`hooks` and :attr:`event_sink` to ``Pipeline.build`` or ``Pipeline.run``::

        telemetry = Telemetry(registry=CollectorRegistry())
        graph = pipeline.build(hooks=telemetry.hooks, event_sink=telemetry.event_sink)

    Args:
        tracer_provider: Where spans go; the global provider by default.
        meter_provider: When given, the metrics are also recorded through this OpenTelemetry
            ``MeterProvider`` (same names and attributes, for OTLP-native backends), beside
            the Prometheus metrics in ``registry`` (``metrics=False`` leaves only these).
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
        events: Which lifecycle events become log records: ``"all"``, ``"errors"``
            (failures, cancellations, denials and retries), ``"none"``, or event types such as
            ``["stage.failed", "tool.*"]`` (default from ``STAGEFLOW_OTEL_EVENTS``, else all).
            With none selected no event sink is made.
        exit_timeout: Seconds queued events may take to export at interpreter exit (default
            from ``STAGEFLOW_OTEL_EXIT_TIMEOUT``, else 5).
        recorders: More :class:`~stageflow_otel.observability.recorders.Recorder` objects,
            told of every run, stage, interceptor, subpipeline and tool call after the built-in
            ones.
        sink_options: Keyword arguments for the event export queue
            (``max_queue_size``, ``policy``, ...).

    Raises:
        ValueError: A ``STAGEFLOW_OTEL_*`` variable or an argument is invalid, or
            ``registry`` already holds another ``Telemetry``'s metrics. Nothing stays
            registered or started then.
        TypeError: An argument has the wrong type.
    """

    def __init__(
        self,
        tracer_provider: trace.TracerProvider | None = None,
        *,
        meter_provider: MeterProvider | None = None,
        logger_provider: LoggerProvider | None = None,
        registry: CollectorRegistry | None = None,
        interceptor_spans: bool | None = None,
        canonical_logs: bool | None = None,
        metrics: bool = True,
        event_exporter: LogRecordExporter | None = None,
        record_output_keys: Iterable[str] = (),
        record_tool_payloads: bool = False,
        redact: Redactor | None = None,
        max_stage_names: int | None = None,
        extra_error_types: Iterable[str] = (),
        events: str | Iterable[str] | EventSelection | None = None,
        exit_timeout: float | None = None,
        recorders: Iterable[Recorder] = (),
        sink_options: dict[str, Any] | None = None,
    ) -> None:
        _check_arguments(
            registry=registry,
            max_stage_names=max_stage_names,
            redact=redact,
            sink_options=sink_options,
        )
        settings = Settings.from_env()
        if events is None:
            selection = settings.events
        elif isinstance(events, EventSelection):
            selection = events
        else:
            selection = EventSelection.parse(events)
        self.events = selection
        self.settings = settings
        self.tracer_provider = tracer_provider
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
        self.meter_provider = meter_provider
        otel_metrics: tuple[Recorder, ...] = ()
        if meter_provider is not None:
            from ._otel_metric_recorder import OtelMetricRecorder

            labels = self.metrics or LabelGuard(
                max_stage_names=max_stage_names or settings.max_stage_names,
                extra_error_types=extra_error_types,
            )
            otel_metrics = (OtelMetricRecorder(meter_provider, labels),)
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
            recorders=(*otel_metrics, *recorders),
        )
        self.event_sink: EventSink | None = None
        self._servers: list[MetricsServer] = []
        if (event_exporter is not None or logger_provider is not None) and not selection.nothing:
            from .sinks import OtelLogEventSink

            options = dict(sink_options or {})
            options.setdefault(
                "exit_timeout", settings.exit_timeout if exit_timeout is None else exit_timeout
            )
            try:
                self.event_sink = OtelLogEventSink(
                    exporter=event_exporter,
                    logger_provider=logger_provider,
                    metrics=self.metrics,
                    events=selection,
                    **options,
                )
            except BaseException:
                if self.metrics is not None:
                    self.metrics.unregister()
                raise

    @property
    def hooks(self) -> tuple[RunHook, ...]:
        """The run hooks to pass to ``build``/``run``."""
        return (self.hook,)

    def store_listener(self, store: str = "sqlite") -> StoreMetrics | None:
        """A run store listener recording ``stageflow_store_*`` (``None`` without metrics).

        Pass it as the store's ``listener``:
        ``SQLiteRunStore(path, listener=telemetry.store_listener("sqlite"))``.

        Args:
            store: The ``store`` label: the store's kind (``sqlite``, ``postgres``).
        """
        if self.metrics is None:
            return None
        from .store_metrics import StoreMetrics

        return StoreMetrics(self.metrics, store)

    def serve_metrics(
        self, port: int | None = None, addr: str | None = None, *, fallback: bool = False
    ) -> MetricsServer:
        """Serve this telemetry's registry on ``/metrics`` (127.0.0.1 unless told otherwise).

        Args:
            port: The port; ``STAGEFLOW_OTEL_METRICS_PORT`` (else 9464) by default; 0 picks
                any free port.
            addr: The address; ``STAGEFLOW_OTEL_METRICS_ADDR`` (else 127.0.0.1) by default.
            fallback: When the *default* port (neither ``port`` nor the variable set) is busy,
                serve on any free port instead; ``server.fallback_from`` then names the busy
                port. An explicit port that cannot be bound still raises.

        Raises:
            ValueError: ``port`` is not an integer from 0 to 65535.
            OSError: The address or port cannot be bound.
        """
        explicit = port is not None or self.settings.metrics_port_explicit
        chosen = self.settings.metrics_port if port is None else port
        if isinstance(chosen, bool) or not isinstance(chosen, int) or not 0 <= chosen <= 65535:
            raise ValueError(
                f"port must be an integer from 0 to 65535 (0: any free port), got {chosen!r}"
            )
        address = self.settings.metrics_addr if addr is None else addr
        try:
            try:
                server = serve_metrics(chosen, address, registry=self.registry)
            except OSError:
                if explicit or not fallback or chosen == 0:
                    raise
                server = serve_metrics(0, address, registry=self.registry)
                server.fallback_from = chosen
        except OSError as exc:
            raise MetricsServeError(
                address,
                chosen,
                exc,
                variable=METRICS_PORT if port is None and explicit else None,
            ) from exc
        self._servers.append(server)
        return server

    def force_flush(self, timeout: float = 5.0) -> bool:
        """Export queued events now; returns whether everything was exported in time."""
        flush = getattr(self.event_sink, "force_flush", None)
        return bool(flush(timeout=timeout)) if flush is not None else True

    def shutdown(self, timeout: float = 5.0) -> bool:
        """Flush and stop the event export and any ``/metrics`` server started here.

        The metrics stay registered (a last scrape still reads them).
        """
        ok = True
        shutdown = getattr(self.event_sink, "shutdown", None)
        if shutdown is not None:
            ok = bool(shutdown(timeout=timeout))
        for server in self._servers:
            server.close()
        self._servers.clear()
        return ok


def _check_arguments(
    *,
    registry: object,
    max_stage_names: object,
    redact: object,
    sink_options: object,
) -> None:
    """Reject arguments of the wrong type or range before anything is registered."""
    if registry is not None and not isinstance(registry, CollectorRegistry):
        raise TypeError(
            f"registry must be a prometheus_client CollectorRegistry, got {type(registry).__name__}"
        )
    if max_stage_names is not None and (
        isinstance(max_stage_names, bool)
        or not isinstance(max_stage_names, int)
        or max_stage_names < 1
    ):
        raise ValueError(f"max_stage_names must be an integer >= 1, got {max_stage_names!r}")
    if redact is not None and not callable(redact):
        raise TypeError(f"redact must be a callable redact(key, value), got {redact!r}")
    if sink_options is not None and not isinstance(sink_options, dict):
        raise TypeError(f"sink_options must be a dict of queue settings, got {sink_options!r}")
