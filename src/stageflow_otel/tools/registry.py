"""The tool registry: tools by name (and by action type), and lazy factories.

A registry is an explicit object: make one, register tools on it, and give it to a
``ToolExecutor``. There is no global registry. :meth:`ToolRegistry.parse_and_resolve` matches
the tool calls of a model's reply to its tools (the parsing lives in :mod:`.calls`).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable
from typing import Any, Unpack, overload

from stageflow_otel.core._checks import sequence_of

from .calls import ParsedToolCalls, resolve_tool_calls
from .definitions import ToolDefinition, ToolHandler, ToolOptions, define_tool
from .errors import ToolDefinitionError, ToolNotFoundError

__all__ = ("ToolFactory", "ToolRegistry")

ToolFactory = Callable[[], ToolDefinition]
"""Builds a tool definition on first use (for tools that are costly to set up)."""


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
            if not replace:
                self._check_name_free(name)
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
            if not replace:
                self._check_name_free(name)
            if action_type is not None:
                self._check_action_type(name, action_type)
            self._remove(name)
            self._factories[name] = (factory, action_type)

    @overload
    def tool(self, handler: ToolHandler, /) -> ToolDefinition: ...
    @overload
    def tool(
        self, /, **options: Unpack[ToolOptions]
    ) -> Callable[[ToolHandler], ToolDefinition]: ...
    def tool(
        self, handler: ToolHandler | None = None, /, **options: Unpack[ToolOptions]
    ) -> ToolDefinition | Callable[[ToolHandler], ToolDefinition]:
        """Decorator: define a tool from a function and register it.

        Takes the same options as :func:`stageflow_otel.tools.tool` (:class:`ToolOptions`);
        the decorated name is bound to the :class:`ToolDefinition`.
        """

        def decorate(fn: ToolHandler) -> ToolDefinition:
            return self.register(define_tool(fn, **options))

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

    def _check_name_free(self, name: str) -> None:
        if name in self:
            raise ToolDefinitionError(
                f"a tool named {name!r} is already registered; pick another name or pass "
                "replace=True",
                tool=name,
            )

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
        return resolve_tool_calls(self, tool_calls)
