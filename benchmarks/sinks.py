"""Cost of the backpressure queue: per ``try_emit``, and on a 10,000-stage fan-out run.

1. Nanoseconds per ``try_emit``: accepted into the queue, and dropped (queue full), next to
   the engine's in-memory sinks.
2. A 10,000-stage fan-out run (20,002 events) with no sink, with a ``NoOpEventSink`` (what
   producing the events costs the engine), with a ``BackpressureAwareEventSink`` over a fast
   batch exporter, over a fast async sink (one awaited ``emit`` per event on the worker's
   loop), and over a stalled exporter (every event dropped once the queue is full). Target:
   stalled at most 1.05 times fast.

Run: ``python benchmarks/sinks.py [--stages N] [--runs N]``.
"""

from __future__ import annotations

import argparse
import gc
import logging
import statistics
import sys
import threading
import time
from collections.abc import Callable, Sequence

import anyio

from stageflow_otel import Pipeline, StageContext, StageOutput
from stageflow_otel.core import (
    BackpressureAwareEventSink,
    CollectingEventSink,
    EventSink,
    NoOpEventSink,
    QueuedEvent,
    StageGraph,
)

OK = StageOutput.ok()
CALLS = 200_000
REPEATS = 5


class CountingExporter:
    """A fast exporter: counts what it receives."""

    def __init__(self) -> None:
        self.count = 0

    def export(self, batch: Sequence[QueuedEvent], /) -> bool:
        self.count += len(batch)
        return True


class StalledExporter:
    """An exporter that never returns until released (a hung collector)."""

    def __init__(self) -> None:
        self.entered = threading.Event()
        self.release = threading.Event()

    def export(self, batch: Sequence[QueuedEvent], /) -> bool:
        self.entered.set()
        self.release.wait()
        return True


async def noop_stage(ctx: StageContext) -> StageOutput:
    return OK


def fan_out(n: int) -> StageGraph:
    pipeline = Pipeline("b")
    for i in range(n):
        pipeline = pipeline.with_stage(f"s{i}", noop_stage)
    return pipeline.build()


def ns_per_call(emit: Callable[..., None]) -> float:
    data = {"stage": "s", "status": "ok"}
    samples = []
    gc.disable()  # as timeit does: the accepted case keeps a million events alive
    try:
        for _ in range(REPEATS):
            start = time.perf_counter_ns()
            for _ in range(CALLS):
                emit(type="stage.completed", data=data)
            samples.append((time.perf_counter_ns() - start) / CALLS)
    finally:
        gc.enable()
    return statistics.median(samples)


def loop_overhead_ns() -> float:
    def nothing(*, type: str, data: object) -> None:
        return None

    return ns_per_call(nothing)


def stalled_sink(**options: object) -> tuple[BackpressureAwareEventSink, StalledExporter]:
    """A sink whose worker is stuck in an export: nothing leaves its queue any more."""
    exporter = StalledExporter()
    sink = BackpressureAwareEventSink(
        exporter,
        max_batch_size=1,
        name="stalled",
        **options,  # type: ignore[arg-type]
    )
    sink.try_emit(type="plug", data={})  # a full batch: the worker takes it and hangs
    if not exporter.entered.wait(5):
        raise RuntimeError("the worker did not start exporting")
    return sink, exporter


def per_call() -> None:
    print(
        f"try_emit, ns per call (median of {REPEATS} x {CALLS:,} calls, minus the cost of "
        "calling an empty function)"
    )
    base = loop_overhead_ns()
    rows: list[tuple[str, float]] = [
        ("NoOpEventSink", ns_per_call(NoOpEventSink().try_emit) - base),
    ]
    collecting = CollectingEventSink()
    rows.append(("CollectingEventSink", ns_per_call(collecting.try_emit) - base))
    collecting.clear()

    # Accepted: a queue big enough for every call, its worker hung, so each call appends.
    sink, exporter = stalled_sink(max_queue_size=REPEATS * CALLS + 10)
    rows.append(("BackpressureAware, accepted", ns_per_call(sink.try_emit) - base))
    # Accepted while the worker exports concurrently (GIL shared with a busy export thread).
    fast = BackpressureAwareEventSink(CountingExporter(), max_queue_size=1 << 20, name="fast")
    rows.append(("BackpressureAware, accepted, exporting", ns_per_call(fast.try_emit) - base))
    # Dropped: the queue is full and stays full.
    full, full_exporter = stalled_sink(max_queue_size=1)
    full.try_emit(type="fill", data={})
    rows.append(("BackpressureAware, dropped (queue full)", ns_per_call(full.try_emit) - base))
    oldest, oldest_exporter = stalled_sink(max_queue_size=1, policy="drop_oldest")
    oldest.try_emit(type="fill", data={})
    rows.append(("BackpressureAware, dropped (drop_oldest)", ns_per_call(oldest.try_emit) - base))
    for name, ns in rows:
        print(f"  {name:<44} {ns:8.0f}")
    for stalled, stalled_exporter in (
        (sink, exporter),
        (full, full_exporter),
        (oldest, oldest_exporter),
    ):
        stalled_exporter.release.set()
        stalled.shutdown(timeout=5)
    fast.shutdown(timeout=5)
    print()


async def timed_run(graph: StageGraph, sink: EventSink | None) -> float:
    gc.collect()
    start = time.perf_counter()
    await graph.run(event_sink=sink)
    return time.perf_counter() - start


async def pipeline_runs(stages: int, runs: int) -> None:
    graph = fan_out(stages)
    events = 2 * stages + 2
    fast_exporter = CountingExporter()
    fast = BackpressureAwareEventSink(fast_exporter, name="fast")
    fast_async = BackpressureAwareEventSink(NoOpEventSink(), name="fast_async")
    stalled_exporter = StalledExporter()
    stalled = BackpressureAwareEventSink(stalled_exporter, name="stalled")
    configs: dict[str, EventSink | None] = {
        "no sink": None,
        "NoOp sink": NoOpEventSink(),
        "fast": fast,
        "fast async": fast_async,
        "stalled": stalled,
    }
    samples: dict[str, list[float]] = {name: [] for name in configs}
    for sink in configs.values():  # warm-up; fills the stalled queue
        await timed_run(graph, sink)
    names = list(configs)
    for i in range(runs):
        shift = i % len(names)
        for name in names[shift:] + names[:shift]:  # rotate the order between rounds
            samples[name].append(await timed_run(graph, configs[name]))

    print(f"{stages:,}-stage fan-out, {events:,} events per run; median of {runs} runs")
    base = statistics.median(samples["no sink"])
    noop = statistics.median(samples["NoOp sink"])
    for name in names:
        median = statistics.median(samples[name])
        spread = f"{min(samples[name]) * 1e3:7.1f} .. {max(samples[name]) * 1e3:7.1f}"
        print(
            f"  {name:<10} {median * 1e3:8.1f} ms  ({median / stages * 1e6:5.1f} µs/stage, "
            f"range {spread} ms)  x{median / base:.3f} vs no sink, x{median / noop:.3f} vs NoOp"
        )
    ratio = statistics.median(samples["stalled"]) / statistics.median(samples["fast"])
    verdict = "within" if ratio <= 1.05 else "OVER"
    print(f"  stalled / fast = {ratio:.3f} ({verdict} the 1.05 target)")
    fast.force_flush(timeout=10)
    fast_async.force_flush(timeout=10)
    f, a, s = fast.statistics(), fast_async.statistics(), stalled.statistics()
    print(
        f"  fast sink:    exported {f.exported:,}, dropped (queue full) {f.dropped_queue_full:,}, "
        f"batches {f.export_batches:,}"
    )
    print(
        f"  fast async:   exported {a.exported:,}, dropped (queue full) {a.dropped_queue_full:,}, "
        f"batches {a.export_batches:,}"
    )
    print(
        f"  stalled sink: exported {s.exported:,}, dropped (queue full) {s.dropped_queue_full:,}, "
        f"queued {s.queue_size:,}, in flight {s.in_flight:,}"
    )
    stalled_exporter.release.set()
    for sink in (fast, fast_async, stalled):
        sink.shutdown(timeout=10)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--stages", type=int, default=10_000)
    parser.add_argument("--runs", type=int, default=9)
    args = parser.parse_args(argv)
    # The drop warning is rate limited anyway; keep the benchmark output clean.
    logging.getLogger("stageflow_otel.events.backpressure").setLevel(logging.ERROR)
    print(f"Python {sys.version.split()[0]}, anyio backend asyncio")
    per_call()
    anyio.run(pipeline_runs, args.stages, args.runs)


if __name__ == "__main__":
    main()
