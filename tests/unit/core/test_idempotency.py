"""IdempotencyInterceptor with the in-memory store; record encoding; redis stays optional."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Mapping
from types import MappingProxyType
from typing import Any

import anyio
import anyio.lowlevel
import pytest

from stageflow_otel.core import (
    BaseInterceptor,
    CallNext,
    CollectingEventSink,
    IdempotencyInterceptor,
    IdempotencyParamMismatch,
    IdempotencyRecord,
    IdempotencyStore,
    InMemoryIdempotencyStore,
    InterceptorError,
    Pipeline,
    RedisIdempotencyStore,
    StageCall,
    StageContext,
    StageEvent,
    StageExecutionError,
    StageGraph,
    StageOutput,
    StageReturn,
    StageStatus,
)
from stageflow_otel.core.idempotency import decode_record, encode_record, hash_params
from stageflow_otel.core.wide_events import error_type_of

pytestmark = pytest.mark.anyio


class FakeClock:
    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


class Counter:
    """A stage that counts its runs and returns ``{"stage": name, "run": n}``."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.runs = 0

    async def __call__(self, ctx: StageContext) -> StageReturn:
        self.runs += 1
        return {"stage": self.name, "run": self.runs}


def single(
    runner: Any, interceptor: IdempotencyInterceptor, *, pipeline: str = "p", stage: str = "s"
) -> StageGraph:
    return Pipeline(pipeline).with_stage(stage, runner, interceptors=[interceptor]).build(hooks=[])


class PollCountingSleep:
    """A fake ``sleep`` for claim polling that gives up instead of waiting forever."""

    def __init__(self, limit: int = 10_000) -> None:
        self.polls = 0
        self.limit = limit

    async def __call__(self, delay: float) -> None:
        self.polls += 1
        if self.polls > self.limit:
            raise AssertionError(f"polled {self.limit} times: the claim is never released")
        await anyio.lowlevel.checkpoint()


def data(key: str | None, params: Any = None) -> dict[str, Any]:
    return {"idempotency_key": key, "idempotency_params": params}


# -- the stageflow-core bug: one entry per key --------------------------------------------------


async def test_two_stages_under_one_run_key_both_run() -> None:
    a, b = Counter("a"), Counter("b")
    g = (
        Pipeline("p")
        .with_stage("a", a)
        .with_stage("b", b, dependencies=["a"])
        .build(interceptors=[IdempotencyInterceptor()], hooks=[])
    )

    results = await g.run(data("order-1"))

    assert (a.runs, b.runs) == (1, 1)
    assert results.data("a") == {"stage": "a", "run": 1}
    assert results.data("b") == {"stage": "b", "run": 1}
    assert results["a"].metadata["idempotency_key"] != results["b"].metadata["idempotency_key"]


async def test_a_repeated_run_returns_each_stage_s_stored_output_without_running_it() -> None:
    a, b = Counter("a"), Counter("b")
    g = (
        Pipeline("p")
        .with_stage("a", a)
        .with_stage("b", b, dependencies=["a"])
        .build(interceptors=[IdempotencyInterceptor()], hooks=[])
    )

    first = await g.run(data("order-1", {"amount": 5}))
    second = await g.run(data("order-1", {"amount": 5}))

    assert (a.runs, b.runs) == (1, 1)
    for stage in ("a", "b"):
        assert second.data(stage) == first.data(stage)
        assert first[stage].metadata["idempotency_hit"] is False
        assert second[stage].metadata["idempotency_hit"] is True
        assert second[stage].metadata["idempotency_key"] == first[stage].metadata["idempotency_key"]
        assert second[stage].status is StageStatus.OK
    assert second["a"].metadata["idempotency_key"] == "order-1:p:a"


async def test_other_keys_and_runs_without_a_key_run_the_stage() -> None:
    counter = Counter("s")
    g = single(counter, IdempotencyInterceptor())

    await g.run(data("k1"))
    await g.run(data("k2"))
    plain = await g.run()
    await g.run(data(""))

    assert counter.runs == 4
    assert "idempotency_hit" not in plain["s"].metadata


async def test_the_pipeline_name_and_quoting_keep_entries_apart() -> None:
    store = InMemoryIdempotencyStore()
    one, two, three = Counter("1"), Counter("2"), Counter("3")
    r1 = await single(one, IdempotencyInterceptor(store), stage="b:c").run(data("a"))
    r2 = await single(two, IdempotencyInterceptor(store), stage="c").run(data("a:b"))
    r3 = await single(three, IdempotencyInterceptor(store), pipeline="q", stage="b:c").run(
        data("a")
    )

    assert (one.runs, two.runs, three.runs) == (1, 1, 1)
    keys = [r1["b:c"], r2["c"], r3["b:c"]]
    assert [o.metadata["idempotency_key"] for o in keys] == ["a:p:b%3Ac", "a%3Ab:p:c", "a:q:b%3Ac"]


async def test_custom_key_and_params_functions() -> None:
    counter = Counter("s")
    interceptor = IdempotencyInterceptor(
        key=lambda call: call.context.data.get("request"),
        params=lambda call: {"user": call.context.data.get("user")},
    )
    g = single(counter, interceptor)

    await g.run({"request": "r1", "user": "ann"})
    hit = await g.run({"request": "r1", "user": "ann"})
    with pytest.raises(StageExecutionError):
        await g.run({"request": "r1", "user": "bob"})

    assert counter.runs == 1
    assert hit["s"].metadata["idempotency_hit"] is True


# -- parameters ---------------------------------------------------------------------------------


async def test_the_same_key_with_other_params_fails_with_param_mismatch() -> None:
    counter = Counter("s")
    g = single(counter, IdempotencyInterceptor())
    await g.run(data("k", {"amount": 5, "currency": "EUR"}))
    # Same parameters in another order: a hit.
    await g.run(data("k", {"currency": "EUR", "amount": 5}))

    with pytest.raises(StageExecutionError) as info:
        await g.run(data("k", {"amount": 6, "currency": "EUR"}))

    assert counter.runs == 1
    mismatch = info.value.original
    assert isinstance(mismatch, IdempotencyParamMismatch)
    assert mismatch.key == "k:p:s"
    assert mismatch.expected == hash_params({"amount": 5, "currency": "EUR"})
    assert mismatch.actual == hash_params({"amount": 6, "currency": "EUR"})
    output = info.value.results["s"]
    assert output.metadata["error_code"] == "IDEMPOTENCY_PARAM_MISMATCH"
    assert error_type_of(output) == "stageflow_otel.core.errors.IdempotencyParamMismatch"
    assert "use a new key for new parameters" in (output.error or "")


async def test_without_validation_the_stored_output_is_returned_whatever_the_params() -> None:
    counter = Counter("s")
    g = single(counter, IdempotencyInterceptor(validate_params=False))
    await g.run(data("k", {"amount": 5}))

    results = await g.run(data("k", {"amount": 6}))

    assert counter.runs == 1
    assert results["s"].metadata["idempotency_hit"] is True


async def test_hash_params_is_canonical_and_rejects_what_json_cannot_hold() -> None:
    assert hash_params({"a": 1, "b": [1, 2]}) == hash_params({"b": [1, 2], "a": 1})
    assert hash_params(MappingProxyType({"a": 1})) == hash_params({"a": 1})
    assert hash_params(b"raw") != hash_params("raw")
    assert hash_params(None) != hash_params({})
    with pytest.raises(TypeError, match="JSON-serialisable"):
        hash_params({"when": object()})


async def test_params_that_cannot_be_hashed_fail_the_stage_with_an_interceptor_error() -> None:
    counter = Counter("s")
    with pytest.raises(StageExecutionError) as info:
        await single(counter, IdempotencyInterceptor()).run(data("k", {1, 2}))
    assert counter.runs == 0
    assert isinstance(info.value.original, InterceptorError)
    assert "JSON-serialisable" in str(info.value)


# -- what is stored -----------------------------------------------------------------------------


async def test_only_ok_outputs_are_stored() -> None:
    calls: list[int] = []

    async def fails_first(ctx: StageContext) -> StageReturn:
        calls.append(1)
        if len(calls) == 1:
            raise RuntimeError("first time fails")
        if len(calls) == 2:
            return StageOutput.skip("skipped once")
        return {"ok": True}

    g = single(fails_first, IdempotencyInterceptor(sleep=PollCountingSleep()))
    with pytest.raises(StageExecutionError):
        await g.run(data("k"))
    skipped = await g.run(data("k"))
    ok = await g.run(data("k"))
    hit = await g.run(data("k"))

    assert len(calls) == 3
    assert skipped["s"].status is StageStatus.SKIP
    assert ok["s"].metadata["idempotency_hit"] is False
    assert hit["s"].metadata["idempotency_hit"] is True
    assert hit.data("s") == {"ok": True}


async def test_a_hit_replays_the_output_but_not_its_events_and_artifacts() -> None:
    async def with_event(ctx: StageContext) -> StageReturn:
        return StageOutput.ok({"v": 1}, events=(StageEvent("charged", {"amount": 5}),))

    sink = CollectingEventSink()
    g = (
        Pipeline("p")
        .with_stage("s", with_event, interceptors=[IdempotencyInterceptor()])
        .build(hooks=[], event_sink=sink)
    )
    await g.run(data("k"))
    hit = await g.run(data("k"))

    assert len(sink.of_type("charged")) == 1
    assert hit["s"].events == ()
    assert hit.data("s") == {"v": 1}


# -- TTL ----------------------------------------------------------------------------------------


async def test_records_expire_after_their_ttl() -> None:
    clock = FakeClock()
    store = InMemoryIdempotencyStore(clock=clock)
    counter = Counter("s")
    g = single(counter, IdempotencyInterceptor(store, ttl=10.0))

    await g.run(data("k"))
    clock.now += 9.999
    assert (await g.run(data("k")))["s"].metadata["idempotency_hit"] is True
    clock.now += 0.001
    assert (await g.run(data("k")))["s"].metadata["idempotency_hit"] is False
    assert counter.runs == 2


async def test_expired_entries_are_swept() -> None:
    clock = FakeClock()
    store = InMemoryIdempotencyStore(clock=clock, sweep_interval=100.0)
    record = IdempotencyRecord(StageOutput.ok({"x": 1}), hash_params(None))
    for i in range(5):
        await store.put(f"old{i}", record, ttl=10.0)
    await store.put("young", record, ttl=500.0)
    assert len(store) == 6

    clock.now += 50.0
    assert await store.claim("a", ttl=1000.0)
    assert len(store) == 7  # before sweep_interval: expired entries wait
    clock.now += 50.0
    assert await store.claim("b", ttl=1000.0)
    assert len(store) == 3  # young, a, b: the write swept the rest
    assert await store.get("young") == record
    assert await store.get("old0") is None

    await store.put("short", record, ttl=1.0)
    clock.now += 1.0
    assert store.cleanup() == 1
    assert len(store) == 3


async def test_the_store_claims_a_free_key_once() -> None:
    clock = FakeClock()
    store: IdempotencyStore = InMemoryIdempotencyStore(clock=clock)
    record = IdempotencyRecord(StageOutput.ok(), "h")

    assert await store.claim("k", ttl=5.0)
    assert not await store.claim("k", ttl=5.0)
    assert await store.get("k") is None  # claimed, not recorded
    await store.put("k", record, ttl=5.0)
    assert not await store.claim("k", ttl=5.0)
    assert await store.get("k") == record
    await store.delete("k")
    assert await store.claim("k", ttl=5.0)
    clock.now += 5.0  # an abandoned claim frees itself
    assert await store.claim("k", ttl=5.0)


# -- concurrency --------------------------------------------------------------------------------


class Entered(BaseInterceptor):
    """Counts calls that reached it, to know when duplicates are in flight."""

    name = "entered"

    def __init__(self) -> None:
        self.count = 0

    async def intercept(self, call: StageCall, call_next: CallNext) -> StageOutput:
        self.count += 1
        return await call_next(call)


async def wait_for(predicate: Any) -> None:
    while not predicate():
        await anyio.lowlevel.checkpoint()


async def test_concurrent_duplicates_in_one_process_run_the_stage_once() -> None:
    release = anyio.Event()
    runs: list[int] = []

    async def slow(ctx: StageContext) -> StageReturn:
        runs.append(1)
        await release.wait()
        return {"value": 42}

    entered = Entered()
    g = (
        Pipeline("p")
        .with_stage("s", slow, interceptors=[entered, IdempotencyInterceptor()])
        .build(hooks=[])
    )
    outputs: list[Mapping[str, Any]] = []

    async def run() -> None:
        results = await g.run(data("k"))
        outputs.append(results["s"].metadata)

    async with anyio.create_task_group() as tg:
        for _ in range(3):
            tg.start_soon(run)
        await wait_for(lambda: entered.count == 3 and runs)
        release.set()

    assert len(runs) == 1
    assert sorted(m["idempotency_hit"] for m in outputs) == [False, True, True]


async def test_duplicates_through_separate_interceptors_wait_for_the_claim_holder() -> None:
    # Two interceptors sharing a store stand for two processes sharing a Redis.
    store = InMemoryIdempotencyStore()
    release = anyio.Event()
    runs: list[int] = []

    async def slow(ctx: StageContext) -> StageReturn:
        runs.append(1)
        await release.wait()
        return {"value": 42}

    sleep = PollCountingSleep()
    first = single(slow, IdempotencyInterceptor(store, sleep=sleep))
    second = single(slow, IdempotencyInterceptor(store, sleep=sleep))
    outputs: dict[str, StageOutput] = {}

    async def run(name: str, g: StageGraph) -> None:
        outputs[name] = (await g.run(data("k")))["s"]

    async with anyio.create_task_group() as tg:
        tg.start_soon(run, "first", first)
        await wait_for(lambda: runs)
        tg.start_soon(run, "second", second)
        await wait_for(lambda: sleep.polls > 0)
        release.set()

    assert len(runs) == 1
    assert outputs["second"].metadata["idempotency_hit"] is True
    assert outputs["second"].data == {"value": 42}


async def test_a_failed_claim_holder_lets_the_waiting_duplicate_run() -> None:
    store = InMemoryIdempotencyStore()
    release = anyio.Event()
    runs: list[int] = []

    async def fails_first(ctx: StageContext) -> StageReturn:
        runs.append(1)
        if len(runs) == 1:
            await release.wait()
            raise RuntimeError("first one fails")
        return {"value": len(runs)}

    sleep = PollCountingSleep()
    first = single(fails_first, IdempotencyInterceptor(store, sleep=sleep))
    second = single(fails_first, IdempotencyInterceptor(store, sleep=sleep))
    outputs: dict[str, Any] = {}

    async def run_first() -> None:
        with pytest.raises(StageExecutionError):
            await first.run(data("k"))

    async def run_second() -> None:
        outputs["second"] = (await second.run(data("k")))["s"]

    async with anyio.create_task_group() as tg:
        tg.start_soon(run_first)
        await wait_for(lambda: runs)
        tg.start_soon(run_second)
        await wait_for(lambda: sleep.polls > 0)
        release.set()

    assert len(runs) == 2
    assert outputs["second"].data == {"value": 2}
    assert outputs["second"].metadata["idempotency_hit"] is False


async def test_a_cancelled_stage_releases_its_claim() -> None:
    store = InMemoryIdempotencyStore()
    started = anyio.Event()

    async def hangs(ctx: StageContext) -> StageReturn:
        started.set()
        await anyio.Event().wait()
        return None

    g = single(hangs, IdempotencyInterceptor(store))
    with anyio.CancelScope() as scope:
        async with anyio.create_task_group() as tg:

            async def run() -> None:
                await g.run(data("k"))

            tg.start_soon(run)
            await started.wait()
            scope.cancel()

    assert scope.cancelled_caught
    assert len(store) == 0
    assert await store.claim("k:p:s", ttl=1.0)


async def test_locks_are_dropped_when_no_one_waits() -> None:
    interceptor = IdempotencyInterceptor()
    g = single(Counter("s"), interceptor)
    for key in ("a", "b", "c"):
        await g.run(data(key))
    assert interceptor._locks == {}


# -- arguments ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "error"),
    [
        ({"ttl": 0}, ValueError),
        ({"ttl": -5.0}, ValueError),
        ({"ttl": float("inf")}, ValueError),
        ({"ttl": "1d"}, TypeError),
        ({"claim_ttl": 0}, ValueError),
        ({"poll_interval": 0}, ValueError),
    ],
)
async def test_idempotency_arguments_are_validated(
    kwargs: dict[str, Any], error: type[Exception]
) -> None:
    with pytest.raises(error):
        IdempotencyInterceptor(**kwargs)


# -- the Redis encoding (no server needed) ------------------------------------------------------


async def test_records_round_trip_through_json() -> None:
    output = StageOutput(
        StageStatus.OK,
        MappingProxyType({"nested": MappingProxyType({"a": [1, 2]}), "n": None, "t": (1, 2)}),
        version="v2",
        metadata={"source": "api"},
    )
    raw = encode_record(IdempotencyRecord(output, "abc"))

    decoded = decode_record(raw)
    assert decoded is not None
    assert decoded.params_hash == "abc"
    assert decoded.output.status is StageStatus.OK
    assert decoded.output.data == {"nested": {"a": [1, 2]}, "n": None, "t": [1, 2]}
    assert decoded.output.version == "v2"
    assert decoded.output.metadata == {"source": "api"}
    assert decode_record(raw.encode()) == decoded
    assert decode_record(json.dumps({"format": 1, "claim": True})) is None


async def test_encoding_names_the_problem_with_non_json_data() -> None:
    with pytest.raises(TypeError, match="JSON-serialisable data and metadata"):
        encode_record(IdempotencyRecord(StageOutput.ok({"when": object()}), "h"))
    with pytest.raises(TypeError, match="JSON-serialisable"):
        encode_record(IdempotencyRecord(StageOutput.ok({"x": float("nan")}), "h"))
    with pytest.raises(ValueError, match="not an idempotency record"):
        decode_record(b"PONG")


class NullRedis:
    async def get(self, key: str) -> None:
        return None


async def test_the_redis_store_refuses_trio_with_a_clear_error(anyio_backend: str) -> None:
    store = RedisIdempotencyStore(NullRedis())  # type: ignore[arg-type]
    if anyio_backend == "asyncio":
        assert await store.get("k") is None
    else:
        with pytest.raises(RuntimeError, match="needs the asyncio backend"):
            await store.get("k")


def test_the_engine_imports_without_redis_installed() -> None:
    code = (
        "import sys\n"
        "sys.modules['redis'] = None\n"  # makes `import redis` fail
        "import stageflow_otel.core as core\n"
        "print(core.RedisIdempotencyStore.__name__, 'redis.asyncio' in sys.modules)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["RedisIdempotencyStore", "False"]
