"""The protocol a distributed engine implements to run remote stages: submit, wait, cancel."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeVar, runtime_checkable

from ._task import RemoteTask

__all__ = ("RemoteExecutor", "RemoteNote", "RemoteProgress")

H = TypeVar("H")

STARTED = "started"
WORKER_LOST = "worker_lost"
RESUBMITTED = "resubmitted"


@dataclass(frozen=True, slots=True)
class RemoteNote:
    """Something that happened to a submitted task, told to the stage that submitted it.

    Attributes:
        type: ``started`` (a worker began running it), ``worker_lost`` (the worker running
            it died or left) or ``resubmitted`` (the engine scheduled it to run again); the
            stage emits it as the event ``stage.remote.<type>``.
        data: The event's fields (``worker``, ``queue_wait_ms``, ``execution``, ...).
    """

    type: str
    data: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class RemoteProgress:
    """What :meth:`RemoteExecutor.wait` saw: notes since the last call, and the outcome.

    Attributes:
        notes: What happened since the last call, in order.
        done: Whether the task ended (then ``value`` or ``error`` is its outcome).
        value: What the stage function returned.
        error: What it raised, or why the engine gave up on it (:class:`RemoteTaskLostError`).
    """

    notes: tuple[RemoteNote, ...] = ()
    done: bool = False
    value: Any = None
    error: BaseException | None = None


@runtime_checkable
class RemoteExecutor(Protocol[H]):
    """**Protocol:** a distributed engine that runs :class:`RemoteTask` objects.

    ``submit`` is called on the event loop and must not block; ``wait`` is called in a worker
    thread and blocks up to ``timeout`` seconds; ``cancel`` is called in a worker thread when
    the stage is cancelled or times out. A task may run more than once (at-least-once): an
    engine that loses a worker runs its tasks again elsewhere.
    """

    def submit(self, task: RemoteTask) -> H:
        """Send ``task`` to the engine and return a handle to it.

        Raises:
            TaskNotSerializableError: A part of the task cannot be serialized.
        """
        ...

    def wait(self, handle: H, timeout: float) -> RemoteProgress:
        """Block until the task ends, something happens to it, or ``timeout`` passes."""
        ...

    def cancel(self, handle: H) -> None:
        """Cancel the task (a task already running may run to its end on its worker)."""
        ...
