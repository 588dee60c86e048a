"""Declaring pipelines: ``Pipeline.with_stage(...)``, validation, and the compiled ``StageGraph``."""

from __future__ import annotations

import difflib
import functools
import inspect
from collections import deque
from collections.abc import Awaitable, Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, Literal, TypeVar, overload

import anyio.to_thread

from ._checks import (
    check_bool,
    check_count,
    check_hooks,
    check_run_arguments,
    check_seconds,
    check_sink,
    check_store,
    describe,
    interceptor_problem,
    is_async_callable,
    sequence_of,
)
from .context import RunIdentity
from .errors import CycleDetectedError, PipelineValidationError, format_names
from .model import StageKind, StageOutput, StageReturn, StageStatus
from .seams import Interceptor, ResumedRun, RunHook, RunRecording
from .wide_events import WideEventEmitter

if TYPE_CHECKING:
    from .cancellation import CancellationToken
    from .context import StageContext
    from .events import EventSink

__all__ = (
    "FailureMode",
    "Pipeline",
    "PipelineResults",
    "StageGraph",
    "StageRunner",
    "StageSpec",
    "stage_fn",
)

_EMPTY_DATA: Mapping[str, Any] = MappingProxyType({})
_FAIL = StageStatus.FAIL

FailureMode = Literal["fail_fast", "continue"]
"""``fail_fast``: the first failure cancels running stages and fails the run. ``continue``:
independent branches finish, dependents of a failed stage are skipped, then the run fails."""

StageRunner = Any
"""A ``Stage`` instance or class, an ``async def f(ctx)``, or a plain ``def f(ctx)``."""

Invoke = Callable[["StageContext"], Awaitable[StageReturn]]


def _callable_name(obj: Any) -> str:
    target: Any = obj if isinstance(obj, type) or inspect.isroutine(obj) else type(obj)
    if isinstance(obj, functools.partial):
        target = obj.func
    module = getattr(target, "__module__", None) or ""
    qualname = getattr(target, "__qualname__", None) or repr(target)
    return f"{module}.{qualname}" if module else qualname


_RUNNERS = "a Stage instance or class, an `async def f(ctx)` or a `def f(ctx)`"
_KINDS = ", ".join(repr(k.value) for k in StageKind)


def _declared_kind(name: str, runner: Any) -> StageKind | None:
    """The kind a runner declares with a ``kind`` attribute, if any."""
    try:
        declared = getattr(runner, "kind", None)
    except Exception:  # a property that raises declares nothing
        return None
    if not isinstance(declared, str):
        return None
    try:
        return StageKind(declared)
    except ValueError:
        raise PipelineValidationError(
            f"stage {name!r}: its runner declares kind {declared!r}, which is not a stage kind "
            f"({_KINDS})",
            stages=(name,),
            fix_hint="fix the runner's `kind` attribute or pass kind= to with_stage",
        ) from None


def _check_constructible(name: str, cls: type) -> None:
    """A stage class is instantiated for every execution, without arguments."""
    try:
        signature = inspect.signature(cls)
    except (TypeError, ValueError):  # no signature to read (a builtin): let it be
        return
    required = [
        p.name
        for p in signature.parameters.values()
        if p.default is p.empty and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)
    ]
    if required:
        raise PipelineValidationError(
            f"stage {name!r}: class {cls.__qualname__} is instantiated for every execution "
            f"without arguments, but its constructor requires {', '.join(required)}",
            stages=(name,),
            fix_hint=f"pass an instance instead: with_stage({name!r}, {cls.__qualname__}(...))",
        )


def _resolve_runner(name: str, runner: Any) -> tuple[Invoke, str, StageKind | None]:
    """Turn a runner into ``invoke(ctx)``, a function name, and the kind it declares."""
    if inspect.iscoroutine(runner):
        qualname = getattr(runner, "__qualname__", "f")
        runner.close()  # never awaited: close it rather than leak a warning
        raise PipelineValidationError(
            f"stage {name!r}: runner is a coroutine (the result of calling {qualname}), not a "
            "stage",
            stages=(name,),
            fix_hint=f"pass the function itself, without calling it: with_stage({name!r}, "
            f"{qualname.rsplit('.', 1)[-1]})",
        )
    if isinstance(runner, type):
        if not callable(getattr(runner, "execute", None)):
            raise PipelineValidationError(
                f"stage {name!r}: class {runner.__qualname__} has no execute(ctx) method",
                stages=(name,),
                fix_hint="implement `async def execute(self, ctx)` or pass a function",
            )
        _check_constructible(name, runner)
        cls = runner

        async def invoke_class(ctx: StageContext) -> StageReturn:
            return await cls().execute(ctx)  # type: ignore[no-any-return]

        return invoke_class, _callable_name(runner), _declared_kind(name, runner)
    try:
        execute = getattr(runner, "execute", None)
    except Exception:  # a property that raises: not a stage object
        execute = None
    if execute is not None and callable(execute) and not inspect.isroutine(runner):
        if not is_async_callable(execute):
            raise PipelineValidationError(
                f"stage {name!r}: {type(runner).__qualname__}.execute must be `async def`",
                stages=(name,),
                fix_hint="declare execute with `async def`",
            )
        return execute, _callable_name(runner), _declared_kind(name, runner)
    if not callable(runner):
        raise PipelineValidationError(
            f"stage {name!r}: runner must be {_RUNNERS}, got {describe(runner)}",
            stages=(name,),
        )
    kind = _declared_kind(name, runner)
    if is_async_callable(runner):
        return runner, _callable_name(runner), kind
    return functools.partial(anyio.to_thread.run_sync, runner), _callable_name(runner), kind


def _dependency_names(name: str, dependencies: object, after: object) -> tuple[str, ...]:
    """The stage names of ``dependencies`` and ``after`` together, first mention first."""
    deps: dict[str, None] = {}
    for param, source in (("dependencies", dependencies), ("after", after)):
        if source is None:
            continue
        if isinstance(source, str):
            raise PipelineValidationError(
                f"stage {name!r}: {param} must be a list of stage names, got the string {source!r}",
                stages=(name,),
                fix_hint=f"write {param}=[{source!r}]",
            )
        try:
            items = sequence_of(param, source, item="stage names, or None")
        except TypeError as exc:
            raise PipelineValidationError(f"stage {name!r}: {exc}", stages=(name,)) from None
        for index, dep in enumerate(items):
            if not isinstance(dep, str) or not dep:
                raise PipelineValidationError(
                    f"stage {name!r}: {param}[{index}] must be a stage name (a non-empty "
                    f"string), got {describe(dep)}",
                    stages=(name,),
                    fix_hint=f"list the names of the stages {name!r} depends on",
                )
            deps[dep] = None
    return tuple(deps)


def interceptor_chain(
    param: str, value: object, *, where: str, stages: tuple[str, ...] = ()
) -> tuple[Interceptor, ...]:
    """Check a list of interceptors (``with_stage``, ``build``, ``run``).

    Raises:
        PipelineValidationError: Naming ``where``, the parameter and the bad item.
    """
    if value is not None and interceptor_problem(value) is None:
        raise PipelineValidationError(
            f"{where}{param} must be a list of interceptors, got the single interceptor "
            f"{describe(value)}",
            stages=stages,
            fix_hint=f"write {param}=[{type(value).__qualname__}(...)]",
        )
    try:
        items = sequence_of(param, value, item="interceptors ([] for none)")
    except TypeError as exc:
        raise PipelineValidationError(f"{where}{exc}", stages=stages) from None
    for index, item in enumerate(items):
        problem = interceptor_problem(item)
        if problem is not None:
            raise PipelineValidationError(f"{where}{param}[{index}] {problem}", stages=stages)
    return items


@dataclass(frozen=True, slots=True, eq=False)
class StageSpec:
    """One stage of a pipeline, as declared.

    Attributes:
        name: Unique stage name.
        runner: What runs (a Stage instance or class, or a function).
        kind: The stage kind.
        dependencies: Stages that must be done before this one starts.
        conditional: Skip this stage when a dependency's output data has a truthy ``skip_reason``.
        timeout: Seconds one attempt may take; ``None`` for no limit.
        interceptors: Stage-level interceptors, inside the pipeline-level ones.
        function_name: Qualified name of the runner (``code.function.name``).
    """

    name: str
    runner: StageRunner
    kind: StageKind
    dependencies: tuple[str, ...] = ()
    conditional: bool = False
    timeout: float | None = None
    interceptors: tuple[Interceptor, ...] = ()
    function_name: str = ""
    invoke: Invoke = field(default=None, repr=False)  # type: ignore[assignment]

    def same_as(self, other: StageSpec) -> bool:
        """Whether two declarations are interchangeable (used by ``compose``)."""
        return (
            self.name == other.name
            and self.runner is other.runner
            and self.kind == other.kind
            and self.dependencies == other.dependencies
            and self.conditional == other.conditional
            and self.timeout == other.timeout
            and self.interceptors == other.interceptors
        )


def _make_spec(
    name: str,
    runner: StageRunner,
    kind: StageKind | str | None = None,
    dependencies: Iterable[str] | None = None,
    *,
    after: Iterable[str] | None = None,
    conditional: bool = False,
    timeout: float | None = None,
    interceptors: Sequence[Interceptor] = (),
) -> StageSpec:
    """Validate one stage's arguments and build its :class:`StageSpec`.

    Raises:
        PipelineValidationError: Naming the stage, the parameter, the value given and what is
            accepted.
    """
    if not isinstance(name, str) or not name:
        raise PipelineValidationError(
            f"stage name must be a non-empty string, got {describe(name)}",
            fix_hint="name every stage, e.g. with_stage('fetch', fetch)",
        )
    where = f"stage {name!r}: "
    invoke, function_name, declared_kind = _resolve_runner(name, runner)
    try:
        checked_timeout = check_seconds("timeout", timeout, allow_none=True)
        check_bool("conditional", conditional)
    except (TypeError, ValueError) as exc:
        raise PipelineValidationError(f"{where}{exc}", stages=(name,)) from None
    if kind is not None and not isinstance(kind, str):
        raise PipelineValidationError(
            f"{where}kind must be a StageKind, one of {_KINDS}, or None, got {describe(kind)}",
            stages=(name,),
        )
    deps = _dependency_names(name, dependencies, after)
    chain = interceptor_chain("interceptors", interceptors, where=where, stages=(name,))
    try:
        resolved_kind = (
            StageKind(kind) if kind is not None else (declared_kind or StageKind.TRANSFORM)
        )
    except ValueError:
        raise PipelineValidationError(
            f"{where}unknown kind {kind!r}",
            stages=(name,),
            fix_hint=f"use one of {_KINDS}",
        ) from None
    return StageSpec(
        name=name,
        runner=runner,
        kind=resolved_kind,
        dependencies=deps,
        conditional=conditional,
        timeout=checked_timeout,
        interceptors=chain,
        function_name=function_name,
        invoke=invoke,
    )


class _StageLog:
    """Append-only storage shared by a line of pipelines built from one another."""

    __slots__ = ("index", "specs")

    def __init__(self, specs: list[StageSpec], index: dict[str, int]) -> None:
        self.specs = specs
        self.index = index


class Pipeline:
    """An immutable pipeline declaration; every ``with_stage`` returns a new ``Pipeline``.

    ``with_stage`` costs O(1) amortised: pipelines built one from another share storage, so a
    100,000-stage pipeline builds in linear time.

    Attributes:
        name: The pipeline name.
        source: Where the pipeline was declared, when it came from a file (the path of a
            pipeline file, as ``load_pipeline`` records it); ``None`` otherwise. Pipelines
            built from this one keep it, and tracing records it on the run span.

    Example::

        pipeline = (
            Pipeline("checkout")
            .with_stage("load", load_cart)
            .with_stage("price", price_cart, dependencies=["load"])
        )
        results = await pipeline.run(data={"cart_id": "c-1"})
    """

    __slots__ = ("_graph_cache", "_log", "_size", "name", "source")

    def __init__(
        self,
        name: str = "pipeline",
        stages: Iterable[StageSpec] = (),
        *,
        source: str | None = None,
    ) -> None:
        if not isinstance(name, str) or not name:
            raise PipelineValidationError(
                f"pipeline name must be a non-empty string, got {describe(name)}",
                fix_hint="Pipeline('checkout')",
            )
        try:
            specs = sequence_of("stages", stages, item="StageSpec (another pipeline's .specs)")
        except TypeError as exc:
            raise PipelineValidationError(f"pipeline {name!r}: {exc}") from None
        if source is not None and not isinstance(source, str):
            raise PipelineValidationError(
                f"pipeline {name!r}: source must be a string or None, got {describe(source)}",
                fix_hint="pass the path of the file the pipeline was declared in",
            )
        self.name = name
        self.source = source
        log = _StageLog([], {})
        for index, spec in enumerate(specs):
            if not isinstance(spec, StageSpec):
                raise PipelineValidationError(
                    f"pipeline {name!r}: stages[{index}] must be a StageSpec, got {describe(spec)}",
                    fix_hint="declare stages with with_stage(name, runner, ...)",
                )
            _append(log, spec, name)
        self._log = log
        self._size = len(log.specs)
        self._graph_cache: StageGraph | None = None

    @classmethod
    def _view(cls, name: str, log: _StageLog, size: int, source: str | None) -> Pipeline:
        pipeline = cls.__new__(cls)
        pipeline.name = name
        pipeline.source = source
        pipeline._log = log
        pipeline._size = size
        pipeline._graph_cache = None
        return pipeline

    @property
    def specs(self) -> tuple[StageSpec, ...]:
        """The stage declarations, in declaration order."""
        return tuple(self._log.specs[: self._size])

    def __len__(self) -> int:
        return self._size

    def __contains__(self, name: object) -> bool:
        index = self._log.index.get(name)  # type: ignore[call-overload]
        return index is not None and index < self._size

    def __repr__(self) -> str:
        return f"Pipeline({self.name!r}, stages={self._size})"

    def with_stage(
        self,
        name: str,
        runner: StageRunner,
        kind: StageKind | str | None = None,
        dependencies: Iterable[str] | None = None,
        *,
        after: Iterable[str] | None = None,
        conditional: bool = False,
        timeout: float | None = None,
        interceptors: Sequence[Interceptor] = (),
    ) -> Pipeline:
        """Return a new pipeline with one more stage.

        Args:
            name: Unique stage name.
            runner: A ``Stage`` instance or class, an ``async def f(ctx)``, or a ``def f(ctx)``
                (run in a worker thread). Returning ``None`` or a ``dict`` means OK.
            kind: The stage kind; defaults to the runner's ``kind`` attribute, else transform.
            dependencies: Stages that must be done first.
            after: Alias of ``dependencies`` (both may be given).
            conditional: Skip when a dependency's output has a truthy ``skip_reason``.
            timeout: Seconds one attempt may take (a positive number); ``None`` for no limit.
            interceptors: Stage-level interceptors (inside the pipeline-level ones).

        Raises:
            PipelineValidationError: For a duplicate name or an invalid argument; the message
                names the stage, the parameter and the value given, and says what is accepted.
        """
        spec = _make_spec(
            name,
            runner,
            kind,
            dependencies,
            after=after,
            conditional=conditional,
            timeout=timeout,
            interceptors=interceptors,
        )
        return self._with_spec(spec)

    def _with_spec(self, spec: StageSpec) -> Pipeline:
        log = self._log
        if self._size != len(log.specs):
            # Another pipeline already extended this one: branch off with a copy.
            specs = log.specs[: self._size]
            log = _StageLog(specs, {s.name: i for i, s in enumerate(specs)})
        _append(log, spec, self.name)
        return Pipeline._view(self.name, log, self._size + 1, self.source)

    def compose(self, other: Pipeline) -> Pipeline:
        """Merge another pipeline's stages into a new pipeline named like this one.

        Stages with the same name must be the same declaration.

        Raises:
            PipelineValidationError: ``CONTRACT-004-CONFLICT`` for same-named, different stages,
                ``CONTRACT-004-INVALID`` when ``other`` is not a pipeline.
        """
        if not isinstance(other, Pipeline):
            raise PipelineValidationError(
                f"pipeline {self.name!r}: compose() takes a Pipeline, got {describe(other)}",
                fix_hint="build the other part with Pipeline(name).with_stage(...)",
            )
        result = self
        for spec in other.specs:
            index = result._log.index.get(spec.name)
            if index is not None and index < result._size:
                existing = result._log.specs[index]
                if not existing.same_as(spec):
                    raise PipelineValidationError(
                        f"cannot compose {other.name!r} into {self.name!r}: both declare a "
                        f"different stage {spec.name!r}",
                        code="CONTRACT-004-CONFLICT",
                        stages=(spec.name,),
                        fix_hint="rename one of the stages or declare it identically in both",
                    )
                continue
            result = result._with_spec(spec)
        return result

    def stage_names(self) -> list[str]:
        """Stage names in a topological order (dependencies first, ties in declaration order).

        Raises:
            PipelineValidationError: If the pipeline is invalid.
        """
        return [s.name for s in _validate(self.name, self.specs)]

    def _missing_dependencies(self) -> list[str]:
        """Dependencies that name no stage of this pipeline, first mention first."""
        names = {spec.name for spec in self.specs}
        missing: dict[str, None] = {}
        for spec in self.specs:
            for dep in spec.dependencies:
                if dep not in names:
                    missing[dep] = None
        return list(missing)

    def to_dot(self) -> str:
        """The DAG in Graphviz DOT.

        A dependency on a stage the pipeline does not have is drawn as a node labelled
        ``name (missing)``; :meth:`build` would reject the pipeline.
        """
        lines = [f"digraph {_dot_id(self.name)} {{", "  rankdir=LR;"]
        lines.extend(
            f"  {_dot_id(spec.name)} [label={_dot_id(f'{spec.name} ({spec.kind})')}];"
            for spec in self.specs
        )
        lines.extend(
            f"  {_dot_id(dep)} [label={_dot_id(f'{dep} (missing)')}];"
            for dep in self._missing_dependencies()
        )
        lines.extend(
            f"  {_dot_id(dep)} -> {_dot_id(spec.name)};"
            for spec in self.specs
            for dep in spec.dependencies
        )
        lines.append("}")
        return "\n".join(lines)

    def to_mermaid(self) -> str:
        """The DAG as a Mermaid flowchart.

        A dependency on a stage the pipeline does not have is drawn as a node labelled
        ``name (missing)``; :meth:`build` would reject the pipeline.
        """
        ids = {spec.name: f"s{i}" for i, spec in enumerate(self.specs)}
        labels = [(ids[spec.name], f"{spec.name} ({spec.kind})") for spec in self.specs]
        for i, dep in enumerate(self._missing_dependencies()):
            ids[dep] = f"m{i}"
            labels.append((ids[dep], f"{dep} (missing)"))
        lines = ["flowchart LR"]
        for node, label in labels:
            escaped = label.replace('"', "#quot;")
            lines.append(f'  {node}["{escaped}"]')
        lines.extend(
            f"  {ids[dep]} --> {ids[spec.name]}" for spec in self.specs for dep in spec.dependencies
        )
        return "\n".join(lines)

    def build(
        self,
        *,
        interceptors: Sequence[Interceptor] = (),
        hooks: Sequence[RunHook] | None = None,
        event_sink: EventSink | None = None,
        failure_mode: FailureMode = "fail_fast",
        max_concurrency: int | None = None,
        max_depth: int = 5,
        emit_stage_wide_events: bool = False,
        emit_pipeline_wide_event: bool = False,
        cleanup_timeout: float = 10.0,
        store: RunRecording | None = None,
    ) -> StageGraph:
        """Validate the pipeline and compile it into a runnable :class:`StageGraph`.

        Args:
            interceptors: Pipeline-level interceptors, first = outermost. ``[]`` means none.
            hooks: Run hooks (tracing, metrics, ...). ``None`` uses the installed extensions
                (see ``stageflow_otel.core.extensions``); ``[]`` means none.
            event_sink: Where lifecycle events go.
            failure_mode: ``"fail_fast"`` or ``"continue"``.
            max_concurrency: At most this many stages at once; ``None`` for no limit.
            max_depth: How deep subpipelines may nest.
            emit_stage_wide_events: Emit a ``stage.wide`` event per stage.
            emit_pipeline_wide_event: Emit a ``pipeline.wide`` event per run.
            cleanup_timeout: Seconds the run's cleanup callbacks may take in all (positive;
                ``math.inf`` for no limit).
            store: Record every run in this run store (``stageflow_otel.runs``); ``None``
                records only when ``$STAGEFLOW_OTEL_STORE`` names a store.

        Raises:
            PipelineValidationError: For an invalid pipeline (a cycle, a missing dependency, ...)
                or argument; the message names the pipeline, the parameter and the value given.
        """
        where = f"pipeline {self.name!r}: "
        chain = interceptor_chain("interceptors", interceptors, where=where)
        try:
            checked_hooks = check_hooks("hooks", hooks)
            check_sink("event_sink", event_sink)
            _check_failure_mode(failure_mode)
            check_count("max_concurrency", max_concurrency, allow_none=True)
            check_count("max_depth", max_depth, minimum=0)
            check_bool("emit_stage_wide_events", emit_stage_wide_events)
            check_bool("emit_pipeline_wide_event", emit_pipeline_wide_event)
            check_seconds("cleanup_timeout", cleanup_timeout, allow_inf=True)
            check_store("store", store)
        except (TypeError, ValueError) as exc:
            raise PipelineValidationError(f"{where}{exc}") from None
        ordered = _validate(self.name, self.specs)
        return StageGraph(
            self.name,
            ordered,
            source=self.source,
            interceptors=chain,
            hooks=checked_hooks,
            event_sink=event_sink,
            failure_mode=failure_mode,
            max_concurrency=max_concurrency,
            max_depth=max_depth,
            emit_stage_wide_events=emit_stage_wide_events,
            emit_pipeline_wide_event=emit_pipeline_wide_event,
            cleanup_timeout=float(cleanup_timeout),
            store=store,
        )

    async def run(
        self,
        data: Mapping[str, Any] | None = None,
        *,
        identity: RunIdentity | None = None,
        cancel_token: CancellationToken | None = None,
        event_sink: EventSink | None = None,
        hooks: Sequence[RunHook] | None = None,
        traceparent: str | None = None,
        interceptors: Sequence[Interceptor] = (),
        failure_mode: FailureMode = "fail_fast",
        max_concurrency: int | None = None,
        store: RunRecording | None = None,
    ) -> PipelineResults:
        """Build (validating) and run the pipeline once; see :meth:`StageGraph.run`.

        Build once with :meth:`build` to run a pipeline many times.

        Raises:
            PipelineValidationError: The pipeline or a build argument is invalid.
            TypeError: A run argument has the wrong type (naming it and the value given).
            StageExecutionError: A stage failed.
            PipelineCancelled: The run was cancelled.
        """
        defaults = (
            isinstance(interceptors, list | tuple)
            and not interceptors
            and isinstance(failure_mode, str)
            and failure_mode == "fail_fast"
            and max_concurrency is None
        )
        if not defaults:
            graph = self.build(
                interceptors=interceptors,
                failure_mode=failure_mode,
                max_concurrency=max_concurrency,
            )
        else:
            if self._graph_cache is None:
                self._graph_cache = self.build()
            graph = self._graph_cache
        return await graph.run(
            data,
            identity=identity,
            cancel_token=cancel_token,
            event_sink=event_sink,
            hooks=hooks,
            traceparent=traceparent,
            store=store,
        )


def _check_failure_mode(value: object) -> None:
    if not (isinstance(value, str) and value in ("fail_fast", "continue")):
        raise ValueError(f"failure_mode must be 'fail_fast' or 'continue', got {describe(value)}")


def _append(log: _StageLog, spec: StageSpec, pipeline: str) -> None:
    if spec.name in log.index:
        raise PipelineValidationError(
            f"pipeline {pipeline!r} already has a stage named {spec.name!r}",
            code="CONTRACT-004-CONFLICT",
            stages=(spec.name,),
            fix_hint="give each stage a unique name",
        )
    log.index[spec.name] = len(log.specs)
    log.specs.append(spec)


def _validate(pipeline: str, specs: Sequence[StageSpec]) -> list[StageSpec]:
    """Check a pipeline and return its stages in topological order (Kahn, iterative)."""
    if not specs:
        raise PipelineValidationError(
            f"pipeline {pipeline!r} has no stages",
            code="CONTRACT-004-EMPTY",
            fix_hint="add at least one stage with with_stage(name, runner)",
        )
    index = {spec.name: i for i, spec in enumerate(specs)}
    for spec in specs:
        for dep in spec.dependencies:
            if dep == spec.name:
                raise PipelineValidationError(
                    f"stage {spec.name!r} depends on itself",
                    code="CONTRACT-004-SELF_DEP",
                    stages=(spec.name,),
                    fix_hint=f"remove {spec.name!r} from its own dependencies",
                )
            if dep not in index:
                close = (
                    difflib.get_close_matches(dep, index.keys(), n=1) if len(index) < 5000 else []
                )
                hint = f"did you mean {close[0]!r}? " if close else ""
                raise PipelineValidationError(
                    f"stage {spec.name!r} depends on {dep!r}, which is not in pipeline "
                    f"{pipeline!r} (stages: {format_names(index)})",
                    code="CONTRACT-004-MISSING_DEP",
                    stages=(spec.name, dep),
                    fix_hint=f"{hint}add a stage named {dep!r} or remove it from the dependencies "
                    f"of {spec.name!r}",
                )
    n = len(specs)
    in_degree = [len(spec.dependencies) for spec in specs]
    children: list[list[int]] = [[] for _ in range(n)]
    for i, spec in enumerate(specs):
        for dep in spec.dependencies:
            children[index[dep]].append(i)
    queue = deque(i for i in range(n) if in_degree[i] == 0)
    order: list[StageSpec] = []
    while queue:
        i = queue.popleft()
        order.append(specs[i])
        for child in children[i]:
            in_degree[child] -= 1
            if in_degree[child] == 0:
                queue.append(child)
    if len(order) != n:
        raise CycleDetectedError(pipeline, _find_cycle(specs, index, in_degree))
    return order


def _find_cycle(
    specs: Sequence[StageSpec], index: dict[str, int], in_degree: list[int]
) -> list[str]:
    """One cycle among the stages Kahn's algorithm could not order (iterative walk)."""
    # Every unordered stage has an unordered dependency; following those must loop.
    start = next(i for i, d in enumerate(in_degree) if d > 0)
    seen: dict[int, int] = {}
    path: list[int] = []
    node = start
    while node not in seen:
        seen[node] = len(path)
        path.append(node)
        node = next(index[d] for d in specs[node].dependencies if in_degree[index[d]] > 0)
    cycle = path[seen[node] :]
    # Walking dependencies goes against the arrows; reverse to read "a -> b" as "b depends on a".
    names = [specs[i].name for i in reversed(cycle)]
    return [*names, names[0]]


def _dot_id(value: str) -> str:
    escaped = value.replace("\\", "\\\\").replace('"', '\\"')
    return f'"{escaped}"'


F = TypeVar("F", bound=Callable[..., Any])


class FunctionStage:
    """A function wrapped as a :class:`~stageflow_otel.core.model.Stage` by :func:`stage_fn`."""

    __slots__ = ("__wrapped__", "_invoke", "kind", "name")

    def __init__(self, fn: Callable[..., Any], *, name: str, kind: StageKind) -> None:
        self.__wrapped__ = fn
        self.name = name
        self.kind = kind
        self._invoke: Invoke = (
            fn if is_async_callable(fn) else functools.partial(anyio.to_thread.run_sync, fn)
        )

    async def execute(self, ctx: StageContext) -> StageReturn:
        """Run the wrapped function."""
        return await self._invoke(ctx)

    def __repr__(self) -> str:
        return f"FunctionStage({self.name!r}, kind={self.kind.value!r})"


@overload
def stage_fn(fn: Callable[..., Any], /) -> FunctionStage: ...
@overload
def stage_fn(
    *, name: str | None = None, kind: StageKind | str = StageKind.TRANSFORM
) -> Callable[[Callable[..., Any]], FunctionStage]: ...
def stage_fn(
    fn: Callable[..., Any] | None = None,
    /,
    *,
    name: str | None = None,
    kind: StageKind | str = StageKind.TRANSFORM,
) -> FunctionStage | Callable[[Callable[..., Any]], FunctionStage]:
    """Turn a function into a named, kinded stage object.

    Example::

        @stage_fn(kind="enrich")
        async def geocode(ctx): ...

        pipeline = Pipeline("p").with_stage(geocode.name, geocode)

    Raises:
        PipelineValidationError: For a name that is not a non-empty string, an unknown kind, or
            something other than a function to decorate.
    """
    if name is not None and (not isinstance(name, str) or not name):
        raise PipelineValidationError(
            f"stage_fn(): name must be a non-empty string or None, got {describe(name)}"
        )
    if not (isinstance(kind, str) and kind in StageKind._value2member_map_):
        raise PipelineValidationError(
            f"stage_fn(): kind must be a StageKind or one of {_KINDS}, got {describe(kind)}"
        )
    stage_kind = StageKind(kind)

    def decorate(f: Callable[..., Any]) -> FunctionStage:
        if not callable(f) or isinstance(f, type):
            raise PipelineValidationError(
                f"stage_fn() decorates a function, got {describe(f)}",
                fix_hint="put @stage_fn above an `async def f(ctx)` or a `def f(ctx)`",
            )
        return FunctionStage(f, name=name or _callable_name(f).rsplit(".", 1)[-1], kind=stage_kind)

    return decorate(fn) if fn is not None else decorate


class PipelineResults(Mapping[str, StageOutput]):
    """The outputs of a run, by stage name, in completion order.

    Attributes:
        pipeline: The pipeline name.
        run_id: The run id.
        status: ``ok``, ``fail`` or ``cancel``.
        duration_ms: Wall time of the run.
    """

    __slots__ = ("_attempts", "_outputs", "duration_ms", "pipeline", "run_id", "status")

    def __init__(
        self,
        outputs: Mapping[str, StageOutput],
        *,
        attempts: Mapping[str, int] | None = None,
        pipeline: str = "pipeline",
        run_id: str = "",
        status: str = "ok",
        duration_ms: float = 0.0,
    ) -> None:
        self._outputs = outputs
        self._attempts = attempts or {}
        self.pipeline = pipeline
        self.run_id = run_id
        self.status = status
        self.duration_ms = duration_ms

    def __getitem__(self, stage: str) -> StageOutput:
        return self._outputs[stage]

    def __iter__(self) -> Iterator[str]:
        return iter(self._outputs)

    def __len__(self) -> int:
        return len(self._outputs)

    def __repr__(self) -> str:
        statuses = ", ".join(f"{k}={v.status.value}" for k, v in list(self._outputs.items())[:8])
        more = "" if len(self._outputs) <= 8 else f", ... ({len(self._outputs) - 8} more)"
        return f"PipelineResults({self.pipeline!r}, status={self.status!r}, {statuses}{more})"

    @property
    def ok(self) -> bool:
        """True when no stage failed or cancelled."""
        return self.status == "ok"

    def require_ok(self, stage: str) -> StageOutput:
        """The output of ``stage``, which must be OK.

        Raises:
            KeyError: If the stage has no output.
            RuntimeError: If its status is not OK.
        """
        output = self._outputs.get(stage)
        if output is None:
            raise KeyError(f"stage {stage!r} has no output in this run (stages: {', '.join(self)})")
        if output.status is not StageStatus.OK:
            detail = f": {output.error}" if output.error else ""
            raise RuntimeError(f"stage {stage!r} ended with status {output.status.value}{detail}")
        return output

    def data(self, stage: str) -> Mapping[str, Any]:
        """The output data of ``stage`` (empty if it has no output)."""
        output = self._outputs.get(stage)
        return _EMPTY_DATA if output is None else output.data

    def failed(self) -> dict[str, StageOutput]:
        """The stages that failed."""
        return {k: v for k, v in self._outputs.items() if v.status is _FAIL}

    def attempts(self, stage: str) -> int:
        """Attempts ``stage`` took (0 if it did not run)."""
        if stage not in self._outputs:
            return 0
        return self._attempts.get(stage, 1)


class StageGraph:
    """A validated, compiled pipeline, ready to run any number of times (even concurrently).

    Build one with ``Pipeline.build()``. Per-run state lives in the run, never in the graph.

    Attributes:
        name: The pipeline name.
        source: Where the pipeline was declared (``Pipeline.source``), or ``None``.
    """

    def __init__(
        self,
        name: str,
        ordered: Sequence[StageSpec],
        *,
        source: str | None = None,
        interceptors: tuple[Interceptor, ...] = (),
        hooks: tuple[RunHook, ...] | None = None,
        event_sink: EventSink | None = None,
        failure_mode: FailureMode = "fail_fast",
        max_concurrency: int | None = None,
        max_depth: int = 5,
        emit_stage_wide_events: bool = False,
        emit_pipeline_wide_event: bool = False,
        cleanup_timeout: float = 10.0,
        store: RunRecording | None = None,
    ) -> None:
        self.name = name
        self.source = source
        self.store = store
        self.specs: tuple[StageSpec, ...] = tuple(ordered)
        self.index: dict[str, int] = {spec.name: i for i, spec in enumerate(self.specs)}
        n = len(self.specs)
        children: list[list[int]] = [[] for _ in range(n)]
        for i, spec in enumerate(self.specs):
            for dep in spec.dependencies:
                children[self.index[dep]].append(i)
        self.children: tuple[tuple[int, ...], ...] = tuple(tuple(c) for c in children)
        self.in_degree: tuple[int, ...] = tuple(len(s.dependencies) for s in self.specs)
        self.roots: tuple[int, ...] = tuple(i for i in range(n) if self.in_degree[i] == 0)
        self.interceptors = interceptors
        self.hooks = hooks
        self.event_sink = event_sink
        self.failure_mode = failure_mode
        self.max_concurrency = max_concurrency
        self.max_depth = max_depth
        self.wide_events = (
            WideEventEmitter() if emit_stage_wide_events or emit_pipeline_wide_event else None
        )
        self.emit_stage_wide_events = emit_stage_wide_events
        self.emit_pipeline_wide_event = emit_pipeline_wide_event
        self.cleanup_timeout = cleanup_timeout

    @property
    def stage_names(self) -> tuple[str, ...]:
        """Stage names in topological order."""
        return tuple(spec.name for spec in self.specs)

    def __len__(self) -> int:
        return len(self.specs)

    def __repr__(self) -> str:
        return f"StageGraph({self.name!r}, stages={len(self.specs)})"

    async def run(
        self,
        data: Mapping[str, Any] | None = None,
        *,
        identity: RunIdentity | None = None,
        cancel_token: CancellationToken | None = None,
        event_sink: EventSink | None = None,
        hooks: Sequence[RunHook] | None = None,
        traceparent: str | None = None,
        entry_point: bool = False,
        store: RunRecording | None = None,
        resumed_from: ResumedRun | None = None,
    ) -> PipelineResults:
        """Run the pipeline once.

        Args:
            data: Run input, read-only for stages (``ctx.data``).
            identity: The run's identity; a new run id by default.
            cancel_token: Cancelling it stops the run with :class:`PipelineCancelled`.
            event_sink: Lifecycle events go here (in addition to the graph's sink).
            hooks: Run hooks for this run; overrides the graph's and the installed extensions.
            traceparent: A W3C ``traceparent`` for tracing hooks to join.
            entry_point: Whether this run is the process's main unit of work (the CLI).
            store: Record this run in this run store (``stageflow_otel.runs``); overrides the
                graph's and ``$STAGEFLOW_OTEL_STORE``.
            resumed_from: The run this one resumes: its completed stages are not run again,
                their outputs are taken as they are (``stageflow_otel.runs.resume`` passes it).

        Returns:
            The results, when every stage succeeded (OK, SKIP).

        Raises:
            StageExecutionError: A stage failed; ``.results`` has the partial results and the
                stage's exception is the ``__cause__``.
            PipelineCancelled: A stage returned CANCEL or ``cancel_token`` was cancelled.
            TypeError: An argument has the wrong type (naming it and the value given).
        """
        check_run_arguments(
            self.name,
            data=data,
            identity=identity,
            cancel_token=cancel_token,
            event_sink=event_sink,
            hooks=hooks,
            traceparent=traceparent,
        )
        check_store("store", store, where=f"pipeline {self.name!r}: ")
        if resumed_from is not None and not isinstance(resumed_from, ResumedRun):
            raise TypeError(
                f"pipeline {self.name!r}: resumed_from must be a ResumedRun or None, got "
                f"{describe(resumed_from)}"
            )
        from ._executor import RunState  # the executor builds on this module

        state = RunState(
            self,
            data,
            identity or RunIdentity(),
            event_sink=event_sink,
            hooks=hooks,
            cancel_token=cancel_token,
            traceparent=traceparent,
            entry_point=entry_point,
            store=store if store is not None else self.store,
            resumed_from=resumed_from,
        )
        return await state.start()
