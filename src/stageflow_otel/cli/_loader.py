"""Finding the user's pipeline from ``MODULE:ATTRIBUTE``, and reading ``--data``."""

from __future__ import annotations

import importlib
import importlib.util
import json
import os
import sys
from pathlib import Path
from typing import Any

from stageflow_otel.core import Pipeline, PipelineValidationError, StageGraph

from ._errors import CommandFailed, UsageError

__all__ = ("as_graph", "as_pipeline", "invalid", "load_data", "load_target")

_EXAMPLE = "myapp.pipelines:checkout, or path/to/file.py:pipeline"


def invalid(name: str, error: PipelineValidationError) -> CommandFailed:
    """The one-line failure for a pipeline that does not validate (the same for every command)."""
    message = str(error)
    if f"pipeline {name!r}" not in message:
        message = f"pipeline {name!r} is invalid: {message}"
    return CommandFailed(message)


def _import(module_name: str) -> Any:
    if module_name.endswith(".py") or os.sep in module_name or "/" in module_name:
        path = Path(module_name)
        if not path.is_file():
            raise UsageError(f"no Python file at {module_name!r}")
        spec = importlib.util.spec_from_file_location(path.stem, path)
        if spec is None or spec.loader is None:  # pragma: no cover - a .py file always loads
            raise UsageError(f"cannot load {module_name!r} as a Python module")
        module = importlib.util.module_from_spec(spec)
        sys.modules[path.stem] = module
        spec.loader.exec_module(module)
        return module
    return importlib.import_module(module_name)


def load_target(target: str) -> Pipeline | StageGraph:
    """Import ``MODULE:ATTRIBUTE`` and return the pipeline it names.

    ``MODULE`` is a dotted module name (the current directory is importable) or a path to a
    ``.py`` file; ``ATTRIBUTE`` (dotted for nested attributes) is a ``Pipeline``, a
    ``StageGraph``, or a callable taking no arguments that returns one.

    Raises:
        UsageError: The target is malformed, cannot be imported, or is not a pipeline.
    """
    module_name, sep, attribute = target.partition(":")
    if not sep or not module_name or not attribute:
        raise UsageError(f"expected MODULE:PIPELINE, got {target!r} (for example {_EXAMPLE})")
    # Like `python -m`, let modules in the current directory be found.
    cwd = os.getcwd()
    if cwd not in sys.path and "" not in sys.path:
        sys.path.insert(0, cwd)
    try:
        module = _import(module_name)
    except ModuleNotFoundError as exc:
        if exc.name and module_name.startswith(exc.name):
            raise UsageError(
                f"cannot import {module_name!r}: no module named {exc.name!r} (run from the "
                "directory that contains it, or install it)"
            ) from exc
        raise UsageError(f"importing {module_name!r} failed: {exc}") from exc
    except UsageError:
        raise
    except PipelineValidationError as exc:
        # The module loads but declares a pipeline wrongly: the pipeline is invalid (exit 1).
        raise CommandFailed(f"module {module_name!r} declares an invalid pipeline: {exc}") from exc
    except Exception as exc:
        raise UsageError(f"importing {module_name!r} failed: {type(exc).__name__}: {exc}") from exc
    value: Any = module
    for part in attribute.split("."):
        try:
            value = getattr(value, part)
        except AttributeError:
            names = sorted(
                name
                for name, obj in vars(module).items()
                if isinstance(obj, Pipeline | StageGraph) and not name.startswith("_")
            )
            hint = f" (pipelines there: {', '.join(names)})" if names else ""
            raise UsageError(
                f"module {module_name!r} has no attribute {attribute!r}{hint}"
            ) from None
    if isinstance(value, Pipeline | StageGraph):
        return value
    if callable(value):
        try:
            produced = value()
        except PipelineValidationError as exc:
            raise invalid(target, exc) from exc
        except Exception as exc:
            raise UsageError(f"calling {target}() failed: {type(exc).__name__}: {exc}") from exc
        if isinstance(produced, Pipeline | StageGraph):
            return produced
        raise UsageError(
            f"{target}() returned {type(produced).__name__}; it must return a Pipeline or a "
            "StageGraph"
        )
    raise UsageError(
        f"{target} is a {type(value).__name__}; expected a Pipeline, a StageGraph, or a "
        "function returning one"
    )


def as_graph(target: Pipeline | StageGraph) -> StageGraph:
    """The runnable graph of a target.

    Raises:
        CommandFailed: The pipeline does not validate (a cycle, a missing dependency, ...).
    """
    if isinstance(target, StageGraph):
        return target
    try:
        return target.build()
    except PipelineValidationError as exc:
        raise invalid(target.name, exc) from exc


def as_pipeline(target: Pipeline | StageGraph) -> Pipeline:
    """The declaration of a target (a graph's stages, for drawing it)."""
    if isinstance(target, Pipeline):
        return target
    return Pipeline(target.name, target.specs, source=target.source)


def load_data(text: str | None) -> dict[str, Any]:
    """The run input from ``--data``: a JSON object, or ``@path`` to a file holding one.

    Raises:
        UsageError: The text or file is not a JSON object.
    """
    if text is None:
        return {}
    source = "--data"
    if text.startswith("@"):
        path = Path(text[1:])
        source = f"--data file {str(path)!r}"
        try:
            text = path.read_text(encoding="utf-8")
        except OSError as exc:
            raise UsageError(f"cannot read {source}: {exc.strerror or exc}") from None
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise UsageError(
            f"{source} is not valid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}"
        ) from None
    if not isinstance(value, dict):
        raise UsageError(f"{source} must be a JSON object, got {type(value).__name__}")
    return value
