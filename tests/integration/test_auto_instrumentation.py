"""``opentelemetry-instrument python app.py``, as a new user runs it: quiet, lossless, safe.

Each test runs a small application in a subprocess under the real ``opentelemetry-instrument``
(``opentelemetry-distro``), with the real console or OTLP exporters, and the httpx
instrumentation installed next to ours. The application writes what it saw of the
instrumentation into a report file (never to stdout, which the tests check is left alone).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import textwrap
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.support.servers import CollectorServer, JaegerServer, busy_port, wait_until

INSTRUMENT = Path(sys.executable).with_name("opentelemetry-instrument")

APP = textwrap.dedent(
    """
    import http.server
    import json
    import os
    import threading
    import urllib.request

    import anyio
    import httpx

    from stageflow_otel import Pipeline, RetryInterceptor, StageExecutionError
    from stageflow_otel.core import TransientError
    from stageflow_otel.core.extensions import default_extensions
    from stageflow_otel.observability.instrumentation import EXTENSION_KEY, StageflowInstrumentor


    class Quiet(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(200)
            self.send_header("Content-Length", "2")
            self.end_headers()
            self.wfile.write(b"ok")

        def log_message(self, *args):
            pass


    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Quiet)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    URL = f"http://127.0.0.1:{server.server_address[1]}/price"


    async def fetch(ctx):
        async with httpx.AsyncClient() as client:
            response = await client.get(URL)
        return {"status": response.status_code}


    async def work(ctx):
        return {"ok": True}


    async def flaky(ctx):
        raise TransientError("the pricing service is down")


    failing = os.environ.get("APP_FAIL") == "1"
    pipeline = Pipeline("five").with_stage("fetch", work if failing else fetch)
    previous = "fetch"
    for name in ("s1", "s2", "s3", "s4"):
        if failing and name == "s3":
            retry = RetryInterceptor(max_attempts=2, base_delay=0.001)
            pipeline = pipeline.with_stage(
                name, flaky, dependencies=[previous], interceptors=[retry]
            )
        else:
            pipeline = pipeline.with_stage(name, work, dependencies=[previous])
        previous = name

    outcome = "ok"
    try:
        anyio.run(pipeline.build().run)
    except StageExecutionError as exc:
        outcome = f"failed at {exc.stage}"

    telemetry = StageflowInstrumentor().telemetry
    report = {
        "outcome": outcome,
        "installed": default_extensions.get(EXTENSION_KEY) is not None,
        "hooks": len(default_extensions.hooks),
        "instrumented": StageflowInstrumentor().is_instrumented_by_opentelemetry,
        "event_sink": telemetry is not None and telemetry.event_sink is not None,
        "metrics_urls": [s.url for s in telemetry._servers] if telemetry else [],
        "fallback_from": [s.fallback_from for s in telemetry._servers] if telemetry else [],
    }
    if report["metrics_urls"]:
        text = urllib.request.urlopen(report["metrics_urls"][0], timeout=5).read().decode()
        report["metrics_has_runs"] = 'stageflow_pipeline_runs_total{pipeline="five"' in text
    with open(os.environ["APP_REPORT"], "w") as fh:
        json.dump(report, fh)
    """
)

FIVE_STAGE_EVENTS = 12  # pipeline.started, 5 x (stage.started, stage.completed), completed


@dataclass
class Run:
    returncode: int
    stdout: str
    stderr: str
    report: dict[str, Any]

    def records(self) -> list[dict[str, Any]]:
        """The JSON objects the console exporters printed, in order."""
        decoder = json.JSONDecoder()
        found: list[dict[str, Any]] = []
        text = self.stdout
        i = 0
        while True:
            start = text.find("{", i)
            if start < 0:
                return found
            obj, i = decoder.raw_decode(text, start)
            found.append(obj)

    def event_names(self) -> list[str]:
        return [r["event_name"] for r in self.records() if r.get("event_name")]

    def span_names(self) -> list[str]:
        return [r["name"] for r in self.records() if "name" in r and "context" in r]


def run_app(tmp_path: Path, env: Mapping[str, str]) -> Run:
    """Run the application under ``opentelemetry-instrument`` with ``env`` on a clean base."""
    app = tmp_path / "app.py"
    app.write_text(APP)
    report = tmp_path / "report.json"
    base = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("OTEL_", "STAGEFLOW_OTEL_")) and k != "PYTHONPATH"
    }
    full_env = {
        **base,
        "APP_REPORT": str(report),
        "OTEL_TRACES_EXPORTER": "none",
        "OTEL_METRICS_EXPORTER": "none",
        "OTEL_LOGS_EXPORTER": "none",
        "OTEL_SERVICE_NAME": "auto-app",
        "OTEL_PYTHON_DISABLED_INSTRUMENTATIONS": "urllib,urllib3,requests,redis",
        **env,
    }
    done = subprocess.run(
        [str(INSTRUMENT), sys.executable, str(app)],
        env=full_env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    data = json.loads(report.read_text()) if report.exists() else {}
    return Run(done.returncode, done.stdout, done.stderr, data)


def warnings_in(stderr: str) -> list[str]:
    return re.findall(r"InstrumentationWarning: (.*)", stderr)


@pytest.fixture(autouse=True)
def _needs_the_instrument_command() -> None:
    if not INSTRUMENT.exists():
        pytest.fail(f"{INSTRUMENT} is missing: install the dev extras (opentelemetry-distro)")


def test_console_logs_export_every_event_before_exit(tmp_path: Path) -> None:
    run = run_app(tmp_path, {"OTEL_LOGS_EXPORTER": "console"})

    assert (run.returncode, run.stderr) == (0, "")
    names = run.event_names()
    assert len(names) == FIVE_STAGE_EVENTS
    assert names[0] == "pipeline.started"
    assert names[-1] == "pipeline.completed"
    assert names.count("stage.completed") == 5
    assert run.report["installed"]
    assert run.report["event_sink"]


def test_a_successful_run_writes_nothing_to_stdout_or_stderr(tmp_path: Path) -> None:
    run = run_app(tmp_path, {})

    assert (run.returncode, run.stdout, run.stderr) == (0, "", "")
    assert run.report["outcome"] == "ok"
    assert run.report["installed"]


def test_otel_logs_exporter_none_installs_no_event_sink(tmp_path: Path) -> None:
    run = run_app(tmp_path, {"OTEL_LOGS_EXPORTER": "none", "OTEL_TRACES_EXPORTER": "console"})

    assert run.returncode == 0
    assert run.report["installed"]
    assert not run.report["event_sink"]
    assert "stage.run s4" in run.span_names()  # spans still recorded


@pytest.mark.parametrize(
    ("setting", "expected"),
    [
        (
            "errors",
            ["stage.retrying", "stage.failed", "pipeline.failed"],
        ),
        ("none", []),
        ("stage.failed,pipeline.*", ["stage.failed", "pipeline.started", "pipeline.failed"]),
    ],
)
def test_events_setting_selects_what_is_exported(
    tmp_path: Path, setting: str, expected: list[str]
) -> None:
    run = run_app(
        tmp_path,
        {"OTEL_LOGS_EXPORTER": "console", "STAGEFLOW_OTEL_EVENTS": setting, "APP_FAIL": "1"},
    )

    assert (run.returncode, run.stderr) == (0, "")
    assert run.report["outcome"] == "failed at s3"
    assert sorted(run.event_names()) == sorted(expected)
    assert run.report["event_sink"] is (setting != "none")


def test_a_busy_default_metrics_port_falls_back_to_a_free_one_with_one_warning(
    tmp_path: Path,
) -> None:
    with busy_port(9464):
        run = run_app(tmp_path, {"STAGEFLOW_OTEL_SERVE_METRICS": "true"})

    assert (run.returncode, run.stdout) == (0, "")
    assert run.report["installed"]
    [url] = run.report["metrics_urls"]
    assert run.report["fallback_from"] == [9464]
    assert not url.endswith(":9464/metrics")
    assert run.report["metrics_has_runs"]
    # Whoever scrapes 9464 reaches the other process: the warning says where /metrics went.
    [warning] = warnings_in(run.stderr)
    assert warning.startswith(f"port 9464 is busy: stageflow metrics are served on {url} ")


def _port_env(port: int) -> dict[str, str]:
    return {"STAGEFLOW_OTEL_SERVE_METRICS": "true", "STAGEFLOW_OTEL_METRICS_PORT": str(port)}


@pytest.mark.parametrize(
    ("env", "named"),
    [
        ({"STAGEFLOW_OTEL_METRICS_PORT": "70000"}, "STAGEFLOW_OTEL_METRICS_PORT='70000'"),
        ({"STAGEFLOW_OTEL_METRICS_PORT": "-1"}, "STAGEFLOW_OTEL_METRICS_PORT='-1'"),
        ({"STAGEFLOW_OTEL_MAX_STAGE_NAMES": "-5"}, "STAGEFLOW_OTEL_MAX_STAGE_NAMES='-5'"),
        ({"STAGEFLOW_OTEL_CANONICAL_LOGS": "sometimes"}, "STAGEFLOW_OTEL_CANONICAL_LOGS"),
        ({"STAGEFLOW_OTEL_EVENTS": "stage.Bad-Name"}, "STAGEFLOW_OTEL_EVENTS"),
        ({"STAGEFLOW_OTEL_EXIT_TIMEOUT": "0"}, "STAGEFLOW_OTEL_EXIT_TIMEOUT"),
        ({"STAGEFLOW_OTEL_SERVE_METRICS": "maybe"}, "STAGEFLOW_OTEL_SERVE_METRICS"),
        ("busy explicit port", "STAGEFLOW_OTEL_METRICS_PORT"),
    ],
)
def test_a_failing_instrumentation_warns_once_installs_nothing_and_spares_the_others(
    tmp_path: Path, env: dict[str, str] | str, named: str
) -> None:
    with busy_port() as port:
        settings = _port_env(port) if env == "busy explicit port" else env
        assert isinstance(settings, dict)
        run = run_app(tmp_path, {**settings, "OTEL_TRACES_EXPORTER": "console"})

    assert run.returncode == 0
    [warning] = warnings_in(run.stderr)
    assert warning.startswith("stageflow instrumentation not installed: ")
    assert named in warning
    assert "Failed to auto initialize" not in run.stderr
    # Nothing of ours stays installed; the application ran uninstrumented.
    assert run.report["outcome"] == "ok"
    assert not run.report["installed"]
    assert run.report["hooks"] == 0
    assert not run.report["instrumented"]
    spans = run.span_names()
    assert not [name for name in spans if name.startswith(("pipeline.run", "stage.run"))]
    # The httpx instrumentation, loaded after ours, still traced the stage's request.
    assert "GET" in spans


def test_otlp_to_a_real_collector_is_quiet_and_complete(
    tmp_path: Path, collector: CollectorServer, jaeger: JaegerServer
) -> None:
    endpoint = f"http://{collector.otlp_grpc_endpoint}"
    run = run_app(
        tmp_path,
        {
            "OTEL_TRACES_EXPORTER": "otlp",
            "OTEL_LOGS_EXPORTER": "otlp",
            "OTEL_EXPORTER_OTLP_ENDPOINT": endpoint,
            "OTEL_EXPORTER_OTLP_INSECURE": "true",
        },
    )

    assert (run.returncode, run.stdout, run.stderr) == (0, "", "")

    def all_events() -> str | None:
        log = collector.log_text()
        return log if log.count("EventName: stage.completed") >= 5 else None

    log = wait_until(all_events, 30.0, 0.2, what="the five stage.completed records")
    assert log is not None
    for name in ("pipeline.started", "pipeline.completed"):
        assert log.count(f"EventName: {name}") == 1
    assert log.count("EventName: stage.started") == 5

    [trace] = jaeger.wait_for_traces(
        "auto-app", lambda traces: any(len(t["spans"]) >= 7 for t in traces)
    )
    spans = {span["spanID"]: span for span in trace["spans"]}
    by_name = {span["operationName"]: span for span in spans.values()}
    assert {"pipeline.run five", "stage.run fetch", "stage.run s4"} <= set(by_name)
    # The httpx call made inside the stage is a child of the stage span, in the same trace.
    [request] = [s for s in spans.values() if s["operationName"].startswith("GET")]
    [parent] = [ref["spanID"] for ref in request["references"] if ref["refType"] == "CHILD_OF"]
    assert spans[parent]["operationName"] == "stage.run fetch"
