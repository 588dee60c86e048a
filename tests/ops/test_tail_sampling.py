"""Tail sampling in the collector, end to end: the traces that matter are all kept.

An in-process application exports its spans over OTLP/gRPC to the collector running
``otel-collector.yaml`` with tail sampling on (a small share of ordinary traces, a short
decision wait, a small slow-trace threshold, one critical pipeline), which forwards the kept
traces to Jaeger v2. Every failed, slow and critical trace must reach Jaeger; of the ordinary
ones, a share within a generous binomial band around the configured percentage.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import pytest
from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from prometheus_client import CollectorRegistry

from stageflow_otel import Pipeline, StageContext, StageExecutionError
from stageflow_otel.observability import Telemetry
from tests.support.servers import (
    CollectorServer,
    JaegerServer,
    start_collector,
    wait_until,
)

pytestmark = [pytest.mark.components, pytest.mark.anyio]

SAMPLING_PERCENTAGE = 20
SLOW_TRACE_MS = 200
SLOW_STAGE_SECONDS = 0.35  # past the threshold with margin; the others take ~1 ms
DECISION_WAIT = "1s"

ORDINARY_PIPELINE = "ingest"
CRITICAL_PIPELINE = "payment"
RUNS = 100
FAILED_RUNS = frozenset({7, 23, 41, 66, 90})
SLOW_RUNS = frozenset({12, 50, 77})
CRITICAL_RUNS = 10
# Runs that no policy but the probabilistic one keeps: 100 - 5 - 3 = 92, of which 20 % is
# 18.4 on average (standard deviation ~3.8); 5..35 is about 3.5 deviations either way.
KEPT_ORDINARY_BAND = (5, 35)

FLUSH_TIMEOUT_MS = 10_000
TRACE_TIMEOUT = 20.0


@pytest.fixture
def anyio_backend() -> str:
    """The collector is under test here, not the async backend: asyncio only."""
    return "asyncio"


@pytest.fixture
def sampling_collector(tmp_path: Path, jaeger: JaegerServer) -> Iterator[CollectorServer]:
    with start_collector(
        tmp_path / "otelcol",
        jaeger_otlp_grpc_endpoint=jaeger.otlp_grpc_endpoint,
        debug_verbosity="basic",
        sampling_percentage=SAMPLING_PERCENTAGE,
        decision_wait=DECISION_WAIT,
        slow_trace_ms=SLOW_TRACE_MS,
        critical_pipelines=[CRITICAL_PIPELINE],
    ) as server:
        yield server


async def fetch(ctx: StageContext) -> dict[str, Any]:
    return {"rows": 1}


def _run_kind(run: int) -> str:
    if run in FAILED_RUNS:
        return "failed"
    if run in SLOW_RUNS:
        return "slow"
    return "ordinary"


def _stage_for(kind: str) -> Any:
    async def store(ctx: StageContext) -> dict[str, Any]:
        if kind == "failed":
            raise ValueError("store refused the batch")
        if kind == "slow":
            await anyio.sleep(SLOW_STAGE_SECONDS)
        return {"stored": True}

    return store


def _trace_ids(jaeger: JaegerServer, service: str) -> set[int]:
    # Jaeger's query API may drop leading zeros of a trace id: compare numbers.
    traces = jaeger.traces(service, limit="1000", lookback="1h")
    return {int(str(trace["traceID"]), 16) for trace in traces}


async def test_tail_sampling_keeps_every_failed_slow_and_critical_trace(
    sampling_collector: CollectorServer, jaeger: JaegerServer
) -> None:
    service = f"tail-sampling-{uuid.uuid4().hex[:8]}"
    provider = TracerProvider(resource=Resource.create({"service.name": service}))
    provider.add_span_processor(
        BatchSpanProcessor(
            OTLPSpanExporter(endpoint=sampling_collector.otlp_grpc_endpoint, insecure=True)
        )
    )
    telemetry = Telemetry(
        tracer_provider=provider, registry=CollectorRegistry(), canonical_logs=False
    )
    trace_ids: dict[str, set[int]] = {"failed": set(), "slow": set(), "ordinary": set()}
    critical_ids: set[int] = set()
    tracer = provider.get_tracer("tests.tail_sampling")
    try:
        for run in range(RUNS):
            kind = _run_kind(run)
            graph = (
                Pipeline(ORDINARY_PIPELINE)
                .with_stage("fetch", fetch)
                .with_stage("store", _stage_for(kind), dependencies=["fetch"])
                .build(hooks=telemetry.hooks)
            )
            # A parent span of our own to learn the trace id of the run.
            with tracer.start_as_current_span("request") as span:
                trace_id = span.get_span_context().trace_id
                with anyio.fail_after(10):
                    if kind == "failed":
                        with pytest.raises(StageExecutionError):
                            await graph.run()
                    else:
                        await graph.run()
            trace_ids[kind].add(trace_id)
        critical = (
            Pipeline(CRITICAL_PIPELINE).with_stage("fetch", fetch).build(hooks=telemetry.hooks)
        )
        for _ in range(CRITICAL_RUNS):
            with tracer.start_as_current_span("request") as span:
                critical_ids.add(span.get_span_context().trace_id)
                with anyio.fail_after(10):
                    await critical.run()
        assert provider.force_flush(FLUSH_TIMEOUT_MS)
    finally:
        telemetry.shutdown(timeout=5.0)
        provider.shutdown()

    assert (len(trace_ids["failed"]), len(trace_ids["slow"])) == (5, 3)
    must_keep = trace_ids["failed"] | trace_ids["slow"] | critical_ids
    wait_until(
        lambda: must_keep <= _trace_ids(jaeger, service),
        TRACE_TIMEOUT,
        0.25,
        what="every failed, slow and critical trace in Jaeger",
    )
    # Decisions are made decision_wait after each trace's first span; by the time the last
    # must-keep trace is in Jaeger, the ordinary ones exported with it are decided too.
    # Wait one more decision period (and the batch timeout) before counting.
    await anyio.sleep(1.5)
    kept = _trace_ids(jaeger, service)
    kept_ordinary = kept & trace_ids["ordinary"]
    low, high = KEPT_ORDINARY_BAND
    assert low <= len(kept_ordinary) <= high, (
        f"{len(kept_ordinary)} of {len(trace_ids['ordinary'])} ordinary traces kept "
        f"at {SAMPLING_PERCENTAGE} %"
    )
    assert kept <= must_keep | trace_ids["ordinary"]
    # Kept traces are whole: the request span and the run under it.
    for trace_id in sorted(must_keep)[:3]:
        trace = jaeger.trace(format(trace_id, "032x"))
        assert trace is not None
        names = {span["operationName"] for span in trace["spans"]}
        assert "request" in names
        assert any(name.startswith("pipeline.run") for name in names), names
