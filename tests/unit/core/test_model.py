"""The data model: kinds, statuses, outputs, events, artifacts, the Stage protocol."""

from __future__ import annotations

import dataclasses
import datetime as dt

import pytest

from stageflow_otel.core import (
    NoOpStage,
    Pipeline,
    Stage,
    StageArtifact,
    StageContext,
    StageEvent,
    StageKind,
    StageOutput,
    StageReturn,
    StageStatus,
)


def test_kind_and_status_values() -> None:
    assert [k.value for k in StageKind] == [
        "transform",
        "enrich",
        "route",
        "guard",
        "work",
        "agent",
    ]
    assert [s.value for s in StageStatus] == ["ok", "skip", "cancel", "fail", "retry"]
    assert StageKind("work") is StageKind.WORK
    assert StageStatus("ok") is StageStatus.OK
    assert isinstance(StageStatus.OK, str)
    assert str(StageStatus.OK) == "ok"
    assert f"{StageKind.GUARD}" == "guard"


def test_ok_output() -> None:
    empty = StageOutput.ok()
    assert empty.status is StageStatus.OK
    assert dict(empty.data) == {}
    assert empty.error is None
    assert empty.duration_ms is None
    assert empty.is_success

    merged = StageOutput.ok({"a": 1}, b=2, version="v1")
    assert merged.data == {"a": 1, "b": 2}
    assert merged.version == "v1"

    only_kwargs = StageOutput.ok(x=1)
    assert only_kwargs.data == {"x": 1}

    event = StageEvent("e")
    artifact = StageArtifact("file", {"p": 1})
    rich = StageOutput.ok(events=(event,), artifacts=(artifact,))
    assert rich.events == (event,)
    assert rich.artifacts == (artifact,)


def test_ok_keyword_data_wins_over_the_mapping_without_mutating_it() -> None:
    data = {"a": 1}
    output = StageOutput.ok(data, a=2)
    assert output.data == {"a": 2}
    assert data == {"a": 1}


def test_skip_output_carries_the_reason() -> None:
    output = StageOutput.skip("cached", {"hit": True})
    assert output.status is StageStatus.SKIP
    assert output.data == {"hit": True, "reason": "cached"}
    assert output.is_success
    assert StageOutput.skip().data == {"reason": ""}


def test_cancel_output_carries_the_reason() -> None:
    output = StageOutput.cancel("user left", {"step": 3})
    assert output.status is StageStatus.CANCEL
    assert output.data == {"step": 3, "cancel_reason": "user left"}
    assert not output.is_success


def test_fail_output_from_nothing_a_message_or_an_exception() -> None:
    unknown = StageOutput.fail()
    assert unknown.status is StageStatus.FAIL
    assert unknown.error == "Unknown error"
    assert unknown.exception is None
    assert not unknown.is_success

    message = StageOutput.fail("boom", {"partial": 1}, metadata={"error_type": "x"})
    assert message.error == "boom"
    assert message.data == {"partial": 1}
    assert message.metadata == {"error_type": "x"}

    exc = ValueError("bad value")
    from_exc = StageOutput.fail(exc)
    assert from_exc.error == "bad value"
    assert from_exc.exception is exc

    bare = StageOutput.fail(RuntimeError())
    assert bare.error == "RuntimeError"


def test_retry_output() -> None:
    exc = TimeoutError("slow")
    output = StageOutput.retry(exc, {"attempt": 1})
    assert output.status is StageStatus.RETRY
    assert output.error == "slow"
    assert output.exception is exc
    assert output.data == {"attempt": 1}
    assert not output.is_success
    assert StageOutput.retry("later").exception is None


def test_with_duration_and_with_metadata_return_copies() -> None:
    original = StageOutput.ok(x=1).with_metadata(a=1)
    timed = original.with_duration(12.5)
    more = timed.with_metadata(b=2)
    assert original.duration_ms is None
    assert timed.duration_ms == 12.5
    assert timed.data == original.data
    assert original.metadata == {"a": 1}
    assert more.metadata == {"a": 1, "b": 2}
    assert timed.metadata == {"a": 1}


def test_outputs_are_frozen_and_compare_without_the_exception() -> None:
    output = StageOutput.ok()
    with pytest.raises(dataclasses.FrozenInstanceError):
        output.status = StageStatus.FAIL  # type: ignore[misc]
    assert StageOutput.fail(ValueError("x")) == StageOutput.fail(ValueError("x"))
    assert "exception" not in repr(StageOutput.fail(ValueError("x")))


def test_events_and_artifacts_are_stamped_in_utc() -> None:
    before = dt.datetime.now(dt.UTC)
    event = StageEvent("order.priced", {"total": 1})
    artifact = StageArtifact("receipt", {"url": "u"})
    after = dt.datetime.now(dt.UTC)
    for stamp in (event.timestamp, artifact.timestamp):
        assert stamp.tzinfo is not None
        assert stamp.utcoffset() == dt.timedelta(0)
        assert before <= stamp <= after
    assert dict(StageEvent("x").data) == {}
    with pytest.raises(dataclasses.FrozenInstanceError):
        event.type = "other"  # type: ignore[misc]


class ProtocolStage:
    name = "p"
    kind = StageKind.ROUTE

    async def execute(self, ctx: StageContext) -> StageReturn:
        return None


class NotAStage:
    name = "n"


def test_the_stage_protocol_is_checkable() -> None:
    assert isinstance(ProtocolStage(), Stage)
    assert isinstance(NoOpStage(), Stage)
    assert not isinstance(NotAStage(), Stage)


@pytest.mark.anyio
async def test_noop_stage_succeeds_with_no_data() -> None:
    stage = NoOpStage("join")
    assert stage.name == "join"
    assert NoOpStage().name == "noop"
    assert NoOpStage.kind is StageKind.TRANSFORM
    results = await Pipeline("p").with_stage("join", stage).run()
    assert results["join"].status is StageStatus.OK
    assert dict(results["join"].data) == {}
