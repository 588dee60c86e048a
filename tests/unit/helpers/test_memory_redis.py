"""RedisMemoryStore against a real redis-server started by the suite (asyncio only)."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator

import pytest
import redis.asyncio as redis_asyncio

from stageflow_otel import Pipeline, RunIdentity, StageContext
from stageflow_otel.helpers import (
    MemoryFetchStage,
    MemoryWindow,
    MemoryWriteStage,
    RedisMemoryStore,
    Turn,
)
from tests.support.servers import RedisServer

pytestmark = [pytest.mark.anyio, pytest.mark.components]


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
async def store(redis_server: RedisServer) -> AsyncIterator[RedisMemoryStore]:
    # A fresh prefix per test keeps tests apart on the shared server.
    store = RedisMemoryStore.from_url(
        redis_server.url, prefix=f"test:{uuid.uuid4().hex}:", max_turns=4
    )
    try:
        yield store
    finally:
        await store.client.aclose()


TURNS = [Turn("user", f"message {i} é") for i in range(6)]


async def test_append_keeps_the_newest_turns_and_load_reads_a_tail(store: RedisMemoryStore) -> None:
    await store.append("s", TURNS[:3])
    await store.append("s", TURNS[3:])
    await store.append("s", [])
    assert await store.load("s") == TURNS[2:]  # max_turns=4
    assert await store.load("s", last=2) == TURNS[4:]
    assert await store.load("s", last=0) == []
    assert await store.client.llen(store.prefix + "s") == 4
    await store.clear("s")
    assert await store.load("s") == []


async def test_every_write_renews_the_ttl(redis_server: RedisServer) -> None:
    store = RedisMemoryStore.from_url(redis_server.url, prefix=f"ttl:{uuid.uuid4().hex}:", ttl=30.0)
    try:
        await store.append("s", TURNS[:1])
        ttl_ms = await store.client.pttl(store.prefix + "s")
        assert 0 < ttl_ms <= 30_000
        await store.client.pexpireat(store.prefix + "s", 1)  # expire it, without waiting
        assert await store.load("s") == []
    finally:
        await store.client.aclose()


async def test_a_client_that_decodes_responses_works_too(redis_server: RedisServer) -> None:
    client = redis_asyncio.from_url(redis_server.url, decode_responses=True)
    store = RedisMemoryStore(client, prefix=f"dec:{uuid.uuid4().hex}:")
    try:
        await store.append("s", TURNS[:2])
        assert await store.load("s") == TURNS[:2]
    finally:
        await client.aclose()


async def test_a_conversation_shares_memory_through_redis(store: RedisMemoryStore) -> None:
    async def answer(ctx: StageContext) -> dict[str, str]:
        history = ctx.inputs.require_from("memory", "memory")
        return {"reply": f"I remember {len(history)} turns"}

    pipeline = (
        Pipeline("chat")
        .with_stage("memory", MemoryFetchStage(store, window=MemoryWindow(max_turns=10)))
        .with_stage("answer", answer, dependencies=["memory"])
        .with_stage(
            "remember", MemoryWriteStage(store, reply_from="answer"), dependencies=["answer"]
        )
    )
    ada = RunIdentity(session_id="ada")
    replies = []
    for text in ("one", "two", "three"):
        # A new graph (and a new process would do the same): the memory is in Redis.
        results = await pipeline.build().run({"text": text}, identity=ada)
        replies.append(results["answer"].data["reply"])
    assert replies == ["I remember 0 turns", "I remember 2 turns", "I remember 4 turns"]
    assert [t.content for t in await store.load("ada")][-2:] == ["three", "I remember 4 turns"]


async def test_a_corrupt_entry_is_named(store: RedisMemoryStore) -> None:
    await store.client.rpush(store.prefix + "s", "not json")
    with pytest.raises(ValueError, match="not a JSON turn"):
        await store.load("s")
