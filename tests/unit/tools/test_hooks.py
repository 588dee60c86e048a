"""The ``around_tool`` seam: run hooks wrap every tool call, see its outcome, and nest."""

from __future__ import annotations

import math
from typing import Any

import anyio
import pytest

from stageflow_otel import CollectingEventSink, RunHook, StageCall, StageContext, StageOutput
from stageflow_otel.core.seams import CallNext
from stageflow_otel.tools import (
    ToolCall,
    ToolError,
    ToolExecutionError,
    ToolExecutor,
    ToolInput,
    ToolInputValidationError,
    ToolNotFoundError,
    ToolOutput,
    ToolProceed,
    ToolRegistry,
)
from tests.unit.tools.support import run_stage

pytestmark = pytest.mark.anyio


class RecordingHook(RunHook):
    """Records what it wraps, and which tool events exist when it enters and leaves."""

    def __init__(self, name: str, log: list[tuple[Any, ...]], sink: CollectingEventSink) -> None:
        self.name = name
        self.log = log
        self.sink = sink

    def _events_of(self, action_id: str) -> list[str]:
        return [e.type for e in self.sink.events if e.data.get("action_id") == action_id]

    async def around_tool(self, call: ToolCall, proceed: ToolProceed) -> ToolOutput:
        self.log.append((self.name, "enter", call.tool, self._events_of(call.action_id)))
        try:
            output = await proceed(call)
        except ToolError as exc:
            self.log.append((self.name, "raise", exc.code, self._events_of(call.action_id)))
            raise
        except BaseException:
            self.log.append((self.name, "cancel", call.tool, self._events_of(call.action_id)))
            raise
        self.log.append((self.name, "return", output.success, self._events_of(call.action_id)))
        return output


def make_registry(calls: list[str]) -> ToolRegistry:
    registry = ToolRegistry()

    @registry.tool(action_type="ADD", input_schema={"type": "object", "required": ["n"]})
    async def add(input: ToolInput) -> dict[str, Any]:
        calls.append("add")
        return {"n": input.payload["n"] + 1}

    @registry.tool
    def explode(input: ToolInput) -> None:
        calls.append("explode")
        raise RuntimeError("kaboom")

    @registry.tool
    async def hang(input: ToolInput) -> None:
        calls.append("hang")
        await anyio.sleep(math.inf)

    return registry


async def test_hook_wraps_the_whole_call_and_sees_its_outcome() -> None:
    calls: list[str] = []
    executor = ToolExecutor(make_registry(calls))
    log: list[tuple[Any, ...]] = []
    sink = CollectingEventSink()
    seen: dict[str, Any] = {}

    class CallCapture(RunHook):
        async def around_tool(self, call: ToolCall, proceed: ToolProceed) -> ToolOutput:
            seen.setdefault("calls", []).append(call)
            return await proceed(call)

    async def act(ctx: StageContext) -> None:
        seen["ctx"] = ctx
        await executor.execute(
            ToolInput(tool_name="add", payload={"n": 1}, action_id="ok", call_id="c1"), ctx
        )
        for action_id, tool_input in [
            ("invalid", ToolInput(tool_name="add", payload={}, action_id="invalid")),
            ("missing", ToolInput(tool_name="nope", action_id="missing")),
            ("boom", ToolInput(tool_name="explode", action_id="boom")),
        ]:
            with pytest.raises(ToolError) as info:
                await executor.execute(tool_input, ctx, behavior="chat")
            seen[action_id] = info.value

    await run_stage(act, hooks=[RecordingHook("outer", log, sink), CallCapture()], sink=sink)

    assert calls == ["add", "explode"]  # the invalid call never reached its handler
    assert log == [
        ("outer", "enter", "add", []),
        ("outer", "return", True, ["tool.invoked", "tool.started", "tool.completed"]),
        ("outer", "enter", "add", []),
        ("outer", "raise", "TOOL_INPUT_INVALID", ["tool.invoked", "tool.failed"]),
        ("outer", "enter", "nope", []),
        ("outer", "raise", "TOOL_NOT_FOUND", ["tool.invoked", "tool.failed"]),
        ("outer", "enter", "explode", []),
        (
            "outer",
            "raise",
            "TOOL_EXECUTION_FAILED",
            ["tool.invoked", "tool.started", "tool.failed"],
        ),
    ]
    assert isinstance(seen["invalid"], ToolInputValidationError)
    assert isinstance(seen["missing"], ToolNotFoundError)
    assert isinstance(seen["boom"], ToolExecutionError)

    ok, invalid, missing, _ = seen["calls"]
    assert isinstance(ok, ToolCall)
    ctx = seen["ctx"]
    assert (ok.tool, ok.call_id, ok.action_id, ok.action_type) == ("add", "c1", "ok", "ADD")
    assert (ok.stage, ok.pipeline, ok.run_id) == ("act", "tools", ctx.pipeline_run_id)
    assert ok.arguments == {"n": 1}
    assert ok.context is ctx
    assert ok.behavior is None
    assert ok.tool_name == "add"
    assert invalid.behavior == "chat"
    assert (missing.tool, missing.action_type) == ("nope", None)


async def test_hooks_nest_first_outermost_and_try_execute_goes_through_them() -> None:
    executor = ToolExecutor(make_registry([]))
    log: list[tuple[Any, ...]] = []
    sink = CollectingEventSink()
    outputs: list[ToolOutput] = []

    async def act(ctx: StageContext) -> None:
        outputs.append(await executor.try_execute(ToolInput(tool_name="explode"), ctx))

    hooks = [RecordingHook("a", log, sink), RecordingHook("b", log, sink)]
    await run_stage(act, hooks=hooks, sink=sink)
    assert [(name, step) for name, step, *_ in log] == [
        ("a", "enter"),
        ("b", "enter"),
        ("b", "raise"),
        ("a", "raise"),
    ]
    assert (outputs[0].success, outputs[0].error_code) == (False, "TOOL_EXECUTION_FAILED")


async def test_hook_sees_cancellation() -> None:
    executor = ToolExecutor(make_registry([]))
    log: list[tuple[Any, ...]] = []
    sink = CollectingEventSink()

    async def act(ctx: StageContext) -> None:
        with anyio.move_on_after(0.02):
            await executor.execute(ToolInput(tool_name="hang", action_id="h"), ctx)

    await run_stage(act, hooks=[RecordingHook("hook", log, sink)], sink=sink)
    assert log[-1] == ("hook", "cancel", "hang", ["tool.invoked", "tool.started", "tool.failed"])


async def test_hooks_without_around_tool_are_left_out() -> None:
    executor = ToolExecutor(make_registry([]))
    stages: list[str] = []

    class StageOnly(RunHook):
        async def around_stage(self, call: StageCall, proceed: CallNext) -> StageOutput:
            stages.append(call.stage)
            return await proceed(call)

    async def act(ctx: StageContext) -> dict[str, Any]:
        output = await executor.execute(ToolInput(tool_name="add", payload={"n": 1}), ctx)
        return dict(output.data)

    results, _ = await run_stage(act, hooks=[StageOnly()])
    assert results.data("act") == {"n": 2}
    assert stages == ["act"]


async def test_an_exception_from_a_broken_hook_is_not_turned_into_a_tool_failure() -> None:
    # try_execute converts ToolErrors only: a hook's own bug surfaces (and fails the stage).
    calls: list[str] = []
    executor = ToolExecutor(make_registry(calls))

    class Broken(RunHook):
        async def around_tool(self, call: ToolCall, proceed: ToolProceed) -> ToolOutput:
            raise RuntimeError("hook bug")

    errors: list[BaseException] = []

    async def act(ctx: StageContext) -> None:
        with pytest.raises(RuntimeError, match="hook bug") as info:
            await executor.try_execute(ToolInput(tool_name="add", payload={"n": 1}), ctx)
        errors.append(info.value)

    _, sink = await run_stage(act, hooks=[Broken()])
    assert len(errors) == 1
    assert calls == []
    assert not any(t.startswith("tool.") for t in sink.types)
