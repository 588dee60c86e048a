"""What recording runs costs: a run store, with and without checkpoints, against no store.

The same 1,000-stage fan-out (each stage returns a small order-like output of its own) runs
without a store, recorded in a SQLite store (history only), and recorded with checkpoints; the
scenarios are sampled round-robin in one process, so machine noise hits them alike, and each
row is the median of ``--runs`` runs, in µs per stage. A run is timed until the store has
written it (``store.flush()``), so the writer thread's work counts against it: the event loop
CPU column is what the pipeline itself pays, the process CPU column includes the writer.

Then the demo's order pipeline runs ``--demo-runs`` times recorded with checkpoints, and the
checkpoints' delta sizes are set against their outputs written in full.

Run: ``.venv/bin/python benchmarks/runs.py [--runs N] [--demo-runs N]``.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from telemetry import interleaved  # the scenarios sampled round-robin, as every benchmark here

from stageflow_otel import Pipeline, StageContext
from stageflow_otel.compression import size_of
from stageflow_otel.runs import RecordingStore, SQLiteRunStore, restored_outputs

STAGES = 1000


async def order_stage(ctx: StageContext) -> dict[str, Any]:
    name = ctx.stage_name
    return {
        "order": {"id": 7, "customer": "c-42", "currency": "EUR"},
        "lines": [{"sku": f"sku-{i}", "qty": i + 1} for i in range(4)],
        "stage": name,
    }


def fan_out(n: int) -> Pipeline:
    pipeline = Pipeline("bench")
    for i in range(n):
        pipeline = pipeline.with_stage(f"s{i}", order_stage)
    return pipeline


def recorded(
    graph_of: Callable[[], Any], store: RecordingStore | None
) -> Callable[[], Awaitable[None]]:
    graph = graph_of()

    async def run() -> None:
        await graph.run({"order_id": 7}, store=store)
        if store is not None:
            store.flush(60.0)

    return run


async def demo_ratio(directory: Path, runs: int) -> tuple[int, int, int, int]:
    """(checkpoints, bytes as deltas, bytes of the same snapshots in full, bytes of the outputs)."""
    from stageflow_otel.demo import build_order_pipeline, order_input

    store = SQLiteRunStore(directory / "demo.sqlite3", checkpoints=True)
    graph = build_order_pipeline().build(hooks=[], store=store)
    try:
        for index in range(runs):
            await graph.run(order_input(index))
        store.flush()
        checkpoints = []
        outputs = 0
        for run in store.list_runs():
            checkpoints += store.read_checkpoints(run.run_id)
            record = store.get_run(run.run_id)
            assert record is not None
            restored = restored_outputs(store, record)
            outputs += sum(size_of(dict(output.data)) for output in restored.values())
    finally:
        store.close()
    deltas = sum(c.size for c in checkpoints)
    full = sum(c.full_size for c in checkpoints)
    return len(checkpoints), deltas, full, outputs


async def main(rounds: int, demo_runs: int) -> None:
    directory = Path(tempfile.mkdtemp(prefix="stageflow-bench-runs-"))
    history = SQLiteRunStore(directory / "history.sqlite3")
    checkpointed = SQLiteRunStore(directory / "checkpoints.sqlite3", checkpoints=True)
    pipeline = fan_out(STAGES)
    scenarios = {
        "no store": recorded(lambda: pipeline.build(hooks=[]), None),
        "store: history (SQLite)": recorded(lambda: pipeline.build(hooks=[]), history),
        "store: history + checkpoints": recorded(lambda: pipeline.build(hooks=[]), checkpointed),
    }
    try:
        costs = await interleaved(scenarios, STAGES, rounds)
        for store in (history, checkpointed):
            statistics_of = store.statistics()
            assert statistics_of is not None
            if statistics_of.dropped:
                print(
                    f"warning: {store!r} dropped {statistics_of.dropped} records", file=sys.stderr
                )
    finally:
        history.close()
        checkpointed.close()
    base = costs["no store"]
    print(
        f"run store cost per stage ({STAGES}-stage fan-out, median of {rounds} interleaved runs, "
        "timed until written)"
    )
    print(
        f"{'scenario':<32}{'wall µs':>10}{'loop CPU':>10}{'all CPU':>10}{'x wall':>8}{'+ µs/stage':>12}"
    )
    for name, cost in costs.items():
        print(
            f"{name:<32}{cost.wall:>10.1f}{cost.loop_cpu:>10.1f}{cost.cpu:>10.1f}"
            f"{cost.wall / base.wall:>8.2f}{cost.wall - base.wall:>12.1f}"
        )
    count, deltas, full, outputs = await demo_ratio(directory, demo_runs)
    print(
        f"\ndemo checkpoints ({demo_runs} runs of the order pipeline, {count} checkpoints): "
        f"{deltas:,} bytes as deltas against {full:,} for the same snapshots written in full: "
        f"ratio {deltas / full:.3f}; the outputs alone are {outputs:,} bytes "
        f"(the deltas add {deltas / outputs - 1:.0%})"
    )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=15, help="interleaved runs per scenario")
    parser.add_argument("--demo-runs", type=int, default=10, help="demo runs for the delta ratio")
    arguments = parser.parse_args()
    asyncio.run(main(arguments.runs, arguments.demo_runs))
