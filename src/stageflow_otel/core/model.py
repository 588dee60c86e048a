"""The data model: stage kinds, statuses, outputs, and the ``Stage`` protocol."""

from __future__ import annotations

import datetime as _dt
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from enum import StrEnum
from typing import TYPE_CHECKING, Any, ClassVar, Protocol, runtime_checkable

if TYPE_CHECKING:
    from .context import StageContext

__all__ = (
    "NoOpStage",
    "Stage",
    "StageArtifact",
    "StageEvent",
    "StageKind",
    "StageOutput",
    "StageReturn",
    "StageStatus",
)


def utc_now() -> _dt.datetime:
    """Return the current time in UTC."""
    return _dt.datetime.now(_dt.UTC)


class StageKind(StrEnum):
    """What a stage does; used for routing decisions, dashboards and span attributes."""

    TRANSFORM = "transform"
    ENRICH = "enrich"
    ROUTE = "route"
    GUARD = "guard"
    WORK = "work"
    AGENT = "agent"


class StageStatus(StrEnum):
    """How a stage ended."""

    OK = "ok"
    SKIP = "skip"
    CANCEL = "cancel"
    FAIL = "fail"
    RETRY = "retry"


@dataclass(frozen=True, slots=True)
class StageArtifact:
    """Something a stage produced besides its data (a file, a UI payload, ...)."""

    type: str
    payload: Mapping[str, Any]
    timestamp: _dt.datetime = field(default_factory=utc_now)


@dataclass(frozen=True, slots=True)
class StageEvent:
    """An event a stage reports in its output; forwarded to the run's event sink."""

    type: str
    data: Mapping[str, Any] = field(default_factory=dict)
    timestamp: _dt.datetime = field(default_factory=utc_now)


_EMPTY: Mapping[str, Any] = {}


@dataclass(frozen=True, slots=True)
class StageOutput:
    """The result of one stage.

    Build one with the constructors :meth:`ok`, :meth:`skip`, :meth:`cancel`, :meth:`fail` and
    :meth:`retry`; a runner may also return a ``dict`` (OK with that data) or ``None`` (OK).

    Attributes:
        status: How the stage ended.
        data: Output data, readable by dependent stages.
        artifacts: Artifacts produced.
        events: Events to forward to the run's event sink.
        error: Error message for FAIL and RETRY.
        duration_ms: Wall time of the stage, filled in by the executor.
        version: Optional version tag of the output's shape.
        metadata: Facts about how the output came to be (``error_code``,
            ``idempotency_hit``, ``attempts``, ...), never user data.
        exception: The exception behind a FAIL, if any (not compared, not shown in repr).
        error_type: The failure's ``error.type`` when it is not the exception's class name:
            ``stageflow.timeout``, ``stageflow.short_circuit``, ``stageflow.unhandled_retry``,
            or the type of the exception an interceptor raised. See :attr:`timed_out`.
        short_circuited_by: The interceptor that answered without running the stage (a
            cache hit, an open circuit).
        failed_by: The interceptor that failed the stage itself (it raised, or timed it out).

    ``error_type``, ``short_circuited_by`` and ``failed_by`` are the vocabulary the engine and
    its interceptors tell observers what happened in; observers read them, never metadata.
    """

    status: StageStatus
    data: Mapping[str, Any] = field(default_factory=dict)
    artifacts: tuple[StageArtifact, ...] = ()
    events: tuple[StageEvent, ...] = ()
    error: str | None = None
    duration_ms: float | None = None
    version: str | None = None
    metadata: Mapping[str, Any] = field(default_factory=dict)
    exception: BaseException | None = field(default=None, compare=False, repr=False)
    error_type: str | None = None
    short_circuited_by: str | None = None
    failed_by: str | None = None

    @classmethod
    def ok(
        cls,
        data: Mapping[str, Any] | None = None,
        *,
        artifacts: tuple[StageArtifact, ...] = (),
        events: tuple[StageEvent, ...] = (),
        version: str | None = None,
        **kwargs: Any,
    ) -> StageOutput:
        """A successful output; keyword arguments are merged into ``data``."""
        if kwargs:
            data = {**(data or _EMPTY), **kwargs}
        return cls(
            StageStatus.OK,
            {} if data is None else data,
            artifacts,
            events,
            None,
            None,
            version,
        )

    @classmethod
    def skip(cls, reason: str = "", data: Mapping[str, Any] | None = None) -> StageOutput:
        """The stage chose not to run; dependents still run (``data["reason"]`` says why)."""
        return cls(StageStatus.SKIP, {**(data or _EMPTY), "reason": reason})

    @classmethod
    def cancel(cls, reason: str = "", data: Mapping[str, Any] | None = None) -> StageOutput:
        """Stop the whole run (``data["cancel_reason"]`` says why)."""
        return cls(StageStatus.CANCEL, {**(data or _EMPTY), "cancel_reason": reason})

    @classmethod
    def fail(
        cls,
        error: str | BaseException | None = None,
        data: Mapping[str, Any] | None = None,
        *,
        metadata: Mapping[str, Any] | None = None,
        error_type: str | None = None,
        short_circuited_by: str | None = None,
        failed_by: str | None = None,
    ) -> StageOutput:
        """The stage failed; the run fails (or, in ``continue`` mode, its dependents skip).

        Args:
            error: The message, or the exception (its message becomes ``error``).
            data: Output data.
            metadata: Facts about the failure (``error_code``, ...).
            error_type: The ``error.type``, when not the exception's class name.
            short_circuited_by: The interceptor that answered without running the stage.
            failed_by: The interceptor that failed the stage itself.
        """
        exception = error if isinstance(error, BaseException) else None
        if exception is not None:
            message = str(exception) or type(exception).__name__
        else:
            message = "Unknown error" if error is None else str(error)
        return cls(
            StageStatus.FAIL,
            data or {},
            error=message,
            metadata=metadata or {},
            exception=exception,
            error_type=error_type,
            short_circuited_by=short_circuited_by,
            failed_by=failed_by,
        )

    @classmethod
    def retry(
        cls, error: str | BaseException, data: Mapping[str, Any] | None = None
    ) -> StageOutput:
        """Ask a ``RetryInterceptor`` to run the stage again."""
        exception = error if isinstance(error, BaseException) else None
        return cls(StageStatus.RETRY, data or {}, error=str(error), exception=exception)

    def with_duration(self, duration_ms: float) -> StageOutput:
        """Return a copy with ``duration_ms`` set."""
        # The constructor, not dataclasses.replace: this runs for every stage of every run.
        return StageOutput(
            self.status,
            self.data,
            self.artifacts,
            self.events,
            self.error,
            duration_ms,
            self.version,
            self.metadata,
            self.exception,
            self.error_type,
            self.short_circuited_by,
            self.failed_by,
        )

    def with_metadata(self, **metadata: Any) -> StageOutput:
        """Return a copy with ``metadata`` extended."""
        return replace(self, metadata={**self.metadata, **metadata})

    def answered_by(self, interceptor: str) -> StageOutput:
        """Return a copy saying ``interceptor`` answered without running the stage."""
        return replace(self, short_circuited_by=interceptor)

    @property
    def timed_out(self) -> bool:
        """Whether the stage failed because it ran out of time."""
        return self.error_type == "stageflow.timeout"

    @property
    def is_success(self) -> bool:
        """True unless the stage failed or cancelled the run."""
        return self.status in (StageStatus.OK, StageStatus.SKIP)


StageReturn = StageOutput | Mapping[str, Any] | None
"""What a runner may return: a ``StageOutput``, a mapping (OK with that data) or ``None`` (OK)."""


@runtime_checkable
class Stage(Protocol):
    """**Protocol:** a stage object.

    A class implementing it may be given to ``Pipeline.with_stage`` as an instance, or as the class
    itself (instantiated with no arguments for every execution).
    """

    name: str
    kind: StageKind

    async def execute(self, ctx: StageContext) -> StageReturn:
        """Run the stage."""
        ...


class NoOpStage:
    """A stage that does nothing and succeeds; useful as a join point or in tests."""

    kind: ClassVar[StageKind] = StageKind.TRANSFORM

    def __init__(self, name: str = "noop") -> None:
        self.name = name

    async def execute(self, ctx: StageContext) -> StageReturn:
        """Return an empty OK output."""
        return _NOOP_OUTPUT


_NOOP_OUTPUT = StageOutput(StageStatus.OK)
