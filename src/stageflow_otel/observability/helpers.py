"""Telemetry of the helpers (``stageflow_otel.helpers``): span events, attributes, metrics.

The helpers import no telemetry library. They report through the engine's own channels: the
events a stage emits (``guardrail.verdict``, ...), which every run hook sees in the stage's
context. :class:`HelperTelemetry` is the run hook that records them: span events and
attributes on the current stage span, and Prometheus metrics in the registry of the
:class:`~stageflow_otel.observability.Telemetry` it is given. Pass it beside that telemetry's
hooks::

    helpers = HelperTelemetry(telemetry)
    graph = pipeline.build(hooks=(*telemetry.hooks, helpers))
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
import weakref
from collections.abc import Awaitable, Callable
from typing import Any

from opentelemetry import trace
from opentelemetry.metrics import MeterProvider, Observation
from opentelemetry.trace import SpanKind, Status, StatusCode
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from stageflow_otel._version import package_version
from stageflow_otel.core.backpressure import SinkListener
from stageflow_otel.core.context import StageContext
from stageflow_otel.core.errors import qualified_name
from stageflow_otel.core.events import Event
from stageflow_otel.core.seams import RunHook
from stageflow_otel.helpers.guardrails import VERDICT_EVENT
from stageflow_otel.helpers.memory import FETCHED_EVENT, WRITTEN_EVENT
from stageflow_otel.helpers.providers import ChatResponse, ProviderCall
from stageflow_otel.helpers.streaming import ChunkQueue, StreamStatistics
from stageflow_otel.helpers.tracking import MEMORY_EVENT

from . import attributes as attr
from ._otel_metric_recorder import instrument
from .metrics import DURATION_BUCKETS, LabelGuard, MetricSpec
from .records import current_run, current_stage
from .sinks import _SinkMetrics
from .telemetry import Telemetry

__all__ = (
    "GUARDRAIL_FINDINGS",
    "GUARDRAIL_VERDICTS",
    "MEMORY_TURNS",
    "PROVIDER_CALLS",
    "PROVIDER_DURATION",
    "PROVIDER_TOKENS",
    "STAGE_MEMORY_PEAK",
    "STREAM_CHUNKS",
    "STREAM_DURATION",
    "STREAM_FIRST_CHUNK",
    "STREAM_QUEUE_DEPTH",
    "HelperMetrics",
    "HelperTelemetry",
)

logger = logging.getLogger("stageflow_otel.observability")

GUARDRAIL_VERDICTS = MetricSpec(
    "stageflow_guardrail_verdicts", "Verdicts of guardrail checks (pass, redact, fail).",
    ("pipeline", "stage", "check", "verdict"),
)  # fmt: skip
GUARDRAIL_FINDINGS = MetricSpec(
    "stageflow_guardrail_findings", "What guardrail checks found, by kind (email, card, blocked_word, ...).",
    ("pipeline", "stage", "kind"),
)  # fmt: skip

PROVIDER_CALLS = MetricSpec(
    "stageflow_provider_calls", "Calls to model providers (chat, speech, auth) by status.",
    ("operation", "provider", "model", "status"),
)  # fmt: skip
PROVIDER_DURATION = MetricSpec(
    "stageflow_provider_call_duration_seconds", "Wall time of calls to model providers.",
    ("operation", "provider", "model"),
)  # fmt: skip
PROVIDER_TOKENS = MetricSpec(
    "stageflow_provider_tokens", "Tokens of calls to model providers, by token type (input, output).",
    ("operation", "provider", "model", "token_type"),
)  # fmt: skip

STREAM_CHUNKS = MetricSpec(
    "stageflow_stream_chunks", "Chunks of streams by result (offered, delivered, dropped, evicted).",
    ("queue", "result"),
)  # fmt: skip
STREAM_QUEUE_DEPTH = MetricSpec(
    "stageflow_stream_queue_depth", "Chunks waiting in the live stream queues of a name.", ("queue",)
)  # fmt: skip
STREAM_FIRST_CHUNK = MetricSpec(
    "stageflow_stream_first_chunk_seconds", "Time from opening a stream to its first chunk being read.",
    ("queue",),
)  # fmt: skip
STREAM_DURATION = MetricSpec(
    "stageflow_stream_duration_seconds", "Time from opening a stream to its end being read.", ("queue",)
)  # fmt: skip

MEMORY_TURNS = MetricSpec(
    "stageflow_memory_turns", "Conversation turns fetched from and written to memory stores.",
    ("store", "operation"),
)  # fmt: skip

STAGE_MEMORY_PEAK = MetricSpec(
    "stageflow_stage_memory_peak_bytes", "Peak Python memory a measured stage allocated (tracemalloc).",
    ("pipeline", "stage"),
)  # fmt: skip
BYTE_BUCKETS = tuple(float(4**n * 1024) for n in range(11))
"""Buckets of the memory histogram: 1 KiB to 1 GiB, times four each."""

GEN_AI_PROVIDER = "gen_ai.provider.name"
GEN_AI_REQUEST_MODEL = "gen_ai.request.model"
GEN_AI_REQUEST_MAX_TOKENS = "gen_ai.request.max_tokens"
GEN_AI_REQUEST_TEMPERATURE = "gen_ai.request.temperature"
GEN_AI_RESPONSE_MODEL = "gen_ai.response.model"
GEN_AI_RESPONSE_ID = "gen_ai.response.id"
GEN_AI_FINISH_REASONS = "gen_ai.response.finish_reasons"
GEN_AI_INPUT_TOKENS = "gen_ai.usage.input_tokens"
GEN_AI_OUTPUT_TOKENS = "gen_ai.usage.output_tokens"
_REQUEST_PARAMETERS = {
    "max_tokens": GEN_AI_REQUEST_MAX_TOKENS,
    "temperature": GEN_AI_REQUEST_TEMPERATURE,
}

GUARDRAIL_EVENT = "stageflow.guardrail.verdict"
"""The span event of a guardrail verdict."""

MEMORY_STORE = "stageflow.memory.store"
MEMORY_OPERATION = "stageflow.memory.operation"
MEMORY_TURNS_ATTRIBUTE = "stageflow.memory.turns"
MEMORY_CHARS = "stageflow.memory.chars"
_MEMORY_OPERATIONS = {FETCHED_EVENT: "fetch", WRITTEN_EVENT: "write"}

STAGE_MEMORY_PEAK_BYTES = "stageflow.stage.memory.peak_bytes"
STAGE_MEMORY_ALLOCATED_BYTES = "stageflow.stage.memory.allocated_bytes"

STREAM_QUEUE = "stageflow.stream.queue"
STREAM_FIRST_CHUNK_S = "stageflow.stream.first_chunk_s"
STREAM_DURATION_S = "stageflow.stream.duration_s"
STREAM_DELIVERED = "stageflow.stream.delivered"
STREAM_DROPPED = "stageflow.stream.dropped"
STREAM_EVICTED = "stageflow.stream.evicted"


class HelperMetrics:
    """The metrics of the helpers, on ``/metrics`` and optionally through OpenTelemetry.

    Prometheus metrics live in ``registry``; with a ``meter_provider`` the same instruments
    are also recorded through the OpenTelemetry metrics API. Each attribute is a metric whose ``labels(*values)`` gives what to ``inc`` or
    ``observe`` (the queue depth: ``set_function``); with a meter provider it records on both
    paths, under the same names and attributes, as the engine's metrics do.

    Args:
        registry: Where the Prometheus metrics live (the telemetry's registry).
        meter_provider: Also record through this provider (``Telemetry(meter_provider=)``).

    Raises:
        ValueError: ``registry`` already holds them (another ``HelperTelemetry`` registered
            them).
    """

    def __init__(
        self, registry: CollectorRegistry, meter_provider: MeterProvider | None = None
    ) -> None:
        self.registry = registry
        prometheus = {name: _prometheus(spec, kind) for name, (spec, kind) in _SPECS.items()}
        self.collectors: tuple[Counter | Gauge | Histogram, ...] = tuple(prometheus.values())
        """The Prometheus metrics, as registered."""
        mirrored: dict[str, Any] = (
            _mirrored(prometheus, meter_provider) if meter_provider else dict(prometheus)
        )
        self.guardrail_verdicts = mirrored["guardrail_verdicts"]
        self.guardrail_findings = mirrored["guardrail_findings"]
        self.provider_calls = mirrored["provider_calls"]
        self.provider_duration = mirrored["provider_duration"]
        self.provider_tokens = mirrored["provider_tokens"]
        self.memory_turns = mirrored["memory_turns"]
        self.stage_memory_peak = mirrored["stage_memory_peak"]
        self.stream_chunks = mirrored["stream_chunks"]
        self.stream_queue_depth = mirrored["stream_queue_depth"]
        self.stream_first_chunk = mirrored["stream_first_chunk"]
        self.stream_duration = mirrored["stream_duration"]
        registered: list[Any] = []
        try:
            for collector in self.collectors:
                registry.register(collector)
                registered.append(collector)
        except ValueError as exc:
            for collector in registered:
                registry.unregister(collector)
            raise ValueError(
                f"the registry already holds the helper metrics ({exc}); make one "
                "HelperTelemetry per registry and share it between pipelines"
            ) from None

    def unregister(self) -> None:
        """Remove the Prometheus metrics from their registry."""
        for collector in self.collectors:
            with contextlib.suppress(KeyError):
                self.registry.unregister(collector)


class _MirroredSeries:
    """One labelled series on both paths: a Prometheus child and OpenTelemetry attributes."""

    __slots__ = ("_attributes", "_child", "_family")

    def __init__(self, family: _Mirrored, child: Any, attributes: dict[str, str]) -> None:
        self._family = family
        self._child = child
        self._attributes = attributes

    def inc(self, amount: float = 1.0) -> None:
        self._child.inc(amount)
        self._family.instrument.add(amount, self._attributes)

    def observe(self, amount: float) -> None:
        self._child.observe(amount)
        self._family.instrument.record(amount, self._attributes)

    def set_function(self, read: Callable[[], float]) -> None:
        self._child.set_function(read)
        with self._family.lock:
            self._family.readers[tuple(self._attributes.items())] = read


class _Mirrored:
    """A Prometheus metric and the OpenTelemetry instrument of the same name."""

    def __init__(self, prometheus: Any, meter: Any, spec: MetricSpec, kind: str) -> None:
        self.prometheus = prometheus
        self.labelnames = spec.labels
        self.lock = threading.Lock()
        self.readers: dict[tuple[tuple[str, str], ...], Callable[[], float]] = {}
        if kind == "gauge":  # read when collected, as Prometheus reads it when scraped
            self.instrument = meter.create_observable_gauge(
                spec.name, callbacks=[self._observe], description=spec.description
            )
        elif spec is STAGE_MEMORY_PEAK:
            self.instrument = instrument(meter, spec, kind, unit="By", buckets=BYTE_BUCKETS)
        else:
            self.instrument = instrument(meter, spec, kind)

    def labels(self, *values: str) -> _MirroredSeries:
        return _MirroredSeries(
            self, self.prometheus.labels(*values), dict(zip(self.labelnames, values, strict=True))
        )

    def _observe(self, options: Any) -> list[Observation]:
        with self.lock:
            readers = list(self.readers.items())
        return [Observation(read(), dict(key)) for key, read in readers]


_SPECS = {
    "guardrail_verdicts": (GUARDRAIL_VERDICTS, "counter"),
    "guardrail_findings": (GUARDRAIL_FINDINGS, "counter"),
    "provider_calls": (PROVIDER_CALLS, "counter"),
    "provider_duration": (PROVIDER_DURATION, "histogram"),
    "provider_tokens": (PROVIDER_TOKENS, "counter"),
    "memory_turns": (MEMORY_TURNS, "counter"),
    "stage_memory_peak": (STAGE_MEMORY_PEAK, "histogram"),
    "stream_chunks": (STREAM_CHUNKS, "counter"),
    "stream_queue_depth": (STREAM_QUEUE_DEPTH, "gauge"),
    "stream_first_chunk": (STREAM_FIRST_CHUNK, "histogram"),
    "stream_duration": (STREAM_DURATION, "histogram"),
}


def _mirrored(prometheus: dict[str, Any], meter_provider: MeterProvider) -> dict[str, Any]:
    meter = meter_provider.get_meter("stageflow_otel", package_version())
    return {name: _Mirrored(metric, meter, *_SPECS[name]) for name, metric in prometheus.items()}


def _stage_span() -> trace.Span:
    """The span of the stage running here (not an interceptor's inside it), else the current."""
    stage = current_stage.get()
    return stage.span if stage is not None else trace.get_current_span()


def _prometheus(spec: MetricSpec, kind: str) -> Counter | Gauge | Histogram:
    if kind == "counter":
        return Counter(spec.name, spec.description, spec.labels, registry=None)
    if kind == "gauge":
        return Gauge(spec.name, spec.description, spec.labels, registry=None)
    buckets = BYTE_BUCKETS if spec is STAGE_MEMORY_PEAK else DURATION_BUCKETS
    return Histogram(spec.name, spec.description, spec.labels, buckets=buckets, registry=None)


class HelperTelemetry(RunHook):
    """Records what the helpers report: span events, stage-span attributes, spans, metrics.

    What it records, through which seam:

    * helper events (``guardrail.verdict``, ``memory.fetched``, ``memory.written``,
      ``stage.memory``), seen in ``on_event``: span events and attributes on the stage's
      ``stage.run`` span (also when an interceptor's span is current), and counters;
    * provider calls (``around_provider_call``): a GenAI client span each, and counters;
    * stream queues opened with a stage's context (``observe_stream``): chunk counts, the
      queue depth, first-chunk latency and duration;
    * analytics sinks given :meth:`sink_listener`: the ``stageflow_sink_*`` metrics.

    A failure to record is logged and never reaches the pipeline.

    Args:
        telemetry: The telemetry whose tracer, registry and label bounds this shares.
        metrics: Record Prometheus metrics (``False``: spans, span events and attributes only).

    Raises:
        ValueError: The telemetry's registry already holds the helper metrics.
    """

    def __init__(self, telemetry: Telemetry, *, metrics: bool = True) -> None:
        self.telemetry = telemetry
        self.tracer = telemetry.tracer
        self.labels: LabelGuard = telemetry.metrics or LabelGuard()
        self.metrics = (
            HelperMetrics(telemetry.registry, telemetry.meter_provider) if metrics else None
        )
        self._handlers: dict[str, Callable[[Event], None]] = {
            VERDICT_EVENT: self._guardrail_verdict,
            FETCHED_EVENT: self._memory_used,
            WRITTEN_EVENT: self._memory_used,
            MEMORY_EVENT: self._memory_measured,
        }
        self.observed_events = frozenset(self._handlers)
        self._lock = threading.Lock()
        self._queues: dict[str, weakref.WeakSet[ChunkQueue[Any]]] = {}

    def on_event(self, event: Event) -> None:
        """Record a helper's event; other events pass by."""
        handler = self._handlers.get(event.type)
        if handler is None:
            return
        try:
            handler(event)
        except Exception:
            logger.exception("recording the helper event %r failed", event.type)

    def _stage_labels(self, fields: Any) -> tuple[str, str]:
        pipeline = self.labels.pipeline_label(str(fields.get("pipeline", "")))
        return pipeline, self.labels.stage_label(pipeline, str(fields.get("stage", "")))

    # -- guardrails ------------------------------------------------------------------------

    def _guardrail_verdict(self, event: Event) -> None:
        fields = event.fields
        check = str(fields.get("check", ""))
        verdict = str(fields.get("verdict", ""))
        kinds = [str(k) for k in fields.get("kinds", ())]
        span = _stage_span()
        if span.is_recording():
            span.add_event(
                GUARDRAIL_EVENT,
                {
                    "stageflow.guardrail.check": check,
                    "stageflow.guardrail.verdict": verdict,
                    "stageflow.guardrail.findings": int(fields.get("findings", 0)),
                    "stageflow.guardrail.kinds": kinds,
                },
            )
        if self.metrics is not None:
            pipeline, stage = self._stage_labels(fields)
            self.metrics.guardrail_verdicts.labels(pipeline, stage, check, verdict).inc()
            for kind in kinds:
                self.metrics.guardrail_findings.labels(pipeline, stage, kind).inc()

    # -- analytics -------------------------------------------------------------------------

    def sink_listener(self, name: str = "analytics") -> SinkListener | None:
        """A listener that feeds the ``stageflow_sink_*`` metrics of a sink named ``name``.

        Pass it to ``AnalyticsSink(listener=...)`` (with the same ``name``): the sink's
        queue size and capacity, exported and dropped rows and export durations are then
        metrics like the event export's. ``None`` when the telemetry records no metrics.
        """
        metrics = self.telemetry.metrics
        return None if metrics is None else _SinkMetrics(metrics, name)

    # -- memory ----------------------------------------------------------------------------

    def _memory_used(self, event: Event) -> None:
        fields = event.fields
        store = str(fields.get("store", ""))
        operation = _MEMORY_OPERATIONS[event.type]
        turns = int(fields.get("turns", 0))
        span = _stage_span()
        if span.is_recording():
            span.set_attributes(
                {
                    MEMORY_STORE: store,
                    MEMORY_OPERATION: operation,
                    MEMORY_TURNS_ATTRIBUTE: turns,
                    MEMORY_CHARS: int(fields.get("chars", 0)),
                }
            )
        if self.metrics is not None:
            self.metrics.memory_turns.labels(store, operation).inc(turns)

    # -- memory tracking -------------------------------------------------------------------

    def _memory_measured(self, event: Event) -> None:
        fields = event.fields
        peak = int(fields.get("peak_bytes", 0))
        span = _stage_span()
        if span.is_recording():
            span.set_attributes(
                {
                    STAGE_MEMORY_PEAK_BYTES: peak,
                    STAGE_MEMORY_ALLOCATED_BYTES: int(fields.get("allocated_bytes", 0)),
                }
            )
        if self.metrics is not None:
            pipeline, stage = self._stage_labels(fields)
            self.metrics.stage_memory_peak.labels(pipeline, stage).observe(peak)

    # -- provider calls --------------------------------------------------------------------

    async def around_provider_call(
        self, call: ProviderCall, proceed: Callable[[ProviderCall], Awaitable[Any]]
    ) -> Any:
        """Wrap a provider call in a GenAI client span (``chat mock-chat``) and count it."""
        run = current_run.get()
        attributes: dict[str, Any] = dict(run.base_attributes) if run is not None else {}
        attributes[attr.GEN_AI_OPERATION] = call.operation
        attributes[GEN_AI_PROVIDER] = call.provider
        if call.model:
            attributes[GEN_AI_REQUEST_MODEL] = call.model
        if call.stage:
            attributes[attr.STAGE_NAME] = call.stage
        for key, value in call.parameters.items():
            name = _REQUEST_PARAMETERS.get(key)
            if name is not None:
                attributes[name] = value
        name = f"{call.operation} {call.model}" if call.model else call.operation
        span = self.tracer.start_span(name, kind=SpanKind.CLIENT, attributes=attributes)
        started = time.perf_counter()
        status = "cancel"
        result: Any = None
        try:
            with trace.use_span(span, end_on_exit=False, record_exception=False):
                result = await proceed(call)
            status = "ok"
            return result
        except Exception as exc:
            status = "fail"
            span.set_attribute(attr.ERROR_TYPE, qualified_name(exc))
            span.record_exception(exc)
            span.set_status(Status(StatusCode.ERROR, str(exc)))
            raise
        finally:
            try:
                self._provider_call_ended(span, call, status, result, time.perf_counter() - started)
            except Exception:
                logger.exception("recording the provider call %r failed", name)
            finally:
                span.end()

    def _provider_call_ended(
        self, span: trace.Span, call: ProviderCall, status: str, result: Any, duration: float
    ) -> None:
        tokens: tuple[int, int] | None = None
        if isinstance(result, ChatResponse):
            span.set_attributes(
                {
                    GEN_AI_RESPONSE_MODEL: result.model,
                    GEN_AI_RESPONSE_ID: result.response_id,
                    GEN_AI_FINISH_REASONS: [result.finish_reason],
                    GEN_AI_INPUT_TOKENS: result.input_tokens,
                    GEN_AI_OUTPUT_TOKENS: result.output_tokens,
                }
            )
            tokens = (result.input_tokens, result.output_tokens)
        metrics = self.metrics
        if metrics is None:
            return
        labels = (call.operation, call.provider, call.model or "")
        metrics.provider_calls.labels(*labels, status).inc()
        metrics.provider_duration.labels(*labels).observe(duration)
        if tokens is not None:
            metrics.provider_tokens.labels(*labels, "input").inc(tokens[0])
            metrics.provider_tokens.labels(*labels, "output").inc(tokens[1])

    # -- streams ---------------------------------------------------------------------------

    def observe_stream(
        self, name: str, queue: ChunkQueue[Any], ctx: StageContext
    ) -> _StreamRecorder | None:
        """Observe a stream queue opened by a stage: its depth, chunk counts and timings."""
        metrics = self.metrics
        if metrics is not None:
            try:
                self._watch_depth(metrics, name, queue)
            except Exception:
                logger.exception("observing the depth of stream %r failed", name)
        return _StreamRecorder(metrics, name)

    def _watch_depth(self, metrics: HelperMetrics, name: str, queue: ChunkQueue[Any]) -> None:
        with self._lock:
            live = self._queues.get(name)
            if live is None:
                live = self._queues[name] = weakref.WeakSet()
                # Read at scrape time: the depth costs nothing per chunk, and a queue nobody
                # closed stops counting once it is gone.
                metrics.stream_queue_depth.labels(name).set_function(_depth_of(live))
            live.add(queue)


def _depth_of(live: weakref.WeakSet[ChunkQueue[Any]]) -> Callable[[], float]:
    def depth() -> float:
        return float(sum(len(queue) for queue in list(live)))

    return depth


class _StreamRecorder:
    """What ``HelperTelemetry`` does for one stream queue."""

    __slots__ = ("_counters", "_metrics", "name")

    def __init__(self, metrics: HelperMetrics | None, name: str) -> None:
        self._metrics = metrics
        self.name = name
        self._counters: dict[str, Any] = {}

    def chunks_counted(self, result: str, count: int) -> None:
        """Count chunks by result."""
        metrics = self._metrics
        if metrics is None:
            return
        try:
            counter = self._counters.get(result)
            if counter is None:
                counter = self._counters[result] = metrics.stream_chunks.labels(self.name, result)
            counter.inc(count)
        except Exception:
            logger.exception("counting the chunks of stream %r failed", self.name)

    def stream_ended(self, statistics: StreamStatistics) -> None:
        """Put the stream's timings on the reading stage's span; observe them."""
        try:
            self._record_end(statistics)
        except Exception:
            logger.exception("recording the end of stream %r failed", self.name)

    def _record_end(self, statistics: StreamStatistics) -> None:
        span = _stage_span()
        if span.is_recording():
            attributes: dict[str, Any] = {
                STREAM_QUEUE: statistics.name,
                STREAM_DELIVERED: statistics.delivered,
                STREAM_DROPPED: statistics.dropped,
                STREAM_EVICTED: statistics.evicted,
            }
            if statistics.first_chunk_s is not None:
                attributes[STREAM_FIRST_CHUNK_S] = statistics.first_chunk_s
            if statistics.duration_s is not None:
                attributes[STREAM_DURATION_S] = statistics.duration_s
            span.set_attributes(attributes)
        metrics = self._metrics
        if metrics is not None:
            if statistics.first_chunk_s is not None:
                metrics.stream_first_chunk.labels(self.name).observe(statistics.first_chunk_s)
            if statistics.duration_s is not None:
                metrics.stream_duration.labels(self.name).observe(statistics.duration_s)
