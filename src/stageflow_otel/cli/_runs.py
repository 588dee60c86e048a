"""``stageflow-otel runs``, ``runs show RUN_ID`` and ``resume RUN_ID``; ``--store`` for runs.

The run history lives in a run store (:mod:`stageflow_otel.runs`): the one ``--store`` names,
else ``$STAGEFLOW_OTEL_STORE``, else the default SQLite file.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as _dt
import os
import re
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from ._arguments import positive_int
from ._errors import EXIT_OK, CommandFailed, UsageError

if TYPE_CHECKING:
    from rich.console import Console
    from rich.text import Text

    from stageflow_otel.runs import RecordingStore, RunRecord, StageRecord

__all__ = ("add_run_commands", "add_store_options", "store_for_session")

JAEGER_VARIABLE = "STAGEFLOW_OTEL_JAEGER_URL"
_STATUS_STYLE = {"ok": "green", "fail": "bold red", "cancel": "yellow", "running": "cyan",
                 "skip": "dim", "pending": "dim"}  # fmt: skip
_STATUS_MARK = {"ok": "✓", "fail": "✗", "cancel": "⊘", "running": "…", "skip": "↷",
                "pending": "·"}  # fmt: skip
_SINCE = re.compile(r"^(\d+(?:\.\d+)?)\s*([smhdw])$")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def add_store_options(parser: argparse.ArgumentParser) -> None:
    """``--store [URL]`` and ``--checkpoints`` for the commands that run pipelines."""
    group = parser.add_argument_group("run history")
    group.add_argument(
        "--store",
        metavar="URL",
        nargs="?",
        const="default",
        help="record the runs in a run store: 'default' (when no URL is given: "
        "$XDG_DATA_HOME/stageflow-otel/runs.sqlite3), a path, sqlite:///path or "
        "postgresql://... (default: $STAGEFLOW_OTEL_STORE, else no store)",
    )
    group.add_argument(
        "--checkpoints",
        action="store_true",
        default=None,
        help="with --store, keep each stage's output and the run input, so failed runs can be "
        "resumed (default: $STAGEFLOW_OTEL_STORE_CHECKPOINTS)",
    )


def _open(url: str, **options: Any) -> RecordingStore:
    from stageflow_otel.runs import StoreError, open_store

    try:
        return open_store(url, **options)
    except (StoreError, ValueError) as exc:
        raise UsageError(str(exc)) from None


def _checkpoints_from_environment() -> bool:
    from stageflow_otel.core._checks import env_flag
    from stageflow_otel.runs import CHECKPOINTS_VARIABLE

    try:
        return env_flag(CHECKPOINTS_VARIABLE, False)
    except ValueError as exc:
        raise UsageError(str(exc)) from None


def store_for_session(args: argparse.Namespace, *, source: str | None) -> RecordingStore | None:
    """The store ``--store`` (or ``$STAGEFLOW_OTEL_STORE``) names for ``demo``/``run``, if any.

    Raises:
        UsageError: ``--checkpoints`` without a store, or a store that cannot be opened.
    """
    from stageflow_otel.runs import STORE_VARIABLE

    url = args.store or os.environ.get(STORE_VARIABLE) or None
    checkpoints = args.checkpoints if args.checkpoints is not None else None
    if url is None:
        if checkpoints:
            raise UsageError(
                "--checkpoints needs a store: add --store (the default file) or --store URL"
            )
        return None
    if checkpoints is None:
        checkpoints = _checkpoints_from_environment()
    return _open(url, checkpoints=checkpoints, source=source)


def _reading_store(args: argparse.Namespace) -> RecordingStore:
    from stageflow_otel.runs import STORE_VARIABLE

    return _open(args.store or os.environ.get(STORE_VARIABLE) or "default")


# -- parsing --------------------------------------------------------------------------------


def parse_since(text: str, *, now: _dt.datetime | None = None) -> _dt.datetime:
    """``2h``, ``30m``, ``7d`` (ago), or an ISO date or time (local time unless it says).

    Raises:
        argparse.ArgumentTypeError: Neither.
    """
    match = _SINCE.match(text.strip())
    if match:
        seconds = float(match.group(1)) * _UNITS[match.group(2)]
        return (now or _dt.datetime.now(_dt.UTC)) - _dt.timedelta(seconds=seconds)
    try:
        value = _dt.datetime.fromisoformat(text.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected a duration ago (30m, 2h, 7d) or an ISO date/time (2026-01-31, "
            f"2026-01-31T08:00), got {text!r}"
        ) from None
    return value if value.tzinfo is not None else value.astimezone()


def add_run_commands(
    commands: Any,
    common: argparse.ArgumentParser,
    session: argparse.ArgumentParser,
    *,
    session_options: Callable[..., Any],
    log_levels: dict[str, int],
    console: Callable[[], Console],
) -> None:
    """Add ``runs`` (with ``runs show`` and ``runs prune``) and ``resume`` to the subcommands."""
    store_option = argparse.ArgumentParser(add_help=False)
    store_option.add_argument(
        "--store",
        metavar="URL",
        help="the run store: 'default', a path, sqlite:///path or postgresql://... "
        "(default: $STAGEFLOW_OTEL_STORE, else the default file)",
    )
    runs = commands.add_parser(
        "runs",
        parents=[common, store_option],
        help="list recorded runs (runs show RUN_ID: one run's stages)",
        description="List the runs recorded in a run store, newest first; 'runs show RUN_ID' "
        "shows one run with its stages. Record runs with --store on demo and run, "
        "build(store=...) or $STAGEFLOW_OTEL_STORE.",
    )
    runs.add_argument("--pipeline", metavar="NAME", help="only runs of this pipeline")
    runs.add_argument(
        "--status", choices=("ok", "fail", "cancel", "running"), help="only runs with this status"
    )
    runs.add_argument(
        "--since",
        metavar="WHEN",
        type=parse_since,
        help="only runs started since: a duration ago (30m, 2h, 7d) or an ISO date/time",
    )
    runs.add_argument(
        "--limit", type=positive_int, default=20, metavar="N", help="at most N runs (default: 20)"
    )
    runs.add_argument(
        "--jaeger-url",
        metavar="URL",
        help=f"link trace ids to this Jaeger UI, e.g. http://localhost:16686 (default: "
        f"${JAEGER_VARIABLE})",
    )
    runs.set_defaults(handler=lambda args: _list(args, console()))
    shows = runs.add_subparsers(dest="runs_command", metavar="{show RUN_ID,prune}")
    show = shows.add_parser(
        "show",
        parents=[common, store_option],
        help="one run: its stages with statuses and durations",
        description="Show one recorded run: what it was, and its stages as a tree (each under "
        "its first dependency) with status, attempts, duration and error.",
    )
    show.add_argument("run_id", metavar="RUN_ID", help="a run id, or its first characters")
    show.add_argument("--jaeger-url", metavar="URL", help=f"(default: ${JAEGER_VARIABLE})")
    show.set_defaults(handler=lambda args: _show(args, console()))
    prune = shows.add_parser(
        "prune",
        parents=[common, store_option],
        help="delete old runs (their stages and checkpoints too)",
        description="Delete the runs started before a time, with their stages and checkpoints, "
        "and say how many; runs still running are kept. A store keeps every run until pruned.",
    )
    prune.add_argument(
        "--older-than",
        metavar="WHEN",
        type=parse_since,
        required=True,
        help="runs started before this: a duration ago (30m, 2h, 7d) or an ISO date/time",
    )
    prune.add_argument("--pipeline", metavar="NAME", help="only runs of this pipeline")
    prune.add_argument(
        "--status", choices=("ok", "fail", "cancel"), help="only runs with this status"
    )
    prune.set_defaults(handler=lambda args: _prune(args, console()))

    resume = commands.add_parser(
        "resume",
        parents=[common, session],
        help="run a failed run again from where it stopped",
        description="Resume a failed, cancelled or killed run recorded with checkpoints: its "
        "completed stages are not run again (their outputs come from the store), the rest run "
        "with the run's input, with the same telemetry and output as run.",
    )
    resume.add_argument("run_id", metavar="RUN_ID", help="a run id, or its first characters")
    resume.add_argument(
        "--pipeline",
        metavar="MODULE:PIPELINE",
        help="the pipeline to resume it with (default: the one the run was started from, when "
        "it was started by this command line)",
    )
    resume.add_argument(
        "--store",
        metavar="URL",
        help="the run store (default: $STAGEFLOW_OTEL_STORE, else the default file)",
    )
    resume.set_defaults(handler=lambda args: _resume(args, console(), session_options, log_levels))


# -- commands -------------------------------------------------------------------------------


def _jaeger(args: argparse.Namespace) -> str | None:
    url = getattr(args, "jaeger_url", None) or os.environ.get(JAEGER_VARIABLE) or None
    return url.rstrip("/") if url else None


def _status(status: str) -> Text:
    from rich.text import Text

    return Text(f"{_STATUS_MARK.get(status, '?')} {status}", style=_STATUS_STYLE.get(status, ""))


def _duration(ms: float | None) -> str:
    if ms is None:
        return "-"
    if ms < 1000:
        return f"{ms:.1f} ms"
    if ms < 60_000:
        return f"{ms / 1000:.2f} s"
    return f"{ms / 60_000:.1f} min"


def _started(value: _dt.datetime) -> str:
    return value.astimezone().strftime("%Y-%m-%d %H:%M:%S")


def _trace(trace_id: str | None, jaeger: str | None) -> Text:
    from rich.text import Text

    if not trace_id:
        return Text("-", style="dim")
    if jaeger is None:
        return Text(trace_id, style="dim")
    return Text(trace_id, style=f"link {jaeger}/trace/{trace_id}")


def _list(args: argparse.Namespace, console: Console) -> int:
    from rich.table import Table
    from rich.text import Text

    if getattr(args, "runs_command", None):  # pragma: no cover - argparse dispatches show
        return EXIT_OK
    store = _reading_store(args)
    try:
        records = store.list_runs(
            pipeline=args.pipeline, status=args.status, since=args.since, limit=args.limit
        )
    finally:
        store.close()
    if not records:
        filters = [
            f"{name} {value}"
            for name, value in (("pipeline", args.pipeline), ("status", args.status))
            if value
        ]
        if args.since is not None:
            filters.append(f"since {_started(args.since)}")
        which = f" matching {', '.join(filters)}" if filters else ""
        console.print(f"no runs{which} in {store.location}")
        return EXIT_OK
    jaeger = _jaeger(args)
    table = Table(title=f"runs in {store.location}", title_justify="left", box=None)
    for column in ("started", "run id", "pipeline", "status", "duration", "failed stage",
                   "trace id"):  # fmt: skip
        table.add_column(column, no_wrap=column in ("run id", "trace id", "started"))
    for run in records:
        failed = ""
        if run.failed_stage:
            failed = f"{run.failed_stage} ({run.error_type or 'error'})"
        note = Text(run.run_id)
        if run.resumed_from:
            note.append(f"  ↺ {run.resumed_from[:8]}", style="dim")
        table.add_row(
            _started(run.started_at),
            note,
            run.pipeline,
            _status(run.status),
            _duration(run.duration_ms),
            failed,
            _trace(run.trace_id, jaeger),
        )
    console.print(table)
    return EXIT_OK


def _find(store: RecordingStore, run_id: str) -> RunRecord:
    from stageflow_otel.runs import StoreError

    try:
        record = store.get_run(run_id)
    except StoreError as exc:
        raise UsageError(str(exc)) from None
    if record is None:
        raise UsageError(
            f"there is no run {run_id!r} in {store.location}; list them with 'stageflow-otel runs'"
        )
    return record


def _prune(args: argparse.Namespace, console: Console) -> int:
    store = _reading_store(args)
    try:
        deleted = store.delete_runs(
            before=args.older_than, pipeline=args.pipeline, status=args.status
        )
    finally:
        store.close()
    when = _started(args.older_than)
    console.print(f"deleted {deleted} run{'' if deleted == 1 else 's'} started before {when}")
    return EXIT_OK


def _show(args: argparse.Namespace, console: Console) -> int:
    from rich.text import Text
    from rich.tree import Tree

    store = _reading_store(args)
    try:
        run = _find(store, args.run_id)
        checkpoints = {c.stage for c in store.read_checkpoints(run.run_id)}
    finally:
        store.close()
    jaeger = _jaeger(args)
    label = Text.assemble(("run ", "bold"), (run.run_id, "bold"), "  ")
    label.append_text(_status(run.status))
    tree = Tree(label)
    fields: list[tuple[str, Text | str]] = [
        ("pipeline", run.pipeline),
        ("started", f"{_started(run.started_at)}  ({_duration(run.duration_ms)})"),
        ("trace", _trace(run.trace_id, jaeger)),
    ]
    if run.identity:
        fields.append(("identity", ", ".join(f"{k}={v}" for k, v in sorted(run.identity.items()))))
    if run.failed_stage:
        fields.append(("failed", f"{run.failed_stage}: {run.error_type}: {run.error}"))
    elif run.error:
        fields.append(("reason", run.error))
    if run.resumed_from:
        fields.append(("resumes", run.resumed_from))
    if run.host:
        fields.append(("process", f"{run.pid} on {run.host}"))
    fields.append(("outputs", "checkpointed" if run.checkpoints else "not kept"))
    for name, value in fields:
        tree.add(Text.assemble((f"{name:<9}", "bold"), value))
    stages = tree.add(Text(f"stages ({len(run.stages)})", style="bold"))
    nodes: dict[str, Tree] = {}
    for stage in run.stages:
        dependencies = stage.definition.dependencies
        parent = nodes.get(dependencies[0]) if dependencies else None
        nodes[stage.name] = (parent or stages).add(_stage_label(stage, checkpoints))
    console.print(tree)
    return EXIT_OK


def _stage_label(stage: StageRecord, checkpoints: set[str]) -> Text:
    from rich.text import Text

    label = Text.assemble((stage.name, "bold"), "  ")
    label.append_text(_status(stage.status))
    if stage.status != "pending":
        label.append(f"  {_duration(stage.duration_ms)}", style="dim")
    if stage.attempts > 1:
        label.append(f"  {stage.attempts} attempts", style="yellow")
    if stage.restored:
        label.append("  restored", style="cyan")
    elif stage.name in checkpoints:
        label.append("  checkpointed", style="dim")
    extra = stage.definition.dependencies[1:]
    if extra:
        label.append(f"  (also after {', '.join(extra)})", style="dim")
    if stage.error:
        label.append(f"\n{stage.error_type}: {stage.error}", style="red")
    return label


def _resume(
    args: argparse.Namespace,
    console: Console,
    session_options: Callable[..., Any],
    log_levels: dict[str, int],
) -> int:
    from stageflow_otel.runs import STORE_VARIABLE

    from ._files import is_pipeline_file, load_file
    from ._loader import as_graph, load_target
    from ._session import configure_cli_logging, run_session

    url = args.store or os.environ.get(STORE_VARIABLE) or "default"
    reader = _open(url)
    try:
        record = _find(reader, args.run_id)
    finally:
        reader.close()
    target = args.pipeline or record.source
    if target is None:
        raise UsageError(
            f"run {record.run_id} was not started by this command line, so which pipeline it "
            "ran is not known; name it with --pipeline MODULE:PIPELINE"
        )
    if is_pipeline_file(target):  # a pipeline file, as it is now (without the run's --set)
        graph = load_file(target, []).build()
    else:
        graph = as_graph(load_target(target))
    from stageflow_otel.runs import ResumeError, check_resumable

    try:
        check_resumable(record, graph)
    except ResumeError as exc:
        raise CommandFailed(str(exc)) from None
    args.runs = 1
    options = dataclasses.replace(
        session_options(args, command="resume", service="stageflow-otel"),
        store=_open(url, checkpoints=True, source=target),
        resume=record.run_id,
    )
    configure_cli_logging(log_levels[args.log_level])
    return int(run_session(graph, lambda index: ({}, _identity()), options, console))


def _identity() -> Any:
    from stageflow_otel.core import RunIdentity

    return RunIdentity()
