"""What the helpers report, recorded by ``HelperTelemetry``: span events, attributes, metrics."""

from __future__ import annotations

import pytest

from stageflow_otel import Pipeline, StageExecutionError
from stageflow_otel.helpers import ContentFilter, GuardStage, PIICheck, PIIDetector
from stageflow_otel.observability.helpers import HelperTelemetry
from stageflow_otel.testing import InMemoryTelemetry, in_memory_telemetry

from .support import run_graph

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
