"""Arbitrary values thrown at the builder: only the documented errors come out, and no hang.

``with_stage`` and ``build`` raise :class:`PipelineValidationError` for every mistake; a
pipeline they accept runs to an end (OK, or a documented run error) within a bound.
"""

from __future__ import annotations

import contextlib
import math
from typing import Any

import anyio
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from stageflow_otel.core import (
    CollectingEventSink,
    Pipeline,
    PipelineCancelled,
    PipelineValidationError,
    RetryInterceptor,
    RunHook,
    StageContext,
    StageExecutionError,
    StageKind,
    StageReturn,
    TimeoutInterceptor,
)

HANG = 5.0


async def noop(ctx: StageContext) -> StageReturn:
    return None


def sync_noop(ctx: StageContext) -> None:
    return None


class Stage:
    async def execute(self, ctx: StageContext) -> StageReturn:
        return {"done": True}


scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=4),
    st.binary(max_size=3),
    st.sampled_from([object(), object, print, ..., 1j, math.inf, "fail_fast", "continue"]),
)
plausible = st.sampled_from(
    [
        RetryInterceptor(max_attempts=2, base_delay=0.0),
        TimeoutInterceptor(1.0),
        RetryInterceptor,
        RunHook(),
        CollectingEventSink(),
        noop,
        sync_noop,
        Stage,
        Stage(),
        "a",
        "b",
        "",
    ]
)
values = st.recursive(
    st.one_of(scalars, plausible),
    lambda inner: st.one_of(
        st.lists(inner, max_size=3),
        st.tuples(inner),
        st.dictionaries(st.text(max_size=2), inner, max_size=2),
        st.frozensets(st.one_of(st.text(max_size=2), st.integers()), max_size=2),
    ),
    max_leaves=4,
)

interceptor_lists = st.lists(
    st.sampled_from([RetryInterceptor(max_attempts=2, base_delay=0.0), TimeoutInterceptor(1.0)]),
    max_size=2,
)
VALID: dict[str, st.SearchStrategy[Any]] = {
    # with_stage
    "name": st.sampled_from(["a", "c"]),
    "runner": st.sampled_from([noop, sync_noop, Stage, Stage()]),
    "kind": st.sampled_from([None, "guard", StageKind.WORK]),
    "dependencies": st.one_of(
        st.sampled_from([None, ["b"], ("b",)]), st.builds(iter, st.just("b"))
    ),
    "after": st.sampled_from([None, [], ["b"]]),
    "conditional": st.booleans(),
    "timeout": st.one_of(st.none(), st.floats(min_value=1e-3, max_value=10.0)),
    "stage_interceptors": interceptor_lists,
    # build
    "interceptors": interceptor_lists,
    "hooks": st.sampled_from([None, [], [RunHook()]]),
    "event_sink": st.sampled_from([None, CollectingEventSink()]),
    "failure_mode": st.sampled_from(["fail_fast", "continue"]),
    "max_concurrency": st.one_of(st.none(), st.integers(min_value=1, max_value=8)),
    "max_depth": st.integers(min_value=0, max_value=8),
    "emit_stage_wide_events": st.booleans(),
    "emit_pipeline_wide_event": st.booleans(),
    "cleanup_timeout": st.one_of(st.floats(min_value=1e-3, max_value=100.0), st.just(math.inf)),
}
STAGE_PARAMS = ("kind", "dependencies", "after", "conditional", "timeout", "stage_interceptors")
BUILD_PARAMS = (
    "interceptors",
    "hooks",
    "event_sink",
    "failure_mode",
    "max_concurrency",
    "max_depth",
    "emit_stage_wide_events",
    "emit_pipeline_wide_event",
    "cleanup_timeout",
)


@st.composite
def arguments(draw: st.DrawFn) -> dict[str, Any]:
    """Valid arguments, of which zero to three are replaced by arbitrary values."""
    broken = draw(st.sets(st.sampled_from(sorted(VALID)), max_size=3))
    return {param: draw(values if param in broken else VALID[param]) for param in VALID}


@settings(
    max_examples=200,
    deadline=None,  # a run is bounded by HANG below; hypothesis' deadline would be flaky
    suppress_health_check=[HealthCheck.too_slow],
)
@given(args=arguments())
def test_the_builder_raises_only_validation_errors_and_never_hangs(args: dict[str, Any]) -> None:
    stage_kwargs = {p.removeprefix("stage_"): args[p] for p in STAGE_PARAMS}
    build_kwargs = {p: args[p] for p in BUILD_PARAMS}
    rejection: str | None = None
    try:
        pipeline = (
            Pipeline("fuzz")
            .with_stage("b", noop)
            .with_stage(args["name"], args["runner"], **stage_kwargs)
        )
        graph = pipeline.build(**build_kwargs)
    except PipelineValidationError as exc:
        rejection = str(exc)
    if rejection is not None:
        event("rejected")
        # Every rejection says who is concerned: a stage, or the pipeline.
        assert "stage" in rejection or "pipeline 'fuzz'" in rejection, rejection
        return

    async def go() -> None:
        with anyio.fail_after(HANG), contextlib.suppress(StageExecutionError, PipelineCancelled):
            await graph.run()

    anyio.run(go)
    event("built and ran")
