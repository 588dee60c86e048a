"""stageflow-otel: an observability-first async DAG pipeline runtime.

Declare stages and their dependencies; the engine runs each stage as soon as its dependencies
are done. Every run, stage, interceptor and subpipeline can be an OpenTelemetry span, with
Prometheus metrics and structured logs, through ``stageflow_otel.observability``.

This package exports what building and running pipelines takes day to day; the rest of the
engine is in ``stageflow_otel.core``, telemetry in ``stageflow_otel.observability``, tools in
``stageflow_otel.tools`` and test helpers in ``stageflow_otel.testing``.
"""

# The re-exports are grouped by what users do with them, not sorted.
# ruff: noqa: I001

from __future__ import annotations

import logging as _logging

from ._version import package_version as _package_version

# Building a pipeline.
from .core import NoOpStage as NoOpStage
from .core import Pipeline as Pipeline
from .core import Stage as Stage
from .core import StageGraph as StageGraph
from .core import StageKind as StageKind
from .core import stage_fn as stage_fn

# What a stage sees and returns.
from .core import ContextBag as ContextBag
from .core import OutputBag as OutputBag
from .core import RunIdentity as RunIdentity
from .core import StageArtifact as StageArtifact
from .core import StageContext as StageContext
from .core import StageEvent as StageEvent
from .core import StageInputs as StageInputs
from .core import StageOutput as StageOutput
from .core import StageStatus as StageStatus

# Running it.
from .core import CancellationToken as CancellationToken
from .core import PipelineResults as PipelineResults

# Around stages: interceptors, and run hooks around whole runs.
from .core import BaseInterceptor as BaseInterceptor
from .core import CircuitBreakerInterceptor as CircuitBreakerInterceptor
from .core import IdempotencyInterceptor as IdempotencyInterceptor
from .core import InMemoryIdempotencyStore as InMemoryIdempotencyStore
from .core import Interceptor as Interceptor
from .core import RedisIdempotencyStore as RedisIdempotencyStore
from .core import RetryInterceptor as RetryInterceptor
from .core import RunHook as RunHook
from .core import StageCall as StageCall
from .core import TimeoutInterceptor as TimeoutInterceptor

# Where events go.
from .core import BackpressureAwareEventSink as BackpressureAwareEventSink
from .core import BackpressureStatistics as BackpressureStatistics
from .core import CollectingEventSink as CollectingEventSink
from .core import EventSink as EventSink
from .core import FanOutEventSink as FanOutEventSink
from .core import LoggingEventSink as LoggingEventSink
from .core import NoOpEventSink as NoOpEventSink

# Errors.
from .core import CycleDetectedError as CycleDetectedError
from .core import DataConflictError as DataConflictError
from .core import InterceptorError as InterceptorError
from .core import MaxDepthExceededError as MaxDepthExceededError
from .core import PipelineCancelled as PipelineCancelled
from .core import PipelineValidationError as PipelineValidationError
from .core import StageExecutionError as StageExecutionError
from .core import StageflowError as StageflowError
from .core import StageTimeoutError as StageTimeoutError
from .core import UndeclaredDependencyError as UndeclaredDependencyError

# stageflow-core's names for two errors, kept for code coming from it.
from .core import UnifiedPipelineCancelled as UnifiedPipelineCancelled
from .core import UnifiedStageExecutionError as UnifiedStageExecutionError

# Tools a stage calls (everything else about tools: ``stageflow_otel.tools``).
from .tools import ApprovalService as ApprovalService
from .tools import ToolApprovalDeniedError as ToolApprovalDeniedError
from .tools import ToolApprovalTimeoutError as ToolApprovalTimeoutError
from .tools import ToolCall as ToolCall
from .tools import ToolDefinition as ToolDefinition
from .tools import ToolDeniedError as ToolDeniedError
from .tools import ToolError as ToolError
from .tools import ToolExecutionError as ToolExecutionError
from .tools import ToolExecutor as ToolExecutor
from .tools import ToolInput as ToolInput
from .tools import ToolInputValidationError as ToolInputValidationError
from .tools import ToolNotFoundError as ToolNotFoundError
from .tools import ToolOutput as ToolOutput
from .tools import ToolRegistry as ToolRegistry
from .tools import ToolUndoError as ToolUndoError
from .tools import UndoMetadata as UndoMetadata
from .tools import UndoStore as UndoStore
from .tools import tool as tool

__version__ = _package_version()

# Silent unless the application configures logging: records of every ``stageflow_otel.*``
# logger reach the application's handlers, and with none, the NullHandler (not Python's
# last-resort handler, which would write warnings to standard error).
_logging.getLogger(__name__).addHandler(_logging.NullHandler())

__all__ = (
    "ApprovalService",
    "BackpressureAwareEventSink",
    "BackpressureStatistics",
    "BaseInterceptor",
    "CancellationToken",
    "CircuitBreakerInterceptor",
    "CollectingEventSink",
    "ContextBag",
    "CycleDetectedError",
    "DataConflictError",
    "EventSink",
    "FanOutEventSink",
    "IdempotencyInterceptor",
    "InMemoryIdempotencyStore",
    "Interceptor",
    "InterceptorError",
    "LoggingEventSink",
    "MaxDepthExceededError",
    "NoOpEventSink",
    "NoOpStage",
    "OutputBag",
    "Pipeline",
    "PipelineCancelled",
    "PipelineResults",
    "PipelineValidationError",
    "RedisIdempotencyStore",
    "RetryInterceptor",
    "RunHook",
    "RunIdentity",
    "Stage",
    "StageArtifact",
    "StageCall",
    "StageContext",
    "StageEvent",
    "StageExecutionError",
    "StageGraph",
    "StageInputs",
    "StageKind",
    "StageOutput",
    "StageStatus",
    "StageTimeoutError",
    "StageflowError",
    "TimeoutInterceptor",
    "ToolApprovalDeniedError",
    "ToolApprovalTimeoutError",
    "ToolCall",
    "ToolDefinition",
    "ToolDeniedError",
    "ToolError",
    "ToolExecutionError",
    "ToolExecutor",
    "ToolInput",
    "ToolInputValidationError",
    "ToolNotFoundError",
    "ToolOutput",
    "ToolRegistry",
    "ToolUndoError",
    "UndeclaredDependencyError",
    "UndoMetadata",
    "UndoStore",
    "UnifiedPipelineCancelled",
    "UnifiedStageExecutionError",
    "__version__",
    "stage_fn",
    "tool",
)
