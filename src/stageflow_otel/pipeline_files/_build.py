"""From a pipeline file's checked data to a :class:`Pipeline`: imports, plugins, interceptors."""

from __future__ import annotations

import difflib
import functools
import importlib
import inspect
import json
from collections.abc import Mapping
from importlib import resources
from typing import Any

import jsonschema

from stageflow_otel.core import (
    CircuitBreakerInterceptor,
    FanOutEventSink,
    IdempotencyInterceptor,
    Interceptor,
    Pipeline,
    PipelineValidationError,
    RetryInterceptor,
    StageGraph,
    TimeoutInterceptor,
)
from stageflow_otel.core._checks import describe, interceptor_problem, sink_problem
from stageflow_otel.core.events import EventSink
from stageflow_otel.plugins import (
    INTERCEPTOR_GROUP,
    SINK_GROUP,
    STAGE_GROUP,
    PluginError,
    PluginGroup,
    load_plugin,
)

from ._source import DataPath, Problem, Source

__all__ = ("Built", "build", "schema", "schema_problems")

SCHEMA_FILE = "pipeline-file.schema.json"


@functools.cache
def schema() -> Mapping[str, Any]:
    """The JSON Schema of pipeline files (shipped in the package)."""
    text = resources.files(__package__).joinpath(SCHEMA_FILE).read_text(encoding="utf-8")
    value: Mapping[str, Any] = json.loads(text)
    return value


@functools.cache
def _validator() -> jsonschema.Draft202012Validator:
    return jsonschema.Draft202012Validator(schema())


# -- schema errors, in words ----------------------------------------------------------------

_TYPE_NAMES = {
    "string": "a string",
    "number": "a number",
    "integer": "a whole number",
    "boolean": "true or false",
    "object": "a mapping",
    "array": "a list",
    "null": "null",
}
_REQUIRED_FIX = {
    "name": "add `name: <pipeline name>`",
    "stages": "add `stages:` with at least one stage",
    "runner": "add `runner: package.module:function` (or the name of a stage plugin)",
    "use": "add `use: package.module:attribute` (or the name of a plugin)",
}


def _suggest(value: object, choices: list[str]) -> str:
    """``did you mean 'x'? `` for a near miss, else nothing."""
    close = difflib.get_close_matches(value, choices, n=1) if isinstance(value, str) else []
    return f"did you mean {close[0]!r}? " if close else ""


def _choose(value: object, choices: list[str], otherwise: str) -> str:
    """The fix for a value that is not one of ``choices``."""
    listed = ", ".join(choices)
    suggestion = _suggest(value, choices)
    return f"{suggestion}(allowed: {listed})" if suggestion else f"{otherwise} {listed}"


def _one(error: jsonschema.ValidationError, source: Source) -> list[Problem]:
    path: DataPath = tuple(error.absolute_path)
    validator, instance = error.validator, error.instance
    expected: Any = error.validator_value
    rule: Mapping[str, Any] = error.schema if isinstance(error.schema, Mapping) else {}
    custom = rule.get("x-error")
    if validator == "additionalProperties" and isinstance(instance, dict):
        allowed = sorted(rule.get("properties", {}))
        extras = [key for key in instance if key not in allowed]
        return [
            source.problem(
                (*path, key),
                f"unknown key {key!r}",
                _choose(key, allowed, "remove it; the keys allowed here are"),
                at_key=True,
            )
            for key in extras
        ]
    if validator == "required" and isinstance(instance, dict):
        return [
            source.problem(
                path, f"{key!r} is missing", _REQUIRED_FIX.get(key, f"add `{key}`"), at_key=True
            )
            for key in expected
            if key not in instance
        ]
    if validator == "type":
        wanted = expected if isinstance(expected, list) else [expected]
        names = " or ".join(_TYPE_NAMES.get(str(t), str(t)) for t in wanted)
        fix = f"write {names}"
        if isinstance(instance, str) and {"number", "integer", "boolean"} & set(wanted):
            fix += " without quotes"
        return [source.problem(path, f"expected {names}, got {describe(instance)}", fix)]
    if validator == "enum":
        choices = [str(c) for c in expected]
        return [
            source.problem(
                path,
                f"{instance!r} is not one of {', '.join(choices)}",
                _choose(instance, choices, "use one of"),
            )
        ]
    if validator in ("minimum", "exclusiveMinimum"):
        bound = expected
        need = f"of at least {bound}" if validator == "minimum" else f"greater than {bound}"
        return [source.problem(path, f"{instance!r} is too small", f"use a number {need}")]
    if validator == "minLength":
        return [source.problem(path, "must not be empty", "write a non-empty string")]
    if validator == "uniqueItems":
        return [source.problem(path, "lists a name twice", "list each name once")]
    if validator == "dependentRequired":
        return [
            source.problem(path, "`args` belongs to a `use:` entry", "add `use:` or remove `args`")
        ]
    if custom:
        return [source.problem(path, f"{custom}, got {describe(instance)}")]
    return [source.problem(path, error.message)]


def schema_problems(source: Source) -> list[Problem]:
    """Every way ``source.data`` breaks the schema, in the order of the file."""
    errors = list(_validator().iter_errors(source.data))
    # An entry with an unknown key also matches none of an interceptor's forms: say it once.
    specific = {tuple(e.absolute_path) for e in errors if e.validator != "oneOf"}
    problems = [
        problem
        for error in errors
        if not (error.validator == "oneOf" and tuple(error.absolute_path) in specific)
        for problem in _one(error, source)
    ]
    return sorted(problems, key=lambda p: (p.line or 0, p.column or 0, p.path))


# -- imports and plugins --------------------------------------------------------------------


class _Failed(Exception):
    """Building a part of the pipeline failed; the problem is already recorded."""


class _Builder:
    def __init__(self, source: Source) -> None:
        self.source = source
        self.problems: list[Problem] = []

    def fail(self, path: DataPath, message: str, fix: str | None = None) -> _Failed:
        self.problems.append(self.source.problem(path, message, fix))
        return _Failed()

    def resolve(self, ref: str, group: PluginGroup, path: DataPath) -> Any:
        """The object an import path ``module:attribute`` or a plugin name refers to."""
        if ":" not in ref:
            try:
                return load_plugin(group, ref)
            except PluginError as exc:
                raise self.fail(path, exc.reason, exc.fix_hint) from None
        module_name, _, attribute = ref.partition(":")
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as exc:
            if exc.name and module_name.startswith(exc.name):
                raise self.fail(
                    path,
                    f"cannot import {module_name!r}: no module named {exc.name!r}",
                    "check the spelling, install the package, or run from the directory that "
                    "contains it",
                ) from None
            raise self.fail(path, f"importing {module_name!r} failed: {exc}") from None
        except Exception as exc:
            raise self.fail(
                path, f"importing {module_name!r} failed: {type(exc).__name__}: {exc}"
            ) from None
        value: Any = module
        for part in attribute.split("."):
            try:
                value = getattr(value, part)
            except AttributeError:
                names = [n for n in dir(value) if not n.startswith("_")]
                raise self.fail(
                    path,
                    f"{module_name!r} has no attribute {attribute!r}",
                    f"{_suggest(part, names)}(name an attribute of the module)",
                ) from None
        return value

    def create(self, factory: Any, args: Mapping[str, Any], path: DataPath, what: str) -> Any:
        """``factory(**args)``: a class or a function that makes an interceptor or a sink."""
        if not callable(factory):
            raise self.fail(
                path,
                f"{what} must be a class or a factory to call with `args`, got {describe(factory)}",
            )
        try:
            return factory(**args)
        except Exception as exc:
            raise self.fail(
                path,
                f"creating the {what} failed: {type(exc).__name__}: {exc}",
                "fix its `args`",
            ) from None

    def interceptor(self, entry: Mapping[str, Any], path: DataPath) -> Interceptor:
        kind, options = next((k, v) for k, v in entry.items() if k != "args")
        where = (*path, kind)
        created: Any
        try:
            if kind == "retry":
                options = dict(options)
                if "retry_on" in options:
                    options["retry_on"] = tuple(
                        self.exception(ref, (*where, "retry_on", i))
                        for i, ref in enumerate(options["retry_on"])
                    )
                created = RetryInterceptor(**options)
            elif kind == "timeout":
                if isinstance(options, Mapping):
                    created = TimeoutInterceptor(
                        options.get("seconds", 30.0), per_stage=options.get("per_stage")
                    )
                else:
                    created = TimeoutInterceptor(options)
            elif kind == "circuit_breaker":
                created = CircuitBreakerInterceptor(**options)
            elif kind == "idempotency":
                created = IdempotencyInterceptor(**options)
            else:
                factory = self.resolve(options, INTERCEPTOR_GROUP, where)
                created = self.create(factory, entry.get("args", {}), where, "interceptor")
        except (TypeError, ValueError) as exc:
            raise self.fail(where, str(exc)) from None
        problem = interceptor_problem(created)
        if problem is not None:
            raise self.fail(where, f"{options!r} made something that {problem}")
        return created  # type: ignore[no-any-return]

    def exception(self, ref: str, path: DataPath) -> type[BaseException]:
        value = self.resolve(ref, INTERCEPTOR_GROUP, path) if ":" in ref else None
        if not (isinstance(value, type) and issubclass(value, BaseException)):
            raise self.fail(
                path,
                f"{ref!r} is not an exception class",
                "name one by its import path, e.g. builtins:ConnectionError",
            )
        return value

    def interceptors(self, entries: list[Mapping[str, Any]], path: DataPath) -> list[Interceptor]:
        made = []
        for index, entry in enumerate(entries):
            try:
                made.append(self.interceptor(entry, (*path, index)))
            except _Failed:
                continue
        return made

    def runner(self, stage: str, spec: Mapping[str, Any]) -> Any:
        path: DataPath = ("stages", stage)
        runner = self.resolve(spec["runner"], STAGE_GROUP, (*path, "runner"))
        if "args" not in spec:
            return runner
        args = spec["args"]
        if isinstance(runner, type):
            return self.create(runner, args, (*path, "args"), f"stage {stage!r}")
        if not inspect.isroutine(runner) and not isinstance(runner, functools.partial):
            raise self.fail(
                (*path, "args"),
                f"`args` need a class or a function runner; {spec['runner']!r} is "
                f"{describe(runner)}",
                "remove `args`, or name the class instead of an instance",
            )
        try:
            inspect.signature(runner).bind(None, **args)
        except TypeError as exc:
            raise self.fail(
                (*path, "args"),
                f"{spec['runner']!r} cannot be called as f(ctx, **args): {exc}",
                "give the function a keyword parameter for each key of `args`",
            ) from None
        except ValueError:  # no signature to check (a builtin): let the call tell
            pass
        return functools.partial(runner, **args)


def _reason(exc: PipelineValidationError) -> str:
    """The message of a validation error without its fix hint (reported separately)."""
    return exc.message.removesuffix(f". Fix: {exc.fix_hint}") if exc.fix_hint else exc.message


async def _unresolved(ctx: Any) -> None:
    """Stands in for a runner that could not be resolved, so the DAG is still checked."""


class Built:
    """The pipeline of a file, and how it runs."""

    def __init__(
        self,
        pipeline: Pipeline,
        *,
        failure_mode: str,
        max_concurrency: int | None,
        event_sinks: tuple[EventSink, ...],
    ) -> None:
        self.pipeline = pipeline
        self.failure_mode = failure_mode
        self.max_concurrency = max_concurrency
        self.event_sinks = event_sinks

    def event_sink(self) -> EventSink | None:
        """The file's event sinks as one sink (``None`` for none)."""
        if not self.event_sinks:
            return None
        if len(self.event_sinks) == 1:
            return self.event_sinks[0]
        return FanOutEventSink(self.event_sinks)

    def build(self, **options: Any) -> StageGraph:
        """The runnable graph, with the file's run settings unless ``options`` override them."""
        settings: dict[str, Any] = {
            "failure_mode": self.failure_mode,
            "max_concurrency": self.max_concurrency,
            "event_sink": self.event_sink(),
        }
        settings.update(options)
        return self.pipeline.build(**settings)


def build(source: Source, display: str) -> tuple[Built | None, list[Problem]]:
    """Import what the file names and build its pipeline; every problem found is returned."""
    data = source.data
    builder = _Builder(source)
    shared = builder.interceptors(data.get("interceptors", []), ("interceptors",))
    sinks: list[EventSink] = []
    for index, entry in enumerate(data.get("event_sinks", [])):
        path: DataPath = ("event_sinks", index)
        try:
            factory = builder.resolve(entry["use"], SINK_GROUP, (*path, "use"))
            sink = builder.create(factory, entry.get("args", {}), path, "event sink")
        except _Failed:
            continue
        problem = sink_problem(sink)
        if problem is not None:
            builder.fail(path, f"{entry['use']!r} made something that {problem}")
            continue
        sinks.append(sink)
    pipeline = Pipeline(data["name"], source=display)
    for stage, spec in data["stages"].items():
        path = ("stages", stage)
        try:
            runner = builder.runner(stage, spec)
        except _Failed:
            runner = _unresolved
        own = builder.interceptors(spec.get("interceptors", []), (*path, "interceptors"))
        try:
            pipeline = pipeline.with_stage(
                stage,
                runner,
                spec.get("kind"),
                spec.get("dependencies"),
                after=spec.get("after"),
                conditional=spec.get("conditional", False),
                timeout=spec.get("timeout"),
                interceptors=[*shared, *own],
            )
        except PipelineValidationError as exc:
            builder.fail(path, _reason(exc).removeprefix(f"stage {stage!r}: "), exc.fix_hint)
            # A stand-in keeps the stage in the graph, so its dependencies are still checked.
            pipeline = pipeline.with_stage(
                stage, _unresolved, dependencies=spec.get("dependencies"), after=spec.get("after")
            )
    built = Built(
        pipeline,
        failure_mode=data.get("failure_mode", "fail_fast"),
        max_concurrency=data.get("max_concurrency"),
        event_sinks=tuple(sinks),
    )
    try:
        built.build(hooks=[])
    except PipelineValidationError as exc:
        stage = exc.stages[0] if exc.stages else None
        if stage is not None and stage in data["stages"]:
            spec = data["stages"][stage]
            key = "dependencies" if "dependencies" in spec else "after" if "after" in spec else None
            where: DataPath = ("stages", stage) if key is None else ("stages", stage, key)
        else:
            where = ("stages",)
        builder.fail(where, _reason(exc), exc.fix_hint)
    if builder.problems:
        return None, sorted(builder.problems, key=lambda p: (p.line or 0, p.column or 0))
    return built, []
