"""Remote stages: run selected stages on a distributed engine's workers, in the same trace.

``remote_stage(fn, executor)`` is a stage runner that ships a picklable snapshot of what the
stage needs (a :class:`RemoteTask`) with the W3C trace context to an executor, and awaits the
result without blocking the event loop. Executors implement :class:`RemoteExecutor` (submit,
wait, cancel): :class:`LocalExecutor` runs tasks in a thread pool of this process, and
``stageflow_otel.distributed.dask.DaskExecutor`` on a Dask cluster.

This package imports no telemetry library; the worker-side telemetry (``stage.remote`` spans,
worker metrics) is in :mod:`stageflow_otel.distributed.telemetry`.
"""

from __future__ import annotations

from ._protocol import RemoteExecutor as RemoteExecutor
from ._protocol import RemoteNote as RemoteNote
from ._protocol import RemoteProgress as RemoteProgress
from ._runner import TraceContextGetter as TraceContextGetter
from ._runner import remote_stage as remote_stage
from ._runner import w3c_trace_context as w3c_trace_context
from ._task import RemoteContext as RemoteContext
from ._task import RemoteStageError as RemoteStageError
from ._task import RemoteTask as RemoteTask
from ._task import RemoteTaskLostError as RemoteTaskLostError
from ._task import TaskNotSerializableError as TaskNotSerializableError
from ._task import run_task as run_task
from ._task import serialize_task as serialize_task
from .local import LocalExecutor as LocalExecutor

__all__ = (
    "LocalExecutor",
    "RemoteContext",
    "RemoteExecutor",
    "RemoteNote",
    "RemoteProgress",
    "RemoteStageError",
    "RemoteTask",
    "RemoteTaskLostError",
    "TaskNotSerializableError",
    "TraceContextGetter",
    "remote_stage",
    "run_task",
    "serialize_task",
    "w3c_trace_context",
)
