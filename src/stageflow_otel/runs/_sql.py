"""What the SQL stores share: the schema, the writes, the queries (``?`` placeholders)."""

from __future__ import annotations

import datetime as _dt
import json
from collections.abc import Iterator, Sequence
from contextlib import AbstractContextManager
from typing import Any

from ._model import (
    RUN_STATUSES,
    CheckpointRecord,
    RunEnded,
    RunRecord,
    RunStarted,
    StageDefinition,
    StageEnded,
    StageRecord,
    StoreWrite,
)
from .store import RecordingStore

__all__ = ("SCHEMA", "SQLRunStore", "StoreError")

SCHEMA = (
    """CREATE TABLE IF NOT EXISTS stageflow_runs (
        run_id TEXT PRIMARY KEY,
        pipeline TEXT NOT NULL,
        status TEXT NOT NULL,
        started_at DOUBLE PRECISION NOT NULL,
        duration_ms DOUBLE PRECISION,
        trace_id TEXT,
        span_id TEXT,
        identity TEXT NOT NULL,
        failed_stage TEXT,
        error_type TEXT,
        error TEXT,
        input TEXT,
        resumed_from TEXT,
        source TEXT,
        host TEXT,
        pid INTEGER,
        checkpoints INTEGER NOT NULL
    )""",
    "CREATE INDEX IF NOT EXISTS stageflow_runs_by_start ON stageflow_runs (started_at)",
    """CREATE TABLE IF NOT EXISTS stageflow_run_stages (
        run_id TEXT NOT NULL,
        name TEXT NOT NULL,
        position INTEGER NOT NULL,
        fingerprint TEXT NOT NULL,
        definition TEXT NOT NULL,
        status TEXT NOT NULL,
        attempts INTEGER NOT NULL,
        duration_ms DOUBLE PRECISION,
        error_type TEXT,
        error TEXT,
        restored INTEGER NOT NULL,
        PRIMARY KEY (run_id, name)
    )""",
    """CREATE TABLE IF NOT EXISTS stageflow_run_checkpoints (
        run_id TEXT NOT NULL,
        seq INTEGER NOT NULL,
        stage TEXT NOT NULL,
        status TEXT NOT NULL,
        base_seq INTEGER,
        delta TEXT NOT NULL,
        size INTEGER NOT NULL,
        full_size INTEGER NOT NULL,
        PRIMARY KEY (run_id, seq)
    )""",
)
"""The tables every SQL store has (``CREATE ... IF NOT EXISTS``: made on first use)."""

_RUN_COLUMNS = (
    "run_id, pipeline, status, started_at, duration_ms, trace_id, span_id, identity, "
    "failed_stage, error_type, error, resumed_from, source, host, pid, checkpoints"
)
_INSERT_RUN = (
    "INSERT INTO stageflow_runs (run_id, pipeline, status, started_at, trace_id, span_id, "
    "identity, input, resumed_from, source, host, pid, checkpoints) "
    "VALUES (?, ?, 'running', ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) "
    "ON CONFLICT (run_id) DO NOTHING"
)
_INSERT_STAGE = (
    "INSERT INTO stageflow_run_stages (run_id, name, position, fingerprint, definition, status, "
    "attempts, restored) VALUES (?, ?, ?, ?, ?, 'pending', 0, 0) "
    "ON CONFLICT (run_id, name) DO NOTHING"
)
_END_STAGE = (
    "UPDATE stageflow_run_stages SET status = ?, attempts = ?, duration_ms = ?, error_type = ?, "
    "error = ?, restored = ? WHERE run_id = ? AND name = ?"
)
_INSERT_CHECKPOINT = (
    "INSERT INTO stageflow_run_checkpoints (run_id, seq, stage, status, base_seq, delta, size, "
    "full_size) VALUES (?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (run_id, seq) DO NOTHING"
)
_END_RUN = (
    "UPDATE stageflow_runs SET status = ?, duration_ms = ?, failed_stage = ?, error_type = ?, "
    "error = ? WHERE run_id = ?"
)


class StoreError(RuntimeError):
    """A run store cannot be opened or read (the message names the store and the fix)."""


class SQLRunStore(RecordingStore):
    """A run store in a SQL database; subclasses connect (see ``SQLiteRunStore``).

    A subclass provides :meth:`transaction` (a connection in a transaction, committed when
    the block ends without an error) and :meth:`query`; statements use ``?`` placeholders,
    which :attr:`placeholder` replaces.
    """

    placeholder = "?"

    def transaction(self) -> AbstractContextManager[Any]:
        """A context manager yielding a cursor-like object with ``execute``/``executemany``."""
        raise NotImplementedError

    def query(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        """The rows of a read-only query."""
        raise NotImplementedError

    def _sql(self, sql: str) -> str:
        return sql if self.placeholder == "?" else sql.replace("?", self.placeholder)

    # -- writes ----------------------------------------------------------------------------

    def write(self, records: Sequence[StoreWrite | CheckpointRecord], /) -> int:
        """Write ``records``, in order, in one transaction; return the bytes written."""
        written = 0
        with self.transaction() as cursor:
            for statement, params in _statements(records):
                if isinstance(params, list):
                    cursor.executemany(self._sql(statement), params)
                    written += sum(_bytes(row) for row in params)
                else:
                    cursor.execute(self._sql(statement), params)
                    written += _bytes(params)
        return written

    def delete_runs(
        self, *, before: _dt.datetime, pipeline: str | None = None, status: str | None = None
    ) -> int:
        """Delete the ended runs started before ``before``; return how many.

        Their stages and checkpoints go with them, in one transaction; runs still ``running``
        are kept.

        Raises:
            ValueError: An unknown ``status``, or ``running``.
        """
        if status is not None and (status not in RUN_STATUSES or status == "running"):
            ended = ", ".join(s for s in RUN_STATUSES if s != "running")
            raise ValueError(f"status must be one of {ended}, got {status!r}")
        where = ["started_at < ?", "status <> 'running'"]
        params: list[Any] = [_epoch(before)]
        if pipeline is not None:
            where.append("pipeline = ?")
            params.append(pipeline)
        if status is not None:
            where.append("status = ?")
            params.append(status)
        chosen = f"SELECT run_id FROM stageflow_runs WHERE {' AND '.join(where)}"
        with self.transaction() as cursor:
            for table in ("stageflow_run_checkpoints", "stageflow_run_stages"):
                cursor.execute(self._sql(f"DELETE FROM {table} WHERE run_id IN ({chosen})"), params)
            cursor.execute(
                self._sql(f"DELETE FROM stageflow_runs WHERE {' AND '.join(where)}"), params
            )
            deleted = cursor.rowcount
        return max(int(deleted), 0)

    # -- reads -----------------------------------------------------------------------------

    def list_runs(
        self,
        *,
        pipeline: str | None = None,
        status: str | None = None,
        since: _dt.datetime | None = None,
        limit: int = 50,
    ) -> list[RunRecord]:
        """Runs, newest first, without their stages.

        Raises:
            ValueError: An unknown ``status`` or a ``limit`` below 1.
        """
        if status is not None and status not in RUN_STATUSES:
            raise ValueError(f"status must be one of {', '.join(RUN_STATUSES)}, got {status!r}")
        if not isinstance(limit, int) or limit < 1:
            raise ValueError(f"limit must be a whole number of at least 1, got {limit!r}")
        where: list[str] = []
        params: list[Any] = []
        if pipeline is not None:
            where.append("pipeline = ?")
            params.append(pipeline)
        if status is not None:
            where.append("status = ?")
            params.append(status)
        if since is not None:
            where.append("started_at >= ?")
            params.append(_epoch(since) - 1e-6)  # a microsecond of float rounding
        clause = f" WHERE {' AND '.join(where)}" if where else ""
        rows = self.query(
            self._sql(
                f"SELECT {_RUN_COLUMNS} FROM stageflow_runs{clause} "
                f"ORDER BY started_at DESC, run_id LIMIT {int(limit)}"
            ),
            params,
        )
        return [_run(row) for row in rows]

    def get_run(self, run_id: str) -> RunRecord | None:
        """A run with its stages, by id or by a prefix of it that only one run has.

        Raises:
            StoreError: The prefix matches more than one run.
        """
        rows = self.query(
            self._sql(f"SELECT {_RUN_COLUMNS}, input FROM stageflow_runs WHERE run_id = ?"),
            [run_id],
        )
        if not rows and run_id:
            pattern = run_id.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"
            rows = self.query(
                self._sql(
                    f"SELECT {_RUN_COLUMNS}, input FROM stageflow_runs "
                    "WHERE run_id LIKE ? ESCAPE '\\' ORDER BY started_at DESC LIMIT 6"
                ),
                [pattern],
            )
            if len(rows) > 1:
                ids = ", ".join(str(row[0]) for row in rows[:5])
                raise StoreError(
                    f"{run_id!r} is the start of more than one run id ({ids}); give more of it"
                )
        if not rows:
            return None
        row = rows[0]
        stages = self.query(
            self._sql(
                "SELECT name, position, definition, status, attempts, duration_ms, error_type, "
                "error, restored FROM stageflow_run_stages WHERE run_id = ? ORDER BY position"
            ),
            [row[0]],
        )
        record = _run(row[:-1])
        return _with(
            record,
            input=json.loads(row[-1]) if row[-1] is not None else None,
            stages=tuple(
                StageRecord(
                    name=s[0],
                    position=int(s[1]),
                    definition=StageDefinition.from_json(s[0], s[2]),
                    status=s[3],
                    attempts=int(s[4]),
                    duration_ms=s[5],
                    error_type=s[6],
                    error=s[7],
                    restored=bool(s[8]),
                )
                for s in stages
            ),
        )

    def read_checkpoints(self, run_id: str) -> list[CheckpointRecord]:
        """A run's checkpoints, in order."""
        rows = self.query(
            self._sql(
                "SELECT run_id, seq, stage, status, base_seq, delta, size, full_size "
                "FROM stageflow_run_checkpoints WHERE run_id = ? ORDER BY seq"
            ),
            [run_id],
        )
        return [
            CheckpointRecord(r[0], int(r[1]), r[2], r[3], r[4], r[5], int(r[6]), int(r[7]))
            for r in rows
        ]

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.location!r}, checkpoints={self.checkpoints})"


def _statements(
    records: Sequence[StoreWrite | CheckpointRecord],
) -> Iterator[tuple[str, tuple[Any, ...] | list[tuple[Any, ...]]]]:
    for record in records:
        if isinstance(record, RunStarted):
            yield (
                _INSERT_RUN,
                (
                    record.run_id,
                    record.pipeline,
                    record.started_at,
                    record.trace_id,
                    record.span_id,
                    json.dumps(dict(record.identity), sort_keys=True),
                    record.input,
                    record.resumed_from,
                    record.source,
                    record.host,
                    record.pid,
                    int(record.checkpoints),
                ),
            )
            yield (
                _INSERT_STAGE,
                [
                    (record.run_id, d.name, i, d.fingerprint, d.as_json())
                    for i, d in enumerate(record.stages)
                ],
            )
        elif isinstance(record, StageEnded):
            yield (
                _END_STAGE,
                (
                    record.status,
                    record.attempts,
                    record.duration_ms,
                    record.error_type,
                    record.error,
                    int(record.restored),
                    record.run_id,
                    record.stage,
                ),
            )
            checkpoint = record.checkpoint
            if checkpoint is not None and checkpoint.delta:
                yield _INSERT_CHECKPOINT, _checkpoint_row(checkpoint)
        elif isinstance(record, CheckpointRecord):
            yield _INSERT_CHECKPOINT, _checkpoint_row(record)
        elif isinstance(record, RunEnded):
            yield (
                _END_RUN,
                (
                    record.status,
                    record.duration_ms,
                    record.failed_stage,
                    record.error_type,
                    record.error,
                    record.run_id,
                ),
            )
        else:
            raise TypeError(f"a run store cannot write {type(record).__name__}")


def _checkpoint_row(c: CheckpointRecord) -> tuple[Any, ...]:
    return (c.run_id, c.seq, c.stage, c.status, c.base_seq, c.delta, c.size, c.full_size)


def _bytes(row: Sequence[Any]) -> int:
    return sum(len(v.encode()) if isinstance(v, str) else 8 for v in row if v is not None)


def _epoch(value: _dt.datetime) -> float:
    if value.tzinfo is None:
        value = value.astimezone()  # a naive time is local time
    return value.timestamp()


def _run(row: Sequence[Any]) -> RunRecord:
    return RunRecord(
        run_id=row[0],
        pipeline=row[1],
        status=row[2],
        started_at=_dt.datetime.fromtimestamp(float(row[3]), _dt.UTC),
        duration_ms=row[4],
        trace_id=row[5],
        span_id=row[6],
        identity=json.loads(row[7]),
        failed_stage=row[8],
        error_type=row[9],
        error=row[10],
        resumed_from=row[11],
        source=row[12],
        host=row[13],
        pid=row[14],
        checkpoints=bool(row[15]),
    )


def _with(record: RunRecord, **changes: Any) -> RunRecord:
    import dataclasses

    return dataclasses.replace(record, **changes)
