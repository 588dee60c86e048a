"""What a user gets by default: silent lines, bounded settings, event selection, exit drain."""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import subprocess
import sys
import textwrap
import warnings
from collections.abc import Iterator
from pathlib import Path

import anyio
import pytest
import structlog
from opentelemetry.sdk._logs.export import InMemoryLogRecordExporter
from prometheus_client import CollectorRegistry

from stageflow_otel import Pipeline, StageExecutionError
from stageflow_otel.core.extensions import default_extensions
from stageflow_otel.observability import Telemetry, configure_logging, instrument, uninstrument
from stageflow_otel.observability.config import ERROR_EVENTS, EventSelection, Settings
from stageflow_otel.observability.instrumentation import (
    EXTENSION_KEY,
    InstrumentationWarning,
    StageflowInstrumentor,
)
from stageflow_otel.observability.logging import CanonicalLog
from stageflow_otel.observability.metrics import MetricsServeError
from stageflow_otel.testing import in_memory_telemetry
from tests.support.servers import busy_port

from .support import ok_stage, raising_stage

TWO_STAGES = Pipeline("p").with_stage("a", ok_stage).with_stage("b", ok_stage, dependencies=["a"])
FAILING = Pipeline("p").with_stage("a", ok_stage).with_stage("b", raising_stage, dependencies=["a"])


async def _run(pipeline: Pipeline, telemetry: Telemetry) -> None:
    graph = pipeline.build(hooks=telemetry.hooks, event_sink=telemetry.event_sink)
    with contextlib.suppress(StageExecutionError):  # the failing pipeline's telemetry is read
        await graph.run()


@pytest.fixture
def unconfigured_structlog() -> Iterator[None]:
    structlog.reset_defaults()
    try:
        yield
    finally:
        structlog.reset_defaults()


@pytest.fixture
def no_stageflow_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.startswith("STAGEFLOW_OTEL_") or name in (
            "OTEL_SDK_DISABLED",
            "OTEL_PYTHON_DISABLED_INSTRUMENTATIONS",
        ):
            monkeypatch.delenv(name)


# -- canonical lines ----------------------------------------------------------------------


@pytest.mark.usefixtures("unconfigured_structlog")
def test_canonical_lines_are_silent_unless_logging_is_configured(
    capfd: pytest.CaptureFixture[str],
) -> None:
    recorded = in_memory_telemetry()  # canonical lines on, as by default

    anyio.run(_run, FAILING, recorded.telemetry)
    recorded.shutdown()

    assert capfd.readouterr() == ("", "")


@pytest.mark.usefixtures("unconfigured_structlog")
def test_without_structlog_the_lines_reach_the_stdlib_logger(
    caplog: pytest.LogCaptureFixture,
) -> None:
    recorded = in_memory_telemetry()
    with caplog.at_level(logging.INFO, logger="stageflow_otel"):
        anyio.run(_run, FAILING, recorded.telemetry)
    recorded.shutdown()

    lines = [r for r in caplog.records if r.name == "stageflow_otel"]
    by_event = {(r.stageflow_event, r.stageflow_fields.get("stage")): r for r in lines}  # type: ignore[attr-defined]
    assert set(by_event) == {("stage.wide", "a"), ("stage.wide", "b"), ("pipeline.wide", None)}
    failed = by_event[("stage.wide", "b")]
    assert failed.levelno == logging.WARNING
    assert failed.getMessage().startswith("stage.wide ")
    assert "error_type='ValueError'" in failed.getMessage()
    assert by_event[("stage.wide", "a")].levelno == logging.INFO


@pytest.mark.usefixtures("unconfigured_structlog")
def test_a_filtered_level_builds_no_line(monkeypatch: pytest.MonkeyPatch) -> None:
    written: list[str] = []
    monkeypatch.setattr(CanonicalLog, "write", lambda self, event, *a, **k: written.append(event))
    logging.getLogger("stageflow_otel").setLevel(logging.WARNING)
    try:
        recorded = in_memory_telemetry()
        anyio.run(_run, TWO_STAGES, recorded.telemetry)
        assert written == []  # info lines below the level: not even built
        anyio.run(_run, FAILING, recorded.telemetry)
        recorded.shutdown()
    finally:
        logging.getLogger("stageflow_otel").setLevel(logging.NOTSET)
    assert written == ["stage.wide", "pipeline.wide"]  # the failure's lines, at warning


def test_structlog_filtering_level_is_checked_per_run(monkeypatch: pytest.MonkeyPatch) -> None:
    stream = io.StringIO()
    configure_logging(json=True, level=logging.WARNING, stream=stream)
    try:
        recorded = in_memory_telemetry()
        anyio.run(_run, TWO_STAGES, recorded.telemetry)
        assert stream.getvalue() == ""
        anyio.run(_run, FAILING, recorded.telemetry)
        recorded.shutdown()
    finally:
        structlog.reset_defaults()
    events = [json.loads(line)["event"] for line in stream.getvalue().splitlines()]
    assert events == ["stage.wide", "pipeline.wide"]


def test_configure_logging_can_route_lines_to_stdlib_logging(
    caplog: pytest.LogCaptureFixture,
) -> None:
    configure_logging(json=True, stdlib=True)
    try:
        recorded = in_memory_telemetry()
        with caplog.at_level(logging.INFO, logger="stageflow_otel"):
            anyio.run(_run, TWO_STAGES, recorded.telemetry)
        recorded.shutdown()
    finally:
        structlog.reset_defaults()
    lines = [json.loads(r.getMessage()) for r in caplog.records if r.name == "stageflow_otel"]
    assert [(line["event"], line.get("stage")) for line in lines] == [
        ("stage.wide", "a"),
        ("stage.wide", "b"),
        ("pipeline.wide", None),
    ]
    assert all(len(line["trace_id"]) == 32 for line in lines)


# -- settings -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("variable", "value", "message"),
    [
        ("STAGEFLOW_OTEL_METRICS_PORT", "70000", "out of range; use an integer from 0 to 65535"),
        ("STAGEFLOW_OTEL_METRICS_PORT", "-1", "out of range"),
        ("STAGEFLOW_OTEL_METRICS_PORT", "http", "is not an integer"),
        ("STAGEFLOW_OTEL_MAX_STAGE_NAMES", "-5", "out of range; use an integer >= 1"),
        ("STAGEFLOW_OTEL_MAX_STAGE_NAMES", "0", "out of range"),
        ("STAGEFLOW_OTEL_MAX_STAGE_NAMES", "1.5", "is not an integer"),
        ("STAGEFLOW_OTEL_EXIT_TIMEOUT", "0", "is not a positive number of seconds"),
        ("STAGEFLOW_OTEL_EXIT_TIMEOUT", "nan", "is not a positive number of seconds"),
        ("STAGEFLOW_OTEL_EXIT_TIMEOUT", "inf", "is not a positive number of seconds"),
        ("STAGEFLOW_OTEL_EVENTS", "stage.failed,,x", "'' is not an event type"),
        ("STAGEFLOW_OTEL_EVENTS", "Stage Failed", "is not an event type"),
        ("STAGEFLOW_OTEL_SERVE_METRICS", "2", "is not a boolean"),
    ],
)
@pytest.mark.usefixtures("no_stageflow_env")
def test_every_variable_is_checked_and_named(
    monkeypatch: pytest.MonkeyPatch, variable: str, value: str, message: str
) -> None:
    monkeypatch.setenv(variable, value)

    with pytest.raises(ValueError, match="^" + variable) as raised:
        Settings.from_env()
    assert message in str(raised.value)
    assert repr(value) in str(raised.value)


@pytest.mark.usefixtures("no_stageflow_env")
def test_settings_in_range_are_read(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STAGEFLOW_OTEL_METRICS_PORT", "0")
    monkeypatch.setenv("STAGEFLOW_OTEL_MAX_STAGE_NAMES", "1")
    monkeypatch.setenv("STAGEFLOW_OTEL_EXIT_TIMEOUT", "0.25")
    monkeypatch.setenv("STAGEFLOW_OTEL_EVENTS", " Errors ")

    settings = Settings.from_env()

    assert (settings.metrics_port, settings.max_stage_names, settings.exit_timeout) == (0, 1, 0.25)
    assert settings.metrics_port_explicit
    assert settings.events == EventSelection(everything=False, types=ERROR_EVENTS)


@pytest.mark.parametrize(
    ("value", "selected", "not_selected"),
    [
        ("all", ["stage.started", "anything"], []),
        ("errors", ["stage.failed", "stage.retrying", "tool.denied"], ["stage.completed"]),
        ("none", [], ["stage.failed", "pipeline.started"]),
        ("stage.failed, tool.*", ["stage.failed", "tool.invoked"], ["stage.completed", "tool"]),
        (["pipeline.*"], ["pipeline.started", "pipeline.child_failed"], ["stage.failed"]),
    ],
)
def test_event_selection(
    value: str | list[str], selected: list[str], not_selected: list[str]
) -> None:
    selection = EventSelection.parse(value)

    assert all(t in selection for t in selected)
    assert not any(t in selection for t in not_selected)
    assert selection.nothing is (value == "none")


def test_event_selection_rejects_a_non_string() -> None:
    with pytest.raises(TypeError, match="events must be 'all', 'errors', 'none' or event types"):
        EventSelection.parse(5)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="5 is not an event type"):
        EventSelection.parse([5])  # type: ignore[list-item]


# -- event export -------------------------------------------------------------------------


@pytest.mark.usefixtures("no_stageflow_env")
def test_events_errors_exports_only_failures() -> None:
    exporter = InMemoryLogRecordExporter()  # type: ignore[no-untyped-call]
    recorded = in_memory_telemetry(event_exporter=exporter, canonical_logs=False)
    telemetry = Telemetry(
        tracer_provider=recorded.telemetry.tracer_provider,
        event_exporter=exporter,
        events="errors",
        canonical_logs=False,
    )

    anyio.run(_run, TWO_STAGES, telemetry)
    anyio.run(_run, FAILING, telemetry)
    assert telemetry.force_flush(timeout=5.0)
    telemetry.shutdown()
    recorded.shutdown()

    names = [d.log_record.event_name for d in exporter.get_finished_logs()]
    assert names == ["stage.failed", "pipeline.failed"]


@pytest.mark.usefixtures("no_stageflow_env")
def test_events_none_makes_no_event_sink(monkeypatch: pytest.MonkeyPatch) -> None:
    exporter = InMemoryLogRecordExporter()  # type: ignore[no-untyped-call]
    assert Telemetry(event_exporter=exporter, events="none").event_sink is None
    monkeypatch.setenv("STAGEFLOW_OTEL_EVENTS", "none")
    assert Telemetry(event_exporter=exporter).event_sink is None


# -- registries and instrumentation ---------------------------------------------------------


def test_a_registry_holds_one_telemetrys_metrics_and_nothing_half_registered() -> None:
    registry = CollectorRegistry()
    first = Telemetry(registry=registry)
    before = sorted(m.name for m in registry.collect())

    with pytest.raises(ValueError, match="the registry already holds stageflow metrics"):
        Telemetry(registry=registry)

    assert sorted(m.name for m in registry.collect()) == before
    assert first.metrics is not None
    first.metrics.unregister()
    assert list(registry.collect()) == []
    Telemetry(registry=registry)  # free again


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({"registry": "global"}, TypeError, "registry must be a prometheus_client"),
        ({"max_stage_names": 0}, ValueError, "max_stage_names must be an integer >= 1, got 0"),
        ({"max_stage_names": True}, ValueError, "max_stage_names must be an integer"),
        ({"redact": "***"}, TypeError, "redact must be a callable"),
        ({"sink_options": [1]}, TypeError, "sink_options must be a dict"),
        ({"events": "everything"}, ValueError, "'everything' is not an event type"),
    ],
)
def test_telemetry_arguments_are_checked(
    kwargs: dict[str, object], error: type[Exception], message: str
) -> None:
    with pytest.raises(error, match=message):
        Telemetry(**kwargs)  # type: ignore[arg-type]


@pytest.fixture
def clean_instrumentation(no_stageflow_env: None) -> Iterator[None]:
    uninstrument()
    try:
        yield
    finally:
        uninstrument()


@pytest.mark.usefixtures("clean_instrumentation")
def test_a_failed_instrument_leaves_nothing_and_can_be_retried(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    registry = CollectorRegistry()
    monkeypatch.setenv("STAGEFLOW_OTEL_SERVE_METRICS", "true")
    monkeypatch.setenv("STAGEFLOW_OTEL_METRICS_PORT", "0")
    monkeypatch.setenv("STAGEFLOW_OTEL_METRICS_ADDR", "192.0.2.1")  # not an address of ours

    with pytest.warns(
        InstrumentationWarning, match=r"cannot serve /metrics on 192\.0\.2\.1:0"
    ) as warned:
        assert instrument(registry=registry) is None
    assert [w.filename for w in warned] == [__file__]  # shown at the caller's line

    assert default_extensions.get(EXTENSION_KEY) is None
    assert list(registry.collect()) == []  # the metrics registered before the failure are gone
    assert not StageflowInstrumentor().is_instrumented_by_opentelemetry

    monkeypatch.delenv("STAGEFLOW_OTEL_METRICS_ADDR")
    telemetry = instrument(registry=registry)
    assert telemetry is not None
    assert default_extensions.get(EXTENSION_KEY) is not None
    [server] = telemetry._servers
    assert server.host == "127.0.0.1"


def test_an_explicit_busy_port_names_address_and_port() -> None:
    telemetry = Telemetry()
    server = telemetry.serve_metrics(port=0)
    try:
        with pytest.raises(MetricsServeError) as raised:
            telemetry.serve_metrics(port=server.port, fallback=True)
    finally:
        telemetry.shutdown()
    assert str(raised.value).startswith(f"cannot serve /metrics on 127.0.0.1:{server.port}: ")
    assert raised.value.port == server.port


@pytest.mark.parametrize("port", [-1, 65536, "9464", True])
def test_serve_metrics_checks_the_port(port: object) -> None:
    with pytest.raises(ValueError, match="port must be an integer from 0 to 65535"):
        Telemetry().serve_metrics(port=port)  # type: ignore[arg-type]


# -- exit -------------------------------------------------------------------------------------

EXIT_APP = textwrap.dedent(
    """
    import sys, time
    import anyio
    from opentelemetry.sdk._logs.export import LogRecordExporter, LogRecordExportResult
    from stageflow_otel import Pipeline
    from stageflow_otel.observability import Telemetry

    class FileExporter(LogRecordExporter):
        def __init__(self, path, delay):
            self.path, self.delay = path, delay

        def export(self, batch):
            time.sleep(self.delay)
            with open(self.path, "a") as fh:
                for data in batch:
                    fh.write(data.log_record.event_name + "\\n")
            return LogRecordExportResult.SUCCESS

        def shutdown(self):
            pass

        def force_flush(self, timeout_millis=30_000):
            return True

    async def work(ctx):
        return {"ok": True}

    telemetry = Telemetry(
        event_exporter=FileExporter(sys.argv[1], float(sys.argv[2])), canonical_logs=False
    )
    pipeline = Pipeline("exit")
    for i in range(5):
        pipeline = pipeline.with_stage(f"s{i}", work)
    anyio.run(pipeline.build(hooks=telemetry.hooks, event_sink=telemetry.event_sink).run)
    """
)


def _run_exit_app(tmp_path: Path, delay: float, **env: str) -> tuple[int, list[str], str]:
    script = tmp_path / "exit_app.py"
    script.write_text(EXIT_APP)
    out = tmp_path / "events.txt"
    base = {k: v for k, v in os.environ.items() if not k.startswith("STAGEFLOW_OTEL_")}
    done = subprocess.run(
        [sys.executable, str(script), str(out), str(delay)],
        env={**base, **env},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    names = out.read_text().splitlines() if out.exists() else []
    return done.returncode, names, done.stdout + done.stderr


def test_queued_events_are_exported_at_exit(tmp_path: Path) -> None:
    code, names, output = _run_exit_app(tmp_path, 0.2)

    assert (code, output) == (0, "")
    assert len(names) == 12
    assert names[-1] == "pipeline.completed"


def test_a_dead_exporter_delays_exit_by_at_most_the_exit_timeout(tmp_path: Path) -> None:
    # The exporter sleeps far longer than the subprocess timeout: exit only happens in time
    # because the drain gives up after STAGEFLOW_OTEL_EXIT_TIMEOUT.
    code, names, output = _run_exit_app(tmp_path, 600, STAGEFLOW_OTEL_EXIT_TIMEOUT="0.5")

    assert (code, names, output) == (0, [], "")


@pytest.mark.usefixtures("clean_instrumentation")
def test_a_busy_default_port_serves_elsewhere_with_one_warning_at_the_caller() -> None:
    with busy_port(9464), pytest.warns(InstrumentationWarning) as warned:
        telemetry = instrument(registry=CollectorRegistry(), serve_metrics=True)

    assert telemetry is not None
    assert default_extensions.get(EXTENSION_KEY) is not None
    [server] = telemetry._servers
    assert server.fallback_from == 9464
    expected = (
        f"port 9464 is busy: stageflow metrics are served on {server.url} instead "
        "(set STAGEFLOW_OTEL_METRICS_PORT to choose a port)"
    )
    assert [str(w.message) for w in warned] == [expected]
    assert [w.filename for w in warned] == [__file__]


@pytest.mark.usefixtures("clean_instrumentation")
def test_warnings_turned_into_errors_are_logged_and_break_nothing(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="stageflow_otel.instrumentation")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # as under ``python -W error``
        with busy_port(9464):
            telemetry = instrument(registry=CollectorRegistry(), serve_metrics=True)
        assert telemetry is not None  # installed, the warning logged instead
        assert default_extensions.get(EXTENSION_KEY) is not None
        uninstrument()
        monkeypatch.setenv("STAGEFLOW_OTEL_MAX_STAGE_NAMES", "0")
        assert instrument(registry=CollectorRegistry()) is None  # no exception either

    logged = [r.getMessage() for r in caplog.records]
    assert len(logged) == 2
    assert logged[0].startswith("port 9464 is busy: stageflow metrics are served on ")
    assert logged[1].startswith("stageflow instrumentation not installed: ")
    assert "STAGEFLOW_OTEL_MAX_STAGE_NAMES" in logged[1]
