"""The backpressure queue: drops by policy, batching, retries, timeouts, lifecycle."""

from __future__ import annotations

import dataclasses
import logging
import os
import threading
import time
import warnings
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import anyio
import anyio.lowlevel
import pytest
import sniffio

from stageflow_otel.core import (
    BackpressureAwareEventSink,
    BackpressureStatistics,
    BatchExporter,
    Block,
    CollectingEventSink,
    DropNewest,
    DropOldest,
    OverflowPolicy,
    Pipeline,
    QueuedEvent,
    SinkListener,
    StageContext,
    StageReturn,
)
from tests.support.servers import wait_until

pytestmark = pytest.mark.anyio

HANG = 10.0
"""Seconds after which a wait counts as hung (never a speed assertion)."""

LOGGER = "stageflow_otel.events.backpressure"


class RecordingExporter:
    """Records every batch; ``wait_for(n)`` waits until n events arrived."""

    def __init__(self) -> None:
        self.batches: list[list[str]] = []
        self.shutdowns = 0
        self._cond = threading.Condition()

    def export(self, batch: Sequence[QueuedEvent], /) -> bool:
        with self._cond:
            self.batches.append([event.type for event in batch])
            self._cond.notify_all()
        return True

    def shutdown(self) -> None:
        self.shutdowns += 1

    @property
    def types(self) -> list[str]:
        """Every exported event type, in export order."""
        with self._cond:
            return self._types()

    def wait_for(self, count: int) -> bool:
        with self._cond:
            return self._cond.wait_for(lambda: len(self._types()) >= count, HANG)

    def _types(self) -> list[str]:
        return [t for batch in self.batches for t in batch]


class StalledExporter(RecordingExporter):
    """Blocks in ``export`` until released; ``entered`` is set when an export started."""

    def __init__(self) -> None:
        super().__init__()
        self.entered = threading.Event()
        self.release = threading.Event()

    def export(self, batch: Sequence[QueuedEvent], /) -> bool:
        self.entered.set()
        self.release.wait(HANG * 3)
        return super().export(batch)


class FlakyExporter(RecordingExporter):
    """Fails its first ``failures`` calls: alternately raising and returning False."""

    def __init__(self, failures: int) -> None:
        super().__init__()
        self.failures = failures
        self.calls = 0

    def export(self, batch: Sequence[QueuedEvent], /) -> bool:
        self.calls += 1
        if self.calls <= self.failures:
            if self.calls % 2:
                raise ConnectionError("collector unavailable")
            return False
        return super().export(batch)


class RecordingListener(SinkListener):
    """Records what the sink tells it: results, exports ``(duration, count, ok)``, drops."""

    def __init__(self) -> None:
        self.results: list[tuple[str, int]] = []
        self.exports: list[tuple[float, int, bool]] = []
        self.dropped: list[str] = []

    def on_result(self, result: str, count: int) -> None:
        self.results.append((result, count))

    def on_export(self, duration_s: float, count: int, ok: bool) -> None:
        self.exports.append((duration_s, count, ok))

    def on_drop(self, event: QueuedEvent) -> None:
        self.dropped.append(event.type)

    @property
    def outcomes(self) -> list[tuple[int, bool]]:
        """Each export as ``(count, ok)``."""
        return [(count, ok) for _, count, ok in self.exports]


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def sinks() -> Iterator[list[BackpressureAwareEventSink]]:
    """Sinks to shut down after the test, releasing any stalled exporter first."""
    created: list[BackpressureAwareEventSink] = []
    yield created
    for sink in created:
        if isinstance(sink.downstream, StalledExporter):
            sink.downstream.release.set()
        sink.shutdown(timeout=HANG)


def make(
    sinks: list[BackpressureAwareEventSink],
    downstream: Any,
    **options: Any,
) -> BackpressureAwareEventSink:
    options.setdefault("flush_interval", 3600.0)
    sink = BackpressureAwareEventSink(downstream, **options)
    sinks.append(sink)
    return sink


def plug(sink: BackpressureAwareEventSink, exporter: StalledExporter, batch: int) -> None:
    """Emit one full batch and wait until the worker is stuck exporting it."""
    for i in range(batch):
        sink.try_emit(type=f"plug{i}", data={})
    assert exporter.entered.wait(HANG)
    assert sink.statistics().in_flight == batch
    assert sink.statistics().queue_size == 0


PLUG = ["plug0", "plug1", "plug2", "plug3"]


# -- overflow policies -----------------------------------------------------------------------


async def test_drop_newest_keeps_the_first_events_and_counts_the_rest(
    sinks: list[BackpressureAwareEventSink],
) -> None:
    exporter = StalledExporter()
    listener = RecordingListener()
    sink = make(sinks, exporter, max_queue_size=4, max_batch_size=4, listener=listener)
    plug(sink, exporter, 4)

    for i in range(10):
        sink.try_emit(type=f"e{i}", data={"i": i})

    stats = sink.statistics()
    assert (stats.queue_size, stats.dropped_queue_full, stats.emitted) == (4, 6, 8)
    assert listener.dropped == ["e4", "e5", "e6", "e7", "e8", "e9"]
    exporter.release.set()
    assert sink.force_flush(timeout=HANG)
    assert exporter.types == [*PLUG, "e0", "e1", "e2", "e3"]
    assert sink.statistics().exported == 8


async def test_drop_oldest_keeps_the_newest_events(
    sinks: list[BackpressureAwareEventSink],
) -> None:
    exporter = StalledExporter()
    listener = RecordingListener()
    sink = make(
        sinks, exporter, max_queue_size=4, max_batch_size=4, policy="drop_oldest", listener=listener
    )
    plug(sink, exporter, 4)

    for i in range(10):
        sink.try_emit(type=f"e{i}", data={})

    stats = sink.statistics()
    assert (stats.queue_size, stats.dropped_queue_full) == (4, 6)
    assert listener.dropped == ["e0", "e1", "e2", "e3", "e4", "e5"]
    exporter.release.set()
    assert sink.force_flush(timeout=HANG)
    assert exporter.types == [*PLUG, "e6", "e7", "e8", "e9"]


@pytest.mark.parametrize(
    "policy",
    [{"policy": "block", "block_timeout": 0.05}, {"policy": Block(timeout=0.05)}],
    ids=["named", "object"],
)
async def test_block_policy_emit_waits_then_times_out_and_counts(
    sinks: list[BackpressureAwareEventSink], policy: dict[str, Any]
) -> None:
    exporter = StalledExporter()
    sink = make(sinks, exporter, max_queue_size=2, max_batch_size=2, **policy)
    plug(sink, exporter, 2)
    await sink.emit(type="a", data={})
    await sink.emit(type="b", data={})

    started = anyio.current_time()
    with anyio.fail_after(HANG):
        await sink.emit(type="c", data={})
    assert anyio.current_time() - started >= 0.05
    assert sink.statistics().dropped_queue_full == 1

    sink.try_emit(type="d", data={})  # try_emit never waits: it drops the new event
    assert sink.statistics().dropped_queue_full == 2
    exporter.release.set()
    assert sink.force_flush(timeout=HANG)
    assert exporter.types == ["plug0", "plug1", "a", "b"]


async def test_block_policy_emit_resumes_when_room_frees(
    sinks: list[BackpressureAwareEventSink],
) -> None:
    exporter = StalledExporter()
    sink = make(
        sinks, exporter, max_queue_size=2, max_batch_size=2, policy="block", block_timeout=HANG
    )
    plug(sink, exporter, 2)
    sink.try_emit(type="a", data={})
    sink.try_emit(type="b", data={})
    finished = anyio.Event()

    async def blocked_emit() -> None:
        await sink.emit(type="c", data={})
        finished.set()

    with anyio.fail_after(HANG):
        async with anyio.create_task_group() as tg:
            tg.start_soon(blocked_emit)
            await anyio.sleep(0.02)
            assert not finished.is_set()  # the queue is full and the exporter stalled
            exporter.release.set()
            await finished.wait()

    assert sink.statistics().dropped_queue_full == 0
    assert await sink.aflush(timeout=HANG)
    assert exporter.types == ["plug0", "plug1", "a", "b", "c"]


async def test_block_policy_emit_is_cancellable(sinks: list[BackpressureAwareEventSink]) -> None:
    exporter = StalledExporter()
    sink = make(
        sinks, exporter, max_queue_size=1, max_batch_size=1, policy="block", block_timeout=HANG
    )
    plug(sink, exporter, 1)
    sink.try_emit(type="a", data={})

    with anyio.move_on_after(0.02) as scope:
        await sink.emit(type="b", data={})

    assert scope.cancelled_caught
    stats = sink.statistics()
    assert (stats.queue_size, stats.dropped_queue_full) == (1, 0)


def test_policy_names_are_the_built_in_policy_objects(
    sinks: list[BackpressureAwareEventSink],
) -> None:
    exporter = RecordingExporter()
    newest = make(sinks, exporter)
    oldest = make(sinks, exporter, policy="drop_oldest")
    block = make(sinks, exporter, policy="block", block_timeout=0.5)
    mine = DropOldest()

    assert type(newest.policy) is DropNewest
    assert type(oldest.policy) is DropOldest
    assert isinstance(block.policy, Block)
    assert block.policy.wait == 0.5
    assert make(sinks, exporter, policy=mine).policy is mine
    assert [s.statistics().policy for s in (newest, oldest, block)] == [
        "drop_newest",
        "drop_oldest",
        "block",
    ]
    assert repr(block.policy) == "Block(timeout=0.5)"
    assert newest.results == ("exported", "dropped_queue_full", "dropped_shutdown", "export_failed")


class DropDebugFirst(OverflowPolicy):
    """A full queue evicts its oldest ``debug.*`` event; without one, drops the offered one."""

    result = "dropped_debug"

    def on_full(self, event: QueuedEvent, queued: Sequence[QueuedEvent]) -> int | None:
        for index, waiting in enumerate(queued):
            if waiting.type.startswith("debug."):
                return index
        return None


async def test_a_custom_policy_chooses_what_a_full_queue_drops(
    sinks: list[BackpressureAwareEventSink],
) -> None:
    exporter = StalledExporter()
    listener = RecordingListener()
    sink = make(
        sinks,
        exporter,
        max_queue_size=4,
        max_batch_size=4,
        policy=DropDebugFirst(),
        listener=listener,
    )
    plug(sink, exporter, 4)
    for event in ("a", "debug.1", "b", "debug.2"):
        sink.try_emit(type=event, data={})

    sink.try_emit(type="c", data={})  # evicts debug.1, from the middle of the queue
    await sink.emit(type="d", data={})  # evicts debug.2
    sink.try_emit(type="e", data={})  # no debug event left: e is dropped

    assert listener.dropped == ["debug.1", "debug.2", "e"]
    assert listener.results == [("dropped_debug", 1)] * 3
    stats = sink.statistics()
    assert (stats.policy, stats.queue_size, stats.dropped_queue_full) == ("DropDebugFirst", 4, 3)
    assert stats.emitted == 4 + 6  # the plug, a, debug.1, b, debug.2, c, d
    exporter.release.set()
    assert sink.force_flush(timeout=HANG)
    assert exporter.types == [*PLUG, "a", "b", "c", "d"]
    assert sink.statistics().exported == 8
    assert "dropped_debug" in sink.results
    assert "dropped_queue_full" not in sink.results


class Broken(OverflowPolicy):
    def __init__(self, answer: object) -> None:
        self.answer = answer

    def on_full(self, event: QueuedEvent, queued: Sequence[QueuedEvent]) -> int | None:
        if isinstance(self.answer, Exception):
            raise self.answer
        return self.answer  # type: ignore[return-value]


async def test_a_negative_index_counts_from_the_end_of_the_queue(
    sinks: list[BackpressureAwareEventSink],
) -> None:
    exporter = StalledExporter()
    listener = RecordingListener()
    sink = make(
        sinks, exporter, max_queue_size=3, max_batch_size=1, policy=Broken(-1), listener=listener
    )
    plug(sink, exporter, 1)
    for event in ("a", "b", "c", "d", "e"):
        sink.try_emit(type=event, data={})  # d evicts c, then e evicts d

    assert listener.dropped == ["c", "d"]
    exporter.release.set()
    assert sink.force_flush(timeout=HANG)
    assert exporter.types == ["plug0", "a", "b", "e"]
    assert sink.statistics().emitted == 6


@pytest.mark.parametrize("answer", [RuntimeError("bug"), 7, -3, "0", 1.0], ids=repr)
async def test_a_failing_policy_is_logged_once_and_replaced_by_drop_newest(
    sinks: list[BackpressureAwareEventSink], caplog: pytest.LogCaptureFixture, answer: object
) -> None:
    exporter = StalledExporter()
    sink = make(sinks, exporter, max_queue_size=2, max_batch_size=1, policy=Broken(answer))
    plug(sink, exporter, 1)
    sink.try_emit(type="a", data={})
    sink.try_emit(type="b", data={})

    with caplog.at_level(logging.ERROR, logger=LOGGER):
        for _ in range(3):
            sink.try_emit(type="late", data={})  # never raises

    errors = [r for r in caplog.records if r.name == LOGGER and r.levelno >= logging.ERROR]
    assert len(errors) == 1
    assert "overflow policy" in errors[0].getMessage()
    stats = sink.statistics()
    assert (stats.policy, stats.dropped_queue_full, stats.queue_size) == ("drop_newest", 3, 2)
    exporter.release.set()
    assert sink.force_flush(timeout=HANG)
    assert exporter.types == ["plug0", "a", "b"]


# -- batching --------------------------------------------------------------------------------


async def test_a_full_batch_is_exported_at_once(sinks: list[BackpressureAwareEventSink]) -> None:
    exporter = RecordingExporter()
    sink = make(sinks, exporter, max_batch_size=8, flush_interval=3600.0)

    for i in range(11):
        sink.try_emit(type=f"e{i}", data={})

    # The flush interval is an hour: only eager export can deliver the first batch.
    assert exporter.wait_for(8)
    assert exporter.batches == [[f"e{i}" for i in range(8)]]
    assert sink.force_flush(timeout=HANG)
    assert exporter.batches[1:] == [["e8", "e9", "e10"]]


async def test_a_partial_batch_is_exported_after_the_flush_interval(
    sinks: list[BackpressureAwareEventSink],
) -> None:
    exporter = RecordingExporter()
    sink = make(sinks, exporter, max_batch_size=512, flush_interval=0.02)

    for i in range(3):
        sink.try_emit(type=f"e{i}", data={})

    assert exporter.wait_for(3)  # no flush asked for: the interval did it
    assert sink.force_flush(timeout=HANG)
    assert exporter.batches == [["e0", "e1", "e2"]]
    stats = sink.statistics()
    assert (stats.exported, stats.export_batches) == (3, 1)


async def test_an_async_downstream_receives_every_event_in_order(
    sinks: list[BackpressureAwareEventSink],
) -> None:
    downstream = CollectingEventSink()
    sink = make(sinks, downstream, max_batch_size=4)

    for i in range(10):
        await sink.emit(type=f"e{i}", data={"i": i})

    assert await sink.aflush(timeout=HANG)
    assert downstream.types == [f"e{i}" for i in range(10)]
    assert downstream.events[3].data == {"i": 3}
    assert sink.statistics().exported == 10


async def test_an_async_downstream_runs_on_the_starting_backend(
    sinks: list[BackpressureAwareEventSink], anyio_backend: str
) -> None:
    seen: list[tuple[str, str, str]] = []

    class Recording:
        async def emit(self, *, type: str, data: Mapping[str, Any]) -> None:
            await anyio.lowlevel.checkpoint()
            library = sniffio.current_async_library()
            seen.append((type, library, threading.current_thread().name))

        def try_emit(self, *, type: str, data: Mapping[str, Any]) -> None:
            raise AssertionError("the queue only awaits emit")

    sink = make(sinks, Recording())
    sink.try_emit(type="a", data={})

    assert await sink.aflush(timeout=HANG)
    assert seen == [("a", anyio_backend, "stageflow-sink-events")]  # not on the test's loop


# -- failing and stalled exporters -----------------------------------------------------------


async def test_a_failing_export_is_retried_then_counted_as_failed(
    sinks: list[BackpressureAwareEventSink],
) -> None:
    exporter = FlakyExporter(failures=1000)
    listener = RecordingListener()
    sink = make(sinks, exporter, max_retries=2, retry_base_delay=0.001, listener=listener)

    for i in range(5):
        sink.try_emit(type=f"e{i}", data={})

    assert not sink.force_flush(timeout=HANG)
    stats = sink.statistics()
    assert (stats.export_failed, stats.exported, stats.export_retries) == (5, 0, 2)
    assert exporter.calls == 3
    assert listener.results == [("export_failed", 5)]
    assert listener.outcomes == [(5, False)]


async def test_a_flaky_export_succeeds_on_retry(sinks: list[BackpressureAwareEventSink]) -> None:
    exporter = FlakyExporter(failures=2)  # raises, then returns False, then works
    sink = make(sinks, exporter, max_retries=3, retry_base_delay=0.001)

    for i in range(3):
        sink.try_emit(type=f"e{i}", data={})

    assert sink.force_flush(timeout=HANG)
    stats = sink.statistics()
    assert (stats.exported, stats.export_failed, stats.export_retries) == (3, 0, 2)
    assert exporter.types == ["e0", "e1", "e2"]


async def test_exporter_errors_never_reach_the_caller(
    sinks: list[BackpressureAwareEventSink],
) -> None:
    exporter = FlakyExporter(failures=1000)
    sink = make(sinks, exporter, max_retries=0, max_queue_size=2, max_batch_size=1)

    for i in range(20):
        sink.try_emit(type=f"e{i}", data={})
        await sink.emit(type=f"f{i}", data={})
    sink.force_flush(timeout=HANG)
    sink.shutdown(timeout=HANG)
    sink.try_emit(type="late", data={})

    stats = sink.statistics()
    assert stats.exported == 0
    assert stats.export_failed + stats.dropped_queue_full + stats.dropped_shutdown == 41


async def test_a_stalled_export_times_out_and_counts_as_failed(
    sinks: list[BackpressureAwareEventSink],
) -> None:
    exporter = StalledExporter()
    listener = RecordingListener()
    sink = make(
        sinks, exporter, max_batch_size=2, export_timeout=0.02, max_retries=3, listener=listener
    )

    sink.try_emit(type="a", data={})
    sink.try_emit(type="b", data={})

    assert not sink.force_flush(timeout=HANG)
    stats = sink.statistics()
    # Counted at the deadline and never retried: the abandoned call may still complete.
    assert (stats.export_failed, stats.export_retries, stats.in_flight) == (2, 0, 0)
    assert listener.outcomes == [(2, False)]
    exporter.release.set()
    sink.try_emit(type="c", data={})
    assert sink.force_flush(timeout=HANG)  # the worker goes on once the call returns
    assert exporter.types == ["a", "b", "c"]
    assert sink.statistics().exported == 1  # the late result of the abandoned call is ignored


async def test_force_flush_honours_its_timeout_against_a_stalled_exporter(
    sinks: list[BackpressureAwareEventSink],
) -> None:
    exporter = StalledExporter()
    sink = make(sinks, exporter, max_batch_size=2)
    plug(sink, exporter, 2)
    sink.try_emit(type="a", data={})

    started = time.monotonic()
    assert not sink.force_flush(timeout=0.05)
    assert time.monotonic() - started < HANG
    assert sink.statistics().queue_size == 1  # still queued, not lost


async def test_shutdown_honours_its_timeout_and_drops_what_is_queued(
    sinks: list[BackpressureAwareEventSink],
) -> None:
    exporter = StalledExporter()
    listener = RecordingListener()
    sink = make(sinks, exporter, max_batch_size=2, listener=listener)
    plug(sink, exporter, 2)
    for i in range(3):
        sink.try_emit(type=f"e{i}", data={})

    started = time.monotonic()
    assert not await sink.aclose(timeout=0.05)
    assert time.monotonic() - started < HANG
    stats = sink.statistics()
    assert (stats.closed, stats.queue_size, stats.dropped_shutdown) == (True, 0, 3)
    assert (stats.in_flight, stats.export_failed) == (0, 2)
    assert listener.results == [("dropped_shutdown", 3), ("export_failed", 2)]


async def test_shutdown_exports_everything_then_shuts_the_exporter_down(
    sinks: list[BackpressureAwareEventSink],
) -> None:
    exporter = RecordingExporter()
    sink = make(sinks, exporter)

    for i in range(5):
        sink.try_emit(type=f"e{i}", data={})

    assert sink.shutdown(timeout=HANG)
    assert exporter.types == [f"e{i}" for i in range(5)]
    assert exporter.shutdowns == 1
    assert sink.shutdown(timeout=HANG)  # idempotent: the first call's result
    assert exporter.shutdowns == 1
    assert not sink.statistics().running


@pytest.mark.parametrize("policy", ["drop_newest", "drop_oldest", "block"])
async def test_events_after_shutdown_are_counted_as_dropped_shutdown(
    sinks: list[BackpressureAwareEventSink], policy: Any
) -> None:
    exporter = RecordingExporter()
    sink = make(sinks, exporter, policy=policy)
    sink.try_emit(type="before", data={})
    assert sink.shutdown(timeout=HANG)

    sink.try_emit(type="late1", data={})
    await sink.emit(type="late2", data={})
    sink.start()  # a shut-down sink stays shut down

    stats = sink.statistics()
    assert (stats.exported, stats.dropped_shutdown, stats.running) == (1, 2, False)
    assert exporter.types == ["before"]
    assert sink.force_flush(timeout=HANG)  # what was accepted before shutdown was exported


async def test_async_context_manager_starts_and_drains(
    sinks: list[BackpressureAwareEventSink],
) -> None:
    downstream = CollectingEventSink()
    sink = make(sinks, downstream)
    assert not sink.statistics().running

    async with sink:
        assert sink.statistics().running
        for i in range(3):
            sink.try_emit(type=f"e{i}", data={})

    assert downstream.types == ["e0", "e1", "e2"]
    assert sink.statistics().closed


async def test_an_async_downstream_that_hangs_times_out_per_event(
    sinks: list[BackpressureAwareEventSink],
) -> None:
    delivered: list[str] = []

    class Hanging:
        async def emit(self, *, type: str, data: Mapping[str, Any]) -> None:
            if type == "hang":
                await anyio.sleep_forever()
            delivered.append(type)

        def try_emit(self, *, type: str, data: Mapping[str, Any]) -> None:
            raise AssertionError("the queue only awaits emit")

    sink = make(sinks, Hanging(), emit_timeout=0.02, max_retries=1, retry_base_delay=0.001)
    for event in ("a", "hang", "b"):
        sink.try_emit(type=event, data={})

    assert not sink.force_flush(timeout=HANG)
    assert delivered == ["a", "b"]
    stats = sink.statistics()
    assert (stats.exported, stats.export_failed, stats.export_retries) == (2, 1, 1)


# -- observability of the queue itself -------------------------------------------------------


async def test_the_drop_warning_is_rate_limited(
    sinks: list[BackpressureAwareEventSink], caplog: pytest.LogCaptureFixture
) -> None:
    exporter = StalledExporter()
    clock = FakeClock()
    sink = make(
        sinks, exporter, max_queue_size=1, max_batch_size=1, warn_interval=10.0, clock=clock
    )
    plug(sink, exporter, 1)
    sink.try_emit(type="queued", data={})

    with caplog.at_level(logging.WARNING, logger=LOGGER):
        for _ in range(100):
            sink.try_emit(type="x", data={})
        clock.now += 9.0
        sink.try_emit(type="x", data={})
        warnings_so_far = [r for r in caplog.records if r.name == LOGGER]
        clock.now += 1.0
        sink.try_emit(type="x", data={})

    records = [r for r in caplog.records if r.name == LOGGER]
    assert len(warnings_so_far) == 1
    assert "1 dropped so far" in warnings_so_far[0].getMessage()
    assert len(records) == 2
    assert "102 dropped so far" in records[1].getMessage()
    assert sink.statistics().last_drop_time == clock.now


async def test_statistics_is_a_frozen_snapshot(sinks: list[BackpressureAwareEventSink]) -> None:
    exporter = StalledExporter()
    sink = make(sinks, exporter, max_queue_size=2, max_batch_size=2, name="audit")
    before = sink.statistics()
    plug(sink, exporter, 2)
    sink.try_emit(type="a", data={})

    with pytest.raises(dataclasses.FrozenInstanceError):
        before.emitted = 5  # type: ignore[misc]
    assert isinstance(before, BackpressureStatistics)
    assert (before.name, before.capacity, before.emitted, before.running) == (
        "audit",
        2,
        0,
        False,
    )
    after = sink.statistics()
    assert (after.emitted, after.in_flight, after.queue_size, after.running) == (3, 2, 1, True)
    assert after.dropped == 0


async def test_the_listener_sees_every_outcome(
    sinks: list[BackpressureAwareEventSink],
) -> None:
    exporter = StalledExporter()
    listener = RecordingListener()
    sink = make(sinks, exporter, max_queue_size=2, max_batch_size=2, listener=listener)
    plug(sink, exporter, 2)
    for i in range(3):
        sink.try_emit(type=f"e{i}", data={})
    exporter.release.set()
    assert sink.force_flush(timeout=HANG)

    assert listener.results == [("dropped_queue_full", 1), ("exported", 2), ("exported", 2)]
    assert listener.outcomes == [(2, True), (2, True)]
    assert all(duration >= 0 for duration, _, _ in listener.exports)
    assert listener.dropped == ["e2"]


class RaisingListener(SinkListener):
    """Raises from ``raising_hook``; records every call."""

    def __init__(self, raising_hook: str) -> None:
        self.raising_hook = raising_hook
        self.calls: list[str] = []

    def _called(self, hook: str) -> None:
        self.calls.append(hook)
        if hook == self.raising_hook:
            raise RuntimeError("metrics backend down")

    def on_result(self, result: str, count: int) -> None:
        self._called("on_result")

    def on_export(self, duration_s: float, count: int, ok: bool) -> None:
        self._called("on_export")

    def on_drop(self, event: QueuedEvent) -> None:
        self._called("on_drop")


def listener_errors(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [
        r.getMessage() for r in caplog.records if r.name == LOGGER and r.levelno >= logging.ERROR
    ]


async def test_a_raising_listener_is_removed_after_one_logged_error_and_export_goes_on(
    sinks: list[BackpressureAwareEventSink], caplog: pytest.LogCaptureFixture
) -> None:
    exporter = RecordingExporter()
    listener = RaisingListener("on_result")
    sink = make(sinks, exporter, max_batch_size=1, listener=listener)
    with caplog.at_level(logging.ERROR, logger=LOGGER):
        for i in range(3):
            sink.try_emit(type=f"e{i}", data={})
        assert sink.force_flush(timeout=HANG)

    assert listener.calls == ["on_result"]  # not even the on_export of the same export
    assert exporter.types == ["e0", "e1", "e2"]
    (error,) = listener_errors(caplog)
    assert "listener" in error
    assert "on_result" in error
    assert sink.statistics().exported == 3


async def test_a_listener_raising_on_a_drop_never_reaches_the_producer(
    sinks: list[BackpressureAwareEventSink], caplog: pytest.LogCaptureFixture
) -> None:
    exporter = StalledExporter()
    listener = RaisingListener("on_drop")
    sink = make(sinks, exporter, max_queue_size=1, max_batch_size=1, listener=listener)
    plug(sink, exporter, 1)
    sink.try_emit(type="queued", data={})

    with caplog.at_level(logging.ERROR, logger=LOGGER):
        for _ in range(5):
            sink.try_emit(type="dropped", data={})  # would raise into the producer
            await sink.emit(type="dropped", data={})

    assert listener.calls == ["on_result", "on_drop"]
    assert len(listener_errors(caplog)) == 1
    assert sink.statistics().dropped_queue_full == 10


async def test_statistics_match_what_the_listener_saw(
    sinks: list[BackpressureAwareEventSink],
) -> None:
    exporter = StalledExporter()
    listener = RecordingListener()
    sink = make(
        sinks,
        exporter,
        max_queue_size=4,
        max_batch_size=2,
        export_timeout=0.05,
        max_retries=0,
        listener=listener,
    )
    plug(sink, exporter, 2)  # abandoned at the export timeout: export_failed
    for i in range(6):  # 4 queued, 2 dropped
        sink.try_emit(type=f"e{i}", data={})
    wait_until(lambda: sink.statistics().export_failed == 2, HANG, 0.005, what="abandoned")
    exporter.release.set()
    assert sink.force_flush(timeout=HANG)  # the 4 queued ones are exported
    assert sink.shutdown(timeout=HANG)
    sink.try_emit(type="late", data={})  # dropped_shutdown

    seen: dict[str, int] = {}
    for result, count in listener.results:
        seen[result] = seen.get(result, 0) + count
    stats = sink.statistics()
    assert seen == {
        "exported": stats.exported,
        "export_failed": stats.export_failed,
        "dropped_queue_full": stats.dropped_queue_full,
        "dropped_shutdown": stats.dropped_shutdown,
    }
    assert (stats.exported, stats.export_failed) == (4, 2)
    assert (stats.dropped_queue_full, stats.dropped_shutdown) == (2, 1)
    assert set(seen) == set(sink.results)
    assert sum(count for _, count, _ in listener.exports) == stats.exported + stats.export_failed
    assert len(listener.exports) == stats.export_batches
    assert listener.dropped == ["e4", "e5", "late"]


async def test_a_listener_may_override_only_the_hooks_it_needs(
    sinks: list[BackpressureAwareEventSink],
) -> None:
    class Counting(SinkListener):
        def __init__(self) -> None:
            self.exported = 0

        def on_result(self, result: str, count: int) -> None:
            if result == "exported":
                self.exported += count

    listener = Counting()
    sink = make(sinks, RecordingExporter(), listener=listener)
    for i in range(3):
        sink.try_emit(type=f"e{i}", data={})

    assert sink.force_flush(timeout=HANG)
    assert listener.exported == 3


# -- threads, construction, fork -------------------------------------------------------------


async def test_try_emit_from_other_threads(sinks: list[BackpressureAwareEventSink]) -> None:
    exporter = RecordingExporter()
    sink = make(sinks, exporter, max_batch_size=64)

    def produce(worker: int) -> None:
        for i in range(250):
            sink.try_emit(type=f"t{worker}.{i}", data={})

    threads = [threading.Thread(target=produce, args=(w,)) for w in range(4)]
    for thread in threads:
        thread.start()
    sink.try_emit(type="loop", data={})
    for thread in threads:
        thread.join(HANG)

    assert sink.force_flush(timeout=HANG)
    assert sorted(exporter.types) == sorted(
        ["loop", *(f"t{w}.{i}" for w in range(4) for i in range(250))]
    )
    for w in range(4):  # each producer's events stay in its order
        mine = [t for t in exporter.types if t.startswith(f"t{w}.")]
        assert mine == [f"t{w}.{i}" for i in range(250)]


def test_invalid_arguments_are_rejected() -> None:
    exporter = RecordingExporter()
    with pytest.raises(ValueError, match="max_batch_size"):
        BackpressureAwareEventSink(exporter, max_queue_size=4, max_batch_size=8)
    with pytest.raises(ValueError, match="policy"):
        BackpressureAwareEventSink(exporter, policy="drop_random")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="flush_interval"):
        BackpressureAwareEventSink(exporter, flush_interval=0)
    with pytest.raises(TypeError, match="downstream"):
        BackpressureAwareEventSink(object())  # type: ignore[arg-type]
    assert isinstance(exporter, BatchExporter)


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_a_forked_child_starts_with_an_empty_queue(
    sinks: list[BackpressureAwareEventSink],
) -> None:
    exporter = RecordingExporter()
    sink = make(sinks, exporter)
    sink.try_emit(type="parent", data={})
    read_fd, write_fd = os.pipe()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # fork with threads, 3.12+
        pid = os.fork()
    if pid == 0:  # pragma: no cover - runs in the child
        try:
            before = sink.statistics()
            sink.try_emit(type="child", data={})
            flushed = sink.force_flush(timeout=HANG)
            report = f"{before.queue_size},{before.emitted},{flushed},{','.join(exporter.types)}"
            os.write(write_fd, report.encode())
        finally:
            os._exit(0)
    os.close(write_fd)
    with os.fdopen(read_fd) as reader:
        report = reader.read()
    os.waitpid(pid, 0)

    assert report == "0,0,True,child"
    assert sink.force_flush(timeout=HANG)
    assert exporter.types == ["parent"]


# -- in a pipeline run -----------------------------------------------------------------------


async def noop(ctx: StageContext) -> StageReturn:
    return None


async def test_a_run_with_a_stalled_sink_completes_and_counts_its_drops(
    sinks: list[BackpressureAwareEventSink],
) -> None:
    exporter = StalledExporter()
    sink = make(sinks, exporter, max_queue_size=8, max_batch_size=4)
    pipeline = Pipeline("fan")
    for i in range(20):
        pipeline = pipeline.with_stage(f"s{i}", noop)
    graph = pipeline.build()

    with anyio.fail_after(HANG):
        results = await graph.run(event_sink=sink)

    assert results.ok
    assert len(results) == 20
    stats = sink.statistics()
    events = 2 + 2 * 20  # pipeline started/completed, stage started/completed
    assert stats.exported == 0
    assert stats.in_flight + stats.queue_size + stats.dropped_queue_full == events
    assert stats.dropped_queue_full >= events - 8 - 4
    assert not sink.shutdown(timeout=0.05)
    final = sink.statistics()
    assert (final.queue_size, final.in_flight, final.exported) == (0, 0, 0)
    assert final.export_failed == 4  # the batch the worker is stuck on, abandoned
    assert final.dropped_queue_full + final.dropped_shutdown + final.export_failed == events


async def test_a_run_with_a_healthy_sink_exports_every_event(
    sinks: list[BackpressureAwareEventSink],
) -> None:
    downstream = CollectingEventSink()
    sink = make(sinks, downstream, max_batch_size=8)
    graph = Pipeline("pair").with_stage("a", noop).with_stage("b", noop, dependencies=["a"]).build()

    async with sink:
        with anyio.fail_after(HANG):
            await graph.run(event_sink=sink)

    assert downstream.types == [
        "pipeline.started",
        "stage.started",
        "stage.completed",
        "stage.started",
        "stage.completed",
        "pipeline.completed",
    ]
    assert sink.statistics().exported == 6
