"""Properties of the telemetry of random DAGs with random failures.

For every run: one stage span per result, each a child of the run span with the result's
status; metric counts per status equal the results; and each stage has exactly one terminal
lifecycle event, from its own span, agreeing with its result.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

import anyio
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from stageflow_otel import (
    CollectingEventSink,
    Pipeline,
    PipelineCancelled,
    StageContext,
    StageExecutionError,
    StageOutput,
)
from stageflow_otel.testing import in_memory_telemetry

pytestmark = pytest.mark.anyio

HANG = 10.0
TERMINAL = {
    "stage.completed": "ok",
    "stage.failed": "fail",
    "stage.skipped": "skip",
    "stage.cancelled": "cancel",
}
Behaviour = Literal["ok", "raise", "fail", "skip"]


@dataclass(frozen=True)
class StagePlan:
    name: str
    dependencies: tuple[str, ...]
    behaviour: Behaviour
    checkpoints: int


@st.composite
def dags(draw: st.DrawFn) -> list[StagePlan]:
    """A random DAG: each stage depends on some earlier ones, and behaves in some way."""
    size = draw(st.integers(min_value=1, max_value=7))
    plans: list[StagePlan] = []
    for index in range(size):
        earlier = [plan.name for plan in plans]
        dependencies = draw(st.lists(st.sampled_from(earlier), unique=True)) if earlier else []
        plans.append(
            StagePlan(
                name=f"s{index}",
                dependencies=tuple(dependencies),
                behaviour=draw(st.sampled_from(["ok", "ok", "raise", "fail", "skip"])),
                checkpoints=draw(st.integers(min_value=0, max_value=3)),
            )
        )
    return plans


def runner(plan: StagePlan) -> Any:
    async def stage(ctx: StageContext) -> StageOutput | None:
        for _ in range(plan.checkpoints):
            await anyio.lowlevel.checkpoint()
        if plan.behaviour == "raise":
            raise ValueError(f"{plan.name} broke")
        if plan.behaviour == "fail":
            return StageOutput.fail(f"{plan.name} failed")
        if plan.behaviour == "skip":
            return StageOutput.skip("not needed")
        return None

    return stage


def status_counts(registry: Any) -> Counter[str]:
    counts: Counter[str] = Counter()
    for family in registry.collect():
        for sample in family.samples:
            if sample.name == "stageflow_stage_runs_total" and sample.labels["pipeline"] == "dag":
                counts[sample.labels["status"]] += int(sample.value)
    return counts


@settings(
    max_examples=50,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(plans=dags(), mode=st.sampled_from(["fail_fast", "continue"]))
async def test_telemetry_agrees_with_the_results(
    plans: list[StagePlan], mode: Literal["fail_fast", "continue"]
) -> None:
    telemetry = in_memory_telemetry(canonical_logs=False)
    events = CollectingEventSink()
    pipeline = Pipeline("dag")
    for plan in plans:
        pipeline = pipeline.with_stage(plan.name, runner(plan), dependencies=plan.dependencies)
    graph = pipeline.build(hooks=telemetry.hooks, failure_mode=mode)

    try:
        results: Mapping[str, StageOutput]
        with anyio.fail_after(HANG):
            try:
                results = await graph.run(event_sink=events)
            except (StageExecutionError, PipelineCancelled) as exc:
                results = exc.results
        statuses = {name: output.status.value for name, output in results.items()}

        # Spans: exactly one per result, each a child of the run span, with its status.
        [run] = telemetry.spans_named("pipeline.run dag")
        assert run.context is not None
        stage_spans = [s for s in telemetry.spans() if s.name.startswith("stage.run ")]
        assert sorted(s.name for s in stage_spans) == sorted(f"stage.run {n}" for n in results)
        assert {s.parent.span_id if s.parent else None for s in stage_spans} <= {
            run.context.span_id
        }
        span_statuses = {
            str((s.attributes or {})["stageflow.stage.name"]): (s.attributes or {})[
                "stageflow.stage.status"
            ]
            for s in stage_spans
        }
        assert span_statuses == statuses
        assert telemetry.open_spans() == []

        # Metrics: counts per status equal the results.
        assert status_counts(telemetry.registry) == Counter(statuses.values())
        failed = "fail" in statuses.values()
        expected_run = "fail" if failed else "ok"
        assert (run.attributes or {})["stageflow.run.status"] == expected_run
        assert (
            telemetry.sample(
                "stageflow_pipeline_runs_total", {"pipeline": "dag", "status": expected_run}
            )
            == 1.0
        )

        # Events: one start and one terminal event per result, from the stage's own span.
        span_ids = {
            str((s.attributes or {})["stageflow.stage.name"]): format(s.context.span_id, "016x")
            for s in stage_spans
            if s.context is not None
        }
        started = [e.data["stage"] for e in events.events if e.type == "stage.started"]
        terminal = [(e.data["stage"], e.type, e.data) for e in events.events if e.type in TERMINAL]
        assert sorted(started) == sorted(results)
        assert {stage: TERMINAL[kind] for stage, kind, _ in terminal} == statuses
        assert len(terminal) == len(results)
        for stage, _, data in terminal:
            assert data["span_id"] == span_ids[stage]
        run_events = [e.type for e in events.events if e.type.startswith("pipeline.")]
        assert run_events == [
            "pipeline.started",
            "pipeline.failed" if failed else "pipeline.completed",
        ]
    finally:
        telemetry.shutdown()
