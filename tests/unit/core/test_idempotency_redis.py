"""RedisIdempotencyStore against a real redis-server, alone and behind the interceptor.

redis-py's asyncio client runs on asyncio only, so these tests use that backend alone.
A missing ``redis-server`` skips them on a developer machine and fails them under CI.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from typing import Any

import anyio
import anyio.lowlevel
import pytest
import redis.asyncio as redis_asyncio

from stageflow_otel.core import (
    IdempotencyInterceptor,
    IdempotencyParamMismatch,
    IdempotencyRecord,
    InterceptorError,
    Pipeline,
    RedisIdempotencyStore,
    StageContext,
    StageExecutionError,
    StageGraph,
    StageOutput,
    StageReturn,
    StageStatus,
)
from tests.support.servers import RedisServer

pytestmark = [pytest.mark.anyio, pytest.mark.components]


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
async def store(redis_server: RedisServer) -> AsyncIterator[RedisIdempotencyStore]:
    # A fresh prefix per test keeps tests apart on the shared server.
    store = RedisIdempotencyStore.from_url(redis_server.url, prefix=f"test:{uuid.uuid4().hex}:")
    try:
        yield store
    finally:
        await store.client.aclose()


def record(data: dict[str, Any], params_hash: str = "h") -> IdempotencyRecord:
    return IdempotencyRecord(
        StageOutput(StageStatus.OK, data, version="v1", metadata={"m": 1}), params_hash
    )


async def test_claim_put_get_delete_round_trip(store: RedisIdempotencyStore) -> None:
    assert await store.get("k") is None
    assert await store.claim("k", ttl=30.0)
    assert not await store.claim("k", ttl=30.0)
    assert await store.get("k") is None  # claimed, not recorded

    await store.put("k", record({"nested": {"a": [1, 2]}, "s": "é"}, "abc"), ttl=30.0)
    got = await store.get("k")
    assert got is not None
    assert got.params_hash == "abc"
    assert got.output.status is StageStatus.OK
    assert got.output.data == {"nested": {"a": [1, 2]}, "s": "é"}
    assert got.output.version == "v1"
    assert got.output.metadata == {"m": 1}
    assert not await store.claim("k", ttl=30.0)

    await store.delete("k")
    assert await store.get("k") is None
    assert await store.claim("k", ttl=30.0)


async def test_keys_carry_the_prefix_and_the_ttl(store: RedisIdempotencyStore) -> None:
    await store.claim("claimed", ttl=5.0)
    await store.put("stored", record({}), ttl=60.0)

    claim_ms = await store.client.pttl(store.prefix + "claimed")
    record_ms = await store.client.pttl(store.prefix + "stored")
    assert 0 < claim_ms <= 5000
    assert 5000 < record_ms <= 60000
    keys = sorted(
        k if isinstance(k, str) else k.decode() for k in await store.client.keys(store.prefix + "*")
    )
    assert keys == [store.prefix + "claimed", store.prefix + "stored"]


async def test_an_expired_record_frees_its_key(store: RedisIdempotencyStore) -> None:
    await store.put("k", record({}), ttl=30.0)
    # An expiry in the past expires it at once, without waiting for the clock.
    await store.client.pexpireat(store.prefix + "k", 1)
    assert await store.get("k") is None
    assert await store.claim("k", ttl=30.0)


async def test_a_client_that_decodes_responses_works_too(redis_server: RedisServer) -> None:
    client = redis_asyncio.from_url(redis_server.url, decode_responses=True)
    try:
        store = RedisIdempotencyStore(client, prefix=f"test:{uuid.uuid4().hex}:")
        await store.put("k", record({"x": 1}), ttl=30.0)
        got = await store.get("k")
        assert got is not None
        assert got.output.data == {"x": 1}
    finally:
        await client.aclose()


# -- behind the interceptor ---------------------------------------------------------------------


class Counter:
    def __init__(self) -> None:
        self.runs = 0

    async def __call__(self, ctx: StageContext) -> StageReturn:
        self.runs += 1
        return {"stage": ctx.stage_name, "run": self.runs}


def two_stages(interceptor: IdempotencyInterceptor, a: Counter, b: Counter) -> StageGraph:
    return (
        Pipeline("p")
        .with_stage("a", a)
        .with_stage("b", b, dependencies=["a"])
        .build(interceptors=[interceptor], hooks=[])
    )


async def test_the_interceptor_runs_each_stage_once_per_key(store: RedisIdempotencyStore) -> None:
    a, b = Counter(), Counter()
    g = two_stages(IdempotencyInterceptor(store), a, b)
    run_data = {"idempotency_key": "order-7", "idempotency_params": {"amount": 3}}

    first = await g.run(run_data)
    second = await g.run(run_data)

    assert (a.runs, b.runs) == (1, 1)
    assert first.data("a") == {"stage": "a", "run": 1}
    assert first.data("b") == {"stage": "b", "run": 1}
    assert second.data("a") == first.data("a")
    assert second.data("b") == first.data("b")
    assert second["b"].metadata["idempotency_hit"] is True

    with pytest.raises(StageExecutionError) as info:
        await g.run({"idempotency_key": "order-7", "idempotency_params": {"amount": 4}})
    assert isinstance(info.value.original, IdempotencyParamMismatch)
    assert a.runs == 1


async def test_processes_sharing_redis_run_a_duplicate_once(
    redis_server: RedisServer, store: RedisIdempotencyStore
) -> None:
    # A second client and interceptor stand for a second process.
    other_client = redis_asyncio.from_url(redis_server.url)
    other = RedisIdempotencyStore(other_client, prefix=store.prefix)
    release = anyio.Event()
    runs: list[int] = []

    async def slow(ctx: StageContext) -> StageReturn:
        runs.append(1)
        await release.wait()
        return {"value": 42}

    polled = anyio.Event()

    async def sleep(delay: float) -> None:
        polled.set()
        await anyio.sleep(0.001)

    g1 = Pipeline("p").with_stage("s", slow, interceptors=[IdempotencyInterceptor(store)])
    g2 = Pipeline("p").with_stage(
        "s", slow, interceptors=[IdempotencyInterceptor(other, sleep=sleep)]
    )
    outputs: dict[str, StageOutput] = {}

    async def run(name: str, pipeline: Pipeline) -> None:
        outputs[name] = (await pipeline.build(hooks=[]).run({"idempotency_key": "dup"}))["s"]

    try:
        with anyio.fail_after(10):
            async with anyio.create_task_group() as tg:
                tg.start_soon(run, "first", g1)
                while not runs:
                    await anyio.lowlevel.checkpoint()
                tg.start_soon(run, "second", g2)
                await polled.wait()
                release.set()
    finally:
        await other_client.aclose()

    assert len(runs) == 1
    assert outputs["first"].metadata["idempotency_hit"] is False
    assert outputs["second"].metadata["idempotency_hit"] is True
    assert outputs["second"].data == {"value": 42}


async def test_non_json_data_fails_the_stage_and_frees_the_key(
    store: RedisIdempotencyStore,
) -> None:
    async def returns_a_set(ctx: StageContext) -> StageReturn:
        return {"ids": {1, 2}}

    g = (
        Pipeline("p")
        .with_stage("s", returns_a_set, interceptors=[IdempotencyInterceptor(store)])
        .build(hooks=[])
    )

    with pytest.raises(StageExecutionError) as info:
        await g.run({"idempotency_key": "k"})

    assert isinstance(info.value.original, InterceptorError)
    assert "JSON-serialisable data and metadata" in str(info.value)
    assert await store.client.exists(store.prefix + "k:p:s") == 0
