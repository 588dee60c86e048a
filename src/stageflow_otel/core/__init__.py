"""The engine: a telemetry-free async DAG runtime (stdlib and anyio only).

Observability attaches through the seams defined here (interceptors, run hooks, event sinks,
the extension registry); nothing in this package imports a telemetry library. The modules
holding the implementation (``core._executor`` and the queue's parts) are private; every name
below is the engine's public surface, grouped by what it is for.
"""

# The re-exports are grouped by what they are for, not sorted.
# ruff: noqa: I001

from __future__ import annotations

# Declaring pipelines and stages.
from .pipeline import Pipeline as Pipeline
from .pipeline import StageSpec as StageSpec
from .pipeline import stage_fn as stage_fn
from .pipeline import FunctionStage as FunctionStage
from .model import Stage as Stage
from .model import NoOpStage as NoOpStage
from .model import StageKind as StageKind
from .pipeline import FailureMode as FailureMode
from .pipeline import StageGraph as StageGraph

# What a stage sees and returns.
from .context import StageContext as StageContext
from .context import StageInputs as StageInputs
from .context import ContextBag as ContextBag
from .context import OutputBag as OutputBag
from .context import RunIdentity as RunIdentity
from .model import StageOutput as StageOutput
from .model import StageStatus as StageStatus
from .model import StageReturn as StageReturn
from .model import StageEvent as StageEvent
from .model import StageArtifact as StageArtifact

# Running, results and cancellation.
from .pipeline import PipelineResults as PipelineResults
from .cancellation import CancellationToken as CancellationToken
from .cancellation import CleanupRegistry as CleanupRegistry
from .cancellation import CleanupReport as CleanupReport
from .cancellation import StructuredTaskGroup as StructuredTaskGroup

# The seams: interceptors, run hooks, the call objects they get, and compose().
from .seams import Interceptor as Interceptor
from .seams import BaseInterceptor as BaseInterceptor
from .seams import CallNext as CallNext
from .seams import StageCall as StageCall
from .seams import RunHook as RunHook
from .seams import RunCall as RunCall
from .seams import RunProgress as RunProgress
from .seams import ResumedRun as ResumedRun
from .seams import RunRecording as RunRecording
from .seams import SubpipelineCall as SubpipelineCall
from .seams import ToolCall as ToolCall
from .seams import compose as compose
from .extensions import ExtensionRegistry as ExtensionRegistry
from .extensions import default_extensions as default_extensions

# Interceptors that ship with the engine.
from .resilience import RetryInterceptor as RetryInterceptor
from .resilience import TimeoutInterceptor as TimeoutInterceptor
from .circuit_breaker import CircuitBreakerInterceptor as CircuitBreakerInterceptor
from .circuit_breaker import CircuitBreakerStatistics as CircuitBreakerStatistics
from .circuit_breaker import CircuitState as CircuitState
from .idempotency import IdempotencyInterceptor as IdempotencyInterceptor
from .idempotency import IdempotencyStore as IdempotencyStore
from .idempotency import IdempotencyRecord as IdempotencyRecord
from .idempotency import InMemoryIdempotencyStore as InMemoryIdempotencyStore
from .idempotency import RedisIdempotencyStore as RedisIdempotencyStore

# Subpipelines.
from .subpipeline import SubpipelineSpawner as SubpipelineSpawner
from .subpipeline import SubpipelineResult as SubpipelineResult
from .subpipeline import ChildRunTracker as ChildRunTracker
from .subpipeline import ChildRunStatistics as ChildRunStatistics

# Events and event sinks; the bounded queue in front of slow ones.
from .events import EventSink as EventSink
from .events import CollectingEventSink as CollectingEventSink
from .events import CollectedEvent as CollectedEvent
from .events import LoggingEventSink as LoggingEventSink
from .events import FanOutEventSink as FanOutEventSink
from .events import NoOpEventSink as NoOpEventSink
from .wide_events import WideEventEmitter as WideEventEmitter
from .backpressure import BackpressureAwareEventSink as BackpressureAwareEventSink
from .backpressure import BackpressureStatistics as BackpressureStatistics
from .backpressure import BatchExporter as BatchExporter
from .backpressure import QueuedEvent as QueuedEvent
from .backpressure import OverflowPolicy as OverflowPolicy
from .backpressure import DropNewest as DropNewest
from .backpressure import DropOldest as DropOldest
from .backpressure import Block as Block
from .backpressure import SinkListener as SinkListener

# Errors: StageflowError and what derives from it.
from .errors import StageflowError as StageflowError
from .errors import PipelineValidationError as PipelineValidationError
from .errors import CycleDetectedError as CycleDetectedError
from .errors import UndeclaredDependencyError as UndeclaredDependencyError
from .errors import DataConflictError as DataConflictError
from .errors import OutputConflictError as OutputConflictError
from .errors import StageExecutionError as StageExecutionError
from .errors import PipelineCancelled as PipelineCancelled
from .errors import StageCancellationRequested as StageCancellationRequested
from .errors import StageTimeoutError as StageTimeoutError
from .errors import StageReturnTypeError as StageReturnTypeError
from .errors import InterceptorError as InterceptorError
from .errors import MaxDepthExceededError as MaxDepthExceededError
from .errors import TransientError as TransientError
from .errors import RateLimitError as RateLimitError
from .errors import ServiceUnavailableError as ServiceUnavailableError
from .circuit_breaker import CircuitOpenError as CircuitOpenError
from .errors import IdempotencyParamMismatch as IdempotencyParamMismatch
from .errors import SinkClosedError as SinkClosedError

# stageflow-core's names for two errors, kept for code coming from it.
from .errors import UnifiedStageExecutionError as UnifiedStageExecutionError
from .errors import UnifiedPipelineCancelled as UnifiedPipelineCancelled

__all__ = (
    "BackpressureAwareEventSink",
    "BackpressureStatistics",
    "BaseInterceptor",
    "BatchExporter",
    "Block",
    "CallNext",
    "CancellationToken",
    "ChildRunStatistics",
    "ChildRunTracker",
    "CircuitBreakerInterceptor",
    "CircuitBreakerStatistics",
    "CircuitOpenError",
    "CircuitState",
    "CleanupRegistry",
    "CleanupReport",
    "CollectedEvent",
    "CollectingEventSink",
    "ContextBag",
    "CycleDetectedError",
    "DataConflictError",
    "DropNewest",
    "DropOldest",
    "EventSink",
    "ExtensionRegistry",
    "FailureMode",
    "FanOutEventSink",
    "FunctionStage",
    "IdempotencyInterceptor",
    "IdempotencyParamMismatch",
    "IdempotencyRecord",
    "IdempotencyStore",
    "InMemoryIdempotencyStore",
    "Interceptor",
    "InterceptorError",
    "LoggingEventSink",
    "MaxDepthExceededError",
    "NoOpEventSink",
    "NoOpStage",
    "OutputBag",
    "OutputConflictError",
    "OverflowPolicy",
    "Pipeline",
    "PipelineCancelled",
    "PipelineResults",
    "PipelineValidationError",
    "QueuedEvent",
    "RateLimitError",
    "RedisIdempotencyStore",
    "ResumedRun",
    "RetryInterceptor",
    "RunCall",
    "RunHook",
    "RunIdentity",
    "RunProgress",
    "RunRecording",
    "ServiceUnavailableError",
    "SinkClosedError",
    "SinkListener",
    "Stage",
    "StageArtifact",
    "StageCall",
    "StageCancellationRequested",
    "StageContext",
    "StageEvent",
    "StageExecutionError",
    "StageGraph",
    "StageInputs",
    "StageKind",
    "StageOutput",
    "StageReturn",
    "StageReturnTypeError",
    "StageSpec",
    "StageStatus",
    "StageTimeoutError",
    "StageflowError",
    "StructuredTaskGroup",
    "SubpipelineCall",
    "SubpipelineResult",
    "SubpipelineSpawner",
    "TimeoutInterceptor",
    "ToolCall",
    "TransientError",
    "UndeclaredDependencyError",
    "UnifiedPipelineCancelled",
    "UnifiedStageExecutionError",
    "WideEventEmitter",
    "compose",
    "default_extensions",
    "stage_fn",
)
