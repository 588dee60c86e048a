"""Prometheus metrics of TELEMETRY.md, in a ``CollectorRegistry`` of the caller's.

Nothing here touches prometheus_client's global ``REGISTRY``. Label values are bounded:
stage names beyond ``max_stage_names`` per pipeline collapse into ``_OTHER`` (with one
warning), and ``error_type`` keeps only known types (see :data:`KNOWN_ERROR_TYPES`).
"""

from __future__ import annotations

import builtins
import contextlib
import functools
import logging
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, Self

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.exposition import start_http_server
from prometheus_client.samples import Exemplar

from stageflow_otel._version import package_version

from ._compact_metrics import (
    CompactCounter,
    CompactHistogram,
    CounterSeries,
    HistogramSeries,
    compact_metrics_supported,
)

__all__ = (
    "DURATION_BUCKETS",
    "KNOWN_ERROR_TYPES",
    "LabelGuard",
    "MetricSpec",
    "MetricsServeError",
    "MetricsServer",
    "StageSeries",
    "StageflowMetrics",
    "adder",
    "observe",
    "observe_with_trace",
    "serve_metrics",
)

logger = logging.getLogger("stageflow_otel.metrics")

DURATION_BUCKETS = (
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
    120.0, 300.0,
)  # fmt: skip
"""Buckets of every duration histogram, in seconds."""

OTHER = "_OTHER"

KNOWN_ERROR_TYPES: frozenset[str] = frozenset(
    {
        "stageflow.timeout",
        "stageflow.short_circuit",
        "stageflow.unhandled_retry",
        OTHER,
        *(
            name
            for name, value in vars(builtins).items()
            if isinstance(value, type) and issubclass(value, BaseException)
        ),
    }
)
"""``error_type`` label values kept as they are: the ``stageflow.*`` types, builtin exception
names, and any qualified name under ``stageflow_otel.``; every other value becomes ``_OTHER``
unless listed in ``StageflowMetrics(extra_error_types=...)``."""


@dataclass(frozen=True, slots=True)
class MetricSpec:
    """One metric of the telemetry contract, as every path that records it names it.

    Counters, gauges (up-down counters through OpenTelemetry) and histograms (seconds, with
    :data:`DURATION_BUCKETS`): each path makes the kind its attribute's type says.

    Attributes:
        name: The name, without the ``_total`` a Prometheus exposition adds to a counter.
        description: What it measures.
        labels: Its label (attribute) names.
    """

    name: str
    description: str
    labels: tuple[str, ...]


PIPELINE_RUNS = MetricSpec(
    "stageflow_pipeline_runs", "Pipeline runs by final status.", ("pipeline", "status")
)
PIPELINE_DURATION = MetricSpec(
    "stageflow_pipeline_run_duration_seconds", "Wall time of pipeline runs.",
    ("pipeline", "status"),
)  # fmt: skip
PIPELINE_ACTIVE = MetricSpec(
    "stageflow_pipeline_runs_active", "Pipeline runs in progress.", ("pipeline",)
)
STAGE_RUNS = MetricSpec(
    "stageflow_stage_runs", "Stage executions by status and error type.",
    ("pipeline", "stage", "status", "error_type"),
)  # fmt: skip
STAGE_DURATION = MetricSpec(
    "stageflow_stage_duration_seconds", "Wall time of stage executions (all attempts); exemplars carry trace_id and span_id.",
    ("pipeline", "stage", "status"),
)  # fmt: skip
STAGE_QUEUE_WAIT = MetricSpec(
    "stageflow_stage_queue_wait_seconds", "Time between a stage's dependencies being done and the stage starting.", ("pipeline",),
)  # fmt: skip
STAGES_ACTIVE = MetricSpec(
    "stageflow_stages_active", "Stage executions in progress.", ("pipeline",)
)
STAGE_RETRIES = MetricSpec("stageflow_stage_retries", "Stage retries.", ("pipeline", "stage"))
INTERCEPTOR_DURATION = MetricSpec(
    "stageflow_interceptor_duration_seconds", "Wall time inside each interceptor (including what it wraps).", ("interceptor",),
)  # fmt: skip
INTERCEPTOR_SHORT_CIRCUITS = MetricSpec(
    "stageflow_interceptor_short_circuits", "Stage executions an interceptor answered without running the stage.",
    ("interceptor", "stage"),
)  # fmt: skip
SUBPIPELINE_RUNS = MetricSpec(
    "stageflow_subpipeline_runs", "Subpipeline runs by final status.",
    ("parent_pipeline", "pipeline", "status"),
)  # fmt: skip
TOOL_CALLS = MetricSpec("stageflow_tool_calls", "Tool calls by status.", ("tool", "status"))
TOOL_DURATION = MetricSpec("stageflow_tool_duration_seconds", "Wall time of tool calls.", ("tool",))
SINK_QUEUE_SIZE = MetricSpec(
    "stageflow_sink_queue_size", "Events waiting in an event sink's queue.", ("sink",)
)
SINK_QUEUE_CAPACITY = MetricSpec(
    "stageflow_sink_queue_capacity", "Capacity of an event sink's queue.", ("sink",)
)
SINK_EVENTS = MetricSpec(
    "stageflow_sink_events", "Events handled by an event sink, by result (exported, dropped_queue_full, "
    "dropped_shutdown, export_failed).",
    ("sink", "result"),
)  # fmt: skip
SINK_EXPORT_DURATION = MetricSpec(
    "stageflow_sink_export_duration_seconds", "Wall time of one export of a batch.",
    ("sink",),
)  # fmt: skip
STORE_WRITES = MetricSpec(
    "stageflow_store_writes", "Records a run store handled, by result (written, failed, "
    "dropped_queue_full, dropped_shutdown).",
    ("store", "result"),
)  # fmt: skip
STORE_BYTES = MetricSpec("stageflow_store_bytes", "Bytes a run store wrote.", ("store",))
STORE_WRITE_DURATION = MetricSpec(
    "stageflow_store_write_duration_seconds", "Wall time of one batch write of a run store, "
    "retries included.",
    ("store",),
)  # fmt: skip
BUILD_INFO = MetricSpec(
    "stageflow_build_info", "Always 1; the version label says which stageflow-otel.",
    ("version",),
)  # fmt: skip


def _counter(spec: MetricSpec) -> Counter:
    return Counter(spec.name, spec.description, spec.labels, registry=None)


def _gauge(spec: MetricSpec) -> Gauge:
    return Gauge(spec.name, spec.description, spec.labels, registry=None)


def _histogram(spec: MetricSpec) -> Histogram:
    return Histogram(
        spec.name, spec.description, spec.labels, buckets=DURATION_BUCKETS, registry=None
    )


def _compact_counter(spec: MetricSpec) -> CompactCounter | Counter:
    """A counter on every stage's path: compact unless in multiprocess mode."""
    if compact_metrics_supported():
        return CompactCounter(spec.name, spec.description, spec.labels)
    return _counter(spec)


def _compact_histogram(spec: MetricSpec) -> CompactHistogram | Histogram:
    """A histogram on every stage's path: compact unless in multiprocess mode."""
    if compact_metrics_supported():
        return CompactHistogram(spec.name, spec.description, spec.labels, DURATION_BUCKETS)
    return _histogram(spec)


def _bounded_error_type(value: str | None, extra: frozenset[str]) -> str:
    if not value:
        return ""
    if value in KNOWN_ERROR_TYPES or value in extra or value.startswith("stageflow_otel."):
        return value
    return OTHER


class LabelGuard:
    """Bounds metric label values: pipeline names, stage names per pipeline, error types.

    Names beyond the bounds are counted as ``_OTHER``, with one warning per bound, so user
    data and unbounded names never explode a metrics backend's series count. Shared by the
    Prometheus metrics and the OpenTelemetry metrics recorder, so both label alike.

    Args:
        max_stage_names: Distinct stage names per pipeline before ``_OTHER``.
        max_pipeline_names: Distinct pipeline names before ``_OTHER``.
        extra_error_types: More ``error_type`` values to keep as labels.
    """

    def __init__(
        self,
        *,
        max_stage_names: int = 1000,
        max_pipeline_names: int = 200,
        extra_error_types: Iterable[str] = (),
    ) -> None:
        self.max_stage_names = max_stage_names
        self.max_pipeline_names = max_pipeline_names
        self.extra_error_types = frozenset(extra_error_types)
        self._lock = threading.Lock()
        self._stage_names: dict[str, set[str]] = {}
        self._pipeline_names: set[str] = set()
        self._warned: set[str] = set()

    def pipeline_label(self, pipeline: str) -> str:
        """The label value for a pipeline name (bounded)."""
        names = self._pipeline_names
        if pipeline in names:
            return pipeline
        with self._lock:
            if len(names) < self.max_pipeline_names:
                names.add(pipeline)
                return pipeline
        self._warn_once(
            "pipeline",
            "more than %d distinct pipeline names; further ones are counted as _OTHER",
            self.max_pipeline_names,
        )
        return OTHER

    def stage_label(self, pipeline: str, stage: str) -> str:
        """The label value for a stage name of a pipeline (bounded per pipeline)."""
        names = self._stage_names.get(pipeline)
        if names is not None and stage in names:
            return stage
        with self._lock:
            names = self._stage_names.setdefault(pipeline, set())
            if len(names) < self.max_stage_names:
                names.add(stage)
                return stage
        self._warn_once(
            f"stage:{pipeline}",
            "pipeline %r has more than %d distinct stage names; further ones are counted as "
            "_OTHER (raise max_stage_names if that is intended)",
            pipeline,
            self.max_stage_names,
        )
        return OTHER

    def error_type_label(self, error_type: str | None) -> str:
        """The bounded ``error_type`` label value (empty when there was no error)."""
        return _bounded_error_type(error_type, self.extra_error_types)

    def _warn_once(self, key: str, message: str, *args: Any) -> None:
        with self._lock:
            if key in self._warned:
                return
            self._warned.add(key)
        logger.warning(message, *args)


class StageflowMetrics(LabelGuard):
    """Every Prometheus metric of the telemetry contract, registered in ``registry``.

    Args:
        registry: Where the metrics live; a new private registry by default.
        max_stage_names: Distinct stage names per pipeline before ``_OTHER``.
        max_pipeline_names: Distinct pipeline names before ``_OTHER``.
        extra_error_types: More ``error_type`` values to keep as labels.
    """

    def __init__(
        self,
        registry: CollectorRegistry | None = None,
        *,
        max_stage_names: int = 1000,
        max_pipeline_names: int = 200,
        extra_error_types: Iterable[str] = (),
    ) -> None:
        super().__init__(
            max_stage_names=max_stage_names,
            max_pipeline_names=max_pipeline_names,
            extra_error_types=extra_error_types,
        )
        self.registry = registry if registry is not None else CollectorRegistry()
        self._stage_series: dict[tuple[str, str], StageSeries] = {}
        self._interceptor_series: dict[str, Any] = {}
        self.pipeline_runs = _counter(PIPELINE_RUNS)
        self.pipeline_duration = _histogram(PIPELINE_DURATION)
        self.pipeline_active = _gauge(PIPELINE_ACTIVE)
        # Fed by every stage: the compact kind, which keeps a series in one object (and the
        # per-stage ones have a series per stage) and observes without a lock per bucket.
        self.stage_runs = _compact_counter(STAGE_RUNS)
        self.stage_duration = _compact_histogram(STAGE_DURATION)
        self.stage_queue_wait = _compact_histogram(STAGE_QUEUE_WAIT)
        self.stages_active = _gauge(STAGES_ACTIVE)
        self.stage_retries = _counter(STAGE_RETRIES)
        self.interceptor_duration = _histogram(INTERCEPTOR_DURATION)
        self.interceptor_short_circuits = _counter(INTERCEPTOR_SHORT_CIRCUITS)
        self.subpipeline_runs = _counter(SUBPIPELINE_RUNS)
        self.tool_calls = _counter(TOOL_CALLS)
        self.tool_duration = _histogram(TOOL_DURATION)
        self.sink_queue_size = _gauge(SINK_QUEUE_SIZE)
        self.sink_queue_capacity = _gauge(SINK_QUEUE_CAPACITY)
        self.sink_events = _counter(SINK_EVENTS)
        self.sink_export_duration = _histogram(SINK_EXPORT_DURATION)
        self.store_writes = _counter(STORE_WRITES)
        self.store_bytes = _counter(STORE_BYTES)
        self.store_write_duration = _histogram(STORE_WRITE_DURATION)
        self.build_info = _gauge(BUILD_INFO)
        self.build_info.labels(version=package_version()).set(1)
        self._collectors = tuple(
            value
            for value in vars(self).values()
            if isinstance(value, Counter | Gauge | Histogram | CompactCounter | CompactHistogram)
        )
        registered: list[Any] = []
        try:
            for collector in self._collectors:
                self.registry.register(collector)
                registered.append(collector)
        except ValueError as exc:
            for collector in registered:
                self.registry.unregister(collector)
            raise ValueError(
                f"the registry already holds stageflow metrics ({exc}); another Telemetry "
                "registered them: shut it down (uninstrument() for the instrumentor's), or pass "
                "another CollectorRegistry"
            ) from None

    def unregister(self) -> None:
        """Remove these metrics from their registry (a later ``StageflowMetrics`` may use it)."""
        for collector in self._collectors:
            with contextlib.suppress(KeyError):  # already removed
                self.registry.unregister(collector)

    def stage_series(self, pipeline: str, stage: str) -> StageSeries:
        """The series of a stage of a pipeline (``pipeline`` already a bounded label).

        Resolved once per stage: the label guard runs on first sight only.
        """
        key = (pipeline, stage)
        series = self._stage_series.get(key)
        if series is None:
            label = self.stage_label(pipeline, stage)
            series = self._stage_series.get((pipeline, label))
            if series is None:
                series = StageSeries(self, pipeline, label)
                self._stage_series[(pipeline, label)] = series
            if label != OTHER:
                self._stage_series[key] = series
        return series

    def interceptor_series(self, interceptor: str) -> Any:
        """The ``stageflow_interceptor_duration_seconds`` child of an interceptor name."""
        child = self._interceptor_series.get(interceptor)
        if child is None:
            child = self._interceptor_series[interceptor] = self.interceptor_duration.labels(
                interceptor
            )
        return child


class StageSeries:
    """The Prometheus series of one stage of one pipeline, each resolved once.

    Attributes:
        label: The stage's bounded label value (its name, or ``_OTHER``).
    """

    __slots__ = ("_metrics", "_outcomes", "_pipeline", "label")

    def __init__(self, metrics: StageflowMetrics, pipeline: str, label: str) -> None:
        self._metrics = metrics
        self._pipeline = pipeline
        self.label = label
        self._outcomes: dict[tuple[str, str], tuple[Any, Any]] = {}

    def outcome(self, status: str, error_type: str) -> tuple[Any, Any]:
        """``(add_run, observe_duration)`` for a status and error-type label.

        ``add_run(1)`` counts a run in ``stageflow_stage_runs``; ``observe_duration(seconds,
        span_context)`` observes ``stageflow_stage_duration_seconds`` with the span context
        (or ``None``) as its exemplar.
        """
        key = (status, error_type)
        children = self._outcomes.get(key)
        if children is None:
            metrics = self._metrics
            runs = metrics.stage_runs.labels(self._pipeline, self.label, status, error_type)
            durations = metrics.stage_duration.labels(self._pipeline, self.label, status)
            children = (
                adder(runs),
                durations.observe
                if isinstance(metrics.stage_duration, CompactHistogram)
                else _traced_observer(durations),
            )
            self._outcomes[key] = children
        return children


def _traced_observer(child: Any) -> Any:
    """``observe(seconds, span_context)`` on a ``prometheus_client`` histogram child."""

    def observe_duration(amount: float, span_context: Any = None) -> None:
        if span_context is None:
            child.observe(amount)
        else:
            trace_id = format(span_context.trace_id, "032x")
            observe_with_trace(child, amount, trace_id, format(span_context.span_id, "016x"))

    return observe_duration


def adder(child: Any) -> Any:
    """A callable adding to a counter or gauge child, minus ``inc``'s per-call checks.

    ``adder(child)(1)`` is ``child.inc()``; ``adder(gauge_child)(-1)`` is ``dec()``. The checks
    skipped are that the child is a labelled child (it is) and, for a counter, that the amount
    is not negative (ours never is). Falls back to ``inc`` for a child without the layout this
    was written for.
    """
    if isinstance(child, CounterSeries):
        return child.inc
    value = getattr(child, "_value", None)
    inc = getattr(value, "inc", None)
    return inc if callable(inc) else child.inc


def observer(child: Any) -> Callable[[float], None]:
    """A callable observing an amount in a histogram child, minus its per-call checks.

    A compact series' own ``observe``; :func:`observe` for a ``prometheus_client`` child.
    """
    if isinstance(child, HistogramSeries):
        return child.observe
    return functools.partial(observe, child)


def observe(child: Any, amount: float) -> None:
    """``child.observe(amount)`` on a histogram child, minus its per-call checks."""
    try:
        total, bounds, buckets = child._sum, child._upper_bounds, child._buckets
    except AttributeError:
        child.observe(amount)
        return
    total.inc(amount)
    for i, bound in enumerate(bounds):
        if amount <= bound:
            buckets[i].inc(1)
            return


def observe_with_trace(child: Any, amount: float, trace_id: str, span_id: str) -> None:
    """``child.observe(amount, {"trace_id": ..., "span_id": ...})``, minus the per-call checks.

    ``Histogram.observe`` validates the exemplar's label names and length on every call; ours
    are fixed (``trace_id``, ``span_id``, 48 hex digits, well under the 128-character limit),
    so the observation goes straight to the bucket. Falls back to ``observe`` for a histogram
    without the layout this was written for.
    """
    try:
        total, bounds, buckets = child._sum, child._upper_bounds, child._buckets
    except AttributeError:
        child.observe(amount, {"trace_id": trace_id, "span_id": span_id})
        return
    total.inc(amount)
    for i, bound in enumerate(bounds):
        if amount <= bound:
            bucket = buckets[i]
            bucket.inc(1)
            bucket.set_exemplar(
                Exemplar({"trace_id": trace_id, "span_id": span_id}, amount, time.time())
            )
            return


@dataclass
class MetricsServeError(OSError):
    """``/metrics`` cannot be served on an address and port.

    ``errno`` and ``strerror`` are those of the failed bind; the message names the address, the
    port and, when the port came from the environment, the variable.
    """

    def __init__(
        self, address: str, port: int, cause: OSError, *, variable: str | None = None
    ) -> None:
        super().__init__(cause.errno, cause.strerror or str(cause))
        self.address = address
        self.port = port
        self.variable = variable

    def __str__(self) -> str:
        source = f" ({self.variable})" if self.variable else ""
        return f"cannot serve /metrics on {self.address}:{self.port}{source}: {self.strerror}"


@dataclass
class MetricsServer:
    """A running ``/metrics`` endpoint; ``close()`` stops it.

    Attributes:
        fallback_from: The busy default port this server stands in for, if it does.
    """

    host: str
    port: int
    _server: Any
    _thread: threading.Thread
    fallback_from: int | None = None

    @property
    def url(self) -> str:
        """The endpoint's URL."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}/metrics"

    def close(self) -> None:
        """Stop serving and wait for the server thread."""
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()


def serve_metrics(
    port: int = 9464, addr: str = "127.0.0.1", *, registry: CollectorRegistry
) -> MetricsServer:
    """Serve ``registry`` on ``http://addr:port/metrics`` in a daemon thread.

    Binds to 127.0.0.1 unless told otherwise; port 0 picks a free port. OpenMetrics (with
    exemplars) is served to clients that ask for ``application/openmetrics-text``.
    """
    server, thread = start_http_server(port, addr=addr, registry=registry)
    bound_port = int(server.server_address[1])
    return MetricsServer(addr, bound_port, server, thread)
