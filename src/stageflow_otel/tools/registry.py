"""The tool registry: tools by name (and by action type), lazy factories, LLM tool call parsing.

A registry is an explicit object: make one, register tools on it, and give it to a
``ToolExecutor``. There is no global registry.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, NamedTuple, overload

from stageflow_otel.core._checks import sequence_of

from .definitions import (
    ToolDefinition,
    ToolHandler,
    ToolInput,
    UndoHandler,
    define_tool,
    new_action_id,
)
from .errors import ToolDefinitionError, ToolNotFoundError

__all__ = (
    "ParsedToolCalls",
    "ResolvedToolCall",
    "ToolFactory",
    "ToolRegistry",
    "UnresolvedReason",
    "UnresolvedToolCall",
)

ToolFactory = Callable[[], ToolDefinition]
"""Builds a tool definition on first use (for tools that are costly to set up)."""


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


_MISSING: Any = object()


def _field(obj: Any, key: str) -> Any:
    """``obj[key]`` for a mapping, ``obj.key`` for an object (SDK models), else missing."""
    if isinstance(obj, Mapping):
        return obj.get(key, _MISSING)
    return getattr(obj, key, _MISSING)


class ToolRegistry:
    """Tools by name, with a second index by action type.

    Example::

        registry = ToolRegistry()

        @registry.tool(input_schema={"type": "object", "required": ["city"]})
        async def weather(input: ToolInput) -> dict[str, object]:
            \"\"\"Current weather of a city.\"\"\"
            ...

        registry.register_factory("search", make_search_tool)  # built on first use
    """

    def __init__(self, tools: Iterable[ToolDefinition] = ()) -> None:
        self._lock = threading.RLock()
        self._tools: dict[str, ToolDefinition] = {}
        self._by_action_type: dict[str, str] = {}
        self._factories: dict[str, tuple[ToolFactory, str | None]] = {}
        try:
            definitions = sequence_of("tools", tools, item="ToolDefinition")
        except TypeError as exc:
            raise ToolDefinitionError(f"ToolRegistry: {exc}") from None
        for definition in definitions:
            self.register(definition)

    # -- registration ---------------------------------------------------------------------

    def register(self, definition: ToolDefinition, *, replace: bool = False) -> ToolDefinition:
        """Add a tool.

        Args:
            definition: The tool.
            replace: Replace a tool of the same name instead of raising.

        Returns:
            The definition (so that this can be used in expressions).

        Raises:
            ToolDefinitionError: If the name or action type is taken (and ``replace`` is
                false), or ``definition`` is not a ``ToolDefinition``.
        """
        if not isinstance(definition, ToolDefinition):
            raise ToolDefinitionError(
                f"register() takes a ToolDefinition, got {type(definition).__name__}; wrap "
                "functions with @tool or use registry.tool"
            )
        with self._lock:
            name = definition.name
            if not replace and (name in self._tools or name in self._factories):
                raise ToolDefinitionError(
                    f"a tool named {name!r} is already registered; pick another name or pass "
                    "replace=True",
                    tool=name,
                )
            self._check_action_type(name, definition.action_type)
            self._remove(name)
            self._tools[name] = definition
            self._by_action_type[definition.action_type] = name
        return definition

    def register_factory(
        self,
        name: str,
        factory: ToolFactory,
        *,
        action_type: str | None = None,
        replace: bool = False,
    ) -> None:
        """Add a tool that is built by ``factory()`` the first time it is looked up.

        Args:
            name: The tool name the factory's definition must have.
            factory: Returns the :class:`ToolDefinition`.
            action_type: The action type the definition will have, if known; lets
                :meth:`get_by_action_type` find the tool without building it.
            replace: Replace a tool of the same name instead of raising.

        Raises:
            ToolDefinitionError: If the name is taken and ``replace`` is false.
        """
        if not callable(factory):
            raise ToolDefinitionError(f"factory for tool {name!r} is not callable", tool=name)
        with self._lock:
            if not replace and (name in self._tools or name in self._factories):
                raise ToolDefinitionError(
                    f"a tool named {name!r} is already registered; pick another name or pass "
                    "replace=True",
                    tool=name,
                )
            if action_type is not None:
                self._check_action_type(name, action_type)
            self._remove(name)
            self._factories[name] = (factory, action_type)

    @overload
    def tool(self, handler: ToolHandler, /) -> ToolDefinition: ...
    @overload
    def tool(
        self,
        /,
        *,
        name: str | None = None,
        action_type: str | None = None,
        description: str | None = None,
        input_schema: Mapping[str, Any] | None = None,
        allowed_behaviors: Iterable[str] = (),
        requires_approval: bool = False,
        approval_message: str | None = None,
        undoable: bool = False,
        undo_handler: UndoHandler | None = None,
        artifact_type: str | None = None,
    ) -> Callable[[ToolHandler], ToolDefinition]: ...
    def tool(
        self,
        handler: ToolHandler | None = None,
        /,
        *,
        name: str | None = None,
        action_type: str | None = None,
        description: str | None = None,
        input_schema: Mapping[str, Any] | None = None,
        allowed_behaviors: Iterable[str] = (),
        requires_approval: bool = False,
        approval_message: str | None = None,
        undoable: bool = False,
        undo_handler: UndoHandler | None = None,
        artifact_type: str | None = None,
    ) -> ToolDefinition | Callable[[ToolHandler], ToolDefinition]:
        """Decorator: define a tool from a function and register it.

        Takes the same options as :func:`stageflow_otel.tools.tool`; the decorated name is
        bound to the :class:`ToolDefinition`.
        """

        def decorate(fn: ToolHandler) -> ToolDefinition:
            return self.register(
                define_tool(
                    fn,
                    name=name,
                    action_type=action_type,
                    description=description,
                    input_schema=input_schema,
                    allowed_behaviors=allowed_behaviors,
                    requires_approval=requires_approval,
                    approval_message=approval_message,
                    undoable=undoable,
                    undo_handler=undo_handler,
                    artifact_type=artifact_type,
                )
            )

        return decorate(handler) if handler is not None else decorate

    def unregister(self, name: str) -> bool:
        """Remove a tool (or its factory); return whether there was one."""
        with self._lock:
            known = name in self._tools or name in self._factories
            self._remove(name)
            return known

    def _remove(self, name: str) -> None:
        old = self._tools.pop(name, None)
        if old is not None and self._by_action_type.get(old.action_type) == name:
            del self._by_action_type[old.action_type]
        self._factories.pop(name, None)

    def _check_action_type(self, name: str, action_type: str) -> None:
        owner = self._by_action_type.get(action_type)
        if owner is None:
            owner = next(
                (n for n, (_, a) in self._factories.items() if a == action_type and n != name),
                None,
            )
        if owner is not None and owner != name:
            raise ToolDefinitionError(
                f"tool {name!r} has action type {action_type!r}, which tool {owner!r} already "
                "handles; action types must be unique",
                tool=name,
            )

    # -- lookup ---------------------------------------------------------------------------

    def get(self, name: str) -> ToolDefinition | None:
        """The tool named ``name`` (building it from its factory if needed), or ``None``.

        Raises:
            ToolDefinitionError: If the tool's factory fails or returns something unusable.
        """
        definition = self._tools.get(name)
        if definition is not None:
            return definition
        with self._lock:
            definition = self._tools.get(name)
            if definition is not None:
                return definition
            entry = self._factories.get(name)
            if entry is None:
                return None
            return self._build(name, *entry)

    def _build(self, name: str, factory: ToolFactory, action_type: str | None) -> ToolDefinition:
        try:
            definition = factory()
        except Exception as exc:
            raise ToolDefinitionError(
                f"the factory of tool {name!r} raised {type(exc).__name__}: {exc}", tool=name
            ) from exc
        if not isinstance(definition, ToolDefinition):
            raise ToolDefinitionError(
                f"the factory of tool {name!r} returned {type(definition).__name__}; it must "
                "return a ToolDefinition",
                tool=name,
            )
        if definition.name != name:
            raise ToolDefinitionError(
                f"the factory registered as {name!r} built a tool named {definition.name!r}; "
                "register the factory under the name its tool has",
                tool=name,
            )
        if action_type is not None and definition.action_type != action_type:
            raise ToolDefinitionError(
                f"the factory of tool {name!r} was registered with action type "
                f"{action_type!r} but built one with {definition.action_type!r}",
                tool=name,
            )
        self._check_action_type(name, definition.action_type)
        del self._factories[name]
        self._tools[name] = definition
        self._by_action_type[definition.action_type] = name
        return definition

    def require(self, name: str) -> ToolDefinition:
        """Like :meth:`get`, but an unknown name raises :class:`ToolNotFoundError`."""
        definition = self.get(name)
        if definition is None:
            raise ToolNotFoundError(name, available=self.names())
        return definition

    def get_by_action_type(self, action_type: str) -> ToolDefinition | None:
        """The tool handling ``action_type``, or ``None``.

        Factories registered without an action type are built to learn theirs.
        """
        with self._lock:
            name = self._by_action_type.get(action_type)
            if name is not None:
                return self._tools[name]
            for candidate, (_, declared) in list(self._factories.items()):
                if declared == action_type:
                    return self.get(candidate)
            for candidate, (_, declared) in list(self._factories.items()):
                if declared is None:
                    built = self.get(candidate)
                    if built is not None and built.action_type == action_type:
                        return built
            return None

    def action_type_of(self, name: str) -> str | None:
        """The action type of tool ``name`` if known without building it, else ``None``."""
        definition = self._tools.get(name)
        if definition is not None:
            return definition.action_type
        entry = self._factories.get(name)
        return None if entry is None else entry[1]

    def names(self) -> tuple[str, ...]:
        """The names of every tool, built or not, in registration order."""
        with self._lock:
            return (*self._tools, *self._factories)

    def list_tools(self) -> list[ToolDefinition]:
        """Every tool (building the lazy ones), in registration order."""
        definitions: list[ToolDefinition] = []
        for name in self.names():
            definition = self.get(name)
            if definition is not None:
                definitions.append(definition)
        return definitions

    def to_openai_tools(self) -> list[dict[str, Any]]:
        """Every tool as an OpenAI-style function declaration, for the ``tools=`` argument."""
        return [d.to_openai_tool() for d in self.list_tools()]

    def __contains__(self, name: object) -> bool:
        return name in self._tools or name in self._factories

    def __len__(self) -> int:
        return len(self._tools) + len(self._factories)

    # -- LLM tool calls -------------------------------------------------------------------

    def parse_and_resolve(self, tool_calls: Iterable[Any]) -> ParsedToolCalls:
        """Match OpenAI-style tool calls to registered tools and decode their arguments.

        Each call is ``{"id": ..., "type": "function", "function": {"name": ...,
        "arguments": ...}}`` (an SDK object with the same attributes works too, and so does
        the flat ``{"id": ..., "name": ..., "arguments": ...}``). ``arguments`` is a JSON
        string or an already decoded object; missing, ``None`` or blank means ``{}``.

        Args:
            tool_calls: The calls, in order.

        Returns:
            ``(resolved, unresolved)``, each in input order; every call lands in exactly one.
        """
        resolved: list[ResolvedToolCall] = []
        unresolved: list[UnresolvedToolCall] = []
        for index, raw in enumerate(tool_calls):
            result = self._resolve_one(index, raw)
            if isinstance(result, ResolvedToolCall):
                resolved.append(result)
            else:
                unresolved.append(result)
        return ParsedToolCalls(resolved, unresolved)

    def _resolve_one(self, index: int, raw: Any) -> ResolvedToolCall | UnresolvedToolCall:
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
        definition = self.get(name)
        if definition is None:
            return fail(
                UnresolvedReason.UNKNOWN_TOOL,
                ToolNotFoundError(name, available=self.names(), call_id=call_id).message,
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
                f"arguments of {label} ({name!r}) must be a JSON object, got "
                f"{_json_kind(arguments)}",
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
