"""Per-stage cost of full instrumentation, against the bare engine and the floor.

Fully instrumented = spans through a BatchSpanProcessor into a null exporter, Prometheus
metrics (with exemplars), and lifecycle events into an OpenTelemetry log event sink whose
exporter discards; a fully instrumented run is timed until its events are exported
(``force_flush``), so the export thread's work counts against the run that caused it. The
floor is what one stage minimally costs to observe by hand: one SDK span with 10 attributes
plus one histogram observation. Target: instrumented <= 1.3 x (bare engine + floor).

The reference row is a hand-written hook doing only what any stage tracing must: start one
SDK span per stage (two attributes), make it current while the stage runs, end it. It shows
what the SDK's span costs inside a running engine, next to the floor measured in a tight loop.
Run: ``python benchmarks/telemetry.py``.
"""

from __future__ import annotations

import asyncio
import gc
import statistics
import sys
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.sdk._logs.export import LogRecordExporter, LogRecordExportResult
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult
from prometheus_client import CollectorRegistry, Histogram

from stageflow_otel import Pipeline, StageContext, StageOutput
from stageflow_otel.core import BaseInterceptor, CallNext, RunCall, RunHook, StageCall
from stageflow_otel.observability import Telemetry

STAGES = 1000
RUNS = 25
OK = StageOutput.ok()


class NullSpanExporter(SpanExporter):
    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        return SpanExportResult.SUCCESS


class NullLogExporter(LogRecordExporter):
    def export(self, batch: Sequence[object]) -> LogRecordExportResult:
        return LogRecordExportResult.SUCCESS

    def shutdown(self) -> None:
        return None

    def force_flush(self, timeout_millis: int = 30_000) -> bool:
        return True


class PassThrough(BaseInterceptor):
    name = "pass_through"


class OneSpanPerStage(RunHook):
    """The least any stage tracing does: one current SDK span per run and per stage."""

    def __init__(self, tracer: trace.Tracer) -> None:
        self.tracer = tracer

    async def around_run(self, run: RunCall, proceed: Callable[[], Awaitable[Any]]) -> Any:
        span = self.tracer.start_span(f"pipeline.run {run.pipeline}")
        token = otel_context.attach(trace.set_span_in_context(span))
        try:
            return await proceed()
        finally:
            otel_context.detach(token)
            span.end()

    async def around_stage(self, call: StageCall, proceed: CallNext) -> StageOutput:
        span = self.tracer.start_span(
            f"stage.run {call.stage}",
            attributes={
                "stageflow.pipeline.name": call.pipeline,
                "stageflow.stage.name": call.stage,
            },
        )
        token = otel_context.attach(trace.set_span_in_context(span))
        try:
            return await proceed(call)
        finally:
            otel_context.detach(token)
            span.end()


async def noop_stage(ctx: StageContext) -> StageOutput:
    return OK


def fan_out(n: int) -> Pipeline:
    pipeline = Pipeline("bench")
    for i in range(n):
        pipeline = pipeline.with_stage(f"s{i}", noop_stage)
    return pipeline


async def interleaved_medians(
    runs: dict[str, Callable[[], Awaitable[object]]], n: int
) -> dict[str, float]:
    """Median µs/stage of each scenario, sampled round-robin so machine noise hits all alike."""
    samples: dict[str, list[float]] = {name: [] for name in runs}
    for run in runs.values():
        await run()  # warm-up
    for _ in range(RUNS):
        for name, run in runs.items():
            gc.collect()
            start = time.perf_counter()
            await run()
            samples[name].append((time.perf_counter() - start) / n * 1e6)
    return {name: statistics.median(values) for name, values in samples.items()}


def floor_us(provider: TracerProvider) -> float:
    tracer = provider.get_tracer("floor")
    histogram = Histogram("floor_seconds", "floor", ("a",), registry=CollectorRegistry())
    child = histogram.labels("x")
    attrs = {f"attr.{i}": i for i in range(10)}
    samples = []
    for _ in range(7):
        start = time.perf_counter()
        for _ in range(5000):
            span = tracer.start_span("floor", attributes=attrs)
            span.end()
            child.observe(0.001)
        samples.append((time.perf_counter() - start) / 5000 * 1e6)
    return statistics.median(samples)


async def main() -> None:
    provider = TracerProvider()
    provider.add_span_processor(BatchSpanProcessor(NullSpanExporter(), max_queue_size=200_000))
    pipeline = fan_out(STAGES)
    bare = pipeline.build(hooks=[])
    telemetry = Telemetry(
        tracer_provider=provider,
        registry=CollectorRegistry(),
        canonical_logs=False,
        event_exporter=NullLogExporter(),
        sink_options={"max_queue_size": 8192},
    )
    instrumented = pipeline.build(hooks=telemetry.hooks, event_sink=telemetry.event_sink)
    with_interceptor = pipeline.build(
        hooks=telemetry.hooks, event_sink=telemetry.event_sink, interceptors=[PassThrough()]
    )

    async def instrumented_run() -> None:
        await instrumented.run()
        telemetry.force_flush()

    async def with_interceptor_run() -> None:
        await with_interceptor.run()
        telemetry.force_flush()

    one_span = pipeline.build(hooks=[OneSpanPerStage(provider.get_tracer("reference"))])
    no_interceptor_spans = Telemetry(
        tracer_provider=provider,
        registry=CollectorRegistry(),
        canonical_logs=False,
        interceptor_spans=False,
    )
    with_interceptor_no_spans = pipeline.build(
        hooks=no_interceptor_spans.hooks, interceptors=[PassThrough()]
    )
    bare_interceptor = pipeline.build(hooks=[], interceptors=[PassThrough()])
    logs_on = Telemetry(tracer_provider=provider, registry=CollectorRegistry(), canonical_logs=True)
    with_logs = pipeline.build(hooks=logs_on.hooks)

    spans_metrics = Telemetry(
        tracer_provider=provider, registry=CollectorRegistry(), canonical_logs=False
    )
    with_spans_metrics = pipeline.build(hooks=spans_metrics.hooks)
    spans_only = Telemetry(
        tracer_provider=provider, registry=CollectorRegistry(), canonical_logs=False, metrics=False
    )
    with_spans_only = pipeline.build(hooks=spans_only.hooks)

    floor = floor_us(provider)
    medians = await interleaved_medians(
        {
            "bare engine": bare.run,
            "reference: one current SDK span per stage, nothing else": one_span.run,
            "spans (all contract attributes, no metrics, no event sink)": with_spans_only.run,
            "spans + metrics (no event sink)": with_spans_metrics.run,
            "fully instrumented (spans, metrics, events -> OTel log sink)": instrumented_run,
            "  + 1 interceptor with its span": with_interceptor_run,
            "  + 1 interceptor, interceptor spans off (no event sink)": (
                with_interceptor_no_spans.run
            ),
            "bare engine + 1 interceptor": bare_interceptor.run,
        },
        STAGES,
    )
    import structlog

    structlog.configure(logger_factory=structlog.ReturnLoggerFactory())
    logs = await interleaved_medians({"with_logs": with_logs.run}, STAGES)
    telemetry.shutdown()

    rows = [("floor (1 SDK span + 10 attrs + 1 histogram observe)", floor), *medians.items()]
    rows.append(("spans + metrics + canonical structlog lines (ReturnLogger)", logs["with_logs"]))
    t_bare = medians["bare engine"]
    t_full = medians["fully instrumented (spans, metrics, events -> OTel log sink)"]
    t_icpt = medians["  + 1 interceptor with its span"]
    t_span = medians["reference: one current SDK span per stage, nothing else"]
    width = max(len(r[0]) for r in rows)
    print(
        f"{'scenario':<{width}}  µs/stage  ({STAGES}-stage fan-out, median of {RUNS} "
        "interleaved runs)"
    )
    for label, value in rows:
        print(f"{label:<{width}}  {value:8.2f}")
    target = t_bare + floor
    print()
    print(f"instrumented / (bare + floor) = {t_full / target:.2f}  (target <= 1.30)")
    print(f"reference / (bare + floor)    = {t_span / target:.2f}")
    print(f"interceptor span cost on top   = {t_icpt - t_full:.2f} µs/stage")
    t_spans = medians["spans (all contract attributes, no metrics, no event sink)"]
    t_metrics = medians["spans + metrics (no event sink)"]
    print()
    print(f"where an instrumented stage's time goes (µs; the target allows {1.3 * target:.2f}):")
    for label, value in (
        ("bare engine", t_bare),
        ("one current SDK span", t_span - t_bare),
        ("the contract's other span attributes, links, ids", t_spans - t_span),
        ("Prometheus metrics with exemplars", t_metrics - t_spans),
        ("two lifecycle events, exported as OTel log records", t_full - t_metrics),
    ):
        print(f"  {label:<52} {value:7.2f}")
    print(f"python {sys.version.split()[0]}")


if __name__ == "__main__":
    asyncio.run(main())
