"""A real Prometheus scrapes ``/metrics``, and promtool accepts what we expose."""

from __future__ import annotations

import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import pytest

from stageflow_otel import Pipeline, StageContext, StageExecutionError
from stageflow_otel.observability import MetricsServer
from stageflow_otel.testing import InMemoryTelemetry, in_memory_telemetry
from tests.support.servers import (
    PrometheusServer,
    http_get,
    require_binary,
    start_prometheus,
    wait_until,
)

pytestmark = pytest.mark.components

SCRAPE_TIMEOUT = 30.0
"""Seconds to wait for a scrape; the first sample takes about 6 s."""


async def ok(ctx: StageContext) -> dict[str, Any]:
    return {"value": 1}


async def fail(ctx: StageContext) -> None:
    raise ValueError("bad input")


def run_shop(telemetry: InMemoryTelemetry) -> None:
    """One run of ``shop``: fetch and price succeed, charge fails."""
    graph = (
        Pipeline("shop")
        .with_stage("fetch", ok)
        .with_stage("price", ok, dependencies=["fetch"])
        .with_stage("charge", fail, dependencies=["fetch"])
        .build(hooks=telemetry.hooks, failure_mode="continue")
    )

    async def main() -> None:
        with anyio.fail_after(10), pytest.raises(StageExecutionError):
            await graph.run()

    anyio.run(main)


@pytest.fixture
def served() -> Iterator[tuple[InMemoryTelemetry, MetricsServer]]:
    telemetry = in_memory_telemetry()
    try:
        yield telemetry, telemetry.telemetry.serve_metrics(port=0)
    finally:
        telemetry.shutdown()


def stage_runs(prometheus: PrometheusServer) -> dict[tuple[str, str, str], float]:
    """``stageflow_stage_runs_total`` of ``shop`` as Prometheus has it now."""
    found: dict[tuple[str, str, str], float] = {}
    for item in prometheus.query('stageflow_stage_runs_total{pipeline="shop"}'):
        labels = item["metric"]
        # Prometheus drops empty labels: no error_type on successful stages.
        key = (labels["stage"], labels["status"], labels.get("error_type", ""))
        found[key] = float(item["value"][1])
    return found


def expected_runs(runs: float) -> dict[tuple[str, str, str], float]:
    return {
        ("fetch", "ok", ""): runs,
        ("price", "ok", ""): runs,
        ("charge", "fail", "ValueError"): runs,
    }


def test_prometheus_scrapes_stage_counts(
    tmp_path: Path, served: tuple[InMemoryTelemetry, MetricsServer]
) -> None:
    telemetry, server = served
    assert server.host == "127.0.0.1"
    run_shop(telemetry)
    started = time.time()

    with start_prometheus(tmp_path / "prometheus", [f"127.0.0.1:{server.port}"]) as prometheus:
        wait_until(
            lambda: stage_runs(prometheus) == expected_runs(1.0),
            SCRAPE_TIMEOUT,
            0.25,
            what="first scrape of stageflow_stage_runs_total",
        )
        run_shop(telemetry)
        wait_until(
            lambda: stage_runs(prometheus) == expected_runs(2.0),
            SCRAPE_TIMEOUT,
            0.25,
            what="a scrape after the second run",
        )
        [up] = prometheus.query('up{job="stageflow"}')
        assert up["value"][1] == "1"

        # Exemplars travel through the OpenMetrics scrape and name real spans.
        span_ids = {
            format(span.context.span_id, "016x")
            for span in telemetry.spans()
            if span.context is not None and span.name.startswith("stage.run ")
        }

        def exemplar_span_ids() -> set[str]:
            data = prometheus.query_exemplars(
                'stageflow_stage_duration_seconds_bucket{pipeline="shop"}',
                started - 60,
                time.time() + 60,
            )
            return {
                exemplar["labels"]["span_id"] for group in data for exemplar in group["exemplars"]
            }

        found = wait_until(exemplar_span_ids, SCRAPE_TIMEOUT, 0.25, what="exemplars")
        assert found <= span_ids


def test_promtool_accepts_the_exposition(
    served: tuple[InMemoryTelemetry, MetricsServer],
) -> None:
    promtool = require_binary("promtool")
    telemetry, server = served
    run_shop(telemetry)

    body = http_get(server.url)
    checked = subprocess.run(
        [str(promtool), "check", "metrics"],
        input=body,
        capture_output=True,
        timeout=30,
        check=False,
    )

    assert b"stageflow_stage_runs_total{" in body
    assert checked.returncode == 0, checked.stdout.decode() + checked.stderr.decode()
