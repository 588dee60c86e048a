"""RetryInterceptor and TimeoutInterceptor, alone and in real pipeline runs; interceptor order."""

from __future__ import annotations

import asyncio
import random
from collections.abc import Callable, Mapping
from typing import Any

import anyio
import anyio.lowlevel
import pytest

from stageflow_otel.core import (
    BaseInterceptor,
    CallNext,
    CollectingEventSink,
    Interceptor,
    Pipeline,
    PipelineResults,
    RateLimitError,
    RetryInterceptor,
    ServiceUnavailableError,
    StageCall,
    StageContext,
    StageExecutionError,
    StageGraph,
    StageOutput,
    StageReturn,
    StageStatus,
    StageTimeoutError,
    TimeoutInterceptor,
    TransientError,
)
from stageflow_otel.core.resilience import Backoff

pytestmark = pytest.mark.anyio

TRANSIENT = "stageflow_otel.core.errors.TransientError"


class RecordingSleep:
    """A fake ``sleep``: records each delay and only yields to the loop."""

    def __init__(self) -> None:
        self.delays: list[float] = []

    async def __call__(self, delay: float) -> None:
        self.delays.append(delay)
        await anyio.lowlevel.checkpoint()


class Flaky:
    """A stage that fails with ``errors[i]`` on call ``i`` and succeeds after them."""

    def __init__(self, *errors: BaseException | StageOutput) -> None:
        self.errors = list(errors)
        self.attempts_seen: list[int] = []
        self.raised: list[BaseException] = []

    @property
    def calls(self) -> int:
        return len(self.attempts_seen)

    async def __call__(self, ctx: StageContext) -> StageReturn:
        self.attempts_seen.append(ctx.attempt)
        if self.calls <= len(self.errors):
            error = self.errors[self.calls - 1]
            if isinstance(error, StageOutput):
                return error
            self.raised.append(error)
            raise error
        return {"value": self.calls}


class Failing:
    """A stage that always raises a new ``make()`` exception."""

    def __init__(self, make: Callable[[], BaseException]) -> None:
        self.make = make
        self.raised: list[BaseException] = []

    async def __call__(self, ctx: StageContext) -> StageReturn:
        error = self.make()
        self.raised.append(error)
        raise error


def graph(
    runner: Any,
    *interceptors: Interceptor,
    sink: CollectingEventSink | None = None,
    name: str = "s",
) -> StageGraph:
    return (
        Pipeline("p")
        .with_stage(name, runner, interceptors=interceptors)
        .build(event_sink=sink, hooks=[])
    )


async def run_failing(g: StageGraph, data: Mapping[str, Any] | None = None) -> StageExecutionError:
    with pytest.raises(StageExecutionError) as info:
        await g.run(data)
    return info.value


def attempts(error: StageExecutionError, stage: str = "s") -> int:
    results = error.results
    assert isinstance(results, PipelineResults)
    return results.attempts(stage)


# -- attempts -----------------------------------------------------------------------------------


@pytest.mark.parametrize("max_attempts", [1, 2, 3, 4, 5])
async def test_a_stage_that_keeps_failing_runs_exactly_max_attempts_times(
    max_attempts: int,
) -> None:
    stage = Failing(lambda: TransientError("boom"))
    sleep = RecordingSleep()
    retry = RetryInterceptor(max_attempts, base_delay=0.0, sleep=sleep)

    error = await run_failing(graph(stage, retry))

    assert len(stage.raised) == max_attempts
    assert len(sleep.delays) == max_attempts - 1
    assert attempts(error) == max_attempts


async def test_exhausted_retries_fail_with_the_last_exception_and_say_so() -> None:
    stage = Failing(lambda: ServiceUnavailableError("down"))
    retry = RetryInterceptor(3, base_delay=0.0, sleep=RecordingSleep())

    error = await run_failing(graph(stage, retry))

    output = error.results["s"]
    assert output.status is StageStatus.FAIL
    assert output.error == "stage 's' failed after 3 attempts: down"
    assert output.exception is stage.raised[-1]
    assert output.metadata["attempts"] == 3
    assert output.error_type == "stageflow_otel.core.errors.ServiceUnavailableError"
    assert error.original is stage.raised[-1]
    assert error.__cause__ is stage.raised[-1]
    assert str(error) == "stage 's' failed after 3 attempts: down"


async def test_a_retried_stage_ends_ok_and_the_run_counts_its_attempts() -> None:
    stage = Flaky(TransientError("1"), ConnectionError("2"), TimeoutError("3"))
    seen: list[Any] = []

    async def downstream(ctx: StageContext) -> StageReturn:
        seen.append(ctx.inputs.get_from("s", "value"))
        return None

    g = (
        Pipeline("p")
        .with_stage("s", stage)
        .with_stage("after", downstream, dependencies=["s"])
        .build(interceptors=[RetryInterceptor(5, base_delay=0.0, sleep=RecordingSleep())], hooks=[])
    )

    results = await g.run()

    assert results.ok
    assert results.attempts("s") == 4
    assert results.attempts("after") == 1
    assert stage.attempts_seen == [1, 2, 3, 4]
    assert results["s"].data == {"value": 4}
    assert seen == [4]


async def test_a_non_retryable_exception_fails_at_once() -> None:
    stage = Failing(lambda: ValueError("bad input"))
    sleep = RecordingSleep()

    error = await run_failing(graph(stage, RetryInterceptor(5, sleep=sleep)))

    assert len(stage.raised) == 1
    assert sleep.delays == []
    output = error.results["s"]
    assert output.error == "bad input"
    assert output.exception is stage.raised[0]
    assert "attempts" not in output.metadata
    assert attempts(error) == 1


async def test_a_non_retryable_failure_after_retries_is_returned_as_it_is() -> None:
    stage = Flaky(TransientError("flaky"), KeyError("gone"))
    error = await run_failing(
        graph(stage, RetryInterceptor(5, base_delay=0.0, sleep=RecordingSleep()))
    )

    assert stage.calls == 2
    assert isinstance(error.results["s"].exception, KeyError)
    assert attempts(error) == 2


async def test_retry_on_and_retry_if_choose_what_is_retried() -> None:
    only_value_errors = RetryInterceptor(
        3, base_delay=0.0, retry_on=ValueError, sleep=RecordingSleep()
    )
    stage = Flaky(ValueError("v"))
    assert (await graph(stage, only_value_errors).run()).ok
    assert stage.calls == 2

    transient = Failing(lambda: TransientError("no longer retried"))
    await run_failing(graph(transient, only_value_errors))
    assert len(transient.raised) == 1

    by_message = RetryInterceptor(
        3,
        base_delay=0.0,
        retry_on=(),
        retry_if=lambda output: output.error == "try again",
        sleep=RecordingSleep(),
    )
    stage = Flaky(StageOutput.fail("try again"), StageOutput.fail("try again"))
    assert (await graph(stage, by_message).run()).ok
    assert stage.calls == 3


async def test_a_retry_output_is_retried() -> None:
    stage = Flaky(StageOutput.retry("not yet"), StageOutput.retry("not yet"))

    results = await graph(stage, RetryInterceptor(3, base_delay=0.0, sleep=RecordingSleep())).run()

    assert results.ok
    assert results.attempts("s") == 3


async def test_a_final_retry_output_becomes_a_fail() -> None:
    stage = Flaky(*[StageOutput.retry("still busy")] * 5)

    error = await run_failing(
        graph(stage, RetryInterceptor(3, base_delay=0.0, sleep=RecordingSleep()))
    )

    output = error.results["s"]
    assert stage.calls == 3
    assert output.status is StageStatus.FAIL
    assert output.error == "stage 's' failed after 3 attempts: still busy"
    assert output.metadata["attempts"] == 3
    assert output.error_type == "_OTHER"


async def test_retry_on_status_false_leaves_a_retry_output_alone() -> None:
    stage = Flaky(StageOutput.retry("later"))
    retry = RetryInterceptor(3, retry_on_status=False, sleep=RecordingSleep())

    error = await run_failing(graph(stage, retry))

    assert stage.calls == 1
    # The executor's own message for a RETRY that no retry policy handled.
    assert error.results["s"].error_type == "stageflow.unhandled_retry"


async def test_skip_and_cancel_are_not_retried() -> None:
    skip = Flaky(StageOutput.skip("nothing to do"))
    results = await graph(skip, RetryInterceptor(3, sleep=RecordingSleep())).run()
    assert skip.calls == 1
    assert results["s"].status is StageStatus.SKIP


# -- delays -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("backoff", "expected"),
    [
        ("exponential", [0.5, 1.0, 2.0, 3.0, 3.0]),
        ("linear", [0.5, 1.0, 1.5, 2.0, 2.5]),
        ("constant", [0.5, 0.5, 0.5, 0.5, 0.5]),
    ],
)
async def test_delays_follow_the_backoff_and_are_capped(
    backoff: Backoff, expected: list[float]
) -> None:
    sleep = RecordingSleep()
    retry = RetryInterceptor(6, base_delay=0.5, max_delay=3.0, backoff=backoff, sleep=sleep)

    await run_failing(graph(Failing(lambda: TransientError("x")), retry))

    assert sleep.delays == expected


async def test_full_jitter_is_uniform_below_the_backoff_delay() -> None:
    sleep = RecordingSleep()
    retry = RetryInterceptor(
        6, base_delay=1.0, max_delay=8.0, jitter="full", sleep=sleep, random=random.Random(42)
    )

    await run_failing(graph(Failing(lambda: TransientError("x")), retry))

    rng = random.Random(42)
    assert sleep.delays == [rng.uniform(0.0, d) for d in (1.0, 2.0, 4.0, 8.0, 8.0)]
    assert all(0.0 <= got <= cap for got, cap in zip(sleep.delays, (1, 2, 4, 8, 8), strict=True))


async def test_equal_jitter_keeps_at_least_half_the_delay() -> None:
    sleep = RecordingSleep()
    retry = RetryInterceptor(
        5, base_delay=2.0, backoff="constant", jitter="equal", sleep=sleep, random=random.Random(7)
    )

    await run_failing(graph(Failing(lambda: TransientError("x")), retry))

    rng = random.Random(7)
    assert sleep.delays == [1.0 + rng.uniform(0.0, 1.0) for _ in range(4)]
    assert all(1.0 <= d <= 2.0 for d in sleep.delays)


async def test_decorrelated_jitter_grows_from_the_previous_delay() -> None:
    sleep = RecordingSleep()
    retry = RetryInterceptor(
        8,
        base_delay=1.0,
        max_delay=20.0,
        jitter="decorrelated",
        sleep=sleep,
        random=random.Random(3),
    )

    await run_failing(graph(Failing(lambda: TransientError("x")), retry))

    rng = random.Random(3)
    expected: list[float] = []
    previous = 1.0
    for _ in range(7):
        previous = min(20.0, rng.uniform(1.0, previous * 3))
        expected.append(previous)
    assert sleep.delays == expected
    bounds = [1.0, *sleep.delays[:-1]]
    assert all(1.0 <= d <= min(20.0, 3 * p) for d, p in zip(sleep.delays, bounds, strict=True))


async def test_retry_after_replaces_the_delay_and_is_capped() -> None:
    sleep = RecordingSleep()
    stage = Flaky(
        RateLimitError(retry_after=2.5),
        RateLimitError(retry_after=100.0),
        RateLimitError(),  # no hint: the computed delay
    )
    retry = RetryInterceptor(
        5, base_delay=0.1, max_delay=10.0, jitter="full", sleep=sleep, random=random.Random(1)
    )

    results = await graph(stage, retry).run()

    assert results.ok
    assert sleep.delays[:2] == [2.5, 10.0]
    assert 0.0 <= sleep.delays[2] <= 0.4  # exponential 0.1 * 2**2, fully jittered


async def test_compute_delay_stays_finite_for_huge_attempt_numbers() -> None:
    retry = RetryInterceptor(base_delay=0.1, max_delay=30.0)
    assert retry.compute_delay(5000) == 30.0


# -- events -------------------------------------------------------------------------------------


async def test_each_retry_emits_stage_retrying_in_order() -> None:
    sink = CollectingEventSink()
    stage = Flaky(TransientError("first"), StageTimeoutError("s", 1.0))
    retry = RetryInterceptor(3, base_delay=0.25, sleep=RecordingSleep())

    results = await graph(stage, retry, sink=sink).run()

    assert results.ok
    retrying = sink.of_type("stage.retrying")
    assert [
        (e["stage"], e["attempt"], e["delay_s"], e["error"], e["error_type"]) for e in retrying
    ] == [
        ("s", 2, 0.25, "first", TRANSIENT),
        (
            "s",
            3,
            0.5,
            "stage 's' timed out after 1s",
            "stageflow_otel.core.errors.StageTimeoutError",
        ),
    ]
    assert all(e["pipeline_run_id"] == results.run_id for e in retrying)
    assert [t for t in sink.types if t.startswith("stage.")] == [
        "stage.started",
        "stage.retrying",
        "stage.retrying",
        "stage.completed",
    ]
    assert sink.of_type("stage.completed")[0]["attempt"] == 3


async def test_a_pipeline_level_retry_wraps_every_stage() -> None:
    sink = CollectingEventSink()
    a = Flaky(TransientError("a1"))
    b = Flaky(TransientError("b1"), TransientError("b2"))
    g = (
        Pipeline("p")
        .with_stage("a", a)
        .with_stage("b", b, dependencies=["a"])
        .build(
            interceptors=[RetryInterceptor(3, base_delay=0.0, sleep=RecordingSleep())],
            event_sink=sink,
            hooks=[],
        )
    )

    results = await g.run()

    assert (results.attempts("a"), results.attempts("b")) == (2, 3)
    assert [(e["stage"], e["attempt"]) for e in sink.of_type("stage.retrying")] == [
        ("a", 2),
        ("b", 2),
        ("b", 3),
    ]


# -- cancellation -------------------------------------------------------------------------------


def live_tasks(backend: str) -> int:
    if backend == "asyncio":
        return len(asyncio.all_tasks())
    import trio

    return trio.lowlevel.current_statistics().tasks_living


async def test_cancelling_the_run_during_a_retry_sleep_stops_it_at_once(
    anyio_backend: str,
) -> None:
    sleeping = anyio.Event()
    outcomes: list[str] = []

    async def real_sleep(delay: float) -> None:
        sleeping.set()
        try:
            await anyio.sleep(delay)
        except anyio.get_cancelled_exc_class():
            outcomes.append("sleep cancelled")
            raise
        outcomes.append("sleep finished")

    stage = Failing(lambda: TransientError("x"))
    sink = CollectingEventSink()
    g = graph(stage, RetryInterceptor(5, base_delay=3600.0, max_delay=3600.0, sleep=real_sleep))
    before = live_tasks(anyio_backend)

    with anyio.fail_after(30):  # only a guard against a hang; nothing here waits for it
        with anyio.CancelScope() as scope:
            async with anyio.create_task_group() as tg:

                async def run() -> None:
                    await g.run(event_sink=sink)

                tg.start_soon(run)
                await sleeping.wait()
                scope.cancel()

    assert scope.cancelled_caught
    assert outcomes == ["sleep cancelled"]
    assert len(stage.raised) == 1
    assert "stage.cancelled" in sink.types
    assert live_tasks(anyio_backend) == before


# -- arguments ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"max_attempts": 0}, ValueError, "max_attempts must be a whole number >= 1"),
        ({"max_attempts": 2.5}, TypeError, "max_attempts must be a whole number"),
        ({"max_attempts": True}, TypeError, "max_attempts must be a whole number"),
        ({"base_delay": -1}, ValueError, "base_delay"),
        ({"base_delay": float("nan")}, ValueError, "base_delay"),
        ({"max_delay": float("inf")}, ValueError, "max_delay"),
        ({"base_delay": 5.0, "max_delay": 1.0}, ValueError, r"max_delay \(1.0\) must be >="),
        ({"backoff": "fibonacci"}, ValueError, "unknown backoff 'fibonacci'"),
        ({"jitter": "some"}, ValueError, "unknown jitter 'some'"),
        ({"retry_on": (ValueError, "oops")}, TypeError, "retry_on must hold exception types"),
        ({"retry_if": 3}, TypeError, "retry_if must be a callable"),
    ],
)
async def test_retry_arguments_are_validated(
    kwargs: dict[str, Any], error: type[Exception], match: str
) -> None:
    with pytest.raises(error, match=match):
        RetryInterceptor(**kwargs)


# -- timeouts -----------------------------------------------------------------------------------


async def hang(ctx: StageContext) -> StageReturn:
    await anyio.Event().wait()
    return None


async def brief(ctx: StageContext) -> StageReturn:
    await anyio.sleep(0.05)
    return {"done": True}


async def test_a_stage_over_its_timeout_fails_like_a_spec_timeout() -> None:
    error = await run_failing(graph(hang, TimeoutInterceptor(0.01)))

    output = error.results["s"]
    assert output.status is StageStatus.FAIL
    assert isinstance(output.exception, StageTimeoutError)
    assert output.exception.timeout_s == 0.01
    assert output.error == "stage 's' timed out after 0.01s"
    assert dict(output.metadata) == {"error_code": "TIMEOUT"}
    assert (output.error_type, output.timed_out, output.failed_by) == (
        "stageflow.timeout",
        True,
        "timeout",
    )

    spec_timeout = await run_failing(
        Pipeline("p").with_stage("s", hang, timeout=0.01).build(hooks=[])
    )
    spec_output = spec_timeout.results["s"]
    assert dict(spec_output.metadata) == {"error_code": "TIMEOUT"}
    assert (spec_output.error_type, spec_output.timed_out, spec_output.failed_by) == (
        "stageflow.timeout",
        True,
        None,
    )


async def test_per_stage_timeouts_override_the_default() -> None:
    timeouts = TimeoutInterceptor(0.01, per_stage={"unbounded": None, "generous": 60.0})
    g = (
        Pipeline("p")
        .with_stage("unbounded", brief)
        .with_stage("generous", brief)
        .with_stage("default", hang, dependencies=["unbounded", "generous"])
        .build(interceptors=[timeouts], hooks=[], failure_mode="continue")
    )

    error = await run_failing(g)

    assert error.results["unbounded"].data == {"done": True}
    assert error.results["generous"].data == {"done": True}
    assert isinstance(error.results["default"].exception, StageTimeoutError)
    assert [timeouts.timeout_for(s) for s in ("unbounded", "generous", "other")] == [
        None,
        60.0,
        0.01,
    ]


async def test_no_default_timeout_bounds_only_the_named_stages() -> None:
    timeouts = TimeoutInterceptor(None, per_stage={"s": 0.01})
    assert timeouts.timeout_for("other") is None
    await run_failing(graph(hang, timeouts))
    assert (await graph(brief, timeouts, name="other").run()).ok


async def test_a_timeout_inside_retry_bounds_each_attempt() -> None:
    calls: list[int] = []

    async def hangs_once(ctx: StageContext) -> StageReturn:
        calls.append(ctx.attempt)
        if ctx.attempt == 1:
            await anyio.Event().wait()
        return {"attempt": ctx.attempt}

    sink = CollectingEventSink()
    retry = RetryInterceptor(3, base_delay=0.0, sleep=RecordingSleep())
    results = await graph(hangs_once, retry, TimeoutInterceptor(0.01), sink=sink).run()

    assert results["s"].data == {"attempt": 2}
    assert calls == [1, 2]
    assert [e["error_type"] for e in sink.of_type("stage.retrying")] == ["stageflow.timeout"]


async def test_a_timeout_outside_retry_bounds_all_attempts_and_cuts_the_sleep() -> None:
    stage = Failing(lambda: TransientError("x"))
    retry = RetryInterceptor(100, base_delay=3600.0, max_delay=3600.0)

    error = await run_failing(graph(stage, TimeoutInterceptor(0.05), retry))

    assert len(stage.raised) == 1
    assert isinstance(error.results["s"].exception, StageTimeoutError)


async def test_a_timeout_never_swallows_cancellation_from_outside() -> None:
    started = anyio.Event()

    async def waits(ctx: StageContext) -> StageReturn:
        started.set()
        await anyio.Event().wait()
        return None

    sink = CollectingEventSink()
    g = graph(waits, TimeoutInterceptor(3600.0), sink=sink)
    with anyio.CancelScope() as scope:
        async with anyio.create_task_group() as tg:

            async def run() -> None:
                await g.run()

            tg.start_soon(run)
            await started.wait()
            scope.cancel()

    assert scope.cancelled_caught
    assert "stage.failed" not in sink.types
    assert sink.of_type("stage.cancelled")[0]["stage"] == "s"


@pytest.mark.parametrize(
    ("args", "kwargs", "error"),
    [
        ((0,), {}, ValueError),
        ((-1.0,), {}, ValueError),
        ((float("inf"),), {}, ValueError),
        (("10",), {}, TypeError),
        ((1.0,), {"per_stage": {"s": 0}}, ValueError),
    ],
)
async def test_timeout_arguments_are_validated(
    args: tuple[Any, ...], kwargs: dict[str, Any], error: type[Exception]
) -> None:
    with pytest.raises(error):
        TimeoutInterceptor(*args, **kwargs)


# -- order --------------------------------------------------------------------------------------


class Recording(BaseInterceptor):
    def __init__(self, label: str, log: list[str]) -> None:
        self.label = label
        self.log = log

    async def intercept(self, call: StageCall, call_next: CallNext) -> StageOutput:
        self.log.append(f"{self.label}>")
        output = await call_next(call)
        self.log.append(f"<{self.label}")
        return output


async def test_interceptors_nest_outermost_first_pipeline_level_outside_stage_level() -> None:
    log: list[str] = []

    async def stage(ctx: StageContext) -> StageReturn:
        log.append(f"stage#{ctx.attempt}")
        if ctx.attempt == 1:
            raise TransientError("again")
        return None

    g = (
        Pipeline("p")
        .with_stage(
            "s",
            stage,
            interceptors=[
                Recording("c", log),
                RetryInterceptor(2, base_delay=0.0, sleep=RecordingSleep()),
                Recording("d", log),
            ],
        )
        .build(interceptors=[Recording("a", log), Recording("b", log)], hooks=[])
    )

    await g.run()

    assert log == [
        "a>", "b>", "c>",
        "d>", "stage#1", "<d",
        "d>", "stage#2", "<d",
        "<c", "<b", "<a",
    ]  # fmt: skip


async def test_the_interceptors_have_stable_names() -> None:
    from stageflow_otel.core import (
        CircuitBreakerInterceptor,
        IdempotencyInterceptor,
    )

    names = [
        RetryInterceptor().name,
        TimeoutInterceptor().name,
        IdempotencyInterceptor().name,
        CircuitBreakerInterceptor().name,
    ]
    assert names == ["retry", "timeout", "idempotency", "circuit_breaker"]
    for interceptor in (RetryInterceptor(), TimeoutInterceptor()):
        assert isinstance(interceptor, Interceptor)
