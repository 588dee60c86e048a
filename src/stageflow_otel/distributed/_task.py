"""What travels to a worker (a :class:`RemoteTask`) and what the stage function sees there."""

from __future__ import annotations

import inspect
import pickle
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

import anyio

from stageflow_otel.core.context import RunIdentity, StageContext, StageInputs
from stageflow_otel.core.errors import StageflowError
from stageflow_otel.core.model import StageOutput

__all__ = (
    "RemoteContext",
    "RemoteStageError",
    "RemoteTask",
    "RemoteTaskLostError",
    "TaskNotSerializableError",
    "run_task",
    "serialize_task",
    "snapshot",
)

Dumps = Callable[[Any], bytes]
"""How an executor serializes: ``pickle.dumps``, or ``cloudpickle.dumps`` for lambdas."""


class RemoteStageError(StageflowError):
    """Root of the errors of remote stages."""

    code = "REMOTE_STAGE"


class TaskNotSerializableError(RemoteStageError, TypeError):
    """What a remote stage needs cannot be serialized, so it cannot be submitted.

    Attributes:
        stage: The stage.
        part: Which part failed: ``the function``, ``input data key 'x'``,
            ``output of dependency 'a', key 'k'``, ...
    """

    code = "REMOTE_NOT_SERIALIZABLE"

    def __init__(self, stage: str, part: str, value: object, cause: BaseException) -> None:
        self.stage = stage
        self.part = part
        super().__init__(
            f"remote stage {stage!r} cannot be submitted: {part} ({type(value).__qualname__} "
            f"{_short_repr(value)}) cannot be serialized: {type(cause).__name__}: {cause}; "
            "send plain data (numbers, strings, lists, dicts, dataclasses) and define the "
            "function at module level of a module the workers can import"
        )


class RemoteTaskLostError(RemoteStageError):
    """The task was lost with its worker more times than the cluster allows.

    Attributes:
        stage: The stage.
        worker: The last worker that was lost while running it, if known.
    """

    code = "REMOTE_TASK_LOST"

    def __init__(self, stage: str, detail: str, *, worker: str | None = None) -> None:
        self.stage = stage
        self.worker = worker
        super().__init__(
            f"remote stage {stage!r} was lost with the workers that ran it: {detail}; "
            "a task that kills its worker (memory, segfault) fails like this; raise the "
            "cluster's allowed failures if workers are lost for other reasons"
        )


# ``error.type`` is the class's qualified name: keep it short and under ``stageflow_otel.``
# (the metric label keeps such names).
for _cls in (RemoteStageError, TaskNotSerializableError, RemoteTaskLostError):
    _cls.__module__ = "stageflow_otel.distributed"


@dataclass(frozen=True, slots=True)
class RemoteTask:
    """A picklable snapshot of what a remote stage needs, with the trace context.

    Attributes:
        fn: The stage function, ``def fn(ctx)`` or ``async def fn(ctx)``, called on the worker
            with a :class:`RemoteContext`.
        stage: The stage name.
        pipeline: The pipeline name.
        identity: The run's identity (its ``pipeline_run_id`` is the run id).
        attempt: The stage attempt (1-based; a retrying interceptor increases it).
        data: The run's input data.
        inputs: The outputs of the declared dependencies (status and data only).
        dependencies: The declared dependencies, in declaration order.
        trace_context: The W3C trace context (``traceparent``, ``tracestate``) of the span
            current where the stage submitted; empty without tracing.
        submitted_at: ``time.time()`` at submission, for the time the task queued.
    """

    fn: Callable[..., Any]
    stage: str
    pipeline: str
    identity: RunIdentity
    attempt: int
    data: Mapping[str, Any]
    inputs: Mapping[str, StageOutput]
    dependencies: tuple[str, ...]
    trace_context: Mapping[str, str] = field(default_factory=dict)
    submitted_at: float = 0.0

    @property
    def run_id(self) -> str:
        """The run id."""
        return self.identity.pipeline_run_id

    def parts(self) -> Iterator[tuple[str, object]]:
        """Every part of the task that is serialized, named for an error message."""
        yield "the function", self.fn
        for key, value in self.data.items():
            yield f"input data key {key!r}", value
        for dep, output in self.inputs.items():
            for key, value in output.data.items():
                yield f"output of dependency {dep!r}, key {key!r}", value
        yield "the run identity", self.identity


def snapshot(
    ctx: StageContext, fn: Callable[..., Any], trace_context: Mapping[str, str]
) -> RemoteTask:
    """The :class:`RemoteTask` of a stage about to run remotely."""
    inputs = ctx.inputs
    outputs: dict[str, StageOutput] = {}
    for dep in inputs.dependencies:
        output = inputs.get_output(dep)
        if output is not None:
            # Status and data only: an exception or artifact need not travel, nor pickle.
            outputs[dep] = StageOutput(output.status, dict(output.data))
    return RemoteTask(
        fn=fn,
        stage=ctx.stage_name,
        pipeline=ctx.pipeline_name,
        identity=ctx.identity,
        attempt=ctx.attempt,
        data=dict(ctx.data),
        inputs=outputs,
        dependencies=inputs.dependencies,
        trace_context=dict(trace_context),
        submitted_at=time.time(),
    )


def serialize_task(task: RemoteTask, dumps: Dumps = pickle.dumps) -> bytes:
    """Serialize ``task``, or raise :class:`TaskNotSerializableError` naming the culprit."""
    try:
        return dumps(task)
    except Exception as exc:
        for part, value in task.parts():
            try:
                dumps(value)
            except Exception as cause:
                raise TaskNotSerializableError(task.stage, part, value, cause) from cause
        raise TaskNotSerializableError(task.stage, "the task", task, exc) from exc


class RemoteContext:
    """What a remote stage function sees on the worker: a read-only stage context.

    Attributes:
        stage_name: The stage name.
        pipeline_name: The pipeline name.
        identity: The run's identity.
        attempt: The stage attempt (1-based).
        data: The run's input data (read-only).
        inputs: The outputs of the declared dependencies (``get_from``, ``require_from``).
        worker: The address of the worker running the function, when the executor knows it.
    """

    __slots__ = ("attempt", "data", "identity", "inputs", "pipeline_name", "stage_name", "worker")

    def __init__(self, task: RemoteTask, *, worker: str | None = None) -> None:
        self.stage_name = task.stage
        self.pipeline_name = task.pipeline
        self.identity = task.identity
        self.attempt = task.attempt
        self.data: Mapping[str, Any] = MappingProxyType(dict(task.data))
        self.inputs = StageInputs(task.stage, task.dependencies, dict(task.inputs))
        self.worker = worker

    @property
    def pipeline_run_id(self) -> str:
        """The run id."""
        return self.identity.pipeline_run_id

    def __repr__(self) -> str:
        return f"RemoteContext({self.stage_name!r}, run={self.pipeline_run_id!r})"


def run_task(task: RemoteTask, *, worker: str | None = None) -> Any:
    """Call the task's function with its :class:`RemoteContext` and return what it returns.

    An ``async def`` function runs in an event loop of its own (asyncio) in this thread.
    """
    ctx = RemoteContext(task, worker=worker)
    fn = task.fn
    if inspect.iscoroutinefunction(fn) or inspect.iscoroutinefunction(
        getattr(type(fn), "__call__", None)  # noqa: B004  (an async __call__)
    ):

        async def call() -> Any:
            return await fn(ctx)

        return anyio.run(call)
    return fn(ctx)


def _short_repr(value: object, limit: int = 60) -> str:
    try:
        text = repr(value)
    except Exception:
        return "<unrepresentable>"
    return text if len(text) <= limit else text[: limit - 3] + "..."
