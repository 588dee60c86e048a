"""Tool calls from a model's reply: OpenAI-style ``tool_calls`` matched to registered tools.

:meth:`ToolRegistry.parse_and_resolve <stageflow_otel.tools.ToolRegistry.parse_and_resolve>`
is the entry point. Every call given lands either as a :class:`ResolvedToolCall` (a known tool,
arguments decoded to an object, ready for ``ToolExecutor.execute``) or as an
:class:`UnresolvedToolCall` that says why, in words fit to send back to the model.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, NamedTuple, Protocol

from .definitions import ToolDefinition, ToolInput, new_action_id
from .errors import ToolNotFoundError

__all__ = (
    "ParsedToolCalls",
    "ResolvedToolCall",
    "UnresolvedReason",
    "UnresolvedToolCall",
)


class UnresolvedReason(StrEnum):
    """Why an LLM tool call could not be resolved to a registered tool."""

    MALFORMED_CALL = "malformed_call"
    """The entry is not a tool call (not a mapping or object with a function)."""
    UNSUPPORTED_TYPE = "unsupported_type"
    """Its ``type`` is not ``function``."""
    MISSING_NAME = "missing_name"
    """It names no function (missing, empty or not a string)."""
    UNKNOWN_TOOL = "unknown_tool"
    """No tool of that name is registered."""
    INVALID_JSON = "invalid_json"
    """Its ``arguments`` string is not valid JSON."""
    ARGUMENTS_NOT_OBJECT = "arguments_not_object"
    """Its arguments are valid JSON but not an object."""


@dataclass(frozen=True, slots=True)
class ResolvedToolCall:
    """An LLM tool call matched to a registered tool, with its arguments decoded.

    The arguments are not yet checked against the tool's schema: the executor does that, so
    the check is part of the call that telemetry and events record.

    Attributes:
        index: Position of the call in the list given to ``parse_and_resolve``.
        call_id: The call's ``id``.
        name: The tool name.
        arguments: The decoded arguments.
        definition: The tool.
    """

    index: int
    call_id: str | None
    name: str
    arguments: Mapping[str, Any]
    definition: ToolDefinition = field(repr=False)

    def to_input(self, *, action_id: str | None = None, behavior: str | None = None) -> ToolInput:
        """A :class:`ToolInput` for this call (``action_id`` defaults to a new UUID)."""
        return ToolInput(
            tool_name=self.name,
            payload=self.arguments,
            action_id=action_id or new_action_id(),
            call_id=self.call_id,
            behavior=behavior,
        )


@dataclass(frozen=True, slots=True)
class UnresolvedToolCall:
    """An LLM tool call that could not be resolved, and why.

    Attributes:
        index: Position of the call in the list given to ``parse_and_resolve``.
        call_id: The call's ``id``, if it had one.
        name: The function name, if it had one.
        reason: Why it could not be resolved.
        message: A readable explanation (fit to send back to the model).
        raw: The call as given.
        position: For ``invalid_json``: offset of the error in the arguments string.
        line: For ``invalid_json``: line of the error (1-based).
        column: For ``invalid_json``: column of the error (1-based).
    """

    index: int
    call_id: str | None
    name: str | None
    reason: UnresolvedReason
    message: str
    raw: Any = field(repr=False, compare=False)
    position: int | None = None
    line: int | None = None
    column: int | None = None

    def to_tool_message(self) -> dict[str, Any]:
        """An OpenAI-style ``tool`` message telling the model what was wrong."""
        return {"role": "tool", "tool_call_id": self.call_id, "content": self.message}


class ParsedToolCalls(NamedTuple):
    """What :meth:`ToolRegistry.parse_and_resolve` returns; unpacks as ``(resolved, unresolved)``."""

    resolved: list[ResolvedToolCall]
    unresolved: list[UnresolvedToolCall]


class ToolLookup(Protocol):
    """Where tool calls find their tools (a :class:`~stageflow_otel.tools.ToolRegistry`)."""

    def get(self, name: str, /) -> ToolDefinition | None:
        """The tool named ``name``, or ``None``."""
        ...

    def names(self) -> tuple[str, ...]:
        """The names of every tool (for the message about an unknown one)."""
        ...


_MISSING: Any = object()


def _field(obj: Any, key: str) -> Any:
    """``obj[key]`` for a mapping, ``obj.key`` for an object (SDK models), else missing."""
    if isinstance(obj, Mapping):
        return obj.get(key, _MISSING)
    return getattr(obj, key, _MISSING)


def resolve_tool_calls(tools: ToolLookup, tool_calls: Iterable[Any]) -> ParsedToolCalls:
    """Match OpenAI-style tool calls to ``tools`` and decode their arguments.

    What :meth:`ToolRegistry.parse_and_resolve
    <stageflow_otel.tools.ToolRegistry.parse_and_resolve>` runs; see there for the forms a call
    may take.

    Args:
        tools: Where the calls' tools are looked up.
        tool_calls: The calls, in order.

    Returns:
        ``(resolved, unresolved)``, each in input order; every call lands in exactly one.
    """
    resolved: list[ResolvedToolCall] = []
    unresolved: list[UnresolvedToolCall] = []
    for index, raw in enumerate(tool_calls):
        result = _resolve_one(tools, index, raw)
        if isinstance(result, ResolvedToolCall):
            resolved.append(result)
        else:
            unresolved.append(result)
    return ParsedToolCalls(resolved, unresolved)


def _resolve_one(tools: ToolLookup, index: int, raw: Any) -> ResolvedToolCall | UnresolvedToolCall:
    def fail(
        reason: UnresolvedReason,
        message: str,
        *,
        call_id: str | None = None,
        name: str | None = None,
        error: json.JSONDecodeError | None = None,
    ) -> UnresolvedToolCall:
        return UnresolvedToolCall(
            index,
            call_id,
            name,
            reason,
            message,
            raw,
            None if error is None else error.pos,
            None if error is None else error.lineno,
            None if error is None else error.colno,
        )

    if raw is None or isinstance(raw, str | bytes | int | float | list | tuple):
        return fail(
            UnresolvedReason.MALFORMED_CALL,
            f"tool call #{index} is a {type(raw).__name__}, not a tool call object",
        )
    raw_id = _field(raw, "id")
    call_id = None if raw_id is _MISSING or raw_id is None else str(raw_id)
    label = f"tool call {call_id!r}" if call_id is not None else f"tool call #{index}"
    call_type = _field(raw, "type")
    if call_type is not _MISSING and call_type is not None and call_type != "function":
        return fail(
            UnresolvedReason.UNSUPPORTED_TYPE,
            f"{label} has type {call_type!r}; only 'function' tool calls are supported",
            call_id=call_id,
        )
    function = _field(raw, "function")
    if function is _MISSING or function is None:
        function = raw  # the flat form: name and arguments at the top level
    elif isinstance(function, str | bytes | int | float | list | tuple):
        return fail(
            UnresolvedReason.MALFORMED_CALL,
            f"{label}: 'function' is a {type(function).__name__}, not an object with a "
            "name and arguments",
            call_id=call_id,
        )
    name = _field(function, "name")
    if not isinstance(name, str) or not name:
        got = "no name" if name is _MISSING or name is None else f"name {name!r}"
        return fail(
            UnresolvedReason.MISSING_NAME,
            f"{label} has {got}; a tool call must name its function",
            call_id=call_id,
        )
    definition = tools.get(name)
    if definition is None:
        return fail(
            UnresolvedReason.UNKNOWN_TOOL,
            ToolNotFoundError(name, available=tools.names(), call_id=call_id).message,
            call_id=call_id,
            name=name,
        )
    arguments = _field(function, "arguments")
    if arguments is _MISSING or arguments is None:
        arguments = {}
    elif isinstance(arguments, str | bytes):
        text = arguments.decode() if isinstance(arguments, bytes) else arguments
        if not text.strip():
            arguments = {}
        else:
            try:
                arguments = json.loads(text)
            except json.JSONDecodeError as exc:
                return fail(
                    UnresolvedReason.INVALID_JSON,
                    f"arguments of {label} ({name!r}) are not valid JSON: {exc.msg} at line "
                    f"{exc.lineno} column {exc.colno} (char {exc.pos})",
                    call_id=call_id,
                    name=name,
                    error=exc,
                )
    if not isinstance(arguments, Mapping):
        return fail(
            UnresolvedReason.ARGUMENTS_NOT_OBJECT,
            f"arguments of {label} ({name!r}) must be a JSON object, got {_json_kind(arguments)}",
            call_id=call_id,
            name=name,
        )
    return ResolvedToolCall(index, call_id, name, arguments, definition)


def _json_kind(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list | tuple):
        return "an array"
    return type(value).__name__
