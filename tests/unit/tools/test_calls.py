"""Tool calls from a model's reply, resolved through ``ToolRegistry.parse_and_resolve``."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from stageflow_otel.tools import ToolInput, ToolRegistry, UnresolvedReason, tool


@tool(action_type="SEARCH", input_schema={"type": "object"})
async def search(input: ToolInput) -> dict[str, Any]:
    """Search."""
    return {}


@tool
def fetch(input: ToolInput) -> None:
    """Fetch."""


def call(
    name: str | None, arguments: Any = "{}", call_id: str | None = "call_1", **extra: Any
) -> dict[str, Any]:
    function: dict[str, Any] = {"arguments": arguments}
    if name is not None:
        function["name"] = name
    return {"id": call_id, "type": "function", "function": function, **extra}


def test_parse_and_resolve_good_calls() -> None:
    registry = ToolRegistry([search, fetch])
    resolved, unresolved = registry.parse_and_resolve(
        [
            call("search", '{"q": "otel", "n": 3}', "c1"),
            call("fetch", {"url": "x"}, "c2"),
            call("fetch", "", "c3"),
            call("fetch", None, "c4"),
            {"id": "c5", "name": "search", "arguments": '{"q": "flat"}'},
        ]
    )
    assert unresolved == []
    assert [(r.index, r.call_id, r.name, dict(r.arguments)) for r in resolved] == [
        (0, "c1", "search", {"q": "otel", "n": 3}),
        (1, "c2", "fetch", {"url": "x"}),
        (2, "c3", "fetch", {}),
        (3, "c4", "fetch", {}),
        (4, "c5", "search", {"q": "flat"}),
    ]
    assert resolved[0].definition is search
    tool_input = resolved[0].to_input(behavior="chat")
    assert (tool_input.tool_name, tool_input.call_id, tool_input.behavior) == (
        "search",
        "c1",
        "chat",
    )


def test_parse_and_resolve_accepts_sdk_objects() -> None:
    @dataclass
    class Function:
        name: str
        arguments: str

    @dataclass
    class Call:
        id: str
        function: Function
        type: str = "function"

    registry = ToolRegistry([search])
    resolved, unresolved = registry.parse_and_resolve([Call("c1", Function("search", "{}"))])
    assert unresolved == []
    assert resolved[0].call_id == "c1"


def test_parse_and_resolve_malformed_calls() -> None:
    registry = ToolRegistry([search, fetch])
    resolved, unresolved = registry.parse_and_resolve(
        [
            call("search", '{"q": "otel",}', "bad_json"),
            call("search", "[1, 2]", "array"),
            call("search", "null", "null"),
            call(None, "{}", "nameless"),
            call("", "{}", "empty_name"),
            call("serch", "{}", "unknown"),
            {"id": "web", "type": "web_search", "function": {"name": "search"}},
            "not a call",
            {"id": "bad_fn", "function": ["search"]},
            call("search", '{"q": 1}', "fine"),
        ]
    )
    assert [r.call_id for r in resolved] == ["fine"]
    assert resolved[0].index == 9
    got = {u.call_id or f"#{u.index}": u for u in unresolved}
    assert [(k, u.reason) for k, u in got.items()] == [
        ("bad_json", UnresolvedReason.INVALID_JSON),
        ("array", UnresolvedReason.ARGUMENTS_NOT_OBJECT),
        ("null", UnresolvedReason.ARGUMENTS_NOT_OBJECT),
        ("nameless", UnresolvedReason.MISSING_NAME),
        ("empty_name", UnresolvedReason.MISSING_NAME),
        ("unknown", UnresolvedReason.UNKNOWN_TOOL),
        ("web", UnresolvedReason.UNSUPPORTED_TYPE),
        ("#7", UnresolvedReason.MALFORMED_CALL),
        ("bad_fn", UnresolvedReason.MALFORMED_CALL),
    ]
    bad = got["bad_json"]
    assert (bad.position, bad.line, bad.column) == (13, 1, 14)
    assert bad.message == (
        "arguments of tool call 'bad_json' ('search') are not valid JSON: Expecting property "
        "name enclosed in double quotes at line 1 column 14 (char 13)"
    )
    assert got["array"].message.endswith("must be a JSON object, got an array")
    assert got["null"].message.endswith("got null")
    assert got["unknown"].name == "serch"
    assert "did you mean 'search'" in got["unknown"].message
    assert (
        got["nameless"].message
        == "tool call 'nameless' has no name; a tool call must name its function"
    )
    assert got["#7"].message == "tool call #7 is a str, not a tool call object"
    assert got["bad_json"].to_tool_message() == {
        "role": "tool",
        "tool_call_id": "bad_json",
        "content": bad.message,
    }


def test_parse_and_resolve_builds_lazy_tools_and_names_them_when_unknown() -> None:
    registry = ToolRegistry()
    registry.register_factory("search", lambda: search, action_type="SEARCH")
    resolved, unresolved = registry.parse_and_resolve([call("search"), call("fetch", "{}", "c2")])
    assert [r.definition for r in resolved] == [search]
    (missing,) = unresolved
    assert missing.message == (
        "no tool named 'fetch' is registered (tools: search); register it on the ToolRegistry "
        "given to the ToolExecutor"
    )
