"""Subpipelines: child runs spawned by a stage."""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import anyio
import pytest

from stageflow_otel.core import (
    CancellationToken,
    ChildRunStatistics,
    ChildRunTracker,
    CollectingEventSink,
    MaxDepthExceededError,
    Pipeline,
    PipelineCancelled,
    PipelineResults,
    RunCall,
    RunHook,
    RunIdentity,
    StageContext,
    StageExecutionError,
    StageOutput,
    StageReturn,
    StageStatus,
    SubpipelineResult,
    SubpipelineSpawner,
)
from tests.unit.core.support import run

pytestmark = pytest.mark.anyio


async def describe(ctx: StageContext) -> StageReturn:
    return {
        "run_id": ctx.pipeline_run_id,
        "parent_run_id": ctx.parent_run_id,
        "depth": ctx.depth,
        "pipeline": ctx.pipeline_name,
        "data": dict(ctx.data),
        "request_id": ctx.identity.request_id,
        "user_id": ctx.identity.user_id,
    }


CHILD = Pipeline("child").with_stage("leaf", describe)


def spawning(child: Pipeline, **kwargs: Any) -> Callable[[StageContext], Awaitable[StageReturn]]:
    async def spawn(ctx: StageContext) -> StageReturn:
        result = await ctx.spawn_subpipeline(child, **kwargs)
        return {"result": result}

    return spawn


def child_result(results: PipelineResults, stage: str = "spawn") -> SubpipelineResult:
    result = results.data(stage)["result"]
    assert isinstance(result, SubpipelineResult)
    return result


class StateCapture(RunHook):
    """Keeps the top-level run call so a test can inspect the run afterwards."""

    def __init__(self) -> None:
        self.calls: list[RunCall] = []

    async def around_run(
        self, run: RunCall, proceed: Callable[[], Awaitable[PipelineResults]]
    ) -> PipelineResults:
        self.calls.append(run)
        return await proceed()


async def test_a_child_run_records_its_parent() -> None:
    identity = RunIdentity(request_id="req-1", user_id="u-1")
    parent = Pipeline("parent").with_stage("spawn", spawning(CHILD, correlation_id="corr-1"))

    results = await run(parent.build(hooks=[]), identity=identity)

    result = child_result(results)
    assert result.success
    assert result.status == "ok"
    assert result.pipeline == "child"
    assert result.correlation_id == "corr-1"
    assert result.error is None
    assert result.failed_stage is None
    assert result.duration_ms >= 0
    leaf = result.data("leaf")
    assert leaf["run_id"] == result.child_run_id
    assert result.child_run_id != results.run_id
    assert uuid.UUID(result.child_run_id).version == 4
    assert leaf["parent_run_id"] == results.run_id
    assert leaf["depth"] == 1
    assert leaf["pipeline"] == "child"
    assert leaf["request_id"] == "req-1"
    assert leaf["user_id"] == "u-1"
    assert result.results.run_id == result.child_run_id


async def test_a_correlation_id_is_made_when_none_is_given() -> None:
    parent = Pipeline("parent").with_stage("spawn", spawning(CHILD))
    first = child_result(await run(parent.build(hooks=[])))
    second = child_result(await run(parent.build(hooks=[])))
    assert first.correlation_id
    assert first.correlation_id != second.correlation_id


async def test_child_data_inherits_and_overrides_parent_data() -> None:
    parent = (
        Pipeline("parent")
        .with_stage("nothing", spawning(CHILD, data={"own": 1}))
        .with_stage("everything", spawning(CHILD, inherit=True, data={"b": "child"}))
        .with_stage("some", spawning(CHILD, inherit=["a", "missing"]))
    )
    results = await run(parent.build(hooks=[]), data={"a": 1, "b": "parent"})
    assert child_result(results, "nothing").data("leaf")["data"] == {"own": 1}
    assert child_result(results, "everything").data("leaf")["data"] == {"a": 1, "b": "child"}
    assert child_result(results, "some").data("leaf")["data"] == {"a": 1}


async def test_spawning_past_max_depth_raises() -> None:
    async def spawn(ctx: StageContext) -> StageReturn:
        await SubpipelineSpawner(max_depth=0).spawn(ctx, CHILD)
        return None

    graph = Pipeline("parent").with_stage("spawn", spawn).build(hooks=[])
    with pytest.raises(StageExecutionError) as info:
        await run(graph)
    error = info.value.__cause__
    assert isinstance(error, MaxDepthExceededError)
    assert (error.current_depth, error.max_depth) == (0, 0)
    assert isinstance(info.value.results, PipelineResults)
    assert error.parent_run_id == info.value.results.run_id
    assert "max_depth=0" in str(error)


async def test_nesting_stops_at_the_graph_max_depth() -> None:
    depths: list[int] = []

    async def recurse(ctx: StageContext) -> StageReturn:
        depths.append(ctx.depth)
        result = await ctx.spawn_subpipeline(recursive)
        return {"result": result}

    recursive = Pipeline("recursive").with_stage("spawn", recurse)
    results = await run(recursive.build(hooks=[], max_depth=2))

    assert depths == [0, 1, 2]
    level1 = child_result(results)
    assert level1.success
    level2 = child_result(level1.results)
    assert not level2.success
    assert level2.status == "fail"
    assert level2.failed_stage == "spawn"
    assert level2.error_type == "stageflow_otel.core.errors.MaxDepthExceededError"


async def test_a_spawner_may_allow_deeper_nesting_than_the_graph() -> None:
    depths: list[int] = []

    async def recurse(ctx: StageContext) -> StageReturn:
        depths.append(ctx.depth)
        if ctx.depth < 3:
            result = await SubpipelineSpawner(max_depth=3).spawn(ctx, recursive)
            if not result.success:
                raise RuntimeError(result.error)
        return None

    recursive = Pipeline("recursive").with_stage("spawn", recurse)
    await run(recursive.build(hooks=[], max_depth=1))
    assert depths == [0, 1, 2, 3]


async def test_a_failed_child_returns_a_failure_instead_of_raising() -> None:
    sink = CollectingEventSink()

    async def ok(ctx: StageContext) -> StageReturn:
        return {"v": 1}

    async def bad(ctx: StageContext) -> StageReturn:
        raise ValueError("child broke")

    child = Pipeline("child").with_stage("ok", ok).with_stage("bad", bad, after=["ok"])
    parent = Pipeline("parent").with_stage("spawn", spawning(child))
    results = await run(parent.build(hooks=[], event_sink=sink))

    assert results.ok
    result = child_result(results)
    assert not result.success
    assert result.status == "fail"
    assert result.failed_stage == "bad"
    assert result.error == "stage 'bad' failed: child broke"
    assert result.error_type == "ValueError"
    assert result.results.data("ok") == {"v": 1}
    assert result.results["bad"].status is StageStatus.FAIL
    (failed,) = sink.of_type("pipeline.child_failed")
    assert failed["status"] == "fail"
    assert failed["child_run_id"] == result.child_run_id
    assert failed["failed_stage"] == "bad"
    assert failed["error"] == result.error
    assert sink.of_type("pipeline.child_completed") == []


async def test_a_cancelled_child_returns_a_cancellation() -> None:
    async def stop(ctx: StageContext) -> StageReturn:
        return StageOutput.cancel("not today")

    child = Pipeline("child").with_stage("stop", stop)
    results = await run(Pipeline("parent").with_stage("spawn", spawning(child)).build(hooks=[]))
    result = child_result(results)
    assert not result.success
    assert result.status == "cancel"
    assert result.error == "pipeline cancelled by stage 'stop': not today"
    assert result.results["stop"].status is StageStatus.CANCEL


async def test_child_events_reach_the_parent_sink_with_the_child_run_id() -> None:
    sink = CollectingEventSink()
    parent = Pipeline("parent").with_stage("spawn", spawning(CHILD, correlation_id="c-1"))
    results = await run(parent.build(hooks=[], event_sink=sink))
    result = child_result(results)
    child_id, parent_id = result.child_run_id, results.run_id

    assert [(e.type, e.data["pipeline_run_id"]) for e in sink.events] == [
        ("pipeline.started", parent_id),
        ("stage.started", parent_id),
        ("pipeline.spawned_child", parent_id),
        ("pipeline.started", child_id),
        ("stage.started", child_id),
        ("stage.completed", child_id),
        ("pipeline.completed", child_id),
        ("pipeline.child_completed", parent_id),
        ("stage.completed", parent_id),
        ("pipeline.completed", parent_id),
    ]
    relation = {
        "parent_run_id": parent_id,
        "child_run_id": child_id,
        "parent_stage": "spawn",
        "child_pipeline": "child",
        "correlation_id": "c-1",
        "depth": 1,
    }
    spawned = sink.of_type("pipeline.spawned_child")[0]
    assert {k: spawned[k] for k in relation} == relation
    completed = sink.of_type("pipeline.child_completed")[0]
    assert {k: completed[k] for k in relation} == relation
    assert completed["status"] == "ok"
    assert completed["duration_ms"] >= 0
    child_started = sink.of_type("pipeline.started")[1]
    assert child_started["pipeline"] == "child"
    assert child_started["depth"] == 1
    assert child_started["parent_run_id"] == parent_id
    assert child_started["parent_stage"] == "spawn"
    assert child_started["correlation_id"] == "c-1"


async def test_cancelling_the_parent_cancels_a_running_child() -> None:
    sink = CollectingEventSink()
    token = CancellationToken()
    started = anyio.Event()
    log: list[str] = []

    async def inner(ctx: StageContext) -> StageReturn:
        started.set()
        try:
            await anyio.sleep_forever()
        finally:
            log.append("inner stopped")
        return None

    async def canceller(ctx: StageContext) -> StageReturn:
        await started.wait()
        token.cancel("shutdown")
        return None

    child = Pipeline("child").with_stage("inner", inner)
    parent = (
        Pipeline("parent").with_stage("spawn", spawning(child)).with_stage("canceller", canceller)
    )
    with pytest.raises(PipelineCancelled) as info:
        await run(parent.build(hooks=[], event_sink=sink), cancel_token=token)

    # The child stopped before the parent run reported.
    assert log == ["inner stopped"]
    assert info.value.results["spawn"].status is StageStatus.CANCEL
    assert sink.types[-1] == "pipeline.cancelled"
    assert sink.events[-1].data["pipeline"] == "parent"
    child_events = [e for e in sink.events if e.data["pipeline"] == "child"]
    assert [e.type for e in child_events] == [
        "pipeline.started",
        "stage.started",
        "stage.cancelled",
        "pipeline.cancelled",
    ]
    (failed,) = sink.of_type("pipeline.child_failed")
    assert failed["status"] == "cancel"


async def test_the_tracker_records_the_tree_of_runs() -> None:
    capture = StateCapture()

    async def spawn_two(ctx: StageContext) -> StageReturn:
        first = await ctx.spawn_subpipeline(middle)
        second = await ctx.spawn_subpipeline(CHILD)
        return {"first": first, "second": second}

    async def spawn_leaf(ctx: StageContext) -> StageReturn:
        result = await ctx.spawn_subpipeline(failing)
        return {"result": result}

    async def bad(ctx: StageContext) -> StageReturn:
        raise RuntimeError("x")

    failing = Pipeline("failing").with_stage("bad", bad)
    middle = Pipeline("middle").with_stage("spawn", spawn_leaf)
    top = Pipeline("top").with_stage("spawn", spawn_two)

    results = await run(top.build(hooks=[capture]))

    top_id = results.run_id
    first = results.data("spawn")["first"]
    second = results.data("spawn")["second"]
    grandchild = child_result(first.results)
    tracker = capture.calls[0].progress.children
    assert isinstance(tracker, ChildRunTracker)
    assert tracker.get_children(top_id) == [first.child_run_id, second.child_run_id]
    assert tracker.get_children(first.child_run_id) == [grandchild.child_run_id]
    assert tracker.get_parent(grandchild.child_run_id) == first.child_run_id
    assert tracker.get_parent(top_id) is None
    assert tracker.get_root_run(grandchild.child_run_id) == top_id
    assert tracker.get_all_descendants(top_id) == [
        first.child_run_id,
        second.child_run_id,
        grandchild.child_run_id,
    ]
    assert tracker.status_of(grandchild.child_run_id) == "fail"
    assert tracker.status_of(second.child_run_id) == "ok"
    assert tracker.statistics() == ChildRunStatistics(
        spawned=3,
        completed=2,
        failed=1,
        cancelled=0,
        active=0,
        max_depth_seen=2,
        max_concurrent=2,
    )


async def test_concurrent_children_are_counted() -> None:
    capture = StateCapture()
    arrived = [anyio.Event(), anyio.Event()]

    async def meet(ctx: StageContext) -> StageReturn:
        n: int = ctx.data["n"]
        arrived[n].set()
        await arrived[1 - n].wait()
        return None

    child = Pipeline("child").with_stage("meet", meet)
    parent = (
        Pipeline("parent")
        .with_stage("a", spawning(child, data={"n": 0}))
        .with_stage("b", spawning(child, data={"n": 1}))
    )
    await run(parent.build(hooks=[capture]))
    tracker = capture.calls[0].progress.children
    assert isinstance(tracker, ChildRunTracker)
    stats = tracker.statistics()
    assert stats.max_concurrent == 2
    assert stats.completed == 2
    assert stats.max_depth_seen == 1


def test_child_run_tracker_unit() -> None:
    tracker = ChildRunTracker()
    assert tracker.statistics() == ChildRunStatistics(0, 0, 0, 0, 0, 0, 0)
    tracker.register_child("root", "c1", depth=1)
    tracker.register_child("root", "c2", depth=1)
    tracker.register_child("c1", "g1", depth=2)
    tracker.complete_child("c2", "cancel")
    assert tracker.get_children("root") == ["c1", "c2"]
    assert tracker.get_children("nobody") == []
    assert tracker.get_all_descendants("root") == ["c1", "c2", "g1"]
    assert tracker.get_all_descendants("g1") == []
    assert tracker.get_root_run("g1") == "root"
    assert tracker.get_root_run("root") == "root"
    assert tracker.status_of("c1") == "running"
    assert tracker.status_of("unknown") is None
    stats = tracker.statistics()
    assert stats == ChildRunStatistics(
        spawned=3, completed=0, failed=0, cancelled=1, active=2, max_depth_seen=2, max_concurrent=3
    )
    # The list returned is a copy.
    tracker.get_children("root").append("x")
    assert tracker.get_children("root") == ["c1", "c2"]
