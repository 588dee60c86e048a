"""Opt-in memory measurement of stages with tracemalloc."""

from __future__ import annotations

import tracemalloc
from collections.abc import Iterator

import pytest

from stageflow_otel import CollectingEventSink, Pipeline, StageContext
from stageflow_otel.helpers import MemoryTrackingInterceptor

pytestmark = pytest.mark.anyio

MIB = 1024 * 1024


@pytest.fixture
def interceptor() -> Iterator[MemoryTrackingInterceptor]:
    was_tracing = tracemalloc.is_tracing()
    tracker = MemoryTrackingInterceptor()
    try:
        yield tracker
    finally:
        tracker.close()
        assert tracemalloc.is_tracing() == was_tracing


async def keeps(ctx: StageContext) -> dict[str, bytes]:
    return {"blob": bytes(MIB)}


async def churns(ctx: StageContext) -> dict[str, int]:
    blob = bytearray(2 * MIB)
    size = len(blob)
    del blob
    return {"size": size}


async def test_peak_and_what_is_left_are_reported_per_stage(
    interceptor: MemoryTrackingInterceptor,
) -> None:
    sink = CollectingEventSink()
    graph = (
        Pipeline("p")
        .with_stage("keeps", keeps, interceptors=[interceptor])
        .with_stage("churns", churns, dependencies=["keeps"], interceptors=[interceptor])
        .with_stage("untracked", churns, dependencies=["churns"])
        .build(event_sink=sink)
    )
    await graph.run()
    measured = {e["stage"]: e for e in sink.of_type("stage.memory")}
    assert set(measured) == {"keeps", "churns"}
    assert measured["keeps"]["peak_bytes"] >= MIB
    assert measured["keeps"]["allocated_bytes"] >= MIB  # the output keeps it alive
    assert measured["churns"]["peak_bytes"] >= 2 * MIB
    assert measured["churns"]["allocated_bytes"] < MIB  # freed before the stage ended


async def test_without_tracing_and_without_start_nothing_is_measured() -> None:
    if tracemalloc.is_tracing():
        pytest.skip("tracemalloc is already running in this process")
    sink = CollectingEventSink()
    tracker = MemoryTrackingInterceptor(start_tracing=False)
    graph = Pipeline("p").with_stage("keeps", keeps, interceptors=[tracker]).build(event_sink=sink)
    await graph.run()
    assert sink.of_type("stage.memory") == []
    assert not tracemalloc.is_tracing()


async def test_close_stops_only_what_it_started(interceptor: MemoryTrackingInterceptor) -> None:
    if tracemalloc.is_tracing():
        pytest.skip("tracemalloc is already running in this process")
    tracemalloc.start()
    try:
        graph = Pipeline("p").with_stage("keeps", keeps, interceptors=[interceptor]).build()
        await graph.run()
        interceptor.close()
        assert tracemalloc.is_tracing()  # started by someone else: left running
    finally:
        tracemalloc.stop()
