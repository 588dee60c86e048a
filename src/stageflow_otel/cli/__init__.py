"""The ``stageflow-otel`` command line.

``stageflow-otel demo`` runs the example order pipeline with telemetry on an embedded default;
``run MODULE:PIPELINE`` (or ``run FILE``, a pipeline file) does the same for a pipeline of
yours; ``graph`` prints a pipeline's DAG as DOT or Mermaid; ``timeline`` turns a trace file
into a self-contained HTML timeline; ``validate`` checks pipeline files; ``plugins`` lists the
installed plugins; ``runs`` lists recorded runs (``runs show RUN_ID`` one of them) and
``resume RUN_ID`` runs a failed one again from where it stopped.

Exit codes: 0 success, 1 the pipeline failed (or is invalid), 2 usage error (bad argument,
unknown module, busy ``/metrics`` port, a pipeline file with problems). Errors are one line on
stderr (a pipeline file's problems first, one a line); ``--verbose`` adds the traceback.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import sys
import tempfile
import traceback
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

from . import _files
from ._arguments import positive_int
from ._errors import EXIT_FAILED, EXIT_OK, EXIT_USAGE, CommandFailed, UsageError
from ._runs import add_run_commands, add_store_options, store_for_session

if TYPE_CHECKING:
    from rich.console import Console

    from stageflow_otel.core import Pipeline, StageGraph

    from ._session import SessionOptions

__all__ = ("main",)

PROG = "stageflow-otel"
_LOG_LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING,
               "error": logging.ERROR}  # fmt: skip


class _Parser(argparse.ArgumentParser):
    """An argument parser whose errors are one line on stderr (exit 2)."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message} (see '{self.prog} --help')\n")


def _port(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a port number, got {text!r}") from None
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"must be between 0 and 65535, got {value}")
    return value


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected seconds, got {text!r}") from None
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"must be a positive number of seconds, got {text}")
    return value


def _common_options() -> _Parser:
    common = _Parser(add_help=False)
    common.add_argument(
        "-v", "--verbose", action="store_true", help="print the traceback of an error"
    )
    return common


def _session_options() -> _Parser:
    parent = _Parser(add_help=False)
    group = parent.add_argument_group("output and telemetry")
    group.add_argument(
        "--out",
        metavar="DIR",
        type=Path,
        help="where trace.jsonl and timeline.html go (default: a stageflow-otel-<command> "
        "directory under the system temp directory)",
    )
    group.add_argument(
        "--metrics-port",
        metavar="PORT",
        type=_port,
        help="port of /metrics (default: $STAGEFLOW_OTEL_METRICS_PORT or 9464; 0 = any free "
        "port). An explicit port that is busy is an error; a busy default port is replaced by "
        "a free one",
    )
    group.add_argument(
        "--metrics-addr",
        metavar="ADDR",
        help="address of /metrics (default: $STAGEFLOW_OTEL_METRICS_ADDR or 127.0.0.1)",
    )
    group.add_argument(
        "--otlp-endpoint",
        metavar="URL",
        help="also export spans and events over OTLP, e.g. http://localhost:4317 (default: "
        "$OTEL_EXPORTER_OTLP_ENDPOINT; http:// is insecure, https:// uses TLS)",
    )
    group.add_argument(
        "--otlp-protocol",
        choices=("grpc", "http/protobuf"),
        help="OTLP protocol (default: $OTEL_EXPORTER_OTLP_PROTOCOL or grpc)",
    )
    group.add_argument(
        "--hold",
        action="store_true",
        help="keep serving /metrics after the runs until SIGINT or SIGTERM (then exit 0)",
    )
    group.add_argument(
        "--interval",
        metavar="SECONDS",
        type=_seconds,
        help="with --hold, run the pipeline again every SECONDS",
    )
    group.add_argument(
        "--no-live",
        dest="live",
        action="store_false",
        default=None,
        help="plain output, no live display (the default when stdout is not a terminal)",
    )
    group.add_argument(
        "--log-level",
        choices=tuple(_LOG_LEVELS),
        default="error",
        help="level of the log lines on stderr; 'info' shows the canonical stage.wide and "
        "pipeline.wide lines, 'warning' those of failed stages and runs (default: error)",
    )
    return parent


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``stageflow-otel``."""
    from stageflow_otel._version import package_version

    parser = _Parser(
        prog=PROG,
        description="Run and inspect stageflow-otel pipelines with OpenTelemetry traces, "
        "Prometheus metrics and structured logs.",
        epilog="exit codes: 0 ok, 1 pipeline failed, 2 usage error",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {package_version()}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    common = _common_options()
    session = _session_options()

    demo = commands.add_parser(
        "demo",
        parents=[common, session],
        help="run the example order pipeline with telemetry",
        description="Run the example order-processing pipeline (parallel enrichment, a guard, "
        "a retried stage, a tool call, a payment subpipeline, a skipped branch) several times "
        "with tracing, metrics and logs, then print the trace of the last run.",
    )
    demo.add_argument(
        "--runs", type=positive_int, default=3, metavar="N", help="how many runs (default: 3)"
    )
    demo.add_argument(
        "--dask",
        metavar="ADDRESS",
        help="run price_order as a remote stage on the Dask cluster of this scheduler, e.g. "
        "tcp://127.0.0.1:8786 (needs the dask extra; registers the stageflow-otel worker "
        "plugin, which exports the workers' spans as their OTEL_* variables say)",
    )
    add_store_options(demo)
    demo.set_defaults(handler=_demo)

    run = commands.add_parser(
        "run",
        parents=[common, session],
        help="run your pipeline with telemetry",
        description="Run MODULE:PIPELINE (a Pipeline, a StageGraph, or a function returning "
        "one), or a pipeline file (*.yaml, *.yml, *.toml), with the same telemetry and output "
        "as the demo.",
    )
    run.add_argument(
        "target",
        metavar="MODULE:PIPELINE|FILE",
        help="e.g. myapp.pipelines:checkout, or pipelines/checkout.yaml",
    )
    _files.add_set_option(run)
    run.add_argument(
        "--data", metavar="JSON", help="run input: a JSON object, or @FILE holding one"
    )
    run.add_argument(
        "--runs", type=positive_int, default=1, metavar="N", help="how many runs (default: 1)"
    )
    add_store_options(run)
    run.set_defaults(handler=_run)

    graph = commands.add_parser(
        "graph",
        parents=[common],
        help="print a pipeline's DAG as DOT or Mermaid",
        description="Print the DAG of MODULE:PIPELINE or of a pipeline file (default: the "
        "demo's pipeline). The pipeline is validated as for run: an invalid one (a cycle, a "
        "missing dependency) is an error, not a drawing.",
    )
    graph.add_argument("target", metavar="MODULE:PIPELINE|FILE", nargs="?")
    _files.add_set_option(graph)
    graph.add_argument("--format", choices=("dot", "mermaid"), default="dot", help="(default: dot)")
    graph.set_defaults(handler=_graph)

    timeline = commands.add_parser(
        "timeline",
        parents=[common],
        help="write an HTML timeline of a trace file",
        description="Turn a trace file (JSON lines of spans, as demo and run write) into a "
        "self-contained HTML Gantt timeline, one chart per trace.",
    )
    timeline.add_argument("trace_file", metavar="TRACE_FILE", type=Path)
    timeline.add_argument(
        "-o",
        "--output",
        type=Path,
        metavar="HTML",
        help="where to write it (default: TRACE_FILE with the suffix .html)",
    )
    timeline.add_argument(
        "--last", type=positive_int, metavar="N", help="only the last N traces of the file"
    )
    timeline.set_defaults(handler=_timeline)
    _files.add_file_commands(commands, common)
    add_run_commands(
        commands,
        common,
        session,
        session_options=_options,
        log_levels=_LOG_LEVELS,
        console=_console,
    )
    return parser


# -- commands ---------------------------------------------------------------------------------


def _console() -> Console:
    from rich.console import Console

    probe = Console()
    if probe.is_terminal:
        return Console(highlight=False)
    # Piped or redirected: no wrapping at 80 columns, so lines stay greppable.
    width = int(os.environ["COLUMNS"]) if os.environ.get("COLUMNS", "").isdigit() else 200
    return Console(highlight=False, width=width)


def _options(args: argparse.Namespace, *, command: str, service: str) -> SessionOptions:
    from ._session import SessionOptions

    endpoint = args.otlp_endpoint or os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT") or None
    protocol = args.otlp_protocol or os.environ.get("OTEL_EXPORTER_OTLP_PROTOCOL") or "grpc"
    if protocol not in ("grpc", "http/protobuf"):
        raise UsageError(
            f"OTEL_EXPORTER_OTLP_PROTOCOL={protocol!r} is not supported; use grpc or http/protobuf"
        )
    if args.interval is not None and not args.hold:
        raise UsageError("--interval needs --hold (it repeats runs while /metrics is served)")
    out = args.out or Path(tempfile.gettempdir()) / f"stageflow-otel-{command}"
    return SessionOptions(
        command=command,
        runs=args.runs,
        out_dir=out,
        metrics_port=args.metrics_port,
        metrics_addr=args.metrics_addr,
        otlp_endpoint=endpoint,
        otlp_protocol=protocol,
        service_name=service,
        hold=args.hold,
        interval=args.interval,
        live=args.live,
    )


def _demo(args: argparse.Namespace) -> int:
    from stageflow_otel.core import RunIdentity
    from stageflow_otel.demo import build_order_pipeline, order_input

    from ._session import configure_cli_logging, run_session

    options = _options(args, command="demo", service="stageflow-otel-demo")
    store = store_for_session(args, source="stageflow_otel.demo:build_order_pipeline")
    options = dataclasses.replace(options, store=store)
    configure_cli_logging(_LOG_LEVELS[args.log_level])

    def inputs(index: int) -> tuple[dict[str, Any], RunIdentity]:
        return order_input(index), RunIdentity(request_id=f"demo-{index + 1}")

    if args.dask is None:
        return run_session(build_order_pipeline().build(), inputs, options, _console())
    from ._dask import dask_executor

    with dask_executor(args.dask) as remote:
        graph = build_order_pipeline(remote=remote).build()
        return run_session(graph, inputs, options, _console())


def _run(args: argparse.Namespace) -> int:
    from stageflow_otel.core import RunIdentity

    from ._loader import as_graph, load_data, load_target
    from ._session import configure_cli_logging, run_session

    data = load_data(args.data)
    options = _options(args, command="run", service="stageflow-otel")
    _files.check_overrides_need_a_file(args.target, args.overrides)
    if _files.is_pipeline_file(args.target):
        graph = _files.load_file(args.target, args.overrides).build()
    else:
        graph = as_graph(load_target(args.target))
    options = dataclasses.replace(
        options, store=store_for_session(args, source=_source(args.target))
    )
    configure_cli_logging(_LOG_LEVELS[args.log_level])

    def inputs(index: int) -> tuple[dict[str, Any], RunIdentity]:
        return data, RunIdentity()

    return run_session(graph, inputs, options, _console())


def _source(target: str) -> str:
    """``target`` as ``resume`` can load it again from another directory."""
    if _files.is_pipeline_file(target):
        return str(Path(target).resolve())
    module, sep, attribute = target.partition(":")
    if sep and module.endswith(".py"):
        return f"{Path(module).resolve()}:{attribute}"
    return target


def _graph(args: argparse.Namespace) -> int:
    from ._loader import as_graph, as_pipeline, load_target

    _files.check_overrides_need_a_file(args.target, args.overrides)
    if args.target is None:
        from stageflow_otel.demo import build_order_pipeline

        target: Pipeline | StageGraph = build_order_pipeline()
    elif _files.is_pipeline_file(args.target):
        target = _files.load_file(args.target, args.overrides).pipeline
    else:
        target = load_target(args.target)
    # Validated exactly as `run` validates it: an invalid DAG is an error, not a drawing.
    as_graph(target)
    pipeline = as_pipeline(target)
    text = pipeline.to_dot() if args.format == "dot" else pipeline.to_mermaid()
    sys.stdout.write(text + "\n")
    return EXIT_OK


def _timeline(args: argparse.Namespace) -> int:
    from ._timeline import write_timeline
    from ._tracefile import group_by_trace, read_trace_file

    traces = group_by_trace(read_trace_file(args.trace_file))
    if args.last is not None:
        traces = traces[-args.last :]
    output: Path = args.output or args.trace_file.with_suffix(".html")
    records = [record for trace in traces for record in trace]
    try:
        write_timeline(output, records, title=f"{args.trace_file.name}: stageflow-otel timeline")
    except OSError as exc:
        raise UsageError(f"cannot write {str(output)!r}: {exc.strerror or exc}") from None
    plural = "" if len(traces) == 1 else "s"
    sys.stdout.write(f"{output}  ({len(records)} spans, {len(traces)} trace{plural})\n")
    return EXIT_OK


# -- entry point ------------------------------------------------------------------------------


def _one_line(message: str) -> str:
    return " ".join(message.split())


def _report(error: BaseException, *, verbose: bool, prefix: str = "error") -> None:
    if verbose:
        traceback.print_exception(error, file=sys.stderr)
    sys.stderr.write(f"{PROG}: {prefix}: {_one_line(str(error))}\n")


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line with ``argv`` (default: ``sys.argv[1:]``); returns the exit code."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help, --version, usage errors
        return exc.code if isinstance(exc.code, int) else EXIT_USAGE
    handler: Callable[[argparse.Namespace], int] = args.handler
    verbose = bool(getattr(args, "verbose", False))
    try:
        return handler(args)
    except UsageError as exc:
        _report(exc, verbose=verbose)
        return EXIT_USAGE
    except CommandFailed as exc:
        _report(exc, verbose=verbose)
        return EXIT_FAILED
    except KeyboardInterrupt:
        sys.stderr.write(f"{PROG}: interrupted\n")
        return 130
    except Exception as exc:
        if verbose:
            traceback.print_exception(exc, file=sys.stderr)
        hint = "" if verbose else " (run with --verbose for the traceback)"
        sys.stderr.write(f"{PROG}: unexpected {type(exc).__name__}: {_one_line(str(exc))}{hint}\n")
        return EXIT_FAILED


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
