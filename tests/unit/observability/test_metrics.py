"""Prometheus metrics: values equal what ran, exemplars, bounded labels, private registries."""

from __future__ import annotations

import logging
from typing import Any

import anyio
import pytest
from prometheus_client import REGISTRY, CollectorRegistry, Histogram
from prometheus_client.metrics_core import Metric
from prometheus_client.openmetrics.exposition import generate_latest
from prometheus_client.openmetrics.parser import text_string_to_metric_families

from stageflow_otel import (
    CircuitBreakerInterceptor,
    IdempotencyInterceptor,
    Pipeline,
    RetryInterceptor,
    StageContext,
    TimeoutInterceptor,
)
from stageflow_otel._version import package_version
from stageflow_otel.observability import Telemetry
from stageflow_otel.observability.metrics import (
    DURATION_BUCKETS,
    StageflowMetrics,
    observe_with_trace,
)
from stageflow_otel.testing import InMemoryTelemetry, in_memory_telemetry

from .support import (
    HANG,
    attributes,
    hanging_stage,
    hex_ids,
    ok_stage,
    raising_stage,
    run_graph,
    series,
    spawn_geo,
)

pytestmark = pytest.mark.anyio


class OutOfStock(Exception):
    """An exception class no metric label knows."""


def openmetrics_families(registry: CollectorRegistry) -> list[Metric]:
    """The registry as an OpenMetrics scrape (the format with exemplars) sees it, parsed back."""
    exposition: bytes = generate_latest(registry)  # type: ignore[no-untyped-call]
    parsed = text_string_to_metric_families(exposition.decode())  # type: ignore[no-untyped-call]
    return list(parsed)


async def test_metric_values_equal_executed_stage_counts(telemetry: InMemoryTelemetry) -> None:
    retry = RetryInterceptor(2, base_delay=0.0, retry_on=ValueError)
    shop = (
        Pipeline("shop")
        .with_stage("fetch", ok_stage)
        .with_stage("geocode", spawn_geo, dependencies=["fetch"])
        .with_stage("charge", raising_stage, dependencies=["fetch"], interceptors=[retry])
        .with_stage("ship", ok_stage, dependencies=["charge"])
        .build(hooks=telemetry.hooks, failure_mode="continue")
    )
    ping = Pipeline("ping").with_stage("echo", ok_stage).build(hooks=telemetry.hooks)

    for _ in range(2):
        await run_graph(shop)
    await run_graph(ping)

    registry = telemetry.registry
    runs = {
        "pipeline=geo,status=ok": 2.0,
        "pipeline=ping,status=ok": 1.0,
        "pipeline=shop,status=fail": 2.0,
    }
    assert series(registry, "stageflow_pipeline_runs_total") == runs
    assert series(registry, "stageflow_pipeline_run_duration_seconds_count") == runs
    assert series(registry, "stageflow_stage_runs_total") == {
        "error_type=,pipeline=geo,stage=lookup,status=ok": 2.0,
        "error_type=,pipeline=geo,stage=score,status=ok": 2.0,
        "error_type=,pipeline=ping,stage=echo,status=ok": 1.0,
        "error_type=,pipeline=shop,stage=fetch,status=ok": 2.0,
        "error_type=,pipeline=shop,stage=geocode,status=ok": 2.0,
        "error_type=ValueError,pipeline=shop,stage=charge,status=fail": 2.0,
        "error_type=,pipeline=shop,stage=ship,status=skip": 2.0,
    }
    assert series(registry, "stageflow_stage_duration_seconds_count") == {
        "pipeline=geo,stage=lookup,status=ok": 2.0,
        "pipeline=geo,stage=score,status=ok": 2.0,
        "pipeline=ping,stage=echo,status=ok": 1.0,
        "pipeline=shop,stage=fetch,status=ok": 2.0,
        "pipeline=shop,stage=geocode,status=ok": 2.0,
        "pipeline=shop,stage=charge,status=fail": 2.0,
        "pipeline=shop,stage=ship,status=skip": 2.0,
    }
    assert series(registry, "stageflow_stage_queue_wait_seconds_count") == {
        "pipeline=geo": 4.0,
        "pipeline=ping": 1.0,
        "pipeline=shop": 8.0,
    }
    idle = {"pipeline=geo": 0.0, "pipeline=ping": 0.0, "pipeline=shop": 0.0}
    assert series(registry, "stageflow_stages_active") == idle
    assert series(registry, "stageflow_pipeline_runs_active") == idle
    assert series(registry, "stageflow_stage_retries_total") == {"pipeline=shop,stage=charge": 2.0}
    assert series(registry, "stageflow_interceptor_duration_seconds_count") == {
        "interceptor=retry": 2.0
    }
    assert series(registry, "stageflow_subpipeline_runs_total") == {
        "parent_pipeline=shop,pipeline=geo,status=ok": 2.0
    }
    assert series(registry, "stageflow_interceptor_short_circuits_total") == {}
    assert series(registry, "stageflow_build_info") == {f"version={package_version()}": 1.0}


async def test_active_gauges_count_work_in_progress(telemetry: InMemoryTelemetry) -> None:
    arrived = 0
    both_running = anyio.Event()
    release = anyio.Event()

    async def wait_for_release(ctx: StageContext) -> None:
        nonlocal arrived
        arrived += 1
        if arrived == 2:
            both_running.set()
        await release.wait()

    graph = (
        Pipeline("p")
        .with_stage("a", wait_for_release)
        .with_stage("b", wait_for_release)
        .build(hooks=telemetry.hooks)
    )

    with anyio.fail_after(HANG):
        async with anyio.create_task_group() as tg:
            tg.start_soon(run_graph, graph)
            await both_running.wait()
            during = (
                series(telemetry.registry, "stageflow_stages_active"),
                series(telemetry.registry, "stageflow_pipeline_runs_active"),
            )
            release.set()

    assert during == ({"pipeline=p": 2.0}, {"pipeline=p": 1.0})
    assert series(telemetry.registry, "stageflow_stages_active") == {"pipeline=p": 0.0}
    assert series(telemetry.registry, "stageflow_pipeline_runs_active") == {"pipeline=p": 0.0}


async def test_gauges_return_to_zero_after_a_cancelled_run(telemetry: InMemoryTelemetry) -> None:
    caller = anyio.CancelScope()

    async def cancel_the_caller(ctx: StageContext) -> None:
        caller.cancel()
        await anyio.sleep_forever()

    graph = (
        Pipeline("p")
        .with_stage("a", cancel_the_caller)
        .with_stage("b", hanging_stage)
        .build(hooks=telemetry.hooks)
    )

    with anyio.fail_after(HANG), caller:
        await graph.run()

    assert series(telemetry.registry, "stageflow_stages_active") == {"pipeline=p": 0.0}
    assert series(telemetry.registry, "stageflow_pipeline_runs_active") == {"pipeline=p": 0.0}
    assert series(telemetry.registry, "stageflow_pipeline_runs_total") == {
        "pipeline=p,status=cancel": 1.0
    }
    assert series(telemetry.registry, "stageflow_stage_runs_total") == {
        "error_type=,pipeline=p,stage=a,status=cancel": 1.0,
        "error_type=,pipeline=p,stage=b,status=cancel": 1.0,
    }


async def test_circuit_breaker_short_circuits_are_counted(telemetry: InMemoryTelemetry) -> None:
    breaker = CircuitBreakerInterceptor(failure_threshold=1, recovery_timeout=3600.0)
    graph = (
        Pipeline("p")
        .with_stage("a", raising_stage)
        .build(hooks=telemetry.hooks, interceptors=[breaker])
    )

    for _ in range(3):
        await run_graph(graph)

    assert series(telemetry.registry, "stageflow_interceptor_short_circuits_total") == {
        "interceptor=circuit_breaker,stage=a": 2.0
    }
    assert series(telemetry.registry, "stageflow_stage_runs_total") == {
        "error_type=ValueError,pipeline=p,stage=a,status=fail": 1.0,
        "error_type=stageflow.short_circuit,pipeline=p,stage=a,status=fail": 2.0,
    }
    assert series(telemetry.registry, "stageflow_interceptor_duration_seconds_count") == {
        "interceptor=circuit_breaker": 3.0
    }


async def test_idempotency_hits_are_counted_as_short_circuits(
    telemetry: InMemoryTelemetry,
) -> None:
    graph = (
        Pipeline("p")
        .with_stage("charge", ok_stage)
        .build(hooks=telemetry.hooks, interceptors=[IdempotencyInterceptor()])
    )

    for key in ("order-1", "order-1", "order-2"):
        await run_graph(graph, data={"idempotency_key": key})

    assert series(telemetry.registry, "stageflow_interceptor_short_circuits_total") == {
        "interceptor=idempotency,stage=charge": 1.0
    }
    assert series(telemetry.registry, "stageflow_stage_runs_total") == {
        "error_type=,pipeline=p,stage=charge,status=ok": 3.0
    }


async def test_stage_duration_exemplars_point_at_the_stage_spans(
    telemetry: InMemoryTelemetry,
) -> None:
    graph = (
        Pipeline("p")
        .with_stage("a", ok_stage)
        .with_stage("b", ok_stage, dependencies=["a"])
        .with_stage("c", raising_stage, dependencies=["a"])
        .build(hooks=telemetry.hooks, failure_mode="continue")
    )

    await run_graph(graph)

    exemplars: dict[str, list[dict[str, str]]] = {}
    for family in openmetrics_families(telemetry.registry):
        if family.name != "stageflow_stage_duration_seconds":
            continue
        for sample in family.samples:
            if sample.exemplar is not None:
                exemplars.setdefault(sample.labels["stage"], []).append(sample.exemplar.labels)
    expected: dict[str, list[dict[str, str]]] = {}
    for stage in ("a", "b", "c"):
        trace_id, span_id = hex_ids(telemetry.span(f"stage.run {stage}"))
        expected[stage] = [{"trace_id": trace_id, "span_id": span_id}]
    assert exemplars == expected


async def test_stage_names_beyond_the_limit_collapse_into_other(
    caplog: pytest.LogCaptureFixture,
) -> None:
    recorded = in_memory_telemetry(max_stage_names=2)
    try:
        pipeline = Pipeline("wide")
        previous: list[str] = []
        for name in ("s0", "s1", "s2", "s3"):
            pipeline = pipeline.with_stage(name, ok_stage, dependencies=previous)
            previous = [name]
        graph = pipeline.build(hooks=recorded.hooks)

        with caplog.at_level(logging.WARNING, logger="stageflow_otel.metrics"):
            for _ in range(2):
                await run_graph(graph)

        assert series(recorded.registry, "stageflow_stage_runs_total") == {
            "error_type=,pipeline=wide,stage=s0,status=ok": 2.0,
            "error_type=,pipeline=wide,stage=s1,status=ok": 2.0,
            "error_type=,pipeline=wide,stage=_OTHER,status=ok": 4.0,
        }
        warnings = [r for r in caplog.records if r.name == "stageflow_otel.metrics"]
        assert len(warnings) == 1
        assert "'wide' has more than 2 distinct stage names" in warnings[0].getMessage()
        # Spans keep the real names: only metric labels are bounded.
        assert (
            recorded.tree()
            == [
                "pipeline.run wide",
                "  stage.run s0",
                "  stage.run s1",
                "  stage.run s2",
                "  stage.run s3",
            ]
            * 2
        )
    finally:
        recorded.shutdown()


async def test_error_type_labels_are_bounded(telemetry: InMemoryTelemetry) -> None:
    async def out_of_stock(ctx: StageContext) -> None:
        raise OutOfStock("sold out")

    graph = (
        Pipeline("p")
        .with_stage("builtin", raising_stage)
        .with_stage("custom", out_of_stock)
        .with_stage("slow", hanging_stage, interceptors=[TimeoutInterceptor(0.01)])
        .build(hooks=telemetry.hooks, failure_mode="continue")
    )

    await run_graph(graph)

    assert series(telemetry.registry, "stageflow_stage_runs_total") == {
        "error_type=ValueError,pipeline=p,stage=builtin,status=fail": 1.0,
        "error_type=_OTHER,pipeline=p,stage=custom,status=fail": 1.0,
        "error_type=stageflow.timeout,pipeline=p,stage=slow,status=fail": 1.0,
    }
    # The span keeps the precise type; only the label is capped.
    assert attributes(telemetry.span("stage.run custom"))["error.type"] == f"{__name__}.OutOfStock"


async def test_telemetry_never_touches_the_global_registry() -> None:
    def names() -> list[str]:
        return sorted(metric.name for metric in REGISTRY.collect())

    before = names()
    telemetry = Telemetry()
    try:
        graph = Pipeline("p").with_stage("a", ok_stage).build(hooks=telemetry.hooks)
        await run_graph(graph)

        assert names() == before
        assert telemetry.registry is not REGISTRY
        assert (
            telemetry.registry.get_sample_value(
                "stageflow_pipeline_runs_total", {"pipeline": "p", "status": "ok"}
            )
            == 1.0
        )
    finally:
        telemetry.shutdown()


class ObserveOnly:
    """A histogram child that offers only the public ``observe`` (another layout)."""

    def __init__(self, child: Any) -> None:
        self._child = child

    def observe(self, amount: float, exemplar: dict[str, str] | None = None) -> None:
        self._child.observe(amount, exemplar)


@pytest.mark.parametrize("layout", ["prometheus_client", "observe_only"])
def test_observe_with_trace_matches_observe_with_an_exemplar(layout: str) -> None:
    ours, reference = CollectorRegistry(), CollectorRegistry()
    ours_child = Histogram("h_seconds", "h", ("s",), buckets=DURATION_BUCKETS, registry=ours)
    ref_child = Histogram("h_seconds", "h", ("s",), buckets=DURATION_BUCKETS, registry=reference)
    child = ours_child.labels("a")
    target: Any = ObserveOnly(child) if layout == "observe_only" else child
    trace_id = "1" * 32
    # On a bound, between bounds, beyond the last bound, and twice into one bucket.
    for i, amount in enumerate((0.001, 0.0042, 7.5, 400.0, 0.003)):
        span = f"{i:016x}"
        observe_with_trace(target, amount, trace_id, span)
        ref_child.labels("a").observe(amount, {"trace_id": trace_id, "span_id": span})

    def exposition(registry: CollectorRegistry) -> list[tuple[str, dict[str, str], float, Any]]:
        return [
            (s.name, s.labels, s.value, s.exemplar and (s.exemplar.labels, s.exemplar.value))
            for family in openmetrics_families(registry)
            for s in family.samples
            if not s.name.endswith("_created")
        ]

    assert exposition(ours) == exposition(reference)
    exemplars = [sample[3] for sample in exposition(ours) if sample[3]]
    assert ({"trace_id": trace_id, "span_id": f"{4:016x}"}, 0.003) in exemplars


def test_stage_series_are_resolved_once_and_bounded() -> None:
    metrics = StageflowMetrics(CollectorRegistry(), max_stage_names=2)

    first = metrics.stage_series("p", "a")
    assert metrics.stage_series("p", "a") is first
    assert first.outcome("ok", "") is first.outcome("ok", "")
    assert metrics.stage_series("p", "b").label == "b"
    beyond = [metrics.stage_series("p", f"x{i}") for i in range(500)]
    assert {s.label for s in beyond} == {"_OTHER"}
    assert len({id(s) for s in beyond}) == 1
    # Names beyond the limit are not remembered one by one: memory stays bounded.
    assert len(metrics._stage_series) == 3
