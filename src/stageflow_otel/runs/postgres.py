"""The run store for several processes or machines: PostgreSQL, through psycopg 3.

Install it with the ``postgres`` extra: ``pip install 'stageflow-otel[postgres]'``.
"""

from __future__ import annotations

import contextlib
import re
import threading
from collections.abc import Iterator, Sequence
from typing import Any

from ._sql import SCHEMA, SQLRunStore, StoreError
from .store import Redactor, RunStoreListener

__all__ = ("PostgresRunStore",)

# Only one process creates the tables at a time (CREATE ... IF NOT EXISTS races otherwise).
_SCHEMA_LOCK = 0x5374_6167_6546_6C6F  # "StageFlo"


def _import_psycopg() -> Any:
    try:
        import psycopg
    except ImportError:
        raise StoreError(
            "the PostgreSQL run store needs psycopg 3: pip install 'stageflow-otel[postgres]'"
        ) from None
    return psycopg


class PostgresRunStore(SQLRunStore):
    """Runs, stages and checkpoints in PostgreSQL; several processes and machines may share it.

    The tables (``stageflow_runs``, ``stageflow_run_stages``, ``stageflow_run_checkpoints``)
    are made on first use. One connection is used, by one thread at a time: the writer thread
    for writes, the caller's for reads.

    Args:
        conninfo: A libpq connection string or URL (``postgresql://user@host:5432/db``).
        checkpoints: Keep each completed stage's output and the run input (see
            :class:`~stageflow_otel.runs.RecordingStore`).
        redact: ``redact(key, value)`` before an input or output value is stored.
        listener: Told of every write (metrics).
        flush_interval: Seconds between two writes of a partial batch.
        source: ``MODULE:PIPELINE`` to load the pipeline again (set by the command line).
        connect_timeout: Seconds connecting may take.

    Raises:
        StoreError: psycopg is missing, or the server cannot be reached (naming the server,
            password hidden).
    """

    kind = "postgres"
    placeholder = "%s"

    def __init__(
        self,
        conninfo: str,
        *,
        checkpoints: bool = False,
        redact: Redactor | None = None,
        listener: RunStoreListener | None = None,
        flush_interval: float = 0.05,
        source: str | None = None,
        connect_timeout: float = 10.0,
    ) -> None:
        super().__init__(
            checkpoints=checkpoints,
            redact=redact,
            listener=listener,
            flush_interval=flush_interval,
            source=source,
        )
        psycopg = _import_psycopg()
        self.location = re.sub(r"://([^:@/]*):[^@/]*@", r"://\1:***@", conninfo)
        self._connection_lock = threading.Lock()

        def connect() -> Any:
            return psycopg.connect(
                conninfo, autocommit=True, connect_timeout=max(1, int(connect_timeout))
            )

        self._connect = connect
        try:
            self._connection = connect()
            with self.transaction() as cursor:
                cursor.execute("SELECT pg_advisory_xact_lock(%s)", (_SCHEMA_LOCK,))
                for statement in SCHEMA:
                    cursor.execute(statement)
        except psycopg.Error as exc:
            raise StoreError(
                f"cannot open the run store {self.location!r}: {' '.join(str(exc).split())}; "
                "check that the server runs and the connection string"
            ) from None

    def _connected(self) -> Any:
        """The connection; a new one when the server dropped it (a restart, a failover)."""
        connection = self._connection
        if connection.broken:
            connection.close()
            connection = self._connection = self._connect()
        return connection

    @contextlib.contextmanager
    def transaction(self) -> Iterator[Any]:
        """A cursor in a transaction, committed when the block ends normally."""
        with self._connection_lock:
            connection = self._connected()
            with connection.transaction(), connection.cursor() as cursor:
                yield cursor

    def query(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        """The rows of a read-only query."""
        with self._connection_lock, self._connected().cursor() as cursor:
            cursor.execute(sql, tuple(params))
            return list(cursor.fetchall())

    def close_connection(self) -> None:
        """Close the connection."""
        with self._connection_lock:
            self._connection.close()
