"""Idempotency: a stage runs once per idempotency key, and repeats get the stored output.

The run supplies a key (by default ``ctx.data["idempotency_key"]``). Each stage gets its own
entry under that key, named by the key, the pipeline and the stage, and the entry carries the
sha256 of the run's parameters (by default ``ctx.data["idempotency_params"]``): repeating the
run returns every stage's stored output without running it, and repeating it with other
parameters fails instead of returning results computed for different input.

Changes from stageflow-core: the entry is per stage (stageflow-core kept one entry per key,
so a second stage returned the first stage's data without running), a hit is marked in the
output's metadata instead of turning into an empty OK, and concurrent duplicates in other
processes are kept out by a claim in the store.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable
from urllib.parse import quote

import anyio
import sniffio

from ._checks import check_seconds, describe
from .errors import IdempotencyParamMismatch
from .model import StageOutput, StageStatus
from .seams import CallNext, StageCall

if TYPE_CHECKING:
    from redis.asyncio import Redis

__all__ = (
    "IdempotencyInterceptor",
    "IdempotencyRecord",
    "IdempotencyStore",
    "InMemoryIdempotencyStore",
    "RedisIdempotencyStore",
    "decode_record",
    "encode_record",
    "hash_params",
)

logger = logging.getLogger("stageflow_otel.idempotency")

_OK = StageStatus.OK


@dataclass(frozen=True, slots=True)
class IdempotencyRecord:
    """What a store keeps for one key.

    Attributes:
        output: The stage's OK output: status, data, error, version and metadata (events,
            artifacts and the exception are not stored; they belong to the run that ran).
        params_hash: The sha256 (hex) of the parameters the output was computed for.
    """

    output: StageOutput
    params_hash: str


@runtime_checkable
class IdempotencyStore(Protocol):
    """**Protocol:** where idempotency records live.

    A key is either free, claimed (a stage is running for it) or holds a record. ``ttl`` is in
    seconds; an expired claim or record frees its key.
    """

    async def get(self, key: str) -> IdempotencyRecord | None:
        """The record under ``key``, or ``None`` if the key is free or only claimed."""
        ...

    async def claim(self, key: str, ttl: float) -> bool:
        """Atomically claim a free key for ``ttl`` seconds; False if claimed or recorded."""
        ...

    async def put(self, key: str, record: IdempotencyRecord, ttl: float) -> None:
        """Store ``record`` under ``key`` for ``ttl`` seconds, replacing a claim."""
        ...

    async def delete(self, key: str) -> None:
        """Free ``key``: drop its claim or record."""
        ...


def _check_positive(name: str, value: object, *, owner: str) -> float:
    try:
        return check_seconds(name, value)
    except (TypeError, ValueError) as exc:
        raise type(exc)(f"{owner}: {exc}") from None


def _storable(output: StageOutput) -> StageOutput:
    return StageOutput(
        output.status,
        output.data,
        error=output.error,
        version=output.version,
        metadata=output.metadata,
    )


# --------------------------------------------------------------------------- in memory


@dataclass(slots=True)
class _Entry:
    record: IdempotencyRecord | None  # None: claimed, not recorded yet
    expires_at: float


class InMemoryIdempotencyStore:
    """Keeps records in this process, each until its TTL runs out.

    Expired entries are dropped when read, and all of them every ``sweep_interval`` seconds
    when the store is written to (or on :meth:`cleanup`), so memory stays bounded by the live
    entries. Share one store between interceptors of one process; use
    :class:`RedisIdempotencyStore` to share records between processes.

    Args:
        clock: Returns the current time in seconds (monotonic; injectable for tests).
        sweep_interval: Seconds between sweeps of expired entries.
    """

    def __init__(
        self, *, clock: Callable[[], float] = time.monotonic, sweep_interval: float = 60.0
    ) -> None:
        owner = "InMemoryIdempotencyStore"
        if not callable(clock):
            raise TypeError(f"{owner}: clock must be a callable, got {describe(clock)}")
        self._clock = clock
        self._sweep_interval = _check_positive("sweep_interval", sweep_interval, owner=owner)
        self._entries: dict[str, _Entry] = {}
        self._next_sweep = clock() + self._sweep_interval

    def __len__(self) -> int:
        """Entries held, expired ones not swept yet included."""
        return len(self._entries)

    def __repr__(self) -> str:
        return f"InMemoryIdempotencyStore(entries={len(self._entries)})"

    def _live(self, key: str, now: float) -> _Entry | None:
        entry = self._entries.get(key)
        if entry is not None and entry.expires_at <= now:
            del self._entries[key]
            return None
        return entry

    def _after_write(self, now: float) -> None:
        if now >= self._next_sweep:
            self._sweep(now)

    def _sweep(self, now: float) -> int:
        expired = [key for key, entry in self._entries.items() if entry.expires_at <= now]
        for key in expired:
            del self._entries[key]
        self._next_sweep = now + self._sweep_interval
        return len(expired)

    def cleanup(self) -> int:
        """Drop every expired entry now; returns how many were dropped."""
        return self._sweep(self._clock())

    async def get(self, key: str) -> IdempotencyRecord | None:
        """The record under ``key``, or ``None``."""
        entry = self._live(key, self._clock())
        return None if entry is None else entry.record

    async def claim(self, key: str, ttl: float) -> bool:
        """Claim ``key`` if it is free."""
        now = self._clock()
        if self._live(key, now) is not None:
            return False
        self._entries[key] = _Entry(None, now + ttl)
        self._after_write(now)
        return True

    async def put(self, key: str, record: IdempotencyRecord, ttl: float) -> None:
        """Store ``record`` under ``key``."""
        now = self._clock()
        self._entries[key] = _Entry(record, now + ttl)
        self._after_write(now)

    async def delete(self, key: str) -> None:
        """Free ``key``."""
        self._entries.pop(key, None)


# --------------------------------------------------------------------------- Redis

_FORMAT = 1


def _json_default(value: object) -> object:
    if isinstance(value, Mapping):
        return dict(value)
    raise TypeError(f"{type(value).__name__} is not JSON-serialisable")


def encode_record(record: IdempotencyRecord) -> str:
    """Serialise a record as JSON (status, data, error, version, metadata, params hash).

    Raises:
        TypeError: If the output's data or metadata is not JSON-serialisable.
    """
    output = record.output
    document = {
        "format": _FORMAT,
        "status": output.status.value,
        "data": output.data,
        "error": output.error,
        "version": output.version,
        "metadata": output.metadata,
        "params_hash": record.params_hash,
    }
    try:
        return json.dumps(document, separators=(",", ":"), allow_nan=False, default=_json_default)
    except (TypeError, ValueError) as exc:
        raise TypeError(
            f"cannot store this output in Redis: {exc}; RedisIdempotencyStore keeps outputs as "
            "JSON, so a stage behind it must return JSON-serialisable data and metadata"
        ) from exc


def decode_record(raw: str | bytes) -> IdempotencyRecord | None:
    """Parse what :func:`encode_record` wrote; ``None`` for a claim.

    Raises:
        ValueError: If the value was not written by a ``RedisIdempotencyStore``.
    """
    try:
        document = json.loads(raw)
        if document.get("claim"):
            return None
        output = StageOutput(
            StageStatus(document["status"]),
            document["data"],
            error=document["error"],
            version=document["version"],
            metadata=document["metadata"],
        )
        return IdempotencyRecord(output, document["params_hash"])
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise ValueError(f"not an idempotency record: {raw[:80]!r}") from exc


_CLAIM = json.dumps({"format": _FORMAT, "claim": True}, separators=(",", ":"))


class RedisIdempotencyStore:
    """Keeps records in Redis, shared by every process that uses the server (extra ``redis``).

    One Redis string per key, under ``prefix``, with the TTL as its expiry: a JSON claim
    marker while the stage runs (``SET NX``), then the JSON record. Records hold the output's
    status, data, error, version and metadata, so a stage behind this store must return
    JSON-serialisable data and metadata (tuples come back as lists, mappings as dicts);
    storing anything else fails the stage with an error that says so.

    ``redis.asyncio`` runs on asyncio only, so this store needs the asyncio backend.

    Args:
        client: A ``redis.asyncio.Redis`` client (``decode_responses`` either way).
        prefix: Prepended to every key.
    """

    def __init__(self, client: Redis, *, prefix: str = "stageflow:idempotency:") -> None:
        self.client = client
        self.prefix = prefix

    @classmethod
    def from_url(
        cls, url: str, *, prefix: str = "stageflow:idempotency:", **options: Any
    ) -> RedisIdempotencyStore:
        """Connect to ``url`` (``redis://host:port/db``) with ``redis.asyncio.from_url``.

        Raises:
            ImportError: If the ``redis`` package is not installed.
        """
        try:
            import redis.asyncio as redis_asyncio
        except ImportError as exc:  # pragma: no cover - depends on the environment
            raise ImportError(
                "RedisIdempotencyStore needs the redis package: pip install 'stageflow-otel[redis]'"
            ) from exc
        client: Redis = redis_asyncio.from_url(url, **options)
        return cls(client, prefix=prefix)

    def __repr__(self) -> str:
        return f"RedisIdempotencyStore(prefix={self.prefix!r})"

    def _key(self, key: str) -> str:
        if sniffio.current_async_library() != "asyncio":
            raise RuntimeError(
                "RedisIdempotencyStore needs the asyncio backend (redis.asyncio does not run on "
                "trio); use InMemoryIdempotencyStore or a store for your backend"
            )
        return self.prefix + key

    async def get(self, key: str) -> IdempotencyRecord | None:
        """The record under ``key``, or ``None``."""
        raw = await self.client.get(self._key(key))
        return None if raw is None else decode_record(raw)

    async def claim(self, key: str, ttl: float) -> bool:
        """Claim ``key`` if it is free (``SET NX PX``)."""
        done = await self.client.set(self._key(key), _CLAIM, nx=True, px=_milliseconds(ttl))
        return bool(done)

    async def put(self, key: str, record: IdempotencyRecord, ttl: float) -> None:
        """Store ``record`` under ``key`` (``SET PX``)."""
        await self.client.set(self._key(key), encode_record(record), px=_milliseconds(ttl))

    async def delete(self, key: str) -> None:
        """Free ``key`` (``DEL``)."""
        await self.client.delete(self._key(key))


def _milliseconds(seconds: float) -> int:
    return max(1, math.ceil(seconds * 1000))


# --------------------------------------------------------------------------- the interceptor


def hash_params(params: object) -> str:
    """The sha256 (hex) of ``params``: of bytes as they are, else of canonical JSON.

    Raises:
        TypeError: If ``params`` is not bytes and not JSON-serialisable.
    """
    if isinstance(params, bytes):
        payload = params
    else:
        try:
            text = json.dumps(
                params,
                sort_keys=True,
                separators=(",", ":"),
                ensure_ascii=False,
                default=_json_default,
            )
        except (TypeError, ValueError) as exc:
            raise TypeError(
                f"idempotency params must be JSON-serialisable (or bytes): {exc}"
            ) from exc
        payload = text.encode()
    return hashlib.sha256(payload).hexdigest()


class _KeyLock:
    __slots__ = ("lock", "users")

    def __init__(self) -> None:
        self.lock = anyio.Lock()
        self.users = 0


class IdempotencyInterceptor:
    """Runs each stage once per idempotency key; repeats return the stored output.

    With no key (``key(call)`` returns ``None`` or ``""``) the stage runs as usual. Otherwise:

    - a stored record is returned without running the stage, ``short_circuited_by`` the
      interceptor's name, with metadata ``idempotency_hit=True`` and ``idempotency_key``; if ``validate_params`` and the record
      was computed for other parameters, the stage fails with
      :class:`IdempotencyParamMismatch` instead;
    - else the stage runs, and an OK output is stored for ``ttl`` seconds (other outputs are
      not, so a failed stage runs again next time); its metadata gets
      ``idempotency_hit=False`` and ``idempotency_key``.

    Concurrent duplicates do not both run: in this process they wait on a per-key lock and
    then get the stored output; across processes sharing a store, the first claims the key
    in the store and the others poll every ``poll_interval`` seconds until its record appears
    or its claim is released (the stage failed) or expires after ``claim_ttl`` seconds (set
    it above the stage's longest run).

    Args:
        store: Where records live; a new :class:`InMemoryIdempotencyStore` by default.
        key: Returns the run-level key for a call; default ``ctx.data.get("idempotency_key")``.
            The stored entry is that key, the pipeline name and the stage name.
        ttl: Seconds a record is kept.
        params: Returns the parameters of a call (hashed with :func:`hash_params`); default
            ``ctx.data.get("idempotency_params")``.
        validate_params: Fail on a record computed for other parameters (when False, the
            record is returned whatever the parameters).
        claim_ttl: Seconds a claim lasts if its holder never finishes (a crashed process).
        poll_interval: Seconds between looks at a key another process has claimed.
        sleep: Awaited between polls (injectable for tests).

    Raises:
        ValueError: For a ``ttl``, ``claim_ttl`` or ``poll_interval`` that is not positive.
        TypeError: For one that is not a number.
    """

    name = "idempotency"

    def __init__(
        self,
        store: IdempotencyStore | None = None,
        *,
        key: Callable[[StageCall], str | None] | None = None,
        ttl: float = 86400.0,
        params: Callable[[StageCall], object] | None = None,
        validate_params: bool = True,
        claim_ttl: float = 300.0,
        poll_interval: float = 0.05,
        sleep: Callable[[float], Awaitable[object]] = anyio.sleep,
    ) -> None:
        owner = "IdempotencyInterceptor"
        missing = [
            method
            for method in ("get", "claim", "put", "delete")
            if not callable(getattr(store, method, None))
        ]
        if store is not None and (isinstance(store, type) or missing):
            raise TypeError(
                f"{owner}: store must be an IdempotencyStore instance (async get, claim, put and "
                f"delete) or None, got {describe(store)}"
            )
        for arg, value in (("key", key), ("params", params), ("sleep", sleep)):
            optional = arg != "sleep"
            if not (callable(value) or (value is None and optional)):
                accepted = "a callable or None" if optional else "a callable"
                raise TypeError(f"{owner}: {arg} must be {accepted}, got {describe(value)}")
        if not isinstance(validate_params, bool):
            raise TypeError(
                f"{owner}: validate_params must be True or False, got {describe(validate_params)}"
            )
        self.store: IdempotencyStore = store if store is not None else InMemoryIdempotencyStore()
        self._key = key
        self._params = params
        self.ttl = _check_positive("ttl", ttl, owner=owner)
        self.validate_params = validate_params
        self.claim_ttl = _check_positive("claim_ttl", claim_ttl, owner=owner)
        self.poll_interval = _check_positive("poll_interval", poll_interval, owner=owner)
        self._sleep = sleep
        self._locks: dict[str, _KeyLock] = {}

    def __repr__(self) -> str:
        return f"IdempotencyInterceptor(store={self.store!r}, ttl={self.ttl:g})"

    def key_for(self, call: StageCall) -> str | None:
        """The store key of ``call``, or ``None`` when the run has no idempotency key."""
        run_key = (
            self._key(call) if self._key is not None else call.context.data.get("idempotency_key")
        )
        if run_key is None or run_key == "":
            return None
        # Quoting keeps "a:b" + "c" apart from "a" + "b:c".
        parts = (str(run_key), call.pipeline, call.stage)
        return ":".join(quote(part, safe="") for part in parts)

    def params_hash_for(self, call: StageCall) -> str:
        """The hash of ``call``'s parameters."""
        params = (
            self._params(call)
            if self._params is not None
            else call.context.data.get("idempotency_params")
        )
        return hash_params(params)

    async def intercept(self, call: StageCall, call_next: CallNext) -> StageOutput:
        """Return the stored output for the call's key, or run the stage and store it."""
        key = self.key_for(call)
        if key is None:
            return await call_next(call)
        params_hash = self.params_hash_for(call)
        entry = self._locks.get(key)
        if entry is None:
            entry = self._locks[key] = _KeyLock()
        entry.users += 1
        try:
            async with entry.lock:
                return await self._run_once(call, call_next, key, params_hash)
        finally:
            entry.users -= 1
            if entry.users == 0:
                del self._locks[key]

    async def _run_once(
        self, call: StageCall, call_next: CallNext, key: str, params_hash: str
    ) -> StageOutput:
        store = self.store
        while True:
            record = await store.get(key)
            if record is not None:
                return self._replay(key, record, params_hash)
            if await store.claim(key, self.claim_ttl):
                break
            await self._sleep(self.poll_interval)
        stored = False
        try:
            output = await call_next(call)
            if output.status is _OK:
                await store.put(key, IdempotencyRecord(_storable(output), params_hash), self.ttl)
                stored = True
            return output.with_metadata(idempotency_hit=False, idempotency_key=key)
        finally:
            if not stored:
                await self._release(key)

    async def _release(self, key: str) -> None:
        # Shielded and bounded, so a cancelled stage still frees its key for the next caller;
        # if this fails the claim frees itself after claim_ttl.
        with anyio.move_on_after(5.0, shield=True):
            try:
                await self.store.delete(key)
            except Exception:
                logger.exception("could not release idempotency key %r", key)

    def _replay(self, key: str, record: IdempotencyRecord, params_hash: str) -> StageOutput:
        if self.validate_params and record.params_hash != params_hash:
            error = IdempotencyParamMismatch(key, expected=record.params_hash, actual=params_hash)
            return StageOutput.fail(
                error,
                metadata={"error_code": error.code, "idempotency_key": key},
            )
        return record.output.with_metadata(idempotency_hit=True, idempotency_key=key).answered_by(
            self.name
        )
