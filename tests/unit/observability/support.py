"""Helpers for the observability tests: running graphs, reading spans and registries."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import anyio
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import ReadableSpan
from prometheus_client import CollectorRegistry

from stageflow_otel import (
    Pipeline,
    PipelineCancelled,
    PipelineResults,
    RetryInterceptor,
    StageContext,
    StageExecutionError,
    StageGraph,
    StageOutput,
)
from stageflow_otel.core import TransientError

HANG = 5.0
"""Seconds after which a test counts as hung (a guard, never a speed assertion)."""


async def run_graph(graph: StageGraph, **kwargs: Any) -> Mapping[str, StageOutput]:
    """Run ``graph`` and return its results, also when the run failed or was cancelled."""
    with anyio.fail_after(HANG):
        try:
            results: PipelineResults = await graph.run(**kwargs)
        except (StageExecutionError, PipelineCancelled) as exc:
            return exc.results
    return results


async def ok_stage(ctx: StageContext) -> dict[str, Any]:
    """Succeeds with one output key."""
    return {"value": 1}


async def noop_stage(ctx: StageContext) -> None:
    """Succeeds with no output."""


async def raising_stage(ctx: StageContext) -> None:
    """Fails by raising a builtin exception."""
    raise ValueError("bad input")


def fails_once() -> Callable[[StageContext], Awaitable[StageOutput]]:
    """A stage that raises a ``TransientError`` on its first attempt and succeeds after."""
    attempts = {"n": 0}

    async def flaky(ctx: StageContext) -> StageOutput:
        attempts["n"] += 1
        if attempts["n"] == 1:
            raise TransientError("busy")
        return StageOutput.ok()

    return flaky


RETRY_ONCE = RetryInterceptor(max_attempts=2, base_delay=0.001)
"""Retries a stage once, at once (with ``fails_once``, the stage's retry)."""


async def hanging_stage(ctx: StageContext) -> None:
    """Waits until cancelled."""
    await anyio.sleep_forever()


GEO = (
    Pipeline("geo")
    .with_stage("lookup", ok_stage)
    .with_stage("score", ok_stage, dependencies=["lookup"])
)
"""A two-stage child pipeline for subpipeline tests."""


async def spawn_geo(ctx: StageContext) -> dict[str, Any]:
    """Runs :data:`GEO` as a subpipeline."""
    result = await ctx.spawn_subpipeline(GEO)
    return {"child_ok": result.success}


def hex_ids(span: ReadableSpan) -> tuple[str, str]:
    """``(trace_id, span_id)`` of a span, as the hex strings events and logs carry."""
    context = span.context
    assert context is not None
    return format(context.trace_id, "032x"), format(context.span_id, "016x")


def attributes(span: ReadableSpan) -> dict[str, Any]:
    """A span's attributes as a plain dict (sequences as lists)."""
    return {
        key: list(value) if isinstance(value, tuple) else value
        for key, value in (span.attributes or {}).items()
    }


def parent_id(span: ReadableSpan) -> int | None:
    """The span id of a span's parent, ``None`` for a root."""
    return int(span.parent.span_id) if span.parent is not None else None


def span_id(span: ReadableSpan) -> int:
    """A span's own span id."""
    assert span.context is not None
    return int(span.context.span_id)


def series(registry: CollectorRegistry, sample: str) -> dict[str, float]:
    """Every sample called ``sample``, keyed by ``"k=v,k=v"`` (labels sorted by name).

    Comparing the whole dict with a literal shows both wrong values and unexpected series.
    """
    found: dict[str, float] = {}
    for family in registry.collect():
        for item in family.samples:
            if item.name == sample:
                key = ",".join(f"{k}={v}" for k, v in sorted(item.labels.items()))
                found[key] = item.value
    return found


def points(reader: InMemoryMetricReader) -> dict[str, list[Any]]:
    """The data points of a collection of the ``stageflow_otel`` meter, by metric name."""
    found: dict[str, list[Any]] = {}
    data = reader.get_metrics_data()
    assert data is not None
    for resource in data.resource_metrics:
        for scope in resource.scope_metrics:
            assert scope.scope.name == "stageflow_otel"
            for metric in scope.metrics:
                found.setdefault(metric.name, []).extend(metric.data.data_points)
    return found
