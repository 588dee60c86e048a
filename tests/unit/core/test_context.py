"""What a stage sees: identity, shared data, outputs, inputs."""

from __future__ import annotations

import threading
import uuid
from typing import Any

import anyio
import pytest

from stageflow_otel.core import (
    CollectingEventSink,
    ContextBag,
    DataConflictError,
    OutputBag,
    OutputConflictError,
    Pipeline,
    RunIdentity,
    StageContext,
    StageInputs,
    StageOutput,
    StageReturn,
    UndeclaredDependencyError,
)

# -- RunIdentity ------------------------------------------------------------------------------


def test_run_identity_makes_a_fresh_uuid_run_id() -> None:
    first, second = RunIdentity(), RunIdentity()
    assert first.pipeline_run_id != second.pipeline_run_id
    assert uuid.UUID(first.pipeline_run_id).version == 4
    assert first.request_id is None
    assert first.session_id is None
    assert first.user_id is None
    assert first.org_id is None
    assert first.interaction_id is None


def test_run_identity_is_frozen() -> None:
    identity = RunIdentity(pipeline_run_id="r", request_id="q")
    with pytest.raises(AttributeError):
        identity.request_id = "other"  # type: ignore[misc]
    assert identity == RunIdentity(pipeline_run_id="r", request_id="q")


# -- ContextBag -------------------------------------------------------------------------------


def test_context_bag_writes_once_per_key() -> None:
    bag = ContextBag()
    bag.write("a", 1, "first")
    bag.write("b", None, "second")
    assert bag.get("a") == 1
    assert bag.get("b") is None
    assert bag.get("missing", "dflt") == "dflt"
    assert "a" in bag
    assert "missing" not in bag
    assert bag.writer_of("a") == "first"
    assert bag.writer_of("missing") is None
    assert bag.to_dict() == {"a": 1, "b": None}


def test_context_bag_conflict_names_both_stages_and_keeps_the_first_value() -> None:
    bag = ContextBag()
    bag.write("token", "t-1", "auth")
    with pytest.raises(DataConflictError) as info:
        bag.write("token", "t-2", "refresh")
    error = info.value
    assert (error.key, error.first_writer, error.second_writer) == ("token", "auth", "refresh")
    assert str(error) == (
        "stage 'refresh' tried to write context key 'token', already written by stage 'auth'; "
        "give each stage its own key or pass the value as stage output"
    )
    assert error.code == "DATA_CONFLICT"
    assert bag.get("token") == "t-1"
    assert bag.writer_of("token") == "auth"


def test_context_bag_to_dict_is_a_copy() -> None:
    bag = ContextBag()
    bag.write("a", 1, "s")
    copy = bag.to_dict()
    copy["a"] = 2
    assert bag.get("a") == 1


def test_context_bag_lets_exactly_one_of_many_threads_write_a_key() -> None:
    bag = ContextBag()
    winners: list[str] = []
    losers: list[str] = []
    barrier = threading.Barrier(8)

    def write(name: str) -> None:
        barrier.wait()
        try:
            bag.write("shared", name, name)
        except DataConflictError:
            losers.append(name)
        else:
            winners.append(name)
        bag.write(f"own-{name}", name, name)

    threads = [threading.Thread(target=write, args=(f"t{i}",)) for i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(winners) == 1
    assert len(losers) == 7
    assert bag.get("shared") == winners[0]
    assert len(bag.to_dict()) == 9


# -- OutputBag --------------------------------------------------------------------------------


def test_output_bag_records_outputs_and_attempts() -> None:
    bag = OutputBag()
    ok = StageOutput.ok(x=1)
    bag.write("a", ok)
    bag.write("b", StageOutput.fail("x"), attempts=3)
    assert bag.get("a") is ok
    assert bag.get("missing") is None
    assert bag.attempts("a") == 1
    assert bag.attempts("b") == 3
    assert bag.attempts("missing") == 0
    assert "a" in bag
    assert "missing" not in bag
    assert len(bag) == 2
    assert list(bag.outputs()) == ["a", "b"]


def test_output_bag_rejects_a_second_write_unless_allowed() -> None:
    bag = OutputBag()
    bag.write("a", StageOutput.ok())
    with pytest.raises(OutputConflictError, match="stage 'a'") as info:
        bag.write("a", StageOutput.ok())
    assert info.value.stage == "a"
    replacement = StageOutput.ok(v=2)
    bag.write("a", replacement, attempts=2, allow_overwrite=True)
    assert bag.get("a") is replacement
    assert bag.attempts("a") == 2


def test_output_bag_outputs_are_read_only() -> None:
    bag = OutputBag()
    bag.write("a", StageOutput.ok())
    view = bag.outputs()
    with pytest.raises(TypeError):
        view["b"] = StageOutput.ok()  # type: ignore[index]
    bag.write("b", StageOutput.ok())
    assert set(view) == {"a", "b"}


# -- StageInputs ------------------------------------------------------------------------------


def make_inputs() -> StageInputs:
    outputs = {
        "a": StageOutput.ok({"k": "from-a", "only_a": 1}),
        "b": StageOutput.ok({"k": "from-b", "none": None}),
        "c": StageOutput.ok({"k": "from-c"}),
    }
    return StageInputs("reader", ("b", "a", "pending"), outputs)


def test_inputs_get_searches_dependencies_in_declaration_order() -> None:
    inputs = make_inputs()
    assert inputs.dependencies == ("b", "a", "pending")
    assert inputs.get("k") == "from-b"
    assert inputs.get("only_a") == 1
    # A key present with value None is found (and not skipped for a later dependency).
    assert inputs.get("none", "dflt") is None
    # `c` is not a dependency, so its data is never searched.
    assert inputs.get("absent", "dflt") == "dflt"


def test_inputs_get_from_and_require_from() -> None:
    inputs = make_inputs()
    assert inputs.get_from("a", "k") == "from-a"
    assert inputs.get_from("a", "absent") is None
    assert inputs.get_from("pending", "k", "dflt") == "dflt"
    assert inputs.require_from("b", "k") == "from-b"
    with pytest.raises(KeyError, match="stage 'reader' requires key 'absent' from 'a'"):
        inputs.require_from("a", "absent")
    with pytest.raises(KeyError, match="from 'pending'"):
        inputs.require_from("pending", "k")


def test_inputs_get_output_and_has_output() -> None:
    inputs = make_inputs()
    output = inputs.get_output("a")
    assert output is not None
    assert output.data["k"] == "from-a"
    assert inputs.get_output("pending") is None
    assert inputs.has_output("a")
    assert not inputs.has_output("pending")


@pytest.mark.parametrize("method", ["get_from", "require_from", "get_output", "has_output"])
def test_inputs_refuse_stages_that_are_not_dependencies(method: str) -> None:
    inputs = make_inputs()
    args: tuple[Any, ...] = ("c", "k") if method in ("get_from", "require_from") else ("c",)
    with pytest.raises(UndeclaredDependencyError) as info:
        getattr(inputs, method)(*args)
    error = info.value
    assert error.stage_name == "c"
    assert error.accessing_stage == "reader"
    assert error.declared_deps == ("b", "a", "pending")
    assert error.code == "UNDECLARED_DEPENDENCY"
    assert "add 'c' to its dependencies" in str(error)


def test_an_undeclared_read_without_dependencies_says_none() -> None:
    inputs = StageInputs("lonely", (), {"a": StageOutput.ok()})
    with pytest.raises(UndeclaredDependencyError, match=r"declared dependencies \(none\)"):
        inputs.get_output("a")
    assert inputs.get("anything", 7) == 7


def test_inputs_see_outputs_recorded_after_they_were_made() -> None:
    outputs: dict[str, StageOutput] = {}
    inputs = StageInputs("reader", ("a",), outputs)
    assert not inputs.has_output("a")
    outputs["a"] = StageOutput.ok(v=1)
    assert inputs.get_from("a", "v") == 1


# -- StageContext -------------------------------------------------------------------------------


@pytest.mark.anyio
async def test_stage_context_within_a_run() -> None:
    seen: dict[str, Any] = {}
    sink = CollectingEventSink()

    async def stage(ctx: StageContext) -> StageReturn:
        seen["stage_name"] = ctx.stage_name
        seen["pipeline_name"] = ctx.pipeline_name
        seen["data"] = dict(ctx.data)
        seen["deps"] = ctx.inputs.dependencies
        seen["depth"] = ctx.depth
        seen["parent_run_id"] = ctx.parent_run_id
        seen["attempt"] = ctx.attempt
        seen["is_cancelled"] = ctx.is_cancelled
        seen["reason"] = ctx.cancellation_reason
        ctx.write("k", "v")
        seen["bag"] = ctx.bag.get("k")
        seen["writer"] = ctx.bag.writer_of("k")
        ctx.try_emit_event("custom.event", {"n": 1})
        ctx.try_emit_event("bare.event")
        with pytest.raises(TypeError):
            ctx.data["new"] = 1  # type: ignore[index]
        return None

    pipeline = Pipeline("orders").with_stage("first", stage)
    identity = RunIdentity(request_id="req")
    with anyio.fail_after(5):
        await pipeline.build(hooks=[], event_sink=sink).run({"order": 7}, identity=identity)
    assert seen == {
        "stage_name": "first",
        "pipeline_name": "orders",
        "data": {"order": 7},
        "deps": (),
        "depth": 0,
        "parent_run_id": None,
        "attempt": 1,
        "is_cancelled": False,
        "reason": None,
        "bag": "v",
        "writer": "first",
    }
    custom = sink.of_type("custom.event")[0]
    assert custom["n"] == 1
    assert custom["stage"] == "first"
    assert custom["pipeline_run_id"] == identity.pipeline_run_id
    assert sink.of_type("bare.event")[0]["stage"] == "first"


@pytest.mark.anyio
async def test_stages_of_one_run_share_the_bag_and_runs_do_not() -> None:
    async def writer(ctx: StageContext) -> StageReturn:
        ctx.write("key", ctx.data["n"])
        return None

    async def reader(ctx: StageContext) -> StageReturn:
        return {"key": ctx.bag.get("key")}

    graph = Pipeline("p").with_stage("w", writer).with_stage("r", reader, after=["w"]).build()
    with anyio.fail_after(5):
        first = await graph.run({"n": 1})
        second = await graph.run({"n": 2})
    assert first.data("r") == {"key": 1}
    assert second.data("r") == {"key": 2}
