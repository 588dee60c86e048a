"""What a tool is and what flows through it: definitions, inputs, outputs, undo records, calls.

A :class:`ToolDefinition` names a handler and the rules around it (input schema, allowed
behaviours, approval, undo). A handler is a function of one or two positional parameters,
chosen by its signature when the tool is defined:

* ``handler(input: ToolInput)``, or
* ``handler(input: ToolInput, ctx: StageContext)``, to reach the run (``ctx.try_emit_event``,
  ``ctx.spawn_subpipeline``, ``ctx.bag`` ...).

``async def`` handlers are awaited; plain ``def`` handlers run in a worker thread
(``anyio.to_thread.run_sync``), so they may block, but must not call ``ctx``'s async methods
(a cancelled call waits for its thread to finish).
A handler returns a :class:`ToolOutput`, a mapping (a successful output with that data) or
``None`` (a successful output without data). Undo handlers follow the same rules with an
:class:`UndoMetadata` instead of the input.
"""

from __future__ import annotations

import datetime as _dt
import difflib
import inspect
import uuid
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypedDict, Unpack, cast, overload

import anyio.to_thread
import jsonschema.validators
from jsonschema.exceptions import SchemaError
from jsonschema.protocols import Validator

from stageflow_otel.core._checks import describe, is_async_callable
from stageflow_otel.core.errors import format_names
from stageflow_otel.core.model import StageArtifact, utc_now

from .errors import SchemaViolation, ToolDefinitionError

if TYPE_CHECKING:
    from stageflow_otel.core.context import StageContext

__all__ = (
    "ToolDefinition",
    "ToolHandler",
    "ToolInput",
    "ToolOptions",
    "ToolOutput",
    "ToolReturn",
    "UndoHandler",
    "UndoMetadata",
    "define_tool",
    "new_action_id",
    "tool",
)


def new_action_id() -> str:
    """Return a fresh action id (a UUID4 string)."""
    return str(uuid.uuid4())


_EMPTY: Mapping[str, Any] = {}


@dataclass(frozen=True, slots=True, kw_only=True)
class ToolInput:
    """One request to run a tool, as its handler receives it.

    The executor fills in ``pipeline_run_id``, ``request_id`` and ``stage`` from the stage
    context, and ``behavior`` from ``execute(..., behavior=...)`` when given there.

    Attributes:
        tool_name: The tool to run.
        payload: The arguments (validated against the tool's ``input_schema``).
        action_id: Unique id of this call; undo records are keyed by it.
        call_id: The LLM's tool call id, when the call came from one.
        behavior: The behaviour (mode) the call runs under, for the behaviour gate.
        pipeline_run_id: The run the call belongs to.
        request_id: The run's request id, if any.
        stage: The stage that made the call.
    """

    tool_name: str
    payload: Mapping[str, Any] = field(default_factory=dict)
    action_id: str = field(default_factory=new_action_id)
    call_id: str | None = None
    behavior: str | None = None
    pipeline_run_id: str | None = None
    request_id: str | None = None
    stage: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """Return the input as a plain dict."""
        return {
            "tool_name": self.tool_name,
            "payload": dict(self.payload),
            "action_id": self.action_id,
            "call_id": self.call_id,
            "behavior": self.behavior,
            "pipeline_run_id": self.pipeline_run_id,
            "request_id": self.request_id,
            "stage": self.stage,
        }


def _artifact(item: StageArtifact | Mapping[str, Any]) -> StageArtifact:
    if isinstance(item, StageArtifact):
        return item
    # The executor replaces the empty type with the tool's artifact_type (or its name).
    return StageArtifact("", dict(item))


@dataclass(frozen=True, slots=True)
class ToolOutput:
    """The result of a tool call.

    Build one with :meth:`ok` or :meth:`fail`.

    Attributes:
        success: Whether the call succeeded.
        data: Result data.
        error: What went wrong, for a failure.
        error_code: The stable code of the failure (a ``ToolError`` code), when known.
        artifacts: Artifacts produced. Artifacts given as mappings get the tool's
            ``artifact_type`` (or its name) as type when the executor returns them.
        undo_metadata: Data the tool's undo handler needs to reverse the call; the executor
            stores it (as :attr:`UndoMetadata.undo_data`) for an undoable tool.
        exception: The exception behind a failure, if any (not compared, not shown in repr).
    """

    success: bool
    data: Mapping[str, Any] = field(default_factory=dict)
    error: str | None = None
    error_code: str | None = None
    artifacts: tuple[StageArtifact, ...] = ()
    undo_metadata: Mapping[str, Any] | None = None
    exception: BaseException | None = field(default=None, compare=False, repr=False)

    @classmethod
    def ok(
        cls,
        data: Mapping[str, Any] | None = None,
        *,
        artifacts: Iterable[StageArtifact | Mapping[str, Any]] = (),
        undo_metadata: Mapping[str, Any] | None = None,
        **kwargs: Any,
    ) -> ToolOutput:
        """A successful output; keyword arguments are merged into ``data``."""
        if kwargs:
            data = {**(data or _EMPTY), **kwargs}
        return cls(
            True,
            {} if data is None else data,
            artifacts=tuple(_artifact(a) for a in artifacts),
            undo_metadata=undo_metadata,
        )

    @classmethod
    def fail(
        cls,
        error: str | BaseException | None = None,
        *,
        data: Mapping[str, Any] | None = None,
        error_code: str | None = None,
    ) -> ToolOutput:
        """A failed output; an exception's ``code`` (if any) becomes ``error_code``."""
        exception = error if isinstance(error, BaseException) else None
        if exception is not None:
            message = str(exception) or type(exception).__name__
            if error_code is None:
                code = getattr(exception, "code", None)
                error_code = code if isinstance(code, str) else None
        else:
            message = "Unknown error" if error is None else str(error)
        return cls(False, data or {}, error=message, error_code=error_code, exception=exception)

    def to_dict(self) -> dict[str, Any]:
        """Return the output as a JSON-friendly dict (e.g. to send back to an LLM)."""
        result: dict[str, Any] = {"success": self.success, "data": dict(self.data)}
        if not self.success:
            result["error"] = self.error
            result["error_code"] = self.error_code
        if self.artifacts:
            result["artifacts"] = [
                {"type": a.type, "payload": dict(a.payload), "timestamp": a.timestamp.isoformat()}
                for a in self.artifacts
            ]
        return result


@dataclass(frozen=True, slots=True)
class UndoMetadata:
    """What the executor stores to undo a call of an undoable tool.

    The record is keyed by ``action_id`` and names its tool by ``tool_name``, the key the
    registry uses. (stageflow-core stored tools by action type and looked undo records up by
    name, so an undo could not find its tool.)

    Attributes:
        action_id: The call to undo.
        tool_name: The tool that ran it.
        undo_data: The handler's ``ToolOutput.undo_metadata``.
        created_at: When the call completed (UTC).
        pipeline_run_id: The run the call belonged to.
        call_id: The LLM's tool call id, if any.
    """

    action_id: str
    tool_name: str
    undo_data: Mapping[str, Any] = field(default_factory=dict)
    created_at: _dt.datetime = field(default_factory=utc_now)
    pipeline_run_id: str | None = None
    call_id: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """Return the record as a JSON-friendly dict."""
        return {
            "action_id": self.action_id,
            "tool_name": self.tool_name,
            "undo_data": dict(self.undo_data),
            "created_at": self.created_at.isoformat(),
            "pipeline_run_id": self.pipeline_run_id,
            "call_id": self.call_id,
        }


ToolReturn = ToolOutput | Mapping[str, Any] | None
"""What a handler may return: a ``ToolOutput``, a mapping (OK with that data) or ``None``."""

ToolHandler = Callable[..., Any]
"""``(input: ToolInput) -> ToolReturn`` or ``(input: ToolInput, ctx: StageContext) ->
ToolReturn``; ``async def`` or plain ``def`` (run in a worker thread)."""

UndoHandler = Callable[..., Any]
"""``(metadata: UndoMetadata)`` or ``(metadata: UndoMetadata, ctx: StageContext)``; ``async
def`` or plain ``def`` (run in a worker thread). Its return value is ignored."""


@dataclass(frozen=True, slots=True)
class _Callable:
    """How to call a handler: awaited or in a thread, with or without the context."""

    fn: Callable[..., Any]
    is_async: bool
    wants_context: bool

    @classmethod
    def of(cls, tool: str, role: str, fn: Callable[..., Any], first: str) -> _Callable:
        if not callable(fn):
            raise ToolDefinitionError(f"tool {tool!r}: {role} {fn!r} is not callable", tool=tool)
        positional = _positional_parameters(fn)
        if positional == 0:
            raise ToolDefinitionError(
                f"tool {tool!r}: {role} {getattr(fn, '__qualname__', fn)!r} takes no positional "
                f"parameter; write it as ({first}) or ({first}, ctx)",
                tool=tool,
            )
        return cls(fn, is_async_callable(fn), positional >= 2)

    async def call(self, first: Any, ctx: StageContext) -> Any:
        """Call the function (in a worker thread if it is sync) and await what it returns."""
        args = (first, ctx) if self.wants_context else (first,)
        if self.is_async:
            return await self.fn(*args)
        result = await anyio.to_thread.run_sync(lambda: self.fn(*args))
        if inspect.isawaitable(result):  # a plain def that returns a coroutine
            result = await result
        return result


def _positional_parameters(fn: Callable[..., Any]) -> int:
    """How many positional arguments ``fn`` accepts (2 for ``*args``); 1 if unknown."""
    try:
        signature = inspect.signature(fn)
    except (TypeError, ValueError):  # some builtins and C callables
        return 1
    count = 0
    for parameter in signature.parameters.values():
        if parameter.kind is inspect.Parameter.VAR_POSITIONAL:
            return max(count, 2)
        if parameter.kind in (
            inspect.Parameter.POSITIONAL_ONLY,
            inspect.Parameter.POSITIONAL_OR_KEYWORD,
        ):
            count += 1
    return count


def _path_key(path: Iterable[str | int]) -> tuple[tuple[int, int, str], ...]:
    # Array indexes sort numerically, before property names.
    return tuple((0, p, "") if isinstance(p, int) else (1, 0, str(p)) for p in path)


@dataclass(frozen=True, slots=True, eq=False)
class ToolDefinition:
    """A tool: its handler and the rules around it.

    The definition is checked when it is built: ``input_schema`` against its metaschema (the
    draft its ``$schema`` names, else Draft 2020-12), the handler's signature, an undo handler
    for an undoable tool, and the type of every option (flags are ``True`` or ``False``,
    behaviours a list of strings); a problem raises :class:`ToolDefinitionError` naming the
    tool and the option.

    Attributes:
        name: Unique tool name (what an LLM calls; the registry's key).
        action_type: The action type the tool handles (a second, unique lookup key).
        handler: The function that does the work (see the module docs for its signature).
        description: What the tool does (sent to LLMs with :meth:`to_openai_tool`).
        input_schema: JSON Schema of the arguments; ``{}`` accepts any object. Validated for
            every call, before approval and before the handler (stageflow-core never
            validated it). ``format`` is an annotation, as the 2020-12 draft specifies.
        allowed_behaviors: Behaviours under which the tool may run; empty means all.
        requires_approval: Whether each call waits for an approval decision first.
        approval_message: What an approver is shown (default: ``Approve <name>?``).
        undoable: Whether successful calls are recorded for :meth:`ToolExecutor.undo_action`.
        undo_handler: Reverses a call, given its :class:`UndoMetadata`.
        artifact_type: The type given to artifacts the handler returns as plain mappings.
    """

    name: str
    action_type: str
    handler: ToolHandler
    description: str = ""
    input_schema: Mapping[str, Any] = field(default_factory=dict)
    allowed_behaviors: tuple[str, ...] = ()
    requires_approval: bool = False
    approval_message: str | None = None
    undoable: bool = False
    undo_handler: UndoHandler | None = None
    artifact_type: str | None = None
    _handler: _Callable = field(init=False, repr=False)
    _undo: _Callable | None = field(init=False, repr=False)
    _validator: Validator | None = field(init=False, repr=False)

    def __post_init__(self) -> None:
        name = self.name
        if not isinstance(name, str) or not name:
            raise ToolDefinitionError(f"a tool name must be a non-empty string, got {name!r}")
        if not isinstance(self.action_type, str) or not self.action_type:
            raise ToolDefinitionError(
                f"tool {name!r}: action_type must be a non-empty string, got {self.action_type!r}",
                tool=name,
            )
        _check_option_types(name, self)
        object.__setattr__(self, "allowed_behaviors", _behaviors(name, self.allowed_behaviors))
        object.__setattr__(self, "_handler", _Callable.of(name, "handler", self.handler, "input"))
        if self.undoable and self.undo_handler is None:
            raise ToolDefinitionError(
                f"tool {name!r} is undoable but has no undo_handler; pass undo_handler=... or "
                "undoable=False",
                tool=name,
            )
        undo = (
            None
            if self.undo_handler is None
            else _Callable.of(name, "undo_handler", self.undo_handler, "metadata")
        )
        object.__setattr__(self, "_undo", undo)
        object.__setattr__(self, "_validator", _make_validator(name, self.input_schema))

    def is_behavior_allowed(self, behavior: str | None) -> bool:
        """Whether the tool may run under ``behavior`` (always, when no behaviours are set)."""
        return not self.allowed_behaviors or behavior in self.allowed_behaviors

    def validate(self, payload: Mapping[str, Any]) -> tuple[SchemaViolation, ...]:
        """Check ``payload`` against ``input_schema``.

        Args:
            payload: The call's arguments.

        Returns:
            Every violation, sorted by the path of the offending value; empty when valid.

        Raises:
            ToolDefinitionError: If the schema cannot be applied (an unresolvable ``$ref``).
        """
        validator = self._validator
        if validator is None:
            return ()
        try:
            errors = list(validator.iter_errors(dict(payload)))
        except Exception as exc:  # e.g. referencing.exceptions.Unresolvable
            raise ToolDefinitionError(
                f"tool {self.name!r}: its input_schema cannot be applied: {exc}", tool=self.name
            ) from exc
        errors.sort(key=lambda e: _path_key(e.absolute_path))
        return tuple(
            SchemaViolation(
                path=e.json_path,
                message=e.message,
                validator=str(e.validator),
                schema_path="/" + "/".join(str(p) for p in e.absolute_schema_path),
            )
            for e in errors
        )

    def to_openai_tool(self) -> dict[str, Any]:
        """The tool as an OpenAI-style function declaration (``{"type": "function", ...}``)."""
        parameters: dict[str, Any] = (
            dict(self.input_schema) if self.input_schema else {"type": "object", "properties": {}}
        )
        return {
            "type": "function",
            "function": {
                "name": self.name,
                "description": self.description,
                "parameters": parameters,
            },
        }

    def to_dict(self) -> dict[str, Any]:
        """The definition without its handlers, as a JSON-friendly dict."""
        return {
            "name": self.name,
            "action_type": self.action_type,
            "description": self.description,
            "input_schema": dict(self.input_schema),
            "allowed_behaviors": list(self.allowed_behaviors),
            "requires_approval": self.requires_approval,
            "approval_message": self.approval_message,
            "undoable": self.undoable,
            "artifact_type": self.artifact_type,
        }


def _behaviors(tool: str, value: object) -> tuple[str, ...]:
    """``allowed_behaviors`` as a tuple of strings; anything else is a definition error."""
    if isinstance(value, str):
        raise ToolDefinitionError(
            f"tool {tool!r}: allowed_behaviors must be a list of behaviours, got the string "
            f"{value!r}; write allowed_behaviors=({value!r},)",
            tool=tool,
        )
    try:
        behaviors = tuple(cast("Iterable[object]", value))
    except TypeError:
        behaviors = None
    if behaviors is None or not all(isinstance(b, str) for b in behaviors):
        raise ToolDefinitionError(
            f"tool {tool!r}: allowed_behaviors must be a list of strings, got {describe(value)}",
            tool=tool,
        )
    return cast("tuple[str, ...]", behaviors)


_OPTION_TYPES: tuple[tuple[str, tuple[type, ...], str], ...] = (
    ("requires_approval", (bool,), "True or False"),
    ("undoable", (bool,), "True or False"),
    ("description", (str,), "a string"),
    ("approval_message", (str, type(None)), "a string or None"),
    ("artifact_type", (str, type(None)), "a string or None"),
)


def _check_option_types(tool: str, definition: ToolDefinition) -> None:
    """Flags are booleans and texts are strings: ``undoable="no"`` must not pass for a setting."""
    for option, types, wanted in _OPTION_TYPES:
        value = getattr(definition, option)
        if not isinstance(value, types):
            raise ToolDefinitionError(
                f"tool {tool!r}: {option} must be {wanted}, got {describe(value)}", tool=tool
            )


def _make_validator(tool: str, schema: Mapping[str, Any]) -> Validator | None:
    if not isinstance(schema, Mapping):
        raise ToolDefinitionError(
            f"tool {tool!r}: input_schema must be a JSON Schema object (a dict), got "
            f"{type(schema).__name__}",
            tool=tool,
        )
    if not schema:
        return None
    document = dict(schema)
    cls = jsonschema.validators.validator_for(
        document, default=jsonschema.validators.Draft202012Validator
    )
    try:
        cls.check_schema(document)
    except SchemaError as exc:
        where = "/" + "/".join(str(p) for p in exc.absolute_path)
        raise ToolDefinitionError(
            f"tool {tool!r}: input_schema is not a valid JSON Schema ({cls.__name__}): "
            f"{exc.message} (at {where} in the schema)",
            tool=tool,
        ) from exc
    return cls(document)


def _describe(fn: Callable[..., Any]) -> str:
    doc = inspect.getdoc(fn) or ""
    return doc.split("\n\n", 1)[0].replace("\n", " ").strip()


class ToolOptions(TypedDict, total=False):
    """The options of a tool, every one optional.

    The keyword arguments of :func:`tool`, :meth:`ToolRegistry.tool
    <stageflow_otel.tools.ToolRegistry.tool>` and :func:`define_tool`; the defaults come from
    the decorated function where it has something to say.

    Attributes:
        name: Tool name (default: the function's name).
        action_type: Action type (default: the name).
        description: Description (default: the docstring's first paragraph).
        input_schema: JSON Schema of the arguments (default: ``{}``, any object).
        allowed_behaviors: Behaviours allowed to use the tool (default: empty, all).
        requires_approval: Whether calls wait for approval (default: ``False``).
        approval_message: What an approver is shown (default: ``Approve <name>?``).
        undoable: Whether calls can be undone (default: ``False``).
        undo_handler: The undo function (required when ``undoable``).
        artifact_type: Type for artifacts returned as mappings (default: the tool's name).
    """

    name: str | None
    action_type: str | None
    description: str | None
    input_schema: Mapping[str, Any] | None
    allowed_behaviors: Iterable[str]
    requires_approval: bool
    approval_message: str | None
    undoable: bool
    undo_handler: UndoHandler | None
    artifact_type: str | None


_OPTIONS = tuple(sorted(ToolOptions.__optional_keys__))


def define_tool(handler: ToolHandler, **options: Unpack[ToolOptions]) -> ToolDefinition:
    """Build a :class:`ToolDefinition` from a function and :class:`ToolOptions`.

    The one place where options become a definition: :func:`tool` and
    :meth:`ToolRegistry.tool <stageflow_otel.tools.ToolRegistry.tool>` both come here, so a
    bad option fails the same way whichever is used.

    Args:
        handler: The function that does the work.
        **options: The tool's options; see :class:`ToolOptions` for each and its default.

    Returns:
        The definition.

    Raises:
        ToolDefinitionError: For an unknown option or a bad value, naming the tool and the
            option.
    """
    tool_name = options.get("name") or getattr(handler, "__name__", None) or ""
    unknown = sorted(set(options).difference(_OPTIONS))
    if unknown:
        close = difflib.get_close_matches(unknown[0], _OPTIONS, n=1)
        hint = (
            f"did you mean {close[0]!r}?" if close else f"the options are {format_names(_OPTIONS)}"
        )
        raise ToolDefinitionError(
            f"tool {tool_name!r}: unknown option {unknown[0]!r}; {hint}", tool=tool_name
        )
    description = options.get("description")
    input_schema = options.get("input_schema")
    return ToolDefinition(
        name=tool_name,
        action_type=options.get("action_type") or tool_name,
        handler=handler,
        description=_describe(handler) if description is None else description,
        input_schema={} if input_schema is None else input_schema,
        # Any iterable: the definition checks it and makes it a tuple.
        allowed_behaviors=cast("tuple[str, ...]", options.get("allowed_behaviors", ())),
        requires_approval=options.get("requires_approval", False),
        approval_message=options.get("approval_message"),
        undoable=options.get("undoable", False),
        undo_handler=options.get("undo_handler"),
        artifact_type=options.get("artifact_type"),
    )


@overload
def tool(handler: ToolHandler, /) -> ToolDefinition: ...
@overload
def tool(**options: Unpack[ToolOptions]) -> Callable[[ToolHandler], ToolDefinition]: ...
def tool(
    handler: ToolHandler | None = None, /, **options: Unpack[ToolOptions]
) -> ToolDefinition | Callable[[ToolHandler], ToolDefinition]:
    """Turn a function into a :class:`ToolDefinition` (not registered anywhere).

    Example::

        @tool(input_schema={"type": "object", "properties": {"q": {"type": "string"}}})
        async def search(input: ToolInput) -> dict[str, object]:
            \"\"\"Search the web.\"\"\"
            return {"hits": await web.search(input.payload["q"])}

        registry = ToolRegistry([search])

    Args:
        handler: The function, when used as a bare ``@tool``.
        **options: The tool's options; see :class:`ToolOptions` for each and its default.

    Returns:
        The definition, or a decorator that makes it.
    """

    def decorate(fn: ToolHandler) -> ToolDefinition:
        return define_tool(fn, **options)

    return decorate(handler) if handler is not None else decorate
