from __future__ import annotations

import math

import pytest

from stageflow_otel.tools import ToolUndoError, UndoMetadata, UndoStore


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def record(action_id: str) -> UndoMetadata:
    return UndoMetadata(action_id, "tool", {"n": action_id})


def test_records_live_for_their_ttl() -> None:
    clock = FakeClock()
    store = UndoStore(default_ttl=10, clock=clock)
    a = record("a")
    store.store(a)
    store.store(record("b"), ttl=100)
    assert store.get("a") is a
    assert "a" in store
    assert len(store) == 2
    clock.now += 10
    assert store.get("a") is None
    assert "a" not in store
    assert store.require("b").undo_data == {"n": "b"}
    assert len(store) == 1


def test_require_says_why_a_record_is_missing() -> None:
    clock = FakeClock()
    store = UndoStore(default_ttl=5, clock=clock)
    store.store(record("a"))
    clock.now += 6
    with pytest.raises(ToolUndoError) as expired:
        store.require("a")
    assert (expired.value.reason, expired.value.tool) == ("expired", "tool")
    with pytest.raises(ToolUndoError) as unknown:
        store.require("a")
    assert unknown.value.reason == "unknown_action"
    assert unknown.value.code == "TOOL_UNDO_FAILED"


def test_cleanup_and_statistics() -> None:
    clock = FakeClock()
    store = UndoStore(default_ttl=5, clock=clock)
    for name in "abc":
        store.store(record(name))
    store.store(record("forever"), ttl=math.inf)
    clock.now += 5
    assert store.cleanup() == 3
    assert store.cleanup() == 0
    stats = store.statistics()
    assert (stats.records, stats.stored, stats.expired) == (1, 4, 3)
    assert store.delete("forever") is True
    assert store.delete("forever") is False


def test_store_sweeps_expired_records_on_its_own() -> None:
    clock = FakeClock()
    store = UndoStore(default_ttl=1, clock=clock)
    store.store(record("old"))
    clock.now += 2
    for i in range(255):
        store.store(record(str(i)), ttl=100)
    assert store.statistics().expired == 1


@pytest.mark.parametrize("ttl", [0, -1, math.nan])
def test_ttl_must_be_positive(ttl: float) -> None:
    with pytest.raises(ValueError, match="positive"):
        UndoStore(default_ttl=ttl)
    with pytest.raises(ValueError, match="positive"):
        UndoStore().store(record("a"), ttl=ttl)
