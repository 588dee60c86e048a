"""The chunk queue under stalled and fast consumers, re-chunking, the backpressure monitor."""

from __future__ import annotations

from collections.abc import AsyncIterator

import anyio
import pytest
from anyio import wait_all_tasks_blocked
from hypothesis import given
from hypothesis import strategies as st

from stageflow_otel.core import Block, DropNewest, DropOldest, OverflowPolicy
from stageflow_otel.helpers import BackpressureMonitor, ChunkQueue, StreamStatistics, rechunk

pytestmark = pytest.mark.anyio


def accounted(stats: StreamStatistics) -> bool:
    """Every offered chunk is in exactly one place."""
    return stats.offered == stats.depth + stats.delivered + stats.dropped + stats.evicted


async def drain(queue: ChunkQueue[int]) -> list[int]:
    return [chunk async for chunk in queue]


async def test_a_stalled_consumer_under_drop_oldest_gets_the_newest_chunks_in_order() -> None:
    queue: ChunkQueue[int] = ChunkQueue(8, policy="drop_oldest")
    for i in range(1000):
        assert queue.put_nowait(i)
        assert len(queue) <= 8  # memory is bounded by the queue
    queue.close()
    assert await drain(queue) == list(range(992, 1000))
    stats = queue.statistics()
    assert (stats.offered, stats.delivered, stats.dropped, stats.evicted) == (1000, 8, 0, 992)
    assert stats.max_depth == 8
    assert accounted(stats)


async def test_a_stalled_consumer_under_drop_newest_gets_the_first_chunks() -> None:
    queue: ChunkQueue[int] = ChunkQueue(8, policy=DropNewest())
    accepted = [queue.put_nowait(i) for i in range(100)]
    assert accepted == [True] * 8 + [False] * 92
    queue.close()
    assert await drain(queue) == list(range(8))
    stats = queue.statistics()
    assert (stats.dropped, stats.evicted, stats.delivered) == (92, 0, 8)
    assert accounted(stats)


async def test_block_stops_the_producer_at_the_bound_until_the_consumer_reads() -> None:
    queue: ChunkQueue[int] = ChunkQueue(4)  # "block", no time limit
    produced: list[int] = []

    async def produce() -> None:
        for i in range(20):
            await queue.put(i)
            produced.append(i)
        queue.close()

    async with anyio.create_task_group() as tg:
        tg.start_soon(produce)
        await wait_all_tasks_blocked()
        # The consumer is stalled: the producer waits with the queue full.
        assert len(queue) == 4
        assert produced == [0, 1, 2, 3]
        assert queue.monitor.throttled
        received = await drain(queue)
    assert received == list(range(20))
    stats = queue.statistics()
    assert (stats.dropped, stats.evicted, stats.max_depth) == (0, 0, 4)
    assert stats.ended
    assert accounted(stats)


async def test_block_with_a_timeout_drops_the_offered_chunk_when_time_is_up() -> None:
    queue: ChunkQueue[int] = ChunkQueue(2, policy=Block(timeout=0.001))
    results = [await queue.put(i) for i in range(4)]
    assert results == [True, True, False, False]
    assert queue.statistics().dropped == 2


async def test_a_fast_consumer_receives_everything_in_order() -> None:
    queue: ChunkQueue[int] = ChunkQueue(4, policy="drop_oldest")

    async def produce() -> None:
        for i in range(500):
            queue.put_nowait(i)
            await anyio.lowlevel.checkpoint()
        queue.close()

    async with anyio.create_task_group() as tg:
        tg.start_soon(produce)
        received = await drain(queue)
    assert received == list(range(500))
    stats = queue.statistics()
    assert (stats.dropped, stats.evicted, stats.delivered) == (0, 0, 500)
    assert stats.first_chunk_s is not None
    assert stats.duration_s is not None
    assert stats.first_chunk_s <= stats.duration_s


async def test_put_after_close_is_an_error_and_the_end_is_repeatable() -> None:
    queue: ChunkQueue[str] = ChunkQueue(2, name="tokens")
    queue.close()
    with pytest.raises(anyio.ClosedResourceError, match="'tokens' is closed"):
        queue.put_nowait("x")
    for _ in range(2):
        with pytest.raises(anyio.EndOfStream):
            await queue.get()


async def test_a_waiting_consumer_can_be_cancelled_cleanly() -> None:
    queue: ChunkQueue[int] = ChunkQueue(2)
    with anyio.move_on_after(0.01):
        await queue.get()
    queue.put_nowait(1)
    assert queue.get_nowait() == 1
    with pytest.raises(anyio.WouldBlock):
        queue.get_nowait()


def test_bad_arguments_are_named() -> None:
    with pytest.raises(ValueError, match="'audio': max_size"):
        ChunkQueue(0, name="audio")
    with pytest.raises(ValueError, match="policy must be"):
        ChunkQueue(2, policy="drop_random")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="low_water < high_water"):
        ChunkQueue(2, high_water=0.2, low_water=0.5)


async def test_a_policy_of_your_own_decides_which_chunk_goes() -> None:
    class DropSecond(OverflowPolicy):
        def on_full(self, event: object, queued: object) -> int | None:
            return 1

    queue: ChunkQueue[int] = ChunkQueue(3, policy=DropSecond())
    for i in range(5):
        queue.put_nowait(i)
    queue.close()
    assert await drain(queue) == [0, 3, 4]


def test_the_monitor_has_hysteresis() -> None:
    now = [0.0]
    monitor = BackpressureMonitor(10, high_water=0.8, low_water=0.2, clock=lambda: now[0])
    states = []
    for depth in (5, 8, 6, 3, 2, 9):
        now[0] += 1.0
        monitor.update(depth)
        states.append(monitor.throttled)
    assert states == [False, True, True, True, False, True]
    assert monitor.episodes == 2
    now[0] += 1.0
    assert monitor.throttled_s == 4.0  # 3 s in the first episode, 1 s so far in the second


async def pieces(items: list[bytes]) -> AsyncIterator[bytes]:
    for item in items:
        yield item


@given(st.lists(st.binary(max_size=12), max_size=20), st.integers(1, 7))
def test_rechunk_keeps_every_byte_in_order(items: list[bytes], size: int) -> None:
    async def collect() -> list[bytes]:
        return [chunk async for chunk in rechunk(pieces(items), size)]

    chunks = anyio.run(collect)
    assert b"".join(chunks) == b"".join(items)
    assert all(len(chunk) == size for chunk in chunks[:-1])
    assert all(0 < len(chunk) <= size for chunk in chunks)


@given(
    st.sampled_from(["drop_oldest", "drop_newest"]),
    st.integers(1, 6),
    st.lists(st.booleans(), max_size=60),
)
def test_the_queue_behaves_as_its_model(policy: str, size: int, operations: list[bool]) -> None:
    """Random puts (True) and gets (False) against a list model: order, bound, exact counts."""
    queue: ChunkQueue[int] = ChunkQueue(
        size, policy=DropOldest() if policy == "drop_oldest" else DropNewest()
    )
    model: list[int] = []
    delivered: list[int] = []
    for number, is_put in enumerate(operations):
        if is_put:
            queue.put_nowait(number)
            if len(model) < size:
                model.append(number)
            elif policy == "drop_oldest":
                model = [*model[1:], number]
        elif model:
            delivered.append(queue.get_nowait())
            assert delivered[-1] == model.pop(0)
        assert len(queue) == len(model) <= size
    stats = queue.statistics()
    assert stats.delivered == len(delivered)
    assert accounted(stats)
    assert delivered == sorted(delivered)
