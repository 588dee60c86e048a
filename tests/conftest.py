from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.servers import CollectorServer, JaegerServer, start_collector, start_jaeger

pytest_plugins = ("anyio",)


@pytest.fixture(params=["asyncio", "trio"])
def anyio_backend(request: pytest.FixtureRequest) -> str:
    """Every async test runs on both backends."""
    return str(request.param)


@pytest.fixture
def jaeger(tmp_path: Path) -> Iterator[JaegerServer]:
    """A real Jaeger v2 on 127.0.0.1 with an in-memory store."""
    with start_jaeger(tmp_path / "jaeger") as server:
        yield server


@pytest.fixture
def collector(tmp_path: Path, jaeger: JaegerServer) -> Iterator[CollectorServer]:
    """A real OpenTelemetry Collector running otel-collector.yaml, exporting to ``jaeger``."""
    with start_collector(
        tmp_path / "otelcol", jaeger_otlp_grpc_endpoint=jaeger.otlp_grpc_endpoint
    ) as server:
        yield server
