"""Remote stages on a real Dask cluster: ``dask scheduler`` and ``dask worker`` processes.

The cluster runs on 127.0.0.1 (free ports, stopped by PID); the workers export their spans
through the real collector to the real Jaeger, whose HTTP API shows one trace per run.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
import pytest

distributed = pytest.importorskip("distributed", reason="the dask extra is not installed")

from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from prometheus_client import CollectorRegistry

from stageflow_otel import CollectingEventSink, Pipeline, StageExecutionError
from stageflow_otel.distributed import RemoteTaskLostError, remote_stage
from stageflow_otel.distributed.dask import (
    DaskExecutor,
    StageflowWorkerPlugin,
    worker_metrics_urls,
)
from stageflow_otel.observability import Telemetry
from tests.support import remote_functions as rf
from tests.support.contract import remote_event_types
from tests.support.servers import (
    CollectorServer,
    DaskScheduler,
    DaskWorker,
    JaegerServer,
    free_port,
    http_get,
    start_dask_scheduler,
    start_dask_worker,
    wait_until,
)

pytestmark = pytest.mark.components

TRACE_TIMEOUT = 60.0


@dataclass
class Cluster:
    scheduler: DaskScheduler
    workers: dict[str, DaskWorker]
    client: Any  # distributed.Client
    executor: DaskExecutor


@contextlib.contextmanager
def start_cluster(
    directory: Path,
    *,
    workers: int = 2,
    env: dict[str, str] | None = None,
    scheduler_env: dict[str, str] | None = None,
) -> Iterator[Cluster]:
    """A scheduler and ``workers`` workers, a client, the plugin and a ``DaskExecutor``."""
    with contextlib.ExitStack() as stack:
        scheduler = stack.enter_context(start_dask_scheduler(directory, env=scheduler_env))
        started = {
            name: stack.enter_context(
                start_dask_worker(directory, scheduler.address, name=name, env=env)
            )
            for name in (f"w{i}" for i in range(1, workers + 1))
        }
        client = stack.enter_context(distributed.Client(scheduler.address, timeout=30))
        client.register_plugin(StageflowWorkerPlugin())
        executor = stack.enter_context(DaskExecutor(client))
        yield Cluster(scheduler, started, client, executor)


async def source(ctx: Any) -> dict[str, Any]:
    return {"x": 6}


def worker_env(collector: CollectorServer, service: str) -> dict[str, str]:
    return {
        "OTEL_SERVICE_NAME": service,
        "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://{collector.otlp_grpc_endpoint}",
        "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc",
        "OTEL_BSP_SCHEDULE_DELAY": "100",
    }


# --------------------------------------------------------------------------- one trace


def test_one_run_is_one_trace_across_processes(
    tmp_path: Path, collector: CollectorServer, jaeger: JaegerServer
) -> None:
    suffix = uuid.uuid4().hex[:8]
    app, worker_service = f"dask-app-{suffix}", f"dask-worker-{suffix}"
    provider = TracerProvider(resource=Resource.create({"service.name": app}))
    provider.add_span_processor(
        SimpleSpanProcessor(OTLPSpanExporter(endpoint=collector.otlp_grpc_endpoint, insecure=True))
    )
    telemetry = Telemetry(provider, registry=CollectorRegistry(), canonical_logs=False)
    with start_cluster(tmp_path, env=worker_env(collector, worker_service)) as cluster:
        pipeline = (
            Pipeline("remote_math")
            .with_stage("source", source)
            .with_stage(
                "square", remote_stage(rf.square, cluster.executor), dependencies=["source"]
            )
            .with_stage(
                "add_one", remote_stage(rf.add_one, cluster.executor), dependencies=["square"]
            )
        )
        results = anyio.run(pipeline.build(hooks=telemetry.hooks).run)
        assert results.data("add_one") == {"z": 37}
        remote_worker = results.data("square")["worker"]
        # The workers' batch processors export on teardown at the latest.
        cluster.client.unregister_worker_plugin(StageflowWorkerPlugin.name)
    provider.shutdown()

    def complete() -> dict[str, Any] | None:
        traces = jaeger.traces(app, limit="5")
        for trace in traces:
            names = {span["operationName"] for span in trace["spans"]}
            if {"stage.remote square", "stage.remote add_one"} <= names:
                return trace
        return None

    trace = wait_until(complete, TRACE_TIMEOUT, 0.2, what="the run's trace with remote spans")
    assert trace is not None
    spans = {span["operationName"]: span for span in trace["spans"]}
    assert set(spans) == {
        "pipeline.run remote_math",
        "stage.run source",
        "stage.run square",
        "stage.run add_one",
        "stage.remote square",
        "stage.remote add_one",
    }
    by_id = {span["spanID"]: span["operationName"] for span in trace["spans"]}

    def parent(name: str) -> str:
        (ref,) = [r for r in spans[name]["references"] if r["refType"] == "CHILD_OF"]
        assert ref["traceID"] == trace["traceID"]
        return str(by_id[ref["spanID"]])

    assert parent("stage.remote square") == "stage.run square"
    assert parent("stage.remote add_one") == "stage.run add_one"
    assert parent("stage.run square") == "pipeline.run remote_math"
    services = {
        name: trace["processes"][span["processID"]]["serviceName"] for name, span in spans.items()
    }
    assert services["stage.remote square"] == worker_service
    assert services["stage.run square"] == app
    tags = {tag["key"]: tag["value"] for tag in spans["stage.remote square"]["tags"]}
    assert tags["stageflow.remote.worker"] == remote_worker
    assert tags["stageflow.stage.attempt"] == 1
    assert tags["stageflow.remote.queue_wait_s"] >= 0


# --------------------------------------------------------------------------- semantics


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[Cluster]:
    with start_cluster(tmp_path, env={"OTEL_TRACES_EXPORTER": "none"}) as started:
        yield started


def test_a_killed_worker_reruns_the_stage_on_the_other(cluster: Cluster, tmp_path: Path) -> None:
    markers = tmp_path / "markers"
    markers.mkdir()
    sink = CollectingEventSink()
    graph = (
        Pipeline("durable")
        .with_stage("sleepy", remote_stage(rf.sleep_then_answer, cluster.executor))
        .build(event_sink=sink)
    )
    pids = {str(w.managed.pid): w for w in cluster.workers.values()}

    async def run_and_kill() -> Any:
        async with anyio.create_task_group() as tg:
            outcome: dict[str, Any] = {}

            async def run() -> None:
                outcome["results"] = await graph.run({"marker_dir": str(markers), "seconds": 1.5})

            tg.start_soon(run)
            await anyio.to_thread.run_sync(started, markers)
            (first,) = [p.name for p in markers.iterdir()]
            await anyio.to_thread.run_sync(pids[first].kill)
        return first, outcome["results"]

    first, results = anyio.run(run_and_kill)
    assert results["sleepy"].is_success
    rerun_pid = str(results.data("sleepy")["pid"])
    assert rerun_pid != first
    assert sorted(p.name for p in markers.iterdir()) == sorted([first, rerun_pid])
    remote = [(e.type, dict(e.data)) for e in sink.events if e.type.startswith("stage.remote.")]
    types = [t for t, _ in remote]
    assert types == [
        "stage.remote.submitted",
        "stage.remote.started",
        "stage.remote.worker_lost",
        "stage.remote.resubmitted",
        "stage.remote.started",
    ]
    started_on = [d["worker"] for t, d in remote if t == "stage.remote.started"]
    lost = [d["worker"] for t, d in remote if t == "stage.remote.worker_lost"]
    assert lost == started_on[:1]
    assert started_on[0] != started_on[1]
    assert [d["execution"] for t, d in remote if t == "stage.remote.started"] == [1, 2]
    assert set(types) <= remote_event_types()  # the telemetry contract names them all


def test_a_task_that_kills_every_worker_fails_the_stage(tmp_path: Path) -> None:
    # allowed-failures 0: the first lost worker is one too many.
    with start_cluster(
        tmp_path,
        env={"OTEL_TRACES_EXPORTER": "none"},
        scheduler_env={"DASK_DISTRIBUTED__SCHEDULER__ALLOWED_FAILURES": "0"},
    ) as cluster:
        markers = tmp_path / "markers"
        markers.mkdir()
        graph = (
            Pipeline("doomed")
            .with_stage("sleepy", remote_stage(rf.sleep_then_answer, cluster.executor))
            .build()
        )
        pids = {str(w.managed.pid): w for w in cluster.workers.values()}
        caught: list[StageExecutionError] = []

        async def run_and_kill() -> None:
            async with anyio.create_task_group() as tg:

                async def run() -> None:
                    try:
                        await graph.run({"marker_dir": str(markers), "seconds": 5})
                    except StageExecutionError as exc:
                        caught.append(exc)

                tg.start_soon(run)
                await anyio.to_thread.run_sync(started, markers)
                (first,) = [p.name for p in markers.iterdir()]
                await anyio.to_thread.run_sync(pids[first].kill)

        anyio.run(run_and_kill)
    (error,) = caught
    output = error.results["sleepy"]
    assert isinstance(output.exception, RemoteTaskLostError)
    assert "remote stage 'sleepy' was lost" in str(output.exception)
    assert output.exception.worker is not None


def test_a_timeout_cancels_the_future(cluster: Cluster, tmp_path: Path) -> None:
    markers = tmp_path / "markers"
    markers.mkdir()
    graph = (
        Pipeline("bounded")
        .with_stage("sleepy", remote_stage(rf.sleep_then_answer, cluster.executor), timeout=0.5)
        .build()
    )
    with pytest.raises(StageExecutionError) as caught:
        anyio.run(graph.run, {"marker_dir": str(markers), "seconds": 2})
    assert caught.value.results["sleepy"].error_type == "stageflow.timeout"

    # The scheduler forgets a cancelled task: no key of ours is left on the cluster.
    def scheduler_keys() -> list[str]:
        keys: list[str] = cluster.client.run_on_scheduler(_task_keys)
        return keys

    wait_until(
        lambda: scheduler_keys() == [], 10, what="the scheduler to forget the cancelled task"
    )


@pytest.mark.parametrize("backend", ["asyncio", "trio"])
def test_both_backends_and_the_worker_metrics(cluster: Cluster, backend: str) -> None:
    graph = (
        Pipeline("metered")
        .with_stage("source", source)
        .with_stage("square", remote_stage(rf.square, cluster.executor), dependencies=["source"])
        .build()
    )
    results = anyio.run(graph.run, backend=backend)
    assert results.data("square")["y"] == 36
    ran_on = results.data("square")["worker"]
    urls = worker_metrics_urls(cluster.client)
    assert len(urls) == 2
    url = urls[ran_on]
    assert url is not None
    text = http_get(url).decode()
    assert (
        'stageflow_remote_stages_total{error_type="",pipeline="metered",stage="square",'
        'status="ok"} 1.0'
    ) in text
    assert 'stageflow_remote_stage_duration_seconds_count{pipeline="metered"' in text


def _task_keys(dask_scheduler: Any) -> list[str]:
    return [str(key) for key in dask_scheduler.tasks if str(key).startswith("stageflow-")]


def started(markers: Path) -> None:
    """Wait until the stage function has written its first marker (it is running)."""
    wait_until(lambda: list(markers.iterdir()), 30, what="the remote stage to start")


def test_a_worker_that_joins_later_gets_the_plugin(tmp_path: Path) -> None:
    env = {"OTEL_TRACES_EXPORTER": "none"}
    with (
        start_cluster(tmp_path, workers=1, env=env) as cluster,
        # The plugin is registered before this worker exists.
        start_dask_worker(tmp_path, cluster.scheduler.address, name="late", env=env),
    ):
        wait_until(
            lambda: len(cluster.client.scheduler_info()["workers"]) == 2,
            30,
            what="the late worker to join",
        )
        late = next(
            address
            for address, info in cluster.client.scheduler_info()["workers"].items()
            if info.get("name") == "late"
        )
        with DaskExecutor(cluster.client, submit_options={"workers": [late]}) as pinned:
            graph = (
                Pipeline("late")
                .with_stage("source", source)
                .with_stage("square", remote_stage(rf.square, pinned), dependencies=["source"])
                .build()
            )
            results = anyio.run(graph.run)
        assert results.data("square")["worker"] == late
        url = worker_metrics_urls(cluster.client)[late]
        assert url is not None
        text = http_get(url).decode()
    assert 'stageflow_remote_stages_total{error_type="",pipeline="late",stage="square"' in text


# --------------------------------------------------------------------------- the CLI demo


def test_the_demo_runs_its_remote_stage_on_the_cluster(tmp_path: Path) -> None:
    metrics_port = free_port()
    env = {
        "OTEL_TRACES_EXPORTER": "none",
        "STAGEFLOW_OTEL_WORKER_METRICS_PORT": str(metrics_port),
    }
    with (
        start_dask_scheduler(tmp_path) as scheduler,
        start_dask_worker(tmp_path, scheduler.address, name="w1", env=env),
    ):
        result = subprocess.run(
            [
                sys.executable,
                "-m",
                "stageflow_otel",
                "demo",
                "--runs",
                "2",
                "--dask",
                scheduler.address,
                "--metrics-port",
                "0",
                "--out",
                str(tmp_path / "out"),
                "--no-live",
            ],
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
            env={**os.environ, "OTEL_TRACES_EXPORTER": "none", "OTEL_SDK_DISABLED": "false"},
        )
        assert result.returncode == 0, result.stdout + result.stderr
        assert "stage.run price_order" in result.stdout
        # The trace tree says where the remote stage ran.
        assert "stage.remote.started" in result.stdout
        text = http_get(f"http://127.0.0.1:{metrics_port}/metrics").decode()
    assert (
        'stageflow_remote_stages_total{error_type="",pipeline="order_fulfilment",'
        'stage="price_order",status="ok"} 2.0'
    ) in text
