"""Fixtures of the observability tests: private providers, event and log capture."""

from __future__ import annotations

from collections.abc import Iterator, MutableMapping
from typing import Any

import pytest
import structlog
from structlog.testing import capture_logs

from stageflow_otel import CollectingEventSink
from stageflow_otel.observability import add_stageflow_context
from stageflow_otel.testing import InMemoryTelemetry, in_memory_telemetry


@pytest.fixture
def telemetry() -> Iterator[InMemoryTelemetry]:
    """Telemetry on a private tracer provider with an in-memory exporter and a fresh registry."""
    recorded = in_memory_telemetry()
    try:
        yield recorded
    finally:
        recorded.shutdown()


@pytest.fixture
def events() -> CollectingEventSink:
    """Keeps a run's lifecycle events."""
    return CollectingEventSink()


@pytest.fixture
def logs() -> Iterator[list[MutableMapping[str, Any]]]:
    """structlog entries written while the test runs, through ``add_stageflow_context``."""
    try:
        with capture_logs(processors=[add_stageflow_context]) as entries:
            yield entries
    finally:
        structlog.reset_defaults()
