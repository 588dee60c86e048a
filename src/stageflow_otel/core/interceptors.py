"""Interceptors and run hooks: the onion around every stage and every run.

An :class:`Interceptor` wraps one stage execution: it receives a :class:`StageCall` and a
``call_next`` to await, and returns the :class:`StageOutput`. Interceptors compose in list
order, the first one outermost, so what an interceptor does around ``await call_next(call)``
really encloses everything inside it (retries, timeouts, the stage itself).

A :class:`RunHook` is for observers that need to enclose a whole run and each stage of it
(tracing, metrics, logs): ``around_run`` wraps the run, ``around_stage`` wraps each stage outside
all interceptors, ``around_interceptor`` wraps each interceptor's own work, and ``on_event``
sees every event. Hooks see every
outcome, including cancellation, which they must let through.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

from .errors import InterceptorError, StageCancellationRequested
from .model import StageKind, StageOutput

if TYPE_CHECKING:
    from .context import RunIdentity, StageContext
    from .events import Event
    from .executor import PipelineResults, RunState
    from .pipeline import StageSpec
    from .subpipeline import SubpipelineCall

__all__ = (
    "BaseInterceptor",
    "CallNext",
    "Interceptor",
    "InterceptorChain",
    "RunCall",
    "RunHook",
    "StageCall",
)


class StageCall:
    """One stage execution as interceptors see it.

    Attributes:
        stage: The stage name.
        kind: The stage kind.
        context: The stage's context.
        spec: The stage's declaration.
        pipeline: The pipeline name.
        queue_wait_s: Seconds between "all dependencies done" and "started".
        started_at: ``time.perf_counter()`` when the stage started.
    """

    __slots__ = ("context", "kind", "pipeline", "queue_wait_s", "spec", "stage", "started_at")

    def __init__(
        self,
        spec: StageSpec,
        context: StageContext,
        pipeline: str,
        queue_wait_s: float,
        started_at: float,
    ) -> None:
        self.spec = spec
        self.stage = spec.name
        self.kind: StageKind = spec.kind
        self.context = context
        self.pipeline = pipeline
        self.queue_wait_s = queue_wait_s
        self.started_at = started_at

    @property
    def attempt(self) -> int:
        """The current attempt, 1-based; a retrying interceptor increases it."""
        return self.context.attempt

    @attempt.setter
    def attempt(self, value: int) -> None:
        self.context.attempt = value

    @property
    def run_id(self) -> str:
        """The run id."""
        return self.context.identity.pipeline_run_id

    def emit(self, type: str, data: Mapping[str, Any] | None = None) -> None:
        """Send an event about this stage to the run's sink; never raises."""
        self.context.try_emit_event(type, data)


CallNext = Callable[[StageCall], Awaitable[StageOutput]]
"""What an interceptor awaits to run the rest of the chain (and finally the stage)."""


@runtime_checkable
class Interceptor(Protocol):
    """**Protocol:** wraps the execution of a stage.

    An interceptor never sees the stage's exceptions: a stage that raises reaches the chain as a
    FAIL :class:`StageOutput` whose ``exception`` is set. An interceptor that raises fails its
    stage with an :class:`InterceptorError` naming it; it never hangs the run. Cancellation is a
    ``BaseException`` and must be let through.
    """

    @property
    def name(self) -> str:
        """A short, stable name (used in errors, span names and metric labels)."""
        ...

    async def intercept(self, call: StageCall, call_next: CallNext) -> StageOutput:
        """Run ``call_next(call)`` (zero or more times) and return the output."""
        ...


class BaseInterceptor:
    """A pass-through interceptor to subclass; ``name`` defaults to the class name."""

    name: str = ""

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if not cls.__dict__.get("name"):
            cls.name = cls.__name__

    async def intercept(self, call: StageCall, call_next: CallNext) -> StageOutput:
        """Pass the call through."""
        return await call_next(call)


@dataclass(frozen=True, slots=True)
class RunCall:
    """One pipeline run as run hooks see it.

    Attributes:
        pipeline: The pipeline name.
        identity: The run's identity.
        data: The run input.
        stage_names: The stages of the pipeline, in declaration order.
        depth: Subpipeline depth (0 for a top-level run).
        parent_run_id: For a subpipeline run, the parent run's id.
        parent_stage: For a subpipeline run, the stage that spawned it.
        correlation_id: For a subpipeline run, the id tying it to what spawned it.
        traceparent: A W3C ``traceparent`` the run should join, if given.
        entry_point: True when the run is the process's main unit of work (the CLI).
        state: The live run state (outputs so far).
    """

    pipeline: str
    identity: RunIdentity
    data: Mapping[str, Any]
    stage_names: tuple[str, ...]
    depth: int
    parent_run_id: str | None
    parent_stage: str | None
    correlation_id: str | None
    traceparent: str | None
    entry_point: bool
    state: RunState

    @property
    def run_id(self) -> str:
        """The run id."""
        return self.identity.pipeline_run_id


class RunHook:
    """Base class of run hooks; every method passes through unless overridden.

    Hooks are for observing, not changing, a run: return what ``proceed`` returns and let every
    exception, cancellation included, propagate.

    Attributes:
        observed_events: The event types ``on_event`` needs even when the run has no event
            sink (``None``: all of them). Events nobody receives are never built.
    """

    observed_events: frozenset[str] | None = None

    async def around_run(
        self, run: RunCall, proceed: Callable[[], Awaitable[PipelineResults]]
    ) -> PipelineResults:
        """Wrap a whole run; ``proceed()`` returns its results or raises."""
        return await proceed()

    async def around_stage(self, call: StageCall, proceed: CallNext) -> StageOutput:
        """Wrap one stage, outside all interceptors."""
        return await proceed(call)

    async def around_interceptor(
        self, interceptor: Interceptor, call: StageCall, proceed: CallNext
    ) -> StageOutput:
        """Wrap one interceptor's part of a stage; ``proceed`` runs that interceptor."""
        return await proceed(call)

    async def around_subpipeline(
        self, call: SubpipelineCall, proceed: Callable[[], Awaitable[PipelineResults]]
    ) -> PipelineResults:
        """Wrap a child run spawned by a stage; ``proceed()`` runs it (with its own hooks)."""
        return await proceed()

    def on_event(self, event: Event) -> None:
        """See every event of the run before its sinks do; may set its trace context.

        Called in the context that emits the event (inside the stage for stage events), even
        when the run has no event sink. Must be cheap and must not raise; must not change
        ``event.fields``.
        """

    @classmethod
    def overrides(cls, method: str) -> bool:
        """Whether the subclass overrides ``method`` (unused hooks cost nothing)."""
        return getattr(cls, method) is not getattr(RunHook, method)


def qualified_name(exc: BaseException) -> str:
    """The qualified class name of an exception, as ``error.type`` wants it."""
    cls = type(exc)
    module = cls.__module__
    if module in ("builtins", "__main__"):
        return cls.__qualname__
    return f"{module}.{cls.__qualname__}"


InterceptorWrapper = Callable[[Interceptor, StageCall, CallNext], Awaitable[StageOutput]]


class InterceptorChain:
    """Interceptors composed around an innermost call, first = outermost."""

    __slots__ = ("_entry", "interceptors")

    def __init__(
        self,
        interceptors: Sequence[Interceptor],
        innermost: CallNext,
        *,
        wrappers: Sequence[InterceptorWrapper] = (),
    ) -> None:
        self.interceptors = tuple(interceptors)
        entry = innermost
        for interceptor in reversed(self.interceptors):
            entry = _link(interceptor, entry, tuple(wrappers))
        self._entry = entry

    async def __call__(self, call: StageCall) -> StageOutput:
        """Run the chain."""
        return await self._entry(call)


def _link(
    interceptor: Interceptor, call_next: CallNext, wrappers: tuple[InterceptorWrapper, ...]
) -> CallNext:
    name = interceptor.name

    async def own_work(call: StageCall) -> StageOutput:
        return await interceptor.intercept(call, call_next)

    work: CallNext = own_work
    for wrapper in reversed(wrappers):
        work = _wrap(wrapper, interceptor, work)

    async def step(call: StageCall) -> StageOutput:
        try:
            return await work(call)
        except StageCancellationRequested as exc:
            return StageOutput.cancel(exc.reason)
        except Exception as exc:  # cancellation is a BaseException and passes through
            error = InterceptorError(
                f"interceptor {name!r} raised {type(exc).__name__}: {exc}", interceptor_name=name
            )
            error.__cause__ = exc
            return StageOutput.fail(
                error,
                metadata={
                    "error_type": qualified_name(exc),
                    "error_code": InterceptorError.code,
                    "interceptor": name,
                },
            )

    return step


def _wrap(wrapper: InterceptorWrapper, interceptor: Interceptor, inner: CallNext) -> CallNext:
    async def wrapped(call: StageCall) -> StageOutput:
        return await wrapper(interceptor, call, inner)

    return wrapped
