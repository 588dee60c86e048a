"""Compact Prometheus counters and histograms for the per-stage series.

A ``prometheus_client`` histogram child keeps one value object and one lock per bucket: about
40 objects for each (pipeline, stage, status) series, which a 1,000-stage pipeline multiplies
into tens of thousands of objects that every full garbage collection of the application walks.
These collectors keep a series in one slotted object, its buckets in an ``array`` of floats
and the family's series behind one lock, and expose exactly what ``prometheus_client``'s own
``Counter`` and ``Histogram`` expose (``_total``, ``_bucket`` with exemplars, ``_count``,
``_sum``, ``_created``), so scrapers, dashboards and ``registry.get_sample_value`` see no
difference. Exemplars keep the span context they came from and become hex text at scrape time.

They serve the values of the process they live in; with ``prometheus_client``'s multiprocess
mode on (``PROMETHEUS_MULTIPROC_DIR``), :func:`compact_metrics_supported` is false and the
metrics use ``prometheus_client``'s own classes instead.
"""

from __future__ import annotations

import threading
import time
from array import array
from bisect import bisect_left
from collections.abc import Sequence
from typing import Any

import prometheus_client.metrics
import prometheus_client.values
from opentelemetry.trace import SpanContext
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector
from prometheus_client.samples import Exemplar
from prometheus_client.utils import floatToGoString

__all__ = ("CompactCounter", "CompactHistogram", "compact_metrics_supported")


def compact_metrics_supported() -> bool:
    """Whether ``prometheus_client`` keeps values in this process (not multiprocess mode)."""
    return prometheus_client.values.ValueClass is prometheus_client.values.MutexValue


def _created_series() -> bool:
    # prometheus_client's switch (PROMETHEUS_DISABLE_CREATED_SERIES, disable_created_metrics()).
    return bool(getattr(prometheus_client.metrics, "_use_created", True))


class CounterSeries:
    """One labelled counter series."""

    __slots__ = ("_lock", "created", "labels", "value")

    def __init__(self, labels: dict[str, str], lock: threading.Lock) -> None:
        self.labels = labels
        self._lock = lock
        self.value = 0.0
        self.created = time.time()

    def inc(self, amount: float = 1.0) -> None:
        """Add ``amount`` (not negative: the callers' amounts never are)."""
        with self._lock:
            self.value += amount


class HistogramSeries:
    """One labelled histogram series: per-bucket counts, the sum, the latest exemplar per bucket."""

    __slots__ = ("_bounds", "_lock", "counts", "created", "exemplars", "labels", "sum")

    def __init__(self, labels: dict[str, str], bounds: tuple[float, ...], lock: threading.Lock):
        self.labels = labels
        self._bounds = bounds
        self._lock = lock
        self.counts = array("d", bytes(8 * len(bounds)))  # not cumulative; +Inf is the last
        self.sum = 0.0
        self.exemplars: list[tuple[SpanContext, float, float] | None] = [None] * len(bounds)
        self.created = time.time()

    def observe(self, amount: float, span_context: SpanContext | None = None) -> None:
        """Count ``amount`` in its bucket; a valid ``span_context`` becomes its exemplar."""
        i = bisect_left(self._bounds, amount)  # the first bound >= amount: Prometheus's "le"
        with self._lock:
            self.counts[i] += 1
            self.sum += amount
            if span_context is not None:
                self.exemplars[i] = (span_context, amount, time.time())


def _exemplar(found: tuple[SpanContext, float, float] | None) -> Exemplar | None:
    if found is None:
        return None
    span_context, amount, at = found
    labels = {
        "trace_id": format(span_context.trace_id, "032x"),
        "span_id": format(span_context.span_id, "016x"),
    }
    return Exemplar(labels, amount, at)


class _Family(Collector):
    """The series of one metric by label values, and its exposition."""

    kind = ""

    def __init__(self, name: str, documentation: str, labelnames: Sequence[str]) -> None:
        self.name = name
        self.documentation = documentation
        self.labelnames = tuple(labelnames)
        self._lock = threading.Lock()
        self._series: dict[tuple[str, ...], Any] = {}

    def _make(self, labels: dict[str, str]) -> Any:
        raise NotImplementedError

    def labels(self, *values: str) -> Any:
        """The series of these label values (in ``labelnames`` order), made on first use."""
        if len(values) != len(self.labelnames):
            raise ValueError(f"{self.name} takes {len(self.labelnames)} label values: {values}")
        key = tuple(str(value) for value in values)
        series = self._series.get(key)
        if series is None:
            with self._lock:
                series = self._series.get(key)
                if series is None:
                    series = self._series[key] = self._make(
                        dict(zip(self.labelnames, key, strict=True))
                    )
        return series

    def describe(self) -> list[Metric]:
        """The metric without samples: what the registry checks names against."""
        return [Metric(self.name, self.documentation, self.kind)]

    def collect(self) -> list[Metric]:
        """The metric and all its samples, read under the lock (a consistent snapshot)."""
        metric = Metric(self.name, self.documentation, self.kind)
        with self._lock:
            series = list(self._series.values())
            self._add_samples(metric, series)
        return [metric]

    def _add_samples(self, metric: Metric, series: list[Any]) -> None:
        raise NotImplementedError


class CompactCounter(_Family):
    """A counter family; ``name`` is given without ``_total``, as ``prometheus_client`` has it."""

    kind = "counter"

    def _make(self, labels: dict[str, str]) -> CounterSeries:
        return CounterSeries(labels, self._lock)

    def _add_samples(self, metric: Metric, series: list[Any]) -> None:
        created = _created_series()
        for one in series:
            metric.add_sample(self.name + "_total", one.labels, one.value)
            if created:
                metric.add_sample(self.name + "_created", one.labels, one.created)


class CompactHistogram(_Family):
    """A histogram family with fixed bucket bounds (``+Inf`` added when missing)."""

    kind = "histogram"

    def __init__(
        self,
        name: str,
        documentation: str,
        labelnames: Sequence[str],
        buckets: Sequence[float],
    ) -> None:
        super().__init__(name, documentation, labelnames)
        bounds = [float(bound) for bound in buckets]
        if bounds != sorted(bounds):
            raise ValueError(f"{name}: bucket bounds must be in increasing order: {buckets}")
        if not bounds or bounds[-1] != float("inf"):
            bounds.append(float("inf"))
        self.bounds = tuple(bounds)
        self._le = tuple(floatToGoString(b) for b in self.bounds)  # type: ignore[no-untyped-call]

    def _make(self, labels: dict[str, str]) -> HistogramSeries:
        return HistogramSeries(labels, self.bounds, self._lock)

    def _add_samples(self, metric: Metric, series: list[Any]) -> None:
        created = _created_series()
        for one in series:
            cumulative = 0.0
            for le, count, found in zip(self._le, one.counts, one.exemplars, strict=True):
                cumulative += count
                labels = {**one.labels, "le": le}
                metric.add_sample(self.name + "_bucket", labels, cumulative, None, _exemplar(found))
            metric.add_sample(self.name + "_count", one.labels, cumulative)
            metric.add_sample(self.name + "_sum", one.labels, one.sum)
            if created:
                metric.add_sample(self.name + "_created", one.labels, one.created)
