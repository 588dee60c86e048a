"""Resuming a failed, cancelled or interrupted run from its checkpoints."""

from __future__ import annotations

import json
import os
import socket
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import anyio.to_thread

from stageflow_otel.compression import DeltaError, apply
from stageflow_otel.core import (
    Pipeline,
    PipelineResults,
    ResumedRun,
    RunIdentity,
    StageGraph,
    StageOutput,
    StageStatus,
)

from ._model import RunRecord, StageDefinition, definitions_of

if TYPE_CHECKING:
    from stageflow_otel.core import CancellationToken, EventSink, RunHook

    from .store import RecordingStore

__all__ = ("ResumeError", "definition_changes", "restored_outputs", "resume")


class ResumeError(RuntimeError):
    """A run cannot be resumed; the message says why and what to do.

    Attributes:
        run_id: The run asked for.
        changes: When the pipeline changed since the run, what changed (one line each).
    """

    def __init__(self, message: str, *, run_id: str, changes: Sequence[str] = ()) -> None:
        super().__init__(message)
        self.run_id = run_id
        self.changes = tuple(changes)


def definition_changes(
    recorded: Sequence[StageDefinition], current: Sequence[StageDefinition]
) -> list[str]:
    """What differs between a run's stages and a pipeline's, one line per stage."""
    before = {d.name: d for d in recorded}
    now = {d.name: d for d in current}
    changes = [f"stage {name!r} was removed" for name in before if name not in now]
    changes += [f"stage {name!r} was added" for name in now if name not in before]
    for name, definition in now.items():
        old = before.get(name)
        if old is not None and old.fingerprint != definition.fingerprint:
            changes.append(f"stage {name!r}: {'; '.join(definition.changes_from(old))}")
    return changes


def restored_outputs(store: RecordingStore, record: RunRecord) -> dict[str, StageOutput]:
    """The outputs of a run's completed stages, rebuilt from its checkpoints.

    The run's snapshot (``{stage: output}``) is rebuilt by applying its checkpoints' deltas in
    order. A checkpoint whose base is not the snapshot rebuilt so far (a write that failed in
    between) ends the rebuild: the stages after it run again.
    """
    done = {s.name for s in record.stages if s.status in ("ok", "skip")}
    snapshot: Any = {}
    rebuilt: int | None = None
    statuses: dict[str, str] = {}
    for checkpoint in store.read_checkpoints(record.run_id):
        if checkpoint.base_seq != rebuilt:
            break
        try:
            snapshot = apply(json.loads(checkpoint.delta), snapshot)
        except (DeltaError, ValueError):
            break
        rebuilt = checkpoint.seq
        statuses[checkpoint.stage] = checkpoint.status
    outputs: dict[str, StageOutput] = {}
    for stage, status in statuses.items():
        data = snapshot.get(stage) if isinstance(snapshot, dict) else None
        if stage in done and isinstance(data, dict):
            outputs[stage] = StageOutput(StageStatus(status), data)
    return outputs


def _still_running(record: RunRecord) -> bool:
    if record.pid is None or record.host != socket.gethostname():
        return False  # another machine's run: its end would have been recorded
    if record.pid == os.getpid():
        return True
    try:
        os.kill(record.pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def check_resumable(record: RunRecord, graph: StageGraph) -> None:
    """Raise :class:`ResumeError` unless ``graph`` can resume the recorded run.

    Raises:
        ResumeError: The run succeeded or is still running, was recorded without
            checkpoints, is of another pipeline, or the pipeline's stages changed since.
    """
    run_id = record.run_id
    if record.status == "ok":
        raise ResumeError(f"run {run_id} succeeded; there is nothing to resume", run_id=run_id)
    if record.status == "running" and _still_running(record):
        raise ResumeError(
            f"run {run_id} is still running (process {record.pid} on {record.host}); resume "
            "it once it has ended",
            run_id=run_id,
        )
    if not record.checkpoints:
        raise ResumeError(
            f"run {run_id} was recorded without checkpoints, so its stage outputs are not "
            "kept; record runs with checkpoints=True (--checkpoints) to resume them",
            run_id=run_id,
        )
    if record.pipeline != graph.name:
        raise ResumeError(
            f"run {run_id} is a run of pipeline {record.pipeline!r}, not {graph.name!r}",
            run_id=run_id,
        )
    changes = definition_changes([s.definition for s in record.stages], definitions_of(graph))
    if changes:
        raise ResumeError(
            f"pipeline {graph.name!r} changed since run {run_id}, so it cannot be resumed: "
            + "; ".join(changes)
            + ". Run it anew, or resume with the pipeline as it was",
            run_id=run_id,
            changes=changes,
        )


async def resume(
    run_id: str,
    pipeline: Pipeline | StageGraph,
    *,
    store: RecordingStore,
    hooks: Sequence[RunHook] | None = None,
    event_sink: EventSink | None = None,
    cancel_token: CancellationToken | None = None,
    entry_point: bool = False,
) -> PipelineResults:
    """Run a failed, cancelled or interrupted run again, from where it stopped.

    Stages that completed (and were checkpointed) are not run: their outputs come back from
    the store. The others run, with the run's input and identity (a new run id). The new run
    is recorded in ``store`` with ``resumed_from`` set, and its ``pipeline.run`` span links to
    the old run's (link role ``resumed_from``).

    Args:
        run_id: The run to resume (or a prefix of its id only it has).
        pipeline: The pipeline the run ran; its stages must be the ones the run had (same
            names, kinds, dependencies and runner names; the code and timeouts may change).
        store: The store the run was recorded in, with ``checkpoints=True``.
        hooks: Run hooks for the new run (``None``: the graph's or the installed ones).
        event_sink: Where the new run's events go.
        cancel_token: Cancels the new run.
        entry_point: Whether the new run is the process's main unit of work.

    Returns:
        The new run's results (the restored outputs included).

    Raises:
        ResumeError: No such run; it succeeded or is still running; it was recorded without
            checkpoints; or the pipeline changed since (``.changes`` lists how).
        StageExecutionError: A stage failed again.
        PipelineCancelled: The new run was cancelled.
    """
    graph = pipeline if isinstance(pipeline, StageGraph) else pipeline.build()
    record = await anyio.to_thread.run_sync(_load, store, run_id)
    if record is None:
        raise ResumeError(
            f"there is no run {run_id!r} in {store!r}; list the runs with `stageflow-otel runs`",
            run_id=run_id,
        )
    check_resumable(record, graph)
    run_id = record.run_id
    outputs = await anyio.to_thread.run_sync(restored_outputs, store, record)
    identity = RunIdentity(**dict(record.identity))
    return await graph.run(
        record.input if isinstance(record.input, dict) else None,
        identity=identity,
        hooks=hooks,
        event_sink=event_sink,
        cancel_token=cancel_token,
        entry_point=entry_point,
        store=store,
        resumed_from=ResumedRun(run_id, outputs, record.trace_id, record.span_id),
    )


def _load(store: RecordingStore, run_id: str) -> RunRecord | None:
    store.flush()  # this process's own records of the run
    return store.get_run(run_id)
