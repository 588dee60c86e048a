"""The errors of the tools subsystem.

Every error derives from :class:`ToolError` (itself a :class:`StageflowError`) and has a stable
``code`` and a ``to_dict()``::

    ToolError(StageflowError)                                  TOOL_ERROR
    ├── ToolDefinitionError(ToolError, ValueError)             TOOL_DEFINITION_INVALID
    ├── ToolNotFoundError(ToolError, LookupError)              TOOL_NOT_FOUND
    ├── ToolDeniedError                                        TOOL_DENIED (behaviour gate)
    ├── ToolInputValidationError(ToolError, ValueError)        TOOL_INPUT_INVALID (.violations)
    ├── ToolApprovalDeniedError                                TOOL_APPROVAL_DENIED
    │   └── ToolApprovalTimeoutError(..., TimeoutError)        TOOL_APPROVAL_TIMEOUT
    ├── ToolExecutionError                                     TOOL_EXECUTION_FAILED (original as __cause__)
    ├── ToolUndoError                                          TOOL_UNDO_FAILED (.reason)
    ├── ApprovalRequestNotFoundError(ToolError, LookupError)   APPROVAL_NOT_FOUND
    └── ApprovalAlreadyDecidedError                            APPROVAL_ALREADY_DECIDED

A timed-out approval is a denied approval (``except ToolApprovalDeniedError`` catches both), as
in stageflow-core.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from stageflow_otel.core.errors import StageflowError, format_names

if TYPE_CHECKING:
    from .definitions import ToolOutput

__all__ = (
    "ApprovalAlreadyDecidedError",
    "ApprovalRequestNotFoundError",
    "SchemaViolation",
    "ToolApprovalDeniedError",
    "ToolApprovalTimeoutError",
    "ToolDefinitionError",
    "ToolDeniedError",
    "ToolError",
    "ToolExecutionError",
    "ToolInputValidationError",
    "ToolNotFoundError",
    "ToolUndoError",
)


class ToolError(StageflowError):
    """Root of the tool errors.

    Attributes:
        tool: The tool's name, when known.
        action_id: The id of the tool call (the action), when known.
        call_id: The LLM's tool call id, when the call came from one.
    """

    code = "TOOL_ERROR"

    def __init__(
        self,
        message: str,
        *,
        tool: str | None = None,
        action_id: str | None = None,
        call_id: str | None = None,
        code: str | None = None,
    ) -> None:
        self.tool = tool
        self.action_id = action_id
        self.call_id = call_id
        super().__init__(message, code=code)

    def __str__(self) -> str:
        # LookupError and OSError subclasses would otherwise render their args differently.
        return self.message

    def to_dict(self) -> dict[str, Any]:
        """Return a JSON-serialisable summary of the error."""
        return {
            **super().to_dict(),
            "tool": self.tool,
            "action_id": self.action_id,
            "call_id": self.call_id,
        }


class ToolDefinitionError(ToolError, ValueError):
    """A tool definition or registration is invalid (raised when it is defined or registered).

    Covers an invalid ``input_schema`` (checked with the schema's own metaschema), a handler
    with an unusable signature, a duplicate name or action type, and a lazy factory that fails.
    """

    code = "TOOL_DEFINITION_INVALID"


class ToolNotFoundError(ToolError, LookupError):
    """No tool of that name (or action type) is registered.

    Attributes:
        available: The names that are registered.
    """

    code = "TOOL_NOT_FOUND"

    def __init__(
        self,
        tool: str,
        *,
        available: Iterable[str] = (),
        action_id: str | None = None,
        call_id: str | None = None,
    ) -> None:
        self.available = tuple(sorted(available))
        close = difflib.get_close_matches(tool, self.available, n=1)
        names = format_names(self.available) or "none"
        hint = (
            f"did you mean {close[0]!r}?"
            if close
            else "register it on the ToolRegistry given to the ToolExecutor"
        )
        super().__init__(
            f"no tool named {tool!r} is registered (tools: {names}); {hint}",
            tool=tool,
            action_id=action_id,
            call_id=call_id,
        )

    def to_dict(self) -> dict[str, Any]:
        """Return a JSON-serialisable summary of the error."""
        return {**super().to_dict(), "available": list(self.available)}


class ToolDeniedError(ToolError):
    """The behaviour gate refused the call: the tool is not allowed in the current behaviour.

    Attributes:
        behavior: The behaviour the call ran under (``None`` when none was given).
        allowed_behaviors: The behaviours the tool allows.
        reason: Always ``"behavior_not_allowed"``.
    """

    code = "TOOL_DENIED"
    reason = "behavior_not_allowed"

    def __init__(
        self,
        tool: str,
        *,
        behavior: str | None,
        allowed_behaviors: Sequence[str],
        action_id: str | None = None,
        call_id: str | None = None,
    ) -> None:
        self.behavior = behavior
        self.allowed_behaviors = tuple(allowed_behaviors)
        current = "no behavior" if behavior is None else f"behavior {behavior!r}"
        super().__init__(
            f"tool {tool!r} is not allowed under {current} (allowed: "
            f"{format_names(self.allowed_behaviors)}); run it with behavior=<one of those> or "
            "add the behavior to the tool's allowed_behaviors",
            tool=tool,
            action_id=action_id,
            call_id=call_id,
        )

    def to_dict(self) -> dict[str, Any]:
        """Return a JSON-serialisable summary of the error."""
        return {
            **super().to_dict(),
            "behavior": self.behavior,
            "allowed_behaviors": list(self.allowed_behaviors),
            "reason": self.reason,
        }


@dataclass(frozen=True, slots=True)
class SchemaViolation:
    """One way a tool's input fails its ``input_schema``.

    Attributes:
        path: JSON path of the offending value (``$`` is the whole input, ``$.items[0]`` ...).
        message: The validator's message (it may quote the offending value).
        validator: The schema keyword that failed (``type``, ``required``, ``minimum`` ...).
        schema_path: Where that keyword sits in the schema, as a JSON pointer.
    """

    path: str
    message: str
    validator: str
    schema_path: str

    def to_dict(self) -> dict[str, str]:
        """Return the violation as a plain dict."""
        return {
            "path": self.path,
            "message": self.message,
            "validator": self.validator,
            "schema_path": self.schema_path,
        }


class ToolInputValidationError(ToolError, ValueError):
    """The call's arguments do not match the tool's ``input_schema``; the handler did not run.

    Attributes:
        violations: Every violation found, sorted by path.
    """

    code = "TOOL_INPUT_INVALID"

    def __init__(
        self,
        tool: str,
        violations: Iterable[SchemaViolation],
        *,
        action_id: str | None = None,
        call_id: str | None = None,
    ) -> None:
        self.violations = tuple(violations)
        count = len(self.violations)
        details = "; ".join(f"at {v.path}: {v.message}" for v in self.violations)
        super().__init__(
            f"input for tool {tool!r} does not match its input_schema "
            f"({count} error{'s' if count != 1 else ''}): {details}",
            tool=tool,
            action_id=action_id,
            call_id=call_id,
        )

    @property
    def paths(self) -> tuple[str, ...]:
        """The JSON paths of the violations, in order."""
        return tuple(v.path for v in self.violations)

    def to_dict(self) -> dict[str, Any]:
        """Return a JSON-serialisable summary of the error."""
        return {**super().to_dict(), "violations": [v.to_dict() for v in self.violations]}


class ToolApprovalDeniedError(ToolError):
    """A required approval was denied (or its request was cancelled); the handler did not run.

    Attributes:
        request_id: The approval request.
        status: How the request ended (``denied``, ``cancelled``, or ``expired`` for the
            timeout subclass).
        decided_by: Who decided, if recorded.
        reason: Why, if recorded.
    """

    code = "TOOL_APPROVAL_DENIED"

    def __init__(
        self,
        tool: str,
        *,
        request_id: str,
        status: str = "denied",
        decided_by: str | None = None,
        reason: str | None = None,
        action_id: str | None = None,
        call_id: str | None = None,
        message: str | None = None,
    ) -> None:
        self.request_id = request_id
        self.status = status
        self.decided_by = decided_by
        self.reason = reason
        if message is None:
            who = f" by {decided_by!r}" if decided_by else ""
            why = f": {reason}" if reason else ""
            verb = "was cancelled" if status == "cancelled" else f"was denied{who}"
            message = f"approval for tool {tool!r} (request {request_id}) {verb}{why}"
        super().__init__(message, tool=tool, action_id=action_id, call_id=call_id)

    def to_dict(self) -> dict[str, Any]:
        """Return a JSON-serialisable summary of the error."""
        return {
            **super().to_dict(),
            "request_id": self.request_id,
            "status": self.status,
            "decided_by": self.decided_by,
            "reason": self.reason,
        }


class ToolApprovalTimeoutError(ToolApprovalDeniedError, TimeoutError):
    """No approval decision arrived in time; the request is now ``expired``.

    Attributes:
        timeout_s: How long the caller waited.
    """

    code = "TOOL_APPROVAL_TIMEOUT"

    def __init__(
        self,
        tool: str,
        *,
        request_id: str,
        timeout_s: float,
        action_id: str | None = None,
        call_id: str | None = None,
    ) -> None:
        self.timeout_s = timeout_s
        super().__init__(
            tool,
            request_id=request_id,
            status="expired",
            reason="approval_timeout",
            action_id=action_id,
            call_id=call_id,
            message=(
                f"no approval decision for tool {tool!r} (request {request_id}) within "
                f"{timeout_s:g}s; the request is now expired (raise approval_timeout, or decide "
                "sooner)"
            ),
        )

    def to_dict(self) -> dict[str, Any]:
        """Return a JSON-serialisable summary of the error."""
        return {**super().to_dict(), "timeout_s": self.timeout_s}


class ToolExecutionError(ToolError):
    """The handler failed: it raised, returned a failed output, or returned an unusable value.

    An exception of the handler is the ``__cause__``. A usable value is a ``ToolOutput``, a
    mapping (its data) or ``None``.

    Attributes:
        output: The failed :class:`ToolOutput` when the handler returned one, else ``None``.
        error_type: Qualified class name of the handler's exception, if it raised.
    """

    code = "TOOL_EXECUTION_FAILED"

    def __init__(
        self,
        tool: str,
        *,
        error: str,
        output: ToolOutput | None = None,
        error_type: str | None = None,
        action_id: str | None = None,
        call_id: str | None = None,
    ) -> None:
        self.output = output
        self.error_type = error_type
        super().__init__(
            f"tool {tool!r} failed: {error}", tool=tool, action_id=action_id, call_id=call_id
        )

    def to_dict(self) -> dict[str, Any]:
        """Return a JSON-serialisable summary of the error."""
        return {**super().to_dict(), "error_type": self.error_type}


class ToolUndoError(ToolError):
    """An action could not be undone.

    Attributes:
        reason: ``unknown_action`` (never recorded, already undone, or cleaned up),
            ``expired`` (its undo TTL passed), ``in_progress`` (being undone right now),
            ``tool_not_found``, ``no_undo_handler``, or ``handler_failed`` (original as
            ``__cause__``; the undo record is kept so the undo can be retried).
    """

    code = "TOOL_UNDO_FAILED"

    def __init__(
        self, action_id: str, *, reason: str, detail: str, tool: str | None = None
    ) -> None:
        self.reason = reason
        subject = f"action {action_id}" + (f" of tool {tool!r}" if tool else "")
        super().__init__(f"cannot undo {subject}: {detail}", tool=tool, action_id=action_id)

    def to_dict(self) -> dict[str, Any]:
        """Return a JSON-serialisable summary of the error."""
        return {**super().to_dict(), "reason": self.reason}


class ApprovalRequestNotFoundError(ToolError, LookupError):
    """The approval service has no request with that id (never made, or forgotten)."""

    code = "APPROVAL_NOT_FOUND"

    def __init__(self, request_id: str) -> None:
        self.request_id = request_id
        super().__init__(f"no approval request {request_id!r} (never created, or forgotten)")


class ApprovalAlreadyDecidedError(ToolError):
    """A decision was recorded for a request that is no longer pending.

    Attributes:
        request_id: The request.
        status: Its status (``approved``, ``denied``, ``expired`` or ``cancelled``).
    """

    code = "APPROVAL_ALREADY_DECIDED"

    def __init__(self, request_id: str, *, status: str, tool: str | None = None) -> None:
        self.request_id = request_id
        self.status = status
        super().__init__(
            f"approval request {request_id} is already {status}; a decision can only be "
            "recorded while it is pending",
            tool=tool,
        )
