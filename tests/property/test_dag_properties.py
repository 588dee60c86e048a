"""Properties of random DAGs: order, exactly-once execution, failures, events, cycles."""

from __future__ import annotations

import itertools
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import anyio
import anyio.lowlevel
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from stageflow_otel.core import (
    CollectingEventSink,
    CycleDetectedError,
    Pipeline,
    PipelineResults,
    StageContext,
    StageExecutionError,
    StageOutput,
    StageReturn,
    StageStatus,
)

pytestmark = pytest.mark.anyio

HANG = 2.0
TERMINAL = {
    "stage.completed": "ok",
    "stage.failed": "fail",
    "stage.skipped": "skip",
    "stage.cancelled": "cancel",
}
FailMode = str  # "return" a FAIL output, or "raise" an exception


@dataclass(frozen=True)
class Dag:
    """Node ``i`` depends only on nodes ``< i``; ``order`` is the declaration order."""

    deps: tuple[tuple[int, ...], ...]
    order: tuple[int, ...]
    yields: tuple[int, ...]

    @property
    def size(self) -> int:
        return len(self.deps)

    def descendants(self, roots: set[int]) -> set[int]:
        found: set[int] = set()
        for node in range(self.size):  # nodes are numbered topologically
            if any(d in roots or d in found for d in self.deps[node]):
                found.add(node)
        return found


@st.composite
def dags(draw: st.DrawFn, max_nodes: int = 12) -> Dag:
    n = draw(st.integers(1, max_nodes))
    deps: list[tuple[int, ...]] = []
    for node in range(n):
        chosen = draw(st.sets(st.integers(0, node - 1), max_size=3)) if node else set()
        deps.append(tuple(sorted(chosen)))
    order = draw(st.permutations(range(n)))
    yields = draw(st.lists(st.integers(0, 3), min_size=n, max_size=n))
    return Dag(tuple(deps), tuple(order), tuple(yields))


@st.composite
def dags_with_failures(draw: st.DrawFn) -> tuple[Dag, dict[int, FailMode]]:
    dag = draw(dags())
    failing = draw(
        st.dictionaries(
            st.integers(0, dag.size - 1), st.sampled_from(["return", "raise"]), min_size=1
        )
    )
    return dag, failing


def name(node: int) -> str:
    return f"s{node}"


@dataclass
class Recorder:
    entries: list[tuple[str, str]] = field(default_factory=list)

    def index(self, kind: str, stage: str) -> int:
        return self.entries.index((kind, stage))

    def stages(self, kind: str) -> list[str]:
        return [stage for k, stage in self.entries if k == kind]


def build(dag: Dag, recorder: Recorder, failing: dict[int, FailMode] | None = None) -> Pipeline:
    failing = failing or {}

    def runner(node: int) -> Callable[[StageContext], Awaitable[StageReturn]]:
        async def execute(ctx: StageContext) -> StageReturn:
            recorder.entries.append(("start", ctx.stage_name))
            for _ in range(dag.yields[node]):
                await anyio.lowlevel.checkpoint()
            recorder.entries.append(("end", ctx.stage_name))
            mode = failing.get(node)
            if mode == "raise":
                raise RuntimeError(f"{ctx.stage_name} raised")
            if mode == "return":
                return StageOutput.fail(f"{ctx.stage_name} failed")
            return {"node": node}

        return execute

    pipeline = Pipeline("random")
    for node in dag.order:
        pipeline = pipeline.with_stage(
            name(node), runner(node), dependencies=[name(d) for d in dag.deps[node]]
        )
    return pipeline


def assert_ran_after_dependencies(dag: Dag, recorder: Recorder) -> None:
    started = recorder.stages("start")
    assert len(started) == len(set(started)), "a stage ran twice"
    for stage in started:
        node = int(stage[1:])
        for dep in dag.deps[node]:
            assert recorder.index("end", name(dep)) < recorder.index("start", stage), (dep, stage)


def assert_events_agree(sink: CollectingEventSink, results: PipelineResults) -> None:
    started = [e.data["stage"] for e in sink.events if e.type == "stage.started"]
    assert len(started) == len(set(started)), "stage.started sent twice for a stage"
    assert set(started) == set(results)
    terminal: dict[str, str] = {}
    for event in sink.events:
        if event.type in TERMINAL:
            stage = event.data["stage"]
            assert stage not in terminal, f"two terminal events for {stage}"
            assert event.data["status"] == TERMINAL[event.type]
            terminal[stage] = event.data["status"]
    assert terminal == {stage: out.status.value for stage, out in results.items()}


async def run_expecting_failure(pipeline: Pipeline, **build: Any) -> StageExecutionError:
    graph = pipeline.build(hooks=[], **build)
    try:
        with anyio.fail_after(HANG):
            await graph.run()
    except StageExecutionError as exc:
        return exc
    raise AssertionError("the run did not fail")


@settings(deadline=None, max_examples=40)
@given(dag=dags(), max_concurrency=st.none() | st.integers(1, 4))
async def test_every_stage_runs_once_after_its_dependencies(
    dag: Dag, max_concurrency: int | None
) -> None:
    recorder = Recorder()
    sink = CollectingEventSink()
    pipeline = build(dag, recorder)
    graph = pipeline.build(hooks=[], event_sink=sink, max_concurrency=max_concurrency)

    with anyio.fail_after(HANG):
        results = await graph.run()

    names = {name(node) for node in range(dag.size)}
    assert set(results) == names
    assert set(recorder.stages("start")) == names
    assert_ran_after_dependencies(dag, recorder)
    assert all(out.status is StageStatus.OK for out in results.values())
    assert all(results.data(name(node)) == {"node": node} for node in range(dag.size))
    assert_events_agree(sink, results)


@settings(deadline=None, max_examples=40)
@given(case=dags_with_failures())
async def test_fail_fast_stops_at_a_failure(case: tuple[Dag, dict[int, FailMode]]) -> None:
    dag, failing = case
    recorder = Recorder()
    sink = CollectingEventSink()
    error = await run_expecting_failure(build(dag, recorder, failing), event_sink=sink)
    results = error.results
    assert isinstance(results, PipelineResults)

    failed_node = int(error.stage[1:])
    assert failed_node in failing
    assert results[error.stage].status is StageStatus.FAIL
    if failing[failed_node] == "raise":
        assert isinstance(error.__cause__, RuntimeError)
    else:
        assert error.__cause__ is None

    started = set(recorder.stages("start"))
    failed_nodes = {int(s[1:]) for s, out in results.items() if out.status is StageStatus.FAIL}
    assert failed_nodes <= set(failing)
    assert not {name(n) for n in dag.descendants(failed_nodes)} & started
    assert set(results) == started
    assert {out.status for out in results.values()} <= {
        StageStatus.OK,
        StageStatus.FAIL,
        StageStatus.CANCEL,
    }
    assert_ran_after_dependencies(dag, recorder)
    assert_events_agree(sink, results)


@settings(deadline=None, max_examples=40)
@given(case=dags_with_failures())
async def test_continue_mode_runs_everything_not_downstream_of_a_failure(
    case: tuple[Dag, dict[int, FailMode]],
) -> None:
    dag, failing = case
    recorder = Recorder()
    sink = CollectingEventSink()
    error = await run_expecting_failure(
        build(dag, recorder, failing), event_sink=sink, failure_mode="continue"
    )
    results = error.results
    assert isinstance(results, PipelineResults)

    downstream = dag.descendants(set(failing))
    assert set(results) == {name(node) for node in range(dag.size)}
    assert int(error.stage[1:]) in failing
    for node in range(dag.size):
        out = results[name(node)]
        if node in downstream:
            assert out.status is StageStatus.SKIP, node
            blocker = out.metadata["blocked_by"]
            assert int(blocker[1:]) in failing
            assert repr(blocker) in out.data["reason"]
            assert name(node) not in recorder.stages("start")
        elif node in failing:
            assert out.status is StageStatus.FAIL, node
        else:
            assert out.status is StageStatus.OK, node
            assert name(node) in recorder.stages("end")
    assert_ran_after_dependencies(dag, recorder)
    assert_events_agree(sink, results)


@st.composite
def cyclic_graphs(draw: st.DrawFn) -> tuple[dict[str, list[str]], list[str]]:
    n = draw(st.integers(2, 10))
    deps: dict[int, set[int]] = {
        node: draw(st.sets(st.integers(0, node - 1), max_size=3)) if node else set()
        for node in range(n)
    }
    cycle = draw(st.lists(st.integers(0, n - 1), min_size=2, max_size=n, unique=True))
    for upstream, downstream in zip(cycle, [*cycle[1:], cycle[0]], strict=True):
        deps[downstream].add(upstream)
    order = draw(st.permutations(range(n)))
    graph = {name(node): [name(d) for d in sorted(deps[node])] for node in range(n)}
    return graph, [name(node) for node in order]


async def noop(ctx: StageContext) -> StageReturn:
    return None


@settings(max_examples=100)
@given(case=cyclic_graphs())
def test_cycles_are_rejected_with_a_real_cycle(
    case: tuple[dict[str, list[str]], list[str]],
) -> None:
    graph, order = case
    pipeline = Pipeline("cyclic")
    for stage in order:
        pipeline = pipeline.with_stage(stage, noop, dependencies=graph[stage])
    with pytest.raises(CycleDetectedError) as info:
        pipeline.build()
    path = info.value.cycle_path
    assert len(path) >= 3
    assert path[0] == path[-1]
    assert len(set(path[:-1])) == len(path) - 1
    for upstream, downstream in itertools.pairwise(path):
        assert upstream in graph[downstream], (upstream, downstream)


@settings(max_examples=100)
@given(dag=dags(max_nodes=30))
def test_stage_names_are_a_topological_order(dag: Dag) -> None:
    pipeline = build(dag, Recorder())
    order = pipeline.stage_names()
    position = {stage: i for i, stage in enumerate(order)}
    assert sorted(position) == sorted(name(node) for node in range(dag.size))
    for node in range(dag.size):
        for dep in dag.deps[node]:
            assert position[name(dep)] < position[name(node)]
