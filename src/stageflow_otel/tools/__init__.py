"""Tools: a registry, an executor with schema validation, behaviour gates, approval and undo.

Engine level: this package depends on the engine (``stageflow_otel.core``), the standard
library, anyio and jsonschema, never on a telemetry library. Telemetry reaches tool calls through
the run hooks' ``around_tool`` seam and the run's event sinks.

Example::

    from stageflow_otel.tools import ToolExecutor, ToolInput, ToolRegistry

    registry = ToolRegistry()

    @registry.tool(input_schema={"type": "object", "required": ["city"],
                                 "properties": {"city": {"type": "string"}}})
    async def weather(input: ToolInput) -> dict[str, object]:
        \"\"\"Current weather of a city.\"\"\"
        return {"city": input.payload["city"], "celsius": 21}

    executor = ToolExecutor(registry)

    async def stage(ctx):
        output = await executor.execute(ToolInput(tool_name="weather",
                                                  payload={"city": "Oslo"}), ctx)
        return dict(output.data)
"""

from __future__ import annotations

from stageflow_otel.core.seams import ToolCall as ToolCall

from .approval import ApprovalDecision as ApprovalDecision
from .approval import ApprovalRequest as ApprovalRequest
from .approval import ApprovalService as ApprovalService
from .approval import ApprovalStatistics as ApprovalStatistics
from .approval import ApprovalStatus as ApprovalStatus
from .calls import ParsedToolCalls as ParsedToolCalls
from .calls import ResolvedToolCall as ResolvedToolCall
from .calls import UnresolvedReason as UnresolvedReason
from .calls import UnresolvedToolCall as UnresolvedToolCall
from .definitions import ToolDefinition as ToolDefinition
from .definitions import ToolHandler as ToolHandler
from .definitions import ToolInput as ToolInput
from .definitions import ToolOptions as ToolOptions
from .definitions import ToolOutput as ToolOutput
from .definitions import ToolReturn as ToolReturn
from .definitions import UndoHandler as UndoHandler
from .definitions import UndoMetadata as UndoMetadata
from .definitions import define_tool as define_tool
from .definitions import new_action_id as new_action_id
from .definitions import tool as tool
from .errors import ApprovalAlreadyDecidedError as ApprovalAlreadyDecidedError
from .errors import ApprovalRequestNotFoundError as ApprovalRequestNotFoundError
from .errors import SchemaViolation as SchemaViolation
from .errors import ToolApprovalDeniedError as ToolApprovalDeniedError
from .errors import ToolApprovalTimeoutError as ToolApprovalTimeoutError
from .errors import ToolDefinitionError as ToolDefinitionError
from .errors import ToolDeniedError as ToolDeniedError
from .errors import ToolError as ToolError
from .errors import ToolExecutionError as ToolExecutionError
from .errors import ToolInputValidationError as ToolInputValidationError
from .errors import ToolNotFoundError as ToolNotFoundError
from .errors import ToolUndoError as ToolUndoError
from .executor import ToolExecutor as ToolExecutor
from .executor import ToolProceed as ToolProceed
from .registry import ToolFactory as ToolFactory
from .registry import ToolRegistry as ToolRegistry
from .undo import UndoStatistics as UndoStatistics
from .undo import UndoStore as UndoStore

__all__ = (
    "ApprovalAlreadyDecidedError",
    "ApprovalDecision",
    "ApprovalRequest",
    "ApprovalRequestNotFoundError",
    "ApprovalService",
    "ApprovalStatistics",
    "ApprovalStatus",
    "ParsedToolCalls",
    "ResolvedToolCall",
    "SchemaViolation",
    "ToolApprovalDeniedError",
    "ToolApprovalTimeoutError",
    "ToolCall",
    "ToolDefinition",
    "ToolDefinitionError",
    "ToolDeniedError",
    "ToolError",
    "ToolExecutionError",
    "ToolExecutor",
    "ToolFactory",
    "ToolHandler",
    "ToolInput",
    "ToolInputValidationError",
    "ToolNotFoundError",
    "ToolOptions",
    "ToolOutput",
    "ToolProceed",
    "ToolRegistry",
    "ToolReturn",
    "ToolUndoError",
    "UndoHandler",
    "UndoMetadata",
    "UndoStatistics",
    "UndoStore",
    "UnresolvedReason",
    "UnresolvedToolCall",
    "define_tool",
    "new_action_id",
    "tool",
)
