"""Analytics export: rows of the wide events through the backpressure queue to exporters."""

from __future__ import annotations

import io
import json
import threading
from collections.abc import Sequence
from pathlib import Path

import anyio
import pytest

from stageflow_otel import Pipeline, StageContext, StageGraph
from stageflow_otel.helpers import AnalyticsRow, AnalyticsSink, ConsoleExporter, JsonLinesExporter

pytestmark = pytest.mark.anyio


async def work(ctx: StageContext) -> dict[str, int]:
    return {"n": 1}


def graph(sink: AnalyticsSink) -> StageGraph:
    return (
        Pipeline("orders")
        .with_stage("load", work)
        .with_stage("price", work, dependencies=["load"])
        .build(event_sink=sink, emit_stage_wide_events=True, emit_pipeline_wide_event=True)
    )


class Warehouse:
    """A warehouse client stand-in: rows by table."""

    def __init__(self) -> None:
        self.tables: dict[str, list[dict[str, object]]] = {}
        self.batches = 0
        self.shut = False

    def export(self, rows: Sequence[AnalyticsRow], /) -> bool:
        self.batches += 1
        for row in rows:
            self.tables.setdefault(row.table, []).append(dict(row.data))
        return True

    def shutdown(self) -> None:
        self.shut = True


async def test_json_lines_hold_one_row_per_stage_and_per_run(tmp_path: Path) -> None:
    path = tmp_path / "analytics.jsonl"
    sink = AnalyticsSink(JsonLinesExporter(path))
    await graph(sink).run()
    await graph(sink).run()
    assert await sink.aclose()
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    assert [(r["type"], r.get("stage")) for r in rows] == [
        ("stage.wide", "load"),
        ("stage.wide", "price"),
        ("pipeline.wide", None),
    ] * 2
    assert {r["status"] for r in rows} == {"ok"}
    assert rows[2]["stages_run"] == 2
    stats = sink.statistics()
    # Only the wide events entered the queue; the lifecycle events were never queued.
    assert (stats.emitted, stats.exported, stats.dropped) == (6, 6, 0)


async def test_a_warehouse_gets_rows_by_table_in_batches() -> None:
    warehouse = Warehouse()
    async with AnalyticsSink(warehouse, max_batch_size=10) as sink:
        for _ in range(3):
            await graph(sink).run()
    assert [len(warehouse.tables[t]) for t in ("stage_runs", "pipeline_runs")] == [6, 3]
    assert warehouse.batches >= 1
    assert warehouse.shut
    assert sink.statistics().exported == 9


async def test_patterns_choose_the_events() -> None:
    warehouse = Warehouse()
    sink = AnalyticsSink(warehouse, events=["stage.*"])
    await graph(sink).run()
    assert await sink.aclose()
    types = {row["stage"] for row in warehouse.tables["events"]}
    assert types == {"load", "price"}
    assert set(warehouse.tables) == {"events", "stage_runs"}
    assert sink.wants("stage.completed")
    assert not sink.wants("pipeline.completed")


async def test_a_stalled_exporter_never_holds_the_pipeline_and_drops_are_counted() -> None:
    release = threading.Event()

    class Stalled(Warehouse):
        def export(self, rows: Sequence[AnalyticsRow], /) -> bool:
            release.wait(10)
            return super().export(rows)

    warehouse = Stalled()
    sink = AnalyticsSink(warehouse, max_queue_size=3, max_batch_size=1, flush_interval=0.01)
    try:
        for _ in range(5):  # 15 rows into a queue of 3 behind a stalled export
            with anyio.fail_after(10):
                await graph(sink).run()
        stats = sink.statistics()
        assert stats.dropped_queue_full > 0
        assert stats.queue_size <= 3
    finally:
        release.set()
        await sink.aclose()
    stats = sink.statistics()
    assert stats.exported + stats.dropped == 15


async def test_a_failing_exporter_is_retried_then_counted() -> None:
    class Failing:
        calls = 0

        def export(self, rows: Sequence[AnalyticsRow], /) -> bool:
            self.calls += 1
            return False

    failing = Failing()
    sink = AnalyticsSink(failing, max_retries=2, retry_base_delay=0.001)
    await graph(sink).run()
    assert not await sink.aclose()
    assert failing.calls == 3
    assert sink.statistics().export_failed == 3


async def test_the_console_exporter_writes_readable_lines() -> None:
    stream = io.StringIO()
    sink = AnalyticsSink(ConsoleExporter(stream, keys=["pipeline", "stage", "status"]))
    await graph(sink).run()
    assert await sink.aclose()
    assert stream.getvalue().splitlines() == [
        "stage_runs stage.wide pipeline=orders stage=load status=ok",
        "stage_runs stage.wide pipeline=orders stage=price status=ok",
        "pipeline_runs pipeline.wide pipeline=orders status=ok",
    ]


def test_bad_arguments_are_named() -> None:
    with pytest.raises(TypeError, match="is no exporter"):
        AnalyticsSink(object())  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="list of event types"):
        AnalyticsSink(Warehouse(), events="stage.wide")
    with pytest.raises(ValueError, match="max_queue_size"):
        AnalyticsSink(Warehouse(), max_queue_size=0)
