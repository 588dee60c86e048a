"""CircuitBreakerInterceptor: transitions, counting, short-circuits, probes, shared state."""

from __future__ import annotations

import contextlib
from typing import Any

import anyio
import anyio.lowlevel
import pytest

from stageflow_otel.core import (
    CircuitBreakerInterceptor,
    CircuitBreakerStatistics,
    CircuitOpenError,
    CircuitState,
    CollectingEventSink,
    Pipeline,
    RetryInterceptor,
    StageContext,
    StageExecutionError,
    StageGraph,
    StageOutput,
    StageReturn,
    StageStatus,
    TransientError,
)

pytestmark = pytest.mark.anyio


class FakeClock:
    def __init__(self, now: float = 500.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


class Switch:
    """A stage that raises while ``failing`` is set, and counts its calls."""

    def __init__(self) -> None:
        self.failing = True
        self.calls = 0

    async def __call__(self, ctx: StageContext) -> StageReturn:
        self.calls += 1
        if self.failing:
            raise ConnectionError("backend down")
        return {"calls": self.calls}


def graph(
    stage: Any, breaker: CircuitBreakerInterceptor, sink: CollectingEventSink | None = None
) -> StageGraph:
    return (
        Pipeline("p")
        .with_stage("s", stage, interceptors=[breaker])
        .build(hooks=[], event_sink=sink)
    )


async def fails(g: StageGraph) -> StageOutput:
    with pytest.raises(StageExecutionError) as info:
        await g.run()
    return info.value.results["s"]


def stats(breaker: CircuitBreakerInterceptor) -> CircuitBreakerStatistics:
    return breaker.statistics()["s"]


async def test_closed_open_half_open_closed_and_open_again() -> None:
    clock = FakeClock()
    breaker = CircuitBreakerInterceptor(3, recovery_timeout=10.0, clock=clock)
    stage = Switch()
    g = graph(stage, breaker)
    assert breaker.state("s") is CircuitState.CLOSED

    # closed: failures are counted, the stage runs every time
    for expected in (1, 2):
        await fails(g)
        assert (stats(breaker).state, stats(breaker).failures) == (CircuitState.CLOSED, expected)
    await fails(g)
    opened = stats(breaker)
    assert opened.state is CircuitState.OPEN
    assert (opened.failures, opened.opened_at, opened.retry_at) == (3, 500.0, 510.0)
    assert stage.calls == 3

    # open: short-circuited without running
    clock.now += 9.0
    output = await fails(g)
    assert stage.calls == 3
    assert output.short_circuited_by is not None

    # half-open after the recovery timeout: one probe; success closes
    clock.now += 1.0
    assert breaker.state("s") is CircuitState.HALF_OPEN
    stage.failing = False
    results = await g.run()
    assert results["s"].status is StageStatus.OK
    assert stage.calls == 4
    assert (stats(breaker).state, stats(breaker).failures) == (CircuitState.CLOSED, 0)

    # open again, then a failed probe re-opens it
    stage.failing = True
    for _ in range(3):
        await fails(g)
    assert stats(breaker).state is CircuitState.OPEN
    clock.now += 10.0
    await fails(g)  # the probe, which fails
    reopened = stats(breaker)
    assert stage.calls == 8
    assert reopened.state is CircuitState.OPEN
    assert reopened.opened_at == clock.now
    assert reopened.times_opened == 3
    assert reopened.total_failures == 7
    assert reopened.total_short_circuits == 1


async def test_an_open_circuit_fails_the_stage_and_the_run() -> None:
    clock = FakeClock()
    breaker = CircuitBreakerInterceptor(1, recovery_timeout=30.0, clock=clock)
    sink = CollectingEventSink()
    stage = Switch()
    g = graph(stage, breaker, sink)
    await fails(g)
    clock.now += 12.5

    with pytest.raises(StageExecutionError) as info:
        await g.run()

    output = info.value.results["s"]
    assert output.status is StageStatus.FAIL  # stageflow-core recorded an OK with {}
    assert output.data == {}
    assert isinstance(output.exception, CircuitOpenError)
    assert info.value.original is output.exception
    assert output.exception.retry_in == 17.5
    assert output.error == (
        "circuit breaker for stage 's' is open after 1 consecutive failures; the stage was not "
        "run and will be tried again in 17.5s"
    )
    assert output.metadata["error_code"] == "CIRCUIT_OPEN"
    assert output.error_type == "stageflow.short_circuit"
    assert output.metadata["retry_in_s"] == 17.5
    assert stage.calls == 1
    failed = sink.of_type("stage.failed")[-1]
    assert failed["error_type"] == "stageflow.short_circuit"


async def test_a_raising_stage_counts_as_one_failure() -> None:
    breaker = CircuitBreakerInterceptor(2, clock=FakeClock())
    g = graph(Switch(), breaker)

    await fails(g)

    assert stats(breaker).failures == 1
    assert stats(breaker).total_failures == 1
    assert breaker.state("s") is CircuitState.CLOSED


async def test_a_success_resets_the_consecutive_count() -> None:
    breaker = CircuitBreakerInterceptor(3, clock=FakeClock())
    stage = Switch()
    g = graph(stage, breaker)
    await fails(g)
    await fails(g)
    stage.failing = False
    await g.run()
    stage.failing = True
    await fails(g)
    await fails(g)

    assert stats(breaker).state is CircuitState.CLOSED
    assert stats(breaker).failures == 2


async def test_returned_fail_and_retry_outputs_count_skip_does_not() -> None:
    outputs = iter([StageOutput.fail("no"), StageOutput.skip("later"), StageOutput.retry("busy")])

    async def scripted(ctx: StageContext) -> StageReturn:
        return next(outputs)

    breaker = CircuitBreakerInterceptor(2, clock=FakeClock())
    g = graph(scripted, breaker)
    await fails(g)
    await g.run()
    await fails(g)  # RETRY with no retry policy fails the stage too

    assert stats(breaker).state is CircuitState.OPEN


async def test_counts_as_failure_decides_what_counts() -> None:
    async def bad_request(ctx: StageContext) -> StageReturn:
        raise ValueError("the caller's fault, not the backend's")

    breaker = CircuitBreakerInterceptor(
        1,
        clock=FakeClock(),
        counts_as_failure=lambda out: (
            not isinstance(out.exception, ValueError) and out.status is StageStatus.FAIL
        ),
    )
    g = graph(bad_request, breaker)
    for _ in range(3):
        await fails(g)

    assert breaker.state("s") is CircuitState.CLOSED
    assert stats(breaker).total_failures == 0


async def test_state_is_kept_across_runs_and_graphs_sharing_the_instance() -> None:
    breaker = CircuitBreakerInterceptor(2, clock=FakeClock())
    stage = Switch()
    g = graph(stage, breaker)
    await fails(g)
    await fails(g)
    assert breaker.state("s") is CircuitState.OPEN

    other = Pipeline("q").with_stage("s", stage).build(interceptors=[breaker], hooks=[])
    output = await fails(other)
    assert output.short_circuited_by is not None
    assert stage.calls == 2

    fresh = graph(stage, CircuitBreakerInterceptor(2, clock=FakeClock()))
    await fails(fresh)
    assert stage.calls == 3


async def test_each_stage_has_its_own_circuit() -> None:
    breaker = CircuitBreakerInterceptor(1, clock=FakeClock())
    broken, healthy = Switch(), Switch()
    healthy.failing = False
    g = (
        Pipeline("p")
        .with_stage("broken", broken)
        .with_stage("healthy", healthy)
        .build(interceptors=[breaker], hooks=[], failure_mode="continue")
    )
    with pytest.raises(StageExecutionError):
        await g.run()

    assert breaker.state("broken") is CircuitState.OPEN
    assert breaker.state("healthy") is CircuitState.CLOSED
    assert set(breaker.statistics()) == {"broken", "healthy"}

    breaker.reset("broken")
    assert breaker.state("broken") is CircuitState.CLOSED


# -- concurrency --------------------------------------------------------------------------------


class Gate:
    """A stage that waits for ``release`` and then succeeds or raises."""

    def __init__(self, *, fail: bool = False) -> None:
        self.release = anyio.Event()
        self.fail = fail
        self.entered = 0

    async def __call__(self, ctx: StageContext) -> StageReturn:
        self.entered += 1
        await self.release.wait()
        if self.fail:
            raise ConnectionError("still down")
        return None


async def open_circuit(breaker: CircuitBreakerInterceptor, clock: FakeClock) -> None:
    g = graph(Switch(), breaker)
    while breaker.state("s") is not CircuitState.OPEN:
        await fails(g)
    clock.now += breaker.recovery_timeout
    assert breaker.state("s") is CircuitState.HALF_OPEN


async def run_concurrently(g: StageGraph, n: int, gate: Gate) -> list[StageOutput]:
    outputs: list[StageOutput] = []

    async def run() -> None:
        try:
            outputs.append((await g.run())["s"])
        except StageExecutionError as exc:
            outputs.append(exc.results["s"])

    async with anyio.create_task_group() as tg:
        for _ in range(n):
            tg.start_soon(run)
        # Every call either waits at the gate or has been short-circuited.
        while gate.entered + len(outputs) < n:
            await anyio.lowlevel.checkpoint()
        gate.release.set()
    return outputs


@pytest.mark.parametrize("max_calls", [1, 2])
async def test_half_open_lets_only_half_open_max_calls_probes_through(max_calls: int) -> None:
    clock = FakeClock()
    breaker = CircuitBreakerInterceptor(
        1, recovery_timeout=5.0, half_open_max_calls=max_calls, clock=clock
    )
    await open_circuit(breaker, clock)
    gate = Gate()

    outputs = await run_concurrently(graph(gate, breaker), 4, gate)

    assert gate.entered == max_calls
    short = [o for o in outputs if o.short_circuited_by]
    assert len(short) == 4 - max_calls
    assert all(o.metadata["circuit_state"] == "half_open" for o in short)
    assert "half-open" in (short[0].error or "")
    assert breaker.state("s") is CircuitState.CLOSED
    assert stats(breaker).half_open_calls == 0


async def test_a_cancelled_probe_frees_its_slot() -> None:
    clock = FakeClock()
    breaker = CircuitBreakerInterceptor(1, recovery_timeout=5.0, clock=clock)
    await open_circuit(breaker, clock)
    gate = Gate()
    g = graph(gate, breaker)

    with anyio.CancelScope() as scope:
        async with anyio.create_task_group() as tg:
            tg.start_soon(g.run)
            while not gate.entered:
                await anyio.lowlevel.checkpoint()
            assert stats(breaker).half_open_calls == 1
            scope.cancel()

    assert stats(breaker).half_open_calls == 0
    assert breaker.state("s") is CircuitState.HALF_OPEN
    gate.release.set()
    assert (await g.run())["s"].status is StageStatus.OK
    assert breaker.state("s") is CircuitState.CLOSED


@pytest.mark.parametrize("late_failure", [False, True])
async def test_a_late_result_does_not_change_a_circuit_opened_meanwhile(
    late_failure: bool,
) -> None:
    clock = FakeClock()
    breaker = CircuitBreakerInterceptor(1, recovery_timeout=10.0, clock=clock)
    slow = Gate(fail=late_failure)
    g_slow = graph(slow, breaker)
    g_fast = graph(Switch(), breaker)

    async def run_slow() -> None:
        with contextlib.suppress(StageExecutionError):
            await g_slow.run()

    async with anyio.create_task_group() as tg:
        tg.start_soon(run_slow)
        while not slow.entered:
            await anyio.lowlevel.checkpoint()
        await fails(g_fast)  # opens the circuit while the slow call runs
        clock.now += 3.0
        slow.release.set()

    after = stats(breaker)
    # A late success neither closes nor resets it; a late failure does not re-open it later.
    assert (after.state, after.failures, after.opened_at) == (CircuitState.OPEN, 1, 500.0)
    assert after.times_opened == 1
    assert after.total_failures == 1 + late_failure


# -- composition and arguments ------------------------------------------------------------------


async def test_retry_outside_the_breaker_does_not_retry_a_short_circuit() -> None:
    clock = FakeClock()
    breaker = CircuitBreakerInterceptor(2, clock=clock)
    stage = Switch()
    sleeps: list[float] = []

    async def sleep(delay: float) -> None:
        sleeps.append(delay)

    retry = RetryInterceptor(5, base_delay=0.0, sleep=sleep)
    g = Pipeline("p").with_stage("s", stage, interceptors=[retry, breaker]).build(hooks=[])

    output = await fails(g)

    # Two real attempts open the circuit; the third is short-circuited and not retried.
    assert stage.calls == 2
    assert len(sleeps) == 2
    assert isinstance(output.exception, CircuitOpenError)


async def test_statistics_are_frozen_snapshots() -> None:
    breaker = CircuitBreakerInterceptor(clock=FakeClock())
    await fails(graph(Switch(), breaker))
    snapshot = stats(breaker)
    with pytest.raises(AttributeError):
        snapshot.failures = 0  # type: ignore[misc]
    assert breaker.statistics() is not breaker.statistics()


@pytest.mark.parametrize(
    ("args", "kwargs", "error"),
    [
        ((0,), {}, ValueError),
        ((1.5,), {}, TypeError),
        ((5,), {"recovery_timeout": -1.0}, ValueError),
        ((5,), {"recovery_timeout": float("nan")}, ValueError),
        ((5,), {"recovery_timeout": "30s"}, TypeError),
        ((5,), {"half_open_max_calls": 0}, ValueError),
    ],
)
async def test_breaker_arguments_are_validated(
    args: tuple[Any, ...], kwargs: dict[str, Any], error: type[Exception]
) -> None:
    with pytest.raises(error):
        CircuitBreakerInterceptor(*args, **kwargs)


async def test_a_transient_error_message_survives_into_the_failed_run() -> None:
    async def flaky(ctx: StageContext) -> StageReturn:
        raise TransientError("upstream 503")

    breaker = CircuitBreakerInterceptor(clock=FakeClock())
    output = await fails(graph(flaky, breaker))
    assert output.error == "upstream 503"
    assert "short_circuit" not in output.metadata
