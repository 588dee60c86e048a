"""stageflow-otel: an observability-first async DAG pipeline runtime.

Declare stages and their dependencies; the engine runs each stage as soon as its dependencies
are done. Every run, stage, interceptor and subpipeline can be an OpenTelemetry span, with
Prometheus metrics and structured logs, through ``stageflow_otel.observability``.
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError
from importlib.metadata import version as _version

from .core import BaseInterceptor as BaseInterceptor
from .core import CancellationToken as CancellationToken
from .core import CollectingEventSink as CollectingEventSink
from .core import ContextBag as ContextBag
from .core import CycleDetectedError as CycleDetectedError
from .core import DataConflictError as DataConflictError
from .core import EventSink as EventSink
from .core import FanOutEventSink as FanOutEventSink
from .core import Interceptor as Interceptor
from .core import InterceptorChain as InterceptorChain
from .core import InterceptorError as InterceptorError
from .core import LoggingEventSink as LoggingEventSink
from .core import MaxDepthExceededError as MaxDepthExceededError
from .core import NoOpEventSink as NoOpEventSink
from .core import NoOpStage as NoOpStage
from .core import OutputBag as OutputBag
from .core import Pipeline as Pipeline
from .core import PipelineCancelled as PipelineCancelled
from .core import PipelineResults as PipelineResults
from .core import PipelineValidationError as PipelineValidationError
from .core import RunHook as RunHook
from .core import RunIdentity as RunIdentity
from .core import Stage as Stage
from .core import StageArtifact as StageArtifact
from .core import StageCall as StageCall
from .core import StageContext as StageContext
from .core import StageEvent as StageEvent
from .core import StageExecutionError as StageExecutionError
from .core import StageflowError as StageflowError
from .core import StageGraph as StageGraph
from .core import StageInputs as StageInputs
from .core import StageKind as StageKind
from .core import StageOutput as StageOutput
from .core import StageStatus as StageStatus
from .core import StageTimeoutError as StageTimeoutError
from .core import UndeclaredDependencyError as UndeclaredDependencyError
from .core import UnifiedPipelineCancelled as UnifiedPipelineCancelled
from .core import UnifiedStageExecutionError as UnifiedStageExecutionError
from .core import stage_fn as stage_fn

try:
    __version__ = _version("stageflow-otel")
except PackageNotFoundError:  # pragma: no cover - running from a source tree without metadata
    __version__ = "0.0.0"

__all__ = (
    "BaseInterceptor",
    "CancellationToken",
    "CollectingEventSink",
    "ContextBag",
    "CycleDetectedError",
    "DataConflictError",
    "EventSink",
    "FanOutEventSink",
    "Interceptor",
    "InterceptorChain",
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
    "UndeclaredDependencyError",
    "UnifiedPipelineCancelled",
    "UnifiedStageExecutionError",
    "__version__",
    "stage_fn",
)
