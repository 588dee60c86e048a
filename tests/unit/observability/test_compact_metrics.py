"""The compact per-stage counters and histograms expose what prometheus_client's own do."""

from __future__ import annotations

import gc
import re
import threading
from collections.abc import Callable

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from opentelemetry.trace import SpanContext
from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client import generate_latest as text_exposition
from prometheus_client.openmetrics.exposition import generate_latest as openmetrics_exposition

from stageflow_otel.observability._compact_metrics import (
    CompactCounter,
    CompactHistogram,
    compact_metrics_supported,
)
from stageflow_otel.observability.metrics import DURATION_BUCKETS, StageflowMetrics

# The text format and OpenMetrics (the one with exemplars).
EXPOSITIONS: tuple[Callable[[CollectorRegistry], bytes], ...] = (
    text_exposition,
    openmetrics_exposition,
)


def _normalised(text: bytes) -> bytes:
    """The exposition without what differs by design between two registries: times."""
    return re.sub(rb"_created(\{[^}]*\})? \S+", rb"_created\1 T", _exemplar_times(text))


def _exemplar_times(text: bytes) -> bytes:
    # '... # {trace_id="..",span_id=".."} 0.003 1733370000.123' -> the timestamp dropped.
    return re.sub(rb"(# \{[^}]*\} \S+) \S+$", rb"\1", text, flags=re.MULTILINE)


def _span(trace_id: int, span_id: int) -> SpanContext:
    return SpanContext(trace_id, span_id, is_remote=False)


def _pair() -> tuple[CollectorRegistry, CollectorRegistry]:
    return CollectorRegistry(), CollectorRegistry()


amounts = st.lists(
    st.one_of(
        st.sampled_from(DURATION_BUCKETS),  # exactly on a bound
        st.floats(min_value=0, max_value=1000, allow_nan=False),
    ),
    max_size=40,
)


@settings(max_examples=60, deadline=None)
@given(amounts=amounts, labels=st.lists(st.sampled_from("abc"), min_size=1, max_size=3))
def test_histogram_exposes_what_prometheus_client_exposes(
    amounts: list[float], labels: list[str]
) -> None:
    ours_registry, reference_registry = _pair()
    ours = CompactHistogram("h_seconds", "Help.", ("stage", "status"), DURATION_BUCKETS)
    ours_registry.register(ours)
    reference = Histogram(
        "h_seconds", "Help.", ("stage", "status"), buckets=DURATION_BUCKETS,
        registry=reference_registry,
    )  # fmt: skip
    for i, amount in enumerate(amounts):
        label = labels[i % len(labels)]
        span = _span(0xABC + i, 0x100 + i)
        ours.labels(label, "ok").observe(amount, span)
        reference.labels(label, "ok").observe(
            amount, {"trace_id": f"{0xABC + i:032x}", "span_id": f"{0x100 + i:016x}"}
        )
    for exposition in EXPOSITIONS:
        assert _normalised(exposition(ours_registry)) == _normalised(exposition(reference_registry))


def test_counter_exposes_what_prometheus_client_exposes() -> None:
    ours_registry, reference_registry = _pair()
    ours = CompactCounter("runs", "Runs.", ("stage", "status"))
    ours_registry.register(ours)
    reference = Counter("runs", "Runs.", ("stage", "status"), registry=reference_registry)
    for stage, status, amount in (("a", "ok", 1), ("a", "fail", 1), ("a", "ok", 2), ("b", "ok", 1)):
        ours.labels(stage, status).inc(amount)
        reference.labels(stage, status).inc(amount)
    for exposition in EXPOSITIONS:
        assert _normalised(exposition(ours_registry)) == _normalised(exposition(reference_registry))
    assert ours_registry.get_sample_value("runs_total", {"stage": "a", "status": "ok"}) == 3.0


def test_an_exemplar_is_the_latest_span_of_its_bucket() -> None:
    registry = CollectorRegistry()
    histogram = CompactHistogram("h_seconds", "Help.", ("stage",), DURATION_BUCKETS)
    registry.register(histogram)
    series = histogram.labels("a")
    series.observe(0.003, _span(1, 1))
    series.observe(0.004, _span(2, 2))  # same bucket (le=0.005): replaces the first
    series.observe(0.004)  # no span: keeps the exemplar it had
    text = EXPOSITIONS[1](registry).decode()
    line = next(x for x in text.splitlines() if 'le="0.005"' in x)
    assert f'trace_id="{2:032x}"' in line
    assert f'span_id="{2:016x}"' in line
    assert line.split(" # ")[0].endswith(" 3.0")


def test_registering_twice_names_the_clash() -> None:
    registry = CollectorRegistry()
    registry.register(CompactHistogram("h_seconds", "Help.", ("stage",), DURATION_BUCKETS))
    with pytest.raises(ValueError, match="Duplicated timeseries"):
        registry.register(Histogram("h_seconds", "Other.", ("stage",), registry=None))


def test_wrong_label_count_and_unsorted_buckets_are_refused() -> None:
    histogram = CompactHistogram("h_seconds", "Help.", ("stage", "status"), DURATION_BUCKETS)
    with pytest.raises(ValueError, match="takes 2 label values"):
        histogram.labels("a")
    with pytest.raises(ValueError, match="increasing order"):
        CompactHistogram("x_seconds", "Help.", ("stage",), (1.0, 0.5))


def test_concurrent_observations_are_all_counted() -> None:
    histogram = CompactHistogram("h_seconds", "Help.", ("stage",), DURATION_BUCKETS)
    counter = CompactCounter("c", "Help.", ("stage",))
    per_thread, threads = 20_000, 4

    def work() -> None:
        series, runs = histogram.labels("a"), counter.labels("a")
        for _ in range(per_thread):
            series.observe(0.002)
            runs.inc()

    workers = [threading.Thread(target=work) for _ in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    assert counter.labels("a").value == per_thread * threads
    assert sum(histogram.labels("a").counts) == per_thread * threads
    assert histogram.labels("a").sum == pytest.approx(0.002 * per_thread * threads)


def test_a_stage_series_is_a_few_objects_not_dozens() -> None:
    assert compact_metrics_supported()
    metrics = StageflowMetrics(CollectorRegistry())
    gc.collect()
    before = len(gc.get_objects())
    for i in range(200):
        add_run, observe = metrics.stage_series("p", f"s{i}").outcome("ok", "")
        add_run(1)
        observe(0.001, _span(1, i + 1))
    gc.collect()
    per_stage = (len(gc.get_objects()) - before) / 200
    # prometheus_client's own classes need about 45 tracked objects per stage here.
    assert per_stage < 12, per_stage
