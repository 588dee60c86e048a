"""The embedded run store: one SQLite file in WAL mode, under the user's data directory."""

from __future__ import annotations

import contextlib
import os
import sqlite3
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from ._sql import SCHEMA, SQLRunStore, StoreError
from .store import Redactor, RunStoreListener

__all__ = ("SQLiteRunStore", "default_store_path")

_SCHEMA_VERSION = 1


def default_store_path() -> Path:
    """``$XDG_DATA_HOME/stageflow-otel/runs.sqlite3`` (``~/.local/share`` when unset)."""
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "stageflow-otel" / "runs.sqlite3"


class SQLiteRunStore(SQLRunStore):
    """Runs, stages and checkpoints in a SQLite file (WAL mode: readers never wait for writes).

    Several processes may share the file; the writes of each are short transactions. For
    several machines, use :class:`~stageflow_otel.runs.PostgresRunStore`.

    Args:
        path: The database file (made, with its directory, if missing); ``None``:
            :func:`default_store_path`.
        checkpoints: Keep each completed stage's output and the run input (see
            :class:`~stageflow_otel.runs.RecordingStore`).
        redact: ``redact(key, value)`` before an input or output value is stored.
        listener: Told of every write (metrics).
        flush_interval: Seconds between two writes of a partial batch.
        source: ``MODULE:PIPELINE`` to load the pipeline again (set by the command line).

    Raises:
        StoreError: The file cannot be opened or is not a run store (naming the path).
    """

    kind = "sqlite"

    def __init__(
        self,
        path: str | os.PathLike[str] | None = None,
        *,
        checkpoints: bool = False,
        redact: Redactor | None = None,
        listener: RunStoreListener | None = None,
        flush_interval: float = 0.05,
        source: str | None = None,
    ) -> None:
        super().__init__(
            checkpoints=checkpoints,
            redact=redact,
            listener=listener,
            flush_interval=flush_interval,
            source=source,
        )
        self.path = Path(path) if path is not None else default_store_path()
        self.location = str(self.path)
        self._connection_lock = threading.Lock()
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._connection = sqlite3.connect(
                self.path, timeout=30.0, isolation_level=None, check_same_thread=False
            )
            self._connection.execute("PRAGMA journal_mode=WAL")
            # WAL with NORMAL: a committed write survives the process being killed.
            self._connection.execute("PRAGMA synchronous=NORMAL")
            version = self._connection.execute("PRAGMA user_version").fetchone()[0]
            if version > _SCHEMA_VERSION:
                raise StoreError(
                    f"{self.path} holds runs of a newer stageflow-otel (schema {version}); "
                    "upgrade stageflow-otel, or use another file"
                )
            with self.transaction() as cursor:
                for statement in SCHEMA:
                    cursor.execute(statement)
                cursor.execute(f"PRAGMA user_version = {_SCHEMA_VERSION}")
        except sqlite3.Error as exc:
            raise StoreError(
                f"cannot open the run store {str(self.path)!r}: {exc}; check the path and its "
                "permissions, or pass another one"
            ) from None

    @contextlib.contextmanager
    def transaction(self) -> Iterator[sqlite3.Cursor]:
        """The connection in a write transaction, committed when the block ends normally."""
        with self._connection_lock:
            cursor = self._connection.cursor()
            cursor.execute("BEGIN IMMEDIATE")
            try:
                yield cursor
            except BaseException:
                cursor.execute("ROLLBACK")
                raise
            else:
                cursor.execute("COMMIT")
            finally:
                cursor.close()

    def query(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        """The rows of a read-only query."""
        with self._connection_lock:
            return list(self._connection.execute(sql, tuple(params)).fetchall())

    def close_connection(self) -> None:
        """Close the connection."""
        with self._connection_lock:
            self._connection.close()
