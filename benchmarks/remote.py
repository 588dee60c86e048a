"""Remote stages on Dask: the cost of a remote no-op stage, and the speed-up of CPU-bound work.

Run with ``python benchmarks/remote.py`` (needs the ``dask`` extra). It starts a local Dask
cluster of 2 worker processes with 1 thread each, then, in one run, A and B alternated:

1. **Overhead**: a chain of remote no-op stages against the same chain of local no-op
   stages; per stage, ``(remote - local) / stages``. A chain, so every stage waits for the
   one before: the figure is the round trip of one remote stage.
2. **Speed-up**: 40 independent stages of about 50 ms of pure-Python work, run locally in
   threads (``def`` stages: the event loop's worker threads, which share one GIL) against
   the same stages on the 2 workers; the ratio of the medians.

The work per stage is a fixed loop calibrated once at start to take 50 ms here. Medians of
several runs; the machine's other load shows in the spread, which is printed too. To tell
the engine's share from the machine's, it also measures the machine's own ceiling: the same
work in 2 plain processes at once against one after the other (on 2 idle cores, about 2x).
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import platform
import statistics
import time
from collections.abc import Callable
from typing import Any

import anyio
import distributed

from stageflow_otel import Pipeline
from stageflow_otel.distributed import remote_stage
from stageflow_otel.distributed.dask import DaskExecutor

# distributed's constructors are not annotated.
new_cluster: Any = distributed.LocalCluster
new_client: Any = distributed.Client


def burn(ctx: Any) -> dict[str, int]:
    """Pure-Python CPU work: the loop count comes with the run input."""
    total = 0
    for i in range(int(ctx.data["loops"])):
        total += i * i
    return {"total": total & 0xFF}


def noop(ctx: Any) -> None:
    return None


async def async_noop(ctx: Any) -> None:
    return None


def calibrate(target_s: float) -> int:
    """Loops of :func:`burn` that take ``target_s`` seconds on this machine (median of 5)."""

    ctx = _Data(200_000)
    samples = []
    for _ in range(5):
        start = time.perf_counter()
        burn(ctx)
        samples.append(time.perf_counter() - start)
    return int(200_000 * target_s / statistics.median(samples))


class _Data:
    def __init__(self, loops: int) -> None:
        self.data = {"loops": loops}


def burn_loops(loops: int) -> None:
    burn(_Data(loops))


def ceiling(loops: int, processes: int) -> tuple[float, float]:
    """Seconds for ``processes`` x ``loops`` of work in one process, and in parallel ones."""
    start = time.perf_counter()
    for _ in range(processes):
        burn_loops(loops)
    sequential = time.perf_counter() - start
    start = time.perf_counter()
    workers = [multiprocessing.Process(target=burn_loops, args=(loops,)) for _ in range(processes)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    return sequential, time.perf_counter() - start


def chain(n: int, runner: Callable[..., Any]) -> Pipeline:
    pipeline = Pipeline(f"chain-{n}")
    for i in range(n):
        pipeline = pipeline.with_stage(f"s{i}", runner, dependencies=[f"s{i - 1}"] if i else None)
    return pipeline


def fan_out(n: int, runner: Callable[..., Any]) -> Pipeline:
    pipeline = Pipeline(f"cpu-{n}")
    for i in range(n):
        pipeline = pipeline.with_stage(f"s{i}", runner)
    return pipeline


def timed(pipeline: Pipeline, data: dict[str, Any]) -> float:
    graph = pipeline.build()
    start = time.perf_counter()
    anyio.run(graph.run, data)
    return time.perf_counter() - start


def alternate(
    runs: int, a: Callable[[], float], b: Callable[[], float]
) -> tuple[list[float], list[float]]:
    first: list[float] = []
    second: list[float] = []
    for _ in range(runs):
        first.append(a())
        second.append(b())
    return first, second


def spread(samples: list[float]) -> str:
    return f"{min(samples) * 1000:.0f}-{max(samples) * 1000:.0f} ms"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--stages", type=int, default=40, help="CPU-bound stages")
    parser.add_argument("--work-ms", type=float, default=50.0, help="work per stage")
    parser.add_argument("--chain", type=int, default=50, help="no-op stages in the chain")
    parser.add_argument("--runs", type=int, default=7, help="runs of each scenario")
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()

    loops = calibrate(args.work_ms / 1000)
    print(
        f"python {platform.python_version()}, {os.cpu_count()} CPUs, load average "
        f"{os.getloadavg()[0]:.2f}; {loops:,} loops = {args.work_ms:g} ms of work per stage"
    )
    cluster_start = time.perf_counter()
    with (
        new_cluster(
            n_workers=args.workers,
            threads_per_worker=1,
            processes=True,
            dashboard_address=None,
        ) as cluster,
        new_client(cluster) as client,
        DaskExecutor(client) as executor,
    ):
        print(
            f"local cluster of {args.workers} worker processes up in "
            f"{time.perf_counter() - cluster_start:.1f} s"
        )
        # Warm up: the workers import the package and unpickle the function once.
        timed(fan_out(args.workers * 2, remote_stage(noop, executor)), {})

        n = args.chain
        local_chain = chain(n, async_noop)
        remote_chain = chain(n, remote_stage(noop, executor))
        local, remote = alternate(
            args.runs, lambda: timed(local_chain, {}), lambda: timed(remote_chain, {})
        )
        per_stage_ms = (statistics.median(remote) - statistics.median(local)) / n * 1000
        print(f"\nremote no-op stage, chain of {n} (median of {args.runs}):")
        print(f"  local chain   {statistics.median(local) * 1000:8.1f} ms  ({spread(local)})")
        print(f"  remote chain  {statistics.median(remote) * 1000:8.1f} ms  ({spread(remote)})")
        print(f"  overhead per remote stage: {per_stage_ms:.1f} ms")

        data = {"loops": loops}
        threads = fan_out(args.stages, burn)
        on_workers = fan_out(args.stages, remote_stage(burn, executor))
        local, remote = alternate(
            args.runs, lambda: timed(threads, data), lambda: timed(on_workers, data)
        )
        speedup = statistics.median(local) / statistics.median(remote)
        print(
            f"\n{args.stages} stages of {args.work_ms:g} ms pure-Python work "
            f"(median of {args.runs}):"
        )
        print(f"  local, in threads   {statistics.median(local) * 1000:8.0f} ms  ({spread(local)})")
        print(
            f"  {args.workers} Dask workers      {statistics.median(remote) * 1000:8.0f} ms  "
            f"({spread(remote)})"
        )
        print(f"  speed-up: {speedup:.2f}x (target >= 1.7x on 2 workers)")
        # The fastest runs are those the machine's other load disturbed least.
        print(f"  fastest run of each: {min(local) / min(remote):.2f}x")

    # The same total work in plain processes: what this machine allows right now.
    total = loops * args.stages // args.workers
    pairs = [ceiling(total, args.workers) for _ in range(3)]
    sequential = statistics.median(p[0] for p in pairs)
    parallel = statistics.median(p[1] for p in pairs)
    print(
        f"\nthe machine's ceiling: the same work in {args.workers} plain processes, "
        f"{sequential * 1000:.0f} ms one after the other, {parallel * 1000:.0f} ms at once: "
        f"{sequential / parallel:.2f}x"
    )


if __name__ == "__main__":
    main()
