"""The state an executor keeps per submitted task: notes to hand over, and a wake-up."""

from __future__ import annotations

import threading
from typing import Any

from ._protocol import RemoteNote, RemoteProgress

__all__ = ("TaskHandle",)


class TaskHandle:
    """One submitted task as its executor tracks it; thread-safe.

    Whatever the engine learns about the task (from its own threads) is added with
    :meth:`note` or :meth:`finish`, and :meth:`wait` (in the stage's waiting thread) hands it
    over in order.

    Attributes:
        task_id: The executor's id of the task.
        stage: The stage it runs.
        future: The engine's own future, for the executor's use.
    """

    __slots__ = (
        "_changed",
        "_done",
        "_error",
        "_lock",
        "_lost_on",
        "_notes",
        "_value",
        "future",
        "stage",
        "task_id",
    )

    def __init__(self, task_id: str, stage: str) -> None:
        self.task_id = task_id
        self.stage = stage
        self.future: Any = None
        self._lock = threading.Lock()
        self._changed = threading.Event()
        self._notes: list[RemoteNote] = []
        self._done = False
        self._value: Any = None
        self._error: BaseException | None = None
        self._lost_on: set[str] = set()

    @property
    def done(self) -> bool:
        """Whether the outcome is known."""
        return self._done

    def note(self, type: str, **data: Any) -> None:
        """Record something that happened to the task."""
        with self._lock:
            self._notes.append(RemoteNote(type, data))
        self._changed.set()

    def note_done(self) -> None:
        """Wake the waiting thread: the engine's future ended (the executor fetches how)."""
        self._changed.set()

    def mark_lost_on(self, worker: str) -> None:
        """Remember that ``worker`` was lost while running the task."""
        with self._lock:
            self._lost_on.add(worker)

    def lost_on(self, worker: str) -> bool:
        """Whether the loss of ``worker`` was already noted."""
        return worker in self._lost_on

    def finish(self, value: Any = None, error: BaseException | None = None) -> None:
        """Record the outcome (the first one wins)."""
        with self._lock:
            if not self._done:
                self._done, self._value, self._error = True, value, error
        self._changed.set()

    def wait(self, timeout: float) -> RemoteProgress:
        """Block until something is recorded or ``timeout`` passes; hand it over."""
        self._changed.wait(timeout)
        with self._lock:
            self._changed.clear()
            notes, self._notes = tuple(self._notes), []
            return RemoteProgress(notes, self._done, self._value, self._error)
