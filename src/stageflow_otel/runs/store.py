"""The run store protocol, and the recording every store shares: a queue, a writer thread.

A store keeps runs (:class:`~stageflow_otel.runs.RunRecord`), their stages and their
checkpoints. Recording never happens on the event loop: the run hook puts what happened on
the queue of a :class:`~stageflow_otel.core.BackpressureAwareEventSink`, whose worker thread
encodes each checkpoint as a delta against the run's previous one and writes batches, one
transaction each. A write that fails is retried, then counted and logged; the run goes on.
"""

from __future__ import annotations

import datetime as _dt
import json
import logging
import threading
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Protocol, Self, runtime_checkable

from stageflow_otel.core import BackpressureAwareEventSink, BackpressureStatistics, SinkListener
from stageflow_otel.core.events import Event

from ._model import CheckpointRecord, RunEnded, RunRecord, StageEnded, StoreWrite

if TYPE_CHECKING:
    from stageflow_otel.core import RunHook, StageGraph

__all__ = ("RecordingStore", "Redactor", "RunStore", "RunStoreListener")

logger = logging.getLogger("stageflow_otel.runs")

Redactor = Callable[[str, Any], Any]
"""``redact(key, value) -> value`` runs on each top-level key of a stored input or output."""


@runtime_checkable
class RunStore(Protocol):
    """**Protocol:** where runs are kept. Every method may block: call it off the event loop.

    The built-in stores (:class:`~stageflow_otel.runs.SQLiteRunStore`,
    :class:`~stageflow_otel.runs.PostgresRunStore`) subclass :class:`RecordingStore`, which
    adds the recording; a store of your own does too, and implements these.
    """

    kind: str
    """A short name for metric labels and messages (``sqlite``, ``postgres``)."""

    def write(self, records: Sequence[StoreWrite | CheckpointRecord], /) -> int:
        """Write ``records``, in order, in one transaction; return the bytes written."""
        ...

    def list_runs(
        self,
        *,
        pipeline: str | None = None,
        status: str | None = None,
        since: _dt.datetime | None = None,
        limit: int = 50,
    ) -> list[RunRecord]:
        """Runs, newest first, without their stages."""
        ...

    def get_run(self, run_id: str) -> RunRecord | None:
        """A run with its stages, by id or by a prefix of it that only one run has."""
        ...

    def read_checkpoints(self, run_id: str) -> list[CheckpointRecord]:
        """A run's checkpoints, in order."""
        ...

    def delete_runs(
        self, *, before: _dt.datetime, pipeline: str | None = None, status: str | None = None
    ) -> int:
        """Delete the ended runs started before ``before``; return how many.

        Their stages and checkpoints go with them; runs still ``running`` are kept.
        """
        ...


class RunStoreListener(SinkListener):
    """**Base class:** observes a store's writes (the metrics of ``stageflow_otel.observability``).

    The hooks of :class:`~stageflow_otel.core.SinkListener` see the records (``on_result``
    with ``exported``, ``export_failed``, ``dropped_queue_full`` or ``dropped_shutdown``) and
    each batch written (``on_export``); ``on_bytes`` sees the bytes of each batch written.
    Hooks run on the writer thread and must be cheap.
    """

    def on_bytes(self, count: int) -> None:
        """A batch of ``count`` bytes was written."""


class RecordingStore:
    """The recording part of a store: the run hook, the queue and the writer thread.

    Args:
        checkpoints: Keep each completed stage's output (and the run input), which
            :func:`~stageflow_otel.runs.resume` needs. Off by default: a store keeps no payload
            values unless told to.
        redact: ``redact(key, value)`` runs on each top-level key of the run input and of each
            output before it is stored (pass the one you give ``Telemetry(redact=...)``); what
            it returns is what a resumed run gets back.
        listener: Told of every write (see :class:`RunStoreListener`), e.g.
            ``telemetry.store_listener(store)``.
        max_queue_size: Records waiting to be written before new ones are dropped (counted).
        flush_interval: Seconds between two writes of a partial batch.
        source: How to load the pipeline again (``MODULE:PIPELINE``), recorded with each run
            for ``stageflow-otel resume``; the command line sets it.
    """

    kind = "store"
    location = ""

    def __init__(
        self,
        *,
        checkpoints: bool = False,
        redact: Redactor | None = None,
        listener: RunStoreListener | None = None,
        max_queue_size: int = 65536,
        flush_interval: float = 0.05,
        source: str | None = None,
    ) -> None:
        if not isinstance(checkpoints, bool):
            raise TypeError(f"checkpoints must be True or False, got {checkpoints!r}")
        if redact is not None and not callable(redact):
            raise TypeError(f"redact must be a function redact(key, value) or None, got {redact!r}")
        self.checkpoints = checkpoints
        self.redact = redact
        self.source = source
        self._listener = listener
        self._max_queue_size = max_queue_size
        self._flush_interval = flush_interval
        self._sink: BackpressureAwareEventSink | None = None
        self._lock = threading.Lock()

    # -- the store's own part (a subclass implements these) ----------------------------------

    def write(self, records: Sequence[StoreWrite | CheckpointRecord], /) -> int:
        """Write ``records`` in one transaction; return the bytes written."""
        raise NotImplementedError

    def list_runs(
        self,
        *,
        pipeline: str | None = None,
        status: str | None = None,
        since: _dt.datetime | None = None,
        limit: int = 50,
    ) -> list[RunRecord]:
        """Runs, newest first, without their stages."""
        raise NotImplementedError

    def get_run(self, run_id: str) -> RunRecord | None:
        """A run with its stages, by id or by a prefix of it that only one run has."""
        raise NotImplementedError

    def read_checkpoints(self, run_id: str) -> list[CheckpointRecord]:
        """A run's checkpoints, in order."""
        raise NotImplementedError

    def delete_runs(
        self, *, before: _dt.datetime, pipeline: str | None = None, status: str | None = None
    ) -> int:
        """Delete the ended runs started before ``before``; return how many.

        Their stages and checkpoints go with them; runs still ``running`` are kept.
        """
        raise NotImplementedError

    def close_connection(self) -> None:
        """Release the store's connections (after the last write)."""

    # -- recording -------------------------------------------------------------------------

    @property
    def listener(self) -> RunStoreListener | None:
        """Told of every write; set it before the first run is recorded."""
        return self._listener

    @listener.setter
    def listener(self, value: RunStoreListener | None) -> None:
        if self._sink is not None:
            raise RuntimeError(
                "the store's writer has started; pass the listener when making the store"
            )
        self._listener = value

    def run_hook(self, graph: StageGraph) -> RunHook:
        """The hook that records runs of ``graph`` here (the engine asks for it)."""
        from ._hook import RecordingHook

        return RecordingHook(self, graph)

    @property
    def writer(self) -> BackpressureAwareEventSink:
        """The queue and writer thread of this store (made on first use)."""
        sink = self._sink
        if sink is None:
            with self._lock:
                sink = self._sink
                if sink is None:
                    sink = self._sink = BackpressureAwareEventSink(
                        _Writer(self, self._listener),
                        max_queue_size=self._max_queue_size,
                        max_batch_size=min(512, self._max_queue_size),
                        flush_interval=self._flush_interval,
                        name=f"run_store:{self.kind}",
                        listener=self._listener,
                        exit_timeout=10.0,
                    )
        return sink

    def record(self, item: StoreWrite, *, data: Mapping[str, Any] | None = None) -> None:
        """Queue ``item`` for writing; never blocks, never raises (a full queue drops it)."""
        self.writer.try_emit_event(Event("run_store.write", {"record": item, "data": data}))

    def flush(self, timeout: float = 10.0) -> bool:
        """Write everything queued so far; returns whether it was done within ``timeout``."""
        sink = self._sink
        return True if sink is None else sink.force_flush(timeout)

    def statistics(self) -> BackpressureStatistics | None:
        """The writer's queue: records written, failed and dropped (``None`` before any run)."""
        sink = self._sink
        return None if sink is None else sink.statistics()

    def close(self, timeout: float = 10.0) -> bool:
        """Write what is queued, stop the writer thread and release the connections."""
        sink = self._sink
        done = True if sink is None else sink.shutdown(timeout)
        self.close_connection()
        return done

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    # -- helpers for reading ---------------------------------------------------------------

    def as_json(self, data: Mapping[str, Any] | None) -> str | None:
        """``data`` as JSON text after ``redact``; ``None`` when it is not JSON-compatible."""
        if data is None:
            return None
        value = self.redacted(data)
        try:
            return json.dumps(value, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
        except (TypeError, ValueError):
            return None

    def redacted(self, data: Mapping[str, Any]) -> dict[str, Any]:
        """``data`` as a dict, each top-level value passed through ``redact``."""
        redact = self.redact
        if redact is None:
            return dict(data)
        return {key: redact(key, value) for key, value in data.items()}


class _Writer:
    """The batch exporter of a store's queue: encodes checkpoints, writes batches.

    A run's snapshot after its k-th checkpoint is its context so far, ``{stage: output}`` of
    every checkpointed stage; checkpoint k is the delta from snapshot k-1 to snapshot k. A stage
    only adds its own key, so the delta is that key's entry, and writing a checkpoint costs what
    its output costs, not what the whole context does. Runs on the writer thread only; a run's
    previous checkpoint moves on only once a batch is committed, so a batch that failed for
    good leaves no delta pointing at it.
    """

    def __init__(self, store: RecordingStore, listener: RunStoreListener | None) -> None:
        self._store = store
        self._listener = listener
        # run id -> (seq of its last checkpoint written, bytes of its snapshot in full)
        self._previous: dict[str, tuple[int, int]] = {}
        self._warned: set[str] = set()

    def export(self, batch: Sequence[Event], /) -> bool:
        previous = dict(self._previous)
        records: list[StoreWrite | CheckpointRecord] = []
        ended: list[str] = []
        for event in batch:
            record = event.fields["record"]
            if isinstance(record, StageEnded) and record.checkpoint is not None:
                checkpoint = self._encode(record, event.fields["data"], previous)
                record = _replace_checkpoint(record, checkpoint)
            elif isinstance(record, RunEnded):
                ended.append(record.run_id)
            records.append(record)
        try:
            written = self._store.write(records)
        except Exception as exc:
            logger.debug(
                "run store %r: a write of %d records failed",
                self._store.kind,
                len(records),
                exc_info=exc,
            )
            raise
        for run_id in ended:
            previous.pop(run_id, None)
        self._previous = previous
        if self._listener is not None:
            try:
                self._listener.on_bytes(written)
            except Exception:
                logger.exception("run store listener %r failed", self._listener)
                self._listener = None
        return True

    def _encode(
        self, record: StageEnded, data: Any, previous: dict[str, tuple[int, int]]
    ) -> CheckpointRecord | None:
        placeholder = record.checkpoint
        assert placeholder is not None
        try:
            text = json.dumps(
                self._store.redacted(data or {}),
                separators=(",", ":"),
                ensure_ascii=False,
                allow_nan=False,
            )
        except (TypeError, ValueError) as exc:
            if record.stage not in self._warned:
                self._warned.add(record.stage)
                logger.warning(
                    "run store: the output of stage %r is not JSON-compatible (%s); it is not "
                    "checkpointed, and a resumed run runs the stage again",
                    record.stage,
                    exc,
                )
            return None
        base_seq, snapshot_size = previous.get(record.run_id, (None, len("{}")))
        key = json.dumps(record.stage, ensure_ascii=False)
        # What compression.encode(snapshot, snapshot | {stage: output}) makes, written straight
        # from the output's JSON: the snapshot gains one key, nothing else changes.
        delta = f'["{{",{{{key}:["=",{text}]}},[]]'
        # The snapshot in full gains `"stage":output` (and a comma after the first entry).
        full_size = snapshot_size + len(key.encode()) + 1 + len(text.encode())
        full_size += base_seq is not None
        previous[record.run_id] = (placeholder.seq, full_size)
        return CheckpointRecord(
            record.run_id,
            placeholder.seq,
            record.stage,
            placeholder.status,
            base_seq,
            delta,
            len(delta.encode()),
            full_size,
        )

    def shutdown(self) -> None:
        self._previous.clear()


def _replace_checkpoint(record: StageEnded, checkpoint: CheckpointRecord | None) -> StageEnded:
    return StageEnded(
        record.run_id,
        record.stage,
        record.status,
        record.attempts,
        record.duration_ms,
        record.error_type,
        record.error,
        record.restored,
        checkpoint,
    )
