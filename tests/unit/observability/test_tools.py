"""Tool calls inside a traced pipeline: ``execute_tool`` spans and the tool metrics."""

from __future__ import annotations

from typing import Any

import pytest

from stageflow_otel import CollectingEventSink, Pipeline, StageContext
from stageflow_otel.testing import InMemoryTelemetry, in_memory_telemetry
from stageflow_otel.tools import ToolExecutor, ToolInput, ToolInputValidationError, ToolRegistry

from .support import attributes, hex_ids, run_graph

pytestmark = pytest.mark.anyio

SCHEMA = {
    "type": "object",
    "required": ["sku", "quantity"],
    "properties": {"sku": {"type": "string"}, "quantity": {"type": "integer", "minimum": 1}},
}


def make_executor() -> ToolExecutor:
    registry = ToolRegistry()

    @registry.tool(input_schema=SCHEMA)
    async def reserve(input: ToolInput) -> dict[str, Any]:
        """Reserve stock."""
        return {"reserved": input.payload["quantity"]}

    return ToolExecutor(registry)


async def test_a_tool_call_is_a_span_under_its_stage(telemetry: InMemoryTelemetry) -> None:
    executor = make_executor()

    async def stage(ctx: StageContext) -> dict[str, Any]:
        call = ToolInput(tool_name="reserve", payload={"sku": "a", "quantity": 2}, call_id="c-1")
        output = await executor.execute(call, ctx)
        return dict(output.data)

    await run_graph(Pipeline("p").with_stage("reserve", stage).build(hooks=telemetry.hooks))

    assert telemetry.tree() == [
        "pipeline.run p",
        "  stage.run reserve",
        "    execute_tool reserve",
    ]
    span = telemetry.span("execute_tool reserve")
    found = attributes(span)
    assert found["gen_ai.operation.name"] == "execute_tool"
    assert found["gen_ai.tool.name"] == "reserve"
    assert found["gen_ai.tool.call.id"] == "c-1"
    assert "error.type" not in found
    assert "gen_ai.tool.call.arguments" not in found  # payloads only when opted in
    assert span.status.status_code.name == "UNSET"
    assert span.parent is not None
    assert span.parent.span_id == telemetry.span("stage.run reserve").context.span_id
    assert telemetry.sample("stageflow_tool_calls_total", {"tool": "reserve", "status": "ok"}) == 1
    assert telemetry.sample("stageflow_tool_duration_seconds_count", {"tool": "reserve"}) == 1


async def test_a_failing_tool_call_has_error_status_and_is_counted(
    telemetry: InMemoryTelemetry,
) -> None:
    executor = make_executor()

    async def stage(ctx: StageContext) -> dict[str, Any]:
        bad = ToolInput(tool_name="reserve", payload={"sku": "a", "quantity": 0})
        with pytest.raises(ToolInputValidationError):
            await executor.execute(bad, ctx)
        output = await executor.try_execute(bad, ctx)
        return {"success": output.success}

    results = await run_graph(Pipeline("p").with_stage("s", stage).build(hooks=telemetry.hooks))

    assert results["s"].data == {"success": False}
    spans = telemetry.spans_named("execute_tool reserve")
    assert len(spans) == 2
    qualified = f"{ToolInputValidationError.__module__}.{ToolInputValidationError.__qualname__}"
    for span in spans:
        assert span.status.status_code.name == "ERROR"
        assert attributes(span)["error.type"] == qualified
    # Each call's error escapes its tool span once (try_execute converts it after the hooks).
    assert [len([e for e in s.events if e.name == "exception"]) for s in spans] == [1, 1]
    assert (
        telemetry.sample("stageflow_tool_calls_total", {"tool": "reserve", "status": "fail"}) == 2
    )
    assert (
        telemetry.sample("stageflow_tool_calls_total", {"tool": "reserve", "status": "ok"}) is None
    )


async def test_tool_payloads_are_recorded_only_when_opted_in_and_redacted() -> None:
    seen: list[str] = []

    def redact(key: str, value: Any) -> Any:
        seen.append(key)
        return {k: ("***" if k == "sku" else v) for k, v in value.items()}

    recorded = in_memory_telemetry(record_tool_payloads=True, redact=redact)
    executor = make_executor()

    async def stage(ctx: StageContext) -> dict[str, Any]:
        call = ToolInput(tool_name="reserve", payload={"sku": "secret", "quantity": 3})
        return dict((await executor.execute(call, ctx)).data)

    try:
        await run_graph(Pipeline("p").with_stage("s", stage).build(hooks=recorded.hooks))
        found = attributes(recorded.span("execute_tool reserve"))
        assert found["gen_ai.tool.call.arguments"] == '{"quantity": 3, "sku": "***"}'
        assert found["gen_ai.tool.call.result"] == '{"reserved": 3}'
        assert seen == ["gen_ai.tool.call.arguments", "gen_ai.tool.call.result"]
    finally:
        recorded.shutdown()


async def test_tool_events_carry_the_tool_span_and_stage_events_the_stage_span(
    telemetry: InMemoryTelemetry,
) -> None:
    executor = make_executor()
    events = CollectingEventSink()

    async def stage(ctx: StageContext) -> dict[str, Any]:
        call = ToolInput(tool_name="reserve", payload={"sku": "a", "quantity": 1})
        return dict((await executor.execute(call, ctx)).data)

    graph = Pipeline("p").with_stage("reserve", stage).build(hooks=telemetry.hooks)
    await run_graph(graph, event_sink=events)

    tool_ids = hex_ids(telemetry.span("execute_tool reserve"))
    stage_ids = hex_ids(telemetry.span("stage.run reserve"))
    assert tool_ids != stage_ids
    found = {e.type: (e.data.get("trace_id"), e.data.get("span_id")) for e in events.events}
    assert found["tool.started"] == tool_ids
    assert found["tool.completed"] == tool_ids
    assert found["stage.started"] == stage_ids
    assert found["stage.completed"] == stage_ids
