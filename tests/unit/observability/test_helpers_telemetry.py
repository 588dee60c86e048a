"""What the helpers report, recorded by ``HelperTelemetry``: span events, attributes, metrics."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import anyio
import pytest
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.trace import SpanKind, StatusCode

from stageflow_otel import (
    Pipeline,
    RetryInterceptor,
    RunIdentity,
    StageContext,
    StageExecutionError,
)
from stageflow_otel.helpers import (
    AnalyticsRow,
    AnalyticsSink,
    ChunkQueue,
    ContentFilter,
    GuardStage,
    InMemoryMemoryStore,
    MemoryFetchStage,
    MemoryTrackingInterceptor,
    MemoryWriteStage,
    MockAuthProvider,
    MockChatModel,
    MockSpeechToText,
    MockTextToSpeech,
    PIICheck,
    PIIDetector,
    Turn,
)
from stageflow_otel.observability.helpers import HelperTelemetry
from stageflow_otel.testing import InMemoryTelemetry, in_memory_telemetry

from .support import ok_stage, points, run_graph

pytestmark = pytest.mark.anyio


@pytest.fixture
def helpers(telemetry: InMemoryTelemetry) -> HelperTelemetry:
    return HelperTelemetry(telemetry.telemetry)


async def test_each_guardrail_verdict_is_a_span_event_and_counted(
    telemetry: InMemoryTelemetry, helpers: HelperTelemetry
) -> None:
    guard = GuardStage([PIICheck(), ContentFilter(["forbidden"])])
    graph = Pipeline("chat").with_stage("guard", guard).build(hooks=(*telemetry.hooks, helpers))
    await run_graph(graph, data={"text": "mail a@b.io or c@d.io"})

    span = telemetry.span("stage.run guard")
    events = [(e.name, dict(e.attributes or {})) for e in span.events]
    assert events == [
        (
            "stageflow.guardrail.verdict",
            {
                "stageflow.guardrail.check": "pii",
                "stageflow.guardrail.verdict": "redact",
                "stageflow.guardrail.findings": 2,
                "stageflow.guardrail.kinds": ("email",),
            },
        ),
        (
            "stageflow.guardrail.verdict",
            {
                "stageflow.guardrail.check": "content",
                "stageflow.guardrail.verdict": "pass",
                "stageflow.guardrail.findings": 0,
                "stageflow.guardrail.kinds": (),
            },
        ),
    ]
    labels = {"pipeline": "chat", "stage": "guard"}
    verdicts = "stageflow_guardrail_verdicts_total"
    assert telemetry.sample(verdicts, {**labels, "check": "pii", "verdict": "redact"}) == 1.0
    assert telemetry.sample(verdicts, {**labels, "check": "content", "verdict": "pass"}) == 1.0
    findings = "stageflow_guardrail_findings_total"
    assert telemetry.sample(findings, {**labels, "kind": "email"}) == 1.0


async def test_a_failed_guard_is_counted_and_its_span_fails(
    telemetry: InMemoryTelemetry, helpers: HelperTelemetry
) -> None:
    guard = GuardStage([ContentFilter(["forbidden"])])
    graph = Pipeline("chat").with_stage("guard", guard).build(hooks=(*telemetry.hooks, helpers))
    with pytest.raises(StageExecutionError):
        await graph.run({"text": "that is forbidden"})
    span = telemetry.span("stage.run guard")
    assert span.attributes is not None
    assert span.attributes["error.type"] == "stageflow_otel.helpers.guardrails.GuardrailViolation"
    labels = {"pipeline": "chat", "stage": "guard", "check": "content", "verdict": "fail"}
    assert telemetry.sample("stageflow_guardrail_verdicts_total", labels) == 1.0
    assert (
        telemetry.sample(
            "stageflow_guardrail_findings_total",
            {"pipeline": "chat", "stage": "guard", "kind": "blocked_word"},
        )
        == 1.0
    )


async def test_the_detector_is_the_telemetry_redaction_hook() -> None:
    detector = PIIDetector()
    recorded = in_memory_telemetry(
        canonical_logs=False, record_output_keys=["reply"], redact=detector.redact_value
    )
    try:

        async def answer(ctx: object) -> dict[str, object]:
            return {"reply": {"text": "write to ada@example.com", "ip": ["10.1.2.3"]}}

        await run_graph(Pipeline("p").with_stage("answer", answer).build(hooks=recorded.hooks))
        attributes = recorded.span("stage.run answer").attributes or {}
        recorded_value = attributes["stageflow.stage.output.data.reply"]
        assert recorded_value == '{"ip": ["[IP]"], "text": "write to [EMAIL]"}'
    finally:
        recorded.shutdown()


def test_one_helper_telemetry_per_registry(telemetry: InMemoryTelemetry) -> None:
    HelperTelemetry(telemetry.telemetry)
    with pytest.raises(ValueError, match="one HelperTelemetry per registry"):
        HelperTelemetry(telemetry.telemetry)


def test_without_metrics_nothing_is_registered() -> None:
    recorded = in_memory_telemetry(canonical_logs=False)
    try:
        HelperTelemetry(recorded.telemetry, metrics=False)
        HelperTelemetry(recorded.telemetry)  # the registry is still free
    finally:
        recorded.shutdown()


async def test_a_mock_chat_call_is_a_genai_client_span_under_its_stage(
    telemetry: InMemoryTelemetry, helpers: HelperTelemetry
) -> None:
    model = MockChatModel("gpt-mock", replies=["fine thanks"])

    async def ask(ctx: StageContext) -> dict[str, str]:
        reply = await model.chat(
            [{"role": "user", "content": "how are you"}], ctx=ctx, max_tokens=50
        )
        return {"reply": reply.text}

    await run_graph(
        Pipeline("chat").with_stage("ask", ask).build(hooks=(*telemetry.hooks, helpers))
    )
    assert telemetry.tree() == ["pipeline.run chat", "  stage.run ask", "    chat gpt-mock"]
    span = telemetry.span("chat gpt-mock")
    assert span.kind is SpanKind.CLIENT
    attributes = dict(span.attributes or {})
    assert {k: v for k, v in attributes.items() if k.startswith("gen_ai.")} == {
        "gen_ai.operation.name": "chat",
        "gen_ai.provider.name": "mock",
        "gen_ai.request.model": "gpt-mock",
        "gen_ai.request.max_tokens": 50,
        "gen_ai.response.model": "gpt-mock",
        "gen_ai.response.id": "mock-1",
        "gen_ai.response.finish_reasons": ("stop",),
        "gen_ai.usage.input_tokens": 3,
        "gen_ai.usage.output_tokens": 2,
    }
    assert attributes["stageflow.stage.name"] == "ask"
    assert attributes["stageflow.pipeline.name"] == "chat"
    assert span.status.status_code is StatusCode.UNSET
    labels = {"operation": "chat", "provider": "mock", "model": "gpt-mock"}
    assert telemetry.sample("stageflow_provider_calls_total", {**labels, "status": "ok"}) == 1.0
    assert telemetry.sample("stageflow_provider_call_duration_seconds_count", labels) == 1.0
    tokens = "stageflow_provider_tokens_total"
    assert telemetry.sample(tokens, {**labels, "token_type": "input"}) == 3.0
    assert telemetry.sample(tokens, {**labels, "token_type": "output"}) == 2.0


async def test_a_failed_provider_call_is_an_error_span_with_its_type(
    telemetry: InMemoryTelemetry, helpers: HelperTelemetry
) -> None:
    stt, tts, auth = MockSpeechToText(fail_calls={1}), MockTextToSpeech(), MockAuthProvider()

    async def voice(ctx: StageContext) -> None:
        await auth.token("ada", ctx=ctx)
        await tts.synthesize("hi", ctx=ctx)
        await stt.transcribe(b"hi", ctx=ctx)

    await run_graph(
        Pipeline("voice").with_stage("v", voice).build(hooks=(*telemetry.hooks, helpers))
    )
    assert telemetry.tree() == [
        "pipeline.run voice",
        "  stage.run v",
        "    auth_token",
        "    text_to_speech mock-tts",
        "    speech_to_text mock-stt",
    ]
    failed = telemetry.span("speech_to_text mock-stt")
    assert failed.status.status_code is StatusCode.ERROR
    assert (failed.attributes or {})[
        "error.type"
    ] == "stageflow_otel.helpers.mocks.MockProviderError"
    assert [e.name for e in failed.events] == ["exception"]
    assert "gen_ai.request.model" not in (telemetry.span("auth_token").attributes or {})
    labels = {"operation": "speech_to_text", "provider": "mock", "model": "mock-stt"}
    assert telemetry.sample("stageflow_provider_calls_total", {**labels, "status": "fail"}) == 1.0
    assert telemetry.open_spans() == []


async def test_a_stream_is_measured_on_the_reading_stage_and_in_metrics(
    telemetry: InMemoryTelemetry, helpers: HelperTelemetry
) -> None:
    depth_seen: list[float | None] = []

    async def relay(ctx: StageContext) -> dict[str, int]:
        queue: ChunkQueue[bytes] = ChunkQueue(4, policy="drop_oldest", name="audio", ctx=ctx)
        for i in range(10):  # a stalled consumer: 6 chunks are evicted
            queue.put_nowait(bytes([i]))
        depth_seen.append(telemetry.sample("stageflow_stream_queue_depth", {"queue": "audio"}))
        queue.close()
        received = [chunk async for chunk in queue]
        return {"chunks": len(received)}

    graph = Pipeline("voice").with_stage("relay", relay).build(hooks=(*telemetry.hooks, helpers))
    await run_graph(graph)
    assert depth_seen == [4.0]
    attributes = dict(telemetry.span("stage.run relay").attributes or {})
    stream = {k: v for k, v in attributes.items() if k.startswith("stageflow.stream.")}
    first, duration = (
        stream.pop("stageflow.stream.first_chunk_s"),
        stream.pop("stageflow.stream.duration_s"),
    )
    assert isinstance(first, float)
    assert isinstance(duration, float)
    assert 0 <= first <= duration
    assert stream == {
        "stageflow.stream.queue": "audio",
        "stageflow.stream.delivered": 4,
        "stageflow.stream.dropped": 0,
        "stageflow.stream.evicted": 6,
    }
    chunks = "stageflow_stream_chunks_total"
    counts = {
        result: telemetry.sample(chunks, {"queue": "audio", "result": result})
        for result in ("offered", "delivered", "dropped", "evicted")
    }
    assert counts == {"offered": 10.0, "delivered": 4.0, "dropped": None, "evicted": 6.0}
    assert telemetry.sample("stageflow_stream_queue_depth", {"queue": "audio"}) == 0.0
    for histogram in ("stageflow_stream_first_chunk_seconds", "stageflow_stream_duration_seconds"):
        assert telemetry.sample(f"{histogram}_count", {"queue": "audio"}) == 1.0


async def test_memory_stages_record_their_counts_on_the_span_and_in_metrics(
    telemetry: InMemoryTelemetry, helpers: HelperTelemetry
) -> None:
    store = InMemoryMemoryStore()
    await store.append("s", [Turn("user", "hello"), Turn("assistant", "hi")])

    async def answer(ctx: StageContext) -> dict[str, str]:
        return {"reply": "fine"}

    graph = (
        Pipeline("chat")
        .with_stage("memory", MemoryFetchStage(store))
        .with_stage("answer", answer, dependencies=["memory"])
        .with_stage(
            "remember", MemoryWriteStage(store, reply_from="answer"), dependencies=["answer"]
        )
        .build(hooks=(*telemetry.hooks, helpers))
    )
    await run_graph(graph, data={"text": "how are you"}, identity=RunIdentity(session_id="s"))

    def memory_attributes(stage: str) -> dict[str, object]:
        attributes = telemetry.span(f"stage.run {stage}").attributes or {}
        return {k: v for k, v in attributes.items() if k.startswith("stageflow.memory.")}

    assert memory_attributes("memory") == {
        "stageflow.memory.store": "in_memory",
        "stageflow.memory.operation": "fetch",
        "stageflow.memory.turns": 2,
        "stageflow.memory.chars": 7,
    }
    assert memory_attributes("remember") == {
        "stageflow.memory.store": "in_memory",
        "stageflow.memory.operation": "write",
        "stageflow.memory.turns": 2,
        "stageflow.memory.chars": 15,
    }
    turns = "stageflow_memory_turns_total"
    assert telemetry.sample(turns, {"store": "in_memory", "operation": "fetch"}) == 2.0
    assert telemetry.sample(turns, {"store": "in_memory", "operation": "write"}) == 2.0


async def test_an_analytics_sink_reports_through_the_sink_metrics(
    telemetry: InMemoryTelemetry, helpers: HelperTelemetry
) -> None:
    rows: list[AnalyticsRow] = []

    class Warehouse:
        def export(self, batch: Sequence[AnalyticsRow], /) -> bool:
            rows.extend(batch)
            return True

    sink = AnalyticsSink(Warehouse(), max_queue_size=64, listener=helpers.sink_listener())
    graph = (
        Pipeline("orders")
        .with_stage("load", ok_stage)
        .build(
            hooks=(*telemetry.hooks, helpers),
            event_sink=sink,
            emit_stage_wide_events=True,
            emit_pipeline_wide_event=True,
        )
    )
    await run_graph(graph)
    assert await sink.aclose()
    assert [row.table for row in rows] == ["stage_runs", "pipeline_runs"]
    assert rows[0].data["trace_id"] == format(
        telemetry.span("stage.run load").context.trace_id, "032x"
    )
    exported = {"sink": "analytics", "result": "exported"}
    assert telemetry.sample("stageflow_sink_events_total", exported) == 2.0
    assert telemetry.sample("stageflow_sink_queue_capacity", {"sink": "analytics"}) == 64.0
    exports = telemetry.sample(
        "stageflow_sink_export_duration_seconds_count", {"sink": "analytics"}
    )
    assert exports is not None
    assert exports >= 1.0


async def test_a_measured_stage_has_its_memory_on_the_span_and_in_a_histogram(
    telemetry: InMemoryTelemetry, helpers: HelperTelemetry
) -> None:
    tracker = MemoryTrackingInterceptor()

    async def allocate(ctx: StageContext) -> dict[str, bytes]:
        return {"blob": bytes(256 * 1024)}

    graph = (
        Pipeline("p")
        .with_stage("allocate", allocate, interceptors=[tracker])
        .build(hooks=(*telemetry.hooks, helpers))
    )
    try:
        await run_graph(graph)
    finally:
        tracker.close()
    attributes = telemetry.span("stage.run allocate").attributes or {}
    peak = attributes["stageflow.stage.memory.peak_bytes"]
    allocated = attributes["stageflow.stage.memory.allocated_bytes"]
    assert isinstance(peak, int)
    assert isinstance(allocated, int)
    assert peak >= allocated >= 256 * 1024
    labels = {"pipeline": "p", "stage": "allocate"}
    assert telemetry.sample("stageflow_stage_memory_peak_bytes_count", labels) == 1.0
    assert telemetry.sample("stageflow_stage_memory_peak_bytes_sum", labels) == float(peak)


async def test_helper_records_go_to_the_stage_span_not_an_interceptor_span(
    telemetry: InMemoryTelemetry, helpers: HelperTelemetry
) -> None:
    guard = GuardStage([PIICheck()])
    graph = (
        Pipeline("chat")
        .with_stage("guard", guard, interceptors=[RetryInterceptor(max_attempts=2)])
        .build(hooks=(*telemetry.hooks, helpers))
    )
    await run_graph(graph, data={"text": "a@b.io"})
    assert telemetry.tree() == ["pipeline.run chat", "  stage.run guard", "    interceptor retry"]
    assert [e.name for e in telemetry.span("stage.run guard").events] == [
        "stageflow.guardrail.verdict"
    ]
    assert telemetry.span("interceptor retry").events == ()


async def test_a_cancelled_provider_call_leaves_no_span_open(
    telemetry: InMemoryTelemetry, helpers: HelperTelemetry
) -> None:
    model = MockChatModel("slow", latency=60.0)

    async def ask(ctx: StageContext) -> None:
        await model.chat([{"role": "user", "content": "hi"}], ctx=ctx)

    graph = Pipeline("chat").with_stage("ask", ask).build(hooks=(*telemetry.hooks, helpers))
    with anyio.move_on_after(0.05):
        await graph.run()
    assert telemetry.open_spans() == []
    span = telemetry.span("chat slow")
    assert span.status.status_code is StatusCode.UNSET
    labels = {"operation": "chat", "provider": "mock", "model": "slow", "status": "cancel"}
    assert telemetry.sample("stageflow_provider_calls_total", labels) == 1.0


async def test_with_a_meter_provider_the_helper_metrics_go_through_it_too() -> None:
    reader = InMemoryMetricReader()
    recorded = in_memory_telemetry(
        canonical_logs=False, meter_provider=MeterProvider(metric_readers=[reader])
    )
    helpers = HelperTelemetry(recorded.telemetry)
    model = MockChatModel("gpt-mock", replies=["four words of reply"])

    async def answer(ctx: StageContext) -> dict[str, str]:
        queue: ChunkQueue[str] = ChunkQueue(8, name="tokens", ctx=ctx)
        queue.put_nowait("a")
        read_while_open = points(reader)["stageflow_stream_queue_depth"]
        queue.close()
        _ = [chunk async for chunk in queue]
        response = await model.chat([{"role": "user", "content": "hi"}], ctx=ctx)
        assert [p.value for p in read_while_open] == [1]
        return {"text": response.text}

    graph = (
        Pipeline("chat")
        .with_stage("guard", GuardStage([PIICheck()]))
        .with_stage("answer", answer, dependencies=["guard"])
        .build(hooks=(*recorded.hooks, helpers))
    )
    await run_graph(graph, data={"text": "mail a@b.io"})
    found = points(reader)
    recorded.shutdown()

    def value(name: str, **attributes: str) -> Any:
        [point] = [p for p in found[name] if dict(p.attributes) == attributes]
        return point

    verdict = {"pipeline": "chat", "stage": "guard", "check": "pii", "verdict": "redact"}
    assert value("stageflow_guardrail_verdicts", **verdict).value == 1
    assert recorded.sample("stageflow_guardrail_verdicts_total", verdict) == 1.0
    call = {"operation": "chat", "provider": "mock", "model": "gpt-mock"}
    assert value("stageflow_provider_calls", **call, status="ok").value == 1
    assert value("stageflow_provider_tokens", **call, token_type="output").value == 4
    assert value("stageflow_provider_call_duration_seconds", **call).count == 1
    assert value("stageflow_stream_chunks", queue="tokens", result="delivered").value == 1
    assert value("stageflow_stream_queue_depth", queue="tokens").value == 0
    assert value("stageflow_stream_first_chunk_seconds", queue="tokens").count == 1
