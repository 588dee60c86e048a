"""Pipeline files and plugins on the command line: ``validate``, ``plugins``, and ``run FILE``."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ._errors import EXIT_FAILED, EXIT_OK, EXIT_USAGE, UsageError

if TYPE_CHECKING:
    from stageflow_otel.pipeline_files import PipelineFile, Problem

__all__ = (
    "add_file_commands",
    "add_set_option",
    "check_overrides_need_a_file",
    "is_pipeline_file",
    "load_file",
)

# The suffixes of stageflow_otel.pipeline_files.SUFFIXES, here so that parsing the command
# line imports nothing of the engine (a test checks that they agree).
PIPELINE_FILE_SUFFIXES = (".yaml", ".yml", ".toml")


def is_pipeline_file(target: str) -> bool:
    """Whether a ``run``/``graph`` target is a pipeline file rather than MODULE:PIPELINE."""
    return Path(target).suffix.lower() in PIPELINE_FILE_SUFFIXES


def add_set_option(parser: argparse.ArgumentParser) -> None:
    """``--set KEY=VALUE``, repeatable (pipeline files only)."""
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a value of a pipeline file, e.g. --set fetch.timeout=5 (repeatable; "
        "applied after the STAGEFLOW_OTEL_PIPELINE__... variables)",
    )


def _importable_cwd() -> None:
    # Like `python -m` (and `run MODULE:PIPELINE`): runners in the current directory resolve.
    cwd = os.getcwd()
    if cwd not in sys.path and "" not in sys.path:
        sys.path.insert(0, cwd)


def load_file(path: str, overrides: list[str]) -> PipelineFile:
    """Load a pipeline file for ``run`` or ``graph``.

    Raises:
        UsageError: The file has problems; they are written to stderr first, one a line.
    """
    from stageflow_otel.pipeline_files import PipelineFileError, read_pipeline_file

    _importable_cwd()
    try:
        return read_pipeline_file(path, overrides=overrides)
    except PipelineFileError as exc:
        for problem in exc.problems:
            sys.stderr.write(f"{problem}\n")
        count = len(exc.problems)
        raise UsageError(
            f"pipeline file {path} has {count} problem{'' if count == 1 else 's'} (listed above)"
        ) from None


def check_overrides_need_a_file(target: str | None, overrides: list[str]) -> None:
    """``--set`` changes a pipeline file; for a pipeline in code it is a mistake.

    Raises:
        UsageError: ``--set`` was given for a target that is not a pipeline file.
    """
    if overrides and not (target and is_pipeline_file(target)):
        raise UsageError(
            "--set overrides values of a pipeline file (*.yaml, *.yml, *.toml); change a "
            "pipeline declared in code in its code"
        )


# -- validate ---------------------------------------------------------------------------------


def _validate(args: argparse.Namespace) -> int:
    from stageflow_otel.pipeline_files import PipelineFileError, read_pipeline_file

    _importable_cwd()
    problems: list[Problem] = []
    configs: dict[str, Any] = {}
    for path in args.files:
        try:
            loaded = read_pipeline_file(path, overrides=args.overrides)
        except PipelineFileError as exc:
            problems.extend(exc.problems)
            continue
        configs[path] = loaded.config
        if not args.print_config:
            stages = len(loaded.pipeline)
            sys.stdout.write(f"{path}: ok (pipeline {loaded.pipeline.name!r}, {stages} stages)\n")
    for problem in problems:
        sys.stdout.write(f"{problem}\n")
    if problems:
        bad = len({p.file for p in problems})
        sys.stderr.write(
            f"{len(problems)} problem{'' if len(problems) == 1 else 's'} in {bad} of "
            f"{len(args.files)} file{'' if len(args.files) == 1 else 's'}\n"
        )
        return EXIT_USAGE
    if args.print_config:
        sys.stdout.write(json.dumps(configs, indent=2, default=str) + "\n")
    return EXIT_OK


# -- plugins ----------------------------------------------------------------------------------


def _plugins(args: argparse.Namespace) -> int:
    from stageflow_otel.plugins import PLUGIN_GROUPS, PluginError, installed_plugins, load_plugin

    plugins = installed_plugins()
    broken = 0
    for group in PLUGIN_GROUPS:
        sys.stdout.write(f"{group}\n")
        members = [p for p in plugins if p.group == group]
        if not members:
            sys.stdout.write("  (none installed)\n")
        for plugin in members:
            line = f"  {plugin.name}  {plugin.distribution} {plugin.version}  {plugin.value}"
            if args.check:
                try:
                    load_plugin(plugin.group, plugin.name)  # type: ignore[arg-type]
                except PluginError as exc:
                    broken += 1
                    line += f"  BROKEN: {exc.reason}"
                else:
                    line += "  ok"
            sys.stdout.write(line + "\n")
    if broken:
        sys.stderr.write(f"{broken} plugin{'' if broken == 1 else 's'} failed to load\n")
        return EXIT_FAILED
    return EXIT_OK


def _schema(args: argparse.Namespace) -> int:
    from stageflow_otel.pipeline_files import schema

    sys.stdout.write(json.dumps(schema(), indent=2) + "\n")
    return EXIT_OK


def add_file_commands(
    commands: argparse._SubParsersAction[Any], common: argparse.ArgumentParser
) -> None:
    """Add ``validate``, ``schema`` and ``plugins`` to the command line."""
    validate = commands.add_parser(
        "validate",
        parents=[common],
        help="check pipeline files without running them",
        description="Check each pipeline file (YAML or TOML): the format, against its JSON "
        "Schema, then every runner, interceptor and sink it names, and the DAG. Every problem "
        "is listed with its file, line and column, and its fix. Exit 0 when all are valid, "
        "2 otherwise.",
    )
    validate.add_argument("files", metavar="FILE", nargs="+", help="pipeline files")
    add_set_option(validate)
    validate.add_argument(
        "--print-config",
        action="store_true",
        help="print the effective configuration of the files (after ${VAR} substitution "
        "and overrides) as JSON, keyed by file",
    )
    validate.set_defaults(handler=_validate)

    schema = commands.add_parser(
        "schema",
        parents=[common],
        help="print the JSON Schema of pipeline files",
        description="Print the JSON Schema of pipeline files, for editors: "
        "stageflow-otel schema > pipeline-file.schema.json",
    )
    schema.set_defaults(handler=_schema)

    plugins = commands.add_parser(
        "plugins",
        parents=[common],
        help="list the installed stage, interceptor and sink plugins",
        description="List the plugins installed distributions provide (entry-point groups "
        "stageflow_otel.stages, stageflow_otel.interceptors, stageflow_otel.sinks), with the "
        "distribution, its version and the object. Nothing is imported unless --check is "
        "given.",
    )
    plugins.add_argument(
        "--check",
        action="store_true",
        help="import every plugin and say which fail to load (exit 1 if any does)",
    )
    plugins.set_defaults(handler=_plugins)
