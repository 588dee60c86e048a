"""What remote stages record is what "## Remote stages" of ``docs/telemetry.md`` says."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import anyio
import pytest
from prometheus_client import CollectorRegistry
from prometheus_client.metrics import MetricWrapperBase

from stageflow_otel import CollectingEventSink, Pipeline, StageExecutionError
from stageflow_otel.distributed import LocalExecutor, remote_stage
from stageflow_otel.distributed.telemetry import RemoteStageMetrics, WorkerTelemetry
from stageflow_otel.testing import InMemoryTelemetry, in_memory_telemetry
from tests.support import remote_functions as rf
from tests.support.contract import (
    attribute_documented,
    event_documented,
    remote_contract_metrics,
    remote_event_types,
    remote_span_attributes,
    remote_span_names,
)


async def source(ctx: Any) -> dict[str, Any]:
    return {"x": 2}


@pytest.fixture(scope="module")
def remote_run() -> Iterator[tuple[InMemoryTelemetry, CollectingEventSink]]:
    recorded = in_memory_telemetry(canonical_logs=False)
    sink = CollectingEventSink()
    worker = WorkerTelemetry(recorded.tracer_provider)
    with LocalExecutor(2, telemetry=worker) as local:
        graph = (
            Pipeline("contract")
            .with_stage("source", source)
            .with_stage("square", remote_stage(rf.square, local), dependencies=["source"])
            .with_stage("boom", remote_stage(rf.explode, local), dependencies=["square"])
            .build(hooks=recorded.hooks, event_sink=sink)
        )
        with pytest.raises(StageExecutionError):
            anyio.run(graph.run)
    yield recorded, sink
    recorded.shutdown()


def test_remote_span_names_are_documented(
    remote_run: tuple[InMemoryTelemetry, CollectingEventSink],
) -> None:
    recorded, _ = remote_run
    documented = remote_span_names()
    made = {s.name for s in recorded.spans() if s.name.startswith("stage.remote")}
    assert made == {"stage.remote square", "stage.remote boom"}
    assert {name.split(" ", 1)[0] for name in made} == set(documented) == {"stage.remote"}


def test_remote_span_attributes_are_documented(
    remote_run: tuple[InMemoryTelemetry, CollectingEventSink],
) -> None:
    recorded, _ = remote_run
    documented = remote_span_attributes()
    keys = {
        key
        for span in recorded.spans()
        if span.name.startswith("stage.remote ")
        for key in (span.attributes or {})
    }
    assert "stageflow.remote.worker" in keys
    assert sorted(k for k in keys if not attribute_documented(k, documented)) == []


def test_remote_events_are_documented(
    remote_run: tuple[InMemoryTelemetry, CollectingEventSink],
) -> None:
    _, sink = remote_run
    documented = remote_event_types()
    emitted = {t for t in sink.types if t.startswith("stage.remote.")}
    assert emitted == {"stage.remote.submitted", "stage.remote.started"}
    assert sorted(t for t in emitted if not event_documented(t, documented)) == []
    # The Dask integration tests emit the other two.
    assert {"stage.remote.worker_lost", "stage.remote.resubmitted"} <= documented


def test_worker_metrics_are_the_documented_ones() -> None:
    metrics = RemoteStageMetrics(CollectorRegistry())
    registered = {
        (m._name + "_total" if m._type == "counter" else m._name): (m._type, set(m._labelnames))
        for m in vars(metrics).values()
        if isinstance(m, MetricWrapperBase)
    }
    documented = {
        name: (metric.type, set(metric.labels))
        for name, metric in remote_contract_metrics().items()
    }
    assert registered == documented
