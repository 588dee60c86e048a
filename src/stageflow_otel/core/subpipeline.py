"""Subpipelines: a stage runs a child pipeline as part of its own work.

The child gets its own run id and records ``parent_run_id``, ``parent_stage``,
``correlation_id`` and its depth. Its events go to the parent run's sinks, its hooks are the
parent's (so a child's spans land in the parent's trace), and it runs inside the spawning
stage: cancelling the parent cancels the child.
"""

from __future__ import annotations

import threading
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ._checks import check_count, describe, sequence_of
from ._executor import RunState
from .context import RunIdentity, StageContext
from .errors import MaxDepthExceededError, PipelineCancelled, StageExecutionError
from .model import StageOutput
from .pipeline import PipelineResults
from .seams import SubpipelineCall, around_each_subpipeline, compose
from .wide_events import error_type_of

if TYPE_CHECKING:
    from .pipeline import Pipeline

__all__ = (
    "ChildRunStatistics",
    "ChildRunTracker",
    "SubpipelineResult",
    "SubpipelineSpawner",
)


@dataclass(frozen=True, slots=True)
class SubpipelineResult:
    """How a child run ended.

    Attributes:
        success: Whether every stage of the child succeeded.
        status: ``ok``, ``fail`` or ``cancel``.
        pipeline: The child pipeline's name.
        child_run_id: The child's run id.
        correlation_id: The correlation id given or made at spawn.
        results: The child's results (partial when it failed).
        error: What went wrong, if anything.
        error_type: The failing stage's ``error.type``, if any.
        failed_stage: The child's failing stage, if any.
        duration_ms: Wall time of the child run.
    """

    success: bool
    status: str
    pipeline: str
    child_run_id: str
    correlation_id: str
    results: PipelineResults
    error: str | None = None
    error_type: str | None = None
    failed_stage: str | None = None
    duration_ms: float = 0.0

    def data(self, stage: str) -> Mapping[str, Any]:
        """A child stage's output data."""
        return self.results.data(stage)


@dataclass(frozen=True, slots=True)
class ChildRunStatistics:
    """Counts kept by :class:`ChildRunTracker`."""

    spawned: int
    completed: int
    failed: int
    cancelled: int
    active: int
    max_depth_seen: int
    max_concurrent: int


class ChildRunTracker:
    """The tree of runs spawned from one top-level run, with statistics."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._parent: dict[str, str] = {}
        self._children: dict[str, list[str]] = {}
        self._status: dict[str, str] = {}
        self._depth: dict[str, int] = {}
        self._max_concurrent = 0

    def register_child(self, parent_run_id: str, child_run_id: str, *, depth: int) -> None:
        """Record a new child run."""
        with self._lock:
            self._parent[child_run_id] = parent_run_id
            self._children.setdefault(parent_run_id, []).append(child_run_id)
            self._status[child_run_id] = "running"
            self._depth[child_run_id] = depth
            active = sum(1 for s in self._status.values() if s == "running")
            self._max_concurrent = max(self._max_concurrent, active)

    def complete_child(self, child_run_id: str, status: str) -> None:
        """Record how a child ended (``ok``, ``fail`` or ``cancel``)."""
        with self._lock:
            self._status[child_run_id] = status

    def get_children(self, run_id: str) -> list[str]:
        """Direct children of a run."""
        return list(self._children.get(run_id, ()))

    def get_parent(self, run_id: str) -> str | None:
        """The parent of a run."""
        return self._parent.get(run_id)

    def get_all_descendants(self, run_id: str) -> list[str]:
        """Every run below ``run_id``, breadth first."""
        found: list[str] = []
        frontier = [run_id]
        while frontier:
            nxt: list[str] = []
            for rid in frontier:
                kids = self._children.get(rid, ())
                found.extend(kids)
                nxt.extend(kids)
            frontier = nxt
        return found

    def get_root_run(self, run_id: str) -> str:
        """The top-level run of ``run_id``'s tree."""
        while run_id in self._parent:
            run_id = self._parent[run_id]
        return run_id

    def status_of(self, run_id: str) -> str | None:
        """``running``, ``ok``, ``fail`` or ``cancel``."""
        return self._status.get(run_id)

    def statistics(self) -> ChildRunStatistics:
        """A snapshot of the counts."""
        with self._lock:
            statuses = list(self._status.values())
            return ChildRunStatistics(
                spawned=len(statuses),
                completed=statuses.count("ok"),
                failed=statuses.count("fail"),
                cancelled=statuses.count("cancel"),
                active=statuses.count("running"),
                max_depth_seen=max(self._depth.values(), default=0),
                max_concurrent=self._max_concurrent,
            )


class SubpipelineSpawner:
    """Spawns subpipelines with settings of its own (a deeper or shallower ``max_depth``)."""

    def __init__(self, *, max_depth: int | None = None) -> None:
        try:
            self.max_depth = check_count("max_depth", max_depth, minimum=0, allow_none=True)
        except (TypeError, ValueError) as exc:
            raise type(exc)(f"SubpipelineSpawner: {exc}") from None

    async def spawn(
        self,
        ctx: StageContext,
        pipeline: Pipeline,
        *,
        data: Mapping[str, Any] | None = None,
        inherit: bool | Sequence[str] = False,
        correlation_id: str | None = None,
    ) -> SubpipelineResult:
        """Run ``pipeline`` as a child of the stage whose context is ``ctx``."""
        return await spawn_child(
            ctx,
            pipeline,
            data=data,
            inherit=inherit,
            correlation_id=correlation_id,
            max_depth=self.max_depth,
        )


async def spawn_child(
    ctx: StageContext,
    pipeline: Pipeline,
    *,
    data: Mapping[str, Any] | None = None,
    inherit: bool | Sequence[str] = False,
    correlation_id: str | None = None,
    max_depth: int | None = None,
) -> SubpipelineResult:
    """Run ``pipeline`` as a child of ``ctx``'s stage; see ``StageContext.spawn_subpipeline``.

    Raises:
        TypeError: An argument has the wrong type (naming the stage, the parameter and the
            value given).
        MaxDepthExceededError: If nesting would pass the run's ``max_depth``.
        PipelineValidationError: The child pipeline is invalid.
    """
    _check_spawn_arguments(ctx.stage_name, pipeline, data, inherit, correlation_id)
    parent: RunState = ctx._run
    limit = parent.max_depth if max_depth is None else max_depth
    depth = parent.depth + 1
    if depth > limit:
        raise MaxDepthExceededError(
            current_depth=parent.depth, max_depth=limit, parent_run_id=parent.run_id
        )
    graph = pipeline._graph_cache or pipeline.build()
    pipeline._graph_cache = graph
    child_data: dict[str, Any] = {}
    if inherit is True:
        child_data.update(parent.data)
    elif inherit:
        child_data.update({k: parent.data[k] for k in inherit if k in parent.data})
    if data:
        child_data.update(data)
    parent_identity = parent.identity
    identity = RunIdentity(
        pipeline_run_id=str(uuid.uuid4()),
        request_id=parent_identity.request_id,
        session_id=parent_identity.session_id,
        user_id=parent_identity.user_id,
        org_id=parent_identity.org_id,
        interaction_id=parent_identity.interaction_id,
    )
    correlation = correlation_id or str(uuid.uuid4())
    tracker = parent.children_tracker
    if tracker is None:
        tracker = parent.children_tracker = ChildRunTracker()
    tracker.register_child(parent.run_id, identity.pipeline_run_id, depth=depth)
    child = RunState(
        graph,
        child_data,
        identity,
        hooks=parent.hooks,
        inherited_sinks=parent.sinks,
        depth=depth,
        parent_run_id=parent.run_id,
        parent_stage=ctx.stage_name,
        correlation_id=correlation,
        max_depth=limit,
        children_tracker=tracker,
    )
    base = {
        "parent_run_id": parent.run_id,
        "child_run_id": identity.pipeline_run_id,
        "parent_stage": ctx.stage_name,
        "child_pipeline": graph.name,
        "correlation_id": correlation,
        "depth": depth,
    }
    parent.emit("pipeline.spawned_child", dict(base))
    call = SubpipelineCall(
        pipeline=graph.name,
        parent_pipeline=parent.name,
        parent_run_id=parent.run_id,
        parent_stage=ctx.stage_name,
        child_run_id=identity.pipeline_run_id,
        correlation_id=correlation,
        depth=depth,
        context=ctx,
    )

    async def start_child(_: SubpipelineCall) -> PipelineResults:
        return await child.start()

    spawn = compose(
        [
            around_each_subpipeline(hook)
            for hook in parent.hooks
            if type(hook).overrides("around_subpipeline")
        ],
        start_child,
    )
    try:
        results = await spawn(call)
    except StageExecutionError as exc:
        failed: StageOutput | None = exc.results.get(exc.stage)
        result = SubpipelineResult(
            success=False,
            status="fail",
            pipeline=graph.name,
            child_run_id=identity.pipeline_run_id,
            correlation_id=correlation,
            results=_as_results(exc.results, graph.name, identity.pipeline_run_id, "fail"),
            error=exc.message,
            error_type=error_type_of(failed) if failed is not None else None,
            failed_stage=exc.stage,
            duration_ms=getattr(exc.results, "duration_ms", 0.0),
        )
    except PipelineCancelled as exc:
        result = SubpipelineResult(
            success=False,
            status="cancel",
            pipeline=graph.name,
            child_run_id=identity.pipeline_run_id,
            correlation_id=correlation,
            results=_as_results(exc.results, graph.name, identity.pipeline_run_id, "cancel"),
            error=exc.message,
            duration_ms=getattr(exc.results, "duration_ms", 0.0),
        )
    except BaseException:
        tracker.complete_child(identity.pipeline_run_id, "cancel")
        parent.emit(
            "pipeline.child_failed", {**base, "status": "cancel", "error": "parent cancelled"}
        )
        raise
    else:
        result = SubpipelineResult(
            success=True,
            status="ok",
            pipeline=graph.name,
            child_run_id=identity.pipeline_run_id,
            correlation_id=correlation,
            results=results,
            duration_ms=results.duration_ms,
        )
    tracker.complete_child(identity.pipeline_run_id, result.status)
    if result.success:
        parent.emit(
            "pipeline.child_completed",
            {**base, "status": "ok", "duration_ms": round(result.duration_ms, 3)},
        )
    else:
        parent.emit(
            "pipeline.child_failed",
            {
                **base,
                "status": result.status,
                "duration_ms": round(result.duration_ms, 3),
                "error": result.error,
                "failed_stage": result.failed_stage,
            },
        )
    return result


def _check_spawn_arguments(
    stage: str, pipeline: object, data: object, inherit: object, correlation_id: object
) -> None:
    from .pipeline import Pipeline

    where = f"stage {stage!r}: spawn_subpipeline() "
    if not isinstance(pipeline, Pipeline):
        raise TypeError(f"{where}takes a Pipeline, got {describe(pipeline)}")
    if data is not None and not isinstance(data, Mapping):
        raise TypeError(f"{where}data must be a mapping or None, got {describe(data)}")
    if not isinstance(inherit, bool):
        keys = sequence_of(
            "inherit", inherit, item="keys of the run input, or True/False", where=where
        )
        for index, key in enumerate(keys):
            if not isinstance(key, str):
                raise TypeError(
                    f"{where}inherit[{index}] must be a key of the run input (a string), got "
                    f"{describe(key)}"
                )
    if correlation_id is not None and not isinstance(correlation_id, str):
        raise TypeError(
            f"{where}correlation_id must be a string or None, got {describe(correlation_id)}"
        )


def _as_results(
    results: Mapping[str, StageOutput], pipeline: str, run_id: str, status: str
) -> PipelineResults:
    if isinstance(results, PipelineResults):
        return results
    return PipelineResults(results, pipeline=pipeline, run_id=run_id, status=status)
