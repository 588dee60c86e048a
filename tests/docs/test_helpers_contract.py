"""What the helpers record is what the "Helpers" section of ``docs/telemetry.md`` says."""

from __future__ import annotations

import re
from collections.abc import Iterator

import anyio
import pytest
from prometheus_client import CollectorRegistry
from prometheus_client.metrics import MetricWrapperBase

from stageflow_otel import CollectingEventSink, Pipeline, RunIdentity, StageContext
from stageflow_otel.helpers import (
    ChunkQueue,
    ContentFilter,
    GuardStage,
    InMemoryMemoryStore,
    MemoryFetchStage,
    MemoryTrackingInterceptor,
    MemoryWriteStage,
    MockAuthProvider,
    MockChatModel,
    PIICheck,
    Turn,
)
from stageflow_otel.observability.helpers import HelperMetrics, HelperTelemetry
from stageflow_otel.testing import InMemoryTelemetry, in_memory_telemetry
from tests.support.contract import (
    attribute_documented,
    event_documented,
    parse_contract_metrics,
    parse_event_types,
    parse_span_attributes,
    parse_span_names,
    section,
    subsection,
    table_rows,
    telemetry_markdown,
)

_BACKTICKED = re.compile(r"`([^`]+)`")
# `key` = `v1`, `v2` or `v3`: the values (no dots, unlike keys) are no keys.
_VALUES = re.compile(r"=\s*`[^`.]*`(?:\s*(?:,|or)\s*`[^`.]*`)*")


def helpers_section() -> str:
    return section(telemetry_markdown(), "Helpers")


def documented_helper_attributes() -> frozenset[str]:
    keys: set[str] = set()
    for cells in table_rows(subsection(helpers_section(), "Helper span attributes and events")):
        keys.update(_BACKTICKED.findall(_VALUES.sub("", cells[0])))
    return frozenset(keys)


def test_registered_helper_metrics_are_the_documented_ones() -> None:
    metrics = HelperMetrics(CollectorRegistry())
    registered = {
        (m._name + "_total" if m._type == "counter" else m._name): (m._type, set(m._labelnames))
        for m in metrics.collectors
        if isinstance(m, MetricWrapperBase)
    }
    documented = {
        name: (metric.type, set(metric.labels))
        for name, metric in parse_contract_metrics(telemetry_markdown(), "Helpers").items()
    }
    assert registered == documented


def test_the_helper_metrics_are_not_in_the_engine_table() -> None:
    # The engine's table is what StageflowMetrics registers; the helpers' live apart.
    engine = parse_contract_metrics(telemetry_markdown())
    assert not {name for name in engine if "guardrail" in name}


@pytest.fixture(scope="module")
def helper_run() -> Iterator[tuple[InMemoryTelemetry, CollectingEventSink]]:
    """One run of a pipeline that uses every helper that records telemetry."""
    recorded = in_memory_telemetry(canonical_logs=False)
    helpers = HelperTelemetry(recorded.telemetry)
    sink = CollectingEventSink()
    model = MockChatModel()
    auth = MockAuthProvider()

    async def ask(ctx: StageContext) -> None:
        await auth.token("ada", ctx=ctx)
        await model.chat([{"role": "user", "content": "hi"}], ctx=ctx, max_tokens=9, temperature=0)

    async def relay(ctx: StageContext) -> None:
        queue: ChunkQueue[str] = ChunkQueue(2, ctx=ctx, name="tokens")
        queue.put_nowait("a")
        queue.close()
        assert [chunk async for chunk in queue] == ["a"]

    store = InMemoryMemoryStore()
    tracker = MemoryTrackingInterceptor()
    pipeline = (
        Pipeline("helpers")
        .with_stage("guard", GuardStage([PIICheck(), ContentFilter(["forbidden"])]))
        .with_stage("ask", ask)
        .with_stage("relay", relay)
        .with_stage("memory", MemoryFetchStage(store))
        .with_stage("remember", MemoryWriteStage(store, turns=lambda ctx: [Turn("user", "x")]))
        .with_stage("measured", relay, interceptors=[tracker])
    )

    async def go() -> None:
        with anyio.fail_after(30):
            await pipeline.build(hooks=(*recorded.hooks, helpers), event_sink=sink).run(
                {"text": "a@b.io"}, identity=RunIdentity(session_id="s")
            )

    try:
        anyio.run(go)
    finally:
        tracker.close()
    yield recorded, sink
    recorded.shutdown()


def test_every_helper_attribute_is_documented_and_every_documented_one_recorded(
    helper_run: tuple[InMemoryTelemetry, CollectingEventSink],
) -> None:
    recorded_run, _ = helper_run
    engine = parse_span_attributes(telemetry_markdown())
    recorded: set[str] = set()
    for span in recorded_run.spans():
        recorded.update(k for k in span.attributes or {} if not attribute_documented(k, engine))
        for event in span.events:
            recorded.update(event.attributes or {})
    documented = documented_helper_attributes()
    assert recorded == {k for k in documented if not attribute_documented(k, engine)}
    # The engine's attributes the helper table repeats are recorded on the helper spans too.
    repeated = {k for k in documented if attribute_documented(k, engine)}
    provider_span = recorded_run.span("chat mock-chat")
    identity = {"stageflow.request.id", "stageflow.session.id", "stageflow.user.id"}
    assert repeated - identity - {"error.type"} <= set(provider_span.attributes or {})


def test_helper_span_names_are_the_documented_ones(
    helper_run: tuple[InMemoryTelemetry, CollectingEventSink],
) -> None:
    engine = parse_span_names(telemetry_markdown())
    made = {
        span.name
        for span in helper_run[0].spans()
        if not any(span.name == p or span.name.startswith(p + " ") for p in engine)
    }
    assert made == {"chat mock-chat", "auth_token"}
    operations = re.search(
        r"`gen_ai.operation.name` = ((?:`[a-z_]+`(?:, | or )?)+)",
        subsection(helpers_section(), "Helper span attributes and events"),
    )
    assert operations is not None
    documented = set(_BACKTICKED.findall(operations.group(1)))
    assert {name.split(" ")[0] for name in made} <= documented


def test_every_helper_event_is_documented_and_every_documented_one_sent(
    helper_run: tuple[InMemoryTelemetry, CollectingEventSink],
) -> None:
    engine = parse_event_types(telemetry_markdown())
    sent = {t for t in helper_run[1].types if not event_documented(t, engine)}
    rows = table_rows(subsection(helpers_section(), "Helper events"))
    documented = {name for cells in rows for name in _BACKTICKED.findall(cells[0])}
    assert sent == documented
