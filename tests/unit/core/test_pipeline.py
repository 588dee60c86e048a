"""Declaring pipelines: the immutable builder, runners, validation errors, exports."""

from __future__ import annotations

import itertools
import threading
from typing import ClassVar

import anyio
import pytest

from stageflow_otel.core import (
    CycleDetectedError,
    FunctionStage,
    Pipeline,
    PipelineValidationError,
    StageContext,
    StageflowError,
    StageGraph,
    StageKind,
    StageOutput,
    StageReturn,
    stage_fn,
)


async def noop(ctx: StageContext) -> StageReturn:
    return None


async def other_noop(ctx: StageContext) -> StageReturn:
    return None


def chain(name: str, *stages: str) -> Pipeline:
    pipeline = Pipeline(name)
    previous: str | None = None
    for stage in stages:
        pipeline = pipeline.with_stage(stage, noop, dependencies=[previous] if previous else None)
        previous = stage
    return pipeline


def assert_topological(pipeline: Pipeline, order: list[str]) -> None:
    position = {name: i for i, name in enumerate(order)}
    assert sorted(position) == sorted(spec.name for spec in pipeline.specs)
    for spec in pipeline.specs:
        for dep in spec.dependencies:
            assert position[dep] < position[spec.name], (dep, spec.name)


# -- the immutable builder ------------------------------------------------------------------


def test_with_stage_returns_a_new_pipeline_and_leaves_the_old_one_unchanged() -> None:
    empty = Pipeline("p")
    one = empty.with_stage("a", noop)
    two = one.with_stage("b", noop, dependencies=["a"])

    assert one is not empty
    assert two is not one
    assert (len(empty), len(one), len(two)) == (0, 1, 2)
    assert [s.name for s in one.specs] == ["a"]
    assert [s.name for s in two.specs] == ["a", "b"]
    assert "b" not in one
    assert "b" in two
    assert "a" not in empty
    assert two.name == one.name == "p"


def test_branching_from_an_older_pipeline_keeps_both_branches_apart() -> None:
    base = Pipeline("p").with_stage("root", noop)
    left = base.with_stage("left", noop, dependencies=["root"])
    right = base.with_stage("right", noop, dependencies=["root"])
    left_more = left.with_stage("left2", noop, dependencies=["left"])

    assert [s.name for s in base.specs] == ["root"]
    assert [s.name for s in left.specs] == ["root", "left"]
    assert [s.name for s in right.specs] == ["root", "right"]
    assert [s.name for s in left_more.specs] == ["root", "left", "left2"]
    assert "left" not in right
    assert "right" not in left_more
    assert right.stage_names() == ["root", "right"]
    assert left_more.stage_names() == ["root", "left", "left2"]


def test_a_branch_may_reuse_a_name_a_sibling_branch_took() -> None:
    base = Pipeline("p").with_stage("root", noop)
    first = base.with_stage("x", noop, kind="work")
    second = base.with_stage("x", other_noop, kind="enrich")

    assert first.specs[1].kind is StageKind.WORK
    assert second.specs[1].kind is StageKind.ENRICH
    assert second.specs[1].runner is other_noop


def test_a_rejected_stage_leaves_the_pipeline_usable() -> None:
    pipeline = Pipeline("p").with_stage("a", noop)
    with pytest.raises(PipelineValidationError):
        pipeline.with_stage("a", noop)
    extended = pipeline.with_stage("b", noop)
    assert [s.name for s in extended.specs] == ["a", "b"]


def test_stages_given_to_the_constructor() -> None:
    source = chain("src", "a", "b")
    pipeline = Pipeline("copy", source.specs)
    assert pipeline.name == "copy"
    assert pipeline.stage_names() == ["a", "b"]
    assert repr(pipeline) == "Pipeline('copy', stages=2)"


def test_forward_references_are_allowed_until_build() -> None:
    pipeline = Pipeline("p").with_stage("b", noop, dependencies=["a"]).with_stage("a", noop)
    assert pipeline.stage_names() == ["a", "b"]


def test_after_is_an_alias_of_dependencies_and_both_merge_without_duplicates() -> None:
    pipeline = (
        Pipeline("p")
        .with_stage("a", noop)
        .with_stage("b", noop)
        .with_stage("c", noop, after=["a"])
        .with_stage("d", noop, dependencies=["a", "b"], after=["b", "c"])
    )
    specs = {s.name: s for s in pipeline.specs}
    assert specs["c"].dependencies == ("a",)
    assert specs["d"].dependencies == ("a", "b", "c")


# -- runners and kinds ----------------------------------------------------------------------


class CountingStage:
    name = "counting"
    kind: ClassVar[StageKind] = StageKind.WORK
    instances: ClassVar[list[CountingStage]] = []

    def __init__(self) -> None:
        CountingStage.instances.append(self)

    async def execute(self, ctx: StageContext) -> StageReturn:
        return {"instance": id(self)}


class InstanceStage:
    kind = StageKind.ENRICH

    def __init__(self, name: str) -> None:
        self.name = name
        self.calls = 0

    async def execute(self, ctx: StageContext) -> StageReturn:
        self.calls += 1
        return StageOutput.ok(calls=self.calls)


class AsyncCallable:
    def __init__(self) -> None:
        self.seen: list[str] = []

    async def __call__(self, ctx: StageContext) -> StageReturn:
        self.seen.append(ctx.stage_name)
        return {"called": True}


@pytest.mark.anyio
async def test_a_stage_class_is_instantiated_for_every_execution() -> None:
    CountingStage.instances.clear()
    graph = Pipeline("p").with_stage("c", CountingStage).build(hooks=[])

    first = await graph.run()
    second = await graph.run()

    assert len(CountingStage.instances) == 2
    assert first["c"].data["instance"] == id(CountingStage.instances[0])
    assert second["c"].data["instance"] == id(CountingStage.instances[1])
    assert graph.specs[0].kind is StageKind.WORK


@pytest.mark.anyio
async def test_a_stage_instance_is_shared_across_executions() -> None:
    stage = InstanceStage("inst")
    graph = Pipeline("p").with_stage("inst", stage).build(hooks=[])
    await graph.run()
    results = await graph.run()
    assert stage.calls == 2
    assert results["inst"].data == {"calls": 2}
    assert graph.specs[0].kind is StageKind.ENRICH


@pytest.mark.anyio
async def test_an_async_function_runs_on_the_event_loop_thread() -> None:
    loop_thread = threading.get_ident()
    seen: list[int] = []

    async def on_loop(ctx: StageContext) -> StageReturn:
        seen.append(threading.get_ident())
        return None

    await Pipeline("p").with_stage("f", on_loop).run()
    assert seen == [loop_thread]


@pytest.mark.anyio
async def test_a_sync_function_runs_in_a_worker_thread() -> None:
    loop_thread = threading.get_ident()
    seen: list[int] = []

    def blocking(ctx: StageContext) -> StageReturn:
        seen.append(threading.get_ident())
        return {"stage": ctx.stage_name}

    results = await Pipeline("p").with_stage("sync", blocking).run()
    assert len(seen) == 1
    assert seen[0] != loop_thread
    assert results["sync"].data == {"stage": "sync"}


@pytest.mark.anyio
async def test_an_async_callable_object_is_awaited() -> None:
    runner = AsyncCallable()
    results = await Pipeline("p").with_stage("obj", runner).run()
    assert runner.seen == ["obj"]
    assert results["obj"].data == {"called": True}


@pytest.mark.anyio
async def test_stage_fn_wraps_async_and_sync_functions() -> None:
    loop_thread = threading.get_ident()
    threads: list[int] = []

    @stage_fn(kind="enrich")
    async def geocode(ctx: StageContext) -> StageReturn:
        threads.append(threading.get_ident())
        return {"lat": 1.0}

    @stage_fn(name="renamed", kind=StageKind.WORK)
    def compute(ctx: StageContext) -> StageReturn:
        threads.append(threading.get_ident())
        return {"n": 2}

    @stage_fn
    async def plain(ctx: StageContext) -> StageReturn:
        return None

    assert isinstance(geocode, FunctionStage)
    assert (geocode.name, geocode.kind) == ("geocode", StageKind.ENRICH)
    assert (compute.name, compute.kind) == ("renamed", StageKind.WORK)
    assert (plain.name, plain.kind) == ("plain", StageKind.TRANSFORM)
    assert repr(compute) == "FunctionStage('renamed', kind='work')"

    pipeline = (
        Pipeline("p")
        .with_stage(geocode.name, geocode)
        .with_stage(compute.name, compute, dependencies=[geocode.name])
    )
    kinds = {s.name: s.kind for s in pipeline.specs}
    assert kinds == {"geocode": StageKind.ENRICH, "renamed": StageKind.WORK}

    results = await pipeline.run()
    assert results["geocode"].data == {"lat": 1.0}
    assert results["renamed"].data == {"n": 2}
    assert threads[0] == loop_thread
    assert threads[1] != loop_thread


def test_kind_is_inferred_from_the_runner_and_an_explicit_kind_wins() -> None:
    pipeline = (
        Pipeline("p")
        .with_stage("fn", noop)
        .with_stage("cls", CountingStage)
        .with_stage("inst", InstanceStage("inst"))
        .with_stage("explicit", CountingStage, kind=StageKind.GUARD)
        .with_stage("text", noop, kind="route")
    )
    kinds = {s.name: s.kind for s in pipeline.specs}
    assert kinds == {
        "fn": StageKind.TRANSFORM,
        "cls": StageKind.WORK,
        "inst": StageKind.ENRICH,
        "explicit": StageKind.GUARD,
        "text": StageKind.ROUTE,
    }


def test_the_function_name_is_recorded() -> None:
    spec = Pipeline("p").with_stage("a", noop).specs[0]
    assert spec.function_name.endswith("test_pipeline.noop")
    cls_spec = Pipeline("p").with_stage("c", CountingStage).specs[0]
    assert cls_spec.function_name.endswith("test_pipeline.CountingStage")


class NoExecute:
    pass


class SyncExecute:
    name = "sync"
    kind = StageKind.WORK

    def execute(self, ctx: StageContext) -> StageReturn:
        return None


@pytest.mark.parametrize(
    ("runner", "fragment"),
    [
        (NoExecute, "has no execute(ctx) method"),
        (SyncExecute(), "execute must be `async def`"),
        (42, "runner must be a Stage instance or class"),
    ],
)
def test_unusable_runners_are_rejected(runner: object, fragment: str) -> None:
    with pytest.raises(PipelineValidationError, match="stage 'bad'") as info:
        Pipeline("p").with_stage("bad", runner)
    assert fragment in str(info.value)
    assert info.value.code == "CONTRACT-004-INVALID"
    assert info.value.stages == ("bad",)


# -- validation errors ------------------------------------------------------------------------


def test_validation_errors_are_value_errors_and_stageflow_errors() -> None:
    assert issubclass(PipelineValidationError, ValueError)
    assert issubclass(PipelineValidationError, StageflowError)
    assert issubclass(CycleDetectedError, PipelineValidationError)
    with pytest.raises(ValueError, match="has no stages"):
        Pipeline("p").build()


def test_an_empty_pipeline_is_rejected() -> None:
    with pytest.raises(PipelineValidationError) as info:
        Pipeline("empty").build()
    error = info.value
    assert error.code == "CONTRACT-004-EMPTY"
    assert "'empty'" in str(error)
    assert error.fix_hint is not None
    assert "with_stage" in error.fix_hint
    assert error.to_dict()["code"] == "CONTRACT-004-EMPTY"


def test_a_missing_dependency_names_the_stage_the_dependency_the_pipeline_and_the_stages() -> None:
    pipeline = (
        Pipeline("checkout")
        .with_stage("a", noop)
        .with_stage("b", noop, dependencies=["x"])
        .with_stage("c", noop)
    )
    with pytest.raises(PipelineValidationError) as info:
        pipeline.build()
    error = info.value
    assert error.code == "CONTRACT-004-MISSING_DEP"
    message = str(error)
    assert "stage 'b' depends on 'x', which is not in pipeline 'checkout'" in message
    assert "(stages: a, b, c)" in message
    assert error.stages == ("b", "x")
    assert error.to_dict() == {
        "code": "CONTRACT-004-MISSING_DEP",
        "type": "PipelineValidationError",
        "message": message,
        "stages": ["b", "x"],
        "fix_hint": error.fix_hint,
    }


def test_a_missing_dependency_suggests_a_close_name() -> None:
    pipeline = Pipeline("p").with_stage("load", noop).with_stage("b", noop, dependencies=["laod"])
    with pytest.raises(PipelineValidationError, match="did you mean 'load'"):
        pipeline.build()


def test_a_missing_dependency_without_a_close_name_makes_no_suggestion() -> None:
    pipeline = Pipeline("p").with_stage("load", noop).with_stage("b", noop, dependencies=["zzz"])
    with pytest.raises(PipelineValidationError) as info:
        pipeline.stage_names()
    assert "did you mean" not in str(info.value)


def test_a_missing_dependency_in_a_long_pipeline_elides_the_stage_list() -> None:
    pipeline = chain("long", *(f"s{i}" for i in range(40))).with_stage(
        "z", noop, dependencies=["nope"]
    )
    with pytest.raises(PipelineValidationError) as info:
        pipeline.build()
    assert "(29 more)" in str(info.value)


def test_a_self_dependency_is_rejected() -> None:
    pipeline = Pipeline("p").with_stage("a", noop).with_stage("b", noop, dependencies=["a", "b"])
    with pytest.raises(PipelineValidationError) as info:
        pipeline.build()
    assert info.value.code == "CONTRACT-004-SELF_DEP"
    assert "stage 'b' depends on itself" in str(info.value)
    assert info.value.stages == ("b",)


def test_a_cycle_is_rejected_with_its_path() -> None:
    pipeline = (
        Pipeline("loop")
        .with_stage("start", noop)
        .with_stage("a", noop, dependencies=["start", "c"])
        .with_stage("b", noop, dependencies=["a"])
        .with_stage("c", noop, dependencies=["b"])
        .with_stage("tail", noop, dependencies=["c"])
    )
    with pytest.raises(CycleDetectedError) as info:
        pipeline.build()
    error = info.value
    assert error.code == "CONTRACT-004-CYCLE"
    path = error.cycle_path
    assert path[0] == path[-1]
    assert sorted(path[:-1]) == ["a", "b", "c"]
    deps = {s.name: s.dependencies for s in pipeline.specs}
    for upstream, downstream in itertools.pairwise(path):
        assert upstream in deps[downstream], (upstream, downstream)
    assert " -> ".join(path) in str(error)
    assert "'loop'" in str(error)
    assert sorted(error.stages) == ["a", "b", "c"]


def test_a_two_stage_cycle() -> None:
    pipeline = Pipeline("p").with_stage("a", noop, after=["b"]).with_stage("b", noop, after=["a"])
    with pytest.raises(CycleDetectedError) as info:
        pipeline.stage_names()
    assert len(info.value.cycle_path) == 3
    assert set(info.value.cycle_path) == {"a", "b"}


def test_a_duplicate_stage_name_is_a_conflict() -> None:
    pipeline = Pipeline("orders").with_stage("a", noop)
    with pytest.raises(PipelineValidationError) as info:
        pipeline.with_stage("a", other_noop)
    assert info.value.code == "CONTRACT-004-CONFLICT"
    assert "pipeline 'orders' already has a stage named 'a'" in str(info.value)


def test_a_duplicate_in_the_constructor_is_a_conflict() -> None:
    spec = Pipeline("x").with_stage("a", noop).specs[0]
    with pytest.raises(PipelineValidationError) as info:
        Pipeline("p", [spec, spec])
    assert info.value.code == "CONTRACT-004-CONFLICT"


@pytest.mark.parametrize("timeout", [0, -1, -0.5])
def test_a_non_positive_timeout_is_rejected(timeout: float) -> None:
    with pytest.raises(PipelineValidationError, match="timeout must be a positive number"):
        Pipeline("p").with_stage("a", noop, timeout=timeout)


def test_an_unknown_kind_is_rejected_listing_the_kinds() -> None:
    with pytest.raises(PipelineValidationError) as info:
        Pipeline("p").with_stage("a", noop, kind="bogus")
    message = str(info.value)
    assert "unknown kind 'bogus'" in message
    assert all(kind.value in message for kind in StageKind)


@pytest.mark.parametrize("argument", ["dependencies", "after"])
def test_a_string_of_dependencies_is_rejected(argument: str) -> None:
    with pytest.raises(PipelineValidationError, match=rf"write {argument}=\['b'\]"):
        Pipeline("p").with_stage("a", noop, **{argument: "b"})  # type: ignore[arg-type]


def test_empty_names_are_rejected() -> None:
    with pytest.raises(PipelineValidationError, match="stage name must be a non-empty string"):
        Pipeline("p").with_stage("", noop)
    with pytest.raises(PipelineValidationError, match="pipeline name must be a non-empty string"):
        Pipeline("")


@pytest.mark.parametrize(
    ("kwargs", "fragment"),
    [
        ({"failure_mode": "sometimes"}, "failure_mode must be 'fail_fast' or 'continue'"),
        ({"max_concurrency": 0}, "max_concurrency must be a whole number >= 1 or None"),
        ({"max_depth": -1}, "max_depth must be a whole number >= 0"),
    ],
)
def test_bad_build_options_are_rejected(kwargs: dict[str, object], fragment: str) -> None:
    with pytest.raises(PipelineValidationError, match=fragment):
        Pipeline("p").with_stage("a", noop).build(**kwargs)  # type: ignore[arg-type]


# -- scale ------------------------------------------------------------------------------------


def test_a_100k_chain_declared_in_reverse_order_validates_without_recursion() -> None:
    n = 100_000
    pipeline = Pipeline("reverse")
    for i in range(n - 1, -1, -1):
        pipeline = pipeline.with_stage(f"s{i}", noop, dependencies=[f"s{i - 1}"] if i else None)
    assert pipeline.specs[0].name == f"s{n - 1}"

    order = pipeline.stage_names()

    assert order == [f"s{i}" for i in range(n)]
    graph = pipeline.build()
    assert len(graph) == n
    assert graph.stage_names[0] == "s0"


def test_a_cycle_in_a_100k_chain_is_found_without_recursion() -> None:
    n = 100_000
    pipeline = Pipeline("ring")
    for i in range(n):
        pipeline = pipeline.with_stage(f"s{i}", noop, dependencies=[f"s{(i - 1) % n}"])
    with pytest.raises(CycleDetectedError) as info:
        pipeline.build()
    assert len(info.value.cycle_path) == n + 1


def test_with_stage_builds_a_100k_pipeline_and_keeps_every_prefix() -> None:
    n = 100_000
    pipeline = Pipeline("wide")
    halfway: Pipeline | None = None
    for i in range(n):
        pipeline = pipeline.with_stage(f"s{i}", noop)
        if i == n // 2 - 1:
            halfway = pipeline
    assert len(pipeline) == n
    assert f"s{n - 1}" in pipeline
    assert halfway is not None
    assert len(halfway) == n // 2
    assert f"s{n // 2}" not in halfway
    assert len(halfway.specs) == n // 2


# -- order, rendering, composition ----------------------------------------------------------------


def test_stage_names_are_topological_with_ties_in_declaration_order() -> None:
    pipeline = (
        Pipeline("p")
        .with_stage("report", noop, dependencies=["price", "fraud"])
        .with_stage("load", noop)
        .with_stage("price", noop, dependencies=["load"])
        .with_stage("fraud", noop, dependencies=["load"])
        .with_stage("audit", noop)
    )
    order = pipeline.stage_names()
    assert_topological(pipeline, order)
    assert order == ["load", "audit", "price", "fraud", "report"]
    assert pipeline.build().stage_names == tuple(order)


def test_build_returns_a_stage_graph() -> None:
    graph = chain("p", "a", "b", "c").build(max_concurrency=3, failure_mode="continue")
    assert isinstance(graph, StageGraph)
    assert len(graph) == 3
    assert graph.name == "p"
    assert graph.max_concurrency == 3
    assert graph.failure_mode == "continue"
    assert repr(graph) == "StageGraph('p', stages=3)"


def test_to_dot_renders_nodes_with_kinds_and_edges() -> None:
    pipeline = (
        Pipeline("checkout")
        .with_stage("load", noop)
        .with_stage("price", noop, kind="work", dependencies=["load"])
        .with_stage('say "hi"', noop, dependencies=["load"])
    )
    assert pipeline.to_dot().splitlines() == [
        'digraph "checkout" {',
        "  rankdir=LR;",
        '  "load" [label="load (transform)"];',
        '  "price" [label="price (work)"];',
        '  "say \\"hi\\"" [label="say \\"hi\\" (transform)"];',
        '  "load" -> "price";',
        '  "load" -> "say \\"hi\\"";',
        "}",
    ]


def test_to_mermaid_renders_nodes_with_kinds_and_edges() -> None:
    pipeline = (
        Pipeline("checkout")
        .with_stage("load", noop)
        .with_stage("price", noop, kind="work", dependencies=["load"])
        .with_stage('say "hi"', noop, dependencies=["price"])
    )
    assert pipeline.to_mermaid().splitlines() == [
        "flowchart LR",
        '  s0["load (transform)"]',
        '  s1["price (work)"]',
        '  s2["say #quot;hi#quot; (transform)"]',
        "  s0 --> s1",
        "  s1 --> s2",
    ]


def test_compose_merges_stages_and_keeps_shared_identical_ones_once() -> None:
    base = Pipeline("shared").with_stage("load", noop)
    shared_spec = base.specs[0]
    first = Pipeline("first", [shared_spec]).with_stage("price", noop, dependencies=["load"])
    second = Pipeline("second", [shared_spec]).with_stage("fraud", noop, dependencies=["load"])

    merged = first.compose(second)

    assert merged.name == "first"
    assert [s.name for s in merged.specs] == ["load", "price", "fraud"]
    assert [s.name for s in first.specs] == ["load", "price"]
    assert [s.name for s in second.specs] == ["load", "fraud"]
    assert_topological(merged, merged.stage_names())


def test_compose_rejects_a_same_named_different_stage() -> None:
    first = Pipeline("first").with_stage("load", noop)
    second = Pipeline("second").with_stage("load", other_noop)
    with pytest.raises(PipelineValidationError) as info:
        first.compose(second)
    assert info.value.code == "CONTRACT-004-CONFLICT"
    message = str(info.value)
    assert "'second'" in message
    assert "'first'" in message
    assert "'load'" in message
    assert info.value.stages == ("load",)


def test_compose_notices_different_dependencies() -> None:
    first = Pipeline("first").with_stage("a", noop).with_stage("b", noop, dependencies=["a"])
    second = Pipeline("second").with_stage("a", first.specs[0].runner).with_stage("b", noop)
    with pytest.raises(PipelineValidationError, match="different stage 'b'"):
        first.compose(second)


@pytest.mark.anyio
async def test_a_composed_pipeline_runs_every_stage() -> None:
    shared = Pipeline("s").with_stage("load", noop).specs[0]
    merged = (
        Pipeline("a", [shared])
        .with_stage("x", noop, after=["load"])
        .compose(Pipeline("b", [shared]).with_stage("y", noop, after=["load"]))
    )
    with anyio.fail_after(5):
        results = await merged.run()
    assert sorted(results) == ["load", "x", "y"]
