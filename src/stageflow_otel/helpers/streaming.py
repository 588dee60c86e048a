"""Streaming between stages: a bounded chunk queue with backpressure, re-chunking, monitoring.

A :class:`ChunkQueue` carries the chunks of an audio or token stream from a producer to a
consumer on one event loop (asyncio or trio). It holds at most ``max_size`` chunks, so memory
is bounded by the queue whatever the consumer does; when it is full, its overflow policy
decides, the same policy objects as the event sinks' (``stageflow_otel.core``):

* :class:`~stageflow_otel.core.Block` (the default, as ``"block"``: no time limit) makes
  ``await put()`` wait for room, which slows the producer to the consumer's pace; with a
  timeout it drops the offered chunk once the time is up;
* :class:`~stageflow_otel.core.DropOldest` evicts the oldest queued chunk (live audio: late
  is worse than lost);
* :class:`~stageflow_otel.core.DropNewest` drops the offered chunk.

Every chunk is counted exactly: put, delivered, dropped (the offered one) or evicted (a queued
one). Order is kept. A :class:`BackpressureMonitor` tells when the queue runs above its high
water mark until it falls below the low one. :func:`rechunk` turns a stream of irregular
pieces into chunks of one size.

Given the stage's context (``ChunkQueue(ctx=ctx)``), the queue is observed by every run hook
with an ``observe_stream`` method: ``HelperTelemetry`` keeps the queue depth, chunk counts and
drops as metrics, and records first-chunk latency and stream duration on the span of the stage
that reads the end of the stream.
"""

from __future__ import annotations

import math
import time
from collections import deque
from collections.abc import AsyncIterable, AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any, Generic, Protocol, TypeVar, cast

import anyio
import anyio.lowlevel

from stageflow_otel.core._checks import check_count, describe
from stageflow_otel.core._queue import OverflowPolicy, PolicyName, resolve_policy
from stageflow_otel.core.context import StageContext

__all__ = (
    "BackpressureMonitor",
    "ChunkQueue",
    "StreamObserver",
    "StreamStatistics",
    "rechunk",
)

T = TypeVar("T")
S = TypeVar("S", str, bytes)


@dataclass(frozen=True, slots=True)
class StreamStatistics:
    """A snapshot of a :class:`ChunkQueue`.

    Every chunk offered is, at any time, in exactly one of: the queue (``depth``),
    ``delivered``, ``dropped`` (offered to a full queue and refused) or ``evicted`` (queued,
    then pushed out by a newer one).

    Attributes:
        name: The queue's name (the ``queue`` metric label).
        policy: The overflow policy's name.
        capacity: The most chunks the queue holds.
        depth: Chunks queued now.
        max_depth: The most chunks queued at once so far.
        offered: Chunks offered (``put``).
        delivered: Chunks handed to the consumer.
        dropped: Chunks refused because the queue was full.
        evicted: Queued chunks pushed out for newer ones.
        producer_wait_s: Seconds producers spent waiting for room.
        first_chunk_s: Seconds from opening the queue to the first delivered chunk.
        duration_s: Seconds from opening the queue to the end of the stream being read.
        closed: Whether the producer closed the stream.
        ended: Whether the consumer read the end of the stream.
    """

    name: str
    policy: str
    capacity: int
    depth: int
    max_depth: int
    offered: int
    delivered: int
    dropped: int
    evicted: int
    producer_wait_s: float
    first_chunk_s: float | None
    duration_s: float | None
    closed: bool
    ended: bool


class StreamObserver(Protocol):
    """**Protocol:** told what happens to one :class:`ChunkQueue` (calls must be cheap)."""

    def chunks_counted(self, result: str, count: int) -> None:
        """``count`` chunks were ``offered``, ``delivered``, ``dropped`` or ``evicted``."""
        ...

    def stream_ended(self, statistics: StreamStatistics) -> None:
        """The consumer read the end of the stream (called in the consumer's context)."""
        ...


class BackpressureMonitor:
    """Whether a queue is under pressure, with hysteresis.

    It turns *throttled* when the queue fills to ``high_water`` of its capacity and back when
    it drains to ``low_water``, so producers that check it do not flap. Episodes and the time
    spent throttled are counted.

    Args:
        capacity: The queue's capacity.
        high_water: Fill ratio at which pressure starts.
        low_water: Fill ratio at which it ends.
        clock: Monotonic clock in seconds.

    Raises:
        ValueError: The marks are not ``0 <= low_water < high_water <= 1``.
    """

    def __init__(
        self,
        capacity: int,
        *,
        high_water: float = 0.8,
        low_water: float = 0.2,
        clock: Callable[[], float] = time.perf_counter,
    ) -> None:
        if not (
            isinstance(high_water, int | float)
            and isinstance(low_water, int | float)
            and 0 <= low_water < high_water <= 1
        ):
            raise ValueError(
                "BackpressureMonitor: need 0 <= low_water < high_water <= 1, got "
                f"low_water={low_water!r}, high_water={high_water!r}"
            )
        self._high = max(1, math.ceil(capacity * high_water))
        self._low = math.floor(capacity * low_water)
        self._clock = clock
        self.throttled = False
        """Whether the queue is under pressure now."""
        self.episodes = 0
        """How many times pressure started."""
        self._since = 0.0
        self._throttled_s = 0.0
        self._cleared = anyio.Event()
        self._cleared.set()

    @property
    def throttled_s(self) -> float:
        """Seconds spent under pressure so far."""
        extra = self._clock() - self._since if self.throttled else 0.0
        return self._throttled_s + extra

    def update(self, depth: int) -> None:
        """Tell the monitor the queue's depth (the queue does, on every change)."""
        if not self.throttled and depth >= self._high:
            self.throttled = True
            self.episodes += 1
            self._since = self._clock()
            self._cleared = anyio.Event()
        elif self.throttled and depth <= self._low:
            self.throttled = False
            self._throttled_s += self._clock() - self._since
            self._cleared.set()

    async def wait_until_clear(self) -> None:
        """Wait until the queue is not under pressure (at once if it is not)."""
        await self._cleared.wait()


class ChunkQueue(Generic[T]):
    """A bounded FIFO of chunks between a producer and a consumer on one event loop.

    The producer ``await put(chunk)`` (or ``put_nowait``) and finally :meth:`close`; the
    consumer ``await get()`` or iterates with ``async for``, which ends once the stream is
    closed and drained. See the module documentation for the policies.

    Args:
        max_size: The most chunks queued at once.
        policy: ``"block"`` (wait for room, no time limit; the default), ``"drop_oldest"``,
            ``"drop_newest"``, or an overflow policy object (``Block(timeout=0.5)``, ...).
        name: The queue's name, for errors, statistics and the ``queue`` metric label.
        ctx: The stage's context: the run's hooks observe the queue through it.
        high_water: Fill ratio at which :attr:`monitor` reports pressure.
        low_water: Fill ratio at which the pressure ends.
        clock: Monotonic clock in seconds (first-chunk latency, durations, waits).

    Raises:
        ValueError: For a bad size, policy or water mark.
    """

    def __init__(
        self,
        max_size: int = 64,
        *,
        policy: OverflowPolicy | PolicyName = "block",
        name: str = "stream",
        ctx: StageContext | None = None,
        high_water: float = 0.8,
        low_water: float = 0.2,
        clock: Callable[[], float] = time.perf_counter,
    ) -> None:
        where = f"ChunkQueue {name!r}: "
        try:
            self.capacity = check_count("max_size", max_size)
        except (TypeError, ValueError) as exc:
            raise type(exc)(f"{where}{exc}") from None
        # A stream's "block" waits as long as it takes, unlike an event sink's.
        self.policy = resolve_policy(policy, math.inf if policy == "block" else None, where=where)
        self.name = name
        self.monitor = BackpressureMonitor(
            self.capacity, high_water=high_water, low_water=low_water, clock=clock
        )
        self._clock = clock
        self._items: deque[T] = deque()
        self._waiters: list[anyio.Event] = []
        self._opened = clock()
        self._closed = False
        self._ended = False
        self._max_depth = 0
        self._offered = self._delivered = self._dropped = self._evicted = 0
        self._wait_s = 0.0
        self._first_chunk: float | None = None
        self._end: float | None = None
        self._observers: tuple[StreamObserver, ...] = _observers_of(ctx, name, self)

    def __repr__(self) -> str:
        return (
            f"ChunkQueue({self.name!r}, policy={self.policy.name}, "
            f"queue={len(self._items)}/{self.capacity})"
        )

    def __len__(self) -> int:
        return len(self._items)

    @property
    def closed(self) -> bool:
        """Whether the producer closed the stream."""
        return self._closed

    # -- producer side ---------------------------------------------------------------------

    def put_nowait(self, chunk: T) -> bool:
        """Queue ``chunk`` without waiting; when full, the policy decides.

        Returns:
            True if ``chunk`` was queued (possibly evicting an older one), False if dropped.

        Raises:
            anyio.ClosedResourceError: The stream was closed.
        """
        if self._closed:
            raise anyio.ClosedResourceError(
                f"ChunkQueue {self.name!r} is closed; the producer put a chunk after close()"
            )
        items = self._items
        self._offered += 1
        self._count("offered")
        if len(items) >= self.capacity:
            index = self._on_full(chunk)
            if index is None:
                self._dropped += 1
                self._count("dropped")
                return False
            del items[index]
            self._evicted += 1
            self._count("evicted")
        items.append(chunk)
        depth = len(items)
        self._max_depth = max(self._max_depth, depth)
        self.monitor.update(depth)
        self._wake()
        return True

    async def put(self, chunk: T) -> bool:
        """Queue ``chunk``; under a waiting policy, wait for room first (up to its timeout).

        Returns:
            True if ``chunk`` was queued, False if the policy dropped it.

        Raises:
            anyio.ClosedResourceError: The stream was closed.
        """
        wait = self.policy.wait
        if wait > 0 and len(self._items) >= self.capacity and not self._closed:
            started = self._clock()
            try:
                with anyio.move_on_after(wait):
                    while len(self._items) >= self.capacity and not self._closed:
                        await self._changed()
            finally:
                self._wait_s += self._clock() - started
        else:
            await anyio.lowlevel.checkpoint()  # let the consumer run, as every await should
        return self.put_nowait(chunk)

    def close(self) -> None:
        """End the stream: no more puts; the consumer reads what is queued, then the end."""
        if not self._closed:
            self._closed = True
            self._wake()

    def _on_full(self, chunk: T) -> int | None:
        items = self._items
        try:
            index = self.policy.on_full(cast("Any", chunk), cast("Any", items))
            if index is None:
                return None
            items[index]
            return index if index >= 0 else index + len(items)
        except Exception as exc:
            raise ValueError(
                f"ChunkQueue {self.name!r}: overflow policy {self.policy!r} failed: "
                f"{describe(exc)}; on_full must return None or an index of the queue"
            ) from exc

    # -- consumer side ---------------------------------------------------------------------

    async def get(self) -> T:
        """The next chunk, waiting for one.

        Raises:
            anyio.EndOfStream: The stream is closed and every chunk was read.
        """
        if self._items:
            await anyio.lowlevel.checkpoint()
        while not self._items:
            if self._closed:
                self._end_of_stream()
                raise anyio.EndOfStream
            await self._changed()
        return self.get_nowait()

    def get_nowait(self) -> T:
        """The next chunk, if one is queued.

        Raises:
            anyio.WouldBlock: No chunk is queued (and the stream is still open).
            anyio.EndOfStream: The stream is closed and every chunk was read.
        """
        items = self._items
        if not items:
            if self._closed:
                self._end_of_stream()
                raise anyio.EndOfStream
            raise anyio.WouldBlock
        chunk = items.popleft()
        self._delivered += 1
        if self._first_chunk is None:
            self._first_chunk = self._clock() - self._opened
        self._count("delivered")
        self.monitor.update(len(items))
        self._wake()
        return chunk

    def __aiter__(self) -> AsyncIterator[T]:
        return self._iterate()

    async def _iterate(self) -> AsyncIterator[T]:
        while True:
            try:
                yield await self.get()
            except anyio.EndOfStream:
                return

    def _end_of_stream(self) -> None:
        if self._ended:
            return
        self._ended = True
        self._end = self._clock() - self._opened
        if self._observers:
            statistics = self.statistics()
            for observer in self._observers:
                observer.stream_ended(statistics)

    # -- both ------------------------------------------------------------------------------

    async def _changed(self) -> None:
        """Wait until the queue changes (a put, a get, or close)."""
        event = anyio.Event()
        self._waiters.append(event)
        try:
            await event.wait()
        finally:
            if not event.is_set():
                self._waiters.remove(event)

    def _wake(self) -> None:
        waiters, self._waiters = self._waiters, []
        for event in waiters:
            event.set()

    def _count(self, result: str) -> None:
        for observer in self._observers:
            observer.chunks_counted(result, 1)

    def statistics(self) -> StreamStatistics:
        """A snapshot of the queue and its counters."""
        return StreamStatistics(
            name=self.name,
            policy=self.policy.name,
            capacity=self.capacity,
            depth=len(self._items),
            max_depth=self._max_depth,
            offered=self._offered,
            delivered=self._delivered,
            dropped=self._dropped,
            evicted=self._evicted,
            producer_wait_s=self._wait_s,
            first_chunk_s=self._first_chunk,
            duration_s=self._end,
            closed=self._closed,
            ended=self._ended,
        )


def _observers_of(
    ctx: StageContext | None, name: str, queue: ChunkQueue[Any]
) -> tuple[StreamObserver, ...]:
    if ctx is None:
        return ()
    observers: list[StreamObserver] = []
    for hook in ctx.run_hooks:
        observe = getattr(hook, "observe_stream", None)
        if callable(observe):
            observer = observe(name, queue, ctx)
            if observer is not None:
                observers.append(observer)
    return tuple(observers)


async def rechunk(source: AsyncIterable[S], size: int) -> AsyncIterator[S]:
    """Re-cut a stream of ``str`` or ``bytes`` pieces into chunks of ``size``.

    Pieces are buffered until ``size`` is reached; the last chunk holds what is left (shorter,
    never empty). Nothing is lost or reordered: the chunks joined are the pieces joined.

    Raises:
        ValueError: ``size`` is not a whole number >= 1.
    """
    size = check_count("rechunk: size", size)
    buffer: list[S] = []
    held = 0
    async for piece in source:
        buffer.append(piece)
        held += len(piece)
        if held < size:
            continue
        joined = buffer[0][:0].join(buffer)
        whole = len(joined) - len(joined) % size
        for start in range(0, whole, size):
            yield joined[start : start + size]
        rest = joined[whole:]
        buffer, held = ([rest], len(rest)) if rest else ([], 0)
    if held:
        yield buffer[0][:0].join(buffer)
