"""Cost of the helpers: a chunk through a ``ChunkQueue``, and redacting a text.

1. Microseconds per chunk from a producer task to a consumer task on one event loop, 20,000
   chunks through a queue of 64: anyio's memory object stream (the baseline), ``ChunkQueue``
   alone, and ``ChunkQueue`` observed by ``HelperTelemetry`` (chunk counters, depth gauge).
2. Microseconds per ``PIIDetector.redact`` of a 1 KB text without and with personal data.

Scenarios alternate round after round; the medians are printed with their ratio to the
baseline measured in the same run.

Run: ``python benchmarks/helpers.py [--chunks N] [--rounds N]``.
"""

from __future__ import annotations

import argparse
import gc
import statistics
import time
from collections.abc import Awaitable, Callable

import anyio

from stageflow_otel import Pipeline, StageContext
from stageflow_otel.helpers import ChunkQueue, PIIDetector
from stageflow_otel.observability import HelperTelemetry
from stageflow_otel.testing import in_memory_telemetry


async def through_memory_stream(chunks: int) -> float:
    send, receive = anyio.create_memory_object_stream[int](64)
    started = time.perf_counter()

    async def produce() -> None:
        async with send:
            for i in range(chunks):
                await send.send(i)

    async with anyio.create_task_group() as tg:
        tg.start_soon(produce)
        async with receive:
            async for _ in receive:
                pass
    return time.perf_counter() - started


async def through_queue(chunks: int, ctx: StageContext | None = None) -> float:
    queue: ChunkQueue[int] = ChunkQueue(64, ctx=ctx, name="bench")
    started = time.perf_counter()

    async def produce() -> None:
        for i in range(chunks):
            await queue.put(i)
        queue.close()

    async with anyio.create_task_group() as tg:
        tg.start_soon(produce)
        async for _ in queue:
            pass
    return time.perf_counter() - started


def observed_runner() -> Callable[[int], Awaitable[float]]:
    recorded = in_memory_telemetry(canonical_logs=False)
    helpers = HelperTelemetry(recorded.telemetry)
    elapsed: list[float] = []

    async def stage(ctx: StageContext) -> None:
        elapsed.append(await through_queue(CHUNKS[0], ctx))

    graph = Pipeline("bench").with_stage("relay", stage).build(hooks=(*recorded.hooks, helpers))

    async def run(chunks: int) -> float:
        await graph.run()
        return elapsed.pop()

    return run


CHUNKS = [20_000]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--chunks", type=int, default=20_000)
    parser.add_argument("--rounds", type=int, default=9)
    args = parser.parse_args()
    CHUNKS[0] = args.chunks
    scenarios: dict[str, Callable[[int], Awaitable[float]]] = {
        "anyio memory object stream (baseline)": through_memory_stream,
        "ChunkQueue": through_queue,
        "ChunkQueue + HelperTelemetry": observed_runner(),
    }
    samples: dict[str, list[float]] = {name: [] for name in scenarios}
    for _ in range(args.rounds):
        for name, scenario in scenarios.items():
            gc.collect()
            samples[name].append(anyio.run(scenario, args.chunks) / args.chunks * 1e6)
    baseline = statistics.median(samples["anyio memory object stream (baseline)"])
    print(f"µs per chunk, producer task to consumer task, {args.chunks} chunks, queue of 64:")
    for name, values in samples.items():
        median = statistics.median(values)
        print(f"  {name:<40} {median:7.2f}  ({median / baseline:.2f}x)")

    detector = PIIDetector()
    clean = ("The quick brown fox jumps over the lazy dog. " * 23)[:1024]
    dirty = ("Write to ada@example.com or call +44 20 7946 0958, card 4111 1111 1111 1111. " * 14)[
        :1024
    ]
    texts = {"1 KB without personal data": clean, "1 KB with personal data": dirty}
    timings: dict[str, list[float]] = {name: [] for name in texts}
    for _ in range(args.rounds):
        for name, text in texts.items():
            started = time.perf_counter()
            for _ in range(200):
                detector.redact(text)
            timings[name].append((time.perf_counter() - started) / 200 * 1e6)
    print("µs per PIIDetector.redact:")
    for name, values in timings.items():
        print(f"  {name:<40} {statistics.median(values):7.1f}")


if __name__ == "__main__":
    main()
