from __future__ import annotations

import math
import threading
from collections.abc import Mapping
from typing import Any

import anyio
import pytest

from stageflow_otel import Pipeline, PipelineCancelled, RunIdentity, StageContext
from stageflow_otel.core.errors import StageCancellationRequested
from stageflow_otel.tools import (
    ApprovalService,
    ApprovalStatus,
    ToolApprovalDeniedError,
    ToolApprovalTimeoutError,
    ToolDeniedError,
    ToolError,
    ToolExecutionError,
    ToolExecutor,
    ToolInput,
    ToolInputValidationError,
    ToolNotFoundError,
    ToolOutput,
    ToolRegistry,
    ToolUndoError,
    UndoMetadata,
    UndoStore,
)
from tests.unit.tools.support import run_stage, tool_event_types, tool_events

pytestmark = pytest.mark.anyio

USER_SCHEMA: Mapping[str, Any] = {
    "type": "object",
    "required": ["email", "age"],
    "properties": {
        "email": {"type": "string"},
        "age": {"type": "integer", "minimum": 0},
        "tags": {"type": "array", "items": {"type": "string"}},
    },
    "additionalProperties": False,
}


async def failure_of(
    executor: ToolExecutor, tool_input: ToolInput, ctx: StageContext, **kwargs: Any
) -> ToolError:
    """Run a call that must fail and return its error."""
    with pytest.raises(ToolError) as info:
        await executor.execute(tool_input, ctx, **kwargs)
    return info.value


async def test_sync_handler_runs_in_a_worker_thread_and_async_handler_gets_the_context() -> None:
    registry = ToolRegistry()
    seen: dict[str, Any] = {}

    @registry.tool
    def blocking(input: ToolInput) -> dict[str, Any]:
        seen["thread"] = threading.get_ident()
        seen["input"] = input
        return {"doubled": input.payload["n"] * 2}

    @registry.tool
    async def contextual(input: ToolInput, ctx: StageContext) -> ToolOutput:
        seen["ctx"] = ctx
        return ToolOutput.ok(stage=ctx.stage_name)

    executor = ToolExecutor(registry)

    async def act(ctx: StageContext) -> dict[str, Any]:
        seen["loop_thread"] = threading.get_ident()
        seen["stage_ctx"] = ctx
        a = await executor.execute(ToolInput(tool_name="blocking", payload={"n": 21}), ctx)
        b = await executor.execute(ToolInput(tool_name="contextual"), ctx)
        return {"a": dict(a.data), "b": dict(b.data)}

    results = (
        await Pipeline("tools").with_stage("act", act).run(identity=RunIdentity(request_id="req-7"))
    )
    assert results.data("act") == {"a": {"doubled": 42}, "b": {"stage": "act"}}
    assert seen["thread"] != seen["loop_thread"]
    assert seen["ctx"] is seen["stage_ctx"]
    tool_input: ToolInput = seen["input"]
    assert (tool_input.stage, tool_input.request_id) == ("act", "req-7")
    assert tool_input.pipeline_run_id == seen["stage_ctx"].pipeline_run_id


async def test_events_go_to_the_run_sink_in_order() -> None:
    registry = ToolRegistry()

    @registry.tool
    async def ok(input: ToolInput) -> ToolOutput:
        return ToolOutput.ok(artifacts=[{"n": 1}])

    executor = ToolExecutor(registry)
    ids: dict[str, str] = {}

    async def act(ctx: StageContext) -> None:
        ids["run"] = ctx.pipeline_run_id
        await executor.execute(ToolInput(tool_name="ok", action_id="a1", call_id="c1"), ctx)
        await executor.try_execute(ToolInput(tool_name="missing", action_id="a2"), ctx)

    _, sink = await run_stage(act)
    assert sink.types[:2] == ["pipeline.started", "stage.started"]
    assert sink.types[-2:] == ["stage.completed", "pipeline.completed"]
    events = tool_events(sink)
    assert [t for t, _ in events] == [
        "tool.invoked",
        "tool.started",
        "tool.completed",
        "tool.invoked",
        "tool.failed",
    ]
    for _, data in events:
        assert data["pipeline_run_id"] == ids["run"]
        assert (data["pipeline"], data["stage"]) == ("tools", "act")
        assert data["timestamp"].endswith("Z")
    assert [(d["tool"], d["action_id"], d["call_id"]) for _, d in events] == [
        ("ok", "a1", "c1"),
        ("ok", "a1", "c1"),
        ("ok", "a1", "c1"),
        ("missing", "a2", None),
        ("missing", "a2", None),
    ]
    completed = events[2][1]
    assert completed["artifacts_count"] == 1
    assert completed["undoable"] is False
    assert completed["duration_ms"] >= 0
    assert events[1][1]["action_type"] == "ok"
    failed = events[4][1]
    assert failed["error_code"] == "TOOL_NOT_FOUND"
    assert failed["error"].startswith("no tool named 'missing'")


async def test_schema_violations_fail_before_the_handler_with_every_path() -> None:
    registry = ToolRegistry()
    calls: list[ToolInput] = []

    @registry.tool(input_schema=USER_SCHEMA)
    async def create_user(input: ToolInput) -> None:
        calls.append(input)

    executor = ToolExecutor(registry)
    bad = {"age": -3, "tags": ["ok", 7], "admin": True}
    errors: list[ToolError] = []
    outputs: list[ToolOutput] = []

    async def act(ctx: StageContext) -> None:
        errors.append(
            await failure_of(executor, ToolInput(tool_name="create_user", payload=bad), ctx)
        )
        outputs.append(
            await executor.try_execute(ToolInput(tool_name="create_user", payload=bad), ctx)
        )
        await executor.execute(
            ToolInput(tool_name="create_user", payload={"email": "a@b.c", "age": 3}), ctx
        )

    _, sink = await run_stage(act)
    assert len(calls) == 1
    assert calls[0].payload["email"] == "a@b.c"
    error = errors[0]
    assert isinstance(error, ToolInputValidationError)
    assert error.code == "TOOL_INPUT_INVALID"
    assert error.paths == ("$", "$", "$.age", "$.tags[1]")
    assert [v.validator for v in error.violations] == [
        "required",
        "additionalProperties",
        "minimum",
        "type",
    ]
    assert "'email' is a required property" in str(error)
    assert "at $.tags[1]: 7 is not of type 'string'" in str(error)
    output = outputs[0]
    assert (output.success, output.error_code) == (False, "TOOL_INPUT_INVALID")
    assert isinstance(output.exception, ToolInputValidationError)
    failed = sink.of_type("tool.failed")[0]
    assert failed["violations"] == [
        {"path": "$", "validator": "required"},
        {"path": "$", "validator": "additionalProperties"},
        {"path": "$.age", "validator": "minimum"},
        {"path": "$.tags[1]", "validator": "type"},
    ]
    assert tool_event_types(sink)[:2] == ["tool.invoked", "tool.failed"]
    assert "tool.started" not in tool_event_types(sink)[:4]


async def test_behavior_gate() -> None:
    registry = ToolRegistry()
    ran: list[str | None] = []

    @registry.tool(allowed_behaviors=["doc_edit", "practice"])
    async def edit(input: ToolInput) -> None:
        ran.append(input.behavior)

    @registry.tool
    async def anywhere(input: ToolInput) -> None:
        ran.append(input.behavior)

    executor = ToolExecutor(registry)
    errors: list[ToolError] = []

    async def act(ctx: StageContext) -> None:
        errors.append(await failure_of(executor, ToolInput(tool_name="edit"), ctx))
        errors.append(await failure_of(executor, ToolInput(tool_name="edit", behavior="chat"), ctx))
        # The keyword wins over the input's behaviour.
        errors.append(
            await failure_of(
                executor, ToolInput(tool_name="edit", behavior="practice"), ctx, behavior="chat"
            )
        )
        await executor.execute(
            ToolInput(tool_name="edit", behavior="chat"), ctx, behavior="practice"
        )
        await executor.execute(ToolInput(tool_name="anywhere"), ctx)

    _, sink = await run_stage(act)
    assert ran == ["practice", None]
    assert all(isinstance(e, ToolDeniedError) and e.code == "TOOL_DENIED" for e in errors)
    assert [e.behavior for e in errors if isinstance(e, ToolDeniedError)] == [None, "chat", "chat"]
    assert "allowed: doc_edit, practice" in str(errors[1])
    denied = sink.of_type("tool.denied")
    assert [d["reason"] for d in denied] == ["behavior_not_allowed"] * 3
    assert denied[1]["behavior"] == "chat"
    assert denied[1]["allowed_behaviors"] == ["doc_edit", "practice"]
    assert sink.of_type("tool.invoked")[1]["behavior"] == "chat"


def approval_registry(calls: list[ToolInput]) -> ToolRegistry:
    registry = ToolRegistry()

    @registry.tool(requires_approval=True, approval_message="Delete the file?")
    async def delete_file(input: ToolInput) -> dict[str, bool]:
        calls.append(input)
        return {"deleted": True}

    return registry


class Approver:
    """Plays the approver: decides the first request the service receives."""

    def __init__(self) -> None:
        self.asked = anyio.Event()
        self.service = ApprovalService(on_request=lambda request: self.asked.set())

    async def decide(
        self, granted: bool, decided_by: str | None = None, reason: str | None = None
    ) -> None:
        with anyio.fail_after(5):
            await self.asked.wait()
        (request,) = self.service.pending()
        self.service.record_decision(
            request.request_id, granted, decided_by=decided_by, reason=reason
        )


async def test_approval_granted() -> None:
    calls: list[ToolInput] = []
    approver = Approver()
    service = approver.service
    executor = ToolExecutor(approval_registry(calls), approval_service=service)
    outputs: list[ToolOutput] = []

    async def act(ctx: StageContext) -> None:
        async with anyio.create_task_group() as tg:
            tg.start_soon(approver.decide, True, "alice")
            outputs.append(
                await executor.execute(ToolInput(tool_name="delete_file", call_id="c9"), ctx)
            )

    _, sink = await run_stage(act)
    assert outputs[0].data == {"deleted": True}
    assert len(calls) == 1
    assert tool_event_types(sink) == [
        "tool.invoked",
        "approval.requested",
        "approval.decided",
        "tool.started",
        "tool.completed",
    ]
    requested = sink.of_type("approval.requested")[0]
    assert requested["approval_message"] == "Delete the file?"
    assert requested["call_id"] == "c9"
    decided = sink.of_type("approval.decided")[0]
    assert decided["request_id"] == requested["request_id"]
    assert (decided["status"], decided["granted"], decided["decided_by"]) == (
        "approved",
        True,
        "alice",
    )
    request = service.get(requested["request_id"])
    assert request is not None
    assert request.status is ApprovalStatus.APPROVED
    assert (request.tool, request.stage, request.call_id) == ("delete_file", "act", "c9")


async def test_approval_denied() -> None:
    calls: list[ToolInput] = []
    approver = Approver()
    executor = ToolExecutor(approval_registry(calls), approval_service=approver.service)
    errors: list[ToolError] = []

    async def act(ctx: StageContext) -> None:
        async with anyio.create_task_group() as tg:
            tg.start_soon(approver.decide, False, "bob", "keep it")
            errors.append(await failure_of(executor, ToolInput(tool_name="delete_file"), ctx))

    _, sink = await run_stage(act)
    assert calls == []
    error = errors[0]
    assert type(error) is ToolApprovalDeniedError
    assert (error.code, error.status, error.decided_by, error.reason) == (
        "TOOL_APPROVAL_DENIED",
        "denied",
        "bob",
        "keep it",
    )
    assert "was denied by 'bob': keep it" in str(error)
    assert tool_event_types(sink) == [
        "tool.invoked",
        "approval.requested",
        "approval.decided",
        "tool.denied",
    ]
    assert sink.of_type("approval.decided")[0]["granted"] is False
    denied = sink.of_type("tool.denied")[0]
    assert (denied["reason"], denied["error_code"]) == ("approval_denied", "TOOL_APPROVAL_DENIED")


async def test_approval_timeout_expires_the_request() -> None:
    calls: list[ToolInput] = []
    service = ApprovalService()
    executor = ToolExecutor(
        approval_registry(calls), approval_service=service, approval_timeout=0.02
    )
    errors: list[ToolError] = []

    async def act(ctx: StageContext) -> None:
        errors.append(await failure_of(executor, ToolInput(tool_name="delete_file"), ctx))

    _, sink = await run_stage(act)
    assert calls == []
    error = errors[0]
    assert isinstance(error, ToolApprovalTimeoutError)
    assert (error.code, error.timeout_s, error.tool) == (
        "TOOL_APPROVAL_TIMEOUT",
        0.02,
        "delete_file",
    )
    request = service.get(error.request_id)
    assert request is not None
    assert request.status is ApprovalStatus.EXPIRED
    assert tool_event_types(sink) == [
        "tool.invoked",
        "approval.requested",
        "approval.decided",
        "tool.denied",
    ]
    assert sink.of_type("approval.decided")[0]["status"] == "expired"
    assert sink.of_type("tool.denied")[0]["reason"] == "approval_timeout"


async def test_executor_makes_its_own_approval_service_by_default() -> None:
    calls: list[ToolInput] = []
    executor = ToolExecutor(approval_registry(calls), approval_timeout=0.01)
    errors: list[ToolError] = []
    run_ids: list[str] = []

    async def act(ctx: StageContext) -> None:
        run_ids.append(ctx.pipeline_run_id)
        errors.append(await failure_of(executor, ToolInput(tool_name="delete_file"), ctx))

    await run_stage(act)
    assert calls == []
    assert isinstance(errors[0], ToolApprovalTimeoutError)
    request = executor.approval_service.get(errors[0].request_id)
    assert request is not None
    assert (request.pipeline_run_id, request.status) == (run_ids[0], ApprovalStatus.EXPIRED)


def notes_registry(notes: dict[str, str], *, fail_undo: list[bool] | None = None) -> ToolRegistry:
    registry = ToolRegistry()

    async def remove_note(metadata: UndoMetadata, ctx: StageContext) -> None:
        if fail_undo:
            fail_undo.pop()
            raise OSError("disk busy")
        del notes[metadata.undo_data["note_id"]]

    # Name and action type differ on purpose: undo must find the tool by its name.
    @registry.tool(action_type="NOTE_CREATE", undoable=True, undo_handler=remove_note)
    def create_note(input: ToolInput) -> ToolOutput:
        note_id = f"n{len(notes) + 1}"
        notes[note_id] = input.payload["text"]
        return ToolOutput.ok(note_id=note_id, undo_metadata={"note_id": note_id})

    return registry


async def test_undo_round_trip() -> None:
    notes: dict[str, str] = {}
    executor = ToolExecutor(notes_registry(notes))
    undone: list[UndoMetadata] = []
    errors: list[ToolUndoError] = []

    async def act(ctx: StageContext) -> None:
        await executor.execute(
            ToolInput(
                tool_name="create_note", payload={"text": "hi"}, action_id="a1", call_id="c1"
            ),
            ctx,
        )
        assert notes == {"n1": "hi"}
        assert "a1" in executor.undo_store
        undone.append(await executor.undo_action("a1", ctx))
        with pytest.raises(ToolUndoError) as again:
            await executor.undo_action("a1", ctx)
        errors.append(again.value)

    _, sink = await run_stage(act)
    assert notes == {}
    assert (undone[0].tool_name, undone[0].undo_data, undone[0].call_id) == (
        "create_note",
        {"note_id": "n1"},
        "c1",
    )
    assert errors[0].reason == "unknown_action"
    assert tool_event_types(sink) == [
        "tool.invoked",
        "tool.started",
        "tool.completed",
        "tool.undone",
        "tool.undo_failed",
    ]
    assert sink.of_type("tool.completed")[0]["undoable"] is True
    undone_event = sink.of_type("tool.undone")[0]
    assert (undone_event["tool"], undone_event["action_id"], undone_event["call_id"]) == (
        "create_note",
        "a1",
        "c1",
    )
    failed = sink.of_type("tool.undo_failed")[0]
    assert (failed["reason"], failed["error_code"], failed["tool"]) == (
        "unknown_action",
        "TOOL_UNDO_FAILED",
        None,
    )


async def test_undo_of_an_expired_action() -> None:
    now = [0.0]
    notes: dict[str, str] = {}
    executor = ToolExecutor(
        notes_registry(notes), undo_store=UndoStore(clock=lambda: now[0]), undo_ttl=30
    )
    errors: list[ToolUndoError] = []

    async def act(ctx: StageContext) -> None:
        await executor.execute(
            ToolInput(tool_name="create_note", payload={"text": "x"}, action_id="a1"), ctx
        )
        now[0] += 30
        with pytest.raises(ToolUndoError) as info:
            await executor.undo_action("a1", ctx)
        errors.append(info.value)

    _, sink = await run_stage(act)
    assert notes == {"n1": "x"}
    assert (errors[0].reason, errors[0].tool) == ("expired", "create_note")
    failed = sink.of_type("tool.undo_failed")[0]
    assert (failed["reason"], failed["tool"]) == ("expired", "create_note")


async def test_failed_undo_keeps_the_record_for_a_retry() -> None:
    notes: dict[str, str] = {}
    executor = ToolExecutor(notes_registry(notes, fail_undo=[True]))
    errors: list[ToolUndoError] = []

    async def act(ctx: StageContext) -> None:
        await executor.execute(
            ToolInput(tool_name="create_note", payload={"text": "x"}, action_id="a1"), ctx
        )
        with pytest.raises(ToolUndoError) as info:
            await executor.undo_action("a1", ctx)
        errors.append(info.value)
        await executor.undo_action("a1", ctx)

    _, sink = await run_stage(act)
    assert notes == {}
    assert errors[0].reason == "handler_failed"
    assert isinstance(errors[0].__cause__, OSError)
    assert "undo handler raised OSError: disk busy" in str(errors[0])
    assert tool_event_types(sink)[-2:] == ["tool.undo_failed", "tool.undone"]


async def test_undo_needs_a_registered_tool() -> None:
    registry = ToolRegistry()
    executor = ToolExecutor(registry)
    executor.undo_store.store(UndoMetadata("a1", "gone"))
    errors: list[ToolUndoError] = []

    async def act(ctx: StageContext) -> None:
        with pytest.raises(ToolUndoError) as info:
            await executor.undo_action("a1", ctx)
        errors.append(info.value)

    await run_stage(act)
    assert (errors[0].reason, errors[0].tool) == ("tool_not_found", "gone")


async def test_unknown_tool() -> None:
    registry = ToolRegistry()

    @registry.tool
    async def search(input: ToolInput) -> None: ...

    executor = ToolExecutor(registry)
    errors: list[ToolError] = []

    async def act(ctx: StageContext) -> None:
        errors.append(await failure_of(executor, ToolInput(tool_name="serch"), ctx))

    _, sink = await run_stage(act)
    assert isinstance(errors[0], ToolNotFoundError)
    assert errors[0].available == ("search",)
    assert tool_event_types(sink) == ["tool.invoked", "tool.failed"]


async def test_handler_errors() -> None:
    registry = ToolRegistry()

    @registry.tool
    async def explode(input: ToolInput) -> None:
        raise KeyError("missing")

    @registry.tool
    def refuse(input: ToolInput) -> ToolOutput:
        return ToolOutput.fail("quota exceeded", data={"retry_in": 5})

    @registry.tool
    async def weird(input: ToolInput) -> int:
        return 42

    executor = ToolExecutor(registry)
    errors: list[ToolError] = []
    outputs: list[ToolOutput] = []

    async def act(ctx: StageContext) -> None:
        for name in ("explode", "refuse", "weird"):
            errors.append(await failure_of(executor, ToolInput(tool_name=name), ctx))
            outputs.append(await executor.try_execute(ToolInput(tool_name=name), ctx))

    _, sink = await run_stage(act)
    assert all(isinstance(e, ToolExecutionError) for e in errors)
    explode_error, refuse_error, weird_error = (
        e for e in errors if isinstance(e, ToolExecutionError)
    )
    assert isinstance(explode_error.__cause__, KeyError)
    assert explode_error.error_type == "KeyError"
    assert str(explode_error) == "tool 'explode' failed: KeyError: 'missing'"
    assert refuse_error.output is not None
    assert refuse_error.output.data == {"retry_in": 5}
    assert str(refuse_error) == "tool 'refuse' failed: quota exceeded"
    assert "returned int; return a ToolOutput, a dict" in str(weird_error)

    explode_out, refuse_out, weird_out = outputs
    assert (explode_out.success, explode_out.error_code) == (False, "TOOL_EXECUTION_FAILED")
    assert explode_out.exception is not None
    assert isinstance(explode_out.exception.__cause__, KeyError)
    assert refuse_out == ToolOutput.fail("quota exceeded", data={"retry_in": 5})
    assert weird_out.error_code == "TOOL_EXECUTION_FAILED"

    failed = sink.of_type("tool.failed")
    assert len(failed) == 6
    assert failed[0]["error_type"] == "KeyError"
    assert failed[2]["error"] == "tool 'refuse' failed: quota exceeded"
    assert {f["error_code"] for f in failed} == {"TOOL_EXECUTION_FAILED"}


async def test_artifacts_get_the_tool_artifact_type() -> None:
    registry = ToolRegistry()

    @registry.tool(artifact_type="chart")
    async def plot(input: ToolInput) -> ToolOutput:
        return ToolOutput.ok(artifacts=[{"png": "..."}])

    @registry.tool
    async def plain(input: ToolInput) -> ToolOutput:
        return ToolOutput.ok(artifacts=[{"k": 1}])

    executor = ToolExecutor(registry)
    outputs: list[ToolOutput] = []

    async def act(ctx: StageContext) -> None:
        outputs.append(await executor.execute(ToolInput(tool_name="plot"), ctx))
        outputs.append(await executor.execute(ToolInput(tool_name="plain"), ctx))

    await run_stage(act)
    assert [a.type for o in outputs for a in o.artifacts] == ["chart", "plain"]
    assert outputs[0].artifacts[0].payload == {"png": "..."}


async def test_llm_tool_calls_end_to_end() -> None:
    registry = ToolRegistry()

    @registry.tool(input_schema={"type": "object", "required": ["q"]})
    async def search(input: ToolInput) -> dict[str, Any]:
        return {"hits": [input.payload["q"]]}

    executor = ToolExecutor(registry)
    tool_calls = [
        {"id": "c1", "type": "function", "function": {"name": "search", "arguments": '{"q": "a"}'}},
        {"id": "c2", "type": "function", "function": {"name": "search", "arguments": "{}"}},
        {"id": "c3", "type": "function", "function": {"name": "search", "arguments": "{"}},
    ]

    async def act(ctx: StageContext) -> dict[str, Any]:
        resolved, unresolved = registry.parse_and_resolve(tool_calls)
        replies = [
            {"tool_call_id": call.call_id, **(await executor.try_execute(call, ctx)).to_dict()}
            for call in resolved
        ]
        return {"replies": replies, "unresolved": [u.to_tool_message() for u in unresolved]}

    results, sink = await run_stage(act)
    data = results.data("act")
    assert [(r["tool_call_id"], r["success"]) for r in data["replies"]] == [
        ("c1", True),
        ("c2", False),
    ]
    assert data["replies"][0]["data"] == {"hits": ["a"]}
    assert data["replies"][1]["error_code"] == "TOOL_INPUT_INVALID"
    assert data["unresolved"][0]["tool_call_id"] == "c3"
    assert [d["call_id"] for d in sink.of_type("tool.invoked")] == ["c1", "c2"]


async def test_execute_rejects_other_call_types() -> None:
    executor = ToolExecutor(ToolRegistry())
    errors: list[Exception] = []

    async def act(ctx: StageContext) -> None:
        with pytest.raises(TypeError, match="takes a ToolInput or a ResolvedToolCall") as info:
            await executor.execute({"function": {"name": "x"}}, ctx)  # type: ignore[arg-type]
        errors.append(info.value)

    await run_stage(act)
    assert len(errors) == 1


async def test_handler_can_spawn_a_subpipeline() -> None:
    async def double(ctx: StageContext) -> dict[str, Any]:
        return {"value": ctx.data["n"] * 2}

    child = Pipeline("child").with_stage("double", double)
    registry = ToolRegistry()

    @registry.tool
    async def delegate(input: ToolInput, ctx: StageContext) -> dict[str, Any]:
        result = await ctx.spawn_subpipeline(child, data={"n": input.payload["n"]})
        return {"value": result.data("double")["value"], "child_run_id": result.child_run_id}

    executor = ToolExecutor(registry)

    async def act(ctx: StageContext) -> dict[str, Any]:
        output = await executor.execute(ToolInput(tool_name="delegate", payload={"n": 21}), ctx)
        return dict(output.data)

    results, sink = await run_stage(act)
    assert results.data("act")["value"] == 42
    types = sink.types
    started, completed = types.index("tool.started"), types.index("tool.completed")
    between = types[started + 1 : completed]
    assert between[0] == "pipeline.spawned_child"
    assert between[-1] == "pipeline.child_completed"
    child_started = [
        e.data
        for e in sink.events
        if e.type == "pipeline.started" and e.data["pipeline"] == "child"
    ]
    assert child_started[0]["pipeline_run_id"] == results.data("act")["child_run_id"]


async def test_cancelled_call_ends_its_events_and_withdraws_its_approval() -> None:
    registry = ToolRegistry()

    @registry.tool
    async def slow(input: ToolInput) -> None:
        await anyio.sleep(math.inf)

    @registry.tool(requires_approval=True)
    async def guarded(input: ToolInput) -> None: ...

    service = ApprovalService()
    executor = ToolExecutor(registry, approval_service=service, approval_timeout=math.inf)

    async def act(ctx: StageContext) -> None:
        for name in ("slow", "guarded"):
            with anyio.move_on_after(0.02):
                await executor.execute(ToolInput(tool_name=name), ctx)

    _, sink = await run_stage(act)
    assert tool_event_types(sink) == [
        "tool.invoked",
        "tool.started",
        "tool.failed",
        "tool.invoked",
        "approval.requested",
        "approval.decided",
        "tool.failed",
    ]
    failed = sink.of_type("tool.failed")
    assert [(f["reason"], f["error_code"]) for f in failed] == [("cancelled", "CANCELLED")] * 2
    decided = sink.of_type("approval.decided")[0]
    assert decided["status"] == "cancelled"
    request = service.get(decided["request_id"])
    assert request is not None
    assert request.status is ApprovalStatus.CANCELLED
    assert service.pending() == []


async def test_handler_can_cancel_the_run() -> None:
    registry = ToolRegistry()

    @registry.tool
    async def stop(input: ToolInput) -> None:
        raise StageCancellationRequested("user said stop")

    executor = ToolExecutor(registry)

    async def act(ctx: StageContext) -> None:
        await executor.execute(ToolInput(tool_name="stop"), ctx)

    with pytest.raises(PipelineCancelled, match="user said stop"):
        await run_stage(act)


def test_executor_arguments_are_checked() -> None:
    with pytest.raises(ValueError, match="approval_timeout"):
        ToolExecutor(ToolRegistry(), approval_timeout=-1)
    with pytest.raises(ValueError, match="undo_ttl"):
        ToolExecutor(ToolRegistry(), undo_ttl=0)


async def test_a_failure_outside_the_handler_is_reported_as_what_it_is() -> None:
    class BrokenUndoStore(UndoStore):
        def store(self, metadata: UndoMetadata, *, ttl: float | None = None) -> None:
            raise RuntimeError("undo storage is full")

    registry = ToolRegistry()

    async def undo(metadata: UndoMetadata) -> None:
        return None

    @registry.tool(undoable=True, undo_handler=undo)
    async def note(input: ToolInput) -> dict[str, Any]:
        """Write a note."""
        return {"written": True}

    executor = ToolExecutor(registry, undo_store=BrokenUndoStore())

    async def body(ctx: StageContext) -> Mapping[str, Any]:
        with pytest.raises(RuntimeError, match="undo storage is full"):
            await executor.execute(ToolInput(tool_name="note", payload={}), ctx)
        return {}

    _, sink = await run_stage(body)
    (failed,) = [data for kind, data in tool_events(sink) if kind == "tool.failed"]
    assert failed["error"] == "undo storage is full"
    assert failed["error_type"] == "RuntimeError"
    assert failed["error_code"] == "TOOL_INTERNAL_ERROR"
