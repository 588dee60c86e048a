"""The ``stageflow_store_*`` metrics of a run store, fed as its listener."""

from __future__ import annotations

from typing import Any

from stageflow_otel.runs import RunStoreListener

from .metrics import StageflowMetrics

__all__ = ("StoreMetrics",)

# The queue's results, in the words of a store.
_RESULTS = {"exported": "written", "export_failed": "failed"}


class StoreMetrics(RunStoreListener):
    """Counts a run store's records, bytes and write latency in ``stageflow_store_*``.

    Make one with :meth:`Telemetry.store_listener
    <stageflow_otel.observability.Telemetry.store_listener>` and pass it as the store's
    ``listener``.

    Args:
        metrics: Where the metrics live.
        store: The ``store`` label (the store's kind: ``sqlite``, ``postgres``).
    """

    def __init__(self, metrics: StageflowMetrics, store: str) -> None:
        self._metrics = metrics
        self._store = store
        self._writes: dict[str, Any] = {
            result: metrics.store_writes.labels(store, result)
            for result in ("written", "failed", "dropped_queue_full", "dropped_shutdown")
        }
        self._bytes = metrics.store_bytes.labels(store)
        self._duration = metrics.store_write_duration.labels(store)

    def on_result(self, result: str, count: int) -> None:
        """Count ``count`` records under ``result``."""
        label = _RESULTS.get(result, result)
        counter = self._writes.get(label)
        if counter is None:
            counter = self._writes[label] = self._metrics.store_writes.labels(self._store, label)
        counter.inc(count)

    def on_export(self, duration_s: float, count: int, ok: bool) -> None:
        """Observe one batch write's duration."""
        self._duration.observe(duration_s)

    def on_bytes(self, count: int) -> None:
        """Count the bytes of a batch written."""
        self._bytes.inc(count)
