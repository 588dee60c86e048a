"""Running tool calls from a stage: gates, schema validation, approval, handler, undo, events.

:meth:`ToolExecutor.execute` runs one call in this order::

    tool.invoked
    lookup (by name)            -> ToolNotFoundError            tool.failed
    behaviour gate              -> ToolDeniedError              tool.denied  reason=behavior_not_allowed
    input_schema validation     -> ToolInputValidationError     tool.failed  (handler not called)
    approval, if required       approval.requested, approval.decided
                                -> ToolApprovalDeniedError      tool.denied  reason=approval_denied|approval_cancelled
                                -> ToolApprovalTimeoutError     tool.denied  reason=approval_timeout
    tool.started
    handler                     -> ToolExecutionError           tool.failed
    undo record, if undoable
    tool.completed

Every ``tool.invoked`` is followed by exactly one of ``tool.completed``, ``tool.failed`` and
``tool.denied`` (a cancelled call ends with ``tool.failed`` and ``reason: "cancelled"``), and
every ``approval.requested`` by one ``approval.decided``. Events go to the sinks of the run the
stage belongs to, through ``ctx.try_emit_event`` (which adds the stage, run ids and timestamp).

**Raise or return.** :meth:`ToolExecutor.execute` returns only successful outputs and raises a
:class:`ToolError` for every failure, a handler that returns ``ToolOutput.fail(...)`` included
(``ToolExecutionError.output`` holds what it returned). :meth:`ToolExecutor.try_execute` never
raises a ``ToolError``: it returns the failure as a ``ToolOutput`` with ``success=False``,
``error``, ``error_code`` and ``exception`` (the handler's own failed output is returned as is),
which suits LLM loops that send every result back to the model. Cancellation always propagates.

**Telemetry seam.** Each call runs inside the ``around_tool(call, proceed)`` method of every run
hook that has one (first hook outermost); see
:meth:`~stageflow_otel.core.seams.RunHook.around_tool`.

**Changes from stageflow-core.** Tool events go to the calling run's sinks (stageflow-core sent
them to a process-global sink); ``input_schema`` is enforced (stageflow-core never validated
it); tools are registered by name and undo records name their tool, so ``undo_action`` finds
it (stageflow-core keyed tools by action type and looked undo up by name). Event payloads name
the tool ``tool`` (stageflow-core: ``tool_name``).
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from stageflow_otel.core._checks import check_seconds, describe
from stageflow_otel.core.errors import StageCancellationRequested, qualified_name
from stageflow_otel.core.model import StageArtifact
from stageflow_otel.core.seams import RunHook, ToolCall, compose

from .approval import ApprovalService
from .calls import ResolvedToolCall
from .definitions import ToolDefinition, ToolInput, ToolOutput, UndoMetadata
from .errors import (
    ToolApprovalDeniedError,
    ToolApprovalTimeoutError,
    ToolDeniedError,
    ToolError,
    ToolExecutionError,
    ToolInputValidationError,
    ToolNotFoundError,
    ToolUndoError,
)
from .registry import ToolRegistry
from .undo import UndoStore

if TYPE_CHECKING:
    from stageflow_otel.core.context import StageContext

__all__ = ("ToolExecutor", "ToolProceed")

ToolProceed = Callable[[ToolCall], Awaitable[ToolOutput]]
"""What a run hook's ``around_tool`` awaits: the rest of the hooks and the call itself."""


def _ms_since(start: float) -> float:
    return round((time.perf_counter() - start) * 1000.0, 3)


class ToolExecutor:
    """Runs tool calls for stages.

    Example::

        registry = ToolRegistry([search, delete_file])
        executor = ToolExecutor(registry, approval_service=approvals)

        async def act(ctx: StageContext) -> dict[str, object]:
            resolved, unresolved = registry.parse_and_resolve(ctx.data["tool_calls"])
            outputs = [await executor.try_execute(call, ctx) for call in resolved]
            return {"results": [o.to_dict() for o in outputs]}

    Args:
        registry: Where tools are looked up (by name).
        approval_service: Decides approvals; default: a new in-memory
            :class:`ApprovalService`, reachable as :attr:`approval_service`.
        undo_store: Keeps undo records; default: a new in-memory :class:`UndoStore`,
            reachable as :attr:`undo_store`.
        approval_timeout: Seconds a call waits for an approval decision.
        undo_ttl: Seconds an undo record lives (given to the store with each record).
    """

    def __init__(
        self,
        registry: ToolRegistry,
        *,
        approval_service: ApprovalService | None = None,
        undo_store: UndoStore | None = None,
        approval_timeout: float = 60.0,
        undo_ttl: float = 3600.0,
    ) -> None:
        owner = "ToolExecutor"
        if not isinstance(registry, ToolRegistry):
            raise TypeError(f"{owner}: registry must be a ToolRegistry, got {describe(registry)}")
        for arg, value, cls in (
            ("approval_service", approval_service, ApprovalService),
            ("undo_store", undo_store, UndoStore),
        ):
            if value is not None and not isinstance(value, cls):
                raise TypeError(
                    f"{owner}: {arg} must be a {cls.__name__} or None, got {describe(value)}"
                )
        try:
            check_seconds("approval_timeout", approval_timeout, allow_zero=True, allow_inf=True)
            check_seconds("undo_ttl", undo_ttl, allow_inf=True)
        except (TypeError, ValueError) as exc:
            raise type(exc)(f"{owner}: {exc}") from None
        self.registry = registry
        self.approval_service = (
            ApprovalService(default_timeout=approval_timeout)
            if approval_service is None
            else approval_service
        )
        self.undo_store = UndoStore(default_ttl=undo_ttl) if undo_store is None else undo_store
        self.approval_timeout = approval_timeout
        self.undo_ttl = undo_ttl
        self._undoing: set[str] = set()

    # -- execute --------------------------------------------------------------------------

    async def execute(
        self,
        call: ToolInput | ResolvedToolCall,
        ctx: StageContext,
        *,
        behavior: str | None = None,
    ) -> ToolOutput:
        """Run one tool call and return its successful output.

        Args:
            call: A :class:`ToolInput`, or a call resolved by
                :meth:`ToolRegistry.parse_and_resolve`.
            ctx: The calling stage's context: events go to its run, its run's hooks wrap
                the call, and a handler taking ``(input, ctx)`` receives it.
            behavior: The behaviour for the gate; overrides ``call.behavior``.

        Returns:
            The handler's output (``success`` is true).

        Raises:
            ToolNotFoundError: No such tool.
            ToolDeniedError: The behaviour gate refused.
            ToolInputValidationError: The arguments violate ``input_schema``.
            ToolApprovalDeniedError: Approval was denied or cancelled.
            ToolApprovalTimeoutError: No approval decision in time.
            ToolExecutionError: The handler raised, returned a failure or an unusable value.
            ToolDefinitionError: The tool's lazy factory failed or its schema cannot be used.
        """
        tool_input = self._prepare(call, ctx, behavior)
        tool_call = ToolCall(
            tool=tool_input.tool_name,
            call_id=tool_input.call_id,
            action_id=tool_input.action_id,
            action_type=self.registry.action_type_of(tool_input.tool_name),
            arguments=tool_input.payload,
            behavior=tool_input.behavior,
            stage=ctx.stage_name,
            pipeline=ctx.pipeline_name,
            run_id=ctx.pipeline_run_id,
            context=ctx,
        )

        async def run_call(_: ToolCall) -> ToolOutput:
            return await self._run(tool_input, ctx)

        layers = [
            hook.around_tool
            for hook in ctx.run_hooks
            if getattr(type(hook), "around_tool", _NO_AROUND_TOOL) is not _NO_AROUND_TOOL
        ]
        output: ToolOutput = await compose(layers, run_call)(tool_call)
        return output

    async def try_execute(
        self,
        call: ToolInput | ResolvedToolCall,
        ctx: StageContext,
        *,
        behavior: str | None = None,
    ) -> ToolOutput:
        """Like :meth:`execute`, but failures come back as a failed :class:`ToolOutput`.

        Returns:
            The handler's output (successful or, if it returned one, failed), or
            ``ToolOutput.fail`` with the ``ToolError``'s message, ``code`` and the error as
            ``exception``. Cancellation still propagates.
        """
        try:
            return await self.execute(call, ctx, behavior=behavior)
        except ToolExecutionError as exc:
            if exc.output is not None:
                return exc.output
            return ToolOutput.fail(exc)
        except ToolError as exc:
            return ToolOutput.fail(exc)

    def _prepare(
        self, call: ToolInput | ResolvedToolCall, ctx: StageContext, behavior: str | None
    ) -> ToolInput:
        if isinstance(call, ResolvedToolCall):
            tool_input = call.to_input()
        elif isinstance(call, ToolInput):
            tool_input = call
        else:
            raise TypeError(
                f"execute() takes a ToolInput or a ResolvedToolCall, got {type(call).__name__}; "
                "resolve LLM tool calls with registry.parse_and_resolve(...) first"
            )
        return replace(
            tool_input,
            behavior=tool_input.behavior if behavior is None else behavior,
            pipeline_run_id=ctx.pipeline_run_id,
            request_id=ctx.identity.request_id,
            stage=ctx.stage_name,
        )

    async def _run(self, tool_input: ToolInput, ctx: StageContext) -> ToolOutput:
        """The call itself, inside the hooks: every step, and the events that tell of them."""
        name = tool_input.tool_name
        base: dict[str, Any] = {
            "tool": name,
            "action_id": tool_input.action_id,
            "call_id": tool_input.call_id,
        }
        started = time.perf_counter()
        invoked = dict(base)
        if tool_input.behavior is not None:
            invoked["behavior"] = tool_input.behavior
        ctx.try_emit_event("tool.invoked", invoked)
        undo_stored = False
        try:
            definition = self.registry.get(name)
            if definition is None:
                raise ToolNotFoundError(
                    name,
                    available=self.registry.names(),
                    action_id=tool_input.action_id,
                    call_id=tool_input.call_id,
                )
            if not definition.is_behavior_allowed(tool_input.behavior):
                raise ToolDeniedError(
                    name,
                    behavior=tool_input.behavior,
                    allowed_behaviors=definition.allowed_behaviors,
                    action_id=tool_input.action_id,
                    call_id=tool_input.call_id,
                )
            violations = definition.validate(tool_input.payload)
            if violations:
                raise ToolInputValidationError(
                    name, violations, action_id=tool_input.action_id, call_id=tool_input.call_id
                )
            if definition.requires_approval:
                await self._approve(definition, tool_input, ctx, base)
            ctx.try_emit_event("tool.started", {**base, "action_type": definition.action_type})
            output = await self._call_handler(definition, tool_input, ctx)
            if definition.undoable:
                self.undo_store.store(
                    UndoMetadata(
                        action_id=tool_input.action_id,
                        tool_name=definition.name,
                        undo_data=output.undo_metadata or {},
                        pipeline_run_id=tool_input.pipeline_run_id,
                        call_id=tool_input.call_id,
                    ),
                    ttl=self.undo_ttl,
                )
                undo_stored = True
        except ToolError as exc:
            event, data = _outcome_event(exc)
            ctx.try_emit_event(event, {**base, **data, "duration_ms": _ms_since(started)})
            raise
        except StageCancellationRequested:
            ctx.try_emit_event(
                "tool.failed",
                {
                    **base,
                    "error": "cancelled",
                    "error_code": StageCancellationRequested.code,
                    "reason": "cancelled",
                    "duration_ms": _ms_since(started),
                },
            )
            raise
        except Exception as exc:
            # Not the handler (that becomes a ToolExecutionError): approval, validation or undo
            # machinery failed. Report what really happened.
            ctx.try_emit_event(
                "tool.failed",
                {
                    **base,
                    "error": str(exc) or type(exc).__name__,
                    "error_code": "TOOL_INTERNAL_ERROR",
                    "error_type": qualified_name(exc),
                    "duration_ms": _ms_since(started),
                },
            )
            raise
        except BaseException as exc:
            # Cancellation, or a handler's StageCancellationRequested: end the call's story.
            code = getattr(exc, "code", None)
            ctx.try_emit_event(
                "tool.failed",
                {
                    **base,
                    "error": "cancelled",
                    "error_code": code if isinstance(code, str) else "CANCELLED",
                    "reason": "cancelled",
                    "duration_ms": _ms_since(started),
                },
            )
            raise
        ctx.try_emit_event(
            "tool.completed",
            {
                **base,
                "duration_ms": _ms_since(started),
                "artifacts_count": len(output.artifacts),
                "undoable": undo_stored,
            },
        )
        return output

    async def _approve(
        self,
        definition: ToolDefinition,
        tool_input: ToolInput,
        ctx: StageContext,
        base: Mapping[str, Any],
    ) -> None:
        service = self.approval_service
        message = definition.approval_message or f"Approve {definition.name}?"
        request_id = service.request_approval(
            tool=definition.name,
            action_id=tool_input.action_id,
            message=message,
            call_id=tool_input.call_id,
            pipeline_run_id=tool_input.pipeline_run_id,
            stage=tool_input.stage,
        )
        ctx.try_emit_event(
            "approval.requested", {**base, "request_id": request_id, "approval_message": message}
        )
        try:
            decision = await service.await_decision(request_id, timeout=self.approval_timeout)
        except ToolApprovalTimeoutError:
            ctx.try_emit_event(
                "approval.decided",
                {
                    **base,
                    "request_id": request_id,
                    "status": "expired",
                    "granted": False,
                    "reason": "approval_timeout",
                },
            )
            raise
        except BaseException:
            # The call is being cancelled: withdraw the request so that no one decides it.
            service.cancel(request_id, reason="call cancelled")
            ctx.try_emit_event(
                "approval.decided",
                {
                    **base,
                    "request_id": request_id,
                    "status": "cancelled",
                    "granted": False,
                    "reason": "call cancelled",
                },
            )
            raise
        decided: dict[str, Any] = {
            **base,
            "request_id": request_id,
            "status": decision.status.value,
            "granted": decision.granted,
        }
        if decision.decided_by is not None:
            decided["decided_by"] = decision.decided_by
        if decision.reason is not None:
            decided["reason"] = decision.reason
        ctx.try_emit_event("approval.decided", decided)
        if not decision.granted:
            raise ToolApprovalDeniedError(
                definition.name,
                request_id=request_id,
                status=decision.status.value,
                decided_by=decision.decided_by,
                reason=decision.reason,
                action_id=tool_input.action_id,
                call_id=tool_input.call_id,
            )

    async def _call_handler(
        self, definition: ToolDefinition, tool_input: ToolInput, ctx: StageContext
    ) -> ToolOutput:
        name = definition.name
        try:
            result = await definition._handler.call(tool_input, ctx)
        except StageCancellationRequested:
            raise
        except Exception as exc:  # cancellation is a BaseException and passes through
            raise ToolExecutionError(
                name,
                error=f"{type(exc).__name__}: {exc}",
                error_type=qualified_name(exc),
                action_id=tool_input.action_id,
                call_id=tool_input.call_id,
            ) from exc
        if result is None:
            output = ToolOutput.ok()
        elif isinstance(result, ToolOutput):
            output = result
        elif isinstance(result, Mapping):
            output = ToolOutput.ok(result)
        else:
            raise ToolExecutionError(
                name,
                error=f"its handler returned {type(result).__name__}; return a ToolOutput, a "
                "dict (the output data) or None",
                action_id=tool_input.action_id,
                call_id=tool_input.call_id,
            )
        if any(not a.type for a in output.artifacts):
            kind = definition.artifact_type or name
            output = replace(
                output,
                artifacts=tuple(
                    a if a.type else StageArtifact(kind, a.payload, a.timestamp)
                    for a in output.artifacts
                ),
            )
        if not output.success:
            raise ToolExecutionError(
                name,
                error=output.error or "Unknown error",
                output=output,
                action_id=tool_input.action_id,
                call_id=tool_input.call_id,
            )
        return output

    # -- undo -----------------------------------------------------------------------------

    async def undo_action(self, action_id: str, ctx: StageContext) -> UndoMetadata:
        """Undo a call of an undoable tool, by its action id.

        The record names its tool by name, the key tools are registered under. A record is
        used once: it is dropped when the undo succeeds and kept when the undo handler fails
        (so the undo can be retried until the record expires). Emits ``tool.undone`` or
        ``tool.undo_failed`` to ``ctx``'s run.

        Args:
            action_id: The ``action_id`` of the call to undo.
            ctx: The calling stage's context (events; an undo handler taking
                ``(metadata, ctx)`` receives it).

        Returns:
            The undo record that was acted on.

        Raises:
            ToolUndoError: With a ``reason``: ``unknown_action``, ``expired``,
                ``in_progress``, ``tool_not_found``, ``no_undo_handler`` or
                ``handler_failed`` (the handler's exception as ``__cause__``).
        """
        started = time.perf_counter()
        metadata: UndoMetadata | None = None
        try:
            if action_id in self._undoing:
                raise ToolUndoError(
                    action_id, reason="in_progress", detail="it is being undone right now"
                )
            metadata = self.undo_store.require(action_id)
            tool_name = metadata.tool_name
            definition = self.registry.get(tool_name)
            if definition is None:
                raise ToolUndoError(
                    action_id,
                    reason="tool_not_found",
                    tool=tool_name,
                    detail=f"no tool named {tool_name!r} is registered any more",
                )
            undo = definition._undo
            if undo is None:
                raise ToolUndoError(
                    action_id,
                    reason="no_undo_handler",
                    tool=tool_name,
                    detail="the tool has no undo_handler",
                )
            self._undoing.add(action_id)
            try:
                await undo.call(metadata, ctx)
            except StageCancellationRequested:
                raise
            except Exception as exc:  # cancellation is a BaseException and passes through
                raise ToolUndoError(
                    action_id,
                    reason="handler_failed",
                    tool=tool_name,
                    detail=f"its undo handler raised {type(exc).__name__}: {exc}",
                ) from exc
            finally:
                self._undoing.discard(action_id)
            self.undo_store.delete(action_id)
        except ToolUndoError as exc:
            ctx.try_emit_event(
                "tool.undo_failed",
                {
                    "tool": exc.tool,
                    "action_id": action_id,
                    "call_id": None if metadata is None else metadata.call_id,
                    "error": exc.message,
                    "error_code": exc.code,
                    "reason": exc.reason,
                    "duration_ms": _ms_since(started),
                },
            )
            raise
        ctx.try_emit_event(
            "tool.undone",
            {
                "tool": metadata.tool_name,
                "action_id": action_id,
                "call_id": metadata.call_id,
                "duration_ms": _ms_since(started),
            },
        )
        return metadata


def _outcome_event(exc: ToolError) -> tuple[str, dict[str, Any]]:
    """The terminal event of a failed call, and its fields."""
    data: dict[str, Any] = {"error": exc.message, "error_code": exc.code}
    if isinstance(exc, ToolApprovalDeniedError):
        if isinstance(exc, ToolApprovalTimeoutError):
            data["reason"] = "approval_timeout"
        elif exc.status == "cancelled":
            data["reason"] = "approval_cancelled"
        else:
            data["reason"] = "approval_denied"
        data["request_id"] = exc.request_id
        return "tool.denied", data
    if isinstance(exc, ToolDeniedError):
        data["reason"] = exc.reason
        data["behavior"] = exc.behavior
        data["allowed_behaviors"] = list(exc.allowed_behaviors)
        return "tool.denied", data
    if isinstance(exc, ToolInputValidationError):
        # Paths and keywords only: the messages may quote the (user) values.
        data["violations"] = [{"path": v.path, "validator": v.validator} for v in exc.violations]
    elif isinstance(exc, ToolExecutionError) and exc.error_type is not None:
        data["error_type"] = exc.error_type
    return "tool.failed", data


_NO_AROUND_TOOL = RunHook.around_tool
