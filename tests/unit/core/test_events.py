"""Event sinks, and the lifecycle and wide events a run sends them."""

from __future__ import annotations

import datetime as dt
import json
import logging
import re
from collections.abc import Mapping
from decimal import Decimal
from typing import Any

import anyio
import anyio.lowlevel
import pytest

from stageflow_otel.core import (
    CancellationToken,
    CollectedEvent,
    CollectingEventSink,
    EventSink,
    FanOutEventSink,
    LoggingEventSink,
    NoOpEventSink,
    Pipeline,
    PipelineCancelled,
    PipelineResults,
    RunIdentity,
    StageArtifact,
    StageContext,
    StageEvent,
    StageExecutionError,
    StageOutput,
    StageReturn,
    StageStatus,
)
from stageflow_otel.core.events import Event
from tests.unit.core.support import run

pytestmark = pytest.mark.anyio

RFC3339_UTC = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d{1,9})?Z$")


async def noop(ctx: StageContext) -> StageReturn:
    return None


def parse_timestamp(value: object) -> dt.datetime:
    assert isinstance(value, str)
    assert RFC3339_UTC.match(value), value
    parsed = dt.datetime.fromisoformat(value)
    assert parsed.utcoffset() == dt.timedelta(0)
    return parsed


def stage_events(sink: CollectingEventSink) -> list[tuple[str, Any]]:
    return [(e.type, e.data.get("stage")) for e in sink.events if e.type.startswith("stage.")]


class RaisingSink:
    def __init__(self) -> None:
        self.calls = 0

    async def emit(self, *, type: str, data: Mapping[str, Any]) -> None:
        self.try_emit(type=type, data=data)

    def try_emit(self, *, type: str, data: Mapping[str, Any]) -> None:
        self.calls += 1
        raise RuntimeError("sink is down")

    def __repr__(self) -> str:
        return "RaisingSink()"


# -- the sinks ------------------------------------------------------------------------------


async def test_the_sinks_satisfy_the_protocol() -> None:
    for sink in (NoOpEventSink(), CollectingEventSink(), LoggingEventSink(), FanOutEventSink([])):
        assert isinstance(sink, EventSink)
    assert not isinstance(object(), EventSink)


async def test_the_noop_sink_accepts_everything() -> None:
    sink = NoOpEventSink()
    sink.try_emit(type="a", data={})
    await sink.emit(type="b", data={"x": 1})


async def test_the_collecting_sink_keeps_events_in_order() -> None:
    sink = CollectingEventSink()
    sink.try_emit(type="a", data={"n": 1})
    await sink.emit(type="b", data={"n": 2})
    sink.try_emit(type="a", data={"n": 3})
    assert sink.types == ["a", "b", "a"]
    assert sink.of_type("a") == [{"n": 1}, {"n": 3}]
    assert sink.events[1] == CollectedEvent("b", {"n": 2})
    sink.clear()
    assert sink.events == []


async def test_the_fan_out_sink_reaches_every_sink_despite_a_failing_one(
    caplog: pytest.LogCaptureFixture,
) -> None:
    first, last = CollectingEventSink(), CollectingEventSink()
    broken = RaisingSink()
    fan_out = FanOutEventSink([first, broken, last])
    with caplog.at_level(logging.ERROR, logger="stageflow_otel.events"):
        fan_out.try_emit(type="a", data={"n": 1})
        await fan_out.emit(type="b", data={"n": 2})
    assert first.types == last.types == ["a", "b"]
    assert broken.calls == 2
    assert len(caplog.records) == 2
    assert all("RaisingSink()" in r.getMessage() for r in caplog.records)


async def test_the_logging_sink_logs_type_and_data(caplog: pytest.LogCaptureFixture) -> None:
    sink = LoggingEventSink(level=logging.WARNING, logger_name="test.events")
    with caplog.at_level(logging.WARNING, logger="test.events"):
        sink.try_emit(type="stage.completed", data={"stage": "a"})
        await sink.emit(type="pipeline.completed", data={"status": "ok"})
    assert [r.getMessage() for r in caplog.records] == [
        "stage.completed {'stage': 'a'}",
        "pipeline.completed {'status': 'ok'}",
    ]
    record = caplog.records[0]
    assert record.levelno == logging.WARNING
    assert record.name == "test.events"
    assert record.__dict__["event_type"] == "stage.completed"
    assert record.__dict__["event_data"] == {"stage": "a"}


async def test_the_logging_sink_respects_the_logger_level(caplog: pytest.LogCaptureFixture) -> None:
    sink = LoggingEventSink(level=logging.DEBUG, logger_name="test.quiet")
    with caplog.at_level(logging.INFO, logger="test.quiet"):
        sink.try_emit(type="x", data={})
    assert caplog.records == []


# -- lifecycle events -------------------------------------------------------------------------


async def test_a_successful_run_sends_lifecycle_events_in_order() -> None:
    sink = CollectingEventSink()

    async def load(ctx: StageContext) -> StageReturn:
        return {"b": 1, "a": 2}

    pipeline = (
        Pipeline("orders")
        .with_stage("load", load, kind="enrich")
        .with_stage("price", noop, after=["load"])
    )
    identity = RunIdentity(request_id="req-1", user_id="u-1")
    results = await run(pipeline.build(hooks=[], event_sink=sink), identity=identity)

    assert sink.types == [
        "pipeline.started",
        "stage.started",
        "stage.completed",
        "stage.started",
        "stage.completed",
        "pipeline.completed",
    ]
    for event in sink.events:
        assert event.data["pipeline_run_id"] == results.run_id
        assert event.data["pipeline"] == "orders"
    stamps = [parse_timestamp(e.data["timestamp"]) for e in sink.events]
    assert stamps == sorted(stamps)

    started, load_started, load_done, price_started, price_done, finished = (
        e.data for e in sink.events
    )
    assert started["stage_count"] == 2
    assert started["depth"] == 0
    assert started["request_id"] == "req-1"
    assert started["user_id"] == "u-1"
    assert "session_id" not in started
    assert load_started["stage"] == "load"
    assert load_started["kind"] == "enrich"
    assert load_started["attempt"] == 1
    assert load_started["queue_wait_ms"] >= 0
    assert price_started["stage"] == "price"
    assert price_started["kind"] == "transform"
    assert load_done["stage"] == "load"
    assert load_done["status"] == "ok"
    assert load_done["attempt"] == 1
    assert load_done["data_keys"] == ["a", "b"]
    assert load_done["duration_ms"] >= 0
    assert price_done["data_keys"] == []
    assert finished["status"] == "ok"
    assert finished["stage_count"] == 2
    assert finished["stage_counts"] == {"ok": 2}
    assert finished["duration_ms"] >= 0


async def test_a_failed_run_sends_failure_and_cancellation_events() -> None:
    sink = CollectingEventSink()
    started = anyio.Event()

    async def slow(ctx: StageContext) -> StageReturn:
        started.set()
        await anyio.sleep_forever()
        return None

    async def bad(ctx: StageContext) -> StageReturn:
        await started.wait()
        raise ValueError("bad input")

    pipeline = Pipeline("p").with_stage("slow", slow).with_stage("bad", bad)
    with pytest.raises(StageExecutionError) as info:
        await run(pipeline.build(hooks=[], event_sink=sink))

    assert sink.types[0] == "pipeline.started"
    assert sink.types[-1] == "pipeline.failed"
    assert sorted(stage_events(sink)) == [
        ("stage.cancelled", "slow"),
        ("stage.failed", "bad"),
        ("stage.started", "bad"),
        ("stage.started", "slow"),
    ]
    (failed,) = sink.of_type("stage.failed")
    assert failed["status"] == "fail"
    assert failed["error"] == "bad input"
    assert failed["error_type"] == "ValueError"
    assert failed["duration_ms"] >= 0
    (cancelled,) = sink.of_type("stage.cancelled")
    assert cancelled["status"] == "cancel"
    assert "'bad'" in cancelled["reason"]
    (run_failed,) = sink.of_type("pipeline.failed")
    assert run_failed["status"] == "fail"
    assert run_failed["failed_stage"] == "bad"
    assert run_failed["error"] == "bad input"
    assert run_failed["error_type"] == "ValueError"
    assert run_failed["stage_counts"] == {"fail": 1, "cancel": 1}
    assert isinstance(info.value.results, PipelineResults)
    assert run_failed["pipeline_run_id"] == info.value.results.run_id


async def test_a_skipped_stage_sends_stage_skipped_with_the_reason() -> None:
    sink = CollectingEventSink()

    async def skipper(ctx: StageContext) -> StageReturn:
        return StageOutput.skip("nothing to do")

    await run(Pipeline("p").with_stage("s", skipper).build(hooks=[], event_sink=sink))
    assert sink.types == [
        "pipeline.started",
        "stage.started",
        "stage.skipped",
        "pipeline.completed",
    ]
    (skipped,) = sink.of_type("stage.skipped")
    assert skipped["status"] == "skip"
    assert skipped["reason"] == "nothing to do"
    assert skipped["stage"] == "s"
    assert sink.of_type("pipeline.completed")[0]["stage_counts"] == {"skip": 1}


async def test_a_cancelling_stage_sends_cancellation_events() -> None:
    sink = CollectingEventSink()

    async def stop(ctx: StageContext) -> StageReturn:
        return StageOutput.cancel("enough")

    with pytest.raises(PipelineCancelled):
        await run(
            Pipeline("p")
            .with_stage("a", noop)
            .with_stage("stop", stop, after=["a"])
            .build(hooks=[], event_sink=sink)
        )
    assert sink.types == [
        "pipeline.started",
        "stage.started",
        "stage.completed",
        "stage.started",
        "stage.cancelled",
        "pipeline.cancelled",
    ]
    stage_cancelled, run_cancelled = sink.of_type("stage.cancelled")[0], sink.events[-1].data
    assert stage_cancelled["status"] == "cancel"
    assert stage_cancelled["reason"] == "enough"
    assert run_cancelled["status"] == "cancel"
    assert run_cancelled["stage"] == "stop"
    assert run_cancelled["reason"] == "enough"


async def test_a_token_cancellation_is_reported_without_a_stage() -> None:
    sink = CollectingEventSink()
    token = CancellationToken()

    async def canceller(ctx: StageContext) -> StageReturn:
        token.cancel("operator")
        await anyio.lowlevel.checkpoint()
        return None

    with pytest.raises(PipelineCancelled):
        await run(
            Pipeline("p").with_stage("c", canceller).build(hooks=[], event_sink=sink),
            cancel_token=token,
        )
    assert sink.types[-2:] == ["stage.cancelled", "pipeline.cancelled"]
    final = sink.events[-1].data
    assert final["stage"] is None
    assert final["reason"] == "operator"


async def test_a_raising_sink_is_logged_once_and_dropped_while_the_run_goes_on(
    caplog: pytest.LogCaptureFixture,
) -> None:
    good = CollectingEventSink()
    broken = RaisingSink()
    pipeline = Pipeline("p").with_stage("a", noop).with_stage("b", noop, after=["a"])
    with caplog.at_level(logging.ERROR, logger="stageflow_otel"):
        results = await run(pipeline.build(hooks=[], event_sink=broken), event_sink=good)

    assert results.ok
    assert broken.calls == 1
    assert good.types == [
        "pipeline.started",
        "stage.started",
        "stage.completed",
        "stage.started",
        "stage.completed",
        "pipeline.completed",
    ]
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1
    assert "RaisingSink()" in errors[0].getMessage()
    assert results.run_id in errors[0].getMessage()


async def test_a_raising_sink_is_dropped_for_one_run_only(
    caplog: pytest.LogCaptureFixture,
) -> None:
    broken = RaisingSink()
    graph = Pipeline("p").with_stage("a", noop).build(hooks=[], event_sink=broken)
    with caplog.at_level(logging.ERROR, logger="stageflow_otel"):
        first = await run(graph)
        second = await run(graph)
    assert broken.calls == 2
    messages = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(messages) == 2
    assert first.run_id in messages[0]
    assert second.run_id in messages[1]


async def test_the_graph_sink_and_the_run_sink_both_receive_each_event_once() -> None:
    graph_sink, run_sink = CollectingEventSink(), CollectingEventSink()
    graph = Pipeline("p").with_stage("a", noop).build(hooks=[], event_sink=graph_sink)
    await run(graph, event_sink=run_sink)
    assert graph_sink.types == run_sink.types
    assert len(graph_sink.types) == 4

    same = CollectingEventSink()
    await run(Pipeline("p").with_stage("a", noop).build(hooks=[], event_sink=same), event_sink=same)
    assert len(same.types) == 4


async def test_no_sink_means_no_events_and_no_errors() -> None:
    async def emitting(ctx: StageContext) -> StageReturn:
        ctx.try_emit_event("custom", {"x": 1})
        return StageOutput.ok(events=(StageEvent("e"),))

    results = await run(Pipeline("p").with_stage("a", emitting).build(hooks=[]))
    assert results.ok


async def test_stage_events_artifacts_and_custom_events_are_forwarded() -> None:
    sink = CollectingEventSink()

    async def producer(ctx: StageContext) -> StageReturn:
        ctx.try_emit_event("progress", {"pct": 50})
        return StageOutput.ok(
            {"done": True},
            events=(StageEvent("order.priced", {"total": 12.5}),),
            artifacts=(StageArtifact("receipt", {"url": "s3://r/1"}),),
        )

    results = await run(Pipeline("p").with_stage("prod", producer).build(hooks=[], event_sink=sink))
    assert sink.types == [
        "pipeline.started",
        "stage.started",
        "progress",
        "order.priced",
        "stage.artifact",
        "stage.completed",
        "pipeline.completed",
    ]
    progress = sink.of_type("progress")[0]
    assert progress["pct"] == 50
    assert progress["stage"] == "prod"
    assert progress["pipeline_run_id"] == results.run_id
    priced = sink.of_type("order.priced")[0]
    assert priced["total"] == 12.5
    assert priced["stage"] == "prod"
    artifact = sink.of_type("stage.artifact")[0]
    assert artifact["artifact_type"] == "receipt"
    assert artifact["payload"] == {"url": "s3://r/1"}
    assert artifact["stage"] == "prod"
    # The output keeps them too.
    assert results["prod"].events[0].type == "order.priced"
    assert results["prod"].artifacts[0].type == "receipt"


# -- wide events ----------------------------------------------------------------------------


def assert_flat(payload: Mapping[str, Any]) -> None:
    for key, value in payload.items():
        if isinstance(value, list):
            assert all(isinstance(item, str) for item in value), key
        else:
            assert value is None or isinstance(value, str | int | float | bool), (key, value)
    json.dumps(payload)


async def test_wide_events_are_flat_and_serialisable() -> None:
    sink = CollectingEventSink()

    async def router(ctx: StageContext) -> StageReturn:
        return {"skip_reason": "cached", "extra": {"nested": True}}

    async def bad(ctx: StageContext) -> StageReturn:
        raise KeyError("k")

    pipeline = (
        Pipeline("p")
        .with_stage("router", router)
        .with_stage("cond", noop, after=["router"], conditional=True)
        .with_stage("bad", bad, after=["cond"])
    )
    graph = pipeline.build(
        hooks=[], event_sink=sink, emit_stage_wide_events=True, emit_pipeline_wide_event=True
    )
    identity = RunIdentity(request_id="r-1", org_id="o-1")
    with pytest.raises(StageExecutionError):
        await run(graph, identity=identity)

    stage_wide = sink.of_type("stage.wide")
    assert [e["stage"] for e in stage_wide] == ["router", "cond", "bad"]
    for payload in stage_wide:
        assert_flat(payload)
        assert payload["pipeline_run_id"] == identity.pipeline_run_id
        assert payload["request_id"] == "r-1"
        assert payload["org_id"] == "o-1"
        assert payload["pipeline"] == "p"
        parse_timestamp(payload["started_at"])
        parse_timestamp(payload["ended_at"])
        assert payload["duration_ms"] >= 0
    router_wide, cond_wide, bad_wide = stage_wide
    assert router_wide["status"] == "ok"
    assert router_wide["data_keys"] == ["extra", "skip_reason"]
    assert router_wide["error_type"] is None
    assert cond_wide["status"] == "skip"
    assert cond_wide["skip_reason"] == "cached"
    assert bad_wide["status"] == "fail"
    assert bad_wide["error_type"] == "KeyError"

    (pipeline_wide,) = sink.of_type("pipeline.wide")
    assert_flat(pipeline_wide)
    assert pipeline_wide["status"] == "fail"
    assert pipeline_wide["failed_stage"] == "bad"
    assert pipeline_wide["stage_count"] == 3
    assert pipeline_wide["stages_run"] == 3
    assert pipeline_wide["stages_ok"] == 1
    assert pipeline_wide["stages_skip"] == 1
    assert pipeline_wide["stages_fail"] == 1
    assert pipeline_wide["stages_cancel"] == 0


async def test_wide_events_are_off_by_default() -> None:
    sink = CollectingEventSink()
    await run(Pipeline("p").with_stage("a", noop).build(hooks=[], event_sink=sink))
    assert not any(t.endswith(".wide") for t in sink.types)


class TypedSink:
    """Receives the typed events, as the OpenTelemetry log sink does."""

    def __init__(self) -> None:
        self.events: list[Event] = []

    def try_emit_event(self, event: Event) -> None:
        self.events.append(event)

    def try_emit(self, *, type: str, data: Mapping[str, Any]) -> None:
        raise AssertionError("a typed sink receives typed events")

    async def emit(self, *, type: str, data: Mapping[str, Any]) -> None:
        raise AssertionError("a typed sink receives typed events")


FLAT_SCALARS = (str, bool, int, float)


def is_flat_value(value: object) -> bool:
    if type(value) is list:
        return all(type(item) is str for item in value)
    return type(value) in FLAT_SCALARS


async def test_the_engine_marks_only_events_whose_fields_are_all_flat_values() -> None:
    sink = TypedSink()

    async def load(ctx: StageContext) -> StageReturn:
        return {"b": None, "a": [1, {"x": 2}]}  # the values stay out of the event

    async def broken(ctx: StageContext) -> StageReturn:
        raise ValueError({"not": "text"})

    async def timed(ctx: StageContext) -> StageReturn:
        return StageOutput(status=StageStatus.OK, duration_ms=Decimal("1.5"))  # type: ignore[arg-type]

    async def skipped(ctx: StageContext) -> StageReturn:
        return StageOutput.skip(reason={"why": ["a", 1]})  # type: ignore[arg-type]

    pipeline = (
        Pipeline("flat")
        .with_stage("load", load)
        .with_stage("broken", broken)
        .with_stage("skipped", skipped)
        .with_stage("empty", noop)
        .with_stage("timed", timed)
    )
    with pytest.raises(StageExecutionError):
        await run(pipeline.build(hooks=[], event_sink=sink, failure_mode="continue"))

    flat = {(e.type, e.fields.get("stage")) for e in sink.events if e.flat}
    assert flat == {
        *(("stage.started", name) for name in ("load", "broken", "skipped", "empty", "timed")),
        ("stage.completed", "load"),
        ("stage.completed", "empty"),
    }
    for event in sink.events:
        if event.flat:
            assert all(is_flat_value(v) for v in event.fields.values()), event
            assert not {"trace_id", "span_id", "trace_flags"} & set(event.fields), event
    completed = {e.fields["stage"]: e.fields for e in sink.events if e.type == "stage.completed"}
    assert completed["load"]["data_keys"] == ["a", "b"]
    assert not Event.from_payload("stage.started", {"stage": "x"}).flat
