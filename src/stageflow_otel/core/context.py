"""What a stage sees of its run: identity, inputs, shared data, events, cancellation."""

from __future__ import annotations

import threading
import uuid
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

import anyio.lowlevel

from ._checks import describe
from .errors import (
    DataConflictError,
    OutputConflictError,
    StageCancellationRequested,
    UndeclaredDependencyError,
)
from .model import StageOutput

if TYPE_CHECKING:
    from ._executor import RunState
    from .pipeline import Pipeline, StageSpec
    from .seams import RunHook
    from .subpipeline import SubpipelineResult

__all__ = (
    "ContextBag",
    "OutputBag",
    "RunIdentity",
    "StageContext",
    "StageInputs",
)

_MISSING: Any = object()


def new_run_id() -> str:
    """Return a fresh run id (a UUID4 string)."""
    return str(uuid.uuid4())


@dataclass(frozen=True, slots=True)
class RunIdentity:
    """Who and what a run is for; every id is optional but ``pipeline_run_id``."""

    pipeline_run_id: str = field(default_factory=new_run_id)
    request_id: str | None = None
    session_id: str | None = None
    user_id: str | None = None
    org_id: str | None = None
    interaction_id: str | None = None

    def __post_init__(self) -> None:
        # Ids become span attributes and log fields: a number or an object there is a mistake.
        if not isinstance(self.pipeline_run_id, str) or not self.pipeline_run_id:
            error = ValueError if isinstance(self.pipeline_run_id, str) else TypeError
            raise error(
                "RunIdentity: pipeline_run_id must be a non-empty string, got "
                f"{describe(self.pipeline_run_id)}"
            )
        for name in ("request_id", "session_id", "user_id", "org_id", "interaction_id"):
            value = getattr(self, name)
            if value is not None and not isinstance(value, str):
                raise TypeError(
                    f"RunIdentity: {name} must be a string or None, got {describe(value)}"
                )


class ContextBag:
    """Run-wide key/value data that stages write once and others read.

    Writes are safe from concurrent stages and worker threads; a second write of a key raises
    :class:`DataConflictError` naming both stages.
    """

    __slots__ = ("_lock", "_values", "_writers")

    def __init__(self) -> None:
        self._values: dict[str, Any] = {}
        self._writers: dict[str, str] = {}
        self._lock = threading.Lock()

    def write(self, key: str, value: Any, stage_name: str) -> None:
        """Store ``value`` under ``key`` on behalf of ``stage_name``."""
        with self._lock:
            first = self._writers.get(key)
            if first is not None:
                raise DataConflictError(key, first_writer=first, second_writer=stage_name)
            self._writers[key] = stage_name
            self._values[key] = value

    def get(self, key: str, default: Any = None) -> Any:
        """Read a key."""
        return self._values.get(key, default)

    def writer_of(self, key: str) -> str | None:
        """The stage that wrote ``key``, if any."""
        return self._writers.get(key)

    def __contains__(self, key: object) -> bool:
        return key in self._values

    def to_dict(self) -> dict[str, Any]:
        """A copy of the current contents."""
        with self._lock:
            return dict(self._values)


class OutputBag:
    """The outputs of a run's stages, with how many attempts each took."""

    __slots__ = ("_attempts", "_outputs")

    def __init__(self) -> None:
        self._outputs: dict[str, StageOutput] = {}
        self._attempts: dict[str, int] = {}

    def write(
        self,
        stage_name: str,
        output: StageOutput,
        *,
        attempts: int = 1,
        allow_overwrite: bool = False,
    ) -> None:
        """Record a stage's output."""
        if not allow_overwrite and stage_name in self._outputs:
            raise OutputConflictError(stage_name)
        self._outputs[stage_name] = output
        self._attempts[stage_name] = attempts

    def get(self, stage_name: str) -> StageOutput | None:
        """The output of a stage, if recorded."""
        return self._outputs.get(stage_name)

    def attempts(self, stage_name: str) -> int:
        """Attempts the stage took (0 if it has not run)."""
        return self._attempts.get(stage_name, 0)

    def __contains__(self, stage_name: object) -> bool:
        return stage_name in self._outputs

    def __len__(self) -> int:
        return len(self._outputs)

    def outputs(self) -> Mapping[str, StageOutput]:
        """A read-only view of the outputs."""
        return MappingProxyType(self._outputs)


class StageInputs:
    """The outputs of a stage's declared dependencies.

    Reading any other stage raises :class:`UndeclaredDependencyError`, so the dependency graph
    stays the single truth about data flow.
    """

    __slots__ = ("_dependencies", "_outputs", "_stage")

    def __init__(
        self, stage: str, dependencies: tuple[str, ...], outputs: Mapping[str, StageOutput]
    ) -> None:
        self._stage = stage
        self._dependencies = dependencies
        self._outputs = outputs

    @property
    def dependencies(self) -> tuple[str, ...]:
        """The declared dependencies."""
        return self._dependencies

    def _checked(self, stage: str) -> StageOutput | None:
        if stage not in self._dependencies:
            raise UndeclaredDependencyError(
                stage, accessing_stage=self._stage, declared_deps=self._dependencies
            )
        return self._outputs.get(stage)

    def get(self, key: str, default: Any = None) -> Any:
        """The first value of ``key`` in the dependencies' output data, in declaration order."""
        outputs = self._outputs
        for dep in self._dependencies:
            out = outputs.get(dep)
            if out is not None:
                value = out.data.get(key, _MISSING)
                if value is not _MISSING:
                    return value
        return default

    def get_from(self, stage: str, key: str, default: Any = None) -> Any:
        """``key`` from the output data of dependency ``stage``."""
        out = self._checked(stage)
        return default if out is None else out.data.get(key, default)

    def require_from(self, stage: str, key: str) -> Any:
        """Like :meth:`get_from`, but a missing key raises ``KeyError`` naming the stage."""
        out = self._checked(stage)
        if out is None or key not in out.data:
            raise KeyError(
                f"stage {self._stage!r} requires key {key!r} from {stage!r}, which it lacks"
            )
        return out.data[key]

    def get_output(self, stage: str) -> StageOutput | None:
        """The whole output of dependency ``stage``."""
        return self._checked(stage)

    def has_output(self, stage: str) -> bool:
        """Whether dependency ``stage`` produced an output."""
        return self._checked(stage) is not None


class StageContext:
    """What a running stage sees.

    Attributes:
        stage_name: This stage's name.
        inputs: Outputs of the declared dependencies.
        data: The run's input data (read-only).
        identity: The run's identity.
        bag: Run-wide write-once shared data.
        attempt: Which attempt this is (1-based; retries increase it).
    """

    __slots__ = ("_inputs", "_run", "_spec", "attempt", "data", "identity", "stage_name")

    def __init__(self, run: RunState, spec: StageSpec) -> None:
        self._run = run
        self._spec = spec
        self._inputs: StageInputs | None = None
        self.stage_name = spec.name
        self.data: Mapping[str, Any] = run.data
        self.identity: RunIdentity = run.identity
        self.attempt = 1

    @property
    def inputs(self) -> StageInputs:
        """The outputs of this stage's declared dependencies."""
        inputs = self._inputs
        if inputs is None:
            spec = self._spec
            inputs = self._inputs = StageInputs(spec.name, spec.dependencies, self._run.outputs)
        return inputs

    @property
    def pipeline_run_id(self) -> str:
        """The run id."""
        return self.identity.pipeline_run_id

    @property
    def pipeline_name(self) -> str:
        """The name of the pipeline this stage belongs to."""
        return self._run.graph.name

    @property
    def bag(self) -> ContextBag:
        """Run-wide write-once shared data."""
        return self._run.bag

    @property
    def run_hooks(self) -> tuple[RunHook, ...]:
        """The hooks of the run this stage belongs to, in order.

        What a component that makes its own calls inside a stage (the tool executor) wraps
        them in: each hook's ``around_tool``.
        """
        return self._run.hooks

    @property
    def depth(self) -> int:
        """Subpipeline depth of this run (0 for a top-level run)."""
        return self._run.depth

    @property
    def parent_run_id(self) -> str | None:
        """The parent run's id for a subpipeline run."""
        return self._run.parent_run_id

    @property
    def is_cancelled(self) -> bool:
        """Whether the run has been asked to stop."""
        return self._run.stop_reason is not None

    @property
    def cancellation_reason(self) -> str | None:
        """Why the run is stopping, if it is."""
        return self._run.stop_reason

    def try_emit_event(self, type: str, data: Mapping[str, Any] | None = None) -> None:
        """Send an event to the run's sink, with ``stage`` and the run's ids added; never raises."""
        payload = dict(data) if data else {}
        payload["stage"] = self.stage_name
        self._run.emit(type, payload)

    def write(self, key: str, value: Any) -> None:
        """Write a key of the run-wide :attr:`bag` on behalf of this stage."""
        self._run.bag.write(key, value, self.stage_name)

    def register_cleanup(
        self,
        callback: Callable[[], Awaitable[object]] | Callable[[], object],
        *,
        name: str | None = None,
    ) -> None:
        """Run ``callback`` (sync or async) when the run ends, however it ends.

        Cleanups run last-in first-out, shielded from cancellation, under the graph's
        ``cleanup_timeout``; one that fails is reported in a ``pipeline.cleanup_failed`` event
        and the others still run.
        """
        self._run.cleanup.register(callback, name=name)

    def raise_if_cancelled(self) -> None:
        """Raise :class:`StageCancellationRequested` if the run is stopping."""
        reason = self._run.stop_reason
        if reason is not None:
            raise StageCancellationRequested(reason)

    async def cancellation_checkpoint(self) -> None:
        """Yield to the event loop, then :meth:`raise_if_cancelled`."""
        await anyio.lowlevel.checkpoint()
        self.raise_if_cancelled()

    async def spawn_subpipeline(
        self,
        pipeline: Pipeline,
        *,
        data: Mapping[str, Any] | None = None,
        inherit: bool | tuple[str, ...] | list[str] = False,
        correlation_id: str | None = None,
    ) -> SubpipelineResult:
        """Run ``pipeline`` as a child of this stage and wait for it.

        Args:
            pipeline: The child pipeline.
            data: Input data for the child run.
            inherit: ``True`` to pass the parent's run input on, or a list of its keys;
                ``data`` wins on conflicts.
            correlation_id: An id tying the child to what spawned it (default: a new UUID).

        Returns:
            The child's result. A failed child does not raise; see ``SubpipelineResult.success``.

        Raises:
            MaxDepthExceededError: If nesting would pass the run's ``max_depth``.
        """
        from .subpipeline import spawn_child

        return await spawn_child(
            self, pipeline, data=data, inherit=inherit, correlation_id=correlation_id
        )
