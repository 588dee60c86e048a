"""Span attribute names of the telemetry contract (TELEMETRY.md), in one place."""

from __future__ import annotations

from typing import Final

PIPELINE_NAME: Final = "stageflow.pipeline.name"
PIPELINE_SOURCE: Final = "stageflow.pipeline.source"
RUN_ID: Final = "stageflow.run.id"
REQUEST_ID: Final = "stageflow.request.id"
SESSION_ID: Final = "stageflow.session.id"
USER_ID: Final = "stageflow.user.id"
ORG_ID: Final = "stageflow.org.id"
RUN_STATUS: Final = "stageflow.run.status"
RUN_STAGE_COUNT: Final = "stageflow.run.stage_count"
RUN_FAILED_STAGE: Final = "stageflow.run.failed_stage"
STAGE_NAME: Final = "stageflow.stage.name"
STAGE_KIND: Final = "stageflow.stage.kind"
STAGE_STATUS: Final = "stageflow.stage.status"
STAGE_ATTEMPT: Final = "stageflow.stage.attempt"
STAGE_DEPENDENCIES: Final = "stageflow.stage.dependencies"
STAGE_QUEUE_WAIT: Final = "stageflow.stage.queue_wait_s"
STAGE_OUTPUT_KEYS: Final = "stageflow.stage.output.keys"
STAGE_OUTPUT_PREFIX: Final = "stageflow.stage.output.data."
STAGE_SKIP_REASON: Final = "stageflow.stage.skip_reason"
STAGE_CANCEL_REASON: Final = "stageflow.stage.cancel_reason"
INTERCEPTOR_NAME: Final = "stageflow.interceptor.name"
INTERCEPTOR_ACTION: Final = "stageflow.interceptor.action"
PARENT_RUN_ID: Final = "stageflow.parent.run.id"
PARENT_STAGE_NAME: Final = "stageflow.parent.stage.name"
CORRELATION_ID: Final = "stageflow.correlation.id"
SUBPIPELINE_DEPTH: Final = "stageflow.subpipeline.depth"
SUBPIPELINE_NAME: Final = "stageflow.subpipeline.name"
SUBPIPELINE_RUN_ID: Final = "stageflow.subpipeline.run.id"
LINK_ROLE: Final = "stageflow.link.role"
RUN_RESUMED_FROM: Final = "stageflow.run.resumed_from"
RUN_RESTORED_STAGES: Final = "stageflow.run.restored_stages"
RETRY_DELAY: Final = "stageflow.retry.delay_s"
ERROR_TYPE: Final = "error.type"
CODE_FUNCTION: Final = "code.function.name"
GEN_AI_OPERATION: Final = "gen_ai.operation.name"
GEN_AI_TOOL_NAME: Final = "gen_ai.tool.name"
GEN_AI_TOOL_CALL_ID: Final = "gen_ai.tool.call.id"
GEN_AI_TOOL_TYPE: Final = "gen_ai.tool.type"
GEN_AI_TOOL_ARGUMENTS: Final = "gen_ai.tool.call.arguments"
GEN_AI_TOOL_RESULT: Final = "gen_ai.tool.call.result"

RETRY_EVENT: Final = "stageflow.stage.retry"
"""Span event added to a stage span for each retry."""

IDENTITY_ATTRIBUTES: Final = (
    ("request_id", REQUEST_ID),
    ("session_id", SESSION_ID),
    ("user_id", USER_ID),
    ("org_id", ORG_ID),
)
