"""The errors stageflow-otel raises.

Every error derives from :class:`StageflowError` and carries a stable ``code``::

    StageflowError(Exception)
    ├── PipelineValidationError(StageflowError, ValueError)   build time, never mid-run
    │   └── CycleDetectedError                                 .cycle_path
    ├── DataConflictError                                      .key, .first_writer, .second_writer
    ├── OutputConflictError                                    .stage
    ├── UndeclaredDependencyError(StageflowError, LookupError) .stage_name, .accessing_stage, .declared_deps
    ├── StageReturnTypeError(StageflowError, TypeError)        a runner returned something unusable
    ├── StageTimeoutError(StageflowError, TimeoutError)        .stage, .timeout_s
    ├── StageExecutionError                                    .stage, .results; original as __cause__
    ├── PipelineCancelled                                      .stage, .reason, .results
    ├── StageCancellationRequested                             raised by a stage to cancel the run
    ├── InterceptorError                                       .interceptor_name
    │   └── IdempotencyParamMismatch                           .key
    ├── TransientError                                         retryable by default
    │   ├── RateLimitError                                     .retry_after
    │   └── ServiceUnavailableError
    ├── MaxDepthExceededError                                  .current_depth, .max_depth
    └── SinkClosedError                                        emit on a closed sink

Cancellation (``anyio.get_cancelled_exc_class()``) is never wrapped in one of these.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .model import StageOutput

__all__ = (
    "CycleDetectedError",
    "DataConflictError",
    "IdempotencyParamMismatch",
    "InterceptorError",
    "MaxDepthExceededError",
    "OutputConflictError",
    "PipelineCancelled",
    "PipelineValidationError",
    "RateLimitError",
    "ServiceUnavailableError",
    "SinkClosedError",
    "StageCancellationRequested",
    "StageExecutionError",
    "StageReturnTypeError",
    "StageTimeoutError",
    "StageflowError",
    "TransientError",
    "UndeclaredDependencyError",
    "UnifiedPipelineCancelled",
    "UnifiedStageExecutionError",
    "qualified_name",
)

_LIST_LIMIT = 12


def format_names(names: Iterable[str], limit: int = _LIST_LIMIT) -> str:
    """Join names for an error message, eliding the middle of long lists."""
    items = list(names)
    if len(items) <= limit:
        return ", ".join(items)
    return f"{', '.join(items[:limit])}, ... ({len(items) - limit} more)"


class StageflowError(Exception):
    """Root of every stageflow-otel error.

    Attributes:
        code: A stable, machine-readable error code.
    """

    code: str = "STAGEFLOW_ERROR"

    def __init__(self, message: str, *, code: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code

    def to_dict(self) -> dict[str, Any]:
        """Return a JSON-serialisable summary of the error."""
        return {"code": self.code, "type": type(self).__name__, "message": self.message}


class PipelineValidationError(StageflowError, ValueError):
    """A pipeline definition is invalid; raised by ``build()``, never mid-run.

    Codes: ``CONTRACT-004-EMPTY``, ``CONTRACT-004-MISSING_DEP``, ``CONTRACT-004-SELF_DEP``,
    ``CONTRACT-004-CYCLE``, ``CONTRACT-004-CONFLICT`` (duplicate stage names, or compose
    conflicts), ``CONTRACT-004-INVALID`` (bad stage arguments).

    Attributes:
        stages: The stages the problem involves.
        fix_hint: How to fix it.
    """

    code = "CONTRACT-004-INVALID"

    def __init__(
        self,
        message: str,
        *,
        code: str | None = None,
        stages: Iterable[str] = (),
        fix_hint: str | None = None,
    ) -> None:
        self.stages = tuple(stages)
        self.fix_hint = fix_hint
        full = f"{message}. Fix: {fix_hint}" if fix_hint else message
        super().__init__(full, code=code)

    def to_dict(self) -> dict[str, Any]:
        """Return a JSON-serialisable summary of the error."""
        return {**super().to_dict(), "stages": list(self.stages), "fix_hint": self.fix_hint}


class CycleDetectedError(PipelineValidationError):
    """The dependency graph has a cycle.

    Attributes:
        cycle_path: The stages of one cycle, the first repeated at the end.
    """

    code = "CONTRACT-004-CYCLE"

    def __init__(self, pipeline: str, cycle_path: Iterable[str]) -> None:
        self.cycle_path = tuple(cycle_path)
        super().__init__(
            f"pipeline {pipeline!r} has a dependency cycle: {' -> '.join(self.cycle_path)}",
            stages=self.cycle_path[:-1],
            fix_hint="remove one of these dependencies so that the stages form a DAG",
        )


class DataConflictError(StageflowError):
    """Two stages wrote the same key of a run's :class:`ContextBag`."""

    code = "DATA_CONFLICT"

    def __init__(self, key: str, *, first_writer: str, second_writer: str) -> None:
        self.key = key
        self.first_writer = first_writer
        self.second_writer = second_writer
        super().__init__(
            f"stage {second_writer!r} tried to write context key {key!r}, already written by "
            f"stage {first_writer!r}; give each stage its own key or pass the value as stage output"
        )


class OutputConflictError(StageflowError):
    """An output was recorded twice for one stage."""

    code = "OUTPUT_CONFLICT"

    def __init__(self, stage: str) -> None:
        self.stage = stage
        super().__init__(f"an output for stage {stage!r} was already recorded in this run")


class UndeclaredDependencyError(StageflowError, LookupError):
    """A stage read the output of a stage that is not one of its declared dependencies."""

    code = "UNDECLARED_DEPENDENCY"

    def __init__(
        self, stage_name: str, *, accessing_stage: str, declared_deps: Iterable[str]
    ) -> None:
        self.stage_name = stage_name
        self.accessing_stage = accessing_stage
        self.declared_deps = tuple(declared_deps)
        deps = format_names(self.declared_deps) or "none"
        super().__init__(
            f"stage {accessing_stage!r} read the output of {stage_name!r}, which is not one of its "
            f"declared dependencies ({deps}); add {stage_name!r} to its dependencies"
        )

    def __str__(self) -> str:
        # LookupError's __str__ would repr() the message.
        return self.message


class StageReturnTypeError(StageflowError, TypeError):
    """A stage returned something other than ``StageOutput``, ``dict`` or ``None``."""

    code = "STAGE_RETURN_TYPE"

    def __init__(self, stage: str, value: object) -> None:
        self.stage = stage
        super().__init__(
            f"stage {stage!r} returned {type(value).__name__}; return a StageOutput, a dict "
            "(its output data) or None"
        )


class StageTimeoutError(StageflowError, TimeoutError):
    """A stage ran longer than its timeout."""

    code = "TIMEOUT"

    def __init__(self, stage: str, timeout_s: float) -> None:
        self.stage = stage
        self.timeout_s = timeout_s
        super().__init__(f"stage {stage!r} timed out after {timeout_s:g}s")


class StageExecutionError(StageflowError):
    """A stage failed, so the run failed.

    Attributes:
        stage: The first stage that failed.
        results: Partial results: every stage that finished, the failed one included.
        original: The stage's exception, also set as ``__cause__`` (``None`` for a returned FAIL).
    """

    code = "STAGE_FAILED"

    def __init__(
        self,
        stage: str,
        *,
        error: str,
        results: Mapping[str, StageOutput],
        original: BaseException | None = None,
    ) -> None:
        self.stage = stage
        self.results = results
        self.original = original
        # "stage 'x' timed out ..." already says which stage; don't say it twice.
        named = error.startswith(f"stage {stage!r} ")
        super().__init__(error if named else f"stage {stage!r} failed: {error}")


class PipelineCancelled(StageflowError):
    """The run was cancelled by a stage (CANCEL output) or from outside (a cancel token).

    Attributes:
        stage: The stage that cancelled, or ``None`` when cancelled from outside.
        reason: Why.
        results: Partial results.
    """

    code = "PIPELINE_CANCELLED"

    def __init__(
        self, *, stage: str | None, reason: str, results: Mapping[str, StageOutput]
    ) -> None:
        self.stage = stage
        self.reason = reason
        self.results = results
        who = f"by stage {stage!r}" if stage else "from outside"
        super().__init__(f"pipeline cancelled {who}: {reason}")


class StageCancellationRequested(StageflowError):
    """Raised by a stage (or ``ctx.raise_if_cancelled()``) to cancel the run."""

    code = "CANCELLATION_REQUESTED"

    def __init__(self, reason: str = "cancelled") -> None:
        self.reason = reason
        super().__init__(reason)


class InterceptorError(StageflowError):
    """An interceptor raised; its stage fails with this error."""

    code = "INTERCEPTOR_FAILED"

    def __init__(self, message: str, *, interceptor_name: str) -> None:
        self.interceptor_name = interceptor_name
        super().__init__(message)


class IdempotencyParamMismatch(InterceptorError):
    """The same idempotency key was used with different parameters."""

    code = "IDEMPOTENCY_PARAM_MISMATCH"

    def __init__(self, key: str, *, expected: str, actual: str) -> None:
        self.key = key
        self.expected = expected
        self.actual = actual
        super().__init__(
            f"idempotency key {key!r} was first used with parameters hash {expected[:12]} and now "
            f"with {actual[:12]}; use a new key for new parameters",
            interceptor_name="idempotency",
        )


class TransientError(StageflowError):
    """A failure worth retrying."""

    code = "TRANSIENT"


class RateLimitError(TransientError):
    """The callee asked us to slow down; ``retry_after`` seconds is honoured by retries."""

    code = "RATE_LIMITED"

    def __init__(self, message: str = "rate limited", *, retry_after: float | None = None) -> None:
        self.retry_after = retry_after
        super().__init__(message)


class ServiceUnavailableError(TransientError):
    """The callee is down for now."""

    code = "SERVICE_UNAVAILABLE"


class MaxDepthExceededError(StageflowError):
    """A subpipeline would nest deeper than allowed."""

    code = "MAX_DEPTH_EXCEEDED"

    def __init__(self, *, current_depth: int, max_depth: int, parent_run_id: str) -> None:
        self.current_depth = current_depth
        self.max_depth = max_depth
        self.parent_run_id = parent_run_id
        super().__init__(
            f"run {parent_run_id} is at subpipeline depth {current_depth}; spawning another level "
            f"would exceed max_depth={max_depth} (raise max_depth or flatten the pipelines)"
        )


class SinkClosedError(StageflowError):
    """An event was emitted into a sink that is shut down."""

    code = "SINK_CLOSED"


# stageflow-core's names, kept so that code written against it keeps working.
UnifiedStageExecutionError = StageExecutionError
UnifiedPipelineCancelled = PipelineCancelled


def qualified_name(exc: BaseException) -> str:
    """The ``error.type`` of an exception: its class's qualified name.

    Builtins and ``__main__`` classes by their name (``ValueError``), others with their
    module (``myapp.errors.Declined``), as OpenTelemetry's ``error.type`` convention wants.
    """
    cls = type(exc)
    module = cls.__module__
    if module in ("builtins", "__main__"):
        return cls.__qualname__
    return f"{module}.{cls.__qualname__}"
