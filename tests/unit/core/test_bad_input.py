"""Every mistake a user can make when declaring, building or running a pipeline is a clear error.

One table: each row calls a public entry point with one bad argument and says which error must
come out and which fragments its message must hold (the parameter, the stage or pipeline, the
value given). Nothing raw (a comparison error, ``'int' object is not iterable``) may escape.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import anyio
import pytest

from stageflow_otel.core import (
    BackpressureAwareEventSink,
    Block,
    CancellationToken,
    CircuitBreakerInterceptor,
    CleanupRegistry,
    CollectingEventSink,
    DropOldest,
    FanOutEventSink,
    IdempotencyInterceptor,
    LoggingEventSink,
    Pipeline,
    PipelineValidationError,
    RetryInterceptor,
    RunHook,
    RunIdentity,
    StageCall,
    StageContext,
    StageExecutionError,
    StageOutput,
    StageReturn,
    StructuredTaskGroup,
    SubpipelineSpawner,
    TimeoutInterceptor,
    stage_fn,
)
from stageflow_otel.core.seams import CallNext
from stageflow_otel.tools import (
    ApprovalService,
    ToolDefinitionError,
    ToolExecutor,
    ToolRegistry,
    UndoStore,
)


async def noop(ctx: StageContext) -> StageReturn:
    return None


async def not_a_stage() -> None:
    return None


class SyncIntercept:
    name = "sync"

    def intercept(self, call: StageCall, call_next: CallNext) -> StageOutput:
        raise AssertionError("never called")


class Nameless:
    name = ""

    async def intercept(self, call: StageCall, call_next: CallNext) -> StageOutput:
        return await call_next(call)


class NeedsConfig:
    def __init__(self, config: dict[str, Any]) -> None:
        self.config = config

    async def execute(self, ctx: StageContext) -> StageReturn:
        return None


class ExporterOnly:
    def export(self, batch: object) -> bool:
        return True


class HasHooks:
    """Like a ``Telemetry``: an object that carries hooks but is not one."""

    hooks = (RunHook(),)


@dataclass(frozen=True)
class Case:
    """One bad call, the error it must raise, and what its message must say."""

    id: str
    call: Callable[[], Any]
    error: type[Exception]
    fragments: tuple[str, ...]

    def param(self) -> Any:
        return pytest.param(self, id=self.id)


def stage(**kwargs: Any) -> Callable[[], Any]:
    """``Pipeline('p').with_stage('a', noop, **kwargs)``, deferred."""
    runner = kwargs.pop("runner", noop)
    return lambda: Pipeline("p").with_stage("a", runner, **kwargs)


def build(**kwargs: Any) -> Callable[[], Any]:
    return lambda: Pipeline("p").with_stage("a", noop).build(**kwargs)


def run(**kwargs: Any) -> Callable[[], Any]:
    async def go() -> None:
        with anyio.fail_after(5):
            await Pipeline("p").with_stage("a", noop).run(**kwargs)

    return lambda: anyio.run(go)


def run_graph(**kwargs: Any) -> Callable[[], Any]:
    async def go() -> None:
        with anyio.fail_after(5):
            await Pipeline("p").with_stage("a", noop).build(hooks=[]).run(**kwargs)

    return lambda: anyio.run(go)


PVE = PipelineValidationError
STAGE = "stage 'a'"
PIPELINE = "pipeline 'p'"

WITH_STAGE = [
    # timeout
    Case("timeout-str", stage(timeout="5"), PVE, (STAGE, "timeout", "'5' (str)", "or None")),
    Case("timeout-bool", stage(timeout=True), PVE, (STAGE, "timeout", "True (bool)")),
    Case("timeout-list", stage(timeout=[5]), PVE, (STAGE, "timeout", "[5] (list)")),
    Case("timeout-zero", stage(timeout=0), PVE, (STAGE, "timeout", "0 (int)", "positive")),
    Case("timeout-negative", stage(timeout=-1.5), PVE, (STAGE, "timeout", "-1.5 (float)")),
    Case("timeout-nan", stage(timeout=math.nan), PVE, (STAGE, "timeout", "nan (float)")),
    Case("timeout-inf", stage(timeout=math.inf), PVE, (STAGE, "timeout", "inf (float)", "None")),
    # dependencies and after
    Case("deps-int", stage(dependencies=5), PVE, (STAGE, "dependencies", "5 (int)", "list")),
    Case("deps-str", stage(dependencies="b"), PVE, (STAGE, "dependencies", "'b'", "['b']")),
    Case("deps-bytes", stage(dependencies=b"b"), PVE, (STAGE, "dependencies", "b'b' (bytes)")),
    Case("deps-dict", stage(dependencies={"b": 1}), PVE, (STAGE, "dependencies", "(dict)")),
    Case("deps-item-int", stage(dependencies=[5]), PVE, (STAGE, "dependencies[0]", "5 (int)")),
    Case(
        "deps-item-list",
        stage(dependencies=[["b"]]),
        PVE,
        (STAGE, "dependencies[0]", "['b'] (list)", "stage name"),
    ),
    Case("deps-item-empty", stage(dependencies=["b", ""]), PVE, (STAGE, "dependencies[1]", "''")),
    Case("deps-item-none", stage(dependencies=[None]), PVE, (STAGE, "dependencies[0]", "None")),
    Case("after-int", stage(after=5), PVE, (STAGE, "after", "5 (int)")),
    Case("after-str", stage(after="b"), PVE, (STAGE, "after", "['b']")),
    Case("after-item", stage(after=[1.5]), PVE, (STAGE, "after[0]", "1.5 (float)")),
    # interceptors
    Case("icp-item-int", stage(interceptors=[42]), PVE, (STAGE, "interceptors[0]", "42 (int)")),
    Case("icp-int", stage(interceptors=42), PVE, (STAGE, "interceptors", "42 (int)", "list")),
    Case("icp-none", stage(interceptors=None), PVE, (STAGE, "interceptors", "None", "[]")),
    Case("icp-str", stage(interceptors="retry"), PVE, (STAGE, "interceptors", "'retry' (str)")),
    Case(
        "icp-single",
        stage(interceptors=RetryInterceptor()),
        PVE,
        (STAGE, "interceptors", "single interceptor", "interceptors=[RetryInterceptor(...)]"),
    ),
    Case(
        "icp-class",
        stage(interceptors=[RetryInterceptor]),
        PVE,
        (STAGE, "interceptors[0]", "class RetryInterceptor", "RetryInterceptor()"),
    ),
    Case(
        "icp-sync",
        stage(interceptors=[SyncIntercept()]),
        PVE,
        (STAGE, "interceptors[0]", "SyncIntercept.intercept", "async def"),
    ),
    Case("icp-nameless", stage(interceptors=[Nameless()]), PVE, (STAGE, "interceptors[0]", "name")),
    # conditional, kind, runner, name
    Case("conditional-str", stage(conditional="yes"), PVE, (STAGE, "conditional", "'yes' (str)")),
    Case("conditional-none", stage(conditional=None), PVE, (STAGE, "conditional", "None")),
    Case("conditional-int", stage(conditional=1), PVE, (STAGE, "conditional", "1 (int)")),
    Case("kind-int", stage(kind=5), PVE, (STAGE, "kind", "5 (int)", "'transform'")),
    Case("kind-unknown", stage(kind="bogus"), PVE, (STAGE, "unknown kind 'bogus'", "'guard'")),
    Case("runner-none", stage(runner=None), PVE, (STAGE, "runner", "None", "async def f(ctx)")),
    Case("runner-int", stage(runner=42), PVE, (STAGE, "runner", "42 (int)")),
    Case(
        "runner-class-needs-arguments",
        stage(runner=NeedsConfig),
        PVE,
        (STAGE, "class NeedsConfig", "requires config", "NeedsConfig(...)"),
    ),
    Case(
        "runner-declares-bad-kind",
        stage(runner=type("K", (), {"kind": "bogus", "execute": noop})()),
        PVE,
        (STAGE, "kind 'bogus'"),
    ),
    Case(
        "name-int",
        lambda: Pipeline("p").with_stage(5, noop),  # type: ignore[arg-type]
        PVE,
        ("stage name", "5 (int)"),
    ),
    Case("name-empty", lambda: Pipeline("p").with_stage("", noop), PVE, ("stage name", "''")),
    Case(
        "name-none",
        lambda: Pipeline("p").with_stage(None, noop),  # type: ignore[arg-type]
        PVE,
        ("stage name", "None"),
    ),
    Case(
        "duplicate-name",
        lambda: Pipeline("p").with_stage("a", noop).with_stage("a", noop),
        PVE,
        (PIPELINE, "already has a stage named 'a'"),
    ),
]

PIPELINE_CASES = [
    Case("pipeline-name-int", lambda: Pipeline(5), PVE, ("pipeline name", "5 (int)")),  # type: ignore[arg-type]
    Case("pipeline-name-none", lambda: Pipeline(None), PVE, ("pipeline name", "None")),  # type: ignore[arg-type]
    Case("pipeline-stages-int", lambda: Pipeline("p", 5), PVE, (PIPELINE, "stages", "5 (int)")),  # type: ignore[arg-type]
    Case(
        "pipeline-stages-item",
        lambda: Pipeline("p", ["a"]),  # type: ignore[list-item]
        PVE,
        (PIPELINE, "stages[0]", "'a' (str)", "StageSpec"),
    ),
    Case(
        "compose-int",
        lambda: Pipeline("p").compose(5),  # type: ignore[arg-type]
        PVE,
        (PIPELINE, "compose()", "5 (int)"),
    ),
    Case(
        "stage-fn-kind",
        lambda: stage_fn(kind="bogus"),
        PVE,
        ("stage_fn()", "kind", "'bogus' (str)"),
    ),
    Case(
        "stage-fn-name",
        lambda: stage_fn(name=""),
        PVE,
        ("stage_fn()", "name", "''"),
    ),
    Case(
        "stage-fn-target",
        lambda: stage_fn()(42),  # type: ignore[arg-type]
        PVE,
        ("stage_fn()", "42 (int)"),
    ),
]

BUILD = [
    Case("build-icp-item", build(interceptors=[object()]), PVE, (PIPELINE, "interceptors[0]")),
    Case("build-icp-int", build(interceptors=42), PVE, (PIPELINE, "interceptors", "42 (int)")),
    Case("build-icp-none", build(interceptors=None), PVE, (PIPELINE, "interceptors", "None")),
    Case("build-hooks-item", build(hooks=[object()]), PVE, (PIPELINE, "hooks[0]", "RunHook")),
    Case("build-hooks-int", build(hooks=5), PVE, (PIPELINE, "hooks", "5 (int)")),
    Case("build-hooks-one", build(hooks=RunHook()), PVE, (PIPELINE, "hooks", "hooks=[hook]")),
    Case("build-hooks-class", build(hooks=[RunHook]), PVE, (PIPELINE, "hooks[0]", "RunHook()")),
    Case("build-hooks-owner", build(hooks=HasHooks()), PVE, (PIPELINE, "hooks", ".hooks")),
    Case("build-sink-int", build(event_sink=5), PVE, (PIPELINE, "event_sink", "5 (int)")),
    Case(
        "build-sink-class",
        build(event_sink=CollectingEventSink),
        PVE,
        (PIPELINE, "event_sink", "class CollectingEventSink", "CollectingEventSink()"),
    ),
    Case(
        "build-sink-exporter",
        build(event_sink=ExporterOnly()),
        PVE,
        (PIPELINE, "event_sink", "BackpressureAwareEventSink(exporter)"),
    ),
    Case("build-mode-str", build(failure_mode="x"), PVE, (PIPELINE, "failure_mode", "'x' (str)")),
    Case("build-mode-none", build(failure_mode=None), PVE, (PIPELINE, "failure_mode", "None")),
    Case("build-mode-list", build(failure_mode=[]), PVE, (PIPELINE, "failure_mode", "[] (list)")),
    Case(
        "build-concurrency-str",
        build(max_concurrency="3"),
        PVE,
        (PIPELINE, "max_concurrency", "'3' (str)", "or None"),
    ),
    Case(
        "build-concurrency-bool",
        build(max_concurrency=True),
        PVE,
        (PIPELINE, "max_concurrency", "True (bool)"),
    ),
    Case(
        "build-concurrency-float",
        build(max_concurrency=2.5),
        PVE,
        (PIPELINE, "max_concurrency", "2.5 (float)"),
    ),
    Case("build-concurrency-zero", build(max_concurrency=0), PVE, (PIPELINE, "max_concurrency")),
    Case("build-depth-neg", build(max_depth=-1), PVE, (PIPELINE, "max_depth", "-1 (int)")),
    Case("build-depth-str", build(max_depth="5"), PVE, (PIPELINE, "max_depth", "'5' (str)")),
    Case("build-depth-none", build(max_depth=None), PVE, (PIPELINE, "max_depth", "None")),
    Case(
        "build-wide-str",
        build(emit_stage_wide_events="yes"),
        PVE,
        (PIPELINE, "emit_stage_wide_events", "'yes' (str)"),
    ),
    Case(
        "build-wide-none",
        build(emit_pipeline_wide_event=None),
        PVE,
        (PIPELINE, "emit_pipeline_wide_event", "None"),
    ),
    Case(
        "build-cleanup-neg",
        build(cleanup_timeout=-1),
        PVE,
        (PIPELINE, "cleanup_timeout", "-1 (int)", "positive"),
    ),
    Case("build-cleanup-zero", build(cleanup_timeout=0), PVE, (PIPELINE, "cleanup_timeout")),
    Case(
        "build-cleanup-str", build(cleanup_timeout="10"), PVE, (PIPELINE, "cleanup_timeout", "'10'")
    ),
    Case("build-cleanup-none", build(cleanup_timeout=None), PVE, (PIPELINE, "cleanup_timeout")),
    Case(
        "build-cleanup-nan",
        build(cleanup_timeout=math.nan),
        PVE,
        (PIPELINE, "cleanup_timeout", "nan"),
    ),
]

RUN = [
    Case("run-data-int", run(data=5), TypeError, (PIPELINE, "data", "5 (int)", "mapping")),
    Case("run-data-list", run(data=[("a", 1)]), TypeError, (PIPELINE, "data", "(list)")),
    Case("run-identity", run(identity="r-1"), TypeError, (PIPELINE, "identity", "'r-1' (str)")),
    Case("run-token", run(cancel_token=True), TypeError, (PIPELINE, "cancel_token", "True")),
    Case("run-sink", run(event_sink=print), TypeError, (PIPELINE, "event_sink", "EventSink")),
    Case("run-hooks-item", run(hooks=[object()]), TypeError, (PIPELINE, "hooks[0]", "RunHook")),
    Case("run-hooks-str", run(hooks="tracing"), TypeError, (PIPELINE, "hooks", "'tracing'")),
    Case("run-traceparent", run(traceparent=5), TypeError, (PIPELINE, "traceparent", "5 (int)")),
    Case("run-icp", run(interceptors=[42]), PVE, (PIPELINE, "interceptors[0]", "42 (int)")),
    Case("run-icp-none", run(interceptors=None), PVE, (PIPELINE, "interceptors", "None")),
    Case("run-mode", run(failure_mode="x"), PVE, (PIPELINE, "failure_mode", "'x'")),
    Case("run-concurrency", run(max_concurrency="3"), PVE, (PIPELINE, "max_concurrency", "'3'")),
    Case("graph-run-data", run_graph(data=5), TypeError, (PIPELINE, "data", "5 (int)")),
    Case("graph-run-hooks", run_graph(hooks=[42]), TypeError, (PIPELINE, "hooks[0]", "42 (int)")),
    Case("graph-run-sink", run_graph(event_sink=object()), TypeError, (PIPELINE, "event_sink")),
]


def spawn(**kwargs: Any) -> Callable[[], Any]:
    """A stage ``s`` that spawns a child pipeline with ``kwargs``; the run's error, re-raised."""
    child = Pipeline("child").with_stage("c", noop)
    kwargs.setdefault("pipeline", child)

    async def spawner(ctx: StageContext) -> StageReturn:
        await ctx.spawn_subpipeline(**kwargs)
        return None

    async def go() -> None:
        with anyio.fail_after(5):
            await Pipeline("parent").with_stage("s", spawner).run()

    def call() -> None:
        try:
            anyio.run(go)
        except StageExecutionError as exc:
            raise (exc.original or exc) from None

    return call


def calling(function: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Callable[[], Any]:
    """``function(*args, **kwargs)``, deferred (and unchecked by mypy: the point is bad input)."""
    return lambda: function(*args, **kwargs)


CONSTRUCTORS = [
    # event sinks
    Case(
        "bp-batch-default-follows-queue",
        calling(BackpressureAwareEventSink, CollectingEventSink(), max_queue_size="10"),
        TypeError,
        ("BackpressureAwareEventSink", "max_queue_size", "'10' (str)"),
    ),
    Case(
        "bp-batch-over-queue",
        calling(
            BackpressureAwareEventSink, CollectingEventSink(), max_queue_size=10, max_batch_size=20
        ),
        ValueError,
        ("BackpressureAwareEventSink", "max_batch_size (20)", "max_queue_size (10)"),
    ),
    Case(
        "bp-queue-zero",
        calling(BackpressureAwareEventSink, CollectingEventSink(), max_queue_size=0),
        ValueError,
        ("max_queue_size", "0 (int)"),
    ),
    Case(
        "bp-flush-bool",
        calling(BackpressureAwareEventSink, CollectingEventSink(), flush_interval=True),
        TypeError,
        ("flush_interval", "True (bool)"),
    ),
    Case(
        "bp-retries-neg",
        calling(BackpressureAwareEventSink, CollectingEventSink(), max_retries=-1),
        ValueError,
        ("max_retries", "-1 (int)"),
    ),
    Case(
        "bp-policy",
        calling(BackpressureAwareEventSink, CollectingEventSink(), policy=None),
        ValueError,
        ("policy", "None", "'drop_newest'"),
    ),
    Case(
        "bp-policy-class",
        calling(BackpressureAwareEventSink, CollectingEventSink(), policy=DropOldest),
        ValueError,
        ("policy", "OverflowPolicy", "DropOldest()"),
    ),
    Case(
        "bp-policy-object-block-timeout",
        calling(BackpressureAwareEventSink, CollectingEventSink(), policy=Block(), block_timeout=2),
        ValueError,
        ("block_timeout", "Block(timeout=2)"),
    ),
    Case(
        "bp-block-timeout",
        calling(BackpressureAwareEventSink, CollectingEventSink(), policy="block", block_timeout=0),
        ValueError,
        ("block_timeout", "0 (int)"),
    ),
    Case("block-timeout", calling(Block, timeout=-1), ValueError, ("Block", "timeout", "-1 (int)")),
    Case(
        "bp-name",
        calling(BackpressureAwareEventSink, CollectingEventSink(), name=""),
        ValueError,
        ("name", "''"),
    ),
    Case(
        "bp-listener",
        calling(BackpressureAwareEventSink, CollectingEventSink(), listener=5),
        TypeError,
        ("listener", "5 (int)"),
    ),
    Case(
        "bp-listener-function",
        calling(BackpressureAwareEventSink, CollectingEventSink(), listener=print),
        TypeError,
        ("listener", "SinkListener", "on_result(result, count)"),
    ),
    Case(
        "bp-backend",
        calling(BackpressureAwareEventSink, CollectingEventSink(), backend="curio"),
        ValueError,
        ("backend", "'curio' (str)"),
    ),
    Case(
        "logging-level",
        calling(LoggingEventSink, level="LOUD"),
        ValueError,
        ("LoggingEventSink", "level", "'LOUD' (str)", "INFO"),
    ),
    Case(
        "logging-level-none",
        calling(LoggingEventSink, level=None),
        TypeError,
        ("LoggingEventSink", "level", "None"),
    ),
    Case(
        "logging-logger-name",
        calling(LoggingEventSink, logger_name=5),
        TypeError,
        ("LoggingEventSink", "logger_name", "5 (int)"),
    ),
    Case(
        "fanout-int",
        calling(FanOutEventSink, 5),
        TypeError,
        ("FanOutEventSink", "sinks", "5 (int)"),
    ),
    Case(
        "fanout-item",
        calling(FanOutEventSink, [CollectingEventSink(), "log"]),
        TypeError,
        ("FanOutEventSink", "sinks[1]", "'log' (str)"),
    ),
    # interceptors
    Case(
        "timeout-icp-bool",
        calling(TimeoutInterceptor, True),
        TypeError,
        ("TimeoutInterceptor", "default", "True (bool)"),
    ),
    Case(
        "timeout-icp-per-stage",
        calling(TimeoutInterceptor, per_stage=[("a", 1.0)]),
        TypeError,
        ("TimeoutInterceptor", "per_stage", "(list)"),
    ),
    Case(
        "timeout-icp-per-stage-value",
        calling(TimeoutInterceptor, per_stage={"a": "5"}),
        TypeError,
        ("TimeoutInterceptor", "per_stage['a']", "'5' (str)"),
    ),
    Case(
        "timeout-icp-per-stage-key",
        calling(TimeoutInterceptor, per_stage={1: 5.0}),
        TypeError,
        ("TimeoutInterceptor", "per_stage keys", "1 (int)"),
    ),
    Case(
        "retry-attempts",
        calling(RetryInterceptor, "3"),
        TypeError,
        ("RetryInterceptor", "max_attempts", "'3' (str)"),
    ),
    Case(
        "retry-on-int",
        calling(RetryInterceptor, retry_on=5),
        TypeError,
        ("RetryInterceptor", "retry_on", "5 (int)"),
    ),
    Case(
        "retry-status",
        calling(RetryInterceptor, retry_on_status="yes"),
        TypeError,
        ("RetryInterceptor", "retry_on_status", "'yes' (str)"),
    ),
    Case(
        "retry-sleep",
        calling(RetryInterceptor, sleep=None),
        TypeError,
        ("RetryInterceptor", "sleep", "None"),
    ),
    Case(
        "retry-backoff",
        calling(RetryInterceptor, backoff=None),
        ValueError,
        ("RetryInterceptor", "backoff", "None", "exponential"),
    ),
    Case(
        "breaker-threshold",
        calling(CircuitBreakerInterceptor, "5"),
        TypeError,
        ("CircuitBreakerInterceptor", "failure_threshold", "'5' (str)"),
    ),
    Case(
        "breaker-clock",
        calling(CircuitBreakerInterceptor, clock=1.0),
        TypeError,
        ("CircuitBreakerInterceptor", "clock", "1.0 (float)"),
    ),
    Case(
        "idempotency-ttl",
        calling(IdempotencyInterceptor, ttl=True),
        TypeError,
        ("IdempotencyInterceptor", "ttl", "True (bool)"),
    ),
    Case(
        "idempotency-store",
        calling(IdempotencyInterceptor, {}),
        TypeError,
        ("IdempotencyInterceptor", "store", "{} (dict)"),
    ),
    Case(
        "idempotency-key",
        calling(IdempotencyInterceptor, key="order-1"),
        TypeError,
        ("IdempotencyInterceptor", "key", "'order-1' (str)", "callable"),
    ),
    # cancellation, identity, subpipelines
    Case(
        "token-reason",
        calling(CancellationToken().cancel, 5),
        TypeError,
        ("CancellationToken.cancel", "reason", "5 (int)"),
    ),
    Case(
        "token-callback",
        calling(CancellationToken().on_cancel, "stop"),
        TypeError,
        ("CancellationToken.on_cancel", "callback", "'stop' (str)"),
    ),
    Case(
        "cleanup-register",
        calling(CleanupRegistry().register, None),
        TypeError,
        ("CleanupRegistry.register", "callback", "None"),
    ),
    Case(
        "cleanup-timeout",
        calling(anyio.run, lambda: CleanupRegistry().run_all(timeout=-1)),
        ValueError,
        ("CleanupRegistry.run_all", "timeout", "-1 (int)"),
    ),
    Case(
        "task-group-cleanup",
        calling(StructuredTaskGroup, cleanup_timeout="5"),
        TypeError,
        ("StructuredTaskGroup", "cleanup_timeout", "'5' (str)"),
    ),
    Case(
        "identity-run-id",
        calling(RunIdentity, pipeline_run_id=5),
        TypeError,
        ("RunIdentity", "pipeline_run_id", "5 (int)"),
    ),
    Case(
        "identity-user",
        calling(RunIdentity, user_id=42),
        TypeError,
        ("RunIdentity", "user_id", "42 (int)"),
    ),
    Case(
        "spawner-depth",
        calling(SubpipelineSpawner, max_depth=-1),
        ValueError,
        ("SubpipelineSpawner", "max_depth", "-1 (int)"),
    ),
    Case(
        "spawn-pipeline",
        spawn(pipeline="child"),
        TypeError,
        ("stage 's'", "spawn_subpipeline()", "'child' (str)"),
    ),
    Case(
        "spawn-data",
        spawn(data=5),
        TypeError,
        ("stage 's'", "data", "5 (int)"),
    ),
    Case(
        "spawn-inherit",
        spawn(inherit="user"),
        TypeError,
        ("stage 's'", "inherit", "'user' (str)"),
    ),
    # tools
    Case(
        "tool-executor-registry",
        calling(ToolExecutor, []),
        TypeError,
        ("ToolExecutor", "registry", "[] (list)"),
    ),
    Case(
        "tool-executor-timeout",
        calling(ToolExecutor, ToolRegistry(), approval_timeout="60"),
        TypeError,
        ("ToolExecutor", "approval_timeout", "'60' (str)"),
    ),
    Case(
        "approval-history",
        calling(ApprovalService, history=-1),
        ValueError,
        ("ApprovalService", "history", "-1 (int)"),
    ),
    Case(
        "undo-ttl",
        calling(UndoStore, default_ttl="1h"),
        TypeError,
        ("UndoStore", "default_ttl", "'1h' (str)"),
    ),
    Case(
        "tool-registry",
        calling(ToolRegistry, 5),
        ToolDefinitionError,
        ("ToolRegistry", "tools", "5 (int)"),
    ),
]


@pytest.mark.parametrize(
    "case", [c.param() for c in (*WITH_STAGE, *PIPELINE_CASES, *BUILD, *RUN, *CONSTRUCTORS)]
)
def test_a_bad_argument_is_a_clear_error_where_it_is_given(case: Case) -> None:
    with pytest.raises(Exception) as info:
        case.call()
    assert isinstance(info.value, case.error), repr(info.value)
    message = str(info.value)
    missing = [fragment for fragment in case.fragments if fragment not in message]
    assert missing == [], message


def test_builder_errors_name_their_stage_and_code() -> None:
    with pytest.raises(PipelineValidationError) as info:
        Pipeline("p").with_stage("a", noop, dependencies=[["b"]])  # type: ignore[list-item]
    assert info.value.code == "CONTRACT-004-INVALID"
    assert info.value.stages == ("a",)
    with pytest.raises(PipelineValidationError) as info:
        Pipeline("p").with_stage("a", noop, interceptors=[42])  # type: ignore[list-item]
    assert info.value.stages == ("a",)


def test_a_coroutine_passed_as_runner_is_closed_and_explained() -> None:
    coroutine = not_a_stage()
    with pytest.raises(PipelineValidationError) as info:
        Pipeline("p").with_stage("a", coroutine)
    assert "runner is a coroutine" in str(info.value)
    assert "with_stage('a', not_a_stage)" in str(info.value)
    assert inspect.getcoroutinestate(coroutine) == "CORO_CLOSED"  # no "never awaited" warning


@pytest.mark.parametrize(
    "kwargs",
    [
        {"timeout": 0.5},
        {"timeout": 2},
        {"timeout": None},
        {"dependencies": ("b",), "after": ["b"]},
        {"dependencies": iter(["b"])},
        {"interceptors": (RetryInterceptor(),)},
        {"conditional": True},
        {"kind": "guard"},
    ],
)
def test_good_arguments_still_build(kwargs: dict[str, Any]) -> None:
    pipeline = Pipeline("p").with_stage("b", noop).with_stage("a", noop, **kwargs)
    assert pipeline.build(cleanup_timeout=math.inf, max_concurrency=None).stage_names == ("b", "a")


def test_a_pipeline_run_still_accepts_a_list_of_interceptors_and_reuses_its_graph() -> None:
    pipeline = Pipeline("p").with_stage("a", noop)
    anyio.run(lambda: pipeline.run(interceptors=[]))
    first = pipeline._graph_cache
    anyio.run(lambda: pipeline.run(interceptors=()))
    assert first is not None
    assert pipeline._graph_cache is first


def test_dot_and_mermaid_draw_a_missing_dependency_instead_of_dropping_it() -> None:
    pipeline = Pipeline("gap").with_stage("a", noop).with_stage("b", noop, dependencies=["x"])
    assert pipeline.to_mermaid().splitlines() == [
        "flowchart LR",
        '  s0["a (transform)"]',
        '  s1["b (transform)"]',
        '  m0["x (missing)"]',
        "  m0 --> s1",
    ]
    dot = pipeline.to_dot().splitlines()
    assert '  "x" [label="x (missing)"];' in dot
    assert '  "x" -> "b";' in dot


def test_the_batch_size_follows_a_small_queue_and_an_explicit_one_is_kept() -> None:
    small = BackpressureAwareEventSink(CollectingEventSink(), max_queue_size=10)
    large = BackpressureAwareEventSink(CollectingEventSink())
    explicit = BackpressureAwareEventSink(
        CollectingEventSink(), max_queue_size=10, max_batch_size=3
    )
    try:
        assert small._queue.batch_size == 10
        assert large._queue.batch_size == 512
        assert explicit._queue.batch_size == 3
    finally:
        for sink in (small, large, explicit):
            sink.shutdown()


def test_the_logging_sink_accepts_none_as_data_like_stageflow_core(
    caplog: pytest.LogCaptureFixture,
) -> None:
    sink = LoggingEventSink(level="info", logger_name="test.events")
    with caplog.at_level("INFO", logger="test.events"):
        sink.try_emit(type="custom.event", data=None)
        anyio.run(lambda: sink.emit(type="other.event", data=None))
    assert [(r.getMessage(), r.event_data) for r in caplog.records] == [  # type: ignore[attr-defined]
        ("custom.event {}", {}),
        ("other.event {}", {}),
    ]
