"""Spans of a run: the tree, attributes, status, links, trace context and cancellation."""

from __future__ import annotations

import re
from typing import Any

import anyio
import pytest
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.trace import SpanKind, StatusCode

from stageflow_otel import (
    CircuitBreakerInterceptor,
    IdempotencyInterceptor,
    Interceptor,
    Pipeline,
    RetryInterceptor,
    RunIdentity,
    StageContext,
    StageKind,
    StageOutput,
    StageStatus,
    TimeoutInterceptor,
)
from stageflow_otel.testing import InMemoryTelemetry, in_memory_telemetry

from .support import (
    HANG,
    attributes,
    hanging_stage,
    hex_ids,
    noop_stage,
    ok_stage,
    parent_id,
    raising_stage,
    run_graph,
    span_id,
    spawn_geo,
)

pytestmark = pytest.mark.anyio

DIAMOND = (
    Pipeline("checkout")
    .with_stage("fetch", ok_stage)
    .with_stage("geocode", spawn_geo, dependencies=["fetch"])
    .with_stage("price", ok_stage, dependencies=["fetch"])
    .with_stage("total", ok_stage, dependencies=["geocode", "price"])
)


class OutOfStock(Exception):
    """An exception class no metric label knows."""


def status_code(span: ReadableSpan) -> StatusCode:
    return span.status.status_code


def exception_events(spans: tuple[ReadableSpan, ...]) -> list[tuple[str, str]]:
    """``(span name, exception.type)`` of every ``exception`` event."""
    return [
        (span.name, str((event.attributes or {}).get("exception.type")))
        for span in spans
        for event in span.events
        if event.name == "exception"
    ]


class RetryOnce:
    """Raises a retryable error on the first attempt, then succeeds."""

    def __init__(self) -> None:
        self.calls = 0

    async def __call__(self, ctx: StageContext) -> None:
        self.calls += 1
        if self.calls == 1:
            raise ConnectionError("connection reset")


# -- the tree --------------------------------------------------------------------------------


async def test_span_tree_of_a_diamond_with_a_subpipeline(telemetry: InMemoryTelemetry) -> None:
    await run_graph(DIAMOND.build(hooks=telemetry.hooks))

    # geocode and price start concurrently, in the scheduler's order: compare by name.
    assert telemetry.tree(order="name") == [
        "pipeline.run checkout",
        "  stage.run fetch",
        "  stage.run geocode",
        "    subpipeline.run geo",
        "      pipeline.run geo",
        "        stage.run lookup",
        "        stage.run score",
        "  stage.run price",
        "  stage.run total",
    ]


async def test_span_tree_of_one_stage_at_a_time_is_in_start_order(
    telemetry: InMemoryTelemetry,
) -> None:
    graph = DIAMOND.build(hooks=telemetry.hooks, max_concurrency=1)

    results = await run_graph(graph)

    assert sorted(results) == ["fetch", "geocode", "price", "total"]
    assert telemetry.tree() == [
        "pipeline.run checkout",
        "  stage.run fetch",
        "  stage.run geocode",
        "    subpipeline.run geo",
        "      pipeline.run geo",
        "        stage.run lookup",
        "        stage.run score",
        "  stage.run price",
        "  stage.run total",
    ]


async def test_concurrent_stage_spans_are_children_of_the_run_span(
    telemetry: InMemoryTelemetry,
) -> None:
    await run_graph(DIAMOND.build(hooks=telemetry.hooks))

    run = telemetry.span("pipeline.run checkout")
    parents = {
        name: parent_id(telemetry.span(f"stage.run {name}"))
        for name in ("fetch", "geocode", "price", "total")
    }
    assert parents == dict.fromkeys(parents, span_id(run))
    assert parent_id(run) is None


@pytest.mark.parametrize(
    ("order", "expected"),
    [
        (
            "retry_outside",
            [
                "pipeline.run p",
                "  stage.run s",
                "    interceptor retry",
                "      interceptor timeout",
                "      interceptor timeout",
            ],
        ),
        (
            "timeout_outside",
            [
                "pipeline.run p",
                "  stage.run s",
                "    interceptor timeout",
                "      interceptor retry",
            ],
        ),
    ],
)
async def test_interceptor_spans_nest_in_chain_order(
    telemetry: InMemoryTelemetry, order: str, expected: list[str]
) -> None:
    retry = RetryInterceptor(3, base_delay=0.0)
    timeout = TimeoutInterceptor(HANG)
    chain: list[Interceptor] = [retry, timeout] if order == "retry_outside" else [timeout, retry]
    graph = (
        Pipeline("p").with_stage("s", RetryOnce()).build(hooks=telemetry.hooks, interceptors=chain)
    )

    results = await run_graph(graph)

    assert results["s"].status is StageStatus.OK
    assert telemetry.tree() == expected
    outer = telemetry.span(f"interceptor {chain[0].name}")
    assert parent_id(outer) == span_id(telemetry.span("stage.run s"))
    for inner in telemetry.spans_named(f"interceptor {chain[1].name}"):
        assert parent_id(inner) == span_id(outer)


async def test_interceptor_spans_can_be_switched_off() -> None:
    recorded = in_memory_telemetry(interceptor_spans=False)
    try:
        graph = Pipeline("p").with_stage("s", RetryOnce())
        chain: list[Interceptor] = [RetryInterceptor(3, base_delay=0.0), TimeoutInterceptor(HANG)]

        await run_graph(graph.build(hooks=recorded.hooks, interceptors=chain))

        assert recorded.tree() == ["pipeline.run p", "  stage.run s"]
        # The stage span still tells the retry story.
        stage = recorded.span("stage.run s")
        assert [event.name for event in stage.events] == ["stageflow.stage.retry"]
        assert attributes(stage)["stageflow.stage.attempt"] == 2
    finally:
        recorded.shutdown()


async def test_span_names_carry_no_ids_or_user_data(telemetry: InMemoryTelemetry) -> None:
    identity = RunIdentity(request_id="req-8812", user_id="alice@example.com")
    graph = DIAMOND.build(hooks=telemetry.hooks, interceptors=[TimeoutInterceptor(HANG)])

    await run_graph(graph, data={"secret": "s3cr3t"}, identity=identity)

    names = {span.name for span in telemetry.spans()}
    assert names == {
        "pipeline.run checkout",
        "pipeline.run geo",
        "subpipeline.run geo",
        "stage.run fetch",
        "stage.run geocode",
        "stage.run price",
        "stage.run total",
        "stage.run lookup",
        "stage.run score",
        "interceptor timeout",
    }
    ids = {str(attributes(span)["stageflow.run.id"]) for span in telemetry.spans()}
    uuid = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-")
    assert not [name for name in names if uuid.search(name) or any(i in name for i in ids)]


# -- attributes and status -------------------------------------------------------------------


async def test_ok_run_and_stage_attributes(telemetry: InMemoryTelemetry) -> None:
    graph = (
        Pipeline("orders")
        .with_stage("fetch", noop_stage)
        .with_stage("enrich", ok_stage, kind="enrich", dependencies=["fetch"])
        .build(hooks=telemetry.hooks)
    )

    results = await run_graph(graph)

    run_id = telemetry.span("pipeline.run orders").attributes["stageflow.run.id"]  # type: ignore[index]
    assert results["enrich"].status.value == "ok"
    stage = attributes(telemetry.span("stage.run enrich"))
    queue_wait = stage.pop("stageflow.stage.queue_wait_s")
    assert isinstance(queue_wait, float)
    assert queue_wait >= 0
    assert stage == {
        "stageflow.pipeline.name": "orders",
        "stageflow.run.id": run_id,
        "stageflow.stage.name": "enrich",
        "stageflow.stage.kind": "enrich",
        "stageflow.stage.status": "ok",
        "stageflow.stage.attempt": 1,
        "stageflow.stage.dependencies": ["fetch"],
        "stageflow.stage.output.keys": ["value"],
        "code.function.name": f"{ok_stage.__module__}.{ok_stage.__qualname__}",
    }
    run = telemetry.span("pipeline.run orders")
    assert attributes(run) == {
        "stageflow.pipeline.name": "orders",
        "stageflow.run.id": run_id,
        "stageflow.run.stage_count": 2,
        "stageflow.run.status": "ok",
    }
    assert run.kind is SpanKind.INTERNAL
    assert {status_code(span) for span in telemetry.spans()} == {StatusCode.UNSET}


@pytest.mark.parametrize(
    ("error", "error_type"),
    [
        (ValueError("bad input"), "ValueError"),
        (OutOfStock("bad input"), f"{__name__}.OutOfStock"),
    ],
)
async def test_raised_failure_is_an_error_recorded_once(
    telemetry: InMemoryTelemetry, error: Exception, error_type: str
) -> None:
    async def fail(ctx: StageContext) -> None:
        raise error

    graph = (
        Pipeline("p")
        .with_stage("a", fail, interceptors=[TimeoutInterceptor(HANG)])
        .build(hooks=telemetry.hooks)
    )

    await run_graph(graph)

    stage = telemetry.span("stage.run a")
    assert (status_code(stage), stage.status.description) == (StatusCode.ERROR, "bad input")
    assert attributes(stage)["error.type"] == error_type
    assert attributes(stage)["stageflow.stage.status"] == "fail"
    # Recorded where it escapes (the stage), not again on the run or the interceptor.
    assert exception_events(telemetry.spans()) == [("stage.run a", error_type)]
    run = telemetry.span("pipeline.run p")
    assert status_code(run) is StatusCode.ERROR
    assert run.status.description == "stage 'a' failed: bad input"
    assert {
        key: attributes(run)[key]
        for key in ("stageflow.run.status", "stageflow.run.failed_stage", "error.type")
    } == {
        "stageflow.run.status": "fail",
        "stageflow.run.failed_stage": "a",
        "error.type": error_type,
    }


async def test_returned_failure_is_an_error_without_exception_event(
    telemetry: InMemoryTelemetry,
) -> None:
    async def out_of_stock(ctx: StageContext) -> StageOutput:
        return StageOutput.fail("no stock left")

    await run_graph(Pipeline("p").with_stage("a", out_of_stock).build(hooks=telemetry.hooks))

    stage = telemetry.span("stage.run a")
    assert (status_code(stage), stage.status.description) == (StatusCode.ERROR, "no stock left")
    assert attributes(stage)["error.type"] == "_OTHER"
    assert attributes(stage)["stageflow.stage.status"] == "fail"
    assert exception_events(telemetry.spans()) == []


async def test_skipped_stages_stay_unset(telemetry: InMemoryTelemetry) -> None:
    async def skip_self(ctx: StageContext) -> StageOutput:
        return StageOutput.skip("nothing to do")

    async def ask_to_skip(ctx: StageContext) -> dict[str, Any]:
        return {"skip_reason": "cart is empty"}

    graph = (
        Pipeline("p")
        .with_stage("returned", skip_self)
        .with_stage("gate", ask_to_skip)
        .with_stage("conditional", ok_stage, dependencies=["gate"], conditional=True)
        .build(hooks=telemetry.hooks)
    )

    await run_graph(graph)

    skipped = {
        name: (
            status_code(telemetry.span(f"stage.run {name}")),
            attributes(telemetry.span(f"stage.run {name}"))["stageflow.stage.status"],
            attributes(telemetry.span(f"stage.run {name}"))["stageflow.stage.skip_reason"],
        )
        for name in ("returned", "conditional")
    }
    assert skipped == {
        "returned": (StatusCode.UNSET, "skip", "nothing to do"),
        "conditional": (StatusCode.UNSET, "skip", "cart is empty"),
    }
    assert "error.type" not in attributes(telemetry.span("stage.run conditional"))


async def test_cancel_output_cancels_the_run_without_error(telemetry: InMemoryTelemetry) -> None:
    async def stop(ctx: StageContext) -> StageOutput:
        return StageOutput.cancel("customer left")

    await run_graph(Pipeline("p").with_stage("a", stop).build(hooks=telemetry.hooks))

    stage = telemetry.span("stage.run a")
    assert status_code(stage) is StatusCode.UNSET
    assert attributes(stage)["stageflow.stage.status"] == "cancel"
    assert attributes(stage)["stageflow.stage.cancel_reason"] == "customer left"
    run = telemetry.span("pipeline.run p")
    assert (status_code(run), attributes(run)["stageflow.run.status"]) == (
        StatusCode.UNSET,
        "cancel",
    )
    assert "error.type" not in attributes(run)


async def test_sibling_cancelled_by_a_failure(telemetry: InMemoryTelemetry) -> None:
    sibling_running = anyio.Event()

    async def fail_once_sibling_runs(ctx: StageContext) -> None:
        await sibling_running.wait()
        raise ValueError("bad input")

    async def sibling(ctx: StageContext) -> None:
        sibling_running.set()
        await anyio.sleep_forever()

    graph = (
        Pipeline("p")
        .with_stage("a", fail_once_sibling_runs)
        .with_stage("b", sibling)
        .build(hooks=telemetry.hooks)
    )

    results = await run_graph(graph)

    assert {name: out.status.value for name, out in results.items()} == {"a": "fail", "b": "cancel"}
    b = telemetry.span("stage.run b")
    assert status_code(b) is StatusCode.UNSET
    assert attributes(b)["stageflow.stage.status"] == "cancel"
    assert attributes(b)["stageflow.stage.cancel_reason"] == "stage 'a' failed"
    assert "error.type" not in attributes(b)
    assert exception_events(telemetry.spans()) == [("stage.run a", "ValueError")]


async def test_retries_are_span_events_on_the_stage_span(telemetry: InMemoryTelemetry) -> None:
    delays: list[float] = []

    async def record_sleep(delay: float) -> None:
        delays.append(delay)
        await anyio.lowlevel.checkpoint()

    calls = 0

    async def flaky(ctx: StageContext) -> None:
        nonlocal calls
        calls += 1
        if calls < 3:
            raise ConnectionError("connection reset")

    retry = RetryInterceptor(5, base_delay=0.5, sleep=record_sleep)
    graph = Pipeline("p").with_stage("a", flaky, interceptors=[retry]).build(hooks=telemetry.hooks)

    await run_graph(graph)

    stage = telemetry.span("stage.run a")
    assert [(event.name, dict(event.attributes or {})) for event in stage.events] == [
        (
            "stageflow.stage.retry",
            {
                "stageflow.stage.attempt": 2,
                "stageflow.retry.delay_s": 0.5,
                "error.type": "ConnectionError",
            },
        ),
        (
            "stageflow.stage.retry",
            {
                "stageflow.stage.attempt": 3,
                "stageflow.retry.delay_s": 1.0,
                "error.type": "ConnectionError",
            },
        ),
    ]
    assert delays == [0.5, 1.0]
    assert attributes(stage)["stageflow.stage.attempt"] == 3
    assert attributes(stage)["stageflow.stage.status"] == "ok"
    assert status_code(stage) is StatusCode.UNSET
    assert (
        attributes(telemetry.span("interceptor retry"))["stageflow.interceptor.action"] == "retry"
    )


async def test_exhausted_retries_fail_the_stage_span(telemetry: InMemoryTelemetry) -> None:
    async def always_reset(ctx: StageContext) -> None:
        raise ConnectionError("connection reset")

    retry = RetryInterceptor(2, base_delay=0.0)
    graph = (
        Pipeline("p")
        .with_stage("a", always_reset, interceptors=[retry])
        .build(hooks=telemetry.hooks)
    )

    await run_graph(graph)

    stage = telemetry.span("stage.run a")
    assert status_code(stage) is StatusCode.ERROR
    assert stage.status.description == "stage 'a' failed after 2 attempts: connection reset"
    assert attributes(stage)["stageflow.stage.attempt"] == 2
    assert attributes(stage)["error.type"] == "ConnectionError"
    assert exception_events(telemetry.spans()) == [("stage.run a", "ConnectionError")]


@pytest.mark.parametrize("where", ["interceptor", "stage_timeout"])
async def test_timeout_is_an_error_of_type_stageflow_timeout(
    telemetry: InMemoryTelemetry, where: str
) -> None:
    pipeline = Pipeline("p")
    if where == "interceptor":
        graph = pipeline.with_stage("a", hanging_stage).build(
            hooks=telemetry.hooks, interceptors=[TimeoutInterceptor(0.01)]
        )
    else:
        graph = pipeline.with_stage("a", hanging_stage, timeout=0.01).build(hooks=telemetry.hooks)

    await run_graph(graph)

    stage = telemetry.span("stage.run a")
    assert status_code(stage) is StatusCode.ERROR
    assert stage.status.description == "stage 'a' timed out after 0.01s"
    assert attributes(stage)["error.type"] == "stageflow.timeout"
    assert attributes(telemetry.span("pipeline.run p"))["error.type"] == "stageflow.timeout"
    if where == "interceptor":
        # The interceptor failed the stage itself: its span says so.
        timeout = telemetry.span("interceptor timeout")
        assert attributes(timeout)["stageflow.interceptor.action"] == "error"
        assert attributes(timeout)["error.type"] == "stageflow.timeout"
        assert status_code(timeout) is StatusCode.ERROR
        assert timeout.status.description == "stage 'a' timed out after 0.01s"


async def test_only_the_timeout_that_fired_reports_it(telemetry: InMemoryTelemetry) -> None:
    # A pipeline-wide generous timeout around a stage's retried tight one: the same name twice.
    outer = TimeoutInterceptor(HANG)
    retry = RetryInterceptor(2, base_delay=0.0)
    inner = TimeoutInterceptor(0.01)
    graph = (
        Pipeline("p")
        .with_stage("a", hanging_stage, interceptors=[retry, inner])
        .build(hooks=telemetry.hooks, interceptors=[outer])
    )

    await run_graph(graph)

    outer_span, *inner_spans = telemetry.spans_named("interceptor timeout")[::-1]
    assert parent_id(outer_span) == span_id(telemetry.span("stage.run a"))
    # Not "error": the failure went through it. It ran the stage twice (through the retry).
    assert attributes(outer_span)["stageflow.interceptor.action"] == "retry"
    assert status_code(outer_span) is StatusCode.UNSET
    assert "error.type" not in attributes(outer_span)
    assert len(inner_spans) == 2  # one per attempt
    for span in inner_spans:
        assert attributes(span)["stageflow.interceptor.action"] == "error"
        assert status_code(span) is StatusCode.ERROR
    retry_span = telemetry.span("interceptor retry")
    assert attributes(retry_span)["stageflow.interceptor.action"] == "retry"


async def test_open_circuit_short_circuits_the_stage(telemetry: InMemoryTelemetry) -> None:
    breaker = CircuitBreakerInterceptor(failure_threshold=1, recovery_timeout=3600.0)
    graph = (
        Pipeline("p")
        .with_stage("a", raising_stage)
        .build(hooks=telemetry.hooks, interceptors=[breaker])
    )
    await run_graph(graph)  # opens the circuit
    telemetry.clear()

    await run_graph(graph)

    stage = telemetry.span("stage.run a")
    assert status_code(stage) is StatusCode.ERROR
    assert attributes(stage)["error.type"] == "stageflow.short_circuit"
    interceptor = attributes(telemetry.span("interceptor circuit_breaker"))
    assert interceptor["stageflow.interceptor.action"] == "short_circuit"
    assert interceptor["error.type"] == "stageflow.short_circuit"


async def test_idempotency_hit_short_circuits_the_stage(telemetry: InMemoryTelemetry) -> None:
    calls = 0

    async def charge(ctx: StageContext) -> dict[str, Any]:
        nonlocal calls
        calls += 1
        return {"charged": True}

    graph = (
        Pipeline("p")
        .with_stage("charge", charge)
        .build(hooks=telemetry.hooks, interceptors=[IdempotencyInterceptor()])
    )
    await run_graph(graph, data={"idempotency_key": "order-1"})
    telemetry.clear()

    await run_graph(graph, data={"idempotency_key": "order-1"})

    assert calls == 1
    stage = telemetry.span("stage.run charge")
    assert (status_code(stage), attributes(stage)["stageflow.stage.status"]) == (
        StatusCode.UNSET,
        "ok",
    )
    interceptor = attributes(telemetry.span("interceptor idempotency"))
    assert interceptor["stageflow.interceptor.action"] == "short_circuit"
    # A replayed success is not a failure.
    assert "error.type" not in interceptor


async def test_fan_in_stage_links_every_upstream_stage_span(telemetry: InMemoryTelemetry) -> None:
    await run_graph(DIAMOND.build(hooks=telemetry.hooks))

    total = telemetry.span("stage.run total")
    upstream = {hex_ids(telemetry.span(f"stage.run {name}")) for name in ("geocode", "price")}
    linked = {
        (format(link.context.trace_id, "032x"), format(link.context.span_id, "016x"))
        for link in total.links
    }
    assert linked == upstream
    assert [dict(link.attributes or {}) for link in total.links] == [
        {"stageflow.link.role": "upstream"},
        {"stageflow.link.role": "upstream"},
    ]
    assert telemetry.span("stage.run fetch").links == ()


async def test_entry_point_run_is_a_server_span(telemetry: InMemoryTelemetry) -> None:
    graph = Pipeline("p").with_stage("a", ok_stage).build(hooks=telemetry.hooks)

    await run_graph(graph, entry_point=True)

    assert telemetry.span("pipeline.run p").kind is SpanKind.SERVER
    assert telemetry.span("stage.run a").kind is SpanKind.INTERNAL


async def test_output_values_are_recorded_only_when_opted_in_and_redacted() -> None:
    async def quote(ctx: StageContext) -> dict[str, Any]:
        return {"total": 42, "card": "4111-1111-1111-1111", "items": ["a", "b"]}

    seen: list[str] = []

    def redact(key: str, value: Any) -> Any:
        seen.append(key)
        return "****" if key == "card" else value

    default = in_memory_telemetry()
    opted_in = in_memory_telemetry(record_output_keys=["total", "card"], redact=redact)
    try:
        for recorded in (default, opted_in):
            graph = Pipeline("p").with_stage("quote", quote).build(hooks=recorded.hooks)
            await run_graph(graph)

        def outputs(recorded: InMemoryTelemetry) -> dict[str, Any]:
            found = attributes(recorded.span("stage.run quote"))
            return {k: v for k, v in found.items() if k.startswith("stageflow.stage.output.")}

        assert outputs(default) == {"stageflow.stage.output.keys": ["total", "card", "items"]}
        assert outputs(opted_in) == {
            "stageflow.stage.output.keys": ["total", "card", "items"],
            "stageflow.stage.output.data.total": 42,
            "stageflow.stage.output.data.card": "****",
        }
        assert sorted(seen) == ["card", "total"]
    finally:
        default.shutdown()
        opted_in.shutdown()


async def test_identity_is_on_run_and_stage_spans(telemetry: InMemoryTelemetry) -> None:
    identity = RunIdentity(request_id="req-1", session_id="sess-1", user_id="u-1", org_id="org-1")
    expected = {
        "stageflow.request.id": "req-1",
        "stageflow.session.id": "sess-1",
        "stageflow.user.id": "u-1",
        "stageflow.org.id": "org-1",
        "stageflow.run.id": identity.pipeline_run_id,
    }
    graph = Pipeline("p").with_stage("a", ok_stage).build(hooks=telemetry.hooks)

    await run_graph(graph, identity=identity)

    for name in ("pipeline.run p", "stage.run a"):
        found = attributes(telemetry.span(name))
        assert {key: found.get(key) for key in expected} == expected, name


async def test_identity_attributes_are_absent_when_unset(telemetry: InMemoryTelemetry) -> None:
    await run_graph(Pipeline("p").with_stage("a", ok_stage).build(hooks=telemetry.hooks))

    for span in telemetry.spans():
        assert not [key for key in attributes(span) if key.endswith((".request.id", ".user.id"))]


class Invoice:
    """A stage class."""

    name = "invoice"
    kind = StageKind.WORK

    async def execute(self, ctx: StageContext) -> None:
        return None


async def test_code_function_name_is_the_stage_callable(telemetry: InMemoryTelemetry) -> None:
    graph = (
        Pipeline("p")
        .with_stage("fn", noop_stage)
        .with_stage("instance", Invoice())
        .with_stage("cls", Invoice)
        .build(hooks=telemetry.hooks)
    )

    await run_graph(graph)

    names = {
        stage: attributes(telemetry.span(f"stage.run {stage}"))["code.function.name"]
        for stage in ("fn", "instance", "cls")
    }
    assert names == {
        "fn": f"{noop_stage.__module__}.{noop_stage.__qualname__}",
        "instance": f"{__name__}.Invoice",
        "cls": f"{__name__}.Invoice",
    }
    assert attributes(telemetry.span("stage.run cls"))["stageflow.stage.kind"] == "work"


async def test_no_span_status_is_ever_ok(telemetry: InMemoryTelemetry) -> None:
    async def stop(ctx: StageContext) -> StageOutput:
        return StageOutput.cancel("enough")

    for graph in (
        DIAMOND.build(hooks=telemetry.hooks, interceptors=[TimeoutInterceptor(HANG)]),
        Pipeline("f").with_stage("a", raising_stage).build(hooks=telemetry.hooks),
        Pipeline("c").with_stage("a", stop).build(hooks=telemetry.hooks),
    ):
        await run_graph(graph)

    # checkout: 2 runs, 1 subpipeline, 6 stages, 4 interceptors; f and c: 1 run + 1 stage each.
    assert len(telemetry.spans()) == 17
    assert StatusCode.OK not in {status_code(span) for span in telemetry.spans()}


# -- trace context ---------------------------------------------------------------------------


async def test_run_joins_the_callers_current_span(telemetry: InMemoryTelemetry) -> None:
    tracer = telemetry.tracer_provider.get_tracer("caller")
    graph = Pipeline("p").with_stage("a", ok_stage).build(hooks=telemetry.hooks)

    with tracer.start_as_current_span("handle request") as caller:
        await run_graph(graph)

    context = caller.get_span_context()
    run = telemetry.span("pipeline.run p")
    assert run.context is not None
    assert run.context.trace_id == context.trace_id
    assert parent_id(run) == context.span_id
    assert telemetry.tree() == ["handle request", "  pipeline.run p", "    stage.run a"]


async def test_run_joins_a_w3c_traceparent(telemetry: InMemoryTelemetry) -> None:
    trace_id, parent = "0af7651916cd43dd8448eb211c80319c", "b7ad6b7169203331"
    graph = Pipeline("p").with_stage("a", ok_stage).build(hooks=telemetry.hooks)

    await run_graph(graph, traceparent=f"00-{trace_id}-{parent}-01")

    run = telemetry.span("pipeline.run p")
    assert run.context is not None
    assert run.parent is not None
    assert format(run.context.trace_id, "032x") == trace_id
    assert (format(run.parent.span_id, "016x"), run.parent.is_remote) == (parent, True)
    stage = telemetry.span("stage.run a")
    assert stage.context is not None
    assert format(stage.context.trace_id, "032x") == trace_id


async def test_subpipeline_spans_are_in_the_parents_trace(telemetry: InMemoryTelemetry) -> None:
    await run_graph(DIAMOND.build(hooks=telemetry.hooks))

    assert len({span.context.trace_id for span in telemetry.spans() if span.context}) == 1
    spawner = telemetry.span("stage.run geocode")
    sub = telemetry.span("subpipeline.run geo")
    child = telemetry.span("pipeline.run geo")
    assert parent_id(sub) == span_id(spawner)
    assert parent_id(child) == span_id(sub)
    parent_run_id = attributes(telemetry.span("pipeline.run checkout"))["stageflow.run.id"]
    child_attributes = attributes(child)
    assert {
        key: child_attributes[key]
        for key in (
            "stageflow.parent.run.id",
            "stageflow.parent.stage.name",
            "stageflow.subpipeline.depth",
        )
    } == {
        "stageflow.parent.run.id": parent_run_id,
        "stageflow.parent.stage.name": "geocode",
        "stageflow.subpipeline.depth": 1,
    }
    assert (
        child_attributes["stageflow.correlation.id"] == attributes(sub)["stageflow.correlation.id"]
    )
    assert child_attributes["stageflow.run.id"] != parent_run_id


# -- cancellation ----------------------------------------------------------------------------


async def test_cancelled_run_leaves_no_span_open(telemetry: InMemoryTelemetry) -> None:
    caller = anyio.CancelScope()

    async def cancel_the_caller(ctx: StageContext) -> None:
        caller.cancel()
        await anyio.sleep_forever()

    graph = (
        Pipeline("p")
        .with_stage("a", noop_stage)
        .with_stage("b", cancel_the_caller, dependencies=["a"])
        .with_stage("c", hanging_stage)
        .build(hooks=telemetry.hooks, interceptors=[TimeoutInterceptor(HANG)])
    )
    reraised = False

    with anyio.fail_after(HANG), caller:
        try:
            await graph.run()
        except anyio.get_cancelled_exc_class():
            reraised = True
            raise

    assert reraised
    assert caller.cancelled_caught
    assert telemetry.open_spans() == []
    assert telemetry.tracker.started == telemetry.tracker.ended == len(telemetry.spans())
    statuses = {
        name: attributes(telemetry.span(f"stage.run {name}"))["stageflow.stage.status"]
        for name in ("a", "b", "c")
    }
    assert statuses == {"a": "ok", "b": "cancel", "c": "cancel"}
    run = telemetry.span("pipeline.run p")
    assert (status_code(run), attributes(run)["stageflow.run.status"]) == (
        StatusCode.UNSET,
        "cancel",
    )


async def test_a_failing_redactor_records_nothing_and_breaks_nothing() -> None:
    def redact(key: str, value: Any) -> Any:
        raise RuntimeError("redactor bug")

    async def stage(ctx: Any) -> dict[str, Any]:
        return {"secret": "s3cr3t", "other": 1}

    recorded = in_memory_telemetry(record_output_keys=["secret"], redact=redact)
    try:
        results = await run_graph(Pipeline("p").with_stage("s", stage).build(hooks=recorded.hooks))
        assert results["s"].data == {"secret": "s3cr3t", "other": 1}
        assert recorded.open_spans() == []
        found = attributes(recorded.span("stage.run s"))
        assert "stageflow.stage.output.data.secret" not in found
        assert found["stageflow.stage.status"] == "ok"
        labels = {"pipeline": "p", "stage": "s", "status": "ok", "error_type": ""}
        assert recorded.sample("stageflow_stage_runs_total", labels) == 1
        assert recorded.sample("stageflow_stages_active", {"pipeline": "p"}) == 0
    finally:
        recorded.shutdown()
