from __future__ import annotations

from typing import Any

import pytest

from stageflow_otel.tools import (
    ToolDefinition,
    ToolDefinitionError,
    ToolInput,
    ToolNotFoundError,
    ToolRegistry,
    tool,
)


@tool(action_type="SEARCH", input_schema={"type": "object"})
async def search(input: ToolInput) -> dict[str, Any]:
    """Search."""
    return {}


@tool
def fetch(input: ToolInput) -> None:
    """Fetch."""


def test_register_and_look_up_by_name_and_action_type() -> None:
    registry = ToolRegistry([search])
    assert registry.register(fetch) is fetch
    assert registry.get("search") is search
    assert registry.get_by_action_type("SEARCH") is search
    assert registry.get_by_action_type("fetch") is fetch
    assert registry.get("nope") is None
    assert registry.get_by_action_type("NOPE") is None
    assert registry.names() == ("search", "fetch")
    assert registry.list_tools() == [search, fetch]
    assert "search" in registry
    assert "nope" not in registry
    assert len(registry) == 2
    with pytest.raises(ToolNotFoundError, match="did you mean 'search'"):
        registry.require("serch")


def test_duplicates_are_refused_unless_replacing() -> None:
    registry = ToolRegistry([search])
    with pytest.raises(ToolDefinitionError, match="already registered"):
        registry.register(search)
    clash = ToolDefinition("other", "SEARCH", fetch.handler)
    with pytest.raises(ToolDefinitionError, match="action type 'SEARCH', which tool 'search'"):
        registry.register(clash)
    newer = ToolDefinition("search", "SEARCH2", fetch.handler)
    registry.register(newer, replace=True)
    assert registry.get("search") is newer
    assert registry.get_by_action_type("SEARCH") is None
    assert registry.get_by_action_type("SEARCH2") is newer
    assert registry.unregister("search") is True
    assert registry.unregister("search") is False
    with pytest.raises(ToolDefinitionError, match="takes a ToolDefinition"):
        registry.register(fetch.handler)  # type: ignore[arg-type]


def test_a_taken_name_is_refused_the_same_way_for_tools_and_factories() -> None:
    registry = ToolRegistry([search])
    registry.register_factory("fetch", lambda: fetch)
    taken = (
        lambda: registry.register(search),
        lambda: registry.register(fetch),
        lambda: registry.register_factory("search", lambda: search),
        lambda: registry.register_factory("fetch", lambda: fetch),
    )
    messages = []
    for attempt in taken:
        with pytest.raises(ToolDefinitionError) as info:
            attempt()
        messages.append(str(info.value))
    assert messages == [
        f"a tool named {name!r} is already registered; pick another name or pass replace=True"
        for name in ("search", "fetch", "search", "fetch")
    ]
    registry.register_factory("search", lambda: search, replace=True)
    assert registry.names() == ("fetch", "search")


def test_decorator_registers() -> None:
    registry = ToolRegistry()

    @registry.tool(allowed_behaviors=["chat"])
    def ping(input: ToolInput) -> dict[str, str]:
        """Ping."""
        return {"pong": "yes"}

    @registry.tool
    async def pong(input: ToolInput) -> None:
        """Pong."""

    assert isinstance(ping, ToolDefinition)
    assert registry.get("ping") is ping
    assert registry.get("pong") is pong
    assert ping.allowed_behaviors == ("chat",)
    assert registry.to_openai_tools()[0]["function"]["name"] == "ping"


def test_factories_are_lazy_and_built_once() -> None:
    registry = ToolRegistry()
    built: list[str] = []

    def make() -> ToolDefinition:
        built.append("search")
        return search

    registry.register_factory("search", make, action_type="SEARCH")
    assert "search" in registry
    assert built == []
    assert registry.action_type_of("search") == "SEARCH"
    assert registry.get_by_action_type("SEARCH") is search
    assert registry.get("search") is search
    assert registry.list_tools() == [search]
    assert built == ["search"]


def test_factory_without_declared_action_type_is_built_to_find_it() -> None:
    registry = ToolRegistry()
    registry.register_factory("fetch", lambda: fetch)
    assert registry.action_type_of("fetch") is None
    assert registry.get_by_action_type("fetch") is fetch
    assert registry.action_type_of("fetch") == "fetch"


@pytest.mark.parametrize(
    ("factory", "message"),
    [
        (lambda: 1 / 0, "raised ZeroDivisionError"),
        (lambda: "nope", "returned str"),
        (lambda: fetch, "built a tool named 'fetch'"),
    ],
)
def test_broken_factories_fail_clearly(factory: Any, message: str) -> None:
    registry = ToolRegistry()
    registry.register_factory("search", factory)
    with pytest.raises(ToolDefinitionError, match=message):
        registry.get("search")


def test_factory_action_type_must_match_its_declaration() -> None:
    registry = ToolRegistry()
    registry.register_factory("search", lambda: search, action_type="OTHER")
    with pytest.raises(ToolDefinitionError, match="registered with action type 'OTHER'"):
        registry.get("search")
