"""Running pipelines: scheduling, data flow, failures, cancellation."""

from __future__ import annotations

import threading
import time
from collections.abc import Awaitable, Callable
from typing import Any

import anyio
import anyio.lowlevel
import pytest

from stageflow_otel.core import (
    CancellationToken,
    CollectingEventSink,
    DataConflictError,
    Pipeline,
    PipelineCancelled,
    PipelineResults,
    RunCall,
    RunHook,
    RunIdentity,
    StageCancellationRequested,
    StageContext,
    StageExecutionError,
    StageOutput,
    StageReturn,
    StageReturnTypeError,
    StageStatus,
    StageTimeoutError,
    UndeclaredDependencyError,
)
from tests.unit.core.support import HANG, run

pytestmark = pytest.mark.anyio


async def noop(ctx: StageContext) -> StageReturn:
    return None


class Timeline:
    """Records when each stage starts and ends, in one global order."""

    def __init__(self) -> None:
        self.entries: list[tuple[str, str]] = []

    def stage(self, result: StageReturn = None) -> Callable[[StageContext], Awaitable[StageReturn]]:
        async def runner(ctx: StageContext) -> StageReturn:
            self.entries.append(("start", ctx.stage_name))
            await anyio.lowlevel.checkpoint()
            self.entries.append(("end", ctx.stage_name))
            return result

        return runner

    def index(self, kind: str, stage: str) -> int:
        return self.entries.index((kind, stage))

    def started(self) -> list[str]:
        return [stage for kind, stage in self.entries if kind == "start"]


# -- scheduling ---------------------------------------------------------------------------


async def test_every_stage_runs_once_after_all_its_dependencies() -> None:
    timeline = Timeline()
    pipeline = Pipeline("p")
    deps = {
        "load": [],
        "user": [],
        "price": ["load"],
        "fraud": ["load", "user"],
        "tax": ["price"],
        "report": ["tax", "fraud"],
        "audit": ["user"],
    }
    for name, dependencies in deps.items():
        pipeline = pipeline.with_stage(name, timeline.stage(), dependencies=dependencies)

    results = await run(pipeline.build(hooks=[]))

    assert sorted(timeline.started()) == sorted(deps)
    assert len(timeline.entries) == 2 * len(deps)
    for name, dependencies in deps.items():
        for dep in dependencies:
            assert timeline.index("end", dep) < timeline.index("start", name), (dep, name)
    assert set(results) == set(deps)
    assert all(out.status is StageStatus.OK for out in results.values())
    assert results.ok
    assert results.status == "ok"


async def test_independent_stages_overlap() -> None:
    a_started = anyio.Event()
    b_started = anyio.Event()

    async def a(ctx: StageContext) -> StageReturn:
        a_started.set()
        await b_started.wait()
        return {"saw_b": True}

    async def b(ctx: StageContext) -> StageReturn:
        b_started.set()
        await a_started.wait()
        return {"saw_a": True}

    # Run one after the other, each would wait for the other forever.
    results = await run(Pipeline("p").with_stage("a", a).with_stage("b", b).build(hooks=[]))
    assert results.data("a") == {"saw_b": True}
    assert results.data("b") == {"saw_a": True}


async def test_a_dependent_starts_as_soon_as_its_own_dependencies_are_done() -> None:
    # `fast_child` depends only on `fast`, so it must not wait for the unrelated `slow`.
    child_ran = anyio.Event()

    async def slow(ctx: StageContext) -> StageReturn:
        await child_ran.wait()
        return None

    async def fast_child(ctx: StageContext) -> StageReturn:
        child_ran.set()
        return None

    pipeline = (
        Pipeline("p")
        .with_stage("slow", slow)
        .with_stage("fast", noop)
        .with_stage("fast_child", fast_child, dependencies=["fast"])
    )
    results = await run(pipeline.build(hooks=[]))
    assert set(results) == {"slow", "fast", "fast_child"}


async def test_max_concurrency_is_respected_and_every_stage_runs() -> None:
    active = 0
    peak = 0

    async def limited(ctx: StageContext) -> StageReturn:
        nonlocal active, peak
        active += 1
        peak = max(peak, active)
        for _ in range(5):
            await anyio.lowlevel.checkpoint()
        active -= 1
        return None

    pipeline = Pipeline("p")
    for i in range(6):
        pipeline = pipeline.with_stage(f"s{i}", limited)

    results = await run(pipeline.build(hooks=[], max_concurrency=2))

    assert sorted(results) == [f"s{i}" for i in range(6)]
    assert peak == 2


async def test_max_concurrency_keeps_every_slot_busy() -> None:
    # Each stage waits for a partner: with max_concurrency=2, the second pair can only
    # finish if both of its stages are started once the first pair is done.
    waiting: list[anyio.Event] = []

    async def pair(ctx: StageContext) -> StageReturn:
        if waiting:
            waiting.pop().set()
        else:
            partner = anyio.Event()
            waiting.append(partner)
            await partner.wait()
        return None

    pipeline = Pipeline("p")
    for i in range(4):
        pipeline = pipeline.with_stage(f"s{i}", pair)
    results = await run(pipeline.build(hooks=[], max_concurrency=2))
    assert sorted(results) == ["s0", "s1", "s2", "s3"]


async def test_max_concurrency_one_runs_a_chain() -> None:
    timeline = Timeline()
    pipeline = Pipeline("p")
    for i in range(4):
        pipeline = pipeline.with_stage(
            f"s{i}", timeline.stage(), dependencies=[f"s{i - 1}"] if i else None
        )
    results = await run(pipeline.build(hooks=[], max_concurrency=1))
    assert list(results) == ["s0", "s1", "s2", "s3"]
    assert timeline.started() == ["s0", "s1", "s2", "s3"]


async def test_pipeline_run_accepts_max_concurrency() -> None:
    pipeline = Pipeline("p").with_stage("a", noop).with_stage("b", noop).with_stage("c", noop)
    with anyio.fail_after(HANG):
        results = await pipeline.run(max_concurrency=1)
    assert sorted(results) == ["a", "b", "c"]


# -- data flow ------------------------------------------------------------------------------


async def test_inputs_read_the_outputs_of_declared_dependencies() -> None:
    seen: dict[str, Any] = {}

    async def first(ctx: StageContext) -> StageReturn:
        return {"shared": "from-first", "x": 1}

    async def second(ctx: StageContext) -> StageReturn:
        return {"shared": "from-second", "y": 2}

    async def reader(ctx: StageContext) -> StageReturn:
        inputs = ctx.inputs
        seen["deps"] = inputs.dependencies
        seen["get"] = inputs.get("shared")
        seen["get_y"] = inputs.get("y")
        seen["get_default"] = inputs.get("absent", "dflt")
        seen["get_from"] = inputs.get_from("second", "shared")
        seen["get_from_default"] = inputs.get_from("first", "absent", 0)
        seen["require_from"] = inputs.require_from("first", "x")
        seen["has_output"] = inputs.has_output("first")
        output = inputs.get_output("second")
        seen["output"] = None if output is None else dict(output.data)
        with pytest.raises(KeyError, match="requires key 'absent' from 'first'"):
            inputs.require_from("first", "absent")
        return None

    pipeline = (
        Pipeline("p")
        .with_stage("first", first)
        .with_stage("second", second)
        .with_stage("reader", reader, dependencies=["first", "second"])
    )
    await run(pipeline.build(hooks=[]))
    assert seen == {
        "deps": ("first", "second"),
        "get": "from-first",
        "get_y": 2,
        "get_default": "dflt",
        "get_from": "from-second",
        "get_from_default": 0,
        "require_from": 1,
        "has_output": True,
        "output": {"shared": "from-second", "y": 2},
    }


async def test_reading_a_stage_that_is_not_a_dependency_raises() -> None:
    caught: list[UndeclaredDependencyError] = []

    async def indirect(ctx: StageContext) -> StageReturn:
        # `a` is a dependency of a dependency, not a declared dependency.
        for read in (
            lambda: ctx.inputs.get_from("a", "x"),
            lambda: ctx.inputs.require_from("a", "x"),
            lambda: ctx.inputs.get_output("a"),
            lambda: ctx.inputs.has_output("a"),
        ):
            with pytest.raises(UndeclaredDependencyError) as info:
                read()
            caught.append(info.value)
        return None

    pipeline = (
        Pipeline("p")
        .with_stage("a", noop)
        .with_stage("b", noop, dependencies=["a"])
        .with_stage("c", indirect, dependencies=["b"])
    )
    await run(pipeline.build(hooks=[]))
    assert len(caught) == 4
    error = caught[0]
    assert (error.stage_name, error.accessing_stage, error.declared_deps) == ("a", "c", ("b",))
    assert str(error) == (
        "stage 'c' read the output of 'a', which is not one of its declared dependencies (b); "
        "add 'a' to its dependencies"
    )
    assert isinstance(error, LookupError)


async def test_an_uncaught_undeclared_read_fails_the_stage() -> None:
    async def reader(ctx: StageContext) -> StageReturn:
        return {"v": ctx.inputs.get_from("a", "x")}

    pipeline = Pipeline("p").with_stage("a", noop).with_stage("reader", reader)
    with pytest.raises(StageExecutionError) as info:
        await run(pipeline.build(hooks=[]))
    assert info.value.stage == "reader"
    assert isinstance(info.value.__cause__, UndeclaredDependencyError)


async def test_run_data_is_read_only_and_isolated_from_the_caller() -> None:
    seen: dict[str, Any] = {}
    proceed = anyio.Event()

    async def reader(ctx: StageContext) -> StageReturn:
        with pytest.raises(TypeError):
            ctx.data["x"] = 2  # type: ignore[index]
        await proceed.wait()
        seen.update(ctx.data)
        return None

    async def mutate_input(ctx: StageContext) -> StageReturn:
        data["late"] = True
        proceed.set()
        return None

    data: dict[str, Any] = {"x": 1}
    graph = Pipeline("p").with_stage("reader", reader).with_stage("m", mutate_input).build()
    await run(graph, data=data)
    assert seen == {"x": 1}


async def test_the_context_bag_is_shared_and_a_second_write_names_both_stages() -> None:
    async def writer(ctx: StageContext) -> StageReturn:
        ctx.write("token", "t-1")
        return None

    async def reader(ctx: StageContext) -> StageReturn:
        return {"token": ctx.bag.get("token"), "writer": ctx.bag.writer_of("token")}

    async def rewriter(ctx: StageContext) -> StageReturn:
        ctx.write("token", "t-2")
        return None

    ok = await run(
        Pipeline("p")
        .with_stage("writer", writer)
        .with_stage("reader", reader, after=["writer"])
        .build(hooks=[])
    )
    assert ok.data("reader") == {"token": "t-1", "writer": "writer"}

    pipeline = (
        Pipeline("p")
        .with_stage("writer", writer)
        .with_stage("rewriter", rewriter, after=["writer"])
    )
    with pytest.raises(StageExecutionError) as info:
        await run(pipeline.build(hooks=[]))
    conflict = info.value.__cause__
    assert isinstance(conflict, DataConflictError)
    assert (conflict.key, conflict.first_writer, conflict.second_writer) == (
        "token",
        "writer",
        "rewriter",
    )
    assert "'writer'" in str(conflict)
    assert "'rewriter'" in str(conflict)


async def test_none_dict_and_stage_output_returns() -> None:
    async def returns_none(ctx: StageContext) -> StageReturn:
        return None

    async def returns_dict(ctx: StageContext) -> StageReturn:
        return {"a": 1}

    async def returns_output(ctx: StageContext) -> StageReturn:
        return StageOutput.ok({"b": 2}, version="v2")

    async def returns_skip(ctx: StageContext) -> StageReturn:
        return StageOutput.skip("nothing to do")

    pipeline = (
        Pipeline("p")
        .with_stage("none", returns_none)
        .with_stage("dict", returns_dict)
        .with_stage("output", returns_output)
        .with_stage("skip", returns_skip)
    )
    results = await run(pipeline.build(hooks=[]))
    assert results["none"].status is StageStatus.OK
    assert dict(results["none"].data) == {}
    assert results["dict"].status is StageStatus.OK
    assert results["dict"].data == {"a": 1}
    assert results["output"].data == {"b": 2}
    assert results["output"].version == "v2"
    assert results["skip"].status is StageStatus.SKIP
    assert results["skip"].data == {"reason": "nothing to do"}
    assert all(out.duration_ms is not None and out.duration_ms >= 0 for out in results.values())
    assert results.ok


async def test_a_bad_return_type_fails_the_stage() -> None:
    async def returns_int(ctx: StageContext) -> StageReturn:
        return 42  # type: ignore[return-value]

    with pytest.raises(StageExecutionError) as info:
        await run(Pipeline("p").with_stage("bad", returns_int).build(hooks=[]))
    error = info.value
    assert isinstance(error.__cause__, StageReturnTypeError)
    assert isinstance(error.__cause__, TypeError)
    assert "stage 'bad' returned int" in str(error.__cause__)
    assert error.results["bad"].status is StageStatus.FAIL
    assert error.stage == "bad"


# -- failures -----------------------------------------------------------------------------


async def test_a_raising_stage_fails_the_run_with_partial_results_and_the_cause() -> None:
    original = ValueError("bad input")
    ran: list[str] = []

    async def first(ctx: StageContext) -> StageReturn:
        return {"x": 1}

    async def explode(ctx: StageContext) -> StageReturn:
        raise original

    async def never(ctx: StageContext) -> StageReturn:
        ran.append(ctx.stage_name)
        return None

    pipeline = (
        Pipeline("p")
        .with_stage("first", first)
        .with_stage("explode", explode, after=["first"])
        .with_stage("never", never, after=["explode"])
    )
    with pytest.raises(StageExecutionError) as info:
        await run(pipeline.build(hooks=[]))
    error = info.value
    assert error.stage == "explode"
    assert error.__cause__ is original
    assert error.original is original
    assert error.code == "STAGE_FAILED"
    assert str(error) == "stage 'explode' failed: bad input"
    assert set(error.results) == {"first", "explode"}
    assert error.results["first"].data == {"x": 1}
    failed = error.results["explode"]
    assert failed.status is StageStatus.FAIL
    assert failed.exception is original
    assert failed.error == "bad input"
    assert ran == []
    assert isinstance(error.results, PipelineResults)
    assert error.results.status == "fail"
    assert error.results.failed() == {"explode": failed}


async def test_a_returned_fail_cancels_a_running_sibling() -> None:
    started = anyio.Event()
    log: list[str] = []

    async def slow(ctx: StageContext) -> StageReturn:
        started.set()
        try:
            await anyio.sleep_forever()
        finally:
            log.append("slow stopped")
        return None

    async def bad(ctx: StageContext) -> StageReturn:
        await started.wait()
        return StageOutput.fail("boom")

    pipeline = Pipeline("p").with_stage("slow", slow).with_stage("bad", bad)
    with pytest.raises(StageExecutionError) as info:
        await run(pipeline.build(hooks=[]))
    error = info.value
    assert log == ["slow stopped"]
    assert error.stage == "bad"
    assert error.__cause__ is None
    assert error.original is None
    assert str(error) == "stage 'bad' failed: boom"
    assert error.results["bad"].status is StageStatus.FAIL
    cancelled = error.results["slow"]
    assert cancelled.status is StageStatus.CANCEL
    assert "'bad'" in cancelled.data["cancel_reason"]


async def test_fail_fast_never_starts_the_dependents_of_a_failure() -> None:
    timeline = Timeline()

    async def bad(ctx: StageContext) -> StageReturn:
        raise RuntimeError("x")

    pipeline = (
        Pipeline("p")
        .with_stage("bad", bad)
        .with_stage("child", timeline.stage(), after=["bad"])
        .with_stage("grandchild", timeline.stage(), after=["child"])
    )
    with pytest.raises(StageExecutionError) as info:
        await run(pipeline.build(hooks=[]))
    assert timeline.entries == []
    assert set(info.value.results) == {"bad"}


async def test_continue_mode_finishes_independent_branches_and_skips_dependents() -> None:
    failed = anyio.Event()
    ran: list[str] = []

    async def bad(ctx: StageContext) -> StageReturn:
        failed.set()
        raise RuntimeError("disk full")

    async def independent(ctx: StageContext) -> StageReturn:
        # Still running when `bad` fails, and must be allowed to finish.
        await failed.wait()
        for _ in range(3):
            await anyio.lowlevel.checkpoint()
        ran.append(ctx.stage_name)
        return {"done": True}

    async def dependent(ctx: StageContext) -> StageReturn:
        ran.append(ctx.stage_name)
        return None

    pipeline = (
        Pipeline("p")
        .with_stage("bad", bad)
        .with_stage("independent", independent)
        .with_stage("child", dependent, after=["bad"])
        .with_stage("grandchild", dependent, after=["child"])
        .with_stage("join", dependent, after=["independent", "grandchild"])
        .with_stage("after_independent", dependent, after=["independent"])
    )
    with pytest.raises(StageExecutionError) as info:
        await run(pipeline.build(hooks=[], failure_mode="continue"))
    error = info.value
    results = error.results
    assert error.stage == "bad"
    assert isinstance(error.__cause__, RuntimeError)
    assert set(results) == {s.name for s in pipeline.specs}
    assert results["bad"].status is StageStatus.FAIL
    assert results["independent"].status is StageStatus.OK
    assert results["after_independent"].status is StageStatus.OK
    for name in ("child", "grandchild", "join"):
        out = results[name]
        assert out.status is StageStatus.SKIP, name
        assert "'bad'" in out.data["reason"], name
        assert out.metadata["blocked_by"] == "bad"
    assert sorted(ran) == ["after_independent", "independent"]
    assert isinstance(results, PipelineResults)
    assert results.status == "fail"


async def test_pipeline_run_accepts_the_continue_mode() -> None:
    async def bad(ctx: StageContext) -> StageReturn:
        return StageOutput.fail("no")

    pipeline = Pipeline("p").with_stage("bad", bad).with_stage("other", noop)
    with pytest.raises(StageExecutionError) as info:
        with anyio.fail_after(HANG):
            await pipeline.run(failure_mode="continue")
    assert info.value.results["other"].status is StageStatus.OK


async def test_retry_without_a_retry_policy_fails_and_says_so() -> None:
    async def flaky(ctx: StageContext) -> StageReturn:
        return StageOutput.retry("try later")

    with pytest.raises(StageExecutionError) as info:
        await run(Pipeline("p").with_stage("flaky", flaky).build(hooks=[]))
    message = str(info.value)
    assert "returned RETRY (try later)" in message
    assert "no retry policy" in message
    assert info.value.results["flaky"].error_type == "stageflow.unhandled_retry"


async def test_a_stage_timeout_fails_with_stage_timeout_error() -> None:
    sink = CollectingEventSink()

    async def hang(ctx: StageContext) -> StageReturn:
        await anyio.sleep_forever()
        return None

    pipeline = Pipeline("p").with_stage("hang", hang, timeout=0.05).with_stage("quick", noop)
    with pytest.raises(StageExecutionError) as info:
        await run(pipeline.build(hooks=[], event_sink=sink))
    cause = info.value.__cause__
    assert isinstance(cause, StageTimeoutError)
    assert isinstance(cause, TimeoutError)
    assert (cause.stage, cause.timeout_s) == ("hang", 0.05)
    output = info.value.results["hang"]
    assert output.status is StageStatus.FAIL
    assert output.error_type == "stageflow.timeout"
    assert output.error == "stage 'hang' timed out after 0.05s"
    (failed_event,) = sink.of_type("stage.failed")
    assert failed_event["error_type"] == "stageflow.timeout"


async def test_a_stage_within_its_timeout_succeeds() -> None:
    results = await run(Pipeline("p").with_stage("a", noop, timeout=HANG).build(hooks=[]))
    assert results["a"].status is StageStatus.OK


# -- skips --------------------------------------------------------------------------------


async def test_a_conditional_stage_is_skipped_on_skip_reason_and_dependents_still_run() -> None:
    ran: list[str] = []

    async def router(ctx: StageContext) -> StageReturn:
        return {"skip_reason": "not needed"}

    async def record(ctx: StageContext) -> StageReturn:
        ran.append(ctx.stage_name)
        return None

    async def after_skip(ctx: StageContext) -> StageReturn:
        output = ctx.inputs.get_output("conditional")
        return {"upstream": None if output is None else output.status.value}

    pipeline = (
        Pipeline("p")
        .with_stage("router", router)
        .with_stage("conditional", record, after=["router"], conditional=True)
        .with_stage("unconditional", record, after=["router"])
        .with_stage("after_skip", after_skip, after=["conditional"])
    )
    results = await run(pipeline.build(hooks=[]))
    assert results["conditional"].status is StageStatus.SKIP
    assert results["conditional"].data == {"reason": "not needed"}
    assert ran == ["unconditional"]
    assert results.data("after_skip") == {"upstream": "skip"}
    assert results.ok


async def test_a_conditional_stage_runs_without_a_skip_reason() -> None:
    async def router(ctx: StageContext) -> StageReturn:
        return {"skip_reason": ""}

    async def conditional(ctx: StageContext) -> StageReturn:
        return {"ran": True}

    pipeline = (
        Pipeline("p")
        .with_stage("router", router)
        .with_stage("conditional", conditional, after=["router"], conditional=True)
    )
    results = await run(pipeline.build(hooks=[]))
    assert results.data("conditional") == {"ran": True}


async def test_a_returned_skip_does_not_propagate() -> None:
    async def skipper(ctx: StageContext) -> StageReturn:
        return StageOutput.skip("later")

    async def child(ctx: StageContext) -> StageReturn:
        return {"ran": True}

    pipeline = (
        Pipeline("p").with_stage("skipper", skipper).with_stage("child", child, after=["skipper"])
    )
    results = await run(pipeline.build(hooks=[]))
    assert results["skipper"].status is StageStatus.SKIP
    assert results.data("child") == {"ran": True}


# -- cancellation ---------------------------------------------------------------------------


async def test_a_cancel_output_stops_the_run_with_partial_results() -> None:
    timeline = Timeline()

    async def stop(ctx: StageContext) -> StageReturn:
        return StageOutput.cancel("enough")

    pipeline = (
        Pipeline("p")
        .with_stage("a", noop)
        .with_stage("stop", stop, after=["a"])
        .with_stage("after", timeline.stage(), after=["stop"])
    )
    with pytest.raises(PipelineCancelled) as info:
        await run(pipeline.build(hooks=[]))
    error = info.value
    assert (error.stage, error.reason) == ("stop", "enough")
    assert error.code == "PIPELINE_CANCELLED"
    assert str(error) == "pipeline cancelled by stage 'stop': enough"
    assert set(error.results) == {"a", "stop"}
    assert error.results["stop"].status is StageStatus.CANCEL
    assert timeline.entries == []


async def test_a_stage_raising_cancellation_requested_cancels_the_run() -> None:
    async def stop(ctx: StageContext) -> StageReturn:
        raise StageCancellationRequested("user left")

    with pytest.raises(PipelineCancelled) as info:
        await run(Pipeline("p").with_stage("stop", stop).build(hooks=[]))
    assert (info.value.stage, info.value.reason) == ("stop", "user left")
    assert info.value.results["stop"].data == {"cancel_reason": "user left"}


async def test_a_cancel_token_stops_running_stages_at_once() -> None:
    token = CancellationToken()
    started = anyio.Event()
    log: list[str] = []

    async def slow(ctx: StageContext) -> StageReturn:
        started.set()
        try:
            await anyio.sleep_forever()
        finally:
            log.append("slow stopped")
        return None

    async def canceller(ctx: StageContext) -> StageReturn:
        await started.wait()
        token.cancel("shutting down")
        log.append(f"is_cancelled={ctx.is_cancelled} reason={ctx.cancellation_reason}")
        await anyio.lowlevel.checkpoint()
        log.append("canceller went on")
        return None

    pipeline = (
        Pipeline("p")
        .with_stage("slow", slow)
        .with_stage("canceller", canceller)
        .with_stage("never", noop, after=["canceller"])
    )
    with pytest.raises(PipelineCancelled) as info:
        await run(pipeline.build(hooks=[]), cancel_token=token)
    error = info.value
    assert error.stage is None
    assert error.reason == "shutting down"
    assert str(error) == "pipeline cancelled from outside: shutting down"
    assert sorted(log) == ["is_cancelled=True reason=shutting down", "slow stopped"]
    assert set(error.results) == {"slow", "canceller"}
    assert all(out.status is StageStatus.CANCEL for out in error.results.values())
    assert isinstance(error.results, PipelineResults)
    assert error.results.status == "cancel"


async def test_a_token_cancelled_before_the_run_runs_nothing() -> None:
    token = CancellationToken()
    token.cancel("too late")
    timeline = Timeline()
    graph = Pipeline("p").with_stage("a", timeline.stage()).build(hooks=[])
    with pytest.raises(PipelineCancelled) as info:
        await run(graph, cancel_token=token)
    assert (info.value.stage, info.value.reason) == (None, "too late")
    assert dict(info.value.results) == {}
    assert timeline.entries == []


async def test_a_token_used_by_a_finished_run_is_released() -> None:
    token = CancellationToken()
    graph = Pipeline("p").with_stage("a", noop).build(hooks=[])
    await run(graph, cancel_token=token)
    # Cancelling after the run must not touch the finished run (no error, no effect).
    assert token.cancel("afterwards") is True


class CleanupHook(RunHook):
    """Registers a cleanup callback on every run it wraps."""

    def __init__(self, log: list[str]) -> None:
        self.log = log

    async def around_run(
        self, run: RunCall, proceed: Callable[[], Awaitable[PipelineResults]]
    ) -> PipelineResults:
        run.progress.cleanup.register(lambda: self.log.append("cleanup"), name="log")
        return await proceed()


async def test_cancelling_the_caller_stops_the_run_and_leaves_nothing_running() -> None:
    log: list[str] = []
    started = anyio.Event()

    async def slow(ctx: StageContext) -> StageReturn:
        started.set()
        try:
            await anyio.sleep_forever()
        finally:
            log.append(f"{ctx.stage_name} finally")
        return None

    ticks = 0

    async def busy(ctx: StageContext) -> StageReturn:
        nonlocal ticks
        try:
            while True:
                ticks += 1
                await anyio.lowlevel.checkpoint()
        finally:
            log.append("busy finally")

    pipeline = Pipeline("p").with_stage("slow", slow).with_stage("busy", busy)
    graph = pipeline.build(hooks=[CleanupHook(log)])
    scope = anyio.CancelScope()

    async def cancel_when_started() -> None:
        await started.wait()
        scope.cancel()

    with anyio.fail_after(HANG):
        async with anyio.create_task_group() as tg:
            tg.start_soon(cancel_when_started)
            with scope:
                await graph.run()
            snapshot = list(log)
            ticks_at_return = ticks

    assert scope.cancelled_caught
    assert "slow finally" in snapshot
    assert "busy finally" in snapshot
    assert snapshot[-1] == "cleanup"
    for _ in range(20):
        await anyio.lowlevel.checkpoint()
    assert log == snapshot
    assert ticks == ticks_at_return


async def test_cleanup_callbacks_run_after_a_successful_run() -> None:
    log: list[str] = []

    async def stage(ctx: StageContext) -> StageReturn:
        log.append("stage")
        return None

    await run(Pipeline("p").with_stage("a", stage).build(hooks=[CleanupHook(log)]))
    assert log == ["stage", "cleanup"]


async def test_a_worker_thread_stage_stops_cooperatively_before_the_run_ends() -> None:
    token = CancellationToken()
    started = threading.Event()
    seen: list[str] = []

    def poll(ctx: StageContext) -> StageReturn:
        started.set()
        deadline = time.monotonic() + HANG
        while time.monotonic() < deadline:
            try:
                ctx.raise_if_cancelled()
            except StageCancellationRequested as exc:
                seen.append(exc.reason)
                raise
            time.sleep(0.001)
        return None

    async def canceller(ctx: StageContext) -> StageReturn:
        await anyio.to_thread.run_sync(started.wait)
        token.cancel("halt")
        return None

    pipeline = Pipeline("p").with_stage("poll", poll).with_stage("canceller", canceller)
    with pytest.raises(PipelineCancelled) as info:
        await run(pipeline.build(hooks=[]), cancel_token=token)
    # The run must not report before the thread it started has stopped.
    assert seen == ["halt"]
    assert info.value.results["poll"].status is StageStatus.CANCEL


async def test_cancellation_checkpoint_raises_inside_a_shielded_section() -> None:
    token = CancellationToken()
    seen: list[str] = []

    async def shielded(ctx: StageContext) -> StageReturn:
        with anyio.CancelScope(shield=True):
            token.cancel("stop")
            try:
                await ctx.cancellation_checkpoint()
            except BaseException as exc:
                seen.append(type(exc).__name__)
                raise
        return None

    with pytest.raises(PipelineCancelled) as info:
        await run(Pipeline("p").with_stage("s", shielded).build(hooks=[]), cancel_token=token)
    assert seen == ["StageCancellationRequested"]
    assert info.value.results["s"].data == {"cancel_reason": "stop"}


async def test_cancellation_checks_pass_while_the_run_goes_on() -> None:
    seen: dict[str, Any] = {}

    async def stage(ctx: StageContext) -> StageReturn:
        ctx.raise_if_cancelled()
        await ctx.cancellation_checkpoint()
        seen["is_cancelled"] = ctx.is_cancelled
        seen["reason"] = ctx.cancellation_reason
        return None

    await run(Pipeline("p").with_stage("a", stage).build(hooks=[]))
    assert seen == {"is_cancelled": False, "reason": None}


# -- identity, concurrency, results -------------------------------------------------------------


async def test_the_identity_reaches_stages_and_results() -> None:
    identity = RunIdentity(
        pipeline_run_id="run-1", request_id="req-1", session_id="s-1", user_id="u-1", org_id="o-1"
    )
    seen: dict[str, Any] = {}

    async def stage(ctx: StageContext) -> StageReturn:
        seen["identity"] = ctx.identity
        seen["run_id"] = ctx.pipeline_run_id
        seen["pipeline"] = ctx.pipeline_name
        seen["stage"] = ctx.stage_name
        seen["depth"] = ctx.depth
        seen["parent"] = ctx.parent_run_id
        seen["attempt"] = ctx.attempt
        return None

    results = await run(
        Pipeline("orders").with_stage("a", stage).build(hooks=[]), identity=identity
    )
    assert seen == {
        "identity": identity,
        "run_id": "run-1",
        "pipeline": "orders",
        "stage": "a",
        "depth": 0,
        "parent": None,
        "attempt": 1,
    }
    assert results.run_id == "run-1"
    assert results.pipeline == "orders"


async def test_each_run_gets_a_new_run_id() -> None:
    graph = Pipeline("p").with_stage("a", noop).build(hooks=[])
    first = await run(graph)
    second = await run(graph)
    assert first.run_id
    assert first.run_id != second.run_id


async def test_one_graph_run_twice_at_once_keeps_per_run_state_apart() -> None:
    arrived = {1: anyio.Event(), 2: anyio.Event()}

    async def first(ctx: StageContext) -> StageReturn:
        n: int = ctx.data["n"]
        ctx.write("owner", n)  # the same key in both runs: no conflict across runs
        arrived[n].set()
        await arrived[3 - n].wait()  # both runs are inside this stage at once
        return {"n": n, "run": ctx.pipeline_run_id}

    async def second(ctx: StageContext) -> StageReturn:
        return {"from_first": ctx.inputs.get_from("first", "n"), "owner": ctx.bag.get("owner")}

    graph = (
        Pipeline("p")
        .with_stage("first", first)
        .with_stage("second", second, after=["first"])
        .build()
    )
    results: dict[int, PipelineResults] = {}

    async def one(n: int) -> None:
        results[n] = await graph.run({"n": n})

    with anyio.fail_after(HANG):
        async with anyio.create_task_group() as tg:
            tg.start_soon(one, 1)
            tg.start_soon(one, 2)

    for n in (1, 2):
        assert results[n].data("second") == {"from_first": n, "owner": n}
        assert results[n].data("first")["run"] == results[n].run_id
    assert results[1].run_id != results[2].run_id


async def test_pipeline_results_helpers() -> None:
    async def bad(ctx: StageContext) -> StageReturn:
        return StageOutput.fail("nope")

    async def skipper(ctx: StageContext) -> StageReturn:
        return StageOutput.skip("n/a")

    pipeline = (
        Pipeline("p")
        .with_stage("good", noop)
        .with_stage("skipper", skipper)
        .with_stage("bad", bad, after=["good", "skipper"])
    )
    with pytest.raises(StageExecutionError) as info:
        await run(pipeline.build(hooks=[]))
    results = info.value.results
    assert isinstance(results, PipelineResults)
    assert not results.ok
    assert results.pipeline == "p"
    assert results.duration_ms >= 0
    assert list(results)[-1] == "bad"
    assert len(results) == 3
    assert results.require_ok("good").status is StageStatus.OK
    with pytest.raises(RuntimeError, match="stage 'bad' ended with status fail: nope"):
        results.require_ok("bad")
    with pytest.raises(RuntimeError, match="status skip"):
        results.require_ok("skipper")
    with pytest.raises(KeyError, match="'missing' has no output"):
        results.require_ok("missing")
    assert dict(results.data("missing")) == {}
    assert set(results.failed()) == {"bad"}
    assert results.attempts("good") == 1
    assert results.attempts("missing") == 0
    assert "status='fail'" in repr(results)
    assert "bad=fail" in repr(results)


async def test_a_broken_run_hook_fails_only_its_stage() -> None:
    class Broken(RunHook):
        async def around_stage(
            self, call: Any, proceed: Callable[[Any], Awaitable[StageOutput]]
        ) -> StageOutput:
            if call.stage == "b":
                raise RuntimeError("hook bug")
            return await proceed(call)

    pipeline = Pipeline("p").with_stage("a", noop).with_stage("b", noop, after=["a"])
    with pytest.raises(StageExecutionError) as info:
        await run(pipeline.build(hooks=[Broken()]))
    assert info.value.stage == "b"
    assert info.value.results["a"].status is StageStatus.OK
    assert isinstance(info.value.__cause__, RuntimeError)


async def test_stage_cleanups_run_after_the_run_even_when_it_fails() -> None:
    log: list[str] = []

    async def close_async() -> None:
        log.append("async cleanup")

    async def opener(ctx: StageContext) -> StageReturn:
        ctx.register_cleanup(lambda: log.append("sync cleanup"), name="sync")
        ctx.register_cleanup(close_async, name="async")
        return None

    async def boom(ctx: StageContext) -> StageReturn:
        log.append("boom")
        raise ValueError("boom")

    graph = Pipeline("p").with_stage("a", opener).with_stage("b", boom, after=["a"]).build(hooks=[])
    with pytest.raises(StageExecutionError):
        await run(graph)
    # Last in, first out, after the failing stage.
    assert log == ["boom", "async cleanup", "sync cleanup"]


async def test_a_stage_cannot_forge_the_stage_of_its_events() -> None:
    sink = CollectingEventSink()

    async def stage(ctx: StageContext) -> StageReturn:
        ctx.try_emit_event("custom.event", {"stage": "someone-else", "k": 1})
        return None

    await run(Pipeline("p").with_stage("a", stage).build(hooks=[], event_sink=sink))
    (payload,) = sink.of_type("custom.event")
    assert (payload["stage"], payload["k"]) == ("a", 1)


async def test_the_callers_cancellation_is_not_replaced_by_the_runs_outcome() -> None:
    token = CancellationToken()
    winding_down = anyio.Event()

    async def slow_to_stop(ctx: StageContext) -> StageReturn:
        try:
            await anyio.sleep_forever()
        finally:
            with anyio.CancelScope(shield=True):
                winding_down.set()
                await anyio.sleep(0.05)
        return None

    async def canceller(ctx: StageContext) -> StageReturn:
        await anyio.sleep(0.01)
        token.cancel("stop")
        return None

    graph = (
        Pipeline("p").with_stage("slow", slow_to_stop).with_stage("c", canceller).build(hooks=[])
    )
    escaped: list[str] = []
    with anyio.fail_after(HANG):
        with anyio.CancelScope() as outer:
            async with anyio.create_task_group() as group:

                async def run_it() -> None:
                    try:
                        await graph.run(cancel_token=token)
                    except BaseException as exc:
                        escaped.append(type(exc).__name__)
                        raise

                group.start_soon(run_it)
                await winding_down.wait()
                outer.cancel()  # the caller gives up while the run winds down
    assert outer.cancelled_caught
    assert escaped
    assert "PipelineCancelled" not in escaped


async def test_an_interceptor_can_cancel_the_run() -> None:
    from stageflow_otel.core import BaseInterceptor, CallNext, StageCall

    class Stop(BaseInterceptor):
        name = "stop"

        async def intercept(self, call: StageCall, call_next: CallNext) -> StageOutput:
            call.context.raise_if_cancelled()
            raise StageCancellationRequested("maintenance window")

    graph = Pipeline("p").with_stage("a", noop).build(hooks=[], interceptors=[Stop()])
    with pytest.raises(PipelineCancelled) as info:
        await run(graph)
    assert info.value.reason == "maintenance window"
    assert info.value.results["a"].status is StageStatus.CANCEL
