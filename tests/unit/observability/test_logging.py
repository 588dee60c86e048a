"""structlog: run context on every line inside a run, and the canonical wide lines."""

from __future__ import annotations

from collections.abc import MutableMapping
from typing import Any

import anyio
import pytest
import structlog

from stageflow_otel import Pipeline, StageContext, StageOutput
from stageflow_otel.observability import add_stageflow_context
from stageflow_otel.observability.records import current_run, current_stage
from stageflow_otel.testing import InMemoryTelemetry

from .support import HANG, hanging_stage, hex_ids, ok_stage, raising_stage, run_graph

pytestmark = pytest.mark.anyio

Entries = list[MutableMapping[str, Any]]


def lines(entries: Entries, event: str) -> list[MutableMapping[str, Any]]:
    return [entry for entry in entries if entry["event"] == event]


async def test_lines_inside_a_stage_carry_the_run_context(
    telemetry: InMemoryTelemetry, logs: Entries
) -> None:
    async def charge(ctx: StageContext) -> None:
        structlog.get_logger("shop").info("charging card", amount=12)

    graph = Pipeline("checkout").with_stage("charge", charge).build(hooks=telemetry.hooks)

    await run_graph(graph)

    [line] = lines(logs, "charging card")
    trace_id, span_id = hex_ids(telemetry.span("stage.run charge"))
    run_id = telemetry.span("pipeline.run checkout").attributes["stageflow.run.id"]  # type: ignore[index]
    assert line == {
        "event": "charging card",
        "amount": 12,
        "log_level": "info",
        "trace_id": trace_id,
        "span_id": span_id,
        "pipeline_run_id": run_id,
        "pipeline": "checkout",
        "stage": "charge",
    }


async def test_lines_of_a_sync_stage_in_a_worker_thread_carry_the_run_context(
    telemetry: InMemoryTelemetry, logs: Entries
) -> None:
    def blocking(ctx: StageContext) -> None:
        structlog.get_logger("shop").info("blocking work")

    graph = Pipeline("p").with_stage("sync", blocking).build(hooks=telemetry.hooks)

    await run_graph(graph)

    [line] = lines(logs, "blocking work")
    assert (line["trace_id"], line["span_id"]) == hex_ids(telemetry.span("stage.run sync"))
    assert (line["pipeline"], line["stage"]) == ("p", "sync")


async def test_outside_a_run_the_processor_adds_nothing() -> None:
    event = {"event": "idle", "x": 1}

    assert add_stageflow_context(None, "info", dict(event)) == event


async def test_the_processor_never_raises() -> None:
    # Something broken in the context (here: a record without the fields) must not break
    # the caller's logging.
    token = current_stage.set(object())  # type: ignore[arg-type]
    try:
        assert add_stageflow_context(None, "info", {"event": "x"}) == {"event": "x"}
    finally:
        current_stage.reset(token)
    assert current_run.get() is None


@pytest.mark.parametrize(
    ("ending", "stage_statuses", "run_status"),
    [
        ("ok", {"a": "ok", "b": "ok"}, "ok"),
        ("fail", {"a": "ok", "b": "fail"}, "fail"),
        ("cancel_output", {"a": "ok", "b": "cancel"}, "cancel"),
        ("caller_cancelled", {"a": "ok", "b": "cancel"}, "cancel"),
    ],
)
async def test_canonical_lines_for_every_ending(
    telemetry: InMemoryTelemetry,
    logs: Entries,
    ending: str,
    stage_statuses: dict[str, str],
    run_status: str,
) -> None:
    caller = anyio.CancelScope()

    async def stop(ctx: StageContext) -> StageOutput:
        return StageOutput.cancel("customer left")

    async def cancel_the_caller(ctx: StageContext) -> None:
        caller.cancel()
        await hanging_stage(ctx)

    second = {
        "ok": ok_stage,
        "fail": raising_stage,
        "cancel_output": stop,
        "caller_cancelled": cancel_the_caller,
    }[ending]
    graph = (
        Pipeline("p")
        .with_stage("a", ok_stage)
        .with_stage("b", second, dependencies=["a"])
        .build(hooks=telemetry.hooks)
    )

    with anyio.fail_after(HANG), caller:
        await run_graph(graph)

    stage_lines = lines(logs, "stage.wide")
    assert {line["stage"]: line["status"] for line in stage_lines} == stage_statuses
    [run_line] = lines(logs, "pipeline.wide")
    assert run_line["status"] == run_status
    assert run_line["log_level"] == ("warning" if run_status == "fail" else "info")
    assert (run_line["trace_id"], run_line["span_id"]) == hex_ids(telemetry.span("pipeline.run p"))
    for line in stage_lines:
        span = telemetry.span(f"stage.run {line['stage']}")
        assert (line["trace_id"], line["span_id"]) == hex_ids(span)
        assert line["pipeline_run_id"] == run_line["pipeline_run_id"]
    if ending == "fail":
        [failed] = [line for line in stage_lines if line["stage"] == "b"]
        assert (failed["error_type"], failed["error"], failed["log_level"]) == (
            "ValueError",
            "bad input",
            "warning",
        )
        assert (run_line["failed_stage"], run_line["error_type"]) == ("b", "ValueError")
