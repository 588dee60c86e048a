"""Run stores against real databases: SQLite files and a PostgreSQL server the suite starts.

Every test runs on both stores (the ``store_url`` fixture): what a run records, checkpoints as
deltas, resume (restored stages not run again, the span link), refusals, a failing store, and
a process killed mid-run.
"""

from __future__ import annotations

import datetime as _dt
import json
import logging
import os
import signal
import subprocess
import sys
import uuid
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import anyio
import pytest

from stageflow_otel import Pipeline, PipelineResults, RunHook, RunIdentity, StageContext
from stageflow_otel.compression import size_of
from stageflow_otel.core import StageExecutionError
from stageflow_otel.runs import (
    RecordingStore,
    ResumeError,
    SQLiteRunStore,
    open_store,
    restored_outputs,
    resume,
)
from stageflow_otel.runs._sql import SQLRunStore
from stageflow_otel.testing import in_memory_telemetry
from tests.integration import durable_pipeline
from tests.support.servers import PostgresServer, start_postgres, wait_until

pytestmark = pytest.mark.anyio
REPO_ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def postgres_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PostgresServer]:
    with start_postgres(tmp_path_factory.mktemp("postgres")) as server:
        yield server


@pytest.fixture(params=["sqlite", "postgres"])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A fresh, empty store: a SQLite file, or a new database on the suite's PostgreSQL."""
    if request.param == "sqlite":
        return f"sqlite://{tmp_path / 'runs.sqlite3'}"
    import psycopg

    server: PostgresServer = request.getfixturevalue("postgres_server")
    name = f"runs_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(server.url, autocommit=True) as connection:
        connection.execute(f"CREATE DATABASE {name}")
    return server.url.rsplit("/", 1)[0] + f"/{name}"


@pytest.fixture
def counts_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    path = str(tmp_path / "counts.txt")
    monkeypatch.setenv("DURABLE_COUNTS", path)
    monkeypatch.delenv("DURABLE_FAIL", raising=False)
    monkeypatch.delenv("DURABLE_BLOCK", raising=False)
    return path


def opened(url: str, **options: Any) -> RecordingStore:
    return open_store(url, flush_interval=0.01, **options)


async def run_failing(
    store: RecordingStore,
    monkeypatch: pytest.MonkeyPatch,
    stage: str,
    hooks: Sequence[RunHook] | None = None,
) -> str:
    """Run the durable pipeline with ``stage`` failing; the failed run's id."""
    monkeypatch.setenv("DURABLE_FAIL", stage)
    graph = durable_pipeline.build().build(store=store, hooks=hooks)
    with pytest.raises(StageExecutionError) as failed:
        await graph.run({"order": {"id": 7}}, identity=RunIdentity(request_id="req-1"))
    monkeypatch.delenv("DURABLE_FAIL")
    store.flush()
    results = failed.value.results
    assert isinstance(results, PipelineResults)
    return results.run_id


async def test_a_run_is_recorded_without_payload_values(store_url: str, counts_file: str) -> None:
    recorded = in_memory_telemetry(canonical_logs=False)
    store = opened(store_url)
    try:
        graph = durable_pipeline.build().build(store=store, hooks=recorded.hooks)
        results = await graph.run(
            {"order": {"id": 7, "card": "4111"}}, identity=RunIdentity(user_id="u-1")
        )
        assert store.flush()
        run = store.get_run(results.run_id)
        checkpoints = store.read_checkpoints(results.run_id)
    finally:
        store.close()
        recorded.shutdown()
    assert run is not None
    span = next(s for s in recorded.exporter.get_finished_spans() if s.name.startswith("pipeline"))
    assert run.pipeline == "durable"
    assert run.status == "ok"
    assert run.trace_id == f"{span.context.trace_id:032x}"
    assert run.span_id == f"{span.context.span_id:016x}"
    assert run.identity == {"user_id": "u-1"}
    assert run.duration_ms is not None
    assert run.duration_ms > 0
    assert abs(run.started_at - _dt.datetime.now(_dt.UTC)) < _dt.timedelta(minutes=5)
    assert [(s.name, s.status, s.attempts) for s in run.stages] == [
        (name, "ok", 1) for name in ("order", "price", "audit", "pay", "ship")
    ]
    assert all(s.duration_ms is not None for s in run.stages)
    # No checkpoints asked for: no input, no outputs.
    assert run.input is None
    assert not run.checkpoints
    assert checkpoints == []


async def test_a_failed_run_names_the_stage_and_error_type(
    store_url: str, counts_file: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = opened(store_url)
    try:
        run_id = await run_failing(store, monkeypatch, "pay")
        run = store.get_run(run_id[:10])
    finally:
        store.close()
    assert run is not None
    assert (run.status, run.failed_stage, run.error_type) == ("fail", "pay", "ConnectionError")
    assert run.error is not None
    assert "the service is down" in run.error
    statuses = {s.name: s.status for s in run.stages}
    assert statuses == {
        "order": "ok",
        "price": "ok",
        "audit": "ok",
        "pay": "fail",
        "ship": "pending",
    }
    failed = next(s for s in run.stages if s.name == "pay")
    assert failed.error_type == "ConnectionError"


async def test_checkpoints_are_deltas_that_restore_the_outputs(
    store_url: str, counts_file: str
) -> None:
    store = opened(store_url, checkpoints=True)
    try:
        results = await durable_pipeline.build().build(store=store).run({"order": {"id": 7}})
        store.flush()
        run = store.get_run(results.run_id)
        assert run is not None
        checkpoints = store.read_checkpoints(run.run_id)
        outputs = restored_outputs(store, run)
    finally:
        store.close()
    assert run.input == {"order": {"id": 7}}
    assert [c.seq for c in checkpoints] == [1, 2, 3, 4, 5]
    # Each checkpoint is the delta from the run's previous snapshot, {stage: output} so far.
    assert [c.base_seq for c in checkpoints] == [None, 1, 2, 3, 4]
    snapshot = {name: dict(results.data(name)) for name in [c.stage for c in checkpoints]}
    assert checkpoints[-1].full_size == size_of(snapshot)
    assert [round(c.full_size / c.size) for c in checkpoints] == [1, 2, 3, 4, 5]
    assert {name: dict(output.data) for name, output in outputs.items()} == {
        name: dict(results.data(name)) for name in results
    }


async def test_redact_runs_before_values_are_stored(store_url: str) -> None:
    def redact(key: str, value: Any) -> Any:
        return "[redacted]" if key == "card" else value

    store = opened(store_url, checkpoints=True, redact=redact)

    async def charge(ctx: StageContext) -> dict[str, Any]:
        return {"card": "4111 1111 1111 1111", "amount": 12}

    try:
        graph = Pipeline("cards").with_stage("charge", charge).build(store=store)
        results = await graph.run({"card": "4111 1111 1111 1111"})
        store.flush()
        run = store.get_run(results.run_id)
        assert run is not None
        outputs = restored_outputs(store, run)
        stored = json.dumps([c.delta for c in store.read_checkpoints(run.run_id)])
    finally:
        store.close()
    assert run.input == {"card": "[redacted]"}
    assert dict(outputs["charge"].data) == {"card": "[redacted]", "amount": 12}
    assert "4111" not in stored


async def test_resume_runs_only_what_did_not_complete(
    store_url: str, counts_file: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = opened(store_url, checkpoints=True)
    recorded = in_memory_telemetry(canonical_logs=False)
    try:
        run_id = await run_failing(store, monkeypatch, "pay", recorded.hooks)
        original = store.get_run(run_id)
        assert original is not None
        assert original.trace_id is not None
        graph = durable_pipeline.build().build(store=store, hooks=recorded.hooks)
        results = await resume(run_id, graph, store=store)
        store.flush()
        resumed = store.get_run(results.run_id)
    finally:
        store.close()
        recorded.shutdown()
    # order, price and audit ran once (before the failure); pay twice; ship once.
    assert durable_pipeline.counts(counts_file) == {
        "order": 1,
        "price": 1,
        "audit": 1,
        "pay": 2,
        "ship": 1,
    }
    assert results.ok
    assert set(results) == {"order", "price", "audit", "pay", "ship"}
    assert results.data("price")["price"] is True
    assert resumed is not None
    assert resumed.resumed_from == run_id
    assert resumed.identity == {"request_id": "req-1"}
    assert resumed.input == {"order": {"id": 7}}
    assert {s.name: (s.status, s.restored) for s in resumed.stages} == {
        "order": ("ok", True),
        "price": ("ok", True),
        "audit": ("ok", True),
        "pay": ("ok", False),
        "ship": ("ok", False),
    }
    spans = recorded.exporter.get_finished_spans()
    original_span, run_span = [s for s in spans if s.name == "pipeline.run durable"]
    assert original_span.attributes is not None
    assert "stageflow.run.resumed_from" not in original_span.attributes
    assert run_span.attributes is not None
    assert run_span.attributes["stageflow.run.resumed_from"] == run_id
    assert run_span.attributes["stageflow.run.restored_stages"] == 3
    assert [
        (
            f"{link.context.trace_id:032x}",
            f"{link.context.span_id:016x}",
            dict(link.attributes or {}),
        )
        for link in run_span.links
    ] == [(original.trace_id, original.span_id, {"stageflow.link.role": "resumed_from"})]
    # Restored stages are not run, so they have no span.
    trace_id = run_span.context.trace_id
    resumed_stages = [s for s in spans if s.context.trace_id == trace_id]
    assert sorted(s.name for s in resumed_stages if s.name.startswith("stage.run")) == [
        "stage.run pay",
        "stage.run ship",
    ]


async def test_resume_refuses_a_changed_pipeline_and_says_what_changed(
    store_url: str, counts_file: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = opened(store_url, checkpoints=True)
    try:
        run_id = await run_failing(store, monkeypatch, "pay")

        async def other(ctx: StageContext) -> None:
            return None

        changed = (
            Pipeline("durable")
            .with_stage("order", durable_pipeline._step)
            .with_stage("price", durable_pipeline._step, dependencies=["order"])
            .with_stage("pay", other, dependencies=["price"])
            .with_stage("ship", durable_pipeline._step, dependencies=["pay"])
            .with_stage("notify", durable_pipeline._step, dependencies=["ship"])
        )
        with pytest.raises(ResumeError) as refused:
            await resume(run_id, changed, store=store)
    finally:
        store.close()
    assert "changed since run" in str(refused.value)
    assert refused.value.changes == (
        "stage 'audit' was removed",
        "stage 'notify' was added",
        (
            "stage 'pay': dependencies ['price', 'audit'] -> ['price']; function "
            "'tests.integration.durable_pipeline._step' -> "
            "'tests.integration.test_durable_runs."
            "test_resume_refuses_a_changed_pipeline_and_says_what_changed.<locals>.other'"
        ),
    )


async def test_resume_refuses_what_it_cannot_resume(
    store_url: str, counts_file: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    graph = durable_pipeline.build().build()
    without = opened(store_url)
    try:
        failed_id = await run_failing(without, monkeypatch, "pay")
        with pytest.raises(ResumeError, match="recorded without checkpoints"):
            await resume(failed_id, graph, store=without)
    finally:
        without.close()
    store = opened(store_url, checkpoints=True)
    try:
        ok = await durable_pipeline.build().build(store=store).run({})
        with pytest.raises(ResumeError, match="succeeded; there is nothing to resume"):
            await resume(ok.run_id, graph, store=store)
        with pytest.raises(ResumeError, match="there is no run 'nope'"):
            await resume("nope", graph, store=store)
    finally:
        store.close()


async def test_runs_are_listed_newest_first_with_filters(store_url: str, counts_file: str) -> None:
    store = opened(store_url)

    async def boom(ctx: StageContext) -> None:
        raise ValueError("no")

    try:
        first = await durable_pipeline.build().build(store=store).run({})
        with pytest.raises(StageExecutionError):
            await Pipeline("other").with_stage("boom", boom).run(store=store)
        last = await durable_pipeline.build().build(store=store).run({})
        store.flush()
        everything = store.list_runs()
        durable = store.list_runs(pipeline="durable")
        failed = store.list_runs(status="fail")
        recent = store.list_runs(since=everything[0].started_at)
        future = store.list_runs(since=_dt.datetime.now(_dt.UTC) + _dt.timedelta(hours=1))
        one = store.list_runs(limit=1)
        with pytest.raises(ValueError, match="status must be one of"):
            store.list_runs(status="done")
    finally:
        store.close()
    assert [r.pipeline for r in everything] == ["durable", "other", "durable"]
    assert [r.run_id for r in durable] == [last.run_id, first.run_id]
    assert [(r.pipeline, r.failed_stage) for r in failed] == [("other", "boom")]
    assert [r.run_id for r in recent] == [last.run_id]
    assert future == []
    assert [r.run_id for r in one] == [last.run_id]
    assert everything[0].stages == ()  # listings leave the stages out


def spawn_blocked_run(store_url: str, counts_file: str) -> subprocess.Popen[bytes]:
    """The durable pipeline in another process, recording in ``store_url``, stuck in ``pay``."""
    environment = {**os.environ, "DURABLE_BLOCK": "pay", "DURABLE_COUNTS": counts_file}
    environment["PYTHONPATH"] = os.pathsep.join(
        filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH")])
    )
    code = (
        "import sys, anyio\n"
        "from tests.integration import durable_pipeline\n"
        "anyio.run(durable_pipeline.run_in_store, sys.argv[1])\n"
    )
    return subprocess.Popen(
        [sys.executable, "-c", code, store_url],
        env=environment,
        cwd=REPO_ROOT,
        stderr=subprocess.PIPE,
    )


class _BrokenStore(SQLiteRunStore):
    def write(self, records: Any, /) -> int:
        raise OSError("disk full")


async def test_a_failing_store_is_counted_and_logged_and_the_run_goes_on(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    recorded = in_memory_telemetry(canonical_logs=False)
    listener = recorded.telemetry.store_listener("sqlite")
    store = _BrokenStore(tmp_path / "runs.sqlite3", listener=listener, flush_interval=0.01)
    store.writer.start()
    store._sink._worker.retry_base_delay = 0.001  # type: ignore[union-attr]
    caplog.set_level(logging.WARNING, logger="stageflow_otel")

    async def work(ctx: StageContext) -> dict[str, int]:
        return {"n": 1}

    try:
        results = await Pipeline("steady").with_stage("work", work).run(store=store)
        store.flush()
        statistics = store.statistics()
    finally:
        store.close()
        recorded.shutdown()
    assert results.ok
    assert statistics is not None
    assert statistics.export_failed == 3  # started, the stage, ended
    registry = recorded.registry
    failed = registry.get_sample_value(
        "stageflow_store_writes_total", {"store": "sqlite", "result": "failed"}
    )
    assert failed == 3.0
    assert registry.get_sample_value(
        "stageflow_store_write_duration_seconds_count", {"store": "sqlite"}
    )
    assert any("could not export" in r.getMessage() for r in caplog.records)


async def test_store_metrics_count_what_was_written(tmp_path: Path) -> None:
    recorded = in_memory_telemetry(canonical_logs=False)
    store = SQLiteRunStore(
        tmp_path / "runs.sqlite3",
        checkpoints=True,
        listener=recorded.telemetry.store_listener("sqlite"),
    )

    async def work(ctx: StageContext) -> dict[str, int]:
        return {"n": 1}

    try:
        await Pipeline("metered").with_stage("work", work).run(store=store)
        store.flush()
    finally:
        store.close()
        recorded.shutdown()
    registry = recorded.registry
    written = registry.get_sample_value(
        "stageflow_store_writes_total", {"store": "sqlite", "result": "written"}
    )
    assert written == 3.0
    assert (registry.get_sample_value("stageflow_store_bytes_total", {"store": "sqlite"}) or 0) > 0


async def test_a_run_killed_mid_way_resumes_without_rerunning_what_completed(
    store_url: str, counts_file: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    process = spawn_blocked_run(store_url, counts_file)
    reader = opened(store_url, checkpoints=True)
    try:

        def price_and_audit_checkpointed() -> bool:
            if process.poll() is not None:
                raise AssertionError(
                    f"the run exited early: {process.stderr and process.stderr.read()!r}"
                )
            runs = reader.list_runs(pipeline="durable")
            return bool(runs) and len(reader.read_checkpoints(runs[0].run_id)) == 3

        await anyio.to_thread.run_sync(
            lambda: wait_until(price_and_audit_checkpointed, 60, 0.05, what="3 checkpoints")
        )
        process.send_signal(signal.SIGKILL)
        process.wait()  # reaped: no process of that id is left
        (killed,) = reader.list_runs(pipeline="durable")
        assert killed.status == "running"  # its end was never written
        assert durable_pipeline.counts(counts_file)["pay"] == 1  # it was blocked in pay

        results = await resume(killed.run_id, durable_pipeline.build(), store=reader)
    finally:
        reader.close()
        if process.poll() is None:
            process.kill()
            process.wait()
        if process.stderr is not None:
            process.stderr.close()
    assert results.ok
    assert durable_pipeline.counts(counts_file) == {
        "order": 1,
        "price": 1,
        "audit": 1,
        "pay": 2,
        "ship": 1,
    }


async def test_a_postgres_store_reconnects_after_the_server_drops_it(
    postgres_server: PostgresServer, counts_file: str
) -> None:
    import psycopg

    store = opened(postgres_server.url)
    graph = durable_pipeline.build().build(store=store)
    try:
        first = await graph.run({})
        store.flush()
        with psycopg.connect(postgres_server.url, autocommit=True) as admin:
            ended = admin.execute(
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                "WHERE datname = current_database() AND pid <> pg_backend_pid() "
                "AND backend_type = 'client backend'"
            ).fetchone()
        assert ended is not None
        assert ended[0] >= 1
        second = await graph.run({})
        store.flush()
        statistics = store.statistics()
        recorded = {run.run_id: run.status for run in store.list_runs(limit=200)}
    finally:
        store.close()
    assert statistics is not None
    assert statistics.export_failed == 0
    assert statistics.export_retries >= 1  # the write on the dropped connection
    assert recorded[first.run_id] == "ok"
    assert recorded[second.run_id] == "ok"


async def test_the_environment_records_runs_given_no_store(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, counts_file: str
) -> None:
    from stageflow_otel.runs import store_from_environment

    url = f"sqlite://{tmp_path / 'env.sqlite3'}"
    monkeypatch.setenv("STAGEFLOW_OTEL_STORE", url)
    monkeypatch.setenv("STAGEFLOW_OTEL_STORE_CHECKPOINTS", "on")
    results = await durable_pipeline.build().run({"order": {"id": 1}})
    store = store_from_environment()
    assert store is not None
    assert store is store_from_environment()  # one store per URL per process
    store.flush()
    run = store.get_run(results.run_id)
    assert run is not None
    assert run.checkpoints
    assert run.input == {"order": {"id": 1}}
    monkeypatch.setenv("STAGEFLOW_OTEL_STORE_CHECKPOINTS", "maybe")
    with pytest.raises(ValueError, match="STAGEFLOW_OTEL_STORE_CHECKPOINTS='maybe' is not a"):
        store_from_environment()
    monkeypatch.setenv("STAGEFLOW_OTEL_STORE", "mysql://db")
    monkeypatch.delenv("STAGEFLOW_OTEL_STORE_CHECKPOINTS")
    with pytest.raises(ValueError, match=r"\$STAGEFLOW_OTEL_STORE: unknown kind of store 'mysql'"):
        store_from_environment()


async def test_old_ended_runs_are_deleted_and_running_ones_kept(
    store_url: str, counts_file: str
) -> None:
    store = opened(store_url, checkpoints=True)
    assert isinstance(store, SQLRunStore)
    try:
        first = await durable_pipeline.build().build(store=store).run({})
        second = await durable_pipeline.build().build(store=store).run({})
        store.flush()
        later = _dt.datetime.now(_dt.UTC) + _dt.timedelta(seconds=1)
        running = store.list_runs(limit=2)[0]
        # A run whose end was never recorded (its process died) stays "running".
        with store.transaction() as cursor:
            cursor.execute(
                store._sql("UPDATE stageflow_runs SET status = 'running' WHERE run_id = ?"),
                (running.run_id,),
            )
        with pytest.raises(ValueError, match="status must be one of ok, fail, cancel"):
            store.delete_runs(before=later, status="running")
        assert store.delete_runs(before=later, pipeline="other") == 0
        assert store.delete_runs(before=later) == 1
        left = store.list_runs()
        gone = first if running.run_id == second.run_id else second
        assert store.get_run(gone.run_id) is None
        assert store.read_checkpoints(gone.run_id) == []
        assert store.read_checkpoints(running.run_id) != []
    finally:
        store.close()
    assert [r.run_id for r in left] == [running.run_id]
