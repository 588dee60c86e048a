"""Pipelines declared as files: YAML or TOML, checked against a JSON Schema, loaded as a Pipeline.

A pipeline file names the pipeline, its stages (each with a runner given by import path
``package.module:callable`` or plugin name), their dependencies, kinds, timeouts and
interceptors, and how the pipeline runs (failure mode, concurrency, event sinks)::

    from stageflow_otel.pipeline_files import load_pipeline

    pipeline = load_pipeline("pipelines/checkout.yaml")
    results = await pipeline.run({"cart_id": "c-1"})

Loading happens in this order, and stops at the first step that finds problems, listing all
of that step's problems at once in a :class:`PipelineFileError`: the file is parsed;
``${VAR}`` and ``${VAR:-default}`` references are replaced from the environment; overrides
are applied (environment variables ``STAGEFLOW_OTEL_PIPELINE__<PIPELINE>__<KEY>...``, then
the ``overrides`` given, as ``--set`` does on the command line); the result is validated
against the JSON Schema (:func:`schema`), before anything is imported; then the runners,
interceptors and sinks are imported (or loaded from plugins) and the pipeline is built and
checked as ``Pipeline.build`` checks it. Every problem names the file, the line and column
(or the override it came from) and how to fix it.

The format is described in the documentation's "Pipeline files" page. This package imports
no telemetry library.
"""

from __future__ import annotations

import copy
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from stageflow_otel.core import Pipeline, PipelineValidationError, StageGraph
from stageflow_otel.core.events import EventSink

from ._build import SCHEMA_FILE, Built, build, schema, schema_problems
from ._source import (
    OVERRIDE_ENV_PREFIX,
    SUFFIXES,
    Override,
    Problem,
    Source,
    apply_overrides,
    env_overrides,
    parse_override,
    read_source,
    substitute,
)

__all__ = (
    "OVERRIDE_ENV_PREFIX",
    "SCHEMA_FILE",
    "SUFFIXES",
    "PipelineFile",
    "PipelineFileError",
    "Problem",
    "check_pipeline_file",
    "is_pipeline_file",
    "load_pipeline",
    "read_config",
    "read_pipeline_file",
    "schema",
)


class PipelineFileError(PipelineValidationError):
    """A pipeline file has problems; every one is listed.

    Attributes:
        file: The file, as messages name it.
        problems: What is wrong, each with its location and fix.
    """

    code = "PIPELINE_FILE"

    def __init__(self, file: str, problems: Iterable[Problem]) -> None:
        self.file = file
        self.problems = tuple(problems)
        count = len(self.problems)
        listed = "\n".join(f"  {problem}" for problem in self.problems)
        plural = "" if count == 1 else "s"
        super().__init__(f"pipeline file {file} has {count} problem{plural}:\n{listed}")


@dataclass(frozen=True, slots=True, eq=False)
class PipelineFile:
    """A loaded pipeline file: its pipeline and how it runs.

    Attributes:
        path: The file.
        source: The file's path relative to the working directory at load time (recorded as
            ``Pipeline.source`` and, by tracing, on the run span).
        config: The effective configuration: the file's data after ``${VAR}`` substitution
            and overrides (what ``stageflow-otel validate --print-config`` prints).
        pipeline: The pipeline (pipeline-level interceptors are part of every stage's chain,
            outermost, exactly as ``build(interceptors=...)`` would place them).
        failure_mode: ``fail_fast`` or ``continue``.
        max_concurrency: At most this many stages at once, or ``None``.
        event_sinks: The sinks the file names.
    """

    path: Path
    source: str
    config: Mapping[str, Any]
    pipeline: Pipeline
    failure_mode: str
    max_concurrency: int | None
    event_sinks: tuple[EventSink, ...]

    def build(self, **options: Any) -> StageGraph:
        """Build the runnable graph with the file's failure mode, concurrency and sinks.

        Args:
            **options: Keyword arguments of ``Pipeline.build`` (``hooks``, ``event_sink``,
                ...); they win over the file's settings.

        Raises:
            PipelineValidationError: For an invalid option.
        """
        built = Built(
            self.pipeline,
            failure_mode=self.failure_mode,
            max_concurrency=self.max_concurrency,
            event_sinks=self.event_sinks,
        )
        return built.build(**options)


def is_pipeline_file(target: str | os.PathLike[str]) -> bool:
    """Whether ``target`` names a pipeline file (by its suffix: .yaml, .yml, .toml)."""
    return Path(target).suffix.lower() in SUFFIXES


def _display(path: Path) -> str:
    try:
        return Path(os.path.relpath(path.resolve(), Path.cwd())).as_posix()
    except ValueError:  # another drive: no relative path
        return path.resolve().as_posix()


def _overrides(file: str, items: Iterable[str]) -> tuple[list[Override], list[Problem]]:
    parsed, problems = [], []
    for item in items:
        try:
            parsed.append(parse_override(item))
        except ValueError as exc:
            fix = "write KEY=VALUE, e.g. --set stages.fetch.timeout=5"
            problems.append(Problem(file, None, None, "", str(exc), fix, f"--set {item}"))
    return parsed, problems


def _checked_source(
    path: str | os.PathLike[str],
    overrides: Iterable[str],
    environ: Mapping[str, str] | None,
) -> tuple[Source, str, list[Problem]]:
    """Parse, substitute, override and validate against the schema (nothing imported)."""
    file_path = Path(path)
    display = _display(file_path)
    env = os.environ if environ is None else environ
    source, problems = read_source(file_path, str(path))
    if problems:
        return source, display, problems
    problems = substitute(source, env)
    name = source.data.get("name") if isinstance(source.data, dict) else None
    outside = env_overrides(name, env) if isinstance(name, str) and name else []
    given, bad = _overrides(str(path), overrides)
    problems += bad
    if not problems:
        top_level = schema()["properties"]
        problems = apply_overrides(source, [*outside, *given], top_level=top_level)
    if not problems:
        problems = schema_problems(source)
    return source, display, problems


def read_config(
    path: str | os.PathLike[str],
    *,
    overrides: Iterable[str] = (),
    environ: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """The effective configuration of a pipeline file, without importing anything.

    The file's data after ``${VAR}`` substitution and overrides, checked against the schema.

    Args:
        path: The pipeline file (``.yaml``, ``.yml`` or ``.toml``).
        overrides: ``KEY=VALUE`` items, as ``--set`` takes them.
        environ: The environment to read (default: ``os.environ``).

    Raises:
        PipelineFileError: Listing every problem found.
    """
    source, _, problems = _checked_source(path, overrides, environ)
    if problems:
        raise PipelineFileError(str(path), problems)
    config: dict[str, Any] = copy.deepcopy(source.data)
    return config


def read_pipeline_file(
    path: str | os.PathLike[str],
    *,
    overrides: Iterable[str] = (),
    environ: Mapping[str, str] | None = None,
) -> PipelineFile:
    """Load a pipeline file: its pipeline and its run settings.

    Args:
        path: The pipeline file (``.yaml``, ``.yml`` or ``.toml``).
        overrides: ``KEY=VALUE`` items, as ``--set`` takes them: a dotted key path
            (``stages.fetch.timeout``, or ``fetch.timeout`` for a stage), and a value read
            as JSON when it is a number, ``true``, ``false`` or ``null``, else as text.
        environ: The environment for ``${VAR}`` and ``STAGEFLOW_OTEL_PIPELINE__...``
            (default: ``os.environ``).

    Raises:
        PipelineFileError: Listing every problem found, each with its location and fix.
    """
    source, display, problems = _checked_source(path, overrides, environ)
    if problems:
        raise PipelineFileError(str(path), problems)
    config = copy.deepcopy(source.data)
    built, problems = build(source, display)
    if built is None:
        raise PipelineFileError(str(path), problems)
    return PipelineFile(
        path=Path(path),
        source=display,
        config=config,
        pipeline=built.pipeline,
        failure_mode=built.failure_mode,
        max_concurrency=built.max_concurrency,
        event_sinks=built.event_sinks,
    )


def load_pipeline(
    path: str | os.PathLike[str],
    *,
    overrides: Iterable[str] = (),
    environ: Mapping[str, str] | None = None,
) -> Pipeline:
    """Load a pipeline file as an ordinary :class:`~stageflow_otel.core.Pipeline`.

    The pipeline's ``source`` is the file's path relative to the working directory. The
    file's ``failure_mode``, ``max_concurrency`` and ``event_sinks`` are run settings, which
    ``Pipeline.run`` does not take from a pipeline: use :func:`read_pipeline_file` and its
    ``build()`` to apply them.

    Args:
        path: The pipeline file (``.yaml``, ``.yml`` or ``.toml``).
        overrides: ``KEY=VALUE`` items, as ``--set`` takes them.
        environ: The environment to read (default: ``os.environ``).

    Raises:
        PipelineFileError: Listing every problem found, each with its location and fix.
    """
    return read_pipeline_file(path, overrides=overrides, environ=environ).pipeline


def check_pipeline_file(
    path: str | os.PathLike[str],
    *,
    overrides: Iterable[str] = (),
    environ: Mapping[str, str] | None = None,
) -> list[Problem]:
    """Every problem of a pipeline file (empty when it loads); never raises for the file."""
    try:
        read_pipeline_file(path, overrides=overrides, environ=environ)
    except PipelineFileError as exc:
        return list(exc.problems)
    return []
