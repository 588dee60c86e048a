"""Recorders: the seam through which each kind of telemetry is recorded."""

from __future__ import annotations

import logging
from typing import Any

import pytest

from stageflow_otel import Pipeline
from stageflow_otel.core import StageCall
from stageflow_otel.core.events import Event
from stageflow_otel.observability.recorders import Recorder
from stageflow_otel.observability.records import (
    InterceptorOutcome,
    RunOutcome,
    RunRecord,
    StageOutcome,
    StageRecord,
)
from stageflow_otel.testing import in_memory_telemetry

from .support import RETRY_ONCE, fails_once, ok_stage, raising_stage, run_graph

pytestmark = pytest.mark.anyio


class SlowStages(Recorder):
    """A custom recorder: which stages took longer than a budget, and every run's status."""

    def __init__(self) -> None:
        self.seen: list[tuple[str, Any]] = []

    def run_ended(self, run: RunRecord, outcome: RunOutcome) -> None:
        self.seen.append(("run", (run.pipeline, outcome.status, outcome.stages_run)))

    def stage_ended(self, stage: StageRecord, call: StageCall, outcome: StageOutcome) -> None:
        trace_id = stage.span_context.trace_id
        self.seen.append(("stage", (call.stage, outcome.status, outcome.error_type, trace_id)))

    def stage_retried(self, stage: StageRecord, event: Event) -> None:
        self.seen.append(("retry", (stage.name, event.fields["attempt"])))

    def interceptor_ended(self, call: StageCall, outcome: InterceptorOutcome) -> None:
        self.seen.append(("interceptor", (outcome.name, outcome.action)))


async def test_a_custom_recorder_is_told_of_every_run_stage_retry_and_interceptor() -> None:
    recorder = SlowStages()
    recorded = in_memory_telemetry(canonical_logs=False, recorders=[recorder])
    graph = (
        Pipeline("p")
        .with_stage("a", ok_stage)
        .with_stage("b", fails_once(), dependencies=["a"], interceptors=[RETRY_ONCE])
        .build(hooks=recorded.hooks)
    )
    await run_graph(graph)
    recorded.shutdown()

    trace_id = recorded.span("pipeline.run p").context.trace_id
    assert recorder.seen == [
        ("stage", ("a", "ok", None, trace_id)),
        ("retry", ("b", 2)),
        ("interceptor", ("retry", "retry")),
        ("stage", ("b", "ok", None, trace_id)),
        ("run", ("p", "ok", 2)),
    ]
    # The built-in recorders still did their part.
    labels = {"pipeline": "p", "stage": "b", "status": "ok", "error_type": ""}
    assert recorded.sample("stageflow_stage_runs_total", labels) == 1.0


async def test_a_failure_reaches_the_recorder_with_its_error_type() -> None:
    recorder = SlowStages()
    recorded = in_memory_telemetry(canonical_logs=False, metrics=False, recorders=[recorder])
    graph = Pipeline("p").with_stage("a", raising_stage).build(hooks=recorded.hooks)

    await run_graph(graph)
    recorded.shutdown()

    assert [entry[1][:3] for entry in recorder.seen] == [
        ("a", "fail", "ValueError"),
        ("p", "fail", 1),
    ]


class Broken(Recorder):
    def __init__(self) -> None:
        self.calls = 0

    def stage_started(self, stage: StageRecord, call: StageCall) -> None:
        self.calls += 1
        raise RuntimeError("recorder bug")

    def stage_ended(self, stage: StageRecord, call: StageCall, outcome: StageOutcome) -> None:
        self.calls += 1


async def test_a_recorder_that_raises_is_logged_once_and_left_out(
    caplog: pytest.LogCaptureFixture,
) -> None:
    broken = Broken()
    recorder = SlowStages()
    recorded = in_memory_telemetry(canonical_logs=False, recorders=[broken, recorder])
    graph = (
        Pipeline("p")
        .with_stage("a", ok_stage)
        .with_stage("b", ok_stage, dependencies=["a"])
        .build(hooks=recorded.hooks)
    )

    with caplog.at_level(logging.ERROR, logger="stageflow_otel.observability"):
        await run_graph(graph)
    recorded.shutdown()

    assert broken.calls == 1  # raised once, never called again, not even for stage_ended
    errors = [r for r in caplog.records if "records nothing more" in r.getMessage()]
    assert len(errors) == 1
    assert [entry[0] for entry in recorder.seen] == ["stage", "stage", "run"]
    assert recorded.tree() == ["pipeline.run p", "  stage.run a", "  stage.run b"]
    assert recorded.open_spans() == []
