"""What the library records is what ``docs/telemetry.md`` says it records.

The contract (span names, span attributes, metric names, types and labels, event types) is
read from the project's own reference page, never from anywhere outside the checkout.
"""

from __future__ import annotations

from collections.abc import Iterator

import anyio
import pytest
from prometheus_client import CollectorRegistry
from prometheus_client.metrics import MetricWrapperBase

from stageflow_otel.core import CollectingEventSink, RunIdentity
from stageflow_otel.demo import build_order_pipeline, order_input
from stageflow_otel.observability._compact_metrics import CompactCounter, CompactHistogram
from stageflow_otel.observability.metrics import StageflowMetrics
from stageflow_otel.testing import InMemoryTelemetry, in_memory_telemetry
from tests.support.contract import (
    REPO_ROOT,
    TELEMETRY_MD,
    attribute_documented,
    contract_metrics,
    event_documented,
    parse_event_types,
    parse_span_attributes,
    parse_span_names,
    telemetry_markdown,
)


def test_the_contract_is_the_projects_own_file() -> None:
    assert TELEMETRY_MD.is_relative_to(REPO_ROOT)
    assert TELEMETRY_MD.relative_to(REPO_ROOT).as_posix() == "docs/telemetry.md"


def test_registered_metrics_are_the_contract_metrics() -> None:
    metrics = StageflowMetrics(CollectorRegistry())
    registered = {}
    for m in vars(metrics).values():
        if isinstance(m, MetricWrapperBase):
            name, kind, labels = m._name, m._type, m._labelnames
        elif isinstance(m, CompactCounter | CompactHistogram):
            name, kind, labels = m.name, m.kind, m.labelnames
        else:
            continue
        registered[name + "_total" if kind == "counter" else name] = (kind, set(labels))
    documented = {
        name: (metric.type, set(metric.labels)) for name, metric in contract_metrics().items()
    }
    assert registered == documented


@pytest.fixture(scope="module")
def demo_run() -> Iterator[tuple[InMemoryTelemetry, CollectingEventSink]]:
    """The example order pipeline, run once with every kind of span and event it has."""
    recorded = in_memory_telemetry(canonical_logs=False)
    sink = CollectingEventSink()
    graph = build_order_pipeline().build(
        hooks=recorded.telemetry.hooks,
        event_sink=sink,
        emit_stage_wide_events=True,
        emit_pipeline_wide_event=True,
    )

    async def go() -> None:
        with anyio.fail_after(30):
            await graph.run(order_input(0), identity=RunIdentity(request_id="contract-1"))

    anyio.run(go)
    yield recorded, sink
    recorded.shutdown()


def test_every_span_name_is_in_the_contract_and_every_contract_span_is_made(
    demo_run: tuple[InMemoryTelemetry, CollectingEventSink],
) -> None:
    recorded, _ = demo_run
    documented = parse_span_names(telemetry_markdown())
    made = {span.name for span in recorded.exporter.get_finished_spans()}
    prefixes = {
        next((p for p in documented if name == p or name.startswith(p + " ")), name)
        for name in made
    }
    assert prefixes == set(documented)


def test_every_span_attribute_is_in_the_contract(
    demo_run: tuple[InMemoryTelemetry, CollectingEventSink],
) -> None:
    recorded, _ = demo_run
    documented = parse_span_attributes(telemetry_markdown())
    keys = {
        key for span in recorded.exporter.get_finished_spans() for key in (span.attributes or {})
    }
    assert keys
    assert sorted(k for k in keys if not attribute_documented(k, documented)) == []


def test_every_event_type_is_in_the_contract(
    demo_run: tuple[InMemoryTelemetry, CollectingEventSink],
) -> None:
    _, sink = demo_run
    documented = parse_event_types(telemetry_markdown())
    assert sink.types
    assert sorted({t for t in sink.types if not event_documented(t, documented)}) == []
