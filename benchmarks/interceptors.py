"""Per-stage cost of interceptors, against the bare engine measured in the same run.

A 1,000-stage fan-out (one root, 999 stages depending on it) runs bare and with one
pass-through interceptor, alternately, 30 times each; the script prints the median µs per
stage of each and the ratio. It then does the same for each built-in resilience interceptor
on the happy path (the stage succeeds, no idempotency key). No telemetry is installed.

Run: ``python benchmarks/interceptors.py [--backend asyncio|trio] [--runs 30]``.
"""

from __future__ import annotations

import argparse
import gc
import statistics
import time
from collections.abc import Sequence

import anyio

from stageflow_otel.core import (
    BaseInterceptor,
    CircuitBreakerInterceptor,
    IdempotencyInterceptor,
    Interceptor,
    Pipeline,
    RetryInterceptor,
    StageContext,
    StageGraph,
    StageOutput,
    TimeoutInterceptor,
)

STAGES = 1000
OK = StageOutput.ok()


class PassThrough(BaseInterceptor):
    name = "pass_through"


async def noop_stage(ctx: StageContext) -> StageOutput:
    return OK


def fan_out(n: int) -> Pipeline:
    pipeline = Pipeline("bench").with_stage("root", noop_stage)
    for i in range(n - 1):
        pipeline = pipeline.with_stage(f"s{i}", noop_stage, dependencies=["root"])
    return pipeline


async def run_once(graph: StageGraph) -> float:
    start = time.perf_counter()
    await graph.run()
    return (time.perf_counter() - start) / STAGES * 1e6


async def compare(
    pipeline: Pipeline, interceptors: Sequence[Interceptor], runs: int
) -> tuple[float, float]:
    """Median µs/stage of the bare graph and of the graph with ``interceptors``."""
    bare = pipeline.build(hooks=[])
    wrapped = pipeline.build(interceptors=interceptors, hooks=[])
    for graph in (bare, wrapped):  # warm-up
        await graph.run()
    bare_samples: list[float] = []
    wrapped_samples: list[float] = []
    for _ in range(runs):
        # Alternating keeps drift (CPU frequency, other load) out of the ratio.
        gc.collect()
        bare_samples.append(await run_once(bare))
        gc.collect()
        wrapped_samples.append(await run_once(wrapped))
    return statistics.median(bare_samples), statistics.median(wrapped_samples)


async def main(runs: int, backend: str) -> None:
    pipeline = fan_out(STAGES)
    print(f"{STAGES}-stage fan-out on {backend}, median of {runs} runs each")
    bare, wrapped = await compare(pipeline, [PassThrough()], runs)
    print(f"  bare engine                  {bare:7.2f} µs/stage")
    print(f"  + 1 pass-through interceptor {wrapped:7.2f} µs/stage")
    print(
        f"  interceptor cost             {wrapped - bare:7.2f} µs/stage "
        f"(ratio to bare engine: {wrapped / bare:.2f}x)"
    )
    print("built-ins on the happy path (each against its own bare measurement):")
    built_ins: list[Interceptor] = [
        RetryInterceptor(),
        TimeoutInterceptor(30.0),
        IdempotencyInterceptor(),
        CircuitBreakerInterceptor(),
    ]
    for interceptor in built_ins:
        bare, wrapped = await compare(pipeline, [interceptor], runs)
        print(
            f"  {interceptor.name:<16} {wrapped:7.2f} µs/stage, +{wrapped - bare:5.2f} "
            f"({wrapped / bare:.2f}x bare {bare:.2f})"
        )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backend", choices=("asyncio", "trio"), default="asyncio")
    parser.add_argument("--runs", type=int, default=30)
    args = parser.parse_args()
    anyio.run(main, args.runs, args.backend, backend=args.backend)
