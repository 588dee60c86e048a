"""``LocalExecutor``: remote stages in a thread pool of this process, shipped as for a cluster.

For tests and for trying remote stages without a cluster: every task is serialized and
deserialized as a cluster would, so what cannot travel fails here too, at submit.
"""

from __future__ import annotations

import pickle
import threading
import time
import uuid
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, Protocol, Self

from ._handle import TaskHandle
from ._protocol import STARTED, RemoteProgress
from ._task import Dumps, RemoteTask, run_task, serialize_task

__all__ = ("LocalExecutor", "TaskRunner")


class TaskRunner(Protocol):
    """Runs a task on a worker: ``run(task, worker=...)``, as ``WorkerTelemetry`` does."""

    def run(self, task: RemoteTask, *, worker: str | None = None) -> Any:
        """Call the task's function and return what it returns."""
        ...


class LocalExecutor:
    """A :class:`~stageflow_otel.distributed.RemoteExecutor` over a thread pool of this process.

    Args:
        max_workers: Threads of the pool (``ThreadPoolExecutor``'s default when ``None``).
        dumps: How tasks are serialized: ``cloudpickle.dumps`` when cloudpickle is installed
            (as Dask does: functions of ``__main__`` and lambdas travel by value), else
            ``pickle.dumps``.
        telemetry: Runs each task with a ``stage.remote`` span and the worker metrics, e.g.
            ``stageflow_otel.distributed.telemetry.WorkerTelemetry``; plain calls by default.

    Use it as a context manager, or call :meth:`shutdown`.
    """

    def __init__(
        self,
        max_workers: int | None = None,
        *,
        dumps: Dumps | None = None,
        telemetry: TaskRunner | None = None,
    ) -> None:
        self._pool = ThreadPoolExecutor(max_workers, thread_name_prefix="stageflow-remote")
        self._dumps = dumps if dumps is not None else _default_dumps()
        self._telemetry = telemetry

    def submit(self, task: RemoteTask) -> TaskHandle:
        """Serialize ``task`` and queue it on the pool."""
        payload = serialize_task(task, self._dumps)
        handle = TaskHandle(uuid.uuid4().hex, task.stage)
        future = self._pool.submit(self._work, payload, handle)
        handle.future = future
        future.add_done_callback(_finisher(handle))
        return handle

    def _work(self, payload: bytes, handle: TaskHandle) -> Any:
        task: RemoteTask = pickle.loads(payload)  # our own bytes, from submit
        worker = f"local:{threading.current_thread().name}"
        handle.note(
            STARTED,
            worker=worker,
            queue_wait_ms=round(max(0.0, time.time() - task.submitted_at) * 1000, 3),
        )
        if self._telemetry is not None:
            return self._telemetry.run(task, worker=worker)
        return run_task(task, worker=worker)

    def wait(self, handle: TaskHandle, timeout: float) -> RemoteProgress:
        """Block until the task ends or something happens to it, at most ``timeout`` s."""
        return handle.wait(timeout)

    def cancel(self, handle: TaskHandle) -> None:
        """Cancel the task if it has not started (a running thread cannot be stopped)."""
        future: Future[Any] = handle.future
        future.cancel()

    def shutdown(self, wait: bool = True) -> None:
        """Stop the pool; queued tasks are cancelled."""
        self._pool.shutdown(wait=wait, cancel_futures=True)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *_: object) -> None:
        self.shutdown()


def _default_dumps() -> Dumps:
    try:
        import cloudpickle
    except ImportError:
        return pickle.dumps
    dumps: Dumps = cloudpickle.dumps
    return dumps


def _finisher(handle: TaskHandle) -> Callable[[Future[Any]], None]:
    def finish(future: Future[Any]) -> None:
        if future.cancelled():
            handle.finish(error=RuntimeError(f"remote stage {handle.stage!r} was cancelled"))
            return
        error = future.exception()
        if error is not None:
            handle.finish(error=error)
        else:
            handle.finish(value=future.result())

    return finish
