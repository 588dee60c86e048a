"""``stageflow-otel demo``: the example pipeline with telemetry, end to end in a subprocess."""

from __future__ import annotations

import json
import re
import signal
import socket
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from stageflow_otel.demo import (
    PAYMENT_PIPELINE_NAME,
    PIPELINE_NAME,
    build_order_pipeline,
    example_stage_names,
)
from tests.cli.support import REPO_ROOT, cli_argv, cli_env, run_cli, stderr_lines
from tests.support.servers import free_port, http_get, wait_until


@dataclass(frozen=True)
class DemoRun:
    result: subprocess.CompletedProcess[str]
    out: Path

    @property
    def spans(self) -> list[dict[str, Any]]:
        lines = (self.out / "trace.jsonl").read_text(encoding="utf-8").splitlines()
        return [json.loads(line) for line in lines]


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> DemoRun:
    out = tmp_path_factory.mktemp("demo")
    result = run_cli("demo", "--runs", "1", "--metrics-port", "0", "--out", str(out))
    return DemoRun(result, out)


def test_demo_exits_0_and_prints_every_stage_in_the_tree(demo: DemoRun) -> None:
    assert demo.result.returncode == 0, demo.result.stderr
    stdout = demo.result.stdout
    names = example_stage_names()
    assert len(names) == 14
    missing = [name for name in names if f"stage.run {name} " not in stdout]
    assert missing == []
    for span in (
        f"pipeline.run {PIPELINE_NAME}",
        f"subpipeline.run {PAYMENT_PIPELINE_NAME}",
        f"pipeline.run {PAYMENT_PIPELINE_NAME}",
        "execute_tool reserve_inventory",
        "interceptor retry",
        "interceptor timeout",
        "stageflow.stage.retry",
    ):
        assert span in stdout
    assert "skipped: domestic order: no customs declaration" in stdout
    assert re.search(r"run 1/1\s+ok", stdout)
    assert demo.result.stderr == ""


def test_demo_prints_the_metrics_url_and_the_files_it_wrote(demo: DemoRun) -> None:
    stdout = demo.result.stdout
    assert re.search(r"metrics\s+http://127\.0\.0\.1:\d+/metrics", stdout)
    assert f"traces    {demo.out / 'trace.jsonl'}" in stdout
    assert f"timeline  {demo.out / 'timeline.html'}" in stdout
    assert (demo.out / "timeline.html").stat().st_size > 10_000


def test_demo_trace_file_is_one_trace_with_the_shape_of_the_pipeline(demo: DemoRun) -> None:
    spans = demo.spans
    assert {span["trace_id"] for span in spans} == {spans[0]["trace_id"]}
    by_id = {span["span_id"]: span for span in spans}
    roots = [span for span in spans if span["parent_id"] is None]
    assert [(r["name"], r["kind"]) for r in roots] == [(f"pipeline.run {PIPELINE_NAME}", "SERVER")]
    assert all(span["parent_id"] in by_id for span in spans if span["parent_id"] is not None)
    for span in spans:
        assert span["start_ns"] <= span["end_ns"]
        assert set(span) >= {"name", "attributes", "events", "status", "links"}
    stages = {
        span["attributes"]["stageflow.stage.name"]: span
        for span in spans
        if span["name"].startswith("stage.run ")
    }
    assert sorted(stages) == sorted(example_stage_names())
    assert stages["customs_declaration"]["attributes"]["stageflow.stage.status"] == "skip"
    assert stages["quote_shipping"]["attributes"]["stageflow.stage.attempt"] == 2
    assert [e["name"] for e in stages["quote_shipping"]["events"]] == ["stageflow.stage.retry"]
    assert all(span["status"] == "unset" for span in spans)  # success: Unset, never Ok
    # Stage spans hang under the run span of their own pipeline.
    top = roots[0]["span_id"]
    for spec in build_order_pipeline().specs:
        assert stages[spec.name]["parent_id"] == top
        links = stages[spec.name]["links"]
        assert len(links) == len(spec.dependencies)
        assert {by_id[link["span_id"]]["name"] for link in links} == {
            f"stage.run {dep}" for dep in spec.dependencies
        }


def test_timeline_command_renders_the_demo_trace_file(demo: DemoRun, tmp_path: Path) -> None:
    output = tmp_path / "timeline.html"
    result = run_cli("timeline", str(demo.out / "trace.jsonl"), "-o", str(output))
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(str(output))
    html = output.read_text(encoding="utf-8")
    assert html.count('class="bar ') == len(demo.spans)
    assert "<script" not in html
    assert not re.search(r"(src|href)=\"(https?:)?//", html)


def test_timeline_defaults_to_the_trace_file_name_with_html(demo: DemoRun, tmp_path: Path) -> None:
    trace = tmp_path / "run.jsonl"
    trace.write_bytes((demo.out / "trace.jsonl").read_bytes())
    result = run_cli("timeline", str(trace))
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "run.html").is_file()


# -- /metrics -------------------------------------------------------------------------------


def _metrics_text(port: int) -> str:
    return http_get(f"http://127.0.0.1:{port}/metrics", timeout=2.0).decode()


@pytest.fixture
def held_demo(tmp_path: Path) -> Iterator[tuple[subprocess.Popen[str], int]]:
    port = free_port()
    process = subprocess.Popen(
        cli_argv("demo", "--hold", "--metrics-port", str(port), "--out", str(tmp_path)),
        cwd=REPO_ROOT,
        env=cli_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        yield process, port
    finally:
        if process.poll() is None:
            process.kill()
        process.communicate(timeout=30)


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_hold_serves_metrics_until_a_signal_then_exits_0(
    held_demo: tuple[subprocess.Popen[str], int], sig: signal.Signals
) -> None:
    process, port = held_demo

    def stage_metrics() -> str | None:
        body = _metrics_text(port)
        # A sample, not only the HELP and TYPE lines every registered metric has.
        return body if re.search(r"^stageflow_stage_runs_total\{", body, re.MULTILINE) else None

    text = wait_until(stage_metrics, timeout=60, what="a stageflow_stage_runs_total sample")
    assert text is not None
    assert 'stageflow_stage_runs_total{error_type="",pipeline="order_fulfilment"' in text
    assert process.poll() is None
    process.send_signal(sig)
    out, err = process.communicate(timeout=30)
    assert process.returncode == 0, err
    assert err == ""
    assert "stageflow-otel demo" in out


def test_hold_keeps_serving_after_the_runs(
    held_demo: tuple[subprocess.Popen[str], int],
) -> None:
    process, port = held_demo

    def all_runs_counted() -> bool:
        text = _metrics_text(port)
        match = re.search(
            r'stageflow_pipeline_runs_total\{pipeline="order_fulfilment",status="ok"\} (\S+)',
            text,
        )
        return match is not None and float(match.group(1)) == 3.0

    wait_until(all_runs_counted, timeout=60, what="three counted runs")
    assert process.poll() is None
    assert "stageflow_tool_calls_total" in _metrics_text(port)
    process.send_signal(signal.SIGINT)
    out, _ = process.communicate(timeout=30)
    assert process.returncode == 0
    assert "press Ctrl+C to stop" in out


def test_an_explicit_busy_port_is_a_usage_error(tmp_path: Path) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        result = run_cli("demo", "--runs", "1", "--metrics-port", str(port), "--out", str(tmp_path))
    assert result.returncode == 2
    assert stderr_lines(result) == [
        (
            f"stageflow-otel: error: cannot serve /metrics on 127.0.0.1:{port}: Address already in "
            "use (pass --metrics-port 0 to use any free port)"
        )
    ]


def test_a_busy_port_from_the_environment_is_a_usage_error(tmp_path: Path) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        result = run_cli(
            "demo",
            "--runs",
            "1",
            "--out",
            str(tmp_path),
            env={"STAGEFLOW_OTEL_METRICS_PORT": str(port)},
        )
    assert result.returncode == 2
    assert len(stderr_lines(result)) == 1
    assert f"127.0.0.1:{port}" in result.stderr


def test_a_busy_default_port_falls_back_to_a_free_one(tmp_path: Path) -> None:
    with socket.socket() as busy:
        try:
            busy.bind(("127.0.0.1", 9464))
            busy.listen()
        except OSError:
            pass  # something else holds 9464 already: the same situation
        result = run_cli("demo", "--runs", "1", "--out", str(tmp_path))
    assert result.returncode == 0, result.stderr
    assert "port 9464 on 127.0.0.1 is busy" in result.stdout
    match = re.search(r"serving /metrics on port (\d+) instead", result.stdout)
    assert match is not None
    assert match.group(1) != "9464"


def test_a_signal_without_hold_stops_the_runs_and_keeps_the_finished_ones(tmp_path: Path) -> None:
    process = subprocess.Popen(
        cli_argv("demo", "--runs", "500", "--metrics-port", "0", "--out", str(tmp_path)),
        cwd=REPO_ROOT,
        env=cli_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stdout is not None
        header = [process.stdout.readline(), process.stdout.readline()]
        match = re.search(r"http://127\.0\.0\.1:(\d+)/metrics", header[1])
        assert match is not None, header
        port = int(match.group(1))

        def two_runs_done() -> bool:
            found = re.search(
                r'stageflow_pipeline_runs_total\{pipeline="order_fulfilment",status="ok"\} (\S+)',
                _metrics_text(port),
            )
            return found is not None and float(found.group(1)) >= 2

        wait_until(two_runs_done, timeout=60, what="two finished runs")
        process.send_signal(signal.SIGTERM)
        out, err = process.communicate(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate(timeout=30)
    assert process.returncode == 128 + signal.SIGTERM
    assert err.splitlines() == ["stageflow-otel: interrupted"]
    assert "trace of run" in out
    assert (tmp_path / "trace.jsonl").stat().st_size > 0
