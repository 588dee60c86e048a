"""Fixtures of the integration tests: real receivers and servers on 127.0.0.1."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from opentelemetry.test._otlp_test_server import OtlpProtoTestServer

from stageflow_otel import CollectingEventSink


@pytest.fixture
def otlp_server() -> Iterator[OtlpProtoTestServer]:
    """An in-process OTLP/HTTP receiver on a free port of 127.0.0.1."""
    with OtlpProtoTestServer(host="127.0.0.1", port=0) as server:
        yield server


@pytest.fixture
def events() -> CollectingEventSink:
    """Keeps a run's lifecycle events."""
    return CollectingEventSink()
