"""Undo records of undoable tool calls, kept for a time to live."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from stageflow_otel.core._checks import check_seconds, describe

from .definitions import UndoMetadata
from .errors import ToolUndoError

__all__ = ("UndoStatistics", "UndoStore")

_SWEEP_EVERY = 256
"""Expired records are swept after this many stores, so that an unattended store stays small."""


@dataclass(frozen=True, slots=True)
class UndoStatistics:
    """Counts kept by :class:`UndoStore`.

    Attributes:
        records: Records held now (expired ones included until swept).
        stored: Records stored so far.
        expired: Records dropped because their time to live passed.
    """

    records: int
    stored: int
    expired: int


class UndoStore:
    """In-memory undo records by action id, each with a time to live.

    A record past its TTL is never returned; :meth:`cleanup` drops expired records (and the
    store sweeps on its own every few hundred stores). Safe to use from several threads.

    Args:
        default_ttl: Seconds a record lives unless :meth:`store` says otherwise
            (``math.inf`` for ever).
        clock: Monotonic clock in seconds (inject a fake one in tests).
    """

    def __init__(
        self, *, default_ttl: float = 3600.0, clock: Callable[[], float] = time.monotonic
    ) -> None:
        _check_ttl(default_ttl, "default_ttl")
        if not callable(clock):
            raise TypeError(f"UndoStore: clock must be a callable, got {describe(clock)}")
        self.default_ttl = default_ttl
        self._clock = clock
        self._records: dict[str, tuple[UndoMetadata, float]] = {}
        self._lock = threading.Lock()
        self._stored = 0
        self._expired = 0

    def store(self, metadata: UndoMetadata, *, ttl: float | None = None) -> None:
        """Keep ``metadata`` under its action id for ``ttl`` seconds (default: ``default_ttl``).

        A record already stored for that action id is replaced.
        """
        ttl = self.default_ttl if ttl is None else ttl
        _check_ttl(ttl)
        expires_at = self._clock() + ttl
        with self._lock:
            self._records[metadata.action_id] = (metadata, expires_at)
            self._stored += 1
            sweep = self._stored % _SWEEP_EVERY == 0
        if sweep:
            self.cleanup()

    def get(self, action_id: str) -> UndoMetadata | None:
        """The live record of ``action_id``, or ``None`` (unknown or expired)."""
        try:
            return self.require(action_id)
        except ToolUndoError:
            return None

    def require(self, action_id: str) -> UndoMetadata:
        """The live record of ``action_id``.

        Raises:
            ToolUndoError: With reason ``unknown_action`` or ``expired`` (the expired record
                is dropped, so asking again says ``unknown_action``).
        """
        with self._lock:
            entry = self._records.get(action_id)
            if entry is not None and self._clock() >= entry[1]:
                del self._records[action_id]
                self._expired += 1
                metadata = entry[0]
                raise ToolUndoError(
                    action_id,
                    reason="expired",
                    tool=metadata.tool_name,
                    detail="its undo record expired (raise undo_ttl to keep records longer)",
                )
        if entry is None:
            raise ToolUndoError(
                action_id,
                reason="unknown_action",
                detail="no undo record (it was never recorded, already undone, or cleaned up)",
            )
        return entry[0]

    def delete(self, action_id: str) -> bool:
        """Drop the record of ``action_id``; return whether there was one."""
        with self._lock:
            return self._records.pop(action_id, None) is not None

    def cleanup(self) -> int:
        """Drop every expired record; return how many."""
        now = self._clock()
        with self._lock:
            expired = [k for k, (_, expires_at) in self._records.items() if now >= expires_at]
            for key in expired:
                del self._records[key]
            self._expired += len(expired)
        return len(expired)

    def statistics(self) -> UndoStatistics:
        """Current counts."""
        with self._lock:
            return UndoStatistics(len(self._records), self._stored, self._expired)

    def __contains__(self, action_id: object) -> bool:
        if not isinstance(action_id, str):
            return False
        with self._lock:
            entry = self._records.get(action_id)
            return entry is not None and self._clock() < entry[1]

    def __len__(self) -> int:
        now = self._clock()
        with self._lock:
            return sum(1 for _, expires_at in self._records.values() if now < expires_at)


def _check_ttl(ttl: object, name: str = "ttl") -> None:
    try:
        check_seconds(name, ttl, allow_inf=True)
    except (TypeError, ValueError) as exc:
        raise type(exc)(f"UndoStore: {exc}") from None
