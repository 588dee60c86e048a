"""End to end, the way the compose stack runs, with the real components on 127.0.0.1.

The demo CLI (``demo --hold --interval 1``) exports spans and event records over OTLP to the
OpenTelemetry Collector running ``otel-collector.yaml``, which forwards the spans to Jaeger v2
(in-memory store); Prometheus scrapes the demo's ``/metrics`` every second with exemplar storage
on. Everything is read back over Jaeger's and Prometheus' HTTP APIs, as Grafana would: the trace
tree and its attributes, exemplars that lead to traces, and every query of every dashboard in
``dashboards/``.

The demo runs its ``price_order`` stage on a Dask cluster (``--dask``: a ``dask scheduler`` and
a ``dask worker`` process): the worker exports its ``stage.remote`` spans to the same collector,
so they are in the demo's traces, and Prometheus scrapes the worker's own ``/metrics`` under the
demo's job, for the dashboards' "Remote stages" panels.

The demo never fails, so a second CLI process (``run``) holds a small pipeline that fails on
purpose (:data:`FAILING_PIPELINE_SOURCE`, written to a temporary directory): its error spans are
checked in Jaeger, the failure-only dashboard queries (:data:`NO_DATA_BY_DESIGN`) are checked
against its own scrape job, and the failure ratios (:data:`FAILURE_RATIOS`) are checked to be
exactly 0 from the demo and above 0 from the failing job.
"""

from __future__ import annotations

import contextlib
import math
import re
import sys
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import pytest
from examples.order_pipeline import build_order_pipeline, build_payment_pipeline

from tests.ops.helpers import DASHBOARD_FILES, Json, iter_targets, load_dashboard, parse_promql
from tests.support.servers import (
    REPO_ROOT,
    START_TIMEOUT,
    CollectorServer,
    JaegerServer,
    ManagedProcess,
    PrometheusServer,
    free_port,
    http_ok,
    run_process,
    start_collector,
    start_dask_scheduler,
    start_dask_worker,
    start_jaeger,
    start_prometheus,
    wait_until,
)

pytestmark = pytest.mark.components

# Generous bounds that only catch hangs: every wait below polls and returns as soon as it can.
TRACE_TIMEOUT = 60.0
DASHBOARD_TIMEOUT = 90.0  # the first scrape takes ~6 s, and rates need two samples

DEMO_JOB = "stageflow-demo"
FAILING_JOB = "stageflow-failing"

DEMO_PIPELINE = "order_fulfilment"  # examples.order_pipeline / stageflow_otel.demo
PAYMENT_PIPELINE = "payment"
RETRIED_STAGE = "quote_shipping"
TOOL_STAGE, TOOL = "reserve_stock", "reserve_inventory"
SUBPIPELINE_STAGE = "charge_payment"
REMOTE_STAGE = "price_order"  # on the Dask worker (demo --dask)

FAILING_PIPELINE = "refund"
FAILING_STAGE = "settle"
FAILING_CHILD_PIPELINE, FAILING_CHILD_STAGE = "settlement", "call_bank"
FAILING_TOOL_STAGE, FAILING_TOOL = "fetch_rates", "fx_rates"

FAILING_PIPELINE_SOURCE = '''\
"""A pipeline that fails on purpose, the same way on every run.

``fetch_rates`` calls a tool that fails and falls back to a default (the stage succeeds);
``settle`` runs the ``settlement`` subpipeline, whose ``call_bank`` stage raises a transient
error, opens its circuit breaker and is short-circuited on the retry; the failed child fails
``settle`` and so the run.
"""

from stageflow_otel.core import (
    CircuitBreakerInterceptor,
    Pipeline,
    RetryInterceptor,
    StageKind,
    StageOutput,
    TransientError,
)
from stageflow_otel.tools import ToolError, ToolExecutor, ToolInput, ToolOutput, ToolRegistry

registry = ToolRegistry()


@registry.tool(name="fx_rates", action_type="fx.lookup")
async def fx_rates(input):
    return ToolOutput.fail("rates service unavailable", error_code="RATES_DOWN")


executor = ToolExecutor(registry)


async def fetch_rates(ctx):
    try:
        await executor.execute(ToolInput(tool_name="fx_rates", payload={}), ctx)
    except ToolError:
        return {"rate": 1.0, "fallback": True}
    return {"rate": 1.0, "fallback": False}


async def call_bank(ctx):
    raise TransientError("bank gateway refused the connection")


def build_settlement():
    # Built per spawn: a fresh circuit breaker, so that every run fails the same way.
    interceptors = [
        RetryInterceptor(max_attempts=2, base_delay=0.01),
        CircuitBreakerInterceptor(failure_threshold=1),
    ]
    return Pipeline("settlement").with_stage(
        "call_bank", call_bank, StageKind.WORK, interceptors=interceptors
    )


async def settle(ctx):
    result = await ctx.spawn_subpipeline(build_settlement(), data={"amount": 12.5})
    if not result.success:
        return StageOutput.fail(f"settlement failed: {result.error}")
    return StageOutput.ok(settled=True)


pipeline = (
    Pipeline("refund")
    .with_stage("fetch_rates", fetch_rates, StageKind.ENRICH)
    .with_stage("settle", settle, StageKind.WORK, ["fetch_rates"])
)
'''


# --------------------------------------------------------------------------- the stack


@dataclass(frozen=True)
class CliProcess:
    """A ``stageflow-otel`` process holding its ``/metrics`` open."""

    service: str
    metrics_url: str
    managed: ManagedProcess


@dataclass(frozen=True)
class Stack:
    jaeger: JaegerServer
    collector: CollectorServer
    prometheus: PrometheusServer
    demo: CliProcess
    failing: CliProcess
    worker_service: str  # the Dask worker's service.name


def _cli_env(service: str) -> dict[str, str]:
    """Settings that must not come from the machine, plus faster span export."""
    return {
        "OTEL_SERVICE_NAME": service,
        "OTEL_RESOURCE_ATTRIBUTES": "deployment.environment.name=e2e",
        "OTEL_SDK_DISABLED": "false",
        "OTEL_TRACES_SAMPLER": "parentbased_always_on",
        "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc",
        # The SDK's batch span processor exports every 5 s by default; 200 ms keeps the test
        # short without changing what is exported.
        "OTEL_BSP_SCHEDULE_DELAY": "200",
        "STAGEFLOW_OTEL_INTERCEPTOR_SPANS": "true",
        "STAGEFLOW_OTEL_METRICS_ADDR": "127.0.0.1",
        "COLUMNS": "200",
    }


@contextlib.contextmanager
def _start_cli(
    name: str,
    command: list[str],
    *,
    port: int,
    service: str,
    directory: Path,
    ready: Callable[[], bool] = lambda: True,
) -> Iterator[CliProcess]:
    argv = [
        sys.executable,
        "-m",
        "stageflow_otel",
        *command,
        "--hold",
        "--interval",
        "1",
        "--metrics-port",
        str(port),
        "--out",
        str(directory / "out"),
        "--no-live",
    ]
    log_path = directory / f"{name}.log"
    with run_process(name, argv, log_path=log_path, env=_cli_env(service), cwd=REPO_ROOT) as proc:
        metrics_url = f"http://127.0.0.1:{port}/metrics"
        wait_until(
            lambda: proc.check_running() and http_ok(metrics_url) and ready(),
            START_TIMEOUT,
            0.05,
            what=f"{name}: {metrics_url}",
        )
        yield CliProcess(service=service, metrics_url=metrics_url, managed=proc)


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """Prometheus, Jaeger, the collector, the demo and the failing pipeline; stopped by PID."""
    root = tmp_path_factory.mktemp("end-to-end")
    demo_port, failing_port, worker_port = free_port(), free_port(), free_port()
    suffix = uuid.uuid4().hex[:8]
    module = root / "refund_pipeline.py"
    module.write_text(FAILING_PIPELINE_SOURCE, encoding="utf-8")
    with contextlib.ExitStack() as started:
        # Prometheus first: its first scrape comes ~6 s after start, so that wait overlaps
        # with starting everything else.
        prometheus = started.enter_context(
            start_prometheus(
                root / "prometheus",
                # The Dask worker that runs the demo's remote stage belongs to the demo's job.
                [f"127.0.0.1:{demo_port}", f"127.0.0.1:{worker_port}"],
                job=DEMO_JOB,
                scrape_interval="1s",
                extra_jobs={FAILING_JOB: [f"127.0.0.1:{failing_port}"]},
            )
        )
        jaeger = started.enter_context(start_jaeger(root / "jaeger"))
        collector = started.enter_context(
            start_collector(
                root / "otelcol",
                jaeger_otlp_grpc_endpoint=jaeger.otlp_grpc_endpoint,
                debug_verbosity="basic",
            )
        )
        otlp = f"http://{collector.otlp_grpc_endpoint}"
        scheduler = started.enter_context(start_dask_scheduler(root / "dask"))
        worker_service = f"stageflow-e2e-worker-{suffix}"
        started.enter_context(
            start_dask_worker(
                root / "dask",
                scheduler.address,
                name="worker",
                env={
                    **_cli_env(worker_service),
                    "OTEL_EXPORTER_OTLP_ENDPOINT": otlp,
                    "STAGEFLOW_OTEL_WORKER_METRICS_PORT": str(worker_port),
                },
            )
        )
        demo = started.enter_context(
            _start_cli(
                "demo",
                # On a Dask worker (a trace across processes) and recorded in a run store,
                # so the dashboards' remote-stage and store panels have data.
                [
                    "demo",
                    "--runs",
                    "3",
                    "--otlp-endpoint",
                    otlp,
                    "--dask",
                    scheduler.address,
                    "--store",
                    str(root / "runs.sqlite3"),
                    "--checkpoints",
                ],
                port=demo_port,
                service=f"stageflow-e2e-demo-{suffix}",
                directory=root / "demo",
                # The demo registers the worker plugin, which opens the worker's /metrics.
                ready=lambda: http_ok(f"http://127.0.0.1:{worker_port}/metrics"),
            )
        )
        failing = started.enter_context(
            _start_cli(
                "failing",
                ["run", f"{module}:pipeline", "--otlp-endpoint", otlp],
                port=failing_port,
                service=f"stageflow-e2e-failing-{suffix}",
                directory=root / "failing",
            )
        )
        yield Stack(jaeger, collector, prometheus, demo, failing, worker_service)


# --------------------------------------------------------------------------- Jaeger JSON


def _tags(span: Json) -> dict[str, Any]:
    return {tag["key"]: tag["value"] for tag in span.get("tags") or []}


def _events(span: Json, name: str) -> list[dict[str, Any]]:
    """The fields of the span's logs (OTel span events) called ``name``."""
    found = []
    for log in span.get("logs") or []:
        fields = {field["key"]: field["value"] for field in log["fields"]}
        if fields.get("event") == name:
            found.append(fields)
    return found


class TraceView:
    """One trace of ``/api/traces``, navigable by span name and ``CHILD_OF`` references."""

    def __init__(self, trace: Json) -> None:
        self.trace_id: str = trace["traceID"]
        self.spans: list[Json] = trace["spans"]
        self.processes: dict[str, Json] = trace["processes"]
        self.by_id = {span["spanID"]: span for span in self.spans}

    def names(self) -> Counter[str]:
        return Counter(span["operationName"] for span in self.spans)

    def named(self, name: str) -> list[Json]:
        return [span for span in self.spans if span["operationName"] == name]

    def one(self, name: str) -> Json:
        spans = self.named(name)
        assert len(spans) == 1, f"{len(spans)} spans named {name!r} in trace {self.trace_id}"
        return spans[0]

    def roots(self) -> list[Json]:
        return [span for span in self.spans if self.parent_id(span) is None]

    @staticmethod
    def parent_id(span: Json) -> str | None:
        parents = [
            ref["spanID"] for ref in span.get("references") or [] if ref["refType"] == "CHILD_OF"
        ]
        assert len(parents) <= 1, f"{span['operationName']} has {len(parents)} parents"
        return parents[0] if parents else None

    def parent_name(self, span: Json) -> str | None:
        parent = self.parent_id(span)
        return None if parent is None else self.by_id[parent]["operationName"]

    def linked_names(self, span: Json) -> set[str]:
        """Names of the spans a span links to (OTel links are ``FOLLOWS_FROM`` in Jaeger)."""
        return {
            self.by_id[ref["spanID"]]["operationName"]
            for ref in span.get("references") or []
            if ref["refType"] == "FOLLOWS_FROM" and ref["spanID"] in self.by_id
        }

    def service(self, span: Json) -> str:
        return str(self.processes[span["processID"]]["serviceName"])

    def process_tags(self, span: Json) -> dict[str, Any]:
        return _tags(self.processes[span["processID"]])


def _wait_for_trace(
    jaeger: JaegerServer, service: str, root: str, spans: Counter[str]
) -> TraceView:
    """Poll ``/api/services`` and ``/api/traces`` until a trace rooted at ``root`` holds
    at least ``spans`` (span name -> count); spans of one trace arrive in several batches."""
    wait_until(lambda: service in jaeger.services(), TRACE_TIMEOUT, 0.2, what=f"service {service}")

    seen: list[str] = []

    def complete() -> TraceView | None:
        seen.clear()
        for trace in jaeger.traces(service, limit="20"):
            view = TraceView(trace)
            roots = [span["operationName"] for span in view.roots()]
            if roots == [root] and view.names() >= spans:
                return view
            missing = sorted((spans - view.names()).elements())
            seen.append(f"{view.trace_id}: roots {roots}, missing {missing}")
        return None

    try:
        view = wait_until(complete, TRACE_TIMEOUT, 0.2, what=f"a complete {root!r} trace")
    except TimeoutError as exc:
        pytest.fail(f"{exc}; traces of {service}:\n" + "\n".join(seen), pytrace=False)
    assert view is not None  # wait_until only returns truthy values
    return view


def _demo_spans() -> Counter[str]:
    names = Counter(
        [
            f"pipeline.run {DEMO_PIPELINE}",
            f"subpipeline.run {PAYMENT_PIPELINE}",
            f"pipeline.run {PAYMENT_PIPELINE}",
            f"execute_tool {TOOL}",
            "interceptor retry",
            "interceptor timeout",  # one per attempt
            "interceptor timeout",
            f"stage.remote {REMOTE_STAGE}",
        ]
    )
    names.update(f"stage.run {spec.name}" for spec in build_order_pipeline().specs)
    names.update(f"stage.run {spec.name}" for spec in build_payment_pipeline().specs)
    return names


_UUID = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")


# --------------------------------------------------------------------------- traces


def test_demo_trace_reaches_jaeger_through_the_collector(stack: Stack) -> None:
    service = stack.demo.service
    view = _wait_for_trace(stack.jaeger, service, f"pipeline.run {DEMO_PIPELINE}", _demo_spans())

    # One trace across two processes: the remote stage's span comes from the Dask worker.
    assert {view.service(span) for span in view.spans} == {service, stack.worker_service}
    remote = view.one(f"stage.remote {REMOTE_STAGE}")
    assert view.service(remote) == stack.worker_service
    assert view.parent_name(remote) == f"stage.run {REMOTE_STAGE}"
    assert str(_tags(remote)["stageflow.remote.worker"]).startswith("tcp://127.0.0.1:")
    assert [view.service(span) for span in view.spans if span is not remote] == [service] * (
        len(view.spans) - 1
    )
    root = view.one(f"pipeline.run {DEMO_PIPELINE}")
    assert view.process_tags(root)["deployment.environment.name"] == "e2e"
    run = _tags(root)
    assert run["span.kind"] == "server"
    assert run["stageflow.pipeline.name"] == DEMO_PIPELINE
    assert run["stageflow.run.status"] == "ok"
    assert run["stageflow.run.stage_count"] == len(build_order_pipeline().specs)
    run_id = run["stageflow.run.id"]
    assert _UUID.match(run_id), run_id
    # The demo succeeds: no span has an error status, and none is set to Ok either.
    assert {_tags(span).get("otel.status_code") for span in view.spans} == {None}
    for span in view.spans:
        tags = _tags(span)
        assert tags.get("stageflow.pipeline.name"), span["operationName"]
        assert _UUID.match(str(tags.get("stageflow.run.id"))), span["operationName"]

    # Stages: children of the run, one link per upstream stage.
    for spec in build_order_pipeline().specs:
        span = view.one(f"stage.run {spec.name}")
        tags = _tags(span)
        assert view.parent_name(span) == f"pipeline.run {DEMO_PIPELINE}"
        assert tags["stageflow.pipeline.name"] == DEMO_PIPELINE
        assert tags["stageflow.run.id"] == run_id
        assert tags["stageflow.stage.name"] == spec.name
        assert tags["stageflow.stage.kind"] == spec.kind.value
        assert tags["stageflow.stage.status"] in {"ok", "skip"}, spec.name
        assert view.linked_names(span) == {f"stage.run {dep}" for dep in spec.dependencies}

    # The flaky stage: retried once inside the stage span, interceptors nested in chain order.
    retried = view.one(f"stage.run {RETRIED_STAGE}")
    assert _tags(retried)["stageflow.stage.status"] == "ok"
    assert _tags(retried)["stageflow.stage.attempt"] == 2
    (retry_event,) = _events(retried, "stageflow.stage.retry")
    assert retry_event["stageflow.stage.attempt"] == 2
    assert retry_event["stageflow.retry.delay_s"] > 0
    assert retry_event["error.type"].endswith("TransientError")
    retry = view.one("interceptor retry")
    assert view.parent_name(retry) == f"stage.run {RETRIED_STAGE}"
    assert _tags(retry)["stageflow.interceptor.name"] == "retry"
    assert _tags(retry)["stageflow.interceptor.action"] == "retry"
    timeouts = view.named("interceptor timeout")
    assert [view.parent_name(span) for span in timeouts] == ["interceptor retry"] * 2
    assert {_tags(span)["stageflow.interceptor.action"] for span in timeouts} == {"proceed"}
    assert {_tags(span)["stageflow.stage.name"] for span in [retry, *timeouts]} == {RETRIED_STAGE}

    # The tool call, under the stage that made it.
    tool = view.one(f"execute_tool {TOOL}")
    assert view.parent_name(tool) == f"stage.run {TOOL_STAGE}"
    assert _tags(tool)["gen_ai.operation.name"] == "execute_tool"
    assert _tags(tool)["gen_ai.tool.name"] == TOOL
    assert _tags(tool)["stageflow.run.id"] == run_id

    # The subpipeline: in the same trace, under its stage; the child run under it.
    sub = view.one(f"subpipeline.run {PAYMENT_PIPELINE}")
    assert view.parent_name(sub) == f"stage.run {SUBPIPELINE_STAGE}"
    sub_tags = _tags(sub)
    assert sub_tags["stageflow.parent.run.id"] == run_id
    assert sub_tags["stageflow.parent.stage.name"] == SUBPIPELINE_STAGE
    assert sub_tags["stageflow.subpipeline.depth"] == 1
    child = view.one(f"pipeline.run {PAYMENT_PIPELINE}")
    assert view.parent_name(child) == f"subpipeline.run {PAYMENT_PIPELINE}"
    child_tags = _tags(child)
    assert child_tags["stageflow.pipeline.name"] == PAYMENT_PIPELINE
    assert child_tags["stageflow.parent.run.id"] == run_id
    assert child_tags["stageflow.correlation.id"] == sub_tags["stageflow.correlation.id"]
    child_run_id = child_tags["stageflow.run.id"]
    assert child_run_id not in (run_id, None)
    for spec in build_payment_pipeline().specs:
        span = view.one(f"stage.run {spec.name}")
        assert view.parent_name(span) == f"pipeline.run {PAYMENT_PIPELINE}"
        assert _tags(span)["stageflow.run.id"] == child_run_id
        assert _tags(span)["stageflow.pipeline.name"] == PAYMENT_PIPELINE


def test_failing_stage_is_an_error_span_in_jaeger(stack: Stack) -> None:
    expected = Counter(
        [
            f"pipeline.run {FAILING_PIPELINE}",
            f"stage.run {FAILING_TOOL_STAGE}",
            f"execute_tool {FAILING_TOOL}",
            f"stage.run {FAILING_STAGE}",
            f"subpipeline.run {FAILING_CHILD_PIPELINE}",
            f"pipeline.run {FAILING_CHILD_PIPELINE}",
            f"stage.run {FAILING_CHILD_STAGE}",
            "interceptor retry",
            "interceptor circuit_breaker",  # one per attempt
            "interceptor circuit_breaker",
        ]
    )
    service = stack.failing.service
    view = _wait_for_trace(stack.jaeger, service, f"pipeline.run {FAILING_PIPELINE}", expected)
    assert {view.service(span) for span in view.spans} == {service}

    def assert_error(span: Json, message: str) -> dict[str, Any]:
        tags = _tags(span)
        assert tags.get("otel.status_code") == "ERROR", span["operationName"]
        assert tags.get("error") is True, span["operationName"]
        assert message in tags.get("otel.status_description", ""), span["operationName"]
        return tags

    root = view.one(f"pipeline.run {FAILING_PIPELINE}")
    run = assert_error(root, "settlement failed")
    assert run["stageflow.run.status"] == "fail"
    assert run["stageflow.run.failed_stage"] == FAILING_STAGE

    stage = view.one(f"stage.run {FAILING_STAGE}")
    assert view.parent_name(stage) == f"pipeline.run {FAILING_PIPELINE}"
    tags = assert_error(stage, "settlement failed")
    assert tags["stageflow.stage.name"] == FAILING_STAGE
    assert tags["stageflow.stage.status"] == "fail"
    assert tags["stageflow.pipeline.name"] == FAILING_PIPELINE
    assert tags["stageflow.run.id"] == run["stageflow.run.id"]
    assert tags["error.type"]

    # The failed child run: in the same trace, under the stage, with error status throughout.
    sub = view.one(f"subpipeline.run {FAILING_CHILD_PIPELINE}")
    assert view.parent_name(sub) == f"stage.run {FAILING_STAGE}"
    assert_error(sub, "circuit breaker")
    child = view.one(f"pipeline.run {FAILING_CHILD_PIPELINE}")
    assert view.parent_name(child) == f"subpipeline.run {FAILING_CHILD_PIPELINE}"
    assert _tags(child)["stageflow.run.status"] == "fail"
    bank = view.one(f"stage.run {FAILING_CHILD_STAGE}")
    assert view.parent_name(bank) == f"pipeline.run {FAILING_CHILD_PIPELINE}"
    bank_tags = assert_error(bank, "circuit breaker")
    assert bank_tags["stageflow.stage.status"] == "fail"
    assert bank_tags["error.type"] == "stageflow.short_circuit"
    assert bank_tags["stageflow.stage.attempt"] == 2
    assert len(_events(bank, "stageflow.stage.retry")) == 1
    breakers = view.named("interceptor circuit_breaker")
    assert {view.parent_name(span) for span in breakers} == {"interceptor retry"}
    actions = sorted(_tags(span)["stageflow.interceptor.action"] for span in breakers)
    assert actions == ["proceed", "short_circuit"]

    # A failed tool call that its stage handles: the tool span errs, the stage does not.
    tool = view.one(f"execute_tool {FAILING_TOOL}")
    assert view.parent_name(tool) == f"stage.run {FAILING_TOOL_STAGE}"
    assert_error(tool, "rates service unavailable")
    handled = _tags(view.one(f"stage.run {FAILING_TOOL_STAGE}"))
    assert handled["stageflow.stage.status"] == "ok"
    assert "otel.status_code" not in handled


def test_stage_duration_exemplars_lead_to_jaeger_traces(stack: Stack) -> None:
    prometheus, jaeger = stack.prometheus, stack.jaeger
    selector = f'stageflow_stage_duration_seconds_bucket{{job="{DEMO_JOB}"}}'

    def exemplars() -> list[tuple[Json, Json]]:
        now = time.time()
        data = prometheus.query_exemplars(selector, now - 600, now + 60)
        return [(series["seriesLabels"], ex) for series in data for ex in series["exemplars"]]

    found = wait_until(exemplars, DASHBOARD_TIMEOUT, 0.25, what=f"exemplars of {selector}")
    series, exemplar = found[-1]
    labels = exemplar["labels"]
    assert set(labels) == {"trace_id", "span_id"}, labels
    trace_id, span_id = labels["trace_id"], labels["span_id"]

    def span_in_jaeger() -> TraceView | None:
        # A trace arrives in batches: wait for the exemplar's own span, not just its trace.
        trace = jaeger.trace(trace_id)
        return (
            TraceView(trace)
            if trace is not None and span_id in {span["spanID"] for span in trace["spans"]}
            else None
        )

    view = wait_until(span_in_jaeger, TRACE_TIMEOUT, 0.2, what=f"span {span_id} of {trace_id}")
    assert view is not None  # wait_until only returns truthy values
    span = view.by_id[span_id]
    assert span["operationName"] == f"stage.run {series['stage']}"
    assert _tags(span)["stageflow.stage.name"] == series["stage"]
    assert _tags(span)["stageflow.pipeline.name"] == series["pipeline"]
    assert _tags(span)["stageflow.stage.status"] == series["status"]
    assert view.service(span) == stack.demo.service


# --------------------------------------------------------------------------- dashboards


class PanelQuery(NamedTuple):
    """One query target of a dashboard panel."""

    dashboard: str  # file name
    panel_id: int
    title: str
    ref_id: str


NO_DATA_BY_DESIGN: Mapping[PanelQuery, str] = {
    # "No data" is the honest answer from the healthy demo for these: there is nothing to list.
    # The demo never fails (its one flaky stage succeeds on retry) and never short-circuits, and
    # prometheus-client creates a labelled series on first use. Each of these returns data from
    # the failing pipeline's scrape job instead (checked below).
    PanelQuery("stageflow-stages.json", 4, "Top failures by error type", "A"): (
        'stageflow_stage_runs_total{status="fail"}: no demo stage fails, so no error type to rank'
    ),
    PanelQuery("stageflow-stages.json", 10, "Interceptor short-circuits / s", "A"): (
        "stageflow_interceptor_short_circuits_total: the demo has no circuit breaker or "
        "idempotency cache hit"
    ),
}

# Failure ratios fall back to `all * 0` when no `status="fail"` series exists: exactly 0 (not
# "no data", not NaN) from the healthy demo, and above 0 from the failing pipeline's job.
FAILURE_RATIOS: tuple[PanelQuery, ...] = (
    PanelQuery("stageflow-pipelines.json", 3, "Failed runs", "A"),
    PanelQuery("stageflow-pipelines.json", 8, "Error ratio by pipeline", "A"),
    PanelQuery("stageflow-stages.json", 3, "Stage error ratio", "A"),
    PanelQuery("stageflow-tools.json", 3, "Tool error ratio", "A"),
    PanelQuery("stageflow-tools.json", 7, "Subpipeline failure ratio", "A"),
)

# Dashboard variables as a user would pick them. Every query uses them as regex matchers (`=~`).
DEMO_VARIABLES = {
    "job": DEMO_JOB,
    "pipeline": DEMO_PIPELINE,
    "stage": RETRIED_STAGE,  # a real stage that is retried and has interceptors
    "tool": TOOL,
    "sink": "otel_logs",  # the OTLP event sink of the CLI
}
FAILING_VARIABLES = {
    "job": FAILING_JOB,
    "pipeline": FAILING_PIPELINE,
    "stage": ".*",  # "All": the failing stage and the short-circuited one are in different runs
    "tool": ".*",
    "sink": ".*",
}
GRAFANA_INTERVALS = {"__rate_interval": "1m", "__interval": "15s", "__range": "5m"}

_VARIABLE = re.compile(r"\$\{(\w+)(?::\w+)?\}|\$(\w+)")
_LABEL_VALUES = re.compile(r"^label_values\((?P<selector>.+),\s*(?P<label>\w+)\)$")


def substitute(expr: str, variables: Mapping[str, str]) -> str:
    """Replace Grafana's interval and template variables; an unknown one is an error."""
    values = {**GRAFANA_INTERVALS, **variables}

    def replace(match: re.Match[str]) -> str:
        name = match.group(1) or match.group(2)
        if name not in values:
            raise AssertionError(f"no value for dashboard variable ${name} in {expr!r}")
        return values[name]

    return _VARIABLE.sub(replace, expr)


def panel_queries() -> dict[PanelQuery, str]:
    """Every panel query target of every dashboard, with its expression."""
    queries: dict[PanelQuery, str] = {}
    for path in DASHBOARD_FILES:
        for panel, target in iter_targets(load_dashboard(path)):
            key = PanelQuery(path.name, int(panel["id"]), str(panel.get("title")), target["refId"])
            assert key not in queries, f"duplicate query target {key}"
            queries[key] = str(target["expr"])
    return queries


@dataclass
class Check:
    """A PromQL query that must hold eventually."""

    where: str
    promql: str
    holds: Callable[[list[Json]], bool]
    last: list[Json] | None = None


def _has_number(result: list[Json]) -> bool:
    """Non-empty, and some sample is a number (zero counts; NaN from 0/0 does not)."""
    return any(not math.isnan(float(series["value"][1])) for series in result)


def _all_zero(result: list[Json]) -> bool:
    """Non-empty, and every sample is exactly 0."""
    return bool(result) and all(float(series["value"][1]) == 0.0 for series in result)


def _some_positive(result: list[Json]) -> bool:
    """Some sample is a number above 0."""
    return any(float(series["value"][1]) > 0 for series in result)


def _variable_checks(variables: Mapping[str, str], job_label: str) -> list[Check]:
    """The dashboards' ``label_values`` variables list the values substituted for them."""
    checks = []
    for path in DASHBOARD_FILES:
        for var in load_dashboard(path).get("templating", {}).get("list", []):
            if var.get("type") != "query":
                continue
            match = _LABEL_VALUES.match(str(var["query"]))
            assert match, f"{path.name} variable {var['name']}: expected label_values(...)"
            label, wanted = match.group("label"), variables[var["name"]]

            def lists(result: list[Json], label: str = label, wanted: str = wanted) -> bool:
                values = {series["metric"].get(label) for series in result}
                return wanted in values if wanted != ".*" else bool(values - {None})

            checks.append(
                Check(
                    f"{path.name} variable ${var['name']} ({job_label}) lists {wanted!r}",
                    substitute(match.group("selector"), variables),
                    lists,
                )
            )
    return checks


def _poll(prometheus: PrometheusServer, checks: list[Check], timeout: float) -> list[Check]:
    """Run the checks until all hold or ``timeout`` passes; returns those that never held."""
    pending = list(checks)
    deadline = time.monotonic() + timeout
    while pending:
        for check in pending:
            check.last = prometheus.query(check.promql)
        pending = [check for check in pending if not check.holds(check.last or [])]
        if not pending or time.monotonic() >= deadline:
            break
        time.sleep(0.5)
    return pending


def test_no_data_allowlist_names_real_queries() -> None:
    queries = panel_queries()
    stale = [key for key in [*NO_DATA_BY_DESIGN, *FAILURE_RATIOS] if key not in queries]
    assert stale == [], "listed queries that are not on a dashboard (renamed or moved?)"
    for key in NO_DATA_BY_DESIGN:
        parse_promql(queries[key])  # syntactically valid PromQL
    assert set(NO_DATA_BY_DESIGN).isdisjoint(FAILURE_RATIOS)


def test_every_dashboard_query_returns_data(stack: Stack) -> None:
    prometheus = stack.prometheus
    queries = panel_queries()
    checks = _variable_checks(DEMO_VARIABLES, DEMO_JOB) + _variable_checks(
        FAILING_VARIABLES, FAILING_JOB
    )
    for key, expr in queries.items():
        where = f"{key.dashboard} panel {key.panel_id} {key.title!r} {key.ref_id}"
        if key in NO_DATA_BY_DESIGN:
            # No data from the demo by design: it must return data from the failing job.
            where += f" ({FAILING_JOB})"
            checks.append(Check(where, substitute(expr, FAILING_VARIABLES), _has_number))
        else:
            checks.append(Check(where, substitute(expr, DEMO_VARIABLES), _has_number))
    for key in FAILURE_RATIOS:
        where = f"{key.dashboard} panel {key.panel_id} {key.title!r} {key.ref_id}"
        expr = queries[key]
        checks.append(Check(f"{where} is 0", substitute(expr, DEMO_VARIABLES), _all_zero))
        checks.append(
            Check(
                f"{where} ({FAILING_JOB}) is above 0",
                substitute(expr, FAILING_VARIABLES),
                _some_positive,
            )
        )

    started = time.monotonic()
    missing = _poll(prometheus, checks, DASHBOARD_TIMEOUT)
    if missing:
        report = "\n".join(f"  {c.where}\n    {c.promql}\n    -> {c.last}" for c in missing)
        pytest.fail(
            f"{len(missing)} of {len(checks)} dashboard queries returned no data within "
            f"{time.monotonic() - started:.0f} s:\n{report}",
            pytrace=False,
        )

    # The allowlist stays honest: from the demo, those queries still return nothing.
    unexpected = {
        key: result
        for key in NO_DATA_BY_DESIGN
        if (result := prometheus.query(substitute(queries[key], DEMO_VARIABLES)))
    }
    assert unexpected == {}, "the demo now feeds these: remove them from NO_DATA_BY_DESIGN"
