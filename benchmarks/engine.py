"""Per-stage overhead of the engine, beside a bare-asyncio floor measured in the same run.

Run with ``python benchmarks/engine.py``. Every stage is a no-op ``async def`` returning one
shared ``StageOutput.ok()``; graphs are built before timing, runs use no hooks, sinks or
interceptors, so the numbers are the scheduler's own cost. Each figure is the median of several
runs, each preceded by ``gc.collect()``.
"""

from __future__ import annotations

import asyncio
import gc
import os
import platform
import statistics
import time
import tracemalloc
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from stageflow_otel import Pipeline, StageContext, StageOutput
from stageflow_otel.core import StageGraph

OK = StageOutput.ok()


async def noop_stage(ctx: StageContext) -> StageOutput:
    return OK


async def noop_coroutine() -> StageOutput:
    return OK


@dataclass(frozen=True)
class Row:
    scenario: str
    stages: int
    runs: int
    median_ms: float

    @property
    def us_per_stage(self) -> float:
        return self.median_ms * 1000 / self.stages


def fan_out(n: int) -> Pipeline:
    pipeline = Pipeline(f"fanout-{n}")
    for i in range(n):
        pipeline = pipeline.with_stage(f"s{i}", noop_stage)
    return pipeline


def chain(n: int) -> Pipeline:
    pipeline = Pipeline(f"chain-{n}")
    for i in range(n):
        pipeline = pipeline.with_stage(
            f"s{i}", noop_stage, dependencies=[f"s{i - 1}"] if i else None
        )
    return pipeline


def compile_graph(pipeline: Pipeline) -> StageGraph:
    return pipeline.build(hooks=[])


async def median_ms(
    action: Callable[[], Awaitable[object]], runs: int, *, collector: bool = True
) -> float:
    """Median wall time of ``action``; ``collector=False`` keeps the cyclic GC off while timing."""
    await action()  # warm-up
    samples: list[float] = []
    for _ in range(runs):
        gc.collect()
        if not collector:
            gc.disable()
        try:
            start = time.perf_counter()
            await action()
            samples.append((time.perf_counter() - start) * 1000)
        finally:
            gc.enable()
    return statistics.median(samples)


def floor_action(n: int) -> Callable[[], Awaitable[object]]:
    async def gather_tasks() -> object:
        return await asyncio.gather(*[asyncio.create_task(noop_coroutine()) for _ in range(n)])

    return gather_tasks


async def engine_row(
    scenario: str, pipeline: Pipeline, runs: int, *, collector: bool = True
) -> Row:
    graph = compile_graph(pipeline)
    return Row(scenario, len(graph), runs, await median_ms(graph.run, runs, collector=collector))


async def peak_bytes_per_stage(graph: StageGraph) -> float:
    gc.collect()
    tracemalloc.start()
    try:
        baseline, _ = tracemalloc.get_traced_memory()
        tracemalloc.reset_peak()
        await graph.run()
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    return (peak - baseline) / len(graph)


def timed_ms(action: Callable[[], object], runs: int) -> float:
    samples: list[float] = []
    for _ in range(runs):
        gc.collect()
        start = time.perf_counter()
        action()
        samples.append((time.perf_counter() - start) * 1000)
    return statistics.median(samples)


def verdict(value: float, target: float) -> str:
    return "ok" if value <= target else "OVER"


async def main() -> None:
    print(
        f"stageflow-otel engine benchmark: CPython {platform.python_version()}, asyncio, "
        f"{os.cpu_count()} CPUs, {platform.machine()}"
    )
    big = 100_000
    start = time.perf_counter()
    big_pipeline = fan_out(big)
    declare_ms = (time.perf_counter() - start) * 1000
    build_ms = timed_ms(lambda: compile_graph(big_pipeline), runs=3)

    rows = [
        Row("bare asyncio floor, 1,000 tasks", 1000, 31, await median_ms(floor_action(1000), 31)),
        await engine_row("fan-out 1,000", fan_out(1000), 31),
        await engine_row("chain 100", chain(100), 51),
        Row("bare asyncio floor, 100,000 tasks", big, 5, await median_ms(floor_action(big), 5)),
        await engine_row("fan-out 100,000", big_pipeline, 5),
        await engine_row("fan-out 1,000, gc off while timing", fan_out(1000), 31, collector=False),
        await engine_row("fan-out 100,000, gc off while timing", big_pipeline, 5, collector=False),
    ]
    floor_1k, fan_1k, _, floor_100k, fan_100k, fan_1k_nogc, fan_100k_nogc = rows
    peak = await peak_bytes_per_stage(compile_graph(big_pipeline))

    print()
    print(f"{'scenario':<36}{'runs':>6}{'median ms':>12}{'us/stage':>11}")
    for row in rows:
        print(f"{row.scenario:<36}{row.runs:>6}{row.median_ms:>12.2f}{row.us_per_stage:>11.2f}")

    floor_ratio = fan_1k.us_per_stage / floor_1k.us_per_stage
    scale_ratio = fan_100k.us_per_stage / fan_1k.us_per_stage
    print()
    print(f"{'measure':<44}{'value':>14}  {'target':<12}")
    print(
        f"{'engine fan-out 1,000 / asyncio floor':<44}{floor_ratio:>13.2f}x  "
        f"{'<= 4x':<12}{verdict(floor_ratio, 4.0)}"
    )
    print(
        f"{'fan-out 100,000 / fan-out 1,000 (per stage)':<44}{scale_ratio:>13.2f}x  "
        f"{'<= 1.3x':<12}{verdict(scale_ratio, 1.3)}"
    )
    print(
        f"{'  same, gc off while timing':<44}"
        f"{fan_100k_nogc.us_per_stage / fan_1k_nogc.us_per_stage:>13.2f}x"
    )
    print(
        f"{'  asyncio floor 100,000 / floor 1,000':<44}"
        f"{floor_100k.us_per_stage / floor_1k.us_per_stage:>13.2f}x"
    )
    print(
        f"{'peak memory, fan-out 100,000 run':<44}{peak:>8.0f} B/stg  "
        f"{'<= 2048 B':<12}{verdict(peak, 2048)}"
    )
    print(f"{'build (validate + compile), 100,000':<44}{build_ms * 1000 / big:>8.2f} us/stg")
    print(f"{'declare (with_stage x 100,000)':<44}{declare_ms * 1000 / big:>8.2f} us/stg")


if __name__ == "__main__":
    asyncio.run(main())
