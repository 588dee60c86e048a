"""What observing a stage costs: stageflow-otel instrumented against the bare engine and the floor.

Every scenario runs the same 1,000-stage fan-out of no-op stages, built once; the scenarios are
sampled round-robin (A, B, C, ..., A, B, C, ...) in one process, so machine noise hits all of
them alike, and each row is the median of ``--runs`` runs, in µs per stage.

- **fully instrumented**: the contract's spans through a ``BatchSpanProcessor`` into an
  exporter that discards, Prometheus metrics with exemplars, lifecycle events exported as
  OpenTelemetry log records through the backpressure queue into a log exporter that
  discards, and canonical lines unhandled (structlog not configured, the stdlib logger at its
  default level: what a user gets before configuring logging). A run is timed until its events
  are exported (``force_flush``), so the export thread's work counts against it.
- **floor**: what observing one stage minimally costs by hand, in a tight loop of 1,000
  iterations sampled round-robin with the scenarios: one SDK span with 10 attributes made
  current and ended, plus one histogram observation with an exemplar.

Beside the wall time per stage it reports the CPU time per stage of the event loop's thread
(what the pipeline itself pays) and of the whole process (the export threads included), the
cost of an unhandled canonical line, where an instrumented stage's time goes, part by part,
and how the cost per stage holds at 10,000 stages.

Targets: fully instrumented <= 1.2 x (bare + floor); spans + metrics <= 1.0 x (bare + floor);
an unhandled canonical line <= 2 µs per stage; 10,000 stages <= 1.3 x the cost per stage at
1,000. Compare with stageflow-core in ``benchmarks/peers.py``.

The scenarios are measured in ``--processes`` fresh processes one after the other (3 by
default): how the threads of one process land on the cores moves the threaded scenarios by a
few µs, so the table shows the median across processes of each process's medians, and each
ratio is the median of the ratios measured within each process (all of them are printed).

Run: ``make bench`` or ``.venv/bin/python benchmarks/telemetry.py [--runs N] [--processes K]``.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import logging
import statistics
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import structlog
from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.sdk._logs.export import LogRecordExporter, LogRecordExportResult
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult
from prometheus_client import CollectorRegistry, Histogram

from stageflow_otel import Pipeline, StageContext, StageOutput
from stageflow_otel.core import BaseInterceptor, CallNext, RunCall, RunHook, StageCall
from stageflow_otel.observability import Telemetry
from stageflow_otel.observability.metrics import observe_with_trace

STAGES = 1000
FLOOR = "floor: 1 current SDK span, 10 attributes, 1 exemplar"
LARGE = 10_000
OK = StageOutput.ok()


class NullSpanExporter(SpanExporter):
    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        return SpanExportResult.SUCCESS


class NullLogExporter(LogRecordExporter):
    def __init__(self) -> None:
        self.records = 0

    def export(self, batch: Sequence[object]) -> LogRecordExportResult:
        self.records += len(batch)
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


@dataclass
class Cost:
    """Medians per stage, in µs: wall time, the loop thread's CPU, the process's CPU."""

    wall: float
    loop_cpu: float
    cpu: float


async def interleaved(
    runs: Mapping[str, Callable[[], Awaitable[object]]], stages: int, rounds: int
) -> dict[str, Cost]:
    """Median cost per stage of each scenario, sampled round-robin."""
    samples: dict[str, list[tuple[float, float, float]]] = {name: [] for name in runs}
    for run in runs.values():
        await run()  # warm-up: series resolved, threads started
    for _ in range(rounds):
        for name, run in runs.items():
            gc.collect()
            wall, loop_cpu, cpu = time.perf_counter(), time.thread_time(), time.process_time()
            await run()
            samples[name].append(
                (
                    (time.perf_counter() - wall) / stages * 1e6,
                    (time.thread_time() - loop_cpu) / stages * 1e6,
                    (time.process_time() - cpu) / stages * 1e6,
                )
            )
    return {
        name: Cost(*(statistics.median(values[i] for values in taken) for i in range(3)))
        for name, taken in samples.items()
    }


def floor(provider: TracerProvider, iterations: int) -> Callable[[], Awaitable[None]]:
    """One current SDK span with 10 attributes + one histogram observation with exemplar.

    ``iterations`` times in a tight loop: sampled round-robin with the scenarios, divided by
    the same count, it gives the floor per stage.
    """
    tracer = provider.get_tracer("floor")
    histogram = Histogram("floor_seconds", "floor", ("a",), registry=CollectorRegistry())
    child = histogram.labels("x")
    attributes = {f"attr.{i}": i for i in range(10)}

    async def run() -> None:
        for _ in range(iterations):
            span = tracer.start_span("floor", attributes=attributes)
            token = otel_context.attach(trace.set_span_in_context(span))
            otel_context.detach(token)
            span.end()
            context = span.get_span_context()
            observe_with_trace(
                child, 0.001, format(context.trace_id, "032x"), format(context.span_id, "016x")
            )

    return run


class Scenarios:
    """The graphs of the benchmark, on one tracer provider."""

    def __init__(self, stages: int) -> None:
        self.provider = TracerProvider()
        self.provider.add_span_processor(
            BatchSpanProcessor(NullSpanExporter(), max_queue_size=20 * stages + 1000)
        )
        self.pipeline = fan_out(stages)
        self.log_exporter = NullLogExporter()
        self.full = self.telemetry(
            canonical_logs=True,
            event_exporter=self.log_exporter,
            sink_options={"max_queue_size": 4 * stages + 1000},
        )

    def telemetry(self, **options: Any) -> Telemetry:
        options.setdefault("canonical_logs", False)
        return Telemetry(tracer_provider=self.provider, registry=CollectorRegistry(), **options)

    def flushed(self, telemetry: Telemetry, **build: Any) -> Callable[[], Awaitable[None]]:
        graph = self.pipeline.build(hooks=telemetry.hooks, event_sink=telemetry.event_sink, **build)

        async def run() -> None:
            await graph.run()
            telemetry.force_flush()

        return run


def dropped(telemetry: Telemetry) -> int:
    statistics_of = getattr(telemetry.event_sink, "statistics", None)
    return int(statistics_of().dropped) if statistics_of is not None else 0


async def measure(rounds: int) -> dict[str, Any]:
    """Every scenario's median cost per stage, in this process: ``{"costs": ..., ...}``."""
    logging.getLogger("stageflow_otel").setLevel(logging.NOTSET)  # the default users get
    structlog.reset_defaults()  # structlog unconfigured: canonical lines go to stdlib logging
    s = Scenarios(STAGES)
    bare = s.pipeline.build(hooks=[])
    spans_only = s.telemetry(metrics=False)
    spans_metrics = s.telemetry()
    with_lines = s.telemetry(canonical_logs=True)
    one_span = s.pipeline.build(hooks=[OneSpanPerStage(s.provider.get_tracer("reference"))])
    scenarios: dict[str, Callable[[], Awaitable[object]]] = {
        FLOOR: floor(s.provider, STAGES),
        "bare engine": bare.run,
        "reference: one current SDK span per stage": one_span.run,
        "spans (contract attributes, links, ids)": s.pipeline.build(hooks=spans_only.hooks).run,
        "spans + metrics": s.pipeline.build(hooks=spans_metrics.hooks).run,
        "spans + metrics + canonical lines (unhandled)": s.pipeline.build(
            hooks=with_lines.hooks
        ).run,
        "fully instrumented": s.flushed(s.full),
        "  + 1 interceptor, with its span": s.flushed(s.full, interceptors=[PassThrough()]),
        "bare engine + 1 interceptor": s.pipeline.build(hooks=[], interceptors=[PassThrough()]).run,
    }
    costs = await interleaved(scenarios, STAGES, rounds)
    s.full.shutdown()
    return {
        "costs": {name: [c.wall, c.loop_cpu, c.cpu] for name, c in costs.items()},
        "exported": s.log_exporter.records,
        "dropped": dropped(s.full),
    }


async def scaling(rounds: int) -> tuple[float, float, int]:
    """µs per stage, fully instrumented, at 1,000 and at 10,000 stages; events dropped."""
    small, large = Scenarios(STAGES), Scenarios(LARGE)
    costs = await interleaved(
        {"1,000": small.flushed(small.full), "10,000": large.flushed(large.full)},
        1,  # per run; divided below
        max(3, rounds // 4),
    )
    small.full.shutdown()
    large.full.shutdown()
    lost = dropped(small.full) + dropped(large.full)
    return costs["1,000"].wall / STAGES, costs["10,000"].wall / LARGE, lost


def in_processes(rounds: int, processes: int) -> list[dict[str, Any]]:
    """:func:`measure` in ``processes`` fresh processes, one after the other."""
    taken = []
    for _ in range(processes):
        out = subprocess.run(
            [sys.executable, __file__, "--runs", str(rounds), "--measure"],
            check=True,
            capture_output=True,
            text=True,
        ).stdout
        taken.append(json.loads(out))
    return taken


def report(taken: list[dict[str, Any]], rounds: int, scale: tuple[float, float, int]) -> None:
    """The table (medians across processes of each process's medians) and the ratios."""
    names = list(taken[0]["costs"])
    costs = {
        name: Cost(*(statistics.median(t["costs"][name][i] for t in taken) for i in range(3)))
        for name in names
    }

    def ratios(scenario: str) -> list[float]:
        return [
            t["costs"][scenario][0] / (t["costs"]["bare engine"][0] + t["costs"][FLOOR][0])
            for t in taken
        ]

    width = max(map(len, names))
    print(
        f"{'scenario':<{width}}   wall  loop CPU  all CPU   µs per stage ({STAGES}-stage "
        f"fan-out; medians of {rounds} interleaved runs, median of {len(taken)} processes)"
    )
    for name, cost in costs.items():
        print(f"{name:<{width}} {cost.wall:6.2f}  {cost.loop_cpu:8.2f}  {cost.cpu:7.2f}")
    t_bare = costs["bare engine"].wall
    full = costs["fully instrumented"].wall
    spans_metrics_cost = costs["spans + metrics"].wall
    line = costs["spans + metrics + canonical lines (unhandled)"].wall - spans_metrics_cost
    per_stage_small, per_stage_large, lost = scale
    print()
    for label, scenario, goal in (
        ("fully instrumented / (bare + floor)", "fully instrumented", "1.20"),
        ("spans + metrics / (bare + floor)   ", "spans + metrics", "1.00"),
    ):
        each = ratios(scenario)
        listed = " ".join(f"{r:.2f}" for r in each)
        print(
            f"{label} = {statistics.median(each):5.2f}   (target <= {goal}; per process: {listed})"
        )
    print(f"an unhandled canonical line         = {line:5.2f} µs per stage (target <= 2)")
    print(
        f"10,000 stages / 1,000 stages        = {per_stage_large / per_stage_small:5.2f}   "
        f"(target <= 1.30; {per_stage_small:.1f} and {per_stage_large:.1f} µs per stage)"
    )
    exported = sum(t["exported"] for t in taken)
    print(f"event records exported: {exported}, dropped: {sum(t['dropped'] for t in taken) + lost}")
    print()
    print("where a fully instrumented stage's time goes (µs, wall):")
    t_spans = costs["spans (contract attributes, links, ids)"].wall
    t_one = costs["reference: one current SDK span per stage"].wall
    for label, value in (
        ("the bare engine", t_bare),
        ("its span (ContractSpan, made current)", t_spans - t_bare),
        ("  (for comparison: one current SDK span, 2 attributes)", t_one - t_bare),
        ("Prometheus metrics with exemplars", spans_metrics_cost - t_spans),
        ("canonical lines, unhandled", line),
        ("two lifecycle events, exported as OTel log records", full - spans_metrics_cost - line),
        (
            "an interceptor with its span",
            costs["  + 1 interceptor, with its span"].wall - full,
        ),
    ):
        print(f"  {label:<56} {value:7.2f}")
    print(f"python {sys.version.split()[0]}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=25, help="interleaved runs per scenario")
    parser.add_argument(
        "--processes",
        type=int,
        default=3,
        help="fresh processes to measure in, one after the other (1: this one)",
    )
    parser.add_argument("--measure", action="store_true", help=argparse.SUPPRESS)
    arguments = parser.parse_args()
    if arguments.measure:  # one process's medians, as JSON, for the parent
        print(json.dumps(asyncio.run(measure(arguments.runs))))
        sys.exit(0)
    if arguments.processes > 1:
        taken = in_processes(arguments.runs, arguments.processes)
    else:
        taken = [asyncio.run(measure(arguments.runs))]
    report(taken, arguments.runs, asyncio.run(scaling(arguments.runs)))
