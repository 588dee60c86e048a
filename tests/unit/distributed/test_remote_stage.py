"""``remote_stage`` with an in-process executor: what travels, what comes back, semantics."""

from __future__ import annotations

import pickle
import threading
from collections.abc import Iterator
from typing import Any

import anyio
import pytest

from stageflow_otel import (
    CollectingEventSink,
    IdempotencyInterceptor,
    Pipeline,
    RetryInterceptor,
    RunIdentity,
    StageExecutionError,
)
from stageflow_otel.distributed import (
    LocalExecutor,
    RemoteExecutor,
    RemoteTask,
    TaskNotSerializableError,
    remote_stage,
)
from stageflow_otel.distributed._handle import TaskHandle
from tests.support import remote_functions as rf

pytestmark = pytest.mark.anyio


async def source(ctx: Any) -> dict[str, Any]:
    return {"x": 6}


class RecordingExecutor(LocalExecutor):
    """A local executor that remembers what it was asked to cancel."""

    def __init__(self) -> None:
        super().__init__(2, dumps=pickle.dumps)  # what cannot be pickled fails here
        self.cancelled: list[str] = []
        self.submitted: list[RemoteTask] = []

    def submit(self, task: RemoteTask) -> TaskHandle:
        self.submitted.append(task)
        return super().submit(task)

    def cancel(self, handle: TaskHandle) -> None:
        self.cancelled.append(handle.stage)
        super().cancel(handle)


@pytest.fixture
def executor() -> Iterator[RecordingExecutor]:
    rf.RELEASE.clear()
    rf.CALLS.clear()
    local = RecordingExecutor()
    yield local
    rf.RELEASE.set()  # a task that outlived its stage ends now
    local.shutdown()


def test_local_executor_is_a_remote_executor(executor: RecordingExecutor) -> None:
    assert isinstance(executor, RemoteExecutor)


async def test_the_snapshot_carries_what_the_stage_needs(executor: RecordingExecutor) -> None:
    graph = (
        Pipeline("shop")
        .with_stage("source", source)
        .with_stage("remote", remote_stage(rf.describe, executor), dependencies=["source"])
        .build()
    )
    results = await graph.run({"order": 7}, identity=RunIdentity("run-1", request_id="req-1"))

    seen = results.data("remote")
    assert seen == {
        "stage": "remote",
        "pipeline": "shop",
        "run_id": "run-1",
        "request_id": "req-1",
        "attempt": 1,
        "data": {"order": 7},
        "from_source": 6,
        "dependencies": ["source"],
    }
    (task,) = executor.submitted
    assert task.run_id == "run-1"
    assert task.inputs["source"].data == {"x": 6}


async def test_async_functions_and_chains_of_remote_stages(executor: RecordingExecutor) -> None:
    graph = (
        Pipeline("math")
        .with_stage("source", source)
        .with_stage("square", remote_stage(rf.square, executor), dependencies=["source"])
        .with_stage("add_one", remote_stage(rf.add_one, executor), dependencies=["square"])
        .build()
    )
    results = await graph.run()
    assert results.data("square")["y"] == 36
    assert results.data("add_one") == {"z": 37}
    assert results.data("square")["worker"].startswith("local:stageflow-remote")


async def test_events_say_when_the_stage_was_submitted_and_started(
    executor: RecordingExecutor,
) -> None:
    sink = CollectingEventSink()
    graph = (
        Pipeline("math")
        .with_stage("source", source)
        .with_stage("square", remote_stage(rf.square, executor), dependencies=["source"])
        .build(event_sink=sink)
    )
    await graph.run()
    square = [e for e in sink.events if e.data.get("stage") == "square"]
    assert [e.type for e in square] == [
        "stage.started",
        "stage.remote.submitted",
        "stage.remote.started",
        "stage.completed",
    ]
    submitted, started = square[1].data, square[2].data
    assert submitted["attempt"] == 1
    assert submitted["executor"] == "RecordingExecutor"
    assert started["worker"].startswith("local:")
    assert started["queue_wait_ms"] >= 0


async def test_what_the_function_raises_fails_the_stage(executor: RecordingExecutor) -> None:
    graph = Pipeline("p").with_stage("boom", remote_stage(rf.explode, executor)).build()
    with pytest.raises(StageExecutionError) as caught:
        await graph.run()
    output = caught.value.results["boom"]
    assert output.error == "exploded in boom"
    assert isinstance(output.exception, ValueError)


async def test_a_returned_failure_fails_the_stage(executor: RecordingExecutor) -> None:
    graph = Pipeline("p").with_stage("no", remote_stage(rf.refuse, executor)).build()
    with pytest.raises(StageExecutionError) as caught:
        await graph.run()
    assert caught.value.results["no"].error == "refused on the worker"


async def test_unpicklable_input_fails_at_submit_naming_stage_and_value(
    executor: RecordingExecutor,
) -> None:
    graph = Pipeline("p").with_stage("ship", remote_stage(rf.square, executor)).build()
    with pytest.raises(StageExecutionError) as caught:
        await graph.run({"lock": threading.Lock()})
    error = caught.value.results["ship"].exception
    assert isinstance(error, TaskNotSerializableError)
    assert error.stage == "ship"
    assert error.part == "input data key 'lock'"
    assert "remote stage 'ship' cannot be submitted: input data key 'lock'" in str(error)
    assert executor.submitted
    assert rf.CALLS == []


async def test_a_function_pickle_cannot_import_fails_at_submit(
    executor: RecordingExecutor,
) -> None:
    graph = Pipeline("p").with_stage("anon", remote_stage(lambda ctx: {}, executor)).build()
    with pytest.raises(StageExecutionError) as caught:
        await graph.run()
    error = caught.value.results["anon"].exception
    assert isinstance(error, TaskNotSerializableError)
    assert error.part == "the function"


async def test_a_timeout_cancels_the_task_and_leaves_the_loop_free(
    executor: RecordingExecutor,
) -> None:
    ticks: list[int] = []

    async def ticker(ctx: Any) -> None:
        for i in range(5):
            ticks.append(i)
            await anyio.sleep(0.01)

    graph = (
        Pipeline("p")
        .with_stage("slow", remote_stage(rf.wait_for_release, executor), timeout=0.3)
        .with_stage("ticker", ticker)
        .build()
    )
    with pytest.raises(StageExecutionError) as caught:
        await graph.run()
    output = caught.value.results["slow"]
    assert output.error_type == "stageflow.timeout"
    assert executor.cancelled == ["slow"]
    assert ticks == [0, 1, 2, 3, 4]  # the event loop ran while the stage waited


async def test_cancelling_the_run_cancels_the_task(executor: RecordingExecutor) -> None:
    graph = Pipeline("p").with_stage("slow", remote_stage(rf.wait_for_release, executor)).build()
    with anyio.move_on_after(0.3):
        await graph.run()
    assert executor.cancelled == ["slow"]


async def test_a_retry_resubmits_with_the_next_attempt(executor: RecordingExecutor) -> None:
    graph = (
        Pipeline("p")
        .with_stage(
            "flaky",
            remote_stage(rf.flaky_once, executor),
            interceptors=[RetryInterceptor(max_attempts=2, base_delay=0.001)],
        )
        .build()
    )
    results = await graph.run()
    assert results.data("flaky") == {"attempt": 2}
    assert [task.attempt for task in executor.submitted] == [1, 2]


async def test_the_idempotency_interceptor_runs_a_remote_stage_once_per_key(
    executor: RecordingExecutor,
) -> None:
    idempotent = IdempotencyInterceptor()
    graph = (
        Pipeline("p")
        .with_stage("charge", remote_stage(rf.count_call, executor), interceptors=[idempotent])
        .build()
    )
    first = await graph.run({"idempotency_key": "order-7"})
    second = await graph.run({"idempotency_key": "order-7"})
    assert rf.CALLS == ["charge"]
    assert second.data("charge") == first.data("charge") == {"calls": 1}


def test_bad_arguments_are_named() -> None:
    with LocalExecutor(1) as local:
        with pytest.raises(TypeError, match="fn must be a callable"):
            remote_stage("square", local)  # type: ignore[arg-type]
        with pytest.raises(TypeError, match="lacks submit, wait, cancel"):
            remote_stage(rf.square, object())  # type: ignore[arg-type]
        with pytest.raises(ValueError, match="poll_interval must be > 0"):
            remote_stage(rf.square, local, poll_interval=0)


def test_the_runner_is_named_after_the_function() -> None:
    with LocalExecutor(1) as local:
        runner = remote_stage(rf.square, local)
    assert runner.__qualname__ == "square"
    assert runner.__module__ == rf.__name__


async def test_cloudpickle_ships_functions_by_value() -> None:
    # The default where cloudpickle is installed (with the dask extra), as Dask ships them.
    with LocalExecutor(1) as local:
        graph = Pipeline("p").with_stage("anon", remote_stage(lambda ctx: {"ok": 1}, local))
        results = await graph.build().run()
    assert results.data("anon") == {"ok": 1}
