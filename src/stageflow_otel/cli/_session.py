"""One CLI session: telemetry on private providers, N runs with a live board, then the outputs.

The telemetry is the embedded default of the CLI: a ``TracerProvider`` whose spans go to an
in-memory exporter (for the tree, the trace file and the timeline) and, when an endpoint is
set, over OTLP; a private ``CollectorRegistry`` served on ``/metrics``; and, with OTLP, the
run's lifecycle events exported as OpenTelemetry log records. Nothing global is configured but
structlog's console rendering.
"""

from __future__ import annotations

import math
import os
import signal
import sys
import time
from collections import Counter
from collections.abc import Callable, Mapping
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO, cast
from urllib.parse import urlparse

import anyio
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from prometheus_client import CollectorRegistry
from rich.console import Console
from rich.live import Live
from rich.text import Text

from stageflow_otel.core import (
    EventSink,
    FanOutEventSink,
    PipelineCancelled,
    PipelineResults,
    RunHook,
    RunIdentity,
    StageExecutionError,
    StageGraph,
)
from stageflow_otel.observability import HelperTelemetry, MetricsServer, SpanEventSink, Telemetry
from stageflow_otel.observability.config import METRICS_PORT, Settings

from ._errors import EXIT_FAILED, EXIT_OK, UsageError
from ._render import BoardSink, RunSummary, StageBoard, render_trace_tree, summary_line
from ._timeline import write_timeline
from ._tracefile import SpanRecord, group_by_trace, record_of, write_trace_file

if TYPE_CHECKING:
    from opentelemetry.sdk._logs.export import LogRecordExporter
    from opentelemetry.sdk.trace.export import SpanExporter

    from stageflow_otel.runs import RecordingStore

__all__ = ("RunInput", "SessionOptions", "TelemetryStack", "run_session", "service_resource")

TIMELINE_MAX_TRACES = 10
"""The timeline the CLI writes shows at most this many runs (the last ones)."""

RunInput = Callable[[int], tuple[Mapping[str, Any], RunIdentity]]
"""Builds the input and identity of the ``i``-th run (0-based)."""


@dataclass(frozen=True, slots=True)
class SessionOptions:
    """What ``demo`` and ``run`` were asked to do.

    Attributes:
        command: ``demo`` or ``run`` (for the header).
        runs: How many runs.
        out_dir: Where the trace file and the timeline go.
        metrics_port: ``--metrics-port`` (``None``: the environment or 9464).
        metrics_addr: ``--metrics-addr`` (``None``: the environment or 127.0.0.1).
        otlp_endpoint: Where to export spans and events over OTLP, if anywhere.
        otlp_protocol: ``grpc`` or ``http/protobuf``.
        service_name: ``service.name`` unless ``OTEL_SERVICE_NAME`` or
            ``OTEL_RESOURCE_ATTRIBUTES`` name one.
        hold: Keep serving ``/metrics`` after the runs until SIGINT or SIGTERM.
        interval: While holding, run the pipeline again every this many seconds.
        live: Show the live board (``None``: when stdout is a terminal).
        store: Record the runs in this run store (``--store``).
        resume: Instead of new runs, resume this recorded run (``stageflow-otel resume``).
    """

    command: str
    runs: int
    out_dir: Path
    metrics_port: int | None = None
    metrics_addr: str | None = None
    otlp_endpoint: str | None = None
    otlp_protocol: str = "grpc"
    service_name: str = "stageflow-otel"
    hold: bool = False
    interval: float | None = None
    live: bool | None = None
    store: RecordingStore | None = None
    resume: str | None = None


def service_resource(default_service: str) -> Resource:
    """The resource of the CLI's telemetry.

    ``OTEL_SERVICE_NAME`` wins, then a ``service.name`` in ``OTEL_RESOURCE_ATTRIBUTES``, then
    ``default_service``; the other ``OTEL_RESOURCE_ATTRIBUTES`` are kept.
    """
    resource = Resource.create({})
    if str(resource.attributes.get("service.name", "")).startswith("unknown_service"):
        resource = resource.merge(Resource({"service.name": default_service}))
    return resource


def _otlp_exporters(endpoint: str, protocol: str) -> tuple[SpanExporter, LogRecordExporter]:
    parsed = urlparse(endpoint)
    if parsed.scheme not in ("http", "https") or not parsed.netloc:
        raise UsageError(
            f"OTLP endpoint {endpoint!r} is not an http:// or https:// URL "
            "(for example http://localhost:4317)"
        )
    if protocol == "grpc":
        from opentelemetry.exporter.otlp.proto.grpc._log_exporter import OTLPLogExporter
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter

        insecure = parsed.scheme == "http"
        return (
            OTLPSpanExporter(endpoint=endpoint, insecure=insecure),
            OTLPLogExporter(endpoint=endpoint, insecure=insecure),
        )
    if protocol == "http/protobuf":
        from opentelemetry.exporter.otlp.proto.http._log_exporter import (
            OTLPLogExporter as HTTPLogExporter,
        )
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import (
            OTLPSpanExporter as HTTPSpanExporter,
        )

        base = endpoint.rstrip("/")
        return HTTPSpanExporter(endpoint=f"{base}/v1/traces"), HTTPLogExporter(
            endpoint=f"{base}/v1/logs"
        )
    raise UsageError(f"unsupported OTLP protocol {protocol!r}; use grpc or http/protobuf")


class TelemetryStack:
    """The CLI's telemetry: providers, exporters, the ``Telemetry`` and its ``/metrics``.

    Args:
        service_name: The default ``service.name``.
        otlp_endpoint: Also export spans and events over OTLP to this URL.
        otlp_protocol: ``grpc`` or ``http/protobuf``.

    Raises:
        UsageError: The OTLP endpoint or protocol is unusable.
    """

    def __init__(
        self, *, service_name: str, otlp_endpoint: str | None, otlp_protocol: str = "grpc"
    ) -> None:
        try:
            self.settings = Settings.from_env()
        except ValueError as exc:
            raise UsageError(str(exc)) from None
        self.resource = service_resource(service_name)
        self.otlp_endpoint = otlp_endpoint
        self.otlp_protocol = otlp_protocol
        log_exporter: LogRecordExporter | None = None
        span_exporter: SpanExporter | None = None
        if otlp_endpoint:
            span_exporter, log_exporter = _otlp_exporters(otlp_endpoint, otlp_protocol)
        self.memory = InMemorySpanExporter()
        self.provider = TracerProvider(resource=self.resource)
        self.provider.add_span_processor(SimpleSpanProcessor(self.memory))
        if span_exporter is not None:
            self.provider.add_span_processor(BatchSpanProcessor(span_exporter))
        self.registry = CollectorRegistry()
        self.telemetry = Telemetry(
            tracer_provider=self.provider,
            registry=self.registry,
            event_exporter=log_exporter,
            sink_options={"resource": self.resource} if log_exporter is not None else None,
        )
        # What the helpers report (GenAI spans of model calls, guardrail verdicts, ...).
        self.hooks: tuple[RunHook, ...] = (
            *self.telemetry.hooks,
            HelperTelemetry(self.telemetry),
        )
        self.server: MetricsServer | None = None

    @property
    def service_name(self) -> str:
        """The ``service.name`` in force."""
        return str(self.resource.attributes.get("service.name", ""))

    def serve_metrics(self, port: int | None, addr: str | None) -> str | None:
        """Serve ``/metrics``; returns a notice when the default port was busy.

        An explicit port (``--metrics-port`` or ``STAGEFLOW_OTEL_METRICS_PORT``) that cannot be
        bound is a usage error; when the default port 9464 is busy, a free port is used instead.

        Raises:
            UsageError: The explicit address or port cannot be bound, or the environment
                holds an invalid value.
        """
        settings = self.settings
        explicit = port is not None or bool(os.environ.get(METRICS_PORT, "").strip())
        chosen = port if port is not None else settings.metrics_port
        address = addr or settings.metrics_addr
        if not 0 <= chosen <= 65535:
            raise UsageError(f"metrics port {chosen} is out of range (0-65535; 0 = any free port)")
        try:
            self.server = self.telemetry.serve_metrics(chosen, address)
        except OSError as exc:
            reason = exc.strerror or str(exc)
            if explicit:
                raise UsageError(
                    f"cannot serve /metrics on {address}:{chosen}: {reason} "
                    "(pass --metrics-port 0 to use any free port)"
                ) from None
            try:
                self.server = self.telemetry.serve_metrics(0, address)
            except OSError as retry_exc:
                raise UsageError(
                    f"cannot serve /metrics on {address}: {retry_exc.strerror or retry_exc}"
                ) from None
            return (
                f"port {chosen} on {address} is busy ({reason}); serving /metrics on port "
                f"{self.server.port} instead"
            )
        return None

    @property
    def event_sink(self) -> EventSink | None:
        """The OTLP event sink, when exporting."""
        return self.telemetry.event_sink

    def records(self) -> list[SpanRecord]:
        """The finished spans so far."""
        return [record_of(span) for span in self.memory.get_finished_spans()]

    def shutdown(self) -> None:
        """Flush and stop everything (the ``/metrics`` server, event export, span export)."""
        self.telemetry.shutdown(timeout=5.0)
        self.provider.shutdown()


class _CurrentStderr:
    """Writes to whatever ``sys.stderr`` is now (rich's live display swaps it)."""

    def write(self, text: str) -> int:
        return sys.stderr.write(text)

    def flush(self) -> None:
        sys.stderr.flush()


def configure_cli_logging(level: int) -> None:
    """Readable structlog lines on stderr at ``level`` (only the CLI configures logging)."""
    from stageflow_otel.observability import configure_logging

    configure_logging(json=False, level=level, stream=cast("TextIO", _CurrentStderr()))


class _Session:
    def __init__(
        self,
        graph: StageGraph,
        inputs: RunInput,
        options: SessionOptions,
        stack: TelemetryStack,
        console: Console,
        notice: str | None,
    ) -> None:
        self.graph = graph
        self.inputs = inputs
        self.options = options
        self.stack = stack
        self.console = console
        self.notice = notice
        self.board = StageBoard(graph.name, graph.stage_names, runs=options.runs)
        board_sink = BoardSink(self.board)
        otlp_sink = stack.event_sink
        # Where a remote stage ran shows in the trace tree, as events of its stage span.
        sinks: list[EventSink] = [board_sink, RemoteStageEvents()]
        if otlp_sink is not None:
            sinks.append(otlp_sink)
        self.sink: EventSink = FanOutEventSink(sinks)
        self.live = console.is_terminal if options.live is None else options.live
        self.interrupted: int | None = None
        self._phase: anyio.CancelScope | None = None
        self.failure: str | None = None
        self.run_count = 0

    # -- output helpers -------------------------------------------------------------------

    def _print(self, *objects: Any) -> None:
        self.console.print(*objects)
        self.console.file.flush()

    def _field(self, label: str, value: str, note: str = "") -> Text:
        text = Text.assemble((f"{label:<10}", "bold"), value)
        if note:
            text.append(f"  {note}", style="dim")
        return text

    # -- runs -----------------------------------------------------------------------------

    async def _run_once(self, index: int, *, live: bool, counted: bool = True) -> RunSummary:
        data, identity = self.inputs(index - 1)
        self.board.start_run(index)
        display: AbstractContextManager[Any] = (
            Live(
                get_renderable=self.board.render,
                console=self.console,
                transient=True,
                refresh_per_second=12,
            )
            if live
            else nullcontext()
        )
        started = time.perf_counter()
        error: str | None = None
        results: Any
        with display:
            try:
                if self.options.resume is not None and index == 1:
                    from stageflow_otel.runs import resume

                    assert self.options.store is not None
                    results = await resume(
                        self.options.resume,
                        self.graph,
                        store=self.options.store,
                        hooks=self.stack.hooks,
                        event_sink=self.sink,
                        entry_point=True,
                    )
                else:
                    results = await self.graph.run(
                        data,
                        identity=identity,
                        hooks=self.stack.hooks,
                        event_sink=self.sink,
                        entry_point=True,
                        store=self.options.store,
                    )
            except StageExecutionError as exc:
                results, error = exc.results, str(exc)
            except PipelineCancelled as exc:
                results, error = exc.results, str(exc)
        duration_ms = (
            results.duration_ms
            if isinstance(results, PipelineResults)
            else (time.perf_counter() - started) * 1000
        )
        if isinstance(results, PipelineResults):
            status = results.status
        else:
            status = "ok" if error is None else "fail"
        self.run_count += 1
        return RunSummary(
            index=index,
            runs=self.options.runs if counted else None,
            status=status,
            duration_ms=duration_ms,
            stage_counts=dict(Counter(out.status.value for out in results.values())),
            retries=self.board.retries,
            tool_calls=self.board.tool_calls,
            subpipelines=self.board.subpipelines,
            trace_id=self._trace_of(
                results.run_id if isinstance(results, PipelineResults) else identity.pipeline_run_id
            ),
            error=error,
        )

    def _trace_of(self, run_id: str) -> str | None:
        for span in reversed(self.stack.memory.get_finished_spans()):
            attributes = span.attributes or {}
            if span.parent is None and attributes.get("stageflow.run.id") == run_id:
                return format(span.context.trace_id, "032x") if span.context else None
        return None

    async def _runs(self) -> list[RunSummary]:
        summaries: list[RunSummary] = []
        with anyio.CancelScope() as scope:
            self._phase = scope
            for index in range(1, self.options.runs + 1):
                summary = await self._run_once(index, live=self.live)
                summaries.append(summary)
                self._print(summary_line(summary))
                if summary.error is not None:
                    self.failure = (
                        f"pipeline {self.graph.name!r} failed in run {index}: {summary.error}"
                    )
                    break
        self._phase = None
        return summaries

    # -- outputs --------------------------------------------------------------------------

    def _write_outputs(self, summaries: list[RunSummary]) -> None:
        records = self.stack.records()
        out = self.options.out_dir
        trace_path = out / "trace.jsonl"
        timeline_path = out / "timeline.html"
        traces = group_by_trace(records)
        try:
            count = write_trace_file(trace_path, records)
            shown = [r for trace in traces[-TIMELINE_MAX_TRACES:] for r in trace]
            if shown:
                write_timeline(
                    timeline_path, shown, title=f"{self.graph.name}: stageflow-otel timeline"
                )
        except OSError as exc:
            raise UsageError(f"cannot write to {str(out)!r}: {exc.strerror or exc}") from None
        last = next((s for s in reversed(summaries) if s.trace_id), None)
        if last is not None:
            title = Text.assemble(
                ("\ntrace of run ", "bold"),
                (f"{last.index}/{last.runs}" if last.runs else str(last.index), "bold"),
                (f"  {last.trace_id}", "dim"),
            )
            self._print(title)
            self._print(render_trace_tree(r for r in records if r.trace_id == last.trace_id))
        self._print("")
        plural = "" if len(traces) == 1 else "s"
        self._print(
            self._field("traces", str(trace_path), f"{count} spans, {len(traces)} trace{plural}")
        )
        if records:
            note = f"last {TIMELINE_MAX_TRACES} runs" if len(traces) > TIMELINE_MAX_TRACES else ""
            self._print(self._field("timeline", str(timeline_path), note))
        if self.options.store is not None:
            self._print(
                self._field(
                    "history", "stageflow-otel runs", f"recorded in {self.options.store.location}"
                )
            )
        if self.stack.otlp_endpoint:
            self._print(
                self._field(
                    "otlp",
                    self.stack.otlp_endpoint,
                    f"{self.stack.otlp_protocol}, service.name={self.stack.service_name}",
                )
            )

    # -- hold -----------------------------------------------------------------------------

    async def _repeat(self, interval: float) -> None:
        index = self.options.runs
        while True:
            await anyio.sleep(interval)
            index += 1
            self.stack.memory.clear()
            summary = await self._run_once(index, live=False, counted=False)
            self._print(summary_line(summary))

    async def _hold(self) -> None:
        url = self.stack.server.url if self.stack.server else "/metrics"
        every = (
            f"; running the pipeline every {self.options.interval:g} s"
            if self.options.interval
            else ""
        )
        self._print(Text(f"\nserving {url}{every}; press Ctrl+C to stop", style="bold"))
        with anyio.CancelScope() as scope:
            self._phase = scope
            if self.interrupted is not None:
                scope.cancel()
            if self.options.interval:
                await self._repeat(self.options.interval)
            else:
                await anyio.sleep_forever()
        self._phase = None

    # -- the session ----------------------------------------------------------------------

    async def _watch(self, signals: Any) -> None:
        async for signum in signals:
            self.interrupted = int(signum)
            if self._phase is not None:
                self._phase.cancel()

    async def _work(self) -> int:
        summaries = await self._runs()
        if self.interrupted is not None and not summaries:
            return EXIT_OK
        self._write_outputs(summaries)
        if self.failure is not None:
            sys.stderr.write(f"stageflow-otel: error: {' '.join(self.failure.split())}\n")
        if self.options.hold and self.interrupted is None:
            await self._hold()
        return EXIT_FAILED if self.failure is not None else EXIT_OK

    async def main(self) -> int:
        """Run the session; returns the exit code."""
        if sys.platform == "win32":  # pragma: no cover - no signal receivers there
            return await self._work()
        try:
            with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
                async with anyio.create_task_group() as group:
                    group.start_soon(self._watch, signals)
                    code = await self._work()
                    group.cancel_scope.cancel()
        except BaseExceptionGroup as group:
            # The task group wraps what the session raised (a usage error, the SystemExit of
            # a closed stdout); the caller handles it unwrapped.
            if len(group.exceptions) == 1:
                raise group.exceptions[0] from None
            raise
        if (
            self.interrupted is not None
            and not self.options.hold
            and self.failure is None
            and self.run_count < self.options.runs
        ):
            # Interrupted before the runs were done: like an unhandled SIGINT/SIGTERM.
            sys.stderr.write("stageflow-otel: interrupted\n")
            return 128 + self.interrupted
        return code


def run_session(
    graph: StageGraph, inputs: RunInput, options: SessionOptions, console: Console
) -> int:
    """Run ``graph`` as ``options`` say, print the results, write the files; the exit code.

    Raises:
        UsageError: A port, endpoint or output directory cannot be used.
    """
    if options.runs < 1:
        raise UsageError(f"--runs must be at least 1, got {options.runs}")
    if options.interval is not None and not (
        math.isfinite(options.interval) and options.interval > 0
    ):
        raise UsageError(f"--interval must be a positive number of seconds, got {options.interval}")
    try:
        options.out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UsageError(
            f"cannot create output directory {str(options.out_dir)!r}: {exc.strerror or exc}"
        ) from None
    stack = TelemetryStack(
        service_name=options.service_name,
        otlp_endpoint=options.otlp_endpoint,
        otlp_protocol=options.otlp_protocol,
    )
    try:
        notice = stack.serve_metrics(options.metrics_port, options.metrics_addr)
        header = Text.assemble(
            ("stageflow-otel ", "bold"),
            (options.command, "bold"),
            "  pipeline ",
            (graph.name, "bold cyan"),
            f"  {len(graph)} stages  {options.runs} run{'s' if options.runs != 1 else ''}",
        )
        console.print(header)
        if stack.server is not None:
            # Printed once: without --hold the server stops when the command ends.
            lifetime = "" if options.hold else "  (while the runs go; --hold keeps it up)"
            console.print(
                Text.assemble(("metrics   ", "bold"), stack.server.url, (lifetime, "dim")),
                style="",
            )
        if notice:
            console.print(Text(notice, style="yellow"))
        console.file.flush()
        store = options.store
        if store is not None:
            store.listener = stack.telemetry.store_listener(store.kind)
            console.print(
                Text.assemble(
                    ("store     ", "bold"),
                    store.location,
                    ("  (with checkpoints)" if store.checkpoints else "", "dim"),
                )
            )
        session = _Session(graph, inputs, options, stack, console, notice)
        return anyio.run(session.main)
    finally:
        if options.store is not None:
            options.store.close()
        stack.shutdown()


class RemoteStageEvents:
    """Adds the ``stage.remote.*`` events to the stage span (where the remote stage ran)."""

    __slots__ = ("_spans",)

    def __init__(self) -> None:
        self._spans = SpanEventSink()

    async def emit(self, *, type: str, data: Mapping[str, Any]) -> None:
        """Add a remote stage event to the current span."""
        self.try_emit(type=type, data=data)

    def try_emit(self, *, type: str, data: Mapping[str, Any]) -> None:
        """Add a remote stage event to the current span; ignore the others."""
        if type.startswith("stage.remote."):
            self._spans.try_emit(type=type, data=data)
