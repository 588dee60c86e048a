"""Durable runs: run history, checkpoints, resume.

A run store records each run (pipeline, run id, trace id, status, start, duration, identity),
each stage (status, attempts, duration, error type) and, with ``checkpoints=True``, each
completed stage's output as a delta against the run's previous checkpoint
(:mod:`stageflow_otel.compression`), so that :func:`resume` can run a failed run again from
where it stopped. Writes happen on a worker thread; a failing store is counted and logged and
never fails a run.

Example::

    store = SQLiteRunStore("runs.sqlite3", checkpoints=True)
    graph = pipeline.build(store=store)
    try:
        await graph.run({"order_id": 7})
    except StageExecutionError as failed:
        ...  # fix what failed, then
        await resume(failed.results.run_id, graph, store=store)

Stores: :class:`SQLiteRunStore` (embedded, the default file under the user's data directory)
and :class:`PostgresRunStore` (the ``postgres`` extra: several processes or machines).
``$STAGEFLOW_OTEL_STORE`` (a path, ``sqlite:///path``, ``postgresql://...`` or ``default``)
records every run that is given no store.
"""

from __future__ import annotations

import os
import threading
from typing import TYPE_CHECKING, Any

from stageflow_otel.core._checks import env_flag

from ._model import CheckpointRecord as CheckpointRecord
from ._model import RunEnded as RunEnded
from ._model import RunRecord as RunRecord
from ._model import RunStarted as RunStarted
from ._model import StageDefinition as StageDefinition
from ._model import StageEnded as StageEnded
from ._model import StageRecord as StageRecord
from ._model import StoreWrite as StoreWrite
from ._sql import SQLRunStore as SQLRunStore
from ._sql import StoreError as StoreError
from .resume import ResumeError as ResumeError
from .resume import check_resumable as check_resumable
from .resume import definition_changes as definition_changes
from .resume import restored_outputs as restored_outputs
from .resume import resume as resume
from .sqlite import SQLiteRunStore as SQLiteRunStore
from .sqlite import default_store_path as default_store_path
from .store import RecordingStore as RecordingStore
from .store import Redactor as Redactor
from .store import RunStore as RunStore
from .store import RunStoreListener as RunStoreListener

if TYPE_CHECKING:
    from .postgres import PostgresRunStore

__all__ = (
    "STORE_VARIABLE",
    "CheckpointRecord",
    "PostgresRunStore",
    "RecordingStore",
    "Redactor",
    "ResumeError",
    "RunEnded",
    "RunRecord",
    "RunStarted",
    "RunStore",
    "RunStoreListener",
    "SQLRunStore",
    "SQLiteRunStore",
    "StageDefinition",
    "StageEnded",
    "StageRecord",
    "StoreError",
    "StoreWrite",
    "check_resumable",
    "default_store_path",
    "definition_changes",
    "open_store",
    "restored_outputs",
    "resume",
    "store_from_environment",
)

STORE_VARIABLE = "STAGEFLOW_OTEL_STORE"
"""The environment variable naming the store of runs given none."""

CHECKPOINTS_VARIABLE = "STAGEFLOW_OTEL_STORE_CHECKPOINTS"
"""``true``: the store named by ``$STAGEFLOW_OTEL_STORE`` keeps checkpoints."""


def __getattr__(name: str) -> Any:
    if name == "PostgresRunStore":  # psycopg is imported only by those who use it
        from .postgres import PostgresRunStore

        return PostgresRunStore
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def open_store(url: str | os.PathLike[str], **options: Any) -> RecordingStore:
    """The store ``url`` names.

    Args:
        url: ``default`` (the SQLite file under the user's data directory), a file path,
            ``sqlite:///path/to/file``, or ``postgresql://user@host/db`` (``postgres://``).
        **options: The store's options (``checkpoints=True``, ``redact=...``, ...).

    Raises:
        StoreError: The store cannot be opened (naming it and the fix).
        ValueError: ``url`` is empty or names an unknown kind of store.
    """
    text = os.fspath(url)
    if not text.strip():
        raise ValueError("a store URL must not be empty; use 'default', a path or a URL")
    if text.startswith(("postgresql://", "postgres://")):
        from .postgres import PostgresRunStore

        return PostgresRunStore(text, **options)
    if text == "default":
        return SQLiteRunStore(None, **options)
    if text.startswith("sqlite://"):
        path = text.removeprefix("sqlite://")
        return SQLiteRunStore(path or None, **options)
    if "://" in text:
        scheme = text.split("://", 1)[0]
        raise ValueError(
            f"unknown kind of store {scheme!r} in {text!r}; use a path, sqlite:///path or "
            "postgresql://..."
        )
    return SQLiteRunStore(text, **options)


_environment_stores: dict[tuple[str, bool], RecordingStore] = {}
_environment_lock = threading.Lock()


def store_from_environment(url: str | None = None) -> RecordingStore | None:
    """The store ``$STAGEFLOW_OTEL_STORE`` names (one per URL per process), or ``None``.

    ``$STAGEFLOW_OTEL_STORE_CHECKPOINTS=true`` makes it keep checkpoints.

    Raises:
        StoreError: The variable names a store that cannot be opened.
        ValueError: The variable names an unknown kind of store, or
            ``$STAGEFLOW_OTEL_STORE_CHECKPOINTS`` is not a boolean.
    """
    url = url if url is not None else os.environ.get(STORE_VARIABLE)
    if not url:
        return None
    checkpoints = env_flag(CHECKPOINTS_VARIABLE, False)
    key = (url, checkpoints)
    with _environment_lock:
        store = _environment_stores.get(key)
        if store is None:
            try:
                store = open_store(url, checkpoints=checkpoints)
            except (StoreError, ValueError) as exc:
                raise type(exc)(f"${STORE_VARIABLE}: {exc}") from None
            _environment_stores[key] = store
    return store
