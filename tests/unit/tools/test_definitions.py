from __future__ import annotations

import datetime as dt
import functools
from collections.abc import Callable
from dataclasses import fields
from typing import Any

import pytest

from stageflow_otel import StageArtifact, StageContext, StageflowError
from stageflow_otel.tools import (
    SchemaViolation,
    ToolDefinition,
    ToolDefinitionError,
    ToolError,
    ToolInput,
    ToolOptions,
    ToolOutput,
    ToolRegistry,
    UndoMetadata,
    define_tool,
    tool,
)


def echo(input: ToolInput) -> dict[str, Any]:
    return dict(input.payload)


def test_invalid_schema_is_rejected_when_the_tool_is_defined() -> None:
    with pytest.raises(ToolDefinitionError) as info:
        ToolDefinition("bad", "BAD", echo, input_schema={"type": "objekt"})
    err = info.value
    assert err.code == "TOOL_DEFINITION_INVALID"
    assert isinstance(err, ValueError)
    assert "tool 'bad': input_schema is not a valid JSON Schema (Draft202012Validator)" in str(err)
    assert "at /type in the schema" in str(err)


def test_schema_draft_follows_dollar_schema() -> None:
    # Draft 4 spells exclusiveMaximum as a boolean; 2020-12 would reject it.
    schema = {
        "$schema": "http://json-schema.org/draft-04/schema#",
        "type": "object",
        "properties": {"n": {"type": "number", "maximum": 5, "exclusiveMaximum": True}},
    }
    definition = ToolDefinition("d4", "D4", echo, input_schema=schema)
    assert [v.validator for v in definition.validate({"n": 5})] == ["maximum"]
    without_dialect = {k: v for k, v in schema.items() if k != "$schema"}
    with pytest.raises(ToolDefinitionError, match="Draft202012Validator"):
        ToolDefinition("d2020", "D2020", echo, input_schema=without_dialect)


def test_validate_reports_every_violation_sorted_by_path() -> None:
    definition = ToolDefinition(
        "user",
        "USER",
        echo,
        input_schema={
            "type": "object",
            "required": ["email"],
            "properties": {
                "email": {"type": "string"},
                "age": {"type": "integer", "minimum": 0},
                "tags": {"type": "array", "items": {"type": "string"}},
            },
            "additionalProperties": False,
        },
    )
    violations = definition.validate({"age": -1, "tags": ["a", 2, "c", 3], "extra": True})
    assert [(v.path, v.validator) for v in violations] == [
        ("$", "required"),
        ("$", "additionalProperties"),
        ("$.age", "minimum"),
        ("$.tags[1]", "type"),
        ("$.tags[3]", "type"),
    ]
    assert violations[3] == SchemaViolation(
        path="$.tags[1]",
        message="2 is not of type 'string'",
        validator="type",
        schema_path="/properties/tags/items/type",
    )
    assert definition.validate({"email": "a@b.c"}) == ()


def test_empty_schema_accepts_any_object() -> None:
    assert ToolDefinition("any", "ANY", echo).validate({"x": object()}) == ()


def test_unresolvable_ref_is_a_definition_error_when_used() -> None:
    definition = ToolDefinition("ref", "REF", echo, input_schema={"$ref": "#/$defs/missing"})
    with pytest.raises(ToolDefinitionError, match="cannot be applied"):
        definition.validate({})


def test_definition_checks() -> None:
    with pytest.raises(ToolDefinitionError, match="non-empty string"):
        ToolDefinition("", "X", echo)
    with pytest.raises(ToolDefinitionError, match="action_type must be"):
        ToolDefinition("x", "", echo)
    with pytest.raises(ToolDefinitionError, match="is undoable but has no undo_handler"):
        ToolDefinition("x", "X", echo, undoable=True)
    with pytest.raises(ToolDefinitionError, match="takes no positional parameter"):
        ToolDefinition("x", "X", lambda: None)
    with pytest.raises(ToolDefinitionError, match="is not callable"):
        ToolDefinition("x", "X", "echo")  # type: ignore[arg-type]
    with pytest.raises(ToolDefinitionError, match=r"write allowed_behaviors=\('chat',\)"):
        ToolDefinition("x", "X", echo, allowed_behaviors="chat")  # type: ignore[arg-type]
    with pytest.raises(ToolDefinitionError, match="must be a JSON Schema object"):
        ToolDefinition("x", "X", echo, input_schema=True)  # type: ignore[arg-type]


def test_handler_arity_decides_whether_the_context_is_passed() -> None:
    def one(input: ToolInput) -> None: ...
    def two(input: ToolInput, ctx: StageContext) -> None: ...
    def star(*args: Any) -> None: ...
    async def two_async(input: ToolInput, ctx: StageContext) -> None: ...

    class Callable:
        def __call__(self, input: ToolInput, ctx: StageContext) -> None: ...

    def shape(fn: Any) -> tuple[bool, bool]:
        h = ToolDefinition("t", "T", fn)._handler
        return h.is_async, h.wants_context

    assert shape(one) == (False, False)
    assert shape(two) == (False, True)
    assert shape(star) == (False, True)
    assert shape(two_async) == (True, True)
    assert shape(Callable()) == (False, True)
    assert shape(functools.partial(two_async)) == (True, True)
    assert shape(functools.partial(two, ToolInput(tool_name="t"))) == (False, False)


def test_tool_decorator_takes_defaults_from_the_function() -> None:
    @tool
    def lookup(input: ToolInput) -> None:
        """Look a thing up.

        More details that are not part of the description.
        """

    assert isinstance(lookup, ToolDefinition)
    assert (lookup.name, lookup.action_type, lookup.description) == (
        "lookup",
        "lookup",
        "Look a thing up.",
    )

    @tool(name="find", action_type="FIND", description="d", allowed_behaviors=["a", "b"])
    async def other(input: ToolInput) -> None: ...

    assert (other.name, other.action_type, other.description) == ("find", "FIND", "d")
    assert other.allowed_behaviors == ("a", "b")
    assert other.is_behavior_allowed("a")
    assert not other.is_behavior_allowed(None)
    assert lookup.is_behavior_allowed(None)


def ping(input: ToolInput) -> None:
    """Ping."""


def through_tool(**options: Any) -> ToolDefinition:
    return tool(**options)(ping)


def through_registry(**options: Any) -> ToolDefinition:
    return ToolRegistry().tool(**options)(ping)


def through_define_tool(**options: Any) -> ToolDefinition:
    return define_tool(ping, **options)


PATHS: tuple[Callable[..., ToolDefinition], ...] = (
    through_tool,
    through_registry,
    through_define_tool,
)


def test_tool_options_are_the_definition_fields() -> None:
    settable = {f.name for f in fields(ToolDefinition) if f.init} - {"handler"}
    assert ToolOptions.__optional_keys__ == settable
    assert ToolOptions.__required_keys__ == frozenset()


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (
            {"requires_aproval": True},
            "tool 'ping': unknown option 'requires_aproval'; did you mean 'requires_approval'?",
        ),
        (
            {"colour": "red"},
            (
                "tool 'ping': unknown option 'colour'; the options are action_type, "
                "allowed_behaviors, approval_message, artifact_type, description, input_schema, "
                "name, requires_approval, undo_handler, undoable"
            ),
        ),
        (
            {"allowed_behaviors": "chat"},
            (
                "tool 'ping': allowed_behaviors must be a list of behaviours, got the string "
                "'chat'; write allowed_behaviors=('chat',)"
            ),
        ),
        (
            {"allowed_behaviors": ["chat", 1]},
            "tool 'ping': allowed_behaviors must be a list of strings, got ['chat', 1] (list)",
        ),
        (
            {"allowed_behaviors": 3},
            "tool 'ping': allowed_behaviors must be a list of strings, got 3 (int)",
        ),
        (
            {"undoable": "yes", "undo_handler": ping},
            "tool 'ping': undoable must be True or False, got 'yes' (str)",
        ),
        (
            {"name": "pong", "requires_approval": 1},
            "tool 'pong': requires_approval must be True or False, got 1 (int)",
        ),
        (
            {"approval_message": ["ok?"]},
            "tool 'ping': approval_message must be a string or None, got ['ok?'] (list)",
        ),
        (
            {"undoable": True},
            (
                "tool 'ping' is undoable but has no undo_handler; pass undo_handler=... or "
                "undoable=False"
            ),
        ),
        (
            {"input_schema": {"type": "objekt"}},
            (
                "tool 'ping': input_schema is not a valid JSON Schema (Draft202012Validator): "
                "'objekt' is not valid under any of the given schemas (at /type in the schema)"
            ),
        ),
    ],
)
def test_a_bad_option_fails_the_same_way_on_every_path(
    options: dict[str, Any], message: str
) -> None:
    errors: list[ToolDefinitionError] = []
    for path in PATHS:
        with pytest.raises(ToolDefinitionError) as info:
            path(**options)
        errors.append(info.value)
    assert [str(e) for e in errors] == [message] * len(PATHS)
    assert {e.tool for e in errors} == {options.get("name", "ping")}


def test_every_path_makes_the_same_definition() -> None:
    def undo(metadata: UndoMetadata) -> None: ...

    options: dict[str, Any] = {
        "action_type": "PING",
        "allowed_behaviors": iter(["chat"]),
        "requires_approval": True,
        "approval_message": "Ping?",
        "undoable": True,
        "undo_handler": undo,
        "artifact_type": "pong",
    }
    made = [path(**{**options, "allowed_behaviors": ["chat"]}) for path in PATHS]
    assert [d.to_dict() for d in made] == [made[0].to_dict()] * len(PATHS)
    assert made[0].to_dict() == {
        "name": "ping",
        "action_type": "PING",
        "description": "Ping.",
        "input_schema": {},
        "allowed_behaviors": ["chat"],
        "requires_approval": True,
        "approval_message": "Ping?",
        "undoable": True,
        "artifact_type": "pong",
    }
    assert through_tool(**options).allowed_behaviors == ("chat",)  # any iterable will do


def test_openai_declaration_and_dict() -> None:
    schema = {"type": "object", "properties": {"q": {"type": "string"}}}
    definition = ToolDefinition(
        "search", "SEARCH", echo, description="Search.", input_schema=schema
    )
    assert definition.to_openai_tool() == {
        "type": "function",
        "function": {"name": "search", "description": "Search.", "parameters": schema},
    }
    assert ToolDefinition("n", "N", echo).to_openai_tool()["function"]["parameters"] == {
        "type": "object",
        "properties": {},
    }
    assert definition.to_dict()["input_schema"] == schema
    assert "handler" not in definition.to_dict()


def test_tool_output_constructors() -> None:
    ok = ToolOutput.ok({"a": 1}, b=2, artifacts=[{"x": 1}], undo_metadata={"id": 7})
    assert ok.success
    assert ok.data == {"a": 1, "b": 2}
    assert ok.artifacts[0].type == ""
    assert ok.artifacts[0].payload == {"x": 1}
    assert ok.undo_metadata == {"id": 7}
    assert ok.to_dict()["artifacts"][0]["payload"] == {"x": 1}
    assert "error" not in ok.to_dict()

    error = ToolError("boom", code="CUSTOM")
    failed = ToolOutput.fail(error)
    assert (failed.success, failed.error, failed.error_code) == (False, "boom", "CUSTOM")
    assert failed.exception is error
    assert failed.to_dict() == {
        "success": False,
        "data": {},
        "error": "boom",
        "error_code": "CUSTOM",
    }
    assert ToolOutput.fail().error == "Unknown error"
    assert ToolOutput.fail(ValueError()).error == "ValueError"
    assert ToolOutput.fail("x", error_code="E").error_code == "E"
    artifact = StageArtifact("file", {"path": "/tmp/x"})
    assert ToolOutput.ok(artifacts=[artifact]).artifacts == (artifact,)


def test_tool_input_and_undo_metadata_dicts() -> None:
    a, b = ToolInput(tool_name="t"), ToolInput(tool_name="t")
    assert a.action_id != b.action_id
    assert a.to_dict()["payload"] == {}
    when = dt.datetime(2026, 1, 2, tzinfo=dt.UTC)
    record = UndoMetadata("act", "t", {"k": 1}, created_at=when)
    assert record.to_dict() == {
        "action_id": "act",
        "tool_name": "t",
        "undo_data": {"k": 1},
        "created_at": "2026-01-02T00:00:00+00:00",
        "pipeline_run_id": None,
        "call_id": None,
    }


def test_errors_have_codes_and_dicts() -> None:
    from stageflow_otel.tools import (
        ToolApprovalDeniedError,
        ToolApprovalTimeoutError,
        ToolInputValidationError,
        ToolNotFoundError,
    )

    timeout = ToolApprovalTimeoutError("t", request_id="r", timeout_s=1.5, action_id="a")
    assert isinstance(timeout, ToolApprovalDeniedError)
    assert isinstance(timeout, TimeoutError)
    assert isinstance(timeout, StageflowError)
    assert timeout.to_dict() == {
        "code": "TOOL_APPROVAL_TIMEOUT",
        "type": "ToolApprovalTimeoutError",
        "message": str(timeout),
        "tool": "t",
        "action_id": "a",
        "call_id": None,
        "request_id": "r",
        "status": "expired",
        "decided_by": None,
        "reason": "approval_timeout",
        "timeout_s": 1.5,
    }
    assert "within 1.5s" in str(timeout)

    missing = ToolNotFoundError("serch", available=["search", "fetch"])
    assert str(missing) == (
        "no tool named 'serch' is registered (tools: fetch, search); did you mean 'search'?"
    )
    assert isinstance(missing, LookupError)
    assert missing.to_dict()["available"] == ["fetch", "search"]

    v = SchemaViolation("$.a", "bad", "type", "/properties/a/type")
    invalid = ToolInputValidationError("t", [v, v])
    assert invalid.paths == ("$.a", "$.a")
    assert "(2 errors)" in str(invalid)
    assert invalid.to_dict()["violations"] == [v.to_dict(), v.to_dict()]
