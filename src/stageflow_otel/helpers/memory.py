"""Conversation memory: stores, a window, and the stages that fetch and write it.

A conversation is a list of :class:`Turn` objects per session (the run identity's
``session_id``). :class:`MemoryFetchStage` loads the session's recent turns, cut to a
:class:`MemoryWindow` (a number of turns and/or of characters), for the stages after it;
:class:`MemoryWriteStage` appends the new turns when the answer is ready. Stores:
:class:`InMemoryMemoryStore` (one process) and :class:`RedisMemoryStore` (shared, extra
``redis``; asyncio only), or any :class:`MemoryStore` of your own.

Each stage sends a ``memory.fetched`` or ``memory.written`` event (store, turn and character
counts; never the text), which ``HelperTelemetry`` records on the stage span and counts.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

import sniffio

from stageflow_otel.core._checks import check_count, describe
from stageflow_otel.core.context import StageContext
from stageflow_otel.core.model import StageKind, StageOutput

if TYPE_CHECKING:
    from redis.asyncio import Redis

__all__ = (
    "InMemoryMemoryStore",
    "MemoryFetchStage",
    "MemoryStore",
    "MemoryWindow",
    "MemoryWriteStage",
    "RedisMemoryStore",
    "Turn",
)

FETCHED_EVENT = "memory.fetched"
WRITTEN_EVENT = "memory.written"


@dataclass(frozen=True, slots=True)
class Turn:
    """One message of a conversation.

    Attributes:
        role: Who spoke (``user``, ``assistant``, ``system``, ``tool``).
        content: What was said.
    """

    role: str
    content: str

    def as_message(self) -> dict[str, str]:
        """``{"role": ..., "content": ...}``, the shape chat models take."""
        return {"role": self.role, "content": self.content}

    @classmethod
    def from_message(cls, message: Mapping[str, Any]) -> Turn:
        """A turn from a ``{"role": ..., "content": ...}`` message.

        Raises:
            TypeError: ``role`` or ``content`` is missing or not a string.
        """
        role, content = message.get("role"), message.get("content")
        if not isinstance(role, str) or not isinstance(content, str):
            raise TypeError(
                "a turn needs a string 'role' and a string 'content', got "
                f"role={describe(role)}, content={describe(content)}"
            )
        return cls(role, content)


@dataclass(frozen=True, slots=True)
class MemoryWindow:
    """Which recent turns a stage sees: the newest ones, whole, within both limits.

    Attributes:
        max_turns: The most turns (``None``: no limit).
        max_chars: The most characters of content in all (``None``: no limit). A turn that
            does not fit is left out with every older one.
    """

    max_turns: int | None = 20
    max_chars: int | None = None

    def __post_init__(self) -> None:
        check_count("MemoryWindow: max_turns", self.max_turns, allow_none=True)
        check_count("MemoryWindow: max_chars", self.max_chars, allow_none=True)

    def apply(self, turns: Sequence[Turn]) -> list[Turn]:
        """The newest turns of ``turns`` (oldest first) that fit the window."""
        recent = list(turns if self.max_turns is None else turns[-self.max_turns :])
        if self.max_chars is None:
            return recent
        kept: list[Turn] = []
        total = 0
        for turn in reversed(recent):
            total += len(turn.content)
            if total > self.max_chars:
                break
            kept.append(turn)
        kept.reverse()
        return kept


@runtime_checkable
class MemoryStore(Protocol):
    """**Protocol:** keeps the turns of conversations, by session."""

    name: str
    """A short name for events and the ``store`` metric label (``in_memory``, ``redis``)."""

    async def load(self, session_id: str, *, last: int | None = None) -> list[Turn]:
        """The session's turns, oldest first (only the ``last`` ones when given)."""
        ...

    async def append(self, session_id: str, turns: Sequence[Turn]) -> None:
        """Add turns at the end of the session's conversation."""
        ...

    async def clear(self, session_id: str) -> None:
        """Forget the session."""
        ...


class InMemoryMemoryStore:
    """Conversations in this process's memory, each cut to its newest ``max_turns``.

    Args:
        max_turns: Turns kept per session (older ones are forgotten).
        max_sessions: Sessions kept; the least recently written are forgotten first.
    """

    name = "in_memory"

    def __init__(self, *, max_turns: int = 1000, max_sessions: int = 10_000) -> None:
        self.max_turns = check_count("InMemoryMemoryStore: max_turns", max_turns)
        self.max_sessions = check_count("InMemoryMemoryStore: max_sessions", max_sessions)
        self._sessions: dict[str, list[Turn]] = {}
        self._lock = threading.Lock()

    async def load(self, session_id: str, *, last: int | None = None) -> list[Turn]:
        """The session's turns, oldest first."""
        turns = self._sessions.get(session_id, [])
        return list(turns if last is None else turns[-last:] if last else [])

    async def append(self, session_id: str, turns: Sequence[Turn]) -> None:
        """Add turns; keep the newest ``max_turns``."""
        with self._lock:
            kept = self._sessions.pop(session_id, [])
            kept.extend(turns)
            del kept[: max(0, len(kept) - self.max_turns)]
            self._sessions[session_id] = kept  # most recently written last
            while len(self._sessions) > self.max_sessions:
                del self._sessions[next(iter(self._sessions))]

    async def clear(self, session_id: str) -> None:
        """Forget the session."""
        with self._lock:
            self._sessions.pop(session_id, None)


class RedisMemoryStore:
    """Conversations in Redis, shared by every process that uses the server (extra ``redis``).

    One Redis list per session under ``prefix``, one JSON turn per element: ``RPUSH`` and
    ``LTRIM`` to the newest ``max_turns`` in one transaction, with the TTL renewed on every
    write; ``LRANGE`` reads only the turns asked for. ``redis.asyncio`` runs on asyncio only.

    Args:
        client: A ``redis.asyncio.Redis`` client (``decode_responses`` either way).
        prefix: Prepended to every key.
        max_turns: Turns kept per session.
        ttl: Seconds a session is kept after its last write (``None``: forever).
    """

    name = "redis"

    def __init__(
        self,
        client: Redis,
        *,
        prefix: str = "stageflow:memory:",
        max_turns: int = 1000,
        ttl: float | None = 7 * 24 * 3600,
    ) -> None:
        self.client = client
        self.prefix = prefix
        self.max_turns = check_count("RedisMemoryStore: max_turns", max_turns)
        if ttl is not None and (not isinstance(ttl, int | float) or ttl <= 0):
            raise ValueError(
                f"RedisMemoryStore: ttl must be a positive number or None, got {ttl!r}"
            )
        self.ttl = ttl

    @classmethod
    def from_url(cls, url: str, **options: Any) -> RedisMemoryStore:
        """Connect to ``url`` (``redis://host:port/db``); ``options`` go to the store.

        Raises:
            ImportError: If the ``redis`` package is not installed.
        """
        try:
            import redis.asyncio as redis_asyncio
        except ImportError as exc:  # pragma: no cover - depends on the environment
            raise ImportError(
                "RedisMemoryStore needs the redis package: pip install 'stageflow-otel[redis]'"
            ) from exc
        return cls(redis_asyncio.from_url(url), **options)

    def __repr__(self) -> str:
        return f"RedisMemoryStore(prefix={self.prefix!r}, max_turns={self.max_turns})"

    def _key(self, session_id: str) -> str:
        if sniffio.current_async_library() != "asyncio":
            raise RuntimeError(
                "RedisMemoryStore needs the asyncio backend (redis.asyncio does not run on trio); "
                "use InMemoryMemoryStore or a store for your backend"
            )
        return self.prefix + session_id

    async def load(self, session_id: str, *, last: int | None = None) -> list[Turn]:
        """The session's turns, oldest first (``LRANGE``)."""
        if last == 0:
            return []
        start = 0 if last is None else -last
        raw = await self.client.lrange(self._key(session_id), start, -1)
        return [_decode(item) for item in raw]

    async def append(self, session_id: str, turns: Sequence[Turn]) -> None:
        """Add turns, keep the newest ``max_turns``, renew the TTL (one transaction)."""
        if not turns:
            return
        key = self._key(session_id)
        encoded = [json.dumps({"role": t.role, "content": t.content}) for t in turns]
        async with self.client.pipeline(transaction=True) as pipe:
            pipe.rpush(key, *encoded)
            pipe.ltrim(key, -self.max_turns, -1)
            if self.ttl is not None:
                pipe.pexpire(key, max(1, int(self.ttl * 1000)))
            await pipe.execute()

    async def clear(self, session_id: str) -> None:
        """Forget the session (``DEL``)."""
        await self.client.delete(self._key(session_id))


def _decode(raw: str | bytes) -> Turn:
    try:
        data = json.loads(raw)
        return Turn(str(data["role"]), str(data["content"]))
    except (ValueError, KeyError, TypeError) as exc:
        raise ValueError(
            f"RedisMemoryStore: a stored turn is not a JSON turn: {raw!r:.80}"
        ) from exc


def _session_of(ctx: StageContext, stage: str) -> str:
    session = ctx.identity.session_id
    if not session:
        raise ValueError(
            f"{stage} {ctx.stage_name!r} keeps memory per session, but the run has no session "
            "id: run(..., identity=RunIdentity(session_id=...))"
        )
    return session


def _chars(turns: Sequence[Turn]) -> int:
    return sum(len(t.content) for t in turns)


class MemoryFetchStage:
    """Loads the session's recent turns for the stages after it.

    Output data: ``memory``, the turns as ``{"role", "content"}`` messages, oldest first.

    Args:
        store: Where the conversations are.
        window: Which turns to keep.
    """

    kind = StageKind.ENRICH

    def __init__(self, store: MemoryStore, *, window: MemoryWindow | None = None) -> None:
        if not isinstance(store, MemoryStore):
            raise TypeError(
                f"MemoryFetchStage: {describe(store)} is no memory store; give one with "
                "load, append and clear (InMemoryMemoryStore, RedisMemoryStore)"
            )
        self.store = store
        self.window = window if window is not None else MemoryWindow()

    async def execute(self, ctx: StageContext) -> StageOutput:
        """Load, window, report."""
        session = _session_of(ctx, "MemoryFetchStage")
        loaded = await self.store.load(session, last=self.window.max_turns)
        turns = self.window.apply(loaded)
        ctx.try_emit_event(
            FETCHED_EVENT,
            {
                "store": self.store.name,
                "turns": len(turns),
                "chars": _chars(turns),
                "left_out": len(loaded) - len(turns),
            },
        )
        return StageOutput.ok(memory=[t.as_message() for t in turns])


class MemoryWriteStage:
    """Appends the new turns of the conversation to the session's memory.

    By default the turns are the user's message (run input ``user_key``) and the answer
    (``reply_key`` of the output of ``reply_from``); pass ``turns`` to choose them yourself.

    Args:
        store: Where the conversations are.
        reply_from: The stage whose output holds the answer.
        user_key: The run input key of the user's message.
        reply_key: The output key of the answer.
        turns: ``turns(ctx) -> list[Turn]``, instead of the default.

    Raises:
        ValueError: Neither ``reply_from`` nor ``turns`` is given.
    """

    kind = StageKind.WORK

    def __init__(
        self,
        store: MemoryStore,
        *,
        reply_from: str | None = None,
        user_key: str = "text",
        reply_key: str = "reply",
        turns: Callable[[StageContext], Sequence[Turn]] | None = None,
    ) -> None:
        if not isinstance(store, MemoryStore):
            raise TypeError(f"MemoryWriteStage: {describe(store)} is no memory store")
        if reply_from is None and turns is None:
            raise ValueError(
                "MemoryWriteStage: say where the answer is (reply_from='<stage>') or give turns="
            )
        self.store = store
        self.reply_from = reply_from
        self.user_key = user_key
        self.reply_key = reply_key
        self.turns = turns

    def _turns(self, ctx: StageContext) -> Sequence[Turn]:
        if self.turns is not None:
            return self.turns(ctx)
        assert self.reply_from is not None  # checked in __init__
        user = ctx.data.get(self.user_key)
        reply = ctx.inputs.require_from(self.reply_from, self.reply_key)
        turns = [Turn("user", str(user))] if user is not None else []
        return [*turns, Turn("assistant", str(reply))]

    async def execute(self, ctx: StageContext) -> StageOutput:
        """Append and report."""
        session = _session_of(ctx, "MemoryWriteStage")
        turns = list(self._turns(ctx))
        await self.store.append(session, turns)
        ctx.try_emit_event(
            WRITTEN_EVENT, {"store": self.store.name, "turns": len(turns), "chars": _chars(turns)}
        )
        return StageOutput.ok(written=len(turns))
