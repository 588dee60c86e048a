"""The bounded event queue of a sink, and the overflow policies that decide when it is full.

:class:`EventQueue` is the producer side of a
:class:`~stageflow_otel.core.backpressure.BackpressureAwareEventSink`: a deque behind one lock.
Offering an event costs one lock, one comparison and one append while there is room; when there
is none, the sink's :class:`OverflowPolicy` decides which event to drop, and the drop is
counted, reported to the listener and warned about (at most once per interval).

A policy is one small object: :class:`DropNewest`, :class:`DropOldest`, :class:`Block`, or a
subclass of :class:`OverflowPolicy` of your own. The strings ``"drop_newest"``,
``"drop_oldest"`` and ``"block"`` name the built-ins.
"""

from __future__ import annotations

import logging
import math
import threading
from collections import deque
from collections.abc import Callable, Sequence
from typing import ClassVar, Literal

import anyio

from ._checks import check_seconds, describe
from ._sink_listener import ListenerHooks
from .events import Event

__all__ = (
    "DROPPED_SHUTDOWN",
    "Block",
    "DropNewest",
    "DropOldest",
    "EventQueue",
    "FlushRequest",
    "OverflowPolicy",
    "PolicyName",
    "resolve_policy",
)

logger = logging.getLogger("stageflow_otel.events.backpressure")

DROPPED_SHUTDOWN = "dropped_shutdown"
"""The result of an event offered after shutdown, or still queued when shutdown timed out."""

# ``put`` under a waiting policy polls for room: anyio has no non-blocking way for the worker
# thread to wake a task on another thread's loop, and this is the slow path anyway.
_POLL_FIRST = 0.0005
_POLL_MAX = 0.02


class OverflowPolicy:
    """**Base class:** what a full queue does with one more event.

    Override :meth:`on_full`; set :attr:`wait` to make ``await emit()`` wait for room first,
    and :attr:`result` to report your drops under a result of their own.

    Attributes:
        result: The result the sink reports for events this policy drops (the listener's
            ``on_result``, the ``result`` label of ``stageflow_sink_events_total``); they are
            counted in ``statistics().dropped_queue_full``.
        wait: Seconds ``await emit()`` waits for room before :meth:`on_full` decides
            (``try_emit`` never waits); 0 for every built-in policy but :class:`Block`.
    """

    result: ClassVar[str] = "dropped_queue_full"
    wait: float = 0.0

    @property
    def name(self) -> str:
        """The policy's name in statistics and warnings (its class name unless set)."""
        return type(self).__name__

    def on_full(self, event: Event, queued: Sequence[Event]) -> int | None:
        """Decide which event to drop: the queue is full and ``event`` is offered.

        Called with the sink's lock held, on the producer's thread: it must be quick and must
        not emit into the sink. ``queued`` is the queue itself, oldest first; read it, never
        change it.

        Returns:
            ``None`` to drop ``event``; or the index in ``queued`` of the event to evict (a
            negative one counts from the end), after which ``event`` is queued at the end. A
            policy that raises or returns anything else is logged once and replaced by
            :class:`DropNewest`.
        """
        return None

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


class DropNewest(OverflowPolicy):
    """Drop the offered event; what is queued stays (the default)."""

    name = "drop_newest"


class DropOldest(OverflowPolicy):
    """Evict the oldest queued event to make room for the offered one."""

    name = "drop_oldest"

    def on_full(self, event: Event, queued: Sequence[Event]) -> int | None:
        """Evict the oldest event."""
        return 0


class Block(OverflowPolicy):
    """``await emit()`` waits up to ``timeout`` seconds for room, then drops the offered event.

    The wait is cancellable and never blocks the event loop (it polls). ``try_emit`` never
    waits: with a full queue it drops the offered event, as :class:`DropNewest` does.

    Args:
        timeout: Seconds ``await emit()`` may wait.
    """

    name = "block"

    def __init__(self, timeout: float = 1.0) -> None:
        try:
            self.wait = check_seconds("timeout", timeout, allow_inf=True)
        except (TypeError, ValueError) as exc:
            raise type(exc)(f"Block: {exc}") from None

    def __repr__(self) -> str:
        return f"Block(timeout={self.wait!r})"


PolicyName = Literal["drop_newest", "drop_oldest", "block"]
"""The built-in policies by name."""

_NAMED: dict[str, Callable[[float], OverflowPolicy]] = {
    "drop_newest": lambda _: DropNewest(),
    "drop_oldest": lambda _: DropOldest(),
    "block": Block,
}


def resolve_policy(value: object, block_timeout: object, *, where: str) -> OverflowPolicy:
    """The policy object for ``policy=`` (an object, or a built-in's name).

    Raises:
        ValueError: ``value`` is neither, or ``block_timeout`` comes with a policy object.
        TypeError: ``block_timeout`` is not a number of seconds.
    """
    if isinstance(value, OverflowPolicy):
        if block_timeout is not None:
            raise ValueError(
                f"{where}block_timeout is the timeout of policy='block'; a policy object "
                f"carries its own: Block(timeout={block_timeout!r})"
            )
        return value
    if isinstance(value, str) and value in _NAMED:
        try:
            timeout = check_seconds(
                "block_timeout", 1.0 if block_timeout is None else block_timeout, allow_inf=True
            )
        except (TypeError, ValueError) as exc:
            raise type(exc)(f"{where}{exc}") from None
        return _NAMED[value](timeout)
    hint = ""
    if isinstance(value, type) and issubclass(value, OverflowPolicy):
        hint = f"; pass an instance: {value.__qualname__}()"
    raise ValueError(
        f"{where}policy must be {', '.join(map(repr, _NAMED))} or an OverflowPolicy "
        f"(DropNewest(), DropOldest(), Block(timeout=...), or a subclass of your own), got "
        f"{describe(value)}{hint}"
    )


class FlushRequest:
    """A pending flush or shutdown: the events before ``target`` must be done with."""

    __slots__ = ("ok", "target")

    def __init__(self, target: int) -> None:
        self.target = target
        self.ok = True


class EventQueue:
    """A bounded FIFO of events behind one lock, with an overflow policy.

    Sequence numbers: the events in the queue are numbered ``removed`` to ``accepted - 1``,
    oldest first; the consumer (the sink's worker) takes batches from the front and counts
    them in ``removed``. A policy that evicts from the middle leaves the numbers of the later
    events one lower than they were, which can only make a flush wait for one event more.

    The consumer shares :attr:`lock`; it waits on :attr:`batch_ready`, which a producer
    notifies when the queue holds a full batch while :attr:`consumer_idle` is set.
    """

    def __init__(
        self,
        *,
        capacity: int,
        batch_size: int,
        policy: OverflowPolicy,
        name: str,
        warn_interval: float,
        clock: Callable[[], float],
        hooks: ListenerHooks,
    ) -> None:
        self.capacity = capacity
        self.batch_size = batch_size
        self.policy = policy
        self._on_full = policy.on_full
        # What the policy's drops are reported as, even if a failing policy is replaced.
        self.drop_result = policy.result
        self.name = name
        self._warn_interval = warn_interval
        self._clock = clock
        self._hooks = hooks
        # Called on the first offered event (the worker's ``start``); ``None`` once started.
        self.on_first_event: Callable[[], None] | None = None
        self.reset(closed=False)

    def reset(self, *, closed: bool) -> None:
        """Empty the queue and zero its counters, with a fresh lock (a forked child)."""
        self.lock = threading.Lock()
        self.batch_ready = threading.Condition(self.lock)
        self.events: deque[Event] = deque()
        # ``put_nowait`` appends while ``len(events) < limit``: 0 once closed, so the fast
        # path needs a single comparison.
        self.limit = 0 if closed else self.capacity
        self.closed = closed
        self.consumer_idle = False
        self.accepted = 0
        self.removed = 0
        self.evicted_inside = 0  # evictions from the middle, which accept without numbering
        self.dropped_queue_full = 0
        self.dropped_shutdown = 0
        self.last_drop_time: float | None = None
        self._last_drop_warning = -math.inf
        self.flushes: list[FlushRequest] = []

    @property
    def offered(self) -> int:
        """Events accepted into the queue so far (some since evicted or dropped at shutdown)."""
        return self.accepted + self.evicted_inside

    # -- producer side ---------------------------------------------------------------------

    def put_nowait(self, event: Event) -> None:
        """Queue ``event``, or let the policy drop one; never raises, never blocks."""
        if self.on_first_event is not None:
            self.on_first_event()
        with self.lock:
            events = self.events
            if len(events) < self.limit:
                events.append(event)
                self.accepted += 1
                if self.consumer_idle and len(events) >= self.batch_size:
                    self.consumer_idle = False
                    self.batch_ready.notify()
                return
            drop = self._overflow_locked(event)
        if drop is not None:
            self._report_drop(*drop)

    async def put(self, event: Event) -> None:
        """:meth:`put_nowait`, after waiting up to the policy's ``wait`` for room."""
        wait = self.policy.wait
        if wait > 0:
            await self._wait_for_room(wait)
        self.put_nowait(event)

    async def _wait_for_room(self, timeout: float) -> None:
        if self.on_first_event is not None:
            self.on_first_event()  # the worker makes the room
        deadline = anyio.current_time() + timeout
        delay = _POLL_FIRST
        while True:
            with self.lock:
                if len(self.events) < self.limit or self.closed:
                    return
            remaining = deadline - anyio.current_time()
            if remaining <= 0:
                return
            await anyio.sleep(min(delay, remaining))
            delay = min(delay * 2, _POLL_MAX)

    def _overflow_locked(
        self, event: Event
    ) -> tuple[str, Event, bool, BaseException | None] | None:
        """Count a drop (the queue is full, or closed), evicting whatever the policy chose.

        Returns what :meth:`_report_drop` needs, or ``None`` when there is nothing to report.
        """
        now = self.last_drop_time = self._clock()
        error: BaseException | None = None
        if self.closed:
            result = DROPPED_SHUTDOWN
            self.dropped_shutdown += 1
        else:
            result = self.drop_result
            self.dropped_queue_full += 1
            events = self.events
            index: int | None = None
            try:
                index = self._on_full(event, events)
                if index is not None:
                    evicted = events[index]  # raises unless an index of the queue
                    if index < 0:
                        index += len(events)
            except Exception as exc:
                error = exc
                if index is not None:
                    error = ValueError(
                        f"on_full returned {describe(index)}; return None (drop the offered "
                        f"event) or an index of the queue, 0 to {len(events) - 1}"
                    )
                index = None
                self.policy = DropNewest()
                self._on_full = self.policy.on_full
            if index is not None:
                if self.flushes:
                    self.lost_locked(self.removed + index)
                if index:
                    del events[index]
                    self.evicted_inside += 1
                else:
                    events.popleft()
                    self.removed += 1
                    self.accepted += 1
                events.append(event)
                event = evicted  # report the evicted event, not the offered one
        warn = now - self._last_drop_warning >= self._warn_interval
        if warn:
            self._last_drop_warning = now
        elif error is None and self._hooks.on_result is None and self._hooks.on_drop is None:
            return None
        return result, event, warn, error

    def _report_drop(
        self, result: str, event: Event, warn: bool, error: BaseException | None
    ) -> None:
        """Warn (at most once per interval) and tell the listener, outside the lock."""
        try:
            if error is not None:
                logger.error(
                    "overflow policy of event sink %r failed; it is replaced by DropNewest",
                    self.name,
                    exc_info=error,
                )
            if warn:
                full, closed = self.dropped_queue_full, self.dropped_shutdown
                logger.warning(
                    "event sink %r is dropping events: %d dropped so far (%d with the queue "
                    "full, %d after shutdown; capacity %d, policy %s); is the downstream slow "
                    "or stalled?",
                    self.name,
                    full + closed,
                    full,
                    closed,
                    self.capacity,
                    self.policy.name,
                )
            self._hooks.result(result, 1)
            self._hooks.drop((event,))
        except Exception:  # try_emit never raises; a broken log handler must not make it
            logger.debug("event sink %r failed to report a drop", self.name, exc_info=True)

    # -- consumer side ---------------------------------------------------------------------

    def lost_locked(self, first: int) -> None:
        """Events from number ``first`` on were lost: fail the flushes waiting for them."""
        for request in self.flushes:
            if first < request.target:
                request.ok = False

    def close_locked(self) -> None:
        """Accept nothing more: every later event counts as ``dropped_shutdown``."""
        self.closed = True
        self.limit = 0
        self.on_first_event = None

    def clear_locked(self) -> list[Event]:
        """Drop every queued event (shutdown timed out); returns them."""
        cleared = list(self.events)
        self.events.clear()
        self.removed += len(cleared)
        self.dropped_shutdown += len(cleared)
        if cleared:
            self.last_drop_time = self._clock()
        return cleared
