"""The engine's seams: where interceptors and run hooks plug in, and what they are given.

An :class:`Interceptor` wraps one stage execution: it receives a :class:`StageCall` and a
``call_next`` to await, and returns the :class:`StageOutput`. Interceptors compose in list
order, the first one outermost, so what an interceptor does around ``await call_next(call)``
really encloses everything inside it (retries, timeouts, the stage itself).

A :class:`RunHook` is for observers that need to enclose a run and each part of it (tracing,
metrics, logs): ``around_run`` wraps the run, ``around_stage`` each stage outside all
interceptors, ``around_interceptor`` each interceptor's own work, ``around_subpipeline`` each
child run, ``around_tool`` each tool call, and ``on_event`` sees every event. Hooks see every
outcome, cancellation included, which they must let through, and see a run through a
read-only :class:`RunProgress`, never the executor's own state.

Every onion here (interceptors, each kind of hook) is built by one helper, :func:`compose`.
The typed call objects are :class:`StageCall`, :class:`RunCall`, :class:`SubpipelineCall` and
:class:`ToolCall`.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, Protocol, TypeVar, runtime_checkable

from .errors import InterceptorError, StageCancellationRequested, qualified_name
from .model import StageKind, StageOutput

if TYPE_CHECKING:
    from ._executor import RunState
    from .cancellation import CleanupRegistry
    from .context import RunIdentity, StageContext
    from .events import Event
    from .pipeline import PipelineResults, StageGraph, StageSpec
    from .subpipeline import ChildRunTracker

__all__ = (
    "BaseInterceptor",
    "CallNext",
    "Interceptor",
    "InterceptorChain",
    "ResumedRun",
    "RunCall",
    "RunHook",
    "RunProgress",
    "RunRecording",
    "StageCall",
    "SubpipelineCall",
    "ToolCall",
    "compose",
)

C = TypeVar("C")
R = TypeVar("R")


def compose(
    layers: Sequence[Callable[[C, Callable[[C], Awaitable[R]]], Awaitable[R]]],
    innermost: Callable[[C], Awaitable[R]],
) -> Callable[[C], Awaitable[R]]:
    """Build an onion: ``layers[0]`` outermost, ``innermost`` at the centre.

    Each layer is called with the call object and the rest of the onion to await
    (``layer(call, proceed)``), so what a layer does around ``await proceed(call)`` encloses
    everything inside it. With no layers, ``innermost`` itself is returned.
    """
    entry = innermost
    for layer in reversed(layers):
        entry = _bind(layer, entry)
    return entry


def _bind(
    layer: Callable[[C, Callable[[C], Awaitable[R]]], Awaitable[R]],
    inner: Callable[[C], Awaitable[R]],
) -> Callable[[C], Awaitable[R]]:
    async def step(call: C) -> R:
        return await layer(call, inner)

    return step


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


class RunProgress:
    """A run's progress as hooks see it: read-only, live views of the executor's state.

    Attributes:
        outputs: The outputs of the stages done so far, by name, in completion order (a live,
            read-only mapping).
        attempts: Attempts of the stages that took more than one (live, read-only).
        hooks: The run's hooks, in order.
        cleanup: The run's cleanup registry: what is registered runs when the run ends.
    """

    __slots__ = ("_state", "attempts", "cleanup", "hooks", "outputs")

    def __init__(self, state: RunState) -> None:
        self._state = state
        self.outputs: Mapping[str, StageOutput] = MappingProxyType(state.outputs)
        self.attempts: Mapping[str, int] = MappingProxyType(state.attempts)
        self.hooks: tuple[RunHook, ...] = state.hooks
        self.cleanup: CleanupRegistry = state.cleanup

    @property
    def children(self) -> ChildRunTracker | None:
        """The tracker of the child runs spawned from this run's tree, once one was spawned."""
        tracker: ChildRunTracker | None = self._state.children_tracker
        return tracker

    def __repr__(self) -> str:
        return f"RunProgress({self._state.name!r}, outputs={len(self.outputs)})"


@dataclass(frozen=True, slots=True)
class SubpipelineCall:
    """One subpipeline spawn, as ``RunHook.around_subpipeline`` sees it.

    Attributes:
        pipeline: The child pipeline's name.
        parent_pipeline: The spawning run's pipeline.
        parent_run_id: The spawning run's id.
        parent_stage: The stage that spawned the child.
        child_run_id: The child run's id.
        correlation_id: The id tying the child to what spawned it.
        depth: The child's subpipeline depth (1 for a child of a top-level run).
        context: The spawning stage's context.
    """

    pipeline: str
    parent_pipeline: str
    parent_run_id: str
    parent_stage: str
    child_run_id: str
    correlation_id: str
    depth: int
    context: StageContext = field(repr=False)


@dataclass(frozen=True, slots=True)
class ToolCall:
    """One tool call as run hooks see it (``around_tool(call, proceed)``).

    Attributes:
        tool: The tool name.
        call_id: The LLM's tool call id, if any.
        action_id: Unique id of this call.
        action_type: The tool's action type (``None`` when no such tool is registered).
        arguments: The call's arguments (user data: record only when opted in).
        behavior: The behaviour the call runs under.
        stage: The stage that made the call.
        pipeline: The pipeline of that stage.
        run_id: The run id.
        context: The stage's context.
    """

    tool: str
    call_id: str | None
    action_id: str
    action_type: str | None
    arguments: Mapping[str, Any] = field(repr=False)
    behavior: str | None
    stage: str
    pipeline: str
    run_id: str
    context: StageContext = field(repr=False, compare=False)

    @property
    def tool_name(self) -> str:
        """Alias of :attr:`tool` (the name stageflow-core's events used)."""
        return self.tool


@runtime_checkable
class RunRecording(Protocol):
    """**Protocol:** where runs are recorded: a run store of ``stageflow_otel.runs``.

    ``build(store=...)`` and ``run(store=...)`` take one; the engine adds its hook, innermost,
    to the run's hooks.
    """

    def run_hook(self, graph: StageGraph) -> RunHook:
        """The hook that records runs of ``graph``."""
        ...


@dataclass(frozen=True, slots=True)
class ResumedRun:
    """The run a new run resumes: the outputs it carries over and where to link to.

    ``stageflow_otel.runs.resume`` makes one from a run store; a run given one does not run
    the stages in ``outputs`` but takes their outputs as they are.

    Attributes:
        run_id: The resumed run's id.
        outputs: The outputs of its completed stages, by stage name.
        trace_id: Its ``pipeline.run`` span's trace id (32 hex digits), if it was traced.
        span_id: That span's id (16 hex digits), if it was traced.
    """

    run_id: str
    outputs: Mapping[str, StageOutput] = field(repr=False)
    trace_id: str | None = None
    span_id: str | None = None


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
        progress: The run as it goes (outputs so far, cleanups, child runs), read-only.
        source: Where the pipeline was declared (``Pipeline.source``, a pipeline file's
            path), or ``None``.
        resumed_from: The run this one resumes, if it does.
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
    progress: RunProgress
    source: str | None = None
    resumed_from: ResumedRun | None = None

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

    async def around_tool(
        self, call: ToolCall, proceed: Callable[[ToolCall], Awaitable[Any]]
    ) -> Any:
        """Wrap one tool call made through a ``ToolExecutor``; ``proceed(call)`` makes it.

        ``proceed`` (``stageflow_otel.tools.ToolProceed``) returns a successful ``ToolOutput``
        or raises the call's ``ToolError``; the hook returns what it returned and lets every
        exception propagate.
        """
        return await proceed(call)

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

    work = compose([_wrapper_layer(wrapper, interceptor) for wrapper in wrappers], own_work)

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
                metadata={"error_code": InterceptorError.code},
                error_type=qualified_name(exc),
                failed_by=name,
            )

    return step


def _wrapper_layer(
    wrapper: InterceptorWrapper, interceptor: Interceptor
) -> Callable[[StageCall, CallNext], Awaitable[StageOutput]]:
    """An ``around_interceptor`` wrapper as a layer of :func:`compose`."""

    async def layer(call: StageCall, inner: CallNext) -> StageOutput:
        return await wrapper(interceptor, call, inner)

    return layer


RunLayer = Callable[
    [RunCall, Callable[[RunCall], Awaitable["PipelineResults"]]], Awaitable["PipelineResults"]
]
SubpipelineLayer = Callable[
    [SubpipelineCall, Callable[[SubpipelineCall], Awaitable["PipelineResults"]]],
    Awaitable["PipelineResults"],
]


def around_each_run(hook: RunHook) -> RunLayer:
    """A hook's ``around_run`` (whose ``proceed`` takes no argument) as a layer of :func:`compose`."""
    return _no_argument_layer(hook.around_run)


def around_each_subpipeline(hook: RunHook) -> SubpipelineLayer:
    """A hook's ``around_subpipeline`` as a layer of :func:`compose`."""
    return _no_argument_layer(hook.around_subpipeline)


def _no_argument_layer(
    around: Callable[[C, Callable[[], Awaitable[R]]], Awaitable[R]],
) -> Callable[[C, Callable[[C], Awaitable[R]]], Awaitable[R]]:
    async def layer(call: C, inner: Callable[[C], Awaitable[R]]) -> R:
        async def proceed() -> R:
            return await inner(call)

        return await around(call, proceed)

    return layer
