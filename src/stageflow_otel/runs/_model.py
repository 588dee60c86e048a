"""What a run store writes and reads: runs, their stages, checkpoints; stage definitions."""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import weakref
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypeAlias

if TYPE_CHECKING:
    from stageflow_otel.core import StageGraph

__all__ = (
    "CheckpointRecord",
    "RunEnded",
    "RunRecord",
    "RunStarted",
    "StageDefinition",
    "StageEnded",
    "StageRecord",
    "StoreWrite",
    "definitions_of",
)

RUN_STATUSES = ("running", "ok", "fail", "cancel")
"""A run's status in a store: ``running`` until its end is recorded."""


@dataclass(frozen=True, slots=True)
class StageDefinition:
    """What a stage is, as far as resuming goes: its place in the DAG and what runs it.

    The code of the stage and its timeout are left out on purpose: fixing them is how a
    failed run is made to pass when resumed.

    Attributes:
        name: The stage name.
        kind: Its ``StageKind`` value.
        dependencies: Its dependencies, as declared.
        function: The qualified name of its runner.
    """

    name: str
    kind: str
    dependencies: tuple[str, ...]
    function: str

    @property
    def fingerprint(self) -> str:
        """A short hash of the definition (16 hex digits)."""
        text = json.dumps([self.name, self.kind, list(self.dependencies), self.function])
        return hashlib.sha256(text.encode()).hexdigest()[:16]

    def as_json(self) -> str:
        """The definition as JSON text (what a store keeps)."""
        return json.dumps(
            {"kind": self.kind, "dependencies": list(self.dependencies), "function": self.function}
        )

    @classmethod
    def from_json(cls, name: str, text: str) -> StageDefinition:
        """The definition a store kept for stage ``name``."""
        value = json.loads(text)
        return cls(name, value["kind"], tuple(value["dependencies"]), value["function"])

    def changes_from(self, before: StageDefinition) -> list[str]:
        """What differs from ``before``, one phrase each (empty when nothing does)."""
        changes = []
        for label, old, new in (
            ("kind", before.kind, self.kind),
            ("dependencies", list(before.dependencies), list(self.dependencies)),
            ("function", before.function, self.function),
        ):
            if old != new:
                changes.append(f"{label} {old!r} -> {new!r}")
        return changes


_definitions: weakref.WeakKeyDictionary[StageGraph, tuple[StageDefinition, ...]] = (
    weakref.WeakKeyDictionary()
)


def definitions_of(graph: StageGraph) -> tuple[StageDefinition, ...]:
    """The stage definitions of ``graph``, in its (topological) order; computed once per graph."""
    found = _definitions.get(graph)
    if found is None:
        found = tuple(
            StageDefinition(spec.name, spec.kind.value, spec.dependencies, spec.function_name)
            for spec in graph.specs
        )
        _definitions[graph] = found
    return found


# -- what the recorder writes ---------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class RunStarted:
    """A run began: its row, and one ``pending`` row per stage.

    Attributes:
        run_id: The run id.
        pipeline: The pipeline name.
        started_at: When it began (seconds since the epoch).
        trace_id: Its trace (32 hex digits) when it was traced.
        span_id: Its ``pipeline.run`` span (16 hex digits) when it was traced.
        identity: Its ``RunIdentity`` ids that are set.
        stages: The pipeline's stage definitions.
        input: The run input as JSON text (only when the store keeps checkpoints).
        resumed_from: The run it resumes, if it does.
        source: How to load its pipeline again (``MODULE:PIPELINE``), when known.
        host: The host it ran on.
        pid: The process it ran in.
        checkpoints: Whether its stage outputs are checkpointed.
    """

    run_id: str
    pipeline: str
    started_at: float
    trace_id: str | None
    span_id: str | None
    identity: Mapping[str, str]
    stages: tuple[StageDefinition, ...]
    input: str | None
    resumed_from: str | None
    source: str | None
    host: str
    pid: int
    checkpoints: bool


@dataclass(frozen=True, slots=True)
class CheckpointRecord:
    """A stage's output, as a delta against the run's previous checkpoint.

    Attributes:
        run_id: The run id.
        seq: Its place among the run's checkpoints (1, 2, ...).
        stage: The stage whose output it is.
        status: The stage's status (``ok`` or ``skip``).
        base_seq: The checkpoint the delta applies to; ``None``: it applies to nothing (the
            output in full).
        delta: The delta's ops as JSON text (``stageflow_otel.compression``).
        size: Bytes of ``delta``.
        full_size: Bytes of the output written in full.
    """

    run_id: str
    seq: int
    stage: str
    status: str
    base_seq: int | None
    delta: str
    size: int
    full_size: int


@dataclass(frozen=True, slots=True)
class StageEnded:
    """A stage ended (or was restored from the run a resumed run resumes).

    Attributes:
        run_id: The run id.
        stage: The stage name.
        status: ``ok``, ``skip``, ``fail`` or ``cancel``.
        attempts: Attempts it took.
        duration_ms: Its wall time.
        error_type: For a failure, the error type.
        error: For a failure, the message.
        restored: Taken from the resumed run rather than run.
        checkpoint: Its output, when checkpointed.
    """

    run_id: str
    stage: str
    status: str
    attempts: int
    duration_ms: float | None
    error_type: str | None = None
    error: str | None = None
    restored: bool = False
    checkpoint: CheckpointRecord | None = None


@dataclass(frozen=True, slots=True)
class RunEnded:
    """A run ended.

    Attributes:
        run_id: The run id.
        status: ``ok``, ``fail`` or ``cancel``.
        duration_ms: Its wall time.
        failed_stage: The first stage that failed.
        error_type: That stage's error type.
        error: That stage's error message (or why the run was cancelled).
    """

    run_id: str
    status: str
    duration_ms: float
    failed_stage: str | None = None
    error_type: str | None = None
    error: str | None = None


StoreWrite: TypeAlias = RunStarted | StageEnded | RunEnded
"""One thing a store writes; ``RunStore.write`` takes a batch of them."""


# -- what a store reads back ----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class StageRecord:
    """One stage of a recorded run.

    Attributes:
        name: The stage name.
        position: Its place in the pipeline's topological order.
        definition: What it was when the run began.
        status: ``pending`` (never ended), ``ok``, ``skip``, ``fail`` or ``cancel``.
        attempts: Attempts it took (0 when it never ended).
        duration_ms: Its wall time.
        error_type: For a failure, the error type.
        error: For a failure, the message.
        restored: Taken from the run this one resumes rather than run.
    """

    name: str
    position: int
    definition: StageDefinition
    status: str
    attempts: int
    duration_ms: float | None
    error_type: str | None
    error: str | None
    restored: bool


@dataclass(frozen=True, slots=True)
class RunRecord:
    """One recorded run.

    Attributes:
        run_id: The run id.
        pipeline: The pipeline name.
        status: ``running`` (no end recorded: still running, or its process died), ``ok``,
            ``fail`` or ``cancel``.
        started_at: When it began (UTC).
        duration_ms: Its wall time, once ended.
        trace_id: Its trace (32 hex digits), when traced.
        span_id: Its ``pipeline.run`` span, when traced.
        identity: Its ``RunIdentity`` ids that were set.
        failed_stage: The first stage that failed.
        error_type: That stage's error type.
        error: That stage's error message (or why the run was cancelled).
        resumed_from: The run it resumed, if it did.
        source: How to load its pipeline again (``MODULE:PIPELINE``), when known.
        host: The host it ran on.
        pid: The process it ran in.
        checkpoints: Whether its stage outputs were checkpointed.
        input: The run input (JSON), when checkpointed.
        stages: Its stages, in the pipeline's order (empty in listings).
    """

    run_id: str
    pipeline: str
    status: str
    started_at: _dt.datetime
    duration_ms: float | None
    trace_id: str | None
    span_id: str | None
    identity: Mapping[str, str]
    failed_stage: str | None
    error_type: str | None
    error: str | None
    resumed_from: str | None
    source: str | None
    host: str | None
    pid: int | None
    checkpoints: bool
    input: Any = field(default=None, repr=False)
    stages: Sequence[StageRecord] = ()
