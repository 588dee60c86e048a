"""The worker side: ``stage.remote`` spans in the submitter's trace, and the worker metrics."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import anyio
import pytest
from opentelemetry.trace import StatusCode

from stageflow_otel import BaseInterceptor, Pipeline, StageExecutionError
from stageflow_otel.core import CallNext, StageCall, StageOutput
from stageflow_otel.distributed import LocalExecutor, remote_stage
from stageflow_otel.distributed.telemetry import QUEUE_WAIT, WORKER, WorkerTelemetry
from stageflow_otel.testing import InMemoryTelemetry, in_memory_telemetry
from tests.support import remote_functions as rf
from tests.support.servers import http_get

pytestmark = pytest.mark.anyio


async def source(ctx: Any) -> dict[str, Any]:
    return {"x": 3}


class Audit(BaseInterceptor):
    name = "audit"

    async def intercept(self, call: StageCall, call_next: CallNext) -> StageOutput:
        return await call_next(call)


@pytest.fixture
def recorded() -> Iterator[InMemoryTelemetry]:
    telemetry = in_memory_telemetry(canonical_logs=False)
    yield telemetry
    telemetry.shutdown()


@pytest.fixture
def worker(recorded: InMemoryTelemetry) -> Iterator[tuple[LocalExecutor, WorkerTelemetry]]:
    # The "worker" exports to the same in-memory provider: one trace, two sides.
    telemetry = WorkerTelemetry(recorded.tracer_provider)
    with LocalExecutor(2, telemetry=telemetry) as local:
        yield local, telemetry
    telemetry.shutdown()


async def test_the_remote_span_is_a_child_of_the_submitting_span(
    recorded: InMemoryTelemetry, worker: tuple[LocalExecutor, WorkerTelemetry]
) -> None:
    local, _ = worker
    graph = (
        Pipeline("math")
        .with_stage("source", source)
        .with_stage("square", remote_stage(rf.square, local), dependencies=["source"])
        .with_stage(
            "add_one",
            remote_stage(rf.add_one, local),
            dependencies=["square"],
            interceptors=[Audit()],
        )
        .build(hooks=recorded.hooks)
    )
    await graph.run()
    assert recorded.tree() == [
        "pipeline.run math",
        "  stage.run source",
        "  stage.run square",
        "    stage.remote square",
        "  stage.run add_one",
        "    interceptor audit",
        "      stage.remote add_one",
    ]
    remote = recorded.span("stage.remote square")
    stage = recorded.span("stage.run square")
    assert remote.context.trace_id == stage.context.trace_id
    attributes = dict(remote.attributes or {})
    assert attributes["stageflow.stage.name"] == "square"
    assert attributes["stageflow.pipeline.name"] == "math"
    assert attributes["stageflow.run.id"] == stage.attributes["stageflow.run.id"]  # type: ignore[index]
    assert attributes["stageflow.stage.attempt"] == 1
    assert attributes["stageflow.stage.status"] == "ok"
    assert str(attributes[WORKER]).startswith("local:")
    assert float(attributes[QUEUE_WAIT]) >= 0  # type: ignore[arg-type]
    assert recorded.open_spans() == []


async def test_a_failure_on_the_worker_is_on_the_remote_span_and_counted(
    recorded: InMemoryTelemetry, worker: tuple[LocalExecutor, WorkerTelemetry]
) -> None:
    local, telemetry = worker
    graph = (
        Pipeline("p")
        .with_stage("boom", remote_stage(rf.explode, local))
        .build(hooks=recorded.hooks)
    )
    with pytest.raises(StageExecutionError):
        await graph.run()
    span = recorded.span("stage.remote boom")
    assert span.status.status_code is StatusCode.ERROR
    assert span.attributes is not None
    assert span.attributes["error.type"] == "ValueError"
    assert [event.name for event in span.events] == ["exception"]
    labels = {"pipeline": "p", "stage": "boom", "status": "fail", "error_type": "ValueError"}
    assert telemetry.registry.get_sample_value("stageflow_remote_stages_total", labels) == 1.0
    count = telemetry.registry.get_sample_value(
        "stageflow_remote_stage_duration_seconds_count",
        {"pipeline": "p", "stage": "boom", "status": "fail"},
    )
    assert count == 1.0


async def test_returned_statuses_are_counted(
    recorded: InMemoryTelemetry, worker: tuple[LocalExecutor, WorkerTelemetry]
) -> None:
    local, telemetry = worker
    graph = (
        Pipeline("p")
        .with_stage("source", source)
        .with_stage("square", remote_stage(rf.square, local), dependencies=["source"])
        .with_stage("no", remote_stage(rf.refuse, local), dependencies=["square"])
        .build(hooks=recorded.hooks)
    )
    with pytest.raises(StageExecutionError):
        await graph.run()
    sample = telemetry.registry.get_sample_value
    total = "stageflow_remote_stages_total"
    assert (
        sample(total, {"pipeline": "p", "stage": "square", "status": "ok", "error_type": ""}) == 1
    )
    assert (
        sample(total, {"pipeline": "p", "stage": "no", "status": "fail", "error_type": "_OTHER"})
        == 1
    )


def test_the_worker_serves_its_metrics(recorded: InMemoryTelemetry) -> None:
    telemetry = WorkerTelemetry(recorded.tracer_provider)
    server = telemetry.serve_metrics(port=0)
    try:
        with LocalExecutor(1, telemetry=telemetry) as local:
            graph = Pipeline("p").with_stage("spin", remote_stage(rf.spin, local)).build()
            anyio.run(graph.run, {"cpu_s": 0.001})
        text = http_get(server.url).decode()
    finally:
        telemetry.shutdown()
    assert (
        'stageflow_remote_stages_total{error_type="",pipeline="p",stage="spin",status="ok"} 1.0'
        in text
    )
    assert "stageflow_remote_stage_duration_seconds_bucket" in text


async def test_without_a_trace_context_the_remote_span_starts_a_trace(
    recorded: InMemoryTelemetry, worker: tuple[LocalExecutor, WorkerTelemetry]
) -> None:
    local, _ = worker
    graph = (
        Pipeline("p")
        .with_stage("spin", remote_stage(rf.spin, local, trace_context=None))
        .build(hooks=recorded.hooks)
    )
    await graph.run({"cpu_s": 0.001})
    assert recorded.span("stage.remote spin").parent is None
